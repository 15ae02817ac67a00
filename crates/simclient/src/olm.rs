//! An Olm device for a simulated client: its own vodozemac account with signed device keys,
//! one-time keys and a fallback key uploaded, outbound sessions from claimed one-time keys,
//! encryption of its to-device call events and decryption (with sender checks) of the
//! focus's. One [`OlmDevice`] can serve several calls of the same Matrix device.

use anyhow::{Context, Result, anyhow, bail, ensure};
use cascade_signalling::MatrixClient;
use cascade_signalling::checkpoint;
use cascade_signalling::crypto::envelope::{self, ENCRYPTED_EVENT, Parties, Undecryptable};
use cascade_signalling::crypto::keys::{self, DeviceKeys, SIGNED_CURVE25519};
use cascade_signalling::crypto::session::Sessions;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use vodozemac::olm::{Account, SessionConfig};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};

/// One-time keys the simulated device uploads.
const ONE_TIME_KEYS: usize = 10;

struct Inner {
    account: Account,
    sessions: Sessions,
    /// Devices we know the verified keys of, by (user, device).
    peers: HashMap<(String, String), DeviceKeys>,
    decrypted: u64,
    plaintext_calls: u64,
    duplicates: u64,
    failures: Vec<String>,
    /// Ids ([`checkpoint::message_id`]) of the messages decrypted so far: the homeserver may
    /// deliver a message again (each call's client starts without a sync token), and one from
    /// a receiving chain the session has since dropped (it keeps the last few) no longer
    /// fails as a used key but as a bad MAC, so a message is known by its id first.
    seen: HashSet<String>,
}

/// A simulated device's Olm identity and sessions; cheap to clone (clones share the state).
#[derive(Clone)]
pub struct OlmDevice {
    matrix: MatrixClient,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for OlmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OlmDevice")
            .field("user_id", &self.matrix.user_id())
            .field("device_id", &self.matrix.device_id())
            .finish_non_exhaustive()
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl OlmDevice {
    /// Creates an account for `matrix`'s device and uploads its signed device keys, one-time
    /// keys and fallback key.
    pub async fn setup(matrix: &MatrixClient) -> Result<Self> {
        let mut account = Account::new();
        account.generate_one_time_keys(ONE_TIME_KEYS);
        account.generate_fallback_key();
        let body = keys::upload_body(&account, matrix.user_id(), matrix.device_id(), true)
            .ok_or_else(|| anyhow!("nothing to upload"))?;
        let counts = matrix
            .upload_keys(&body)
            .await
            .context("uploading the device's keys")?;
        ensure!(
            counts.get(SIGNED_CURVE25519).copied().unwrap_or(0) >= ONE_TIME_KEYS as u64,
            "the homeserver did not take the one-time keys: {counts:?}"
        );
        account.mark_keys_as_published();
        Ok(Self {
            matrix: matrix.clone(),
            inner: Arc::new(Mutex::new(Inner {
                account,
                sessions: Sessions::default(),
                peers: HashMap::new(),
                decrypted: 0,
                plaintext_calls: 0,
                duplicates: 0,
                failures: Vec::new(),
                seen: HashSet::new(),
            })),
        })
    }

    /// Our Curve25519 identity key.
    pub fn curve25519_key(&self) -> Curve25519PublicKey {
        lock(&self.inner).account.curve25519_key()
    }

    /// Our Ed25519 signing key.
    pub fn ed25519_key(&self) -> Ed25519PublicKey {
        lock(&self.inner).account.ed25519_key()
    }

    /// Encrypted events decrypted, plaintext call events received, and why decryptions failed.
    pub fn received(&self) -> (u64, u64, Vec<String>) {
        let inner = lock(&self.inner);
        (
            inner.decrypted,
            inner.plaintext_calls,
            inner.failures.clone(),
        )
    }

    /// Messages dropped as duplicates (their message key was already used: redelivered).
    pub fn duplicates(&self) -> u64 {
        lock(&self.inner).duplicates
    }

    /// Fetches and checks `user_id`/`device_id`'s published keys and, unless we already have a
    /// session with it, claims a signed one-time key and opens an outbound session.
    pub async fn ensure_session(&self, user_id: &str, device_id: &str) -> Result<DeviceKeys> {
        let listing = self
            .matrix
            .query_keys(&[user_id])
            .await
            .context("querying device keys")?;
        let object = listing
            .get(user_id)
            .and_then(|devices| devices.get(device_id))
            .ok_or_else(|| anyhow!("{user_id}/{device_id} has no published device keys"))?;
        let device = keys::parse_device_keys(user_id, device_id, object)
            .map_err(|e| anyhow!("{user_id}/{device_id}'s device keys: {e}"))?;
        {
            let mut inner = lock(&self.inner);
            inner
                .peers
                .insert((user_id.to_owned(), device_id.to_owned()), device);
            if inner.sessions.has(&device.curve25519) {
                return Ok(device);
            }
        }
        let claimed = self
            .matrix
            .claim_keys(&[(user_id, device_id)], SIGNED_CURVE25519)
            .await
            .context("claiming a one-time key")?;
        let one_time_key = keys::parse_claimed_key(&claimed, user_id, device_id, &device.ed25519)
            .ok_or_else(|| {
            anyhow!("no validly signed one-time key for {user_id}/{device_id}")
        })?;
        let mut inner = lock(&self.inner);
        let session = inner.account.create_outbound_session(
            SessionConfig::version_1(),
            device.curve25519,
            one_time_key,
        )?;
        inner
            .sessions
            .add(&device.curve25519, session, crate::synth::now_us() / 1000);
        Ok(device)
    }

    /// The plaintext (as JSON) an event of `event_type` with `content` to `user_id`/`device_id`
    /// would be encrypted as; tests alter it to forge messages.
    pub fn plaintext_for(
        &self,
        user_id: &str,
        device_id: &str,
        event_type: &str,
        content: &Value,
    ) -> Result<Value> {
        let inner = lock(&self.inner);
        let peer = inner
            .peers
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .ok_or_else(|| anyhow!("no session set up with {user_id}/{device_id}"))?;
        let ours = inner.account.ed25519_key();
        let text = envelope::plaintext(
            event_type,
            content,
            Parties {
                sender: self.matrix.user_id(),
                sender_device: self.matrix.device_id(),
                sender_ed25519: &ours,
                recipient: user_id,
                recipient_ed25519: &peer.ed25519,
            },
        );
        Ok(serde_json::from_str(&text)?)
    }

    /// Encrypts `plaintext` to `user_id`/`device_id`; returns the `m.room.encrypted` content.
    pub fn encrypt_plaintext(
        &self,
        user_id: &str,
        device_id: &str,
        plaintext: &Value,
    ) -> Result<Value> {
        let mut inner = lock(&self.inner);
        let peer = *inner
            .peers
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .ok_or_else(|| anyhow!("no session set up with {user_id}/{device_id}"))?;
        let message = inner
            .sessions
            .encrypt(
                &peer.curve25519,
                &plaintext.to_string(),
                crate::synth::now_us() / 1000,
            )
            .ok_or_else(|| anyhow!("no session with {user_id}/{device_id}"))?;
        Ok(envelope::encrypted_content(
            &inner.account.curve25519_key(),
            &peer.curve25519,
            &message,
        ))
    }

    /// Encrypts an event of `event_type` with `content` to `user_id`/`device_id` (after
    /// [`Self::ensure_session`]); returns the `m.room.encrypted` content.
    pub fn encrypt(
        &self,
        user_id: &str,
        device_id: &str,
        event_type: &str,
        content: &Value,
    ) -> Result<Value> {
        let plaintext = self.plaintext_for(user_id, device_id, event_type, content)?;
        self.encrypt_plaintext(user_id, device_id, &plaintext)
    }

    /// Sends `content` (already an `m.room.encrypted` content) to `user_id`/`device_id`.
    pub async fn send_encrypted(
        &self,
        user_id: &str,
        device_id: &str,
        content: Value,
    ) -> Result<()> {
        let messages = BTreeMap::from([(
            user_id.to_owned(),
            BTreeMap::from([(device_id.to_owned(), content)]),
        )]);
        self.matrix
            .send_to_device(ENCRYPTED_EVENT, &messages)
            .await
            .context("sending m.room.encrypted")?;
        Ok(())
    }

    /// Decrypts an `m.room.encrypted` content from `sender` and checks the plaintext's sender,
    /// recipient and keys against the device it came from; returns the inner type and content.
    pub fn decrypt(&self, sender: &str, content: &Value) -> Result<(String, Value)> {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let id =
            checkpoint::message_id(sender, content, &inner.account.curve25519_key().to_base64());
        if let Some(id) = &id
            && inner.seen.contains(id)
        {
            inner.duplicates += 1;
            bail!("a message decrypted before, delivered again");
        }
        let mut replayed = false;
        let result = (|| {
            let ours = inner.account.curve25519_key();
            let envelope = envelope::parse_encrypted(content, &ours)
                .map_err(|c| anyhow!("envelope: {}", c.name()))?;
            let decrypted = inner
                .sessions
                .decrypt(
                    &mut inner.account,
                    &envelope.sender_key,
                    &envelope.message,
                    crate::synth::now_us() / 1000,
                )
                .map_err(|c| {
                    replayed = c == Undecryptable::Replayed;
                    anyhow!(
                        "decryption of a {:?} message: {}",
                        envelope.message.message_type(),
                        c.name()
                    )
                })?;
            let plaintext = envelope::parse_plaintext(
                &decrypted.plaintext,
                self.matrix.user_id(),
                &inner.account.ed25519_key(),
            )
            .map_err(|c| anyhow!("plaintext: {}", c.name()))?;
            let device = inner
                .peers
                .iter()
                .find(|((user, _), keys)| user == sender && keys.curve25519 == envelope.sender_key)
                .map(|((_, device), keys)| (device.clone(), *keys));
            let Some((device_id, keys)) = device else {
                bail!("no known device of {sender} has the sender key");
            };
            if plaintext.sender != sender
                || plaintext.sender_ed25519 != keys.ed25519
                || plaintext
                    .sender_device
                    .as_deref()
                    .is_some_and(|d| d != device_id)
            {
                bail!("the plaintext's sender does not match {sender}/{device_id}");
            }
            Ok((plaintext.event_type, plaintext.content))
        })();
        match &result {
            Ok(_) => {
                inner.decrypted += 1;
                if let Some(id) = id {
                    inner.seen.insert(id);
                }
            }
            // A message key used before: the homeserver delivered the message again.
            Err(_) if replayed => inner.duplicates += 1,
            Err(err) => inner.failures.push(err.to_string()),
        }
        result
    }

    /// Replaces the encrypted events of a sync batch by their plaintext (dropping those that do
    /// not decrypt) and counts plaintext call events.
    pub fn open_batch(&self, events: Vec<(String, String, Value)>) -> Vec<(String, Value)> {
        events
            .into_iter()
            .filter_map(|(sender, event_type, content)| {
                if event_type == ENCRYPTED_EVENT {
                    match self.decrypt(&sender, &content) {
                        Ok(inner) => Some(inner),
                        Err(err) => {
                            tracing::debug!(%err, %sender, "sim client could not decrypt a to-device event");
                            None
                        }
                    }
                } else {
                    if cascade_protocol::CallEventKind::from_type(&event_type).is_some() {
                        lock(&self.inner).plaintext_calls += 1;
                    }
                    Some((event_type, content))
                }
            })
            .collect()
    }
}

/// Flips the last byte of every ciphertext body in an `m.room.encrypted` content (its MAC), for
/// tests of the refusal of tampered messages.
pub fn tamper(content: &mut Value) {
    let Some(ciphertexts) = content.get_mut("ciphertext").and_then(Value::as_object_mut) else {
        return;
    };
    for item in ciphertexts.values_mut() {
        let Some(body) = item.get("body").and_then(Value::as_str) else {
            continue;
        };
        let Ok(mut bytes) = vodozemac::base64_decode(body) else {
            continue;
        };
        if let Some(last) = bytes.last_mut() {
            *last ^= 0x01;
        }
        item["body"] = Value::String(vodozemac::base64_encode(bytes));
    }
}
