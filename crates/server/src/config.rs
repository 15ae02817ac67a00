//! The focus's configuration file: TOML, every key overridable as `CASCADE_<SECTION>__<KEY>`.

use anyhow::Context;
use cascade_media::MediaConfig;
use cascade_signalling::config::{ConferenceConfig, MatrixConfig};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The focus's Matrix account (`[matrix]`).
    pub matrix: MatrixConfig,
    /// Who may call and which rooms the focus joins (`[conference]`).
    #[serde(default)]
    pub conference: ConferenceConfig,
    /// The media plane (`[rtc]`).
    #[serde(default)]
    pub rtc: MediaConfig,
    /// The HTTP endpoint (`[http]`).
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging (`[log]`).
    #[serde(default)]
    pub log: LogConfig,
}

/// `[http]`: health (and later metrics) endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// `[log]`: log format and filter.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `cascade_media=debug,info` (`RUST_LOG` wins if set).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".to_owned(),
        }
    }
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event.
    Json,
}

impl Config {
    /// Reads `path` and applies `CASCADE_<SECTION>__<KEY>` environment overrides.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let config: Self = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(
                Env::prefixed("CASCADE_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .with_context(|| format!("invalid configuration in {}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.matrix.password.is_none() && self.matrix.access_token.is_none() {
            anyhow::bail!("[matrix] needs password or access_token");
        }
        if self.matrix.homeserver_url.is_empty() {
            anyhow::bail!("[matrix] homeserver_url is empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    const MINIMAL: &str = r#"
[matrix]
homeserver_url = "http://127.0.0.1:8008"
user_id = "@focus:localhost"
device_id = "CASCADE"
password = "secret"
state_dir = "./state"
"#;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cascade.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.rtc.udp_port, 7882);
        assert_eq!(config.matrix.device_id, "CASCADE");
    }

    #[test]
    // figment's Jail closure must return figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    fn defaults_fill_missing_sections_and_env_overrides() {
        let file = write(MINIMAL);
        figment::Jail::expect_with(|jail| {
            jail.set_env("CASCADE_RTC__UDP_PORT", "9000");
            jail.set_env("CASCADE_MATRIX__DEVICE_ID", "OTHER");
            let config = Config::load(file.path()).map_err(|e| e.to_string())?;
            assert_eq!(config.rtc.udp_port, 9000);
            assert_eq!(config.matrix.device_id, "OTHER");
            assert_eq!(config.http.listen.port(), 9090);
            assert!(config.conference.auto_join);
            Ok(())
        });
    }

    #[test]
    fn rejects_unknown_keys_and_missing_credentials() {
        let unknown = write(&format!("{MINIMAL}\n[rtc]\nudp_prot = 1\n"));
        assert!(Config::load(unknown.path()).is_err());
        let no_secret = write(&MINIMAL.replace("password = \"secret\"\n", ""));
        let err = Config::load(no_secret.path()).unwrap_err().to_string();
        assert!(err.contains("password or access_token"), "{err}");
    }
}
