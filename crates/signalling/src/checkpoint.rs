//! The checkpoint: everything a sync batch changes, committed to the state directory in one
//! atomic write, so that a crash at any moment neither loses a to-device message nor handles it
//! twice.
//!
//! A batch changes three things the focus keeps: the sync token it resumes from, the Olm
//! sessions whose ratchets decrypting it advanced (and the account, when a pre-key message used
//! a one-time key), and the calls it opened. Written as separate files, a crash between the
//! writes leaves them disagreeing: sessions that advanced past a message the old token makes the
//! homeserver deliver again (the message then no longer decrypts, and is lost), or a token that
//! moved past a message whose handling was never done. So they are one file, `checkpoint.json`,
//! written with write-then-rename:
//!
//! 1. after a batch is decrypted, and before anything acts on it, the advanced Olm state is
//!    written together with a **journal**: each decrypted message's outcome (the verified inner
//!    event, or why it was refused) under the message's id (a hash of sender, sender key and
//!    ciphertext). The token still names the batch's start;
//! 2. the batch is handled (room state, calls), and its effects are computed but not yet sent;
//! 3. the new token, the time, and the calls now open are committed, the journal's ids move to
//!    the bounded list of **handled** ids, and only then are the effects sent.
//!
//! A crash before 1 redelivers the batch to the old sessions: it decrypts again. A crash
//! between 1 and 3 redelivers it too, and each message is taken from the journal instead of
//! being decrypted a second time (which the ratchet would refuse). After 3 the batch is not
//! delivered again; if the homeserver delivers a message again anyway, its id is among the
//! handled ones and it is dropped as a duplicate, not refused as a replay attack. The calls open
//! at a crash died with the process; after the restart each device in one is sent a hangup, so
//! it calls again at once instead of waiting for its connection to time out.
//!
//! The journal holds decrypted call events (SDP) until the commit; the file has mode 0600 like
//! the pickles beside it.

use crate::client::RawEvent;
use crate::crypto::store::{self, StoreError, StoredState};
use crate::sync::SyncStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::path::Path;

/// The checkpoint's file in the state directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
/// How many ids of handled encrypted messages are remembered to recognise redeliveries.
pub const HANDLED_KEPT: usize = 1024;

/// What a decrypted message came to, as recorded in the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The verified inner event.
    Event(RawEvent),
    /// Refused after decryption, with the cause's name (see `Undecryptable::name`).
    Refused(String),
}

/// One decrypted message of the batch under way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The message's id (see [`message_id`]).
    pub id: String,
    /// What it came to.
    pub outcome: Outcome,
}

/// A call that was open at the last commit: enough to hang it up after a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenCall {
    /// The calling user.
    pub user_id: String,
    /// The calling device.
    pub device_id: String,
    /// The device's session.
    pub session_id: String,
    /// The call.
    pub call_id: String,
    /// The conference.
    pub conf_id: String,
    /// The conference's room, when known.
    #[serde(default)]
    pub room_id: Option<String>,
    /// The next `seq` the focus would have sent on the call.
    pub seq_out: u64,
    /// The device's Curve25519 key when it wrote encrypted (the hangup is then encrypted too).
    #[serde(default)]
    pub olm_key: Option<String>,
}

/// The contents of `checkpoint.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The `/sync` token to resume from.
    #[serde(default)]
    pub sync_token: Option<String>,
    /// Wall-clock ms at which the batch before `sync_token` was handled.
    #[serde(default)]
    pub last_sync_ms: Option<u64>,
    /// The Olm account and sessions.
    #[serde(default)]
    pub olm: Option<StoredState>,
    /// Decrypted messages of the batch that starts at `sync_token`, not yet committed.
    #[serde(default)]
    pub journal: Vec<JournalEntry>,
    /// Ids of the most recently committed encrypted messages, oldest first.
    #[serde(default)]
    pub handled: VecDeque<String>,
    /// The calls open at the last commit.
    #[serde(default)]
    pub calls: Vec<OpenCall>,
}

impl Checkpoint {
    /// The journal's outcome for message `id`, if the message was decrypted before.
    pub fn journaled(&self, id: &str) -> Option<&Outcome> {
        self.journal.iter().find(|e| e.id == id).map(|e| &e.outcome)
    }

    /// Whether message `id` was handled in a committed batch (among the last [`HANDLED_KEPT`]).
    pub fn was_handled(&self, id: &str) -> bool {
        self.handled.iter().any(|h| h == id)
    }

    /// Moves to the next batch: the new token and time, the journal's ids to `handled`.
    pub fn advance(&mut self, sync_token: String, handled_at_ms: u64, calls: Vec<OpenCall>) {
        self.sync_token = Some(sync_token);
        self.last_sync_ms = Some(handled_at_ms);
        for entry in self.journal.drain(..) {
            if !self.handled.contains(&entry.id) {
                self.handled.push_back(entry.id);
            }
        }
        while self.handled.len() > HANDLED_KEPT {
            self.handled.pop_front();
        }
        self.calls = calls;
    }
}

/// The id of an encrypted to-device message: SHA-256 over its sender, the sender key, and the
/// ciphertext addressed to `our_key` (hex). `None` when the content is not shaped like Olm.
pub fn message_id(sender: &str, content: &Value, our_key: &str) -> Option<String> {
    let sender_key = content.get("sender_key")?.as_str()?;
    let mine = content.get("ciphertext")?.get(our_key)?;
    let body = mine.get("body")?.as_str()?;
    let kind = mine.get("type").and_then(Value::as_u64).unwrap_or(u64::MAX);
    let mut hash = Sha256::new();
    for part in [sender.as_bytes(), sender_key.as_bytes(), body.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(kind.to_be_bytes());
    Some(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads the checkpoint of `state_dir`. Without `checkpoint.json`, assembles one from the files
/// earlier versions kept (`olm.json`, `sync_token`, `last_sync_ms`); `None` when there is none.
///
/// # Errors
/// A file that exists but cannot be read or parsed.
pub fn load(state_dir: &Path) -> Result<Option<Checkpoint>, StoreError> {
    if let Some(checkpoint) = store::read_json(&state_dir.join(CHECKPOINT_FILE))? {
        return Ok(Some(checkpoint));
    }
    let olm = store::load(state_dir)?;
    let legacy = SyncStore::open(state_dir).map_err(|source| StoreError::Io {
        path: state_dir.to_owned(),
        source,
    })?;
    let sync_token = legacy.sync_token().ok().flatten();
    let last_sync_ms = legacy.last_sync_ms().ok().flatten();
    if olm.is_none() && sync_token.is_none() {
        return Ok(None);
    }
    Ok(Some(Checkpoint {
        sync_token,
        last_sync_ms,
        olm,
        ..Checkpoint::default()
    }))
}

/// Writes `state_dir/checkpoint.json` atomically (temp file, fsync, rename) with mode 0600.
///
/// # Errors
/// Serialising or writing failed; the previous checkpoint is then intact.
pub fn save(state_dir: &Path, checkpoint: &Checkpoint) -> Result<(), StoreError> {
    store::write_json(&state_dir.join(CHECKPOINT_FILE), checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(n: u64) -> RawEvent {
        RawEvent {
            event_type: "m.call.invite".into(),
            sender: "@a:hs".into(),
            state_key: None,
            content: json!({"call_id": format!("c{n}")}),
            origin_server_ts: None,
        }
    }

    #[test]
    fn message_ids_differ_by_sender_key_and_body() {
        let content = |key: &str, body: &str| {
            json!({"algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": key,
                   "ciphertext": {"ME": {"type": 1, "body": body}}})
        };
        let a = message_id("@a:hs", &content("K1", "B1"), "ME").unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(
            Some(a.clone()),
            message_id("@a:hs", &content("K1", "B1"), "ME")
        );
        assert_ne!(
            Some(a.clone()),
            message_id("@a:hs", &content("K2", "B1"), "ME")
        );
        assert_ne!(
            Some(a.clone()),
            message_id("@a:hs", &content("K1", "B2"), "ME")
        );
        assert_ne!(Some(a), message_id("@b:hs", &content("K1", "B1"), "ME"));
        assert_eq!(message_id("@a:hs", &content("K1", "B1"), "OTHER"), None);
        assert_eq!(message_id("@a:hs", &json!({}), "ME"), None);
    }

    #[test]
    fn advancing_moves_the_journal_to_handled_and_bounds_it() {
        let mut cp = Checkpoint::default();
        for n in 0..(HANDLED_KEPT as u64 + 10) {
            cp.journal.push(JournalEntry {
                id: format!("id{n}"),
                outcome: Outcome::Event(event(n)),
            });
            assert!(cp.journaled(&format!("id{n}")).is_some());
            cp.advance(format!("t{n}"), n, Vec::new());
            assert!(cp.journal.is_empty());
        }
        assert_eq!(cp.handled.len(), HANDLED_KEPT);
        assert!(!cp.was_handled("id0"), "the oldest are forgotten");
        assert!(cp.was_handled(&format!("id{}", HANDLED_KEPT + 9)));
        assert_eq!(cp.sync_token.as_deref(), Some("t1033"));
    }

    #[test]
    fn round_trips_and_reads_the_files_of_earlier_versions() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        // Earlier versions: a sync token and last-sync time in their own files.
        SyncStore::open(dir.path())
            .unwrap()
            .save_legacy("s_old", 42)
            .unwrap();
        let old = load(dir.path()).unwrap().unwrap();
        assert_eq!(old.sync_token.as_deref(), Some("s_old"));
        assert_eq!(old.last_sync_ms, Some(42));
        let mut cp = Checkpoint {
            journal: vec![JournalEntry {
                id: "x".into(),
                outcome: Outcome::Refused("forged_sender".into()),
            }],
            ..Checkpoint::default()
        };
        cp.advance("s_new".into(), 7, Vec::new());
        save(dir.path(), &cp).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.sync_token.as_deref(), Some("s_new"));
        assert!(back.was_handled("x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CHECKPOINT_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(CHECKPOINT_FILE), "{").unwrap();
        assert!(
            load(dir.path()).is_err(),
            "a damaged checkpoint is an error, not a fresh start"
        );
    }
}
