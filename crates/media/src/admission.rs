//! Which of a device's inbound SSRCs reach the WebRTC stack.
//!
//! The stack keeps SRTP state for every SSRC it is handed, authenticated or not, and never
//! frees it; a device that sends each packet with a new SSRC would grow the focus's memory
//! without bound. So each call admits a bounded number of distinct SSRCs (RTP media SSRCs and
//! RTCP sender SSRCs alike), far more than a device publishes (an audio track, a few simulcast
//! layers with their RTX streams, a screen share), and drops the datagrams of any further one
//! before the stack sees them. The bound grows by [`SSRCS_PER_STREAM`] with every stream the
//! focus sends the call (whose reports come from new SSRCs) and, for a link with another focus,
//! with every track it subscribed to over it. Admitted SSRCs are never forgotten, since their state in the
//! stack is not either; a device that restarts its encoder gets its new SSRC admitted while it
//! is under the bound.
//!
//! The SSRC is read from the datagram itself: SRTP and SRTCP leave the RTP header and the RTCP
//! sender SSRC in clear (RFC 3711 §3.1, §3.4), and RTP and RTCP are told apart on one port by
//! the packet type (RFC 5761 §4).

/// Most distinct SSRCs one call may send.
pub const MAX_SSRCS_PER_CALL: usize = 32;

/// SSRCs more a call may send per stream the focus sends it or it asked for over a link: a
/// WebRTC receiver reports on each stream it receives (media and RTX) from a sender SSRC of its
/// own, and a link sends the media and RTX of every track subscribed over it.
pub const SSRCS_PER_STREAM: usize = 2;

/// What an inbound datagram is, for admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// (S)RTP with this SSRC and payload type.
    Rtp {
        /// The packet's SSRC.
        ssrc: u32,
        /// The packet's payload type.
        payload_type: u8,
    },
    /// (S)RTCP whose first packet's sender is this SSRC.
    Rtcp(u32),
    /// STUN, DTLS, or too short to tell.
    Other,
}

/// Classifies a datagram by its first bytes (RFC 7983 §7 for the first byte, RFC 5761 §4 for
/// RTP against RTCP).
pub fn classify(datagram: &[u8]) -> Inbound {
    let [b0, b1, ..] = *datagram else {
        return Inbound::Other;
    };
    if !(128..=191).contains(&b0) {
        return Inbound::Other;
    }
    let word = |at: usize| {
        datagram
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    if (192..=223).contains(&b1) {
        word(4).map_or(Inbound::Other, Inbound::Rtcp)
    } else {
        word(8).map_or(Inbound::Other, |ssrc| Inbound::Rtp {
            ssrc,
            payload_type: b1 & 0x7f,
        })
    }
}

/// The SSRCs a call has admitted.
#[derive(Clone, Debug)]
pub struct Admission {
    admitted: rustc_hash::FxHashSet<u32>,
    limit: usize,
}

impl Default for Admission {
    /// A new call: [`MAX_SSRCS_PER_CALL`].
    fn default() -> Self {
        Self {
            admitted: rustc_hash::FxHashSet::default(),
            limit: MAX_SSRCS_PER_CALL,
        }
    }
}

impl Admission {
    /// Admits [`SSRCS_PER_STREAM`] more SSRCs per stream in `streams`: ones the focus started
    /// sending the call, or, on a link, tracks it subscribed to over it.
    pub fn allow_streams(&mut self, streams: usize) {
        self.limit = self
            .limit
            .saturating_add(streams.saturating_mul(SSRCS_PER_STREAM));
    }

    /// Whether a datagram from `ssrc` may reach the stack: an admitted SSRC may, a new one is
    /// admitted while fewer than the limit are.
    pub fn admit(&mut self, ssrc: u32) -> bool {
        if self.admitted.contains(&ssrc) {
            return true;
        }
        if self.admitted.len() >= self.limit {
            return false;
        }
        self.admitted.insert(ssrc);
        true
    }

    /// How many SSRCs are admitted.
    pub fn len(&self) -> usize {
        self.admitted.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.admitted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_rtp_rtcp_and_the_rest() {
        let rtp = [0x80, 111, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1];
        assert_eq!(
            classify(&rtp),
            Inbound::Rtp {
                ssrc: 0xdead_beef,
                payload_type: 111
            }
        );
        let rtp_marker = [0x90, 0x80 | 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
        assert_eq!(
            classify(&rtp_marker),
            Inbound::Rtp {
                ssrc: 7,
                payload_type: 96
            }
        );
        let rtcp = [0x81, 201, 0, 7, 0, 0, 0, 9, 0, 0];
        assert_eq!(classify(&rtcp), Inbound::Rtcp(9));
        assert_eq!(classify(&[0x00, 0x01, 0, 0]), Inbound::Other, "STUN");
        assert_eq!(classify(&[22, 254, 253]), Inbound::Other, "DTLS");
        assert_eq!(classify(&[0x80, 111, 0]), Inbound::Other, "short");
        assert_eq!(classify(&[]), Inbound::Other);
    }

    #[test]
    fn admits_a_bounded_number_of_ssrcs_and_keeps_them() {
        let mut admission = Admission::default();
        for ssrc in 0..MAX_SSRCS_PER_CALL as u32 {
            assert!(admission.admit(ssrc));
        }
        assert!(!admission.admit(1_000), "one more is refused");
        assert!(admission.admit(3), "an admitted one still passes");
        assert!(!admission.admit(1_001));
        assert_eq!(admission.len(), MAX_SSRCS_PER_CALL);
        // A stream the focus starts sending lets the receiver's reports in.
        admission.allow_streams(1);
        assert!(admission.admit(1_002));
        assert!(admission.admit(1_003));
        assert!(!admission.admit(1_004));
    }
}
