//! Synthetic media: self-verifying payloads, an Opus-like audio source and a VP8-like video
//! source with RTP packetization.
//!
//! Every payload ends with a 24-byte trailer (`b"CSC1"`, publisher tag, per-track packet counter,
//! send time in µs since the UNIX epoch). Everything else in the payload is a deterministic
//! function of the trailer fields and the codec header, so [`verify_payload`] can regenerate the
//! whole payload from what it receives and compare byte for byte.

use bytes::{BufMut, Bytes, BytesMut};
use rtc::rtp;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The magic at the start of the trailer.
pub const MAGIC: &[u8; 4] = b"CSC1";
/// Length of the trailer every payload ends with.
pub const TRAILER_LEN: usize = 24;
/// The fewest deterministic body bytes a payload carries, so that corruption is always visible.
pub const MIN_BODY: usize = 8;
/// The largest video payload the packetizer produces.
pub const MAX_VIDEO_PAYLOAD: usize = 1200;
/// Opus TOC byte used for audio: config 31 (CELT fullband 20 ms), mono, one frame.
pub const OPUS_TOC: u8 = 0xF8;
/// RTP clock rate of Opus.
pub const OPUS_CLOCK: u32 = 48_000;
/// RTP clock rate of VP8.
pub const VP8_CLOCK: u32 = 90_000;
/// Audio packet interval.
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Video frames per second.
pub const VIDEO_FPS: u32 = 30;
/// Frames between periodic keyframes (~3 s).
pub const KEYFRAME_EVERY_FRAMES: u64 = 90;

const VP8_START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];
const VP8_DESC_START: u8 = 0x10;
const VP8_DESC_CONT: u8 = 0x00;

/// Audio or video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MediaKind {
    /// Opus audio.
    Audio,
    /// VP8 video.
    Video,
}

impl MediaKind {
    /// `"audio"` or `"video"`, as in SDP and stream metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
        }
    }
}

/// Microseconds since the UNIX epoch now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The publisher tag of a track: FNV-1a of user, device and track id, low bit = kind (1 = video).
pub fn publisher_tag(user_id: &str, device_id: &str, track_id: &str, kind: MediaKind) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for part in [user_id, device_id, track_id] {
        for byte in part.bytes().chain(std::iter::once(0u8)) {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    match kind {
        MediaKind::Audio => hash & !1,
        MediaKind::Video => hash | 1,
    }
}

/// The publisher tag of one simulcast layer of a video track with tag `tag`: the lowest layer
/// (`q`, or no rid) keeps `tag`, the others get their own, still marked as video.
pub fn layer_tag(tag: u32, rid: &str) -> u32 {
    if rid.is_empty() || rid == "q" {
        return tag;
    }
    let mut hash = u64::from(tag);
    for byte in rid.bytes() {
        hash = splitmix(hash ^ u64::from(byte));
    }
    (hash as u32) | 1
}

/// Whether `tag` is the tag of the track with base tag `base` or of one of its simulcast layers.
pub fn is_track_tag(base: u32, tag: u32) -> bool {
    base == tag
        || crate::peer::SIMULCAST_LAYERS
            .iter()
            .any(|(rid, _, _)| layer_tag(base, rid) == tag)
}

/// The media kind a publisher tag was made for.
pub fn tag_kind(tag: u32) -> MediaKind {
    if tag & 1 == 1 {
        MediaKind::Video
    } else {
        MediaKind::Audio
    }
}

/// How a payload starts (the codec header before the deterministic body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadLayout {
    /// An Opus packet: one TOC byte.
    Opus,
    /// The first packet of a VP8 frame: descriptor with S bit, VP8 payload header.
    Vp8Start {
        /// Whether the frame is a keyframe (P bit 0, start code and dimensions follow).
        keyframe: bool,
        /// Frame width (keyframes only).
        width: u16,
        /// Frame height (keyframes only).
        height: u16,
    },
    /// A later packet of a VP8 frame: descriptor without S bit.
    Vp8Continuation,
}

impl PayloadLayout {
    /// Length of the codec header this layout starts with.
    pub fn header_len(self) -> usize {
        match self {
            Self::Opus => 1,
            Self::Vp8Start { keyframe: true, .. } => 1 + 3 + 3 + 4,
            Self::Vp8Start {
                keyframe: false, ..
            } => 1 + 3,
            Self::Vp8Continuation => 1,
        }
    }

    /// The shortest payload of this layout.
    pub fn min_len(self) -> usize {
        self.header_len() + MIN_BODY + TRAILER_LEN
    }

    fn seed_code(self) -> u64 {
        match self {
            Self::Opus => 1,
            Self::Vp8Start {
                keyframe: true,
                width,
                height,
            } => 4 | (u64::from(width) << 8) | (u64::from(height) << 24),
            // Interframes carry no dimensions.
            Self::Vp8Start {
                keyframe: false, ..
            } => 2,
            Self::Vp8Continuation => 3,
        }
    }
}

/// Everything that determines one synthetic payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadSpec {
    /// Publisher tag of the track.
    pub tag: u32,
    /// Per-track packet counter.
    pub counter: u64,
    /// Send time, µs since the UNIX epoch.
    pub send_us: u64,
    /// Codec header.
    pub layout: PayloadLayout,
    /// Total payload length (raised to the layout's minimum).
    pub len: usize,
}

/// What [`verify_payload`] learned from a payload that checked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrailerInfo {
    /// Publisher tag.
    pub tag: u32,
    /// Per-track packet counter.
    pub counter: u64,
    /// Send time, µs since the UNIX epoch.
    pub send_us: u64,
    /// The codec header found.
    pub layout: PayloadLayout,
}

/// Why a payload failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// Shorter than any synthetic payload.
    TooShort(usize),
    /// The trailer magic is missing.
    BadMagic,
    /// The codec header is not one the generator writes.
    BadHeader,
    /// The bytes differ from the regeneration at this offset.
    Content(usize),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooShort(len) => write!(f, "payload too short ({len} bytes)"),
            Self::BadMagic => write!(f, "trailer magic missing"),
            Self::BadHeader => write!(f, "unexpected codec header"),
            Self::Content(offset) => write!(f, "payload differs at byte {offset}"),
        }
    }
}

impl std::error::Error for Mismatch {}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Where generated payload bytes go: a buffer, or a comparison against received bytes.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }
}

/// Compares generated bytes against a payload without allocating; remembers the first mismatch.
struct Compare<'a> {
    payload: &'a [u8],
    offset: usize,
    mismatch: Option<usize>,
}

impl Sink for Compare<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if self.mismatch.is_none() {
            let end = (self.offset + bytes.len()).min(self.payload.len());
            let got = &self.payload[self.offset.min(end)..end];
            if let Some(i) = got.iter().zip(bytes).position(|(a, b)| a != b) {
                self.mismatch = Some(self.offset + i);
            } else if got.len() < bytes.len() {
                self.mismatch = Some(end);
            }
        }
        self.offset += bytes.len();
    }
}

fn fill_body(out: &mut impl Sink, seed: u64, len: usize) {
    let mut state = splitmix(seed) | 1;
    let mut remaining = len;
    while remaining > 0 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = state.to_le_bytes();
        let take = remaining.min(8);
        out.put(&word[..take]);
        remaining -= take;
    }
}

fn vp8_frame_tag(keyframe: bool, len: usize) -> [u8; 3] {
    // RFC 6386 §9.1: P (bit 0, 0 = keyframe), version (bits 1-3), show_frame (bit 4),
    // first_partition_size (19 bits).
    let size = (len as u32) & 0x7_FFFF;
    let first = u8::from(!keyframe) | 0x10 | (((size & 0x7) as u8) << 5);
    [first, (size >> 3) as u8, (size >> 11) as u8]
}

/// Emits the payload `spec` describes (length already clamped) into `out`.
fn emit(spec: &PayloadSpec, len: usize, out: &mut impl Sink) {
    let header_len = spec.layout.header_len();
    match spec.layout {
        PayloadLayout::Opus => out.put(&[OPUS_TOC]),
        PayloadLayout::Vp8Start {
            keyframe,
            width,
            height,
        } => {
            out.put(&[VP8_DESC_START]);
            out.put(&vp8_frame_tag(keyframe, len));
            if keyframe {
                out.put(&VP8_START_CODE);
                out.put(&(width & 0x3FFF).to_le_bytes());
                out.put(&(height & 0x3FFF).to_le_bytes());
            }
        }
        PayloadLayout::Vp8Continuation => out.put(&[VP8_DESC_CONT]),
    }
    let body_len = len - header_len - TRAILER_LEN;
    let seed = u64::from(spec.tag)
        ^ spec.counter.rotate_left(32)
        ^ splitmix(spec.layout.seed_code())
        ^ splitmix(spec.send_us ^ 0x5555);
    fill_body(out, seed, body_len);
    out.put(MAGIC);
    out.put(&spec.tag.to_be_bytes());
    out.put(&spec.counter.to_be_bytes());
    out.put(&spec.send_us.to_be_bytes());
}

/// Builds the payload `spec` describes.
pub fn synth_payload(spec: &PayloadSpec) -> Bytes {
    let len = spec.len.max(spec.layout.min_len());
    let mut out = BytesMut::with_capacity(len);
    emit(spec, len, &mut out);
    out.freeze()
}

/// Reads the trailer of a payload without checking the rest.
pub fn read_trailer(payload: &[u8]) -> Result<(u32, u64, u64), Mismatch> {
    if payload.len() < TRAILER_LEN + 1 {
        return Err(Mismatch::TooShort(payload.len()));
    }
    let trailer = &payload[payload.len() - TRAILER_LEN..];
    if &trailer[..4] != MAGIC {
        return Err(Mismatch::BadMagic);
    }
    let mut tag = [0u8; 4];
    tag.copy_from_slice(&trailer[4..8]);
    let mut counter = [0u8; 8];
    counter.copy_from_slice(&trailer[8..16]);
    let mut send = [0u8; 8];
    send.copy_from_slice(&trailer[16..24]);
    Ok((
        u32::from_be_bytes(tag),
        u64::from_be_bytes(counter),
        u64::from_be_bytes(send),
    ))
}

/// Checks a whole payload against a regeneration from its trailer and codec header.
pub fn verify_payload(payload: &[u8]) -> Result<TrailerInfo, Mismatch> {
    let (tag, counter, send_us) = read_trailer(payload)?;
    let layout = match tag_kind(tag) {
        MediaKind::Audio => PayloadLayout::Opus,
        MediaKind::Video => match payload[0] {
            VP8_DESC_START => {
                let keyframe = payload.get(1).is_some_and(|b| b & 1 == 0);
                if keyframe {
                    if payload.len() < 11 || payload[4..7] != VP8_START_CODE {
                        return Err(Mismatch::BadHeader);
                    }
                    PayloadLayout::Vp8Start {
                        keyframe,
                        width: u16::from_le_bytes([payload[7], payload[8]]),
                        height: u16::from_le_bytes([payload[9], payload[10]]),
                    }
                } else {
                    PayloadLayout::Vp8Start {
                        keyframe,
                        width: 0,
                        height: 0,
                    }
                }
            }
            VP8_DESC_CONT => PayloadLayout::Vp8Continuation,
            _ => return Err(Mismatch::BadHeader),
        },
    };
    if payload.len() < layout.min_len() {
        return Err(Mismatch::TooShort(payload.len()));
    }
    let spec = PayloadSpec {
        tag,
        counter,
        send_us,
        layout,
        len: payload.len(),
    };
    let mut compare = Compare {
        payload,
        offset: 0,
        mismatch: None,
    };
    emit(&spec, payload.len(), &mut compare);
    if let Some(offset) = compare.mismatch {
        return Err(Mismatch::Content(offset));
    }
    Ok(TrailerInfo {
        tag,
        counter,
        send_us,
        layout,
    })
}

fn rtp_packet(seq: u16, timestamp: u32, marker: bool, payload: Bytes) -> rtp::Packet {
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            marker,
            sequence_number: seq,
            timestamp,
            ..Default::default()
        },
        payload,
    }
}

/// A synthetic Opus track: one ~80–120 byte packet per 20 ms.
#[derive(Clone, Debug)]
pub struct AudioSource {
    tag: u32,
    counter: u64,
    seq: u16,
    ts_base: u32,
}

impl AudioSource {
    /// A source with the given publisher tag and random sequence/timestamp bases.
    pub fn new(tag: u32) -> Self {
        Self {
            tag,
            counter: 0,
            seq: rand::random(),
            ts_base: rand::random(),
        }
    }

    /// Packets produced so far.
    pub fn packets(&self) -> u64 {
        self.counter
    }

    /// The packet for media time `at` (since the source started); ssrc and payload type unset.
    pub fn next_packet(&mut self, at: Duration, send_us: u64) -> rtp::Packet {
        let len = 80 + (splitmix(u64::from(self.tag) ^ self.counter) % 41) as usize;
        let payload = synth_payload(&PayloadSpec {
            tag: self.tag,
            counter: self.counter,
            send_us,
            layout: PayloadLayout::Opus,
            len,
        });
        let ts = self
            .ts_base
            .wrapping_add((at.as_micros() as u64 * u64::from(OPUS_CLOCK) / 1_000_000) as u32);
        let packet = rtp_packet(self.seq, ts, self.counter == 0, payload);
        self.counter += 1;
        self.seq = self.seq.wrapping_add(1);
        packet
    }
}

/// A synthetic VP8 track: frames at [`VIDEO_FPS`], keyframes at start, every ~3 s and on request.
#[derive(Clone, Debug)]
pub struct VideoSource {
    tag: u32,
    counter: u64,
    seq: u16,
    ts_base: u32,
    bitrate_bps: u32,
    width: u16,
    height: u16,
    frames: u64,
    frames_since_key: u64,
    force_keyframe: bool,
    keyframes: u64,
    keyframe_every: u64,
}

impl VideoSource {
    /// A source with the given publisher tag and target bitrate.
    pub fn new(tag: u32, bitrate_bps: u32) -> Self {
        Self {
            tag,
            counter: 0,
            seq: rand::random(),
            ts_base: rand::random(),
            bitrate_bps,
            width: 640,
            height: 360,
            frames: 0,
            frames_since_key: 0,
            force_keyframe: true,
            keyframes: 0,
            keyframe_every: KEYFRAME_EVERY_FRAMES,
        }
    }

    /// Sets the frame size written into keyframe headers.
    pub fn set_size(&mut self, width: u16, height: u16) {
        self.width = width;
        self.height = height;
    }

    /// The frame size written into keyframe headers.
    pub fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    /// Sets the periodic keyframe interval (at least one frame); requested keyframes come on top.
    pub fn set_keyframe_interval(&mut self, interval: Duration) {
        let frames = interval.as_millis() as u64 * u64::from(VIDEO_FPS) / 1000;
        self.keyframe_every = frames.max(1);
    }

    /// Asks for the next frame to be a keyframe.
    pub fn request_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// Frames produced so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Keyframes produced so far.
    pub fn keyframes(&self) -> u64 {
        self.keyframes
    }

    /// Packets produced so far.
    pub fn packets(&self) -> u64 {
        self.counter
    }

    /// Bytes of one average frame at the target bitrate.
    fn frame_bytes(&self, keyframe: bool) -> usize {
        let avg = (self.bitrate_bps / 8 / VIDEO_FPS).max(200) as usize;
        if keyframe { avg * 4 } else { avg }
    }

    /// The packets of the frame for media time `at`; ssrc and payload type unset.
    pub fn next_frame(&mut self, at: Duration, send_us: u64) -> Vec<rtp::Packet> {
        let keyframe = self.force_keyframe || self.frames_since_key >= self.keyframe_every;
        if keyframe {
            self.force_keyframe = false;
            self.frames_since_key = 0;
            self.keyframes += 1;
        }
        let ts = self
            .ts_base
            .wrapping_add((at.as_micros() as u64 * u64::from(VP8_CLOCK) / 1_000_000) as u32);
        let payloads = packetize_frame(
            self.tag,
            self.counter,
            send_us,
            keyframe,
            self.frame_bytes(keyframe),
            (self.width, self.height),
        );
        let count = payloads.len();
        let mut packets = Vec::with_capacity(count);
        for (index, payload) in payloads.into_iter().enumerate() {
            packets.push(rtp_packet(self.seq, ts, index + 1 == count, payload));
            self.seq = self.seq.wrapping_add(1);
            self.counter += 1;
        }
        self.frames += 1;
        self.frames_since_key += 1;
        packets
    }
}

/// Splits one synthetic VP8 frame of about `frame_bytes` into payloads of at most
/// [`MAX_VIDEO_PAYLOAD`] bytes, with counters starting at `first_counter`.
pub fn packetize_frame(
    tag: u32,
    first_counter: u64,
    send_us: u64,
    keyframe: bool,
    frame_bytes: usize,
    (width, height): (u16, u16),
) -> Vec<Bytes> {
    let count = frame_bytes.div_ceil(MAX_VIDEO_PAYLOAD).max(1);
    let each = frame_bytes / count;
    (0..count)
        .map(|index| {
            let layout = if index == 0 {
                PayloadLayout::Vp8Start {
                    keyframe,
                    width,
                    height,
                }
            } else {
                PayloadLayout::Vp8Continuation
            };
            synth_payload(&PayloadSpec {
                tag,
                counter: first_counter + index as u64,
                send_us,
                layout,
                len: each.min(MAX_VIDEO_PAYLOAD),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIO_TAG: u32 = 0x1234_5678;
    const VIDEO_TAG: u32 = 0x1234_5679;

    #[test]
    fn tag_carries_kind() {
        let a = publisher_tag("@a:hs", "DEV", "audio", MediaKind::Audio);
        let v = publisher_tag("@a:hs", "DEV", "video", MediaKind::Video);
        assert_eq!(tag_kind(a), MediaKind::Audio);
        assert_eq!(tag_kind(v), MediaKind::Video);
        assert_ne!(
            publisher_tag("@a:hs", "DEV", "audio", MediaKind::Audio),
            publisher_tag("@a:hs", "DEV2", "audio", MediaKind::Audio)
        );
    }

    #[test]
    fn round_trip_all_layouts() {
        let layouts = [
            PayloadLayout::Opus,
            PayloadLayout::Vp8Start {
                keyframe: true,
                width: 640,
                height: 360,
            },
            PayloadLayout::Vp8Start {
                keyframe: false,
                width: 0,
                height: 0,
            },
            PayloadLayout::Vp8Continuation,
        ];
        for (i, layout) in layouts.into_iter().enumerate() {
            let tag = if layout == PayloadLayout::Opus {
                AUDIO_TAG
            } else {
                VIDEO_TAG
            };
            for len in [0, 50, 100, 1200] {
                let spec = PayloadSpec {
                    tag,
                    counter: 7 + i as u64,
                    send_us: 1_700_000_000_000_000,
                    layout,
                    len,
                };
                let payload = synth_payload(&spec);
                assert_eq!(payload.len(), len.max(layout.min_len()));
                let info = verify_payload(&payload).unwrap();
                assert_eq!(info.tag, tag);
                assert_eq!(info.counter, spec.counter);
                assert_eq!(info.send_us, spec.send_us);
                assert_eq!(info.layout, layout);
                // Deterministic.
                assert_eq!(payload, synth_payload(&spec));
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let payload = synth_payload(&PayloadSpec {
            tag: VIDEO_TAG,
            counter: 3,
            send_us: 99,
            layout: PayloadLayout::Vp8Start {
                keyframe: true,
                width: 320,
                height: 180,
            },
            len: 300,
        });
        for offset in 0..payload.len() {
            let mut bad = payload.to_vec();
            bad[offset] ^= 0x01;
            assert!(verify_payload(&bad).is_err(), "flip at {offset} undetected");
        }
        let audio = synth_payload(&PayloadSpec {
            tag: AUDIO_TAG,
            counter: 1,
            send_us: 5,
            layout: PayloadLayout::Opus,
            len: 100,
        });
        let mut bad = audio.to_vec();
        bad[40] ^= 0x80;
        assert_eq!(verify_payload(&bad), Err(Mismatch::Content(40)));
        assert_eq!(verify_payload(&audio[..20]), Err(Mismatch::TooShort(20)));
        assert!(verify_payload(&audio[..audio.len() - 1]).is_err());
    }

    #[test]
    fn vp8_keyframe_header_is_valid() {
        let payload = synth_payload(&PayloadSpec {
            tag: VIDEO_TAG,
            counter: 0,
            send_us: 0,
            layout: PayloadLayout::Vp8Start {
                keyframe: true,
                width: 640,
                height: 360,
            },
            len: 1000,
        });
        assert_eq!(payload[0], 0x10, "descriptor: S bit, PID 0");
        let header = &payload[1..];
        assert_eq!(header[0] & 1, 0, "P bit 0 = keyframe");
        assert_eq!(&header[3..6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(u16::from_le_bytes([header[6], header[7]]) & 0x3FFF, 640);
        assert_eq!(u16::from_le_bytes([header[8], header[9]]) & 0x3FFF, 360);

        let inter = synth_payload(&PayloadSpec {
            tag: VIDEO_TAG,
            counter: 1,
            send_us: 0,
            layout: PayloadLayout::Vp8Start {
                keyframe: false,
                width: 0,
                height: 0,
            },
            len: 1000,
        });
        assert_eq!(inter[0], 0x10);
        assert_eq!(inter[1] & 1, 1, "P bit 1 = interframe");
    }

    #[test]
    fn vp8_frame_packetization() {
        let mut source = VideoSource::new(VIDEO_TAG, 300_000);
        let key = source.next_frame(Duration::ZERO, 1);
        assert!(key.len() >= 2, "keyframe spans several packets");
        let inter = source.next_frame(Duration::from_millis(33), 2);
        for (frame, keyframe) in [(&key, true), (&inter, false)] {
            let ts = frame[0].header.timestamp;
            for (i, packet) in frame.iter().enumerate() {
                let first = i == 0;
                let last = i + 1 == frame.len();
                assert_eq!(packet.header.timestamp, ts);
                assert_eq!(packet.header.marker, last);
                assert_eq!(packet.payload[0] == 0x10, first);
                assert!(packet.payload.len() <= MAX_VIDEO_PAYLOAD);
                let info = verify_payload(&packet.payload).unwrap();
                if first {
                    assert!(
                        matches!(info.layout, PayloadLayout::Vp8Start { keyframe: k, .. } if k == keyframe)
                    );
                } else {
                    assert_eq!(info.layout, PayloadLayout::Vp8Continuation);
                }
            }
        }
        // Sequence numbers and counters run on across frames.
        let all: Vec<_> = key.iter().chain(inter.iter()).collect();
        for pair in all.windows(2) {
            assert_eq!(
                pair[1].header.sequence_number,
                pair[0].header.sequence_number.wrapping_add(1)
            );
            let a = verify_payload(&pair[0].payload).unwrap().counter;
            let b = verify_payload(&pair[1].payload).unwrap().counter;
            assert_eq!(b, a + 1);
        }
        // 33 ms at 90 kHz.
        assert_eq!(
            inter[0]
                .header
                .timestamp
                .wrapping_sub(key[0].header.timestamp),
            2970
        );
    }

    #[test]
    fn keyframes_periodic_and_on_request() {
        let mut source = VideoSource::new(VIDEO_TAG, 300_000);
        let is_key = |frame: &[rtp::Packet]| frame[0].payload[1] & 1 == 0;
        let mut keys = Vec::new();
        for i in 0..200u64 {
            if i == 10 {
                source.request_keyframe();
            }
            let frame = source.next_frame(Duration::from_millis(i * 33), 0);
            if is_key(&frame) {
                keys.push(i);
            }
        }
        assert_eq!(keys, vec![0, 10, 100, 190]);
        assert_eq!(source.keyframes(), 4);
    }

    #[test]
    fn keyframe_interval_and_size_are_settable() {
        let mut source = VideoSource::new(VIDEO_TAG, 100_000);
        source.set_size(1280, 720);
        source.set_keyframe_interval(Duration::from_secs(1));
        let mut keys = Vec::new();
        for i in 0..70u64 {
            let frame = source.next_frame(Duration::from_millis(i * 33), 0);
            if let Ok(TrailerInfo {
                layout:
                    PayloadLayout::Vp8Start {
                        keyframe: true,
                        width,
                        height,
                    },
                ..
            }) = verify_payload(&frame[0].payload)
            {
                keys.push((i, width, height));
            }
        }
        assert_eq!(keys, vec![(0, 1280, 720), (30, 1280, 720), (60, 1280, 720)]);
    }

    #[test]
    fn layer_tags_are_distinct_video_tags_of_their_track() {
        let base = publisher_tag("@a:hs", "DEV", "video", MediaKind::Video);
        assert_eq!(layer_tag(base, "q"), base);
        assert_eq!(layer_tag(base, ""), base);
        let (h, f) = (layer_tag(base, "h"), layer_tag(base, "f"));
        assert!(h != base && f != base && h != f);
        assert_eq!(
            (tag_kind(h), tag_kind(f)),
            (MediaKind::Video, MediaKind::Video)
        );
        assert!(is_track_tag(base, h) && is_track_tag(base, f) && is_track_tag(base, base));
        assert!(!is_track_tag(base, base ^ 2));
    }

    #[test]
    fn audio_packets_sized_and_timed() {
        let mut source = AudioSource::new(AUDIO_TAG);
        let a = source.next_packet(Duration::ZERO, 0);
        let b = source.next_packet(Duration::from_millis(20), 0);
        for p in [&a, &b] {
            assert!((80..=120).contains(&p.payload.len()));
            assert_eq!(p.payload[0], OPUS_TOC);
            verify_payload(&p.payload).unwrap();
        }
        assert_eq!(b.header.timestamp.wrapping_sub(a.header.timestamp), 960);
        assert_eq!(
            b.header.sequence_number,
            a.header.sequence_number.wrapping_add(1)
        );
    }
}
