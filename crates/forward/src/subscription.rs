//! One subscriber's view of one publication: layer choice, keyframe gating and rewriting.
//!
//! A subscription forwards one simulcast layer at a time (a track without simulcast has one
//! layer, 0). When its target layer changes, it keeps forwarding the current layer until a
//! keyframe of the target arrives, then switches at that keyframe, so the subscriber never
//! decodes a frame that refers to a picture it did not get.

use crate::codec::Codec;
use crate::keyframe::is_keyframe;
use crate::layer::LayerId;
use crate::rewrite::{Continuity, Rewriter};
use crate::vp8::Vp8Munger;
use std::time::Instant;

/// The header fields and payload of a received RTP packet that forwarding looks at.
#[derive(Clone, Copy, Debug)]
pub struct PacketMeta<'a> {
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// RTP payload.
    pub payload: &'a [u8],
    /// When the packet arrived.
    pub arrival: Instant,
}

/// Why a packet was not forwarded to a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber waits for a keyframe of its target layer and this packet does not start one.
    WaitingForKeyframe,
    /// The packet belongs to a layer the subscriber does not get.
    OtherLayer,
    /// The subscription is paused (the publisher muted it).
    Paused,
    /// The packet is older than reordering explains (a late retransmission).
    TooLate,
}

impl DropReason {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WaitingForKeyframe => "waiting_for_keyframe",
            Self::OtherLayer => "other_layer",
            Self::Paused => "paused",
            Self::TooLate => "too_late",
        }
    }
}

/// What to do with a packet for one subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it with these header fields.
    Forward {
        /// Outgoing sequence number.
        seq: u16,
        /// Outgoing timestamp.
        timestamp: u32,
        /// The payload must be copied and passed to [`Subscription::patch`] (VP8 picture ids
        /// continue across a switch).
        patch: bool,
    },
    /// Do not send it.
    Drop(DropReason),
}

/// Forwarding state of one subscriber for one publication.
#[derive(Clone, Debug)]
pub struct Subscription {
    codec: Codec,
    clock_rate: u32,
    rewriter: Rewriter,
    vp8: Vp8Munger,
    current: Option<LayerId>,
    target: LayerId,
    paused: bool,
    resume_pending: bool,
    last_sent_at: Option<Instant>,
}

impl Subscription {
    /// A new subscription to `target`; its first packet will be a keyframe where the codec
    /// has keyframes.
    pub fn new(
        codec: Codec,
        clock_rate: u32,
        first_seq: u16,
        first_ts: u32,
        target: LayerId,
    ) -> Self {
        Self {
            codec,
            clock_rate: clock_rate.max(1),
            rewriter: Rewriter::new(first_seq, first_ts),
            vp8: Vp8Munger::default(),
            current: None,
            target,
            paused: false,
            resume_pending: false,
            last_sent_at: None,
        }
    }

    /// The layer being forwarded, once one is.
    pub fn current(&self) -> Option<LayerId> {
        self.current
    }

    /// The layer the subscription should be on.
    pub fn target(&self) -> LayerId {
        self.target
    }

    /// Sets the layer to switch to at its next keyframe.
    pub fn set_target(&mut self, layer: LayerId) {
        self.target = layer;
    }

    /// Keeps the layer ids pointing at the same layers when the publication gains a layer at
    /// index `at` (layers are kept lowest first, so a lower layer that arrives late shifts
    /// the ones above it up by one).
    pub fn layer_inserted(&mut self, at: LayerId) {
        if self.target >= at {
            self.target = self.target.saturating_add(1);
        }
        if let Some(current) = self.current.as_mut()
            && *current >= at
        {
            *current = current.saturating_add(1);
        }
    }

    /// The layer whose keyframe forwarding waits for, if any (the publisher should be asked).
    pub fn wants_keyframe(&self) -> Option<LayerId> {
        if self.paused || !self.codec.needs_keyframe() {
            return None;
        }
        (self.current != Some(self.target) || self.resume_pending).then_some(self.target)
    }

    /// Pauses or resumes forwarding; resumed video starts again at a keyframe.
    pub fn set_paused(&mut self, paused: bool) {
        if self.paused && !paused {
            self.resume_pending = true;
        }
        self.paused = paused;
    }

    /// Whether forwarding is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Decides about one packet of layer `layer` of the publication.
    pub fn forward(&mut self, layer: LayerId, packet: &PacketMeta<'_>) -> Verdict {
        if self.paused {
            return Verdict::Drop(DropReason::Paused);
        }
        let starts_here = !self.codec.needs_keyframe() || is_keyframe(self.codec, packet.payload);
        if layer == self.target && self.current != Some(self.target) {
            // The switch to the target layer happens at its keyframe.
            if !starts_here {
                return Verdict::Drop(DropReason::WaitingForKeyframe);
            }
            self.rebase(packet.arrival);
            self.current = Some(self.target);
            self.resume_pending = false;
        } else if Some(layer) != self.current {
            return Verdict::Drop(DropReason::OtherLayer);
        } else if self.resume_pending {
            // The current layer (the target, or the one forwarded until the target's keyframe)
            // starts again at a keyframe after a pause or a restart.
            if !starts_here {
                return Verdict::Drop(DropReason::WaitingForKeyframe);
            }
            self.rebase(packet.arrival);
            self.resume_pending = false;
        } else {
            match self
                .rewriter
                .continuity(packet.seq, packet.timestamp, packet.arrival)
            {
                Continuity::Continues => {}
                Continuity::TooLate => return Verdict::Drop(DropReason::TooLate),
                // The publisher's numbering jumped: continue the subscriber's numbering from
                // here, at a keyframe for video (what came before it cannot be decoded with
                // what follows).
                Continuity::Restarts => {
                    if !starts_here {
                        self.resume_pending = true;
                        return Verdict::Drop(DropReason::WaitingForKeyframe);
                    }
                    self.rebase(packet.arrival);
                }
            }
        }
        let (seq, timestamp) = self.rewriter.rewrite(packet.seq, packet.timestamp);
        self.last_sent_at = Some(packet.arrival);
        let patch = if self.codec == Codec::Vp8 {
            if self.vp8.active() {
                true
            } else {
                self.vp8.observe(packet.payload);
                false
            }
        } else {
            false
        };
        Verdict::Forward {
            seq,
            timestamp,
            patch,
        }
    }

    /// Patches a copy of the payload of a packet [`forward`](Self::forward) asked to patch.
    pub fn patch(&mut self, payload: &mut [u8]) {
        if self.codec == Codec::Vp8 {
            self.vp8.munge(payload);
        }
    }

    /// A new source follows: sequence numbers continue, timestamps advance by the time passed.
    fn rebase(&mut self, now: Instant) {
        let Some(last) = self.last_sent_at else {
            return;
        };
        let elapsed = now.saturating_duration_since(last);
        let ticks = elapsed.as_micros() * u128::from(self.clock_rate) / 1_000_000;
        self.rewriter
            .switch_source(u32::try_from(ticks).unwrap_or(u32::MAX).max(1));
        self.vp8.switch_source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const KEY: &[u8] = &[0x90, 0x80, 0x05, 0x00, 0x9d];
    const DELTA: &[u8] = &[0x90, 0x80, 0x06, 0x01, 0x9d];
    const CONTINUATION: &[u8] = &[0x80, 0x80, 0x06, 0x55];

    fn meta(seq: u16, payload: &[u8], at: Instant) -> PacketMeta<'_> {
        PacketMeta {
            seq,
            timestamp: u32::from(seq) * 3000,
            marker: false,
            payload,
            arrival: at,
        }
    }

    fn forwarded(verdict: Verdict) -> (u16, u32) {
        match verdict {
            Verdict::Forward { seq, timestamp, .. } => (seq, timestamp),
            Verdict::Drop(reason) => panic!("dropped: {reason:?}"),
        }
    }

    #[test]
    fn a_lower_layer_arriving_late_keeps_the_subscription_on_its_layer() {
        let t = Instant::now();
        // Over a link a publication's top layer may arrive first, as layer 0.
        let mut sub = Subscription::new(Codec::Vp8, 90_000, 1000, 0, 0);
        forwarded(sub.forward(0, &meta(1, KEY, t)));
        // The lowest layer arrives and takes index 0: the top layer is now 1.
        sub.layer_inserted(0);
        assert_eq!((sub.current(), sub.target()), (Some(1), 1));
        assert_eq!(
            sub.wants_keyframe(),
            None,
            "no switch, so no keyframe wanted"
        );
        assert!(matches!(
            sub.forward(0, &meta(50, KEY, t)),
            Verdict::Drop(_)
        ));
        let (seq, _) = forwarded(sub.forward(1, &meta(2, DELTA, t)));
        assert_eq!(seq, 1001, "the same stream goes on, without a gap");
        // A layer above this one changes nothing.
        sub.layer_inserted(2);
        assert_eq!((sub.current(), sub.target()), (Some(1), 1));
    }

    #[test]
    fn video_starts_at_a_keyframe_with_continuous_numbers() {
        let t = Instant::now();
        let mut sub = Subscription::new(Codec::Vp8, 90_000, 1000, 0, 0);
        assert_eq!(sub.wants_keyframe(), Some(0));
        assert_eq!(
            sub.forward(0, &meta(1, DELTA, t)),
            Verdict::Drop(DropReason::WaitingForKeyframe)
        );
        assert_eq!(forwarded(sub.forward(0, &meta(2, KEY, t))), (1000, 0));
        assert_eq!(sub.wants_keyframe(), None);
        assert_eq!(
            forwarded(sub.forward(0, &meta(3, CONTINUATION, t))),
            (1001, 3000)
        );
    }

    #[test]
    fn a_jump_in_the_publishers_numbering_is_re_based() {
        let t = Instant::now();
        // Audio: the subscriber's numbering continues right after each jump (the cases:
        // forward jumps of 14,820, 20,000 and 29,995).
        let mut sub = Subscription::new(Codec::Opus, 48_000, 500, 0, 0);
        let mut expected = 500;
        let mut seq: u16 = 100;
        for jump in [0u16, 14_820, 20_000, 29_995] {
            seq = seq.wrapping_add(jump);
            for _ in 0..3 {
                let (out, _) = forwarded(sub.forward(0, &meta(seq, DELTA, t)));
                assert_eq!(out, expected, "after a jump of {jump}");
                expected = expected.wrapping_add(1);
                seq = seq.wrapping_add(1);
            }
        }
        // Video: after a jump, forwarding waits for a keyframe (and asks for one), then goes on
        // with the next number.
        let mut sub = Subscription::new(Codec::Vp8, 90_000, 10, 0, 0);
        assert_eq!(forwarded(sub.forward(0, &meta(1, KEY, t))).0, 10);
        assert_eq!(forwarded(sub.forward(0, &meta(2, DELTA, t))).0, 11);
        assert_eq!(
            sub.forward(0, &meta(20_000, DELTA, t)),
            Verdict::Drop(DropReason::WaitingForKeyframe)
        );
        assert_eq!(sub.wants_keyframe(), Some(0));
        assert_eq!(forwarded(sub.forward(0, &meta(20_001, KEY, t))).0, 12);
        assert_eq!(forwarded(sub.forward(0, &meta(20_002, DELTA, t))).0, 13);
        // Ordinary loss and reordering are no jump.
        assert_eq!(forwarded(sub.forward(0, &meta(20_100, DELTA, t))).0, 111);
        assert_eq!(forwarded(sub.forward(0, &meta(20_050, DELTA, t))).0, 61);
    }

    #[test]
    fn late_retransmissions_are_dropped_without_waiting_for_a_keyframe() {
        // A publisher answers every NACK, however old: the same packet, far behind, over and
        // over (the focus once waited for a keyframe at each, and forwarded 5 % of the frames
        // whole at 5 % loss on the publisher's link).
        let t = Instant::now();
        let mut sub = Subscription::new(Codec::Vp8, 90_000, 10, 0, 0);
        assert_eq!(forwarded(sub.forward(0, &meta(1000, KEY, t))).0, 10);
        for seq in 1001..1300 {
            forwarded(sub.forward(0, &meta(seq, DELTA, t)));
        }
        for _ in 0..10 {
            assert_eq!(
                sub.forward(0, &meta(1100, CONTINUATION, t)),
                Verdict::Drop(DropReason::TooLate)
            );
        }
        // A burst of them in sequence (a burst loss asked for at once) is no restart either.
        for seq in 1100..1100 + 2 * crate::rewrite::RESTART_PROBATION {
            assert_eq!(
                sub.forward(0, &meta(seq, CONTINUATION, t)),
                Verdict::Drop(DropReason::TooLate)
            );
        }
        assert_eq!(sub.wants_keyframe(), None);
        assert_eq!(forwarded(sub.forward(0, &meta(1300, DELTA, t))).0, 310);
        // A late one within reordering's reach still goes out, in its place.
        assert_eq!(forwarded(sub.forward(0, &meta(1250, DELTA, t))).0, 260);
    }

    #[test]
    fn packets_from_before_a_switch_or_a_resumption_are_dropped() {
        let t = Instant::now();
        let mut sub = Subscription::new(Codec::Vp8, 90_000, 10, 0, 0);
        assert_eq!(forwarded(sub.forward(0, &meta(100, KEY, t))).0, 10);
        assert_eq!(forwarded(sub.forward(0, &meta(101, DELTA, t))).0, 11);
        sub.set_target(1);
        assert_eq!(forwarded(sub.forward(1, &meta(600, KEY, t))).0, 12);
        // A packet of the new layer from before its keyframe, reordered behind it, would take
        // number 11, which the subscriber already had from layer 0.
        assert_eq!(
            sub.forward(1, &meta(599, DELTA, t)),
            Verdict::Drop(DropReason::TooLate)
        );
        assert_eq!(forwarded(sub.forward(1, &meta(601, DELTA, t))).0, 13);
        // The same after a pause: the stream starts again at a keyframe, nothing before it.
        sub.set_paused(true);
        sub.set_paused(false);
        assert_eq!(forwarded(sub.forward(1, &meta(700, KEY, t))).0, 14);
        assert_eq!(
            sub.forward(1, &meta(699, DELTA, t)),
            Verdict::Drop(DropReason::TooLate)
        );
    }

    #[test]
    fn the_layer_forwarded_until_a_switch_is_judged_like_any_other() {
        let t = Instant::now();
        let mut sub = Subscription::new(Codec::Vp8, 90_000, 10, 0, 0);
        assert_eq!(forwarded(sub.forward(0, &meta(1000, KEY, t))).0, 10);
        for seq in 1001..1300 {
            forwarded(sub.forward(0, &meta(seq, DELTA, t)));
        }
        sub.set_target(1);
        // While the switch waits for layer 1's keyframe, layer 0 goes on: a late
        // retransmission of it is still too late...
        assert_eq!(
            sub.forward(0, &meta(1100, CONTINUATION, t)),
            Verdict::Drop(DropReason::TooLate)
        );
        assert_eq!(forwarded(sub.forward(0, &meta(1300, DELTA, t))).0, 310);
        // ...and after a pause it starts again only at a keyframe.
        sub.set_paused(true);
        sub.set_paused(false);
        assert_eq!(
            sub.forward(0, &meta(1301, DELTA, t)),
            Verdict::Drop(DropReason::WaitingForKeyframe)
        );
        assert_eq!(forwarded(sub.forward(0, &meta(1302, KEY, t))).0, 311);
    }

    #[test]
    fn switches_layers_only_at_a_keyframe_of_the_target() {
        let t0 = Instant::now();
        let mut sub = Subscription::new(Codec::Vp8, 90_000, 10, 0, 0);
        assert_eq!(forwarded(sub.forward(0, &meta(100, KEY, t0))), (10, 0));
        sub.set_target(2);
        assert_eq!(sub.wants_keyframe(), Some(2));
        // The old layer keeps flowing until the target's keyframe.
        assert_eq!(forwarded(sub.forward(0, &meta(101, DELTA, t0))), (11, 3000));
        assert_eq!(
            sub.forward(2, &meta(500, DELTA, t0)),
            Verdict::Drop(DropReason::WaitingForKeyframe)
        );
        assert_eq!(
            sub.forward(1, &meta(700, KEY, t0)),
            Verdict::Drop(DropReason::OtherLayer)
        );
        let t1 = t0 + Duration::from_millis(100);
        let (seq, ts) = forwarded(sub.forward(2, &meta(501, KEY, t1)));
        assert_eq!(seq, 12, "sequence continues across the switch");
        assert_eq!(
            ts,
            3000 + 9000,
            "timestamp advances by the 100 ms that passed"
        );
        assert_eq!(sub.current(), Some(2));
        // The old layer is now dropped.
        assert_eq!(
            sub.forward(0, &meta(102, KEY, t1)),
            Verdict::Drop(DropReason::OtherLayer)
        );
        assert_eq!(
            forwarded(sub.forward(2, &meta(502, DELTA, t1))),
            (13, 12000 + 3000)
        );
    }

    #[test]
    fn vp8_picture_ids_continue_across_a_switch() {
        let t = Instant::now();
        let mut sub = Subscription::new(Codec::Vp8, 90_000, 0, 0, 0);
        assert!(matches!(
            sub.forward(0, &meta(1, KEY, t)),
            Verdict::Forward { patch: false, .. }
        ));
        sub.set_target(1);
        let other_key = [0x90, 0x80, 0x40, 0x00, 0x9d];
        let Verdict::Forward { patch: true, .. } = sub.forward(1, &meta(9, &other_key, t)) else {
            panic!("a switch must patch VP8 picture ids");
        };
        let mut copy = other_key;
        sub.patch(&mut copy);
        assert_eq!(copy[2], 0x06, "picture id continues after 5");
    }

    #[test]
    fn audio_forwards_at_once_and_resumes_after_a_pause() {
        let t0 = Instant::now();
        let mut sub = Subscription::new(Codec::Opus, 48_000, 7, 0, 0);
        assert_eq!(sub.wants_keyframe(), None);
        assert_eq!(forwarded(sub.forward(0, &meta(50, &[1], t0))), (7, 0));
        sub.set_paused(true);
        assert_eq!(
            sub.forward(0, &meta(51, &[1], t0)),
            Verdict::Drop(DropReason::Paused)
        );
        sub.set_paused(false);
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(forwarded(sub.forward(0, &meta(90, &[1], t1))), (8, 960));
    }

    #[test]
    fn resumed_video_waits_for_a_keyframe() {
        let t = Instant::now();
        let mut sub = Subscription::new(Codec::Vp8, 90_000, 0, 0, 0);
        forwarded(sub.forward(0, &meta(1, KEY, t)));
        sub.set_paused(true);
        sub.set_paused(false);
        assert_eq!(sub.wants_keyframe(), Some(0));
        assert_eq!(
            sub.forward(0, &meta(2, DELTA, t)),
            Verdict::Drop(DropReason::WaitingForKeyframe)
        );
        assert_eq!(forwarded(sub.forward(0, &meta(3, KEY, t))).0, 1);
    }
}
