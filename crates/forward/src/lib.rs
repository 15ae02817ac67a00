//! Cascade's forwarding core, free of I/O, async and locks.
//!
//! The media plane hands each received RTP packet's header fields and payload to the
//! [`Subscription`]s of its publication; each says whether to forward it and with which sequence
//! number and timestamp, so every subscriber sees one continuous stream.

pub mod codec;
pub mod keyframe;
pub mod rewrite;
pub mod subscription;

pub use codec::Codec;
pub use keyframe::is_keyframe;
pub use rewrite::Rewriter;
pub use subscription::{DropReason, PacketMeta, Subscription, Verdict};
