//! Cascade's front door for clients that speak LiveKit's protocol (Element Call, issue 12).
//!
//! What exists so far: the MatrixRTC authorization service (MSC4195), where a client trades a
//! Matrix OpenID token for a LiveKit access token (a JWT) naming its room and identity; and the
//! start of the LiveKit signalling endpoint those tokens are for ([`endpoint`], [`signal`]): a
//! client joins, pings and leaves. Publishing, subscribing and data are not built yet.

pub mod config;
pub mod endpoint;
pub mod naming;
pub mod openid;
pub mod rooms;
pub mod service;
pub mod signal;
pub mod token;

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
