//! Messages between the signalling side and the media plane.
//!
//! The signalling side decides *whether* a call exists (decoding, ordering, authorization);
//! the media plane owns the peer connection. Each side only ever sees the other through these.

use crate::event::{Candidate, SessionDescription};
use crate::metadata::SdpStreamMetadata;

/// One peer connection between a device and the focus.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey {
    /// The device's user.
    pub user_id: String,
    /// The device.
    pub device_id: String,
    /// The device's session (`sender_session_id`).
    pub session_id: String,
    /// The call id the device chose.
    pub call_id: String,
}

impl std::fmt::Display for CallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.user_id, self.device_id, self.session_id, self.call_id
        )
    }
}

/// The media plane's key of a conference: its room and its conf id, since conf ids are only
/// unique within a room (every MatrixRTC room call has the conf id `""`, MSC4143), and calls of
/// two rooms must never share media. `room_id` is `None` only without a room (open
/// authorization and an invite that named none).
pub fn conference_key(room_id: Option<&str>, conf_id: &str) -> String {
    // A room id never contains a space (`!opaque:server`), so the key cannot be forged by a
    // conf id.
    format!("{} {conf_id}", room_id.unwrap_or(""))
}

/// Signalling → media plane.
#[derive(Clone, Debug, PartialEq)]
pub enum ToMedia {
    /// An authorized invite: answer it.
    Open {
        /// The call.
        call: CallKey,
        /// The conference the device joins.
        conf_id: String,
        /// The room whose membership authorized the call (`None` only where authorization is
        /// `open` and the invite named no room): a conference is its room and conf id.
        room_id: Option<String>,
        /// The offer's SDP.
        offer_sdp: String,
        /// The device's stream metadata.
        metadata: SdpStreamMetadata,
        /// Whether the caller is another focus linking with this one (issue 11): its peer
        /// connection carries the other focus's local members' streams, not its own.
        link: bool,
    },
    /// Place a link call to another focus in a conference (this focus is the caller of the
    /// link, see the README's "Cascaded foci"): make an offer, answered with
    /// [`FromMedia::Invite`].
    Link {
        /// The call: the peer focus's user and device, an empty session until it answers, and
        /// the call id this focus chose.
        call: CallKey,
        /// The conference.
        conf_id: String,
        /// The room of the conference.
        room_id: Option<String>,
    },
    /// A LiveKit client's publisher connection (issue 12): answer its offer like `Open`, but
    /// the call publishes only, has no MSC3401 data channel, and later offers and answers come
    /// as [`ToMedia::Negotiate`] over the LiveKit signal connection.
    Publisher {
        /// The call (the participant's publisher connection).
        call: CallKey,
        /// The conference: the LiveKit room's.
        conf_id: String,
        /// The room part of the conference key.
        room_id: Option<String>,
        /// The offer's SDP.
        offer_sdp: String,
    },
    /// A LiveKit client's subscriber connection (issue 12): the focus offers it (the offer goes
    /// out as [`FromMedia::Invite`]), subscribes it by itself to every track the conference's
    /// other participants publish (when `receive`), and offers each change as
    /// [`FromMedia::Negotiate`]; the client's answers come as [`ToMedia::Negotiate`].
    Subscriber {
        /// The call (the participant's subscriber connection).
        call: CallKey,
        /// The conference: the LiveKit room's.
        conf_id: String,
        /// The room part of the conference key.
        room_id: Option<String>,
        /// Whether it receives the others' tracks (the token's `canSubscribe`).
        receive: bool,
    },
    /// A LiveKit client's `UpdateTrackSettings` for a track its subscriber connection receives
    /// (issue 12): the height it renders the track at, which picks the simulcast layer, or
    /// that it wants nothing of the track for now (`disabled`).
    TrackSettings {
        /// The subscriber connection's call.
        call: CallKey,
        /// The track: its publisher's track id.
        track_id: String,
        /// The height rendered, in pixels; `None` for the best layer.
        height: Option<u32>,
        /// Whether nothing of the track is to be forwarded until it is enabled again.
        disabled: bool,
    },
    /// A LiveKit client's `UpdateSubscription` for a track of the room's others (issue 12):
    /// its subscriber connection receives the track (again), or no longer does.
    Subscription {
        /// The subscriber connection's call.
        call: CallKey,
        /// The track: its publisher's track id.
        track_id: String,
        /// Whether to receive it.
        subscribe: bool,
    },
    /// A LiveKit participant's data packet to relay (issue 12): send `payload` on the
    /// `_reliable` (or `_lossy`) data channel of each of `to`, the subscriber connections of
    /// the room's recipients, which are in the conference of `call`.
    Data {
        /// The sender's connection the packet came from (the loop holding it relays it).
        call: CallKey,
        /// The conference: the LiveKit room's (it goes to that conference's loop only).
        conf_id: String,
        /// The room part of the conference key.
        room_id: Option<String>,
        /// The recipients' subscriber connections.
        to: Vec<CallKey>,
        /// Whether it goes on the reliable channel (else the lossy one).
        reliable: bool,
        /// The packet, as the recipients get it (a `DataPacket` in protobuf).
        payload: Vec<u8>,
    },
    /// Trickled remote candidates (an empty candidate string ends them).
    Candidates {
        /// The call.
        call: CallKey,
        /// The candidates.
        candidates: Vec<Candidate>,
    },
    /// A to-device `m.call.negotiate`.
    Negotiate {
        /// The call.
        call: CallKey,
        /// The offer or answer.
        description: SessionDescription,
        /// The device's stream metadata.
        metadata: Option<SdpStreamMetadata>,
    },
    /// A to-device `m.call.sdp_stream_metadata_changed`.
    Metadata {
        /// The call.
        call: CallKey,
        /// The device's stream metadata.
        metadata: SdpStreamMetadata,
    },
    /// The device hung up, or its session was replaced: tear the call down.
    Close {
        /// The call.
        call: CallKey,
        /// Why.
        reason: String,
    },
}

impl ToMedia {
    /// The call this message concerns.
    pub fn call(&self) -> &CallKey {
        match self {
            Self::Open { call, .. }
            | Self::Link { call, .. }
            | Self::Publisher { call, .. }
            | Self::Subscriber { call, .. }
            | Self::TrackSettings { call, .. }
            | Self::Subscription { call, .. }
            | Self::Data { call, .. }
            | Self::Candidates { call, .. }
            | Self::Negotiate { call, .. }
            | Self::Metadata { call, .. }
            | Self::Close { call, .. } => call,
        }
    }
}

/// Media plane → signalling: what to send to the device over to-device messages.
#[derive(Clone, Debug, PartialEq)]
pub enum FromMedia {
    /// The answer to an `Open`.
    Answer {
        /// The call.
        call: CallKey,
        /// The answer's SDP.
        sdp: String,
        /// The focus's stream metadata for this call.
        metadata: SdpStreamMetadata,
    },
    /// The offer of a link call this focus places ([`ToMedia::Link`]): send `m.call.invite`.
    Invite {
        /// The call.
        call: CallKey,
        /// The offer's SDP.
        sdp: String,
    },
    /// Local candidates to trickle (an empty candidate string ends them).
    Candidates {
        /// The call.
        call: CallKey,
        /// The candidates.
        candidates: Vec<Candidate>,
    },
    /// A to-device `m.call.negotiate` answer (to a to-device negotiate offer).
    Negotiate {
        /// The call.
        call: CallKey,
        /// The offer or answer.
        description: SessionDescription,
        /// The focus's stream metadata.
        metadata: SdpStreamMetadata,
    },
    /// The active speaker of the call's conference changed (sent only for LiveKit subscriber
    /// connections, issue 12; devices hear it on their data channel).
    ActiveSpeaker {
        /// The call to tell.
        call: CallKey,
        /// The call whose audio is now the loudest.
        speaker: CallKey,
    },
    /// The simulcast layers of one of a LiveKit publisher connection's tracks that subscribers
    /// want changed (issue 13; devices hear it on their data channel).
    SubscribedLayers {
        /// The publishing call.
        call: CallKey,
        /// Its track and the layers wanted.
        layers: crate::datachannel::SubscribedLayers,
        /// The track's codec (`video/VP8`).
        mime_type: String,
    },
    /// A binary message a LiveKit client sent on its `_reliable` or `_lossy` data channel
    /// (issue 12): a `DataPacket` for the signalling side to check and relay (see
    /// [`ToMedia::Data`]).
    Data {
        /// The client's connection it came on.
        call: CallKey,
        /// Whether it came on the reliable channel (else the lossy one).
        reliable: bool,
        /// The message, as sent.
        payload: Vec<u8>,
    },
    /// The media plane ended the call (ICE failure, keepalive timeout, bad offer, hangup over
    /// the data channel): send `m.call.hangup` with this reason unless the device hung up.
    Hangup {
        /// The call.
        call: CallKey,
        /// Why.
        reason: String,
    },
}

impl FromMedia {
    /// The call this message concerns.
    pub fn call(&self) -> &CallKey {
        match self {
            Self::Answer { call, .. }
            | Self::Invite { call, .. }
            | Self::Candidates { call, .. }
            | Self::Negotiate { call, .. }
            | Self::ActiveSpeaker { call, .. }
            | Self::SubscribedLayers { call, .. }
            | Self::Data { call, .. }
            | Self::Hangup { call, .. } => call,
        }
    }
}
