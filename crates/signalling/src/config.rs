//! Configuration of the Matrix side: who the focus is and whom it serves.

use serde::Deserialize;
use std::path::PathBuf;

/// How the focus logs in and where it keeps its small amount of state.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// Base URL of the homeserver's client-server API, e.g. `https://matrix.example.org`.
    pub homeserver_url: String,
    /// The focus's full user id, e.g. `@focus:example.org`.
    pub user_id: String,
    /// The focus's device id; reused across restarts so clients keep addressing the same device.
    pub device_id: String,
    /// Password for `m.login.password` (one of `password` / `access_token` is required).
    #[serde(default)]
    pub password: Option<String>,
    /// An existing access token for the configured user and device.
    #[serde(default)]
    pub access_token: Option<String>,
    /// Directory for the sync token, the last-sync time, the cached access token and the Olm
    /// identity and sessions.
    pub state_dir: PathBuf,
    /// Refuse plaintext call events (only Olm-encrypted ones are handled).
    #[serde(default)]
    pub require_encryption: bool,
    /// Key (32 bytes, base64) the Olm pickles are encrypted with; when absent, one is generated
    /// into `state_dir/pickle.key` (mode 0600).
    #[serde(default)]
    pub pickle_key: Option<String>,
}

impl std::fmt::Debug for MatrixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatrixConfig")
            .field("homeserver_url", &self.homeserver_url)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("state_dir", &self.state_dir)
            .field("require_encryption", &self.require_encryption)
            .field(
                "pickle_key",
                &self.pickle_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Which invites the focus answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Authorization {
    /// Only devices that are unexpired members of the invite's conference in a room the focus
    /// has joined.
    #[default]
    Membership,
    /// Anyone (for tests and closed deployments).
    Open,
}

/// Conference policy: authorization, room auto-join and invite holding.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConferenceConfig {
    /// `membership` (default) or `open`.
    #[serde(default)]
    pub authorization: Authorization,
    /// Whether room invites to the focus are accepted (subject to `allowed_servers`).
    #[serde(default = "default_true")]
    pub auto_join: bool,
    /// Server names whose users may invite the focus into rooms; empty means any server.
    #[serde(default)]
    pub allowed_servers: Vec<String>,
    /// How long (ms) an invite that is not yet authorized is held waiting for room state.
    #[serde(default = "default_hold_ms")]
    pub hold_ms: u64,
}

impl Default for ConferenceConfig {
    fn default() -> Self {
        Self {
            authorization: Authorization::default(),
            auto_join: true,
            allowed_servers: Vec::new(),
            hold_ms: default_hold_ms(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_hold_ms() -> u64 {
    5000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conference_defaults() {
        let conf: ConferenceConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(conf.authorization, Authorization::Membership);
        assert!(conf.auto_join);
        assert!(conf.allowed_servers.is_empty());
        assert_eq!(conf.hold_ms, 5000);
        let open: ConferenceConfig =
            serde_json::from_str(r#"{"authorization":"open","auto_join":false,"hold_ms":10}"#)
                .unwrap();
        assert_eq!(open.authorization, Authorization::Open);
        assert!(!open.auto_join);
        assert_eq!(open.hold_ms, 10);
    }

    #[test]
    fn debug_redacts_secrets() {
        let config = MatrixConfig {
            homeserver_url: "http://hs".into(),
            user_id: "@focus:hs".into(),
            device_id: "FOCUS".into(),
            password: Some("hunter2".into()),
            access_token: Some("syt_secret".into()),
            state_dir: "/tmp/x".into(),
            require_encryption: false,
            pickle_key: Some("cGlja2xlLXNlY3JldA".into()),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("syt_secret"));
        assert!(!shown.contains("cGlja2xlLXNlY3JldA"));
    }
}
