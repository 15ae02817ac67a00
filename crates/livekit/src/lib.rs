//! Cascade's front door for clients that speak LiveKit's protocol (Element Call, issue 12).
//!
//! What exists so far: the MatrixRTC authorization service (MSC4195), where a client trades a
//! Matrix OpenID token for a LiveKit access token (a JWT) naming its room and identity; and the
//! LiveKit signalling endpoint those tokens are for ([`endpoint`], [`signal`]): a client joins,
//! publishes through its publisher connection and receives everything the room's others publish
//! through its subscriber connection ([`transport`]), both calls of the media plane, chooses
//! what it receives (`UpdateSubscription`, `UpdateTrackSettings`) and hears who speaks
//! (`SpeakersChanged`), and sends the others data packets ([`data`]).

pub mod config;
pub mod data;
pub mod endpoint;
pub mod naming;
pub mod openid;
pub mod rooms;
pub mod service;
pub mod signal;
pub mod token;
pub mod transport;

pub use config::LiveKitConfig;

use std::sync::Arc;

/// What the LiveKit front door counts: the token service's requests and the signalling
/// endpoint's sessions and messages.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// The token service's.
    pub tokens: Arc<service::TokenStats>,
    /// The signalling endpoint's.
    pub signal: Arc<endpoint::SignalStats>,
}
