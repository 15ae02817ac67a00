//! Messages on the `"datachannel"` data channel between a device and the focus (MSC3898).

use crate::event::SessionDescription;
use crate::metadata::SdpStreamMetadata;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The label of the data channel clients open for focus signalling.
pub const LABEL: &str = "datachannel";

/// One data-channel message: `{"type": T, "content": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "content")]
pub enum DataChannelMessage {
    /// Client → focus: tracks to start and stop receiving.
    #[serde(rename = "m.call.track_subscription")]
    TrackSubscription(TrackSubscription),
    /// Either way: a renegotiation offer or answer.
    #[serde(rename = "m.call.negotiate")]
    Negotiate(Negotiate),
    /// Either way: stream metadata (from the focus: what may be subscribed to).
    #[serde(
        rename = "m.call.sdp_stream_metadata_changed",
        alias = "org.matrix.call.sdp_stream_metadata_changed"
    )]
    SdpStreamMetadataChanged(MetadataChanged),
    /// Focus → client keepalive.
    #[serde(rename = "m.call.ping")]
    Ping(Empty),
    /// Client → focus keepalive answer.
    #[serde(rename = "m.call.pong")]
    Pong(Empty),
    /// Either way: the call ends.
    #[serde(rename = "m.call.hangup")]
    Hangup(Hangup),
    /// Focus → client: who is speaking now (Cascade's own message, from RFC 6464 audio levels).
    #[serde(rename = "cascade.active_speaker")]
    ActiveSpeaker(ActiveSpeaker),
    /// Focus → publisher: the simulcast layers of one of its tracks that are wanted: up to the
    /// highest one a subscriber receives or asks for (Cascade's own message; the layers above
    /// may stop being encoded).
    #[serde(rename = "cascade.subscribed_layers")]
    SubscribedLayers(SubscribedLayers),
}

impl DataChannelMessage {
    /// Parses a text message.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Serializes to the text sent on the channel.
    pub fn to_text(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The message's `type`, for logs and metrics.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::TrackSubscription(_) => "m.call.track_subscription",
            Self::Negotiate(_) => "m.call.negotiate",
            Self::SdpStreamMetadataChanged(_) => "m.call.sdp_stream_metadata_changed",
            Self::Ping(_) => "m.call.ping",
            Self::Pong(_) => "m.call.pong",
            Self::Hangup(_) => "m.call.hangup",
            Self::ActiveSpeaker(_) => "cascade.active_speaker",
            Self::SubscribedLayers(_) => "cascade.subscribed_layers",
        }
    }
}

/// An empty content object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `m.call.track_subscription` content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackSubscription {
    /// Tracks to start receiving.
    #[serde(default)]
    pub subscribe: Vec<TrackRequest>,
    /// Tracks to stop receiving.
    #[serde(default)]
    pub unsubscribe: Vec<TrackRef>,
}

impl TrackSubscription {
    /// The message that takes a receiver subscribed to `current` (stream id, track id) to
    /// `wanted`: new tracks with the render size `size` gives each (width, height, pixels),
    /// dropped ones; `None` when nothing changes.
    pub fn change(
        current: &BTreeSet<(String, String)>,
        wanted: &BTreeSet<(String, String)>,
        size: impl Fn(&str, &str) -> Option<(u32, u32)>,
    ) -> Option<Self> {
        let subscribe: Vec<TrackRequest> = wanted
            .difference(current)
            .map(|(stream_id, track_id)| {
                let size = size(stream_id, track_id);
                TrackRequest {
                    stream_id: stream_id.clone(),
                    track_id: track_id.clone(),
                    width: size.map(|s| s.0),
                    height: size.map(|s| s.1),
                }
            })
            .collect();
        let unsubscribe: Vec<TrackRef> = current
            .difference(wanted)
            .map(|(stream_id, track_id)| TrackRef {
                stream_id: stream_id.clone(),
                track_id: track_id.clone(),
            })
            .collect();
        (!subscribe.is_empty() || !unsubscribe.is_empty()).then_some(Self {
            subscribe,
            unsubscribe,
        })
    }
}

/// A track a client wants, with the size it will render it at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackRequest {
    /// The publisher's stream id.
    pub stream_id: String,
    /// The publisher's track id.
    pub track_id: String,
    /// Render width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Render height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

/// A track by stream and track id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackRef {
    /// The publisher's stream id.
    pub stream_id: String,
    /// The publisher's track id.
    pub track_id: String,
}

/// `m.call.negotiate` content on the data channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Negotiate {
    /// The offer or answer.
    pub description: SessionDescription,
    /// Stream metadata of the sender.
    #[serde(default)]
    pub sdp_stream_metadata: SdpStreamMetadata,
}

/// `m.call.sdp_stream_metadata_changed` content.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataChanged {
    /// The metadata.
    #[serde(default)]
    pub sdp_stream_metadata: SdpStreamMetadata,
}

/// `m.call.hangup` content on the data channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hangup {
    /// Why; missing means `user_hangup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `cascade.active_speaker` content: the loudest speaking participant of the conference.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveSpeaker {
    /// The speaker's user.
    pub user_id: String,
    /// The speaker's device.
    pub device_id: String,
    /// The stream carrying the speaker's audio.
    pub stream_id: String,
}

/// `cascade.subscribed_layers` content: which simulcast layers of a published track are
/// wanted (every layer up to the highest one a subscriber receives or asks for).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedLayers {
    /// The publisher's stream id.
    pub stream_id: String,
    /// The publisher's track id.
    pub track_id: String,
    /// RTP stream ids (`q`, `h`, `f`) of the wanted layers, lowest first; empty when nobody
    /// receives the track.
    pub rids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subscription_and_ping() {
        let msg = DataChannelMessage::parse(
            r#"{"type":"m.call.track_subscription","content":{"subscribe":[{"stream_id":"s","track_id":"t","width":320,"height":180}]}}"#,
        )
        .unwrap();
        let DataChannelMessage::TrackSubscription(sub) = msg else {
            panic!("wrong variant")
        };
        assert_eq!(sub.subscribe[0].width, Some(320));
        assert!(sub.unsubscribe.is_empty());
        let ping = DataChannelMessage::parse(r#"{"type":"m.call.ping","content":{}}"#).unwrap();
        assert_eq!(ping, DataChannelMessage::Ping(Empty {}));
    }

    #[test]
    fn round_trips_negotiate() {
        let msg = DataChannelMessage::Negotiate(Negotiate {
            description: SessionDescription::offer("v=0"),
            sdp_stream_metadata: SdpStreamMetadata::new(),
        });
        assert_eq!(DataChannelMessage::parse(&msg.to_text()).unwrap(), msg);
    }

    #[test]
    fn unknown_type_is_an_error() {
        assert!(DataChannelMessage::parse(r#"{"type":"m.call.bogus","content":{}}"#).is_err());
        assert!(DataChannelMessage::parse("not json").is_err());
    }
}
