//! Which of a layer's recent packets arrived already, so that a packet arriving twice is
//! forwarded once.
//!
//! A publisher sends some packets twice: a retransmission (RTX, RFC 4588) the focus asked for
//! of a packet that was late rather than lost, and — in bulk — the retransmissions a browser
//! sends as bandwidth probes while it ramps its rate up (it pads with recent media packets
//! over RTX instead of empty padding). After RTX is unwrapped each looks like the original
//! packet; forwarded again, the subscriber's SRTP refuses it as a replay (RFC 3711 §3.3.2) and
//! the focus has spent a send on nothing. The window below remembers the last
//! [`WINDOW`] sequence numbers of a layer, as SRTP's replay list does.

/// How many sequence numbers back from the newest the window remembers: about 1.5 s of a
/// 720p layer, longer than a retransmission of a lost packet takes to arrive.
pub const WINDOW: u16 = 256;

const WORDS: usize = WINDOW as usize / 64;

/// The sequence numbers of one layer received lately.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// The newest sequence number received, once one was.
    newest: Option<u16>,
    /// The sequence number of the packet before, whatever its place.
    last: Option<u16>,
    /// Bit `d` (word `d / 64`, bit `d % 64`) is set when `newest - d` was received.
    seen: [u64; WORDS],
}

impl ReplayWindow {
    /// Records `seq` (RFC 3550 §5.1, 16-bit and wrapping); returns whether it arrives for the
    /// first time. A number further back than [`WINDOW`] is not remembered and counts as a
    /// first arrival (what to do with it is the rewriter's business); two such in sequence
    /// start the window again from them, since a restart of the publisher's numbering looks
    /// like that, and its packets must not be taken for the old numbering's.
    ///
    /// Limit: a restart landing less than [`WINDOW`] behind the newest number meets numbers
    /// the old numbering used, and its packets are taken for repeats until it passes the old
    /// newest (at most [`WINDOW`] packets; an encoder restart keeping its SSRC and landing
    /// there is rare: 1 in 256 of such restarts).
    pub fn first(&mut self, seq: u16) -> bool {
        let previous = self.last.replace(seq);
        let Some(newest) = self.newest else {
            self.newest = Some(seq);
            self.seen = [0; WORDS];
            self.set(0);
            return true;
        };
        let ahead = seq.wrapping_sub(newest);
        if ahead != 0 && ahead < 0x8000 {
            self.shift(ahead);
            self.newest = Some(seq);
            self.set(0);
            return true;
        }
        let behind = newest.wrapping_sub(seq);
        if behind >= WINDOW {
            if previous == Some(seq.wrapping_sub(1)) {
                self.newest = Some(seq);
                self.seen = [0; WORDS];
                self.set(0);
            }
            return true;
        }
        if self.get(behind) {
            return false;
        }
        self.set(behind);
        true
    }

    fn get(&self, distance: u16) -> bool {
        let d = usize::from(distance);
        self.seen[d / 64] & (1 << (d % 64)) != 0
    }

    fn set(&mut self, distance: u16) {
        let d = usize::from(distance);
        self.seen[d / 64] |= 1 << (d % 64);
    }

    /// Moves every bit `by` places further back (older), forgetting what falls off the end.
    fn shift(&mut self, by: u16) {
        if by >= WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        let (words, bits) = (usize::from(by) / 64, u32::from(by) % 64);
        for i in (0..WORDS).rev() {
            let from = i.checked_sub(words);
            let high = from.map_or(0, |f| self.seen[f] << bits);
            let low = match from.and_then(|f| f.checked_sub(1)) {
                Some(f) if bits != 0 => self.seen[f] >> (64 - bits),
                _ => 0,
            };
            self.seen[i] = high | low;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_arriving_twice_is_first_once() {
        let mut window = ReplayWindow::default();
        for seq in 100..200 {
            assert!(window.first(seq), "{seq}");
        }
        // Probes: recent packets again.
        for seq in 150..200 {
            assert!(!window.first(seq), "{seq} again");
        }
        // A lost packet repaired late is a first arrival; its second copy is not.
        let mut window = ReplayWindow::default();
        for seq in (1000..1100).filter(|s| *s != 1050) {
            assert!(window.first(seq));
        }
        assert!(window.first(1050));
        assert!(!window.first(1050));
    }

    #[test]
    fn the_window_follows_the_newest_across_the_wrap_and_forgets_what_falls_behind() {
        let mut window = ReplayWindow::default();
        for seq in (65_000..=u16::MAX).chain(0..300) {
            assert!(window.first(seq), "{seq}");
        }
        // Within the window (299 is the newest): seen.
        for seq in [299, 100, 0, u16::MAX - 20 + 1] {
            let behind = 299u16.wrapping_sub(seq);
            assert_eq!(
                window.first(seq),
                behind >= WINDOW,
                "{seq} ({behind} behind)"
            );
        }
        // Further back than the window: not remembered, so let through.
        assert!(window.first(299u16.wrapping_sub(WINDOW)));
        assert!(window.first(40));
    }

    #[test]
    fn a_restart_far_behind_starts_the_window_again() {
        let mut window = ReplayWindow::default();
        for seq in 9_000..=10_000 {
            assert!(window.first(seq));
        }
        // The numbering restarts at 5000: every packet of it is a first arrival, including
        // those reaching numbers the old numbering used lately (9745..=10000).
        for seq in 5_000..=10_100 {
            assert!(window.first(seq), "{seq}");
        }
        // And repeats of the new numbering are caught again.
        assert!(!window.first(10_050));
        // A single very late packet does not move the window.
        let mut window = ReplayWindow::default();
        for seq in 100..=1_000 {
            assert!(window.first(seq));
        }
        assert!(window.first(200));
        assert!(!window.first(999));
    }

    #[test]
    fn gaps_and_jumps_keep_what_is_still_in_the_window() {
        let mut window = ReplayWindow::default();
        for seq in [10u16, 11, 12] {
            assert!(window.first(seq));
        }
        // Jumps of every size: the packets still within the window stay seen, the gap's
        // numbers arrive for the first time.
        for jump in [1u16, 63, 64, 65, 127, 128, 200] {
            let mut w = window;
            let newest = 12 + jump;
            assert!(w.first(newest));
            for seq in [10u16, 11, 12] {
                let behind = newest - seq;
                assert_eq!(!w.first(seq), behind < WINDOW, "jump {jump}: {seq}");
            }
            if jump > 1 {
                assert!(w.first(13), "jump {jump}: the gap's first number");
            }
        }
        // A jump past the window forgets everything.
        assert!(window.first(12 + WINDOW));
        assert!(window.first(12));
    }
}
