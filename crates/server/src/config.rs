//! The focus's configuration file: TOML, every key overridable as `CASCADE_<SECTION>__<KEY>`.

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
    /// Process lifecycle (`[server]`).
    #[serde(default)]
    pub server: ServerConfig,
    /// The LiveKit front door and token service (`[livekit]`), off by default.
    #[serde(default)]
    pub livekit: cascade_livekit::LiveKitConfig,
}

/// The sections a configuration file may have.
const SECTIONS: [&str; 7] = [
    "matrix",
    "conference",
    "rtc",
    "http",
    "log",
    "server",
    "livekit",
];

/// `[server]`: process lifecycle.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Seconds a drain (after SIGTERM) waits for running calls to end before hanging them up.
    pub drain_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            drain_timeout_secs: 600,
        }
    }
}

impl ServerConfig {
    /// How long a drain waits for calls to end.
    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.drain_timeout_secs)
    }
}

/// `[http]`: the health, readiness and metrics endpoint.
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

fn figment(path: &Path) -> Figment {
    Figment::new().merge(Toml::file_exact(path)).merge(
        Env::prefixed("CASCADE_")
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    )
}

/// Adds each error figment reports (it may hold several) to `problems`.
fn push_errors(problems: &mut Vec<String>, error: figment::Error) {
    for error in error {
        problems.push(error.to_string());
    }
}

impl Config {
    /// Reads `path` and applies `CASCADE_<SECTION>__<KEY>` environment overrides; the error
    /// lists every problem found.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match Self::check(path) {
            Ok(config) => Ok(config),
            Err(problems) => anyhow::bail!(
                "invalid configuration in {}:\n  - {}",
                path.display(),
                problems.join("\n  - ")
            ),
        }
    }

    /// Reads and validates `path` (with environment overrides), collecting every problem: each
    /// section is read on its own so one bad section does not hide another's mistakes.
    pub fn check(path: &Path) -> Result<Self, Vec<String>> {
        if let Err(err) = std::fs::metadata(path) {
            return Err(vec![format!("cannot read {}: {err}", path.display())]);
        }
        let figment = figment(path);
        let mut problems = Vec::new();
        match figment.extract::<figment::value::Dict>() {
            Ok(dict) => {
                for key in dict.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
                    problems.push(format!(
                        "unknown section [{key}] (expected one of {})",
                        SECTIONS.join(", ")
                    ));
                }
            }
            Err(err) => {
                push_errors(&mut problems, err);
                return Err(problems);
            }
        }
        let matrix = figment
            .extract_inner::<MatrixConfig>("matrix")
            .map_err(|e| push_errors(&mut problems, e))
            .ok();
        fn section<T: serde::de::DeserializeOwned + Default>(
            figment: &Figment,
            name: &str,
            problems: &mut Vec<String>,
        ) -> T {
            if !figment.contains(name) {
                return T::default();
            }
            figment.extract_inner(name).unwrap_or_else(|e| {
                push_errors(problems, e);
                T::default()
            })
        }
        let conference = section::<ConferenceConfig>(&figment, "conference", &mut problems);
        let rtc = section::<MediaConfig>(&figment, "rtc", &mut problems);
        let http = section::<HttpConfig>(&figment, "http", &mut problems);
        let log = section::<LogConfig>(&figment, "log", &mut problems);
        let server = section::<ServerConfig>(&figment, "server", &mut problems);
        let livekit = section::<cascade_livekit::LiveKitConfig>(&figment, "livekit", &mut problems);
        let Some(matrix) = matrix else {
            return Err(problems);
        };
        let config = Self {
            matrix,
            conference,
            rtc,
            http,
            log,
            server,
            livekit,
        };
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// What the types alone cannot check, one sentence per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let m = &self.matrix;
        if m.password.is_none() && m.access_token.is_none() {
            problems.push("[matrix] needs password or access_token".to_owned());
        }
        if !(m.homeserver_url.starts_with("http://") || m.homeserver_url.starts_with("https://")) {
            problems.push(format!(
                "[matrix] homeserver_url {:?} is not an http:// or https:// URL",
                m.homeserver_url
            ));
        }
        let user = m
            .user_id
            .strip_prefix('@')
            .and_then(|rest| rest.split_once(':'));
        if !user.is_some_and(|(local, server)| !local.is_empty() && !server.is_empty()) {
            problems.push(format!(
                "[matrix] user_id {:?} is not a full user id like @focus:example.org",
                m.user_id
            ));
        }
        if m.device_id.trim().is_empty() {
            problems.push("[matrix] device_id is empty".to_owned());
        }
        if m.state_dir.as_os_str().is_empty() {
            problems.push("[matrix] state_dir is empty".to_owned());
        }
        problems.extend(self.livekit.problems());
        let rtc = &self.rtc;
        if let Some(ip) = rtc.public_ips.iter().find(|ip| ip.is_unspecified()) {
            problems.push(format!(
                "[rtc] public_ips contains {ip}, which clients cannot reach"
            ));
        }
        if rtc.keepalive_interval_secs >= rtc.keepalive_timeout_secs {
            problems.push(format!(
                "[rtc] keepalive_interval_secs ({}) must be below keepalive_timeout_secs ({})",
                rtc.keepalive_interval_secs, rtc.keepalive_timeout_secs
            ));
        }
        let loops = rtc.loops();
        if rtc.udp_port != 0 && usize::from(rtc.udp_port) + loops > usize::from(u16::MAX) + 1 {
            problems.push(format!(
                "[rtc] udp_port {} + {loops} event loops runs past port 65535",
                rtc.udp_port
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problems.push(format!(
                "[log] level {:?} is not a tracing filter (e.g. \"info\" or \"cascade_media=debug,info\")",
                self.log.level
            ));
        }
        problems
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
    // figment's Jail closure must return figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    fn example_config_parses() {
        // In a Jail: another test sets CASCADE_* variables, and the Jail serializes the two.
        figment::Jail::expect_with(|_| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cascade.toml");
            let config = Config::load(&path).map_err(|e| e.to_string())?;
            assert_eq!(config.rtc.udp_port, 7882);
            assert_eq!(config.matrix.device_id, "CASCADE");
            assert_eq!(config.server.drain_timeout_secs, 600);
            Ok(())
        });
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
            assert_eq!(config.server.drain_timeout_secs, 600);
            Ok(())
        });
    }

    #[test]
    fn rejects_unknown_keys_and_missing_credentials() {
        let unknown = write(&format!("{MINIMAL}\n[rtc]\nudp_prot = 1\n"));
        assert!(Config::load(unknown.path()).is_err());
        // In every section: a misspelt `require_encryption` must not leave plaintext calls
        // accepted unnoticed.
        let misspelt = MINIMAL.replace("[matrix]\n", "[matrix]\nrequire_encrytion = true\n");
        assert_ne!(misspelt, MINIMAL);
        let problems = Config::check(write(&misspelt).path()).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("require_encrytion")),
            "{problems:?}"
        );
        let misspelt = format!("{MINIMAL}\n[conference]\nauthorisation = \"open\"\n");
        let problems = Config::check(write(&misspelt).path()).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("authorisation")),
            "{problems:?}"
        );
        let no_secret = write(&MINIMAL.replace("password = \"secret\"\n", ""));
        let err = Config::load(no_secret.path()).unwrap_err().to_string();
        assert!(err.contains("password or access_token"), "{err}");
    }

    #[test]
    fn check_reports_every_problem() {
        let text = MINIMAL
            .replace("http://127.0.0.1:8008", "127.0.0.1:8008")
            .replace("password = \"secret\"\n", "")
            + "\n[rtc]\nudp_prot = 1\n[log]\nformat = \"xml\"\n[srever]\nx = 1\n[server]\ndrain_timeout_secs = -1\n";
        let file = write(&text);
        let problems = Config::check(file.path()).unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "udp_prot",
            "xml",
            "[srever]",
            "drain_timeout_secs",
            "password or access_token",
            "homeserver_url",
        ] {
            assert!(all.contains(expected), "{expected} missing from:\n{all}");
        }
        let missing = write("[matrix]\nuser_id = \"@f:hs\"\n");
        let problems = Config::check(missing.path()).unwrap_err().join("\n");
        assert!(problems.contains("homeserver_url"), "{problems}");
        assert!(Config::check(Path::new("/nonexistent/cascade.toml")).is_err());
    }
}
