//! Keyframe detection from RTP payload descriptors, without decoding.
//!
//! Each function answers whether a packet *starts* a keyframe, which is where a subscriber
//! can begin decoding. Truncated or malformed payloads are simply not keyframes.

use crate::codec::Codec;

/// Whether `payload` (an RTP payload of `codec`) starts a keyframe.
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8(payload),
        Codec::Vp9 => vp9(payload),
        Codec::H264 => h264(payload),
        Codec::Av1 => av1(payload),
        Codec::Opus | Codec::Other => false,
    }
}

/// VP8 (RFC 7741): the first partition's start, whose payload header has P = 0.
fn vp8(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let partition = first & 0x07;
    if !start || partition != 0 {
        return false;
    }
    let mut at = 1;
    if extended {
        let Some(&x) = p.get(at) else { return false };
        at += 1;
        if x & 0x80 != 0 {
            // Picture id: 7 or 15 bits.
            let Some(&pid) = p.get(at) else { return false };
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID / Y / KEYIDX
        }
    }
    p.get(at).is_some_and(|header| header & 0x01 == 0)
}

/// VP9 (RFC 9628): start of a frame that is not inter-predicted, in the lowest spatial layer.
fn vp9(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let picture_id = first & 0x80 != 0;
    let inter_predicted = first & 0x40 != 0;
    let layer_indices = first & 0x20 != 0;
    let flexible = first & 0x10 != 0;
    let begins_frame = first & 0x08 != 0;
    if inter_predicted || !begins_frame {
        return false;
    }
    let mut at = 1;
    if picture_id {
        let Some(&pid) = p.get(at) else { return false };
        at += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    if layer_indices {
        let Some(&layers) = p.get(at) else {
            return false;
        };
        let spatial_id = (layers >> 1) & 0x07;
        if spatial_id != 0 {
            return false;
        }
        let _ = flexible;
    }
    true
}

/// H.264 (RFC 6184): an IDR slice or SPS, alone, aggregated (STAP-A) or starting a fragment (FU-A).
fn h264(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let is_key = |nal_type: u8| nal_type == 5 || nal_type == 7;
    match first & 0x1f {
        24 => {
            // STAP-A: 16-bit sizes, each followed by a NAL unit.
            let mut at = 1;
            while at + 2 < p.len() {
                let size = usize::from(u16::from_be_bytes([p[at], p[at + 1]]));
                at += 2;
                match p.get(at) {
                    Some(&nal) if is_key(nal & 0x1f) => return true,
                    Some(_) => at += size,
                    None => return false,
                }
            }
            false
        }
        28 => p
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        nal_type => is_key(nal_type),
    }
}

/// AV1 (RTP payload format for AV1): the aggregation header's N bit starts a coded video sequence.
fn av1(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let continues_fragment = first & 0x80 != 0;
    let new_sequence = first & 0x08 != 0;
    new_sequence && !continues_fragment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_keyframes_per_codec() {
        let cases: &[(Codec, &[u8], bool, &str)] = &[
            (
                Codec::Vp8,
                &[0x10, 0x00, 0x00, 0x00],
                true,
                "vp8 key, short descriptor",
            ),
            (Codec::Vp8, &[0x10, 0x01], false, "vp8 interframe"),
            (Codec::Vp8, &[0x00, 0x00], false, "vp8 continuation"),
            (
                Codec::Vp8,
                &[0x90, 0x80, 0x81, 0x23, 0x00],
                true,
                "vp8 key, 15-bit picture id",
            ),
            (
                Codec::Vp8,
                &[0x90, 0xe0, 0x05, 0x07, 0x00, 0x00],
                true,
                "vp8 key, pid+tl0+tid",
            ),
            (Codec::Vp8, &[0x90, 0x80], false, "vp8 truncated"),
            (Codec::Vp8, &[], false, "vp8 empty"),
            (Codec::Vp9, &[0x08], true, "vp9 begin, not inter"),
            (Codec::Vp9, &[0x88, 0x05], true, "vp9 begin with picture id"),
            (Codec::Vp9, &[0xc8, 0x01], false, "vp9 inter-predicted"),
            (
                Codec::Vp9,
                &[0xa8, 0x01, 0x02],
                false,
                "vp9 spatial layer 1",
            ),
            (Codec::H264, &[0x65, 0x88], true, "h264 idr"),
            (Codec::H264, &[0x41, 0x9a], false, "h264 non-idr"),
            (
                Codec::H264,
                &[0x78, 0x00, 0x02, 0x09, 0xf0, 0x00, 0x02, 0x67, 0x42],
                true,
                "stap-a with sps",
            ),
            (
                Codec::H264,
                &[0x78, 0x00, 0x02, 0x09, 0xf0],
                false,
                "stap-a without key",
            ),
            (Codec::H264, &[0x7c, 0x85], true, "fu-a start of idr"),
            (Codec::H264, &[0x7c, 0x05], false, "fu-a middle of idr"),
            (Codec::Av1, &[0x18], true, "av1 new sequence"),
            (Codec::Av1, &[0x10], false, "av1 no new sequence"),
            (Codec::Opus, &[0xff], false, "opus"),
        ];
        for (codec, payload, expected, name) in cases {
            assert_eq!(is_keyframe(*codec, payload), *expected, "{name}");
        }
    }

    #[test]
    fn stap_a_with_oversized_length_is_not_a_keyframe_and_does_not_panic() {
        assert!(!is_keyframe(Codec::H264, &[0x78, 0xff, 0xff, 0x41]));
    }
}
