//! Test support for Cascade.
//!
//! The main item is [`Synapse`]: a real Synapse homeserver listening on
//! 127.0.0.1, installed into a virtualenv under the workspace target directory
//! on first use and started fresh (own temp dir, own sqlite database) for each
//! test. [`Synapse::start_federating_pair`] starts two that federate with each
//! other over TLS on loopback, each named after its federation listener
//! (`127.0.0.1:<port>`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let synapse = cascade_testkit::Synapse::start().await?;
//! let alice = synapse.register("alice", "secret-password", false).await?;
//! println!("{} has token {}", alice.user_id, alice.access_token);
//! # Ok(())
//! # }
//! ```

pub mod chromium;
mod conference;
mod config;
mod focus;
mod install;
pub mod npm;
mod register;
mod server;

pub use conference::{Conference, FOCUS_LOCALPART, party};
pub use focus::{Focus, FocusOptions};
pub use install::{SYNAPSE_VERSION, ensure_installed};
pub use register::{Registered, register_with_secret};
pub use server::Synapse;
