//! Keyframe detection and VP8 descriptor patching on arbitrary payloads, and a subscription
//! fed arbitrary packets: nothing may panic.
#![no_main]

use cascade_forward::vp8::{Vp8Munger, descriptor};
use cascade_forward::{Codec, PacketMeta, Subscription, Verdict, is_keyframe};
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1, Codec::Opus] {
        let _ = is_keyframe(codec, data);
    }
    let _ = descriptor(data);
    let mut munger = Vp8Munger::default();
    munger.observe(data);
    munger.switch_source();
    let mut copy = data.to_vec();
    munger.munge(&mut copy);
    assert_eq!(copy.len(), data.len());

    // Split the input into packets: 2 bytes of seq, 1 byte of layer, then a payload chunk.
    let mut sub = Subscription::new(Codec::Vp8, 90_000, 0, 0, 1);
    let start = Instant::now();
    let mut last_seq = None;
    for chunk in data.chunks(12) {
        if chunk.len() < 3 {
            break;
        }
        let meta = PacketMeta {
            seq: u16::from_be_bytes([chunk[0], chunk[1]]),
            timestamp: u32::from(chunk[0]) << 8,
            marker: false,
            payload: &chunk[3..],
            arrival: start,
        };
        if chunk[2] & 0x10 != 0 {
            sub.set_target(chunk[2] & 0x03);
        }
        if let Verdict::Forward { seq, patch, .. } = sub.forward(chunk[2] & 0x03, &meta) {
            if patch {
                let mut payload = meta.payload.to_vec();
                sub.patch(&mut payload);
            }
            last_seq = Some(seq);
        }
    }
    let _ = last_seq;
});
