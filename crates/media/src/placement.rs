//! Which event loop serves which conference.
//!
//! A conference lives on one loop, so that its packets never leave the thread they arrived on. A
//! new conference goes to the loop serving the fewest conferences (a hash of its key left two
//! conferences on one loop half of the time with two loops, one core idle); it stays there while
//! it has calls, and is forgotten once it has none, so its next call may start it elsewhere.
//!
//! The dispatcher places each `Open` ([`Placement::place`]); a loop reports a conference it has
//! no call of left ([`Placement::ended`]) with the number of `Open`s for it it has processed since
//! its last report. An `Open` already on its way to that loop keeps the conference placed there
//! until the loop has processed (and reported) it too, so no conference is ever split.

use std::collections::HashMap;

/// Where each conference is served (sans-IO; the media plane holds it behind a lock taken only
/// by the dispatcher and by loops when a conference ends, never on the packet path).
#[derive(Debug, Default)]
pub struct Placement {
    loops: usize,
    conferences: HashMap<String, Placed>,
}

/// One placed conference.
#[derive(Debug)]
struct Placed {
    /// The loop serving it.
    index: usize,
    /// `Open`s sent to that loop and not yet reported back by it.
    in_flight: u64,
}

impl Placement {
    /// Placement over `loops` event loops (at least one).
    pub fn new(loops: usize) -> Self {
        Self {
            loops: loops.max(1),
            conferences: HashMap::new(),
        }
    }

    /// The loop an `Open` for conference `key` goes to: the conference's loop if it is placed,
    /// else the loop with the fewest conferences (the lowest index on a tie).
    pub fn place(&mut self, key: &str) -> usize {
        if let Some(placed) = self.conferences.get_mut(key) {
            placed.in_flight += 1;
            return placed.index;
        }
        let mut counts = vec![0usize; self.loops];
        for placed in self.conferences.values() {
            counts[placed.index] += 1;
        }
        let index = (0..self.loops).min_by_key(|&i| counts[i]).unwrap_or(0);
        self.conferences.insert(
            key.to_owned(),
            Placed {
                index,
                in_flight: 1,
            },
        );
        index
    }

    /// The loop conference `key` is placed on, if it is (nothing is placed by asking).
    pub fn find(&self, key: &str) -> Option<usize> {
        self.conferences.get(key).map(|placed| placed.index)
    }

    /// Loop `index` has no call of conference `key` left, having processed `opens` `Open`s for
    /// it since its last report: the conference is forgotten unless more are on their way.
    pub fn ended(&mut self, key: &str, index: usize, opens: u64) {
        let Some(placed) = self.conferences.get_mut(key) else {
            return;
        };
        if placed.index != index {
            return;
        }
        placed.in_flight = placed.in_flight.saturating_sub(opens);
        if placed.in_flight == 0 {
            self.conferences.remove(key);
        }
    }

    /// How many conferences are placed.
    pub fn len(&self) -> usize {
        self.conferences.len()
    }

    /// Whether no conference is placed.
    pub fn is_empty(&self) -> bool {
        self.conferences.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_conferences_go_to_the_least_busy_loop_and_calls_follow_their_conference() {
        let mut placement = Placement::new(2);
        assert_eq!(placement.place("a"), 0);
        assert_eq!(placement.place("b"), 1);
        assert_eq!(placement.place("a"), 0, "a second call of a");
        assert_eq!(placement.place("c"), 0);
        assert_eq!(placement.place("d"), 1);
        assert_eq!(placement.len(), 4);
    }

    #[test]
    fn an_ended_conference_is_forgotten_and_may_start_elsewhere() {
        let mut placement = Placement::new(2);
        assert_eq!(placement.place("a"), 0);
        assert_eq!(placement.place("a"), 0);
        assert_eq!(placement.place("b"), 1);
        assert_eq!(placement.place("c"), 0);
        placement.ended("a", 0, 2);
        placement.ended("b", 1, 1);
        assert_eq!(placement.len(), 1);
        assert_eq!((placement.find("a"), placement.find("c")), (None, Some(0)));
        assert_eq!(placement.len(), 1, "finding places nothing");
        // Loop 1 is now the least busy: a's next call starts it there.
        assert_eq!(placement.place("a"), 1);
    }

    #[test]
    fn an_open_in_flight_keeps_the_conference_where_it_is() {
        let mut placement = Placement::new(2);
        assert_eq!(placement.place("a"), 0);
        // A second call is dispatched while the loop, not having seen it yet, reports the end
        // of the first.
        assert_eq!(placement.place("a"), 0);
        placement.ended("a", 0, 1);
        assert_eq!(placement.len(), 1, "one open still on its way to loop 0");
        assert_eq!(placement.place("b"), 1);
        assert_eq!(placement.place("a"), 0, "a is not split across loops");
        placement.ended("a", 0, 2);
        assert_eq!(placement.len(), 1);
    }

    #[test]
    fn reports_from_another_loop_or_of_unknown_conferences_change_nothing() {
        let mut placement = Placement::new(2);
        placement.place("a");
        placement.ended("a", 1, 1);
        placement.ended("zzz", 0, 1);
        assert_eq!(placement.len(), 1);
        let mut one = Placement::new(0);
        assert_eq!(one.place("x"), 0, "at least one loop");
    }
}
