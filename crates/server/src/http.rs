//! The HTTP endpoint: `/healthz` (the event loops answer), `/readyz` (logged in, syncing and not
//! draining) and `/metrics` (Prometheus text format).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cascade_media::MediaPlane;
use cascade_signalling::Status;
use prometheus::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a scrape waits for the event loops to count their gauges.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct AppState {
    media: Arc<MediaPlane>,
    status: Arc<Status>,
    registry: Arc<Registry>,
}

/// Serves the HTTP endpoint on `listen` until the process ends.
pub async fn serve(
    listen: SocketAddr,
    media: Arc<MediaPlane>,
    status: Arc<Status>,
    livekit: cascade_livekit::Stats,
) -> anyhow::Result<()> {
    let registry = Arc::new(crate::metrics::registry(
        media.clone(),
        status.clone(),
        livekit,
    )?);
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            media,
            status,
            registry,
        });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "http listening");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.media.healthy(Duration::from_secs(2)).await {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "media event loop not answering\n",
        )
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    let status = &state.status;
    if status.is_ready() {
        return (StatusCode::OK, "ready\n");
    }
    let why = if status.draining() {
        "draining: not taking new calls\n"
    } else if !status.logged_in() {
        "not logged in\n"
    } else if status.sync_failing() {
        "not syncing: the homeserver cannot be reached or fails\n"
    } else {
        "not syncing\n"
    };
    (StatusCode::SERVICE_UNAVAILABLE, why)
}

async fn metrics(State(state): State<AppState>) -> Response {
    if !state.media.refresh_gauges(GAUGE_REFRESH).await {
        tracing::warn!("a media event loop did not count its gauges in time; serving older values");
    }
    match crate::metrics::render(&state.registry) {
        Ok((content_type, text)) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(err) => {
            tracing::warn!(%err, "cannot render the metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response()
        }
    }
}
