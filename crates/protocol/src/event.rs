//! To-device call events (MSC2746 with the MSC3401 group-call fields).

use crate::metadata::SdpStreamMetadata;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kinds of to-device call event the focus handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallEventKind {
    /// `m.call.invite`: a device offers a call.
    Invite,
    /// `m.call.answer`: the callee answers.
    Answer,
    /// `m.call.candidates`: trickled ICE candidates.
    Candidates,
    /// `m.call.select_answer`: the caller picked a callee.
    SelectAnswer,
    /// `m.call.negotiate`: a renegotiation offer or answer.
    Negotiate,
    /// `m.call.sdp_stream_metadata_changed`: mute state or stream description changed.
    SdpStreamMetadataChanged,
    /// `m.call.reject`: the callee declines.
    Reject,
    /// `m.call.hangup`: the call ends.
    Hangup,
}

const KINDS: [(CallEventKind, &str); 8] = [
    (CallEventKind::Invite, "m.call.invite"),
    (CallEventKind::Answer, "m.call.answer"),
    (CallEventKind::Candidates, "m.call.candidates"),
    (CallEventKind::SelectAnswer, "m.call.select_answer"),
    (CallEventKind::Negotiate, "m.call.negotiate"),
    (
        CallEventKind::SdpStreamMetadataChanged,
        "m.call.sdp_stream_metadata_changed",
    ),
    (CallEventKind::Reject, "m.call.reject"),
    (CallEventKind::Hangup, "m.call.hangup"),
];

/// The unstable name clients also use for `m.call.sdp_stream_metadata_changed`.
pub const UNSTABLE_METADATA_CHANGED: &str = "org.matrix.call.sdp_stream_metadata_changed";

impl CallEventKind {
    /// Maps an event `type` (stable or unstable name) to a kind.
    pub fn from_type(event_type: &str) -> Option<Self> {
        if event_type == UNSTABLE_METADATA_CHANGED {
            return Some(Self::SdpStreamMetadataChanged);
        }
        KINDS
            .iter()
            .find(|(_, name)| *name == event_type)
            .map(|(kind, _)| *kind)
    }

    /// The stable event type the focus sends.
    pub fn as_type(self) -> &'static str {
        KINDS
            .iter()
            .find(|(kind, _)| *kind == self)
            .map(|(_, name)| *name)
            .unwrap_or("m.call.hangup")
    }
}

/// An SDP offer or answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    /// `offer` or `answer`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The SDP text.
    pub sdp: String,
}

impl SessionDescription {
    /// An offer carrying `sdp`.
    pub fn offer(sdp: impl Into<String>) -> Self {
        Self {
            kind: "offer".to_owned(),
            sdp: sdp.into(),
        }
    }

    /// An answer carrying `sdp`.
    pub fn answer(sdp: impl Into<String>) -> Self {
        Self {
            kind: "answer".to_owned(),
            sdp: sdp.into(),
        }
    }
}

/// One ICE candidate as clients send it; an empty `candidate` means end of candidates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The `candidate:` line, or empty for end of candidates.
    #[serde(default)]
    pub candidate: String,
    /// The media id the candidate belongs to.
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The m-line index the candidate belongs to.
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    /// The ICE username fragment the candidate belongs to.
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

impl Candidate {
    /// Whether this is the end-of-candidates marker.
    pub fn is_end(&self) -> bool {
        self.candidate.is_empty()
    }
}

/// Hangup reasons of MSC2746 and the earlier Go focus.
pub mod reason {
    /// ICE failed.
    pub const ICE_FAILED: &str = "ice_failed";
    /// ICE did not connect in time.
    pub const ICE_TIMEOUT: &str = "ice_timeout";
    /// The invite was not answered in time.
    pub const INVITE_TIMEOUT: &str = "invite_timeout";
    /// The user hung up.
    pub const USER_HANGUP: &str = "user_hangup";
    /// Media could not be set up.
    pub const USER_MEDIA_FAILED: &str = "user_media_failed";
    /// The callee is busy.
    pub const USER_BUSY: &str = "user_busy";
    /// Anything else.
    pub const UNKNOWN_ERROR: &str = "unknown_error";
    /// Data-channel pings stopped being answered.
    pub const KEEP_ALIVE_TIMEOUT: &str = "keep_alive_timeout";
}

/// The content of any to-device call event; which fields are present depends on the kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallEventContent {
    /// The peer connection this event belongs to.
    #[serde(default)]
    pub call_id: String,
    /// The sender's party id (clients use their device id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub party_id: Option<String>,
    /// Protocol version: `"1"` (or the integer 0 from old clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Value>,
    /// The conference (state key of `m.call`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf_id: Option<String>,
    /// The sender's device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The sender's session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_session_id: Option<String>,
    /// The receiver's session, or `"sfu"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_session_id: Option<String>,
    /// Per-call sequence number for reordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The room of the conference (Famedly requires it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    /// Invite: the offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<SessionDescription>,
    /// Answer: the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<SessionDescription>,
    /// Negotiate: the offer or answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<SessionDescription>,
    /// Invite and negotiate: milliseconds after which the offer is void.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<u64>,
    /// Invite: the user being called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitee: Option<String>,
    /// Invite: what the caller supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Value>,
    /// Candidates: the trickled candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<Candidate>>,
    /// Select answer: the callee the caller kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_party_id: Option<String>,
    /// Hangup: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Stream metadata under its stable key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_stream_metadata: Option<SdpStreamMetadata>,
    /// Stream metadata under its unstable key.
    #[serde(
        rename = "org.matrix.msc3077.sdp_stream_metadata",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub unstable_sdp_stream_metadata: Option<SdpStreamMetadata>,
    /// Message id some clients add for deduplication.
    #[serde(
        rename = "org.matrix.msgid",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub msgid: Option<String>,
}

impl CallEventContent {
    /// The stream metadata under either key, stable first.
    pub fn metadata(&self) -> Option<&SdpStreamMetadata> {
        self.sdp_stream_metadata
            .as_ref()
            .or(self.unstable_sdp_stream_metadata.as_ref())
    }

    /// Sets the stream metadata under both keys, as clients expect.
    pub fn set_metadata(&mut self, metadata: SdpStreamMetadata) {
        self.unstable_sdp_stream_metadata = Some(metadata.clone());
        self.sdp_stream_metadata = Some(metadata);
    }

    /// The hangup reason, `user_hangup` when missing.
    pub fn hangup_reason(&self) -> &str {
        self.reason.as_deref().unwrap_or(reason::USER_HANGUP)
    }
}

/// A decoded to-device call event.
#[derive(Clone, Debug, PartialEq)]
pub struct CallEvent {
    /// Which event this is.
    pub kind: CallEventKind,
    /// Its content.
    pub content: CallEventContent,
}

/// Why a to-device event could not be decoded as a call event.
#[derive(Debug)]
pub enum DecodeError {
    /// The type is not a call event type.
    NotACallEvent,
    /// The content does not have the shape of a call event.
    Malformed(serde_json::Error),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotACallEvent => write!(f, "not a call event type"),
            Self::Malformed(err) => write!(f, "malformed call event content: {err}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl CallEvent {
    /// Decodes a to-device event's `type` and `content`.
    pub fn decode(event_type: &str, content: &Value) -> Result<Self, DecodeError> {
        let kind = CallEventKind::from_type(event_type).ok_or(DecodeError::NotACallEvent)?;
        let content = CallEventContent::deserialize(content).map_err(DecodeError::Malformed)?;
        Ok(Self { kind, content })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_invite_with_unstable_metadata() {
        let content = json!({
            "call_id": "c1", "party_id": "DEV", "version": "1", "conf_id": "conf",
            "device_id": "DEV", "sender_session_id": "S1", "dest_session_id": "sfu", "seq": 0,
            "offer": {"type": "offer", "sdp": "v=0"}, "lifetime": 60000,
            "org.matrix.msc3077.sdp_stream_metadata": {"stream": {"purpose": "m.usermedia"}}
        });
        let event = CallEvent::decode("m.call.invite", &content).unwrap();
        assert_eq!(event.kind, CallEventKind::Invite);
        assert_eq!(event.content.offer.as_ref().unwrap().sdp, "v=0");
        assert_eq!(
            event.content.metadata().unwrap()["stream"].purpose,
            "m.usermedia"
        );
    }

    #[test]
    fn accepts_integer_version_and_unstable_type() {
        let content = json!({"call_id": "c1", "version": 0, "sdp_stream_metadata": {}});
        let event = CallEvent::decode(UNSTABLE_METADATA_CHANGED, &content).unwrap();
        assert_eq!(event.kind, CallEventKind::SdpStreamMetadataChanged);
        assert_eq!(event.content.version, Some(json!(0)));
    }

    #[test]
    fn rejects_unknown_type_and_bad_shape() {
        assert!(matches!(
            CallEvent::decode("m.room.message", &json!({})),
            Err(DecodeError::NotACallEvent)
        ));
        assert!(matches!(
            CallEvent::decode("m.call.invite", &json!({"call_id": 5})),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn set_metadata_writes_both_keys() {
        let mut content = CallEventContent::default();
        content.set_metadata(SdpStreamMetadata::new());
        let value = serde_json::to_value(&content).unwrap();
        assert!(value.get("sdp_stream_metadata").is_some());
        assert!(
            value
                .get("org.matrix.msc3077.sdp_stream_metadata")
                .is_some()
        );
    }

    #[test]
    fn every_kind_round_trips_its_type() {
        for (kind, name) in KINDS {
            assert_eq!(CallEventKind::from_type(name), Some(kind));
            assert_eq!(kind.as_type(), name);
        }
    }
}
