//! The LiveKit signalling endpoint, on the `[livekit]` listener beside the token service.
//!
//! - `GET /rtc?access_token=…`: a WebSocket carrying protobuf `SignalRequest`s in and
//!   `SignalResponse`s out (binary messages), one [`Session`] per connection, in the room its
//!   token names (see [`crate::rooms`]: who is there, who comes and goes); a token that does
//!   not verify (see [`token::verify`]) or grants no room join gets 401 before the upgrade.
//! - `GET /rtc/validate?access_token=…`: 200 when the token would be accepted, else 401.
//! - Each session's offers, answers and candidates go to the media plane, and the media
//!   plane's back to it, through the [`MediaBridge`].
//! - `/rtc/v1`, `/rtc/v1/validate`: 404. `livekit-client` 2.17 and later try that
//!   single-peer-connection path first and fall back to `/rtc` when its validation answers 404
//!   — provided the page can read the answer, so every answer carries CORS headers.

use crate::config::LiveKitConfig;
use crate::rooms::{Notice, Rooms};
use crate::signal::{self, PING_TIMEOUT_SECS, Session};
use crate::token;
use crate::transport::{Target, call_of};
use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cascade_protocol::{CallKey, FromMedia, ToMedia};
use livekit_protocol::{SignalRequest, SignalResponse};
use prost::Message as _;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// What the endpoint did, for the metrics.
#[derive(Debug, Default)]
pub struct SignalStats {
    joined: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
    unsupported: AtomicU64,
    refused_requests: AtomicU64,
    data_relayed: AtomicU64,
    data_dropped: AtomicU64,
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

    /// Requests this endpoint does not handle (yet): media without a media plane, and the
    /// requests it leaves unanswered (see [`crate::signal`]).
    pub fn unsupported(&self) -> u64 {
        self.unsupported.load(Relaxed)
    }

    /// Requests refused: a track beyond the limit, one the participant does not have, or a
    /// data packet not relayed (see [`crate::data`]).
    pub fn refused_requests(&self) -> u64 {
        self.refused_requests.load(Relaxed)
    }

    /// Data packets accepted for relaying (each counted once, however many recipients it
    /// had; the media plane counts those it could not send to one).
    pub fn data_relayed(&self) -> u64 {
        self.data_relayed.load(Relaxed)
    }

    /// Data packets dropped before their session looked at them: more than
    /// [`DATA_QUEUE`] were waiting for it.
    pub fn data_dropped(&self) -> u64 {
        self.data_dropped.load(Relaxed)
    }
}

/// The most data packets from the media plane that may wait for one session (see
/// [`SignalStats::data_dropped`]): a client that sends data and does not read its WebSocket
/// cannot make the focus hold more than this many of its packets.
pub const DATA_QUEUE: usize = 256;

/// How long sending one message to a client may take before the session is given up: a client
/// that stops reading its WebSocket is not waited for without end.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the media plane's messages for one session go: its answers, offers, candidates and
/// hangups (few, never dropped), and its client's data packets (bounded, see [`DATA_QUEUE`]).
#[derive(Clone)]
struct SessionInbox {
    control: mpsc::UnboundedSender<FromMedia>,
    data: mpsc::Sender<FromMedia>,
}

/// The LiveKit sessions' way to the media plane, and the media plane's way back to them.
#[derive(Clone)]
pub struct MediaBridge {
    to_media: mpsc::Sender<ToMedia>,
    /// Where each session's calls' messages go.
    sessions: Arc<Mutex<HashMap<CallKey, SessionInbox>>>,
    stats: Arc<SignalStats>,
}

impl MediaBridge {
    /// A bridge whose sessions send to the media plane on `to_media`; the media plane's
    /// messages reach them through [`MediaBridge::deliver`]; data packets dropped on the way
    /// count into `stats`.
    pub fn new(to_media: mpsc::Sender<ToMedia>, stats: Arc<SignalStats>) -> Self {
        Self {
            to_media,
            sessions: Arc::default(),
            stats,
        }
    }

    /// Hands `message` to the LiveKit session whose call it concerns; gives it back when no
    /// LiveKit session has that call (it is a Matrix device's). A data packet for a session
    /// with [`DATA_QUEUE`] waiting already is dropped and counted.
    pub fn deliver(&self, message: FromMedia) -> Option<FromMedia> {
        let sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match sessions.get(message.call()) {
            Some(session) if matches!(message, FromMedia::Data { .. }) => {
                if let Err(mpsc::error::TrySendError::Full(_)) = session.data.try_send(message) {
                    self.stats.data_dropped.fetch_add(1, Relaxed);
                }
                None
            }
            Some(session) => {
                // A session that ended already misses it.
                let _ = session.control.send(message);
                None
            }
            None => Some(message),
        }
    }

    fn register(&self, calls: &[CallKey], session: &SessionInbox) {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for call in calls {
            sessions.insert(call.clone(), session.clone());
        }
    }

    fn unregister(&self, calls: &[CallKey]) {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for call in calls {
            sessions.remove(call);
        }
    }

    /// Sends `messages` to the media plane, in order; false when it is gone.
    async fn send(&self, messages: Vec<ToMedia>) -> bool {
        for message in messages {
            if self.to_media.send(message).await.is_err() {
                return false;
            }
        }
        true
    }
}

struct Endpoint {
    config: LiveKitConfig,
    stats: Arc<SignalStats>,
    hub: Mutex<Hub>,
    media: Option<MediaBridge>,
}

/// The rooms, and where each participant's session takes what it must be told. Locked only
/// while a participant joins or leaves (never across an await).
#[derive(Default)]
struct Hub {
    rooms: Rooms,
    outboxes: HashMap<String, mpsc::UnboundedSender<SignalResponse>>,
}

impl Hub {
    /// Hands each notice to its participant's session (one that ended already misses it).
    fn deliver(&self, notices: Vec<Notice>) {
        for (sid, response) in notices {
            if let Some(outbox) = self.outboxes.get(&sid) {
                let _ = outbox.send(response);
            }
        }
    }
}

fn hub(endpoint: &Endpoint) -> std::sync::MutexGuard<'_, Hub> {
    // A panic while the lock was held leaves plain data behind; go on with it.
    endpoint
        .hub
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Deserialize)]
struct Params {
    access_token: Option<String>,
}

/// The signalling routes, with CORS, counting into `stats`; sessions reach the media plane
/// through `media` (without it, their offers go nowhere).
pub fn router(
    config: LiveKitConfig,
    stats: Arc<SignalStats>,
    media: Option<MediaBridge>,
) -> Router {
    Router::new()
        .route("/rtc", get(rtc))
        .route("/rtc/validate", get(validate))
        .route("/rtc/v1", get(not_here))
        .route("/rtc/v1/validate", get(not_here))
        .with_state(Arc::new(Endpoint {
            config,
            stats,
            hub: Mutex::new(Hub::default()),
            media,
        }))
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

/// Runs one client's session: joins its room, converses, and leaves the room when the
/// conversation ends.
async fn serve(mut socket: WebSocket, claims: token::Claims, endpoint: Arc<Endpoint>) {
    let now_secs = unix_ms() / 1000;
    let participant = signal::participant_info(&claims, &signal::new_sid("PA_"), now_secs);
    let sid = participant.sid.clone();
    let (outbox, mut inbox) = mpsc::unbounded_channel();
    let joined = {
        let mut hub = hub(&endpoint);
        hub.outboxes.insert(sid.clone(), outbox);
        let joined = hub.rooms.join(&claims.video.room, participant.clone(), || {
            signal::new_sid("RM_")
        });
        hub.deliver(joined.notices.clone());
        joined
    };
    let (mut session, join) = Session::join(
        &claims,
        &joined.room_sid,
        participant,
        joined.others,
        now_secs,
    );
    endpoint.stats.joined.fetch_add(1, Relaxed);
    tracing::info!(
        room = session.room_name(),
        identity = %claims.sub,
        participant = sid,
        "livekit client joined"
    );
    let (control, mut media_inbox) = mpsc::unbounded_channel();
    let (data, mut data_inbox) = mpsc::channel(DATA_QUEUE);
    let calls = session.calls();
    if let Some(media) = &endpoint.media {
        media.register(&calls, &SessionInbox { control, data });
    }
    if send(&mut socket, &join).await {
        let started = match &endpoint.media {
            Some(media) => media.send(vec![session.start_media()]).await,
            None => true,
        };
        if started {
            let mut inboxes = Inboxes {
                notices: &mut inbox,
                media: &mut media_inbox,
                data: &mut data_inbox,
            };
            converse(&mut socket, &mut session, &mut inboxes, &endpoint).await;
        }
    }
    if let Some(media) = &endpoint.media {
        media.unregister(&calls);
        media.send(session.end_media("left")).await;
    }
    let mut hub = hub(&endpoint);
    hub.outboxes.remove(&sid);
    let notices = hub.rooms.leave(&claims.video.room, &sid);
    hub.deliver(notices);
    drop(hub);
    tracing::info!(participant = sid, "livekit client left");
}

/// What a session is told besides its client's requests.
struct Inboxes<'a> {
    /// Others' joins, leaves and changes.
    notices: &'a mut mpsc::UnboundedReceiver<SignalResponse>,
    /// The media plane's answers, offers, candidates and hangups for its calls.
    media: &'a mut mpsc::UnboundedReceiver<FromMedia>,
    /// Its client's data packets, from the media plane.
    data: &'a mut mpsc::Receiver<FromMedia>,
}

/// Sends `response` to the client within [`SEND_TIMEOUT`]; false when the connection failed or
/// the client did not take it in time.
async fn send(socket: &mut WebSocket, response: &SignalResponse) -> bool {
    let message = Message::Binary(response.encode_to_vec().into());
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await,
        Ok(Ok(()))
    )
}

/// Requests in, responses out, and what others' joins and leaves and the media plane tell this
/// participant, until the client leaves, closes, is silent for the ping timeout, is replaced,
/// or the media plane ends one of its connections.
async fn converse(
    socket: &mut WebSocket,
    session: &mut Session,
    inboxes: &mut Inboxes<'_>,
    endpoint: &Endpoint,
) {
    let silence = Duration::from_secs(PING_TIMEOUT_SECS.unsigned_abs().into());
    loop {
        let received = tokio::select! {
            received = tokio::time::timeout(silence, socket.recv()) => Some(Ok(received)),
            message = inboxes.data.recv() => message.map(Err),
            message = inboxes.media.recv() => message.map(Err),
            notice = inboxes.notices.recv() => {
                let Some(notice) = notice else { return };
                let replaced = matches!(
                    notice.message,
                    Some(livekit_protocol::signal_response::Message::Leave(_))
                );
                if !send(socket, &notice).await || replaced {
                    return;
                }
                continue;
            }
        };
        let received = match received {
            // A message of the media plane for this session's calls.
            Some(Err(from_media)) => {
                let outcome = session.on_media(from_media);
                if !conclude(socket, session, outcome, endpoint).await {
                    return;
                }
                continue;
            }
            Some(Ok(received)) => received,
            None => return,
        };
        let message = match received {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(_)) | None) => return,
            Err(_) => {
                tracing::info!(
                    participant = session.participant_sid(),
                    "livekit client silent; closing"
                );
                return;
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
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        let outcome = session.on_request(request, unix_ms());
        if !conclude(socket, session, outcome, endpoint).await {
            return;
        }
    }
}

/// Acts on what a request or a media-plane message led to: counts it, tells the room and the
/// media plane, sends the responses; false when the session is over.
async fn conclude(
    socket: &mut WebSocket,
    session: &Session,
    mut outcome: signal::Outcome,
    endpoint: &Endpoint,
) -> bool {
    if !outcome.to_media.is_empty() {
        match &endpoint.media {
            Some(media) => {
                if !media.send(std::mem::take(&mut outcome.to_media)).await {
                    return false;
                }
            }
            None => outcome.unsupported = outcome.unsupported.or(Some("media")),
        }
    }
    if let Some(name) = outcome.unsupported {
        endpoint.stats.unsupported.fetch_add(1, Relaxed);
        tracing::debug!(request = name, "signal request not handled yet");
    }
    if let Some(why) = outcome.refused {
        endpoint.stats.refused_requests.fetch_add(1, Relaxed);
        tracing::debug!(why, "signal request refused");
    }
    if let Some(data) = outcome.data.take()
        && let Some(media) = &endpoint.media
    {
        let room = session.room_name();
        let to: Vec<CallKey> = hub(endpoint)
            .rooms
            .recipients(room, session.participant_sid(), &data.relay.to)
            .iter()
            .map(|(identity, sid)| call_of(room, identity, sid, Target::Subscriber))
            .collect();
        endpoint.stats.data_relayed.fetch_add(1, Relaxed);
        if !to.is_empty() {
            let relayed = ToMedia::Data {
                call: data.call,
                conf_id: crate::transport::CONF_ID.to_owned(),
                room_id: Some(room.to_owned()),
                to,
                reliable: data.reliable,
                payload: data.relay.payload,
            };
            if !media.send(vec![relayed]).await {
                return false;
            }
        }
    }
    if outcome.changed {
        let mut hub = hub(endpoint);
        let notices = hub
            .rooms
            .update(session.room_name(), session.participant().clone());
        hub.deliver(notices);
    }
    for response in outcome.responses {
        if !send(socket, &response).await {
            return false;
        }
    }
    !outcome.leave
}
