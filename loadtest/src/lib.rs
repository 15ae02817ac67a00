//! `cascade-loadtest`: drives a running Cascade focus through a real homeserver with many
//! simulated devices, measures what they receive and what the focus spends, and compares it with
//! the kernel's own UDP fan-out on the same machine.
//!
//! The pieces: [`preset`] (the scenario and its named presets), [`scenario`] (accounts, room,
//! paced joins, the measurement window), [`stats`] (totals, time series, summary), [`report`]
//! (table and JSON), [`plot`] (PNG), [`procstat`] (the focus's CPU and memory from `/proc`),
//! [`baseline`] (the plain UDP fan-out loop), [`local`] (Synapse and the focus started here),
//! [`progress`] (the live view).

pub mod baseline;
pub mod janus;
pub mod local;
pub mod plot;
pub mod preset;
pub mod procstat;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod stats;

pub use preset::{Layout, Scenario};
pub use scenario::{RunOptions, Target};
pub use stats::Summary;
