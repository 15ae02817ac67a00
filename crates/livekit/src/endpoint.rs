//! The LiveKit signalling endpoint, on the `[livekit]` listener beside the token service.
//!
//! - `GET /rtc?access_token=…`: a WebSocket carrying protobuf `SignalRequest`s in and
//!   `SignalResponse`s out (binary messages), one [`Session`] per connection; a token that does
//!   not verify (see [`token::verify`]) or grants no room join gets 401 before the upgrade.
//! - `GET /rtc/validate?access_token=…`: 200 when the token would be accepted, else 401.
//! - `/rtc/v1`, `/rtc/v1/validate`: 404. `livekit-client` 2.17 and later try that
//!   single-peer-connection path first and fall back to `/rtc` when its validation answers 404
//!   — provided the page can read the answer, so every answer carries CORS headers.

use crate::config::LiveKitConfig;
use crate::signal::{self, PING_TIMEOUT_SECS, Session};
use crate::token;
use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use livekit_protocol::SignalRequest;
use prost::Message as _;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the endpoint did, for the metrics.
#[derive(Debug, Default)]
pub struct SignalStats {
    joined: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
    unsupported: AtomicU64,
}

impl SignalStats {
    /// Sessions joined (a `JoinResponse` sent).
    pub fn joined(&self) -> u64 {
        self.joined.load(Relaxed)
    }

    /// Connections refused for their token.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// Messages that were not a protobuf `SignalRequest` (text, or bytes that do not decode).
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Relaxed)
    }

    /// Requests this endpoint does not handle yet (publishing, subscribing, data).
    pub fn unsupported(&self) -> u64 {
        self.unsupported.load(Relaxed)
    }
}

struct Endpoint {
    config: LiveKitConfig,
    stats: Arc<SignalStats>,
}

#[derive(Deserialize)]
struct Params {
    access_token: Option<String>,
}

/// The signalling routes, with CORS, counting into `stats`.
pub fn router(config: LiveKitConfig, stats: Arc<SignalStats>) -> Router {
    Router::new()
        .route("/rtc", get(rtc))
        .route("/rtc/validate", get(validate))
        .route("/rtc/v1", get(not_here))
        .route("/rtc/v1/validate", get(not_here))
        .with_state(Arc::new(Endpoint { config, stats }))
        .layer(axum::middleware::map_response(
            crate::service::allow_any_origin,
        ))
}

impl Endpoint {
    /// The claims of `params`' token when it verifies and grants a room join.
    fn admit(&self, params: &Params) -> Option<token::Claims> {
        let claims = params
            .access_token
            .as_deref()
            .and_then(|t| token::verify(t, &self.config.api_key, &self.config.api_secret).ok());
        match claims {
            Some(claims) if claims.video.room_join && !claims.video.room.is_empty() => Some(claims),
            _ => {
                self.stats.refused.fetch_add(1, Relaxed);
                None
            }
        }
    }
}

async fn rtc(
    State(endpoint): State<Arc<Endpoint>>,
    Query(params): Query<Params>,
    upgrade: WebSocketUpgrade,
) -> Response {
    match endpoint.admit(&params) {
        Some(claims) => upgrade
            .on_upgrade(move |socket| serve(socket, claims, endpoint))
            .into_response(),
        None => (StatusCode::UNAUTHORIZED, "invalid access token").into_response(),
    }
}

async fn validate(State(endpoint): State<Arc<Endpoint>>, Query(params): Query<Params>) -> Response {
    match endpoint.admit(&params) {
        Some(_) => (StatusCode::OK, "success").into_response(),
        None => (StatusCode::UNAUTHORIZED, "invalid access token").into_response(),
    }
}

async fn not_here() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs one client's session until it leaves, closes, or is silent for the ping timeout.
async fn serve(mut socket: WebSocket, claims: token::Claims, endpoint: Arc<Endpoint>) {
    let (mut session, join) = Session::join(
        &claims,
        &signal::new_sid("RM_"),
        &signal::new_sid("PA_"),
        unix_ms() / 1000,
    );
    if socket
        .send(Message::Binary(join.encode_to_vec().into()))
        .await
        .is_err()
    {
        return;
    }
    endpoint.stats.joined.fetch_add(1, Relaxed);
    tracing::info!(
        room = session.room_name(),
        identity = %claims.sub,
        participant = session.participant_sid(),
        "livekit client joined"
    );
    let silence = Duration::from_secs(PING_TIMEOUT_SECS.unsigned_abs().into());
    loop {
        let message = match tokio::time::timeout(silence, socket.recv()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(_)) | None) => break,
            Err(_) => {
                tracing::info!(
                    participant = session.participant_sid(),
                    "livekit client silent; closing"
                );
                break;
            }
        };
        let request = match message {
            Message::Binary(bytes) => match SignalRequest::decode(bytes) {
                Ok(request) => request,
                Err(err) => {
                    endpoint.stats.malformed.fetch_add(1, Relaxed);
                    tracing::debug!(%err, "undecodable signal request");
                    continue;
                }
            },
            Message::Text(_) => {
                endpoint.stats.malformed.fetch_add(1, Relaxed);
                continue;
            }
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        let outcome = session.on_request(request, unix_ms());
        if let Some(name) = outcome.unsupported {
            endpoint.stats.unsupported.fetch_add(1, Relaxed);
            tracing::debug!(request = name, "signal request not handled yet");
        }
        for response in outcome.responses {
            if socket
                .send(Message::Binary(response.encode_to_vec().into()))
                .await
                .is_err()
            {
                return;
            }
        }
        if outcome.leave {
            break;
        }
    }
    tracing::info!(
        participant = session.participant_sid(),
        "livekit client left"
    );
}
