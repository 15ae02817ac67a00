//! One device's call with the focus: its peer connection, what it publishes, and the
//! negotiation state of the tracks the focus sends it.

use crate::admission::Admission;
use crate::description::{self, Rejected, Split};
use crate::egress::Egress;
use crate::error::MediaError;
use crate::interceptor;
use crate::link_socket::LinkSocket;
use cascade_protocol::datachannel::{self, DataChannelMessage, TrackRequest};
use cascade_protocol::event::reason;
use cascade_protocol::{CallKey, Candidate, SdpStreamMetadata};
use rand::Rng;
use rand::distr::Alphanumeric;
use rtc::data_channel::{RTCDataChannelId, RTCDataChannelInit};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use rtc::sansio::Protocol;
use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// A LiveKit connection's data messages per second: at most [`DATA_MESSAGES_PER_SECOND`] in
/// each second since the first.
#[derive(Clone, Copy, Debug)]
pub struct DataAllowance {
    /// When the current second began.
    start: Instant,
    /// Messages taken in it.
    taken: u32,
}

impl DataAllowance {
    /// A full allowance, its first second starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            start: now,
            taken: 0,
        }
    }

    /// Takes one message at `now`; false when the second's [`DATA_MESSAGES_PER_SECOND`] are
    /// spent.
    pub fn take(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.start) >= Duration::from_secs(1) {
            self.start = now;
            self.taken = 0;
        }
        if self.taken >= DATA_MESSAGES_PER_SECOND {
            return false;
        }
        self.taken += 1;
        true
    }
}

/// Index of a participant inside one event loop.
pub type ParticipantId = u64;

/// Stable id of a publication within its participant.
pub type PublicationId = u32;

/// One simulcast layer (or the only encoding) of a publication.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Its RTP stream id, when the publisher sends simulcast.
    pub rid: Option<String>,
    /// The SSRC it arrives with.
    pub ssrc: u32,
    /// When its last packet arrived.
    pub last_packet_at: Option<Instant>,
    /// When a keyframe was last requested for it.
    pub last_keyframe_request: Option<Instant>,
    /// Its sequence numbers received lately: a packet arriving again is not forwarded.
    pub received: cascade_forward::ReplayWindow,
    /// How fast it arrives (what a subscriber's downlink must carry to receive it).
    pub bitrate: cascade_forward::bitrate::Bitrate,
    /// Whether some subscription forwards it or waits for its keyframe: packets of a layer
    /// nobody receives are dropped once, on arrival (see `shard::pausing`).
    pub watched: bool,
}

/// A track a participant publishes to the focus.
#[derive(Clone, Debug)]
pub struct Publication {
    /// Stable id (routes are keyed by it).
    pub id: PublicationId,
    /// The publisher's MediaStream id.
    pub stream_id: String,
    /// The publisher's track id.
    pub track_id: String,
    /// Audio or video.
    pub kind: RtpCodecKind,
    /// Its layers, lowest first.
    pub layers: Vec<Layer>,
    /// The receiver it arrives on (for RTCP back to the publisher).
    pub receiver_id: RTCRtpReceiverId,
    /// Its codec.
    pub codec: RTCRtpCodec,
    /// The publisher's id of the audio-level header extension, if negotiated.
    pub audio_level_id: Option<u8>,
    /// Smoothed loudness from audio levels (0 = silence, 127 = loudest).
    pub loudness: f32,
    /// Whether the publisher muted it (MSC3291 metadata).
    pub muted: bool,
    /// The simulcast layers (a bit per rung of `q`, `h`, `f`) the publisher was last told
    /// are wanted; `None` until it was told anything (it starts out sending them all).
    pub told_layers: Option<u8>,
}

impl Publication {
    /// The layer arriving with `ssrc`.
    pub fn layer_index(&self, ssrc: u32) -> Option<usize> {
        self.layers.iter().position(|l| l.ssrc == ssrc)
    }
}

/// Offer/answer state of the focus-initiated renegotiations of one participant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiation {
    /// An offer of ours awaits the device's answer.
    pub offer_pending: bool,
    /// Tracks changed while an offer was pending: offer again after the answer.
    pub again: bool,
}

/// The most remote addresses one call keeps bound (a device's candidates, and the addresses
/// it moved to); binding another forgets the least recently answered (never the one media is
/// sent to).
pub const MAX_ADDRESSES: usize = 8;

/// The label of the reliable data channel a LiveKit client adopts on its subscriber
/// connection.
pub const LIVEKIT_RELIABLE: &str = "_reliable";

/// The label of the lossy data channel a LiveKit client adopts on its subscriber connection.
pub const LIVEKIT_LOSSY: &str = "_lossy";

/// The most data messages a LiveKit client's connection may have relayed per second (issue
/// 12); the rest are dropped and counted as bad data-channel messages, so that one client's
/// flood cannot fill the loop's way to the signalling side, which every call on it shares.
pub const DATA_MESSAGES_PER_SECOND: u32 = 500;

/// The most bytes a LiveKit data channel may have waiting to be sent (not yet acknowledged)
/// before the focus drops what else it would send on it: a recipient that reads slowly, or not
/// at all, costs the focus at most this much memory per channel.
pub const MAX_DATA_WAITING_BYTES: usize = 1 << 20;

/// One device's call with the focus.
pub struct Participant {
    /// Which call this is.
    pub call: CallKey,
    /// The conference it belongs to: its room and conf id
    /// ([`cascade_protocol::conference_key`]), so calls of two rooms never share media.
    pub conf_id: String,
    /// The peer connection.
    pub pc: RTCPeerConnection,
    /// The focus-side ICE username fragment (the demultiplexing key).
    pub ufrag: String,
    /// The device's stream metadata.
    pub metadata: SdpStreamMetadata,
    /// Tracks the device publishes.
    pub publications: Vec<Publication>,
    /// The id the next publication gets.
    pub next_publication_id: PublicationId,
    /// The signalling data channel, once open.
    pub data_channel: Option<RTCDataChannelId>,
    /// Focus-initiated renegotiation state.
    pub negotiation: Negotiation,
    /// When the call was opened.
    pub opened_at: Instant,
    /// Whether ICE and DTLS have connected.
    pub connected: bool,
    /// When the next ping is due (once the data channel is open).
    pub next_ping: Option<Instant>,
    /// When the device last answered a ping (or the data channel opened).
    pub last_pong: Instant,
    /// When something of this call is next due, as of the last time it was processed.
    pub deadline: Instant,
    /// The SSRCs the device may send (see [`crate::admission`]).
    pub admission: Admission,
    /// SSRCs the stack had bound to the device's tracks when last looked at.
    bound: Vec<u32>,
    /// The payload types negotiated for retransmissions (RTX), when last looked at.
    rtx_payload_types: Vec<u8>,
    /// The m-sections of the device's last description that the focus rejected; every
    /// description the focus sends it keeps them in place (see [`crate::description`]).
    pub rejected: Vec<Rejected>,
    /// Forwarded RTP to this device: its SRTP context and address (see [`crate::egress`]).
    pub egress: Egress,
    /// How much forwarded media the path to this device carries (see [`crate::downlink`]).
    pub downlink: crate::downlink::Downlink,
    /// The SRTCP context the focus reads this device's feedback with, past the stack (see
    /// `shard::feedback`); `None` until DTLS has completed.
    pub feedback_srtcp: Option<rtc::srtp::context::Context>,
    /// Which end of a link with another focus this call is; `None` for a device.
    pub link: Option<LinkSide>,
    /// On a link: the (stream id, track id) this focus subscribed to over it, i.e. the other
    /// focus's local members' tracks it announced.
    pub link_subscriptions: BTreeSet<(String, String)>,
    /// On a link: subscriptions of this focus's devices (subscriber, request) to tracks the
    /// other focus announced and the link does not carry yet; each becomes a route when its
    /// track arrives.
    pub link_pending: Vec<(ParticipantId, TrackRequest)>,
    /// Remote addresses bound to this call for demultiplexing, least recently answered first
    /// (at most [`MAX_ADDRESSES`]).
    pub addresses: std::collections::VecDeque<std::net::SocketAddr>,
    /// The remote address the stack last answered a connectivity check from, not yet bound.
    pub answered_check: Option<std::net::SocketAddr>,
    /// On a link this focus placed: the socket it alone uses (see [`crate::link_socket`]).
    pub own_socket: Option<LinkSocket>,
    /// Whether the call is negotiated over another connection (a LiveKit client's signal
    /// connection, issue 12) rather than the MSC3401 data channel: it needs no data channel
    /// to be set up, is not pinged, and the focus's offers go to the signalling side.
    pub out_of_band: bool,
    /// Whether the call subscribes by itself to every track the conference's other
    /// participants publish (a LiveKit subscriber connection) instead of asking over the data
    /// channel.
    pub auto_subscribe: bool,
    /// A LiveKit client's `_reliable` and `_lossy` data channels, in that order, once open
    /// (issue 12).
    pub livekit_channels: [Option<RTCDataChannelId>; 2],
    /// What is left of the current second's data messages (see [`DATA_MESSAGES_PER_SECOND`]).
    pub data_allowance: DataAllowance,
    /// For a call that subscribes by itself: the track ids it said it does not want.
    pub declined: BTreeSet<String>,
    /// For a call that subscribes by itself: whether it may receive anything (a LiveKit
    /// token's `canSubscribe`).
    pub receives: bool,
}

/// Who a call the focus offers is with: the call, its conference, the focus-side ICE username
/// fragment, and which end of a link it is (`None` for a device).
struct Placed {
    call: CallKey,
    conf_id: String,
    ufrag: String,
    link: Option<LinkSide>,
}

/// Which end of a link between two foci a participant is (issue 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkSide {
    /// This focus placed the call: it offered first, runs full ICE as the controlling agent
    /// and is the impolite side of glare.
    Caller,
    /// The other focus placed the call; this focus answered it as it answers devices.
    Callee,
}

/// The local description's SDP as the device gets it: without RTCP candidates (see
/// [`description::without_rtcp_candidates`]) and with the `rejected` m-sections back in place
/// (see [`description::restore_rejected`]).
fn local_sdp(pc: &RTCPeerConnection, rejected: &[Rejected]) -> Result<String, MediaError> {
    pc.local_description()
        .map(|desc| {
            let sdp = description::without_rtcp_candidates(&desc.sdp);
            description::restore_rejected(&sdp, rejected)
        })
        .ok_or(MediaError::NoLocalDescription)
}

/// Splits a device's description into what the stack applies and what the focus rejects;
/// refuses one of which the focus can take nothing.
fn split(sdp: &str) -> Result<Split, MediaError> {
    let split = description::split_rejected(sdp);
    if split.accepted == 0 {
        return Err(MediaError::NothingAccepted);
    }
    if !split.rejected.is_empty() {
        let m_lines: Vec<&str> = split.rejected.iter().map(|r| r.m_line.as_str()).collect();
        tracing::debug!(?m_lines, "m-sections rejected");
    }
    Ok(split)
}

/// Picks `len` random alphanumeric characters (valid ICE ufrag/pwd characters).
fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A peer connection with the focus's codecs, interceptors and ICE credentials: ICE-lite and
/// the DTLS server when answering (`lite`), full ICE when placing a link call; for a `link`,
/// the stack also passes the other focus's reception reports up.
fn build_peer_connection(
    now: Instant,
    ufrag: &str,
    lite: bool,
    link: bool,
) -> Result<RTCPeerConnection, MediaError> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs()?;
    let registry = interceptor::registry(&mut media_engine, link)?;
    let setting_engine = SettingEngineBuilder::new()
        .with_ice_credentials(ufrag.to_owned(), random_token(32))
        .with_lite(lite)
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .build();
    Ok(RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(setting_engine)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .build(now)?)
}

/// Adds a host candidate per address in `candidate_ips` on `local_addr`'s port, and the end of
/// candidates; returns the candidate lines.
fn add_host_candidates(
    pc: &mut RTCPeerConnection,
    candidate_ips: &[IpAddr],
    local_addr: SocketAddr,
) -> Result<Vec<String>, MediaError> {
    let mut gathered = Vec::new();
    for ip in candidate_ips {
        let host = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: ip.to_string(),
                port: local_addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        let init = RTCIceCandidate::from(&host).to_json()?;
        pc.add_local_candidate(init.clone())?;
        gathered.push(init.candidate);
    }
    pc.add_local_candidate(RTCIceCandidateInit::default())?;
    Ok(gathered)
}

/// The candidates to trickle, with the end marker, named after the description's BUNDLE tag:
/// with BUNDLE every candidate belongs to the tagged m-section, which need not be the first
/// (the offer's first m-section may be one the focus rejected).
fn tagged_candidates(sdp: &str, gathered: Vec<String>) -> Vec<Candidate> {
    let (tag_mid, tag_index) = description::bundle_tag(sdp).unwrap_or(("0".to_owned(), 0));
    gathered
        .into_iter()
        .chain([String::new()])
        .map(|candidate| Candidate {
            candidate,
            sdp_mid: Some(tag_mid.clone()),
            sdp_mline_index: Some(tag_index),
            username_fragment: None,
        })
        .collect()
}

impl Participant {
    /// Answers a device's offer (or a link offer from another focus, `link`): builds the peer
    /// connection with the focus's host candidates.
    ///
    /// Returns the participant, the answer SDP (every m-section of the offer, in its order; the
    /// ones the focus rejects with port 0) and the candidates to trickle (named after the
    /// answer's BUNDLE tag).
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        now: Instant,
        call: CallKey,
        conf_id: String,
        offer_sdp: String,
        metadata: SdpStreamMetadata,
        link: bool,
        candidate_ips: &[IpAddr],
        local_addr: SocketAddr,
    ) -> Result<(Self, String, Vec<Candidate>), MediaError> {
        let ufrag = random_token(16);
        // The focus is reachable on known addresses and never behind a NAT of its own, so it
        // runs ICE-lite: the device checks connectivity, the focus only answers.
        // It answers as the DTLS server (`a=setup:passive`, RFC 8842 §5.3). `active` saves a
        // round trip only where the answerer can start the handshake before its answer
        // arrives, which an ICE-lite focus never can: the device needs the answer's
        // credentials before any packet flows. As the server it also is the side of the data
        // channel's SCTP association that accepts the device's INIT (a DTLS client focus
        // logged a refused INIT and a missing server name on every call).
        let mut pc = build_peer_connection(now, &ufrag, true, link)?;
        let Split {
            for_stack,
            rejected,
            ..
        } = split(&offer_sdp)?;
        pc.set_remote_description(now, RTCSessionDescription::offer(for_stack)?)?;
        let gathered = add_host_candidates(&mut pc, candidate_ips, local_addr)?;
        let answer = pc.create_answer(None)?;
        pc.set_local_description(now, answer)?;
        let sdp = local_sdp(&pc, &rejected)?;
        let candidates = tagged_candidates(&sdp, gathered);
        let link = link.then_some(LinkSide::Callee);
        let participant = Self::new(now, call, conf_id, pc, ufrag, metadata, rejected, link);
        Ok((participant, sdp, candidates))
    }

    /// Places a link call to another focus (issue 11): builds a peer connection with the
    /// signalling data channel and the focus's host candidates, and offers it.
    ///
    /// The other focus is ICE-lite, so this side runs full ICE as the controlling agent
    /// (RFC 8445 §6.1.1) and sends the connectivity checks; media sections come later, through
    /// renegotiations on the data channel. The call uses `socket` alone, and its candidates
    /// name that socket's port. Returns the participant, the offer SDP and the candidates to
    /// trickle.
    pub fn offer_link(
        now: Instant,
        call: CallKey,
        conf_id: String,
        candidate_ips: &[IpAddr],
        socket: LinkSocket,
    ) -> Result<(Self, String, Vec<Candidate>), MediaError> {
        let local_addr = socket.local_addr;
        let ufrag = random_token(16);
        let pc = build_peer_connection(now, &ufrag, false, true)?;
        let signalling = RTCDataChannelInit {
            ordered: true,
            ..Default::default()
        };
        let channels = [(datachannel::LABEL, signalling)];
        let placed = Placed {
            call,
            conf_id,
            ufrag,
            link: Some(LinkSide::Caller),
        };
        let (mut participant, sdp, candidates) =
            Self::offer(now, placed, pc, channels, candidate_ips, local_addr)?;
        participant.own_socket = Some(socket);
        Ok((participant, sdp, candidates))
    }

    /// Offers a LiveKit client's subscriber connection (issue 12): an ICE-lite peer
    /// connection (the client is the controlling agent, RFC 8445 §6.1.1) with the data
    /// channels a LiveKit client adopts on it, `_reliable` (ordered, reliable) and `_lossy`
    /// (unordered, never retransmitted), and the focus's host candidates. Media sections come
    /// with later offers, as the call subscribes. Returns the participant, the offer SDP and
    /// the candidates to trickle.
    pub fn offer_subscriber(
        now: Instant,
        call: CallKey,
        conf_id: String,
        candidate_ips: &[IpAddr],
        local_addr: SocketAddr,
    ) -> Result<(Self, String, Vec<Candidate>), MediaError> {
        let ufrag = random_token(16);
        let pc = build_peer_connection(now, &ufrag, true, false)?;
        let reliable = RTCDataChannelInit {
            ordered: true,
            ..Default::default()
        };
        let lossy = RTCDataChannelInit {
            ordered: false,
            max_retransmits: Some(0),
            ..Default::default()
        };
        let channels = [(LIVEKIT_RELIABLE, reliable), (LIVEKIT_LOSSY, lossy)];
        let placed = Placed {
            call,
            conf_id,
            ufrag,
            link: None,
        };
        let (mut participant, sdp, candidates) =
            Self::offer(now, placed, pc, channels, candidate_ips, local_addr)?;
        participant.out_of_band = true;
        participant.auto_subscribe = true;
        Ok((participant, sdp, candidates))
    }

    /// The rest of a call the focus offers: opens `channels` on `pc`, adds the host
    /// candidates of `local_addr`'s port, and makes the offer, which awaits its answer.
    fn offer<const N: usize>(
        now: Instant,
        placed: Placed,
        mut pc: RTCPeerConnection,
        channels: [(&str, RTCDataChannelInit); N],
        candidate_ips: &[IpAddr],
        local_addr: SocketAddr,
    ) -> Result<(Self, String, Vec<Candidate>), MediaError> {
        for (label, init) in channels {
            pc.create_data_channel(label, Some(init))?;
        }
        let gathered = add_host_candidates(&mut pc, candidate_ips, local_addr)?;
        let offer = pc.create_offer(None)?;
        pc.set_local_description(now, offer)?;
        let sdp = local_sdp(&pc, &[])?;
        let candidates = tagged_candidates(&sdp, gathered);
        let Placed {
            call,
            conf_id,
            ufrag,
            link,
        } = placed;
        let metadata = SdpStreamMetadata::new();
        let mut participant = Self::new(now, call, conf_id, pc, ufrag, metadata, Vec::new(), link);
        participant.negotiation.offer_pending = true;
        Ok((participant, sdp, candidates))
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        now: Instant,
        call: CallKey,
        conf_id: String,
        pc: RTCPeerConnection,
        ufrag: String,
        metadata: SdpStreamMetadata,
        rejected: Vec<Rejected>,
        link: Option<LinkSide>,
    ) -> Self {
        Self {
            call,
            conf_id,
            pc,
            ufrag,
            metadata,
            publications: Vec::new(),
            next_publication_id: 1,
            data_channel: None,
            negotiation: Negotiation::default(),
            opened_at: now,
            connected: false,
            next_ping: None,
            last_pong: now,
            deadline: now,
            admission: Admission::default(),
            bound: Vec::new(),
            rtx_payload_types: Vec::new(),
            rejected,
            egress: Egress::default(),
            feedback_srtcp: None,
            downlink: crate::downlink::Downlink::new(),
            link,
            link_subscriptions: BTreeSet::new(),
            own_socket: None,
            link_pending: Vec::new(),
            addresses: std::collections::VecDeque::new(),
            answered_check: None,
            out_of_band: false,
            auto_subscribe: false,
            livekit_channels: [None, None],
            data_allowance: DataAllowance::new(now),
            declined: BTreeSet::new(),
            receives: true,
        }
    }

    /// On a link: forgets the waiting subscriptions of `subscriber`, to the track
    /// `(stream id, track id)` or (`None`) to any.
    pub fn forget_pending(&mut self, subscriber: ParticipantId, track: Option<(&str, &str)>) {
        self.link_pending.retain(|(s, r)| {
            *s != subscriber
                || track.is_some_and(|(stream_id, track_id)| {
                    r.stream_id != stream_id || r.track_id != track_id
                })
        });
    }

    /// Whether this call is a link with another focus.
    pub fn is_link(&self) -> bool {
        self.link.is_some()
    }

    /// The user and device a stream this participant publishes belongs to: the device itself,
    /// or, for a link, the member of the other focus the stream's metadata names (`None` when
    /// the other focus did not name one).
    pub fn owner_of(&self, stream_id: &str) -> Option<(&str, &str)> {
        if self.link.is_none() {
            return Some((&self.call.user_id, &self.call.device_id));
        }
        let stream = self.metadata.get(stream_id)?;
        Some((stream.user_id.as_deref()?, stream.device_id.as_deref()?))
    }

    /// Adds candidates the device trickled; the end marker and unparsable ones are skipped.
    pub fn add_remote_candidates(&mut self, candidates: &[Candidate]) -> usize {
        let mut added = 0;
        for candidate in candidates.iter().filter(|c| !c.is_end()) {
            let init = RTCIceCandidateInit {
                candidate: candidate.candidate.clone(),
                sdp_mid: candidate.sdp_mid.clone(),
                sdp_mline_index: candidate.sdp_mline_index,
                username_fragment: candidate.username_fragment.clone(),
                ..Default::default()
            };
            match self.pc.add_remote_candidate(init) {
                Ok(()) => added += 1,
                Err(err) => tracing::debug!(call = %self.call, %err, "remote candidate refused"),
            }
        }
        added
    }

    /// Sends a message on the signalling data channel, if it is open.
    pub fn send(&mut self, now: Instant, message: &DataChannelMessage) -> bool {
        let Some(id) = self.data_channel else {
            return false;
        };
        let Some(mut channel) = self.pc.data_channel(id) else {
            return false;
        };
        match channel.send_text(now, message.to_text()) {
            Ok(()) => true,
            Err(err) => {
                tracing::debug!(call = %self.call, %err, kind = message.type_name(), "data channel send failed");
                false
            }
        }
    }

    /// Which LiveKit data channel `channel` is: `Some(true)` for `_reliable`, `Some(false)`
    /// for `_lossy`, `None` for neither (or not open yet).
    pub fn livekit_channel_kind(&self, channel: RTCDataChannelId) -> Option<bool> {
        match self.livekit_channels {
            [Some(reliable), _] if reliable == channel => Some(true),
            [_, Some(lossy)] if lossy == channel => Some(false),
            _ => None,
        }
    }

    /// Sends `payload` as one binary message on the LiveKit `_reliable` channel (or
    /// `_lossy`); false when that channel is not open, has more than
    /// [`MAX_DATA_WAITING_BYTES`] waiting, or refuses it.
    pub fn send_livekit_data(&mut self, now: Instant, reliable: bool, payload: &[u8]) -> bool {
        let Some(id) = self.livekit_channels[usize::from(!reliable)] else {
            return false;
        };
        let Some(mut channel) = self.pc.data_channel(id) else {
            return false;
        };
        if channel.outstanding_bytes() + payload.len() > MAX_DATA_WAITING_BYTES {
            return false;
        }
        match channel.send(now, bytes::BytesMut::from(payload)) {
            Ok(()) => true,
            Err(err) => {
                tracing::debug!(call = %self.call, %err, "livekit data send failed");
                false
            }
        }
    }

    /// Whether `label` is the signalling data channel's label.
    pub fn is_signalling_channel(label: &str) -> bool {
        label == datachannel::LABEL
    }

    /// Starts a focus-initiated renegotiation, or marks one as needed if an offer is pending.
    ///
    /// Returns the offer to send, if one was made.
    pub fn make_offer(&mut self, now: Instant) -> Result<Option<String>, MediaError> {
        if self.data_channel.is_none() && !self.out_of_band {
            // Without the data channel there is nowhere to send the offer; it is made when
            // the channel opens.
            self.negotiation.again = true;
            return Ok(None);
        }
        if self.negotiation.offer_pending {
            self.negotiation.again = true;
            return Ok(None);
        }
        let offer = self.pc.create_offer(None)?;
        self.pc.set_local_description(now, offer)?;
        let sdp = local_sdp(&self.pc, &self.rejected)?;
        self.negotiation = Negotiation {
            offer_pending: true,
            again: false,
        };
        Ok(Some(sdp))
    }

    /// Applies the device's answer to our offer; returns whether another offer is due.
    pub fn accept_answer(&mut self, now: Instant, sdp: String) -> Result<bool, MediaError> {
        if !self.negotiation.offer_pending {
            return Err(MediaError::UnexpectedAnswer);
        }
        let split = split(&sdp)?;
        let sdp = self.without_learned_simulcast(&split.for_stack);
        self.pc
            .set_remote_description(now, RTCSessionDescription::answer(sdp)?)?;
        self.rejected = split.rejected;
        self.negotiation.offer_pending = false;
        Ok(std::mem::take(&mut self.negotiation.again))
    }

    /// Answers an offer from the device; a pending offer of ours is rolled back first (the
    /// focus is the polite side of glare) and made again afterwards.
    pub fn answer_offer(&mut self, now: Instant, sdp: String) -> Result<String, MediaError> {
        let split = split(&sdp)?;
        if self.negotiation.offer_pending && self.link == Some(LinkSide::Caller) {
            return Err(MediaError::Glare);
        }
        if self.negotiation.offer_pending {
            self.pc
                .set_local_description(now, RTCSessionDescription::rollback(None)?)?;
            self.negotiation = Negotiation {
                offer_pending: false,
                again: true,
            };
        }
        let sdp = self.without_learned_simulcast(&split.for_stack);
        self.pc
            .set_remote_description(now, RTCSessionDescription::offer(sdp)?)?;
        let answer = self.pc.create_answer(None)?;
        self.pc.set_local_description(now, answer)?;
        self.rejected = split.rejected;
        local_sdp(&self.pc, &self.rejected)
    }

    /// `sdp` without the track declarations of the simulcast publications already being
    /// received (see [`crate::description`]).
    fn without_learned_simulcast(&mut self, sdp: &str) -> String {
        let receivers: Vec<RTCRtpReceiverId> = self
            .publications
            .iter()
            .filter(|p| p.layers.iter().any(|l| l.rid.is_some()))
            .map(|p| p.receiver_id)
            .collect();
        let transceivers: Vec<_> = self.pc.get_transceivers().collect();
        let mut mids = HashSet::new();
        for id in transceivers {
            if !receivers.contains(&RTCRtpReceiverId::from(id)) {
                continue;
            }
            if let Some(transceiver) = self.pc.rtp_transceiver(id)
                && let Some(mid) = transceiver.mid()
            {
                mids.insert(mid.clone());
            }
        }
        crate::description::keep_learned_simulcast(sdp, &mids)
    }

    /// Whether an RTP packet from `ssrc` with `payload_type` belongs to one of the device's
    /// tracks: the stack has bound `ssrc` as a media, RTX or FEC SSRC, or the packet is a
    /// retransmission (RTX payload type; the stack learns simulcast RTX streams, and browsers
    /// send bandwidth probes on them, without binding an SSRC). Looks at the receivers again
    /// only when neither was known before.
    pub fn stack_binds(&mut self, ssrc: u32, payload_type: u8) -> bool {
        if self.bound.contains(&ssrc) || self.rtx_payload_types.contains(&payload_type) {
            return true;
        }
        self.bound.clear();
        self.rtx_payload_types.clear();
        let receivers: Vec<RTCRtpReceiverId> = self.pc.get_receivers().collect();
        for id in receivers {
            let Some(mut receiver) = self.pc.rtp_receiver(id) else {
                continue;
            };
            for codec in &receiver.get_parameters().rtp_parameters.codecs {
                if codec.rtp_codec.mime_type.eq_ignore_ascii_case("video/rtx") {
                    self.rtx_payload_types.push(codec.payload_type);
                }
            }
            for coding in receiver.track().codings() {
                let params = &coding.rtp_coding_parameters;
                self.bound.extend(params.ssrc);
                self.bound.extend(params.rtx.as_ref().map(|r| r.ssrc));
                self.bound.extend(params.fec.as_ref().map(|f| f.ssrc));
            }
        }
        self.bound.contains(&ssrc) || self.rtx_payload_types.contains(&payload_type)
    }

    /// The earliest moment something of this call is due: the peer connection's timers, the
    /// next ping, the keepalive and connect timeouts.
    pub fn due(&mut self, connect_timeout: Duration, keepalive_timeout: Duration) -> Instant {
        let mut due = self.last_pong + Duration::from_secs(3600);
        if let Some(at) = self.pc.poll_timeout() {
            due = due.min(at);
        }
        if let Some(at) = self.next_ping {
            due = due.min(at).min(self.last_pong + keepalive_timeout);
        }
        if !self.connected || (self.data_channel.is_none() && !self.out_of_band) {
            due = due.min(self.opened_at + connect_timeout);
        }
        due
    }

    /// The hangup reason of a call that is not set up `connect_timeout` after it opened:
    /// `ice_timeout` if ICE and DTLS have not connected, `unknown_error` if they have but the
    /// signalling data channel, which everything after the answer goes over, has not opened
    /// (the device did not open it, or the focus rejected its data m-section). `None` while
    /// there is time, and once both are up.
    pub fn setup_failure(&self, now: Instant, connect_timeout: Duration) -> Option<&'static str> {
        if self.connected && (self.data_channel.is_some() || self.out_of_band) {
            return None;
        }
        if now.saturating_duration_since(self.opened_at) < connect_timeout {
            return None;
        }
        Some(if self.connected {
            reason::UNKNOWN_ERROR
        } else {
            reason::ICE_TIMEOUT
        })
    }

    /// The publication one of whose layers arrives with `ssrc`.
    pub fn publication(&self, ssrc: u32) -> Option<&Publication> {
        self.publications
            .iter()
            .find(|p| p.layer_index(ssrc).is_some())
    }

    /// The index of the publication and the layer arriving with `ssrc`.
    pub fn layer_of(&self, ssrc: u32) -> Option<(usize, usize)> {
        self.publications
            .iter()
            .enumerate()
            .find_map(|(index, p)| p.layer_index(ssrc).map(|layer| (index, layer)))
    }

    /// The publication with id `id`.
    pub fn publication_by_id(&mut self, id: PublicationId) -> Option<&mut Publication> {
        self.publications.iter_mut().find(|p| p.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_allowance_is_a_number_of_messages_per_second() {
        let start = Instant::now();
        let mut allowance = DataAllowance::new(start);
        let taken = (0..DATA_MESSAGES_PER_SECOND + 10)
            .filter(|_| allowance.take(start + Duration::from_millis(500)))
            .count();
        assert_eq!(taken, DATA_MESSAGES_PER_SECOND as usize);
        assert!(
            allowance.take(start + Duration::from_millis(1_000)),
            "a new second"
        );
    }
}
