//! The peer-connection driver: one `rtc` peer connection on one UDP socket, publishing
//! synthetic media and accounting what arrives. Signalling is up to the caller.

use crate::report::Receiving;
use crate::synth::{self, AudioSource, MediaKind, VideoSource};
use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use cascade_media::interceptor as feedback;
use cascade_protocol::metadata::PURPOSE_USERMEDIA;
use cascade_protocol::{Candidate, SdpStreamMetadata, StreamMetadata};
use rtc::data_channel::{RTCDataChannelId, RTCDataChannelInit};
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::{
    SctpMaxMessageSize, SettingEngineBuilder,
};
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// When nothing else is due, wake up at least this often.
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// If media falls this far behind schedule, skip ahead instead of bursting.
const MAX_MEDIA_LAG: Duration = Duration::from_millis(200);
/// The simulcast layers a simulcast video track is published with: rid, width, height.
pub const SIMULCAST_LAYERS: [(&str, u16, u16); 3] =
    [("q", 320, 180), ("h", 640, 360), ("f", 1280, 720)];
/// The RTP header extension naming the media section (needed on simulcast packets).
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// The RTP header extension carrying the RTP stream id of a simulcast layer.
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// What a [`SimPeer`] is and publishes.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// Address to bind the UDP socket on (port 0).
    pub bind_ip: IpAddr,
    /// Our user id (for publisher tags).
    pub user_id: String,
    /// Our device id (for publisher tags and ids).
    pub device_id: String,
    /// The MediaStream id our tracks are published in.
    pub stream_id: String,
    /// Publish an Opus track.
    pub publish_audio: bool,
    /// Publish a VP8 track.
    pub publish_video: bool,
    /// Target video bitrate.
    pub video_bitrate_bps: u32,
    /// Open the `"datachannel"` data channel (the offerer does).
    pub create_data_channel: bool,
    /// Publish the video track as three simulcast layers ([`SIMULCAST_LAYERS`]).
    pub simulcast: bool,
    /// Target bitrates of the simulcast layers `q`, `h`, `f`.
    pub simulcast_bitrates_bps: [u32; 3],
    /// Interval of periodic video keyframes (requested ones come on top).
    pub keyframe_interval: Duration,
    /// Drop every Nth incoming RTP datagram (not RTCP) before the peer connection sees it.
    pub drop_incoming_rtp: Option<u64>,
    /// Apply answers as if they allowed data-channel messages of this many bytes (RFC 8841
    /// `a=max-message-size`), whatever they say.
    pub claim_max_message_size: Option<u32>,
}

impl PeerOptions {
    /// Options for a device publishing audio and video at 300 kb/s with a data channel.
    pub fn new(user_id: &str, device_id: &str) -> Self {
        Self {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            stream_id: format!("stream-{device_id}-{}", crate::random_id(6)),
            publish_audio: true,
            publish_video: true,
            video_bitrate_bps: 300_000,
            create_data_channel: true,
            simulcast: false,
            simulcast_bitrates_bps: [100_000, 200_000, 400_000],
            keyframe_interval: Duration::from_secs(3),
            drop_incoming_rtp: None,
            claim_max_message_size: None,
        }
    }
}

/// Something the caller of [`SimPeer`] may want to react to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// The peer connection reached `connected`; media starts flowing.
    Connected,
    /// The peer connection failed or closed.
    Disconnected(String),
    /// The `"datachannel"` data channel opened.
    DataChannelOpen,
    /// The `"datachannel"` data channel closed.
    DataChannelClosed,
    /// A text message arrived on the data channel.
    DataChannelText(String),
    /// A remote track started (first packet).
    TrackOpened {
        /// Track id.
        track_id: String,
        /// Stream id.
        stream_id: String,
        /// Kind, if known.
        kind: Option<MediaKind>,
    },
}

enum Source {
    Audio(AudioSource),
    Video(VideoSource),
}

/// One outgoing RTP stream: a track, or one simulcast layer of a track.
struct OutTrack {
    sender: RTCRtpSenderId,
    ssrc: u32,
    track_id: String,
    kind: MediaKind,
    payload_type: Option<u8>,
    next_at: Instant,
    source: Source,
    /// The simulcast layer's RTP stream id.
    rid: Option<String>,
    /// Whether the layer is sending (see [`SimPeer::set_video_layers`]).
    active: bool,
}

/// The negotiated ids of the mid and rid header extensions, and our mid.
#[derive(Clone, Debug)]
struct RidExtensions {
    mid_id: u8,
    rid_id: u8,
    mid: Bytes,
}

/// One peer connection on its own socket, driven by the caller's loop.
pub struct SimPeer {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local_addr: SocketAddr,
    buf: Vec<u8>,
    opts: PeerOptions,
    out: Vec<OutTrack>,
    media_start: Option<Instant>,
    connected: bool,
    dc: Option<RTCDataChannelId>,
    dc_open: bool,
    events: VecDeque<PeerEvent>,
    receiving: Arc<Mutex<Receiving>>,
    local_candidate: RTCIceCandidateInit,
    closed: bool,
    rid_extensions: Option<RidExtensions>,
    incoming_rtp: u64,
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: synth::OPUS_CLOCK,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: synth::VP8_CLOCK,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SimPeer {
    /// Binds the socket and builds the peer connection with our tracks, data channel and host
    /// candidate.
    pub async fn bind(opts: PeerOptions) -> Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(opts.bind_ip, 0))
            .await
            .context("binding UDP socket")?;
        // Like the focus's: a device busy for a moment must not lose what arrives meanwhile.
        cascade_media::batch::enlarge_buffers(&socket);
        let local_addr = socket.local_addr()?;

        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?.with(
            Slot::from(feedback::SLOT),
            feedback::FeedbackTap::new(false),
        );
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_setting_engine(match opts.claim_max_message_size {
                // Our own limit must allow the size too, or the stack refuses to send.
                Some(size) => SettingEngineBuilder::new()
                    .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(size))
                    .build(),
                None => SettingEngineBuilder::new().build(),
            })
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(Instant::now())?;

        let now = Instant::now();
        let mut out = Vec::new();
        let tracks = [
            (opts.publish_audio, MediaKind::Audio),
            (opts.publish_video, MediaKind::Video),
        ];
        for (_, kind) in tracks.into_iter().filter(|(on, _)| *on) {
            let track_id = format!("{}-{}", kind.as_str(), crate::random_id(8));
            let (codec, rtp_kind) = match kind {
                MediaKind::Audio => (opus_codec(), RtpCodecKind::Audio),
                MediaKind::Video => (vp8_codec(), RtpCodecKind::Video),
            };
            let tag = synth::publisher_tag(&opts.user_id, &opts.device_id, &track_id, kind);
            // One stream, or one per simulcast layer: (rid, ssrc, source).
            let streams: Vec<(Option<String>, u32, Source)> = match kind {
                MediaKind::Audio => {
                    vec![(None, rand::random(), Source::Audio(AudioSource::new(tag)))]
                }
                MediaKind::Video if opts.simulcast => SIMULCAST_LAYERS
                    .iter()
                    .zip(opts.simulcast_bitrates_bps)
                    .map(|(&(rid, width, height), bitrate)| {
                        let mut video = VideoSource::new(synth::layer_tag(tag, rid), bitrate);
                        video.set_size(width, height);
                        video.set_keyframe_interval(opts.keyframe_interval);
                        (Some(rid.to_owned()), rand::random(), Source::Video(video))
                    })
                    .collect(),
                MediaKind::Video => {
                    let mut video = VideoSource::new(tag, opts.video_bitrate_bps);
                    video.set_keyframe_interval(opts.keyframe_interval);
                    vec![(None, rand::random(), Source::Video(video))]
                }
            };
            let encodings = streams
                .iter()
                .map(|(rid, ssrc, _)| RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        rid: rid.clone().unwrap_or_default(),
                        ssrc: Some(*ssrc),
                        ..Default::default()
                    },
                    codec: codec.clone(),
                    ..Default::default()
                })
                .collect();
            let track = MediaStreamTrack::new(
                opts.stream_id.clone(),
                track_id.clone(),
                format!("sim {}", kind.as_str()),
                rtp_kind,
                encodings,
            );
            let sender = pc.add_track(track)?;
            for (rid, ssrc, source) in streams {
                out.push(OutTrack {
                    sender,
                    ssrc,
                    track_id: track_id.clone(),
                    kind,
                    payload_type: None,
                    next_at: now,
                    source,
                    rid,
                    active: true,
                });
            }
        }

        let dc = if opts.create_data_channel {
            let init = RTCDataChannelInit {
                ordered: true,
                ..Default::default()
            };
            Some(
                pc.create_data_channel(cascade_protocol::datachannel::LABEL, Some(init))?
                    .id(),
            )
        } else {
            None
        };

        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local_addr.ip().to_string(),
                port: local_addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        let local_candidate = RTCIceCandidate::from(&candidate).to_json()?;
        pc.add_local_candidate(local_candidate.clone())?;
        pc.add_local_candidate(RTCIceCandidateInit::default())?;

        Ok(Self {
            pc,
            socket,
            local_addr,
            buf: vec![0; 2048],
            opts,
            out,
            media_start: None,
            connected: false,
            dc,
            dc_open: false,
            events: VecDeque::new(),
            receiving: Arc::new(Mutex::new(Receiving::default())),
            local_candidate,
            closed: false,
            rid_extensions: None,
            incoming_rtp: 0,
        })
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The MediaStream id our tracks are in.
    pub fn stream_id(&self) -> &str {
        &self.opts.stream_id
    }

    /// Our published track ids with their kinds.
    pub fn local_tracks(&self) -> Vec<(String, MediaKind)> {
        let mut tracks: Vec<(String, MediaKind)> = Vec::new();
        for track in &self.out {
            if !tracks.iter().any(|(id, _)| *id == track.track_id) {
                tracks.push((track.track_id.clone(), track.kind));
            }
        }
        tracks
    }

    /// Which simulcast layers (by rid) of our video keep sending; the others stop. A layer that
    /// starts again starts with a keyframe.
    pub fn set_video_layers(&mut self, rids: &[&str]) {
        let now = Instant::now();
        for track in &mut self.out {
            let Some(rid) = &track.rid else {
                continue;
            };
            let active = rids.contains(&rid.as_str());
            if active && !track.active {
                track.next_at = now;
                if let Source::Video(video) = &mut track.source {
                    video.request_keyframe();
                }
            }
            track.active = active;
        }
    }

    /// The SSRCs of our video streams by rid (`None` without simulcast).
    pub fn video_layer_ssrcs(&self) -> Vec<(Option<String>, u32)> {
        self.out
            .iter()
            .filter(|t| t.kind == MediaKind::Video)
            .map(|t| (t.rid.clone(), t.ssrc))
            .collect()
    }

    /// The SSRC of our video track, if we publish one.
    pub fn video_ssrc(&self) -> Option<u32> {
        self.out
            .iter()
            .find(|t| t.kind == MediaKind::Video)
            .map(|t| t.ssrc)
    }

    /// Shared handle to the receive accounting.
    pub fn receiving(&self) -> Arc<Mutex<Receiving>> {
        self.receiving.clone()
    }

    /// Whether the peer connection is connected.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the data channel is open.
    pub fn data_channel_open(&self) -> bool {
        self.dc_open
    }

    /// Our `sdp_stream_metadata`: our stream as `m.usermedia`, or nothing if we publish nothing.
    pub fn metadata(&self) -> SdpStreamMetadata {
        let mut metadata = SdpStreamMetadata::new();
        if !self.out.is_empty() {
            metadata.insert(
                self.opts.stream_id.clone(),
                StreamMetadata {
                    purpose: PURPOSE_USERMEDIA.to_owned(),
                    audio_muted: false,
                    video_muted: false,
                    ..Default::default()
                },
            );
        }
        metadata
    }

    /// Our candidates as signalled in `m.call.candidates` (without the end marker).
    pub fn local_candidates(&self) -> Vec<Candidate> {
        let mid = self
            .pc
            .local_description()
            .and_then(|d| first_mid(&d.sdp))
            .unwrap_or_else(|| "0".to_owned());
        vec![Candidate {
            candidate: self.local_candidate.candidate.clone(),
            sdp_mid: Some(mid),
            sdp_mline_index: Some(0),
            username_fragment: None,
        }]
    }

    fn local_sdp(&self) -> Result<String> {
        self.pc
            .local_description()
            .map(|d| d.sdp)
            .context("no local description")
    }

    fn descriptions_changed(&mut self) {
        for track in &mut self.out {
            track.payload_type = None;
        }
        self.rid_extensions = None;
    }

    /// Creates an offer, applies it locally and returns its SDP (with our candidate).
    pub fn create_offer(&mut self) -> Result<String> {
        let offer = self.pc.create_offer(None)?;
        self.pc.set_local_description(Instant::now(), offer)?;
        self.descriptions_changed();
        self.local_sdp()
    }

    /// Applies the remote answer to our offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<()> {
        let sdp = match self.opts.claim_max_message_size {
            Some(size) => with_max_message_size(sdp, size),
            None => sdp.to_owned(),
        };
        let answer = RTCSessionDescription::answer(sdp)?;
        self.pc.set_remote_description(Instant::now(), answer)?;
        self.descriptions_changed();
        Ok(())
    }

    /// Applies a remote offer and returns our answer's SDP.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String> {
        let offer = RTCSessionDescription::offer(sdp.to_owned())?;
        self.pc.set_remote_description(Instant::now(), offer)?;
        let answer = self.pc.create_answer(None)?;
        self.pc.set_local_description(Instant::now(), answer)?;
        self.descriptions_changed();
        self.local_sdp()
    }

    /// Adds a remote candidate (the end marker is ignored).
    pub fn add_remote_candidate(&mut self, candidate: &Candidate) -> Result<()> {
        if candidate.is_end() {
            return Ok(());
        }
        self.pc.add_remote_candidate(RTCIceCandidateInit {
            candidate: candidate.candidate.clone(),
            sdp_mid: candidate.sdp_mid.clone(),
            sdp_mline_index: candidate.sdp_mline_index,
            username_fragment: candidate.username_fragment.clone(),
            url: None,
        })?;
        Ok(())
    }

    /// Whether a remote description has been applied.
    pub fn has_remote_description(&self) -> bool {
        self.pc.remote_description().is_some()
    }

    /// Sends a text message on the data channel.
    pub fn send_text(&mut self, text: &str) -> Result<()> {
        let id = self.dc.context("no data channel")?;
        if !self.dc_open {
            anyhow::bail!("data channel not open");
        }
        let mut dc = self.pc.data_channel(id).context("data channel gone")?;
        dc.send_text(Instant::now(), text.to_owned())?;
        Ok(())
    }

    /// Takes the next event for the caller.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// Sends everything the peer connection has queued.
    pub async fn flush(&mut self) {
        while let Some(msg) = self.pc.poll_write() {
            if let Err(err) = self
                .socket
                .send_to(&msg.message, msg.transport.peer_addr)
                .await
            {
                tracing::debug!(%err, peer = %msg.transport.peer_addr, "udp send failed");
            }
        }
    }

    fn next_deadline(&mut self) -> Instant {
        let now = Instant::now();
        let mut deadline = self.pc.poll_timeout().unwrap_or(now + IDLE_WAKE);
        deadline = deadline.min(now + IDLE_WAKE);
        if self.connected {
            for track in self.out.iter().filter(|t| t.active) {
                deadline = deadline.min(track.next_at);
            }
        }
        deadline
    }

    /// Waits for a datagram or the next deadline (protocol timer or media tick) and feeds the
    /// datagram in; cancel-safe. Call [`SimPeer::process`] and [`SimPeer::flush`] afterwards.
    pub async fn wait(&mut self) {
        if self.closed {
            std::future::pending::<()>().await;
        }
        let deadline = self.next_deadline();
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::select! {
            _ = sleep => {}
            res = self.socket.recv_from(&mut self.buf) => match res {
                Ok((n, peer_addr)) => {
                    if is_rtp(&self.buf[..n]) && self.drop_rtp() {
                        return;
                    }
                    // A STUN message whose type is a binding request (RFC 8489 §5).
                    if self.buf[..n].starts_with(&[0x00, 0x01]) && n >= 20 {
                        lock(&self.receiving).stun_requests_received += 1;
                    }
                    let msg = TaggedBytesMut {
                        now: Instant::now(),
                        transport: TransportContext {
                            local_addr: self.local_addr,
                            peer_addr,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: BytesMut::from(&self.buf[..n]),
                    };
                    if let Err(err) = self.pc.handle_read(msg) {
                        tracing::debug!(%err, "handle_read failed");
                    }
                }
                Err(err) => tracing::debug!(%err, "udp recv failed"),
            },
        }
    }

    /// Runs due timers, sends due media, and drains events and incoming messages.
    pub fn process(&mut self) {
        if self.closed {
            return;
        }
        let now = Instant::now();
        if self.pc.poll_timeout().is_some_and(|t| t <= now)
            && let Err(err) = self.pc.handle_timeout(now)
        {
            tracing::debug!(%err, "handle_timeout failed");
        }
        self.drain_events();
        self.drain_reads();
        self.drain_events();
        if self.connected {
            self.send_media(Instant::now());
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                    tracing::debug!(%state, "peer connection state");
                    match state {
                        RTCPeerConnectionState::Connected if !self.connected => {
                            self.connected = true;
                            let now = Instant::now();
                            self.media_start.get_or_insert(now);
                            for track in &mut self.out {
                                track.next_at = now;
                            }
                            self.events.push_back(PeerEvent::Connected);
                        }
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            self.connected = false;
                            self.events
                                .push_back(PeerEvent::Disconnected(state.to_string()));
                        }
                        _ => {}
                    }
                }
                RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) => {
                    if self.dc.is_none() {
                        let label = self.pc.data_channel(id).map(|d| d.label().to_owned());
                        if label.as_deref() == Some(cascade_protocol::datachannel::LABEL) {
                            self.dc = Some(id);
                        }
                    }
                    if self.dc == Some(id) && !self.dc_open {
                        self.dc_open = true;
                        self.events.push_back(PeerEvent::DataChannelOpen);
                    }
                }
                RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(id))
                    if self.dc == Some(id) && self.dc_open =>
                {
                    self.dc_open = false;
                    self.events.push_back(PeerEvent::DataChannelClosed);
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    let kind = self.pc.rtp_receiver(init.receiver_id).and_then(|r| {
                        match r.track().kind() {
                            RtpCodecKind::Audio => Some(MediaKind::Audio),
                            RtpCodecKind::Video => Some(MediaKind::Video),
                            _ => None,
                        }
                    });
                    let stream_id = init.stream_ids.first().cloned().unwrap_or_default();
                    tracing::debug!(track = %init.track_id, stream = %stream_id, ssrc = init.ssrc, "track opened");
                    {
                        let mut recv = lock(&self.receiving);
                        let stats = recv.tracks.entry(init.track_id.clone()).or_default();
                        stats.track_id = init.track_id.clone();
                        stats.stream_id = stream_id.clone();
                        if kind.is_some() {
                            stats.kind = kind;
                        }
                    }
                    self.events.push_back(PeerEvent::TrackOpened {
                        track_id: init.track_id,
                        stream_id,
                        kind,
                    });
                }
                _ => {}
            }
        }
    }

    fn drain_reads(&mut self) {
        while let Some(TaggedRTCMessage { now, message }) = self.pc.poll_read() {
            match message {
                RTCMessage::RtpPacket(track_id, packet) => {
                    let recv_us = synth::now_us().saturating_sub(
                        Instant::now().saturating_duration_since(now).as_micros() as u64,
                    );
                    let mut recv = lock(&self.receiving);
                    recv.first_media_at.get_or_insert(now);
                    let stats = recv.tracks.entry(track_id.clone()).or_default();
                    if stats.track_id.is_empty() {
                        stats.track_id = track_id;
                    }
                    stats.on_packet(now, recv_us, &packet);
                }
                RTCMessage::RtcpPacket(_, packets) => {
                    let mut requested: Vec<u32> = Vec::new();
                    for packet in &packets {
                        let any = packet.as_any();
                        if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                            requested.push(pli.media_ssrc);
                        } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                            requested.push(fir.media_ssrc);
                            requested.extend(fir.fir.iter().map(|e| e.ssrc));
                        }
                    }
                    let mut wants_key = false;
                    let mut recv = lock(&self.receiving);
                    for track in &mut self.out {
                        if !requested.contains(&track.ssrc) {
                            continue;
                        }
                        if let Source::Video(video) = &mut track.source {
                            wants_key = true;
                            video.request_keyframe();
                            if let Some(rid) = &track.rid {
                                *recv.layer_keyframe_requests.entry(rid.clone()).or_default() += 1;
                            }
                        }
                    }
                    if wants_key {
                        recv.keyframe_requests += 1;
                    }
                }
                RTCMessage::DataChannelMessage(id, msg) => {
                    if Some(id) != self.dc {
                        continue;
                    }
                    match String::from_utf8(msg.data.to_vec()) {
                        Ok(text) => self.events.push_back(PeerEvent::DataChannelText(text)),
                        Err(_) => tracing::debug!("non-UTF-8 data channel message dropped"),
                    }
                }
                _ => {}
            }
        }
    }

    fn payload_type(&mut self, index: usize) -> Option<u8> {
        let track = self.out.get(index)?;
        if let Some(pt) = track.payload_type {
            return Some(pt);
        }
        let (sender_id, mime) = (
            track.sender,
            match track.kind {
                MediaKind::Audio => MIME_TYPE_OPUS,
                MediaKind::Video => MIME_TYPE_VP8,
            },
        );
        let mut sender = self.pc.rtp_sender(sender_id)?;
        let codecs = &sender.get_parameters().rtp_parameters.codecs;
        let pt = codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
            .or(codecs.first())
            .map(|c| c.payload_type)?;
        if let Some(track) = self.out.get_mut(index) {
            track.payload_type = Some(pt);
        }
        Some(pt)
    }

    /// The mid and rid extension ids negotiated on `sender`, and its mid.
    fn rid_extensions(&mut self, sender_id: RTCRtpSenderId) -> Option<RidExtensions> {
        if let Some(ext) = &self.rid_extensions {
            return Some(ext.clone());
        }
        let rid_id = self.extension_id(sender_id, RID_URI)?;
        let (mid_id, mid) = self.mid_extension(sender_id)?;
        let ext = RidExtensions {
            mid_id,
            rid_id,
            mid,
        };
        self.rid_extensions = Some(ext.clone());
        Some(ext)
    }

    /// Whether to drop an incoming RTP datagram (`drop_incoming_rtp`); counts them.
    fn drop_rtp(&mut self) -> bool {
        let Some(every) = self.opts.drop_incoming_rtp.filter(|n| *n > 0) else {
            return false;
        };
        self.incoming_rtp += 1;
        if self.incoming_rtp.is_multiple_of(every) {
            lock(&self.receiving).dropped_incoming_rtp += 1;
            return true;
        }
        false
    }

    fn send_media(&mut self, now: Instant) {
        let Some(start) = self.media_start else {
            return;
        };
        for index in 0..self.out.len() {
            while let Some(track) = self.out.get_mut(index) {
                if track.next_at > now || !track.active {
                    break;
                }
                if now.duration_since(track.next_at) > MAX_MEDIA_LAG {
                    track.next_at = now;
                }
                let at = track.next_at.duration_since(start);
                let send_us = synth::now_us();
                let (packets, interval) = match &mut track.source {
                    Source::Audio(audio) => {
                        (vec![audio.next_packet(at, send_us)], synth::AUDIO_INTERVAL)
                    }
                    Source::Video(video) => {
                        let before = video.keyframes();
                        let packets = video.next_frame(at, send_us);
                        if video.keyframes() > before {
                            let mut recv = lock(&self.receiving);
                            recv.sent_keyframes += 1;
                            if let Some(rid) = &track.rid {
                                *recv.layer_sent_keyframes.entry(rid.clone()).or_default() += 1;
                            }
                        }
                        (
                            packets,
                            Duration::from_micros(1_000_000 / u64::from(synth::VIDEO_FPS)),
                        )
                    }
                };
                track.next_at += interval;
                let (ssrc, sender_id, kind) = (track.ssrc, track.sender, track.kind);
                let rid = track.rid.clone();
                let Some(pt) = self.payload_type(index) else {
                    lock(&self.receiving).send_errors += packets.len() as u64;
                    continue;
                };
                // Simulcast layers name their media section and layer in every packet: the
                // receiver learns their SSRCs from these.
                let extensions = match &rid {
                    Some(rid) => match self.rid_extensions(sender_id) {
                        Some(ext) => Some((ext, Bytes::from(rid.clone().into_bytes()))),
                        None => {
                            lock(&self.receiving).send_errors += packets.len() as u64;
                            continue;
                        }
                    },
                    None => None,
                };
                let count = packets.len() as u64;
                let mut failed = 0u64;
                for mut packet in packets {
                    packet.header.ssrc = ssrc;
                    packet.header.payload_type = pt;
                    if let Some((ext, rid)) = &extensions {
                        let set = packet
                            .header
                            .set_extension(ext.mid_id, ext.mid.clone())
                            .and_then(|()| packet.header.set_extension(ext.rid_id, rid.clone()));
                        if let Err(err) = set {
                            tracing::trace!(%err, "setting simulcast header extensions failed");
                        }
                    }
                    let result = match self.pc.rtp_sender(sender_id) {
                        Some(mut sender) => {
                            sender.write_rtp(now, packet).map_err(|e| e.to_string())
                        }
                        None => Err("sender gone".to_owned()),
                    };
                    if let Err(err) = result {
                        failed += 1;
                        tracing::trace!(%err, "write_rtp failed");
                    }
                }
                let mut recv = lock(&self.receiving);
                recv.send_errors += failed;
                match kind {
                    MediaKind::Audio => recv.sent_audio_packets += count - failed,
                    MediaKind::Video => recv.sent_video_packets += count - failed,
                }
            }
        }
    }

    /// Sends `count` audio packets from SSRCs the offer never announced, a new random one every
    /// `per_ssrc` packets, with the audio payload type and the audio section's mid extension (a
    /// device whose encoder restarted, or a misbehaving or hostile one). They bypass the
    /// sender's checks; returns how many were queued.
    pub async fn send_unannounced_ssrcs(&mut self, count: u32, per_ssrc: u32) -> u32 {
        let now = Instant::now();
        let Some(index) = self.out.iter().position(|t| t.kind == MediaKind::Audio) else {
            return 0;
        };
        let Some(pt) = self.payload_type(index) else {
            return 0;
        };
        let (sender_id, track_id) = match self.out.get(index) {
            Some(track) => (track.sender, track.track_id.clone()),
            None => return 0,
        };
        let mid = self.mid_extension(sender_id);
        let mut queued = 0;
        let mut ssrc = rand::random();
        for seq in 0..count {
            if seq % per_ssrc.max(1) == 0 {
                ssrc = rand::random();
            }
            let mut packet = rtc::rtp::packet::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: pt,
                    sequence_number: seq as u16,
                    timestamp: seq.wrapping_mul(960),
                    ssrc,
                    ..Default::default()
                },
                payload: Bytes::from_static(&[0x5a; 40]),
            };
            if let Some((id, mid)) = &mid
                && packet.header.set_extension(*id, mid.clone()).is_err()
            {
                continue;
            }
            let message = TaggedRTCMessage {
                now,
                message: RTCMessage::RtpPacket(track_id.clone(), packet),
            };
            if self.pc.handle_write(message).is_ok() {
                queued += 1;
            }
            self.flush().await;
            if seq % 50 == 49 {
                // About 10,000 a second: what a loopback socket takes without loss.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        queued
    }

    /// The id negotiated on `sender_id` for the header extension `uri`.
    fn extension_id(&mut self, sender_id: RTCRtpSenderId, uri: &str) -> Option<u8> {
        let mut sender = self.pc.rtp_sender(sender_id)?;
        let extensions = &sender.get_parameters().rtp_parameters.header_extensions;
        extensions
            .iter()
            .find(|e| e.uri == uri)
            .and_then(|e| u8::try_from(e.id).ok())
    }

    /// The negotiated mid extension's id on `sender_id` and the sender's mid.
    fn mid_extension(&mut self, sender_id: RTCRtpSenderId) -> Option<(u8, Bytes)> {
        let id = self.extension_id(sender_id, MID_URI)?;
        let transceivers: Vec<_> = self.pc.get_transceivers().collect();
        let mid = transceivers.into_iter().find_map(|t| {
            let transceiver = self.pc.rtp_transceiver(t)?;
            (transceiver.sender() == Some(sender_id))
                .then(|| transceiver.mid().clone())
                .flatten()
        })?;
        Some((id, Bytes::from(mid.into_bytes())))
    }

    /// Sends a picture loss indication for an incoming track (asks its sender for a keyframe).
    pub fn send_pli(&mut self, track_id: &str) -> Result<()> {
        let receivers: Vec<_> = self.pc.get_receivers().collect();
        for id in receivers {
            let Some(mut receiver) = self.pc.rtp_receiver(id) else {
                continue;
            };
            if receiver.track().track_id() != track_id {
                continue;
            }
            let ssrcs: Vec<u32> = receiver.track().ssrcs().collect();
            let packets: Vec<Box<dyn rtc::rtcp::Packet>> = ssrcs
                .into_iter()
                .map(|media_ssrc| {
                    Box::new(PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc,
                    }) as Box<dyn rtc::rtcp::Packet>
                })
                .collect();
            receiver.write_rtcp(Instant::now(), packets)?;
            return Ok(());
        }
        anyhow::bail!("no receiver for track {track_id}")
    }

    /// Closes the peer connection (queues the DTLS close alert; call [`SimPeer::flush`]).
    pub fn close(&mut self) {
        if !self.closed {
            if let Err(err) = self.pc.close() {
                tracing::debug!(%err, "closing peer connection failed");
            }
            self.closed = true;
            self.connected = false;
            self.dc_open = false;
        }
    }
}

/// Whether a datagram is (S)RTP: RFC 7983 puts RTP and RTCP at first bytes 128..=191, and RTCP
/// packet types 192..=223 leave 64..=95 in the 7 bits where RTP has its payload type.
fn is_rtp(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(128..=191))
        && datagram
            .get(1)
            .is_some_and(|b| !(64..=95).contains(&(b & 0x7f)))
}

fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=mid:"))
        .map(|m| m.to_owned())
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<SimPeer>();
}

/// `sdp` with its `a=max-message-size` (RFC 8841 §6) set to `size` in the data section.
fn with_max_message_size(sdp: &str, size: u32) -> String {
    let mut out = String::with_capacity(sdp.len() + 32);
    for line in sdp.lines() {
        if line.starts_with("a=max-message-size:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
        if line.starts_with("a=sctp-port:") {
            out.push_str(&format!("a=max-message-size:{size}\r\n"));
        }
    }
    out
}

/// A STUN Binding request (RFC 8445 §7.2.2) with `username` (`"<their ufrag>:<our ufrag>"`)
/// and MESSAGE-INTEGRITY under `password` (theirs), from a controlling agent, not nominating.
///
/// # Errors
///
/// When no crypto provider is built in or the message cannot be built.
pub fn binding_request(username: &str, password: &str) -> Result<Vec<u8>> {
    use rtc::ice::attributes::control::AttrControlling;
    use rtc::ice::attributes::priority::PriorityAttr;
    use rtc::stun::attributes::ATTR_USERNAME;
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
    use rtc::stun::textattrs::Username;
    let provider = rtc::crypto::default_provider().context("no crypto provider")?;
    let mut message = Message::new();
    let attributes: [Box<dyn Setter + '_>; 7] = [
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(Username::new(ATTR_USERNAME, username.to_owned())),
        Box::new(AttrControlling(rand::random())),
        Box::new(PriorityAttr(0x6e00_1eff)),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            password.to_owned(),
            provider.crypto(),
        )),
        Box::new(FINGERPRINT),
    ];
    message.build(&attributes)?;
    Ok(message.raw)
}
