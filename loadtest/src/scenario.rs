//! Driving a focus through a homeserver: accounts, room, conference, paced joins, media, and the
//! measurement window.

use crate::metrics::{self, FocusMetrics};
use crate::preset::Scenario;
use crate::procstat::{self, ProcSample};
use crate::progress::Progress;
use crate::stats::{FocusFigures, FocusMark, FocusOf, Point, Summary, Totals, percentile_ms};
use anyhow::{Context, Result, bail};
use cascade_signalling::MatrixClient;
use cascade_simclient::{SimClient, SimConfig, SubscribePolicy, signalling};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

/// Password of every load-test account.
const PASSWORD: &str = "cascade-loadtest-password";
/// Joins in flight at once, whatever the join rate.
const MAX_CONCURRENT_JOINS: usize = 32;
/// How long the focus may take to join the room after the invite.
const FOCUS_JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Sampling period of the progress bar and the time series.
const TICK: Duration = Duration::from_secs(1);

/// One focus a run drives.
#[derive(Clone, Debug)]
pub struct FocusTarget {
    /// The focus's user id.
    pub user: String,
    /// The focus's device id.
    pub device: String,
    /// The focus's process id, for CPU and memory accounting.
    pub pid: Option<u32>,
    /// The focus's `/metrics` URL, for its forwarded packets and links.
    pub metrics_url: Option<String>,
}

/// The homeserver and foci a run drives.
#[derive(Clone, Debug)]
pub struct Target {
    /// The homeserver's client-server API base URL.
    pub homeserver_url: String,
    /// Synapse's `registration_shared_secret`, used to create the accounts.
    pub registration_secret: String,
    /// The foci, at least one: device `i` of each conference calls focus `i mod foci.len()`
    /// (and names it as its active focus), so with two or more the foci link (cascading).
    pub foci: Vec<FocusTarget>,
    /// An existing room (id or alias) to use instead of creating one.
    pub room: Option<String>,
}

impl Target {
    /// The index of the focus device `index` of a conference calls.
    pub fn focus_index(&self, index: usize) -> usize {
        index % self.foci.len().max(1)
    }
}

/// How a run behaves, apart from its scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Draw a progress bar (on a terminal) or print a line every few seconds (otherwise).
    pub progress: bool,
    /// How long one device may take from the start of its join to a connected call.
    pub join_timeout: Duration,
    /// Pause between the last join and the measurement window (subscriptions, keyframes).
    pub warmup: Duration,
    /// Prefix of account names (made from the seed when empty).
    pub account_prefix: String,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            progress: true,
            join_timeout: Duration::from_secs(30),
            warmup: Duration::from_secs(3),
            account_prefix: String::new(),
        }
    }
}

/// The part a device plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Publishes a camera and a microphone.
    VideoPublisher,
    /// Publishes a microphone.
    AudioPublisher,
    /// Publishes nothing, watches per the layout.
    Subscriber,
}

impl Role {
    fn tag(self) -> &'static str {
        match self {
            Self::VideoPublisher => "v",
            Self::AudioPublisher => "a",
            Self::Subscriber => "s",
        }
    }
}

/// A device that joined.
struct Joined {
    role: Role,
    client: SimClient,
    /// The index of the focus it calls.
    focus: usize,
    /// What it subscribes to.
    policy: SubscribePolicy,
}

impl Joined {
    /// Whether it subscribes to anything.
    fn watches(&self) -> bool {
        self.policy != SubscribePolicy::None
    }

    fn id(&self) -> (String, String) {
        (
            self.client.user_id().to_owned(),
            self.client.device_id().to_owned(),
        )
    }
}

/// The publishers `(user_id, device_id)` of `publishers` that `own` watches under `policy` and
/// that are not in `received`.
fn missing_publishers(
    own: &(String, String),
    policy: &SubscribePolicy,
    publishers: &[(String, String)],
    received: &HashSet<(String, String)>,
) -> Vec<(String, String)> {
    publishers
        .iter()
        .filter(|p| *p != own && !received.contains(*p))
        .filter(|p| match policy {
            SubscribePolicy::All => true,
            SubscribePolicy::None => false,
            SubscribePolicy::Publishers(list) => list.contains(p),
        })
        .cloned()
        .collect()
}

/// Watchers that received nothing from some publisher they watch, one line each: who, on which
/// focus, and whom they missed (with that publisher's focus).
fn incomplete_watchers(joined: &[Joined]) -> Vec<String> {
    let publishers: Vec<(String, String)> = joined
        .iter()
        .filter(|j| j.role != Role::Subscriber)
        .map(Joined::id)
        .collect();
    let focus_of: FocusOf = joined.iter().map(|j| (j.id(), j.focus)).collect();
    let mut lines = Vec::new();
    for j in joined.iter().filter(|j| j.watches()) {
        let received: HashSet<(String, String)> = j
            .client
            .report()
            .tracks
            .into_iter()
            .filter(|t| t.packets > 0)
            .filter_map(|t| Some((t.publisher_user?, t.publisher_device?)))
            .collect();
        let missing = missing_publishers(&j.id(), &j.policy, &publishers, &received);
        if missing.is_empty() {
            continue;
        }
        let names: Vec<String> = missing
            .iter()
            .map(|p| {
                let focus = focus_of.get(p).copied().unwrap_or_default();
                format!("{} {} (focus {focus})", p.0, p.1)
            })
            .collect();
        lines.push(format!(
            "{} {} (focus {}) got nothing from {}",
            j.client.user_id(),
            j.client.device_id(),
            j.focus,
            names.join(", ")
        ));
    }
    lines
}

/// What one join produced.
struct JoinOutcome {
    role: Role,
    focus: usize,
    result: Result<(SimClient, Duration, SubscribePolicy)>,
}

/// Registers `localpart` (or logs in if it already exists) and returns its session.
pub async fn account(target: &Target, localpart: &str) -> Result<MatrixClient> {
    let url = &target.homeserver_url;
    match cascade_testkit::register_with_secret(
        url,
        &target.registration_secret,
        localpart,
        PASSWORD,
        false,
    )
    .await
    {
        Ok(registered) => MatrixClient::with_access_token(url, &registered.access_token)
            .await
            .with_context(|| format!("{localpart}: whoami")),
        Err(register_err) => MatrixClient::login_password(url, localpart, PASSWORD, None)
            .await
            .with_context(|| {
                format!("{localpart}: registration failed ({register_err:#}), then login")
            }),
    }
}

/// Creates a public room everyone may send call state in, inviting the foci.
async fn create_room(owner: &MatrixClient, focus_users: &[&str]) -> Result<String> {
    let body = json!({
        "preset": "public_chat",
        "name": "cascade load test",
        "invite": focus_users,
        "power_level_content_override": {
            "events_default": 0,
            "state_default": 0,
            "users_default": 0,
        },
    });
    owner.create_room(body).await.context("creating the room")
}

/// Waits until `user_id` has joined `room_id`.
async fn wait_joined(owner: &MatrixClient, room_id: &str, user_id: &str) -> Result<()> {
    let deadline = Instant::now() + FOCUS_JOIN_TIMEOUT;
    loop {
        let state = owner.room_state(room_id).await?;
        let joined = state.iter().any(|e| {
            e.event_type == "m.room.member"
                && e.state_key.as_deref() == Some(user_id)
                && e.content.get("membership").and_then(|m| m.as_str()) == Some("join")
        });
        if joined {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{user_id} did not join {room_id} within {FOCUS_JOIN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The room and conference every device joins.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    /// The room's id.
    pub(crate) room_id: String,
    /// The conference's id.
    pub(crate) conf_id: String,
}

/// Creates (or joins) the room with the foci in it and starts a conference there.
pub(crate) async fn prepare_call(target: &Target, prefix: &str) -> Result<Call> {
    let owner = account(target, &format!("{prefix}-owner")).await?;
    let mut focus_users: Vec<&str> = target.foci.iter().map(|f| f.user.as_str()).collect();
    focus_users.dedup();
    let room_id = match &target.room {
        Some(room) => {
            let room_id = owner
                .join_room(room)
                .await
                .context("owner joining the room")?;
            for user in &focus_users {
                if let Err(err) = owner.invite_user(&room_id, user).await {
                    tracing::debug!(%err, user, "inviting a focus (it may be there already)");
                }
            }
            room_id
        }
        None => create_room(&owner, &focus_users).await?,
    };
    for user in &focus_users {
        wait_joined(&owner, &room_id, user).await?;
    }
    let conf_id = format!("{prefix}-{}", cascade_simclient::random_id(8));
    signalling::create_conference(&owner, &room_id, &conf_id).await?;
    Ok(Call { room_id, conf_id })
}

/// The config of a new device `localpart` (its account registered or logged in, in the call's
/// room) that calls `focus` in `call`, with [`SimConfig::new`]'s defaults otherwise.
pub(crate) async fn device_config(
    target: &Target,
    call: &Call,
    focus: &FocusTarget,
    localpart: &str,
) -> Result<SimConfig> {
    let matrix = account(target, localpart).await?;
    let room_id = matrix
        .join_room(&call.room_id)
        .await
        .with_context(|| format!("{localpart} joining the room"))?;
    Ok(SimConfig::new(
        matrix,
        &room_id,
        &call.conf_id,
        &focus.user,
        &focus.device,
    ))
}

/// The configs of devices `<prefix>-<name>` that call `focus` in `call`, each from its own
/// address `ip` (see [`device_config`]), in the order given.
pub(crate) async fn devices_at(
    target: &Target,
    call: &Call,
    focus: &FocusTarget,
    prefix: &str,
    devices: &[(&str, std::net::Ipv4Addr)],
) -> Result<Vec<SimConfig>> {
    let mut configs = Vec::new();
    for (name, ip) in devices {
        let mut config = device_config(target, call, focus, &format!("{prefix}-{name}")).await?;
        config.bind_ip = std::net::IpAddr::V4(*ip);
        configs.push(config);
    }
    Ok(configs)
}

/// Publishes a fresh `m.call.member` for this device only (no read of the room state first).
pub(crate) async fn publish_membership(config: &SimConfig) -> Result<()> {
    let now = cascade_simclient::synth::now_us() / 1000;
    let device = signalling::membership_device(
        config.matrix.device_id(),
        &config.session_id,
        &config.focus_user_id,
        &config.focus_device_id,
        now + signalling::MEMBERSHIP_LIFETIME.as_millis() as u64,
    );
    let content = signalling::merge_membership(None, &config.conf_id, device, now);
    config
        .matrix
        .send_state(
            &config.room_id,
            signalling::CALL_MEMBER_EVENT,
            config.matrix.user_id(),
            &content,
        )
        .await
        .context("sending m.call.member")?;
    Ok(())
}

/// Everything one device needs to join.
#[derive(Clone)]
struct JoinPlan {
    target: Arc<Target>,
    call: Call,
    /// The index of the focus to call.
    focus: usize,
    localpart: String,
    role: Role,
    policy: SubscribePolicy,
    render_size: Option<(u32, u32)>,
    video_bitrate_bps: u32,
    simulcast: bool,
    max_duration: Duration,
    timeout: Duration,
}

async fn join_one(plan: JoinPlan) -> Result<(SimClient, Duration, SubscribePolicy)> {
    let started = Instant::now();
    let matrix = account(&plan.target, &plan.localpart).await?;
    let room_id = matrix
        .join_room(&plan.call.room_id)
        .await
        .with_context(|| format!("{} joining the room", plan.localpart))?;
    let Some(focus) = plan.target.foci.get(plan.focus) else {
        bail!("{}: no focus number {}", plan.localpart, plan.focus);
    };
    let mut config = SimConfig::new(
        matrix,
        &room_id,
        &plan.call.conf_id,
        &focus.user,
        &focus.device,
    );
    config.publish_audio = plan.role != Role::Subscriber;
    config.publish_video = plan.role == Role::VideoPublisher;
    config.video_bitrate_bps = plan.video_bitrate_bps;
    config.subscribe = plan.policy.clone();
    config.render_size = plan.render_size;
    config.max_duration = plan.max_duration;
    if plan.simulcast && plan.role == Role::VideoPublisher {
        // matrix-js-sdk's camera layers: q 180p 120 kb/s, h 360p 300 kb/s, f 720p 1.7 Mb/s.
        config.simulcast = true;
        config.simulcast_bitrates_bps = [120_000, 300_000, 1_700_000];
    }
    publish_membership(&config).await?;
    let client = SimClient::start(config).await?;
    // The budget is the call's: from the invite to a connected peer connection. The Matrix
    // steps before it (registration, room join, membership) queue behind the homeserver and are
    // reported in the join time, not counted against the focus.
    wait_connected(&client, plan.timeout).await?;
    Ok((client, started.elapsed(), plan.policy))
}

/// Waits (up to `timeout`) until `client`'s peer connection is connected.
///
/// Errors: the call ended before connecting (with the focus's hangup reason or the client's
/// error), or it did not connect in time.
pub(crate) async fn wait_connected(client: &SimClient, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if client.is_connected() {
            return Ok(());
        }
        if client.is_finished() {
            let report = client.report();
            bail!(
                "{}: call ended before connecting: {}",
                client.user_id(),
                report
                    .hangup_reason
                    .or(report.error)
                    .unwrap_or_else(|| "no reason".into())
            );
        }
        if Instant::now() > deadline {
            bail!("{}: not connected within {timeout:?}", client.user_id());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Who each subscriber watches: `k` video publishers, spread evenly by a seeded shuffle.
pub(crate) fn watch_lists(
    publishers: &[(String, String)],
    subscribers: usize,
    k: usize,
    seed: u64,
) -> Vec<Vec<(String, String)>> {
    let mut order: Vec<usize> = (0..publishers.len()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    order.shuffle(&mut rng);
    (0..subscribers)
        .map(|i| {
            (0..k.min(publishers.len()))
                .map(|j| publishers[order[(i + j) % publishers.len()]].clone())
                .collect()
        })
        .collect()
}

/// Runs the devices of `scenario` against `target` and measures; returns the summary.
pub async fn run(target: Target, scenario: &Scenario, options: &RunOptions) -> Result<Summary> {
    if target.foci.is_empty() {
        bail!("no focus to drive");
    }
    for pid in target.foci.iter().filter_map(|f| f.pid) {
        procstat::check_alive(pid)?;
    }
    let prefix = if options.account_prefix.is_empty() {
        format!("lt{}", scenario.seed)
    } else {
        options.account_prefix.clone()
    };
    let target = Arc::new(target);
    let call = prepare_call(&target, &prefix).await?;
    tracing::info!(room = %call.room_id, conf = %call.conf_id, "conference ready");
    // Further conferences: the same room, each its own conf id and accounts.
    let mut calls = vec![(call, prefix.clone())];
    for k in 1..scenario.conferences.max(1) {
        let conf_prefix = format!("{prefix}c{k}");
        let conf_id = format!("{conf_prefix}-{}", cascade_simclient::random_id(8));
        let owner = account(&target, &format!("{prefix}-owner")).await?;
        signalling::create_conference(&owner, &calls[0].0.room_id, &conf_id).await?;
        let room_id = calls[0].0.room_id.clone();
        calls.push((Call { room_id, conf_id }, conf_prefix));
    }

    let total = scenario.devices() as usize;
    let join_secs = total as f64 / scenario.join_rate.max(0.1);
    // Joins may go slower than the join rate (the homeserver is the limit); each is bounded by
    // its own timeout, and at most MAX_CONCURRENT_JOINS run at once.
    let join_waves = (total / MAX_CONCURRENT_JOINS + 1) as u32;
    let max_duration = Duration::from_secs_f64(join_secs)
        + (options.join_timeout + Duration::from_secs(30)) * join_waves
        + options.warmup
        + scenario.duration
        + Duration::from_secs(60);
    let progress = Progress::new(options.progress, total as u64);
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<JoinOutcome>();
    let drivers: Vec<_> = calls
        .into_iter()
        .map(|(call, prefix)| {
            tokio::spawn(drive_joins(
                target.clone(),
                call,
                scenario.clone(),
                prefix,
                max_duration,
                options.join_timeout,
                tx.clone(),
            ))
        })
        .collect();
    drop(tx);

    let mut joined: Vec<Joined> = Vec::new();
    let mut focus_of = FocusOf::new();
    let http = cascade_signalling::http::client()?;
    let mut failures: Vec<String> = Vec::new();
    let mut join_times: Vec<Duration> = Vec::new();
    let mut series: Vec<Point> = Vec::new();
    let mut last_totals = Totals::default();
    let mut last_focus = focus_sample(&target);
    let mut last_own = (Instant::now(), procstat::own_cpu_seconds());
    let mut joins_done_at: Option<Instant> = None;
    let mut window: Option<(Instant, Totals, Option<ProcSample>, f64)> = None;
    let mut window_end: Option<(Instant, Totals, Option<ProcSample>, f64)> = None;
    let mut foci_start: Vec<FocusMark> = Vec::new();
    let mut foci_end: Vec<FocusMark> = Vec::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hard_deadline = started + max_duration;

    while window_end.is_none() {
        tokio::select! {
            outcome = rx.recv(), if joins_done_at.is_none() => match outcome {
                Some(JoinOutcome { role, focus, result: Ok((client, took, policy)) }) => {
                    join_times.push(took);
                    focus_of.insert((client.user_id().to_owned(), client.device_id().to_owned()), focus);
                    joined.push(Joined { role, client, focus, policy });
                }
                Some(JoinOutcome { result: Err(err), .. }) => {
                    tracing::warn!("join failed: {err:#}");
                    failures.push(format!("{err:#}"));
                }
                None => {
                    joins_done_at = Some(Instant::now());
                    progress.println(&format!(
                        "joins done after {:.1} s: {} ok, {} failed; warming up {:?}",
                        started.elapsed().as_secs_f64(), joined.len(), failures.len(), options.warmup
                    ));
                }
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                let totals = Totals::collect(joined.iter().map(|j| (&j.client, j.focus)), &focus_of);
                let focus = focus_sample(&target);
                let own = (now, procstat::own_cpu_seconds());
                let point = Point::between(
                    now.duration_since(started),
                    joined.len(),
                    failures.len(),
                    (&last_totals, &totals),
                    (last_focus.as_ref(), focus.as_ref()),
                    (last_own, own),
                );
                progress.update(joined.len() as u64, failures.len(), &point, phase(joins_done_at, window.is_some()));
                series.push(point);
                last_totals = totals.clone();
                last_focus = focus;
                last_own = own;
                if let Some(done) = joins_done_at {
                    match &window {
                        None if now.duration_since(done) >= options.warmup => {
                            foci_start = focus_marks(&target, &http).await;
                            window = Some((now, totals, last_focus, own.1));
                        }
                        Some((from, ..)) if now.duration_since(*from) >= scenario.duration => {
                            foci_end = focus_marks(&target, &http).await;
                            window_end = Some((now, totals, last_focus, own.1));
                        }
                        _ => {}
                    }
                }
                if now > hard_deadline {
                    progress.finish();
                    bail!("the run did not finish within {max_duration:?}");
                }
            }
        }
    }
    progress.finish();
    for driver in drivers {
        let _ = driver.await;
    }

    let (Some(start), Some(end)) = (window, window_end) else {
        bail!("no measurement window");
    };
    let expected_watchers = joined.iter().filter(|j| j.watches()).count();
    let silent = joined
        .iter()
        .filter(|j| j.watches())
        .filter(|j| {
            let r = j.client.report();
            r.tracks.iter().map(|t| t.packets).sum::<u64>() == 0
        })
        .count();
    let publishers_sent: u64 = joined
        .iter()
        .filter(|j| j.role != Role::Subscriber)
        .map(|j| {
            let r = j.client.report();
            r.sent_audio_packets + r.sent_video_packets
        })
        .sum();
    let answer_times: Vec<Duration> = joined
        .iter()
        .filter_map(|j| j.client.report().answered_after)
        .collect();
    let (audio_subs, video_subs) = subscriptions(&joined);
    let window_secs = end.0.duration_since(start.0).as_secs_f64();
    let foci = target
        .foci
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let local = |t: &Totals| t.packets_by_focus.get(i).copied().unwrap_or(0);
            let mark = |marks: &[FocusMark]| marks.get(i).cloned().unwrap_or_default();
            FocusFigures::between(
                &f.user,
                f.pid,
                (&mark(&foci_start), &mark(&foci_end)),
                window_secs,
                local(&end.1).saturating_sub(local(&start.1)),
            )
        })
        .collect();
    let mut summary = Summary::build(
        scenario,
        &target.homeserver_url,
        target.foci.first().and_then(|f| f.pid),
        (total, joined.len(), &failures),
        (percentile_ms(&join_times), percentile_ms(&answer_times)),
        (start.0, &start.1, start.2.as_ref(), start.3),
        (end.0, &end.1, end.2.as_ref(), end.3),
        (expected_watchers, silent),
        publishers_sent,
        (audio_subs, video_subs),
        series,
    );
    summary.set_foci(foci);
    summary.set_incomplete_watchers(incomplete_watchers(&joined));

    hang_up_all(joined).await;
    Ok(summary)
}

fn phase(joins_done: Option<Instant>, measuring: bool) -> &'static str {
    match (joins_done, measuring) {
        (None, _) => "joining",
        (Some(_), false) => "warm-up",
        (Some(_), true) => "measuring",
    }
}

/// The foci's CPU time and memory added up, if every focus is a known local process.
fn focus_sample(target: &Target) -> Option<ProcSample> {
    let samples: Vec<Option<ProcSample>> = target
        .foci
        .iter()
        .map(|f| f.pid.and_then(|pid| procstat::sample(pid).ok()))
        .collect();
    procstat::sum(&samples)
}

/// Each focus's CPU sample and metrics now (what could be read).
async fn focus_marks(target: &Target, http: &reqwest::Client) -> Vec<FocusMark> {
    let mut marks = Vec::with_capacity(target.foci.len());
    for focus in &target.foci {
        let metrics: Option<FocusMetrics> = match &focus.metrics_url {
            Some(url) => match metrics::scrape(http, url).await {
                Ok(m) => Some(m),
                Err(err) => {
                    tracing::warn!("reading the metrics of {}: {err:#}", focus.user);
                    None
                }
            },
            None => None,
        };
        marks.push(FocusMark {
            sample: focus.pid.and_then(|pid| procstat::sample(pid).ok()),
            metrics,
        });
    }
    marks
}

/// Audio and video tracks with media, over all watchers.
fn subscriptions(joined: &[Joined]) -> (usize, usize) {
    let mut audio = 0;
    let mut video = 0;
    for j in joined {
        for t in j.client.report().tracks {
            if t.packets == 0 {
                continue;
            }
            match t.kind.as_str() {
                "audio" => audio += 1,
                "video" => video += 1,
                _ => {}
            }
        }
    }
    (audio, video)
}

/// Starts every join, paced at the scenario's join rate: publishers first (their ids make the
/// subscribers' watch lists), then subscribers.
async fn drive_joins(
    target: Arc<Target>,
    call: Call,
    scenario: Scenario,
    prefix: String,
    max_duration: Duration,
    join_timeout: Duration,
    tx: mpsc::UnboundedSender<JoinOutcome>,
) {
    let semaphore = Arc::new(Semaphore::new(MAX_CONCURRENT_JOINS));
    let period = Duration::from_secs_f64(1.0 / scenario.join_rate.max(0.1));
    let mut pace = tokio::time::interval(period);
    let size =
        (scenario.layout.width > 0).then_some((scenario.layout.width, scenario.layout.height));
    let base = JoinPlan {
        target: target.clone(),
        call,
        focus: 0,
        localpart: String::new(),
        role: Role::Subscriber,
        policy: SubscribePolicy::None,
        render_size: size,
        video_bitrate_bps: scenario.video_bitrate_bps,
        simulcast: scenario.simulcast,
        max_duration,
        timeout: join_timeout,
    };
    let publisher_policy = if scenario.publishers_subscribe {
        SubscribePolicy::All
    } else {
        SubscribePolicy::None
    };

    // Publishers, collected so the subscribers can name them.
    let mut publishers = Vec::new();
    type Outcome = (Role, usize, Result<(SimClient, Duration, SubscribePolicy)>);
    let (ptx, mut prx) = mpsc::unbounded_channel::<Outcome>();
    let roles = (0..scenario.video_publishers)
        .map(|i| (Role::VideoPublisher, i))
        .chain((0..scenario.audio_publishers).map(|i| (Role::AudioPublisher, i)));
    // Device `index` of the conference (publishers first, then subscribers) calls focus
    // `index mod foci`.
    let mut started = 0usize;
    for (role, i) in roles {
        pace.tick().await;
        let focus = target.focus_index(started);
        let plan = JoinPlan {
            localpart: format!("{prefix}-{}{i}", role.tag()),
            role,
            focus,
            policy: publisher_policy.clone(),
            ..base.clone()
        };
        let permit = semaphore.clone().acquire_owned().await;
        let ptx = ptx.clone();
        started += 1;
        tokio::spawn(async move {
            let outcome = join_with_timeout(plan).await;
            drop(permit);
            let _ = ptx.send((role, focus, outcome));
        });
    }
    drop(ptx);
    let mut video_ids = Vec::new();
    let mut audio_ids = Vec::new();
    for _ in 0..started {
        let Some((role, focus, outcome)) = prx.recv().await else {
            break;
        };
        if let Ok((client, _, _)) = &outcome {
            let id = (client.user_id().to_owned(), client.device_id().to_owned());
            match role {
                Role::VideoPublisher => video_ids.push(id),
                _ => audio_ids.push(id),
            }
        }
        publishers.push((role, focus, outcome));
    }
    for (role, focus, result) in publishers {
        let _ = tx.send(JoinOutcome {
            role,
            focus,
            result,
        });
    }

    let subscribers = scenario.subscribers as usize;
    let lists = match scenario.layout.videos {
        Some(k) if (k as usize) < video_ids.len() => Some(watch_lists(
            &video_ids,
            subscribers,
            k as usize,
            scenario.seed,
        )),
        _ => None,
    };
    for i in 0..subscribers {
        pace.tick().await;
        let policy = match &lists {
            None => SubscribePolicy::All,
            Some(lists) => {
                let mut watched = lists[i].clone();
                watched.extend(audio_ids.iter().cloned());
                SubscribePolicy::Publishers(watched)
            }
        };
        let focus = target.focus_index(started + i);
        let plan = JoinPlan {
            localpart: format!("{prefix}-s{i}"),
            role: Role::Subscriber,
            focus,
            policy,
            ..base.clone()
        };
        let permit = semaphore.clone().acquire_owned().await;
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = join_with_timeout(plan).await;
            drop(permit);
            let _ = tx.send(JoinOutcome {
                role: Role::Subscriber,
                focus,
                result,
            });
        });
    }
}

async fn join_with_timeout(plan: JoinPlan) -> Result<(SimClient, Duration, SubscribePolicy)> {
    let limit = plan.timeout + Duration::from_secs(30);
    let name = plan.localpart.clone();
    match tokio::time::timeout(limit, join_one(plan)).await {
        Ok(result) => result,
        Err(_) => bail!("{name}: join did not finish within {limit:?}"),
    }
}

/// Hangs every device up, a few at a time, within a bounded time.
async fn hang_up_all(joined: Vec<Joined>) {
    let semaphore = Arc::new(Semaphore::new(MAX_CONCURRENT_JOINS));
    let mut tasks = Vec::new();
    for j in joined {
        let permit = semaphore.clone().acquire_owned().await;
        tasks.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), j.client.hangup()).await;
            drop(permit);
        }));
    }
    let all = async {
        for task in tasks {
            let _ = task.await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), all).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_publishers_follow_the_policy() {
        let id = |n: &str| (format!("@{n}:hs"), "D".to_owned());
        let publishers = vec![id("a"), id("b"), id("c")];
        let received: HashSet<_> = [id("b")].into_iter().collect();
        let all = missing_publishers(&id("a"), &SubscribePolicy::All, &publishers, &received);
        assert_eq!(all, vec![id("c")], "never itself, never what arrived");
        let some = SubscribePolicy::Publishers(vec![id("b")]);
        assert!(missing_publishers(&id("s"), &some, &publishers, &received).is_empty());
        let none = SubscribePolicy::None;
        assert!(missing_publishers(&id("s"), &none, &publishers, &received).is_empty());
    }

    #[test]
    fn watch_lists_spread_evenly() {
        let pubs: Vec<(String, String)> =
            (0..5).map(|i| (format!("@p{i}:hs"), "D".into())).collect();
        let lists = watch_lists(&pubs, 10, 2, 7);
        assert_eq!(lists.len(), 10);
        let mut counts = std::collections::HashMap::new();
        for list in &lists {
            assert_eq!(list.len(), 2);
            assert_ne!(list[0], list[1]);
            for p in list {
                *counts.entry(p.0.clone()).or_insert(0) += 1;
            }
        }
        assert!(counts.values().all(|&n| n == 4), "{counts:?}");
        assert_eq!(lists, watch_lists(&pubs, 10, 2, 7), "seeded");
    }
}
