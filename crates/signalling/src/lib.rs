//! Matrix side of the Cascade focus.
//!
//! The invite flow, one direction: `/sync` → decode to-device call events → reorder by `seq` →
//! authorize against room state → [`ToMedia`](cascade_protocol::ToMedia) to the media plane;
//! and back: [`FromMedia`](cascade_protocol::FromMedia) → to-device events.
//!
//! - [`client`] — a small reusable Matrix client-server API client;
//! - [`http`] — HTTP clients with the process's TLS provider;
//! - [`config`] — configuration;
//! - [`crypto`] — Olm: the focus device's identity keys, sessions, decryption and encryption;
//! - [`sync`] — the sync loop and login;
//! - [`checkpoint`] — the sync token, Olm state and open calls, committed together per batch;
//! - [`state`] — room and call-membership state (pure);
//! - [`authorize`] — invite and room-invite decisions (pure);
//! - [`link`] — which other foci to link with per conference, and in which role (pure);
//! - [`ordering`] — the per-call `seq` reorder buffer (pure);
//! - [`calls`] — per-call bookkeeping, sessions, invite lifetime, holding (pure);
//! - [`log_budget`] — how many warnings remote parties' bad input may write to the log (pure);
//! - [`outbound`] — outgoing event fields, batching, the sending task;
//! - [`signaller`] — [`run`], wiring it all together;
//! - [`status`] — health flags and counters.

#![warn(missing_docs)]

pub mod authorize;
pub mod calls;
pub mod checkpoint;
pub mod client;
pub mod config;
pub mod crypto;
pub mod fault;
pub mod http;
pub mod link;
pub mod log_budget;
pub mod ordering;
pub mod outbound;
pub mod signaller;
pub mod state;
pub mod status;
pub mod sync;

pub use client::{ClientError, JoinedRoom, MatrixClient, RawEvent, SyncResponse};
pub use config::{Authorization, ConferenceConfig, MatrixConfig};
pub use signaller::{Signaller, run};
pub use status::{Counter, Status};

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
