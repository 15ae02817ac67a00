//! Starting, supervising and stopping one Synapse process.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rand::Rng;
use rand::distr::Alphanumeric;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tracing::{debug, info, warn};

use crate::config::{self, Layout, SERVER_NAME};
use crate::register::{Registered, register_via};

/// How long Synapse may take to answer `/_matrix/client/versions`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Attempts to start, in case another process grabs our free port first.
const START_ATTEMPTS: u32 = 3;

/// Number of log lines included in error messages.
const TAIL_LINES: usize = 40;

/// A real Synapse homeserver on 127.0.0.1, with its own temp dir and database; killed on drop.
pub struct Synapse {
    child: Option<Child>,
    layout: Layout,
    port: u16,
    url: String,
    shared_secret: String,
    http: reqwest::Client,
    // Declared last so the directory outlives everything above when dropped.
    _dir: TempDir,
}

/// Why a started process did not become ready.
enum NotReady {
    Exited(ExitStatus),
    TimedOut,
}

impl Synapse {
    /// Installs Synapse if needed, then starts a fresh homeserver on 127.0.0.1.
    pub async fn start() -> Result<Synapse> {
        let python = tokio::task::spawn_blocking(crate::install::ensure_installed)
            .await
            .context("Synapse install task panicked")??;

        let dir = tempfile::Builder::new()
            .prefix("cascade-synapse-")
            .tempdir()
            .context("creating a temp dir for Synapse")?;
        let layout = Layout::new(dir.path());
        let shared_secret = random_secret();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building HTTP client")?;

        for attempt in 1..=START_ATTEMPTS {
            let port = free_port()?;
            config::write(&layout, port, &shared_secret)?;
            if attempt == 1 {
                generate_signing_key(&python, &layout).await?;
            }
            let url = format!("http://127.0.0.1:{port}");
            let started = Instant::now();
            let mut child = spawn(&python, &layout)?;
            match wait_ready(&http, &url, &mut child).await {
                Ok(()) => {
                    info!(%url, dir = %layout.dir().display(), elapsed = ?started.elapsed(), "Synapse is ready");
                    return Ok(Synapse {
                        child: Some(child),
                        layout,
                        port,
                        url,
                        shared_secret,
                        http,
                        _dir: dir,
                    });
                }
                Err(NotReady::Exited(status))
                    if attempt < START_ATTEMPTS && lost_port_race(&layout) =>
                {
                    warn!(port, %status, "port was taken before Synapse bound it; retrying");
                }
                Err(NotReady::Exited(status)) => {
                    bail!(
                        "Synapse exited with {status} before becoming ready\n{}",
                        log_tail(&layout)
                    );
                }
                Err(NotReady::TimedOut) => {
                    // `child` is killed on drop.
                    bail!(
                        "Synapse did not answer {url}/_matrix/client/versions within {READY_TIMEOUT:?}\n{}",
                        log_tail(&layout)
                    );
                }
            }
        }
        Err(anyhow!(
            "Synapse could not bind a free port after {START_ATTEMPTS} attempts"
        ))
    }

    /// Base URL, e.g. "http://127.0.0.1:PORT".
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port the client API listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server name ("localhost").
    pub fn server_name(&self) -> &str {
        SERVER_NAME
    }

    /// The registration shared secret (the load tester registers users with it).
    pub fn shared_secret(&self) -> &str {
        &self.shared_secret
    }

    /// The temp dir holding this homeserver's config, database and logs (deleted on drop).
    pub fn dir(&self) -> &Path {
        self.layout.dir()
    }

    /// The last lines of this homeserver's console output and log file, for diagnosing failures.
    pub fn log_tail(&self) -> String {
        log_tail(&self.layout)
    }

    /// Registers a user and returns its credentials.
    pub async fn register(
        &self,
        localpart: &str,
        password: &str,
        admin: bool,
    ) -> Result<Registered> {
        register_via(
            &self.http,
            &self.url,
            &self.shared_secret,
            localpart,
            password,
            admin,
        )
        .await
    }

    /// Stops the homeserver (also done on drop).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().context("polling Synapse")?.is_none() {
                child.start_kill().context("killing Synapse")?;
            }
            let status = child.wait().await.context("waiting for Synapse to exit")?;
            debug!(%status, url = %self.url, "Synapse stopped");
        }
        Ok(())
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Best effort: the process may already have exited.
            let _ = child.start_kill();
        }
    }
}

impl std::fmt::Debug for Synapse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Synapse")
            .field("url", &self.url)
            .field("dir", &self.layout.dir())
            .field("running", &self.child.is_some())
            .finish_non_exhaustive()
    }
}

/// A random alphanumeric registration shared secret.
fn random_secret() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading bound address")?
        .port())
}

/// Writes the signing key, with the dedicated script or, failing that, `--generate-keys`.
async fn generate_signing_key(python: &Path, layout: &Layout) -> Result<()> {
    let script = Command::new(python)
        .args(["-m", "synapse._scripts.generate_signing_key", "-o"])
        .arg(layout.signing_key())
        .current_dir(layout.dir())
        .output()
        .await
        .context("running generate_signing_key")?;
    if script.status.success() && layout.signing_key().is_file() {
        return Ok(());
    }
    debug!("generate_signing_key unavailable; using --generate-keys");
    let fallback = Command::new(python)
        .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
        .arg(layout.config())
        .current_dir(layout.dir())
        .output()
        .await
        .context("running synapse --generate-keys")?;
    if !fallback.status.success() || !layout.signing_key().is_file() {
        bail!(
            "could not generate a signing key:\n{}",
            tail(&String::from_utf8_lossy(&fallback.stderr), TAIL_LINES)
        );
    }
    Ok(())
}

/// Spawns Synapse with its output captured in the console log.
fn spawn(python: &Path, layout: &Layout) -> Result<Child> {
    let console = std::fs::File::create(layout.console())
        .with_context(|| format!("creating {}", layout.console().display()))?;
    let console_err = console
        .try_clone()
        .context("duplicating console log handle")?;
    Command::new(python)
        .args(["-m", "synapse.app.homeserver", "-c"])
        .arg(layout.config())
        .current_dir(layout.dir())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", python.display()))
}

/// Polls `/_matrix/client/versions` until it answers 200, the process exits, or time runs out.
async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    child: &mut Child,
) -> std::result::Result<(), NotReady> {
    let probe = format!("{url}/_matrix/client/versions");
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotReady::Exited(status));
        }
        let answer = http
            .get(&probe)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(response) = answer
            && response.status() == reqwest::StatusCode::OK
        {
            return Ok(());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Err(NotReady::TimedOut)
}

/// Whether the logs say the listener's port was already in use.
fn lost_port_race(layout: &Layout) -> bool {
    [layout.console(), layout.log()]
        .iter()
        .any(|path| read_lossy(path).contains("Address already in use"))
}

/// The tails of the console output and the log file, labelled.
fn log_tail(layout: &Layout) -> String {
    let mut out = String::new();
    for path in [layout.console(), layout.log()] {
        out.push_str(&format!("--- {} ---\n", path.display()));
        out.push_str(&tail(&read_lossy(&path), TAIL_LINES));
        out.push('\n');
    }
    out
}

/// A file's contents, or an empty string if it cannot be read.
fn read_lossy(path: &PathBuf) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
