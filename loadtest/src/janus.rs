//! The same load against Janus, for a side-by-side figure: Debian's `janus` package with its
//! VideoRoom plugin, configured here on 127.0.0.1, and the same simulated devices
//! ([`cascade_simclient::peer::SimPeer`]) speaking Janus's HTTP API instead of Matrix.
//!
//! A publisher creates a session, attaches the VideoRoom plugin and sends `joinandconfigure`
//! with its offer; Janus's answer comes as an event on the session's long poll. A subscriber
//! joins as `subscriber` naming the feeds it watches (one peer connection for all of them,
//! Janus's multistream subscription); Janus offers, the device answers with `start`. Both trickle
//! their candidate and end-of-candidates. Janus is ICE-lite here, as the focus is.

use crate::procstat::{self, ProcSample};
use crate::stats::Totals;
use anyhow::{Context, Result, bail};
use cascade_protocol::Candidate;
use cascade_simclient::peer::{PeerOptions, SimPeer};
use cascade_simclient::report::Receiving;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The VideoRoom room every device joins.
const ROOM: u64 = 1234;
/// Where Debian's package puts Janus's plugins.
const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu/janus";
/// How long Janus may take to answer its HTTP API after starting.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one request or long poll may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A Janus process started for a run; killed when dropped.
pub struct JanusServer {
    child: Child,
    /// The HTTP API's base URL (`http://127.0.0.1:<port>/janus`).
    pub url: String,
    /// Its process id (for CPU accounting).
    pub pid: u32,
    log: PathBuf,
}

impl Drop for JanusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl JanusServer {
    /// Writes a configuration under `dir` (HTTP on a free 127.0.0.1 port, ICE-lite with
    /// candidates on `ip` only, only the VideoRoom plugin, one room for `publishers` publishers)
    /// and starts `janus`.
    ///
    /// Janus never gathers candidates on a loopback interface, so `ip` must belong to another
    /// one: `scripts/janus-compare.sh` runs the comparison in a network namespace of its own
    /// with a veth pair for that.
    ///
    /// # Errors
    ///
    /// When `janus` cannot be installed (Debian's package, with `apt-get` on first use), or
    /// does not answer within 15 s.
    pub async fn start(dir: &Path, publishers: u32, ip: IpAddr) -> Result<Self> {
        ensure_installed()?;
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let disabled_plugins = [
            "audiobridge",
            "echotest",
            "nosip",
            "recordplay",
            "sip",
            "streaming",
            "textroom",
            "videocall",
            "voicemail",
            "lua",
            "duktape",
        ]
        .map(|p| format!("libjanus_{p}.so"))
        .join(",");
        let disabled_transports = ["websockets", "mqtt", "nanomsg", "pfunix", "rabbitmq"]
            .map(|p| format!("libjanus_{p}.so"))
            .join(",");
        let config = format!(
            "general: {{\n configs_folder = \"{dir}\"\n plugins_folder = \"{LIB_DIR}/plugins\"\n \
             transports_folder = \"{LIB_DIR}/transports\"\n events_folder = \"{LIB_DIR}/events\"\n \
             loggers_folder = \"{LIB_DIR}/loggers\"\n debug_level = 3\n}}\n\
             media: {{\n rtp_port_range = \"40000-60000\"\n}}\n\
             nat: {{\n ice_lite = true\n ice_tcp = false\n full_trickle = false\n \
             ice_enforce_list = \"{ip}\"\n ignore_mdns = true\n}}\n\
             plugins: {{\n disable = \"{disabled_plugins}\"\n}}\n\
             transports: {{\n disable = \"{disabled_transports}\"\n}}\n\
             events: {{\n broadcast = false\n}}\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("janus.jcfg"), config)?;
        std::fs::write(
            dir.join("janus.transport.http.jcfg"),
            format!(
                "general: {{\n json = \"compact\"\n base_path = \"/janus\"\n http = true\n \
                 port = {port}\n ip = \"127.0.0.1\"\n https = false\n}}\nadmin: {{\n admin_http = false\n}}\n"
            ),
        )?;
        std::fs::write(
            dir.join("janus.plugin.videoroom.jcfg"),
            format!(
                "general: {{\n}}\nroom-{ROOM}: {{\n description = \"loadtest\"\n publishers = {}\n \
                 bitrate = 4000000\n fir_freq = 10\n audiocodec = \"opus\"\n videocodec = \"vp8\"\n}}\n",
                publishers.max(1)
            ),
        )?;
        let log = dir.join("janus.log");
        let child = Command::new("janus")
            .arg("-F")
            .arg(dir)
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::null())
            .spawn()
            .context("starting janus")?;
        let server = Self {
            pid: child.id(),
            child,
            url: format!("http://127.0.0.1:{port}/janus"),
            log,
        };
        let http = cascade_signalling::http::client()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let created = http
                .post(&server.url)
                .json(&json!({"janus": "create", "transaction": "probe"}))
                .send()
                .await;
            if created.is_ok_and(|r| r.status().is_success()) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "janus did not answer within {START_TIMEOUT:?}:\n{}",
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of Janus's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Installs Debian's `janus` package with `apt-get` unless `janus` is already there.
fn ensure_installed() -> Result<()> {
    if Path::new("/usr/bin/janus").exists() {
        return Ok(());
    }
    eprintln!("installing janus with apt-get");
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "--no-install-recommends", "janus"][..],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed: {status}", args.join(" "));
        }
    }
    Ok(())
}

/// A session with one VideoRoom handle.
struct Session {
    http: reqwest::Client,
    session_url: String,
    handle_url: String,
    next_transaction: u64,
}

impl Session {
    async fn open(base: &str) -> Result<Self> {
        let http = cascade_signalling::http::client_builder()
            .timeout(REQUEST_TIMEOUT + Duration::from_secs(5))
            .build()?;
        let mut session = Self {
            http,
            session_url: base.to_owned(),
            handle_url: String::new(),
            next_transaction: 0,
        };
        let created = session.post(base, json!({"janus": "create"})).await?;
        let id = data_id(&created).context("session id")?;
        session.session_url = format!("{base}/{id}");
        let url = session.session_url.clone();
        let attached = session
            .post(
                &url,
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await?;
        let handle = data_id(&attached).context("handle id")?;
        session.handle_url = format!("{}/{handle}", session.session_url);
        Ok(session)
    }

    async fn post(&mut self, url: &str, mut body: Value) -> Result<Value> {
        self.next_transaction += 1;
        body["transaction"] = json!(format!("t{}", self.next_transaction));
        let answer: Value = self
            .http
            .post(url)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if answer["janus"] == "error" {
            bail!("janus refused {body}: {answer}");
        }
        Ok(answer)
    }

    /// Sends a VideoRoom request (with a JSEP description) to the handle.
    async fn message(&mut self, request: Value, jsep: Option<Value>) -> Result<()> {
        let mut body = json!({"janus": "message", "body": request});
        if let Some(jsep) = jsep {
            body["jsep"] = jsep;
        }
        let url = self.handle_url.clone();
        self.post(&url, body).await.map(|_| ())
    }

    /// Trickles candidates, then end-of-candidates.
    async fn trickle(&mut self, candidates: &[Candidate]) -> Result<()> {
        let url = self.handle_url.clone();
        for candidate in candidates.iter().filter(|c| !c.candidate.is_empty()) {
            self.post(&url, json!({"janus": "trickle", "candidate": candidate}))
                .await?;
        }
        self.post(
            &url,
            json!({"janus": "trickle", "candidate": {"completed": true}}),
        )
        .await
        .map(|_| ())
    }

    /// The next plugin event carrying a JSEP description (long poll).
    async fn jsep_event(&self) -> Result<(Value, Value)> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let event: Value = self
                .http
                .get(format!("{}?maxev=1", self.session_url))
                .send()
                .await?
                .json()
                .await?;
            let data = &event["plugindata"]["data"];
            if data.get("error").is_some() {
                bail!("janus: {data}");
            }
            if event.get("jsep").is_some() {
                return Ok((data.clone(), event["jsep"].clone()));
            }
            if Instant::now() > deadline {
                bail!("no description from janus within {REQUEST_TIMEOUT:?}");
            }
        }
    }

    /// Keeps the session alive (Janus drops sessions silent for 60 s).
    async fn keepalive(&mut self) -> Result<()> {
        let url = self.session_url.clone();
        self.post(&url, json!({"janus": "keepalive"}))
            .await
            .map(|_| ())
    }
}

/// The candidates Janus put into its description (`a=candidate:` lines), which the stack
/// applies only when they are added one by one.
fn sdp_candidates(sdp: &str) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    let mut index: Option<u16> = None;
    let mut mid = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            index = Some(index.map_or(0, |i| i + 1));
            mid = None;
        } else if let Some(value) = line.strip_prefix("a=mid:") {
            mid = Some(value.to_owned());
        } else if let Some(candidate) = line.strip_prefix("a=")
            && candidate.starts_with("candidate:")
        {
            candidates.push(Candidate {
                candidate: candidate.to_owned(),
                sdp_mid: mid.clone(),
                sdp_mline_index: index,
                ..Default::default()
            });
        }
    }
    candidates
}

/// Adds the candidates of Janus's description `sdp`.
fn add_candidates(peer: &mut SimPeer, sdp: &str) {
    for candidate in sdp_candidates(sdp) {
        if let Err(err) = peer.add_remote_candidate(&candidate) {
            tracing::debug!(%err, candidate = candidate.candidate, "janus candidate refused");
        }
    }
}

fn data_id(answer: &Value) -> Option<u64> {
    answer["data"]["id"].as_u64()
}

/// A simulated device on Janus.
pub struct JanusDevice {
    receiving: Arc<Mutex<Receiving>>,
    task: JoinHandle<()>,
    connected: Arc<AtomicBool>,
}

impl JanusDevice {
    /// Whether its peer connection is connected.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

impl Drop for JanusDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a device's peer connection and keeps its session alive until `end`.
fn drive(mut peer: SimPeer, mut session: Session, end: Instant) -> JanusDevice {
    let receiving = peer.receiving();
    let connected = Arc::new(AtomicBool::new(false));
    let flag = connected.clone();
    let task = tokio::spawn(async move {
        let mut next_keepalive = Instant::now() + Duration::from_secs(25);
        loop {
            peer.process();
            peer.flush().await;
            if peer.is_connected() {
                flag.store(true, Ordering::Relaxed);
            }
            while peer.poll_event().is_some() {}
            let now = Instant::now();
            if now >= end {
                break;
            }
            if now >= next_keepalive {
                next_keepalive = now + Duration::from_secs(25);
                if let Err(err) = session.keepalive().await {
                    tracing::debug!(%err, "janus keepalive failed");
                }
            }
            peer.wait().await;
        }
        peer.close();
        peer.flush().await;
    });
    JanusDevice {
        receiving,
        task,
        connected,
    }
}

/// Joins a publisher (audio, and video at `video_bitrate_bps` if `video`); returns the device
/// and its feed id.
pub async fn publish(
    base: &str,
    ip: IpAddr,
    name: &str,
    video: bool,
    video_bitrate_bps: u32,
    end: Instant,
) -> Result<(JanusDevice, u64)> {
    let mut opts = PeerOptions::new(name, name);
    opts.bind_ip = ip;
    opts.publish_video = video;
    opts.video_bitrate_bps = video_bitrate_bps;
    opts.create_data_channel = false;
    let mut peer = SimPeer::bind(opts).await?;
    let offer = peer.create_offer()?;
    let mut session = Session::open(base).await?;
    session
        .message(
            json!({"request": "joinandconfigure", "room": ROOM, "ptype": "publisher",
                   "display": name, "audio": true, "video": video}),
            Some(json!({"type": "offer", "sdp": offer})),
        )
        .await?;
    session.trickle(&peer.local_candidates()).await?;
    let (data, jsep) = session.jsep_event().await?;
    let feed = data["id"].as_u64().context("publisher id")?;
    let answer = jsep["sdp"].as_str().context("answer sdp")?;
    tracing::debug!(offer, answer, candidates = ?peer.local_candidates(), "janus publisher");
    peer.accept_answer(answer)?;
    add_candidates(&mut peer, answer);
    Ok((drive(peer, session, end), feed))
}

/// Joins a subscriber watching `feeds`.
pub async fn subscribe(
    base: &str,
    ip: IpAddr,
    name: &str,
    feeds: &[u64],
    end: Instant,
) -> Result<JanusDevice> {
    let mut opts = PeerOptions::new(name, name);
    opts.bind_ip = ip;
    opts.publish_audio = false;
    opts.publish_video = false;
    opts.create_data_channel = false;
    let mut peer = SimPeer::bind(opts).await?;
    let mut session = Session::open(base).await?;
    let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
    session
        .message(
            json!({"request": "join", "room": ROOM, "ptype": "subscriber", "streams": streams}),
            None,
        )
        .await?;
    let (_, jsep) = session.jsep_event().await?;
    let offer = jsep["sdp"].as_str().context("offer sdp")?;
    let answer = peer.accept_offer(offer)?;
    add_candidates(&mut peer, offer);
    session
        .message(
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer})),
        )
        .await?;
    session.trickle(&peer.local_candidates()).await?;
    Ok(drive(peer, session, end))
}

/// Totals of what the devices received so far.
pub fn totals(devices: &[JanusDevice]) -> Totals {
    let mut totals = Totals::default();
    for device in devices {
        totals.add_receiving(&device.receiving.lock().unwrap_or_else(|p| p.into_inner()));
    }
    totals
}

/// A CPU sample of the Janus process, if it can be read.
pub fn sample(server: &JanusServer) -> Option<ProcSample> {
    procstat::sample(server.pid).ok()
}

/// What a run against Janus measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JanusSummary {
    /// Devices that connected.
    pub joined: usize,
    /// Devices that did not.
    pub failed: usize,
    /// Packets received per second by all devices in the window.
    pub received_pps: f64,
    /// Packets lost in the window, percent.
    pub loss_pct: f64,
    /// Janus's CPU use in the window, percent of one core.
    pub cpu_pct: f64,
    /// Packets received by the devices per Janus CPU-second.
    pub packets_per_cpu_second: f64,
}

/// Runs `scenario`'s devices against a Janus started here (every subscriber watching every
/// publisher) and measures a window of `scenario.duration` after a `warmup`.
///
/// # Errors
///
/// When Janus cannot be started, or no device connected.
pub async fn run(
    scenario: &crate::preset::Scenario,
    warmup: Duration,
    dir: &Path,
    ip: IpAddr,
) -> Result<JanusSummary> {
    let publishers = scenario.video_publishers + scenario.audio_publishers;
    let server = JanusServer::start(dir, publishers, ip).await?;
    let join_budget = Duration::from_secs(5 + u64::from(scenario.devices()) / 2);
    let end = Instant::now() + join_budget + warmup + scenario.duration + Duration::from_secs(30);
    let mut devices = Vec::new();
    let mut feeds = Vec::new();
    let mut failed = 0;
    let roles = (0..scenario.video_publishers)
        .map(|i| (true, i))
        .chain((0..scenario.audio_publishers).map(|i| (false, i)));
    for (video, i) in roles {
        let name = format!("{}{i}", if video { "v" } else { "a" });
        match publish(
            &server.url,
            ip,
            &name,
            video,
            scenario.video_bitrate_bps,
            end,
        )
        .await
        {
            Ok((device, feed)) => {
                // Janus knows the feed once its media is set up.
                let deadline = Instant::now() + Duration::from_secs(10);
                while !device.is_connected() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                devices.push(device);
                feeds.push(feed);
            }
            Err(err) => {
                tracing::warn!("janus publisher {name}: {err:#}");
                failed += 1;
            }
        }
    }
    // Subscribers join a few at a time.
    let mut joins = tokio::task::JoinSet::new();
    let mut pending = (0..scenario.subscribers).peekable();
    while pending.peek().is_some() || !joins.is_empty() {
        while joins.len() < 8
            && let Some(i) = pending.next()
        {
            let (url, feeds) = (server.url.clone(), feeds.clone());
            joins.spawn(async move { subscribe(&url, ip, &format!("s{i}"), &feeds, end).await });
        }
        match joins.join_next().await {
            Some(Ok(Ok(device))) => devices.push(device),
            Some(Ok(Err(err))) => {
                tracing::warn!("janus subscriber: {err:#}");
                failed += 1;
            }
            Some(Err(err)) => {
                tracing::warn!("janus subscriber task: {err}");
                failed += 1;
            }
            None => break,
        }
    }
    let connect_deadline = Instant::now() + Duration::from_secs(10);
    while devices.iter().any(|d| !d.is_connected()) && Instant::now() < connect_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let joined = devices.iter().filter(|d| d.is_connected()).count();
    failed += devices.len() - joined;
    if joined == 0 {
        bail!("no device connected to janus:\n{}", server.log_tail());
    }
    tokio::time::sleep(warmup).await;
    let (before, cpu_before) = (totals(&devices), sample(&server));
    tokio::time::sleep(scenario.duration).await;
    let (after, cpu_after) = (totals(&devices), sample(&server));
    let (Some(cpu_before), Some(cpu_after)) = (cpu_before, cpu_after) else {
        bail!("cannot read janus's CPU time");
    };
    let wall = cpu_after.at.duration_since(cpu_before.at).as_secs_f64();
    let cpu = cpu_after.cpu_seconds - cpu_before.cpu_seconds;
    let received = after.packets().saturating_sub(before.packets());
    let missing = after.missing.saturating_sub(before.missing);
    Ok(JanusSummary {
        joined,
        failed,
        received_pps: received as f64 / wall.max(f64::EPSILON),
        loss_pct: if received + missing == 0 {
            0.0
        } else {
            missing as f64 * 100.0 / (received + missing) as f64
        },
        cpu_pct: cpu * 100.0 / wall.max(f64::EPSILON),
        packets_per_cpu_second: if cpu > 0.0 {
            received as f64 / cpu
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_taken_from_the_description_with_their_section() {
        let sdp = "v=0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                   a=candidate:1 1 udp 2015363327 10.99.0.1 50583 typ host\r\n\
                   a=end-of-candidates\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
                   a=candidate:2 1 udp 2015363327 10.99.0.1 50584 typ host\r\n";
        let found = sdp_candidates(sdp);
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[0].candidate,
            "candidate:1 1 udp 2015363327 10.99.0.1 50583 typ host"
        );
        assert_eq!(
            (found[0].sdp_mid.as_deref(), found[0].sdp_mline_index),
            (Some("0"), Some(0))
        );
        assert_eq!(
            (found[1].sdp_mid.as_deref(), found[1].sdp_mline_index),
            (Some("1"), Some(1))
        );
    }
}
