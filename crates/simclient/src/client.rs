//! `SimClient`: a simulated device in a conference, as one tokio task driving a [`SimPeer`], a
//! to-device `/sync` loop and the data-channel protocol with the focus.

use crate::olm::OlmDevice;
use crate::peer::{PeerEvent, PeerOptions, SimPeer, lock};
use crate::report::{self, Receiving, Report};
use crate::signalling::{self, CallSignaller, TO_DEVICE_ONLY_FILTER};
use crate::synth::{self, MediaKind};
use anyhow::{Context, Result, bail};
use cascade_protocol::datachannel::{
    DataChannelMessage, Empty, Hangup, Negotiate, TrackRequest, TrackSubscription,
};
use cascade_protocol::event::{SessionDescription, reason};
use cascade_protocol::{CallEvent, CallEventKind, Candidate, SdpStreamMetadata};
use cascade_signalling::MatrixClient;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How often the wait helpers look at the shared state.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Server-side timeout of each `/sync` long poll.
const SYNC_TIMEOUT_MS: u64 = 10_000;
/// Pause after a failed `/sync` before the next.
const SYNC_RETRY: Duration = Duration::from_secs(1);

/// Which of the streams the focus offers the client subscribes to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SubscribePolicy {
    /// Every track of every stream that is not our own.
    #[default]
    All,
    /// Nothing.
    None,
    /// Every track of these publishers `(user_id, device_id)` only.
    Publishers(Vec<(String, String)>),
}

/// How a [`SimClient`] joins the conference and what it publishes.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The device's logged-in Matrix session (one `SimClient` per device: its `/sync` consumes
    /// the device's to-device messages).
    pub matrix: MatrixClient,
    /// The room of the conference.
    pub room_id: String,
    /// The conference (state key of `m.call`).
    pub conf_id: String,
    /// The focus user.
    pub focus_user_id: String,
    /// The focus device.
    pub focus_device_id: String,
    /// Our session id (random by default).
    pub session_id: String,
    /// The session we address the focus as (`"sfu"`).
    pub dest_session_id: String,
    /// Publish an Opus track.
    pub publish_audio: bool,
    /// Publish a VP8 track.
    pub publish_video: bool,
    /// Target video bitrate.
    pub video_bitrate_bps: u32,
    /// Publish the video as three simulcast layers `q`, `h`, `f` (320x180, 640x360, 1280x720).
    pub simulcast: bool,
    /// Target bitrates of the simulcast layers `q`, `h`, `f`.
    pub simulcast_bitrates_bps: [u32; 3],
    /// Interval of periodic video keyframes (requested ones come on top).
    pub keyframe_interval: Duration,
    /// Test option: drop every Nth incoming RTP datagram before the peer connection sees it,
    /// so that its NACK generator asks for it again.
    pub drop_incoming_rtp: Option<u64>,
    /// Take the focus's answer as allowing data-channel messages of this many bytes, whatever
    /// its `a=max-message-size` says (a device that ignores the limit).
    pub claim_max_message_size: Option<u32>,
    /// What to subscribe to.
    pub subscribe: SubscribePolicy,
    /// Render size announced for subscribed video tracks (picks the simulcast layer).
    pub render_size: Option<(u32, u32)>,
    /// Invite lifetime in ms; the client gives up (`invite_timeout`) if unanswered by then.
    pub lifetime_ms: u64,
    /// Address to bind the UDP socket on.
    pub bind_ip: IpAddr,
    /// The client hangs up by itself after this long.
    pub max_duration: Duration,
    /// When set, the call's to-device events are Olm-encrypted to the focus with this device
    /// (and the focus's encrypted replies decrypted); `None` signals in plaintext.
    pub olm: Option<crate::olm::OlmDevice>,
}

impl SimConfig {
    /// A config publishing audio and video (300 kb/s), subscribing to everything, on 127.0.0.1,
    /// with a random session id.
    pub fn new(
        matrix: MatrixClient,
        room_id: &str,
        conf_id: &str,
        focus_user_id: &str,
        focus_device_id: &str,
    ) -> Self {
        Self {
            matrix,
            room_id: room_id.to_owned(),
            conf_id: conf_id.to_owned(),
            focus_user_id: focus_user_id.to_owned(),
            focus_device_id: focus_device_id.to_owned(),
            session_id: format!("sess-{}", crate::random_id(12)),
            dest_session_id: "sfu".to_owned(),
            publish_audio: true,
            publish_video: true,
            video_bitrate_bps: 300_000,
            simulcast: false,
            simulcast_bitrates_bps: [100_000, 200_000, 400_000],
            keyframe_interval: Duration::from_secs(3),
            drop_incoming_rtp: None,
            claim_max_message_size: None,
            subscribe: SubscribePolicy::All,
            render_size: None,
            lifetime_ms: 60_000,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            max_duration: Duration::from_secs(3600),
            olm: None,
        }
    }

    /// Publishes this device's `m.call.member` state for the conference.
    pub async fn publish_membership(&self) -> Result<()> {
        signalling::publish_membership(
            &self.matrix,
            &self.room_id,
            &self.conf_id,
            &self.session_id,
            &self.focus_user_id,
            &self.focus_device_id,
        )
        .await
    }
}

/// State the task shares with the handle.
#[derive(Debug)]
struct Shared {
    invite_sent_at: Instant,
    answered_at: Option<Instant>,
    offer_sdp: String,
    answer_sdp: Option<String>,
    answers: u64,
    connected_at: Option<Instant>,
    hangup_reason: Option<String>,
    error: Option<String>,
    finished: bool,
    available: SdpStreamMetadata,
    subscribed: BTreeSet<(String, String)>,
    dc_open: bool,
    pings: u64,
    negotiations: u64,
    active_speaker: Option<(String, String)>,
    subscribed_layers: BTreeMap<(String, String), Vec<String>>,
}

enum Command {
    Hangup(oneshot::Sender<()>),
    Policy(SubscribePolicy),
    VideoLayers(Vec<String>),
    RenderSize(u32, u32),
    RequestKeyframe,
    UnannouncedSsrcs(u32, u32, oneshot::Sender<u32>),
    ChannelText(String, oneshot::Sender<Result<()>>),
}

/// A simulated device in a call with the focus; dropping it aborts its task without hanging up.
pub struct SimClient {
    call_id: String,
    session_id: String,
    user_id: String,
    device_id: String,
    stream_id: String,
    local_tracks: Vec<(String, MediaKind)>,
    shared: Arc<Mutex<Shared>>,
    receiving: Arc<Mutex<Receiving>>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

impl Drop for SimClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type SyncBatch = (String, Vec<(String, Value)>);
type SyncFuture = Pin<Box<dyn Future<Output = Result<SyncBatch, String>> + Send>>;

fn sync_future(
    matrix: MatrixClient,
    since: String,
    delay: Duration,
    olm: Option<OlmDevice>,
) -> SyncFuture {
    Box::pin(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        matrix
            .sync(Some(&since), SYNC_TIMEOUT_MS, Some(TO_DEVICE_ONLY_FILTER))
            .await
            .map(|r| {
                let events = match &olm {
                    Some(olm) => olm.open_batch(
                        r.to_device
                            .into_iter()
                            .map(|e| (e.sender, e.event_type, e.content))
                            .collect(),
                    ),
                    None => r
                        .to_device
                        .into_iter()
                        .map(|e| (e.event_type, e.content))
                        .collect(),
                };
                (r.next_batch, events)
            })
            .map_err(|e| e.to_string())
    })
}

impl SimClient {
    /// Sets up the peer connection, sends the invite and candidates, and runs the call in a
    /// spawned task.
    pub async fn start(config: SimConfig) -> Result<SimClient> {
        let user_id = config.matrix.user_id().to_owned();
        let device_id = config.matrix.device_id().to_owned();
        let mut opts = PeerOptions::new(&user_id, &device_id);
        opts.bind_ip = config.bind_ip;
        opts.publish_audio = config.publish_audio;
        opts.publish_video = config.publish_video;
        opts.video_bitrate_bps = config.video_bitrate_bps;
        opts.simulcast = config.simulcast;
        opts.simulcast_bitrates_bps = config.simulcast_bitrates_bps;
        opts.keyframe_interval = config.keyframe_interval;
        opts.drop_incoming_rtp = config.drop_incoming_rtp;
        opts.claim_max_message_size = config.claim_max_message_size;
        opts.create_data_channel = true;
        let mut peer = SimPeer::bind(opts).await?;
        let offer = peer.create_offer()?;

        // The sync token from before the invite, so the answer cannot be missed.
        let initial = config
            .matrix
            .sync(None, 0, Some(TO_DEVICE_ONLY_FILTER))
            .await
            .context("initial /sync")?;
        let since = initial.next_batch;

        let call_id = format!("call-{}", crate::random_id(16));
        let mut signaller = CallSignaller::new(
            &device_id,
            &config.focus_user_id,
            &config.focus_device_id,
            &call_id,
            &config.conf_id,
            &config.room_id,
            &config.session_id,
            &config.dest_session_id,
        );
        if let Some(olm) = &config.olm {
            olm.ensure_session(&config.focus_user_id, &config.focus_device_id)
                .await
                .context("setting up an Olm session with the focus")?;
            signaller.olm = Some(olm.clone());
        }
        let invite = signaller.invite(&offer, config.lifetime_ms, peer.metadata());
        let invite_sent_at = Instant::now();
        signaller
            .send(&config.matrix, CallEventKind::Invite, &invite)
            .await?;
        let mut candidates = peer.local_candidates();
        candidates.push(Candidate::default());
        let candidates = signaller.candidates(candidates);
        signaller
            .send(&config.matrix, CallEventKind::Candidates, &candidates)
            .await?;

        let shared = Arc::new(Mutex::new(Shared {
            invite_sent_at,
            answered_at: None,
            offer_sdp: offer.clone(),
            answer_sdp: None,
            answers: 0,
            connected_at: None,
            hangup_reason: None,
            error: None,
            finished: false,
            available: SdpStreamMetadata::new(),
            subscribed: BTreeSet::new(),
            dc_open: false,
            pings: 0,
            negotiations: 0,
            active_speaker: None,
            subscribed_layers: BTreeMap::new(),
        }));
        let receiving = peer.receiving();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let stream_id = peer.stream_id().to_owned();
        let local_tracks = peer.local_tracks();
        let runner = Runner {
            invite_deadline: invite_sent_at + Duration::from_millis(config.lifetime_ms),
            end_at: invite_sent_at + config.max_duration,
            policy: config.subscribe.clone(),
            config,
            user_id: user_id.clone(),
            device_id: device_id.clone(),
            peer,
            signaller,
            shared: shared.clone(),
            commands: command_rx,
            pending_candidates: Vec::new(),
            answered: false,
        };
        let task = tokio::spawn(runner.run(since));
        Ok(SimClient {
            call_id,
            session_id: invite.sender_session_id.unwrap_or_default(),
            user_id,
            device_id,
            stream_id,
            local_tracks,
            shared,
            receiving,
            commands,
            task,
        })
    }

    /// Our call id.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Our session id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Our user id.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// Our device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The MediaStream id we publish in.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// Our published track ids and kinds.
    pub fn local_tracks(&self) -> &[(String, MediaKind)] {
        &self.local_tracks
    }

    /// Whether the task has ended (hangup, error or timeout).
    pub fn is_finished(&self) -> bool {
        lock(&self.shared).finished
    }

    /// Whether the peer connection has connected.
    pub fn is_connected(&self) -> bool {
        lock(&self.shared).connected_at.is_some()
    }

    /// Whether the data channel with the focus is open.
    pub fn data_channel_open(&self) -> bool {
        lock(&self.shared).dc_open
    }

    /// Pings answered and renegotiations (focus offers) answered so far.
    pub fn signalling_counts(&self) -> (u64, u64) {
        let shared = lock(&self.shared);
        (shared.pings, shared.negotiations)
    }

    /// The tracks we are subscribed to, as `(stream_id, track_id)`.
    pub fn subscribed(&self) -> Vec<(String, String)> {
        lock(&self.shared).subscribed.iter().cloned().collect()
    }

    /// The active speaker `(user_id, device_id)` the focus last announced.
    pub fn active_speaker(&self) -> Option<(String, String)> {
        lock(&self.shared).active_speaker.clone()
    }

    /// The simulcast layers (rids) of our track `(stream_id, track_id)` the focus last said
    /// subscribers want (`cascade.subscribed_layers`); `None` before it said anything.
    pub fn subscribed_layers(&self, stream_id: &str, track_id: &str) -> Option<Vec<String>> {
        lock(&self.shared)
            .subscribed_layers
            .get(&(stream_id.to_owned(), track_id.to_owned()))
            .cloned()
    }

    /// The latest streams the focus said we may subscribe to.
    pub fn available(&self) -> SdpStreamMetadata {
        lock(&self.shared).available.clone()
    }

    /// Changes what we subscribe to; applied against the current `available` right away.
    pub fn set_subscribe_policy(&self, policy: SubscribePolicy) {
        let _ = self.commands.send(Command::Policy(policy));
    }

    /// Which simulcast layers (rids) of our video keep sending; the others stop.
    pub fn set_video_layers(&self, rids: &[&str]) {
        let rids = rids.iter().map(|r| (*r).to_owned()).collect();
        let _ = self.commands.send(Command::VideoLayers(rids));
    }

    /// Changes the render size and re-sends `m.call.track_subscription` for every subscribed
    /// video track with it.
    pub fn set_render_size(&self, width: u32, height: u32) {
        let _ = self.commands.send(Command::RenderSize(width, height));
    }

    /// Sends a PLI for every video track we receive.
    pub fn request_keyframe(&self) {
        let _ = self.commands.send(Command::RequestKeyframe);
    }

    /// Sends `count` audio packets from new, unannounced SSRCs, `per_ssrc` from each (see
    /// [`SimPeer::send_unannounced_ssrcs`](crate::peer::SimPeer::send_unannounced_ssrcs));
    /// returns how many went out.
    pub async fn send_unannounced_ssrcs(&self, count: u32, per_ssrc: u32) -> Result<u32> {
        let (done, sent) = oneshot::channel();
        self.commands
            .send(Command::UnannouncedSsrcs(count, per_ssrc, done))
            .map_err(|_| anyhow::anyhow!("the client has stopped"))?;
        sent.await
            .map_err(|_| anyhow::anyhow!("the client stopped while sending"))
    }

    /// Sends `text` on the signalling data channel as it is (any size the stack lets through).
    pub async fn send_channel_text(&self, text: String) -> Result<()> {
        let (done, sent) = oneshot::channel();
        self.commands
            .send(Command::ChannelText(text, done))
            .map_err(|_| anyhow::anyhow!("the client has stopped"))?;
        sent.await
            .map_err(|_| anyhow::anyhow!("the client stopped while sending"))?
    }

    fn ended_error(shared: &Shared) -> String {
        match (&shared.hangup_reason, &shared.error) {
            (Some(reason), _) => format!("focus hung up ({reason})"),
            (None, Some(err)) => format!("client stopped: {err}"),
            (None, None) => "client stopped".to_owned(),
        }
    }

    /// The SDP of the focus's answer, once it came (its ICE credentials and candidates).
    pub fn answer_sdp(&self) -> Option<String> {
        lock(&self.shared).answer_sdp.clone()
    }

    /// A connectivity check (STUN Binding request, RFC 8445 §7.2.2) for the focus with this
    /// call's ICE credentials, as the device's agent sends from each of its candidates; not
    /// nominating. Sent from another socket, it is what a device with a second candidate (or a
    /// new address) does.
    ///
    /// # Errors
    ///
    /// Before the focus's answer came, or when either description lacks ICE credentials.
    pub fn connectivity_check(&self) -> Result<Vec<u8>> {
        let (offer, answer) = {
            let shared = lock(&self.shared);
            (shared.offer_sdp.clone(), shared.answer_sdp.clone())
        };
        let answer = answer.context("no answer from the focus yet")?;
        let attribute = |sdp: &str, name: &str| -> Result<String> {
            sdp.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_owned())
                .with_context(|| format!("no {name} in the description"))
        };
        let username = format!(
            "{}:{}",
            attribute(&answer, "a=ice-ufrag:")?,
            attribute(&offer, "a=ice-ufrag:")?
        );
        crate::peer::binding_request(&username, &attribute(&answer, "a=ice-pwd:")?)
    }

    /// How many `m.call.answer`s the focus sent this call (more than one is a bug).
    pub fn answers_received(&self) -> u64 {
        lock(&self.shared).answers
    }

    /// Waits until the focus's answer has been applied.
    pub async fn wait_answered(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let shared = lock(&self.shared);
                if shared.answered_at.is_some() {
                    return Ok(());
                }
                if shared.finished {
                    bail!("no answer: {}", Self::ended_error(&shared));
                }
            }
            if Instant::now() >= deadline {
                bail!("no answer from the focus within {timeout:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits for the focus to hang up; returns its reason.
    pub async fn wait_hangup(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let shared = lock(&self.shared);
                if let Some(reason) = &shared.hangup_reason {
                    return Ok(reason.clone());
                }
                if shared.finished {
                    bail!("no hangup from the focus: {}", Self::ended_error(&shared));
                }
            }
            if Instant::now() >= deadline {
                bail!("the focus did not hang up within {timeout:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// What is still missing for `wait_receiving_from`, empty when satisfied.
    fn missing_from(&self, publishers: &[(String, String)], min_packets: u64) -> Vec<String> {
        let available = self.available();
        let recv = lock(&self.receiving);
        let mut missing = Vec::new();
        for (user, device) in publishers {
            let tracks: Vec<(&String, &String)> = available
                .values()
                .filter(|s| {
                    s.user_id.as_deref() == Some(user.as_str())
                        && s.device_id.as_deref() == Some(device.as_str())
                })
                .flat_map(|s| s.tracks.iter().flatten())
                .map(|(id, info)| (id, &info.kind))
                .collect();
            if tracks.is_empty() {
                missing.push(format!(
                    "{user}/{device}: no tracks in the focus's metadata"
                ));
                continue;
            }
            for (track_id, kind) in tracks {
                let kind = if kind == "video" {
                    MediaKind::Video
                } else {
                    MediaKind::Audio
                };
                let tag = synth::publisher_tag(user, device, track_id, kind);
                let packets = recv
                    .tracks
                    .iter()
                    .filter(|(id, t)| {
                        *id == track_id
                            || t.publisher_tag.is_some_and(|t| synth::is_track_tag(tag, t))
                    })
                    .map(|(_, t)| t.packets)
                    .max()
                    .unwrap_or(0);
                if packets < min_packets {
                    missing.push(format!(
                        "{user}/{device} {} track {track_id}: {packets}/{min_packets} packets",
                        kind.as_str()
                    ));
                }
            }
        }
        missing
    }

    /// Waits until at least `min_packets` have arrived on every track of each of the listed
    /// publishers `(user_id, device_id)`, audio and video.
    pub async fn wait_receiving_from(
        &self,
        publishers: &[(String, String)],
        min_packets: u64,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = self.missing_from(publishers, min_packets);
            if missing.is_empty() {
                return Ok(());
            }
            {
                let shared = lock(&self.shared);
                if shared.finished {
                    bail!(
                        "{}; still missing: {}",
                        Self::ended_error(&shared),
                        missing.join("; ")
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "after {timeout:?} {} is still missing: {}",
                    self.user_id,
                    missing.join("; ")
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// A snapshot of what this client has received and how the call went.
    pub fn report(&self) -> Report {
        let (available, answered_after, hangup_reason, error, invite_sent_at) = {
            let shared = lock(&self.shared);
            (
                shared.available.clone(),
                shared
                    .answered_at
                    .map(|t| t.duration_since(shared.invite_sent_at)),
                shared.hangup_reason.clone(),
                shared.error.clone(),
                shared.invite_sent_at,
            )
        };
        let recv = lock(&self.receiving);
        Report {
            tracks: recv
                .tracks
                .values()
                .map(|t| report::track_report(t, &available))
                .collect(),
            answered_after,
            first_media_after: recv
                .first_media_at
                .map(|t| t.saturating_duration_since(invite_sent_at)),
            hangup_reason,
            error,
            keyframe_requests: recv.keyframe_requests,
            sent_audio_packets: recv.sent_audio_packets,
            sent_video_packets: recv.sent_video_packets,
            sent_keyframes: recv.sent_keyframes,
            send_errors: recv.send_errors,
            layer_keyframe_requests: recv.layer_keyframe_requests.clone(),
            layer_sent_keyframes: recv.layer_sent_keyframes.clone(),
            dropped_incoming_rtp: recv.dropped_incoming_rtp,
            stun_requests_received: recv.stun_requests_received,
        }
    }

    /// Hangs up (to-device `m.call.hangup` `user_hangup`, and on the data channel), closes the
    /// peer connection and stops the task.
    pub async fn hangup(self) -> Result<()> {
        let (done_tx, done_rx) = oneshot::channel();
        if self.commands.send(Command::Hangup(done_tx)).is_err() {
            return Ok(());
        }
        match tokio::time::timeout(Duration::from_secs(30), done_rx).await {
            Ok(_) => Ok(()),
            Err(_) => bail!("hangup did not complete within 30 s"),
        }
    }
}

/// How the task ended.
enum End {
    /// We hung up (on request, or at max duration).
    Local,
    /// The focus hung up.
    Remote,
    /// Something failed.
    Error(String),
    /// The handle is gone.
    Dropped,
}

struct Runner {
    config: SimConfig,
    user_id: String,
    device_id: String,
    peer: SimPeer,
    signaller: CallSignaller,
    shared: Arc<Mutex<Shared>>,
    commands: mpsc::UnboundedReceiver<Command>,
    pending_candidates: Vec<Candidate>,
    answered: bool,
    policy: SubscribePolicy,
    invite_deadline: Instant,
    end_at: Instant,
}

impl Runner {
    async fn run(mut self, since: String) {
        let end = self.run_loop(since).await;
        self.peer.close();
        self.peer.flush().await;
        let mut shared = lock(&self.shared);
        shared.finished = true;
        shared.dc_open = false;
        match end {
            End::Error(err) => {
                tracing::info!(call = %self.signaller.call_id, %err, "sim client stopped");
                shared.error = Some(err);
            }
            End::Local | End::Remote | End::Dropped => {}
        }
    }

    async fn run_loop(&mut self, mut since: String) -> End {
        let matrix = self.config.matrix.clone();
        let olm = self.config.olm.clone();
        let mut sync = sync_future(matrix.clone(), since.clone(), Duration::ZERO, olm.clone());
        loop {
            self.peer.process();
            self.peer.flush().await;
            while let Some(event) = self.peer.poll_event() {
                if let Some(end) = self.on_peer_event(event).await {
                    return end;
                }
            }
            self.peer.flush().await;

            let now = Instant::now();
            if !self.answered && now >= self.invite_deadline {
                self.send_hangup(reason::INVITE_TIMEOUT).await;
                return End::Error("invite_timeout: no answer within the invite lifetime".into());
            }
            if now >= self.end_at {
                self.send_hangup(reason::USER_HANGUP).await;
                return End::Local;
            }

            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Hangup(done)) => {
                        self.send_hangup(reason::USER_HANGUP).await;
                        self.peer.close();
                        self.peer.flush().await;
                        let _ = done.send(());
                        return End::Local;
                    }
                    Some(Command::Policy(policy)) => {
                        self.policy = policy;
                        self.update_subscriptions();
                    }
                    Some(Command::VideoLayers(rids)) => {
                        let rids: Vec<&str> = rids.iter().map(String::as_str).collect();
                        self.peer.set_video_layers(&rids);
                    }
                    Some(Command::RenderSize(width, height)) => {
                        self.config.render_size = Some((width, height));
                        self.resize_subscriptions();
                    }
                    Some(Command::RequestKeyframe) => self.request_keyframes(),
                    Some(Command::ChannelText(text, done)) => {
                        let _ = done.send(self.peer.send_text(&text));
                        self.peer.flush().await;
                    }
                    Some(Command::UnannouncedSsrcs(count, per_ssrc, done)) => {
                        let _ = done.send(self.peer.send_unannounced_ssrcs(count, per_ssrc).await);
                    }
                    None => return End::Dropped,
                },
                result = &mut sync => match result {
                    Ok((next_batch, events)) => {
                        since = next_batch;
                        sync = sync_future(matrix.clone(), since.clone(), Duration::ZERO, olm.clone());
                        if let Some(end) = self.on_to_device_batch(events).await {
                            return end;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(%err, "sim client /sync failed; retrying");
                        sync = sync_future(matrix.clone(), since.clone(), SYNC_RETRY, olm.clone());
                    }
                },
                _ = self.peer.wait() => {}
            }
        }
    }

    async fn send_hangup(&mut self, why: &str) {
        if self.peer.data_channel_open() {
            let msg = DataChannelMessage::Hangup(Hangup {
                reason: Some(why.to_owned()),
            });
            self.send_dc(&msg);
            self.peer.flush().await;
        }
        let content = self.signaller.hangup(why);
        if let Err(err) = self
            .signaller
            .send(&self.config.matrix, CallEventKind::Hangup, &content)
            .await
        {
            tracing::warn!(%err, "sending hangup failed");
        }
    }

    fn send_dc(&mut self, msg: &DataChannelMessage) {
        if let Err(err) = self.peer.send_text(&msg.to_text()) {
            tracing::debug!(%err, kind = msg.type_name(), "data channel send failed");
        }
    }

    fn remote_hangup(&mut self, why: &str) -> End {
        lock(&self.shared).hangup_reason = Some(why.to_owned());
        End::Remote
    }

    async fn on_to_device_batch(&mut self, events: Vec<(String, Value)>) -> Option<End> {
        let mut ours: Vec<CallEvent> = events
            .into_iter()
            .filter_map(|(event_type, content)| CallEvent::decode(&event_type, &content).ok())
            .filter(|e| {
                e.content.call_id == self.signaller.call_id
                    && e.content.dest_session_id.as_deref() == Some(self.config.session_id.as_str())
            })
            .collect();
        ours.sort_by_key(|e| e.content.seq.unwrap_or(0));
        for event in ours {
            if let Some(end) = self.on_call_event(event).await {
                return Some(end);
            }
        }
        None
    }

    async fn on_call_event(&mut self, event: CallEvent) -> Option<End> {
        let content = event.content;
        match event.kind {
            CallEventKind::Answer => {
                lock(&self.shared).answers += 1;
                if self.answered {
                    return None;
                }
                let Some(answer) = content.answer.or(content.description) else {
                    return Some(End::Error("m.call.answer without an answer".into()));
                };
                if let Err(err) = self.peer.accept_answer(&answer.sdp) {
                    self.send_hangup(reason::UNKNOWN_ERROR).await;
                    return Some(End::Error(format!("bad answer: {err:#}")));
                }
                self.answered = true;
                {
                    let mut shared = lock(&self.shared);
                    shared.answered_at = Some(Instant::now());
                    shared.answer_sdp = Some(answer.sdp.clone());
                }
                for candidate in std::mem::take(&mut self.pending_candidates) {
                    self.add_candidate(&candidate);
                }
            }
            CallEventKind::Candidates => {
                for candidate in content.candidates.unwrap_or_default() {
                    if self.answered {
                        self.add_candidate(&candidate);
                    } else {
                        self.pending_candidates.push(candidate);
                    }
                }
            }
            CallEventKind::Hangup => {
                let why = content.hangup_reason().to_owned();
                return Some(self.remote_hangup(&why));
            }
            CallEventKind::Reject => return Some(self.remote_hangup("reject")),
            CallEventKind::Negotiate => {
                let description = content.description?;
                let metadata = self.peer.metadata();
                match self.apply_description(&description) {
                    Ok(Some(answer)) => {
                        let reply =
                            self.signaller
                                .negotiate(answer, self.config.lifetime_ms, metadata);
                        if let Err(err) = self
                            .signaller
                            .send(&self.config.matrix, CallEventKind::Negotiate, &reply)
                            .await
                        {
                            tracing::warn!(%err, "sending negotiate answer failed");
                        }
                    }
                    Ok(None) => {}
                    Err(err) => return Some(End::Error(format!("bad negotiate: {err:#}"))),
                }
            }
            CallEventKind::SdpStreamMetadataChanged => {
                if let Some(metadata) = content.metadata() {
                    self.on_available(metadata.clone());
                }
            }
            CallEventKind::Invite | CallEventKind::SelectAnswer => {}
        }
        None
    }

    fn add_candidate(&mut self, candidate: &Candidate) {
        if let Err(err) = self.peer.add_remote_candidate(candidate) {
            tracing::debug!(%err, candidate = %candidate.candidate, "remote candidate rejected");
        }
    }

    /// Applies an offer (returning our answer) or an answer from the focus.
    fn apply_description(
        &mut self,
        description: &SessionDescription,
    ) -> Result<Option<SessionDescription>> {
        if description.kind == "offer" {
            let answer = self.peer.accept_offer(&description.sdp)?;
            lock(&self.shared).negotiations += 1;
            Ok(Some(SessionDescription::answer(answer)))
        } else {
            self.peer.accept_answer(&description.sdp)?;
            Ok(None)
        }
    }

    async fn on_peer_event(&mut self, event: PeerEvent) -> Option<End> {
        match event {
            PeerEvent::Connected => {
                lock(&self.shared).connected_at = Some(Instant::now());
            }
            PeerEvent::Disconnected(state) => {
                self.send_hangup(reason::ICE_FAILED).await;
                return Some(End::Error(format!("peer connection {state}")));
            }
            PeerEvent::DataChannelOpen => {
                lock(&self.shared).dc_open = true;
                self.update_subscriptions();
            }
            PeerEvent::DataChannelClosed => {
                lock(&self.shared).dc_open = false;
            }
            PeerEvent::DataChannelText(text) => return self.on_dc_text(&text),
            PeerEvent::TrackOpened { .. } => {}
        }
        None
    }

    fn on_dc_text(&mut self, text: &str) -> Option<End> {
        let msg = match DataChannelMessage::parse(text) {
            Ok(msg) => msg,
            Err(err) => {
                tracing::debug!(%err, "unparseable data channel message");
                return None;
            }
        };
        match msg {
            DataChannelMessage::SdpStreamMetadataChanged(changed) => {
                self.on_available(changed.sdp_stream_metadata);
            }
            DataChannelMessage::Negotiate(negotiate) => {
                match self.apply_description(&negotiate.description) {
                    Ok(Some(answer)) => {
                        let reply = DataChannelMessage::Negotiate(Negotiate {
                            description: answer,
                            sdp_stream_metadata: self.peer.metadata(),
                        });
                        self.send_dc(&reply);
                    }
                    Ok(None) => {}
                    Err(err) => return Some(End::Error(format!("bad negotiate: {err:#}"))),
                }
            }
            DataChannelMessage::Ping(_) => {
                lock(&self.shared).pings += 1;
                self.send_dc(&DataChannelMessage::Pong(Empty {}));
            }
            DataChannelMessage::Hangup(hangup) => {
                let why = hangup
                    .reason
                    .unwrap_or_else(|| reason::USER_HANGUP.to_owned());
                return Some(self.remote_hangup(&why));
            }
            DataChannelMessage::ActiveSpeaker(speaker) => {
                lock(&self.shared).active_speaker = Some((speaker.user_id, speaker.device_id));
            }
            DataChannelMessage::SubscribedLayers(layers) => {
                lock(&self.shared)
                    .subscribed_layers
                    .insert((layers.stream_id, layers.track_id), layers.rids);
            }
            DataChannelMessage::TrackSubscription(_) | DataChannelMessage::Pong(_) => {}
        }
        None
    }

    /// Re-sends the subscription of every subscribed video track with the current render size.
    fn resize_subscriptions(&mut self) {
        let Some((width, height)) = self.config.render_size else {
            return;
        };
        let subscribe: Vec<TrackRequest> = {
            let shared = lock(&self.shared);
            shared
                .subscribed
                .iter()
                .filter(|(stream_id, track_id)| {
                    shared
                        .available
                        .get(stream_id)
                        .and_then(|s| s.tracks.as_ref())
                        .and_then(|t| t.get(track_id))
                        .is_some_and(|info| info.kind == "video")
                })
                .map(|(stream_id, track_id)| TrackRequest {
                    stream_id: stream_id.clone(),
                    track_id: track_id.clone(),
                    width: Some(width),
                    height: Some(height),
                })
                .collect()
        };
        if subscribe.is_empty() {
            return;
        }
        let msg = DataChannelMessage::TrackSubscription(TrackSubscription {
            subscribe,
            unsubscribe: Vec::new(),
        });
        self.send_dc(&msg);
    }

    /// Sends a PLI for every incoming video track.
    fn request_keyframes(&mut self) {
        let tracks: Vec<String> = {
            let receiving = self.peer.receiving();
            let recv = lock(&receiving);
            recv.tracks
                .values()
                .filter(|t| t.kind == Some(MediaKind::Video))
                .map(|t| t.track_id.clone())
                .collect()
        };
        for track_id in tracks {
            if let Err(err) = self.peer.send_pli(&track_id) {
                tracing::debug!(%err, track = %track_id, "sending PLI failed");
            }
        }
    }

    fn on_available(&mut self, metadata: SdpStreamMetadata) {
        lock(&self.shared).available = metadata;
        self.update_subscriptions();
    }

    /// Sends `m.call.track_subscription` for the difference between what the policy wants of
    /// `available` and what we have.
    fn update_subscriptions(&mut self) {
        if !self.peer.data_channel_open() {
            return;
        }
        let (wanted, current, kinds) = {
            let shared = lock(&self.shared);
            let mut wanted = BTreeSet::new();
            let mut kinds = std::collections::BTreeMap::new();
            for (stream_id, stream) in &shared.available {
                let own = stream_id == self.peer.stream_id()
                    || (stream.user_id.as_deref() == Some(self.user_id.as_str())
                        && stream.device_id.as_deref() == Some(self.device_id.as_str()));
                let allowed = match &self.policy {
                    SubscribePolicy::All => !own,
                    SubscribePolicy::None => false,
                    SubscribePolicy::Publishers(list) => list.iter().any(|(u, d)| {
                        stream.user_id.as_deref() == Some(u.as_str())
                            && stream.device_id.as_deref() == Some(d.as_str())
                    }),
                };
                if !allowed {
                    continue;
                }
                for (track_id, info) in stream.tracks.iter().flatten() {
                    wanted.insert((stream_id.clone(), track_id.clone()));
                    kinds.insert(track_id.clone(), info.kind.clone());
                }
            }
            (wanted, shared.subscribed.clone(), kinds)
        };
        let render_size = self.config.render_size;
        let size = |_: &str, track_id: &str| {
            render_size.filter(|_| kinds.get(track_id).is_some_and(|k| k == "video"))
        };
        let Some(change) = TrackSubscription::change(&current, &wanted, size) else {
            return;
        };
        let msg = DataChannelMessage::TrackSubscription(change);
        match self.peer.send_text(&msg.to_text()) {
            Ok(()) => lock(&self.shared).subscribed = wanted,
            Err(err) => tracing::debug!(%err, "sending track subscription failed"),
        }
    }
}
