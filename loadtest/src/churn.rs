//! Churn: devices call one focus and hang up, over and over (thousands of join/leave cycles),
//! and the focus's footprint — memory, file descriptors, threads, and the calls, peer
//! connections and subscriptions on its event loops — must come back to where it was
//! (established TCP connections, which the homeserver client pools, only under a bound).
//!
//! The footprint is read twice, each time once the focus holds no call: after a first round in
//! which every device joins and leaves once (so that what the focus allocates once, such as
//! its pools and caches, is in the "before" figure), and after all the cycles. Between the two,
//! `devices` devices cycle side by side, each its own account; they publish audio and
//! subscribe to each other, so every cycle creates and tears down subscriptions too.

use crate::metrics::{self, FocusMetrics};
use crate::procstat;
use crate::scenario::{self, Target};
use anyhow::{Context, Result, bail};
use cascade_simclient::{SimClient, SimConfig, SubscribePolicy};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long one cycle may take from the invite to a connected call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the focus may take to drop every call once all devices hung up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Once the focus is idle, its RSS counts as settled when it moved by less than this fraction
/// over [`RSS_SETTLE_INTERVAL`].
const RSS_SETTLED: f64 = 0.01;
/// How far apart the idle focus's RSS is read to see it settle.
const RSS_SETTLE_INTERVAL: Duration = Duration::from_secs(2);
/// RSS may differ from the "before" figure by this fraction and still count as back.
pub const RSS_TOLERANCE: f64 = 0.10;
/// Established TCP connections a focus without calls may hold: the homeserver client's idle
/// pool (`HTTP_IDLE_CONNECTIONS_MAX`), its sync long-poll, and the load tester's own kept-alive
/// `/metrics` connection. How many of the pool's are open depends on the last burst of
/// requests, not on how many calls came before, so they are bounded, not compared.
pub const TCP_CONNECTIONS_MAX: u64 =
    cascade_signalling::client::HTTP_IDLE_CONNECTIONS_MAX as u64 + 2;

/// What a churn run does.
#[derive(Clone, Debug)]
pub struct ChurnOptions {
    /// Devices cycling side by side.
    pub devices: usize,
    /// Join/leave cycles after the first round, over all devices.
    pub cycles: usize,
    /// The run stops starting cycles after this long (the cycles done are reported).
    pub max_duration: Duration,
    /// Prefix of account names.
    pub account_prefix: String,
    /// Print a line every few hundred cycles.
    pub progress: bool,
}

/// What the focus holds at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Footprint {
    /// Resident memory (`VmRSS`), bytes.
    pub rss_bytes: u64,
    /// Open file descriptors (entries of `/proc/<pid>/fd`) other than established TCP
    /// connections: UDP sockets, listeners, files, pipes.
    pub open_fds: u64,
    /// Established TCP connections (to the homeserver, and `/metrics` scrapes).
    pub tcp_connections: u64,
    /// Threads (`Threads` of `/proc/<pid>/status`).
    pub threads: u64,
    /// Conferences on the event loops.
    pub conferences: f64,
    /// Calls on the event loops.
    pub participants: f64,
    /// Peer connections, in any state.
    pub peer_connections: f64,
    /// Subscriptions.
    pub subscriptions: f64,
}

impl Footprint {
    /// Reads the process `pid` and its `/metrics` at `metrics_url`.
    ///
    /// Errors: the process is gone, or its metrics cannot be read.
    pub async fn read(pid: u32, metrics_url: &str, http: &reqwest::Client) -> Result<Self> {
        // The scrape first: its kept-alive connection is then open at every reading.
        let m: FocusMetrics = metrics::scrape(http, metrics_url).await?;
        let sample = procstat::sample(pid)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let threads = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no Threads in /proc status")?;
        let established = established_tcp_inodes(pid);
        let mut open_fds = 0;
        let mut tcp_connections = 0;
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("listing /proc/{pid}/fd"))?
            .flatten()
        {
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if inode.is_some_and(|i| established.contains(&i)) {
                tcp_connections += 1;
            } else {
                open_fds += 1;
            }
        }
        Ok(Self {
            rss_bytes: sample.rss_bytes,
            open_fds,
            tcp_connections,
            threads,
            conferences: m.conferences,
            participants: m.participants,
            peer_connections: m.peer_connections,
            subscriptions: m.subscriptions,
        })
    }
}

/// The inodes of the established TCP sockets in `pid`'s network namespace
/// (`/proc/<pid>/net/tcp` and `tcp6`, state `01`).
fn established_tcp_inodes(pid: u32) -> std::collections::HashSet<u64> {
    let mut inodes = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(&"01"), Some(inode)) = (fields.get(3), fields.get(9))
                && let Ok(inode) = inode.parse()
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// What a churn run measured.
#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    /// Devices that cycled side by side.
    pub devices: usize,
    /// Cycles asked for.
    pub cycles_wanted: usize,
    /// Cycles completed (joined, connected, hung up).
    pub cycles_done: usize,
    /// Cycles that failed, with why (the first few).
    pub failures: Vec<String>,
    /// Cycles that failed in all.
    pub failed: usize,
    /// How long the cycles took, seconds.
    pub seconds: f64,
    /// The footprint after the first round.
    pub before: Footprint,
    /// The footprint after all the cycles.
    pub after: Footprint,
    /// The most subscriptions seen during the cycles (sampled each second).
    pub peak_subscriptions: f64,
}

impl ChurnReport {
    /// Why the run failed, if it did: cycles missing or failed, or a figure that did not come
    /// back (RSS within [`RSS_TOLERANCE`], everything else to at most its "before" value).
    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.cycles_done < self.cycles_wanted {
            why.push(format!(
                "{} of {} cycles done",
                self.cycles_done, self.cycles_wanted
            ));
        }
        if self.failed > 0 {
            why.push(format!(
                "{} cycles failed: {:?}",
                self.failed, self.failures
            ));
        }
        let (b, a) = (&self.before, &self.after);
        let rss_change = a.rss_bytes as f64 / (b.rss_bytes.max(1) as f64) - 1.0;
        if rss_change.abs() > RSS_TOLERANCE {
            why.push(format!(
                "RSS {} → {} bytes ({:+.1} %)",
                b.rss_bytes,
                a.rss_bytes,
                rss_change * 100.0
            ));
        }
        if a.tcp_connections > TCP_CONNECTIONS_MAX {
            why.push(format!(
                "{} TCP connections open, more than the {TCP_CONNECTIONS_MAX} a focus without calls holds",
                a.tcp_connections
            ));
        }
        for (name, before, after) in [
            ("open fds", b.open_fds as f64, a.open_fds as f64),
            ("threads", b.threads as f64, a.threads as f64),
            ("conferences", b.conferences, a.conferences),
            ("participants", b.participants, a.participants),
            ("peer connections", b.peer_connections, a.peer_connections),
            ("subscriptions", b.subscriptions, a.subscriptions),
        ] {
            if after > before {
                why.push(format!("{name} {before} → {after}"));
            }
        }
        if self.peak_subscriptions == 0.0 {
            why.push("no subscription was ever made".into());
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The report as a table: one row per figure, before, after and the change.
    pub fn table(&self) -> String {
        let (b, a) = (&self.before, &self.after);
        let mut out = format!(
            "churn: {} devices, {} of {} join/leave cycles in {:.1} s ({:.1} cycles/s), {} failed; peak subscriptions {}\n",
            self.devices,
            self.cycles_done,
            self.cycles_wanted,
            self.seconds,
            self.cycles_done as f64 / self.seconds.max(f64::EPSILON),
            self.failed,
            self.peak_subscriptions
        );
        out.push_str(&format!(
            "{:<18} {:>14} {:>14} {:>9}\n",
            "focus", "before", "after", "change"
        ));
        let rows = [
            (
                "RSS (KiB)",
                b.rss_bytes as f64 / 1024.0,
                a.rss_bytes as f64 / 1024.0,
            ),
            ("open fds", b.open_fds as f64, a.open_fds as f64),
            (
                "TCP connections",
                b.tcp_connections as f64,
                a.tcp_connections as f64,
            ),
            ("threads", b.threads as f64, a.threads as f64),
            ("conferences", b.conferences, a.conferences),
            ("participants", b.participants, a.participants),
            ("peer connections", b.peer_connections, a.peer_connections),
            ("subscriptions", b.subscriptions, a.subscriptions),
        ];
        for (name, before, after) in rows {
            let change = if before > 0.0 {
                format!("{:+.1} %", (after / before - 1.0) * 100.0)
            } else {
                format!("{:+}", after - before)
            };
            out.push_str(&format!(
                "{name:<18} {before:>14.0} {after:>14.0} {change:>9}\n"
            ));
        }
        out
    }
}

/// Joins with `config` (one device: its account and its session for all its cycles; invite,
/// answer, connected peer connection), stays until it receives media from someone or `hold`
/// passes, and hangs up.
async fn cycle(config: &SimConfig, hold: Duration) -> Result<()> {
    let client = SimClient::start(config.clone()).await?;
    if let Err(err) = scenario::wait_connected(&client, CONNECT_TIMEOUT).await {
        let _ = client.hangup().await;
        return Err(err);
    }
    let until = Instant::now() + hold;
    while Instant::now() < until && client.report().tracks.iter().all(|t| t.packets == 0) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.hangup().await
}

/// Waits until the focus holds no call and no peer connection and its RSS has stopped
/// falling (the allocator gives freed pages back over about a second, see the focus's
/// `malloc_conf`: reading at once would count pages that are on their way out), then reads
/// its footprint.
async fn settled(pid: u32, url: &str, http: &reqwest::Client) -> Result<Footprint> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut idle: Option<Footprint> = None;
    loop {
        let f = Footprint::read(pid, url, http).await?;
        if f.participants == 0.0 && f.peer_connections == 0.0 {
            match &idle {
                // Idle for RSS_SETTLE_INTERVAL, and RSS moved less than RSS_SETTLED over it.
                Some(earlier)
                    if f.rss_bytes.abs_diff(earlier.rss_bytes) as f64
                        <= RSS_SETTLED * earlier.rss_bytes as f64 =>
                {
                    return Ok(f);
                }
                // Still moving after SETTLE_TIMEOUT: this reading is the figure.
                _ if Instant::now() > deadline => return Ok(f),
                _ => idle = Some(f),
            }
            tokio::time::sleep(RSS_SETTLE_INTERVAL).await;
            continue;
        }
        idle = None;
        if Instant::now() > deadline {
            bail!(
                "the focus still holds {} calls and {} peer connections {SETTLE_TIMEOUT:?} after the last hangup",
                f.participants,
                f.peer_connections
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `options` against the first focus of `target`, which needs a pid and a metrics URL.
///
/// Errors: the focus cannot be measured, the room or accounts cannot be set up, or the focus
/// does not drop its calls after the last hangup. Cycles that fail are counted, not errors.
pub async fn run(target: Target, options: &ChurnOptions) -> Result<ChurnReport> {
    let Some(focus) = target.foci.first().cloned() else {
        bail!("no focus to drive");
    };
    let (Some(pid), Some(url)) = (focus.pid, focus.metrics_url.clone()) else {
        bail!("churn needs the focus's pid and metrics URL");
    };
    if options.devices == 0 {
        bail!("churn needs at least one device");
    }
    let http = cascade_signalling::http::client()?;
    let target = Arc::new(target);
    let call = scenario::prepare_call(&target, &options.account_prefix).await?;
    let mut devices = Vec::with_capacity(options.devices);
    for i in 0..options.devices {
        let localpart = format!("{}-d{i}", options.account_prefix);
        let mut config = scenario::device_config(&target, &call, &focus, &localpart).await?;
        config.publish_audio = true;
        config.publish_video = false;
        config.subscribe = SubscribePolicy::All;
        scenario::publish_membership(&config).await?;
        devices.push(Arc::new(config));
    }
    let hold = Duration::from_millis(500);

    // The first round: every device once, then the "before" footprint.
    let mut round = Vec::new();
    for device in &devices {
        let device = device.clone();
        round.push(tokio::spawn(async move { cycle(&device, hold).await }));
    }
    for task in round {
        task.await.context("a first-round cycle panicked")??;
    }
    let before = settled(pid, &url, &http).await?;

    // The cycles: each device joins and leaves again until all are done or time is up.
    let started = Instant::now();
    let stop_at = started + options.max_duration;
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new((0usize, Vec::<String>::new())));
    let mut tasks = Vec::new();
    for device in &devices {
        let (device, next, done, failures) =
            (device.clone(), next.clone(), done.clone(), failures.clone());
        let (cycles, progress) = (options.cycles, options.progress);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop_at && next.fetch_add(1, Ordering::Relaxed) < cycles {
                match cycle(&device, hold).await {
                    Ok(()) => {
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if progress && n % 500 == 0 {
                            eprintln!(
                                "churn: {n} cycles after {:.0} s",
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Err(err) => {
                        let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                        f.0 += 1;
                        if f.1.len() < 5 {
                            f.1.push(format!("{err:#}"));
                        }
                    }
                }
            }
        }));
    }
    let mut peak_subscriptions: f64 = 0.0;
    while tasks.iter().any(|t| !t.is_finished()) {
        if let Ok(m) = metrics::scrape(&http, &url).await {
            peak_subscriptions = peak_subscriptions.max(m.subscriptions);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for task in tasks {
        task.await.context("a cycling device panicked")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = settled(pid, &url, &http).await?;
    let (failed, failures) = {
        let f = failures.lock().unwrap_or_else(|e| e.into_inner());
        (f.0, f.1.clone())
    };
    Ok(ChurnReport {
        devices: options.devices,
        cycles_wanted: options.cycles,
        cycles_done: done.load(Ordering::Relaxed),
        failures,
        failed,
        seconds,
        before,
        after,
        peak_subscriptions,
    })
}
