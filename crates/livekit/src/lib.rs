//! Cascade's front door for clients that speak LiveKit's protocol (Element Call, issue 12).
//!
//! What exists so far is the MatrixRTC authorization service (MSC4195): a client trades a
//! Matrix OpenID token for a LiveKit access token (a JWT) naming its room and identity. The
//! LiveKit signalling endpoint those tokens are for is not built yet.

pub mod config;
pub mod naming;
pub mod openid;
pub mod service;
pub mod token;

pub use config::LiveKitConfig;
