//! Running the `cascade` focus as a real process against a test homeserver.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How to start a focus.
#[derive(Clone, Debug)]
pub struct FocusOptions {
    /// Path of the `cascade` binary.
    pub binary: PathBuf,
    /// The homeserver's base URL.
    pub homeserver_url: String,
    /// The focus's Matrix user id.
    pub user_id: String,
    /// The focus's password.
    pub password: String,
    /// The device id the focus logs in as.
    pub device_id: String,
    /// `membership` or `open`.
    pub authorization: String,
    /// Extra `CASCADE_<SECTION>__<KEY>` variables.
    pub env: Vec<(String, String)>,
}

impl FocusOptions {
    /// Options for a focus logging in as `user_id` on `homeserver_url`.
    pub fn new(
        binary: impl Into<PathBuf>,
        homeserver_url: &str,
        user_id: &str,
        password: &str,
    ) -> Self {
        Self {
            binary: binary.into(),
            homeserver_url: homeserver_url.to_owned(),
            user_id: user_id.to_owned(),
            password: password.to_owned(),
            device_id: "CASCADE".to_owned(),
            authorization: "membership".to_owned(),
            env: Vec::new(),
        }
    }
}

/// A running focus process with its own state directory, stopped on drop.
#[derive(Debug)]
pub struct Focus {
    options: FocusOptions,
    dir: tempfile::TempDir,
    http_port: u16,
    child: Option<Child>,
    starts: u32,
}

/// The focus process ends before its directory is removed: the fields drop in order, and a
/// focus still running when `dir` went would write its state there again and leave it behind.
impl Drop for Focus {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.start_kill().is_err() {
            return;
        }
        // SIGKILL ends it within moments; reaped here so that nothing writes to `dir` after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Focus {
    /// Writes a configuration, starts the focus and waits until it is ready.
    pub async fn start(options: FocusOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cascade-focus-")
            .tempdir()
            .context("creating the focus's directory")?;
        let http_port = crate::server::free_port()?;
        let mut focus = Self {
            options,
            dir,
            http_port,
            child: None,
            starts: 0,
        };
        focus.write_config()?;
        focus.spawn().await?;
        Ok(focus)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("cascade.toml")
    }

    /// The focus's state directory (sync token and keys).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The focus's HTTP base URL.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The focus's Matrix user id.
    pub fn user_id(&self) -> &str {
        &self.options.user_id
    }

    /// The focus's device id.
    pub fn device_id(&self) -> &str {
        &self.options.device_id
    }

    /// The process id of the running focus, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    fn write_config(&self) -> Result<()> {
        let o = &self.options;
        let text = format!(
            r#"[matrix]
homeserver_url = "{hs}"
user_id = "{user}"
device_id = "{device}"
password = "{password}"
state_dir = "{state}"

[conference]
authorization = "{auth}"
hold_ms = 5000

[rtc]
bind_ip = "127.0.0.1"
udp_port = 0
event_loops = 1

[http]
listen = "127.0.0.1:{port}"
"#,
            hs = o.homeserver_url,
            user = o.user_id,
            device = o.device_id,
            password = o.password,
            state = self.state_dir().display(),
            auth = o.authorization,
            port = self.http_port,
        );
        std::fs::write(self.config_path(), text).context("writing the focus configuration")
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("focus-{start}.log"))
    }

    async fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts))?;
        let mut command = Command::new(&self.options.binary);
        command
            .arg("--config")
            .arg(self.config_path())
            .env(
                "RUST_LOG",
                std::env::var("CASCADE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        for (key, value) in &self.options.env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.options.binary.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// Waits until `/readyz` answers 200 (logged in and syncing).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let client = cascade_signalling::http::client()?;
        let url = format!("{}/readyz", self.http_url());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("the focus exited with {status}:\n{}", self.log_tail());
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the focus was not ready within {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM (the start of a drain) without waiting; `false` if the focus is not running.
    pub fn terminate(&self) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) == 0 }
    }

    /// Waits up to `timeout` for the focus to exit; returns its exit code (`None` if killed by
    /// a signal), or an error if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(child) = self.child.as_mut() else {
            bail!("the focus is not running");
        };
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => {
                let code = status?.code();
                self.child = None;
                Ok(code)
            }
            Err(_) => bail!("the focus still runs after {timeout:?}"),
        }
    }

    /// Stops the focus and waits for it to exit: SIGTERM, which exits at once when no call
    /// runs; a second SIGTERM after 2 s ends a drain; SIGKILL after 10 s more.
    pub async fn stop(&mut self) -> Result<Option<i32>> {
        if self.child.is_none() {
            return Ok(None);
        }
        self.terminate();
        if let Ok(code) = self.wait_exit(Duration::from_secs(2)).await {
            return Ok(code);
        }
        self.terminate();
        if let Ok(code) = self.wait_exit(Duration::from_secs(10)).await {
            return Ok(code);
        }
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(None)
    }

    /// The value of one series on `/metrics`, `series` with its labels as Prometheus prints
    /// them (e.g. `cascade_dropped_packets_total{reason="unrouted"}`); 0 when absent.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let text = cascade_signalling::http::client()?
            .get(format!("{}/metrics", self.http_url()))
            .send()
            .await?
            .text()
            .await?;
        let prefix = format!("{series} ");
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of the focus process; it
    /// takes effect at the next start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.options.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.options.env.push((key.to_owned(), value.to_owned()));
        }
    }

    /// The log of start number `start` (1 = the first run).
    pub fn log_of_run(&self, start: u32) -> String {
        std::fs::read_to_string(self.log_path(start)).unwrap_or_default()
    }

    /// How many times the focus was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Kills the focus with SIGKILL (a crash: nothing is saved, nothing hung up) and starts it
    /// again with the same configuration and state directory.
    pub async fn crash_and_restart(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        self.spawn().await
    }

    /// Starts the focus again with the same configuration and state directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn().await
    }

    /// The last lines of the current run's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(self.starts), 60)
    }

    /// The whole log of the current run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
