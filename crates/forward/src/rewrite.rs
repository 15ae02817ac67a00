//! Per-subscriber rewriting of RTP sequence numbers and timestamps.
//!
//! A subscriber sees one outgoing stream whatever happens upstream: the first packet and every
//! packet after a source switch are re-based so that sequence numbers continue at the next
//! number and timestamps continue after the last one sent. In between, the offsets stay fixed,
//! so losses and reordering upstream show up unchanged downstream (the subscriber's NACKs and
//! jitter buffer still work) and 16/32-bit rollovers are handled by wrapping arithmetic.
//!
//! A jump in the upstream sequence numbers larger than a loss burst or a reordering can explain
//! (RFC 3550 Appendix A.1's `MAX_DROPOUT` ahead, `MAX_MISORDER` behind) is a discontinuity: the
//! publisher restarted its sequence (an encoder restart, a new SSRC on the same source). The
//! caller sees it with [`Rewriter::continuity`] and re-bases, so the subscriber's numbering
//! stays continuous. A packet far *behind* is more often a retransmission that came late (the
//! publisher answers every NACK, however old), so, as in RFC 3550 A.1's probation, a backward
//! jump counts as a restart only once [`RESTART_PROBATION`] packets in sequence have followed
//! it with timestamps newer than any sent (a retransmission's is never newer), or packets in
//! sequence whatever their timestamps have gone on for [`STALE_RESTART_SPAN`] of arrival time
//! (a retransmission burst, however long, arrives at once); a packet of the running numbering
//! ends the probation. Until then each is [`Continuity::TooLate`] and must be dropped. So is a
//! packet older than the one the stream was last re-based at (it belongs to the source or the
//! stretch before the re-base, whose numbers the subscriber already had), and, for
//! [`ABANDONED_FOR`] after a backward restart, a packet within reordering distance of the
//! abandoned numbering's end that lies further ahead of the new numbering than reordering
//! explains (a late packet of the old numbering; the new one reaches there only by a loss
//! burst that lands exactly on it). A re-base other than the restart's own (a layer switch)
//! forgets the abandoned numbering.

use std::time::{Duration, Instant};

/// Largest forward jump of upstream sequence numbers still taken as loss (RFC 3550 A.1).
pub const MAX_DROPOUT: u16 = 3000;
/// Largest backward step of upstream sequence numbers still taken as reordering (RFC 3550 A.1).
pub const MAX_MISORDER: u16 = 100;

/// Packets in sequence, far behind the highest seen and newer in time than any sent, that make
/// a backward jump a restart.
pub const RESTART_PROBATION: u16 = 4;

/// How long packets in sequence, far behind the highest seen, must go on arriving (at least
/// [`RESTART_PROBATION`] of them, and no packet of the running numbering in between) to make a
/// backward jump a restart when their timestamps went back too (a restarted encoder with a new
/// clock offset).
pub const STALE_RESTART_SPAN: Duration = Duration::from_millis(500);

/// How long after a backward restart late packets of the abandoned numbering are told apart
/// from the new one (reordering ends well within it).
pub const ABANDONED_FOR: Duration = Duration::from_secs(2);

/// A backward jump on probation.
#[derive(Clone, Copy, Debug)]
struct Probation {
    /// The sequence number that continues it.
    next: u16,
    /// Packets in sequence so far.
    run: u16,
    /// Of those, the ones with a timestamp newer than any sent.
    newer: u16,
    /// When the first of them arrived.
    since: Instant,
}

/// The numbering a backward restart left, while its late packets may still come.
#[derive(Clone, Copy, Debug)]
struct Abandoned {
    /// Its highest upstream sequence number.
    highest: u16,
    /// Until when its packets are looked for.
    until: Instant,
    /// The re-base the restart asked for has not happened yet.
    rebase_pending: bool,
}

/// Where an upstream sequence number stands relative to the packets before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Continuity {
    /// New, lost-and-found or reordered: rewrite it with the current offsets.
    Continues,
    /// The publisher's numbering restarted: re-base before rewriting.
    Restarts,
    /// Older than reordering explains (a late retransmission, or a backward restart still on
    /// probation): drop it.
    TooLate,
}

/// Whether sequence number `a` is newer than `b`, modulo 2^16.
pub fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// Whether timestamp `a` is newer than `b`, modulo 2^32.
pub fn ts_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

/// Maps one or more upstream sources onto one continuous outgoing sequence and timeline.
#[derive(Clone, Debug)]
pub struct Rewriter {
    seq_offset: u16,
    ts_offset: u32,
    highest_seq: u16,
    highest_ts: u32,
    /// The highest upstream sequence number since the last re-base.
    highest_in: u16,
    started: bool,
    rebase: Option<u32>,
    probation: Option<Probation>,
    /// The upstream sequence number of the last re-base, while packets older than it could
    /// still pass for reordering.
    floor: Option<u16>,
    /// The numbering the last backward restart left (see [`ABANDONED_FOR`]).
    abandoned: Option<Abandoned>,
}

impl Rewriter {
    /// A rewriter whose first outgoing packet gets sequence number `first_seq`.
    pub fn new(first_seq: u16, first_ts: u32) -> Self {
        Self {
            seq_offset: 0,
            ts_offset: 0,
            highest_seq: first_seq.wrapping_sub(1),
            highest_ts: first_ts,
            highest_in: 0,
            started: false,
            rebase: None,
            probation: None,
            floor: None,
            abandoned: None,
        }
    }

    /// Re-bases on the next packet: a new source follows, `ts_gap` timestamp units after the
    /// last packet sent (the time that passed, in the codec's clock).
    pub fn switch_source(&mut self, ts_gap: u32) {
        self.rebase = Some(ts_gap.max(1));
        // The restart's own re-base keeps the abandoned numbering in view; any other
        // (another layer, whose numbering has nothing to do with it) forgets it.
        if self.abandoned.is_some_and(|a| !a.rebase_pending) {
            self.abandoned = None;
        }
    }

    /// Where the upstream packet with sequence number `seq` and timestamp `ts`, arrived at
    /// `arrival`, stands: [`Continuity::Restarts`] more than [`MAX_DROPOUT`] ahead of the
    /// highest seen since the last re-base, or at the end of a backward jump's probation (see
    /// the module's docs); [`Continuity::TooLate`] more than [`MAX_MISORDER`] behind before
    /// that, older than the last re-base, or a late packet of an abandoned numbering; else
    /// [`Continuity::Continues`] (always before the first packet and when a re-base is due).
    pub fn continuity(&mut self, seq: u16, ts: u32, arrival: Instant) -> Continuity {
        if !self.started || self.rebase.is_some() {
            return Continuity::Continues;
        }
        let ahead = seq.wrapping_sub(self.highest_in);
        let behind = self.highest_in.wrapping_sub(seq);
        if let Some(abandoned) = self.abandoned {
            if arrival >= abandoned.until {
                self.abandoned = None;
            } else if ahead > MAX_MISORDER
                && ahead < 0x8000
                && seq.wrapping_sub(abandoned.highest.wrapping_sub(MAX_MISORDER))
                    <= 2 * MAX_MISORDER
            {
                // Ahead of the new numbering by more than reordering explains and within
                // reordering distance of the old one's end: a late packet of the old numbering.
                return Continuity::TooLate;
            }
        }
        if ahead < 0x8000 {
            self.probation = None;
            return if ahead > MAX_DROPOUT {
                Continuity::Restarts
            } else {
                Continuity::Continues
            };
        }
        if behind <= MAX_MISORDER {
            if self.floor.is_some_and(|floor| seq_newer(floor, seq)) {
                return Continuity::TooLate;
            }
            self.probation = None;
            return Continuity::Continues;
        }
        let newer = u16::from(ts_newer(ts.wrapping_add(self.ts_offset), self.highest_ts));
        let probation = match self.probation {
            Some(p) if p.next == seq => Probation {
                next: seq.wrapping_add(1),
                run: p.run.saturating_add(1),
                newer: p.newer.saturating_add(newer),
                since: p.since,
            },
            _ => Probation {
                next: seq.wrapping_add(1),
                run: 1,
                newer,
                since: arrival,
            },
        };
        if probation.newer >= RESTART_PROBATION
            || (probation.run >= RESTART_PROBATION
                && arrival.saturating_duration_since(probation.since) >= STALE_RESTART_SPAN)
        {
            self.probation = None;
            self.abandoned = Some(Abandoned {
                highest: self.highest_in,
                until: arrival + ABANDONED_FOR,
                rebase_pending: true,
            });
            Continuity::Restarts
        } else {
            self.probation = Some(probation);
            Continuity::TooLate
        }
    }

    /// The outgoing sequence number and timestamp for an upstream packet.
    pub fn rewrite(&mut self, seq: u16, ts: u32) -> (u16, u32) {
        if !self.started || self.rebase.is_some() {
            let ts_gap = if self.started {
                self.rebase.unwrap_or(1)
            } else {
                0
            };
            let next_seq = self.highest_seq.wrapping_add(1);
            let next_ts = self.highest_ts.wrapping_add(ts_gap);
            self.seq_offset = next_seq.wrapping_sub(seq);
            self.ts_offset = next_ts.wrapping_sub(ts);
            self.started = true;
            self.rebase = None;
            self.probation = None;
            if let Some(abandoned) = self.abandoned.as_mut() {
                abandoned.rebase_pending = false;
            }
            self.floor = Some(seq);
            self.highest_seq = next_seq;
            self.highest_ts = next_ts;
            self.highest_in = seq;
            return (next_seq, next_ts);
        }
        if seq_newer(seq, self.highest_in) {
            self.highest_in = seq;
            if self
                .floor
                .is_some_and(|floor| self.highest_in.wrapping_sub(floor) > MAX_MISORDER)
            {
                // Older packets are now far behind, where probation judges them.
                self.floor = None;
            }
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        if seq_newer(out_seq, self.highest_seq) {
            self.highest_seq = out_seq;
        }
        if ts_newer(out_ts, self.highest_ts) {
            self.highest_ts = out_ts;
        }
        (out_seq, out_ts)
    }

    /// The highest sequence number sent so far.
    pub fn highest_seq(&self) -> u16 {
        self.highest_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One instant for tests where arrival times do not matter.
    fn t0() -> Instant {
        use std::sync::OnceLock;
        static T0: OnceLock<Instant> = OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    /// Upstream (seq, ts, source switch with this gap first) and the expected (seq, ts) out.
    type Step = ((u16, u32, Option<u32>), (u16, u32));

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            first_seq: u16,
            // (in seq, in ts, switch before with gap) -> expected (out seq, out ts)
            steps: &'static [Step],
        }
        let cases = [
            Case {
                name: "in order",
                first_seq: 100,
                steps: &[((5, 1000, None), (100, 0)), ((6, 1960, None), (101, 960))],
            },
            Case {
                name: "sequence rollover upstream",
                first_seq: 0,
                steps: &[((65535, 10, None), (0, 0)), ((0, 20, None), (1, 10))],
            },
            Case {
                name: "sequence rollover downstream",
                first_seq: 65535,
                steps: &[((7, 10, None), (65535, 0)), ((8, 20, None), (0, 10))],
            },
            Case {
                name: "timestamp rollover",
                first_seq: 1,
                steps: &[((1, u32::MAX - 5, None), (1, 0)), ((2, 4, None), (2, 10))],
            },
            Case {
                name: "loss keeps the gap",
                first_seq: 10,
                steps: &[((1, 0, None), (10, 0)), ((4, 30, None), (13, 30))],
            },
            Case {
                name: "reordering keeps the order",
                first_seq: 10,
                steps: &[
                    ((1, 0, None), (10, 0)),
                    ((3, 20, None), (12, 20)),
                    ((2, 10, None), (11, 10)),
                ],
            },
            Case {
                name: "source switch continues",
                first_seq: 10,
                steps: &[
                    ((1, 0, None), (10, 0)),
                    ((2, 3000, None), (11, 3000)),
                    ((500, 77, Some(3000)), (12, 6000)),
                    ((501, 3077, None), (13, 9000)),
                ],
            },
        ];
        for case in cases {
            let mut rewriter = Rewriter::new(case.first_seq, 0);
            for ((seq, ts, switch), expected) in case.steps {
                if let Some(gap) = switch {
                    rewriter.switch_source(*gap);
                }
                assert_eq!(rewriter.rewrite(*seq, *ts), *expected, "{}", case.name);
            }
        }
    }

    /// A rewriter that has sent upstream packets `first..=last` (timestamps 3000 apart).
    fn running(first: u16, last: u16) -> Rewriter {
        let mut rewriter = Rewriter::new(10, 0);
        let mut seq = first;
        loop {
            assert_eq!(
                rewriter.continuity(seq, u32::from(seq) * 3000, t0()),
                Continuity::Continues
            );
            rewriter.rewrite(seq, u32::from(seq) * 3000);
            if seq == last {
                return rewriter;
            }
            seq = seq.wrapping_add(1);
        }
    }

    #[test]
    fn restarts_are_jumps_beyond_dropout_or_misorder_on_probation() {
        use Continuity::*;
        let mut rewriter = Rewriter::new(10, 0);
        assert_eq!(
            rewriter.continuity(40_000, 0, t0()),
            Continues,
            "nothing before the first packet"
        );
        let mut rewriter = running(1000, 1200);
        let now = 1200 * 3000;
        for (seq, expected) in [
            (1201, Continues),
            (1200 + MAX_DROPOUT, Continues),
            (1201 + MAX_DROPOUT, Restarts),
            (1200 - MAX_MISORDER, Continues),
            (15_820, Restarts),
            (21_000, Restarts),
        ] {
            assert_eq!(rewriter.continuity(seq, now, t0()), expected, "{seq}");
        }
        // Far behind: late, and again and again for the same retransmission...
        for _ in 0..10 {
            assert_eq!(
                rewriter.continuity(1099 - MAX_MISORDER, 3000, t0()),
                TooLate
            );
        }
        // ...but packets in sequence with newer timestamps are the numbering restarting: the
        // RESTART_PROBATION-th is a restart.
        let first = 500u16;
        for i in 0..RESTART_PROBATION - 1 {
            assert_eq!(
                rewriter.continuity(first + i, now + 3000, t0()),
                TooLate,
                "{i}"
            );
        }
        assert_eq!(
            rewriter.continuity(first + RESTART_PROBATION - 1, now + 3000, t0()),
            Restarts
        );
        // Across the 16-bit rollover a small step is no jump.
        let mut rewriter = running(65_400, 5);
        assert_eq!(rewriter.continuity(6, 0, t0()), Continues);
        assert_eq!(
            rewriter.continuity(65_534, 0, t0()),
            Continues,
            "a late packet from before the rollover"
        );
        // After a re-base the new numbering is the reference.
        rewriter.switch_source(10);
        assert_eq!(rewriter.continuity(30_000, 0, t0()), Continues);
        rewriter.rewrite(30_000, 200);
        assert_eq!(rewriter.continuity(30_001, 300, t0()), Continues);
        assert_eq!(rewriter.continuity(6, 0, t0()), TooLate);
    }

    #[test]
    fn late_retransmissions_in_sequence_never_restart_the_numbering() {
        // Bursts of retransmissions far behind, each in sequence (a burst loss asked for at
        // once), carry the old timestamps of the packets they repeat: never a restart, however
        // many bursts, and live packets in between go on as before.
        let mut rewriter = running(1000, 1500);
        for burst in 0..20u16 {
            let start = 1100 + burst * 8;
            for seq in start..start + 8 {
                assert_eq!(
                    rewriter.continuity(seq, u32::from(seq) * 3000, t0()),
                    Continuity::TooLate,
                    "{seq}"
                );
            }
            let live = 1501 + burst;
            assert_eq!(
                rewriter.continuity(live, u32::from(live) * 3000, t0()),
                Continuity::Continues
            );
            rewriter.rewrite(live, u32::from(live) * 3000);
        }
        // Packets far behind with newer timestamps, interrupted by a live packet each time
        // before the probation ends: the running numbering goes on, no restart.
        for round in 0..10u16 {
            for i in 0..RESTART_PROBATION - 1 {
                assert_eq!(
                    rewriter.continuity(200 + i, u32::MAX / 2, t0()),
                    Continuity::TooLate,
                    "{round}"
                );
            }
            let live = 1521 + round;
            assert_eq!(
                rewriter.continuity(live, u32::from(live) * 3000, t0()),
                Continuity::Continues
            );
            rewriter.rewrite(live, u32::from(live) * 3000);
        }
    }

    #[test]
    fn a_restart_whose_timestamps_went_back_too_is_found_later() {
        // The encoder restarted its numbering and its clock: packets in sequence, far behind,
        // with old timestamps, 20 ms apart. A restart once they have gone on for
        // STALE_RESTART_SPAN, not before.
        let mut rewriter = running(5000, 5300);
        let start = t0();
        let mut seq = 100u16;
        let mut arrival = start;
        while arrival.duration_since(start) < STALE_RESTART_SPAN {
            assert_eq!(
                rewriter.continuity(seq, u32::from(seq), arrival),
                Continuity::TooLate,
                "{seq}"
            );
            seq += 1;
            arrival += Duration::from_millis(20);
        }
        assert_eq!(
            rewriter.continuity(seq, u32::from(seq), arrival),
            Continuity::Restarts
        );
    }

    #[test]
    fn a_long_burst_of_late_retransmissions_never_restarts_the_numbering() {
        // A second of video lost and asked for at once: 1,000 retransmissions in sequence,
        // far behind, with the old timestamps they repeat, arriving within 50 ms. (A run of
        // 128 in sequence used to be taken for a restart whatever its timestamps.)
        let mut rewriter = running(1000, 3000);
        let start = t0();
        for (i, seq) in (1200..2200u16).enumerate() {
            let arrival = start + Duration::from_micros(50 * i as u64);
            assert_eq!(
                rewriter.continuity(seq, u32::from(seq) * 3000, arrival),
                Continuity::TooLate,
                "{seq}"
            );
        }
        let arrival = start + Duration::from_millis(60);
        assert_eq!(
            rewriter.continuity(3001, 3001 * 3000, arrival),
            Continuity::Continues
        );
    }

    #[test]
    fn late_packets_of_an_abandoned_numbering_are_too_late() {
        // The numbering restarted backwards at 1000 (with newer timestamps) from 4000; a late
        // packet from the end of the old numbering then lies far ahead of the new one, within
        // a loss burst of it: it is dropped, not forwarded with the new offsets.
        let mut rewriter = running(3500, 4000);
        let start = t0();
        let ts = 4001 * 3000;
        for i in 0..RESTART_PROBATION {
            let expected = if i + 1 == RESTART_PROBATION {
                Continuity::Restarts
            } else {
                Continuity::TooLate
            };
            assert_eq!(
                rewriter.continuity(1000 + i, ts + u32::from(i), start),
                expected
            );
        }
        rewriter.switch_source(1);
        rewriter.rewrite(1000 + RESTART_PROBATION - 1, ts);
        let mut seq = 1000 + RESTART_PROBATION;
        let soon = start + Duration::from_millis(300);
        for late in [3990, 3999, 4000, 4000 - MAX_MISORDER, 4000 + MAX_MISORDER] {
            assert_eq!(
                rewriter.continuity(late, 3990 * 3000, soon),
                Continuity::TooLate,
                "{late}"
            );
            assert_eq!(
                rewriter.continuity(seq, ts + 3000, soon),
                Continuity::Continues
            );
            rewriter.rewrite(seq, ts + 3000);
            seq += 1;
        }
        // A loss burst of the new numbering, longer than reordering explains, goes on as before
        // (it does not reach the old numbering's end).
        let after_loss = seq + 2 * MAX_MISORDER;
        assert_eq!(
            rewriter.continuity(after_loss, ts + 6000, soon),
            Continuity::Continues
        );
        rewriter.rewrite(after_loss, ts + 6000);
        // Once the old numbering's packets can no longer come, what lies there goes on too.
        assert_eq!(
            rewriter.continuity(3990, ts + 9000, start + ABANDONED_FOR),
            Continuity::Continues
        );
    }

    #[test]
    fn a_layer_switch_forgets_the_abandoned_numbering() {
        // Within ABANDONED_FOR of a backward restart from 4000, the subscriber moves to another
        // layer whose numbers happen to lie near 4000: after a loss burst there, it goes on.
        let mut rewriter = running(3500, 4000);
        let start = t0();
        let ts = 4001 * 3000;
        for i in 0..RESTART_PROBATION {
            rewriter.continuity(1000 + i, ts + u32::from(i), start);
        }
        rewriter.switch_source(1);
        rewriter.rewrite(1000 + RESTART_PROBATION - 1, ts);
        // The switch to the other layer, re-based at its keyframe 3700.
        rewriter.switch_source(1);
        let soon = start + Duration::from_millis(300);
        assert_eq!(rewriter.continuity(3700, ts, soon), Continuity::Continues);
        rewriter.rewrite(3700, ts);
        assert_eq!(
            rewriter.continuity(3950, ts + 3000, soon),
            Continuity::Continues,
            "a loss burst on the new layer, near where the old numbering ended"
        );
    }

    #[test]
    fn packets_older_than_the_re_base_are_too_late() {
        // The subscriber got 100..=200 of one source as 10..=110; the stream was re-based at
        // packet 5000 of another (say its keyframe). Packets of the new source from before
        // 5000 would take numbers 110 and below, which the subscriber already had.
        let mut rewriter = running(100, 200);
        rewriter.switch_source(3000);
        assert_eq!(rewriter.continuity(5000, 0, t0()), Continuity::Continues);
        assert_eq!(rewriter.rewrite(5000, 0).0, 111);
        for late in [4999, 4990, 5000 - MAX_MISORDER] {
            assert_eq!(
                rewriter.continuity(late, 0, t0()),
                Continuity::TooLate,
                "{late}"
            );
        }
        assert_eq!(rewriter.continuity(5002, 0, t0()), Continuity::Continues);
        assert_eq!(rewriter.rewrite(5002, 0).0, 113);
        assert_eq!(rewriter.continuity(5001, 0, t0()), Continuity::Continues);
        assert_eq!(
            rewriter.rewrite(5001, 0).0,
            112,
            "reordering after it is fine"
        );
        // Once the stream is well past the re-base, reordering is judged as before.
        for seq in 5003..=5200 {
            rewriter.rewrite(seq, 0);
        }
        assert_eq!(rewriter.continuity(5150, 0, t0()), Continuity::Continues);
        // The first packet is a re-base too: nothing from before it.
        let mut rewriter = Rewriter::new(10, 0);
        rewriter.rewrite(700, 0);
        assert_eq!(rewriter.continuity(699, 0, t0()), Continuity::TooLate);
    }

    proptest! {
        /// Consecutive upstream packets, across any number of switches, leave consecutive
        /// sequence numbers and non-decreasing timestamps downstream.
        #[test]
        fn continuous_across_switches(
            first in any::<u16>(),
            segments in proptest::collection::vec((any::<u16>(), any::<u32>(), 1u32..10_000, 1usize..50), 1..8),
        ) {
            let mut rewriter = Rewriter::new(first, 0);
            let mut expected_seq = first;
            let mut last_ts: Option<u32> = None;
            for (index, (start_seq, start_ts, gap, len)) in segments.into_iter().enumerate() {
                if index > 0 {
                    rewriter.switch_source(gap);
                }
                for i in 0..len {
                    let seq = start_seq.wrapping_add(i as u16);
                    let ts = start_ts.wrapping_add(i as u32 * 3000);
                    let (out_seq, out_ts) = rewriter.rewrite(seq, ts);
                    prop_assert_eq!(out_seq, expected_seq);
                    expected_seq = expected_seq.wrapping_add(1);
                    if let Some(prev) = last_ts {
                        prop_assert!(ts_newer(out_ts, prev), "timestamp went back: {} after {}", out_ts, prev);
                    }
                    last_ts = Some(out_ts);
                }
            }
        }
    }
}
