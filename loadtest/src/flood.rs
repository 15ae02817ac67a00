//! Floods: a stranger sends the focus's UDP port garbage — random bytes, STUN binding requests
//! for ufrags no call has, RTP from SSRCs no call uses — while a conference runs, and the
//! conference must not notice.
//!
//! Three devices meet (each publishes audio and video and watches the others) through a local
//! focus whose media port is fixed, so that the flood can aim at it. First a quiet window, then
//! the same window with the flood running; the report compares what the devices received in
//! the two (loss, one-way delay) and says how much garbage went out and how much the focus
//! counted as dropped.
//!
//! Then signalling: a device joins and its invite's answer is timed; then another account sends
//! the focus [`MALFORMED_EVENTS`] malformed `m.call.invite` to-device events, and while they
//! pour in, a second device joins and is timed the same way. Every malformed event must be
//! counted as a decode error, and the second answer must not wait much longer than the first.

use crate::metrics;
use crate::procstat::{self, ProcSample};
use crate::scenario::{self, Target};
use anyhow::{Context, Result, bail};
use cascade_simclient::report::DelayHistogram;
use cascade_simclient::{SimClient, SubscribePolicy};
use rand::Rng;
use serde::Serialize;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The loss the conference may show under the flood, percent.
pub const MAX_LOSS_PERCENT: f64 = 1.0;
/// How much the conference's 99th percentile one-way delay may rise under the flood, µs.
pub const MAX_DELAY_RISE_US: u64 = 5_000;
/// The share of the asked-for rate the flood must reach for the run to count.
pub const MIN_RATE_SHARE: f64 = 0.9;
/// How long a device may take from its invite to a connected call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the devices may take to receive each other after connecting.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(20);
/// Malformed call events the signalling flood sends.
pub const MALFORMED_EVENTS: u64 = 1_000;
/// How much longer than the quiet one the answer under the signalling flood may take.
pub const MAX_ANSWER_DELAY: Duration = Duration::from_secs(5);
/// Requests of the signalling flood in flight at once.
const MALFORMED_CONCURRENCY: usize = 16;
/// How long the focus may take to have counted every malformed event.
const MALFORMED_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the flood runs before its window starts.
const FLOOD_WARMUP: Duration = Duration::from_secs(1);

/// What a flood run does.
#[derive(Clone, Debug)]
pub struct FloodOptions {
    /// Garbage datagrams per second.
    pub pps: u64,
    /// How long each window (quiet, flooded) lasts.
    pub window: Duration,
    /// Account names start with this.
    pub account_prefix: String,
}

/// What the conference's devices received in one window, over all their incoming tracks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Window {
    /// RTP packets received.
    pub packets: u64,
    /// Publisher packets that never arrived (skipped and not filled later).
    pub lost: u64,
    /// Median one-way delay, µs.
    pub delay_p50_us: Option<u64>,
    /// 99th percentile one-way delay, µs.
    pub delay_p99_us: Option<u64>,
    /// The focus's CPU time over the window, percent of one core (`None` without its pid).
    pub focus_cpu_percent: Option<f64>,
}

impl Window {
    /// Lost packets as a percentage of those sent.
    pub fn loss_percent(&self) -> f64 {
        let sent = self.packets + self.lost;
        if sent == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / sent as f64
        }
    }
}

/// What a flood run measured.
#[derive(Clone, Debug, Serialize)]
pub struct FloodReport {
    /// Garbage datagrams per second asked for.
    pub pps_wanted: u64,
    /// Garbage datagrams sent during the flooded window, per second.
    pub pps_sent: f64,
    /// The quiet window.
    pub quiet: Window,
    /// The flooded window.
    pub flooded: Window,
    /// Datagrams the focus counted as from an unknown source during the flooded window.
    pub focus_dropped_unknown: u64,
    /// Devices whose call ended during the run.
    pub calls_ended: usize,
    /// Invite to answer, a device joining with no signalling flood, ms.
    pub quiet_answer_ms: u64,
    /// Invite to answer, a device joining while the malformed events pour in, ms.
    pub flooded_answer_ms: u64,
    /// Malformed call events sent.
    pub malformed_sent: u64,
    /// Of those, counted by the focus as decode errors.
    pub malformed_counted: u64,
}

impl FloodReport {
    /// Why the run failed, if it did: the flood fell short of its rate, the conference lost
    /// more than [`MAX_LOSS_PERCENT`] or its p99 delay rose by [`MAX_DELAY_RISE_US`] or more,
    /// a call ended, or the focus did not count the garbage.
    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.pps_sent < self.pps_wanted as f64 * MIN_RATE_SHARE {
            why.push(format!(
                "the flood reached {:.0} datagrams/s of {}",
                self.pps_sent, self.pps_wanted
            ));
        }
        if self.flooded.loss_percent() >= MAX_LOSS_PERCENT {
            why.push(format!(
                "{:.2} % loss under the flood",
                self.flooded.loss_percent()
            ));
        }
        match (self.quiet.delay_p99_us, self.flooded.delay_p99_us) {
            (Some(quiet), Some(flooded)) if flooded >= quiet + MAX_DELAY_RISE_US => {
                why.push(format!("delay p99 rose from {quiet} µs to {flooded} µs"))
            }
            (Some(_), Some(_)) => {}
            _ => why.push("no delay measured".into()),
        }
        if self.flooded.packets == 0 {
            why.push("nothing received under the flood".into());
        }
        if self.calls_ended > 0 {
            why.push(format!("{} calls ended", self.calls_ended));
        }
        if self.focus_dropped_unknown == 0 {
            why.push("the focus counted none of the garbage".into());
        }
        if self.flooded_answer_ms > self.quiet_answer_ms + MAX_ANSWER_DELAY.as_millis() as u64 {
            why.push(format!(
                "an invite took {} ms to answer under the signalling flood, {} ms without",
                self.flooded_answer_ms, self.quiet_answer_ms
            ));
        }
        if self.malformed_counted < self.malformed_sent || self.malformed_sent < MALFORMED_EVENTS {
            why.push(format!(
                "{} malformed call events sent, {} counted",
                self.malformed_sent, self.malformed_counted
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let us = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} µs"));
        let mut out = format!(
            "flood: {:.0} garbage datagrams/s (asked {}) at the focus's port, a third each random \
             bytes, STUN for unknown ufrags, RTP from unknown SSRCs; the focus counted {} as from \
             an unknown source; 3 devices meeting\n",
            self.pps_sent, self.pps_wanted, self.focus_dropped_unknown
        );
        out.push_str(&format!(
            "{:<9} {:>9} {:>7} {:>8} {:>11} {:>11} {:>10}\n",
            "window", "packets", "lost", "loss", "delay p50", "delay p99", "focus CPU"
        ));
        for (name, w) in [("quiet", &self.quiet), ("flooded", &self.flooded)] {
            out.push_str(&format!(
                "{name:<9} {:>9} {:>7} {:>6.3} % {:>11} {:>11} {:>10}\n",
                w.packets,
                w.lost,
                w.loss_percent(),
                us(w.delay_p50_us),
                us(w.delay_p99_us),
                w.focus_cpu_percent
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.1} %"))
            ));
        }
        out.push_str(&format!(
            "signalling: {} malformed m.call.invite sent to the focus, {} counted as decode \
             errors; invite to answer {} ms without them, {} ms while they poured in\n",
            self.malformed_sent,
            self.malformed_counted,
            self.quiet_answer_ms,
            self.flooded_answer_ms
        ));
        out
    }
}

/// Totals over every incoming track of `clients`.
#[derive(Clone, Debug, Default)]
struct Totals {
    packets: u64,
    lost: u64,
    delays: DelayHistogram,
}

fn totals(clients: &[SimClient]) -> Totals {
    let mut t = Totals::default();
    for client in clients {
        for track in client.report().tracks {
            t.packets += track.packets;
            t.lost += track
                .counter_missing
                .saturating_sub(track.counter_recovered);
            t.delays.merge(&track.delays);
        }
    }
    t
}

/// What the devices received between `start` and `end`, and what the focus spent meanwhile.
fn window(start: &Totals, end: &Totals, cpu: (Option<ProcSample>, Option<ProcSample>)) -> Window {
    let delays = end.delays.since(&start.delays);
    let focus_cpu_percent = match cpu {
        (Some(a), Some(b)) => {
            let seconds = b.at.duration_since(a.at).as_secs_f64();
            (seconds > 0.0).then(|| (b.cpu_seconds - a.cpu_seconds) * 100.0 / seconds)
        }
        _ => None,
    };
    Window {
        packets: end.packets.saturating_sub(start.packets),
        lost: end.lost.saturating_sub(start.lost),
        delay_p50_us: delays.quantile(0.5),
        delay_p99_us: delays.quantile(0.99),
        focus_cpu_percent,
    }
}

/// One garbage datagram of kind `n % 3` into `out`: random bytes; a STUN binding request
/// (RFC 8489 §5) whose USERNAME names a ufrag no call has; an RTP packet (RFC 3550 §5.1) from a
/// random SSRC.
fn garbage(n: u64, rng: &mut impl Rng, out: &mut Vec<u8>) {
    out.clear();
    match n % 3 {
        0 => {
            let len = rng.random_range(1..=300);
            out.resize(len, 0);
            rng.fill_bytes(out);
        }
        1 => {
            let username = format!("{:08x}:{:08x}", rng.random::<u32>(), rng.random::<u32>());
            let padded = username.len().div_ceil(4) * 4;
            out.extend_from_slice(&0x0001u16.to_be_bytes());
            out.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
            out.extend_from_slice(&0x2112_A442u32.to_be_bytes());
            out.extend_from_slice(&rng.random::<[u8; 12]>());
            out.extend_from_slice(&0x0006u16.to_be_bytes());
            out.extend_from_slice(&(username.len() as u16).to_be_bytes());
            out.extend_from_slice(username.as_bytes());
            out.resize(20 + 4 + padded, 0);
        }
        _ => {
            out.extend_from_slice(&[0x80, 96]);
            out.extend_from_slice(&rng.random::<[u8; 10]>());
            out.resize(12 + 160, 0);
            rng.fill_bytes(&mut out[12..]);
        }
    }
}

/// Sends garbage at `target` at `pps` until `stop`, counting what went out in `sent`. Paced
/// in 1 ms slices; a send the kernel refuses is not counted.
fn flood(target: SocketAddr, pps: u64, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> Result<()> {
    // A loopback address of its own: the focus has never seen it.
    let socket = UdpSocket::bind("127.0.0.9:0").context("binding the flood's socket")?;
    let mut rng = rand::rng();
    let mut datagram = Vec::with_capacity(400);
    let started = Instant::now();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * pps as f64) as u64;
        while n < due {
            garbage(n, &mut rng, &mut datagram);
            if socket.send_to(&datagram, target).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Joins a new device `localpart` to `call` (publishing audio only) and returns how long its
/// invite took to be answered, having hung up.
async fn timed_join(
    target: &Target,
    call: &scenario::Call,
    focus: &scenario::FocusTarget,
    localpart: &str,
) -> Result<Duration> {
    let mut config = scenario::device_config(target, call, focus, localpart).await?;
    config.publish_video = false;
    scenario::publish_membership(&config).await?;
    let client = SimClient::start(config).await?;
    let answered = client.wait_answered(CONNECT_TIMEOUT).await;
    let after = client.report().answered_after;
    client.hangup().await?;
    answered?;
    after.with_context(|| format!("{localpart}: answered, but when is unknown"))
}

/// The content of malformed call event number `n`: each fails the focus's decoding another way
/// (a number for a call id, no offer, an offer that is not an object, no device).
fn malformed(n: u64) -> serde_json::Value {
    use serde_json::json;
    match n % 4 {
        0 => json!({ "call_id": n, "version": "1", "party_id": "P", "offer": {} }),
        1 => {
            json!({ "call_id": format!("c{n}"), "version": "1", "party_id": "P", "lifetime": 60000 })
        }
        2 => json!({ "call_id": format!("c{n}"), "version": "1", "party_id": "P", "offer": 7 }),
        _ => {
            json!({ "call_id": format!("c{n}"), "version": "1", "offer": { "type": "offer", "sdp": "v=0" } })
        }
    }
}

/// Sends [`MALFORMED_EVENTS`] malformed `m.call.invite` events to the focus's device as
/// `sender`, [`MALFORMED_CONCURRENCY`] requests at a time; returns how many the homeserver took.
async fn send_malformed(
    sender: cascade_signalling::MatrixClient,
    focus: scenario::FocusTarget,
) -> u64 {
    let sender = Arc::new(sender);
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..MALFORMED_CONCURRENCY {
        let (sender, focus, next, sent) =
            (sender.clone(), focus.clone(), next.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= MALFORMED_EVENTS {
                    return;
                }
                let messages = [(
                    focus.user.clone(),
                    [(focus.device.clone(), malformed(n))].into_iter().collect(),
                )]
                .into_iter()
                .collect();
                match sender.send_to_device("m.call.invite", &messages).await {
                    Ok(()) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => tracing::warn!(%err, "sending a malformed event"),
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    sent.load(Ordering::Relaxed)
}

/// Runs `options` against the first focus of `target`, whose media port is `focus_port` on
/// 127.0.0.1 and whose `/metrics` URL the target names.
///
/// Errors: the conference cannot be set up or its devices do not receive each other, the
/// focus's metrics cannot be read, or the flood cannot start. What the flood did to the
/// conference is a figure of the report, not an error.
pub async fn run(target: Target, focus_port: u16, options: &FloodOptions) -> Result<FloodReport> {
    let Some(focus) = target.foci.first().cloned() else {
        bail!("no focus to drive");
    };
    let Some(metrics_url) = focus.metrics_url.clone() else {
        bail!("flood needs the focus's metrics URL");
    };
    let http = cascade_signalling::http::client()?;
    let call = scenario::prepare_call(&target, &options.account_prefix).await?;
    let mut devices = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let localpart = format!("{}-d{i}", options.account_prefix);
        let mut config = scenario::device_config(&target, &call, &focus, &localpart).await?;
        config.subscribe = SubscribePolicy::All;
        ids.push((
            config.matrix.user_id().to_owned(),
            config.matrix.device_id().to_owned(),
        ));
        scenario::publish_membership(&config).await?;
        let client = SimClient::start(config).await?;
        scenario::wait_connected(&client, CONNECT_TIMEOUT).await?;
        devices.push(client);
    }
    for (i, device) in devices.iter().enumerate() {
        let others: Vec<(String, String)> = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, id)| id.clone())
            .collect();
        device
            .wait_receiving_from(&others, 1, MEDIA_TIMEOUT)
            .await
            .with_context(|| format!("{} receiving the others", device.user_id()))?;
    }

    let cpu = || focus.pid.and_then(|pid| procstat::sample(pid).ok());
    let (start, cpu_start) = (totals(&devices), cpu());
    tokio::time::sleep(options.window).await;
    let quiet = window(&start, &totals(&devices), (cpu_start, cpu()));

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let target_addr = SocketAddr::from(([127, 0, 0, 1], focus_port));
    let flooder = {
        let (stop, sent, pps) = (stop.clone(), sent.clone(), options.pps);
        std::thread::Builder::new()
            .name("flood".into())
            .spawn(move || flood(target_addr, pps, stop, sent))
            .context("starting the flood")?
    };
    tokio::time::sleep(FLOOD_WARMUP).await;
    let dropped_before = metrics::scrape(&http, &metrics_url).await?;
    let sent_before = sent.load(Ordering::Relaxed);
    let started = Instant::now();
    let (start, cpu_start) = (totals(&devices), cpu());
    tokio::time::sleep(options.window).await;
    let flooded = window(&start, &totals(&devices), (cpu_start, cpu()));
    let sent_during = sent.load(Ordering::Relaxed) - sent_before;
    let seconds = started.elapsed().as_secs_f64();
    let dropped_after = metrics::scrape(&http, &metrics_url).await?;
    stop.store(true, Ordering::Relaxed);
    flooder
        .join()
        .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;

    let unknown = |m: &metrics::FocusMetrics| m.dropped.get("unknown_source").copied();
    let calls_ended = devices.iter().filter(|d| d.is_finished()).count();

    // Signalling: one join without a flood, one while malformed events pour in.
    let quiet_answer = timed_join(
        &target,
        &call,
        &focus,
        &format!("{}-a", options.account_prefix),
    )
    .await?;
    let sender = scenario::account(&target, &format!("{}-sender", options.account_prefix)).await?;
    let errors_before = metrics::scrape(&http, &metrics_url)
        .await?
        .signalling_decode_errors;
    let flood_task = tokio::spawn(send_malformed(sender, focus.clone()));
    // Join once the focus is busy with the flood (a tenth of it counted), bounded in time.
    let busy_by = Instant::now() + MALFORMED_TIMEOUT;
    while Instant::now() < busy_by {
        let counted = metrics::scrape(&http, &metrics_url)
            .await?
            .signalling_decode_errors
            .saturating_sub(errors_before);
        if counted >= MALFORMED_EVENTS / 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flooded_answer = timed_join(
        &target,
        &call,
        &focus,
        &format!("{}-b", options.account_prefix),
    )
    .await?;
    let malformed_sent = flood_task.await.context("the signalling flood panicked")?;
    let mut malformed_counted = 0;
    let counted_by = Instant::now() + MALFORMED_TIMEOUT;
    while Instant::now() < counted_by {
        malformed_counted = metrics::scrape(&http, &metrics_url)
            .await?
            .signalling_decode_errors
            .saturating_sub(errors_before);
        if malformed_counted >= malformed_sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for device in devices {
        if let Err(err) = device.hangup().await {
            tracing::warn!(%err, "hanging up");
        }
    }
    Ok(FloodReport {
        pps_wanted: options.pps,
        pps_sent: sent_during as f64 / seconds.max(f64::EPSILON),
        quiet,
        flooded,
        focus_dropped_unknown: unknown(&dropped_after)
            .unwrap_or(0)
            .saturating_sub(unknown(&dropped_before).unwrap_or(0)),
        calls_ended,
        quiet_answer_ms: quiet_answer.as_millis() as u64,
        flooded_answer_ms: flooded_answer.as_millis() as u64,
        malformed_sent,
        malformed_counted,
    })
}
