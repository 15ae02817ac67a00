//! `cascade-loadtest`: load tests a Cascade focus through a real homeserver; `baseline` measures
//! the kernel's plain UDP fan-out on this machine; `churn` cycles devices through calls and
//! compares the focus's footprint before and after; `presets` lists the named scenarios.
//! `--target janus` and `--target livekit` run the same devices against Janus, and through the
//! focus's LiveKit endpoint.

use anyhow::{Context, Result, bail};
use cascade_loadtest::baseline::{self, BaselineOptions, Sinks};
use cascade_loadtest::churn::{self, ChurnOptions};
use cascade_loadtest::congestion::{self, CongestionOptions};
use cascade_loadtest::flood::{self, FloodOptions};
use cascade_loadtest::livekit::{self, LiveKitTarget};
use cascade_loadtest::loss::{self, LossLink, LossOptions};
use cascade_loadtest::preset::{self, Layout, PRESETS, Scenario};
use cascade_loadtest::scenario::{self, FocusTarget, RunOptions, Target};
use cascade_loadtest::{local, plot, report};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "cascade-loadtest",
    about = "Load tests a Cascade focus with simulated devices through a real homeserver",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure the kernel's plain UDP fan-out (receive one packet, send it to N sockets).
    Baseline(BaselineArgs),
    /// Devices join and leave a focus's conference thousands of times; prints the focus's
    /// memory, file descriptors, threads, calls and subscriptions before and after, and fails
    /// if they did not come back.
    Churn(ChurnArgs),
    /// Random packet loss on the publishers' links, then on a subscriber's, at each rate: the
    /// share of the publishers' video frames that arrive whole (in a network namespace of its
    /// own, with a Synapse and the focus started in it; needs root and nftables).
    Loss(LossArgs),
    /// One subscriber's downlink limited with tbf, then freed (a publisher of three
    /// simulcast layers, two subscribers at 1280x720): how soon the focus moves it to a layer
    /// that fits and back up, and the loss meanwhile (in a network namespace of its own, with
    /// a Synapse and the focus started in it; needs root and tc).
    Congestion(CongestionArgs),
    /// Garbage datagrams at the focus's media port while three devices meet (a local Synapse
    /// and focus): the conference's loss and delay without and with the flood.
    Flood(FloodArgs),
    /// List the presets.
    Presets,
}

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

/// Which SFU a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Sfu {
    /// Cascade, through a homeserver.
    Cascade,
    /// Debian's Janus with its VideoRoom plugin, started here (see `janus`).
    Janus,
    /// Cascade, then Janus, with the ratio of their packets per CPU-second.
    Both,
    /// Cascade through its LiveKit endpoint: a focus started here with `[livekit]` on, the
    /// devices LiveKit clients in one room (see `livekit`).
    Livekit,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The SFU to load: `cascade`, `janus`, `both` (one after the other, same scenario), or
    /// `livekit` (the focus's LiveKit endpoint, always a focus and Synapse started here).
    #[arg(long, value_enum, default_value_t = Sfu::Cascade)]
    target: Sfu,
    /// The address Janus gathers candidates on and its devices bind to: not a loopback one,
    /// which Janus never uses (`scripts/janus-compare.sh` makes one in a namespace).
    #[arg(long, default_value = "10.99.0.1")]
    janus_ip: std::net::IpAddr,
    /// A named scenario (see `cascade-loadtest presets`); other options override its values.
    #[arg(long)]
    preset: Option<String>,
    /// Start a Synapse and the focus here (release `cascade` if built, else debug).
    #[arg(long)]
    local: bool,
    /// Foci to spread the devices over: device i of a conference calls focus i mod N and names
    /// it as its active focus, so with 2 or more the foci link (cascading); with --local, N
    /// focus processes are started, each its own user, all invited to the room.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    foci: u32,
    /// The `cascade` binary for --local.
    #[arg(long)]
    focus_binary: Option<PathBuf>,
    /// Media event loops of each --local focus.
    #[arg(long, default_value_t = 1)]
    event_loops: u32,
    /// Pin the foci (all their threads) to this CPU.
    #[arg(long)]
    focus_cpu: Option<usize>,
    /// Homeserver URL of a running setup.
    #[arg(long, env = "CASCADE_LOADTEST_HOMESERVER")]
    homeserver: Option<String>,
    /// The homeserver's registration shared secret.
    #[arg(long, env = "CASCADE_LOADTEST_REGISTRATION_SECRET")]
    registration_secret: Option<String>,
    /// The focus's user id; once per focus with --foci, in the same order as the other
    /// per-focus options.
    #[arg(long)]
    focus_user: Vec<String>,
    /// The foci's device id (the same for every focus).
    #[arg(long, default_value = "CASCADE")]
    focus_device: String,
    /// The focus's process id (for its CPU time and memory); once per focus.
    #[arg(long)]
    focus_pid: Vec<u32>,
    /// The focus's `/metrics` URL (for its forwarded packets and links); once per focus.
    #[arg(long)]
    focus_metrics: Vec<String>,
    /// Use this room (id or alias) instead of creating one.
    #[arg(long)]
    room: Option<String>,
    /// Devices publishing a camera and a microphone.
    #[arg(long)]
    video_publishers: Option<u32>,
    /// Devices publishing a microphone only.
    #[arg(long)]
    audio_publishers: Option<u32>,
    /// Devices publishing nothing.
    #[arg(long)]
    subscribers: Option<u32>,
    /// Conferences run side by side, each with the scenario's devices (spread by the focus over
    /// its event loops: compare `--event-loops 1` and `2`).
    #[arg(long)]
    conferences: Option<u32>,
    /// Publishers watch each other too (a meeting).
    #[arg(long)]
    meeting: Option<bool>,
    /// Seconds of measurement once everyone has joined.
    #[arg(long)]
    duration: Option<u64>,
    /// Video publishers send simulcast (720p/360p/180p).
    #[arg(long, value_enum)]
    simulcast: Option<Switch>,
    /// Video bitrate without simulcast, bit/s.
    #[arg(long)]
    video_bitrate: Option<u32>,
    /// What each subscriber watches: `K@WxH` (K videos at that render size) or `all@WxH`.
    #[arg(long)]
    layout: Option<String>,
    /// Joins started per second.
    #[arg(long)]
    join_rate: Option<f64>,
    /// Seed of account names and of who watches whom.
    #[arg(long)]
    seed: Option<u64>,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a PNG plot over time here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also run the UDP fan-out baseline with this fan-out and report the focus's fraction of it.
    #[arg(long)]
    baseline_fanout: Option<usize>,
    /// UDP payload bytes of the baseline's packets (100 compares with audio, 1200 with video).
    #[arg(long, default_value_t = 1200)]
    baseline_packet_size: usize,
    /// Packets per second into the baseline's relay: the focus's own input rate (e.g. 500 for
    /// `audio-1000`'s 10 publishers) compares the same shape, wake-ups included; the default
    /// keeps the relay busy.
    #[arg(long, default_value_t = BaselineOptions::default().input_pps)]
    baseline_input_pps: u64,
    /// How the baseline's sinks receive: `polled` (nobody is woken: the cheapest send), or
    /// `waiting` in epoll like the simulated devices (each datagram may wake one, in the
    /// sender's context on loopback).
    #[arg(long, value_enum, default_value_t = Sinks::Polled)]
    baseline_sinks: Sinks,
    /// With --local, write each focus's whole log into this directory at the end
    /// (`focus-<i>.log`).
    #[arg(long)]
    focus_logs: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Exit 0 even if media did not flow.
    #[arg(long)]
    allow_failure: bool,
}

#[derive(Debug, Args)]
struct BaselineArgs {
    /// Sockets each packet is sent to.
    #[arg(long, default_value_t = 100)]
    fanout: usize,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 1200)]
    packet_size: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Packets per second into the relay.
    #[arg(long, default_value_t = 20_000)]
    input_pps: u64,
    /// How the sinks receive (see `--baseline-sinks` of `run`).
    #[arg(long, value_enum, default_value_t = Sinks::Polled)]
    sinks: Sinks,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ChurnArgs {
    /// Start a Synapse and the focus here (release `cascade` if built, else debug).
    #[arg(long)]
    local: bool,
    /// The `cascade` binary for --local.
    #[arg(long)]
    focus_binary: Option<PathBuf>,
    /// Homeserver URL of a running setup.
    #[arg(long, env = "CASCADE_LOADTEST_HOMESERVER")]
    homeserver: Option<String>,
    /// The homeserver's registration shared secret.
    #[arg(long, env = "CASCADE_LOADTEST_REGISTRATION_SECRET")]
    registration_secret: Option<String>,
    /// The focus's user id.
    #[arg(long)]
    focus_user: Option<String>,
    /// The focus's device id.
    #[arg(long, default_value = "CASCADE")]
    focus_device: String,
    /// The focus's process id (its memory, file descriptors and threads are read from /proc).
    #[arg(long)]
    focus_pid: Option<u32>,
    /// The focus's `/metrics` URL (its calls, peer connections and subscriptions).
    #[arg(long)]
    focus_metrics: Option<String>,
    /// Devices cycling side by side.
    #[arg(long, default_value_t = 50)]
    devices: usize,
    /// Join/leave cycles in all (after a first round of one per device).
    #[arg(long, default_value_t = 10_000)]
    cycles: usize,
    /// Stop starting cycles after this many seconds.
    #[arg(long, default_value_t = 1800)]
    max_seconds: u64,
    /// Account names start with this.
    #[arg(long, default_value = "churn")]
    account_prefix: String,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct LossArgs {
    /// The `cascade` binary to start (release if built, else debug).
    #[arg(long)]
    focus_binary: Option<PathBuf>,
    /// Loss rates, percent, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    percent: Vec<u32>,
    /// The links to impair, one after the other: `publisher` (both publishers'), `subscriber`,
    /// comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "publisher,subscriber")]
    links: Vec<LinkArg>,
    /// Seconds of measurement per phase.
    #[arg(long, default_value_t = 20)]
    window: u64,
    /// The video bitrate of the publisher without simulcast, bit/s.
    #[arg(long, default_value_t = 1_000_000)]
    video_bitrate: u32,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CongestionArgs {
    /// The `cascade` binary to start (release if built, else debug).
    #[arg(long)]
    focus_binary: Option<PathBuf>,
    /// The limit on the subscriber's downlink, kbit/s.
    #[arg(long, default_value_t = 400)]
    rate: u32,
    /// Seconds the limit holds.
    #[arg(long, default_value_t = 20)]
    limited: u64,
    /// Seconds watched after the limit is lifted.
    #[arg(long, default_value_t = 20)]
    lifted: u64,
    /// A third subscriber joins 4 s into the limit, behind a limit of its own (the limit must
    /// hold at least 16 s).
    #[arg(long)]
    latecomer: bool,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the focus's whole log into this directory (its level: `CASCADE_TEST_LOG`).
    #[arg(long)]
    logs: Option<PathBuf>,
}

async fn congestion_command(args: CongestionArgs) -> Result<()> {
    let (setup, target) =
        local::start_with(args.focus_binary.clone(), 1, 1, &without_gso()).await?;
    let options = CongestionOptions {
        rate_kbit: args.rate.max(1),
        limited_for: Duration::from_secs(args.limited.max(1)),
        lifted_for: Duration::from_secs(args.lifted.max(1)),
        account_prefix: "congestion".into(),
        latecomer: args.latecomer,
    };
    let report = logged(&setup, congestion::run(target, &options)).await;
    if let Some(dir) = &args.logs {
        local::write_logs(&setup, dir)?;
    }
    let report = report?;
    let failure = report.failure();
    if failure.is_some() {
        eprintln!("{}", setup.log_tails());
    }
    conclude(
        "congestion",
        report.table(),
        &report,
        args.json.as_deref(),
        failure,
    )
}

/// The focus's environment for the runs that impair a device's link on this machine's own
/// loopback (`loss`: nftables in the input hook; `congestion`: tbf under HTB on `lo`): both
/// see a UDP GSO message whole, before the kernel cuts it into datagrams, so one drop would
/// take a whole message (a keyframe's packets at once) where a real bottleneck, behind the
/// focus's network device that cuts the message, drops datagrams one by one. So the focus
/// sends each datagram on its own there.
fn without_gso() -> [(String, String); 1] {
    [("CASCADE_RTC__UDP_GSO".to_owned(), "false".to_owned())]
}

/// A link `loss` impairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LinkArg {
    Publisher,
    Subscriber,
}

async fn loss_command(args: LossArgs) -> Result<()> {
    let (setup, target) =
        local::start_with(args.focus_binary.clone(), 1, 1, &without_gso()).await?;
    let options = LossOptions {
        percents: args.percent.clone(),
        links: args
            .links
            .iter()
            .map(|l| match l {
                LinkArg::Publisher => LossLink::Publisher,
                LinkArg::Subscriber => LossLink::Subscriber,
            })
            .collect(),
        window: Duration::from_secs(args.window.max(1)),
        video_bitrate_bps: args.video_bitrate,
        account_prefix: "loss".into(),
    };
    let report = logged(&setup, loss::run(target, &options)).await?;
    let failure = report.failure();
    if failure.is_some() {
        eprintln!("{}", setup.log_tails());
    }
    conclude(
        "loss",
        report.table(),
        &report,
        args.json.as_deref(),
        failure,
    )
}

/// `run`'s outcome, with the foci's last log lines printed if it failed.
async fn logged<T>(
    setup: &local::LocalSetup,
    run: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let outcome = run.await;
    if outcome.is_err() {
        eprintln!("{}", setup.log_tails());
    }
    outcome
}

/// Prints a scenario's `table`, writes its `report` as JSON to `json` if given, and fails with
/// `failure` if there is one.
fn conclude(
    name: &str,
    table: String,
    report: &impl serde::Serialize,
    json: Option<&std::path::Path>,
    failure: Option<String>,
) -> Result<()> {
    print!("{table}");
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    match failure {
        Some(why) => bail!("{name} failed: {why}"),
        None => Ok(()),
    }
}

#[derive(Debug, Args)]
struct FloodArgs {
    /// The `cascade` binary to start (release if built, else debug).
    #[arg(long)]
    focus_binary: Option<PathBuf>,
    /// Garbage datagrams per second.
    #[arg(long, default_value_t = 100_000)]
    pps: u64,
    /// Seconds of each window (quiet, then flooded).
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

async fn flood_command(args: FloodArgs) -> Result<()> {
    // The flood aims at the focus's media port, so the focus gets a fixed one: a port free now.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .context("finding a free UDP port")?
        .port();
    let env = [("CASCADE_RTC__UDP_PORT".to_owned(), port.to_string())];
    let (setup, target) = local::start_with(args.focus_binary.clone(), 1, 1, &env).await?;
    let options = FloodOptions {
        pps: args.pps,
        window: Duration::from_secs(args.window.max(1)),
        account_prefix: "flood".into(),
    };
    let report = logged(&setup, flood::run(target, port, &options)).await?;
    conclude(
        "flood",
        report.table(),
        &report,
        args.json.as_deref(),
        report.failure(),
    )
}

async fn churn_command(args: ChurnArgs) -> Result<()> {
    let (setup, target) = if args.local {
        let (setup, target) = local::start(args.focus_binary.clone(), 1, 1).await?;
        (Some(setup), target)
    } else {
        let (Some(homeserver), Some(secret), Some(user)) = (
            args.homeserver.clone(),
            args.registration_secret.clone(),
            args.focus_user.clone(),
        ) else {
            bail!(
                "pass --local, or --homeserver, --registration-secret, --focus-user, --focus-pid and --focus-metrics"
            );
        };
        let target = Target {
            homeserver_url: homeserver,
            registration_secret: secret,
            foci: vec![FocusTarget {
                user,
                device: args.focus_device.clone(),
                pid: args.focus_pid,
                metrics_url: args.focus_metrics.clone(),
            }],
            room: None,
        };
        (None, target)
    };
    let options = ChurnOptions {
        devices: args.devices,
        cycles: args.cycles,
        max_duration: Duration::from_secs(args.max_seconds.max(1)),
        account_prefix: args.account_prefix.clone(),
        progress: true,
    };
    let report = match churn::run(target, &options).await {
        Ok(report) => report,
        Err(err) => {
            if let Some(setup) = &setup {
                eprintln!("{}", setup.log_tails());
            }
            return Err(err);
        }
    };
    conclude(
        "churn",
        report.table(),
        &report,
        args.json.as_deref(),
        report.failure(),
    )
}

fn scenario_from(args: &RunArgs) -> Result<Scenario> {
    let mut s = match &args.preset {
        Some(name) => preset::find(name)?.scenario(),
        None => Scenario::default(),
    };
    if let Some(n) = args.video_publishers {
        s.video_publishers = n;
    }
    if let Some(n) = args.audio_publishers {
        s.audio_publishers = n;
    }
    if let Some(n) = args.subscribers {
        s.subscribers = n;
    }
    if let Some(n) = args.conferences {
        s.conferences = n.max(1);
    }
    if let Some(m) = args.meeting {
        s.publishers_subscribe = m;
    }
    if let Some(d) = args.duration {
        s.duration = Duration::from_secs(d.max(1));
    }
    if let Some(sim) = args.simulcast {
        s.simulcast = sim == Switch::On;
    }
    if let Some(b) = args.video_bitrate {
        s.video_bitrate_bps = b;
    }
    if let Some(layout) = &args.layout {
        s.layout = Layout::parse(layout)?;
    }
    if let Some(r) = args.join_rate {
        if r.is_nan() || r <= 0.0 {
            bail!("--join-rate must be positive");
        }
        s.join_rate = r;
    }
    if let Some(seed) = args.seed {
        s.seed = seed;
    }
    if s.devices() == 0 {
        bail!("the scenario has no devices");
    }
    Ok(s)
}

/// Runs the scenario against Janus and prints what it measured.
async fn run_janus(
    scenario: &Scenario,
    ip: std::net::IpAddr,
) -> Result<cascade_loadtest::janus::JanusSummary> {
    let dir = std::env::temp_dir().join(format!("cascade-loadtest-janus-{}", std::process::id()));
    let summary =
        cascade_loadtest::janus::run(scenario, RunOptions::default().warmup, &dir, ip).await;
    let _ = std::fs::remove_dir_all(&dir);
    let summary = summary?;
    println!(
        "janus (VideoRoom)              joined {} / failed {}; received {:.0} pkt/s, loss {:.3} %, \
         janus CPU {:.1} % of one core: {} pkt per janus CPU-s",
        summary.joined,
        summary.failed,
        summary.received_pps,
        summary.loss_pct,
        summary.cpu_pct,
        report::thousands(summary.packets_per_cpu_second)
    );
    Ok(summary)
}

/// Starts a Synapse and a focus with `[livekit]` on a free 127.0.0.1 port, runs the scenario
/// through the focus's LiveKit endpoint and prints what it measured (with the kernel baseline
/// if asked for).
async fn run_livekit(args: &RunArgs, scenario: &Scenario) -> Result<()> {
    if args.foci > 1 {
        bail!("--target livekit runs one focus: --foci is for the cascade target");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free TCP port")?
        .port();
    let mut target = LiveKitTarget::local(port);
    let (setup, focus) = local::start_with(
        args.focus_binary.clone(),
        args.event_loops,
        1,
        &target.focus_env(),
    )
    .await?;
    let Some(pid) = focus.foci.first().and_then(|f| f.pid) else {
        bail!("the focus started without a process id");
    };
    target.focus_pid = pid;
    if let Some(cpu) = args.focus_cpu {
        local::pin_process(pid, cpu);
    }
    eprintln!(
        "cascade-loadtest: {} devices through {} (LiveKit endpoint, focus pid {pid})",
        scenario.devices(),
        target.url
    );
    let outcome = livekit::run(&target, scenario, RunOptions::default().warmup).await;
    if let Some(dir) = &args.focus_logs {
        local::write_logs(&setup, dir)?;
    }
    let mut summary = outcome.inspect_err(|_| eprintln!("{}", setup.log_tails()))?;
    if summary.media_failure().is_some() {
        eprintln!("{}", setup.log_tails());
    }
    drop(setup);
    println!(
        "cascade (LiveKit endpoint)     joined {} / failed {}; received {:.0} pkt/s, loss {:.3} %, \
         focus CPU {:.1} % of one core: {} pkt per focus CPU-s",
        summary.joined,
        summary.failed,
        summary.received_pps,
        summary.loss_pct,
        summary.cpu_pct,
        report::thousands(summary.packets_per_cpu_second)
    );
    for line in summary.missing().iter().take(10) {
        println!("missing: {line}");
    }
    for err in &summary.errors {
        println!("error: {err}");
    }
    if let Some(fanout) = args.baseline_fanout {
        let result = run_baseline(args, fanout).await?;
        summary.set_baseline(result);
        if let Some(b) = &summary.baseline {
            println!(
                "kernel UDP fan-out baseline    {} pkt per CPU-s (1 → {} sockets, {} B); focus / baseline {}",
                report::thousands(b.packets_per_cpu_second),
                b.fanout,
                b.packet_size,
                summary
                    .focus_vs_kernel
                    .map_or_else(|| "n/a".to_owned(), |r| format!("{:.1} %", r * 100.0))
            );
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    match summary.media_failure() {
        Some(why) if !args.allow_failure => bail!("media did not flow as it should: {why}"),
        _ => Ok(()),
    }
}

/// Runs the UDP fan-out baseline with `run`'s baseline options and `fanout`.
async fn run_baseline(args: &RunArgs, fanout: usize) -> Result<baseline::BaselineResult> {
    let packet_size = args.baseline_packet_size;
    let input_pps = args.baseline_input_pps;
    let sinks = args.baseline_sinks;
    tokio::task::spawn_blocking(move || {
        baseline::run(BaselineOptions {
            fanout,
            packet_size,
            input_pps,
            sinks,
            // At least 10,000 packets in, so that a slow input rate is measured as
            // precisely as a fast one (20 s at 500 packets/s).
            duration: BaselineOptions::default()
                .duration
                .max(Duration::from_secs_f64(10_000.0 / input_pps.max(1) as f64)),
        })
    })
    .await
    .context("baseline task")?
}

async fn run(args: RunArgs) -> Result<()> {
    let scenario = scenario_from(&args)?;
    if args.target == Sfu::Janus {
        run_janus(&scenario, args.janus_ip).await?;
        return Ok(());
    }
    if args.target == Sfu::Livekit {
        return run_livekit(&args, &scenario).await;
    }
    let foci = args.foci as usize;
    let (setup, target) = if args.local {
        let (setup, target) =
            local::start(args.focus_binary.clone(), args.event_loops, foci).await?;
        (Some(setup), target)
    } else {
        let (Some(homeserver), Some(secret), false) = (
            args.homeserver.clone(),
            args.registration_secret.clone(),
            args.focus_user.is_empty(),
        ) else {
            bail!(
                "pass --local, or --homeserver, --registration-secret and --focus-user (and --focus-pid for CPU numbers)"
            );
        };
        if args.focus_user.len() != foci {
            bail!(
                "--foci {foci} needs --focus-user {foci} times (got {})",
                args.focus_user.len()
            );
        }
        let foci = args
            .focus_user
            .iter()
            .enumerate()
            .map(|(i, user)| FocusTarget {
                user: user.clone(),
                device: args.focus_device.clone(),
                pid: args.focus_pid.get(i).copied(),
                metrics_url: args.focus_metrics.get(i).cloned(),
            })
            .collect();
        let target = Target {
            homeserver_url: homeserver,
            registration_secret: secret,
            foci,
            room: None,
        };
        (None, target)
    };
    let target = Target {
        room: args.room.clone(),
        ..target
    };
    if let Some(cpu) = args.focus_cpu {
        for pid in target.foci.iter().filter_map(|f| f.pid) {
            local::pin_process(pid, cpu);
        }
    }
    let options = RunOptions {
        progress: !args.no_progress,
        ..RunOptions::default()
    };
    let pids: Vec<String> = target
        .foci
        .iter()
        .map(|f| {
            f.pid
                .map_or_else(|| "unknown".to_owned(), |p| p.to_string())
        })
        .collect();
    eprintln!(
        "cascade-loadtest: {} devices against {} ({} {} pid {})",
        scenario.devices(),
        target.homeserver_url,
        target.foci.len(),
        if target.foci.len() == 1 {
            "focus"
        } else {
            "foci"
        },
        pids.join(", ")
    );
    let outcome = scenario::run(target, &scenario, &options).await;
    if let (Some(setup), Some(dir)) = (&setup, &args.focus_logs) {
        local::write_logs(setup, dir)?;
    }
    let mut summary = match outcome {
        Ok(summary) => summary,
        Err(err) => {
            if let Some(setup) = &setup {
                eprintln!("{}", setup.log_tails());
            }
            return Err(err);
        }
    };
    if let Some(setup) = &setup
        && summary.media_failure().is_some()
    {
        eprintln!("{}", setup.log_tails());
    }
    drop(setup);
    if let Some(fanout) = args.baseline_fanout {
        summary.set_baseline(run_baseline(&args, fanout).await?);
    }
    println!("{}", report::table(&summary));
    if args.target == Sfu::Both {
        let janus = run_janus(&scenario, args.janus_ip).await?;
        if let Some(cascade) = summary.forwarded_per_focus_cpu_second {
            println!(
                "cascade / janus                {:.2} (forwarded packets per SFU CPU-second, same scenario, one after the other)",
                cascade / janus.packets_per_cpu_second.max(f64::EPSILON)
            );
        }
    }
    if let Some(path) = &args.json {
        report::write_json(&summary, path)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::write_png(&summary, path)?;
        println!("wrote {}", path.display());
    }
    match summary.media_failure() {
        Some(why) if !args.allow_failure => bail!("media did not flow as it should: {why}"),
        _ => Ok(()),
    }
}

fn baseline_command(args: BaselineArgs) -> Result<()> {
    let result = baseline::run(BaselineOptions {
        fanout: args.fanout,
        packet_size: args.packet_size,
        duration: Duration::from_secs(args.duration.max(1)),
        input_pps: args.input_pps,
        sinks: args.sinks,
    })?;
    println!(
        "UDP fan-out 1 → {} on 127.0.0.1, {} B: {} packets in, {} out in {:.1} s; relay CPU {:.2} s",
        result.fanout,
        result.packet_size,
        result.packets_in,
        result.packets_out,
        result.seconds,
        result.relay_cpu_seconds
    );
    println!(
        "{} packets sent per relay CPU-second ({} per wall-second)",
        report::thousands(result.packets_per_cpu_second),
        report::thousands(result.packets_per_second)
    );
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&result)?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn list_presets() {
    for p in PRESETS {
        println!("{:<18} {}", p.name, p.about);
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,cascade_loadtest=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    if let Some(Command::Congestion(_)) = &cli.command {
        // As for `loss` below.
        cascade_testkit::ensure_installed().context("installing Synapse")?;
        if let Err(why) = congestion::enter_network_namespace() {
            println!("congestion: skipped: {why:#}");
            return Ok(());
        }
    }
    if let Some(Command::Loss(_)) = &cli.command {
        // The namespace has no route out: install Synapse first, then move this thread (and the
        // runtime's threads and the processes started later) into it, before any thread exists.
        cascade_testkit::ensure_installed().context("installing Synapse")?;
        if let Err(why) = loss::enter_network_namespace() {
            println!("loss: skipped: {why:#}");
            return Ok(());
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_command(cli))
}

async fn run_command(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Baseline(args)) => baseline_command(args),
        Some(Command::Churn(args)) => churn_command(args).await,
        Some(Command::Loss(args)) => loss_command(args).await,
        Some(Command::Congestion(args)) => congestion_command(args).await,
        Some(Command::Flood(args)) => flood_command(args).await,
        Some(Command::Presets) => {
            list_presets();
            Ok(())
        }
        None => run(cli.run).await,
    }
}
