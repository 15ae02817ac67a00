//! One event loop: a UDP socket, the peer connections on it, and their conferences.
//!
//! Everything here runs on one thread with no locks. A datagram goes socket → demux → peer
//! connection → (if RTP) the routes of its publisher track → the subscribers' peer connections →
//! socket, inline, in one call of [`Shard::on_datagram`].

use crate::admission::{self, Inbound};
use crate::batch::Batch;
use crate::conference::{Conferences, Route, Routes, available_streams};
use crate::config::MediaConfig;
use crate::egress::{self, OutboundStream};
use crate::interceptor;
use crate::participant::{Layer, Participant, ParticipantId, Publication, PublicationId};
use crate::rewrite::{Rewritten, write_header};
use crate::stats::{Gauges, KIND_AUDIO, KIND_VIDEO, ShardStats};
use bytes::BytesMut;
use cascade_forward::demux;
use cascade_forward::{
    Codec, DropReason, ExtensionMap, LayerId, LayerInfo, PacketMeta, Subscription, Verdict,
};
use cascade_protocol::datachannel::{
    ActiveSpeaker, DataChannelMessage, Empty, Negotiate, TrackRequest,
};
use cascade_protocol::event::reason;
use cascade_protocol::{CallKey, FromMedia, SdpStreamMetadata, SessionDescription, ToMedia};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
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
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

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

/// How often every call's timers are looked at, due or not.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often subscriptions' layers are reviewed.
const LAYER_REVIEW_INTERVAL: Duration = Duration::from_millis(250);
/// A layer without packets for this long is treated as stopped.
const LAYER_TIMEOUT: Duration = Duration::from_millis(1500);
/// Full height assumed for simulcast tracks (matrix-js-sdk sends 720p cameras).
const FULL_HEIGHT: u32 = 720;
/// The RFC 6464 audio-level header extension.
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// Weight of a new audio level in the smoothed loudness.
const LOUDNESS_SMOOTHING: f32 = 0.05;

/// How often each forwarded stream gets a sender report (RFC 3550 §6.2 leaves the interval
/// to the application; WebRTC stacks send one about every second).
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Datagrams read per wake-up before other work gets a turn.
const READ_BATCH: usize = 64;
/// Largest datagram accepted.
const MAX_DATAGRAM: usize = 1500;

/// One event loop's state.
pub struct Shard {
    config: Arc<MediaConfig>,
    socket: UdpSocket,
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
    /// When every call's timers are next looked at, due or not.
    next_sweep: Instant,
    /// How long a call may take to connect.
    connect_timeout: Duration,
    /// How long pongs may be missing.
    keepalive_timeout: Duration,
    /// Each conference's active speaker (participant and audio publication).
    speakers: HashMap<String, (ParticipantId, PublicationId)>,
    /// The last connection state each peer connection reported (for the metrics).
    pc_states: HashMap<ParticipantId, RTCPeerConnectionState>,
}

impl Shard {
    /// A loop around a bound socket.
    pub fn new(
        config: Arc<MediaConfig>,
        socket: UdpSocket,
        to_signalling: mpsc::Sender<FromMedia>,
        stats: Arc<ShardStats>,
    ) -> std::io::Result<Self> {
        let local_addr = socket.local_addr()?;
        let (connect_timeout, keepalive_timeout) =
            (config.connect_timeout(), config.keepalive_timeout());
        let candidate_ips = config.candidate_ips();
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
            to_signalling,
            stats,
            datagram: Vec::with_capacity(MAX_DATAGRAM + 64),
            batch: Batch::default(),
            next_sender_reports: Instant::now() + SENDER_REPORT_INTERVAL,
            next_layer_review: Instant::now() + LAYER_REVIEW_INTERVAL,
            next_sweep: Instant::now() + SWEEP_INTERVAL,
            connect_timeout,
            keepalive_timeout,
            speakers: HashMap::new(),
            pc_states: HashMap::new(),
        })
    }

    /// Runs until the command channel closes.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let deadline = self.next_deadline(Instant::now());
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => self.on_command(Instant::now(), command),
                    None => break,
                },
                received = self.socket.recv_from(&mut buf) => {
                    if let Ok((len, from)) = received {
                        self.on_datagram(Instant::now(), from, &buf[..len]);
                        for _ in 1..READ_BATCH {
                            match self.socket.try_recv_from(&mut buf) {
                                Ok((len, from)) => self.on_datagram(Instant::now(), from, &buf[..len]),
                                Err(_) => break,
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => self.on_timeout(Instant::now()),
            }
        }
        let ids: Vec<ParticipantId> = self.participants.keys().copied().collect();
        for id in ids {
            self.remove(Instant::now(), id, Some(reason::USER_HANGUP));
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
                    ToMedia::Open { call, conf_id, .. } => {
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
            ToMedia::Open {
                call,
                conf_id,
                offer_sdp,
                metadata,
            } => {
                if id.is_some() {
                    tracing::debug!(%call, "duplicate open ignored");
                    return;
                }
                self.open(now, call, conf_id, offer_sdp, metadata);
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

    fn open(
        &mut self,
        now: Instant,
        call: CallKey,
        conf_id: String,
        offer_sdp: String,
        metadata: SdpStreamMetadata,
    ) {
        let answered = Participant::answer(
            now,
            call.clone(),
            conf_id.clone(),
            offer_sdp,
            metadata,
            &self.candidate_ips,
            self.local_addr,
        );
        let (participant, sdp, candidates) = match answered {
            Ok(answered) => answered,
            Err(err) => {
                tracing::warn!(%call, conf_id, %err, "cannot answer the offer");
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
        self.by_call.insert(call.clone(), id);
        self.conferences
            .entry(conf_id.clone())
            .or_default()
            .push(id);
        self.participants.insert(id, participant);
        self.stats.set_participants(self.participants.len());
        tracing::info!(%call, conf_id, local = %self.local_addr, "answering call");
        self.send_signal(FromMedia::Answer {
            call: call.clone(),
            sdp,
            metadata: SdpStreamMetadata::new(),
        });
        self.send_signal(FromMedia::Candidates { call, candidates });
        self.process(now, id);
    }

    /// Handles one datagram from the socket.
    pub fn on_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.stats.count_received(datagram.len());
        let id = match demux::stun_local_ufrag(datagram) {
            Some(ufrag) => match self.by_ufrag.get(ufrag) {
                Some(&id) => {
                    self.by_addr.insert(from, id);
                    id
                }
                None => {
                    self.stats.count_unknown_source();
                    return;
                }
            },
            None => match self.by_addr.get(&from) {
                Some(&id) => id,
                None => {
                    self.stats.count_unknown_source();
                    return;
                }
            },
        };
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        let inbound = admission::classify(datagram);
        let media = match inbound {
            Inbound::Rtp { ssrc, .. } | Inbound::Rtcp(ssrc) => {
                if !participant.admission.admit(ssrc) {
                    self.stats.count_ssrc_limit();
                    return;
                }
                true
            }
            Inbound::Other => false,
        };
        let reads_before = interceptor::reads_on_this_thread();
        let read = participant.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(datagram),
        });
        if let Err(err) = read {
            tracing::trace!(call = %participant.call, %err, "datagram refused");
        }
        if media && interceptor::reads_on_this_thread() == reads_before {
            self.stats.count_srtp_refused();
        } else if let Inbound::Rtp { ssrc, payload_type } = inbound
            && !participant.stack_binds(ssrc, payload_type)
        {
            self.stats.count_unbound_ssrc();
            tracing::debug!(call = %participant.call, ssrc, "RTP from an SSRC bound to no track");
        }
        self.process(now, id);
    }

    /// Drains everything a participant's peer connection produced.
    fn process(&mut self, now: Instant, id: ParticipantId) {
        loop {
            let Some(participant) = self.participants.get_mut(&id) else {
                return;
            };
            flush(&self.socket, &self.stats, participant);
            if let Some(event) = participant.pc.poll_event() {
                self.on_event(now, id, event);
                continue;
            }
            if let Some(TaggedRTCMessage { message, .. }) = participant.pc.poll_read() {
                match message {
                    RTCMessage::RtpPacket(_, packet) => self.on_rtp(now, id, packet),
                    RTCMessage::RtcpPacket(_, packets) => self.on_rtcp(now, id, &packets),
                    RTCMessage::DataChannelMessage(_, message) => {
                        match std::str::from_utf8(&message.data) {
                            Ok(text) => self.on_channel_text(now, id, text),
                            Err(_) => self.stats.count_bad_channel_message(),
                        }
                    }
                    _ => {}
                }
                continue;
            }
            participant.deadline = participant.due(self.connect_timeout, self.keepalive_timeout);
            return;
        }
    }

    fn on_event(&mut self, now: Instant, id: ParticipantId, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(p) = self.participants.get_mut(&id) else {
                    return;
                };
                tracing::debug!(call = %p.call, conf_id = p.conf_id, %state, "connection state");
                self.pc_states.insert(id, state);
                match state {
                    RTCPeerConnectionState::Connected => p.connected = true,
                    RTCPeerConnectionState::Failed => {
                        self.remove(now, id, Some(reason::ICE_FAILED));
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(channel)) => {
                let Some(p) = self.participants.get_mut(&id) else {
                    return;
                };
                let is_signalling =
                    p.pc.data_channel(channel)
                        .is_some_and(|c| Participant::is_signalling_channel(c.label()));
                if !is_signalling {
                    return;
                }
                p.data_channel = Some(channel);
                p.last_pong = now;
                p.next_ping = Some(now + self.config.keepalive_interval());
                let offer_due = p.negotiation.again;
                self.announce_to(now, id);
                if offer_due {
                    self.offer(now, id);
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                let Some(p) = self.participants.get_mut(&id) else {
                    return;
                };
                let Some(mut receiver) = p.pc.rtp_receiver(init.receiver_id) else {
                    return;
                };
                let track = receiver.track();
                let kind = track.kind();
                let Some(codec) = track.codec(init.ssrc).cloned() else {
                    tracing::debug!(call = %p.call, ssrc = init.ssrc, "track without codec");
                    return;
                };
                let audio_level_id = receiver
                    .get_parameters()
                    .rtp_parameters
                    .header_extensions
                    .iter()
                    .find(|e| e.uri == AUDIO_LEVEL_URI)
                    .and_then(|e| u8::try_from(e.id).ok());
                if p.publication(init.ssrc).is_some() {
                    return;
                }
                tracing::info!(call = %p.call, conf_id = p.conf_id, track = init.track_id, rid = init.rid, mime = codec.mime_type, ssrc = init.ssrc, "publication");
                if p.publications.is_empty() {
                    // A track opens with its first packet: the call's first media.
                    self.stats
                        .first_packet_latency
                        .observe(now.saturating_duration_since(p.opened_at));
                }
                let layer = Layer {
                    rid: init.rid.clone(),
                    ssrc: init.ssrc,
                    last_packet_at: Some(now),
                    last_keyframe_request: None,
                };
                if let Some(existing) = p
                    .publications
                    .iter_mut()
                    .find(|pb| pb.track_id == init.track_id)
                {
                    // Another simulcast layer of a track we know: keep the layers lowest first.
                    existing.layers.push(layer);
                    existing
                        .layers
                        .sort_by_key(|l| cascade_forward::layer::rank(l.rid.as_deref()));
                    return;
                }
                let publication_id = p.next_publication_id;
                p.next_publication_id += 1;
                let muted = muted_by_metadata(&p.metadata, init.stream_ids.first(), kind);
                p.publications.push(Publication {
                    id: publication_id,
                    stream_id: init.stream_ids.first().cloned().unwrap_or_default(),
                    track_id: init.track_id,
                    kind,
                    layers: vec![layer],
                    receiver_id: init.receiver_id,
                    codec,
                    audio_level_id,
                    loudness: 0.0,
                    muted,
                });
                let conf_id = p.conf_id.clone();
                self.announce_conference(now, &conf_id, Some(id));
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) => {
                self.unpublish(now, id, &track_id);
            }
            _ => {}
        }
    }

    fn on_rtp(&mut self, now: Instant, publisher: ParticipantId, packet: rtp::Packet) {
        let ssrc = packet.header.ssrc;
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        let Some((index, layer)) = p.layer_of(ssrc) else {
            self.stats.count_unrouted();
            return;
        };
        let publication = &mut p.publications[index];
        publication.layers[layer].last_packet_at = Some(now);
        if let Some(id) = publication.audio_level_id
            && let Some(level) = packet.header.get_extension(id)
            && let Some(&byte) = level.first()
        {
            // RFC 6464: 0 is the loudest, 127 silence (in -dBov).
            let loudness = 127.0 - f32::from(byte & 0x7f);
            publication.loudness += (loudness - publication.loudness) * LOUDNESS_SMOOTHING;
        }
        let publication_id = publication.id;
        let kind = if publication.kind == RtpCodecKind::Video {
            KIND_VIDEO
        } else {
            KIND_AUDIO
        };
        let Some(routes) = self.routes.get_mut(&(publisher, publication_id)) else {
            self.stats.count_unrouted();
            return;
        };
        let meta = PacketMeta {
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            payload: &packet.payload,
            arrival: now,
        };
        let layer = layer as LayerId;
        let mut wanted: Option<LayerId> = None;
        for route in routes.iter_mut() {
            let Some(payload_type) = route.payload_type else {
                continue;
            };
            match route.forward.forward(layer, &meta) {
                Verdict::Forward {
                    seq,
                    timestamp,
                    patch,
                } => {
                    let Some(subscriber) = self.participants.get_mut(&route.subscriber) else {
                        continue;
                    };
                    if self.batch.is_full() {
                        self.batch.send(&self.socket, &self.stats);
                    }
                    let buf = self.batch.next_buffer();
                    let header_len = write_header(
                        buf,
                        &packet.header,
                        Rewritten {
                            ssrc: route.out_ssrc,
                            sequence_number: seq,
                            timestamp,
                            payload_type,
                        },
                        &route.extensions,
                    );
                    buf.extend_from_slice(&packet.payload);
                    if patch {
                        route.forward.patch(&mut buf[header_len..]);
                    }
                    route.stream.sent(now, seq, timestamp, buf, header_len);
                    match subscriber
                        .egress
                        .protect(buf, header_len, route.out_ssrc, seq)
                    {
                        Ok(to) => {
                            self.stats.count_forwarded(kind, packet.payload.len());
                            self.batch.commit(to);
                        }
                        Err(reason) => {
                            self.stats.count_dropped();
                            tracing::trace!(?reason, "forward refused");
                        }
                    }
                }
                Verdict::Drop(reason) => {
                    self.stats.count_held_back(reason);
                    if reason == DropReason::WaitingForKeyframe {
                        wanted = route.forward.wants_keyframe();
                    }
                }
            }
        }
        if !self.batch.is_empty() {
            self.batch.send(&self.socket, &self.stats);
        }
        if let Some(layer) = wanted {
            self.request_keyframe(now, publisher, publication_id, layer, false);
        }
    }

    fn on_rtcp(
        &mut self,
        now: Instant,
        subscriber: ParticipantId,
        packets: &[Box<dyn rtc::rtcp::Packet>],
    ) {
        for packet in packets {
            let any = packet.as_any();
            if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.stats.count_nack_in();
                self.retransmit(subscriber, nack);
                continue;
            }
            let media_ssrc = if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                pli.media_ssrc
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                fir.fir
                    .first()
                    .map(|entry| entry.ssrc)
                    .unwrap_or(fir.media_ssrc)
            } else {
                continue;
            };
            self.stats.count_keyframe_request_in();
            // The subscriber asks about the SSRC it sees; the publisher is asked about the
            // layer the subscriber is (or is about to be) on.
            let source = self
                .routes
                .iter()
                .find_map(|(&(publisher, publication), routes)| {
                    routes
                        .iter()
                        .find(|r| r.subscriber == subscriber && r.out_ssrc == media_ssrc)
                        .map(|r| (publisher, publication, r.forward.target()))
                });
            if let Some((publisher, publication, layer)) = source {
                self.request_keyframe(now, publisher, publication, layer, false);
            }
        }
    }

    /// Answers a subscriber's NACK (RFC 4585 §6.2.1) from the outgoing stream's recent
    /// packets, over RTX where negotiated; packets no longer kept are skipped.
    fn retransmit(&mut self, subscriber: ParticipantId, nack: &TransportLayerNack) {
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        let Some(route) = self
            .routes
            .values_mut()
            .flat_map(|routes| routes.iter_mut())
            .find(|r| r.subscriber == subscriber && r.out_ssrc == nack.media_ssrc)
        else {
            return;
        };
        for pair in &nack.nacks {
            for lost in *pair {
                let Some((header_len, ssrc, sequence_number)) =
                    route.stream.retransmission(lost, &mut self.datagram)
                else {
                    continue;
                };
                match p
                    .egress
                    .protect(&mut self.datagram, header_len, ssrc, sequence_number)
                {
                    Ok(to) => {
                        self.stats.count_retransmitted();
                        send(&self.socket, &self.stats, &self.datagram, to);
                    }
                    Err(reason) => {
                        self.stats.count_dropped();
                        tracing::trace!(?reason, "retransmission refused");
                    }
                }
            }
        }
    }

    /// Sends a sender report (RFC 3550 §6.4.1) for every forwarded stream that has sent
    /// something, through each subscriber's stack (which protects RTCP).
    fn send_sender_reports(&mut self, now: Instant) {
        let wall = std::time::SystemTime::now();
        for route in self.routes.values().flatten() {
            let Some(report) = route.stream.sender_report(now, wall) else {
                continue;
            };
            let Some(p) = self.participants.get_mut(&route.subscriber) else {
                continue;
            };
            if let Some(mut sender) = p.pc.rtp_sender(route.sender_id)
                && let Err(err) = sender.write_rtcp(now, vec![Box::new(report)])
            {
                tracing::trace!(call = %p.call, %err, "sender report refused");
            }
            flush(&self.socket, &self.stats, p);
        }
    }

    /// Asks a publisher for a keyframe of one layer, at most once per interval unless `always`.
    fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        publication: PublicationId,
        layer: LayerId,
        always: bool,
    ) {
        let interval = self.config.keyframe_request_interval();
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        let Some(publication) = p.publication_by_id(publication) else {
            return;
        };
        if publication.kind != RtpCodecKind::Video {
            return;
        }
        let receiver_id = publication.receiver_id;
        let Some(layer) = publication.layers.get_mut(usize::from(layer)) else {
            return;
        };
        if !always
            && layer
                .last_keyframe_request
                .is_some_and(|at| now.duration_since(at) < interval)
        {
            return;
        }
        layer.last_keyframe_request = Some(now);
        let media_ssrc = layer.ssrc;
        if let Some(mut receiver) = p.pc.rtp_receiver(receiver_id) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            if receiver.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                self.stats.count_keyframe_request();
            }
        }
        flush(&self.socket, &self.stats, p);
    }

    fn on_channel_text(&mut self, now: Instant, id: ParticipantId, text: &str) {
        let message = match DataChannelMessage::parse(text) {
            Ok(message) => message,
            Err(err) => {
                self.stats.count_bad_channel_message();
                if let Some(p) = self.participants.get(&id) {
                    tracing::debug!(call = %p.call, %err, "bad data-channel message");
                }
                return;
            }
        };
        match message {
            DataChannelMessage::TrackSubscription(subscription) => {
                let mut changed = false;
                for request in &subscription.subscribe {
                    changed |= self.subscribe(now, id, request);
                }
                for request in &subscription.unsubscribe {
                    changed |= self.unsubscribe(id, &request.stream_id, &request.track_id);
                }
                if changed {
                    self.offer(now, id);
                }
            }
            DataChannelMessage::Negotiate(negotiate) => {
                let Negotiate {
                    description,
                    sdp_stream_metadata,
                } = negotiate;
                if description.kind == "offer" {
                    if !sdp_stream_metadata.is_empty()
                        && let Some(p) = self.participants.get_mut(&id)
                    {
                        p.metadata = sdp_stream_metadata;
                    }
                    if let Some(sdp) = self.answer_device_offer(now, id, description.sdp) {
                        let reply = DataChannelMessage::Negotiate(Negotiate {
                            description: SessionDescription::answer(sdp),
                            sdp_stream_metadata: self.forwarded_metadata(id),
                        });
                        if let Some(p) = self.participants.get_mut(&id) {
                            p.send(now, &reply);
                        }
                    }
                } else {
                    self.accept_device_answer(now, id, description.sdp);
                }
            }
            DataChannelMessage::SdpStreamMetadataChanged(changed) => {
                self.update_metadata(now, id, changed.sdp_stream_metadata);
            }
            DataChannelMessage::Ping(_) => {
                if let Some(p) = self.participants.get_mut(&id) {
                    p.send(now, &DataChannelMessage::Pong(Empty {}));
                }
            }
            DataChannelMessage::ActiveSpeaker(_) => {
                // Only the focus sends these; a device echoing one is ignored.
                self.stats.count_bad_channel_message();
            }
            DataChannelMessage::Pong(_) => {
                if let Some(p) = self.participants.get_mut(&id) {
                    p.last_pong = now;
                }
            }
            DataChannelMessage::Hangup(hangup) => {
                let reason = hangup
                    .reason
                    .unwrap_or_else(|| reason::USER_HANGUP.to_owned());
                if let Some(p) = self.participants.get(&id) {
                    tracing::info!(call = %p.call, reason, "device hung up on the data channel");
                }
                self.remove(now, id, Some(&reason));
            }
        }
    }

    /// Starts forwarding a publisher track to `subscriber`, or updates the size it renders the
    /// track at; returns whether tracks were added (a renegotiation is due).
    fn subscribe(
        &mut self,
        now: Instant,
        subscriber: ParticipantId,
        request: &TrackRequest,
    ) -> bool {
        let Some(conf_id) = self
            .participants
            .get(&subscriber)
            .map(|p| p.conf_id.clone())
        else {
            return false;
        };
        let members = self.conferences.get(&conf_id).cloned().unwrap_or_default();
        let found = members.iter().filter(|m| **m != subscriber).find_map(|m| {
            self.participants.get(m).and_then(|p| {
                p.publications
                    .iter()
                    .find(|pb| pb.stream_id == request.stream_id && pb.track_id == request.track_id)
                    .map(|pb| (*m, pb.clone()))
            })
        });
        let Some((publisher, publication)) = found else {
            self.stats.count_bad_subscription();
            return false;
        };
        let key = (publisher, publication.id);
        let requested_height = request.height;
        let target = select_layer(&publication, requested_height, now);
        if let Some(route) = self
            .routes
            .get_mut(&key)
            .and_then(|routes| routes.iter_mut().find(|r| r.subscriber == subscriber))
        {
            route.requested_height = requested_height;
            if let Some(layer) = target
                && layer != route.forward.target()
            {
                route.forward.set_target(layer);
                self.stats.count_layer_switch();
                self.request_keyframe(now, publisher, publication.id, layer, true);
            }
            return false;
        }
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return false;
        };
        let out_ssrc = rand::random::<u32>();
        let rtx_ssrc = (publication.kind == RtpCodecKind::Video).then(rand::random::<u32>);
        let track = MediaStreamTrack::new(
            publication.stream_id.clone(),
            publication.track_id.clone(),
            publication.track_id.clone(),
            publication.kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(out_ssrc),
                    // Retransmissions of video go over RTX where the subscriber negotiated it.
                    rtx: rtx_ssrc.map(|ssrc| RTCRtpRtxParameters { ssrc }),
                    ..Default::default()
                },
                codec: publication.codec.clone(),
                ..Default::default()
            }],
        );
        // A transceiver of its own: `add_track` would reuse the first free transceiver of the
        // kind, which can be the one the device publishes on; if the device made that one
        // `sendonly`, its answer refuses the focus's media there and the subscription is dead.
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: Vec::new(),
            send_encodings: Vec::new(),
        };
        let sender_id = match p.pc.add_transceiver_from_track(track, Some(init)) {
            Ok(transceiver_id) => RTCRtpSenderId::from(transceiver_id),
            Err(err) => {
                tracing::warn!(call = %p.call, %err, "cannot add a track for a subscription");
                return false;
            }
        };
        let codec = Codec::from_mime(&publication.codec.mime_type);
        let top = publication.layers.len().saturating_sub(1) as LayerId;
        let mut forward = Subscription::new(
            codec,
            publication.codec.clock_rate,
            rand::random(),
            rand::random(),
            target.unwrap_or(top),
        );
        forward.set_paused(publication.muted);
        tracing::info!(call = %p.call, stream_id = request.stream_id, track_id = request.track_id, height = requested_height, layer = target, "subscribed");
        self.routes.entry(key).or_default().push(Route {
            subscriber,
            sender_id,
            out_ssrc,
            stream: OutboundStream::new(out_ssrc, publication.codec.clock_rate, rtx_ssrc),
            payload_type: None,
            mime_type: publication.codec.mime_type.clone(),
            stream_id: publication.stream_id,
            track_id: publication.track_id,
            requested_height,
            extensions: ExtensionMap::default(),
            forward,
        });
        true
    }

    /// Stops forwarding a track to `subscriber`; returns whether anything changed.
    fn unsubscribe(&mut self, subscriber: ParticipantId, stream_id: &str, track_id: &str) -> bool {
        let mut removed = Vec::new();
        for routes in self.routes.values_mut() {
            routes.retain(|r| {
                let hit = r.subscriber == subscriber
                    && r.stream_id == stream_id
                    && r.track_id == track_id;
                if hit {
                    removed.push(r.sender_id);
                }
                !hit
            });
        }
        self.routes.retain(|_, routes| !routes.is_empty());
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return false;
        };
        for sender_id in &removed {
            if let Err(err) = p.pc.remove_track(*sender_id) {
                tracing::debug!(call = %p.call, %err, "remove_track failed");
            }
        }
        !removed.is_empty()
    }

    /// A publisher's track ended: stop its routes and tell the others.
    fn unpublish(&mut self, now: Instant, publisher: ParticipantId, track_id: &str) {
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        let ended: Vec<PublicationId> = p
            .publications
            .iter()
            .filter(|pb| pb.track_id == track_id)
            .map(|pb| pb.id)
            .collect();
        p.publications.retain(|pb| pb.track_id != track_id);
        let conf_id = p.conf_id.clone();
        let mut affected = Vec::new();
        for publication in ended {
            for route in self
                .routes
                .remove(&(publisher, publication))
                .unwrap_or_default()
            {
                if let Some(s) = self.participants.get_mut(&route.subscriber) {
                    let _ = s.pc.remove_track(route.sender_id);
                    affected.push(route.subscriber);
                }
            }
        }
        affected.dedup();
        for id in affected {
            self.offer(now, id);
        }
        self.announce_conference(now, &conf_id, Some(publisher));
    }

    /// Makes (or schedules) a focus offer to `id` and sends it on the data channel.
    fn offer(&mut self, now: Instant, id: ParticipantId) {
        let metadata = self.forwarded_metadata(id);
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        match p.make_offer(now) {
            Ok(Some(sdp)) => {
                let message = DataChannelMessage::Negotiate(Negotiate {
                    description: SessionDescription::offer(sdp),
                    sdp_stream_metadata: metadata,
                });
                p.send(now, &message);
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(call = %p.call, %err, "cannot make an offer"),
        }
        self.process(now, id);
    }

    fn answer_device_offer(
        &mut self,
        now: Instant,
        id: ParticipantId,
        sdp: String,
    ) -> Option<String> {
        let p = self.participants.get_mut(&id)?;
        match p.answer_offer(now, sdp) {
            Ok(answer) => Some(answer),
            Err(err) => {
                tracing::warn!(call = %p.call, %err, "cannot answer the device's offer");
                None
            }
        }
    }

    fn accept_device_answer(&mut self, now: Instant, id: ParticipantId, sdp: String) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let again = match p.accept_answer(now, sdp) {
            Ok(again) => again,
            Err(err) => {
                tracing::warn!(call = %p.call, %err, "cannot apply the device's answer");
                return;
            }
        };
        // Routes negotiated by this answer learn their payload type and extension ids, and
        // start at a keyframe.
        let mut ready = Vec::new();
        for (&key, routes) in self.routes.iter_mut() {
            for route in routes
                .iter_mut()
                .filter(|r| r.subscriber == id && r.payload_type.is_none())
            {
                let Some(mut sender) = p.pc.rtp_sender(route.sender_id) else {
                    continue;
                };
                let parameters = &sender.get_parameters().rtp_parameters;
                let codec = egress::send_codec(&parameters.codecs, &route.mime_type);
                route.payload_type = codec.map(|c| c.payload_type);
                if let Some(codec) = codec {
                    route.stream.negotiated(codec.rtx_payload_type, codec.nack);
                }
                ready.push((
                    key,
                    route.sender_id,
                    extension_ids(&parameters.header_extensions),
                ));
            }
        }
        for (key, sender_id, subscriber_extensions) in ready {
            let publisher_extensions = self.publisher_extensions(key);
            let subscriber_extensions: Vec<(&str, u8)> = subscriber_extensions
                .iter()
                .map(|(uri, id)| (uri.as_str(), *id))
                .collect();
            let map = ExtensionMap::new(
                publisher_extensions
                    .iter()
                    .map(|(uri, id)| (uri.as_str(), *id)),
                &subscriber_extensions,
            );
            let wanted = self.routes.get_mut(&key).and_then(|routes| {
                let route = routes
                    .iter_mut()
                    .find(|r| r.sender_id == sender_id && r.subscriber == id)?;
                route.extensions = map;
                route.payload_type.and(route.forward.wants_keyframe())
            });
            if let Some(layer) = wanted {
                self.request_keyframe(now, key.0, key.1, layer, true);
            }
        }
        if again {
            self.offer(now, id);
        }
    }

    fn update_metadata(&mut self, now: Instant, id: ParticipantId, metadata: SdpStreamMetadata) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        p.metadata = metadata;
        // MSC3291: muted tracks stop being forwarded; unmuted video resumes at a keyframe.
        let mut changed = Vec::new();
        for publication in &mut p.publications {
            let muted =
                muted_by_metadata(&p.metadata, Some(&publication.stream_id), publication.kind);
            if muted != publication.muted {
                publication.muted = muted;
                changed.push((publication.id, muted));
            }
        }
        let conf_id = p.conf_id.clone();
        for (publication, muted) in changed {
            let mut wanted = None;
            for route in self
                .routes
                .get_mut(&(id, publication))
                .into_iter()
                .flatten()
            {
                route.forward.set_paused(muted);
                wanted = wanted.or(route.forward.wants_keyframe());
            }
            tracing::info!(conf_id, publication, muted, "publication mute changed");
            if let Some(layer) = wanted {
                self.request_keyframe(now, id, publication, layer, true);
            }
        }
        self.announce_conference(now, &conf_id, Some(id));
    }

    /// Moves subscriptions to the layer that fits them now that layers may have started or
    /// stopped arriving, and asks for the keyframes the switches wait for.
    fn review_layers(&mut self, now: Instant) {
        let mut requests = Vec::new();
        for (&(publisher, publication_id), routes) in self.routes.iter_mut() {
            let Some(publication) = self
                .participants
                .get(&publisher)
                .and_then(|p| p.publications.iter().find(|pb| pb.id == publication_id))
            else {
                continue;
            };
            for route in routes.iter_mut() {
                let Some(layer) = select_layer(publication, route.requested_height, now) else {
                    continue;
                };
                if layer != route.forward.target() {
                    tracing::debug!(
                        stream_id = route.stream_id,
                        track_id = route.track_id,
                        from = route.forward.target(),
                        to = layer,
                        "layer change"
                    );
                    route.forward.set_target(layer);
                    self.stats.count_layer_switch();
                }
                if let Some(wanted) = route.forward.wants_keyframe() {
                    requests.push((publisher, publication_id, wanted));
                }
            }
        }
        for (publisher, publication, layer) in requests {
            self.request_keyframe(now, publisher, publication, layer, false);
        }
    }

    /// Announces each conference's active speaker when it changes.
    fn review_speakers(&mut self, now: Instant) {
        let mut changes = Vec::new();
        for (conf_id, members) in &self.conferences {
            let candidates: Vec<((ParticipantId, PublicationId), f32)> = members
                .iter()
                .filter_map(|id| self.participants.get(id).map(|p| (id, p)))
                .flat_map(|(id, p)| {
                    p.publications
                        .iter()
                        .filter(|pb| pb.audio_level_id.is_some() && !pb.muted)
                        .map(move |pb| ((*id, pb.id), pb.loudness))
                })
                .collect();
            let current = self.speakers.get(conf_id).copied();
            let chosen = cascade_forward::speaker::select_speaker(&candidates, current);
            if chosen != current
                && let Some(speaker) = chosen
            {
                changes.push((conf_id.clone(), speaker));
            }
        }
        for (conf_id, (speaker, publication)) in changes {
            self.speakers
                .insert(conf_id.clone(), (speaker, publication));
            let Some(message) = self.participants.get(&speaker).and_then(|p| {
                let stream_id = p
                    .publications
                    .iter()
                    .find(|pb| pb.id == publication)?
                    .stream_id
                    .clone();
                Some(DataChannelMessage::ActiveSpeaker(ActiveSpeaker {
                    user_id: p.call.user_id.clone(),
                    device_id: p.call.device_id.clone(),
                    stream_id,
                }))
            }) else {
                continue;
            };
            tracing::debug!(conf_id, speaker, "active speaker");
            for id in self.conferences.get(&conf_id).cloned().unwrap_or_default() {
                if let Some(p) = self.participants.get_mut(&id) {
                    p.send(now, &message);
                    flush(&self.socket, &self.stats, p);
                }
            }
        }
    }

    /// The header extensions (URI, id) the publisher of `key` negotiated.
    fn publisher_extensions(&mut self, key: (ParticipantId, PublicationId)) -> Vec<(String, u8)> {
        let Some(p) = self.participants.get_mut(&key.0) else {
            return Vec::new();
        };
        let Some(receiver_id) = p
            .publications
            .iter()
            .find(|pb| pb.id == key.1)
            .map(|pb| pb.receiver_id)
        else {
            return Vec::new();
        };
        p.pc.rtp_receiver(receiver_id)
            .map(|mut r| extension_ids(&r.get_parameters().rtp_parameters.header_extensions))
            .unwrap_or_default()
    }

    /// The metadata of the streams the focus forwards to `id`.
    fn forwarded_metadata(&self, id: ParticipantId) -> SdpStreamMetadata {
        let Some(p) = self.participants.get(&id) else {
            return SdpStreamMetadata::new();
        };
        let members = self
            .conferences
            .get(&p.conf_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        available_streams(id, members, &self.participants)
    }

    /// Tells `id` which streams it may subscribe to.
    fn announce_to(&mut self, now: Instant, id: ParticipantId) {
        let metadata = self.forwarded_metadata(id);
        if let Some(p) = self.participants.get_mut(&id) {
            let message = DataChannelMessage::SdpStreamMetadataChanged(
                cascade_protocol::datachannel::MetadataChanged {
                    sdp_stream_metadata: metadata,
                },
            );
            p.send(now, &message);
            flush(&self.socket, &self.stats, p);
        }
    }

    /// Tells every member of a conference (but `except`) which streams it may subscribe to.
    fn announce_conference(&mut self, now: Instant, conf_id: &str, except: Option<ParticipantId>) {
        let members = self.conferences.get(conf_id).cloned().unwrap_or_default();
        for id in members.into_iter().filter(|id| Some(*id) != except) {
            self.announce_to(now, id);
        }
    }

    /// Removes a participant; `hangup` is the reason to report to the signalling side, if the
    /// media plane (not the device's to-device hangup) ended the call.
    fn remove(&mut self, now: Instant, id: ParticipantId, hangup: Option<&str>) {
        let Some(mut p) = self.participants.remove(&id) else {
            return;
        };
        self.pc_states.remove(&id);
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
        affected.sort_unstable();
        affected.dedup();
        for subscriber in affected {
            self.offer(now, subscriber);
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

    /// The earliest moment something is due.
    /// The earliest moment something is due, from each call's deadline as of the last time it
    /// was processed (a cheap comparison per call, no peer-connection work).
    fn next_deadline(&mut self, now: Instant) -> Instant {
        let mut deadline = self
            .next_layer_review
            .min(self.next_sweep)
            .min(self.next_sender_reports)
            .min(now + Duration::from_secs(1));
        for p in self.participants.values() {
            deadline = deadline.min(p.deadline);
        }
        deadline
    }

    fn on_timeout(&mut self, now: Instant) {
        if now >= self.next_sender_reports {
            self.next_sender_reports = now + SENDER_REPORT_INTERVAL;
            self.send_sender_reports(now);
        }
        if now >= self.next_layer_review {
            self.next_layer_review = now + LAYER_REVIEW_INTERVAL;
            self.review_layers(now);
            self.review_speakers(now);
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
    }

    fn send_signal(&self, message: FromMedia) {
        if let Err(err) = self.to_signalling.try_send(message) {
            self.stats.count_signal_overflow();
            tracing::warn!(%err, "signalling channel full; message dropped");
        }
    }
}

/// The layer of `publication` a subscriber rendering `height` pixels tall should get now.
fn select_layer(publication: &Publication, height: Option<u32>, now: Instant) -> Option<LayerId> {
    let mut infos = [LayerInfo {
        active: false,
        height: 0,
    }; 4];
    let count = publication.layers.len().min(infos.len());
    for (info, layer) in infos.iter_mut().zip(&publication.layers) {
        info.active = layer
            .last_packet_at
            .is_some_and(|at| now.saturating_duration_since(at) < LAYER_TIMEOUT);
        info.height = cascade_forward::layer::nominal_height(layer.rid.as_deref(), FULL_HEIGHT);
    }
    cascade_forward::layer::select(height, &infos[..count])
}

/// Whether the device's metadata says the stream's track of `kind` is muted.
fn muted_by_metadata(
    metadata: &SdpStreamMetadata,
    stream_id: Option<&String>,
    kind: RtpCodecKind,
) -> bool {
    let Some(stream) = stream_id.and_then(|id| metadata.get(id)) else {
        return false;
    };
    match kind {
        RtpCodecKind::Audio => stream.audio_muted,
        _ => stream.video_muted,
    }
}

/// (URI, id) of negotiated header extensions.
fn extension_ids(
    extensions: &[rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionParameters],
) -> Vec<(String, u8)> {
    extensions
        .iter()
        .filter_map(|e| Some((e.uri.clone(), u8::try_from(e.id).ok()?)))
        .collect()
}

/// Sends everything a peer connection wants on the wire, and keeps the egress path's SRTP
/// context and address up to date with the stack's.
fn flush(socket: &UdpSocket, stats: &ShardStats, participant: &mut Participant) {
    if !participant.egress.has_context()
        && let Some(context) = participant.pc.take_egress_srtp_context()
    {
        participant.egress.install(context);
    }
    while let Some(out) = participant.pc.poll_write() {
        participant.egress.set_remote(out.transport.peer_addr);
        send(socket, stats, &out.message, out.transport.peer_addr);
    }
}

/// Sends one datagram.
fn send(socket: &UdpSocket, stats: &ShardStats, datagram: &[u8], to: SocketAddr) {
    match socket.try_send_to(datagram, to) {
        Ok(len) => stats.count_sent(len),
        Err(err) => {
            stats.count_send_error();
            tracing::trace!(%err, "send failed");
        }
    }
}
