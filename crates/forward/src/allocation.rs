//! Sharing a subscriber's downlink among its video subscriptions, and the caution with which
//! a subscription goes back up once the downlink allows it.
//!
//! [`allocate`] runs at every layer review for each subscriber whose downlink has an estimate:
//! audio is served first (its rate is taken off the estimate by the caller), then every video
//! subscription gets its lowest layer, then, in priority order (the active speaker, then the
//! largest rendering), each is raised to the best layer that still fits, never above the one
//! its rendered size asks for. [`Ceiling`] then holds each subscription's allowed layer:
//! lowered at once, raised only after the estimate allowed the higher layer for a while, and
//! for longer each time a raise had to be taken back soon after.

use crate::layer::LayerId;
use std::time::{Duration, Instant};

/// One video subscription of a subscriber, as allocation sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// The layer its rendered size asks for (see [`crate::layer::select`]).
    pub wanted: LayerId,
    /// Each layer's arrival rate in bits per second, lowest layer first; 0 for a layer that
    /// does not arrive (it is skipped).
    pub rates: Vec<u64>,
    /// Whether the subscription shows the conference's active speaker.
    pub speaker: bool,
    /// The height it renders at, in pixels (larger first among equals).
    pub height: u32,
}

/// The layer each of `wants` fits in `budget` bits per second, in the order of `wants`.
///
/// Every subscription keeps at least its lowest arriving layer (a thin downlink gets small
/// video rather than none); the rest of the budget raises subscriptions one by one in
/// priority order, each to the best layer up to its `wanted` whose rate fits what is left.
/// Layers of rate 0 (not arriving) are skipped, but for `wanted` itself when no rate is known
/// yet (then it costs nothing); a layer above `wanted` is never given.
pub fn allocate(budget: u64, wants: &[Want]) -> Vec<LayerId> {
    let lowest = |want: &Want| -> LayerId {
        (0..want.rates.len())
            .find(|&layer| want.rates[layer] > 0)
            .map_or(want.wanted, |layer| (layer as LayerId).min(want.wanted))
    };
    let rate = |want: &Want, layer: LayerId| want.rates.get(usize::from(layer)).copied();
    let mut given: Vec<LayerId> = wants.iter().map(lowest).collect();
    let mut left = wants
        .iter()
        .zip(&given)
        .fold(budget, |left, (want, &layer)| {
            left.saturating_sub(rate(want, layer).unwrap_or(0))
        });
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_by_key(|&i| (!wants[i].speaker, std::cmp::Reverse(wants[i].height)));
    for i in order {
        let want = &wants[i];
        let current = rate(want, given[i]).unwrap_or(0);
        let best = (given[i]..=want.wanted).rev().find(|&layer| {
            rate(want, layer).is_some_and(|r| r > 0 || layer == want.wanted)
                && rate(want, layer).unwrap_or(0) <= left + current
        });
        if let Some(layer) = best {
            left = (left + current).saturating_sub(rate(want, layer).unwrap_or(0));
            given[i] = layer;
        }
    }
    given
}

/// How long a raise is probed (the downlink carries the higher layer's rate, padded with
/// probes, without congestion) before it is made.
pub const RAISE_AFTER: Duration = Duration::from_secs(2);
/// A raise taken back within this time failed, like a probe that met congestion.
pub const FAILED_WITHIN: Duration = Duration::from_secs(5);
/// The wait before probing again after the first failure; it doubles with each failure in a
/// row, up to [`MAX_RETRY_AFTER`].
pub const RETRY_AFTER: Duration = Duration::from_secs(4);
/// The longest wait before probing again: a downlink freed after a long limit is probed
/// within this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(8);
/// After this long without a failure, the wait is back to [`RETRY_AFTER`].
pub const FORGIVE_AFTER: Duration = Duration::from_secs(30);

/// Why a subscription's allowed layer changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Lowered: the downlink no longer carries the layer it had.
    Congestion,
    /// Raised: the downlink carried the higher layer's rate for [`RAISE_AFTER`].
    Recovery,
}

/// The highest layer a subscription may have, given the allocations proposed over time.
///
/// A subscription is not limited until allocation first proposes less than the layer its size
/// asks for; then a lower proposal is taken at once. A higher one starts a probe (see
/// [`Ceiling::probing`]):
/// the caller pads the subscriber's stream up to the higher layer's rate, and if the proposal
/// holds for [`RAISE_AFTER`] the layer is raised, one step; back at the asked-for layer, the
/// subscription is no longer limited. A probe the proposal drops out of,
/// or a raise taken back within [`FAILED_WITHIN`], is a failure: no probe starts again for
/// [`RETRY_AFTER`], doubling with each failure in a row.
#[derive(Clone, Debug, Default)]
pub struct Ceiling {
    allowed: Option<LayerId>,
    /// Since when a raise is probed, and the least layer proposed since.
    probe: Option<(Instant, LayerId)>,
    last_raise: Option<Instant>,
    /// When the last failure was, and the wait it set.
    failure: Option<(Instant, Duration)>,
}

impl Ceiling {
    /// The layer the subscription may have, while allocation limits it.
    pub fn allowed(&self) -> Option<LayerId> {
        self.allowed
    }

    /// Keeps the layer ids pointing at the same layers when the publication gains a layer at
    /// index `at` (see [`crate::Subscription::layer_inserted`]).
    pub fn layer_inserted(&mut self, at: LayerId) {
        if let Some(allowed) = self.allowed.as_mut()
            && *allowed >= at
        {
            *allowed = allowed.saturating_add(1);
        }
        if let Some((_, layer)) = self.probe.as_mut()
            && *layer >= at
        {
            *layer = layer.saturating_add(1);
        }
    }

    /// The layer a raise is being probed for, if one is.
    pub fn probing(&self) -> Option<LayerId> {
        self.probe.map(|(_, layer)| layer)
    }

    /// Ends the probe under way, if any, as failed (the downlink lost packets meanwhile): no
    /// probe starts again for a while. Returns whether there was one.
    pub fn abort_probe(&mut self, now: Instant) -> bool {
        let probing = self.probe.take().is_some();
        if probing {
            self.fail(now);
        }
        probing
    }

    /// Takes allocation's `proposed` layer at `now` for a subscription whose size asks for
    /// `wanted`; returns the change to the allowed layer, if any.
    pub fn propose(&mut self, now: Instant, proposed: LayerId, wanted: LayerId) -> Option<Change> {
        if self.allowed.is_some_and(|allowed| wanted <= allowed) {
            // The subscription asks for no more than it may have: the limit does not bite.
            self.allowed = None;
            self.probe = None;
        }
        let Some(allowed) = self.allowed else {
            if proposed >= wanted {
                return None;
            }
            self.allowed = Some(proposed);
            return Some(Change::Congestion);
        };
        if proposed <= allowed {
            if self.probe.take().is_some() {
                self.fail(now);
            }
            if proposed == allowed {
                return None;
            }
            if self
                .last_raise
                .is_some_and(|at| now.saturating_duration_since(at) < FAILED_WITHIN)
            {
                self.fail(now);
            }
            self.allowed = Some(proposed);
            return Some(Change::Congestion);
        }
        let (since, least) = match self.probe {
            Some((since, least)) => (since, least.min(proposed)),
            None => {
                if let Some((at, wait)) = self.failure
                    && now.saturating_duration_since(at) < wait
                {
                    return None;
                }
                (now, proposed)
            }
        };
        if now.saturating_duration_since(since) < RAISE_AFTER {
            self.probe = Some((since, least));
            return None;
        }
        // One step at a time, to the least proposed all along; at the asked-for layer, no
        // longer limited.
        let raised = least.min(allowed + 1);
        self.allowed = (raised < wanted).then_some(raised);
        self.probe = None;
        self.last_raise = Some(now);
        Some(Change::Recovery)
    }

    fn fail(&mut self, now: Instant) {
        let wait = match self.failure {
            Some((at, wait)) if now.saturating_duration_since(at) < FORGIVE_AFTER => {
                (wait * 2).min(MAX_RETRY_AFTER)
            }
            _ => RETRY_AFTER,
        };
        self.failure = Some((now, wait));
        self.last_raise = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three layers at 150, 500 and 1,500 kb/s.
    fn want(wanted: LayerId, speaker: bool, height: u32) -> Want {
        Want {
            wanted,
            rates: vec![150_000, 500_000, 1_500_000],
            speaker,
            height,
        }
    }

    #[test]
    fn a_thin_downlink_gets_the_lowest_layer() {
        assert_eq!(allocate(400_000, &[want(2, false, 720)]), vec![0]);
    }

    #[test]
    fn a_wide_downlink_gets_what_was_asked_and_no_more() {
        assert_eq!(allocate(10_000_000, &[want(2, false, 720)]), vec![2]);
        assert_eq!(allocate(10_000_000, &[want(1, false, 360)]), vec![1]);
    }

    #[test]
    fn even_an_empty_budget_leaves_everyone_the_lowest_layer() {
        let wants = [want(2, false, 720), want(2, false, 720)];
        assert_eq!(allocate(0, &wants), vec![0, 0]);
    }

    #[test]
    fn the_speaker_is_raised_first_then_the_largest() {
        // 150 + 150 + 150 = 450 kb/s for the lowest layers; 1,000 kb/s left raises one to
        // 500 (the speaker); 650 left raises the larger of the others to 500.
        let wants = [want(2, false, 180), want(2, true, 360), want(2, false, 720)];
        assert_eq!(allocate(1_450_000, &wants), vec![0, 1, 1]);
        assert_eq!(allocate(1_100_000, &wants), vec![0, 1, 0]);
    }

    #[test]
    fn layers_that_do_not_arrive_are_skipped() {
        let stopped_low = Want {
            wanted: 2,
            rates: vec![0, 500_000, 1_500_000],
            speaker: false,
            height: 720,
        };
        assert_eq!(
            allocate(400_000, std::slice::from_ref(&stopped_low)),
            vec![1]
        );
        assert_eq!(allocate(2_000_000, &[stopped_low]), vec![2]);
        let stopped_middle = Want {
            wanted: 2,
            rates: vec![150_000, 0, 1_500_000],
            speaker: false,
            height: 720,
        };
        assert_eq!(allocate(1_000_000, &[stopped_middle]), vec![0]);
    }

    #[test]
    fn a_ceiling_lowers_at_once_and_raises_after_a_probe_one_step_at_a_time() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut ceiling = Ceiling::default();
        assert_eq!(ceiling.propose(at(0), 2, 2), None);
        assert_eq!(
            ceiling.allowed(),
            None,
            "not limited while it gets what it asks for"
        );
        assert_eq!(ceiling.propose(at(250), 0, 2), Some(Change::Congestion));
        assert_eq!(ceiling.allowed(), Some(0));
        assert_eq!(ceiling.probing(), None);
        assert_eq!(ceiling.propose(at(500), 2, 2), None);
        assert_eq!(ceiling.probing(), Some(2));
        assert_eq!(ceiling.propose(at(2_250), 2, 2), None);
        assert_eq!(ceiling.propose(at(2_500), 2, 2), Some(Change::Recovery));
        assert_eq!(ceiling.allowed(), Some(1));
        assert_eq!(ceiling.probing(), None);
        assert_eq!(
            ceiling.propose(at(2_750), 2, 2),
            None,
            "each step is probed again"
        );
        assert_eq!(ceiling.propose(at(4_750), 2, 2), Some(Change::Recovery));
        assert_eq!(
            ceiling.allowed(),
            None,
            "back at the asked-for layer: not limited"
        );
        // Asking for a larger size later is not probed: nothing limits the subscription.
        assert_eq!(ceiling.propose(at(5_000), 2, 2), None);
        // Limited to h, then asking for no more than h: no longer limited.
        assert_eq!(ceiling.propose(at(6_000), 1, 2), Some(Change::Congestion));
        assert_eq!(ceiling.propose(at(6_250), 1, 1), None);
        assert_eq!(ceiling.allowed(), None);
    }

    #[test]
    fn a_layer_arriving_below_shifts_the_ceiling_with_it() {
        let start = Instant::now();
        let mut ceiling = Ceiling::default();
        ceiling.propose(start, 0, 1);
        ceiling.layer_inserted(0);
        assert_eq!(
            ceiling.allowed(),
            Some(1),
            "still the same layer, now at index 1"
        );
        ceiling.layer_inserted(2);
        assert_eq!(ceiling.allowed(), Some(1), "a layer above moves nothing");
    }

    #[test]
    fn failed_probes_wait_longer_each_time_until_forgiven() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut ceiling = Ceiling::default();
        ceiling.propose(at(0), 0, 2);
        ceiling.propose(at(0), 1, 2);
        // The probe met congestion.
        assert_eq!(ceiling.propose(at(1_000), 0, 2), None);
        assert_eq!(ceiling.probing(), None);
        // No probe for 4 s.
        assert_eq!(ceiling.propose(at(4_500), 1, 2), None);
        assert_eq!(ceiling.probing(), None);
        assert_eq!(ceiling.propose(at(5_000), 1, 2), None);
        assert_eq!(ceiling.probing(), Some(1));
        // Fails again: 8 s now.
        ceiling.propose(at(5_500), 0, 2);
        ceiling.propose(at(13_000), 1, 2);
        assert_eq!(ceiling.probing(), None);
        ceiling.propose(at(13_500), 1, 2);
        assert_eq!(ceiling.probing(), Some(1));
        assert_eq!(ceiling.propose(at(15_500), 1, 2), Some(Change::Recovery));
        // A raise taken back soon is a failure too (still 8 s: the longest wait).
        assert_eq!(ceiling.propose(at(16_000), 0, 2), Some(Change::Congestion));
        ceiling.propose(at(23_000), 1, 2);
        assert_eq!(ceiling.probing(), None);
        ceiling.propose(at(24_000), 1, 2);
        assert_eq!(ceiling.probing(), Some(1));
        // Failing 40 s after the last failure is forgiven: the wait is 4 s again.
        ceiling.propose(at(56_000), 0, 2);
        ceiling.propose(at(59_500), 1, 2);
        assert_eq!(ceiling.probing(), None);
        ceiling.propose(at(60_000), 1, 2);
        assert_eq!(ceiling.probing(), Some(1));
        // A probe ended by loss is a failure like the others (8 s now).
        assert!(ceiling.abort_probe(at(60_500)));
        assert!(!ceiling.abort_probe(at(60_500)), "no probe left");
        ceiling.propose(at(68_000), 1, 2);
        assert_eq!(ceiling.probing(), None);
        ceiling.propose(at(68_500), 1, 2);
        assert_eq!(ceiling.probing(), Some(1));
    }
}
