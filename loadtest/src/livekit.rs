//! The same load through the focus's LiveKit endpoint (issue 12): the simulated devices
//! ([`cascade_simclient::peer::SimPeer`]) join one LiveKit room as LiveKit clients instead of
//! calling the focus over Matrix.
//!
//! How a simulated client speaks the protocol: it signs its own access token (HS256, the
//! run's API key and secret, see [`cascade_livekit::token`]) and opens the WebSocket
//! `/rtc?access_token=…`, where binary protobuf `SignalRequest`s go out and `SignalResponse`s
//! come in; the first is the `JoinResponse`, naming its participant sid and the ping interval.
//! It has two peer connections, each a `SimPeer` on its own socket. A publishing client
//! announces each of its tracks with `AddTrackRequest` (the `cid` is the track id its offer's
//! msid carries, video with the simulcast layers it sends), waits for every
//! `TrackPublishedResponse`, then offers its publisher connection (`offer`, numbered) and
//! applies the `answer` that names that number. Every client answers each server `offer` (its
//! subscriber connection, which the focus offers right after the join and again whenever what
//! the client receives changes) with an `answer` carrying the offer's number. Candidates are
//! trickled both ways (`TrickleRequest`: the connection as `target`, the candidate as
//! `RTCIceCandidateInit` JSON); one that arrives before its connection's remote description
//! waits for it. `ping_req` goes out at the interval the `JoinResponse` asks for (the focus
//! gives a silent client up after its ping timeout), and `leave` at the end.
//!
//! The focus subscribes every client to every track of the room by itself; a subscriber that
//! watches only some videos (a `K@WxH` layout) takes the others out with `UpdateSubscription`
//! once an offer brings them, and asks for its render height with `UpdateTrackSettings`.

use crate::preset::Scenario;
use crate::procstat::{self, ProcSample};
use crate::stats::Totals;
use anyhow::{Context, Result, bail};
use cascade_livekit::token::{self, Claims};
use cascade_protocol::Candidate;
use cascade_simclient::MediaKind;
use cascade_simclient::peer::{PeerOptions, SIMULCAST_LAYERS, SimPeer};
use cascade_simclient::report::Receiving;
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use proto::signal_request::Message as Request;
use proto::signal_response::Message as Response;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// How long the focus may take to send the `JoinResponse` after the WebSocket opens.
const JOIN_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one device may take from opening its WebSocket to connected peer connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long leaving may take at the end of a run, for all devices together.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Joins in flight at once.
const MAX_CONCURRENT_JOINS: usize = 8;
/// Seconds a device's access token is valid for.
const TOKEN_TTL_SECS: u64 = 3600;
/// Ping interval when the `JoinResponse` names none, seconds.
const DEFAULT_PING_INTERVAL_SECS: u64 = 5;
/// matrix-js-sdk's camera layers, as the cascade target's simulcast publishers send them:
/// q 180p 120 kb/s, h 360p 300 kb/s, f 720p 1.7 Mb/s.
const SIMULCAST_BITRATES_BPS: [u32; 3] = [120_000, 300_000, 1_700_000];

/// The WebSocket to the focus's LiveKit endpoint.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The focus's LiveKit endpoint a run drives, and the focus process behind it.
#[derive(Clone, Debug)]
pub struct LiveKitTarget {
    /// The endpoint's base URL (`ws://127.0.0.1:<port>`).
    pub url: String,
    /// The API key the focus's `[livekit]` section names (the tokens' issuer).
    pub api_key: String,
    /// The HS256 secret the focus verifies tokens with.
    pub api_secret: String,
    /// The focus's process id, for its CPU time.
    pub focus_pid: u32,
}

impl LiveKitTarget {
    /// An endpoint on 127.0.0.1:`port` with a fresh random API key and secret, for a focus
    /// started with [`LiveKitTarget::focus_env`] (its pid is set once it runs).
    pub fn local(port: u16) -> Self {
        Self {
            url: format!("ws://127.0.0.1:{port}"),
            api_key: format!("loadtest-{}", cascade_simclient::random_id(8)),
            api_secret: cascade_simclient::random_id(40),
            focus_pid: 0,
        }
    }

    /// The environment that turns the focus's `[livekit]` section on for this endpoint (the
    /// listener on the URL's address).
    pub fn focus_env(&self) -> Vec<(String, String)> {
        let listen = self.url.trim_start_matches("ws://").to_owned();
        [
            ("CASCADE_LIVEKIT__ENABLED", "true".to_owned()),
            ("CASCADE_LIVEKIT__LISTEN", listen),
            ("CASCADE_LIVEKIT__URL", self.url.clone()),
            ("CASCADE_LIVEKIT__API_KEY", self.api_key.clone()),
            ("CASCADE_LIVEKIT__API_SECRET", self.api_secret.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// A token for `identity` to join `room`, publishing, and subscribing when `subscribe`.
    fn token(&self, identity: &str, room: &str, subscribe: bool) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = Claims::join(&self.api_key, identity, room, now, TOKEN_TTL_SECS);
        claims.video.can_subscribe = subscribe;
        token::sign(&claims, &self.api_secret).context("signing an access token")
    }
}

/// The part a device plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Publishes a camera and a microphone.
    VideoPublisher,
    /// Publishes a microphone.
    AudioPublisher,
    /// Publishes nothing.
    Subscriber,
}

/// What one device is and does.
#[derive(Clone, Debug)]
struct Plan {
    identity: String,
    role: Role,
    /// Whether its token lets it receive (subscribers, and publishers in a meeting).
    subscribe: bool,
    video_bitrate_bps: u32,
    simulcast: bool,
    /// The render height it asks for each video it receives.
    render_height: Option<u32>,
    /// The identities whose video it watches (`None`: everyone's).
    watched: Option<HashSet<String>>,
}

/// What a device's task and its handle share.
#[derive(Debug, Default)]
struct Shared {
    /// Its published tracks: sid and kind.
    tracks: Vec<(String, MediaKind)>,
    publisher_connected: bool,
    subscriber_connected: bool,
    /// Subscriber offers answered.
    offers_answered: u64,
    /// Why the session ended, if it did.
    ended: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A simulated LiveKit client: its session runs in a task of its own until the run stops it.
pub struct LiveKitDevice {
    identity: String,
    role: Role,
    plan: Plan,
    shared: Arc<Mutex<Shared>>,
    /// What its subscriber connection received.
    receiving: Arc<Mutex<Receiving>>,
    /// Its publisher connection's accounting (what it sent).
    sending: Option<Arc<Mutex<Receiving>>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for LiveKitDevice {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl LiveKitDevice {
    /// Whether its connections are up: the subscriber connection, and the publisher
    /// connection if it publishes.
    pub fn is_connected(&self) -> bool {
        let shared = lock(&self.shared);
        shared.subscriber_connected && (self.role == Role::Subscriber || shared.publisher_connected)
    }

    /// Why its session ended, if it did.
    pub fn ended(&self) -> Option<String> {
        lock(&self.shared).ended.clone()
    }

    /// Its identity (the token's `sub`).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether it receives anything.
    fn watches(&self) -> bool {
        self.plan.subscribe
    }

    /// Whether it is meant to receive the track of kind `kind` that `publisher` publishes.
    fn expects(&self, publisher: &LiveKitDevice, kind: MediaKind) -> bool {
        self.watches()
            && publisher.identity != self.identity
            && publisher.role != Role::Subscriber
            && (kind == MediaKind::Audio
                || self
                    .plan
                    .watched
                    .as_ref()
                    .is_none_or(|w| w.contains(&publisher.identity)))
    }

    /// Packets it sent on its publisher connection so far.
    fn sent_packets(&self) -> u64 {
        self.sending.as_ref().map_or(0, |s| {
            let s = lock(s);
            s.sent_audio_packets + s.sent_video_packets
        })
    }
}

/// Starts `plan`'s device in `room` and waits until its connections are up (or fails).
async fn join(
    target: &LiveKitTarget,
    room: &str,
    plan: Plan,
    stop: watch::Receiver<bool>,
) -> Result<LiveKitDevice> {
    let name = plan.identity.clone();
    let jwt = target.token(&plan.identity, room, plan.subscribe)?;
    let url = format!(
        "{}/rtc?access_token={jwt}&protocol={}&sdk=rust&auto_subscribe=1",
        target.url,
        cascade_livekit::signal::PROTOCOL_VERSION
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|err| match err {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                anyhow::anyhow!("{name}: the endpoint refused: {}", response.status())
            }
            other => anyhow::anyhow!("{name}: connecting the WebSocket: {other}"),
        })?;
    let join = tokio::time::timeout(JOIN_RESPONSE_TIMEOUT, join_response(&mut ws))
        .await
        .with_context(|| format!("{name}: no JoinResponse within {JOIN_RESPONSE_TIMEOUT:?}"))?
        .with_context(|| format!("{name}: joining"))?;
    let participant_sid = join
        .participant
        .as_ref()
        .map(|p| p.sid.clone())
        .context("a JoinResponse without a participant")?;
    let ping_every = u64::try_from(join.ping_interval)
        .ok()
        .filter(|s| (1..=60).contains(s))
        .unwrap_or(DEFAULT_PING_INTERVAL_SECS);

    let publishes = plan.role != Role::Subscriber;
    let publisher = if publishes {
        let mut opts = PeerOptions::new(&plan.identity, &plan.identity);
        opts.publish_video = plan.role == Role::VideoPublisher;
        opts.video_bitrate_bps = plan.video_bitrate_bps;
        opts.create_data_channel = false;
        if plan.simulcast && plan.role == Role::VideoPublisher {
            opts.simulcast = true;
            opts.simulcast_bitrates_bps = SIMULCAST_BITRATES_BPS;
        }
        Some(SimPeer::bind(opts).await?)
    } else {
        None
    };
    let mut opts = PeerOptions::new(&plan.identity, &plan.identity);
    opts.publish_audio = false;
    opts.publish_video = false;
    opts.create_data_channel = false;
    let subscriber = SimPeer::bind(opts).await?;

    let shared = Arc::new(Mutex::new(Shared::default()));
    let receiving = subscriber.receiving();
    let sending = publisher.as_ref().map(SimPeer::receiving);
    let mut session = Session {
        ws,
        publisher,
        subscriber,
        shared: shared.clone(),
        plan: plan.clone(),
        participant_sid,
        cids: Vec::new(),
        offer_id: 0,
        offered: false,
        pending: [Vec::new(), Vec::new()],
        subscriber_trickled: false,
        participants: HashMap::new(),
        settled_tracks: HashSet::new(),
    };
    session.learn_participants(&join.other_participants);
    let task = tokio::spawn(async move {
        let why = session
            .run(Duration::from_secs(ping_every), stop)
            .await
            .err()
            .map_or_else(|| "left".to_owned(), |err| format!("{err:#}"));
        tracing::debug!(
            identity = session.plan.identity,
            why,
            "livekit session ended"
        );
        lock(&session.shared).ended = Some(why);
    });
    let device = LiveKitDevice {
        identity: plan.identity.clone(),
        role: plan.role,
        plan,
        shared,
        receiving,
        sending,
        task: Some(task),
    };
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if device.is_connected() {
            return Ok(device);
        }
        if let Some(why) = device.ended() {
            bail!("{name}: the session ended before connecting: {why}");
        }
        if Instant::now() > deadline {
            bail!("{name}: not connected within {CONNECT_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the first signal response, which must be the `JoinResponse`.
async fn join_response(ws: &mut Socket) -> Result<proto::JoinResponse> {
    loop {
        let message = match ws.next().await {
            Some(Ok(message)) => message,
            Some(Err(err)) => bail!("the WebSocket failed: {err}"),
            None => bail!("the endpoint closed the WebSocket"),
        };
        let Message::Binary(bytes) = message else {
            continue;
        };
        let response = proto::SignalResponse::decode(bytes).context("an undecodable response")?;
        return match response.message {
            Some(Response::Join(join)) => Ok(join),
            other => bail!("the first response is not a JoinResponse: {other:?}"),
        };
    }
}

/// Which connection a candidate belongs to, as an index into [`Session::pending`].
const PUBLISHER: usize = 0;
const SUBSCRIBER: usize = 1;

/// One device's signalling session and its two peer connections, driven by one task.
struct Session {
    ws: Socket,
    publisher: Option<SimPeer>,
    subscriber: SimPeer,
    shared: Arc<Mutex<Shared>>,
    plan: Plan,
    participant_sid: String,
    /// The `cid`s announced with `add_track` and not yet published.
    cids: Vec<String>,
    /// The number of the latest publisher offer.
    offer_id: u32,
    /// Whether the publisher connection was offered.
    offered: bool,
    /// Candidates waiting for their connection's remote description: publisher's, subscriber's.
    pending: [Vec<Candidate>; 2],
    /// Whether the subscriber connection's candidate went out.
    subscriber_trickled: bool,
    /// The room's other participants: sid to identity.
    participants: HashMap<String, String>,
    /// Received tracks already unsubscribed or given a render height.
    settled_tracks: HashSet<String>,
}

/// Waits on `peer` if there is one, else forever.
async fn wait_on(peer: &mut Option<SimPeer>) {
    match peer {
        Some(peer) => peer.wait().await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// Announces the tracks, then converses until `stop` (or an error, or the endpoint ending
    /// the session); leaves and closes both connections.
    async fn run(&mut self, ping_every: Duration, mut stop: watch::Receiver<bool>) -> Result<()> {
        self.announce_tracks().await?;
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                message = self.ws.next() => {
                    let message = match message {
                        Some(Ok(message)) => message,
                        Some(Err(err)) => break Err(anyhow::anyhow!("the WebSocket failed: {err}")),
                        None => break Err(anyhow::anyhow!("the endpoint closed the WebSocket")),
                    };
                    match message {
                        Message::Binary(bytes) => match proto::SignalResponse::decode(bytes) {
                            Ok(response) => {
                                if let Err(err) = self.on_response(response).await {
                                    break Err(err);
                                }
                            }
                            Err(err) => tracing::debug!(%err, "an undecodable signal response"),
                        },
                        Message::Close(_) => break Err(anyhow::anyhow!("the endpoint closed the session")),
                        _ => {}
                    }
                }
                _ = ping.tick() => {
                    let timestamp = i64::try_from(cascade_simclient::synth::now_us() / 1000).unwrap_or(i64::MAX);
                    if let Err(err) = self.send(Request::PingReq(proto::Ping { timestamp, rtt: 0 })).await {
                        break Err(err);
                    }
                }
                _ = wait_on(&mut self.publisher) => {}
                _ = self.subscriber.wait() => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break Ok(());
                    }
                }
            }
            self.drive().await;
        };
        let _ = self
            .send(Request::Leave(proto::LeaveRequest::default()))
            .await;
        let _ = self.ws.close(None).await;
        for peer in self.publisher.iter_mut().chain([&mut self.subscriber]) {
            peer.close();
            peer.flush().await;
        }
        outcome
    }

    /// Runs both peer connections' timers and media, and notes when they connect.
    async fn drive(&mut self) {
        for peer in self.publisher.iter_mut().chain([&mut self.subscriber]) {
            peer.process();
            peer.flush().await;
            while peer.poll_event().is_some() {}
        }
        let mut shared = lock(&self.shared);
        if self.subscriber.is_connected() {
            shared.subscriber_connected = true;
        }
        if self.publisher.as_ref().is_some_and(SimPeer::is_connected) {
            shared.publisher_connected = true;
        }
    }

    async fn send(&mut self, message: Request) -> Result<()> {
        let request = proto::SignalRequest {
            message: Some(message),
        };
        self.ws
            .send(Message::Binary(request.encode_to_vec().into()))
            .await
            .context("sending a signal request")
    }

    /// `add_track` for each track of the publisher connection.
    async fn announce_tracks(&mut self) -> Result<()> {
        let tracks = self
            .publisher
            .as_ref()
            .map(SimPeer::local_tracks)
            .unwrap_or_default();
        for (cid, kind) in tracks {
            self.cids.push(cid.clone());
            let request = add_track(&cid, kind, &self.plan);
            self.send(Request::AddTrack(request)).await?;
        }
        Ok(())
    }

    async fn on_response(&mut self, response: proto::SignalResponse) -> Result<()> {
        match response.message {
            Some(Response::TrackPublished(published)) => {
                let before = self.cids.len();
                self.cids.retain(|c| *c != published.cid);
                if let Some(track) = published.track
                    && self.cids.len() < before
                {
                    let kind = if track.r#type == proto::TrackType::Video as i32 {
                        MediaKind::Video
                    } else {
                        MediaKind::Audio
                    };
                    lock(&self.shared).tracks.push((track.sid, kind));
                }
                if self.cids.is_empty() && !self.offered {
                    self.offer_publisher().await?;
                }
            }
            Some(Response::Answer(answer)) => {
                if answer.id != 0 && answer.id != self.offer_id {
                    tracing::debug!(id = answer.id, "an answer to an older offer");
                    return Ok(());
                }
                let Some(publisher) = &mut self.publisher else {
                    return Ok(());
                };
                publisher
                    .accept_answer(&answer.sdp)
                    .context("applying the publisher answer")?;
                for candidate in std::mem::take(&mut self.pending[PUBLISHER]) {
                    add_candidate(publisher, &candidate);
                }
            }
            Some(Response::Offer(offer)) => self.answer_subscriber(offer).await?,
            Some(Response::Trickle(trickle)) => {
                let Ok(candidate) = serde_json::from_str::<Candidate>(&trickle.candidate_init)
                else {
                    tracing::debug!(init = trickle.candidate_init, "an unreadable candidate");
                    return Ok(());
                };
                let (index, peer) = if trickle.target == proto::SignalTarget::Subscriber as i32 {
                    (SUBSCRIBER, Some(&mut self.subscriber))
                } else {
                    (PUBLISHER, self.publisher.as_mut())
                };
                match peer {
                    Some(peer) if peer.has_remote_description() => add_candidate(peer, &candidate),
                    Some(_) => self.pending[index].push(candidate),
                    None => {}
                }
            }
            Some(Response::Update(update)) => self.learn_participants(&update.participants),
            Some(Response::Leave(leave)) => bail!("the endpoint asked to leave: {leave:?}"),
            _ => {}
        }
        Ok(())
    }

    /// Offers the publisher connection (numbered) and trickles its candidate.
    async fn offer_publisher(&mut self) -> Result<()> {
        let Some(publisher) = &mut self.publisher else {
            return Ok(());
        };
        let sdp = publisher.create_offer()?;
        let candidates = publisher.local_candidates();
        self.offer_id += 1;
        self.offered = true;
        self.send(Request::Offer(proto::SessionDescription {
            r#type: "offer".to_owned(),
            sdp,
            id: self.offer_id,
            ..Default::default()
        }))
        .await?;
        self.trickle(&candidates, proto::SignalTarget::Publisher)
            .await
    }

    /// Answers a subscriber offer with its number, trickles the connection's candidate the
    /// first time, and settles the tracks the offer brings.
    async fn answer_subscriber(&mut self, offer: proto::SessionDescription) -> Result<()> {
        let sdp = self
            .subscriber
            .accept_offer(&offer.sdp)
            .context("applying a subscriber offer")?;
        self.send(Request::Answer(proto::SessionDescription {
            r#type: "answer".to_owned(),
            sdp,
            id: offer.id,
            ..Default::default()
        }))
        .await?;
        lock(&self.shared).offers_answered += 1;
        for candidate in std::mem::take(&mut self.pending[SUBSCRIBER]) {
            add_candidate(&mut self.subscriber, &candidate);
        }
        if !self.subscriber_trickled {
            self.subscriber_trickled = true;
            let candidates = self.subscriber.local_candidates();
            self.trickle(&candidates, proto::SignalTarget::Subscriber)
                .await?;
        }
        self.settle_tracks(&offer.sdp).await
    }

    async fn trickle(
        &mut self,
        candidates: &[Candidate],
        target: proto::SignalTarget,
    ) -> Result<()> {
        for candidate in candidates.iter().filter(|c| !c.is_end()) {
            let candidate_init = serde_json::to_string(candidate)?;
            self.send(Request::Trickle(proto::TrickleRequest {
                candidate_init,
                target: target as i32,
                r#final: false,
            }))
            .await?;
        }
        Ok(())
    }

    /// Notes who the others in the room are (their sids name the tracks offered).
    fn learn_participants(&mut self, participants: &[proto::ParticipantInfo]) {
        for p in participants
            .iter()
            .filter(|p| p.sid != self.participant_sid)
        {
            self.participants.insert(p.sid.clone(), p.identity.clone());
        }
    }

    /// For each video track `sdp` offers for the first time: out with `UpdateSubscription`
    /// if its publisher is not watched, else the render height with `UpdateTrackSettings`.
    async fn settle_tracks(&mut self, sdp: &str) -> Result<()> {
        for (participant_sid, track_sid, kind) in offered_tracks(sdp) {
            if kind != MediaKind::Video || !self.settled_tracks.insert(track_sid.clone()) {
                continue;
            }
            let identity = self.participants.get(&participant_sid);
            let watched = match (&self.plan.watched, identity) {
                (None, _) => true,
                (Some(watched), Some(identity)) => watched.contains(identity),
                // A publisher not yet known is kept: better a video too many than one missing.
                (Some(_), None) => true,
            };
            if !watched {
                self.send(Request::Subscription(proto::UpdateSubscription {
                    track_sids: vec![track_sid],
                    subscribe: false,
                    participant_tracks: Vec::new(),
                }))
                .await?;
            } else if let Some(height) = self.plan.render_height {
                self.send(Request::TrackSetting(proto::UpdateTrackSettings {
                    track_sids: vec![track_sid],
                    height,
                    quality: proto::VideoQuality::High as i32,
                    ..Default::default()
                }))
                .await?;
            }
        }
        Ok(())
    }
}

fn add_candidate(peer: &mut SimPeer, candidate: &Candidate) {
    if let Err(err) = peer.add_remote_candidate(candidate) {
        tracing::debug!(%err, candidate = candidate.candidate, "a candidate refused");
    }
}

/// The `add_track` request for the publisher connection's track `cid` of `kind`: a camera
/// (with its simulcast layers when the plan sends them) or a microphone.
fn add_track(cid: &str, kind: MediaKind, plan: &Plan) -> proto::AddTrackRequest {
    let (r#type, source, name) = match kind {
        MediaKind::Audio => (
            proto::TrackType::Audio,
            proto::TrackSource::Microphone,
            "microphone",
        ),
        MediaKind::Video => (
            proto::TrackType::Video,
            proto::TrackSource::Camera,
            "camera",
        ),
    };
    let mut request = proto::AddTrackRequest {
        cid: cid.to_owned(),
        name: name.to_owned(),
        r#type: r#type as i32,
        source: source as i32,
        ..Default::default()
    };
    if kind == MediaKind::Video {
        let (_, width, height) = SIMULCAST_LAYERS[SIMULCAST_LAYERS.len() - 1];
        request.width = u32::from(width);
        request.height = u32::from(height);
        request.layers = if plan.simulcast {
            let qualities = [
                proto::VideoQuality::Low,
                proto::VideoQuality::Medium,
                proto::VideoQuality::High,
            ];
            SIMULCAST_LAYERS
                .iter()
                .zip(SIMULCAST_BITRATES_BPS)
                .zip(qualities)
                .map(
                    |((&(rid, width, height), bitrate), quality)| proto::VideoLayer {
                        quality: quality as i32,
                        width: u32::from(width),
                        height: u32::from(height),
                        bitrate,
                        rid: rid.to_owned(),
                        ..Default::default()
                    },
                )
                .collect()
        } else {
            vec![proto::VideoLayer {
                quality: proto::VideoQuality::High as i32,
                width: request.width,
                height: request.height,
                bitrate: plan.video_bitrate_bps,
                ..Default::default()
            }]
        };
    }
    request
}

/// The tracks an offer from the focus carries: participant sid, track sid and kind, from the
/// msid (`"<PA_sid>|<TR_sid>" "<TR_sid>"`) of each media section.
fn offered_tracks(sdp: &str) -> Vec<(String, String, MediaKind)> {
    let mut tracks = Vec::new();
    let mut kind = None;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(media) = line.strip_prefix("m=") {
            kind = match media.split(' ').next() {
                Some("audio") => Some(MediaKind::Audio),
                Some("video") => Some(MediaKind::Video),
                _ => None,
            };
        } else if let (Some(msid), Some(kind)) = (line.strip_prefix("a=msid:"), kind)
            && let Some((stream, track)) = msid.split_once(' ')
            && let Some((participant, _)) = stream.split_once('|')
        {
            let entry = (participant.to_owned(), track.trim().to_owned(), kind);
            if !tracks.contains(&entry) {
                tracks.push(entry);
            }
        }
    }
    tracks
}

/// How much one watcher received of one publisher's track.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Received {
    /// The receiving device's identity.
    pub watcher: String,
    /// The publishing device's identity.
    pub publisher: String,
    /// `audio` or `video`.
    pub kind: &'static str,
    /// Packets received on the track over the whole run.
    pub packets: u64,
}

/// What a run through the LiveKit endpoint measured.
#[derive(Clone, Debug, Serialize)]
pub struct LiveKitSummary {
    /// The scenario run.
    pub scenario: Scenario,
    /// Devices whose connections came up.
    pub joined: usize,
    /// Devices whose connections did not.
    pub failed: usize,
    /// The first few reasons joins failed or sessions ended early.
    pub errors: Vec<String>,
    /// Seconds of the measurement window.
    pub window_secs: f64,
    /// Packets received per second by all devices in the window.
    pub received_pps: f64,
    /// Audio packets received per second in the window.
    pub audio_pps: f64,
    /// Video packets received per second in the window.
    pub video_pps: f64,
    /// Packets the publishers sent over the whole run.
    pub publisher_packets_sent: u64,
    /// Packets lost in the window, percent.
    pub loss_pct: f64,
    /// Payloads that failed verification over the whole run.
    pub corrupt_packets: u64,
    /// The focus's CPU time in the window, seconds.
    pub focus_cpu_seconds: f64,
    /// The focus's CPU use in the window, percent of one core.
    pub cpu_pct: f64,
    /// Packets received by the devices per focus CPU-second (the focus forwarded each).
    pub packets_per_cpu_second: f64,
    /// Per watcher and publisher track it is meant to receive, the packets that arrived.
    pub received: Vec<Received>,
    /// The kernel's plain UDP fan-out on this machine, if it was run.
    pub baseline: Option<crate::baseline::BaselineResult>,
    /// Packets per focus CPU-second as a fraction of the baseline's.
    pub focus_vs_kernel: Option<f64>,
}

impl LiveKitSummary {
    /// One line per watcher and publisher track that received nothing.
    pub fn missing(&self) -> Vec<String> {
        self.received
            .iter()
            .filter(|r| r.packets == 0)
            .map(|r| format!("{} got no {} from {}", r.watcher, r.kind, r.publisher))
            .collect()
    }

    /// Why the run does not count as media flowing, if it does not: a device that did not
    /// join, a track a watcher missed, loss of 1 % or more, or corrupt payloads.
    pub fn media_failure(&self) -> Option<String> {
        let missing = self.missing();
        if self.failed > 0 {
            Some(format!("{} devices did not join", self.failed))
        } else if !missing.is_empty() {
            Some(missing.join("; "))
        } else if self.loss_pct >= 1.0 {
            Some(format!("{:.2} % loss", self.loss_pct))
        } else if self.corrupt_packets > 0 {
            Some(format!("{} corrupt payloads", self.corrupt_packets))
        } else {
            None
        }
    }

    /// Records the baseline and the focus's fraction of it.
    pub fn set_baseline(&mut self, baseline: crate::baseline::BaselineResult) {
        self.focus_vs_kernel = (baseline.packets_per_cpu_second > 0.0
            && self.packets_per_cpu_second > 0.0)
            .then(|| self.packets_per_cpu_second / baseline.packets_per_cpu_second);
        self.baseline = Some(baseline);
    }
}

/// Totals of what the devices' subscriber connections received so far.
pub fn totals(devices: &[LiveKitDevice]) -> Totals {
    let mut totals = Totals::default();
    for device in devices {
        totals.add_receiving(&lock(&device.receiving));
    }
    totals
}

/// The plans of `scenario`'s devices, publishers first, with identities starting `prefix`.
fn plans(scenario: &Scenario, prefix: &str) -> Vec<Plan> {
    let render_height = (scenario.layout.height > 0).then_some(scenario.layout.height);
    let base = Plan {
        identity: String::new(),
        role: Role::Subscriber,
        subscribe: true,
        video_bitrate_bps: scenario.video_bitrate_bps,
        simulcast: scenario.simulcast,
        render_height,
        watched: None,
    };
    let mut plans = Vec::new();
    let roles = (0..scenario.video_publishers)
        .map(|i| (Role::VideoPublisher, format!("{prefix}-v{i}")))
        .chain(
            (0..scenario.audio_publishers)
                .map(|i| (Role::AudioPublisher, format!("{prefix}-a{i}"))),
        );
    for (role, identity) in roles {
        plans.push(Plan {
            identity,
            role,
            subscribe: scenario.publishers_subscribe,
            ..base.clone()
        });
    }
    let videos: Vec<(String, String)> = (0..scenario.video_publishers)
        .map(|i| (format!("{prefix}-v{i}"), String::new()))
        .collect();
    let lists = match scenario.layout.videos {
        Some(k) if (k as usize) < videos.len() => Some(crate::scenario::watch_lists(
            &videos,
            scenario.subscribers as usize,
            k as usize,
            scenario.seed,
        )),
        _ => None,
    };
    for i in 0..scenario.subscribers as usize {
        plans.push(Plan {
            identity: format!("{prefix}-s{i}"),
            watched: lists
                .as_ref()
                .and_then(|l| l.get(i))
                .map(|l| l.iter().map(|(identity, _)| identity.clone()).collect()),
            ..base.clone()
        });
    }
    plans
}

/// Runs `scenario`'s devices through `target` (every device in one new LiveKit room,
/// publishers first), measures a window of `scenario.duration` after `warmup`, and has every
/// device leave.
///
/// # Errors
///
/// When the scenario has several conferences (the LiveKit path runs one room), the focus is
/// not running, no device joined, or the focus's CPU time cannot be read.
pub async fn run(
    target: &LiveKitTarget,
    scenario: &Scenario,
    warmup: Duration,
) -> Result<LiveKitSummary> {
    if scenario.conferences > 1 {
        bail!("the LiveKit target runs one room: --conferences is for the cascade target");
    }
    procstat::check_alive(target.focus_pid)?;
    let prefix = format!("lt{}", scenario.seed);
    let room = format!("cascade-loadtest-{}", cascade_simclient::random_id(8));
    let (stop, stopped) = watch::channel(false);
    let mut devices: Vec<LiveKitDevice> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut failed = 0;
    let all = plans(scenario, &prefix);
    let publishers = all.iter().filter(|p| p.role != Role::Subscriber).count();
    let period = Duration::from_secs_f64(1.0 / scenario.join_rate.max(0.1));
    let mut pace = tokio::time::interval(period);
    // Publishers first, each connected before the next (their tracks are then in every
    // subscriber's first offers), then the subscribers a few at a time.
    let mut plans = all.into_iter();
    for plan in plans.by_ref().take(publishers) {
        pace.tick().await;
        match join(target, &room, plan, stopped.clone()).await {
            Ok(device) => devices.push(device),
            Err(err) => {
                tracing::warn!("livekit publisher: {err:#}");
                errors.push(format!("{err:#}"));
                failed += 1;
            }
        }
    }
    let mut joins = tokio::task::JoinSet::new();
    let mut pending = plans.peekable();
    while pending.peek().is_some() || !joins.is_empty() {
        while joins.len() < MAX_CONCURRENT_JOINS
            && let Some(plan) = pending.next()
        {
            pace.tick().await;
            let (target, room, stopped) = (target.clone(), room.clone(), stopped.clone());
            joins.spawn(async move { join(&target, &room, plan, stopped).await });
        }
        match joins.join_next().await {
            Some(Ok(Ok(device))) => devices.push(device),
            Some(Ok(Err(err))) => {
                tracing::warn!("livekit subscriber: {err:#}");
                errors.push(format!("{err:#}"));
                failed += 1;
            }
            Some(Err(err)) => {
                errors.push(format!("a join task: {err}"));
                failed += 1;
            }
            None => break,
        }
    }
    if devices.is_empty() {
        bail!(
            "no device joined the focus's LiveKit endpoint: {}",
            errors.join("; ")
        );
    }
    tokio::time::sleep(warmup).await;
    let (before, cpu_before) = (totals(&devices), procstat::sample(target.focus_pid));
    tokio::time::sleep(scenario.duration).await;
    let (after, cpu_after) = (totals(&devices), procstat::sample(target.focus_pid));
    let (cpu_before, cpu_after): (ProcSample, ProcSample) = (
        cpu_before.context("reading the focus's CPU time")?,
        cpu_after.context("reading the focus's CPU time")?,
    );
    // Sessions that ended while measuring count as failed too.
    for device in &devices {
        if let Some(why) = device.ended() {
            errors.push(format!("{}: the session ended: {why}", device.identity));
            failed += 1;
        }
    }
    let joined = devices.len() - devices.iter().filter(|d| d.ended().is_some()).count();
    let mut received = Vec::new();
    for watcher in devices.iter().filter(|d| d.watches()) {
        let receiving = lock(&watcher.receiving);
        for publisher in &devices {
            let tracks = lock(&publisher.shared).tracks.clone();
            for (sid, kind) in tracks {
                if !watcher.expects(publisher, kind) {
                    continue;
                }
                received.push(Received {
                    watcher: watcher.identity.clone(),
                    publisher: publisher.identity.clone(),
                    kind: kind.as_str(),
                    packets: receiving.tracks.get(&sid).map_or(0, |t| t.packets),
                });
            }
        }
    }
    let publisher_packets_sent = devices.iter().map(LiveKitDevice::sent_packets).sum();

    let _ = stop.send(true);
    let tasks: Vec<JoinHandle<()>> = devices.iter_mut().filter_map(|d| d.task.take()).collect();
    let leave = async {
        for task in tasks {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(LEAVE_TIMEOUT, leave).await.is_err() {
        tracing::warn!("devices did not leave within {LEAVE_TIMEOUT:?}");
    }

    let wall = cpu_after
        .at
        .duration_since(cpu_before.at)
        .as_secs_f64()
        .max(f64::EPSILON);
    let cpu = cpu_after.cpu_seconds - cpu_before.cpu_seconds;
    let packets = after.packets().saturating_sub(before.packets());
    let missing = after.missing.saturating_sub(before.missing);
    errors.truncate(5);
    Ok(LiveKitSummary {
        scenario: scenario.clone(),
        joined,
        failed,
        errors,
        window_secs: wall,
        received_pps: packets as f64 / wall,
        audio_pps: after.audio_packets.saturating_sub(before.audio_packets) as f64 / wall,
        video_pps: after.video_packets.saturating_sub(before.video_packets) as f64 / wall,
        publisher_packets_sent,
        loss_pct: if packets + missing == 0 {
            0.0
        } else {
            missing as f64 * 100.0 / (packets + missing) as f64
        },
        corrupt_packets: after.corrupt,
        focus_cpu_seconds: cpu,
        cpu_pct: cpu * 100.0 / wall,
        packets_per_cpu_second: if cpu > 0.0 { packets as f64 / cpu } else { 0.0 },
        received,
        baseline: None,
        focus_vs_kernel: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(simulcast: bool) -> Plan {
        Plan {
            identity: "v0".into(),
            role: Role::VideoPublisher,
            subscribe: false,
            video_bitrate_bps: 300_000,
            simulcast,
            render_height: None,
            watched: None,
        }
    }

    #[test]
    fn offered_tracks_are_read_from_their_msid() {
        let sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=msid:PA_a|TR_mic TR_mic\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=msid:PA_a|TR_cam TR_cam\r\n\
                   a=ssrc:5 msid:PA_a|TR_cam TR_cam\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                   a=mid:3\r\na=msid:stream-without-sid track\r\n";
        assert_eq!(
            offered_tracks(sdp),
            vec![
                ("PA_a".to_owned(), "TR_mic".to_owned(), MediaKind::Audio),
                ("PA_a".to_owned(), "TR_cam".to_owned(), MediaKind::Video),
            ]
        );
        assert!(offered_tracks("v=0\r\n").is_empty());
    }

    #[test]
    fn tracks_are_announced_with_their_cid_kind_and_layers() {
        let audio = add_track("audio-1", MediaKind::Audio, &plan(false));
        assert_eq!(audio.cid, "audio-1");
        assert_eq!(audio.r#type, proto::TrackType::Audio as i32);
        assert_eq!(audio.source, proto::TrackSource::Microphone as i32);
        assert!(audio.layers.is_empty());
        let single = add_track("video-1", MediaKind::Video, &plan(false));
        assert_eq!(single.r#type, proto::TrackType::Video as i32);
        assert_eq!(single.layers.len(), 1);
        assert_eq!(single.layers[0].bitrate, 300_000);
        let simulcast = add_track("video-1", MediaKind::Video, &plan(true));
        let rids: Vec<(&str, u32)> = simulcast
            .layers
            .iter()
            .map(|l| (l.rid.as_str(), l.height))
            .collect();
        assert_eq!(rids, vec![("q", 180), ("h", 360), ("f", 720)]);
        assert_eq!((simulcast.width, simulcast.height), (1280, 720));
    }

    #[test]
    fn plans_put_publishers_first_and_follow_the_layout() {
        let mut scenario = Scenario {
            video_publishers: 3,
            audio_publishers: 1,
            subscribers: 4,
            ..Scenario::default()
        };
        let all = plans(&scenario, "p");
        let names: Vec<&str> = all.iter().map(|p| p.identity.as_str()).collect();
        assert_eq!(
            names,
            [
                "p-v0", "p-v1", "p-v2", "p-a0", "p-s0", "p-s1", "p-s2", "p-s3"
            ]
        );
        assert!(all[..4].iter().all(|p| !p.subscribe), "a broadcast");
        assert!(all[4..].iter().all(|p| p.subscribe && p.watched.is_none()));
        scenario.layout = crate::preset::Layout::parse("2@320x180").expect("a layout");
        scenario.publishers_subscribe = true;
        let some = plans(&scenario, "p");
        assert!(some[..4].iter().all(|p| p.subscribe), "a meeting");
        for subscriber in &some[4..] {
            let watched = subscriber.watched.as_ref().expect("a watch list");
            assert_eq!(watched.len(), 2);
            assert!(watched.iter().all(|w| w.starts_with("p-v")));
            assert_eq!(subscriber.render_height, Some(180));
        }
    }

    #[test]
    fn the_focus_env_turns_the_endpoint_on_at_its_address() {
        let target = LiveKitTarget::local(7999);
        let env: HashMap<String, String> = target.focus_env().into_iter().collect();
        assert_eq!(env["CASCADE_LIVEKIT__ENABLED"], "true");
        assert_eq!(env["CASCADE_LIVEKIT__LISTEN"], "127.0.0.1:7999");
        assert_eq!(env["CASCADE_LIVEKIT__URL"], "ws://127.0.0.1:7999");
        assert!(env["CASCADE_LIVEKIT__API_SECRET"].len() >= 32);
        let jwt = target.token("p-s0", "room", false).expect("a token");
        let claims = token::verify(&jwt, &target.api_key, &target.api_secret).expect("it verifies");
        assert_eq!(
            (claims.sub.as_str(), claims.video.room.as_str()),
            ("p-s0", "room")
        );
        assert!(!claims.video.can_subscribe && claims.video.can_publish);
    }

    #[test]
    fn a_summary_fails_on_a_missing_track_loss_or_a_failed_join() {
        let mut summary = LiveKitSummary {
            scenario: Scenario::default(),
            joined: 2,
            failed: 0,
            errors: Vec::new(),
            window_secs: 10.0,
            received_pps: 100.0,
            audio_pps: 50.0,
            video_pps: 50.0,
            publisher_packets_sent: 1000,
            loss_pct: 0.0,
            corrupt_packets: 0,
            focus_cpu_seconds: 1.0,
            cpu_pct: 10.0,
            packets_per_cpu_second: 1000.0,
            received: vec![Received {
                watcher: "s0".into(),
                publisher: "v0".into(),
                kind: "video",
                packets: 10,
            }],
            baseline: None,
            focus_vs_kernel: None,
        };
        assert_eq!(summary.media_failure(), None);
        summary.received[0].packets = 0;
        assert_eq!(summary.missing(), ["s0 got no video from v0"]);
        assert!(summary.media_failure().is_some());
        summary.received[0].packets = 10;
        summary.loss_pct = 1.5;
        assert!(summary.media_failure().is_some());
        summary.loss_pct = 0.0;
        summary.failed = 1;
        assert!(summary.media_failure().is_some());
    }
}
