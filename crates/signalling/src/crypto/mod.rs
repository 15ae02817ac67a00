//! Olm-encrypted call signalling (MSC3401): the focus device's Olm identity and sessions.
//!
//! - [`keys`] — canonical JSON, signatures, device keys, `/keys/upload` bodies;
//! - [`envelope`] — the `m.room.encrypted` content and its plaintext;
//! - [`session`] — the sessions, trial decryption and encryption;
//! - [`store`] — the pickle key and `olm.json` in the state directory.
//!
//! [`OlmMachine`] ties them to the homeserver: the sync loop hands it each response
//! ([`OlmMachine::on_sync`]: one-time key top-up, and encrypted to-device events replaced by
//! their verified plaintext, so everything after it sees plaintext call events), and the
//! to-device sender hands it each round of replies ([`OlmMachine::encrypt_outgoing`]: messages to
//! devices that wrote encrypted are encrypted to them).

pub mod envelope;
pub mod keys;
pub mod session;
pub mod store;

use crate::checkpoint::{self, Checkpoint, JournalEntry, OpenCall, Outcome};
use crate::client::{MatrixClient, RawEvent, SyncResponse};
use crate::outbound::Outgoing;
use envelope::{ENCRYPTED_EVENT, Parties, Undecryptable};
use keys::{DeviceKeys, SIGNED_CURVE25519};
use serde_json::Value;
use session::Sessions;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use store::{PickleKey, StoreError, StoredState};
use tracing::{debug, info, warn};
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{Account, AccountPickle, SessionConfig};

/// How long a user's queried device keys are trusted before asking again on a miss.
const DEVICE_CACHE_MS: u64 = 5 * 60_000;
/// The shortest time between two `/keys/query` for one user.
const REQUERY_MIN_MS: u64 = 2_000;

/// Counters of the Olm layer, lock-free.
#[derive(Debug, Default)]
pub struct OlmStats {
    decrypted: AtomicU64,
    encrypted: AtomicU64,
    encrypt_failures: AtomicU64,
    keys_uploaded: AtomicU64,
    journal_replays: AtomicU64,
    duplicates: AtomicU64,
    refused: [AtomicU64; Undecryptable::ALL.len()],
}

impl OlmStats {
    /// Encrypted to-device events decrypted and verified.
    pub fn decrypted(&self) -> u64 {
        self.decrypted.load(Ordering::Relaxed)
    }

    /// To-device messages sent encrypted.
    pub fn encrypted(&self) -> u64 {
        self.encrypted.load(Ordering::Relaxed)
    }

    /// Messages to Olm devices dropped because they could not be encrypted.
    pub fn encrypt_failures(&self) -> u64 {
        self.encrypt_failures.load(Ordering::Relaxed)
    }

    /// One-time and fallback keys uploaded.
    pub fn keys_uploaded(&self) -> u64 {
        self.keys_uploaded.load(Ordering::Relaxed)
    }

    /// Messages taken from the checkpoint's journal instead of being decrypted again (a batch
    /// delivered again after a crash before its commit).
    pub fn journal_replays(&self) -> u64 {
        self.journal_replays.load(Ordering::Relaxed)
    }

    /// Messages dropped as already handled (delivered again after their batch was committed).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Messages dropped for `cause`.
    pub fn refused(&self, cause: Undecryptable) -> u64 {
        self.refused[cause.index()].load(Ordering::Relaxed)
    }

    /// Every counter by name, for reporting.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out = vec![
            ("olm_decrypted".to_owned(), self.decrypted()),
            ("olm_encrypted".to_owned(), self.encrypted()),
            ("olm_encrypt_failures".to_owned(), self.encrypt_failures()),
            ("olm_keys_uploaded".to_owned(), self.keys_uploaded()),
            ("olm_journal_replays".to_owned(), self.journal_replays()),
            ("olm_duplicates".to_owned(), self.duplicates()),
        ];
        out.extend(
            Undecryptable::ALL
                .iter()
                .map(|c| (format!("olm_refused_{}", c.name()), self.refused(*c))),
        );
        out
    }

    fn refuse(&self, cause: Undecryptable) {
        self.refused[cause.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// A user's published devices as last queried.
#[derive(Debug)]
struct KnownUser {
    devices: BTreeMap<String, DeviceKeys>,
    fetched_ms: u64,
}

/// A decrypted message awaiting the check of its sender against published keys.
struct Opened {
    sender: String,
    sender_key: Curve25519PublicKey,
    plaintext: envelope::Plaintext,
}

/// The focus device's Olm account, sessions and what it knows of other devices; and the
/// [checkpoint](crate::checkpoint) they are saved in, with the sync token, since every batch
/// changes both and they must be committed in one write.
pub struct OlmMachine {
    user_id: String,
    device_id: String,
    state_dir: PathBuf,
    pickle_key: PickleKey,
    account: Account,
    sessions: Sessions,
    device_keys_published: bool,
    require_encryption: bool,
    users: HashMap<String, KnownUser>,
    /// Devices that wrote to the focus encrypted, with their identity key: replies are encrypted.
    olm_peers: HashMap<(String, String), Curve25519PublicKey>,
    logged: HashSet<Undecryptable>,
    stats: Arc<OlmStats>,
    /// Everything of the checkpoint but the Olm state itself (made at each save).
    checkpoint: Checkpoint,
}

impl std::fmt::Debug for OlmMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OlmMachine")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("curve25519", &self.account.curve25519_key().to_base64())
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

impl OlmMachine {
    /// Loads the checkpoint and the Olm identity of `user_id`/`device_id` from `state_dir`
    /// (pickles encrypted with `pickle_key`, else with the generated `pickle.key`), or creates
    /// and saves a new identity.
    pub fn open(
        state_dir: &Path,
        pickle_key: Option<&str>,
        user_id: &str,
        device_id: &str,
        require_encryption: bool,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Io {
            path: state_dir.to_owned(),
            source,
        })?;
        let key = PickleKey::resolve(state_dir, pickle_key)?;
        let mut checkpoint = checkpoint::load(state_dir)?.unwrap_or_default();
        let stored = checkpoint
            .olm
            .take()
            .filter(|s| {
                let same = s.user_id == user_id && s.device_id == device_id;
                if !same {
                    warn!(stored_user = %s.user_id, stored_device = %s.device_id, "the stored Olm identity belongs to another device; making a new one");
                }
                same
            });
        let mut machine = Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            state_dir: state_dir.to_owned(),
            pickle_key: key,
            account: Account::new(),
            sessions: Sessions::default(),
            device_keys_published: false,
            require_encryption,
            users: HashMap::new(),
            olm_peers: HashMap::new(),
            logged: HashSet::new(),
            stats: Arc::new(OlmStats::default()),
            checkpoint,
        };
        match stored {
            Some(state) => {
                let pickle = AccountPickle::from_encrypted(&state.account, &machine.pickle_key.0)
                    .map_err(|e| StoreError::Unreadable {
                    path: state_dir.join(store::OLM_STATE_FILE),
                    reason: e.to_string(),
                })?;
                machine.account = Account::from_pickle(pickle);
                let (sessions, unreadable) =
                    Sessions::restore(&state.sessions, &machine.pickle_key);
                if unreadable > 0 {
                    warn!(unreadable, "some stored Olm sessions could not be read");
                }
                machine.sessions = sessions;
                machine.device_keys_published = state.device_keys_published;
                info!(curve25519 = %machine.account.curve25519_key(), ed25519 = %machine.account.ed25519_key(), sessions = machine.sessions.len(), "loaded the Olm identity");
            }
            None => {
                machine.account.generate_fallback_key();
                info!(curve25519 = %machine.account.curve25519_key(), ed25519 = %machine.account.ed25519_key(), "created a new Olm identity");
            }
        }
        machine.save()?;
        Ok(machine)
    }

    /// The counters.
    pub fn stats(&self) -> Arc<OlmStats> {
        self.stats.clone()
    }

    /// The device's Curve25519 identity key.
    pub fn curve25519_key(&self) -> Curve25519PublicKey {
        self.account.curve25519_key()
    }

    /// Whether `(user_id, device_id)` wrote to the focus encrypted (so replies are encrypted).
    pub fn is_olm_peer(&self, user_id: &str, device_id: &str) -> bool {
        self.olm_peers
            .contains_key(&(user_id.to_owned(), device_id.to_owned()))
    }

    /// The `/sync` token to resume from, if a batch was ever committed.
    pub fn sync_token(&self) -> Option<&str> {
        self.checkpoint.sync_token.as_deref()
    }

    /// Wall-clock ms at which the last committed batch was handled.
    pub fn last_sync_ms(&self) -> Option<u64> {
        self.checkpoint.last_sync_ms
    }

    /// Commits a handled batch: `sync_token` (its `next_batch`), the time it was handled
    /// (`handled_at_ms`, wall-clock ms), the calls open now, and the Olm state, in one atomic
    /// write (see [`crate::checkpoint`]).
    ///
    /// # Errors
    /// The write failed; the previous checkpoint is intact, and the batch will be delivered
    /// again after a restart (its messages taken from the journal).
    pub fn commit(
        &mut self,
        sync_token: String,
        handled_at_ms: u64,
        calls: Vec<OpenCall>,
    ) -> Result<(), StoreError> {
        let calls = calls
            .into_iter()
            .map(|mut call| {
                call.olm_key = self
                    .olm_peers
                    .get(&(call.user_id.clone(), call.device_id.clone()))
                    .map(Curve25519PublicKey::to_base64);
                call
            })
            .collect();
        self.checkpoint.advance(sync_token, handled_at_ms, calls);
        self.save()
    }

    /// Marks the devices of the calls open at the last commit that wrote encrypted as Olm peers
    /// again, so what is sent to them after a restart is encrypted; returns those calls.
    pub fn restore_calls(&mut self) -> Vec<OpenCall> {
        let calls = self.checkpoint.calls.clone();
        for call in &calls {
            if let Some(key) = call
                .olm_key
                .as_deref()
                .and_then(|k| Curve25519PublicKey::from_base64(k).ok())
            {
                self.olm_peers
                    .insert((call.user_id.clone(), call.device_id.clone()), key);
            }
        }
        calls
    }

    fn save(&self) -> Result<(), StoreError> {
        let state = StoredState {
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
            account: self.account.pickle().encrypt(&self.pickle_key.0),
            device_keys_published: self.device_keys_published,
            sessions: self.sessions.to_stored(&self.pickle_key),
        };
        let mut checkpoint = self.checkpoint.clone();
        checkpoint.olm = Some(state);
        checkpoint::save(&self.state_dir, &checkpoint)
    }

    fn persist(&self) {
        if let Err(err) = self.save() {
            warn!(error = %err, "could not save the Olm state");
        }
    }

    /// Uploads the device keys (once), one-time keys up to the account's maximum when the
    /// server holds fewer than half of it (`server_count`; `None` = unknown, uploads only what
    /// is unpublished or, before the first upload, a full set), and a new fallback key when the
    /// server says the current one was used (`fallback_unused == Some(false)`).
    pub async fn publish_keys(
        &mut self,
        client: &MatrixClient,
        server_count: Option<u64>,
        fallback_unused: Option<bool>,
    ) {
        let max = self.account.max_number_of_one_time_keys() as u64;
        let unpublished = self.account.one_time_keys().len() as u64;
        let count = server_count.or((!self.device_keys_published).then_some(0));
        if let Some(count) = count
            && count < max / 2
        {
            let wanted = max.saturating_sub(count).saturating_sub(unpublished);
            if wanted > 0 {
                self.account.generate_one_time_keys(wanted as usize);
            }
        }
        if fallback_unused == Some(false) {
            self.account.generate_fallback_key();
        }
        let Some(body) = keys::upload_body(
            &self.account,
            &self.user_id,
            &self.device_id,
            !self.device_keys_published,
        ) else {
            return;
        };
        let uploaded = body
            .get("one_time_keys")
            .and_then(Value::as_object)
            .map_or(0, |k| k.len())
            + body
                .get("fallback_keys")
                .and_then(Value::as_object)
                .map_or(0, |k| k.len());
        // Saved before the upload so that keys the server may accept are never lost.
        self.persist();
        match client.upload_keys(&body).await {
            Ok(counts) => {
                self.account.mark_keys_as_published();
                self.device_keys_published = true;
                self.stats
                    .keys_uploaded
                    .fetch_add(uploaded as u64, Ordering::Relaxed);
                self.persist();
                info!(
                    uploaded,
                    server_count = counts.get(SIGNED_CURVE25519).copied().unwrap_or(0),
                    "uploaded Olm keys"
                );
            }
            Err(err) => {
                warn!(error = %err, "uploading Olm keys failed; retrying after the next sync")
            }
        }
    }

    /// Handles the Olm parts of one sync response: tops up one-time keys, and replaces each
    /// encrypted to-device event by its verified plaintext event (or drops it, logging and
    /// counting the cause). With `require_encryption`, plaintext call events are dropped too.
    /// A message already in the checkpoint's journal is taken from there; one that was handled
    /// in a committed batch is dropped as a duplicate. What was decrypted is journaled and saved
    /// before this returns, so nothing acts on a message whose decryption is not on disk.
    /// Never fails: problems are logged.
    pub async fn on_sync(&mut self, client: &MatrixClient, response: &mut SyncResponse) {
        let server_count = (!response.one_time_keys_count.is_empty()).then(|| {
            response
                .one_time_keys_count
                .get(SIGNED_CURVE25519)
                .copied()
                .unwrap_or(0)
        });
        let fallback_unused = response
            .unused_fallback_key_types
            .as_ref()
            .map(|types| types.iter().any(|t| t == SIGNED_CURVE25519));
        self.publish_keys(client, server_count, fallback_unused)
            .await;
        if response.to_device.is_empty() {
            return;
        }
        let events = std::mem::take(&mut response.to_device);
        let mut out = Vec::with_capacity(events.len());
        let mut changed = false;
        let our_key = self.account.curve25519_key().to_base64();
        // Ids seen in this batch: a second copy of a message within one batch is a duplicate,
        // whether its first copy was decrypted now or taken from the journal.
        let mut seen = HashSet::new();
        for event in events {
            if event.event_type != ENCRYPTED_EVENT {
                if self.require_encryption
                    && cascade_protocol::CallEventKind::from_type(&event.event_type).is_some()
                {
                    self.refuse(
                        Undecryptable::PlaintextRefused,
                        &event.sender,
                        Some(&event.event_type),
                    );
                    continue;
                }
                out.push(event);
                continue;
            }
            let id = checkpoint::message_id(&event.sender, &event.content, &our_key);
            if let Some(id) = &id
                && !seen.insert(id.clone())
            {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                debug!(sender = %event.sender, "dropped a second copy of a to-device message");
                continue;
            }
            if let Some(outcome) = id.as_deref().and_then(|id| self.checkpoint.journaled(id)) {
                self.stats.journal_replays.fetch_add(1, Ordering::Relaxed);
                debug!(sender = %event.sender, "to-device message taken from the journal");
                match outcome.clone() {
                    Outcome::Event(inner) => out.push(inner),
                    Outcome::Refused(name) => {
                        let cause =
                            Undecryptable::from_name(&name).unwrap_or(Undecryptable::Malformed);
                        self.refuse(cause, &event.sender, None);
                    }
                }
                continue;
            }
            let mut decrypted = false;
            let opened = self.open_envelope(&event, &mut decrypted);
            let verified = match opened {
                Ok(opened) => self.verify(client, opened).await,
                Err(cause) => Err(cause),
            };
            if cause_is_redelivery(&verified)
                && id
                    .as_deref()
                    .is_some_and(|id| self.checkpoint.was_handled(id))
            {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                debug!(sender = %event.sender, "dropped a to-device message delivered again after it was handled");
                continue;
            }
            if decrypted && let Some(id) = id {
                changed = true;
                let outcome = match &verified {
                    Ok(inner) => Outcome::Event(inner.clone()),
                    Err(cause) => Outcome::Refused(cause.name().to_owned()),
                };
                self.checkpoint.journal.push(JournalEntry { id, outcome });
            }
            match verified {
                Ok(inner) => out.push(inner),
                Err(cause) => self.refuse(cause, &event.sender, None),
            }
        }
        if changed {
            self.persist();
        }
        response.to_device = out;
    }

    fn refuse(&mut self, cause: Undecryptable, sender: &str, event_type: Option<&str>) {
        self.stats.refuse(cause);
        if self.logged.insert(cause) {
            warn!(
                cause = cause.name(),
                sender,
                event_type = event_type.unwrap_or(ENCRYPTED_EVENT),
                "dropped a to-device message (logged once per cause; later ones at debug level)"
            );
        } else {
            debug!(
                cause = cause.name(),
                sender,
                event_type = event_type.unwrap_or(ENCRYPTED_EVENT),
                "dropped a to-device message"
            );
        }
    }

    /// Decrypts an `m.room.encrypted` event addressed to us.
    fn open_envelope(
        &mut self,
        event: &RawEvent,
        changed: &mut bool,
    ) -> Result<Opened, Undecryptable> {
        let envelope = envelope::parse_encrypted(&event.content, &self.account.curve25519_key())?;
        let decrypted = self.sessions.decrypt(
            &mut self.account,
            &envelope.sender_key,
            &envelope.message,
            crate::now_ms(),
        )?;
        // Either way a session's ratchet moved (and perhaps a one-time key was used).
        *changed = true;
        let plaintext = envelope::parse_plaintext(
            &decrypted.plaintext,
            &self.user_id,
            &self.account.ed25519_key(),
        )?;
        if decrypted.new_session {
            debug!(sender = %event.sender, sender_key = %envelope.sender_key, "opened an inbound Olm session");
        }
        Ok(Opened {
            sender: event.sender.clone(),
            sender_key: envelope.sender_key,
            plaintext,
        })
    }

    /// Checks a decrypted message against the sender's published device keys and returns the
    /// inner event.
    async fn verify(
        &mut self,
        client: &MatrixClient,
        opened: Opened,
    ) -> Result<RawEvent, Undecryptable> {
        let plaintext = opened.plaintext;
        if plaintext.sender != opened.sender {
            return Err(Undecryptable::ForgedSender);
        }
        let (device_id, keys) = self
            .device_with_key(client, &opened.sender, &opened.sender_key)
            .await
            .ok_or(Undecryptable::UnknownDevice)?;
        if keys.ed25519 != plaintext.sender_ed25519 {
            return Err(Undecryptable::ForgedSender);
        }
        if plaintext
            .sender_device
            .as_deref()
            .is_some_and(|d| d != device_id)
        {
            return Err(Undecryptable::ForgedSender);
        }
        // The call event's own device (device_id, else party_id) must be the sending device.
        let claimed = plaintext
            .content
            .get("device_id")
            .or_else(|| plaintext.content.get("party_id"))
            .and_then(Value::as_str);
        if cascade_protocol::CallEventKind::from_type(&plaintext.event_type).is_some()
            && claimed.is_some_and(|d| d != device_id)
        {
            return Err(Undecryptable::ForgedSender);
        }
        self.stats.decrypted.fetch_add(1, Ordering::Relaxed);
        let log_info = is_notable(&plaintext.event_type);
        let call_id = plaintext
            .content
            .get("call_id")
            .and_then(Value::as_str)
            .unwrap_or("");
        if log_info {
            info!(sender = %opened.sender, device = %device_id, event_type = %plaintext.event_type, call_id, "decrypted Olm to-device event");
        } else {
            debug!(sender = %opened.sender, device = %device_id, event_type = %plaintext.event_type, call_id, "decrypted Olm to-device event");
        }
        self.olm_peers
            .insert((opened.sender.clone(), device_id), opened.sender_key);
        Ok(RawEvent {
            event_type: plaintext.event_type,
            sender: opened.sender,
            state_key: None,
            content: plaintext.content,
            origin_server_ts: None,
        })
    }

    /// The device of `user_id` whose identity key is `key`, asking the homeserver when the
    /// cache does not know it (at most every [`REQUERY_MIN_MS`] per user).
    async fn device_with_key(
        &mut self,
        client: &MatrixClient,
        user_id: &str,
        key: &Curve25519PublicKey,
    ) -> Option<(String, DeviceKeys)> {
        let find = |users: &HashMap<String, KnownUser>| {
            users.get(user_id).and_then(|u| {
                u.devices
                    .iter()
                    .find(|(_, d)| d.curve25519 == *key)
                    .map(|(id, d)| (id.clone(), *d))
            })
        };
        let now = crate::now_ms();
        let fresh = self
            .users
            .get(user_id)
            .is_some_and(|u| now.saturating_sub(u.fetched_ms) < DEVICE_CACHE_MS);
        if fresh && let Some(found) = find(&self.users) {
            return Some(found);
        }
        let recently = self
            .users
            .get(user_id)
            .is_some_and(|u| now.saturating_sub(u.fetched_ms) < REQUERY_MIN_MS);
        if !recently {
            self.query_user(client, user_id).await;
        }
        find(&self.users)
    }

    /// The published keys of `user_id`'s `device_id`, from the cache or the homeserver.
    async fn device_keys(
        &mut self,
        client: &MatrixClient,
        user_id: &str,
        device_id: &str,
    ) -> Option<DeviceKeys> {
        let known = self
            .users
            .get(user_id)
            .and_then(|u| u.devices.get(device_id).copied());
        if known.is_some() {
            return known;
        }
        self.query_user(client, user_id).await;
        self.users
            .get(user_id)
            .and_then(|u| u.devices.get(device_id).copied())
    }

    async fn query_user(&mut self, client: &MatrixClient, user_id: &str) {
        match client.query_keys(&[user_id]).await {
            Ok(listing) => {
                let (devices, bad) = keys::parse_user_devices(user_id, &listing);
                for (device_id, err) in bad {
                    warn!(user = user_id, device = %device_id, error = %err, "ignoring published device keys");
                }
                self.users.insert(
                    user_id.to_owned(),
                    KnownUser {
                        devices,
                        fetched_ms: crate::now_ms(),
                    },
                );
            }
            Err(err) => warn!(user = user_id, error = %err, "querying device keys failed"),
        }
    }

    /// Encrypts the messages addressed to devices that wrote encrypted (see [`Self::is_olm_peer`])
    /// and those to another focus ([`Outgoing::to_focus`]) that has published keys, and passes
    /// the others through. A message that cannot be encrypted is dropped, logged and counted,
    /// never sent in plaintext.
    pub async fn encrypt_outgoing(
        &mut self,
        client: &MatrixClient,
        messages: Vec<Outgoing>,
    ) -> Vec<Outgoing> {
        let mut out = Vec::with_capacity(messages.len());
        let mut changed = false;
        for message in messages {
            let peer = (message.user_id.clone(), message.device_id.clone());
            let mut their_key = self.olm_peers.get(&peer).copied();
            if their_key.is_none() && message.to_focus {
                their_key = self
                    .device_keys(client, &message.user_id, &message.device_id)
                    .await
                    .map(|keys| keys.curve25519);
            }
            let Some(their_key) = their_key else {
                out.push(message);
                continue;
            };
            changed = true;
            match self.encrypt_one(client, &message, &their_key).await {
                Ok(encrypted) => out.push(encrypted),
                Err(why) => {
                    self.stats.encrypt_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(user = %message.user_id, device = %message.device_id, event_type = %message.event_type, why, "could not encrypt a to-device message; dropped it");
                }
            }
        }
        if changed {
            self.persist();
        }
        out
    }

    async fn encrypt_one(
        &mut self,
        client: &MatrixClient,
        message: &Outgoing,
        their_key: &Curve25519PublicKey,
    ) -> Result<Outgoing, &'static str> {
        let keys = self
            .device_keys(client, &message.user_id, &message.device_id)
            .await
            .ok_or("the device has no published keys")?;
        if keys.curve25519 != *their_key {
            return Err("the device's published identity key changed");
        }
        if !self.sessions.has(their_key) {
            self.claim_session(client, &message.user_id, &message.device_id, &keys)
                .await?;
        }
        let ed25519 = self.account.ed25519_key();
        let text = envelope::plaintext(
            &message.event_type,
            &message.content,
            Parties {
                sender: &self.user_id,
                sender_device: &self.device_id,
                sender_ed25519: &ed25519,
                recipient: &message.user_id,
                recipient_ed25519: &keys.ed25519,
            },
        );
        let olm_message = self
            .sessions
            .encrypt(their_key, &text, crate::now_ms())
            .ok_or("no usable session")?;
        self.stats.encrypted.fetch_add(1, Ordering::Relaxed);
        let call_id = message
            .content
            .get("call_id")
            .and_then(Value::as_str)
            .unwrap_or("");
        if is_notable(&message.event_type) {
            info!(user = %message.user_id, device = %message.device_id, event_type = %message.event_type, call_id, "encrypted Olm to-device event");
        } else {
            debug!(user = %message.user_id, device = %message.device_id, event_type = %message.event_type, call_id, "encrypted Olm to-device event");
        }
        Ok(Outgoing {
            event_type: ENCRYPTED_EVENT.to_owned(),
            user_id: message.user_id.clone(),
            device_id: message.device_id.clone(),
            content: envelope::encrypted_content(
                &self.account.curve25519_key(),
                their_key,
                &olm_message,
            ),
            to_focus: message.to_focus,
        })
    }

    /// Opens an outbound session with a device from a claimed, signature-checked one-time key.
    async fn claim_session(
        &mut self,
        client: &MatrixClient,
        user_id: &str,
        device_id: &str,
        keys: &DeviceKeys,
    ) -> Result<(), &'static str> {
        let claimed = client
            .claim_keys(&[(user_id, device_id)], SIGNED_CURVE25519)
            .await
            .map_err(|_| "claiming a one-time key failed")?;
        let one_time_key = keys::parse_claimed_key(&claimed, user_id, device_id, &keys.ed25519)
            .ok_or("no validly signed one-time key")?;
        let session = self
            .account
            .create_outbound_session(SessionConfig::version_1(), keys.curve25519, one_time_key)
            .map_err(|_| "creating the session failed")?;
        self.sessions
            .add(&keys.curve25519, session, crate::now_ms());
        info!(
            user = user_id,
            device = device_id,
            "opened an outbound Olm session"
        );
        Ok(())
    }
}

/// Whether a failed decryption is what a message handled before gives (its key is used up).
fn cause_is_redelivery(result: &Result<RawEvent, Undecryptable>) -> bool {
    matches!(
        result,
        Err(Undecryptable::Replayed | Undecryptable::UnknownOneTimeKey)
    )
}

/// Whether an event type is worth an info-level line (not candidates and the like).
fn is_notable(event_type: &str) -> bool {
    use cascade_protocol::CallEventKind as K;
    matches!(
        K::from_type(event_type),
        Some(K::Invite | K::Answer | K::Hangup | K::Reject | K::Negotiate)
    )
}
