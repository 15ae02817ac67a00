//! Cascade's forwarding core, free of I/O, async and locks.
//!
//! The media plane hands each received RTP packet's header fields and payload to the
//! [`Subscription`]s of its publication; each says whether to forward it and with which sequence
//! number and timestamp, so every subscriber sees one continuous stream whatever layer it is on.

pub mod allocation;
pub mod bitrate;
pub mod codec;
pub mod demux;
pub mod extension;
pub mod keyframe;
pub mod layer;
pub mod replay;
pub mod rewrite;
pub mod speaker;
pub mod subscription;
pub mod vp8;

pub use codec::Codec;
pub use extension::ExtensionMap;
pub use keyframe::is_keyframe;
pub use layer::{LayerId, LayerInfo};
pub use replay::ReplayWindow;
pub use rewrite::Rewriter;
pub use subscription::{DropReason, PacketMeta, Subscription, Verdict};
