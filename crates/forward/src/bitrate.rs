//! How fast a simulcast layer arrives: the bitrate that layer allocation weighs against a
//! subscriber's downlink estimate.

use std::time::{Duration, Instant};

/// Length of one measuring window.
pub const WINDOW: Duration = Duration::from_millis(500);

/// Bytes on the wire per packet beyond the RTP packet itself: IPv4 (20) and UDP (8) headers
/// and the SRTP authentication tag (10 for AES-CM with HMAC-SHA1-80; AEAD-GCM's is 16, the
/// difference is noise next to a video packet).
pub const PACKET_OVERHEAD: usize = 38;

/// A layer's arrival rate, over the last completed [`WINDOW`] (smoothed with the ones before).
///
/// Counting is one comparison and one addition per packet; nothing is allocated.
#[derive(Clone, Debug, Default)]
pub struct Bitrate {
    window_start: Option<Instant>,
    window_bytes: u64,
    bits_per_second: u64,
}

impl Bitrate {
    /// Counts a packet of `bytes` (RTP header and payload) arriving at `now`.
    pub fn add(&mut self, now: Instant, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            self.close(elapsed);
            self.window_start = Some(now);
        }
        self.window_bytes += (bytes + PACKET_OVERHEAD) as u64;
    }

    /// The rate in bits per second as of `now`: 0 before a window closed, and once nothing
    /// arrived for two windows (a layer the publisher stopped sending costs nothing).
    pub fn bits_per_second(&self, now: Instant) -> u64 {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < 2 * WINDOW => {
                self.bits_per_second
            }
            _ => 0,
        }
    }

    fn close(&mut self, elapsed: Duration) {
        let measured = (self.window_bytes * 8 * 1_000_000) / (elapsed.as_micros().max(1) as u64);
        // The first window counts alone; then each new one has half the say, so that one
        // keyframe (several times a frame's size) does not swing the allocation.
        self.bits_per_second = if self.bits_per_second == 0 {
            measured
        } else {
            (self.bits_per_second + measured) / 2
        };
        self.window_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_measures_its_rate() {
        let start = Instant::now();
        let mut rate = Bitrate::default();
        // 100 packets of 962 bytes a second: (962 + 38) * 8 * 100 = 800 kb/s.
        for i in 0..300u64 {
            rate.add(start + Duration::from_millis(i * 10), 962);
        }
        let now = start + Duration::from_millis(2_990);
        let measured = rate.bits_per_second(now);
        assert!(
            (780_000..=820_000).contains(&measured),
            "measured {measured} b/s"
        );
    }

    #[test]
    fn a_layer_that_stopped_costs_nothing() {
        let start = Instant::now();
        let mut rate = Bitrate::default();
        for i in 0..100u64 {
            rate.add(start + Duration::from_millis(i * 10), 962);
        }
        assert!(rate.bits_per_second(start + Duration::from_millis(1_000)) > 0);
        assert_eq!(rate.bits_per_second(start + Duration::from_secs(3)), 0);
    }

    #[test]
    fn nothing_is_known_before_a_window_closed() {
        let start = Instant::now();
        let mut rate = Bitrate::default();
        rate.add(start, 1_000);
        assert_eq!(rate.bits_per_second(start + Duration::from_millis(100)), 0);
    }
}
