//! One event loop: a UDP socket, the peer connections on it, and their conferences.
//!
//! Everything here runs on one thread with no locks. A datagram goes socket → demux → the
//! publisher's peer connection (SRTP, RTCP) → (if RTP) the routes of its publication → each
//! subscriber's rewrite and SRTP protection → one batched send, inline, in one call of
//! [`Shard::on_datagram`]. The loop's work is split along that flow:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the loop: state, commands from the signalling side, calls opened and removed, timers |
//! | `demux.rs` | datagram → call, the stack's reads, its events |
//! | `ingress.rs` | publications: tracks opening and ending, keyframe requests to publishers |
//! | `forwarding.rs` | a packet to its subscribers; layer and speaker review |
//! | `feedback.rs` | subscribers' RTCP (PLI/FIR, NACK → retransmission) and sender reports |
//! | `negotiation.rs` | data-channel messages, subscriptions, offers and answers, metadata |
//!
//! The per-subscriber egress state is [`crate::egress`], the batched send [`crate::batch`].

use crate::admission::{self, Inbound};
use crate::batch::{BATCH, Batch, Received};
use crate::conference::{Conferences, Route, Routes, available_streams};
use crate::config::MediaConfig;
use crate::egress::{self, OutboundStream};
use crate::interceptor;
use crate::participant::{Layer, Participant, ParticipantId, Publication, PublicationId};
use crate::placement::Placement;
use crate::rewrite::{Rewritten, write_header};
use crate::socket::MediaSocket;
use crate::stats::{Gauges, KIND_AUDIO, KIND_VIDEO, ShardStats};
use bytes::BytesMut;
use cascade_forward::{
    Codec, DropReason, ExtensionMap, LayerId, LayerInfo, PacketMeta, Subscription, Verdict,
};
use cascade_protocol::datachannel::{
    ActiveSpeaker, DataChannelMessage, Empty, Negotiate, TrackRequest,
};
use cascade_protocol::event::reason;
use cascade_protocol::{
    CallKey, FromMedia, SdpStreamMetadata, SessionDescription, ToMedia, conference_key,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{
    RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit,
};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod allocation;
mod demux;
mod feedback;
mod forwarding;
mod ingress;
mod negotiation;
mod pausing;

use forwarding::select_layer;
use negotiation::{extension_ids, muted_by_metadata};

/// Control messages for an event loop.
#[derive(Debug)]
pub enum Command {
    /// A message from the signalling side.
    Signal(ToMedia),
    /// Answer to show the loop is alive.
    Health(oneshot::Sender<()>),
    /// Count conferences, peer-connection states, tracks and subscriptions into the loop's
    /// [`ShardStats`] gauges, then answer (sent at scrape time).
    Gauges(oneshot::Sender<()>),
    /// Hang up every call with this reason (the end of a drain), then answer.
    HangUpAll(String, oneshot::Sender<()>),
}

/// A call set up by the media plane, or why it could not be: the participant, its first
/// description (answer or offer) and the candidates to trickle.
type Made = Result<(Participant, String, Vec<cascade_protocol::Candidate>), crate::MediaError>;

/// How often every call's timers are looked at, due or not.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The loop wakes for timers only at multiples of this since it started, so that the timers
/// of many calls (each stack's NACK, feedback and report intervals, at their own phases) are
/// handled in one wake-up: a wake-up costs more than most timers' work. Nothing the stack or
/// the focus times needs finer steps (the shortest intervals are 100 ms).
pub const TIMER_SLOT: Duration = Duration::from_millis(10);
/// How often subscriptions' layers are reviewed.
const LAYER_REVIEW_INTERVAL: Duration = Duration::from_millis(250);
/// How often probes leave while a subscriber's downlink is probed (see
/// [`crate::downlink::Downlink::probe_due`]).
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// IPv4 and UDP headers: what a datagram adds to the SRTP packet on the wire (counted in what a
/// subscriber's downlink carries).
const IP_UDP_HEADERS: usize = 28;
/// A layer without packets for this long is treated as stopped.
const LAYER_TIMEOUT: Duration = Duration::from_millis(1500);
/// Full height assumed for simulcast tracks (matrix-js-sdk sends 720p cameras).
const FULL_HEIGHT: u32 = 720;
use crate::interceptor::AUDIO_LEVEL_URI;

/// The most tracks a call that subscribes by itself may decline (each a track id it names):
/// a client cannot grow the focus's memory by naming tracks.
const MAX_DECLINED: usize = 256;
/// Weight of a new audio level in the smoothed loudness.
const LOUDNESS_SMOOTHING: f32 = 0.05;

/// How often each forwarded stream gets a sender report (RFC 3550 §6.2 leaves the interval
/// to the application; WebRTC stacks send one about every second).
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Batches of datagrams read per wake-up before other work gets a turn.
const READ_ROUNDS: usize = 2;
/// Largest datagram accepted.
const MAX_DATAGRAM: usize = 1500;

/// One event loop's state.
pub struct Shard {
    config: Arc<MediaConfig>,
    socket: MediaSocket,
    local_addr: SocketAddr,
    candidate_ips: Vec<IpAddr>,
    next_id: ParticipantId,
    /// Hashed with FxHash: looked up per forwarded packet and subscriber, keyed by the
    /// focus's own ids (no attacker-chosen keys).
    participants: FxHashMap<ParticipantId, Participant>,
    by_call: HashMap<CallKey, ParticipantId>,
    by_ufrag: HashMap<String, ParticipantId>,
    by_addr: HashMap<SocketAddr, ParticipantId>,
    conferences: Conferences,
    routes: Routes,
    /// The payloads of each routed publication's recent packets, which its subscribers'
    /// retransmission histories refer to (kept while the publication has routes).
    payloads: FxHashMap<(ParticipantId, PublicationId), egress::PayloadHistory>,
    to_signalling: mpsc::Sender<FromMedia>,
    stats: Arc<ShardStats>,
    /// A retransmission being built: plaintext, then its SRTP protection (kept to reuse its
    /// allocation).
    datagram: Vec<u8>,
    /// The datagrams of one packet's fan-out, sent together.
    batch: Batch,
    /// When sender reports for the forwarded streams are next due.
    next_sender_reports: Instant,
    /// When subscriptions' layers are next reviewed.
    next_layer_review: Instant,
    /// Subscribers whose downlink is probed, each with the route whose packets the probes
    /// repeat (see `allocation`), and when probes are next due.
    probing: Vec<(ParticipantId, (ParticipantId, PublicationId), usize)>,
    next_probe: Option<Instant>,
    /// When every call's timers are next looked at, due or not.
    next_sweep: Instant,
    /// No later than the earliest of the calls' deadlines: lowered whenever one is set,
    /// computed again after each timer wake-up (so a wake-up for a datagram does not walk
    /// every call).
    earliest_call_deadline: Instant,
    /// Where the loop's [`TIMER_SLOT`]s start.
    timer_epoch: Instant,
    /// How long a call may take to connect.
    connect_timeout: Duration,
    /// How long pongs may be missing.
    keepalive_timeout: Duration,
    /// Each conference's active speaker (participant and audio publication).
    speakers: HashMap<String, (ParticipantId, PublicationId)>,
    /// This loop's index among the media plane's loops.
    index: usize,
    /// Which loop serves which conference (shared with the dispatcher; locked only when a
    /// conference ends here).
    placement: Arc<Mutex<Placement>>,
    /// `Open`s processed per conference since its last report to the placement.
    opens: HashMap<String, u64>,
    /// The last connection state each peer connection reported (for the metrics).
    pc_states: HashMap<ParticipantId, RTCPeerConnectionState>,
    /// The links this loop placed, each with a socket of its own (see [`crate::link_socket`]).
    links: Vec<ParticipantId>,
}

impl Shard {
    /// A loop around a bound socket.
    pub fn new(
        index: usize,
        placement: Arc<Mutex<Placement>>,
        config: Arc<MediaConfig>,
        socket: MediaSocket,
        to_signalling: mpsc::Sender<FromMedia>,
        stats: Arc<ShardStats>,
    ) -> std::io::Result<Self> {
        let local_addr = socket.local_addr()?;
        let (connect_timeout, keepalive_timeout) =
            (config.connect_timeout(), config.keepalive_timeout());
        let candidate_ips = config.candidate_ips();
        let segmentation = config.udp_gso && crate::batch::gso_supported(&socket);
        tracing::debug!(index, segmentation, "UDP segmentation offload");
        Ok(Self {
            config,
            socket,
            local_addr,
            candidate_ips,
            next_id: 1,
            participants: FxHashMap::default(),
            by_call: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            conferences: Conferences::new(),
            routes: Routes::default(),
            payloads: FxHashMap::default(),
            to_signalling,
            stats,
            datagram: Vec::with_capacity(MAX_DATAGRAM + 64),
            batch: Batch::new(segmentation),
            next_sender_reports: Instant::now() + SENDER_REPORT_INTERVAL,
            next_layer_review: Instant::now() + LAYER_REVIEW_INTERVAL,
            probing: Vec::new(),
            next_probe: None,
            next_sweep: Instant::now() + SWEEP_INTERVAL,
            earliest_call_deadline: Instant::now() + SWEEP_INTERVAL,
            timer_epoch: Instant::now(),
            connect_timeout,
            keepalive_timeout,
            speakers: HashMap::new(),
            pc_states: HashMap::new(),
            index,
            placement,
            opens: HashMap::new(),
            links: Vec::new(),
        })
    }

    /// Runs until the command channel closes.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut received = Received::new(MAX_DATAGRAM);
        // One timer, moved when the deadline moves, rather than a new one per wake-up.
        let sleep = tokio::time::sleep_until(Instant::now().into());
        tokio::pin!(sleep);
        loop {
            let deadline = tokio::time::Instant::from(self.next_deadline(Instant::now()));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => self.on_command(Instant::now(), command),
                    None => break,
                },
                readable = self.socket.readable() => {
                    if readable.is_ok() {
                        self.read(&mut received);
                    }
                }
                link = std::future::poll_fn(|cx| {
                    let sockets = self.links.iter().filter_map(|id| {
                        Some((*id, self.participants.get(id)?.own_socket.as_ref()?))
                    });
                    crate::link_socket::poll_readable(sockets, cx)
                }) => self.read_socket(Some(link), &mut received),
                _ = &mut sleep => self.on_timeout(Instant::now()),
            }
            self.send_batch();
        }
        let ids: Vec<ParticipantId> = self.participants.keys().copied().collect();
        for id in ids {
            self.remove(Instant::now(), id, Some(reason::USER_HANGUP));
        }
    }

    /// Reads what the loop's socket has, [`READ_ROUNDS`] batches at most, before other work
    /// gets a turn.
    fn read(&mut self, received: &mut Received) {
        self.read_socket(None, received);
    }

    /// Reads [`READ_ROUNDS`] batches at most from the loop's socket (`link` `None`: each
    /// datagram goes through [`Shard::on_datagram`]) or from a placed link's own socket (each
    /// datagram goes straight to that link).
    fn read_socket(&mut self, link: Option<ParticipantId>, received: &mut Received) {
        for _ in 0..READ_ROUNDS {
            let (socket, local_addr) = match link {
                None => (&self.socket, self.local_addr),
                Some(id) => match self
                    .participants
                    .get(&id)
                    .and_then(|p| p.own_socket.as_ref())
                {
                    Some(own) => (&own.socket, own.local_addr),
                    None => return,
                },
            };
            let mut count = 0;
            let result = socket.try_read(|| {
                count = received.receive(socket)?;
                if count < BATCH {
                    // The socket's queue was empty after these: saying so clears the socket's
                    // readiness now, which spares each wake-up a second receive that would
                    // only find nothing. A datagram arriving later wakes the loop again (the
                    // reactor's epoll is edge-triggered: every arrival is an edge).
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            if let Err(err) = result
                && err.kind() != std::io::ErrorKind::WouldBlock
            {
                tracing::debug!(%err, "receive failed");
                return;
            }
            let (now, wall_now) = (Instant::now(), std::time::SystemTime::now());
            for index in 0..count {
                let Some((from, datagram)) = received.datagram(index) else {
                    continue;
                };
                // Each datagram at its own arrival time: what transport-cc feedback reports.
                let now = received.arrival(index, now, wall_now);
                match link {
                    None => self.on_datagram(now, from, datagram),
                    Some(id) => {
                        self.stats.count_received(datagram.len());
                        self.on_call_datagram(now, id, local_addr, from, datagram);
                    }
                }
            }
            // The datagrams this receive's packets fanned out to leave together: a frame's
            // packets to one subscriber in one message (see `crate::batch`).
            self.send_batch();
            if count < BATCH {
                return;
            }
        }
    }

    /// Sends the datagrams the batch has gathered.
    fn send_batch(&mut self) {
        if !self.batch.is_empty() {
            self.batch.send(&self.socket, &self.stats);
        }
    }

    fn on_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Health(reply) => {
                let _ = reply.send(());
            }
            Command::Signal(message) => {
                let conf_id = self
                    .by_call
                    .get(message.call())
                    .and_then(|id| self.participants.get(id))
                    .map(|p| p.conf_id.clone());
                let span = match &message {
                    ToMedia::Open { call, conf_id, .. }
                    | ToMedia::Link { call, conf_id, .. }
                    | ToMedia::Publisher { call, conf_id, .. }
                    | ToMedia::Subscriber { call, conf_id, .. } => {
                        tracing::info_span!("call", %call, conf_id = conf_id.as_str())
                    }
                    other => tracing::info_span!(
                        "call",
                        call = %other.call(),
                        conf_id = conf_id.as_deref().unwrap_or("")
                    ),
                };
                let _entered = span.entered();
                self.on_signal(now, message);
            }
            Command::Gauges(reply) => {
                self.stats.store_gauges(&self.gauges());
                let _ = reply.send(());
            }
            Command::HangUpAll(reason, reply) => {
                let ids: Vec<ParticipantId> = self.participants.keys().copied().collect();
                tracing::info!(calls = ids.len(), reason, "hanging up every call");
                for id in ids {
                    self.remove(now, id, Some(&reason));
                }
                let _ = reply.send(());
            }
        }
    }

    /// Counts what the metrics show of this loop's state (never on the packet path).
    fn gauges(&self) -> Gauges {
        let mut gauges = Gauges {
            conferences: self.conferences.len() as u64,
            linked_conferences: self
                .conferences
                .values()
                .filter(|members| {
                    members
                        .iter()
                        .any(|m| self.participants.get(m).is_some_and(Participant::is_link))
                })
                .count() as u64,
            subscriptions: self.routes.values().map(|r| r.len() as u64).sum(),
            ..Gauges::default()
        };
        for (id, p) in &self.participants {
            let state = self
                .pc_states
                .get(id)
                .copied()
                .unwrap_or(RTCPeerConnectionState::New);
            let index = match state {
                RTCPeerConnectionState::Connecting => 1,
                RTCPeerConnectionState::Connected => 2,
                RTCPeerConnectionState::Disconnected => 3,
                RTCPeerConnectionState::Failed => 4,
                RTCPeerConnectionState::Closed => 5,
                _ => 0,
            };
            gauges.peer_connections[index] += 1;
            gauges.links += u64::from(p.is_link());
            gauges.links_connected +=
                u64::from(p.is_link() && state == RTCPeerConnectionState::Connected);
            for publication in &p.publications {
                let kind = if publication.kind == RtpCodecKind::Video {
                    KIND_VIDEO
                } else {
                    KIND_AUDIO
                };
                for layer in &publication.layers {
                    // A track without simulcast is one layer, counted as layer 0.
                    let rank = match layer.rid.as_deref() {
                        None => 0,
                        rid => usize::from(cascade_forward::layer::rank(rid)),
                    };
                    gauges.published_tracks[kind][rank.min(crate::stats::LAYERS - 1)] += 1;
                }
            }
        }
        gauges
    }

    fn on_signal(&mut self, now: Instant, message: ToMedia) {
        let id = self.by_call.get(message.call()).copied();
        match message {
            ToMedia::Open { .. }
            | ToMedia::Link { .. }
            | ToMedia::Publisher { .. }
            | ToMedia::Subscriber { .. } => self.open(now, id.is_some(), message),
            ToMedia::TrackSettings {
                track_id,
                height,
                disabled,
                ..
            } => {
                if let Some(id) = id {
                    self.track_settings(now, id, &track_id, height, disabled);
                    self.process(now, id);
                }
            }
            ToMedia::Subscription {
                track_id,
                subscribe,
                ..
            } => {
                let Some(p) = id.and_then(|id| self.participants.get_mut(&id)) else {
                    return;
                };
                if !p.auto_subscribe {
                    self.stats.count_bad_subscription();
                    return;
                }
                if subscribe {
                    p.declined.remove(&track_id);
                } else if p.declined.len() < MAX_DECLINED {
                    p.declined.insert(track_id);
                } else {
                    self.stats.count_bad_subscription();
                    return;
                }
                if let Some(id) = id {
                    self.subscribe_to_all(now, id);
                    self.process(now, id);
                }
            }
            ToMedia::Data {
                to,
                reliable,
                payload,
                ..
            } => {
                // Only the loop holding the sender acts; its recipients are in its conference.
                let Some(conference) = id
                    .and_then(|id| self.participants.get(&id))
                    .map(|p| p.conf_id.clone())
                else {
                    return;
                };
                for call in &to {
                    let Some(&to_id) = self.by_call.get(call) else {
                        continue;
                    };
                    let Some(p) = self.participants.get_mut(&to_id) else {
                        continue;
                    };
                    if p.conf_id != conference || !p.auto_subscribe {
                        tracing::debug!(%call, "data packet for a call outside the sender's room");
                        continue;
                    }
                    if !p.send_livekit_data(now, reliable, &payload) {
                        self.stats.count_data_dropped();
                    }
                    self.process(now, to_id);
                }
            }
            ToMedia::Candidates { candidates, .. } => {
                if let Some(id) = id {
                    if let Some(p) = self.participants.get_mut(&id) {
                        p.add_remote_candidates(&candidates);
                    }
                    self.process(now, id);
                }
            }
            ToMedia::Negotiate {
                call, description, ..
            } => {
                let Some(id) = id else { return };
                if description.kind == "offer" {
                    if let Some(sdp) = self.answer_device_offer(now, id, description.sdp) {
                        self.send_signal(FromMedia::Negotiate {
                            call,
                            description: SessionDescription::answer(sdp),
                            metadata: SdpStreamMetadata::new(),
                        });
                    }
                } else {
                    self.accept_device_answer(now, id, description.sdp);
                }
                self.process(now, id);
            }
            ToMedia::Metadata { metadata, .. } => {
                if let Some(id) = id {
                    self.update_metadata(now, id, metadata);
                }
            }
            ToMedia::Close { call, reason } => {
                if let Some(id) = id {
                    tracing::info!(%call, %reason, "call closed by the device");
                    self.remove(now, id, None);
                }
            }
        }
    }

    /// Tells the placement when `conference` has no call left on this loop, with the `Open`s
    /// for it processed since the last report (see [`crate::placement`]).
    fn report_if_ended(&mut self, conference: &str) {
        if self.conferences.contains_key(conference) {
            return;
        }
        let opens = self.opens.remove(conference).unwrap_or(0);
        match self.placement.lock() {
            Ok(mut placement) => placement.ended(conference, self.index, opens),
            Err(poisoned) => poisoned.into_inner().ended(conference, self.index, opens),
        }
    }

    /// Takes a new call into its conference (a [`conference_key`]): a device's or another
    /// focus's invite (`Open`) or a LiveKit client's publisher connection (`Publisher`), which
    /// it answers, or a link call (`Link`) or a LiveKit client's subscriber connection
    /// (`Subscriber`), which it offers (`placed`); sends the answer (or the offer) and the
    /// candidates to the signalling side. A call already there (`duplicate`) is left as it is;
    /// a call that could not be set up leaves nothing behind. Other messages are ignored.
    fn open(&mut self, now: Instant, duplicate: bool, message: ToMedia) {
        let (conf_id, room_id, placed) = match &message {
            ToMedia::Open {
                conf_id, room_id, ..
            }
            | ToMedia::Publisher {
                conf_id, room_id, ..
            } => (conf_id, room_id, false),
            ToMedia::Link {
                conf_id, room_id, ..
            }
            | ToMedia::Subscriber {
                conf_id, room_id, ..
            } => (conf_id, room_id, true),
            _ => return,
        };
        let conference = conference_key(room_id.as_deref(), conf_id);
        let call = message.call().clone();
        *self.opens.entry(conference.clone()).or_default() += 1;
        if duplicate {
            tracing::debug!(%call, placed, "duplicate call ignored");
            return;
        }
        let (ips, addr, key) = (&self.candidate_ips, self.local_addr, conference.clone());
        let made = match message {
            ToMedia::Open {
                call,
                offer_sdp,
                metadata,
                link,
                ..
            } => Participant::answer(now, call, key, offer_sdp, metadata, link, ips, addr),
            ToMedia::Publisher {
                call, offer_sdp, ..
            } => {
                let metadata = SdpStreamMetadata::new();
                Participant::answer(now, call, key, offer_sdp, metadata, false, ips, addr).map(
                    |(mut participant, sdp, candidates)| {
                        participant.out_of_band = true;
                        (participant, sdp, candidates)
                    },
                )
            }
            ToMedia::Link { call, .. } => crate::link_socket::LinkSocket::bind(addr.ip())
                .map_err(crate::MediaError::from)
                .and_then(|socket| Participant::offer_link(now, call, key, ips, socket)),
            ToMedia::Subscriber { call, receive, .. } => Participant::offer_subscriber(
                now, call, key, ips, addr,
            )
            .map(|(mut participant, sdp, candidates)| {
                participant.receives = receive;
                (participant, sdp, candidates)
            }),
            _ => return,
        };
        self.take(now, call, &conference, made, placed);
        self.report_if_ended(&conference);
    }

    /// The rest of [`Shard::open`]: registers what `make` made, or hangs up.
    fn take(&mut self, now: Instant, call: CallKey, conference: &str, made: Made, placed: bool) {
        let (participant, sdp, candidates) = match made {
            Ok(made) => made,
            Err(err) => {
                tracing::warn!(%call, conference, %err, placed, "cannot set the call up");
                self.stats.count_failed_offer();
                self.send_signal(FromMedia::Hangup {
                    call,
                    reason: reason::UNKNOWN_ERROR.to_owned(),
                });
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        self.by_ufrag.insert(participant.ufrag.clone(), id);
        if participant.own_socket.is_some() {
            self.links.push(id);
        }
        self.by_call.insert(call.clone(), id);
        self.conferences
            .entry(conference.to_owned())
            .or_default()
            .push(id);
        let link = participant.link;
        self.earliest_call_deadline = self.earliest_call_deadline.min(participant.deadline);
        self.participants.insert(id, participant);
        self.stats.set_participants(self.participants.len());
        if placed {
            tracing::info!(%call, conference, local = %self.local_addr, ?link, "offering a call");
            self.send_signal(FromMedia::Invite {
                call: call.clone(),
                sdp,
            });
        } else {
            tracing::info!(%call, conference, local = %self.local_addr, ?link, "answering call");
            self.send_signal(FromMedia::Answer {
                call: call.clone(),
                sdp,
                metadata: SdpStreamMetadata::new(),
            });
        }
        self.send_signal(FromMedia::Candidates { call, candidates });
        self.process(now, id);
        if self.participants.get(&id).is_some_and(|p| p.auto_subscribe) {
            self.subscribe_to_all(now, id);
            self.tell_speaker(now, id);
        }
    }

    /// Removes a participant; `hangup` is the reason to report to the signalling side, if the
    /// media plane (not the device's to-device hangup) ended the call.
    fn remove(&mut self, now: Instant, id: ParticipantId, hangup: Option<&str>) {
        let Some(mut p) = self.participants.remove(&id) else {
            return;
        };
        self.pc_states.remove(&id);
        self.links.retain(|link| *link != id);
        self.speakers.retain(|_, (speaker, _)| *speaker != id);
        if let Some(reason) = hangup
            && p.data_channel.is_some()
        {
            let message = DataChannelMessage::Hangup(cascade_protocol::datachannel::Hangup {
                reason: Some(reason.to_owned()),
            });
            p.send(now, &message);
        }
        let _ = p.pc.close();
        flush(&self.socket, &self.stats, &mut p);
        self.by_call.remove(&p.call);
        self.by_ufrag.remove(&p.ufrag);
        self.by_addr.retain(|_, owner| *owner != id);
        if let Some(members) = self.conferences.get_mut(&p.conf_id) {
            members.retain(|m| *m != id);
            if members.is_empty() {
                self.conferences.remove(&p.conf_id);
                self.speakers.remove(&p.conf_id);
            }
        }
        self.report_if_ended(&p.conf_id);
        // Routes from its tracks end; the subscribers renegotiate.
        let mut affected = Vec::new();
        for publication in &p.publications {
            for route in self
                .routes
                .remove(&(id, publication.id))
                .unwrap_or_default()
            {
                if let Some(s) = self.participants.get_mut(&route.subscriber) {
                    let _ = s.pc.remove_track(route.sender_id);
                    affected.push(route.subscriber);
                }
            }
        }
        for routes in self.routes.values_mut() {
            routes.retain(|r| r.subscriber != id);
        }
        self.routes.retain(|_, routes| !routes.is_empty());
        self.payloads.retain(|key, _| self.routes.contains_key(key));
        affected.sort_unstable();
        affected.dedup();
        for subscriber in affected {
            self.offer(now, subscriber);
        }
        if !p.is_link() {
            for link in self.participants.values_mut() {
                link.forget_pending(id, None);
            }
            self.refresh_links(now, &p.conf_id);
        }
        self.announce_conference(now, &p.conf_id, None);
        self.stats.set_participants(self.participants.len());
        tracing::info!(call = %p.call, conf_id = p.conf_id, reason = hangup, "call removed");
        if let Some(reason) = hangup {
            self.send_signal(FromMedia::Hangup {
                call: p.call,
                reason: reason.to_owned(),
            });
        }
    }

    /// The earliest moment something is due, from the calls' deadlines as of the last time
    /// each was processed (kept as one lower bound, no walk over the calls), rounded up to the
    /// end of its [`TIMER_SLOT`].
    fn next_deadline(&mut self, now: Instant) -> Instant {
        let deadline = self
            .next_layer_review
            .min(self.next_sweep)
            .min(self.next_sender_reports)
            .min(self.next_probe.unwrap_or(now + Duration::from_secs(1)))
            .min(now + Duration::from_secs(1))
            .min(self.earliest_call_deadline);
        slot_end(self.timer_epoch, deadline)
    }

    fn on_timeout(&mut self, now: Instant) {
        if now >= self.next_sender_reports {
            self.next_sender_reports = now + SENDER_REPORT_INTERVAL;
            self.send_sender_reports(now);
        }
        if now >= self.next_layer_review {
            self.next_layer_review = now + LAYER_REVIEW_INTERVAL;
            self.review_layers(now);
            self.review_pausing(now);
            self.review_speakers(now);
        }
        if self.next_probe.is_some_and(|at| now >= at)
            || (self.next_probe.is_none() && !self.probing.is_empty())
        {
            self.send_probes(now);
            self.next_probe = (!self.probing.is_empty()).then(|| now + PROBE_INTERVAL);
        }
        let connect = self.connect_timeout;
        let keepalive = self.keepalive_timeout;
        let interval = self.config.keepalive_interval();
        // Only calls with something due; every call once per sweep, since forwarding to a
        // call (without processing it) may move its timers.
        let sweep = now >= self.next_sweep;
        if sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
        }
        let ids: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, p)| sweep || p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            if let Some(reason) = p.setup_failure(now, connect) {
                if p.connected {
                    tracing::info!(call = %p.call, reason, "the signalling data channel did not open within the connect timeout");
                } else {
                    tracing::info!(call = %p.call, reason, "ICE/DTLS did not connect within the connect timeout");
                }
                self.remove(now, id, Some(reason));
                continue;
            }
            if p.next_ping.is_some() && now.duration_since(p.last_pong) >= keepalive {
                self.remove(now, id, Some(reason::KEEP_ALIVE_TIMEOUT));
                continue;
            }
            if p.next_ping.is_some_and(|at| at <= now) {
                p.send(now, &DataChannelMessage::Ping(Empty {}));
                p.next_ping = Some(now + interval);
            }
            if p.pc.poll_timeout().is_some_and(|at| at <= now)
                && let Err(err) = p.pc.handle_timeout(now)
            {
                tracing::debug!(call = %p.call, %err, "timeout handling failed");
            }
            self.process(now, id);
        }
        self.earliest_call_deadline = self
            .participants
            .values()
            .map(|p| p.deadline)
            .min()
            .unwrap_or(now + SWEEP_INTERVAL);
    }

    /// Hands `message` to the signalling side; false (counted) when its channel is full.
    fn send_signal(&self, message: FromMedia) -> bool {
        if let Err(err) = self.to_signalling.try_send(message) {
            self.stats.count_signal_overflow();
            tracing::warn!(%err, "signalling channel full; message dropped");
            return false;
        }
        true
    }
}

/// Sends everything a peer connection wants on the wire (from the loop's `socket`, or the
/// call's own), and keeps the egress path's SRTP context and address up to date with the
/// stack's.
fn flush(socket: &MediaSocket, stats: &ShardStats, participant: &mut Participant) {
    let socket = participant
        .own_socket
        .as_ref()
        .map_or(socket, |own| &own.socket);
    if !participant.egress.has_context()
        && let Some(context) = participant.pc.take_egress_srtp_context()
    {
        participant.egress.install(context);
    }
    if participant.feedback_srtcp.is_none()
        && let Some(context) = participant.pc.take_feedback_srtcp_context()
    {
        participant.feedback_srtcp = Some(context);
    }
    while let Some(out) = participant.pc.poll_write() {
        if cascade_forward::demux::is_stun(&out.message) {
            // Answers to checks go to every address the device checks from; media follows the
            // selected pair, which DTLS, SCTP and RTCP are sent on.
            if cascade_forward::demux::is_binding_success(&out.message) {
                participant.answered_check = Some(out.transport.peer_addr);
            }
        } else {
            participant.egress.set_remote(out.transport.peer_addr);
        }
        send(socket, stats, &out.message, out.transport.peer_addr);
    }
}

/// The socket a call's datagrams leave from: its own (a link this focus placed) or the
/// loop's `shared` one.
fn socket_of<'a>(shared: &'a MediaSocket, participant: &'a Participant) -> &'a MediaSocket {
    participant
        .own_socket
        .as_ref()
        .map_or(shared, |own| &own.socket)
}

/// The first multiple of [`TIMER_SLOT`] after `epoch` that is not before `deadline`.
fn slot_end(epoch: Instant, deadline: Instant) -> Instant {
    let slot = TIMER_SLOT.as_nanos();
    let slots = deadline
        .saturating_duration_since(epoch)
        .as_nanos()
        .div_ceil(slot);
    u64::try_from(slots * slot).map_or(deadline, |nanos| epoch + Duration::from_nanos(nanos))
}

/// Sends one datagram.
fn send(socket: &MediaSocket, stats: &ShardStats, datagram: &[u8], to: SocketAddr) {
    match socket.try_send_to(datagram, to) {
        Ok(len) => stats.count_sent(len),
        Err(err) => {
            stats.count_send_error();
            tracing::trace!(%err, "send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_deadlines_round_up_to_the_end_of_their_slot() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        for (deadline, expected) in [
            (ms(0), ms(0)),
            (ms(1), ms(10)),
            (ms(10), ms(10)),
            (ms(10) + Duration::from_nanos(1), ms(20)),
            (ms(99), ms(100)),
        ] {
            assert_eq!(
                slot_end(epoch, epoch + deadline),
                epoch + expected,
                "{deadline:?}"
            );
        }
        // A deadline before the epoch (a call's timer already due) is due at once.
        let later = epoch + ms(5);
        assert_eq!(slot_end(later, epoch), later);
    }
}
