//! Health flags and counters of the Matrix side, shared with whoever reports them.

use crate::authorize::RefusalCause;
use cascade_protocol::CallEventKind;
use cascade_telemetry::{Histogram, HistogramSnapshot, REQUEST_BUCKETS};
use rand::Rng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// To-device event types counted separately, in the order of [`Status::to_device`]; anything
/// else counts as `other`.
pub const TO_DEVICE_TYPES: [&str; 9] = [
    "m.call.invite",
    "m.call.answer",
    "m.call.candidates",
    "m.call.select_answer",
    "m.call.negotiate",
    "m.call.sdp_stream_metadata_changed",
    "m.call.reject",
    "m.call.hangup",
    "other",
];

/// Which way a to-device event went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received by the focus.
    In,
    /// Sent by the focus.
    Out,
}

/// The index in [`TO_DEVICE_TYPES`] of `event_type` (stable or unstable call event names).
fn to_device_index(event_type: &str) -> usize {
    let name = CallEventKind::from_type(event_type).map(CallEventKind::as_type);
    TO_DEVICE_TYPES
        .iter()
        .position(|t| Some(*t) == name)
        .unwrap_or(TO_DEVICE_TYPES.len() - 1)
}

/// How recently a sync must have succeeded for the focus to count as syncing.
pub const SYNCING_WINDOW_MS: u64 = 60_000;

/// Things the Matrix side counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// To-device events received (any type).
    ToDeviceIn,
    /// To-device messages sent successfully (one per recipient device).
    ToDeviceOut,
    /// To-device messages that could not be sent after retries.
    SendFailures,
    /// Call events whose content could not be decoded, or that lack the sender's identity.
    DecodeErrors,
    /// Events skipped by the sync parser because they were not shaped like events.
    MalformedSyncEvents,
    /// Call events addressed to another session of the focus's device.
    NotForThisSession,
    /// Call events from a session the device has since replaced.
    StaleSession,
    /// Device sessions replaced by a newer session.
    SessionsReplaced,
    /// Call events for calls the focus does not know (never invited or already ended).
    UnknownCall,
    /// Repeated events (seq already delivered, repeated invite).
    Duplicates,
    /// Sequence gaps skipped after waiting.
    GapsSkipped,
    /// Invites received.
    InvitesReceived,
    /// Invites handed to the media plane.
    InvitesOpened,
    /// Link calls this focus placed to other foci (issue 11).
    LinksPlaced,
    /// Link invites from other foci accepted.
    LinksAccepted,
    /// Invites void because of their age or a later hangup.
    InvitesVoid,
    /// Invites refused by authorization (see [`Status::refused`] for causes).
    InvitesRefused,
    /// Calls closed by the device or by session replacement.
    CallsClosed,
    /// Media-plane messages for calls the signalling side has forgotten.
    MediaUnknownCall,
    /// Events dropped because a held call's queue was full.
    QueueOverflow,
    /// Failed `/sync` requests.
    SyncErrors,
    /// Sync batches fully handled.
    SyncBatches,
    /// Room invites accepted.
    RoomInvitesAccepted,
    /// Room invites rejected.
    RoomInvitesRejected,
    /// Checkpoint writes that failed (the batch will be delivered again after a restart).
    CheckpointFailures,
    /// Calls open when the focus last stopped without ending them, hung up after the restart.
    RestartHangups,
    /// Open calls hung up because the membership that authorized them ended.
    MembershipEnded,
}

impl Counter {
    /// Every counter, in a stable order.
    pub const ALL: [Counter; 27] = [
        Counter::ToDeviceIn,
        Counter::ToDeviceOut,
        Counter::SendFailures,
        Counter::DecodeErrors,
        Counter::MalformedSyncEvents,
        Counter::NotForThisSession,
        Counter::StaleSession,
        Counter::SessionsReplaced,
        Counter::UnknownCall,
        Counter::Duplicates,
        Counter::GapsSkipped,
        Counter::InvitesReceived,
        Counter::InvitesOpened,
        Counter::LinksPlaced,
        Counter::LinksAccepted,
        Counter::InvitesVoid,
        Counter::InvitesRefused,
        Counter::CallsClosed,
        Counter::MediaUnknownCall,
        Counter::QueueOverflow,
        Counter::SyncErrors,
        Counter::SyncBatches,
        Counter::RoomInvitesAccepted,
        Counter::RoomInvitesRejected,
        Counter::CheckpointFailures,
        Counter::RestartHangups,
        Counter::MembershipEnded,
    ];

    /// A snake_case name fit for a metric.
    pub fn name(self) -> &'static str {
        match self {
            Counter::ToDeviceIn => "to_device_in",
            Counter::ToDeviceOut => "to_device_out",
            Counter::SendFailures => "send_failures",
            Counter::DecodeErrors => "decode_errors",
            Counter::MalformedSyncEvents => "malformed_sync_events",
            Counter::NotForThisSession => "not_for_this_session",
            Counter::StaleSession => "stale_session",
            Counter::SessionsReplaced => "sessions_replaced",
            Counter::UnknownCall => "unknown_call",
            Counter::Duplicates => "duplicates",
            Counter::GapsSkipped => "gaps_skipped",
            Counter::InvitesReceived => "invites_received",
            Counter::InvitesOpened => "invites_opened",
            Counter::LinksPlaced => "links_placed",
            Counter::LinksAccepted => "links_accepted",
            Counter::InvitesVoid => "invites_void",
            Counter::InvitesRefused => "invites_refused",
            Counter::CallsClosed => "calls_closed",
            Counter::MediaUnknownCall => "media_unknown_call",
            Counter::QueueOverflow => "queue_overflow",
            Counter::SyncErrors => "sync_errors",
            Counter::SyncBatches => "sync_batches",
            Counter::RoomInvitesAccepted => "room_invites_accepted",
            Counter::RoomInvitesRejected => "room_invites_rejected",
            Counter::CheckpointFailures => "checkpoint_failures",
            Counter::RestartHangups => "restart_hangups",
            Counter::MembershipEnded => "membership_ended",
        }
    }

    fn index(self) -> usize {
        Counter::ALL
            .iter()
            .position(|c| *c == self)
            .unwrap_or_default()
    }
}

/// Live state of the Matrix side: flags and counters, all lock-free.
#[derive(Debug)]
pub struct Status {
    session_id: String,
    logged_in: AtomicBool,
    draining: AtomicBool,
    last_sync_ok_ms: AtomicU64,
    /// Wall-clock ms of the last failed sync (the homeserver unreachable or erring), 0 if none.
    last_sync_failed_ms: AtomicU64,
    counters: [AtomicU64; Counter::ALL.len()],
    refused: [AtomicU64; RefusalCause::ALL.len()],
    to_device: [[AtomicU64; TO_DEVICE_TYPES.len()]; 2],
    sync_latency: Histogram,
    olm: std::sync::OnceLock<std::sync::Arc<crate::crypto::OlmStats>>,
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

impl Status {
    /// A fresh status with a new random focus session id (make one per process start).
    pub fn new() -> Self {
        let session_id: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(16)
            .map(char::from)
            .collect();
        Self::with_session_id(session_id)
    }

    /// A fresh status with a given focus session id (for tests).
    pub fn with_session_id(session_id: impl Into<String>) -> Self {
        Self {
            session_id: session_id.into(),
            logged_in: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            last_sync_ok_ms: AtomicU64::new(0),
            last_sync_failed_ms: AtomicU64::new(0),
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            to_device: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            sync_latency: Histogram::new(REQUEST_BUCKETS),
            olm: std::sync::OnceLock::new(),
        }
    }

    /// The focus's session id: what clients put in `dest_session_id` and what the focus sends as
    /// `sender_session_id`.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Whether the focus holds a working login.
    pub fn logged_in(&self) -> bool {
        self.logged_in.load(Ordering::Relaxed)
    }

    /// Whether the focus can take calls: logged in, syncing and not draining.
    pub fn is_ready(&self) -> bool {
        self.logged_in() && self.syncing() && !self.draining()
    }

    /// Whether the focus is draining: it refuses new invites and keeps the calls it has.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts (or ends) draining.
    pub fn set_draining(&self, value: bool) {
        self.draining.store(value, Ordering::Relaxed);
    }

    /// To-device events of each type in [`TO_DEVICE_TYPES`] that went `direction`.
    pub fn to_device(&self, direction: Direction) -> [u64; TO_DEVICE_TYPES.len()] {
        let row = &self.to_device[direction as usize];
        std::array::from_fn(|i| row[i].load(Ordering::Relaxed))
    }

    /// The Olm layer's counters (decrypted, encrypted, refused by cause), once signalling runs.
    pub fn olm(&self) -> Option<&crate::crypto::OlmStats> {
        self.olm.get().map(|stats| &**stats)
    }

    pub(crate) fn set_olm(&self, stats: std::sync::Arc<crate::crypto::OlmStats>) {
        let _ = self.olm.set(stats);
    }

    /// How long `/sync` requests took (long polls included).
    pub fn sync_latency(&self) -> HistogramSnapshot {
        self.sync_latency.snapshot()
    }

    /// Whether a sync succeeded within the last [`SYNCING_WINDOW_MS`].
    pub fn syncing(&self) -> bool {
        self.syncing_at(crate::now_ms())
    }

    /// Whether a sync succeeded within [`SYNCING_WINDOW_MS`] before `now_ms`, and none failed
    /// since (a homeserver that cannot be reached makes the focus unready at once, not a
    /// minute later).
    pub fn syncing_at(&self, now_ms: u64) -> bool {
        let last = self.last_sync_ok_ms.load(Ordering::Relaxed);
        let failed = self.last_sync_failed_ms.load(Ordering::Relaxed);
        last != 0 && now_ms.saturating_sub(last) < SYNCING_WINDOW_MS && failed < last
    }

    /// Whether the last sync failed.
    pub fn sync_failing(&self) -> bool {
        let failed = self.last_sync_failed_ms.load(Ordering::Relaxed);
        failed != 0 && failed >= self.last_sync_ok_ms.load(Ordering::Relaxed)
    }

    /// Wall-clock ms of the last successful sync, 0 if none.
    pub fn last_sync_ok_ms(&self) -> u64 {
        self.last_sync_ok_ms.load(Ordering::Relaxed)
    }

    /// The current value of a counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter.index()].load(Ordering::Relaxed)
    }

    /// How many invites were refused for `cause`.
    pub fn refused(&self, cause: RefusalCause) -> u64 {
        self.refused[cause.index()].load(Ordering::Relaxed)
    }

    /// Every counter and refusal cause by name, for reporting.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Counter::ALL
            .iter()
            .map(|c| (c.name().to_owned(), self.get(*c)))
            .collect();
        out.extend(
            RefusalCause::ALL
                .iter()
                .map(|c| (format!("refused_{}", c.name()), self.refused(*c))),
        );
        out
    }

    pub(crate) fn count_to_device(&self, direction: Direction, event_type: &str, n: u64) {
        self.to_device[direction as usize][to_device_index(event_type)]
            .fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn observe_sync(&self, took: Duration) {
        self.sync_latency.observe(took);
    }

    pub(crate) fn set_logged_in(&self, value: bool) {
        self.logged_in.store(value, Ordering::Relaxed);
    }

    pub(crate) fn sync_succeeded(&self, now_ms: u64) {
        self.last_sync_ok_ms.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn sync_failed(&self, now_ms: u64) {
        self.last_sync_failed_ms.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, counter: Counter, n: u64) {
        self.counters[counter.index()].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn incr(&self, counter: Counter) {
        self.add(counter, 1);
    }

    pub(crate) fn refuse(&self, cause: RefusalCause) {
        self.refused[cause.index()].fetch_add(1, Ordering::Relaxed);
        self.incr(Counter::InvitesRefused);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_flags() {
        let status = Status::new();
        assert_eq!(status.session_id().len(), 16);
        assert_ne!(Status::new().session_id(), status.session_id());
        status.incr(Counter::ToDeviceIn);
        status.add(Counter::ToDeviceIn, 2);
        status.refuse(RefusalCause::Expired);
        assert_eq!(status.get(Counter::ToDeviceIn), 3);
        assert_eq!(status.get(Counter::InvitesRefused), 1);
        assert_eq!(status.refused(RefusalCause::Expired), 1);
        assert_eq!(status.refused(RefusalCause::NotMember), 0);
        assert!(!status.syncing_at(1000));
        assert!(!status.is_ready());
        status.set_logged_in(true);
        status.sync_succeeded(crate::now_ms());
        assert!(status.is_ready());
        status.sync_succeeded(1000);
        assert!(status.syncing_at(1000 + SYNCING_WINDOW_MS - 1));
        assert!(!status.syncing_at(1000 + SYNCING_WINDOW_MS));
        // A failed sync makes the focus unready at once; the next success ready again.
        assert!(!status.sync_failing());
        status.sync_failed(2000);
        assert!(status.sync_failing() && !status.syncing_at(2001));
        status.sync_succeeded(3000);
        assert!(!status.sync_failing() && status.syncing_at(3001));
        let names: Vec<_> = status.snapshot().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"refused_expired".to_owned()));
        assert!(names.contains(&"to_device_in".to_owned()));
    }

    #[test]
    fn draining_is_not_ready_and_to_device_types_are_counted() {
        let status = Status::new();
        status.set_logged_in(true);
        status.sync_succeeded(crate::now_ms());
        assert!(status.is_ready());
        status.set_draining(true);
        assert!(status.draining());
        assert!(!status.is_ready());
        status.count_to_device(Direction::In, "m.call.invite", 1);
        status.count_to_device(
            Direction::In,
            "org.matrix.call.sdp_stream_metadata_changed",
            2,
        );
        status.count_to_device(Direction::In, "m.room_key", 1);
        status.count_to_device(Direction::Out, "m.call.answer", 3);
        let incoming = status.to_device(Direction::In);
        assert_eq!(incoming[0], 1);
        assert_eq!(incoming[5], 2);
        assert_eq!(incoming[8], 1);
        assert_eq!(status.to_device(Direction::Out)[1], 3);
        status.observe_sync(Duration::from_millis(20));
        assert_eq!(status.sync_latency().count, 1);
    }

    #[test]
    fn counter_indices_are_distinct() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }
}
