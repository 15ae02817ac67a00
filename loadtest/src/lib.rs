//! `cascade-loadtest`: drives a running Cascade focus (or several cascaded foci) through a real
//! homeserver with many simulated devices, measures what they receive and what the foci spend,
//! and compares it with the kernel's own UDP fan-out on the same machine.
//!
//! The pieces: [`preset`] (the scenario and its named presets), [`scenario`] (accounts, room,
//! paced joins, the measurement window), [`stats`] (totals, time series, summary), [`report`]
//! (table and JSON), [`plot`] (PNG), [`procstat`] (a focus's CPU and memory from `/proc`),
//! [`metrics`] (counters from a focus's `/metrics`), [`baseline`] (the plain UDP fan-out loop),
//! [`local`] (Synapse and the foci started here), [`progress`] (the live view), [`churn`]
//! (thousands of join/leave cycles, and the focus's footprint before and after), [`loss`]
//! (random packet loss on one device's link, and the video frames that still arrive whole),
//! [`flood`] (garbage at the focus's port while a conference runs), [`janus`] and [`livekit`] (the
//! same devices against Janus, and through the focus's LiveKit endpoint).

pub mod baseline;
pub mod churn;
pub mod congestion;
pub mod flood;
pub mod janus;
pub mod livekit;
pub mod local;
pub mod loss;
pub mod metrics;
pub mod plot;
pub mod preset;
pub mod procstat;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod stats;

pub use preset::{Layout, Scenario};
pub use scenario::{FocusTarget, RunOptions, Target};
pub use stats::Summary;
