//! A small client for the parts of the Matrix client-server API the focus (and its test clients)
//! use: login, `/sync`, filters, to-device messages and a few room operations.
//!
//! Identifiers are validated with `ruma` before they go into a request; responses are read
//! tolerantly as JSON, so one odd event never fails a whole `/sync`.

use rand::Rng;
use reqwest::Method;
use ruma::{RoomId, RoomOrAliasId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::{debug, warn};
use url::Url;

/// Timeout of ordinary (non-sync) requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a long-poll `/sync` gets beyond its server-side timeout.
const SYNC_GRACE: Duration = Duration::from_secs(30);
/// The longest rate-limit wait the client honours before retrying.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An argument (URL, user id, room id) is not valid.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The request did not complete (connection, timeout, body).
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The homeserver answered with an error.
    #[error("homeserver returned {status} {errcode}: {error}")]
    Matrix {
        /// HTTP status.
        status: u16,
        /// Matrix `errcode`, empty when the body had none.
        errcode: String,
        /// Matrix `error` text (or the start of a non-JSON body).
        error: String,
        /// How long to wait before retrying (`retry_after_ms` or the `Retry-After` header).
        retry_after_ms: Option<u64>,
        /// Whether the server asked for a soft logout.
        soft_logout: bool,
    },
    /// The homeserver answered successfully but not with the expected shape.
    #[error("unexpected response: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The Matrix `errcode`, if the homeserver sent one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            Self::Matrix { errcode, .. } if !errcode.is_empty() => Some(errcode),
            _ => None,
        }
    }

    /// The HTTP status, if the homeserver answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Matrix { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the access token is no longer valid (a new login is needed).
    pub fn is_unknown_token(&self) -> bool {
        self.errcode() == Some("M_UNKNOWN_TOKEN") || self.errcode() == Some("M_MISSING_TOKEN")
    }

    /// Whether the homeserver rate-limited the request.
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(429) || self.errcode() == Some("M_LIMIT_EXCEEDED")
    }

    /// Whether retrying the same request later may succeed (connection problems, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(err) => !err.is_builder(),
            Self::Matrix { status, .. } => *status >= 500 || self.is_rate_limited(),
            Self::InvalidInput(_) | Self::Protocol(_) => false,
        }
    }

    /// How long the homeserver asked the client to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Matrix {
                retry_after_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }
}

/// When a request is retried.
#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    /// Total attempts, including the first.
    attempts: u32,
    /// Delay before the first retry; doubled for each later one.
    base: Duration,
    /// The longest delay between attempts (except an explicit `retry_after`).
    cap: Duration,
    /// Whether connection errors and 5xx are retried (429 always is).
    transient: bool,
}

/// Retry only rate limiting: for requests whose repetition is not known to be harmless.
const RATE_LIMITED_ONLY: RetryPolicy = RetryPolicy {
    attempts: 4,
    base: Duration::from_millis(500),
    cap: Duration::from_secs(10),
    transient: false,
};

/// Retry everything transient: for idempotent requests (to-device with a fixed txn id).
const IDEMPOTENT: RetryPolicy = RetryPolicy {
    attempts: 6,
    base: Duration::from_millis(250),
    cap: Duration::from_secs(8),
    transient: true,
};

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, or `None` when `err` must not be retried.
    fn delay(&self, attempt: u32, err: &ClientError) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        let backoff = || {
            let exp = self
                .base
                .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
            let capped = exp.min(self.cap);
            // Up to 20 % jitter so that many clients do not retry in lockstep.
            let jitter = rand::rng().random_range(0..=capped.as_millis() as u64 / 5);
            capped + Duration::from_millis(jitter)
        };
        if err.is_rate_limited() {
            Some(
                err.retry_after()
                    .map_or_else(backoff, |d| d.min(MAX_RETRY_AFTER)),
            )
        } else if self.transient && err.is_transient() {
            Some(backoff())
        } else {
            None
        }
    }
}

/// A Matrix event as the focus needs it: type, sender, state key, content, timestamp.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    /// The event `type`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The sending user.
    pub sender: String,
    /// The state key, for state events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    /// The event content (always a JSON object).
    #[serde(default)]
    pub content: Value,
    /// When the sender's homeserver received the event (room events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_server_ts: Option<u64>,
}

impl RawEvent {
    /// Reads one event, or `None` when it lacks `type`/`sender` or its content is not an object.
    pub fn from_json(value: &Value) -> Option<Self> {
        let event = RawEvent::deserialize(value).ok()?;
        event.content.is_object().then_some(event)
    }
}

/// What `/sync` said about one joined room.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JoinedRoom {
    /// State before the timeline (the full state on an initial sync).
    pub state: Vec<RawEvent>,
    /// Timeline events, in order (state events among them have a `state_key`).
    pub timeline: Vec<RawEvent>,
}

/// The parts of a `/sync` response the focus uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncResponse {
    /// The token for the next `/sync`.
    pub next_batch: String,
    /// To-device events, in the order the server sent them.
    pub to_device: Vec<RawEvent>,
    /// Joined rooms by room id.
    pub joined: BTreeMap<String, JoinedRoom>,
    /// Rooms the user is invited to, with their stripped invite state.
    pub invited: BTreeMap<String, Vec<RawEvent>>,
    /// Rooms the user left (or was removed from).
    pub left: Vec<String>,
    /// Unclaimed one-time keys of this device by algorithm.
    pub one_time_keys_count: BTreeMap<String, u64>,
    /// Key algorithms of this device's unused fallback keys, when the server said.
    pub unused_fallback_key_types: Option<Vec<String>>,
    /// How many events were skipped because they were not shaped like events.
    pub malformed: usize,
}

impl SyncResponse {
    /// Reads a `/sync` response body; only a missing `next_batch` is an error.
    pub fn from_json(body: &Value) -> Result<Self, ClientError> {
        let next_batch = body
            .get("next_batch")
            .and_then(Value::as_str)
            .ok_or_else(|| ClientError::Protocol("sync response without next_batch".into()))?
            .to_owned();
        let mut malformed = 0;
        let mut events = |list: Option<&Value>| -> Vec<RawEvent> {
            let Some(items) = list.and_then(Value::as_array) else {
                return Vec::new();
            };
            items
                .iter()
                .filter_map(|item| {
                    let event = RawEvent::from_json(item);
                    if event.is_none() {
                        malformed += 1;
                    }
                    event
                })
                .collect()
        };
        let to_device = events(body.pointer("/to_device/events"));
        let rooms = body.get("rooms");
        let section = |name: &str| {
            rooms
                .and_then(|r| r.get(name))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let mut joined = BTreeMap::new();
        for (room_id, room) in section("join") {
            let state = events(room.pointer("/state/events"));
            let timeline = events(room.pointer("/timeline/events"));
            joined.insert(room_id, JoinedRoom { state, timeline });
        }
        let mut invited = BTreeMap::new();
        for (room_id, room) in section("invite") {
            invited.insert(room_id, events(room.pointer("/invite_state/events")));
        }
        let left = section("leave").into_iter().map(|(id, _)| id).collect();
        let one_time_keys_count = body
            .get("device_one_time_keys_count")
            .and_then(Value::as_object)
            .map(|counts| {
                counts
                    .iter()
                    .filter_map(|(alg, n)| Some((alg.clone(), n.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        let unused_fallback_key_types = body
            .get("device_unused_fallback_key_types")
            .and_then(Value::as_array)
            .map(|types| {
                types
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            });
        Ok(Self {
            next_batch,
            to_device,
            joined,
            invited,
            left,
            one_time_keys_count,
            unused_fallback_key_types,
            malformed,
        })
    }
}

/// A logged-in Matrix session; cheap to clone (clones share the HTTP connection pool).
#[derive(Clone)]
pub struct MatrixClient {
    http: reqwest::Client,
    base: Url,
    homeserver_url: String,
    access_token: String,
    user_id: String,
    device_id: String,
    txn: Arc<TxnIds>,
}

impl std::fmt::Debug for MatrixClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatrixClient")
            .field("homeserver_url", &self.homeserver_url)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// Transaction ids unique across restarts (random prefix) and within a run (counter).
#[derive(Debug)]
struct TxnIds {
    prefix: String,
    next: AtomicU64,
}

impl TxnIds {
    fn new() -> Self {
        let prefix: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(12)
            .map(char::from)
            .collect();
        Self {
            prefix,
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}.{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl MatrixClient {
    /// Logs in with `m.login.password`, reusing `device_id` when given (so no new device is made).
    pub async fn login_password(
        homeserver_url: &str,
        user_id_or_localpart: &str,
        password: &str,
        device_id: Option<&str>,
    ) -> Result<Self, ClientError> {
        let base = parse_base(homeserver_url)?;
        let http = http_client()?;
        let user = if user_id_or_localpart.starts_with('@') {
            UserId::parse(user_id_or_localpart)
                .map_err(|e| {
                    ClientError::InvalidInput(format!("user id {user_id_or_localpart:?}: {e}"))
                })?
                .to_string()
        } else if user_id_or_localpart.is_empty() || user_id_or_localpart.contains(':') {
            return Err(ClientError::InvalidInput(format!(
                "{user_id_or_localpart:?} is neither a user id nor a localpart"
            )));
        } else {
            user_id_or_localpart.to_owned()
        };
        let mut body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "initial_device_display_name": "Cascade",
        });
        if let Some(device_id) = device_id {
            body["device_id"] = Value::from(device_id);
        }
        let url = endpoint(&base, &["login"])?;
        let response = send_with_retry(
            &http,
            None,
            RATE_LIMITED_ONLY,
            Method::POST,
            url,
            Some(&body),
            REQUEST_TIMEOUT,
        )
        .await?;
        let access_token = string_field(&response, "access_token")?;
        let user_id = valid_user_id(&string_field(&response, "user_id")?)?;
        let device_id = string_field(&response, "device_id")?;
        Ok(Self {
            http,
            base,
            homeserver_url: homeserver_url.to_owned(),
            access_token,
            user_id,
            device_id,
            txn: Arc::new(TxnIds::new()),
        })
    }

    /// Uses an existing access token; `GET /account/whoami` supplies the user and device ids.
    pub async fn with_access_token(
        homeserver_url: &str,
        access_token: &str,
    ) -> Result<Self, ClientError> {
        let base = parse_base(homeserver_url)?;
        let http = http_client()?;
        let url = endpoint(&base, &["account", "whoami"])?;
        let response = send_with_retry(
            &http,
            Some(access_token),
            RATE_LIMITED_ONLY,
            Method::GET,
            url,
            None,
            REQUEST_TIMEOUT,
        )
        .await?;
        let user_id = valid_user_id(&string_field(&response, "user_id")?)?;
        let device_id = string_field(&response, "device_id")?;
        Ok(Self {
            http,
            base,
            homeserver_url: homeserver_url.to_owned(),
            access_token: access_token.to_owned(),
            user_id,
            device_id,
            txn: Arc::new(TxnIds::new()),
        })
    }

    /// The logged-in user.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The logged-in device.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The session's access token.
    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// The homeserver base URL as given.
    pub fn homeserver_url(&self) -> &str {
        &self.homeserver_url
    }

    /// One `/sync`: long-polls up to `timeout_ms`; `filter` is a filter id or inline JSON.
    pub async fn sync(
        &self,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&str>,
    ) -> Result<SyncResponse, ClientError> {
        self.sync_with_state(since, timeout_ms, filter, false).await
    }

    /// One `/sync` as [`Self::sync`]; with `full_state`, every joined room's full (filtered)
    /// state comes along even when resuming from `since`.
    pub async fn sync_with_state(
        &self,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&str>,
        full_state: bool,
    ) -> Result<SyncResponse, ClientError> {
        let mut url = self.url(&["sync"])?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(since) = since {
                query.append_pair("since", since);
            }
            if full_state {
                query.append_pair("full_state", "true");
            }
            query.append_pair("timeout", &timeout_ms.to_string());
            if let Some(filter) = filter {
                query.append_pair("filter", filter);
            }
            query.append_pair("set_presence", "offline");
        }
        let timeout = Duration::from_millis(timeout_ms) + SYNC_GRACE;
        let body = self.send(Method::GET, url, None, timeout).await?;
        SyncResponse::from_json(&body)
    }

    /// Uploads a filter (`POST /user/{userId}/filter`) and returns its id.
    pub async fn create_filter(&self, filter: Value) -> Result<String, ClientError> {
        let url = self.url(&["user", &self.user_id, "filter"])?;
        let response = self
            .send_retrying(RATE_LIMITED_ONLY, Method::POST, url, Some(&filter))
            .await?;
        string_field(&response, "filter_id")
    }

    /// PUT /sendToDevice/{type}/{txnId}; one request, many recipients; retries on 429
    /// (honouring retry_after_ms, also the Retry-After header) and 5xx/connection errors with
    /// capped exponential backoff, bounded attempts.
    ///
    /// `messages` maps user id → device id (or `*`) → content. Retries reuse the transaction id,
    /// so a request the server already processed is not delivered twice.
    pub async fn send_to_device(
        &self,
        event_type: &str,
        messages: &BTreeMap<String, BTreeMap<String, Value>>,
    ) -> Result<(), ClientError> {
        if messages.values().all(BTreeMap::is_empty) {
            return Ok(());
        }
        let txn_id = self.txn.next();
        let url = self.url(&["sendToDevice", event_type, &txn_id])?;
        let body = json!({ "messages": messages });
        self.send_retrying(IDEMPOTENT, Method::PUT, url, Some(&body))
            .await?;
        Ok(())
    }

    /// Uploads device keys, one-time keys and fallback keys (`POST /keys/upload`, `body` as
    /// given); returns the server's one-time key counts by algorithm.
    pub async fn upload_keys(&self, body: &Value) -> Result<BTreeMap<String, u64>, ClientError> {
        let url = self.url(&["keys", "upload"])?;
        let response = self
            .send_retrying(RATE_LIMITED_ONLY, Method::POST, url, Some(body))
            .await?;
        Ok(response
            .get("one_time_key_counts")
            .and_then(Value::as_object)
            .map(|counts| {
                counts
                    .iter()
                    .filter_map(|(alg, n)| Some((alg.clone(), n.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Queries the published device keys of `users` (`POST /keys/query`, all their devices);
    /// returns the response's `device_keys` object (user id → device id → keys).
    pub async fn query_keys(&self, users: &[&str]) -> Result<Value, ClientError> {
        let url = self.url(&["keys", "query"])?;
        let device_keys: serde_json::Map<String, Value> = users
            .iter()
            .map(|u| ((*u).to_owned(), Value::Array(Vec::new())))
            .collect();
        let body = json!({ "device_keys": device_keys, "timeout": 10_000 });
        let response = self
            .send_retrying(IDEMPOTENT, Method::POST, url, Some(&body))
            .await?;
        Ok(response
            .get("device_keys")
            .cloned()
            .unwrap_or_else(|| json!({})))
    }

    /// Claims one `algorithm` one-time key of each listed `(user, device)` (`POST /keys/claim`);
    /// returns the response's `one_time_keys` object (user id → device id → key id → key).
    pub async fn claim_keys(
        &self,
        devices: &[(&str, &str)],
        algorithm: &str,
    ) -> Result<Value, ClientError> {
        let url = self.url(&["keys", "claim"])?;
        let mut wanted: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
        for (user, device) in devices {
            wanted.entry(user).or_default().insert(device, algorithm);
        }
        let body = json!({ "one_time_keys": wanted, "timeout": 10_000 });
        let response = self
            .send_retrying(RATE_LIMITED_ONLY, Method::POST, url, Some(&body))
            .await?;
        Ok(response
            .get("one_time_keys")
            .cloned()
            .unwrap_or_else(|| json!({})))
    }

    /// Creates a room (`POST /createRoom` with `body` as given) and returns its id.
    pub async fn create_room(&self, body: Value) -> Result<String, ClientError> {
        let url = self.url(&["createRoom"])?;
        let response = self
            .send_retrying(RATE_LIMITED_ONLY, Method::POST, url, Some(&body))
            .await?;
        string_field(&response, "room_id")
    }

    /// Joins a room by id or alias and returns the room id.
    pub async fn join_room(&self, room_id_or_alias: &str) -> Result<String, ClientError> {
        RoomOrAliasId::parse(room_id_or_alias).map_err(|e| {
            ClientError::InvalidInput(format!("room id or alias {room_id_or_alias:?}: {e}"))
        })?;
        let url = self.url(&["join", room_id_or_alias])?;
        let response = self
            .send_retrying(RATE_LIMITED_ONLY, Method::POST, url, Some(&json!({})))
            .await?;
        string_field(&response, "room_id")
    }

    /// Invites `user_id` into `room_id`.
    pub async fn invite_user(&self, room_id: &str, user_id: &str) -> Result<(), ClientError> {
        valid_room_id(room_id)?;
        valid_user_id(user_id)?;
        let url = self.url(&["rooms", room_id, "invite"])?;
        self.send_retrying(
            RATE_LIMITED_ONLY,
            Method::POST,
            url,
            Some(&json!({"user_id": user_id})),
        )
        .await?;
        Ok(())
    }

    /// Sets a state event and returns its event id.
    pub async fn send_state(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        content: &Value,
    ) -> Result<String, ClientError> {
        valid_room_id(room_id)?;
        let url = self.url(&["rooms", room_id, "state", event_type, state_key])?;
        let response = self
            .send_retrying(RATE_LIMITED_ONLY, Method::PUT, url, Some(content))
            .await?;
        string_field(&response, "event_id")
    }

    /// The current state of a room (`GET /rooms/{roomId}/state`); malformed events are skipped.
    pub async fn room_state(&self, room_id: &str) -> Result<Vec<RawEvent>, ClientError> {
        valid_room_id(room_id)?;
        let url = self.url(&["rooms", room_id, "state"])?;
        let response = self
            .send_retrying(RATE_LIMITED_ONLY, Method::GET, url, None)
            .await?;
        let items = response
            .as_array()
            .ok_or_else(|| ClientError::Protocol("room state is not an array".into()))?;
        Ok(items.iter().filter_map(RawEvent::from_json).collect())
    }

    /// Leaves (or rejects the invite to) a room.
    pub async fn leave_room(&self, room_id: &str) -> Result<(), ClientError> {
        valid_room_id(room_id)?;
        let url = self.url(&["rooms", room_id, "leave"])?;
        self.send_retrying(RATE_LIMITED_ONLY, Method::POST, url, Some(&json!({})))
            .await?;
        Ok(())
    }

    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        endpoint(&self.base, segments)
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        send_once(
            &self.http,
            Some(&self.access_token),
            method,
            url,
            body,
            timeout,
        )
        .await
    }

    async fn send_retrying(
        &self,
        policy: RetryPolicy,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        send_with_retry(
            &self.http,
            Some(&self.access_token),
            policy,
            method,
            url,
            body,
            REQUEST_TIMEOUT,
        )
        .await
    }
}

/// Idle connections to the homeserver the client keeps for reuse, at most.
pub const HTTP_IDLE_CONNECTIONS_MAX: usize = 4;

fn http_client() -> Result<reqwest::Client, ClientError> {
    Ok(crate::http::client_builder()
        .connect_timeout(Duration::from_secs(10))
        // One homeserver: a burst of sends (answers to many invites at once) must not leave as
        // many idle connections open for the pool's idle timeout.
        .pool_max_idle_per_host(HTTP_IDLE_CONNECTIONS_MAX)
        .user_agent(concat!("cascade/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

fn parse_base(homeserver_url: &str) -> Result<Url, ClientError> {
    let url = Url::parse(homeserver_url).map_err(|e| {
        ClientError::InvalidInput(format!("homeserver URL {homeserver_url:?}: {e}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(ClientError::InvalidInput(format!(
            "homeserver URL {homeserver_url:?} is not an http(s) URL"
        )));
    }
    Ok(url)
}

/// `{base}/_matrix/client/v3/{segments...}`, each segment percent-encoded (`/` included).
fn endpoint(base: &Url, segments: &[&str]) -> Result<Url, ClientError> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| ClientError::InvalidInput(format!("homeserver URL {base} cannot be a base")))?
        .pop_if_empty()
        .extend(["_matrix", "client", "v3"])
        .extend(segments);
    Ok(url)
}

fn valid_user_id(user_id: &str) -> Result<String, ClientError> {
    UserId::parse(user_id)
        .map(|id| id.to_string())
        .map_err(|e| ClientError::InvalidInput(format!("user id {user_id:?}: {e}")))
}

fn valid_room_id(room_id: &str) -> Result<(), ClientError> {
    RoomId::parse(room_id)
        .map(drop)
        .map_err(|e| ClientError::InvalidInput(format!("room id {room_id:?}: {e}")))
}

fn string_field(body: &Value, name: &str) -> Result<String, ClientError> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Protocol(format!("response without string field {name:?}")))
}

async fn send_with_retry(
    http: &reqwest::Client,
    token: Option<&str>,
    policy: RetryPolicy,
    method: Method,
    url: Url,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let mut attempt = 1;
    loop {
        let err = match send_once(http, token, method.clone(), url.clone(), body, timeout).await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let Some(delay) = policy.delay(attempt, &err) else {
            return Err(err);
        };
        warn!(
            path = url.path(),
            attempt,
            retry_in_ms = delay.as_millis() as u64,
            error = %err,
            "request failed, retrying"
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

async fn send_once(
    http: &reqwest::Client,
    token: Option<&str>,
    method: Method,
    url: Url,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value, ClientError> {
    debug!(%method, path = url.path(), "request");
    let mut request = http.request(method, url).timeout(timeout);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await?;
    let status = response.status();
    let retry_after_header = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| secs.saturating_mul(1000));
    let bytes = response.bytes().await?;
    if status.is_success() {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(Default::default()));
        }
        return serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("response is not JSON: {e}")));
    }
    Err(matrix_error(status.as_u16(), &bytes, retry_after_header))
}

/// Builds the error for a non-2xx response from its body and `Retry-After` header.
fn matrix_error(status: u16, body: &[u8], retry_after_header_ms: Option<u64>) -> ClientError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let errcode = json
        .get("errcode")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let error = match json.get("error").and_then(Value::as_str) {
        Some(text) => text.to_owned(),
        None => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    };
    let retry_after_ms = json
        .get("retry_after_ms")
        .and_then(Value::as_u64)
        .or(retry_after_header_ms);
    let soft_logout = json
        .get("soft_logout")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    ClientError::Matrix {
        status,
        errcode,
        error,
        retry_after_ms,
        soft_logout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_parsing_is_tolerant() {
        let body = json!({
            "next_batch": "s72",
            "to_device": {"events": [
                {"type": "m.call.invite", "sender": "@a:hs", "content": {"call_id": "c"}},
                {"type": "m.call.invite", "content": {}},
                "garbage",
                {"type": "m.call.hangup", "sender": "@a:hs", "content": "not an object"}
            ]},
            "rooms": {
                "join": {"!r:hs": {
                    "state": {"events": [{"type": "m.room.member", "sender": "@a:hs", "state_key": "@a:hs", "content": {"membership": "join"}, "origin_server_ts": 5}]},
                    "timeline": {"events": [{"type": "m.room.message", "sender": "@a:hs", "content": {}}, 7], "limited": true}
                }, "!bad:hs": 3},
                "invite": {"!i:hs": {"invite_state": {"events": [{"type": "m.room.member", "sender": "@b:hs", "state_key": "@focus:hs", "content": {"membership": "invite"}}]}}},
                "leave": {"!l:hs": {}}
            },
            "device_one_time_keys_count": {"signed_curve25519": 50, "odd": "x"},
            "device_unused_fallback_key_types": ["signed_curve25519", 3]
        });
        let sync = SyncResponse::from_json(&body).unwrap();
        assert_eq!(sync.next_batch, "s72");
        assert_eq!(sync.to_device.len(), 1);
        assert_eq!(sync.malformed, 4);
        assert_eq!(sync.joined["!r:hs"].state.len(), 1);
        assert_eq!(sync.joined["!r:hs"].state[0].origin_server_ts, Some(5));
        assert_eq!(sync.joined["!r:hs"].timeline.len(), 1);
        assert!(sync.joined["!bad:hs"].state.is_empty());
        assert_eq!(sync.invited["!i:hs"].len(), 1);
        assert_eq!(sync.left, vec!["!l:hs".to_owned()]);
        assert_eq!(sync.one_time_keys_count.get("signed_curve25519"), Some(&50));
        assert_eq!(
            sync.unused_fallback_key_types,
            Some(vec!["signed_curve25519".to_owned()])
        );
        assert!(SyncResponse::from_json(&json!({"rooms": {}})).is_err());
        assert!(SyncResponse::from_json(&json!("x")).is_err());
    }

    #[test]
    fn endpoints_encode_segments() {
        let base = parse_base("https://hs.example/prefix/").unwrap();
        let url = endpoint(&base, &["rooms", "!a/b:hs", "state", "m.call", ""]).unwrap();
        assert_eq!(
            url.as_str(),
            "https://hs.example/prefix/_matrix/client/v3/rooms/!a%2Fb:hs/state/m.call/"
        );
        let url = endpoint(&parse_base("http://hs:8008").unwrap(), &["join", "#c:hs"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://hs:8008/_matrix/client/v3/join/%23c:hs"
        );
        assert!(parse_base("ftp://hs").is_err());
        assert!(parse_base("not a url").is_err());
    }

    #[test]
    fn errors_are_classified() {
        let limited = matrix_error(
            429,
            br#"{"errcode":"M_LIMIT_EXCEEDED","error":"slow","retry_after_ms":1500}"#,
            Some(9000),
        );
        assert!(limited.is_rate_limited() && limited.is_transient());
        assert_eq!(limited.retry_after(), Some(Duration::from_millis(1500)));
        let header_only = matrix_error(429, b"", Some(2000));
        assert_eq!(header_only.retry_after(), Some(Duration::from_secs(2)));
        let token = matrix_error(401, br#"{"errcode":"M_UNKNOWN_TOKEN","error":"x"}"#, None);
        assert!(token.is_unknown_token() && !token.is_transient());
        let gateway = matrix_error(502, b"<html>bad gateway</html>", None);
        assert!(gateway.is_transient());
        assert_eq!(gateway.errcode(), None);
        let forbidden = matrix_error(403, br#"{"errcode":"M_FORBIDDEN"}"#, None);
        assert!(!forbidden.is_transient());
    }

    #[test]
    fn retry_policy_is_bounded_and_capped() {
        let server_error = matrix_error(500, b"{}", None);
        let forbidden = matrix_error(403, b"{}", None);
        let limited = matrix_error(429, br#"{"retry_after_ms": 600000}"#, None);
        assert!(IDEMPOTENT.delay(1, &server_error).is_some());
        assert!(
            IDEMPOTENT
                .delay(IDEMPOTENT.attempts, &server_error)
                .is_none()
        );
        assert!(IDEMPOTENT.delay(1, &forbidden).is_none());
        assert!(RATE_LIMITED_ONLY.delay(1, &server_error).is_none());
        assert_eq!(RATE_LIMITED_ONLY.delay(1, &limited), Some(MAX_RETRY_AFTER));
        for attempt in 1..IDEMPOTENT.attempts {
            let delay = IDEMPOTENT.delay(attempt, &server_error).unwrap();
            assert!(delay <= IDEMPOTENT.cap + IDEMPOTENT.cap / 5, "{delay:?}");
        }
    }

    #[test]
    fn raw_event_requires_object_content() {
        assert!(
            RawEvent::from_json(&json!({"type": "t", "sender": "@a:b", "content": {}})).is_some()
        );
        assert!(RawEvent::from_json(&json!({"type": "t", "sender": "@a:b"})).is_none());
        assert!(
            RawEvent::from_json(&json!({"type": "t", "sender": "@a:b", "content": [1]})).is_none()
        );
    }
}
