//! Video frames at a receiver: which of the publisher's frames arrived whole, which arrived
//! whole in time for playout, and which did not arrive at all.
//!
//! A synthetic VP8 frame is the run of packets with one RTP timestamp; its first packet has
//! the VP8 descriptor's S bit, its last the RTP marker bit, and the publisher's packet counters
//! in the payload trailers run without a break across it ([`crate::synth`]). So a frame is
//! complete when its first and last packets and every counter between them arrived. Frames of
//! which nothing arrived show as gaps in the timestamps (one frame every
//! [`FRAME_TICKS`] ticks at the publisher's frame rate).

use crate::synth::{VIDEO_FPS, VP8_CLOCK};
use serde::Serialize;
use std::collections::BTreeMap;

/// RTP timestamp ticks between two frames of a synthetic video track (90 kHz at 30 fps).
pub const FRAME_TICKS: u64 = (VP8_CLOCK / VIDEO_FPS) as u64;
/// A frame is judged once the stream has moved this many ticks (2 s) past it: a retransmission
/// later than that fills nothing a receiver would still play.
pub const HORIZON_TICKS: u64 = 2 * VP8_CLOCK as u64;
/// A frame is in time when each of its packets arrived within this many µs of the frame's
/// send time: about the longest a receiver's jitter buffer waits for a retransmission.
pub const PLAYOUT_DEADLINE_US: u64 = 500_000;

/// Frames of one incoming video track, as judged so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FrameCounts {
    /// Frames of which every packet arrived.
    pub complete: u64,
    /// Complete frames of which every packet arrived within [`PLAYOUT_DEADLINE_US`].
    pub in_time: u64,
    /// Frames of which some packets arrived, but not all.
    pub incomplete: u64,
    /// Frames of which no packet arrived (gaps in the timestamps between judged frames).
    pub missing: u64,
}

impl FrameCounts {
    /// Frames the publisher sent in the span judged: complete, incomplete and missing.
    pub fn sent(&self) -> u64 {
        self.complete + self.incomplete + self.missing
    }

    /// The counts since `earlier` (an earlier reading of the same track).
    pub fn since(&self, earlier: &FrameCounts) -> FrameCounts {
        FrameCounts {
            complete: self.complete.saturating_sub(earlier.complete),
            in_time: self.in_time.saturating_sub(earlier.in_time),
            incomplete: self.incomplete.saturating_sub(earlier.incomplete),
            missing: self.missing.saturating_sub(earlier.missing),
        }
    }

    /// These counts and `other`'s together.
    pub fn add(&self, other: &FrameCounts) -> FrameCounts {
        FrameCounts {
            complete: self.complete + other.complete,
            in_time: self.in_time + other.in_time,
            incomplete: self.incomplete + other.incomplete,
            missing: self.missing + other.missing,
        }
    }

    /// Complete frames as a fraction of the frames sent (`None` before any frame was judged).
    pub fn complete_fraction(&self) -> Option<f64> {
        (self.sent() > 0).then(|| self.complete as f64 / self.sent() as f64)
    }

    /// Frames complete in time as a fraction of the frames sent.
    pub fn in_time_fraction(&self) -> Option<f64> {
        (self.sent() > 0).then(|| self.in_time as f64 / self.sent() as f64)
    }
}

/// What has arrived of one frame not yet judged.
#[derive(Clone, Debug, Default)]
struct Frame {
    /// Counter of the packet with the S bit.
    first: Option<u64>,
    /// Counter of the packet with the marker bit.
    last: Option<u64>,
    /// Distinct counters received.
    counters: Vec<u64>,
    /// Some packet arrived after [`PLAYOUT_DEADLINE_US`].
    late: bool,
}

impl Frame {
    fn complete(&self) -> bool {
        match (self.first, self.last) {
            (Some(first), Some(last)) if last >= first => {
                self.counters.len() as u64 == last - first + 1
                    && self.counters.iter().all(|c| (first..=last).contains(c))
            }
            _ => false,
        }
    }
}

/// Judges the frames of one incoming video track (one RTP stream: start a new tracker when the
/// SSRC changes).
#[derive(Clone, Debug, Default)]
pub struct FrameTracker {
    /// The newest timestamp seen, unwrapped, and as it was on the wire.
    newest: Option<(u64, u32)>,
    /// Frames not yet judged, by unwrapped timestamp.
    pending: BTreeMap<u64, Frame>,
    /// The unwrapped timestamp of the newest judged frame.
    judged_up_to: Option<u64>,
    counts: FrameCounts,
}

impl FrameTracker {
    /// Accounts one video packet: its RTP `timestamp`, the publisher's packet `counter`,
    /// whether it starts a frame (VP8 S bit) or ends one (RTP marker), and its one-way delay.
    pub fn on_packet(
        &mut self,
        timestamp: u32,
        counter: u64,
        starts_frame: bool,
        ends_frame: bool,
        delay_us: u64,
    ) {
        let at = match self.newest {
            // Far enough from 0 that frames older than the first one seen do not underflow.
            None => u64::from(timestamp) + (1 << 32),
            Some((newest, raw)) => {
                newest.wrapping_add_signed(i64::from(timestamp.wrapping_sub(raw) as i32))
            }
        };
        if self.newest.is_none_or(|(newest, _)| at > newest) {
            self.newest = Some((at, timestamp));
        }
        if self.judged_up_to.is_some_and(|judged| at <= judged) {
            // A packet of a frame already judged: too late to count.
            return;
        }
        let frame = self.pending.entry(at).or_default();
        if !frame.counters.contains(&counter) {
            frame.counters.push(counter);
            frame.late |= delay_us > PLAYOUT_DEADLINE_US;
        }
        if starts_frame {
            frame.first = Some(counter);
        }
        if ends_frame {
            frame.last = Some(counter);
        }
        let Some((newest, _)) = self.newest else {
            return;
        };
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() + HORIZON_TICKS > newest {
                break;
            }
            let (at, frame) = entry.remove_entry();
            self.judge(at, &frame);
        }
    }

    fn judge(&mut self, at: u64, frame: &Frame) {
        if let Some(previous) = self.judged_up_to {
            let frames_apart = (at - previous + FRAME_TICKS / 2) / FRAME_TICKS;
            self.counts.missing += frames_apart.saturating_sub(1);
        }
        self.judged_up_to = Some(at);
        if frame.complete() {
            self.counts.complete += 1;
            if !frame.late {
                self.counts.in_time += 1;
            }
        } else {
            self.counts.incomplete += 1;
        }
    }

    /// The frames judged so far (frames within [`HORIZON_TICKS`] of the newest packet wait).
    pub fn counts(&self) -> FrameCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds frame `index` (of `packets` packets, counters following on from earlier frames of
    /// the same size) except the packets whose index within the frame is in `skip`.
    fn frame(t: &mut FrameTracker, index: u64, packets: u64, skip: &[u64], delay_us: u64) {
        let ts = (index * FRAME_TICKS) as u32;
        for p in (0..packets).filter(|p| !skip.contains(p)) {
            t.on_packet(ts, index * packets + p, p == 0, p + 1 == packets, delay_us);
        }
    }

    #[test]
    fn whole_broken_late_and_missing_frames_are_told_apart() {
        let mut t = FrameTracker::default();
        for i in 0..100 {
            match i {
                10 => frame(&mut t, i, 4, &[2], 1_000), // a middle packet lost
                11 => frame(&mut t, i, 4, &[0], 1_000), // the first packet lost
                12 => frame(&mut t, i, 4, &[3], 1_000), // the last packet lost
                20 | 21 => {}                           // nothing arrived
                30 => frame(&mut t, i, 4, &[], 600_000), // whole, but late
                _ => frame(&mut t, i, 4, &[], 1_000),
            }
        }
        // Frames within the 2 s horizon of frame 99 (60 frames) are not judged yet.
        let c = t.counts();
        assert_eq!(c.sent(), 40);
        assert_eq!(c.incomplete, 3);
        assert_eq!(c.missing, 2);
        assert_eq!(c.complete, 35);
        assert_eq!(c.in_time, 34);
    }

    #[test]
    fn a_retransmission_completes_its_frame_and_duplicates_count_once() {
        let mut t = FrameTracker::default();
        frame(&mut t, 0, 4, &[1], 1_000);
        frame(&mut t, 1, 4, &[], 1_000);
        t.on_packet(0, 1, false, false, 150_000); // the retransmission of frame 0's packet 1
        t.on_packet(0, 1, false, false, 900_000); // and a duplicate of it, after the deadline
        t.on_packet(FRAME_TICKS as u32, 5, false, false, 1_000); // a duplicate in frame 1
        frame(&mut t, 100, 4, &[], 1_000); // moves the horizon past both
        assert_eq!(
            t.counts(),
            FrameCounts {
                complete: 2,
                in_time: 2,
                incomplete: 0,
                missing: 0,
            }
        );
    }

    #[test]
    fn timestamps_wrap_and_late_packets_of_judged_frames_are_ignored() {
        let mut t = FrameTracker::default();
        let base = u32::MAX - 10 * FRAME_TICKS as u32;
        for i in 0..80u64 {
            let ts = base.wrapping_add((i * FRAME_TICKS) as u32);
            t.on_packet(ts, 2 * i, true, false, 0);
            t.on_packet(ts, 2 * i + 1, false, true, 0);
        }
        assert_eq!(t.counts().complete, 20);
        assert_eq!(t.counts().missing, 0);
        // A stray packet of frame 0 after it was judged changes nothing.
        t.on_packet(base, 0, true, false, 0);
        assert_eq!(t.counts().sent(), 20);
    }
}
