//! Wire types the focus speaks (to-device call events, data-channel messages, stream metadata)
//! and the messages passed between the signalling side and the media plane.
//!
//! Parsing is tolerant: every field a client may omit is optional, and both the stable and the
//! unstable names of PROTOCOL.md are accepted. Validation of what a given event must carry is
//! the job of whoever consumes it.

pub mod datachannel;
pub mod event;
pub mod metadata;
pub mod plane;

pub use event::{CallEvent, CallEventContent, CallEventKind, Candidate, SessionDescription};
pub use metadata::{SdpStreamMetadata, StreamMetadata, TrackInfo};
pub use plane::{CallKey, FromMedia, ToMedia, conference_key};
