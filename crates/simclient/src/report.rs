//! Receive accounting: per incoming track packets, bytes, payload checks, sequence and counter
//! gaps, one-way delay; and the report a client hands out.

use crate::frames::{FrameCounts, FrameTracker};
use crate::synth::{self, MediaKind, PayloadLayout};
use cascade_protocol::SdpStreamMetadata;
use rtc::rtp;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How many skipped numbers a tracker remembers to recognise late arrivals (retransmissions).
const REMEMBERED_MISSING: u64 = 512;

/// Numbers skipped by forward jumps that have not arrived yet (the most recent ones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Outstanding<T> {
    numbers: VecDeque<T>,
}

impl<T: PartialEq + Copy> Outstanding<T> {
    fn add(&mut self, number: T) {
        if self.numbers.len() as u64 >= REMEMBERED_MISSING {
            self.numbers.pop_front();
        }
        self.numbers.push_back(number);
    }

    /// Removes `number` if it was outstanding.
    fn fill(&mut self, number: T) -> bool {
        match self.numbers.iter().position(|n| *n == number) {
            Some(index) => {
                self.numbers.remove(index);
                true
            }
            None => false,
        }
    }
}

/// Counts gaps and reorders in a 16-bit RTP sequence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqTracker {
    last: Option<u16>,
    /// Times the sequence jumped forward by more than one.
    pub gaps: u64,
    /// Sequence numbers skipped by those jumps.
    pub missing: u64,
    /// Packets at or behind the highest sequence number seen (late or duplicate).
    pub reorders: u64,
    /// Late packets that filled a gap (retransmissions, or reordering).
    pub recovered: u64,
    outstanding: Outstanding<u16>,
}

impl SeqTracker {
    /// Accounts one received sequence number.
    pub fn observe(&mut self, seq: u16) {
        let Some(last) = self.last else {
            self.last = Some(seq);
            return;
        };
        let diff = seq.wrapping_sub(last) as i16;
        if diff == 1 {
            self.last = Some(seq);
        } else if diff > 1 {
            self.gaps += 1;
            self.missing += (diff - 1) as u64;
            let skipped = (diff - 1) as u16;
            for back in (1..=skipped.min(REMEMBERED_MISSING as u16)).rev() {
                self.outstanding.add(seq.wrapping_sub(back));
            }
            self.last = Some(seq);
        } else {
            self.reorders += 1;
            if self.outstanding.fill(seq) {
                self.recovered += 1;
            }
        }
    }

    /// Forgets the last sequence number (a new RTP stream starts); the counts stay.
    pub fn restart(&mut self) {
        self.last = None;
        self.outstanding = Outstanding::default();
    }

    /// Skipped sequence numbers (of the most recent 512) still missing.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.numbers.len() as u64
    }
}

/// Counts gaps and reorders in a publisher's 64-bit per-track packet counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterTracker {
    last: Option<u64>,
    /// Times the counter jumped forward by more than one.
    pub gaps: u64,
    /// Counter values skipped by those jumps.
    pub missing: u64,
    /// Packets at or behind the highest counter seen.
    pub reorders: u64,
    /// Late packets that filled a gap (retransmissions, or reordering).
    pub recovered: u64,
    /// Counter values observed (duplicates included).
    pub received: u64,
    outstanding: Outstanding<u64>,
}

impl CounterTracker {
    /// Accounts one received counter value.
    pub fn observe(&mut self, counter: u64) {
        self.received += 1;
        match self.last {
            None => self.last = Some(counter),
            Some(last) if counter == last.wrapping_add(1) => self.last = Some(counter),
            Some(last) if counter > last => {
                self.gaps += 1;
                self.missing += counter - last - 1;
                let first = (last + 1).max(counter.saturating_sub(REMEMBERED_MISSING));
                for skipped in first..counter {
                    self.outstanding.add(skipped);
                }
                self.last = Some(counter);
            }
            Some(_) => {
                self.reorders += 1;
                if self.outstanding.fill(counter) {
                    self.recovered += 1;
                }
            }
        }
    }

    /// Skipped counter values (of the most recent 512) still missing.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.numbers.len() as u64
    }
}

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const MAX_EXP: u32 = 36;
const BUCKETS: usize = (SUB as usize) * (MAX_EXP - SUB_BITS + 2) as usize;

/// A log-linear histogram of microsecond values (about 6 % resolution), fixed size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelayHistogram {
    buckets: Vec<u32>,
    count: u64,
    max: u64,
}

impl Default for DelayHistogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            count: 0,
            max: 0,
        }
    }
}

impl DelayHistogram {
    fn index(value: u64) -> usize {
        if value < SUB {
            return value as usize;
        }
        let exp = (63 - value.leading_zeros()).min(MAX_EXP);
        let sub = (value >> (exp - SUB_BITS)) & (SUB - 1);
        ((exp - SUB_BITS + 1) as u64 * SUB + sub).min(BUCKETS as u64 - 1) as usize
    }

    fn value_of(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB {
            return index;
        }
        let exp = (index / SUB) as u32 + SUB_BITS - 1;
        let sub = index % SUB;
        let width = 1u64 << (exp - SUB_BITS);
        ((SUB + sub) << (exp - SUB_BITS)) + width / 2
    }

    /// Adds one sample.
    pub fn record(&mut self, value: u64) {
        let i = Self::index(value);
        self.buckets[i] = self.buckets[i].saturating_add(1);
        self.count += 1;
        self.max = self.max.max(value);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &DelayHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine = mine.saturating_add(*theirs);
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    /// The samples recorded since `earlier`, a past snapshot of this histogram (the maximum
    /// stays the overall one).
    pub fn since(&self, earlier: &DelayHistogram) -> DelayHistogram {
        let buckets: Vec<u32> = self
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        DelayHistogram {
            count: buckets.iter().map(|n| u64::from(*n)).sum(),
            buckets,
            max: self.max,
        }
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest sample.
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// The value at quantile `q` (0.0–1.0), to bucket resolution.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += u64::from(*n);
            if seen >= rank {
                return Some(Self::value_of(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// What has arrived on one incoming track.
#[derive(Clone, Debug, Default)]
pub struct TrackStats {
    /// The MediaStream id the track arrived in (from SDP msid).
    pub stream_id: String,
    /// The track id (from SDP msid).
    pub track_id: String,
    /// The track's kind, once known.
    pub kind: Option<MediaKind>,
    /// RTP packets received.
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Payloads that failed [`synth::verify_payload`].
    pub payload_mismatches: u64,
    /// RTP sequence accounting.
    pub seq: SeqTracker,
    /// The SSRC of the latest packet.
    pub ssrc: Option<u32>,
    /// Counter accounting per publisher tag.
    pub counters: HashMap<u32, CounterTracker>,
    /// The publisher tag of the latest good payload.
    pub publisher_tag: Option<u32>,
    /// One-way delay samples (µs).
    pub delays: DelayHistogram,
    /// VP8 keyframes received (first packets of keyframes).
    pub keyframes: u64,
    /// When the first packet arrived.
    pub first_at: Option<Instant>,
    /// When the latest packet arrived.
    pub last_at: Option<Instant>,
    /// Width and height in the latest VP8 keyframe header.
    pub keyframe_size: Option<(u16, u16)>,
    /// Every change of publisher tag (simulcast layer) in the stream, oldest first.
    pub layer_changes: Vec<LayerChange>,
    /// The video frames of the current RTP stream (SSRC).
    pub frames: FrameTracker,
    /// The frames judged in earlier RTP streams of the track.
    pub earlier_frames: FrameCounts,
    run: Option<LayerRun>,
}

/// The publisher tag the stream currently carries and since when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LayerRun {
    tag: u32,
    packets: u64,
    last_at: Option<Instant>,
}

/// The most layer changes a track remembers.
const MAX_LAYER_CHANGES: usize = 64;

/// One switch of an incoming track from one publisher tag (simulcast layer) to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerChange {
    /// When the first packet of the new layer arrived.
    pub at: Instant,
    /// The tag before.
    pub from_tag: u32,
    /// The tag after.
    pub to_tag: u32,
    /// Packets of the old layer received in its run up to the switch.
    pub from_packets: u64,
    /// When the last packet of the old layer arrived.
    pub from_last_at: Option<Instant>,
    /// Whether the first packet of the new layer starts a keyframe.
    pub at_keyframe: bool,
    /// The keyframe size the new layer starts with, if it starts with a keyframe.
    pub size: Option<(u16, u16)>,
}

impl TrackStats {
    /// Accounts one packet that arrived at `at` (`recv_us`: the same moment in UNIX µs).
    pub fn on_packet(&mut self, at: Instant, recv_us: u64, packet: &rtp::Packet) {
        self.packets += 1;
        self.bytes += packet.payload.len() as u64;
        self.first_at.get_or_insert(at);
        self.last_at = Some(at);
        // A new SSRC on the track (the track was subscribed to again) is a new RTP stream,
        // whose sequence starts anew (RFC 3550 §5.1).
        if self.ssrc.replace(packet.header.ssrc) != Some(packet.header.ssrc) {
            self.seq.restart();
            self.earlier_frames = self.frame_counts();
            self.frames = FrameTracker::default();
        }
        let reorders = self.seq.reorders;
        self.seq.observe(packet.header.sequence_number);
        let late = self.seq.reorders > reorders;
        match synth::verify_payload(&packet.payload) {
            Ok(info) => {
                if !late {
                    self.track_layer(at, &info);
                }
                self.publisher_tag = Some(info.tag);
                self.counters
                    .entry(info.tag)
                    .or_default()
                    .observe(info.counter);
                let delay_us = recv_us.saturating_sub(info.send_us);
                self.delays.record(delay_us);
                if info.layout != PayloadLayout::Opus {
                    self.frames.on_packet(
                        packet.header.timestamp,
                        info.counter,
                        matches!(info.layout, PayloadLayout::Vp8Start { .. }),
                        packet.header.marker,
                        delay_us,
                    );
                }
                if let PayloadLayout::Vp8Start {
                    keyframe: true,
                    width,
                    height,
                } = info.layout
                {
                    self.keyframes += 1;
                    self.keyframe_size = Some((width, height));
                }
            }
            Err(err) => {
                self.payload_mismatches += 1;
                tracing::debug!(track = %self.track_id, %err, "payload mismatch");
            }
        }
    }

    /// Follows the publisher tag of in-order packets and records when it changes.
    fn track_layer(&mut self, at: Instant, info: &synth::TrailerInfo) {
        match &mut self.run {
            Some(run) if run.tag == info.tag => {
                run.packets += 1;
                run.last_at = Some(at);
                return;
            }
            Some(run) => {
                let size = match info.layout {
                    PayloadLayout::Vp8Start {
                        keyframe: true,
                        width,
                        height,
                    } => Some((width, height)),
                    _ => None,
                };
                if self.layer_changes.len() >= MAX_LAYER_CHANGES {
                    self.layer_changes.remove(0);
                }
                self.layer_changes.push(LayerChange {
                    at,
                    from_tag: run.tag,
                    to_tag: info.tag,
                    from_packets: run.packets,
                    from_last_at: run.last_at,
                    at_keyframe: size.is_some(),
                    size,
                });
            }
            None => {}
        }
        self.run = Some(LayerRun {
            tag: info.tag,
            packets: 1,
            last_at: Some(at),
        });
    }

    /// The video frames judged on this track so far, over all its RTP streams.
    pub fn frame_counts(&self) -> FrameCounts {
        self.earlier_frames.add(&self.frames.counts())
    }

    /// Late packets that filled a counter gap, over all publisher tags seen on this track.
    pub fn counter_recovered(&self) -> u64 {
        self.counters.values().map(|c| c.recovered).sum()
    }

    /// Counter values still missing, over all publisher tags seen on this track.
    pub fn counter_outstanding(&self) -> u64 {
        self.counters.values().map(|c| c.outstanding()).sum()
    }

    /// Counter gaps over all publisher tags seen on this track.
    pub fn counter_gaps(&self) -> u64 {
        self.counters.values().map(|c| c.gaps).sum()
    }

    /// Counter values skipped over all publisher tags seen on this track.
    pub fn counter_missing(&self) -> u64 {
        self.counters.values().map(|c| c.missing).sum()
    }
}

/// Everything a peer has received, shared between the peer driver and the client handle.
#[derive(Clone, Debug, Default)]
pub struct Receiving {
    /// Incoming tracks by track id.
    pub tracks: BTreeMap<String, TrackStats>,
    /// When the first RTP packet arrived.
    pub first_media_at: Option<Instant>,
    /// PLI/FIR requests received for our video.
    pub keyframe_requests: u64,
    /// Audio packets we sent.
    pub sent_audio_packets: u64,
    /// Video packets we sent.
    pub sent_video_packets: u64,
    /// Keyframes we sent.
    pub sent_keyframes: u64,
    /// RTP writes the peer connection refused.
    pub send_errors: u64,
    /// PLI/FIR requests received per simulcast layer of our video (by rid).
    pub layer_keyframe_requests: BTreeMap<String, u64>,
    /// Keyframes we sent per simulcast layer (by rid).
    pub layer_sent_keyframes: BTreeMap<String, u64>,
    /// Incoming RTP datagrams dropped on purpose (`drop_incoming_rtp`).
    pub dropped_incoming_rtp: u64,
    /// STUN binding requests received (an ICE-lite focus sends none).
    pub stun_requests_received: u64,
}

/// The summary of one incoming track.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackReport {
    /// MediaStream id.
    pub stream_id: String,
    /// Track id.
    pub track_id: String,
    /// `audio`, `video` or `unknown`.
    pub kind: String,
    /// The publishing user, from the focus's stream metadata.
    pub publisher_user: Option<String>,
    /// The publishing device, from the focus's stream metadata.
    pub publisher_device: Option<String>,
    /// The publisher tag in the payload trailers.
    pub publisher_tag: Option<u32>,
    /// RTP packets received.
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Payloads that failed verification.
    pub payload_mismatches: u64,
    /// Forward jumps in the RTP sequence.
    pub seq_gaps: u64,
    /// Late or duplicate RTP sequence numbers.
    pub seq_reorders: u64,
    /// Forward jumps in publisher packet counters.
    pub counter_gaps: u64,
    /// Publisher packets skipped by those jumps (lost on the way).
    pub counter_missing: u64,
    /// VP8 keyframes received.
    pub keyframes: u64,
    /// Width and height in the latest VP8 keyframe header.
    pub keyframe_size: Option<(u16, u16)>,
    /// Changes of simulcast layer (publisher tag) in the stream.
    pub layer_changes: Vec<LayerChange>,
    /// Video frames judged: complete, in time, incomplete, missing.
    pub frames: FrameCounts,
    /// Late RTP packets that filled a sequence gap (e.g. answered NACKs).
    pub seq_recovered: u64,
    /// Skipped RTP sequence numbers still missing.
    pub seq_outstanding: u64,
    /// Late packets that filled a publisher counter gap.
    pub counter_recovered: u64,
    /// Publisher counter values still missing.
    pub counter_outstanding: u64,
    /// Median one-way delay (µs).
    pub delay_us_p50: Option<u64>,
    /// 99th percentile one-way delay (µs).
    pub delay_us_p99: Option<u64>,
    /// Every one-way delay sample (µs), for merging across tracks.
    pub delays: DelayHistogram,
    /// First packet arrival.
    pub first_at: Option<Instant>,
    /// Latest packet arrival.
    pub last_at: Option<Instant>,
}

/// A client's view of the call so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Incoming tracks.
    pub tracks: Vec<TrackReport>,
    /// Invite sent → answer received.
    pub answered_after: Option<Duration>,
    /// Invite sent → first RTP packet received.
    pub first_media_after: Option<Duration>,
    /// The reason the focus gave when it hung up.
    pub hangup_reason: Option<String>,
    /// Why the client stopped on its own (error, ICE failure, timeout), if it did.
    pub error: Option<String>,
    /// PLI/FIR requests received for our video.
    pub keyframe_requests: u64,
    /// Audio packets sent.
    pub sent_audio_packets: u64,
    /// Video packets sent.
    pub sent_video_packets: u64,
    /// Keyframes sent.
    pub sent_keyframes: u64,
    /// RTP writes the peer connection refused.
    pub send_errors: u64,
    /// PLI/FIR requests received per simulcast layer of our video (by rid).
    pub layer_keyframe_requests: BTreeMap<String, u64>,
    /// Keyframes sent per simulcast layer (by rid).
    pub layer_sent_keyframes: BTreeMap<String, u64>,
    /// Incoming RTP datagrams dropped on purpose (`drop_incoming_rtp`).
    pub dropped_incoming_rtp: u64,
    /// STUN binding requests received (an ICE-lite focus sends none).
    pub stun_requests_received: u64,
}

impl Report {
    /// The incoming tracks of one publisher.
    pub fn tracks_from(&self, user_id: &str, device_id: &str) -> Vec<&TrackReport> {
        self.tracks
            .iter()
            .filter(|t| {
                t.publisher_user.as_deref() == Some(user_id)
                    && t.publisher_device.as_deref() == Some(device_id)
            })
            .collect()
    }

    /// Packets received so far from one publisher, over all its tracks.
    pub fn packets_from(&self, user_id: &str, device_id: &str) -> u64 {
        self.tracks_from(user_id, device_id)
            .iter()
            .map(|t| t.packets)
            .sum()
    }

    /// Payload mismatches over all tracks.
    pub fn total_mismatches(&self) -> u64 {
        self.tracks.iter().map(|t| t.payload_mismatches).sum()
    }
}

/// Finds the publisher of a track in the focus's metadata: by stream id, else by track id, else
/// by matching the payloads' publisher tag against every track the metadata lists.
pub fn publisher_of(
    available: &SdpStreamMetadata,
    stream_id: &str,
    track_id: &str,
    tag: Option<u32>,
) -> (Option<String>, Option<String>) {
    let by_tag = |s: &&cascade_protocol::StreamMetadata| {
        let (Some(tag), Some(user), Some(device)) = (tag, &s.user_id, &s.device_id) else {
            return false;
        };
        s.tracks.iter().flatten().any(|(id, info)| {
            let kind = if info.kind == "video" {
                MediaKind::Video
            } else {
                MediaKind::Audio
            };
            synth::is_track_tag(synth::publisher_tag(user, device, id, kind), tag)
        })
    };
    let stream = available
        .get(stream_id)
        .or_else(|| {
            available.values().find(|s| {
                s.tracks
                    .as_ref()
                    .is_some_and(|tracks| tracks.contains_key(track_id))
            })
        })
        .or_else(|| available.values().find(by_tag));
    match stream {
        Some(s) => (s.user_id.clone(), s.device_id.clone()),
        None => (None, None),
    }
}

/// Summarises one track, naming its publisher from `available`.
pub fn track_report(stats: &TrackStats, available: &SdpStreamMetadata) -> TrackReport {
    let (publisher_user, publisher_device) = publisher_of(
        available,
        &stats.stream_id,
        &stats.track_id,
        stats.publisher_tag,
    );
    TrackReport {
        stream_id: stats.stream_id.clone(),
        track_id: stats.track_id.clone(),
        kind: stats.kind.map_or("unknown", MediaKind::as_str).to_owned(),
        publisher_user,
        publisher_device,
        publisher_tag: stats.publisher_tag,
        packets: stats.packets,
        bytes: stats.bytes,
        payload_mismatches: stats.payload_mismatches,
        seq_gaps: stats.seq.gaps,
        seq_reorders: stats.seq.reorders,
        counter_gaps: stats.counter_gaps(),
        counter_missing: stats.counter_missing(),
        keyframes: stats.keyframes,
        keyframe_size: stats.keyframe_size,
        layer_changes: stats.layer_changes.clone(),
        frames: stats.frame_counts(),
        seq_recovered: stats.seq.recovered,
        seq_outstanding: stats.seq.outstanding(),
        counter_recovered: stats.counter_recovered(),
        counter_outstanding: stats.counter_outstanding(),
        delay_us_p50: stats.delays.quantile(0.5),
        delay_us_p99: stats.delays.quantile(0.99),
        delays: stats.delays.clone(),
        first_at: stats.first_at,
        last_at: stats.last_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{PayloadSpec, synth_payload};
    use cascade_protocol::{StreamMetadata, TrackInfo};

    #[test]
    fn seq_gaps_and_reorders() {
        let mut t = SeqTracker::default();
        for s in [65534u16, 65535, 0, 1, 3, 2, 4, 4, 10] {
            t.observe(s);
        }
        assert_eq!(t.gaps, 2, "1→3 and 4→10");
        assert_eq!(t.missing, 1 + 5);
        assert_eq!(t.reorders, 2, "late 2 and duplicate 4");
    }

    #[test]
    fn a_new_ssrc_on_a_track_starts_a_new_sequence() {
        let mut stats = TrackStats::default();
        let at = Instant::now();
        let mut packet = rtp::Packet::default();
        for (ssrc, seq) in [(1u32, 100u16), (1, 101), (2, 9000), (2, 9001), (2, 9003)] {
            packet.header.ssrc = ssrc;
            packet.header.sequence_number = seq;
            stats.on_packet(at, 0, &packet);
        }
        assert_eq!(stats.seq.gaps, 1, "only 9001→9003, not 101→9000");
        assert_eq!(stats.seq.missing, 1);
    }

    #[test]
    fn late_packets_fill_gaps() {
        let mut t = SeqTracker::default();
        for s in [65534u16, 1, 0, 65535, 5, 3, 3] {
            t.observe(s);
        }
        // 65534→1 skips 65535 and 0, both arrive later; 1→5 skips 2, 3, 4, and 3 arrives once.
        assert_eq!((t.gaps, t.missing), (2, 5));
        assert_eq!(t.recovered, 3);
        assert_eq!(t.reorders, 4, "three late and one duplicate");
        assert_eq!(t.outstanding(), 2, "2 and 4 never came");

        let mut c = CounterTracker::default();
        for v in [10u64, 13, 11, 11, 12, 2000] {
            c.observe(v);
        }
        assert_eq!(c.recovered, 2);
        assert_eq!(c.received, 6);
        assert_eq!(
            c.outstanding(),
            REMEMBERED_MISSING,
            "only the most recent skipped values are remembered"
        );
    }

    #[test]
    fn layer_changes_and_keyframe_sizes() {
        let (q, f) = (0x1001u32, 0x2001u32);
        let mut stats = TrackStats::default();
        let frame = |seq: u16, tag: u32, counter: u64, layout: PayloadLayout| rtp::Packet {
            header: rtp::header::Header {
                sequence_number: seq,
                ..Default::default()
            },
            payload: synth_payload(&PayloadSpec {
                tag,
                counter,
                send_us: 1,
                layout,
                len: 200,
            }),
        };
        let key = |width, height| PayloadLayout::Vp8Start {
            keyframe: true,
            width,
            height,
        };
        let t0 = Instant::now();
        stats.on_packet(t0, 2, &frame(1, q, 0, key(320, 180)));
        stats.on_packet(t0, 2, &frame(2, q, 1, PayloadLayout::Vp8Continuation));
        let t1 = t0 + Duration::from_millis(30);
        stats.on_packet(t1, 2, &frame(3, f, 7, key(1280, 720)));
        // A late packet of the old layer is not a switch back.
        stats.on_packet(t1, 2, &frame(2, q, 1, PayloadLayout::Vp8Continuation));
        assert_eq!(stats.keyframes, 2);
        assert_eq!(stats.keyframe_size, Some((1280, 720)));
        assert_eq!(
            stats.layer_changes,
            vec![LayerChange {
                at: t1,
                from_tag: q,
                to_tag: f,
                from_packets: 2,
                from_last_at: Some(t0),
                at_keyframe: true,
                size: Some((1280, 720)),
            }]
        );
    }

    #[test]
    fn counter_gaps_and_reorders() {
        let mut c = CounterTracker::default();
        for v in [5u64, 6, 7, 9, 8, 10, 20] {
            c.observe(v);
        }
        assert_eq!(c.gaps, 2);
        assert_eq!(c.missing, 1 + 9);
        assert_eq!(c.reorders, 1);
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = DelayHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 100);
        }
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((47_000..=53_000).contains(&p50), "p50 {p50}");
        assert!((93_000..=100_000).contains(&p99), "p99 {p99}");
        h.record(u64::MAX);
        assert_eq!(h.max(), Some(u64::MAX));
        assert!(h.quantile(1.0).is_some());
        for v in 0..16u64 {
            assert_eq!(DelayHistogram::value_of(DelayHistogram::index(v)), v);
        }
    }

    #[test]
    fn histogram_merge_and_since() {
        let mut a = DelayHistogram::default();
        let mut b = DelayHistogram::default();
        for v in 1..=100u64 {
            a.record(v);
            b.record(v * 1000);
        }
        let before = a.clone();
        a.merge(&b);
        assert_eq!(a.count(), 200);
        assert_eq!(a.max(), Some(100_000));
        let added = a.since(&before);
        assert_eq!(added.count(), 100);
        let p50 = added.quantile(0.5).unwrap();
        assert!((45_000..=55_000).contains(&p50), "p50 {p50}");
    }

    fn packet(seq: u16, counter: u64, tag: u32, send_us: u64) -> rtp::Packet {
        rtp::Packet {
            header: rtp::header::Header {
                sequence_number: seq,
                ..Default::default()
            },
            payload: synth_payload(&PayloadSpec {
                tag,
                counter,
                send_us,
                layout: PayloadLayout::Opus,
                len: 100,
            }),
        }
    }

    #[test]
    fn track_stats_account_everything() {
        let tag = synth::publisher_tag("@a:hs", "A", "t-audio", MediaKind::Audio);
        let mut stats = TrackStats {
            stream_id: "s".into(),
            track_id: "t-audio".into(),
            kind: Some(MediaKind::Audio),
            ..Default::default()
        };
        let now = Instant::now();
        // Focus rewrites sequence numbers but keeps them continuous; a dropped packet shows as
        // a counter gap *and* (if the focus doesn't renumber) a sequence gap.
        stats.on_packet(now, 2_000, &packet(100, 0, tag, 1_000));
        stats.on_packet(now, 2_500, &packet(101, 1, tag, 1_000));
        stats.on_packet(now, 3_000, &packet(102, 3, tag, 1_000));
        let mut bad = packet(103, 4, tag, 1_000);
        let mut corrupted = bad.payload.to_vec();
        corrupted[10] ^= 0xff;
        bad.payload = corrupted.into();
        stats.on_packet(now, 3_000, &bad);
        assert_eq!(stats.packets, 4);
        assert_eq!(stats.payload_mismatches, 1);
        assert_eq!(stats.counter_gaps(), 1);
        assert_eq!(stats.seq.gaps, 0);
        assert_eq!(stats.publisher_tag, Some(tag));

        let mut available = SdpStreamMetadata::new();
        available.insert(
            "s".into(),
            StreamMetadata {
                purpose: "m.usermedia".into(),
                user_id: Some("@a:hs".into()),
                device_id: Some("A".into()),
                tracks: Some(BTreeMap::from([(
                    "t-audio".to_owned(),
                    TrackInfo {
                        kind: "audio".into(),
                        ..Default::default()
                    },
                )])),
                ..Default::default()
            },
        );
        let report = track_report(&stats, &available);
        assert_eq!(report.publisher_user.as_deref(), Some("@a:hs"));
        assert_eq!(report.kind, "audio");
        assert_eq!(report.counter_gaps, 1);
        let p50 = report.delay_us_p50.unwrap();
        assert!((900..=2100).contains(&p50), "p50 {p50}");
        // Lookup by track id when the stream id differs.
        let (user, _) = publisher_of(&available, "other", "t-audio", None);
        assert_eq!(user.as_deref(), Some("@a:hs"));
        // Lookup by publisher tag when the focus renamed stream and track.
        let (user, device) = publisher_of(&available, "x", "y", Some(tag));
        assert_eq!(
            (user.as_deref(), device.as_deref()),
            (Some("@a:hs"), Some("A"))
        );
        assert_eq!(
            publisher_of(&available, "x", "y", Some(tag ^ 2)),
            (None, None)
        );
    }
}
