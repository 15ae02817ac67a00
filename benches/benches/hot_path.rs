//! The packet path's cost: one received RTP packet forwarded to N subscribers (parse once, then
//! per subscriber: layer/keyframe decision, sequence/timestamp rewrite, header-extension mapping,
//! serialization), and each stage alone, SRTP included. `stage/decide` is the forwarding
//! logic itself (layer, keyframe gate, rewrite); `stage/rewrite` adds the header clone,
//! extension mapping and serialization the WebRTC stack's send path needs.
//!
//! Run: `cargo bench -p cascade-benches --bench hot_path`.

use bytes::{Bytes, BytesMut};
use cascade_forward::{Codec, ExtensionMap, PacketMeta, Subscription, Verdict};
use cascade_media::rewrite::map_extensions;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rtc::rtp::header::{Extension, Header};
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::{Marshal, Unmarshal};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

const ABS_SEND_TIME: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
const TRANSPORT_CC: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
const ORIENTATION: &str = "urn:3gpp:video-orientation";

/// A 1,100-byte VP8 keyframe packet with three header extensions, serialized.
fn wire_packet() -> BytesMut {
    let mut payload = vec![0u8; 1100];
    payload[..5].copy_from_slice(&[0x90, 0x80, 0x05, 0x00, 0x9d]);
    let packet = Packet {
        header: Header {
            version: 2,
            marker: true,
            payload_type: 96,
            sequence_number: 4242,
            timestamp: 90_000,
            ssrc: 0x1234_5678,
            extension: true,
            extension_profile: 0xBEDE,
            extensions: vec![
                Extension {
                    id: 2,
                    payload: Bytes::from_static(&[1, 2, 3]),
                },
                Extension {
                    id: 3,
                    payload: Bytes::from_static(&[0, 7]),
                },
                Extension {
                    id: 4,
                    payload: Bytes::from_static(&[1]),
                },
            ],
            ..Default::default()
        },
        payload: Bytes::from(payload),
    };
    packet.marshal().expect("marshal the sample packet")
}

/// The publisher's extension ids (as in `wire_packet`) mapped onto a subscriber's.
fn extension_map() -> ExtensionMap {
    ExtensionMap::new(
        [(ABS_SEND_TIME, 2), (TRANSPORT_CC, 3), (ORIENTATION, 4)],
        &[(ABS_SEND_TIME, 3), (TRANSPORT_CC, 5), (ORIENTATION, 7)],
    )
}

struct Subscriber {
    forward: Subscription,
    extensions: ExtensionMap,
    ssrc: u32,
}

fn subscribers(n: usize, first: &Packet) -> Vec<Subscriber> {
    let meta = meta(first, Instant::now());
    (0..n)
        .map(|i| {
            let mut forward = Subscription::new(Codec::Vp8, 90_000, i as u16, i as u32, 0);
            // Started: the subscriber has had its keyframe.
            assert!(matches!(forward.forward(0, &meta), Verdict::Forward { .. }));
            Subscriber {
                forward,
                extensions: extension_map(),
                ssrc: 1000 + i as u32,
            }
        })
        .collect()
}

fn meta(packet: &Packet, arrival: Instant) -> PacketMeta<'_> {
    PacketMeta {
        seq: packet.header.sequence_number,
        timestamp: packet.header.timestamp,
        marker: packet.header.marker,
        payload: &packet.payload,
        arrival,
    }
}

/// What the media plane does per subscriber before handing the packet to SRTP.
fn forward_one(
    packet: &Packet,
    meta: &PacketMeta<'_>,
    sub: &mut Subscriber,
    out: &mut [u8],
) -> usize {
    let Verdict::Forward { seq, timestamp, .. } = sub.forward.forward(0, meta) else {
        return 0;
    };
    let mut forwarded = packet.clone();
    forwarded.header.ssrc = sub.ssrc;
    forwarded.header.sequence_number = seq;
    forwarded.header.timestamp = timestamp;
    forwarded.header.payload_type = 96;
    map_extensions(&mut forwarded.header, &sub.extensions);
    forwarded.marshal_to(out).unwrap_or(0)
}

fn fanout(c: &mut Criterion) {
    let wire = wire_packet();
    let first = Packet::unmarshal(&mut &wire[..]).expect("parse");
    let mut group = c.benchmark_group("fanout");
    for n in [1usize, 10, 100, 1000] {
        let mut subs = subscribers(n, &first);
        let mut out = vec![0u8; 1500];
        let mut seq = first.header.sequence_number;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let mut packet = Packet::unmarshal(&mut &wire[..]).expect("parse");
                packet.header.sequence_number = seq;
                let meta = meta(&packet, Instant::now());
                let mut bytes = 0;
                for sub in subs.iter_mut() {
                    bytes += forward_one(&packet, &meta, sub, &mut out);
                }
                black_box(bytes)
            })
        });
    }
    group.finish();
}

fn stages(c: &mut Criterion) {
    let wire = wire_packet();
    let packet = Packet::unmarshal(&mut &wire[..]).expect("parse");
    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Elements(1));

    group.bench_function("parse", |b| {
        b.iter(|| Packet::unmarshal(&mut &black_box(&wire)[..]).map(|p| p.header.ssrc))
    });

    let routes: HashMap<(u64, u32), Vec<usize>> = (0..1000u64)
        .map(|i| ((i, i as u32), vec![i as usize]))
        .collect();
    let mut key = 0u64;
    group.bench_function("route", |b| {
        b.iter(|| {
            key = (key + 7) % 1000;
            black_box(routes.get(&(key, key as u32)).map(Vec::len))
        })
    });

    let mut decide = subscribers(1, &packet);
    let mut seq = packet.header.sequence_number;
    let arrival = Instant::now();
    group.bench_function("decide", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let meta = PacketMeta {
                seq,
                ..meta(&packet, arrival)
            };
            black_box(decide[0].forward.forward(0, &meta))
        })
    });

    let mut subs = subscribers(1, &packet);
    let mut out = vec![0u8; 1500];
    let mut seq = packet.header.sequence_number;
    let mut next = packet.clone();
    group.bench_function("rewrite", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            next.header.sequence_number = seq;
            let meta = meta(&next, Instant::now());
            black_box(forward_one(&next, &meta, &mut subs[0], &mut out))
        })
    });

    let mut context =
        srtp_context(rtc::srtp::protection_profile::ProtectionProfile::Aes128CmHmacSha1_80);
    let mut plain = wire.clone();
    let mut seq = 0u16;
    group.bench_function("srtp", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            plain[2..4].copy_from_slice(&seq.to_be_bytes());
            black_box(context.encrypt_rtp(&plain).map(|p| p.len()))
        })
    });
    group.finish();
}

/// An SRTP context for `profile` with fixed keys (benchmarks only).
fn srtp_context(
    profile: rtc::srtp::protection_profile::ProtectionProfile,
) -> rtc::srtp::context::Context {
    let provider = rtc::crypto::default_provider().expect("a crypto provider");
    rtc::srtp::context::Context::new(
        &vec![7u8; profile.key_len()],
        &vec![9u8; profile.salt_len()],
        profile,
        None,
        None,
        provider.crypto(),
    )
    .expect("an SRTP context")
}

/// SRTP protection of one packet per profile and size: AES-CM-128 with HMAC-SHA1-80 (what every
/// WebRTC peer has) against AEAD-AES-128-GCM (RFC 7714, which browsers offer too), for an audio
/// packet (100 bytes) and a video packet (1,100 bytes).
fn srtp_profiles(c: &mut Criterion) {
    use rtc::srtp::protection_profile::ProtectionProfile;
    let mut group = c.benchmark_group("srtp_profile");
    for (name, profile) in [
        ("aes_cm_sha1_80", ProtectionProfile::Aes128CmHmacSha1_80),
        ("aead_aes_128_gcm", ProtectionProfile::AeadAes128Gcm),
    ] {
        for size in [100usize, 1_100] {
            let mut context = srtp_context(profile);
            // A 12-byte header (V=2, PT 96) and a payload up to `size` bytes.
            let mut plain = vec![0u8; size];
            plain[0] = 0x80;
            plain[1] = 96;
            plain[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            let mut seq = 0u16;
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    seq = seq.wrapping_add(1);
                    plain[2..4].copy_from_slice(&seq.to_be_bytes());
                    black_box(context.encrypt_rtp(&plain).map(|p| p.len()))
                })
            });
        }
    }
    group.finish();
}

/// One forwarded packet for one subscriber, from the publisher's parsed packet to the protected
/// datagram (AEAD-AES-128-GCM, 1,100-byte payload): `clone_marshal_encrypt` is what the WebRTC
/// stack's write path does in its stead (header clone, extension mapping, marshalling into a new
/// buffer, SRTP into another), `owned` the focus's egress path (header written into a reused
/// buffer, payload copied once, SRTP in place). The stack's interceptor chain and queues come on
/// top of the first and are not measured here.
fn egress(c: &mut Criterion) {
    use cascade_media::rewrite::{Rewritten, write_header};
    use rtc::srtp::protection_profile::ProtectionProfile;
    let context = || srtp_context(ProtectionProfile::AeadAes128Gcm);
    let wire = wire_packet();
    let packet = Packet::unmarshal(&mut &wire[..]).expect("parse the sample packet");
    let map = extension_map();
    let mut group = c.benchmark_group("egress");

    let mut srtp = context();
    let mut seq = 0u16;
    group.bench_function("clone_marshal_encrypt", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let mut out = packet.clone();
            out.header.ssrc = 1000;
            out.header.sequence_number = seq;
            out.header.payload_type = 96;
            map_extensions(&mut out.header, &map);
            let plain = out.marshal().expect("marshal");
            black_box(srtp.encrypt_rtp(&plain).map(|p| p.len()))
        })
    });

    let mut srtp = context();
    let mut buffer = Vec::with_capacity(1600);
    let mut seq = 0u16;
    group.bench_function("owned", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let fields = Rewritten {
                ssrc: 1000,
                sequence_number: seq,
                timestamp: packet.header.timestamp,
                payload_type: 96,
                // Browsers negotiate transport-cc: every forwarded packet carries the
                // subscriber's transport-wide sequence number.
                transport_cc: Some((10, seq)),
            };
            let header_len = write_header(&mut buffer, &packet.header, fields, &map);
            buffer.extend_from_slice(&packet.payload);
            black_box(srtp.encrypt_rtp_in_place(&mut buffer, header_len, 1000, seq))
        })
    });
    group.finish();
}

criterion_group!(benches, fanout, stages, srtp_profiles, egress);
criterion_main!(benches);
