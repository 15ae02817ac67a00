//! The MatrixRTC authorization service (MSC4195): `POST /get_token` and the legacy
//! `POST /sfu/get`, each trading a Matrix OpenID token for a LiveKit access token.
//!
//! Both answer `{"url": <LiveKit URL>, "jwt": <token>}`, or a Matrix-style error
//! (`{"errcode", "error"}`), with CORS headers on every answer: Element Call runs on another
//! origin and cannot read an answer without them.

use crate::config::LiveKitConfig;
use crate::naming;
use crate::openid::{self, OpenIdError, OpenIdToken};
use crate::token::{self, Claims};
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Tokens issued and requests refused, by cause.
#[derive(Debug, Default)]
pub struct TokenStats {
    issued: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl TokenStats {
    /// Tokens issued.
    pub fn issued(&self) -> u64 {
        self.issued.load(Relaxed)
    }

    /// Requests refused for `cause`.
    pub fn refused(&self, cause: Refusal) -> u64 {
        self.refused[cause as usize].load(Relaxed)
    }
}

/// Why a token request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The body is not the request's JSON.
    BadRequest,
    /// The homeserver refused the OpenID token, or vouched for another server's user.
    BadOpenId,
    /// The member claims another user than the OpenID token's.
    WrongUser,
    /// Users of that homeserver get no tokens here.
    HomeserverNotAllowed,
    /// The homeserver could not be asked.
    HomeserverUnreachable,
    /// The token could not be signed.
    Internal,
}

impl Refusal {
    /// Every cause, in index order.
    pub const ALL: [Refusal; 6] = [
        Refusal::BadRequest,
        Refusal::BadOpenId,
        Refusal::WrongUser,
        Refusal::HomeserverNotAllowed,
        Refusal::HomeserverUnreachable,
        Refusal::Internal,
    ];

    /// A snake_case name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::BadOpenId => "bad_openid",
            Refusal::WrongUser => "wrong_user",
            Refusal::HomeserverNotAllowed => "homeserver_not_allowed",
            Refusal::HomeserverUnreachable => "homeserver_unreachable",
            Refusal::Internal => "internal",
        }
    }

    fn status_and_code(self) -> (StatusCode, &'static str) {
        match self {
            Refusal::BadRequest => (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            Refusal::BadOpenId => (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"),
            Refusal::WrongUser | Refusal::HomeserverNotAllowed => {
                (StatusCode::FORBIDDEN, "M_FORBIDDEN")
            }
            Refusal::HomeserverUnreachable => (StatusCode::BAD_GATEWAY, "M_UNKNOWN"),
            Refusal::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN"),
        }
    }
}

/// A refused request: its cause and the sentence the client gets.
struct Refused(Refusal, String);

/// The service's state.
struct Service {
    config: LiveKitConfig,
    http: reqwest::Client,
    stats: Arc<TokenStats>,
}

/// `POST /get_token`'s body (MSC4195).
#[derive(Deserialize)]
struct GetToken {
    room_id: String,
    slot_id: String,
    openid_token: OpenIdToken,
    member: Member,
}

/// The MatrixRTC membership a token is asked for.
#[derive(Deserialize)]
struct Member {
    id: String,
    claimed_user_id: String,
    claimed_device_id: String,
}

/// `POST /sfu/get`'s body (the legacy endpoint).
#[derive(Deserialize)]
struct SfuGet {
    room: String,
    openid_token: OpenIdToken,
    device_id: String,
}

/// The token service's routes, with CORS, counting into `stats`.
///
/// `http` is the client OpenID tokens are checked with.
pub fn router(config: LiveKitConfig, http: reqwest::Client, stats: Arc<TokenStats>) -> Router {
    let service = Arc::new(Service {
        config,
        http,
        stats,
    });
    Router::new()
        .route("/get_token", post(get_token).options(preflight))
        .route("/sfu/get", post(sfu_get).options(preflight))
        .with_state(service)
        .layer(axum::middleware::map_response(allow_any_origin))
}

/// Adds the CORS headers every answer carries.
pub(crate) async fn allow_any_origin(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization"),
    );
    response
}

/// Answers a CORS preflight (the headers come from [`allow_any_origin`]).
async fn preflight(method: Method) -> StatusCode {
    if method == Method::OPTIONS {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::METHOD_NOT_ALLOWED
    }
}

async fn get_token(
    State(service): State<Arc<Service>>,
    body: Result<Json<GetToken>, JsonRejection>,
) -> Response {
    let result = async {
        let Json(request) = body.map_err(bad_request)?;
        let user = service.check(&request.openid_token).await?;
        if user != request.member.claimed_user_id {
            return Err(Refused(
                Refusal::WrongUser,
                format!(
                    "the OpenID token is {user}'s, the member claims {}",
                    request.member.claimed_user_id
                ),
            ));
        }
        let room = naming::slot_room(&request.room_id, &request.slot_id);
        let identity =
            naming::member_identity(&user, &request.member.claimed_device_id, &request.member.id);
        service.issue(&identity, &room)
    }
    .await;
    service.answer(result)
}

async fn sfu_get(
    State(service): State<Arc<Service>>,
    body: Result<Json<SfuGet>, JsonRejection>,
) -> Response {
    let result = async {
        let Json(request) = body.map_err(bad_request)?;
        if request.room.is_empty() || request.device_id.is_empty() {
            return Err(Refused(
                Refusal::BadRequest,
                "room and device_id must not be empty".to_owned(),
            ));
        }
        let user = service.check(&request.openid_token).await?;
        let identity = naming::legacy_identity(&user, &request.device_id);
        service.issue(&identity, &request.room)
    }
    .await;
    service.answer(result)
}

fn bad_request(rejection: JsonRejection) -> Refused {
    Refused(Refusal::BadRequest, rejection.body_text())
}

impl Service {
    /// The user an OpenID token belongs to, if its homeserver is allowed and vouches for it.
    async fn check(&self, token: &OpenIdToken) -> Result<String, Refused> {
        let server = token.matrix_server_name.as_str();
        if !self.config.allows(server) {
            return Err(Refused(
                Refusal::HomeserverNotAllowed,
                format!("users of {server} get no tokens here"),
            ));
        }
        let base_url = self.config.homeserver_url(server);
        openid::user_of(&self.http, &base_url, server, &token.access_token)
            .await
            .map_err(|err| match err {
                OpenIdError::Unreachable { .. } => {
                    Refused(Refusal::HomeserverUnreachable, err.to_string())
                }
                OpenIdError::Refused(_) | OpenIdError::ForeignUser { .. } => {
                    Refused(Refusal::BadOpenId, err.to_string())
                }
            })
    }

    /// A token for `identity` in `room`.
    fn issue(&self, identity: &str, room: &str) -> Result<serde_json::Value, Refused> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims::join(
            &self.config.api_key,
            identity,
            room,
            now,
            self.config.token_ttl_secs,
        );
        let jwt = token::sign(&claims, &self.config.api_secret)
            .map_err(|err| Refused(Refusal::Internal, format!("could not sign a token: {err}")))?;
        tracing::info!(identity, room, "LiveKit token issued");
        Ok(json!({ "url": self.config.url, "jwt": jwt }))
    }

    /// The answer to a request, counted.
    fn answer(&self, result: Result<serde_json::Value, Refused>) -> Response {
        match result {
            Ok(body) => {
                self.stats.issued.fetch_add(1, Relaxed);
                Json(body).into_response()
            }
            Err(Refused(cause, error)) => {
                self.stats.refused[cause as usize].fetch_add(1, Relaxed);
                tracing::info!(cause = cause.name(), error, "token request refused");
                let (status, errcode) = cause.status_and_code();
                (status, Json(json!({ "errcode": errcode, "error": error }))).into_response()
            }
        }
    }
}
