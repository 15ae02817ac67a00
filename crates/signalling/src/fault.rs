//! Crash points for the tests of exactly-once signalling: with the environment variable
//! `CASCADE_FAULT_KILL_AT` set to a point's name, the process sends itself SIGKILL the first time
//! a sync batch holding an `m.call.invite` reaches that point, exactly as a crash there would
//! end it (no destructor runs, nothing is flushed). Unset, each point is one relaxed load.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const KILL_AT_VAR: &str = "CASCADE_FAULT_KILL_AT";

/// Where in the handling of a sync batch a crash can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The batch is decrypted and journaled; nothing has acted on it.
    Decrypted,
    /// The batch is handled (its effects computed), not yet committed.
    Handled,
    /// The batch is committed; its effects have not been sent.
    Committed,
}

impl Point {
    /// Every point, in the order a batch passes them.
    pub const ALL: [Point; 3] = [Point::Decrypted, Point::Handled, Point::Committed];

    /// The name `CASCADE_FAULT_KILL_AT` takes.
    pub fn name(self) -> &'static str {
        match self {
            Point::Decrypted => "decrypted",
            Point::Handled => "handled",
            Point::Committed => "committed",
        }
    }
}

fn armed() -> Option<Point> {
    static ARMED: OnceLock<Option<Point>> = OnceLock::new();
    *ARMED.get_or_init(|| {
        let name = std::env::var(KILL_AT_VAR).ok()?;
        Point::ALL.into_iter().find(|p| p.name() == name.trim())
    })
}

/// Kills the process if `point` is armed and the batch at hand holds an invite.
pub(crate) fn point(point: Point, batch_has_invite: bool) {
    if batch_has_invite && armed() == Some(point) {
        tracing::error!(point = point.name(), "fault injection: killing the process");
        // SAFETY: kill(2) and getpid(2) on our own process have no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
