//! A real browser through the focus: headless Chromium publishes its (fake) camera with three
//! simulcast layers through the focus to a second Chromium page, both signalling through a real
//! Synapse as shared/PROTOCOL.md describes. The pages (`tests/browser/`) report `getStats()`
//! to this test, which asserts that the subscriber decodes frames and that the decoded size
//! follows the render size the subscriber asks for.
//!
//! Needs Debian's `chromium` at `/usr/bin/chromium` (`scripts/prepare.sh` installs it); the test
//! fails without it.

use anyhow::{Result, bail};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use cascade_signalling::MatrixClient;
use cascade_testkit::Conference;
use cascade_testkit::chromium::{self, Browser};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INDEX_HTML: &str = include_str!("browser/index.html");
const APP_JS: &str = include_str!("browser/app.js");

/// From launching the browsers to the first decoded frames.
const FIRST_FRAMES: Duration = Duration::from_secs(60);
/// For decoding to continue, for the publisher's layers to come up, for a layer switch.
const PROGRESS: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

const SMALL: (u32, u32) = (320, 180);
const LARGE: (u32, u32) = (1280, 720);

/// What one page is told and what it last reported.
#[derive(Default)]
struct PageState {
    desired: (u32, u32),
    leave: bool,
    report: Option<Value>,
    reports: u64,
}

/// The pages' control endpoints: `GET /control/{page}` returns the render size the page should
/// ask for, `POST /control/{page}` stores its report.
#[derive(Clone, Default)]
struct Control {
    pages: Arc<Mutex<HashMap<String, PageState>>>,
}

impl Control {
    fn pages(&self) -> std::sync::MutexGuard<'_, HashMap<String, PageState>> {
        self.pages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_desired(&self, page: &str, size: (u32, u32)) {
        self.pages().entry(page.to_owned()).or_default().desired = size;
    }

    fn set_leave(&self, page: &str) {
        self.pages().entry(page.to_owned()).or_default().leave = true;
    }

    fn report(&self, page: &str) -> Option<Value> {
        self.pages().get(page).and_then(|p| p.report.clone())
    }

    /// Every page's last report, for failure output.
    fn dump(&self) -> String {
        let pages = self.pages();
        let mut names: Vec<&String> = pages.keys().collect();
        names.sort();
        let mut out = String::new();
        for name in names {
            let page = &pages[name];
            let report = page
                .report
                .as_ref()
                .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
                .unwrap_or_else(|| "(no report)".to_owned());
            out.push_str(&format!(
                "---- page {name} ({} reports) ----\n{report}\n",
                page.reports
            ));
        }
        out
    }
}

async fn get_control(State(control): State<Control>, UrlPath(page): UrlPath<String>) -> Response {
    let mut pages = control.pages();
    let state = pages.entry(page).or_default();
    let (width, height) = state.desired;
    axum::Json(json!({"width": width, "height": height, "leave": state.leave})).into_response()
}

async fn post_control(
    State(control): State<Control>,
    UrlPath(page): UrlPath<String>,
    axum::Json(report): axum::Json<Value>,
) -> StatusCode {
    let mut pages = control.pages();
    let state = pages.entry(page).or_default();
    state.report = Some(report);
    state.reports += 1;
    StatusCode::NO_CONTENT
}

type Response = axum::response::Response;

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

/// Serves the page and the control endpoints on 127.0.0.1; returns the base URL.
async fn serve(control: Control) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/app.js", get(app_js))
        .route("/control/{page}", get(get_control).post(post_control))
        .with_state(control);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            eprintln!("page server stopped: {err}");
        }
    });
    Ok((base, task))
}

/// The page URL for `matrix` in `conference`, reporting to `control_url`, capturing its
/// camera at 1280x720.
fn page_url(
    base: &str,
    conference: &Conference,
    matrix: &MatrixClient,
    role: &str,
    control_url: &str,
) -> Result<String> {
    page_url_with(base, conference, matrix, role, control_url, "1280x720")
}

/// [`page_url`] with the camera's capture size, `WIDTHxHEIGHT`.
fn page_url_with(
    base: &str,
    conference: &Conference,
    matrix: &MatrixClient,
    role: &str,
    control_url: &str,
    capture: &str,
) -> Result<String> {
    let mut url = url::Url::parse(&format!("{base}/index.html"))?;
    url.query_pairs_mut()
        .append_pair("hs", conference.synapse.url())
        .append_pair("token", matrix.access_token())
        .append_pair("user", matrix.user_id())
        .append_pair("device", matrix.device_id())
        .append_pair("room", &conference.room_id)
        .append_pair("conf", &conference.conf_id)
        .append_pair("focus_user", conference.focus.user_id())
        .append_pair("focus_device", conference.focus.device_id())
        .append_pair("role", role)
        .append_pair("capture", capture)
        .append_pair("control", control_url);
    Ok(url.into())
}

/// The subscriber's decoding of the publisher's video: `(framesDecoded, frameHeight)` summed and
/// maximised over its inbound video streams.
fn decoded(report: &Value) -> Option<(u64, u64)> {
    let inbound = report.get("inbound")?.as_array()?;
    let video: Vec<&Value> = inbound
        .iter()
        .filter(|s| s.get("kind").and_then(Value::as_str) == Some("video"))
        .collect();
    if video.is_empty() {
        return None;
    }
    let frames = video
        .iter()
        .filter_map(|s| s.get("framesDecoded").and_then(Value::as_u64))
        .sum();
    let height = video
        .iter()
        .filter_map(|s| s.get("frameHeight").and_then(Value::as_u64))
        .max()
        .unwrap_or(0);
    Some((frames, height))
}

/// The publisher's simulcast layers that are sending: `(rid, bytesSent, frameHeight)`.
fn sent_layers(report: &Value) -> Vec<(String, u64, u64)> {
    report
        .get("outbound")
        .and_then(Value::as_array)
        .map(|streams| {
            streams
                .iter()
                .filter(|s| s.get("kind").and_then(Value::as_str) == Some("video"))
                .map(|s| {
                    (
                        s.get("rid")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        s.get("bytesSent").and_then(Value::as_u64).unwrap_or(0),
                        s.get("frameHeight").and_then(Value::as_u64).unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `check` until it returns a value, or fails after `timeout` saying what was awaited.
async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the subscriber decodes frames again after `since` frames, at a height that
/// satisfies `height_ok`; returns `(framesDecoded, frameHeight)`.
async fn wait_decoding(
    control: &Control,
    what: &str,
    timeout: Duration,
    since: u64,
    height_ok: impl Fn(u64) -> bool,
) -> Result<(u64, u64)> {
    // Frames decoded at the wanted height, counted from when that height was first seen.
    let mut at_height: Option<u64> = None;
    wait_for(what, timeout, || {
        let (frames, height) = decoded(&control.report("subscriber")?)?;
        if frames <= since || !height_ok(height) {
            at_height = None;
            return None;
        }
        match at_height {
            None => {
                at_height = Some(frames);
                None
            }
            Some(first) if frames > first => Some((frames, height)),
            Some(_) => None,
        }
    })
    .await
}

async fn run(conference: &Conference, control: &Control, base: &str) -> Result<Vec<Browser>> {
    let publisher = conference.device("pub").await?;
    let subscriber = conference.device("sub").await?;
    control.set_desired("publisher", SMALL);
    control.set_desired("subscriber", SMALL);
    let mut browsers = Vec::new();
    for (name, matrix) in [("publisher", &publisher), ("subscriber", &subscriber)] {
        let url = page_url(
            base,
            conference,
            matrix,
            name,
            &format!("{base}/control/{name}"),
        )?;
        browsers.push(Browser::launch(name, &url).await?);
    }
    Ok(browsers)
}

async fn assertions(control: &Control) -> Result<()> {
    // (a) The subscriber decodes the publisher's video, and keeps decoding.
    let (frames, _) = wait_for(
        "the subscriber to decode the publisher's video (framesDecoded > 0)",
        FIRST_FRAMES,
        || decoded(&control.report("subscriber")?).filter(|(frames, _)| *frames > 0),
    )
    .await?;
    let (frames, small_height) = wait_decoding(
        control,
        "framesDecoded to keep increasing",
        PROGRESS,
        frames,
        |height| height > 0,
    )
    .await?;
    eprintln!(
        "subscriber decodes at {}x{}: {frames} frames, height {small_height}",
        SMALL.0, SMALL.1
    );

    // The publisher sends more than one simulcast layer, else there is nothing to switch to.
    let layers = wait_for(
        "the publisher to send at least two simulcast layers (outbound-rtp video with a rid)",
        PROGRESS,
        || {
            let layers = sent_layers(&control.report("publisher")?);
            let sending = layers
                .iter()
                .filter(|(rid, bytes, height)| !rid.is_empty() && *bytes > 0 && *height > 0)
                .count();
            (sending >= 2).then_some(layers)
        },
    )
    .await?;
    eprintln!("publisher layers (rid, bytesSent, frameHeight): {layers:?}");
    let cipher = control
        .report("publisher")
        .and_then(|r| r.pointer("/transport/srtpCipher").cloned());
    eprintln!("SRTP profile Chromium negotiated with the focus: {cipher:?}");
    // The focus prefers AEAD-GCM, which costs it a third of AES-CM per video packet.
    anyhow::ensure!(
        cipher.as_ref().and_then(Value::as_str) == Some("SRTP_AEAD_AES_128_GCM"),
        "Chromium negotiated {cipher:?}, not SRTP_AEAD_AES_128_GCM"
    );

    // (b) Asking for a larger size switches to a larger layer...
    control.set_desired("subscriber", LARGE);
    let (frames, large_height) = wait_decoding(
        control,
        &format!(
            "the decoded height to grow above {small_height} after asking for {}x{}",
            LARGE.0, LARGE.1
        ),
        PROGRESS,
        frames,
        |height| height > small_height,
    )
    .await?;
    eprintln!(
        "subscriber decodes at {}x{}: height {large_height}",
        LARGE.0, LARGE.1
    );

    // ...and asking for the small size again switches back down.
    control.set_desired("subscriber", SMALL);
    let (_, height) = wait_decoding(
        control,
        &format!(
            "the decoded height to drop below {large_height} after asking for {}x{} again",
            SMALL.0, SMALL.1
        ),
        PROGRESS,
        frames,
        |height| height > 0 && height < large_height,
    )
    .await?;
    eprintln!(
        "subscriber decodes at {}x{} again: height {height}",
        SMALL.0, SMALL.1
    );
    Ok(())
}

/// One browser test at a time. Each runs several Chromiums that encode and decode video; two
/// tests at once on a 2-core machine starve them of CPU, their packets queue, and the browsers'
/// delay-based bandwidth estimate then holds a publisher at its lowest simulcast layer.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Checks for Chromium, starts Synapse, the focus and a conference, and serves the pages.
async fn setup() -> Result<(Conference, Control, String, tokio::task::JoinHandle<()>)> {
    chromium::require()?;
    let conference =
        Conference::start(Path::new(env!("CARGO_BIN_EXE_cascade")), "membership").await?;
    let control = Control::default();
    let (base, server) = serve(control.clone()).await?;
    Ok((conference, control, base, server))
}

/// On failure prints every page's report, the browsers' and the focus's logs; then stops the
/// browsers and the page server.
fn finish(
    result: Result<()>,
    conference: &Conference,
    control: &Control,
    browsers: Vec<Browser>,
    server: tokio::task::JoinHandle<()>,
) -> Result<()> {
    // Nothing forwarded twice: a browser's RTX bandwidth probes repeat media packets, which
    // the focus must not forward again (the receivers' SRTP refuses replays).
    let result = result.and_then(|()| {
        for browser in &browsers {
            let refused = browser.refused_rtp();
            if !refused.is_empty() {
                bail!("a page refused RTP packets:\n{}", refused.join("\n"));
            }
        }
        Ok(())
    });
    if result.is_err() {
        eprintln!("{}", control.dump());
        for browser in &browsers {
            eprintln!("{}", browser.log_tail());
        }
        eprintln!("---- focus log ----\n{}", conference.focus.log_tail());
    }
    drop(browsers);
    server.abort();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_receives_simulcast_video_through_the_focus_and_switches_layers() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (conference, control, base, server) = setup().await?;
    let mut browsers = Vec::new();
    let result = async {
        browsers = run(&conference, &control, &base).await?;
        assertions(&control).await
    }
    .await;
    finish(result, &conference, &control, browsers, server)
}

/// A progress counter per inbound stream of `kind` (by SSRC): frames decoded for video, samples
/// that were received rather than concealed for audio.
fn progress(report: &Value, kind: &str) -> HashMap<u64, u64> {
    let Some(inbound) = report.get("inbound").and_then(Value::as_array) else {
        return HashMap::new();
    };
    let field = |s: &Value, name: &str| s.get(name).and_then(Value::as_u64).unwrap_or(0);
    inbound
        .iter()
        .filter(|s| s.get("kind").and_then(Value::as_str) == Some(kind))
        .filter_map(|s| {
            let ssrc = s.get("ssrc").and_then(Value::as_u64)?;
            let value = if kind == "video" {
                field(s, "framesDecoded")
            } else {
                field(s, "totalSamplesReceived").saturating_sub(field(s, "concealedSamples"))
            };
            Some((ssrc, value))
        })
        .collect()
}

/// How many inbound streams of `kind` made progress between two reports.
fn progressing(before: &Value, after: &Value, kind: &str) -> usize {
    let before = progress(before, kind);
    progress(after, kind)
        .iter()
        .filter(|(ssrc, value)| before.get(ssrc).is_some_and(|b| *value > b))
        .count()
}

/// Window over which decoding must go on to count as continuous.
const CONTINUOUS: Duration = Duration::from_secs(3);

/// Waits until every page in `pages` decodes the video of, and hears, `others` other pages
/// continuously: over a window of [`CONTINUOUS`], at least `others` inbound video streams with
/// `framesDecoded` rising and as many audio streams with received samples rising.
async fn wait_all_see_each_other(control: &Control, pages: &[&str], others: usize) -> Result<()> {
    let deadline = Instant::now() + FIRST_FRAMES;
    loop {
        let before: Vec<Option<Value>> = pages.iter().map(|p| control.report(p)).collect();
        tokio::time::sleep(CONTINUOUS).await;
        let mut short = Vec::new();
        for (page, before) in pages.iter().zip(&before) {
            let (Some(before), Some(after)) = (before, control.report(page)) else {
                short.push(format!("{page}: no report"));
                continue;
            };
            let video = progressing(before, &after, "video");
            let audio = progressing(before, &after, "audio");
            if video < others || audio < others {
                short.push(format!(
                    "{page}: {video} video and {audio} audio streams progressing"
                ));
            }
        }
        if short.is_empty() {
            eprintln!(
                "each of {pages:?} decodes {others} others' video and hears their audio over {CONTINUOUS:?}"
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "not every page decodes and hears the {others} others continuously: {}",
                short.join("; ")
            );
        }
    }
}

/// Launches `page` as `matrix`, publishing and subscribing, and waits until it is connected.
async fn join_page(
    conference: &Conference,
    control: &Control,
    base: &str,
    page: &str,
    matrix: &MatrixClient,
) -> Result<Browser> {
    control.set_desired(page, SMALL);
    let url = page_url_with(
        base,
        conference,
        matrix,
        "both",
        &format!("{base}/control/{page}"),
        "960x540",
    )?;
    let browser = Browser::launch(page, &url).await?;
    wait_for(&format!("{page} to connect"), FIRST_FRAMES, || {
        let report = control.report(page)?;
        (report.get("connectionState").and_then(Value::as_str) == Some("connected")).then_some(())
    })
    .await?;
    Ok(browser)
}

/// Whether `page` is offered any stream of `user`.
fn offers_user(control: &Control, page: &str, user: &str) -> bool {
    control
        .report(page)
        .and_then(|r| r.get("available").cloned())
        .and_then(|a| a.as_object().cloned())
        .is_some_and(|streams| {
            streams
                .values()
                .any(|s| s.get("user_id").and_then(Value::as_str) == Some(user))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_chromiums_that_publish_and_subscribe_join_one_by_one_and_one_rejoins() -> Result<()>
{
    let _alone = ONE_AT_A_TIME.lock().await;
    let (conference, control, base, server) = setup().await?;
    let mut browsers = Vec::new();
    let result = async {
        let alice = conference.device("alice").await?;
        let bob = conference.device("bob").await?;
        let carol = conference.device("carol").await?;
        // One after the other: each joins once the one before it is connected and publishing,
        // so every later joiner subscribes to publishers whose streams are long established.
        for (page, matrix) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
            browsers.push(join_page(&conference, &control, &base, page, matrix).await?);
        }
        wait_all_see_each_other(&control, &["alice", "bob", "carol"], 2).await?;
        // Each is told who speaks (the microphones are steady tones; the focus picks the
        // loudest from their audio levels), the one who joined last too.
        let users = [alice.user_id(), bob.user_id(), carol.user_id()];
        for page in ["alice", "bob", "carol"] {
            wait_for(
                &format!("{page} to be told an active speaker"),
                PROGRESS,
                || {
                    control
                        .report(page)
                        .and_then(|r| r["speaker"].as_str().map(str::to_owned))
                        .filter(|speaker| users.contains(&speaker.as_str()))
                },
            )
            .await?;
        }

        // The first one leaves; the others stop being offered its streams.
        control.set_leave("alice");
        wait_for("bob and carol to lose alice's streams", PROGRESS, || {
            (!offers_user(&control, "bob", alice.user_id())
                && !offers_user(&control, "carol", alice.user_id()))
            .then_some(())
        })
        .await?;
        // It comes back with a new session (a new page on the same device).
        browsers.push(join_page(&conference, &control, &base, "alice-again", &alice).await?);
        wait_all_see_each_other(&control, &["alice-again", "bob", "carol"], 2).await?;
        // Browsers' healthy calls trip none of the media path's checks of bad input.
        for reason in ["srtp_refused", "unbound_ssrc", "ssrc_limit"] {
            let series = format!("cascade_dropped_packets_total{{reason=\"{reason}\"}}");
            let value = conference.focus.metric(&series).await?;
            anyhow::ensure!(value == 0.0, "{series} is {value} on healthy calls");
        }
        Ok(())
    }
    .await;
    finish(result, &conference, &control, browsers, server)
}
