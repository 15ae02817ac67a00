//! Element Call's client library against the focus (issue 12, test 1): `livekit-client` 2.23
//! (from npm, its UMD bundle served from 127.0.0.1) runs in three headless Chromium pages
//! (`tests/livekit/`) that join one LiveKit room at the focus's LiveKit endpoint one after the
//! other, each publishing its fake camera (simulcast) and microphone. Each page must decode the
//! other two's video and receive their audio; when one mutes its microphone the others see
//! `TrackMuted`; when one leaves the others see it go and go on decoding each other.
//!
//! Needs Debian's `chromium` (`scripts/prepare.sh`), `node` and `npm`; fails without them.

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use cascade_livekit::token;
use cascade_testkit::chromium::{self, Browser};
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
    report: Option<Value>,
}

/// The pages' control endpoints: `GET /control/{page}` says what the page should do,
/// `POST /control/{page}` stores its report.
#[derive(Clone)]
struct Control {
    pages: Arc<Mutex<HashMap<String, PageState>>>,
    bundle: Arc<String>,
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
    axum::Json(json!({"mute": state.mute, "leave": state.leave})).into_response()
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

/// What `page` receives from `other`: (video frames decoded, audio packets received).
fn received(control: &Control, page: &str, other: &str) -> Option<(u64, u64)> {
    let report = control.report(page)?;
    let entry = report.get("received")?.get(other)?;
    Some((
        entry.get("framesDecoded")?.as_u64()?,
        entry.get("audioPackets")?.as_u64()?,
    ))
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
    let before: Vec<(u64, u64)> = pairs
        .iter()
        .map(|(p, o)| received(control, p, o).unwrap_or_default())
        .collect();
    for (&(page, other), &(video, audio)) in pairs.iter().zip(&before) {
        wait_for(
            &format!(
                "{page}'s decoding of {other} to go on (from {video} frames, {audio} audio packets)"
            ),
            PROGRESS,
            || {
                received(control, page, other)
                    .is_some_and(|(v, a)| v > video + 10 && a > audio + 10)
            },
        )
        .await?;
    }
    Ok(())
}

async fn scenario(
    control: &Control,
    base: &str,
    url: &str,
    browsers: &mut Vec<Browser>,
) -> Result<()> {
    let names = ["alice", "bob", "carol"];
    // One by one: each joins a room where the others already publish.
    for (joined, name) in names.iter().enumerate() {
        let mut page = url::Url::parse(&format!("{base}/index.html"))?;
        page.query_pairs_mut()
            .append_pair("url", url)
            .append_pair("token", &access_token(name)?)
            .append_pair("control", &format!("{base}/control/{name}"));
        browsers.push(Browser::launch(name, page.as_str()).await?);
        wait_all_decode(control, &names[..=joined], JOINED).await?;
    }
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
    let (alice_video, _) = received(control, "bob", "alice").unwrap_or_default();
    let (bob_video, _) = received(control, "alice", "bob").unwrap_or_default();
    wait_for(
        "alice and bob to go on decoding each other",
        PROGRESS,
        || {
            received(control, "bob", "alice").is_some_and(|(v, _)| v > alice_video + 10)
                && received(control, "alice", "bob").is_some_and(|(v, _)| v > bob_video + 10)
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_livekit_clients_in_chromium_publish_and_receive_through_the_focus() -> Result<()> {
    chromium::require()?;
    npm::require("node").await?;
    let dir = page_dir();
    npm::install(&dir, &["livekit-client"]).await?;
    let bundle =
        std::fs::read_to_string(dir.join("node_modules/livekit-client/dist/livekit-client.umd.js"))
            .context("reading livekit-client's UMD bundle")?;

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

    let control = Control {
        pages: Arc::default(),
        bundle: Arc::new(bundle),
    };
    let base = serve(control.clone()).await?;
    let mut browsers = Vec::new();
    let result = async {
        scenario(&control, &base, &url, &mut browsers).await?;
        let joined = conference
            .focus
            .metric("cascade_livekit_signal_total{event=\"joined\"}")
            .await?;
        anyhow::ensure!(joined == 3.0, "{joined} LiveKit sessions joined, not 3");
        // Nothing forwarded twice: a browser's RTX bandwidth probes repeat media packets,
        // which the focus must not forward again (the receivers' SRTP refuses replays).
        for browser in &browsers {
            let refused = browser.refused_rtp();
            anyhow::ensure!(
                refused.is_empty(),
                "a page refused RTP packets:\n{}",
                refused.join("\n")
            );
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", control.dump());
        for browser in &browsers {
            eprintln!("{}", browser.log_tail());
        }
        eprintln!("---- focus log ----\n{}", conference.focus.log_tail());
    }
    result
}
