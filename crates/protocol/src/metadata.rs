//! `sdp_stream_metadata`: what each MediaStream of a peer connection carries and whose it is.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Stream metadata keyed by MediaStream id (the `msid` stream id in SDP).
pub type SdpStreamMetadata = BTreeMap<String, StreamMetadata>;

/// Purpose of a stream showing a camera and microphone.
pub const PURPOSE_USERMEDIA: &str = "m.usermedia";
/// Purpose of a stream showing a screen share.
pub const PURPOSE_SCREENSHARE: &str = "m.screenshare";

/// What separates a track id from its simulcast layer's RTP stream id in the track ids a
/// focus announces and sends over a link with another focus (README, "Cascaded foci").
pub const LINK_LAYER_SEPARATOR: char = '~';

/// The track id a focus uses over a link for one layer of a publisher's track: the publisher's
/// track id, [`LINK_LAYER_SEPARATOR`], and the layer's RTP stream id (`q`, `h`, `f`; empty for
/// a track sent without simulcast). Every track id over a link has exactly one such suffix.
pub fn link_track_id(track_id: &str, rid: Option<&str>) -> String {
    format!("{track_id}{LINK_LAYER_SEPARATOR}{}", rid.unwrap_or(""))
}

/// Splits a track id received over a link into the publisher's track id and the layer's RTP
/// stream id (`None` for an empty suffix); a track id without the separator is taken whole,
/// without a layer.
pub fn split_link_track_id(track_id: &str) -> (&str, Option<&str>) {
    match track_id.rsplit_once(LINK_LAYER_SEPARATOR) {
        Some((base, "")) => (base, None),
        Some((base, rid)) => (base, Some(rid)),
        None => (track_id, None),
    }
}

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

#[cfg(test)]
mod tests {
    use super::{link_track_id, split_link_track_id};

    #[test]
    fn link_track_ids_round_trip_with_and_without_a_layer() {
        for (track, rid) in [
            ("video-1", Some("q")),
            ("a~b", Some("f")),
            ("audio", None),
            ("x~", None),
        ] {
            assert_eq!(
                split_link_track_id(&link_track_id(track, rid)),
                (track, rid)
            );
        }
        assert_eq!(split_link_track_id("plain"), ("plain", None));
    }
}
