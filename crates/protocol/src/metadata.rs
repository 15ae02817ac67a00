//! `sdp_stream_metadata`: what each MediaStream of a peer connection carries and whose it is.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Stream metadata keyed by MediaStream id (the `msid` stream id in SDP).
pub type SdpStreamMetadata = BTreeMap<String, StreamMetadata>;

/// Purpose of a stream showing a camera and microphone.
pub const PURPOSE_USERMEDIA: &str = "m.usermedia";
/// Purpose of a stream showing a screen share.
pub const PURPOSE_SCREENSHARE: &str = "m.screenshare";

/// One MediaStream's description.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamMetadata {
    /// `m.usermedia` or `m.screenshare`.
    #[serde(default = "default_purpose")]
    pub purpose: String,
    /// Whether the stream's audio is muted (MSC3291).
    #[serde(default)]
    pub audio_muted: bool,
    /// Whether the stream's video is muted (MSC3291).
    #[serde(default)]
    pub video_muted: bool,
    /// The publishing user, when the focus describes a stream it forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The publishing device, when the focus describes a stream it forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The stream's tracks by track id, when the focus describes a stream it forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracks: Option<BTreeMap<String, TrackInfo>>,
}

fn default_purpose() -> String {
    PURPOSE_USERMEDIA.to_owned()
}

/// One track of a stream the focus forwards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// `audio` or `video`.
    pub kind: String,
    /// Width of the largest layer, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height of the largest layer, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}
