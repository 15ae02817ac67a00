//! The `[livekit]` section of the focus's configuration.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The LiveKit front door and its token service; off unless `enabled`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveKitConfig {
    /// Whether the token service listens.
    pub enabled: bool,
    /// Address the token service listens on (HTTP).
    pub listen: SocketAddr,
    /// The LiveKit WebSocket URL handed to clients with their tokens (`url` of the answer).
    pub url: String,
    /// The API key: the `iss` of every token.
    pub api_key: String,
    /// The HS256 secret tokens are signed with (at least 32 bytes).
    pub api_secret: String,
    /// Seconds a token is valid for.
    pub token_ttl_secs: u64,
    /// Server names whose users get tokens; `*` for every server.
    pub allowed_homeservers: Vec<String>,
    /// Base URLs of homeservers by server name, where their OpenID tokens are checked; a server
    /// not listed is reached at `https://<server name>`.
    pub homeservers: BTreeMap<String, String>,
}

impl Default for LiveKitConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8070)),
            url: String::new(),
            api_key: String::new(),
            api_secret: String::new(),
            token_ttl_secs: 3600,
            allowed_homeservers: vec!["*".to_owned()],
            homeservers: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for LiveKitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveKitConfig")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("url", &self.url)
            .field("api_key", &self.api_key)
            .field("api_secret", &"<redacted>")
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("allowed_homeservers", &self.allowed_homeservers)
            .field("homeservers", &self.homeservers)
            .finish()
    }
}

impl LiveKitConfig {
    /// What is wrong with an enabled section, one sentence per problem (nothing when disabled).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.enabled {
            return problems;
        }
        if !(self.url.starts_with("ws://") || self.url.starts_with("wss://")) {
            problems.push(format!(
                "[livekit] url {:?} is not a ws:// or wss:// URL",
                self.url
            ));
        }
        if self.api_key.trim().is_empty() {
            problems.push("[livekit] api_key is empty".to_owned());
        }
        if self.api_secret.len() < 32 {
            problems.push("[livekit] api_secret must be at least 32 bytes".to_owned());
        }
        if self.token_ttl_secs == 0 {
            problems.push("[livekit] token_ttl_secs must be above 0".to_owned());
        }
        for (server, url) in &self.homeservers {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(format!(
                    "[livekit] homeservers.{server:?} = {url:?} is not an http:// or https:// URL"
                ));
            }
        }
        problems
    }

    /// Whether users of `server_name` get tokens.
    pub fn allows(&self, server_name: &str) -> bool {
        self.allowed_homeservers
            .iter()
            .any(|allowed| allowed == "*" || allowed == server_name)
    }

    /// Where `server_name`'s OpenID tokens are checked.
    pub fn homeserver_url(&self, server_name: &str) -> String {
        self.homeservers
            .get(server_name)
            .cloned()
            .unwrap_or_else(|| format!("https://{server_name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enabled_section_needs_url_key_and_a_long_secret() {
        let config = LiveKitConfig {
            enabled: true,
            api_secret: "short".to_owned(),
            ..LiveKitConfig::default()
        };
        let problems = config.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            LiveKitConfig::default().problems().is_empty(),
            "off by default"
        );
        assert!(
            !format!("{config:?}").contains("short"),
            "the secret is not logged"
        );
    }

    #[test]
    fn homeserver_policy_and_urls() {
        let mut config = LiveKitConfig::default();
        assert!(config.allows("any.example"));
        config.allowed_homeservers = vec!["a.example".to_owned()];
        assert!(config.allows("a.example") && !config.allows("b.example"));
        config
            .homeservers
            .insert("a.example".to_owned(), "http://127.0.0.1:8008".to_owned());
        assert_eq!(config.homeserver_url("a.example"), "http://127.0.0.1:8008");
        assert_eq!(config.homeserver_url("b.example"), "https://b.example");
    }
}
