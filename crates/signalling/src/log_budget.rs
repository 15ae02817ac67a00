//! A budget for warnings that remote parties cause (malformed or unusable call events): the
//! first few of each window are logged, the rest only counted, and the next warning logged says
//! how many were left out. A flood of bad events then costs the log a few lines per window,
//! not one per event; the metrics still count every one (pure: time comes in).

/// Warnings logged per window.
pub const WARNINGS_PER_WINDOW: u32 = 20;

/// The window, ms.
pub const WINDOW_MS: u64 = 10_000;

/// How many warnings were logged in the current window and how many left out since the last
/// one logged.
#[derive(Clone, Debug, Default)]
pub struct LogBudget {
    window_start_ms: u64,
    logged: u32,
    left_out: u64,
}

impl LogBudget {
    /// Whether a warning at `now_ms` (wall-clock ms) may be logged: `Some(n)` when it may, `n`
    /// being the warnings left out since the last one logged; `None` when the window's
    /// [`WARNINGS_PER_WINDOW`] are used up (it is counted as left out).
    pub fn admit(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms.saturating_sub(self.window_start_ms) >= WINDOW_MS || now_ms < self.window_start_ms
        {
            self.window_start_ms = now_ms;
            self.logged = 0;
        }
        if self.logged >= WARNINGS_PER_WINDOW {
            self.left_out = self.left_out.saturating_add(1);
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_a_few_lines_per_window_and_the_next_line_counts_the_rest() {
        let mut budget = LogBudget::default();
        let start = 1_000_000;
        // 1,000 warnings in the first second: the first WARNINGS_PER_WINDOW are logged.
        let logged: Vec<u64> = (0..1_000).filter_map(|i| budget.admit(start + i)).collect();
        assert_eq!(logged, vec![0; WARNINGS_PER_WINDOW as usize]);
        // Still inside the window: left out.
        assert_eq!(budget.admit(start + WINDOW_MS - 1), None);
        // The next window: logged, with the count of those left out.
        let left_out = 1_000 - u64::from(WARNINGS_PER_WINDOW) + 1;
        assert_eq!(budget.admit(start + WINDOW_MS), Some(left_out));
        assert_eq!(budget.admit(start + WINDOW_MS + 1), Some(0));
        // A clock that went back opens a new window rather than silencing warnings.
        for _ in 2..WARNINGS_PER_WINDOW {
            assert_eq!(budget.admit(start + WINDOW_MS + 2), Some(0));
        }
        assert_eq!(budget.admit(start + WINDOW_MS + 3), None);
        assert_eq!(budget.admit(start), Some(1));
    }
}
