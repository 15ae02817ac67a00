//! What the focus keeps of its Olm identity in the state directory: the pickle key (from the
//! configuration, or generated into `pickle.key` with mode 0600) and the account and the
//! sessions as encrypted vodozemac pickles, saved in the [checkpoint](crate::checkpoint)
//! (earlier versions kept them in `olm.json`, which is still read once). Every write is atomic.

use crate::sync::write_atomic;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// The generated pickle key's file in the state directory.
pub const PICKLE_KEY_FILE: &str = "pickle.key";
/// The Olm state's file in the state directory.
pub const OLM_STATE_FILE: &str = "olm.json";

/// Why the Olm state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The configured or stored pickle key is not 32 bytes of base64.
    #[error("the pickle key must be 32 bytes, base64-encoded: {0}")]
    BadPickleKey(String),
    /// `olm.json` exists but cannot be read with this pickle key.
    #[error("{path} cannot be read (wrong pickle key or damaged file): {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The 32-byte key the pickles are encrypted with.
#[derive(Clone)]
pub struct PickleKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for PickleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PickleKey(<redacted>)")
    }
}

impl PickleKey {
    /// Decodes a base64 key (padded or not) of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, StoreError> {
        let bytes = vodozemac::base64_decode(text.trim().trim_end_matches('='))
            .map_err(|e| StoreError::BadPickleKey(e.to_string()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| StoreError::BadPickleKey(format!("got {} bytes", b.len())))?;
        Ok(Self(key))
    }

    /// The configured key, or the one in `state_dir/pickle.key`, generated (mode 0600) when absent.
    pub fn resolve(state_dir: &Path, configured: Option<&str>) -> Result<Self, StoreError> {
        if let Some(text) = configured {
            return Self::from_base64(text);
        }
        let path = state_dir.join(PICKLE_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_base64(&text),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill(&mut key);
                let text = vodozemac::base64_encode(key);
                write_atomic(&path, text.as_bytes(), 0o600)
                    .map_err(|source| StoreError::Io { path, source })?;
                Ok(Self(key))
            }
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }
}

/// One persisted session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredSession {
    /// The other device's Curve25519 identity key (base64).
    pub sender_key: String,
    /// The encrypted session pickle.
    pub pickle: String,
    /// Wall-clock ms of the session's last successful use.
    pub last_used_ms: u64,
}

/// The contents of `olm.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredState {
    /// The user the account belongs to.
    pub user_id: String,
    /// The device the account belongs to.
    pub device_id: String,
    /// The encrypted account pickle.
    pub account: String,
    /// Whether the device keys were uploaded.
    #[serde(default)]
    pub device_keys_published: bool,
    /// The sessions.
    #[serde(default)]
    pub sessions: Vec<StoredSession>,
}

/// Reads `state_dir/olm.json` of earlier versions, `None` when it does not exist.
pub fn load(state_dir: &Path) -> Result<Option<StoredState>, StoreError> {
    read_json(&state_dir.join(OLM_STATE_FILE))
}

/// Writes `state_dir/olm.json` as earlier versions did (the state now lives in the checkpoint).
#[cfg(test)]
pub(crate) fn save(state_dir: &Path, state: &StoredState) -> Result<(), StoreError> {
    write_json(&state_dir.join(OLM_STATE_FILE), state)
}

/// Reads and parses the JSON file at `path`, `None` when it does not exist.
///
/// # Errors
/// The file exists but cannot be read or parsed.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StoreError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Writes `value` as JSON to `path` atomically (temp file, fsync, rename) with mode 0600.
///
/// # Errors
/// Serialising or writing failed; the previous file is then intact.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Io {
        path: path.to_owned(),
        source: io::Error::other(e),
    })?;
    write_atomic(path, &bytes, 0o600).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = PickleKey::resolve(dir.path(), None).unwrap();
        let second = PickleKey::resolve(dir.path(), None).unwrap();
        assert_eq!(first.0, second.0);
        assert!(!format!("{first:?}").contains(&vodozemac::base64_encode(first.0)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(PICKLE_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let configured = vodozemac::base64_encode([7u8; 32]);
        assert_eq!(
            PickleKey::resolve(dir.path(), Some(&configured)).unwrap().0,
            [7u8; 32]
        );
        assert!(PickleKey::resolve(dir.path(), Some("c2hvcnQ")).is_err());
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let state = StoredState {
            user_id: "@f:hs".into(),
            device_id: "F".into(),
            account: "pickle".into(),
            device_keys_published: true,
            sessions: vec![StoredSession {
                sender_key: "k".into(),
                pickle: "p".into(),
                last_used_ms: 5,
            }],
        };
        save(dir.path(), &state).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.sessions.len(), 1);
        assert!(back.device_keys_published);
        std::fs::write(dir.path().join(OLM_STATE_FILE), "{").unwrap();
        assert!(load(dir.path()).is_err());
    }
}
