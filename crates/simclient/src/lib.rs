//! A simulated Matrix call device for testing the Cascade focus.
//!
//! A [`SimClient`] joins a conference through the focus exactly as PROTOCOL.md describes
//! (to-device invite and candidates, data-channel subscription and renegotiation), publishes
//! synthetic Opus/VP8 media whose payloads verify themselves ([`synth`]), and accounts every
//! packet it receives ([`report`]). Each client is one tokio task with one UDP socket, so many
//! fit in one process. The peer-connection driver [`SimPeer`] is usable on its own with any
//! signalling.

pub mod client;
pub mod frames;
pub mod olm;
pub mod peer;
pub mod report;
pub mod signalling;
pub mod synth;

pub use client::{SimClient, SimConfig, SubscribePolicy};
pub use olm::OlmDevice;
pub use peer::{PeerEvent, PeerOptions, SimPeer};
pub use report::{Report, TrackReport};
pub use signalling::publish_membership;
pub use signalling::{create_call_room, create_conference, join_room, remove_membership};
pub use synth::{MediaKind, Mismatch, TrailerInfo, synth_payload, verify_payload};

/// A random alphanumeric string of `len` characters.
pub fn random_id(len: usize) -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
