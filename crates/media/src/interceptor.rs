//! An interceptor that lets subscribers' keyframe requests and NACKs reach the media plane.
//!
//! The WebRTC stack's default interceptor chain consumes inbound RTCP (its NACK responder
//! answers NACKs from its own send cache) and delivers none of it to the application unless a
//! packet is marked [`Attribute::DeliverToApplication`]. The focus needs PLI and FIR to ask
//! publishers for keyframes, and counts NACKs; this interceptor sits after the default ones and
//! marks compounds that carry them, keeping only those packets. Subscribers' congestion
//! feedback (transport-cc, REMB) goes up the same way, for their downlink estimates.

use rtc::interceptor::{
    Attribute, Interceptor, NackGeneratorBuilder, NackResponderBuilder, Packet, Registry, Slot,
    StreamInfo, TaggedPacket,
};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use std::cell::Cell;
use std::collections::VecDeque;
use std::time::Instant;

thread_local! {
    /// Packets every tap on this thread has read (see [`reads_on_this_thread`]).
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// How many inbound RTP packets and RTCP compounds the taps on this thread have read: a packet
/// reaches the tap only once the stack has decrypted and parsed it, so a datagram after which
/// this did not move was refused by the stack (SRTP authentication or replay, or a malformed
/// packet). An event loop is one thread, so its taps count only its own calls.
pub fn reads_on_this_thread() -> u64 {
    READS.with(Cell::get)
}

/// Where the tap goes in the chain: after every default interceptor.
pub const SLOT: usize = 60_000;

/// How many times the focus asks for one missing packet (generic NACK, RFC 4585 §6.2.1) before
/// giving it up: at the generator's 100 ms interval, for one second. A packet that a publisher
/// did not resend by then is of no use to a jitter buffer, and asking on without end turns
/// lasting loss into a storm of NACKs and retransmissions.
pub const MAX_NACKS_PER_PACKET: u16 = 10;

/// The RTP header extension carrying an audio packet's level (RFC 6464).
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// The interceptors of a focus's peer connection, registering what they need in
/// `media_engine`: the stack's defaults (NACK generator and responder with their feedback for
/// video, the simulcast header extensions, transport-cc feedback as a receiver, reception
/// reports), the audio level extension ([`AUDIO_LEVEL_URI`]), the NACK generator asking for a
/// packet at most [`MAX_NACKS_PER_PACKET`] times,
/// then the [`FeedbackTap`] (`link`: see [`FeedbackTap::new`]).
///
/// # Errors
///
/// The stack's, when a header extension cannot be registered.
pub fn registry(
    media_engine: &mut MediaEngine,
    link: bool,
) -> Result<Registry, rtc::shared::error::Error> {
    for parameter in ["", "pli"] {
        media_engine.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    let registry = Registry::new()
        .with(Slot::NackResponder, NackResponderBuilder::new().build())
        .with(
            Slot::NackGenerator,
            NackGeneratorBuilder::new()
                .with_max_nacks_per_packet(MAX_NACKS_PER_PACKET)
                .build(),
        );
    configure_simulcast_extension_headers(media_engine)?;
    // Publishers' audio levels pick the active speaker, and subscribers get them with the
    // forwarded audio.
    media_engine.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    let registry = configure_twcc_receiver_only(registry, media_engine)?;
    Ok(configure_rtcp_reports(registry).with(Slot::from(SLOT), FeedbackTap::new(link)))
}

/// Passes PLI, FIR and NACK packets on to the application.
pub struct FeedbackTap {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
    /// Also pass reception reports up (a link's peer connection: the round trip to the other
    /// focus is taken from them).
    reception_reports: bool,
}

impl FeedbackTap {
    /// A tap passing keyframe requests and NACKs up, and reception reports too when
    /// `reception_reports` (for a link with another focus).
    pub fn new(reception_reports: bool) -> Self {
        Self {
            reads: VecDeque::new(),
            writes: VecDeque::new(),
            reception_reports,
        }
    }
}

/// Whether the media plane wants to see this RTCP packet: keyframe requests, NACKs,
/// congestion feedback (transport-cc, REMB), and, when
/// `reception_reports`, the reception reports (in receiver and sender reports) it takes links'
/// round trips from.
fn wanted(packet: &dyn rtc::rtcp::Packet, reception_reports: bool) -> bool {
    let any = packet.as_any();
    is_feedback(packet)
        || (reception_reports
            && (any.is::<ReceiverReport>()
                || any
                    .downcast_ref::<SenderReport>()
                    .is_some_and(|sr| !sr.reports.is_empty())))
}

/// Whether `packet` is feedback the media plane acts on for a subscriber: a keyframe request
/// (PLI, FIR), a NACK, or congestion feedback (transport-cc, REMB).
pub(crate) fn is_feedback(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>()
        || any.is::<FullIntraRequest>()
        || any.is::<TransportLayerNack>()
        || any.is::<TransportLayerCc>()
        || any.is::<ReceiverEstimatedMaximumBitrate>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut message: TaggedPacket) -> Result<(), Self::Error> {
        READS.with(|reads| reads.set(reads.get().wrapping_add(1)));
        if let Packet::Rtcp(packets) = &mut message.message.packet
            && packets
                .iter()
                .any(|p| wanted(p.as_ref(), self.reception_reports))
        {
            packets.retain(|p| wanted(p.as_ref(), self.reception_reports));
            message.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(message);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, message: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(message);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
