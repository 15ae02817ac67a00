//! One event loop: a UDP socket, the peer connections on it, and their conferences.
//!
//! Everything here runs on one thread with no locks. A datagram goes socket → demux → peer
//! connection → (if RTP) the routes of its publisher track → the subscribers' peer connections →
//! socket, inline, in one call of [`Shard::on_datagram`].

use crate::conference::{Conferences, Route, Routes, available_streams};
use crate::config::MediaConfig;
use crate::demux;
use crate::participant::{Participant, ParticipantId, Publication};
use crate::stats::ShardStats;
use bytes::BytesMut;
use cascade_forward::{Codec, DropReason, PacketMeta, Subscription, Verdict};
use cascade_protocol::datachannel::{DataChannelMessage, Empty, Negotiate};
use cascade_protocol::event::reason;
use cascade_protocol::{CallKey, FromMedia, SdpStreamMetadata, SessionDescription, ToMedia};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
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
}

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
    participants: HashMap<ParticipantId, Participant>,
    by_call: HashMap<CallKey, ParticipantId>,
    by_ufrag: HashMap<String, ParticipantId>,
    by_addr: HashMap<SocketAddr, ParticipantId>,
    conferences: Conferences,
    routes: Routes,
    to_signalling: mpsc::Sender<FromMedia>,
    stats: Arc<ShardStats>,
    /// Subscribers written to while forwarding one packet (kept to reuse its allocation).
    touched: Vec<ParticipantId>,
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
        let candidate_ips = config.candidate_ips();
        Ok(Self {
            config,
            socket,
            local_addr,
            candidate_ips,
            next_id: 1,
            participants: HashMap::new(),
            by_call: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            conferences: Conferences::new(),
            routes: Routes::new(),
            to_signalling,
            stats,
            touched: Vec::new(),
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
            Command::Signal(message) => self.on_signal(now, message),
        }
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
            return;
        }
    }

    fn on_event(&mut self, now: Instant, id: ParticipantId, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(p) = self.participants.get_mut(&id) else {
                    return;
                };
                tracing::debug!(call = %p.call, %state, "connection state");
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
                let Some(receiver) = p.pc.rtp_receiver(init.receiver_id) else {
                    return;
                };
                let track = receiver.track();
                let kind = track.kind();
                let Some(codec) = track.codec(init.ssrc).cloned() else {
                    tracing::debug!(call = %p.call, ssrc = init.ssrc, "track without codec");
                    return;
                };
                if p.publication(init.ssrc).is_some() {
                    return;
                }
                tracing::info!(call = %p.call, track = init.track_id, mime = codec.mime_type, ssrc = init.ssrc, "publication");
                p.publications.push(Publication {
                    stream_id: init.stream_ids.first().cloned().unwrap_or_default(),
                    track_id: init.track_id,
                    kind,
                    ssrc: init.ssrc,
                    receiver_id: init.receiver_id,
                    codec,
                    last_keyframe_request: None,
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
        let Some(routes) = self.routes.get_mut(&(publisher, ssrc)) else {
            self.stats.count_unrouted();
            return;
        };
        let meta = PacketMeta {
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            payload: &packet.payload,
        };
        let mut wants_keyframe = false;
        for route in routes.iter_mut() {
            let Some(payload_type) = route.payload_type else {
                continue;
            };
            match route.forward.forward(&meta) {
                Verdict::Forward { seq, timestamp } => {
                    let Some(subscriber) = self.participants.get_mut(&route.subscriber) else {
                        continue;
                    };
                    let mut out = packet.clone();
                    out.header.ssrc = route.out_ssrc;
                    out.header.sequence_number = seq;
                    out.header.timestamp = timestamp;
                    out.header.payload_type = payload_type;
                    // Extension ids are the publisher's; the subscriber negotiated its own.
                    out.header.extension = false;
                    out.header.extension_profile = 0;
                    out.header.extensions.clear();
                    let Some(mut sender) = subscriber.pc.rtp_sender(route.sender_id) else {
                        continue;
                    };
                    match sender.write_rtp(now, out) {
                        Ok(()) => {
                            self.stats.count_forwarded(packet.payload.len());
                            if !self.touched.contains(&route.subscriber) {
                                self.touched.push(route.subscriber);
                            }
                        }
                        Err(err) => {
                            self.stats.count_dropped();
                            tracing::trace!(%err, "forward refused");
                        }
                    }
                }
                Verdict::Drop(DropReason::WaitingForKeyframe) => wants_keyframe = true,
                Verdict::Drop(_) => {}
            }
        }
        for subscriber in self.touched.drain(..) {
            if let Some(p) = self.participants.get_mut(&subscriber) {
                flush(&self.socket, &self.stats, p);
            }
        }
        if wants_keyframe {
            self.request_keyframe(now, publisher, ssrc, false);
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
            let source = self.routes.iter().find_map(|(&(publisher, ssrc), routes)| {
                routes
                    .iter()
                    .any(|r| r.subscriber == subscriber && r.out_ssrc == media_ssrc)
                    .then_some((publisher, ssrc))
            });
            if let Some((publisher, ssrc)) = source {
                self.request_keyframe(now, publisher, ssrc, false);
            }
        }
    }

    /// Asks a publisher for a keyframe, at most once per interval unless `always`.
    fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        ssrc: u32,
        always: bool,
    ) {
        let interval = self.config.keyframe_request_interval();
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        let Some(publication) = p.publications.iter_mut().find(|p| p.ssrc == ssrc) else {
            return;
        };
        if publication.kind != RtpCodecKind::Video {
            return;
        }
        if !always
            && publication
                .last_keyframe_request
                .is_some_and(|at| now.duration_since(at) < interval)
        {
            return;
        }
        publication.last_keyframe_request = Some(now);
        let receiver_id = publication.receiver_id;
        if let Some(mut receiver) = p.pc.rtp_receiver(receiver_id) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: ssrc,
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
                    changed |= self.subscribe(id, &request.stream_id, &request.track_id);
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

    /// Starts forwarding a publisher track to `subscriber`; returns whether anything changed.
    fn subscribe(&mut self, subscriber: ParticipantId, stream_id: &str, track_id: &str) -> bool {
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
                    .find(|pb| pb.stream_id == stream_id && pb.track_id == track_id)
                    .map(|pb| (*m, pb.clone()))
            })
        });
        let Some((publisher, publication)) = found else {
            self.stats.count_bad_subscription();
            return false;
        };
        let key = (publisher, publication.ssrc);
        if self
            .routes
            .get(&key)
            .is_some_and(|routes| routes.iter().any(|r| r.subscriber == subscriber))
        {
            return false;
        }
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return false;
        };
        let out_ssrc = rand::random::<u32>();
        let track = MediaStreamTrack::new(
            publication.stream_id.clone(),
            publication.track_id.clone(),
            publication.track_id.clone(),
            publication.kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(out_ssrc),
                    ..Default::default()
                },
                codec: publication.codec.clone(),
                ..Default::default()
            }],
        );
        let sender_id = match p.pc.add_track(track) {
            Ok(sender_id) => sender_id,
            Err(err) => {
                tracing::warn!(call = %p.call, %err, "cannot add a track for a subscription");
                return false;
            }
        };
        let codec = Codec::from_mime(&publication.codec.mime_type);
        tracing::info!(call = %p.call, stream_id, track_id, "subscribed");
        self.routes.entry(key).or_default().push(Route {
            subscriber,
            sender_id,
            out_ssrc,
            payload_type: None,
            mime_type: publication.codec.mime_type.clone(),
            stream_id: publication.stream_id,
            track_id: publication.track_id,
            forward: Subscription::new(codec, rand::random(), rand::random()),
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
        let ssrcs: Vec<u32> = p
            .publications
            .iter()
            .filter(|pb| pb.track_id == track_id)
            .map(|pb| pb.ssrc)
            .collect();
        p.publications.retain(|pb| pb.track_id != track_id);
        let conf_id = p.conf_id.clone();
        let mut affected = Vec::new();
        for ssrc in ssrcs {
            for route in self.routes.remove(&(publisher, ssrc)).unwrap_or_default() {
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
        // Routes negotiated by this answer learn their payload type and start at a keyframe.
        let mut keyframes = Vec::new();
        for (&(publisher, ssrc), routes) in self.routes.iter_mut() {
            for route in routes
                .iter_mut()
                .filter(|r| r.subscriber == id && r.payload_type.is_none())
            {
                let Some(mut sender) = p.pc.rtp_sender(route.sender_id) else {
                    continue;
                };
                route.payload_type = sender
                    .get_parameters()
                    .rtp_parameters
                    .codecs
                    .iter()
                    .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&route.mime_type))
                    .map(|c| c.payload_type);
                if route.payload_type.is_some() && route.forward.waiting_for_keyframe() {
                    keyframes.push((publisher, ssrc));
                }
            }
        }
        for (publisher, ssrc) in keyframes {
            self.request_keyframe(now, publisher, ssrc, true);
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
        let conf_id = p.conf_id.clone();
        self.announce_conference(now, &conf_id, Some(id));
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
            }
        }
        // Routes from its tracks end; the subscribers renegotiate.
        let mut affected = Vec::new();
        for publication in &p.publications {
            for route in self
                .routes
                .remove(&(id, publication.ssrc))
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
    fn next_deadline(&mut self, now: Instant) -> Instant {
        let mut deadline = now + Duration::from_secs(1);
        let connect = self.config.connect_timeout();
        let keepalive = self.config.keepalive_timeout();
        for p in self.participants.values_mut() {
            if let Some(at) = p.pc.poll_timeout() {
                deadline = deadline.min(at);
            }
            if let Some(at) = p.next_ping {
                deadline = deadline.min(at);
                deadline = deadline.min(p.last_pong + keepalive);
            }
            if !p.connected {
                deadline = deadline.min(p.opened_at + connect);
            }
        }
        deadline
    }

    fn on_timeout(&mut self, now: Instant) {
        let connect = self.config.connect_timeout();
        let keepalive = self.config.keepalive_timeout();
        let interval = self.config.keepalive_interval();
        let ids: Vec<ParticipantId> = self.participants.keys().copied().collect();
        for id in ids {
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            if !p.connected && now.duration_since(p.opened_at) >= connect {
                self.remove(now, id, Some(reason::ICE_TIMEOUT));
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

/// Sends everything a peer connection wants on the wire.
fn flush(socket: &UdpSocket, stats: &ShardStats, participant: &mut Participant) {
    while let Some(out) = participant.pc.poll_write() {
        match socket.try_send_to(&out.message, out.transport.peer_addr) {
            Ok(len) => stats.count_sent(len),
            Err(err) => {
                stats.count_send_error();
                tracing::trace!(%err, "send failed");
            }
        }
    }
}
