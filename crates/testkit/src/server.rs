//! Starting, supervising and stopping Synapse processes: one on its own, or two that federate.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rand::Rng;
use rand::distr::Alphanumeric;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tracing::{debug, info, warn};

use crate::config::{self, Layout, SERVER_NAME, federating_server_name};
use crate::register::{Registered, register_via};

/// How long Synapse may take to answer `/_matrix/client/versions` (and, when federating,
/// `/_matrix/federation/v1/version`).
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
    server_name: String,
    federation: Option<Federation>,
    shared_secret: String,
    http: reqwest::Client,
    // Declared last so the directory outlives everything above when dropped.
    _dir: TempDir,
}

/// The TLS federation listener of a federating homeserver.
#[derive(Debug)]
struct Federation {
    port: u16,
    url: String,
}

/// Why a started process did not become ready.
enum NotReady {
    Exited(ExitStatus),
    TimedOut,
}

/// A readiness probe: the URL to poll and the client to poll it with.
struct Probe {
    url: String,
    http: reqwest::Client,
}

impl Synapse {
    /// Installs Synapse if needed, then starts a fresh homeserver on 127.0.0.1.
    pub async fn start() -> Result<Synapse> {
        Self::launch(false, None).await
    }

    /// Starts a fresh homeserver as [`Self::start`] does, plus a TLS federation listener
    /// (self-signed certificate) through which it federates with other such servers on
    /// 127.0.0.1; its server name is `127.0.0.1:<federation port>`.
    pub async fn start_federating() -> Result<Synapse> {
        Self::launch(true, None).await
    }

    /// Starts two homeservers that federate with each other (see
    /// [`Self::start_federating`]), side by side.
    pub async fn start_federating_pair() -> Result<(Synapse, Synapse)> {
        // All four ports are chosen at once so the two servers cannot be handed the same one.
        let &[client_one, federation_one, client_two, federation_two] = free_ports(4)?.as_slice()
        else {
            bail!("free_ports(4) did not return four ports");
        };
        tokio::try_join!(
            Self::launch(true, Some(vec![client_one, federation_one])),
            Self::launch(true, Some(vec![client_two, federation_two]))
        )
    }

    /// Starts a homeserver, with a federation listener when `federating`; the first attempt
    /// uses `ports` (client, then federation) when given, later ones free ports found anew.
    async fn launch(federating: bool, mut ports: Option<Vec<u16>>) -> Result<Synapse> {
        let python = tokio::task::spawn_blocking(crate::install::ensure_installed)
            .await
            .context("Synapse install task panicked")??;

        let dir = tempfile::Builder::new()
            .prefix("cascade-synapse-")
            .tempdir()
            .context("creating a temp dir for Synapse")?;
        let layout = Layout::new(dir.path());
        let shared_secret = random_secret();
        let http = cascade_signalling::http::client_builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building HTTP client")?;
        let federation_http = if federating {
            let certificate = write_certificate(&layout)?;
            Some(trusting_client(&certificate)?)
        } else {
            None
        };

        for attempt in 1..=START_ATTEMPTS {
            let ports = match ports.take() {
                Some(ports) => ports,
                None => free_ports(if federating { 2 } else { 1 })?,
            };
            let port = *ports.first().context("no port for the client listener")?;
            let federation = ports.get(1).filter(|_| federating).map(|&port| Federation {
                port,
                url: format!("https://127.0.0.1:{port}"),
            });
            let federation_port = federation.as_ref().map(|federation| federation.port);
            config::write(&layout, port, federation_port, &shared_secret)?;
            if attempt == 1 {
                generate_signing_key(&python, &layout).await?;
            }
            let url = format!("http://127.0.0.1:{port}");
            let mut probes = vec![Probe {
                url: format!("{url}/_matrix/client/versions"),
                http: http.clone(),
            }];
            if let (Some(federation), Some(federation_http)) = (&federation, &federation_http) {
                probes.push(Probe {
                    url: format!("{}/_matrix/federation/v1/version", federation.url),
                    http: federation_http.clone(),
                });
            }
            let started = Instant::now();
            let mut child = spawn(&python, &layout)?;
            match wait_ready(&probes, &mut child).await {
                Ok(()) => {
                    let server_name = match federation_port {
                        Some(federation_port) => federating_server_name(federation_port),
                        None => SERVER_NAME.to_owned(),
                    };
                    info!(%url, %server_name, dir = %layout.dir().display(), elapsed = ?started.elapsed(), "Synapse is ready");
                    return Ok(Synapse {
                        child: Some(child),
                        layout,
                        port,
                        url,
                        server_name,
                        federation,
                        shared_secret,
                        http,
                        _dir: dir,
                    });
                }
                Err(NotReady::Exited(status))
                    if attempt < START_ATTEMPTS && lost_port_race(&layout) =>
                {
                    warn!(?ports, %status, "a port was taken before Synapse bound it; retrying");
                }
                Err(NotReady::Exited(status)) => {
                    bail!(
                        "Synapse exited with {status} before becoming ready\n{}",
                        log_tail(&layout)
                    );
                }
                Err(NotReady::TimedOut) => {
                    // `child` is killed on drop.
                    let urls: Vec<&str> = probes.iter().map(|probe| probe.url.as_str()).collect();
                    bail!(
                        "Synapse did not answer {} within {READY_TIMEOUT:?}\n{}",
                        urls.join(" and "),
                        log_tail(&layout)
                    );
                }
            }
        }
        Err(anyhow!(
            "Synapse could not bind free ports after {START_ATTEMPTS} attempts"
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

    /// The server name: "localhost", or "127.0.0.1:<federation port>" for a federating server.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Base URL of the TLS federation listener, e.g. "https://127.0.0.1:PORT", when federating.
    pub fn federation_url(&self) -> Option<&str> {
        self.federation
            .as_ref()
            .map(|federation| federation.url.as_str())
    }

    /// The TCP port the federation listener listens on (on 127.0.0.1), when federating.
    pub fn federation_port(&self) -> Option<u16> {
        self.federation.as_ref().map(|federation| federation.port)
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

    /// Starts the homeserver again after [`Self::stop`] (or stops it first): same port, same
    /// database, so sessions, rooms and pending to-device messages survive, as across a real
    /// homeserver's restart. Only for a homeserver without a federation listener.
    pub async fn start_again(&mut self) -> Result<()> {
        ensure!(
            self.federation.is_none(),
            "start_again is for homeservers without federation"
        );
        self.stop().await?;
        let python = tokio::task::spawn_blocking(crate::install::ensure_installed)
            .await
            .context("Synapse install task panicked")??;
        let probes = [Probe {
            url: format!("{}/_matrix/client/versions", self.url),
            http: self.http.clone(),
        }];
        let mut child = spawn(&python, &self.layout)?;
        match wait_ready(&probes, &mut child).await {
            Ok(()) => {
                self.child = Some(child);
                info!(url = %self.url, "Synapse is ready again");
                Ok(())
            }
            Err(NotReady::Exited(status)) => bail!(
                "Synapse exited with {status} when started again\n{}",
                log_tail(&self.layout)
            ),
            Err(NotReady::TimedOut) => bail!(
                "Synapse did not answer within {READY_TIMEOUT:?} when started again\n{}",
                log_tail(&self.layout)
            ),
        }
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
            .field("server_name", &self.server_name)
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

/// `count` distinct TCP ports on 127.0.0.1 that were free a moment ago.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    // All are bound at once, so the kernel cannot hand out the same port twice.
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding 127.0.0.1:0")?;
    listeners
        .iter()
        .map(|listener| {
            Ok(listener
                .local_addr()
                .context("reading bound address")?
                .port())
        })
        .collect()
}

/// Generates the federation listener's self-signed certificate (for 127.0.0.1 and
/// localhost) and private key, writes both, and returns the certificate (PEM).
fn write_certificate(layout: &Layout) -> Result<String> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .context("generating a self-signed certificate")?;
    let certificate = cert.pem();
    std::fs::write(layout.tls_certificate(), &certificate)
        .with_context(|| format!("writing {}", layout.tls_certificate().display()))?;
    std::fs::write(layout.tls_private_key(), signing_key.serialize_pem())
        .with_context(|| format!("writing {}", layout.tls_private_key().display()))?;
    Ok(certificate)
}

/// An HTTP client that trusts only `certificate` (PEM), for probing a federation listener.
fn trusting_client(certificate: &str) -> Result<reqwest::Client> {
    let certificate = reqwest::Certificate::from_pem(certificate.as_bytes())
        .context("reading the generated certificate")?;
    cascade_signalling::http::client_builder()
        .no_proxy()
        .tls_certs_only([certificate])
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the federation probe's HTTP client")
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

/// Polls each probe in turn until it answers 200, the process exits, or time runs out.
async fn wait_ready(probes: &[Probe], child: &mut Child) -> std::result::Result<(), NotReady> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for probe in probes {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(NotReady::Exited(status));
            }
            if Instant::now() >= deadline {
                return Err(NotReady::TimedOut);
            }
            let answer = probe
                .http
                .get(&probe.url)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(response) = answer
                && response.status() == reqwest::StatusCode::OK
            {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    Ok(())
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
