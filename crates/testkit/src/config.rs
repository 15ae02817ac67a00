//! Generating the homeserver and logging configuration for a test Synapse.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The server name every test homeserver uses.
pub(crate) const SERVER_NAME: &str = "localhost";

/// Rate limit applied to every `rc_*` setting, high enough never to throttle load tests.
const UNLIMITED: &str = "{per_second: 1000, burst_count: 10000}";

/// Where each file of one homeserver instance lives inside its temp dir.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// A layout rooted at `dir`.
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The instance's root directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `homeserver.yaml`.
    pub(crate) fn config(&self) -> PathBuf {
        self.dir.join("homeserver.yaml")
    }

    /// The Python logging config.
    pub(crate) fn log_config(&self) -> PathBuf {
        self.dir.join("log_config.yaml")
    }

    /// Synapse's own log file (WARNING and above).
    pub(crate) fn log(&self) -> PathBuf {
        self.dir.join("homeserver.log")
    }

    /// The child process's captured stdout and stderr.
    pub(crate) fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The server's signing key.
    pub(crate) fn signing_key(&self) -> PathBuf {
        self.dir.join("signing.key")
    }

    /// The federation listener's self-signed TLS certificate (PEM).
    pub(crate) fn tls_certificate(&self) -> PathBuf {
        self.dir.join("federation.crt")
    }

    /// The federation listener's TLS private key (PEM).
    pub(crate) fn tls_private_key(&self) -> PathBuf {
        self.dir.join("federation.key")
    }

    fn database(&self) -> PathBuf {
        self.dir.join("homeserver.db")
    }

    fn media_store(&self) -> PathBuf {
        self.dir.join("media_store")
    }
}

/// The server name of a federating homeserver whose federation listener is on `federation_port`.
///
/// An IP literal with an explicit port: other servers connect to it directly, without
/// `.well-known` or SRV lookups.
pub(crate) fn federating_server_name(federation_port: u16) -> String {
    format!("127.0.0.1:{federation_port}")
}

/// Writes `homeserver.yaml` and the logging config for a server whose client listener is on
/// `port` and, when given, whose TLS federation listener is on `federation_port`.
pub(crate) fn write(
    layout: &Layout,
    port: u16,
    federation_port: Option<u16>,
    shared_secret: &str,
) -> Result<()> {
    let homeserver = homeserver_yaml(layout, port, federation_port, shared_secret)?;
    std::fs::write(layout.config(), homeserver)
        .with_context(|| format!("writing {}", layout.config().display()))?;
    let logging = log_config_yaml(&layout.log())?;
    std::fs::write(layout.log_config(), logging)
        .with_context(|| format!("writing {}", layout.log_config().display()))?;
    Ok(())
}

/// Renders `homeserver.yaml`: loopback-only client listener, sqlite, no rate limits, and
/// with `federation_port` a TLS federation listener open to other servers on loopback.
fn homeserver_yaml(
    layout: &Layout,
    port: u16,
    federation_port: Option<u16>,
    shared_secret: &str,
) -> Result<String> {
    let server_name = match federation_port {
        Some(federation_port) => federating_server_name(federation_port),
        None => SERVER_NAME.to_owned(),
    };
    let mut yaml = format!(
        "\
server_name: {server_name}
report_stats: false
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      # `openid` only serves /_matrix/federation/v1/openid/userinfo, which a
      # MatrixRTC focus uses to validate OpenID tokens; it is not federation.
      - names: [client, openid]
        compress: false
{federation_listener}database:
  name: sqlite3
  args:
    database: {database}
media_store_path: {media}
signing_key_path: {signing_key}
log_config: {log_config}
registration_shared_secret: {secret}
enable_registration: false
# Cheap password hashing: test accounts, and load tests register hundreds of them.
bcrypt_rounds: 4
suppress_key_server_warning: true
trusted_key_servers: []
",
        server_name = quote(&server_name)?,
        federation_listener = federation_port
            .map(federation_listener_yaml)
            .unwrap_or_default(),
        database = quote_path(&layout.database())?,
        media = quote_path(&layout.media_store())?,
        signing_key = quote_path(&layout.signing_key())?,
        log_config = quote_path(&layout.log_config())?,
        secret = quote(shared_secret)?,
    );
    if federation_port.is_some() {
        yaml.push_str(&federation_settings_yaml(layout)?);
    }
    yaml.push_str(&rate_limits_yaml());
    Ok(yaml)
}

/// Renders the federation listener, an item of the `listeners` list.
fn federation_listener_yaml(federation_port: u16) -> String {
    // No line continuation after the opening quote: it would eat the item's indentation.
    format!(
        "  - port: {federation_port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: true
    x_forwarded: false
    resources:
      # `federation` also serves the server's signing keys (/_matrix/key).
      - names: [federation]
        compress: false
"
    )
}

/// Renders the settings that let test homeservers on loopback federate: the federation
/// listener's certificate, and trust in peers whose certificates are self-signed and whose
/// address is 127.0.0.1.
fn federation_settings_yaml(layout: &Layout) -> Result<String> {
    Ok(format!(
        "\
# Federation with other test homeservers on loopback.
tls_certificate_path: {certificate}
tls_private_key_path: {private_key}
# The peers' certificates are self-signed.
federation_verify_certificates: false
# Outbound requests (federation among them) to loopback are blocked by default.
ip_range_blacklist: []
ip_range_whitelist: ['127.0.0.0/8']
",
        certificate = quote_path(&layout.tls_certificate())?,
        private_key = quote_path(&layout.tls_private_key())?,
    ))
}

/// Renders every rate limit Synapse supports, each set to [`UNLIMITED`].
fn rate_limits_yaml() -> String {
    const FLAT: &[&str] = &[
        "rc_message",
        "rc_registration",
        "rc_registration_token_validity",
        "rc_joins_per_room",
        "rc_3pid_validation",
        "rc_admin_redaction",
        "rc_key_requests",
        "rc_third_party_invite",
        "rc_media_create",
        "rc_delayed_event_mgmt",
        "rc_room_creation",
        "rc_reports",
        "rc_user_directory",
        "rc_profile",
    ];
    const NESTED: &[(&str, &[&str])] = &[
        ("rc_login", &["address", "account", "failed_attempts"]),
        ("rc_joins", &["local", "remote"]),
        ("rc_invites", &["per_room", "per_user", "per_issuer"]),
        ("rc_presence", &["per_user"]),
    ];

    let mut yaml = String::from("# Rate limits, raised so load tests are never throttled.\n");
    for key in FLAT {
        let _ = writeln!(yaml, "{key}: {UNLIMITED}");
    }
    for (key, children) in NESTED {
        let _ = writeln!(yaml, "{key}:");
        for child in *children {
            let _ = writeln!(yaml, "  {child}: {UNLIMITED}");
        }
    }
    yaml
}

/// Renders a Python logging config sending WARNING and above to `log_file`.
fn log_config_yaml(log_file: &Path) -> Result<String> {
    Ok(format!(
        "\
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {file}
    encoding: utf8
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
",
        file = quote_path(log_file)?
    ))
}

/// Quotes a string for YAML (a JSON string is a valid YAML double-quoted scalar).
fn quote(value: &str) -> Result<String> {
    serde_json::to_string(value).context("quoting a YAML string")
}

/// Quotes a path for YAML.
fn quote_path(path: &Path) -> Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("path is not UTF-8: {}", path.display()))?;
    quote(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homeserver_yaml_has_listener_and_limits() -> Result<()> {
        let layout = Layout::new(Path::new("/tmp/x y"));
        let yaml = homeserver_yaml(&layout, 4242, None, "s3\"cret")?;
        assert!(yaml.contains("  - port: 4242\n"));
        assert!(yaml.contains(r#"registration_shared_secret: "s3\"cret""#));
        assert!(yaml.contains(r#"database: "/tmp/x y/homeserver.db""#));
        assert!(yaml.contains("rc_message: {per_second: 1000, burst_count: 10000}"));
        assert!(yaml.contains("rc_login:\n  address: {per_second"));
        assert!(yaml.contains("server_name: \"localhost\"\n"));
        assert!(!yaml.contains("tls: true"));
        assert!(!yaml.contains("ip_range_blacklist"));
        Ok(())
    }

    #[test]
    fn federating_yaml_names_the_server_after_its_federation_listener() -> Result<()> {
        let layout = Layout::new(Path::new("/tmp/fed"));
        let yaml = homeserver_yaml(&layout, 4242, Some(4343), "secret")?;
        assert!(yaml.contains("server_name: \"127.0.0.1:4343\"\n"));
        assert_eq!(yaml.matches("\nlisteners:").count(), 1);
        assert!(yaml.contains("  - port: 4343\n"));
        assert!(yaml.contains("    tls: true\n"));
        assert!(yaml.contains("      - names: [federation]\n"));
        assert!(yaml.contains(r#"tls_certificate_path: "/tmp/fed/federation.crt""#));
        assert!(yaml.contains("federation_verify_certificates: false\n"));
        assert!(yaml.contains("ip_range_blacklist: []\n"));
        Ok(())
    }
}
