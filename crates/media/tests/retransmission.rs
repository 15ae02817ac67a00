//! Regression tests for retransmission (NACK, RTX) in the WebRTC stack's interceptors, patched in
//! `vendor/rtc-interceptor` (see `vendor/README.md`). Found by `cascade-loadtest loss`: with 5 %
//! loss on a publisher's link, 5 % of the focus's forwarded video frames arrived whole.
//!
//! - A packet recovered through RTX stayed missing in the NACK generator's log, so the focus
//!   asked for it every 100 ms while the log held it and the publisher sent it every time.
//! - RTX packets carried no header extensions, so a receiver could not tell which simulcast
//!   layer (announced by rid only, without SSRCs) they repair.

use rtc::interceptor::{
    AttributedPacket, Interceptor, NackGeneratorBuilder, NackResponderBuilder, Packet,
    RTCPFeedback, RTPHeaderExtension, Registry, Slot, StreamInfo, TaggedPacket,
};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use rtc::rtp;
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;
use std::time::{Duration, Instant};

const SSRC: u32 = 0x1111_0000;
const RTX_SSRC: u32 = 0x2222_0000;
const PT: u8 = 96;
const RTX_PT: u8 = 97;
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
const RRID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";

/// A VP8 stream with NACK and RTX, and the mid, rid and rrid extensions as ids 1, 2 and 3.
fn stream() -> StreamInfo {
    StreamInfo {
        ssrc: SSRC,
        ssrc_rtx: Some(RTX_SSRC),
        clock_rate: 90_000,
        mime_type: "video/VP8".into(),
        payload_type: PT,
        payload_type_rtx: Some(RTX_PT),
        rtcp_feedback: vec![RTCPFeedback {
            typ: "nack".into(),
            parameter: String::new(),
        }],
        rtp_header_extensions: [MID_URI, RID_URI, RRID_URI]
            .iter()
            .zip(1..)
            .map(|(uri, id)| RTPHeaderExtension {
                uri: (*uri).into(),
                id,
            })
            .collect(),
        ..Default::default()
    }
}

fn tagged(now: Instant, packet: Packet) -> TaggedPacket {
    TaggedPacket {
        now,
        transport: TransportContext::default(),
        message: AttributedPacket::new(packet),
    }
}

fn rtp_packet(ssrc: u32, payload_type: u8, seq: u16, payload: Vec<u8>) -> rtp::Packet {
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            ssrc,
            payload_type,
            sequence_number: seq,
            timestamp: 3000,
            ..Default::default()
        },
        payload: payload.into(),
    }
}

/// A chain of one NACK generator that asks every 100 ms.
fn nack_generator() -> impl Interceptor {
    Registry::new()
        .with(
            Slot::NackGenerator,
            NackGeneratorBuilder::new()
                .with_interval(Duration::from_millis(100))
                .build(),
        )
        .build()
}

/// The sequence numbers a NACK generator asks for after receiving 10, 11 and 13 of the stream
/// and, when `recovered`, 12 through RTX.
fn nacked_after(recovered: bool) -> Vec<u16> {
    let mut chain = nack_generator();
    chain.bind_remote_stream(&stream());
    let t0 = Instant::now();
    for seq in [10, 11, 13] {
        let packet = rtp_packet(SSRC, PT, seq, vec![0x10, 1, 2, 3]);
        chain
            .handle_read(tagged(t0, Packet::Rtp(packet)))
            .expect("read");
    }
    if recovered {
        // RFC 4588 §4: the original sequence number, then the original payload.
        let rtx = rtp_packet(RTX_SSRC, RTX_PT, 500, vec![0, 12, 0x10, 1, 2, 3]);
        chain
            .handle_read(tagged(t0, Packet::Rtp(rtx)))
            .expect("read");
    }
    nacks_after_250_ms(&mut chain, t0)
}

/// What a NACK generator `chain` that read packets at `t0` asks for 250 ms later.
fn nacks_after_250_ms(chain: &mut impl Interceptor, t0: Instant) -> Vec<u16> {
    while chain.poll_read().is_some() {}
    chain
        .handle_timeout(t0 + Duration::from_millis(250))
        .expect("timeout");
    let mut nacked = Vec::new();
    while let Some(out) = chain.poll_write() {
        if let Packet::Rtcp(packets) = &out.message.packet {
            for packet in packets {
                if let Some(nack) = packet.as_any().downcast_ref::<TransportLayerNack>() {
                    assert_eq!(nack.media_ssrc, SSRC);
                    nacked.extend(nack.nacks.iter().flat_map(NackPair::packet_list));
                }
            }
        }
    }
    nacked
}

#[test]
fn a_packet_recovered_through_rtx_is_not_asked_for_again() {
    assert_eq!(nacked_after(false), vec![12], "the gap is asked for");
    assert_eq!(nacked_after(true), Vec::<u16>::new());
}

#[test]
fn an_rtx_packet_names_the_mid_and_the_layer_it_repairs() {
    let mut chain = Registry::new()
        .with(Slot::NackResponder, NackResponderBuilder::new().build())
        .build();
    chain.bind_local_stream(&stream());
    let t0 = Instant::now();
    let mut original = rtp_packet(SSRC, PT, 40, vec![0x10, 9, 9, 9]);
    original
        .header
        .set_extension(1, "0".into())
        .expect("mid extension");
    original
        .header
        .set_extension(2, "f".into())
        .expect("rid extension");
    chain
        .handle_write(tagged(t0, Packet::Rtp(original)))
        .expect("write");
    while chain.poll_write().is_some() {}
    let nack = TransportLayerNack {
        sender_ssrc: 1,
        media_ssrc: SSRC,
        nacks: vec![NackPair {
            packet_id: 40,
            lost_packets: 0,
        }],
    };
    chain
        .handle_read(tagged(t0, Packet::Rtcp(vec![Box::new(nack)])))
        .expect("read");
    let mut retransmissions = Vec::new();
    while let Some(out) = chain.poll_write() {
        if let Packet::Rtp(packet) = out.message.packet {
            retransmissions.push(packet);
        }
    }
    let [rtx] = retransmissions.as_slice() else {
        panic!("one retransmission expected, got {retransmissions:?}");
    };
    assert_eq!(rtx.header.ssrc, RTX_SSRC);
    assert_eq!(rtx.header.payload_type, RTX_PT);
    assert_eq!(&rtx.payload[..2], &40u16.to_be_bytes());
    assert_eq!(rtx.header.get_extension(1).as_deref(), Some(&b"0"[..]));
    assert_eq!(rtx.header.get_extension(3).as_deref(), Some(&b"f"[..]));
    assert_eq!(
        rtx.header.get_extension(2),
        None,
        "an RTX flow has no rid of its own"
    );
}

/// Feeds `packets` (SSRC and sequence number; RTX packets carry the original number) to a NACK
/// generator, binding the stream again with its RTX flow before the packet at `rebind_at`, as
/// the stack does when a simulcast layer's RTX flow first names the layer (RFC 8852 §3.2), and
/// returns what the generator then asks for.
fn nacked_with_rebind(
    bind_first: StreamInfo,
    packets: &[(u32, u16)],
    rebind_at: usize,
) -> Vec<u16> {
    let mut chain = nack_generator();
    chain.bind_remote_stream(&bind_first);
    let t0 = Instant::now();
    for (index, &(ssrc, seq)) in packets.iter().enumerate() {
        if index == rebind_at {
            chain.bind_remote_stream(&stream());
        }
        let packet = if ssrc == RTX_SSRC {
            let [high, low] = seq.to_be_bytes();
            rtp_packet(
                RTX_SSRC,
                RTX_PT,
                900 + index as u16,
                vec![high, low, 0x10, 1],
            )
        } else {
            rtp_packet(SSRC, PT, seq, vec![0x10, 1, 2, 3])
        };
        chain
            .handle_read(tagged(t0, Packet::Rtp(packet)))
            .expect("read");
    }
    nacks_after_250_ms(&mut chain, t0)
}

#[test]
fn a_layer_bound_again_with_its_rtx_flow_keeps_what_it_received() {
    // The layer runs without a known RTX flow (12 and 15 lost); the first RTX packet, for 12,
    // binds the flow; then the live stream goes on with 21. Only 15 is still missing. (The
    // stream used to be bound anew with an empty log, which the retransmitted 12 started:
    // 13 to 20 were asked for again.)
    let without_rtx = StreamInfo {
        ssrc_rtx: None,
        payload_type_rtx: None,
        ..stream()
    };
    let mut packets: Vec<(u32, u16)> = (10..=20)
        .filter(|seq| ![12, 15].contains(seq))
        .map(|seq| (SSRC, seq))
        .collect();
    let rebind_at = packets.len();
    packets.extend([(RTX_SSRC, 12), (SSRC, 21)]);
    assert_eq!(
        nacked_with_rebind(without_rtx, &packets, rebind_at),
        vec![15]
    );
}

#[test]
fn a_retransmission_does_not_start_the_log() {
    // A retransmission of an old packet arrives before any live one: the log starts at the
    // live stream, not at the old number (which would ask for everything in between).
    let packets = [(RTX_SSRC, 5), (SSRC, 40), (SSRC, 41), (SSRC, 43)];
    assert_eq!(nacked_with_rebind(stream(), &packets, usize::MAX), vec![42]);
}

/// The focus asks for a packet that never comes back at most
/// [`cascade_media::interceptor::MAX_NACKS_PER_PACKET`] times, not every 100 ms for as long as
/// its receive log holds it (the stack's default: lasting loss became a NACK storm, the
/// publisher answering each time); a later loss is asked for afresh.
#[test]
fn a_packet_that_never_comes_back_is_asked_for_a_bounded_number_of_times() {
    use cascade_media::interceptor::{MAX_NACKS_PER_PACKET, registry};
    use rtc::peer_connection::configuration::media_engine::MediaEngine;
    let mut chain = registry(&mut MediaEngine::default(), false)
        .expect("the focus's interceptors")
        .build();
    chain.bind_remote_stream(&stream());
    let t0 = Instant::now();
    let mut asked = std::collections::BTreeMap::<u16, usize>::new();
    // 4 s of a 50 packet/s stream that lost 12 for good, and 120 two seconds later.
    for seq in 10..210u16 {
        let now = t0 + Duration::from_millis(u64::from(seq - 10) * 20);
        if seq != 12 && seq != 120 {
            let packet = rtp_packet(SSRC, PT, seq, vec![0x10, 1, 2, 3]);
            chain
                .handle_read(tagged(now, Packet::Rtp(packet)))
                .expect("read");
        }
        while chain.poll_read().is_some() {}
        chain.handle_timeout(now).expect("timeout");
        while let Some(out) = chain.poll_write() {
            if let Packet::Rtcp(packets) = &out.message.packet {
                for packet in packets {
                    if let Some(nack) = packet.as_any().downcast_ref::<TransportLayerNack>() {
                        for lost in nack.nacks.iter().flat_map(NackPair::packet_list) {
                            *asked.entry(lost).or_default() += 1;
                        }
                    }
                }
            }
        }
    }
    let cap = usize::from(MAX_NACKS_PER_PACKET);
    assert_eq!(asked.get(&12), Some(&cap), "{asked:?}");
    assert_eq!(asked.get(&120), Some(&cap), "{asked:?}");
    assert_eq!(asked.len(), 2, "only the lost packets: {asked:?}");
}
