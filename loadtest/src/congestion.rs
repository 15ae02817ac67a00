//! Congestion: one publisher of three simulcast layers and two subscribers that render it at
//! 1280x720, through a local focus; one subscriber's downlink is limited with `tc … tbf`, then
//! freed. The report is the timeline of the layer each subscriber receives, the limited link's
//! loss, and how long the focus took to move the limited subscriber down to a layer that fits
//! and back up once the limit was lifted (issue 13, tests 1 and 2). With
//! [`CongestionOptions::latecomer`] a third subscriber joins while the limit holds, behind a
//! limit of the same rate of its own: it must be on a layer that fits within the same time of
//! its call connecting, and lose no more.
//!
//! The run lives in a network namespace of its own, as the loss run does (see
//! [`crate::loss::enter_network_namespace`]): the homeserver, the focus and the devices talk over
//! the namespace's loopback, each device from its own address. An HTB queueing discipline on
//! the loopback sends the UDP datagrams for the limited subscriber's address through a token
//! bucket filter; everything else (signalling, the other devices) is never limited.

use crate::loss::{enter_bare_network_namespace, run_tool, tool};
use crate::metrics::{self, FocusMetrics};
use crate::scenario::{self, Target};
use anyhow::{Context, Result, bail};
use cascade_simclient::frames::FrameCounts;
use cascade_simclient::{SimClient, SimConfig, SubscribePolicy};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

/// The publisher's address on the namespace's loopback.
pub const PUBLISHER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The subscriber whose downlink is limited.
pub const SUBSCRIBER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// The subscriber whose downlink is never limited.
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// The subscriber that joins while the limit holds, behind a token bucket of its own.
pub const LATECOMER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
/// How long after the limit is set the latecomer joins.
pub const LATECOMER_JOINS_AFTER: Duration = Duration::from_secs(4);
/// The shortest limit the latecomer joins under: it must have time to move down and settle.
pub const LATECOMER_NEEDS: Duration = Duration::from_secs(16);
/// The publisher's simulcast layers `q`, `h`, `f` (320x180, 640x360, 1280x720), bit/s: about
/// what a browser sends for a camera.
pub const LAYER_BITRATES: [u32; 3] = [150_000, 500_000, 1_500_000];
/// The heights of the layers.
pub const LAYER_HEIGHTS: [u16; 3] = [180, 360, 720];
/// The limited subscriber must be on a layer that fits within this time of the limit.
pub const REQUIRED_DOWN: Duration = Duration::from_secs(5);
/// And back on a higher one within this time of the limit's end.
pub const REQUIRED_UP: Duration = Duration::from_secs(15);
/// From [`LOSS_SETTLE`] after the move down to the limit's end, the share of the publisher's
/// video frames the limited subscriber lost (not complete: a packet missing even after
/// retransmissions) must stay under this (percent). The bucket's own drops are reported too;
/// they include the probes the focus sends on purpose before raising a layer, which the
/// subscriber drops anyway.
pub const REQUIRED_LOSS_PERCENT: f64 = 2.0;
/// The share of the frames the settled window implies that the limited subscriber must have
/// judged: a stream that stalled leaves its frames unjudged rather than incomplete.
pub const REQUIRED_JUDGED: f64 = 0.8;
/// How long after the move down the loss is counted from.
pub const LOSS_SETTLE: Duration = Duration::from_secs(3);
/// How often the timeline is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How long a device may take from its invite to a connected call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the subscribers may take to get the top layer before the limit.
const CLEAN_TIMEOUT: Duration = Duration::from_secs(30);
/// The token bucket's depth and queue (what the issue's `tbf … burst 16kb latency 50ms` says).
const TBF_BURST: &str = "16kb";
const TBF_LATENCY: &str = "50ms";

/// What a congestion run does.
#[derive(Clone, Debug)]
pub struct CongestionOptions {
    /// The limit on the subscriber's downlink, kbit/s.
    pub rate_kbit: u32,
    /// How long the limit holds.
    pub limited_for: Duration,
    /// How long to watch after the limit is lifted.
    pub lifted_for: Duration,
    /// Account names start with this.
    pub account_prefix: String,
    /// Whether a third subscriber joins [`LATECOMER_JOINS_AFTER`] into the limit (which must
    /// then hold at least [`LATECOMER_NEEDS`]).
    pub latecomer: bool,
}

/// One moment of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Milliseconds since the limit was set (negative before).
    pub at_ms: i64,
    /// Whether the limit held.
    pub limited: bool,
    /// The height of the layer the limited subscriber last got a keyframe of.
    pub subscriber_height: Option<u16>,
    /// The same for the control subscriber.
    pub control_height: Option<u16>,
    /// Datagrams the token bucket passed and dropped so far.
    pub tbf_sent: u64,
    /// See `tbf_sent`.
    pub tbf_dropped: u64,
    /// The publisher's video frames the limited subscriber judged so far.
    pub frames: FrameCounts,
    /// The focus's probe packets so far.
    pub probes: u64,
    /// The focus's allowed-layer changes so far: lowered, raised.
    pub lowered: u64,
    /// See `lowered`.
    pub raised: u64,
    /// The height of the layer the latecomer last got a keyframe of (`None` before it joined).
    pub latecomer_height: Option<u16>,
    /// Datagrams the latecomer's token bucket passed and dropped so far.
    pub latecomer_tbf: (u64, u64),
    /// The publisher's video frames the latecomer judged so far.
    pub latecomer_frames: FrameCounts,
}

/// How the latecomer fared.
#[derive(Clone, Debug, Serialize)]
pub struct Latecomer {
    /// Why it is not in the call, if its join failed or had not ended by the limit's end.
    pub not_joined: Option<String>,
    /// When its call connected, milliseconds after the limit was set.
    pub connected_at_ms: u64,
    /// From its call connecting to its first keyframe of a layer that fits.
    pub down_after_ms: Option<u64>,
    /// The share of the publisher's video frames it lost (percent), from [`LOSS_SETTLE`]
    /// after its move down to the limit's end.
    pub settled_frame_loss_percent: Option<f64>,
    /// Frames judged over that window.
    pub settled_frames: u64,
    /// The window's length, seconds.
    pub settled_seconds: f64,
    /// Its token bucket's loss over that window (percent, probes included).
    pub settled_loss_percent: Option<f64>,
}

/// What a congestion run measured.
#[derive(Clone, Debug, Serialize)]
pub struct CongestionReport {
    /// The limit, kbit/s.
    pub rate_kbit: u32,
    /// The publisher's layers, bit/s.
    pub layer_bitrates: [u32; 3],
    /// The highest layer whose bitrate fits the limit, as a height.
    pub fitting_height: u16,
    /// From the limit to the limited subscriber's first keyframe of a layer that fits.
    pub down_after_ms: Option<u64>,
    /// From the limit's end to its first keyframe of a higher layer.
    pub up_after_ms: Option<u64>,
    /// The limited link's loss (datagrams the bucket dropped, percent, probes included),
    /// from [`LOSS_SETTLE`] after the move down to the limit's end.
    pub settled_loss_percent: Option<f64>,
    /// The share of the publisher's video frames the limited subscriber lost (percent) over
    /// the same window.
    pub settled_frame_loss_percent: Option<f64>,
    /// Frames judged over that window.
    pub settled_frames: u64,
    /// The window's length, seconds.
    pub settled_seconds: f64,
    /// The control subscriber's layer at the limit's end.
    pub control_height_at_limit_end: Option<u16>,
    /// The limited subscriber's layer at the limit's end.
    pub subscriber_height_at_limit_end: Option<u16>,
    /// Transport-cc feedback packets the focus received.
    pub transport_cc_feedback: u64,
    /// The latecomer, if one joined.
    pub latecomer: Option<Latecomer>,
    /// The timeline.
    pub samples: Vec<Sample>,
}

impl CongestionReport {
    /// Why the run failed, if it did.
    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        match self.down_after_ms {
            Some(ms) if Duration::from_millis(ms) <= REQUIRED_DOWN => {}
            Some(ms) => why.push(format!(
                "the limited subscriber got a layer that fits {ms} ms after the limit, later than {} s",
                REQUIRED_DOWN.as_secs()
            )),
            None => why.push("the limited subscriber never got a layer that fits".to_owned()),
        }
        match self.settled_frame_loss_percent {
            Some(loss) if loss < REQUIRED_LOSS_PERCENT => {}
            Some(loss) => why.push(format!(
                "the limited subscriber lost {loss:.2} % of the video frames once settled, \
                 not under {REQUIRED_LOSS_PERCENT} %"
            )),
            None => why.push("no settled loss was measured".to_owned()),
        }
        let implied = self.settled_seconds * f64::from(cascade_simclient::synth::VIDEO_FPS);
        if (self.settled_frames as f64) < implied * REQUIRED_JUDGED {
            why.push(format!(
                "the limited subscriber judged {} frames once settled, fewer than {:.0} % of the \
                 {implied:.0} the window implies (the stream stalled)",
                self.settled_frames,
                REQUIRED_JUDGED * 100.0
            ));
        }
        match self.up_after_ms {
            Some(ms) if Duration::from_millis(ms) <= REQUIRED_UP => {}
            Some(ms) => why.push(format!(
                "the subscriber went back up {ms} ms after the limit was lifted, later than {} s",
                REQUIRED_UP.as_secs()
            )),
            None => why.push("the subscriber never went back up".to_owned()),
        }
        if self.control_height_at_limit_end == self.subscriber_height_at_limit_end {
            why.push(format!(
                "both subscribers were on the same layer at the limit's end ({:?})",
                self.control_height_at_limit_end
            ));
        }
        if self.control_height_at_limit_end != Some(LAYER_HEIGHTS[2]) {
            why.push(format!(
                "the unlimited subscriber was on {:?} at the limit's end, not the top layer",
                self.control_height_at_limit_end
            ));
        }
        if self.transport_cc_feedback == 0 {
            why.push("the focus received no transport-cc feedback".to_owned());
        }
        if let Some(late) = &self.latecomer {
            late.failures(&mut why);
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The latecomer's line of the report.
    fn latecomer_line(&self) -> String {
        let Some(late) = &self.latecomer else {
            return String::new();
        };
        if let Some(why) = &late.not_joined {
            return format!("latecomer: not in the call: {why}\n");
        }
        format!(
            "latecomer (connected {:.1} s into the limit, its own {} kbit/s bucket): on a layer that \
             fits {} after its call connected (required ≤ {} s); once settled {} of the video \
             frames lost ({} frames over {:.1} s; required < {REQUIRED_LOSS_PERCENT} %), its \
             bucket dropped {}\n",
            late.connected_at_ms as f64 / 1000.0,
            self.rate_kbit,
            late.down_after_ms
                .map_or_else(|| "never".to_owned(), |ms| format!("{ms} ms")),
            REQUIRED_DOWN.as_secs(),
            percent(late.settled_frame_loss_percent),
            late.settled_frames,
            late.settled_seconds,
            percent(late.settled_loss_percent),
        )
    }

    /// The report as text: the outcome, then the timeline once a second and at every change.
    pub fn table(&self) -> String {
        let ms = |v: Option<u64>| v.map_or_else(|| "never".to_owned(), |v| format!("{v} ms"));
        let mut out = format!(
            "congestion: publisher q/h/f at {}/{}/{} kbit/s; two subscribers render 1280x720; \
             one's downlink limited to {} kbit/s (tbf burst {TBF_BURST} latency {TBF_LATENCY})\n\
             moved to a layer that fits ({} px): {} after the limit (required ≤ {} s)\n\
             once settled: {} of the video frames lost at the limited subscriber ({} frames; \
             required < {REQUIRED_LOSS_PERCENT} %); the bucket dropped {} of the datagrams \
             (probes included)\n\
             back up: {} after the limit was lifted (required ≤ {} s)\n\
             at the limit's end: limited {:?} px, unlimited {:?} px; transport-cc feedback: {}\n",
            LAYER_BITRATES[0] / 1000,
            LAYER_BITRATES[1] / 1000,
            LAYER_BITRATES[2] / 1000,
            self.rate_kbit,
            self.fitting_height,
            ms(self.down_after_ms),
            REQUIRED_DOWN.as_secs(),
            percent(self.settled_frame_loss_percent),
            self.settled_frames,
            percent(self.settled_loss_percent),
            ms(self.up_after_ms),
            REQUIRED_UP.as_secs(),
            self.subscriber_height_at_limit_end,
            self.control_height_at_limit_end,
            self.transport_cc_feedback,
        );
        out.push_str(&self.latecomer_line());
        out.push_str(&format!(
            "{:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7}\n",
            "t (s)",
            "limit",
            "limited",
            "control",
            "late",
            "tbf sent",
            "dropped",
            "probes",
            "lowered",
            "raised"
        ));
        let height = |h: Option<u16>| h.map_or("-".to_owned(), |h| h.to_string());
        let mut last = None;
        for s in &self.samples {
            let state = (
                s.subscriber_height,
                s.control_height,
                s.latecomer_height,
                s.limited,
            );
            let whole_second = s.at_ms.rem_euclid(1000) < SAMPLE_EVERY.as_millis() as i64;
            if last != Some(state) || whole_second {
                out.push_str(&format!(
                    "{:>8.2} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7}\n",
                    s.at_ms as f64 / 1000.0,
                    if s.limited { "on" } else { "off" },
                    height(s.subscriber_height),
                    height(s.control_height),
                    height(s.latecomer_height),
                    s.tbf_sent,
                    s.tbf_dropped,
                    s.probes,
                    s.lowered,
                    s.raised,
                ));
            }
            last = Some(state);
        }
        out
    }
}

impl Latecomer {
    /// Adds to `why` what the latecomer missed.
    fn failures(&self, why: &mut Vec<String>) {
        if let Some(not_joined) = &self.not_joined {
            why.push(format!("the latecomer is not in the call: {not_joined}"));
            return;
        }
        match self.down_after_ms {
            Some(ms) if Duration::from_millis(ms) <= REQUIRED_DOWN => {}
            Some(ms) => why.push(format!(
                "the latecomer got a layer that fits {ms} ms after its call connected, later \
                 than {} s",
                REQUIRED_DOWN.as_secs()
            )),
            None => why.push("the latecomer never got a layer that fits".to_owned()),
        }
        match self.settled_frame_loss_percent {
            Some(loss) if loss < REQUIRED_LOSS_PERCENT => {}
            Some(loss) => why.push(format!(
                "the latecomer lost {loss:.2} % of the video frames once settled, not under \
                 {REQUIRED_LOSS_PERCENT} %"
            )),
            None => why.push("no settled loss was measured for the latecomer".to_owned()),
        }
        let implied = self.settled_seconds * f64::from(cascade_simclient::synth::VIDEO_FPS);
        if (self.settled_frames as f64) < implied * REQUIRED_JUDGED {
            why.push(format!(
                "the latecomer judged {} frames once settled, fewer than {:.0} % of the \
                 {implied:.0} the window implies (the stream stalled)",
                self.settled_frames,
                REQUIRED_JUDGED * 100.0
            ));
        }
    }
}

/// `value` as a percentage with two decimals, or `-`.
fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} %"))
}

/// What a subscriber's token bucket and frames did between two samples: the bucket's loss
/// (percent of its datagrams, probes included), the frames judged, and the seconds between.
struct Settled {
    bucket_loss_percent: f64,
    frames: FrameCounts,
    seconds: f64,
}

impl Settled {
    /// Between the first sample at or after `from_ms` and the last limited one at or before
    /// `until_ms`, for the subscriber whose bucket counts and frames `of` picks; `None` if
    /// there is no such pair.
    fn between(
        samples: &[Sample],
        from_ms: i64,
        until_ms: i64,
        of: impl Fn(&Sample) -> ((u64, u64), FrameCounts),
    ) -> Option<Self> {
        let first = samples.iter().find(|s| s.at_ms >= from_ms)?;
        let last = samples
            .iter()
            .rev()
            .find(|s| s.limited && s.at_ms <= until_ms)?;
        if last.at_ms <= first.at_ms {
            return None;
        }
        let ((sent_first, dropped_first), frames_first) = of(first);
        let ((sent_last, dropped_last), frames_last) = of(last);
        let sent = sent_last.saturating_sub(sent_first);
        let dropped = dropped_last.saturating_sub(dropped_first);
        let bucket_loss_percent = if sent + dropped == 0 {
            0.0
        } else {
            dropped as f64 * 100.0 / (sent + dropped) as f64
        };
        Some(Self {
            bucket_loss_percent,
            frames: frames_last.since(&frames_first),
            seconds: (last.at_ms - first.at_ms) as f64 / 1000.0,
        })
    }

    /// The share of the frames lost (not complete), percent.
    fn frame_loss_percent(&self) -> Option<f64> {
        self.frames
            .complete_fraction()
            .map(|complete| (1.0 - complete) * 100.0)
    }
}

/// The token buckets: the limited subscriber's, then the latecomer's (HTB class, tbf handle,
/// address).
const BUCKETS: [(&str, &str, Ipv4Addr); 2] = [
    ("1:20", "20:", SUBSCRIBER_IP),
    ("1:30", "30:", LATECOMER_IP),
];

/// Sets up the loopback's queueing: an HTB root whose default class is not limited, and a
/// class for each of [`BUCKETS`] holding its token bucket; nothing goes to them until [`limit`].
/// (`prio` would do as well, but its module is missing on these machines; HTB's is there.)
fn prepare_shaping(rate_kbit: u32) -> Result<()> {
    let tc = tool("tc");
    let run = |args: &[&str]| -> Result<()> {
        run_tool(Command::new(&tc).args(args), None)
            .with_context(|| format!("tc {}", args.join(" ")))?;
        Ok(())
    };
    run(&[
        "qdisc", "replace", "dev", "lo", "root", "handle", "1:", "htb", "default", "10",
    ])?;
    for class in ["1:10"]
        .into_iter()
        .chain(BUCKETS.map(|(class, _, _)| class))
    {
        run(&[
            "class", "replace", "dev", "lo", "parent", "1:", "classid", class, "htb", "rate",
            "100gbit", "quantum", "60000",
        ])?;
    }
    let rate = format!("{rate_kbit}kbit");
    for (class, handle, _) in BUCKETS {
        run(&[
            "qdisc",
            "replace",
            "dev",
            "lo",
            "parent",
            class,
            "handle",
            handle,
            "tbf",
            "rate",
            &rate,
            "burst",
            TBF_BURST,
            "latency",
            TBF_LATENCY,
        ])?;
    }
    Ok(())
}

/// Sends the UDP datagrams for the limited subscriber and the latecomer each through its token
/// bucket (`on`), or not.
fn limit(on: bool) -> Result<()> {
    let tc = tool("tc");
    for (index, (class, _, address)) in BUCKETS.into_iter().enumerate() {
        let prio = (index + 1).to_string();
        if on {
            let dst = format!("{address}/32");
            run_tool(
                Command::new(&tc).args([
                    "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", &prio,
                    "u32", "match", "ip", "dst", &dst, "match", "ip", "protocol", "17", "0xff",
                    "flowid", class,
                ]),
                None,
            )
            .context("tc filter add")?;
        } else {
            run_tool(
                Command::new(&tc)
                    .args(["filter", "del", "dev", "lo", "parent", "1:", "prio", &prio]),
                None,
            )
            .context("tc filter del")?;
        }
    }
    Ok(())
}

/// Datagrams each of [`BUCKETS`] has passed and dropped so far. Asynchronous: the simulated
/// devices share the runtime, and a worker blocked on `tc` would delay their packets (which
/// their congestion feedback would report as queueing).
async fn bucket_counts() -> Result<[(u64, u64); 2]> {
    let output = tokio::process::Command::new(tool("tc"))
        .args(["-s", "qdisc", "show", "dev", "lo"])
        .output()
        .await
        .context("tc -s qdisc show")?;
    if !output.status.success() {
        bail!(
            "tc -s qdisc show failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut counts = [(0, 0); 2];
    for (count, (_, handle, _)) in counts.iter_mut().zip(BUCKETS) {
        *count = tbf_counts(&text, handle)
            .with_context(|| format!("no token bucket {handle} on the loopback:\n{text}"))?;
    }
    Ok(counts)
}

/// The datagrams the tbf `handle` passed and dropped, from `tc -s qdisc show`'s `text`.
fn tbf_counts(text: &str, handle: &str) -> Option<(u64, u64)> {
    let head = format!("qdisc tbf {handle}");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if !line.trim_start().starts_with(&head) {
            continue;
        }
        // " Sent 12345 bytes 67 pkt (dropped 8, overlimits 9 requeues 0)"
        let stats = lines.next().unwrap_or_default();
        let words: Vec<&str> = stats.split_whitespace().collect();
        let after = |word: &str| {
            words
                .iter()
                .position(|w| *w == word)
                .and_then(|i| words.get(i + 1))
                .map(|w| w.trim_end_matches(',').parse::<u64>().unwrap_or(0))
                .unwrap_or(0)
        };
        let sent = words
            .iter()
            .position(|w| *w == "bytes")
            .and_then(|i| words.get(i + 1))
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        return Some((sent, after("(dropped")));
    }
    None
}

/// The video frames `client` judged from the publisher `user`.
fn frames(client: &SimClient, user: &str) -> FrameCounts {
    client
        .report()
        .tracks
        .iter()
        .filter(|t| t.kind == "video" && t.publisher_user.as_deref() == Some(user))
        .fold(FrameCounts::default(), |sum, t| sum.add(&t.frames))
}

/// The height of the layer `client` last got a keyframe of, from the publisher `user`.
fn height(client: &SimClient, user: &str) -> Option<u16> {
    client
        .report()
        .tracks
        .iter()
        .filter(|t| t.kind == "video" && t.publisher_user.as_deref() == Some(user))
        .find_map(|t| t.keyframe_size.map(|(_, height)| height))
}

/// Joins one device and waits until its call is connected.
async fn join(config: SimConfig) -> Result<SimClient> {
    scenario::publish_membership(&config).await?;
    let client = SimClient::start(config).await?;
    scenario::wait_connected(&client, CONNECT_TIMEOUT).await?;
    Ok(client)
}

/// The focus's counters now (zeros if they cannot be read).
async fn focus_metrics(http: &reqwest::Client, url: Option<&str>) -> FocusMetrics {
    match url {
        Some(url) => metrics::scrape(http, url).await.unwrap_or_default(),
        None => FocusMetrics::default(),
    }
}

/// Moves this process into a network namespace of its own (see
/// [`crate::loss::enter_network_namespace`]) and checks that `tc` works there.
///
/// Errors (the run cannot happen here, and should be skipped, not failed): not allowed to
/// create a namespace, `ip` or `tc` missing or failing.
pub fn enter_network_namespace() -> Result<()> {
    enter_bare_network_namespace()?;
    // The whole tree the run uses, once: a machine without HTB, tbf or u32 skips here.
    prepare_shaping(400).context("`tc` with HTB and tbf (Debian package iproute2)")?;
    limit(true).context("`tc` with the u32 classifier")?;
    limit(false)?;
    run_tool(
        Command::new(tool("tc")).args(["qdisc", "del", "dev", "lo", "root"]),
        None,
    )
    .context("tc qdisc del")?;
    Ok(())
}

/// Runs `options` against the first focus of `target`, from inside the namespace
/// [`enter_network_namespace`] made.
///
/// Errors: the call cannot be set up, the subscribers never get the top layer before the
/// limit, `tc` fails, or a latecomer is asked for under a limit shorter than
/// [`LATECOMER_NEEDS`]. Timings out of bounds, and a latecomer that did not get into the call,
/// are figures of the report, not errors.
pub async fn run(target: Target, options: &CongestionOptions) -> Result<CongestionReport> {
    let Some(focus) = target.foci.first().cloned() else {
        bail!("no focus to drive");
    };
    if options.latecomer && options.limited_for < LATECOMER_NEEDS {
        bail!(
            "a latecomer needs a limit of at least {} s, not {} s",
            LATECOMER_NEEDS.as_secs(),
            options.limited_for.as_secs()
        );
    }
    prepare_shaping(options.rate_kbit)?;
    let call = scenario::prepare_call(&target, &options.account_prefix).await?;
    let configs = scenario::devices_at(
        &target,
        &call,
        &focus,
        &options.account_prefix,
        &[
            ("publisher", PUBLISHER_IP),
            ("subscriber", SUBSCRIBER_IP),
            ("control", CONTROL_IP),
            ("latecomer", LATECOMER_IP),
        ][..if options.latecomer { 4 } else { 3 }],
    )
    .await?;
    let mut configs = configs.into_iter();
    let (Some(mut publisher), Some(mut subscriber), Some(mut control)) =
        (configs.next(), configs.next(), configs.next())
    else {
        bail!("three devices");
    };
    let mut latecomer = configs.next();
    publisher.simulcast = true;
    publisher.simulcast_bitrates_bps = LAYER_BITRATES;
    publisher.subscribe = SubscribePolicy::None;
    let watched = vec![(
        publisher.matrix.user_id().to_owned(),
        publisher.matrix.device_id().to_owned(),
    )];
    let publisher_user = watched[0].0.clone();
    for watcher in [&mut subscriber, &mut control]
        .into_iter()
        .chain(latecomer.as_mut())
    {
        watcher.publish_audio = false;
        watcher.publish_video = false;
        watcher.render_size = Some((1280, 720));
        watcher.subscribe = SubscribePolicy::Publishers(watched.clone());
    }
    let publisher = join(publisher).await?;
    let subscriber = join(subscriber).await?;
    let control = join(control).await?;
    let top = Some(LAYER_HEIGHTS[2]);
    let deadline = Instant::now() + CLEAN_TIMEOUT;
    while height(&subscriber, &publisher_user) != top || height(&control, &publisher_user) != top {
        if Instant::now() > deadline {
            bail!(
                "before any limit, the subscribers did not get the top layer within {} s \
                 (limited: {:?}, control: {:?})",
                CLEAN_TIMEOUT.as_secs(),
                height(&subscriber, &publisher_user),
                height(&control, &publisher_user)
            );
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }

    let http = cascade_signalling::http::client()?;
    let metrics_url = focus.metrics_url.as_deref();
    let fitting = LAYER_BITRATES
        .iter()
        .zip(LAYER_HEIGHTS)
        .rev()
        .find(|(rate, _)| u64::from(**rate) < u64::from(options.rate_kbit) * 1000)
        .map(|(_, height)| height)
        .unwrap_or(LAYER_HEIGHTS[0]);
    let mut samples = Vec::new();
    let started = Instant::now();
    let sample = async |limited: bool,
                        metrics: &FocusMetrics,
                        latecomer: Option<&SimClient>|
           -> Result<Sample> {
        let [(tbf_sent, tbf_dropped), latecomer_tbf] = bucket_counts().await?;
        let at = Instant::now();
        Ok(Sample {
            at_ms: at.saturating_duration_since(started).as_millis() as i64,
            limited,
            subscriber_height: height(&subscriber, &publisher_user),
            control_height: height(&control, &publisher_user),
            tbf_sent,
            tbf_dropped,
            frames: frames(&subscriber, &publisher_user),
            probes: metrics.probe_packets,
            lowered: metrics
                .allocation_changes
                .get("congestion")
                .copied()
                .unwrap_or(0),
            raised: metrics
                .allocation_changes
                .get("recovery")
                .copied()
                .unwrap_or(0),
            latecomer_height: latecomer.and_then(|l| height(l, &publisher_user)),
            latecomer_tbf,
            latecomer_frames: latecomer
                .map_or_else(FrameCounts::default, |l| frames(l, &publisher_user)),
        })
    };

    limit(true)?;
    let limit_set = Instant::now();
    let mut down_after = None;
    // The latecomer joins in a task of its own, so that the timeline goes on meanwhile.
    let mut latecomer = latecomer.map(|config| Arriving::Waiting(Box::new(config)));
    while limit_set.elapsed() < options.limited_for {
        tokio::time::sleep(SAMPLE_EVERY).await;
        if let Some(state) = latecomer.take() {
            latecomer = Some(state.step(limit_set).await);
        }
        let m = focus_metrics(&http, metrics_url).await;
        let joined = latecomer.as_ref().and_then(Arriving::joined);
        let s = sample(true, &m, joined).await?;
        if down_after.is_none() && s.subscriber_height.is_some_and(|h| h <= fitting) {
            down_after = Some(limit_set.elapsed());
        }
        if let Some(Arriving::Joined { down_after, .. }) = &mut latecomer
            && down_after.is_none()
            && s.latecomer_height.is_some_and(|h| h <= fitting)
        {
            *down_after = Some(limit_set.elapsed());
        }
        samples.push(s);
    }
    let at_limit_end = samples.last().cloned();
    limit(false)?;
    let lifted = Instant::now();
    let mut up_after = None;
    let mut went_up_from = at_limit_end.as_ref().and_then(|s| s.subscriber_height);
    while lifted.elapsed() < options.lifted_for {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let m = focus_metrics(&http, metrics_url).await;
        let joined = latecomer.as_ref().and_then(Arriving::joined);
        let s = sample(false, &m, joined).await?;
        if up_after.is_none()
            && let (Some(now), Some(before)) = (s.subscriber_height, went_up_from)
            && now > before
        {
            up_after = Some(lifted.elapsed());
            went_up_from = None;
        }
        samples.push(s);
    }
    let feedback = focus_metrics(&http, metrics_url)
        .await
        .transport_cc_feedback;

    // The loss from LOSS_SETTLE after the move down to the limit's end.
    let ms = |at: Instant| at.saturating_duration_since(started).as_millis() as i64;
    let until = ms(lifted);
    let settled = down_after.and_then(|down| {
        Settled::between(&samples, ms(limit_set + down + LOSS_SETTLE), until, |s| {
            ((s.tbf_sent, s.tbf_dropped), s.frames)
        })
    });
    let settled_loss_percent = settled.as_ref().map(|s| s.bucket_loss_percent);
    let settled_frames = settled.as_ref().map_or(0, |s| s.frames.sent());
    let settled_seconds = settled.as_ref().map_or(0.0, |s| s.seconds);
    let settled_frame_loss_percent = settled.as_ref().and_then(Settled::frame_loss_percent);
    let mut clients = vec![control, subscriber, publisher];
    let not_joined = |why: String| Latecomer {
        not_joined: Some(why),
        connected_at_ms: 0,
        down_after_ms: None,
        settled_frame_loss_percent: None,
        settled_frames: 0,
        settled_seconds: 0.0,
        settled_loss_percent: None,
    };
    let latecomer = match latecomer {
        None => None,
        Some(Arriving::Joined {
            client,
            connected_after,
            down_after,
        }) => {
            clients.push(client);
            let settled = down_after.and_then(|down| {
                Settled::between(&samples, ms(limit_set + down + LOSS_SETTLE), until, |s| {
                    (s.latecomer_tbf, s.latecomer_frames)
                })
            });
            Some(Latecomer {
                not_joined: None,
                connected_at_ms: connected_after.as_millis() as u64,
                down_after_ms: down_after
                    .map(|down| down.saturating_sub(connected_after).as_millis() as u64),
                settled_frame_loss_percent: settled.as_ref().and_then(Settled::frame_loss_percent),
                settled_frames: settled.as_ref().map_or(0, |s| s.frames.sent()),
                settled_seconds: settled.as_ref().map_or(0.0, |s| s.seconds),
                settled_loss_percent: settled.as_ref().map(|s| s.bucket_loss_percent),
            })
        }
        Some(Arriving::Failed(why)) => Some(not_joined(why)),
        Some(Arriving::Joining(task)) => {
            // Its device would otherwise go on joining, in the background, after the run.
            task.abort();
            Some(not_joined(format!(
                "its join had not ended by the limit's end ({} s)",
                options.limited_for.as_secs()
            )))
        }
        Some(Arriving::Waiting(_)) => Some(not_joined("it never started joining".to_owned())),
    };
    for client in clients {
        if let Err(err) = client.hangup().await {
            tracing::warn!(%err, "hanging up");
        }
    }
    Ok(CongestionReport {
        rate_kbit: options.rate_kbit,
        layer_bitrates: LAYER_BITRATES,
        fitting_height: fitting,
        down_after_ms: down_after.map(|d| d.as_millis() as u64),
        up_after_ms: up_after.map(|d| d.as_millis() as u64),
        settled_loss_percent,
        settled_frame_loss_percent,
        settled_frames,
        settled_seconds,
        control_height_at_limit_end: at_limit_end.as_ref().and_then(|s| s.control_height),
        subscriber_height_at_limit_end: at_limit_end.as_ref().and_then(|s| s.subscriber_height),
        transport_cc_feedback: feedback,
        latecomer,
        samples,
    })
}

/// The latecomer on its way into the call.
enum Arriving {
    /// Not yet asked to join (boxed: a device's configuration is large).
    Waiting(Box<SimConfig>),
    /// Joining, in a task of its own, which returns the client and when its call connected.
    Joining(tokio::task::JoinHandle<Result<(SimClient, Instant)>>),
    /// Its join failed, for this reason.
    Failed(String),
    /// In the call.
    Joined {
        client: SimClient,
        /// When its call connected, after the limit was set.
        connected_after: Duration,
        /// When it first got a keyframe of a layer that fits, after the limit was set.
        down_after: Option<Duration>,
    },
}

impl Arriving {
    /// Starts joining once [`LATECOMER_JOINS_AFTER`] has passed since `limit_set`, and takes
    /// the joined client (or why the join failed) once the join is done.
    async fn step(self, limit_set: Instant) -> Self {
        match self {
            Self::Waiting(config) if limit_set.elapsed() >= LATECOMER_JOINS_AFTER => {
                Self::Joining(tokio::spawn(async move {
                    let client = join(*config).await?;
                    Ok((client, Instant::now()))
                }))
            }
            Self::Joining(task) if task.is_finished() => match task.await {
                Ok(Ok((client, connected))) => Self::Joined {
                    client,
                    connected_after: connected.saturating_duration_since(limit_set),
                    down_after: None,
                },
                Ok(Err(err)) => Self::Failed(format!("its join failed: {err:#}")),
                Err(err) => Self::Failed(format!("its join's task failed: {err}")),
            },
            other => other,
        }
    }

    /// The client, once joined.
    fn joined(&self) -> Option<&SimClient> {
        match self {
            Self::Joined { client, .. } => Some(client),
            _ => None,
        }
    }
}
