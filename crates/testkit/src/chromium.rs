//! Headless Chromium (Debian's `chromium` package, which `scripts/prepare.sh` installs) showing
//! one page, with fake camera and microphone, for the browser tests.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::{Child, Command};

/// Where Debian's package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Fails with a clear message when Chromium is missing (the browser tests fail, not skip).
pub fn require() -> Result<()> {
    if !std::path::Path::new(CHROMIUM).exists() {
        bail!(
            "{CHROMIUM} is missing: this test needs Debian's chromium package \
             (`bash scripts/prepare.sh` installs it)"
        );
    }
    Ok(())
}

/// One headless Chromium showing one page, with a profile of its own; on drop its processes
/// are killed, then the profile (and the scratch files Chromium keeps in `TMPDIR`) removed.
pub struct Browser {
    name: String,
    log: PathBuf,
    child: Child,
    // Dropped after `drop` killed the browser: removed while renderer processes still wrote
    // into it, the directory was left behind half-removed, one per browser run.
    _profile: tempfile::TempDir,
}

/// How [`Browser::launch_with`] starts Chromium, beyond [`Browser::launch`]'s defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct Launch<'a> {
    /// The fake camera plays this Y4M file in a loop (at the file's size and frame rate)
    /// instead of Chromium's test pattern.
    pub video: Option<&'a Path>,
    /// WebRTC behaves as if the machine's CPU could not keep up with encoding, from when a
    /// video sender starts for five minutes (its `WebRTC-ForceSimulatedOveruseIntervalMs`
    /// field trial): the encoder adapts as on a loaded machine, step by step every few
    /// seconds (`qualityLimitationReason` `"cpu"`), whatever this machine's load.
    pub cpu_overuse: bool,
}

impl Browser {
    /// Starts Chromium named `name` (for its log) on `url`, with fake media devices and
    /// autoplay allowed; its output goes to a log file read by [`Browser::log_tail`].
    pub async fn launch(name: &str, url: &str) -> Result<Self> {
        Self::launch_with(name, url, Launch::default()).await
    }

    /// Starts Chromium as [`Browser::launch`] does, and as `launch` says.
    pub async fn launch_with(name: &str, url: &str, launch: Launch<'_>) -> Result<Self> {
        let Launch { video, cpu_overuse } = launch;
        let profile = tempfile::Builder::new()
            .prefix(&format!("cascade-chromium-{name}-"))
            .tempdir()
            .context("creating a Chromium profile directory")?;
        let log = profile.path().join("chromium.log");
        let file = std::fs::File::create(&log)?;
        let scratch = profile.path().join("tmp");
        std::fs::create_dir(&scratch)?;
        let child = Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                "--allow-loopback-in-peer-connection",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--enable-logging=stderr",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(
                video.map(|video| format!("--use-file-for-fake-video-capture={}", video.display())),
            )
            // Normal for 1 ms, overused for 300 s, then under-used for 1 s (and again).
            .args(cpu_overuse.then_some(
                "--force-fieldtrials=WebRTC-ForceSimulatedOveruseIntervalMs/1-300000-1000/",
            ))
            .arg(url)
            .env("TMPDIR", &scratch)
            // Its own process group, so that drop kills the renderer and GPU processes too.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {CHROMIUM}"))?;
        Ok(Self {
            name: name.to_owned(),
            log,
            child,
            _profile: profile,
        })
    }

    /// The browser's log lines where WebRTC refused a received RTP packet (SRTP
    /// authentication or replay: a packet sent twice, RFC 3711 §3.3.2). Chromium logs the
    /// first refusal and every hundredth after it, so none means none happened.
    pub fn refused_rtp(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("Failed to unprotect RTP packet"))
            .map(str::to_owned)
            .collect()
    }

    /// The last 25 lines of the browser's log, headed with its name.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "---- chromium {} log ----\n{}",
            self.name,
            lines[lines.len().saturating_sub(25)..].join("\n")
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) with a negative pid signals the process group the browser leads
            // (`process_group(0)` above); no memory is shared.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        // Reap the browser itself before its profile goes (a few milliseconds after SIGKILL).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
