//! Counts of log events, for the metrics: warnings and errors by level, and the WebRTC stack's
//! warnings that stand for dropped input the focus cannot see otherwise.
//!
//! The stack reports some failures only as log lines: a data-channel message larger than the
//! negotiated `max-message-size` (RFC 8841 §6.1) is refused inside its SCTP association with a
//! warning and never reaches the focus. A [`tracing`] layer sees every event that passes the
//! log filter, so it counts them where they are logged.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// Log events counted since the start (events the log filter lets through).
#[derive(Debug, Default)]
pub struct LogCounts {
    /// Events at WARN.
    pub warnings: AtomicU64,
    /// Events at ERROR.
    pub errors: AtomicU64,
    /// Inbound data-channel messages the stack refused as larger than the negotiated maximum.
    pub oversized_channel_messages: AtomicU64,
}

/// The process's counts.
pub static COUNTS: LogCounts = LogCounts {
    warnings: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    oversized_channel_messages: AtomicU64::new(0),
};

/// The stack's message for an inbound SCTP message too large for its buffer
/// ("SctpHandler.handle_read got error: too short buffer").
const OVERSIZED: &str = "SctpHandler.handle_read got error: too short buffer";

/// The layer that counts into [`COUNTS`].
#[derive(Debug, Default)]
pub struct CountingLayer;

/// Finds whether an event's message mentions [`OVERSIZED`].
#[derive(Default)]
struct Oversized(bool);

impl Visit for Oversized {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" && value.contains(OVERSIZED) {
            self.0 = true;
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}").contains(OVERSIZED) {
            self.0 = true;
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for CountingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        match *metadata.level() {
            Level::ERROR => {
                COUNTS.errors.fetch_add(1, Relaxed);
            }
            Level::WARN => {
                COUNTS.warnings.fetch_add(1, Relaxed);
                // The stack logs through `log`, whose records arrive with the target "log" (the
                // real one is a field), so the message alone identifies them.
                let mut oversized = Oversized::default();
                event.record(&mut oversized);
                if oversized.0 {
                    COUNTS.oversized_channel_messages.fetch_add(1, Relaxed);
                }
            }
            _ => {}
        }
    }
}
