//! What a conference forwards: from each publisher track to its subscribers.

use crate::egress::OutboundStream;
use crate::participant::{Participant, ParticipantId, PublicationId};
use cascade_forward::{ExtensionMap, Subscription};
use cascade_protocol::metadata::{link_track_id, split_link_track_id};
use cascade_protocol::{SdpStreamMetadata, StreamMetadata, TrackInfo};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::{BTreeMap, HashMap};

/// One publisher track forwarded to one subscriber.
#[derive(Debug)]
pub struct Route {
    /// Who receives it.
    pub subscriber: ParticipantId,
    /// The subscriber-side sender carrying it.
    pub sender_id: RTCRtpSenderId,
    /// The outgoing stream (its SSRC is the one the subscriber sees): sender-report counters
    /// and recent packets.
    pub stream: OutboundStream,
    /// The payload type the subscriber negotiated for the codec, once negotiated.
    pub payload_type: Option<u8>,
    /// The codec's MIME type (to find the payload type).
    pub mime_type: String,
    /// The publisher's stream id.
    pub stream_id: String,
    /// The publisher's track id.
    pub track_id: String,
    /// The height the subscriber renders the track at, if it said (picks the layer).
    pub requested_height: Option<u32>,
    /// Header-extension ids from the publisher's to the subscriber's, once negotiated.
    pub extensions: ExtensionMap,
    /// The subscriber's id of the transport-cc header extension, where it negotiated it: each
    /// forwarded packet carries the subscriber's transport-wide sequence number (see
    /// [`crate::downlink`]).
    pub transport_cc: Option<u8>,
    /// The highest layer the subscriber's downlink allows (see
    /// [`cascade_forward::allocation`]).
    pub ceiling: cascade_forward::allocation::Ceiling,
    /// Layer choice, keyframe gating and rewriting.
    pub forward: Subscription,
    /// The route carries one layer whatever the size (a layer's own track over a link with
    /// another focus); the layer review leaves it alone.
    pub layer_pinned: bool,
    /// The subscriber wants nothing of the track for now (a LiveKit client's disabled
    /// track): paused, whatever the publisher does.
    pub disabled: bool,
}

/// Routes of one event loop, keyed by (publisher, publication); FxHash, since it is looked up
/// per packet with the focus's own ids as keys.
pub type Routes = rustc_hash::FxHashMap<(ParticipantId, PublicationId), Vec<Route>>;

/// The participants of each conference in one event loop.
pub type Conferences = HashMap<String, Vec<ParticipantId>>;

/// The metadata the focus announces to `viewer`: every stream the other participants publish,
/// with the user and device it comes from and its tracks.
///
/// A stream that arrived over a link with another focus is attributed to the member of that
/// focus its metadata names, and is never announced to a link (each stream crosses one link at
/// most, so the foci's full mesh has no loops). To a device, every track another focus
/// announced over a link is offered, carried over the link yet or not: the link subscribes to
/// a track once a device here subscribes to it.
pub fn available_streams(
    viewer: ParticipantId,
    members: &[ParticipantId],
    participants: &rustc_hash::FxHashMap<ParticipantId, Participant>,
) -> SdpStreamMetadata {
    let mut streams = SdpStreamMetadata::new();
    let viewer_is_link = participants.get(&viewer).is_some_and(Participant::is_link);
    for id in members.iter().filter(|id| **id != viewer) {
        let Some(publisher) = participants.get(id) else {
            continue;
        };
        if viewer_is_link && publisher.is_link() {
            continue;
        }
        for publication in &publisher.publications {
            let kind = match publication.kind {
                RtpCodecKind::Audio => "audio",
                _ => "video",
            };
            // Over a link every simulcast layer is a track of its own, so the other focus gets
            // them all and picks a layer per subscriber of its own.
            let track_ids: Vec<String> = if viewer_is_link {
                let base = &publication.track_id;
                let rids = publication.layers.iter().map(|l| l.rid.as_deref());
                rids.map(|rid| link_track_id(base, rid)).collect()
            } else {
                vec![publication.track_id.clone()]
            };
            for track_id in track_ids {
                offer_track(
                    &mut streams,
                    publisher,
                    &publication.stream_id,
                    track_id,
                    kind,
                );
            }
        }
        if publisher.is_link() {
            for (stream_id, stream) in &publisher.metadata {
                for (track_id, info) in stream.tracks.iter().flatten() {
                    if info.kind == "audio" || info.kind == "video" {
                        let track_id = split_link_track_id(track_id).0.to_owned();
                        offer_track(&mut streams, publisher, stream_id, track_id, &info.kind);
                    }
                }
            }
        }
    }
    streams
}

/// Adds a track of `kind` (`audio` or `video`) to the announced stream `stream_id`, described
/// (purpose, mute, owner) as `publisher` describes it; skipped when no owner is known.
fn offer_track(
    streams: &mut SdpStreamMetadata,
    publisher: &Participant,
    stream_id: &str,
    track_id: String,
    kind: &str,
) {
    let Some((user_id, device_id)) = publisher.owner_of(stream_id) else {
        return;
    };
    let described = publisher.metadata.get(stream_id);
    let entry = streams
        .entry(stream_id.to_owned())
        .or_insert_with(|| StreamMetadata {
            purpose: described
                .map(|m| m.purpose.clone())
                .unwrap_or_else(|| cascade_protocol::metadata::PURPOSE_USERMEDIA.to_owned()),
            audio_muted: described.is_some_and(|m| m.audio_muted),
            video_muted: described.is_some_and(|m| m.video_muted),
            user_id: Some(user_id.to_owned()),
            device_id: Some(device_id.to_owned()),
            tracks: Some(BTreeMap::new()),
        });
    entry.tracks.get_or_insert_with(BTreeMap::new).insert(
        track_id,
        TrackInfo {
            kind: kind.to_owned(),
            width: None,
            height: None,
        },
    );
}
