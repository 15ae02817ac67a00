//! Lock-free measurement types that Cascade's planes record into and its metrics endpoint reads.
//!
//! Recording is a couple of relaxed atomic additions, so it is fit for any thread; turning the
//! numbers into Prometheus families happens only when they are scraped.

#![warn(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bucket upper bounds (seconds) for things that take milliseconds to seconds, such as a call
/// going from invite to its first media packet.
pub const CONNECT_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0,
];

/// Bucket upper bounds (seconds) for HTTP requests that may long-poll, such as `/sync`.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0,
];

/// A histogram with fixed buckets whose observations are relaxed atomic additions.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; the last one counts observations above every bound.
    buckets: Box<[AtomicU64]>,
    /// The sum of the observations, in units of `1 / scale`.
    sum_micros: AtomicU64,
    count: AtomicU64,
    /// Units of the sum per unit of observation: 10⁶ for durations (microseconds), 1 for
    /// plain values ([`Histogram::of_values`]).
    scale: f64,
}

/// A consistent-enough copy of a [`Histogram`] for exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)` per bucket, `+Inf` excluded.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in seconds (or the units of a [`Histogram::of_values`]).
    pub sum_secs: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram with the given ascending bucket upper bounds (seconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
            scale: 1e6,
        }
    }

    /// An empty histogram of plain values (bits per second, say) with the given ascending
    /// bucket upper bounds, observed with [`Histogram::observe_value`]; its sum is kept in
    /// whole units.
    pub fn of_values(bounds: &'static [f64]) -> Self {
        Self {
            scale: 1.0,
            ..Self::new(bounds)
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        self.observe_value(value.as_secs_f64());
    }

    /// Records one observation of `value` (seconds for a histogram made by
    /// [`Histogram::new`]); negative and non-finite values count as 0.
    pub fn observe_value(&self, value: f64) {
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        let index = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Relaxed);
        }
        // `as` saturates: an observation beyond u64 adds u64::MAX units.
        self.sum_micros
            .fetch_add((value * self.scale) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Adds this histogram's counts into `into` (which must use the same buckets); used to sum
    /// the histograms of several event loops.
    pub fn add_to(&self, into: &mut HistogramSnapshot) {
        let mine = self.snapshot();
        if into.buckets.is_empty() {
            *into = mine;
            return;
        }
        for (total, (_, n)) in into.buckets.iter_mut().zip(mine.buckets) {
            total.1 += n;
        }
        into.sum_secs += mine.sum_secs;
        into.count += mine.count;
    }

    /// The current counts, cumulative per bucket as Prometheus wants them.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(self.buckets.iter())
            .map(|(bound, n)| {
                running += n.load(Relaxed);
                (*bound, running)
            })
            .collect();
        let above = self
            .buckets
            .last()
            .map(|n| n.load(Relaxed))
            .unwrap_or_default();
        HistogramSnapshot {
            buckets,
            sum_secs: self.sum_micros.load(Relaxed) as f64 / self.scale,
            // Never report fewer observations than the buckets hold (the loads are not atomic
            // together).
            count: self.count.load(Relaxed).max(running + above),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_sums_add_up() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(100));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.1, 2), (1.0, 3)]);
        assert_eq!(s.count, 4);
        assert!((s.sum_secs - 5.65).abs() < 1e-9);
        let mut total = HistogramSnapshot {
            buckets: Vec::new(),
            sum_secs: 0.0,
            count: 0,
        };
        h.add_to(&mut total);
        h.add_to(&mut total);
        assert_eq!(total.buckets, vec![(0.1, 4), (1.0, 6)]);
        assert_eq!(total.count, 8);
    }

    #[test]
    fn values_keep_their_units() {
        let h = Histogram::of_values(&[1e5, 1e6]);
        h.observe_value(400_000.0);
        h.observe_value(3_000_000.0);
        h.observe_value(f64::NAN);
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1e5, 1), (1e6, 2)]);
        assert_eq!(s.count, 3);
        assert!((s.sum_secs - 3_400_000.0).abs() < 1e-6);
    }
}
