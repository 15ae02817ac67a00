//! The Olm sessions of one account, by the other device's Curve25519 key: trial decryption
//! (pre-key messages open a session unless it already exists), encryption with the most recently
//! used session, and conversion to and from encrypted pickles. Pure: no I/O.

use super::envelope::Undecryptable;
use super::store::{PickleKey, StoredSession};
use std::collections::HashMap;
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{
    Account, DecryptionError, OlmMessage, Session, SessionConfig, SessionCreationError,
    SessionPickle,
};

/// Most sessions kept per other device (the least recently used are dropped).
pub const MAX_SESSIONS_PER_DEVICE: usize = 8;

struct Entry {
    session: Session,
    last_used_ms: u64,
}

/// What a successful decryption gave.
#[derive(Debug)]
pub struct Decrypted {
    /// The plaintext bytes.
    pub plaintext: Vec<u8>,
    /// Whether a new inbound session was created (the account changed: a one-time key is used).
    pub new_session: bool,
}

/// The sessions of an account.
#[derive(Default)]
pub struct Sessions {
    by_key: HashMap<String, Vec<Entry>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("devices", &self.by_key.len())
            .field("sessions", &self.len())
            .finish()
    }
}

impl Sessions {
    /// Restores sessions from their pickles; returns them and how many could not be read.
    pub fn restore(stored: &[StoredSession], key: &PickleKey) -> (Self, usize) {
        let mut sessions = Self::default();
        let mut unreadable = 0;
        for item in stored {
            match SessionPickle::from_encrypted(&item.pickle, &key.0) {
                Ok(pickle) => sessions
                    .by_key
                    .entry(item.sender_key.clone())
                    .or_default()
                    .push(Entry {
                        session: Session::from_pickle(pickle),
                        last_used_ms: item.last_used_ms,
                    }),
                Err(_) => unreadable += 1,
            }
        }
        (sessions, unreadable)
    }

    /// Every session as an encrypted pickle.
    pub fn to_stored(&self, key: &PickleKey) -> Vec<StoredSession> {
        self.by_key
            .iter()
            .flat_map(|(sender_key, entries)| {
                entries.iter().map(move |entry| StoredSession {
                    sender_key: sender_key.clone(),
                    pickle: entry.session.pickle().encrypt(&key.0),
                    last_used_ms: entry.last_used_ms,
                })
            })
            .collect()
    }

    /// How many sessions there are.
    pub fn len(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Whether there is a session with `their_key`.
    pub fn has(&self, their_key: &Curve25519PublicKey) -> bool {
        self.by_key.contains_key(&their_key.to_base64())
    }

    /// Adds a session with `their_key` (dropping the least recently used beyond the limit).
    pub fn add(&mut self, their_key: &Curve25519PublicKey, session: Session, now_ms: u64) {
        let entries = self.by_key.entry(their_key.to_base64()).or_default();
        entries.push(Entry {
            session,
            last_used_ms: now_ms,
        });
        entries.sort_by_key(|e| std::cmp::Reverse(e.last_used_ms));
        entries.truncate(MAX_SESSIONS_PER_DEVICE);
    }

    /// Decrypts `message` from `their_key`: with the existing sessions (most recently used first;
    /// a pre-key message only with the session it names), else, for a pre-key message, by
    /// opening a new inbound session on `account`.
    pub fn decrypt(
        &mut self,
        account: &mut Account,
        their_key: &Curve25519PublicKey,
        message: &OlmMessage,
        now_ms: u64,
    ) -> Result<Decrypted, Undecryptable> {
        let entries = self.by_key.entry(their_key.to_base64()).or_default();
        entries.sort_by_key(|e| std::cmp::Reverse(e.last_used_ms));
        let pre_key_session = match message {
            OlmMessage::PreKey(m) => Some(m.session_id()),
            OlmMessage::Normal(_) => None,
        };
        let mut cause = None;
        for entry in entries.iter_mut() {
            if let Some(id) = &pre_key_session
                && entry.session.session_id() != *id
            {
                continue;
            }
            match entry.session.decrypt(message) {
                Ok(plaintext) => {
                    entry.last_used_ms = now_ms;
                    return Ok(Decrypted {
                        plaintext,
                        new_session: false,
                    });
                }
                Err(DecryptionError::MissingMessageKey(_)) => {
                    cause = Some(Undecryptable::Replayed);
                }
                Err(_) => {
                    cause = cause.or(Some(Undecryptable::BadMac));
                }
            }
        }
        if entries.is_empty() {
            self.by_key.remove(&their_key.to_base64());
        }
        let OlmMessage::PreKey(pre_key) = message else {
            return Err(cause.unwrap_or(Undecryptable::UnknownSession));
        };
        if let Some(cause) = cause {
            // The session the pre-key message names exists and refused it.
            return Err(cause);
        }
        match account.create_inbound_session(SessionConfig::version_1(), *their_key, pre_key) {
            Ok(created) => {
                self.add(their_key, created.session, now_ms);
                Ok(Decrypted {
                    plaintext: created.plaintext,
                    new_session: true,
                })
            }
            Err(SessionCreationError::MissingOneTimeKey(_)) => {
                Err(Undecryptable::UnknownOneTimeKey)
            }
            Err(SessionCreationError::Decryption(_)) => Err(Undecryptable::BadMac),
            Err(_) => Err(Undecryptable::Malformed),
        }
    }

    /// Encrypts `plaintext` for `their_key` with the most recently used session, `None` when
    /// there is none.
    pub fn encrypt(
        &mut self,
        their_key: &Curve25519PublicKey,
        plaintext: &str,
        now_ms: u64,
    ) -> Option<OlmMessage> {
        let entries = self.by_key.get_mut(&their_key.to_base64())?;
        let entry = entries.iter_mut().max_by_key(|e| e.last_used_ms)?;
        let message = entry.session.encrypt(plaintext).ok()?;
        entry.last_used_ms = now_ms;
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Account, Account, Sessions, Sessions) {
        let alice = Account::new();
        let mut bob = Account::new();
        bob.generate_one_time_keys(1);
        let otk = *bob.one_time_keys().values().next().unwrap();
        bob.mark_keys_as_published();
        let mut alice_sessions = Sessions::default();
        let session = alice
            .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
            .unwrap();
        alice_sessions.add(&bob.curve25519_key(), session, 1);
        (alice, bob, alice_sessions, Sessions::default())
    }

    #[test]
    fn pre_key_opens_then_both_ways_and_replay_is_refused() {
        let (mut alice, mut bob, mut a, mut b) = pair();
        let (ak, bk) = (alice.curve25519_key(), bob.curve25519_key());
        let first = a.encrypt(&bk, "one", 2).unwrap();
        assert!(matches!(first, OlmMessage::PreKey(_)));
        let got = b.decrypt(&mut bob, &ak, &first, 3).unwrap();
        assert_eq!(got.plaintext, b"one");
        assert!(got.new_session);
        // The same pre-key message again: its session exists, its key is used.
        assert_eq!(
            b.decrypt(&mut bob, &ak, &first, 4).unwrap_err(),
            Undecryptable::Replayed
        );
        let reply = b.encrypt(&ak, "two", 5).unwrap();
        assert!(matches!(reply, OlmMessage::Normal(_)));
        assert_eq!(
            a.decrypt(&mut alice, &bk, &reply, 6).unwrap().plaintext,
            b"two"
        );
        let third = a.encrypt(&bk, "three", 7).unwrap();
        assert!(matches!(third, OlmMessage::Normal(_)));
        // Persisted and restored, the session still decrypts.
        let key = PickleKey([1; 32]);
        let (mut restored, unreadable) = Sessions::restore(&b.to_stored(&key), &key);
        assert_eq!(unreadable, 0);
        assert_eq!(
            restored
                .decrypt(&mut bob, &ak, &third, 8)
                .unwrap()
                .plaintext,
            b"three"
        );
        assert_eq!(
            restored.decrypt(&mut bob, &ak, &third, 9).unwrap_err(),
            Undecryptable::Replayed
        );
    }

    #[test]
    fn tampered_unknown_and_used_keys_are_refused() {
        let (mut alice, mut bob, mut a, mut b) = pair();
        let (ak, bk) = (alice.curve25519_key(), bob.curve25519_key());
        let first = a.encrypt(&bk, "one", 2).unwrap();
        let (kind, mut bytes) = first.to_parts();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = OlmMessage::from_parts(kind, &bytes).unwrap();
        assert_eq!(
            b.decrypt(&mut bob, &ak, &tampered, 3).unwrap_err(),
            Undecryptable::BadMac
        );
        // The one-time key survived the tampered attempt.
        b.decrypt(&mut bob, &ak, &first, 3).unwrap();
        // A normal message from a device we have no session with.
        let carol = Account::new();
        let reply = b.encrypt(&ak, "x", 4).unwrap();
        assert_eq!(
            b.decrypt(&mut bob, &carol.curve25519_key(), &reply, 5)
                .unwrap_err(),
            Undecryptable::UnknownSession
        );
        // A second outbound session on the same (now used) one-time key.
        let used = bob.one_time_keys();
        assert!(used.is_empty());
        let mut other = Sessions::default();
        let eve = Account::new();
        let mut fresh = Account::new();
        fresh.generate_one_time_keys(1);
        let otk = *fresh.one_time_keys().values().next().unwrap();
        let session = eve
            .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
            .unwrap();
        other.add(&bk, session, 1);
        let message = other.encrypt(&bk, "hi", 2).unwrap();
        assert_eq!(
            b.decrypt(&mut bob, &eve.curve25519_key(), &message, 6)
                .unwrap_err(),
            Undecryptable::UnknownOneTimeKey
        );
        let _ = &mut alice;
    }

    #[test]
    fn a_session_restored_between_a_received_ratchet_and_the_next_send_still_talks() {
        let (mut alice, mut bob, mut a, mut b) = pair();
        let (ak, bk) = (alice.curve25519_key(), bob.curve25519_key());
        let key = PickleKey([2; 32]);
        let first = a.encrypt(&bk, "invite", 1).unwrap();
        b.decrypt(&mut bob, &ak, &first, 2).unwrap();
        let answer = b.encrypt(&ak, "answer", 3).unwrap();
        let candidates_a = a.encrypt(&bk, "candidates", 4).unwrap();
        a.decrypt(&mut alice, &bk, &answer, 5).unwrap();
        b.decrypt(&mut bob, &ak, &candidates_a, 6).unwrap();
        let candidates_b = b.encrypt(&ak, "candidates", 7).unwrap();
        let hangup = a.encrypt(&bk, "hangup", 8).unwrap();
        b.decrypt(&mut bob, &ak, &hangup, 9).unwrap();
        a.decrypt(&mut alice, &bk, &candidates_b, 10).unwrap();
        // Bob is restored here: he received Alice's new ratchet key and sent nothing since.
        let (mut b, _) = Sessions::restore(&b.to_stored(&key), &key);
        let invite = a.encrypt(&bk, "invite 2", 11).unwrap();
        b.decrypt(&mut bob, &ak, &invite, 12).unwrap();
        let answer = b.encrypt(&ak, "answer 2", 13).unwrap();
        assert_eq!(
            a.decrypt(&mut alice, &bk, &answer, 14).unwrap().plaintext,
            b"answer 2"
        );
    }
}
