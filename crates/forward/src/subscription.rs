//! One subscriber's view of one publication: keyframe gating plus rewriting.

use crate::codec::Codec;
use crate::keyframe::is_keyframe;
use crate::rewrite::Rewriter;

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
}

/// Why a packet was not forwarded to a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber has not received a keyframe yet and this packet does not start one.
    WaitingForKeyframe,
    /// The subscription is paused (muted or unsubscribed).
    Paused,
}

impl DropReason {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WaitingForKeyframe => "waiting_for_keyframe",
            Self::Paused => "paused",
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
    },
    /// Do not send it.
    Drop(DropReason),
}

/// Forwarding state of one subscriber for one publication.
#[derive(Clone, Debug)]
pub struct Subscription {
    codec: Codec,
    rewriter: Rewriter,
    waiting_for_keyframe: bool,
    paused: bool,
}

impl Subscription {
    /// A new subscription; video waits for a keyframe before the first packet goes out.
    pub fn new(codec: Codec, first_seq: u16, first_ts: u32) -> Self {
        Self {
            codec,
            rewriter: Rewriter::new(first_seq, first_ts),
            waiting_for_keyframe: codec.needs_keyframe(),
            paused: false,
        }
    }

    /// Whether the subscriber still waits for a keyframe (the publisher should be asked for one).
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_for_keyframe
    }

    /// Pauses or resumes forwarding; resuming video waits for a keyframe again.
    pub fn set_paused(&mut self, paused: bool, ts_gap: u32) {
        if self.paused && !paused {
            self.waiting_for_keyframe = self.codec.needs_keyframe();
            self.rewriter.switch_source(ts_gap);
        }
        self.paused = paused;
    }

    /// Decides about one packet of the publication.
    pub fn forward(&mut self, packet: &PacketMeta<'_>) -> Verdict {
        if self.paused {
            return Verdict::Drop(DropReason::Paused);
        }
        if self.waiting_for_keyframe {
            if !is_keyframe(self.codec, packet.payload) {
                return Verdict::Drop(DropReason::WaitingForKeyframe);
            }
            self.waiting_for_keyframe = false;
        }
        let (seq, timestamp) = self.rewriter.rewrite(packet.seq, packet.timestamp);
        Verdict::Forward { seq, timestamp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: u16, payload: &[u8]) -> PacketMeta<'_> {
        PacketMeta {
            seq,
            timestamp: u32::from(seq) * 3000,
            marker: false,
            payload,
        }
    }

    #[test]
    fn video_starts_at_a_keyframe_with_continuous_numbers() {
        let mut sub = Subscription::new(Codec::Vp8, 1000, 0);
        assert_eq!(
            sub.forward(&meta(1, &[0x10, 0x01])),
            Verdict::Drop(DropReason::WaitingForKeyframe)
        );
        assert!(sub.waiting_for_keyframe());
        assert_eq!(
            sub.forward(&meta(2, &[0x10, 0x00])),
            Verdict::Forward {
                seq: 1000,
                timestamp: 0
            }
        );
        assert_eq!(
            sub.forward(&meta(3, &[0x00, 0x55])),
            Verdict::Forward {
                seq: 1001,
                timestamp: 3000
            }
        );
    }

    #[test]
    fn audio_forwards_at_once_and_pause_resumes_continuously() {
        let mut sub = Subscription::new(Codec::Opus, 7, 0);
        assert_eq!(
            sub.forward(&meta(50, &[1])),
            Verdict::Forward {
                seq: 7,
                timestamp: 0
            }
        );
        sub.set_paused(true, 0);
        assert_eq!(
            sub.forward(&meta(51, &[1])),
            Verdict::Drop(DropReason::Paused)
        );
        sub.set_paused(false, 960);
        assert_eq!(
            sub.forward(&meta(90, &[1])),
            Verdict::Forward {
                seq: 8,
                timestamp: 960
            }
        );
    }
}
