//! Packet loss: two publishers (one camera without simulcast, one with three simulcast layers)
//! and two subscribers in one call through a local focus, with random loss on the publishers'
//! or one subscriber's links, and how many of each publisher's video frames the subscribers get
//! whole.
//!
//! The run lives in a network namespace of its own (see [`enter_network_namespace`]): the
//! homeserver, the focus and the devices talk over the namespace's loopback, each device from
//! its own address, and nftables drops a share of the UDP datagrams that arrive from or for the
//! impaired device's address, chosen by `numgen random` (in the input hook, so that senders see
//! no error, as on a real link). Signalling runs over TCP and is never dropped. First a phase
//! without loss, then, for each impaired link and each loss rate, one phase: the rules change,
//! the stream settles for [`SETTLE`], then the frames judged during the window are counted.
//!
//! - Publishers' links: the focus must get the lost packets again from the publishers (NACK,
//!   RTX: for the simulcast layers an RTX flow named by its `repaired-rtp-stream-id`, as
//!   browsers send it) before it forwards them, so both subscribers see the loss.
//! - Subscriber's link: the focus answers the subscriber's NACKs from what it sent; the other
//!   subscriber (the control) must not notice.

use crate::scenario::{self, Target};
use anyhow::{Context, Result, bail};
use cascade_simclient::frames::FrameCounts;
use cascade_simclient::{SimClient, SimConfig, SubscribePolicy};
use serde::Serialize;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The address of the publisher without simulcast on the namespace's loopback.
pub const PUBLISHER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The address of the publisher with simulcast.
pub const SIMULCAST_PUBLISHER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
/// The subscriber whose link is impaired in the subscriber-link phases.
pub const SUBSCRIBER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// The subscriber whose link is never impaired.
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// How long a phase runs before its window starts: longer than the frame tracker's 2 s
/// horizon, so that the window judges only frames sent under the phase's loss.
pub const SETTLE: Duration = Duration::from_secs(3);
/// Loss rates up to this (in percent) must leave [`REQUIRED_COMPLETE`] of the frames whole.
pub const REQUIRED_UP_TO_PERCENT: u32 = 5;
/// The fraction of frames that must arrive complete at up to [`REQUIRED_UP_TO_PERCENT`] loss.
pub const REQUIRED_COMPLETE: f64 = 0.95;
/// The fraction of frames the unimpaired subscriber must get complete in every phase in which
/// the publisher's link is clean.
pub const REQUIRED_CONTROL_COMPLETE: f64 = 0.99;
/// The share of the frames a window implies (its length at the publishers' frame rate) that
/// each subscriber must have judged from each publisher: a stream that stalled leaves its
/// frames unjudged rather than incomplete.
pub const REQUIRED_JUDGED: f64 = 0.8;
/// How long a device may take from its invite to a connected call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the subscribers may take to get the publisher's first video after connecting.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(20);
/// The nftables table the run owns.
const TABLE: &str = "cascade_loss";

/// Whose links lose packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LossLink {
    /// No link (the clean phase).
    None,
    /// Both publishers' links to the focus, both directions.
    Publisher,
    /// One subscriber's link to the focus, both directions.
    Subscriber,
}

impl LossLink {
    /// The impaired devices' addresses.
    fn addresses(self) -> &'static [Ipv4Addr] {
        match self {
            Self::None => &[],
            Self::Publisher => &[PUBLISHER_IP, SIMULCAST_PUBLISHER_IP],
            Self::Subscriber => &[SUBSCRIBER_IP],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Publisher => "publisher",
            Self::Subscriber => "subscriber",
        }
    }
}

/// What a loss run does.
#[derive(Clone, Debug)]
pub struct LossOptions {
    /// Loss rates, percent (1 to 99), each a phase per link.
    pub percents: Vec<u32>,
    /// The links impaired, one after the other.
    pub links: Vec<LossLink>,
    /// How long each phase's measurement lasts.
    pub window: Duration,
    /// The video bitrate of the publisher without simulcast, bit/s.
    pub video_bitrate_bps: u32,
    /// Account names start with this.
    pub account_prefix: String,
}

/// Datagrams through the impairment in one direction during a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Drops {
    /// UDP datagrams that reached the rule.
    pub datagrams: u64,
    /// Of those, dropped.
    pub dropped: u64,
}

impl Drops {
    /// Dropped datagrams as a percentage (0 if none passed).
    pub fn percent(&self) -> f64 {
        if self.datagrams == 0 {
            0.0
        } else {
            self.dropped as f64 * 100.0 / self.datagrams as f64
        }
    }
}

/// The video frames one subscriber judged from each publisher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Frames {
    /// From the publisher without simulcast.
    pub plain: FrameCounts,
    /// From the publisher with simulcast (the layer the subscriber gets).
    pub simulcast: FrameCounts,
}

impl Frames {
    fn since(&self, earlier: &Frames) -> Frames {
        Frames {
            plain: self.plain.since(&earlier.plain),
            simulcast: self.simulcast.since(&earlier.simulcast),
        }
    }

    /// The lower of the two publishers' complete fractions (`None` if either judged nothing).
    pub fn worst_complete(&self) -> Option<f64> {
        Some(
            self.plain
                .complete_fraction()?
                .min(self.simulcast.complete_fraction()?),
        )
    }
}

/// One phase's figures.
#[derive(Clone, Debug, Serialize)]
pub struct LossRow {
    /// The impaired link.
    pub link: LossLink,
    /// The loss rate asked for, percent.
    pub percent: u32,
    /// Datagrams from the impaired devices to the focus.
    pub to_focus: Drops,
    /// Datagrams from the focus to the impaired devices.
    pub from_focus: Drops,
    /// Video frames at the subscriber (impaired in the subscriber-link phases).
    pub frames: Frames,
    /// Video frames at the control subscriber (never impaired itself).
    pub control_frames: Frames,
    /// RTP packets that arrived late and filled a gap at the subscriber (retransmissions).
    pub recovered: u64,
}

/// What a loss run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LossReport {
    /// The video bitrate of the publisher without simulcast, bit/s.
    pub video_bitrate_bps: u32,
    /// Each phase's window, seconds.
    pub window_seconds: f64,
    /// The phases, clean first.
    pub rows: Vec<LossRow>,
}

fn fraction(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |f| format!("{:.1} %", f * 100.0))
}

impl LossReport {
    /// Why the run failed, if it did: a subscriber judged fewer than [`REQUIRED_JUDGED`] of
    /// the frames a window implies from some publisher, a phase at up to
    /// [`REQUIRED_UP_TO_PERCENT`] loss left fewer than [`REQUIRED_COMPLETE`] of the frames
    /// whole, or the control subscriber lost frames while the publisher's link was clean.
    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        let implied = self.window_seconds * f64::from(cascade_simclient::synth::VIDEO_FPS);
        for row in &self.rows {
            let phase = format!("{} link, {} % loss", row.link.name(), row.percent);
            for (who, frames) in [
                ("the subscriber", &row.frames),
                ("the control subscriber", &row.control_frames),
            ] {
                for (publisher, counts) in
                    [("plain", frames.plain), ("simulcast", frames.simulcast)]
                {
                    if (counts.sent() as f64) < implied * REQUIRED_JUDGED {
                        why.push(format!(
                            "{phase}: {who} judged {} frames of the {publisher} publisher, \
                             fewer than {:.0} % of the {implied:.0} the window implies",
                            counts.sent(),
                            REQUIRED_JUDGED * 100.0
                        ));
                    }
                }
            }
            let (Some(complete), Some(control)) = (
                row.frames.worst_complete(),
                row.control_frames.worst_complete(),
            ) else {
                why.push(format!(
                    "{phase}: no video frame was judged from some publisher"
                ));
                continue;
            };
            if row.percent <= REQUIRED_UP_TO_PERCENT && complete < REQUIRED_COMPLETE {
                why.push(format!(
                    "{phase}: {:.1} % of some publisher's frames complete, fewer than {:.0} %",
                    complete * 100.0,
                    REQUIRED_COMPLETE * 100.0
                ));
            }
            if row.link != LossLink::Publisher && control < REQUIRED_CONTROL_COMPLETE {
                why.push(format!(
                    "{phase}: the unimpaired subscriber got {:.1} % of some publisher's frames complete",
                    control * 100.0
                ));
            }
            if row.link != LossLink::None && row.to_focus.dropped + row.from_focus.dropped == 0 {
                why.push(format!("{phase}: nothing was dropped"));
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The report as a table, one row per phase.
    pub fn table(&self) -> String {
        let mut out = format!(
            "loss: two publishers (one {} kbit/s video, one simulcast), two subscribers; {:.0} s \
             per phase; frames complete, and in time (every packet within {} ms of the frame's \
             send time), at the subscriber; the control subscriber's link is never impaired\n",
            self.video_bitrate_bps / 1000,
            self.window_seconds,
            cascade_simclient::frames::PLAYOUT_DEADLINE_US / 1000
        );
        out.push_str(&format!(
            "{:<11} {:>5} {:>9} {:>9} {:>7} {:>9} {:>9} {:>10} {:>9} {:>10} {:>9}\n",
            "link",
            "loss",
            "dropped↑",
            "dropped↓",
            "frames",
            "complete",
            "in time",
            "simulcast",
            "in time",
            "recovered",
            "control"
        ));
        for row in &self.rows {
            out.push_str(&format!(
                "{:<11} {:>4} % {:>7.1} % {:>7.1} % {:>7} {:>9} {:>9} {:>10} {:>9} {:>10} {:>9}\n",
                row.link.name(),
                row.percent,
                row.to_focus.percent(),
                row.from_focus.percent(),
                row.frames.plain.sent() + row.frames.simulcast.sent(),
                fraction(row.frames.plain.complete_fraction()),
                fraction(row.frames.plain.in_time_fraction()),
                fraction(row.frames.simulcast.complete_fraction()),
                fraction(row.frames.simulcast.in_time_fraction()),
                row.recovered,
                fraction(row.control_frames.worst_complete()),
            ));
        }
        out
    }
}

/// Moves this process into a new network namespace with only its loopback, up; the focus and
/// the homeserver the run starts inherit it, and the kernel deletes it when the last of them
/// exits. Call it before any other thread exists (a namespace change applies to the calling
/// thread and what it creates afterwards).
///
/// Errors (the run cannot happen here, and should be skipped, not failed): not allowed to
/// create a namespace (needs root or `CAP_SYS_ADMIN`), `ip` or `nft` missing or failing.
pub fn enter_network_namespace() -> Result<()> {
    enter_bare_network_namespace()?;
    run_tool(Command::new(tool("nft")).arg("--version"), None)
        .context("nftables' `nft` (Debian package nftables)")?;
    impair(LossLink::None, 0)
}

/// Moves this process into a new network namespace with only its loopback, up (see
/// [`enter_network_namespace`], which adds the loss run's nftables table).
///
/// Errors: not allowed to create a namespace, or `ip` missing or failing.
pub fn enter_bare_network_namespace() -> Result<()> {
    // SAFETY: unshare(2) with CLONE_NEWNET only changes this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "cannot create a network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    run_tool(
        Command::new(tool("ip")).args(["link", "set", "lo", "up"]),
        None,
    )
    .context("bringing up the namespace's loopback")?;
    Ok(())
}

/// The path of the system tool `name`: in `/usr/sbin` (where Debian puts `ip` and `nft`, and
/// which a non-login shell's `PATH` may lack), else as found on `PATH`.
pub(crate) fn tool(name: &str) -> String {
    let sbin = format!("/usr/sbin/{name}");
    if std::path::Path::new(&sbin).is_file() {
        sbin
    } else {
        name.to_owned()
    }
}

/// Runs `command` (with `stdin` on its standard input) and returns its standard output.
pub(crate) fn run_tool(command: &mut Command, stdin: Option<&str>) -> Result<String> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to {command:?}"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Replaces the run's nftables table (atomically) with rules that count the UDP datagrams
/// from and to `link`'s addresses and drop `percent` % of each at random.
fn impair(link: LossLink, percent: u32) -> Result<()> {
    let mut rules = String::new();
    for ip in link.addresses() {
        for direction in ["saddr", "daddr"] {
            rules.push_str(&format!(
                "    ip {direction} {ip} meta l4proto udp counter\n    ip {direction} {ip} meta l4proto udp numgen random mod 100 < {percent} counter drop\n"
            ));
        }
    }
    let ruleset = format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
    );
    run_tool(Command::new(tool("nft")).args(["-f", "-"]), Some(&ruleset))
        .with_context(|| format!("setting {percent} % loss on the {} link", link.name()))?;
    Ok(())
}

/// The counters of the rules [`impair`] wrote, over all its addresses: (from the devices, to
/// the devices).
fn read_drops() -> Result<(Drops, Drops)> {
    let text = run_tool(
        Command::new(tool("nft")).args(["list", "table", "inet", TABLE]),
        None,
    )?;
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|line| {
            let rest = line.split("counter packets ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    let (mut from, mut to) = (Drops::default(), Drops::default());
    // Per address: from it (all, dropped), then to it (all, dropped).
    for chunk in counts.chunks_exact(4) {
        from.datagrams += chunk[0];
        from.dropped += chunk[1];
        to.datagrams += chunk[2];
        to.dropped += chunk[3];
    }
    Ok((from, to))
}

/// The video frames `client` has judged from the publisher `user`, and its packets that
/// filled a gap late (retransmissions).
fn video_frames(client: &SimClient, user: &str) -> (FrameCounts, u64) {
    client
        .report()
        .tracks
        .iter()
        .filter(|t| t.kind == "video" && t.publisher_user.as_deref() == Some(user))
        .fold((FrameCounts::default(), 0), |(frames, recovered), t| {
            (frames.add(&t.frames), recovered + t.seq_recovered)
        })
}

/// The two publishers' user ids: without simulcast, with.
struct Publishers {
    plain: String,
    simulcast: String,
}

impl Publishers {
    /// `client`'s frames from each publisher, and its retransmitted packets from both.
    fn frames(&self, client: &SimClient) -> (Frames, u64) {
        let (plain, a) = video_frames(client, &self.plain);
        let (simulcast, b) = video_frames(client, &self.simulcast);
        (Frames { plain, simulcast }, a + b)
    }
}

/// What is read at the start and the end of a window.
struct Reading {
    from_devices: Drops,
    to_devices: Drops,
    frames: Frames,
    control_frames: Frames,
    recovered: u64,
}

fn read(publishers: &Publishers, subscriber: &SimClient, control: &SimClient) -> Result<Reading> {
    let (from_devices, to_devices) = read_drops()?;
    let (frames, recovered) = publishers.frames(subscriber);
    let (control_frames, _) = publishers.frames(control);
    Ok(Reading {
        from_devices,
        to_devices,
        frames,
        control_frames,
        recovered,
    })
}

/// Joins one device and waits until its call is connected.
async fn join(config: SimConfig) -> Result<SimClient> {
    scenario::publish_membership(&config).await?;
    let client = SimClient::start(config).await?;
    scenario::wait_connected(&client, CONNECT_TIMEOUT).await?;
    Ok(client)
}

/// Runs `options` against the first focus of `target`, from inside the namespace
/// [`enter_network_namespace`] made.
///
/// Errors: the call cannot be set up, the subscribers get no video from the publisher, or the
/// nftables rules cannot be changed. Frames lost are figures of the report, not errors.
pub async fn run(target: Target, options: &LossOptions) -> Result<LossReport> {
    let Some(focus) = target.foci.first().cloned() else {
        bail!("no focus to drive");
    };
    if let Some(bad) = options.percents.iter().find(|p| !(1..=99).contains(*p)) {
        bail!("loss rates are 1 to 99 percent, not {bad}");
    }
    let call = scenario::prepare_call(&target, &options.account_prefix).await?;
    let configs = scenario::devices_at(
        &target,
        &call,
        &focus,
        &options.account_prefix,
        &[
            ("publisher", PUBLISHER_IP),
            ("simulcast", SIMULCAST_PUBLISHER_IP),
            ("subscriber", SUBSCRIBER_IP),
            ("control", CONTROL_IP),
        ],
    )
    .await?;
    let [mut plain, mut simulcast, mut subscriber, mut control] =
        <[SimConfig; 4]>::try_from(configs).map_err(|_| anyhow::anyhow!("four devices"))?;
    plain.video_bitrate_bps = options.video_bitrate_bps;
    simulcast.simulcast = true;
    let id = |c: &SimConfig| {
        (
            c.matrix.user_id().to_owned(),
            c.matrix.device_id().to_owned(),
        )
    };
    let watched = vec![id(&plain), id(&simulcast)];
    let publishers = Publishers {
        plain: watched[0].0.clone(),
        simulcast: watched[1].0.clone(),
    };
    for publisher in [&mut plain, &mut simulcast] {
        publisher.subscribe = SubscribePolicy::None;
    }
    for watcher in [&mut subscriber, &mut control] {
        watcher.publish_audio = false;
        watcher.publish_video = false;
        watcher.subscribe = SubscribePolicy::Publishers(watched.clone());
    }
    let plain = join(plain).await?;
    let simulcast = join(simulcast).await?;
    let subscriber = join(subscriber).await?;
    let control = join(control).await?;
    for watcher in [&subscriber, &control] {
        watcher
            .wait_receiving_from(&watched, 1, MEDIA_TIMEOUT)
            .await
            .with_context(|| format!("{} receiving the publishers", watcher.user_id()))?;
    }

    let mut phases = vec![(LossLink::None, 0)];
    for link in &options.links {
        for percent in &options.percents {
            phases.push((*link, *percent));
        }
    }
    let mut rows = Vec::new();
    for (link, percent) in phases {
        impair(link, percent)?;
        tokio::time::sleep(SETTLE).await;
        let start = read(&publishers, &subscriber, &control)?;
        tokio::time::sleep(options.window).await;
        let end = read(&publishers, &subscriber, &control)?;
        let since = |a: Drops, b: Drops| Drops {
            datagrams: a.datagrams.saturating_sub(b.datagrams),
            dropped: a.dropped.saturating_sub(b.dropped),
        };
        rows.push(LossRow {
            link,
            percent,
            to_focus: since(end.from_devices, start.from_devices),
            from_focus: since(end.to_devices, start.to_devices),
            frames: end.frames.since(&start.frames),
            control_frames: end.control_frames.since(&start.control_frames),
            recovered: end.recovered.saturating_sub(start.recovered),
        });
    }
    impair(LossLink::None, 0)?;
    for client in [control, subscriber, simulcast, plain] {
        if let Err(err) = client.hangup().await {
            tracing::warn!(%err, "hanging up");
        }
    }
    Ok(LossReport {
        video_bitrate_bps: options.video_bitrate_bps,
        window_seconds: options.window.as_secs_f64(),
        rows,
    })
}
