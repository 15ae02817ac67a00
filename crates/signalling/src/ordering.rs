//! Per-call reordering of to-device events by `seq` (to-device delivery order is not guaranteed).
//!
//! Events are released in `seq` order. An invite (or `seq` 0) fixes where a call's sequence
//! starts; events before it are buffered. A gap is waited for at most `max_wait_ms` (and at most
//! `max_pending` events are buffered) before it is skipped. Events without `seq` pass straight
//! through; an event whose `seq` was already released is a duplicate. Pure: time is passed in.

use std::collections::BTreeMap;

/// Why an event was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Its `seq` was already released (or skipped), or is already buffered.
    Duplicate {
        /// The repeated sequence number.
        seq: u64,
    },
}

/// The reorder buffer of one call.
#[derive(Clone, Debug)]
pub struct Reorder<T> {
    /// The next `seq` to release; `None` until the sequence's start is known.
    next: Option<u64>,
    pending: BTreeMap<u64, T>,
    /// Since when the current gap has been waited for.
    waiting_since_ms: Option<u64>,
    last_activity_ms: u64,
    skipped: u64,
    max_pending: usize,
    max_wait_ms: u64,
}

impl<T> Reorder<T> {
    /// An empty buffer holding at most `max_pending` events for at most `max_wait_ms`.
    pub fn new(max_pending: usize, max_wait_ms: u64, now_ms: u64) -> Self {
        Self {
            next: None,
            pending: BTreeMap::new(),
            waiting_since_ms: None,
            last_activity_ms: now_ms,
            skipped: 0,
            max_pending: max_pending.max(1),
            max_wait_ms,
        }
    }

    /// Offers an event; returns the events that may now be handled, in order (empty when it was
    /// buffered). `starts` marks the event that opens the call (the invite).
    pub fn push(
        &mut self,
        seq: Option<u64>,
        starts: bool,
        item: T,
        now_ms: u64,
    ) -> Result<Vec<T>, Rejected> {
        self.last_activity_ms = now_ms;
        let Some(seq) = seq else {
            return Ok(vec![item]);
        };
        match self.next {
            Some(next) if seq < next => Err(Rejected::Duplicate { seq }),
            Some(next) if seq == next => Ok(self.release(item, now_ms)),
            None if starts || seq == 0 => {
                // The call's sequence starts here: anything buffered before it cannot belong.
                self.pending = self.pending.split_off(&(seq + 1));
                self.next = Some(seq);
                Ok(self.release(item, now_ms))
            }
            _ => {
                if self.pending.contains_key(&seq) {
                    return Err(Rejected::Duplicate { seq });
                }
                self.pending.insert(seq, item);
                self.waiting_since_ms.get_or_insert(now_ms);
                if self.pending.len() > self.max_pending {
                    Ok(self.skip_gap(now_ms))
                } else {
                    Ok(Vec::new())
                }
            }
        }
    }

    /// Skips a gap that has been waited for `max_wait_ms`; returns the events released.
    pub fn expire(&mut self, now_ms: u64) -> Vec<T> {
        match self.waiting_since_ms {
            Some(since) if now_ms.saturating_sub(since) >= self.max_wait_ms => {
                self.skip_gap(now_ms)
            }
            _ => Vec::new(),
        }
    }

    /// Whether events are buffered waiting for a gap to fill.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When an event was last offered.
    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity_ms
    }

    /// How many gaps were skipped since the last call (and resets the count).
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    fn skip_gap(&mut self, now_ms: u64) -> Vec<T> {
        let Some((seq, item)) = self.pending.pop_first() else {
            self.waiting_since_ms = None;
            return Vec::new();
        };
        self.skipped += 1;
        self.next = Some(seq);
        self.release(item, now_ms)
    }

    /// Releases `item` (whose seq is `next`) and every buffered event that follows it.
    fn release(&mut self, item: T, now_ms: u64) -> Vec<T> {
        let mut next = self.next.unwrap_or_default() + 1;
        let mut out = vec![item];
        while let Some(item) = self.pending.remove(&next) {
            out.push(item);
            next += 1;
        }
        self.next = Some(next);
        self.waiting_since_ms = (!self.pending.is_empty()).then_some(now_ms);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step: (seq, starts, label, at_ms) or an expiry check at a time.
    enum Step {
        Push(Option<u64>, bool, &'static str, u64),
        Expire(u64),
    }
    use Step::*;

    fn run(steps: &[Step]) -> (Vec<&'static str>, usize, u64) {
        let mut buffer = Reorder::new(4, 3000, 0);
        let mut out = Vec::new();
        let mut duplicates = 0;
        for step in steps {
            match *step {
                Push(seq, starts, label, at) => match buffer.push(seq, starts, label, at) {
                    Ok(items) => out.extend(items),
                    Err(Rejected::Duplicate { .. }) => duplicates += 1,
                },
                Expire(at) => out.extend(buffer.expire(at)),
            }
        }
        (out, duplicates, buffer.take_skipped())
    }

    #[test]
    fn table() {
        type Case = (&'static str, Vec<Step>, Vec<&'static str>, usize, u64);
        let cases: Vec<Case> = vec![
            (
                "in order",
                vec![
                    Push(Some(0), true, "inv", 0),
                    Push(Some(1), false, "c1", 1),
                    Push(Some(2), false, "c2", 2),
                ],
                vec!["inv", "c1", "c2"],
                0,
                0,
            ),
            (
                "out of order before the invite",
                vec![
                    Push(Some(2), false, "c2", 0),
                    Push(Some(1), false, "c1", 1),
                    Push(Some(0), true, "inv", 2),
                ],
                vec!["inv", "c1", "c2"],
                0,
                0,
            ),
            (
                "out of order after the invite",
                vec![
                    Push(Some(0), true, "inv", 0),
                    Push(Some(2), false, "c2", 1),
                    Expire(2),
                    Push(Some(1), false, "c1", 3),
                ],
                vec!["inv", "c1", "c2"],
                0,
                0,
            ),
            (
                "duplicates dropped",
                vec![
                    Push(Some(0), true, "inv", 0),
                    Push(Some(0), true, "inv again", 1),
                    Push(Some(2), false, "c2", 2),
                    Push(Some(2), false, "c2 again", 3),
                ],
                vec!["inv"],
                2,
                0,
            ),
            (
                "gap skipped after the wait, late event then dropped",
                vec![
                    Push(Some(0), true, "inv", 0),
                    Push(Some(2), false, "c2", 10),
                    Push(Some(3), false, "c3", 20),
                    Expire(3009),
                    Expire(3010),
                    Push(Some(1), false, "c1", 3011),
                ],
                vec!["inv", "c2", "c3"],
                1,
                1,
            ),
            (
                "no seq passes straight through",
                vec![
                    Push(Some(0), true, "inv", 0),
                    Push(Some(2), false, "c2", 1),
                    Push(None, false, "noseq", 2),
                ],
                vec!["inv", "noseq"],
                0,
                0,
            ),
            (
                "invite not at zero sets the start",
                vec![Push(Some(5), true, "inv", 0), Push(Some(6), false, "c6", 1)],
                vec!["inv", "c6"],
                0,
                0,
            ),
            (
                "events before a late-starting invite are dropped",
                vec![
                    Push(Some(3), false, "c3", 0),
                    Push(Some(5), true, "inv", 1),
                    Push(Some(6), false, "c6", 2),
                    Expire(100_000),
                ],
                vec!["inv", "c6"],
                0,
                0,
            ),
            (
                "no start ever: released after the wait",
                vec![
                    Push(Some(4), false, "c4", 0),
                    Push(Some(3), false, "c3", 1),
                    Expire(2999),
                    Expire(3000),
                ],
                vec!["c3", "c4"],
                0,
                1,
            ),
            (
                "too many pending forces a skip",
                vec![
                    Push(Some(0), true, "inv", 0),
                    Push(Some(2), false, "c2", 0),
                    Push(Some(3), false, "c3", 0),
                    Push(Some(4), false, "c4", 0),
                    Push(Some(5), false, "c5", 0),
                    Push(Some(7), false, "c7", 0),
                ],
                vec!["inv", "c2", "c3", "c4", "c5"],
                0,
                1,
            ),
            (
                "progress restarts the wait",
                vec![
                    Push(Some(0), true, "inv", 0),
                    Push(Some(3), false, "c3", 0),
                    Push(Some(1), false, "c1", 2000),
                    Expire(3500),
                    Push(Some(2), false, "c2", 4000),
                ],
                vec!["inv", "c1", "c2", "c3"],
                0,
                0,
            ),
        ];
        for (name, steps, expected, duplicates, skipped) in cases {
            let (out, dups, skips) = run(&steps);
            assert_eq!(out, expected, "{name}");
            assert_eq!(dups, duplicates, "{name}: duplicates");
            assert_eq!(skips, skipped, "{name}: skipped gaps");
        }
    }

    #[test]
    fn pending_and_activity() {
        let mut buffer = Reorder::new(8, 100, 5);
        assert!(!buffer.has_pending());
        assert_eq!(buffer.last_activity_ms(), 5);
        assert_eq!(buffer.push(Some(3), false, (), 7), Ok(vec![]));
        assert!(buffer.has_pending());
        assert_eq!(buffer.last_activity_ms(), 7);
        assert_eq!(buffer.expire(107).len(), 1);
        assert!(!buffer.has_pending());
    }
}
