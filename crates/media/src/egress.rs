//! The egress path: forwarded RTP protected and sent by the focus itself.
//!
//! The peer connection keeps ICE, DTLS, SCTP, RTCP and negotiation; forwarded RTP bypasses its
//! per-packet send machinery (packet clone, interceptor chain, marshalling, SRTP through a
//! pipeline of queues). Per subscriber, an [`Egress`] holds a second SRTP context with the
//! session's local keys and the address the stack sends to; per subscription, an
//! [`OutboundStream`] counts what was sent (for sender reports) and keeps the recent packets to
//! answer NACKs, over RTX where the subscriber negotiated it (RFC 4588).
//!
//! The stack never sends RTP on the SSRCs the focus protects here (RFC 3711 §9.1: a key and
//! packet index must not protect two different packets), and the focus protects no RTCP.

use bytes::Bytes;
use cascade_forward::vp8::MUNGED_PREFIX;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters;
use rtc::srtp::context::Context;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Packets kept per video subscription to answer NACKs: about a second of 1 Mb/s video.
pub const HISTORY_PACKETS: usize = 256;

/// Seconds between 1900 (NTP's epoch) and 1970 (Unix's).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// One subscriber's egress: its SRTP context for forwarded RTP, and where to send it.
#[derive(Default)]
pub struct Egress {
    srtp: Option<Context>,
    remote: Option<SocketAddr>,
}

/// Why a forwarded packet could not be protected.
#[derive(Debug, PartialEq, Eq)]
pub enum NotSent {
    /// The DTLS handshake has not completed, or the stack has not sent anything yet.
    NotConnected,
    /// The SRTP context refused the packet.
    Protection,
}

impl Egress {
    /// Whether the SRTP context is installed.
    pub fn has_context(&self) -> bool {
        self.srtp.is_some()
    }

    /// Installs the SRTP context the stack hands out after the DTLS handshake.
    pub fn install(&mut self, context: Context) {
        self.srtp = Some(context);
    }

    /// Where forwarded RTP goes: the address of the stack's selected ICE pair, if known.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// Records where the stack sends this peer's datagrams (its selected ICE pair).
    pub fn set_remote(&mut self, addr: SocketAddr) {
        self.remote = Some(addr);
    }

    /// Protects the plaintext RTP packet in `packet` in place (RFC 3711 §3.3, RFC 7714 for
    /// AEAD) and returns where to send it.
    ///
    /// `header_len` is the RTP header's length; `ssrc` and `sequence_number` are the header's.
    ///
    /// # Errors
    ///
    /// [`NotSent::NotConnected`] before the handshake, [`NotSent::Protection`] when the SRTP
    /// context refuses the packet.
    pub fn protect(
        &mut self,
        packet: &mut Vec<u8>,
        header_len: usize,
        ssrc: u32,
        sequence_number: u16,
    ) -> Result<SocketAddr, NotSent> {
        let (Some(srtp), Some(remote)) = (self.srtp.as_mut(), self.remote) else {
            return Err(NotSent::NotConnected);
        };
        srtp.encrypt_rtp_in_place(packet, header_len, ssrc, sequence_number)
            .map_err(|_| NotSent::Protection)?;
        Ok(remote)
    }
}

/// RTX for one outgoing stream (RFC 4588 §4, session multiplexing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rtx {
    /// The RTX stream's SSRC.
    pub ssrc: u32,
    /// The RTX payload type the subscriber negotiated for the stream's codec.
    pub payload_type: u8,
}

/// One subscription's outgoing stream: sender-report counters and recent packets.
pub struct OutboundStream {
    ssrc: u32,
    clock_rate: u32,
    rtx_ssrc: Option<u32>,
    rtx: Option<Rtx>,
    rtx_sequence: u16,
    packets: u32,
    octets: u32,
    last: Option<(u32, Instant)>,
    last_sequence: Option<u16>,
    history: Option<History>,
}

impl OutboundStream {
    /// A stream on `ssrc` whose RTP clock runs at `clock_rate` Hz, with an RTX SSRC announced
    /// for it (video) or not.
    pub fn new(ssrc: u32, clock_rate: u32, rtx_ssrc: Option<u32>) -> Self {
        Self {
            ssrc,
            clock_rate,
            rtx_ssrc,
            rtx: None,
            rtx_sequence: rand::random(),
            packets: 0,
            octets: 0,
            last: None,
            last_sequence: None,
            history: None,
        }
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The size of the packet sent with `sequence_number` as it would be sent again (RTP,
    /// before SRTP), if it is still kept — its header here, and its payload here or still in
    /// the publication's `payloads` (so that a retransmission that cannot be made takes no
    /// share of the subscriber's downlink).
    pub fn kept_len(&self, sequence_number: u16, payloads: &PayloadHistory) -> Option<usize> {
        let slot = self.history.as_ref()?.get(sequence_number)?;
        if let Kept::Publication { at, .. } = slot.payload {
            payloads.get(at)?;
        }
        let original = if self.rtx.is_some() { 2 } else { 0 };
        Some(slot.header.len() + original + slot.payload.len())
    }

    /// The sequence number of the packet sent last, if any.
    pub fn last_sequence(&self) -> Option<u16> {
        self.last_sequence
    }

    /// Whether packets sent are kept for retransmission (the subscriber negotiated NACK).
    pub fn keeps_history(&self) -> bool {
        self.history.is_some()
    }

    /// Whether packets sent are kept and can be sent again over RTX (what probes need: a
    /// retransmission the subscriber drops as a duplicate).
    pub fn retransmits_over_rtx(&self) -> bool {
        self.rtx.is_some() && self.history.is_some()
    }

    /// What negotiation settled: the RTX payload type (where the subscriber negotiated RTX
    /// for the codec) and whether it sends NACKs (then recent packets are kept).
    pub fn negotiated(&mut self, rtx_payload_type: Option<u8>, nack: bool) {
        self.rtx = self
            .rtx_ssrc
            .zip(rtx_payload_type)
            .map(|(ssrc, payload_type)| Rtx { ssrc, payload_type });
        if nack && self.history.is_none() {
            self.history = Some(History::new(HISTORY_PACKETS));
        } else if !nack {
            self.history = None;
        }
    }

    /// Counts a packet sent (RFC 3550 §6.4.1: payload octets) and keeps it for retransmission
    /// where NACKs are negotiated.
    ///
    /// `packet` is the plaintext as sent, with a header of `header_len` bytes; `payload` is
    /// the publisher's payload it carries, kept in the publication's [`PayloadHistory`] as
    /// `kept` (`None` only when no stream keeps a history), the same bytes as
    /// `packet[header_len..]` but for at most [`MUNGED_PREFIX`]
    /// leading ones: the history copies the header and those, and refers to the payload there
    /// (one copy per publisher's packet, however many subscribers keep it, and no reference
    /// count taken per subscriber).
    #[allow(clippy::too_many_arguments)]
    pub fn sent(
        &mut self,
        now: Instant,
        sequence_number: u16,
        timestamp: u32,
        packet: &[u8],
        header_len: usize,
        payload: &[u8],
        kept: Option<PayloadRef>,
    ) {
        self.packets = self.packets.wrapping_add(1);
        let octets = packet.len().saturating_sub(header_len);
        self.octets = self.octets.wrapping_add(octets as u32);
        self.last = Some((timestamp, now));
        self.last_sequence = Some(sequence_number);
        if let (Some(history), Some(kept)) = (self.history.as_mut(), kept) {
            history.keep(sequence_number, packet, header_len, payload, kept);
        }
    }

    /// A sender report for this stream (RFC 3550 §6.4.1), once something was sent: the RTP
    /// timestamp is extrapolated from the last packet's to `now`, `wall` is the NTP time.
    pub fn sender_report(&self, now: Instant, wall: SystemTime) -> Option<SenderReport> {
        let (timestamp, at) = self.last?;
        let elapsed = now.saturating_duration_since(at);
        let ticks = (elapsed.as_micros() * u128::from(self.clock_rate) / 1_000_000) as u32;
        Some(SenderReport {
            ssrc: self.ssrc,
            ntp_time: ntp_time(wall),
            rtp_time: timestamp.wrapping_add(ticks),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }

    /// Writes into `out` the retransmission of the packet sent with `sequence_number`, if it
    /// is still kept: an RTX packet (RFC 4588 §4: own SSRC and sequence, the original
    /// sequence number before the payload) where RTX was negotiated, else the packet again.
    /// Returns `(header_len, ssrc, sequence_number)` of what was written, to protect it.
    /// `payloads` is the publication's history the packet's payload was kept in; `None` also
    /// when that no longer holds it.
    pub fn retransmission(
        &mut self,
        sequence_number: u16,
        payloads: &PayloadHistory,
        out: &mut Vec<u8>,
    ) -> Option<(usize, u32, u16)> {
        let slot = self.history.as_ref()?.get(sequence_number)?;
        let payload = match &slot.payload {
            Kept::Publication { at, .. } => payloads.get(*at)?,
            Kept::Own(bytes) => bytes,
        };
        let header_len = slot.header.len();
        out.clear();
        out.extend_from_slice(&slot.header);
        let written = match self.rtx {
            None => (header_len, self.ssrc, sequence_number),
            Some(rtx) => {
                let rtx_sequence = self.rtx_sequence;
                self.rtx_sequence = self.rtx_sequence.wrapping_add(1);
                out[1] = (out[1] & 0x80) | (rtx.payload_type & 0x7f);
                out[2..4].copy_from_slice(&rtx_sequence.to_be_bytes());
                out[8..12].copy_from_slice(&rtx.ssrc.to_be_bytes());
                out.extend_from_slice(&sequence_number.to_be_bytes());
                (header_len, rtx.ssrc, rtx_sequence)
            }
        };
        out.extend_from_slice(&slot.prefix[..slot.prefix_len]);
        out.extend_from_slice(payload.get(slot.prefix_len..)?);
        Some(written)
    }
}

/// What a subscriber negotiated for sending it one codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendCodec {
    /// The codec's payload type.
    pub payload_type: u8,
    /// The payload type of RTX for it (`a=fmtp:<rtx> apt=<payload_type>`, RFC 4588 §8.6).
    pub rtx_payload_type: Option<u8>,
    /// Whether the subscriber sends generic NACKs for it (`a=rtcp-fb:<pt> nack`, RFC 4585).
    pub nack: bool,
}

/// Finds the codec `mime_type` among a sender's negotiated codecs, with its RTX payload type
/// and NACK feedback; `None` when the subscriber did not negotiate the codec.
pub fn send_codec(codecs: &[RTCRtpCodecParameters], mime_type: &str) -> Option<SendCodec> {
    let codec = codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime_type))?;
    let payload_type = codec.payload_type;
    let rtx_payload_type = codecs
        .iter()
        .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/rtx"))
        .find(|c| {
            c.rtp_codec.sdp_fmtp_line.split(';').any(|parameter| {
                parameter
                    .trim()
                    .strip_prefix("apt=")
                    .and_then(|apt| apt.trim().parse::<u8>().ok())
                    == Some(payload_type)
            })
        })
        .map(|c| c.payload_type);
    let nack = codec
        .rtp_codec
        .rtcp_feedback
        .iter()
        .any(|f| f.typ == "nack" && f.parameter.is_empty());
    Some(SendCodec {
        payload_type,
        rtx_payload_type,
        nack,
    })
}

impl std::fmt::Debug for OutboundStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundStream")
            .field("ssrc", &self.ssrc)
            .field("rtx", &self.rtx)
            .field("packets", &self.packets)
            .field("octets", &self.octets)
            .field("history", &self.history.is_some())
            .finish()
    }
}

/// A wall-clock time as a 64-bit NTP timestamp (RFC 3550 §4).
pub(crate) fn ntp_time(wall: SystemTime) -> u64 {
    let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() + NTP_UNIX_OFFSET_SECS;
    let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | fraction
}

/// The round-trip time a reception report gives (RFC 3550 §6.4.1): the middle 32 bits of the
/// NTP time it arrived at (`arrival_ntp`, 64-bit NTP format), less the middle 32 bits of the
/// sender report it answers (`last_sender_report`) and the receiver's delay since then
/// (`delay`, in 1/65536 s). `None` when the receiver had no sender report yet (0) or the
/// result is not a plausible round trip (clocks or fields off; above 60 s).
pub fn round_trip(arrival_ntp: u64, last_sender_report: u32, delay: u32) -> Option<Duration> {
    if last_sender_report == 0 {
        return None;
    }
    let arrival = (arrival_ntp >> 16) as u32;
    let units = arrival.wrapping_sub(last_sender_report).wrapping_sub(delay);
    // A negative difference (wrapped to a huge one) is a report from the future.
    if units > 60 * 65_536 {
        return None;
    }
    Some(Duration::from_nanos(
        u64::from(units) * 1_000_000_000 / 65_536,
    ))
}

/// Payloads a publication's packets kept for the histories of the streams forwarding it, in
/// the order they came: at 250 packets a second (a simulcast camera's three layers), four
/// seconds — longer than a NACK is worth answering.
pub const PAYLOAD_HISTORY: usize = 1_024;

/// Where a payload is in a [`PayloadHistory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadRef(u64);

/// The payloads of a publication's recent packets, kept once for every subscriber's
/// [`OutboundStream`] history, which refers to them by [`PayloadRef`]: a reference per
/// subscriber to the publisher's `Bytes` was an atomic reference count taken and dropped per
/// subscriber and packet, each waiting for the stores of the payload copy before it.
#[derive(Default)]
pub struct PayloadHistory {
    slots: Vec<(u64, Bytes)>,
    next: u64,
}

impl PayloadHistory {
    /// Keeps `payload` (by reference), forgetting the oldest beyond [`PAYLOAD_HISTORY`].
    pub fn keep(&mut self, payload: &Bytes) -> PayloadRef {
        let at = self.next;
        self.next += 1;
        let index = (at % PAYLOAD_HISTORY as u64) as usize;
        if self.slots.is_empty() {
            // Once, so that the ring does not grow by reallocation on the packet path.
            self.slots.reserve_exact(PAYLOAD_HISTORY);
        }
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = (at, payload.clone());
        } else {
            self.slots.push((at, payload.clone()));
        }
        PayloadRef(at)
    }

    /// The payload kept as `at`, unless forgotten since.
    pub fn get(&self, at: PayloadRef) -> Option<&Bytes> {
        let (kept, payload) = self.slots.get((at.0 % PAYLOAD_HISTORY as u64) as usize)?;
        (*kept == at.0).then_some(payload)
    }
}

/// The last packets of a stream by sequence number: headers in reused buffers, payloads by
/// reference to the publication's [`PayloadHistory`].
struct History {
    slots: Vec<Slot>,
}

/// A kept packet's payload.
enum Kept {
    /// In the publication's history, `len` bytes.
    Publication { at: PayloadRef, len: usize },
    /// A copy of its own, for a packet that is not the publisher's payload with a patched
    /// prefix.
    Own(Bytes),
}

impl Default for Kept {
    fn default() -> Self {
        Self::Own(Bytes::new())
    }
}

impl Kept {
    fn len(&self) -> usize {
        match self {
            Self::Publication { len, .. } => *len,
            Self::Own(bytes) => bytes.len(),
        }
    }
}

/// One kept packet.
#[derive(Default)]
struct Slot {
    sequence_number: Option<u16>,
    /// The header as sent.
    header: Vec<u8>,
    /// The payload's first bytes as sent (the subscriber's VP8 descriptor may differ from the
    /// publisher's).
    prefix: [u8; MUNGED_PREFIX],
    prefix_len: usize,
    /// The publisher's payload; its first `prefix_len` bytes are `prefix`'s instead.
    payload: Kept,
}

impl History {
    fn new(len: usize) -> Self {
        Self {
            slots: (0..len).map(|_| Slot::default()).collect(),
        }
    }

    fn keep(
        &mut self,
        sequence_number: u16,
        packet: &[u8],
        header_len: usize,
        payload: &[u8],
        kept: PayloadRef,
    ) {
        let index = usize::from(sequence_number) % self.slots.len();
        let slot = &mut self.slots[index];
        let (header, sent) = packet.split_at(header_len.min(packet.len()));
        slot.sequence_number = Some(sequence_number);
        slot.header.clear();
        slot.header.extend_from_slice(header);
        slot.prefix_len = sent.len().min(MUNGED_PREFIX);
        slot.prefix[..slot.prefix_len].copy_from_slice(&sent[..slot.prefix_len]);
        debug_assert!(
            payload.len() != sent.len() || payload[slot.prefix_len..] == sent[slot.prefix_len..],
            "the packet sent differs from the publisher's payload past the munged prefix"
        );
        slot.payload = if payload.len() == sent.len() {
            Kept::Publication {
                at: kept,
                len: payload.len(),
            }
        } else {
            Kept::Own(Bytes::copy_from_slice(sent))
        };
    }

    fn get(&self, sequence_number: u16) -> Option<&Slot> {
        let slot = &self.slots[usize::from(sequence_number) % self.slots.len()];
        (slot.sequence_number == Some(sequence_number)).then_some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Sends `packet` (header of 12 bytes, timestamp 1000) through `stream`, its payload kept
    /// in `payloads` as the forwarding loop does.
    fn sent(
        stream: &mut OutboundStream,
        payloads: &mut PayloadHistory,
        now: Instant,
        sequence_number: u16,
        packet: &[u8],
        payload: Bytes,
    ) {
        let kept = payloads.keep(&payload);
        stream.sent(now, sequence_number, 1000, packet, 12, &payload, Some(kept));
    }

    fn packet(sequence_number: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&sequence_number.to_be_bytes());
        p.extend_from_slice(&1000u32.to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn retransmissions_use_rtx_where_negotiated() {
        let now = Instant::now();
        let mut stream = OutboundStream::new(7, 90_000, Some(9));
        let mut payloads = PayloadHistory::default();
        stream.negotiated(Some(97), true);
        sent(
            &mut stream,
            &mut payloads,
            now,
            500,
            &packet(500, b"frame"),
            Bytes::from_static(b"frame"),
        );
        let mut out = Vec::new();
        let (header_len, ssrc, rtx_seq) = stream
            .retransmission(500, &payloads, &mut out)
            .expect("kept");
        assert_eq!((header_len, ssrc), (12, 9));
        assert_eq!(out[1] & 0x7f, 97);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), rtx_seq);
        assert_eq!(u32::from_be_bytes([out[8], out[9], out[10], out[11]]), 9);
        assert_eq!(&out[12..14], &500u16.to_be_bytes());
        assert_eq!(&out[14..], b"frame");
        // The next retransmission takes the next RTX sequence number.
        let (_, _, next) = stream
            .retransmission(500, &payloads, &mut out)
            .expect("kept");
        assert_eq!(next, rtx_seq.wrapping_add(1));
    }

    #[test]
    fn without_rtx_the_packet_is_sent_again_and_old_ones_are_forgotten() {
        let now = Instant::now();
        let mut stream = OutboundStream::new(7, 90_000, None);
        let mut payloads = PayloadHistory::default();
        stream.negotiated(None, true);
        for seq in 0..=(HISTORY_PACKETS as u16) {
            sent(
                &mut stream,
                &mut payloads,
                now,
                seq,
                &packet(seq, &[seq as u8]),
                Bytes::copy_from_slice(&[seq as u8]),
            );
        }
        let mut out = Vec::new();
        assert_eq!(
            stream.retransmission(0, &payloads, &mut out),
            None,
            "overwritten"
        );
        let (_, ssrc, seq) = stream.retransmission(1, &payloads, &mut out).expect("kept");
        assert_eq!((ssrc, seq), (7, 1));
        assert_eq!(out, packet(1, &[1]));
    }

    #[test]
    fn the_rtx_payload_type_is_the_one_whose_apt_names_the_codec() {
        use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec};
        let codec = |mime: &str, pt: u8, fmtp: &str, nack: bool| RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.into(),
                clock_rate: 90_000,
                sdp_fmtp_line: fmtp.into(),
                rtcp_feedback: if nack {
                    vec![RTCPFeedback {
                        typ: "nack".into(),
                        parameter: String::new(),
                    }]
                } else {
                    Vec::new()
                },
                ..Default::default()
            },
            payload_type: pt,
        };
        let codecs = [
            codec("video/H264", 102, "", true),
            codec("video/rtx", 103, "apt=102", false),
            codec("video/VP8", 96, "", true),
            codec("video/rtx", 97, "apt=96", false),
            codec("audio/opus", 111, "minptime=10;useinbandfec=1", false),
        ];
        assert_eq!(
            send_codec(&codecs, "video/vp8"),
            Some(SendCodec {
                payload_type: 96,
                rtx_payload_type: Some(97),
                nack: true
            })
        );
        assert_eq!(
            send_codec(&codecs, "audio/opus"),
            Some(SendCodec {
                payload_type: 111,
                rtx_payload_type: None,
                nack: false
            })
        );
        assert_eq!(send_codec(&codecs, "video/AV1"), None);
    }

    #[test]
    fn a_retransmission_carries_the_descriptor_as_sent() {
        // The subscriber got the publisher's payload with its first bytes (the VP8
        // descriptor) patched; the history keeps those as sent and the rest by reference.
        let now = Instant::now();
        let mut stream = OutboundStream::new(7, 90_000, None);
        let mut payloads = PayloadHistory::default();
        stream.negotiated(None, true);
        let publisher = Bytes::from_static(b"ABCDEFGHIJ");
        let as_sent = packet(3, b"abcdeFGHIJ");
        sent(&mut stream, &mut payloads, now, 3, &as_sent, publisher);
        let mut out = Vec::new();
        stream.retransmission(3, &payloads, &mut out).expect("kept");
        assert_eq!(out, as_sent);
        // A payload shorter than the prefix is kept whole.
        sent(
            &mut stream,
            &mut payloads,
            now,
            4,
            &packet(4, b"xy"),
            Bytes::from_static(b"XY"),
        );
        stream.retransmission(4, &payloads, &mut out).expect("kept");
        assert_eq!(out, packet(4, b"xy"));
    }

    #[test]
    fn a_payload_the_publication_forgot_is_not_sent_again() {
        let now = Instant::now();
        let mut stream = OutboundStream::new(7, 90_000, None);
        let mut payloads = PayloadHistory::default();
        stream.negotiated(None, true);
        sent(
            &mut stream,
            &mut payloads,
            now,
            1,
            &packet(1, b"one"),
            Bytes::from_static(b"one"),
        );
        assert_eq!(stream.kept_len(1, &payloads), Some(15));
        // Packets of the publication's other layers, which this stream does not carry, push
        // it out of the publication's history while the stream's own still names it.
        for _ in 0..PAYLOAD_HISTORY {
            payloads.keep(&Bytes::from_static(b"other"));
        }
        assert_eq!(stream.kept_len(1, &payloads), None);
        assert_eq!(stream.retransmission(1, &payloads, &mut Vec::new()), None);
    }

    #[test]
    fn nothing_is_kept_without_nack() {
        let mut stream = OutboundStream::new(7, 90_000, Some(9));
        let mut payloads = PayloadHistory::default();
        stream.negotiated(Some(97), false);
        sent(
            &mut stream,
            &mut payloads,
            Instant::now(),
            1,
            &packet(1, b"x"),
            Bytes::from_static(b"x"),
        );
        assert_eq!(stream.retransmission(1, &payloads, &mut Vec::new()), None);
    }

    #[test]
    fn round_trip_from_a_reception_report() {
        // Sent at NTP 100.0 s (middle bits 100 << 16), held 0.25 s by the receiver, back at
        // 100.3 s: 50 ms on the wire.
        let sent = 100u64 << 32;
        let arrival = sent + (3u64 << 32) / 10;
        let lsr = (sent >> 16) as u32;
        let rtt = round_trip(arrival, lsr, 65_536 / 4).map(|d| d.as_micros());
        assert!(
            rtt.is_some_and(|us| (49_900..=50_100).contains(&us)),
            "{rtt:?}"
        );
        assert_eq!(round_trip(arrival, 0, 0), None, "no sender report yet");
        assert_eq!(
            round_trip(arrival, lsr, 65_536),
            None,
            "delay longer than the round trip"
        );
    }

    #[test]
    fn sender_reports_extrapolate_the_rtp_clock() {
        let start = Instant::now();
        let mut stream = OutboundStream::new(7, 90_000, None);
        let mut payloads = PayloadHistory::default();
        assert!(stream.sender_report(start, SystemTime::now()).is_none());
        sent(
            &mut stream,
            &mut payloads,
            start,
            1,
            &packet(1, &[0; 100]),
            Bytes::from(vec![0; 100]),
        );
        sent(
            &mut stream,
            &mut payloads,
            start,
            2,
            &packet(2, &[0; 50]),
            Bytes::from(vec![0; 50]),
        );
        let wall = UNIX_EPOCH + Duration::from_millis(1_500);
        let report = stream
            .sender_report(start + Duration::from_millis(100), wall)
            .expect("a report");
        assert_eq!(report.ssrc, 7);
        assert_eq!(report.packet_count, 2);
        assert_eq!(report.octet_count, 150);
        assert_eq!(report.rtp_time, 1000 + 9_000);
        assert_eq!(report.ntp_time >> 32, NTP_UNIX_OFFSET_SECS + 1);
        assert_eq!(report.ntp_time & 0xffff_ffff, 1 << 31);
    }
}
