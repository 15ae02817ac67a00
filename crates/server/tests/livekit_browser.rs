//! Element Call's client library against the focus (issue 12, test 1): `livekit-client` 2.23
//! (from npm, its UMD bundle served from 127.0.0.1) runs in three headless Chromium pages
//! (`tests/livekit/`) that join one LiveKit room at the focus's LiveKit endpoint one after the
//! other, each publishing its fake camera (simulcast) and microphone. Each page must decode the
//! other two's video and receive their audio; when one mutes its microphone the others see
//! `TrackMuted`; when one leaves the others see it go and go on decoding each other. Each is
//! told who speaks; a page that asks for another's camera at low quality gets the 180-pixel
//! layer, at high quality the 720-pixel one, and nothing while it disables it. Two pages
//! with `livekit-client`'s end-to-end encryption (a shared key) decode each other too: the
//! focus forwards the encrypted payloads untouched. While a publisher's encoder is limited by
//! CPU (simulated), its layers keep their sizes and a subscriber still gets each one. A page
//! whose camera plays a noise video the test writes sends its top layer at the bitrate it
//! configures for it, through the focus (issue 13).
//!
//! Needs Debian's `chromium` (`scripts/prepare.sh`), `node` and `npm`; fails without them.

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use cascade_livekit::token;
use cascade_testkit::chromium::{self, Browser, Launch};
use cascade_testkit::{Conference, npm};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const API_KEY: &str = "cascade-test";
const API_SECRET: &str = "a test secret that is long enough for HS256";
const ROOM: &str = "livekit-browser-room";
const INDEX_HTML: &str = include_str!("livekit/index.html");
const APP_JS: &str = include_str!("livekit/app.js");

/// From launching a page to it decoding everyone already there.
const JOINED: Duration = Duration::from_secs(60);
/// For a change (a mute, a leave) to reach the other pages, and decoding to go on.
const PROGRESS: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(250);

fn page_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/livekit")
}

/// What one page is told and what it last reported.
#[derive(Default)]
struct PageState {
    mute: bool,
    leave: bool,
    /// Data packets to publish, each once: {id, text, reliable, to: [identity…]}.
    send: Vec<Value>,
    /// How it receives each other participant's camera: identity → {quality, enabled}.
    video: serde_json::Map<String, Value>,
    report: Option<Value>,
}

/// The pages' control endpoints: `GET /control/{page}` says what the page should do,
/// `POST /control/{page}` stores its report.
#[derive(Clone)]
struct Control {
    pages: Arc<Mutex<HashMap<String, PageState>>>,
    /// livekit-client's UMD bundle.
    bundle: Arc<String>,
    /// Its end-to-end encryption worker.
    worker: Arc<String>,
}

impl Control {
    fn pages(&self) -> std::sync::MutexGuard<'_, HashMap<String, PageState>> {
        self.pages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn report(&self, page: &str) -> Option<Value> {
        self.pages().get(page).and_then(|p| p.report.clone())
    }

    /// Tells `page` how to receive `other`'s camera: subscribed or not, at `quality` ("low" or
    /// "high"), enabled or not (the page sends UpdateSubscription and UpdateTrackSettings).
    fn receive_video(
        &self,
        page: &str,
        other: &str,
        subscribed: bool,
        quality: &str,
        enabled: bool,
    ) {
        let wanted = json!({"subscribed": subscribed, "quality": quality, "enabled": enabled});
        self.pages()
            .entry(page.into())
            .or_default()
            .video
            .insert(other.into(), wanted);
    }

    fn dump(&self) -> String {
        self.pages()
            .iter()
            .map(|(name, page)| {
                let report = page
                    .report
                    .as_ref()
                    .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
                    .unwrap_or_else(|| "(no report)".into());
                format!("---- page {name} ----\n{report}\n")
            })
            .collect()
    }
}

type Response = axum::response::Response;

async fn get_control(State(control): State<Control>, UrlPath(page): UrlPath<String>) -> Response {
    let mut pages = control.pages();
    let state = pages.entry(page).or_default();
    axum::Json(
        json!({"mute": state.mute, "leave": state.leave, "video": state.video, "send": state.send}),
    )
    .into_response()
}

async fn post_control(
    State(control): State<Control>,
    UrlPath(page): UrlPath<String>,
    axum::Json(report): axum::Json<Value>,
) -> StatusCode {
    control.pages().entry(page).or_default().report = Some(report);
    StatusCode::NO_CONTENT
}

fn javascript(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Serves the page, its script, livekit-client's bundle and the control endpoints on
/// 127.0.0.1; returns the base URL.
async fn serve(control: Control) -> Result<String> {
    let app = Router::new()
        .route(
            "/index.html",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    INDEX_HTML,
                )
                    .into_response()
            }),
        )
        .route("/app.js", get(|| async { javascript(APP_JS.to_owned()) }))
        .route(
            "/livekit-client.umd.js",
            get(|State(control): State<Control>| async move {
                javascript(control.bundle.as_ref().clone())
            }),
        )
        .route(
            "/livekit-client.e2ee.worker.js",
            get(|State(control): State<Control>| async move {
                javascript(control.worker.as_ref().clone())
            }),
        )
        .route("/control/{page}", get(get_control).post(post_control))
        .with_state(control);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            eprintln!("page server stopped: {err}");
        }
    });
    Ok(base)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An access token for `identity` in [`ROOM`].
fn access_token(identity: &str) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(token::sign(
        &token::Claims::join(API_KEY, identity, ROOM, now, 3600),
        API_SECRET,
    )?)
}

/// The height of the video `page` decodes from `other`.
fn frame_height(control: &Control, page: &str, other: &str) -> Option<u64> {
    control.report(page)?["received"][other]["frameHeight"].as_u64()
}

/// What `page` receives from `other`: (video frames decoded, audio packets received).
fn received(control: &Control, page: &str, other: &str) -> Option<(u64, u64)> {
    let report = control.report(page)?;
    let entry = report.get("received")?.get(other)?;
    Some((
        entry.get("framesDecoded")?.as_u64()?,
        entry.get("audioPackets")?.as_u64()?,
    ))
}

/// How many of `page`'s events end with `text`.
fn events(control: &Control, page: &str, text: &str) -> usize {
    control.report(page).map_or(0, |r| {
        r["events"].as_array().map_or(0, |events| {
            events
                .iter()
                .filter(|e| e.as_str().is_some_and(|e| e.ends_with(text)))
                .count()
        })
    })
}

/// Whether `page` has seen an event containing `text`.
fn saw(control: &Control, page: &str, text: &str) -> bool {
    control.report(page).is_some_and(|r| {
        r.get("events")
            .and_then(Value::as_array)
            .is_some_and(|events| {
                events
                    .iter()
                    .any(|e| e.as_str().is_some_and(|e| e.contains(text)))
            })
    })
}

async fn wait_for(what: &str, timeout: Duration, check: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Waits until each of `pages` decodes video from and receives audio of each other one, and
/// then until both go on rising.
async fn wait_all_decode(control: &Control, pages: &[&str], timeout: Duration) -> Result<()> {
    let pairs: Vec<(&str, &str)> = pages
        .iter()
        .flat_map(|a| pages.iter().filter(move |b| *b != a).map(move |b| (*a, *b)))
        .collect();
    for &(page, other) in &pairs {
        wait_for(
            &format!("{page} to decode {other}'s video and receive its audio"),
            timeout,
            || received(control, page, other).is_some_and(|(v, a)| v > 0 && a > 0),
        )
        .await?;
    }
    for &(page, other) in &pairs {
        wait_decoding_goes_on(control, page, other, true).await?;
    }
    Ok(())
}

/// A count Chromium keeps for what a receiver receives (frames decoded, audio packets), which
/// must rise. When the receiver is given a new stream (a new subscription to the same track),
/// its report can still carry the old stream's last count before counting the new stream's
/// from 0 (seen: 623, then 0, 5, 10…), so a rise counts from the lowest value seen; and, as a
/// page reports 0 before a new receiver has stats, the last two reads must both have risen,
/// so that one jump from 0 to an old stream's count is not taken for decoding.
#[derive(Default)]
struct Rising(std::cell::Cell<Option<(u64, u64)>>);

impl Rising {
    /// Whether `count` is more than 10 above the lowest count seen so far (this one included)
    /// and both it and the count read before it rose.
    fn rose(&self, count: u64) -> bool {
        let (lowest, previous) = self.0.get().unwrap_or((count, count));
        let lowest = lowest.min(count);
        self.0.set(Some((lowest, count)));
        count > lowest + 10 && count > previous && previous > lowest
    }
}

/// Waits until `page` decodes more than 10 frames of `other`'s camera (and, with `audio`,
/// receives more than 10 packets of its microphone) from now on.
async fn wait_decoding_goes_on(
    control: &Control,
    page: &str,
    other: &str,
    audio: bool,
) -> Result<()> {
    let (frames, packets) = (Rising::default(), Rising::default());
    let what = if audio {
        format!("{page}'s decoding of {other}'s camera and receiving of its microphone to go on")
    } else {
        format!("{page}'s decoding of {other}'s camera to go on")
    };
    // Both checked on every report, so that each has its lowest value from the start.
    wait_for(&what, PROGRESS, || {
        received(control, page, other).is_some_and(|(v, a)| {
            let video = frames.rose(v);
            let microphone = packets.rose(a);
            video && (microphone || !audio)
        })
    })
    .await
}

/// How a page joins.
#[derive(Clone, Copy, Default)]
struct PageOptions<'a> {
    /// End-to-end encryption under this shared passphrase.
    e2ee: Option<&'a str>,
    /// livekit-client's dynacast on.
    dynacast: bool,
    /// This camera, playing this Y4M file (written by [`Camera::write_noise`]), instead of
    /// Chromium's test pattern with livekit-client's default layers.
    camera: Option<(&'a Camera, &'a Path)>,
    /// Chromium's WebRTC acts as if the machine's CPU could not keep up with encoding
    /// ([`Launch::cpu_overuse`]).
    cpu_overuse: bool,
}

/// A page's camera: its size and frame rate, and the simulcast layers livekit-client
/// publishes it with (`q`, `h` and `f`: a third, two thirds and all of its height).
struct Camera {
    width: usize,
    height: usize,
    fps: usize,
    /// The `q`, `h` and `f` layers' maxBitrate (bit/s).
    bitrates: [u64; 3],
}

/// How far a noise video's luma strays from mid-grey, either way.
const NOISE: u32 = 40;

impl Camera {
    /// Writes `frames` frames of this size and rate in Y4M (4:2:0) to `path`: each frame's
    /// luma is new random noise around mid-grey, its chroma grey, so that no frame predicts
    /// another and the encoder cannot make do with less than it is given.
    fn write_noise(&self, path: &Path, frames: usize) -> Result<()> {
        use rand::{RngCore, SeedableRng};
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(
            file,
            "YUV4MPEG2 W{} H{} F{}:1 Ip A1:1 C420jpeg",
            self.width, self.height, self.fps
        )?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut luma = vec![0u8; self.width * self.height];
        let chroma = vec![128u8; self.width.div_ceil(2) * self.height.div_ceil(2) * 2];
        for _ in 0..frames {
            rng.fill_bytes(&mut luma);
            for byte in &mut luma {
                // 128 - NOISE ..= 128 + NOISE, evenly.
                *byte = (128 - NOISE + u32::from(*byte) * (2 * NOISE + 1) / 256) as u8;
            }
            file.write_all(b"FRAME\n")?;
            file.write_all(&luma)?;
            file.write_all(&chroma)?;
        }
        file.flush()?;
        Ok(())
    }

    /// What the page is told in its `camera` query parameter.
    fn page_parameter(&self) -> String {
        json!({
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "bitrates": self.bitrates,
        })
        .to_string()
    }
}

/// The focus with its LiveKit endpoint, the page server, and the browsers launched.
struct Call {
    conference: Conference,
    control: Control,
    base: String,
    url: String,
    browsers: Vec<Browser>,
}

/// Tests run one at a time: each starts a homeserver, the focus and three browsers.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Call {
    async fn start() -> Result<Self> {
        chromium::require()?;
        npm::require("node").await?;
        let dir = page_dir();
        npm::install(&dir, &["livekit-client"]).await?;
        let read = |file: &str| {
            std::fs::read_to_string(dir.join("node_modules/livekit-client/dist").join(file))
                .with_context(|| format!("reading livekit-client's {file}"))
        };
        let control = Control {
            pages: Arc::default(),
            bundle: Arc::new(read("livekit-client.umd.js")?),
            worker: Arc::new(read("livekit-client.e2ee.worker.js")?),
        };
        let port = free_port()?;
        let mut conference =
            Conference::start(Path::new(env!("CARGO_BIN_EXE_cascade")), "membership").await?;
        let url = format!("ws://127.0.0.1:{port}");
        for (key, value) in [
            ("CASCADE_LIVEKIT__ENABLED", "true".to_owned()),
            ("CASCADE_LIVEKIT__LISTEN", format!("127.0.0.1:{port}")),
            ("CASCADE_LIVEKIT__URL", url.clone()),
            ("CASCADE_LIVEKIT__API_KEY", API_KEY.to_owned()),
            ("CASCADE_LIVEKIT__API_SECRET", API_SECRET.to_owned()),
        ] {
            conference.focus.set_env(key, Some(&value));
        }
        conference.focus.restart().await?;
        let base = serve(control.clone()).await?;
        Ok(Self {
            conference,
            control,
            base,
            url,
            browsers: Vec::new(),
        })
    }

    /// Opens the page of `name` (its identity) with [`PageOptions`]' defaults.
    async fn join(&mut self, name: &str) -> Result<()> {
        self.join_with(name, PageOptions::default()).await
    }

    /// Opens the pages of `names` one after the other, as `options` say, and waits until each
    /// decodes and hears every other.
    async fn join_all(&mut self, names: &[&str], options: PageOptions<'_>) -> Result<()> {
        for name in names {
            self.join_with(name, options).await?;
        }
        wait_all_decode(&self.control, names, JOINED).await
    }

    /// Opens the page of `name` (its identity) as `options` say.
    async fn join_with(&mut self, name: &str, options: PageOptions<'_>) -> Result<()> {
        let PageOptions {
            e2ee,
            dynacast,
            camera,
            cpu_overuse,
        } = options;
        let mut page = url::Url::parse(&format!("{}/index.html", self.base))?;
        page.query_pairs_mut()
            .append_pair("url", &self.url)
            .append_pair("token", &access_token(name)?)
            .append_pair("control", &format!("{}/control/{name}", self.base));
        if let Some(passphrase) = e2ee {
            page.query_pairs_mut().append_pair("e2ee", passphrase);
        }
        if dynacast {
            page.query_pairs_mut().append_pair("dynacast", "true");
        }
        if let Some((camera, _)) = camera {
            page.query_pairs_mut()
                .append_pair("camera", &camera.page_parameter());
        }
        let launch = Launch {
            video: camera.map(|(_, video)| video),
            cpu_overuse,
        };
        let browser = Browser::launch_with(name, page.as_str(), launch).await?;
        self.browsers.push(browser);
        Ok(())
    }

    /// `result`, unless a page's WebRTC refused a forwarded RTP packet (the focus sent it
    /// twice, or changed it): a browser's RTX bandwidth probes repeat media packets, which the
    /// focus must not forward again. On failure prints the pages' reports and the logs.
    fn finish(self, result: Result<()>) -> Result<()> {
        let result = result.and_then(|()| {
            for browser in &self.browsers {
                let refused = browser.refused_rtp();
                if !refused.is_empty() {
                    bail!("a page refused RTP packets:\n{}", refused.join("\n"));
                }
            }
            Ok(())
        });
        if result.is_err() {
            eprintln!("{}", self.control.dump());
            for browser in &self.browsers {
                eprintln!("{}", browser.log_tail());
            }
            eprintln!("---- focus log ----\n{}", self.conference.focus.log_tail());
        }
        result
    }
}

async fn join_mute_leave(call: &mut Call) -> Result<()> {
    let control = call.control.clone();
    let control = &control;
    let names = ["alice", "bob", "carol"];
    // One by one: each joins a room where the others already publish.
    for (joined, name) in names.iter().enumerate() {
        call.join(name).await?;
        wait_all_decode(control, &names[..=joined], JOINED).await?;
    }
    // Each is told who speaks (the microphones are steady tones; the focus picks the
    // loudest), the one who joined last too.
    for page in names {
        wait_for(
            &format!("{page} to be told an active speaker"),
            PROGRESS,
            || {
                control.report(page).is_some_and(|r| {
                    r["speakers"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| names.iter().any(|n| s == *n)))
                })
            },
        )
        .await?;
    }
    // Bob asks for alice's camera at low quality, then high: the focus switches layers (the
    // 720p capture's simulcast layers are 180, 360 and 720 pixels tall).
    let bob_receives_alice = |subscribed: bool, quality: &str, enabled: bool| {
        control.receive_video("bob", "alice", subscribed, quality, enabled);
    };
    let set_video = |quality: &str, enabled: bool| bob_receives_alice(true, quality, enabled);
    set_video("low", true);
    wait_for("bob to decode alice at 180 pixels", PROGRESS, || {
        frame_height(control, "bob", "alice") == Some(180)
    })
    .await?;
    set_video("high", true);
    wait_for("bob to decode alice at 720 pixels", PROGRESS, || {
        frame_height(control, "bob", "alice") == Some(720)
    })
    .await?;
    // Bob disables alice's camera: the focus stops forwarding it (its packets are dropped as
    // paused), and forwards it again once enabled.
    let paused = "cascade_dropped_packets_total{reason=\"paused\"}";
    let before = call.conference.focus.metric(paused).await?;
    set_video("high", false);
    let deadline = Instant::now() + PROGRESS;
    while call.conference.focus.metric(paused).await? < before + 30.0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "alice's camera was not paused for bob"
        );
        tokio::time::sleep(POLL).await;
    }
    set_video("high", true);
    wait_decoding_goes_on(control, "bob", "alice", false).await?;
    // Bob unsubscribes from alice's camera: the focus takes the track out of his connection;
    // he subscribes again and decodes it again.
    bob_receives_alice(false, "high", true);
    wait_for(
        "bob's subscription to alice's camera to end",
        PROGRESS,
        || saw(control, "bob", "unsubscribed alice video"),
    )
    .await?;
    set_video("high", true);
    wait_for("bob to receive alice's camera again", PROGRESS, || {
        events(control, "bob", "subscribed alice video") >= 2
    })
    .await?;
    wait_decoding_goes_on(control, "bob", "alice", false).await?;
    data_packets(call).await?;
    // Alice mutes her microphone: the others are told.
    control.pages().entry("alice".into()).or_default().mute = true;
    for page in ["bob", "carol"] {
        wait_for(
            &format!("{page} to see alice's audio muted"),
            PROGRESS,
            || saw(control, page, "muted alice audio"),
        )
        .await?;
    }
    // Carol leaves: the others see her go, and go on decoding each other.
    control.pages().entry("carol".into()).or_default().leave = true;
    for page in ["alice", "bob"] {
        wait_for(&format!("{page} to see carol leave"), PROGRESS, || {
            saw(control, page, "disconnected carol") && received(control, page, "carol").is_none()
        })
        .await?;
    }
    wait_decoding_goes_on(control, "bob", "alice", false).await?;
    wait_decoding_goes_on(control, "alice", "bob", false).await?;
    let joined = call
        .conference
        .focus
        .metric("cascade_livekit_signal_total{event=\"joined\"}")
        .await?;
    anyhow::ensure!(joined == 3.0, "{joined} LiveKit sessions joined, not 3");
    Ok(())
}

/// Data packets between the three pages: to everyone, to one by identity (the other never
/// gets it), on the lossy channel; each arrives from its sender, on the channel it was sent.
async fn data_packets(call: &Call) -> Result<()> {
    let control = &call.control;
    let send = |page: &str, id: &str, text: &str, reliable: bool, to: &[&str]| {
        let message = json!({"id": id, "text": text, "reliable": reliable, "to": to});
        control
            .pages()
            .entry(page.into())
            .or_default()
            .send
            .push(message);
    };
    send("alice", "1", "hello everyone", true, &[]);
    for page in ["bob", "carol"] {
        wait_for(
            &format!("{page} to get alice's data packet"),
            PROGRESS,
            || saw(control, page, "data alice test reliable hello everyone"),
        )
        .await?;
    }
    // To bob alone, then to everyone on the same ordered channel: when carol has the second,
    // the first would have come before it.
    send("alice", "2", "for bob", true, &["bob"]);
    send("alice", "3", "after", true, &[]);
    wait_for("bob to get alice's packet for him", PROGRESS, || {
        saw(control, "bob", "data alice test reliable for bob")
    })
    .await?;
    wait_for("carol to get alice's packet after it", PROGRESS, || {
        saw(control, "carol", "data alice test reliable after")
    })
    .await?;
    anyhow::ensure!(
        !saw(control, "carol", "for bob"),
        "carol got a packet addressed to bob alone"
    );
    anyhow::ensure!(
        !saw(control, "alice", "data alice"),
        "alice got her own packet back"
    );
    // The lossy channel: three sends on loopback, of which at least one must arrive (a lossy
    // channel may drop, never reorder into the reliable one).
    for id in ["4", "5", "6"] {
        send("bob", id, "lossy hi", false, &[]);
    }
    wait_for("alice to get bob's lossy packet", PROGRESS, || {
        saw(control, "alice", "data bob test lossy lossy hi")
    })
    .await?;
    let relayed = call
        .conference
        .focus
        .metric("cascade_livekit_signal_total{event=\"data_relayed\"}")
        .await?;
    anyhow::ensure!(
        relayed >= 4.0,
        "{relayed} data packets relayed, not at least 4"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_livekit_clients_in_chromium_publish_and_receive_through_the_focus() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut call = Call::start().await?;
    let result = join_mute_leave(&mut call).await;
    call.finish(result)
}

/// Alice's camera layers while her encoder is limited by CPU (simulated: the test must not
/// depend on how loaded the machine is): each keeps its size (the page publishes with
/// `maintain-resolution`, and Chromium drops frames instead), so bob, asking for her camera at
/// low and then high quality, still gets the 180-pixel and then the 720-pixel layer.
async fn short_of_cpu_call(call: &mut Call) -> Result<()> {
    let control = call.control.clone();
    let control = &control;
    let options = PageOptions {
        cpu_overuse: true,
        ..PageOptions::default()
    };
    call.join_all(&["alice", "bob"], options).await?;
    let limited = |rid: &str| {
        control
            .report("alice")
            .is_some_and(|r| r["sending"][rid]["limitation"] == json!("cpu"))
    };
    wait_for("alice's encoder to be limited by CPU", PROGRESS, || {
        ["q", "h", "f"].into_iter().all(limited)
    })
    .await?;
    // What keeps the sizes: livekit-client sets the preference without waiting for it, and
    // only logs a warning if Chromium refuses it.
    let preference = |rid: &str| {
        control
            .report("alice")
            .map(|r| r["sending"][rid]["degradation"].clone())
    };
    for rid in ["q", "h", "f"] {
        anyhow::ensure!(
            preference(rid) == Some(json!("maintain-resolution")),
            "alice's layer {rid} is sent with degradationPreference {:?}, not maintain-resolution",
            preference(rid)
        );
    }
    for (quality, lines) in [("low", 180), ("high", 720)] {
        control.receive_video("bob", "alice", true, quality, true);
        wait_for(
            &format!("bob to decode alice at {lines} pixels while her CPU is short"),
            PROGRESS,
            || frame_height(control, "bob", "alice") == Some(lines) && limited("f"),
        )
        .await?;
    }
    wait_decoding_goes_on(control, "bob", "alice", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_short_of_cpu_keeps_its_layer_sizes_and_subscribers_switch_between_them()
-> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut call = Call::start().await?;
    let result = short_of_cpu_call(&mut call).await;
    call.finish(result)
}

/// Whether `page` has end-to-end encryption on and every track it receives from `other` is
/// marked encrypted.
fn encrypted(control: &Control, page: &str, other: &str) -> bool {
    control.report(page).is_some_and(|report| {
        let tracks = report["received"][other]["tracks"].as_array().cloned();
        report["e2ee"] == json!(true)
            && tracks.is_some_and(|tracks| {
                !tracks.is_empty() && tracks.iter().all(|t| t["encrypted"] == json!(true))
            })
    })
}

async fn encrypted_call(call: &mut Call) -> Result<()> {
    let control = call.control.clone();
    let options = PageOptions {
        e2ee: Some("a passphrase only the pages know"),
        ..PageOptions::default()
    };
    call.join_all(&["alice", "bob"], options).await?;
    for (page, other) in [("alice", "bob"), ("bob", "alice")] {
        anyhow::ensure!(
            encrypted(&control, page, other),
            "{page} does not receive {other}'s tracks end-to-end encrypted"
        );
        anyhow::ensure!(
            !saw(&control, page, "encryption error"),
            "{page} could not decrypt something"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_clients_with_end_to_end_encryption_decode_each_other() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut call = Call::start().await?;
    let result = encrypted_call(&mut call).await;
    call.finish(result)
}

/// Frames `page`'s camera has encoded so far in its simulcast layer `rid`.
fn encoded(control: &Control, page: &str, rid: &str) -> Option<u64> {
    control.report(page)?["sending"][rid]["frames"].as_u64()
}

/// Waits until `page`'s camera layer `rid` encodes (`on`) or stops encoding (`!on`): its
/// frame count rises by more than 10, or stays put over four reports (2 s).
async fn wait_encoding(control: &Control, page: &str, rid: &str, on: bool) -> Result<()> {
    let what = format!(
        "{page}'s layer {rid} to {}",
        if on { "encode" } else { "stop" }
    );
    let deadline = Instant::now() + PROGRESS;
    let mut last: Option<(u64, Instant)> = None;
    loop {
        let now = Instant::now();
        anyhow::ensure!(now < deadline, "{what}: not within {PROGRESS:?}");
        if let Some(frames) = encoded(control, page, rid) {
            match last {
                Some((before, _)) if on && frames > before + 10 => return Ok(()),
                Some((before, since)) if !on && frames == before => {
                    if now.duration_since(since) >= Duration::from_secs(2) {
                        return Ok(());
                    }
                }
                Some((before, _)) if on && frames >= before => {}
                _ => last = Some((frames, now)),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn dynacast_call(call: &mut Call) -> Result<()> {
    let control = call.control.clone();
    let control = &control;
    let options = PageOptions {
        dynacast: true,
        ..PageOptions::default()
    };
    call.join_all(&["alice", "bob"], options).await?;
    let bob_receives_alice =
        |quality: &str| control.receive_video("bob", "alice", true, quality, true);
    // Alice encodes all three layers while bob takes the best.
    for rid in ["q", "h", "f"] {
        wait_encoding(control, "alice", rid, true).await?;
    }
    // Bob, alice's only subscriber, takes her low layer: the focus tells her (dynacast) that
    // nobody wants h or f, and her browser stops encoding them (while her reports go on:
    // q's count keeps rising).
    bob_receives_alice("low");
    wait_for("bob to decode alice at 180 pixels", PROGRESS, || {
        frame_height(control, "bob", "alice") == Some(180)
    })
    .await?;
    for rid in ["h", "f"] {
        wait_encoding(control, "alice", rid, false).await?;
    }
    wait_encoding(control, "alice", "q", true).await?;
    // Bob asks for the high layer: alice encodes h and f again and bob gets f.
    bob_receives_alice("high");
    for rid in ["h", "f"] {
        wait_encoding(control, "alice", rid, true).await?;
    }
    wait_for("bob to decode alice at 720 pixels again", PROGRESS, || {
        frame_height(control, "bob", "alice") == Some(720)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynacast_publisher_stops_encoding_layers_nobody_receives_and_resumes_when_asked()
-> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut call = Call::start().await?;
    let result = dynacast_call(&mut call).await;
    call.finish(result)
}

/// Alice's camera in the ramp test: noise at 960x540 (the smallest 16:9 size livekit-client
/// publishes three layers of), 15 frames a second, as 180, 360 and 540 lines at 150, 400 and
/// 1,200 kbit/s.
const RAMP_CAMERA: Camera = Camera {
    width: 960,
    height: 540,
    fps: 15,
    bitrates: [150_000, 400_000, 1_200_000],
};
/// The bitrate alice's page configures for her camera's `f` layer (bit/s).
const F_BITRATE: u64 = RAMP_CAMERA.bitrates[2];
/// Issue 13, test 3: the share of it the publisher must send of the layer, and how soon.
const F_SHARE: f64 = 0.8;
const F_WITHIN: Duration = Duration::from_secs(20);
/// The window a sending rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// `page`'s camera layer `rid` as its last report gave it.
struct Sent {
    /// Bytes sent and keyframes encoded so far.
    bytes: u64,
    keyframes: u64,
    /// When the browser counted them (its stats' timestamp, ms).
    at: f64,
    /// The encoder's target bitrate and the layer's configured maxBitrate (bit/s).
    target: u64,
    max_bitrate: u64,
    height: u64,
    /// Why the encoder holds back quality (`qualityLimitationReason`).
    limitation: String,
}

/// What `page` last reported of its camera layer `rid`.
fn sent(control: &Control, page: &str, rid: &str) -> Option<Sent> {
    let layer = control.report(page)?["sending"][rid].clone();
    Some(Sent {
        bytes: layer["bytes"].as_u64()?,
        keyframes: layer["keyframes"].as_u64().unwrap_or(0),
        at: layer["at"].as_f64()?,
        target: layer["target"].as_u64().unwrap_or(0),
        max_bitrate: layer["maxBitrate"].as_u64().unwrap_or(0),
        height: layer["height"].as_u64().unwrap_or(0),
        limitation: layer["limitation"].as_str().unwrap_or("").to_owned(),
    })
}

async fn publisher_ramp(call: &mut Call) -> Result<()> {
    let control = call.control.clone();
    let control = &control;
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("noise.y4m");
    // Two seconds, looped.
    RAMP_CAMERA.write_noise(&video, 2 * RAMP_CAMERA.fps)?;
    call.join_with(
        "alice",
        PageOptions {
            camera: Some((&RAMP_CAMERA, &video)),
            ..PageOptions::default()
        },
    )
    .await?;
    call.join("bob").await?;
    // Alice's camera starts sending (its `q` first): from then on her browser has 20 s to
    // send `f` at 80 % of its configured bitrate. What it may send is its congestion
    // controller's estimate of the path through the focus, which the focus's transport-cc
    // feedback drives; noise leaves the encoder no picture it could send with less. The time
    // is the browser's (its stats' timestamps), from the first report that showed media sent.
    let first_media = std::cell::Cell::new(None);
    wait_for("alice's camera to send", JOINED, || {
        let at = ["q", "h", "f"]
            .iter()
            .filter_map(|rid| sent(control, "alice", rid))
            .find(|layer| layer.bytes > 0)
            .map(|layer| layer.at);
        first_media.set(at);
        at.is_some()
    })
    .await?;
    let started = Instant::now();
    let first_media = first_media.get().unwrap_or_default();
    // (stats timestamp in ms, bytes sent, keyframes encoded) of each report of f.
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let mut best = 0.0f64;
    let mut cpu_limited = 0;
    loop {
        if let Some(layer) = sent(control, "alice", "f")
            && samples.last().is_none_or(|&(at, ..)| at != layer.at)
        {
            anyhow::ensure!(
                layer.max_bitrate == F_BITRATE,
                "alice's f layer is configured at {} bit/s, not {F_BITRATE}",
                layer.max_bitrate
            );
            let since = (layer.at - first_media) / 1e3;
            samples.push((layer.at, layer.bytes, layer.keyframes));
            // Over the last RATE_WINDOW (or a little more) of the browser's own clock: (the
            // rate, whether the layer encoded a keyframe in the window, when it began).
            let window = samples
                .iter()
                .rev()
                .find(|(at, ..)| layer.at - at >= RATE_WINDOW.as_secs_f64() * 1e3)
                .map(|&(then, before, keyframes)| {
                    (
                        layer.bytes.saturating_sub(before) as f64 * 8e3 / (layer.at - then),
                        keyframes != layer.keyframes,
                        (then - first_media) / 1e3,
                    )
                });
            // A keyframe of noise is a burst (tens of kilobytes) that the encoder pays back
            // over the frames after it: only a window without one says what the layer sends.
            let rate =
                window.and_then(|(rate, keyframe, from)| (!keyframe).then_some((rate, from)));
            best = best.max(rate.map_or(0.0, |(rate, _)| rate));
            cpu_limited += usize::from(layer.limitation == "cpu");
            println!(
                "{since:5.1} s: f's target {} kbit/s, sending {}, {} lines, limited by {:?}",
                layer.target / 1000,
                match window {
                    None => "? kbit/s".to_owned(),
                    Some((rate, false, _)) => format!("{:.0} kbit/s", rate / 1e3),
                    Some((rate, true, _)) => format!("{:.0} kbit/s with a keyframe", rate / 1e3),
                },
                layer.height,
                layer.limitation,
            );
            if let Some((rate, from)) = rate
                && rate >= F_SHARE * F_BITRATE as f64
            {
                anyhow::ensure!(
                    since <= F_WITHIN.as_secs_f64(),
                    "alice's f layer sent {:.0} % of its bitrate only after {since:.1} s",
                    rate / F_BITRATE as f64 * 100.0
                );
                println!(
                    "alice's f sent {:.0} kbit/s, {:.0} % of {} kbit/s, from {from:.1} s to {since:.1} s (limited by cpu in {cpu_limited} of {} reports)",
                    rate / 1e3,
                    rate / F_BITRATE as f64 * 100.0,
                    F_BITRATE / 1000,
                    samples.len()
                );
                break;
            }
        }
        anyhow::ensure!(
            started.elapsed() < F_WITHIN,
            "alice's f layer did not send {:.0} % of {} kbit/s within {F_WITHIN:?} (best {:.0} kbit/s without a keyframe; limited by cpu in {cpu_limited} of {} reports)",
            F_SHARE * 100.0,
            F_BITRATE / 1000,
            best / 1e3,
            samples.len()
        );
        tokio::time::sleep(POLL).await;
    }
    // Bob receives her f meanwhile: what she sends goes through the focus.
    let lines = RAMP_CAMERA.height as u64;
    wait_for(
        &format!("bob to decode alice at {lines} lines"),
        PROGRESS,
        || frame_height(control, "bob", "alice") == Some(lines),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chromium_publisher_reaches_its_full_f_bitrate_through_the_focus() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut call = Call::start().await?;
    let result = publisher_ramp(&mut call).await;
    call.finish(result)
}
