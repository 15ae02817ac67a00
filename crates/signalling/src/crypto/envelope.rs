//! The two layers of an Olm to-device message: the `m.room.encrypted` content (`algorithm`,
//! `sender_key`, `ciphertext` by recipient key) and the JSON plaintext inside it (`type`,
//! `content`, `sender`, `recipient`, `recipient_keys`, `keys`, `sender_device`). Pure: no
//! session state, no I/O.

use super::keys::OLM_ALGORITHM;
use serde_json::{Value, json};
use vodozemac::olm::OlmMessage;
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};

/// The to-device event type of encrypted messages.
pub const ENCRYPTED_EVENT: &str = "m.room.encrypted";

/// Why an incoming to-device message was dropped instead of handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Undecryptable {
    /// Not Olm, or not shaped like an Olm message or plaintext.
    Malformed,
    /// Encrypted for another device, or its plaintext names another recipient.
    WrongRecipient,
    /// A normal message for which the focus has no session with the sender's key.
    UnknownSession,
    /// Decryption failed (bad MAC or padding) in every session that could have been used.
    BadMac,
    /// The message key was already used: a replayed message.
    Replayed,
    /// A pre-key message for a one-time key the focus does not have (used up or never issued).
    UnknownOneTimeKey,
    /// No published device of the sender has the message's sender key.
    UnknownDevice,
    /// The plaintext's sender, sender keys or device disagree with the sender's published keys.
    ForgedSender,
    /// A plaintext call event while encryption is required.
    PlaintextRefused,
}

impl Undecryptable {
    /// Every cause, in a stable order.
    pub const ALL: [Undecryptable; 9] = [
        Undecryptable::Malformed,
        Undecryptable::WrongRecipient,
        Undecryptable::UnknownSession,
        Undecryptable::BadMac,
        Undecryptable::Replayed,
        Undecryptable::UnknownOneTimeKey,
        Undecryptable::UnknownDevice,
        Undecryptable::ForgedSender,
        Undecryptable::PlaintextRefused,
    ];

    /// A snake_case name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Undecryptable::Malformed => "malformed",
            Undecryptable::WrongRecipient => "wrong_recipient",
            Undecryptable::UnknownSession => "unknown_session",
            Undecryptable::BadMac => "bad_mac",
            Undecryptable::Replayed => "replayed",
            Undecryptable::UnknownOneTimeKey => "unknown_one_time_key",
            Undecryptable::UnknownDevice => "unknown_device",
            Undecryptable::ForgedSender => "forged_sender",
            Undecryptable::PlaintextRefused => "plaintext_refused",
        }
    }

    /// The cause named `name` (see [`Undecryptable::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Undecryptable::ALL
            .iter()
            .copied()
            .find(|c| c.name() == name)
    }

    /// The position in [`Undecryptable::ALL`].
    pub fn index(self) -> usize {
        Undecryptable::ALL
            .iter()
            .position(|c| *c == self)
            .unwrap_or_default()
    }
}

/// The outer layer of an incoming encrypted message, addressed to us.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The sender's Curve25519 identity key as the message claims it.
    pub sender_key: Curve25519PublicKey,
    /// The Olm message for our key.
    pub message: OlmMessage,
}

/// Reads an `m.room.encrypted` content and picks the ciphertext for `our_key`.
pub fn parse_encrypted(
    content: &Value,
    our_key: &Curve25519PublicKey,
) -> Result<Envelope, Undecryptable> {
    if content.get("algorithm").and_then(Value::as_str) != Some(OLM_ALGORITHM) {
        return Err(Undecryptable::Malformed);
    }
    let sender_key = content
        .get("sender_key")
        .and_then(Value::as_str)
        .and_then(|k| Curve25519PublicKey::from_base64(k).ok())
        .ok_or(Undecryptable::Malformed)?;
    let ciphertext = content
        .get("ciphertext")
        .and_then(Value::as_object)
        .ok_or(Undecryptable::Malformed)?;
    let mine = ciphertext
        .get(&our_key.to_base64())
        .ok_or(Undecryptable::WrongRecipient)?;
    let message: OlmMessage =
        serde_json::from_value(mine.clone()).map_err(|_| Undecryptable::Malformed)?;
    Ok(Envelope {
        sender_key,
        message,
    })
}

/// A decrypted plaintext whose recipient fields name us.
#[derive(Clone, Debug, PartialEq)]
pub struct Plaintext {
    /// The inner event type.
    pub event_type: String,
    /// The inner event content (an object).
    pub content: Value,
    /// The user the plaintext says sent it.
    pub sender: String,
    /// The device the plaintext says sent it, if stated.
    pub sender_device: Option<String>,
    /// The Ed25519 key the plaintext says the sender has.
    pub sender_ed25519: Ed25519PublicKey,
}

/// Reads a decrypted plaintext and checks that `recipient` and `recipient_keys.ed25519` are us.
pub fn parse_plaintext(
    bytes: &[u8],
    our_user: &str,
    our_ed25519: &Ed25519PublicKey,
) -> Result<Plaintext, Undecryptable> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| Undecryptable::Malformed)?;
    let text = |name: &str| value.get(name).and_then(Value::as_str);
    let recipient_ed = value
        .pointer("/recipient_keys/ed25519")
        .and_then(Value::as_str);
    if text("recipient") != Some(our_user) || recipient_ed != Some(&our_ed25519.to_base64()) {
        return Err(Undecryptable::WrongRecipient);
    }
    let event_type = text("type").ok_or(Undecryptable::Malformed)?.to_owned();
    let sender = text("sender").ok_or(Undecryptable::Malformed)?.to_owned();
    let sender_ed25519 = value
        .pointer("/keys/ed25519")
        .and_then(Value::as_str)
        .and_then(|k| Ed25519PublicKey::from_base64(k).ok())
        .ok_or(Undecryptable::Malformed)?;
    let content = value
        .get("content")
        .filter(|c| c.is_object())
        .cloned()
        .ok_or(Undecryptable::Malformed)?;
    Ok(Plaintext {
        event_type,
        content,
        sender,
        sender_device: text("sender_device").map(str::to_owned),
        sender_ed25519,
    })
}

/// Who a plaintext is from and for.
#[derive(Clone, Copy, Debug)]
pub struct Parties<'a> {
    /// Our user.
    pub sender: &'a str,
    /// Our device.
    pub sender_device: &'a str,
    /// Our Ed25519 key.
    pub sender_ed25519: &'a Ed25519PublicKey,
    /// The recipient user.
    pub recipient: &'a str,
    /// The recipient device's Ed25519 key.
    pub recipient_ed25519: &'a Ed25519PublicKey,
}

/// The JSON plaintext of an event of `event_type` with `content` between `parties`.
pub fn plaintext(event_type: &str, content: &Value, parties: Parties<'_>) -> String {
    json!({
        "type": event_type,
        "content": content,
        "sender": parties.sender,
        "sender_device": parties.sender_device,
        "keys": {"ed25519": parties.sender_ed25519.to_base64()},
        "recipient": parties.recipient,
        "recipient_keys": {"ed25519": parties.recipient_ed25519.to_base64()},
    })
    .to_string()
}

/// The `m.room.encrypted` content carrying `message` from `our_key` to `their_key`.
pub fn encrypted_content(
    our_key: &Curve25519PublicKey,
    their_key: &Curve25519PublicKey,
    message: &OlmMessage,
) -> Value {
    let (message_type, body) = message.to_parts();
    json!({
        "algorithm": OLM_ALGORITHM,
        "sender_key": our_key.to_base64(),
        "ciphertext": {
            their_key.to_base64(): {"type": message_type, "body": vodozemac::base64_encode(body)},
        },
    })
}
