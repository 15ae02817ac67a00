//! The HTTP endpoint: `/healthz` (the event loops answer) and `/readyz` (logged in and syncing).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use cascade_media::MediaPlane;
use cascade_signalling::Status;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
struct AppState {
    media: Arc<MediaPlane>,
    status: Arc<Status>,
}

/// Serves the HTTP endpoint on `listen` until the process ends.
pub async fn serve(
    listen: SocketAddr,
    media: Arc<MediaPlane>,
    status: Arc<Status>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { media, status });
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
    if state.status.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not logged in or not syncing\n",
        )
    }
}
