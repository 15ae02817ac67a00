//! One LiveKit client's signalling session, sans-IO: requests in, responses out.
//!
//! A client connects with an access token (see [`crate::token`]); the first message it gets is
//! a `JoinResponse` naming its room and itself (participant sid `PA_…`, identity = the token's
//! `sub`), the other participants, and how often to ping. It pings (`ping_req`, and the older
//! `ping`) and gets `pong_resp`/`pong`; `leave` ends the session.
//!
//! `add_track` announces a track (`TrackPublishedResponse`, sid `TR_…`, the client's
//! encryption type echoed) and `mute` mutes or unmutes one: both change the participant's info,
//! which the others in the room are sent. Who else is in the room is [`crate::rooms`]'
//! business. Offers, answers and candidates go to the media plane through the participant's
//! [`Transports`], and so do `UpdateTrackSettings` (layer choice, pausing) and
//! `UpdateSubscription`. The data packets the client sends on its data channels come from the
//! media plane and are checked here (`canPublishData`, see [`crate::data`]) before the room's
//! recipients get them.

use crate::token::Claims;
use crate::transport::{Exchange, Transports};
use cascade_protocol::{FromMedia, ToMedia};
use livekit_protocol as proto;
use proto::signal_request::Message as Request;
use proto::signal_response::Message as Response;

/// Seconds between a client's pings, as the `JoinResponse` tells it.
pub const PING_INTERVAL_SECS: i32 = 5;

/// Seconds without a message after which the server gives a client up (and the client the
/// server), as the `JoinResponse` tells it.
pub const PING_TIMEOUT_SECS: i32 = 15;

/// The LiveKit protocol version this endpoint speaks (what `livekit-client` 2.x sends).
pub const PROTOCOL_VERSION: i32 = 16;

/// The server version reported to clients: the focus's own.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The most tracks one participant may publish; further `add_track` requests are refused.
pub const MAX_TRACKS: usize = 16;

/// What a request led to.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Responses for the client, in order.
    pub responses: Vec<proto::SignalResponse>,
    /// The client left: close the connection after the responses.
    pub leave: bool,
    /// The request is one this endpoint does not handle yet (its name, for counting).
    pub unsupported: Option<&'static str>,
    /// The request was refused (why, for counting): a track beyond [`MAX_TRACKS`], or one
    /// the participant does not have.
    pub refused: Option<&'static str>,
    /// The participant's info changed (its tracks): the others in the room must be told.
    pub changed: bool,
    /// For the media plane, in order.
    pub to_media: Vec<ToMedia>,
    /// A data packet to relay to the room's recipients (see [`crate::data`]).
    pub data: Option<DataToRelay>,
}

/// A data packet a participant sent, checked and ready for its recipients.
#[derive(Debug, PartialEq)]
pub struct DataToRelay {
    /// The sender's connection it came on.
    pub call: cascade_protocol::CallKey,
    /// Whether it came on (and goes out on) the reliable channel.
    pub reliable: bool,
    /// The packet and who gets it.
    pub relay: crate::data::Relay,
}

/// One client's session in a room.
#[derive(Debug)]
pub struct Session {
    room: proto::Room,
    participant: proto::ParticipantInfo,
    /// The client's id of each of `participant.tracks`, in order.
    cids: Vec<String>,
    /// The participant's publisher and subscriber connections.
    transports: Transports,
}

impl Session {
    /// A session for the client whose token carried `claims`, as `participant` (see
    /// [`participant_info`]) in the room with sid `room_sid` where `others` are already,
    /// joining at `now_secs` (Unix seconds); returns it with the `JoinResponse` to send first.
    pub fn join(
        claims: &Claims,
        room_sid: &str,
        participant: proto::ParticipantInfo,
        others: Vec<proto::ParticipantInfo>,
        now_secs: i64,
    ) -> (Self, proto::SignalResponse) {
        let room = proto::Room {
            sid: room_sid.to_owned(),
            name: claims.video.room.clone(),
            creation_time: now_secs,
            ..Default::default()
        };
        let join = proto::JoinResponse {
            room: Some(room.clone()),
            participant: Some(participant.clone()),
            other_participants: others,
            server_version: SERVER_VERSION.to_owned(),
            server_info: Some(proto::ServerInfo {
                version: SERVER_VERSION.to_owned(),
                protocol: PROTOCOL_VERSION,
                ..Default::default()
            }),
            subscriber_primary: true,
            // No session resumption here: after a network blip the client joins afresh (the
            // same identity replaces its older session, see `crate::rooms`) instead of
            // asking to resume one this endpoint cannot resume.
            client_configuration: Some(proto::ClientConfiguration {
                resume_connection: proto::ClientConfigSetting::Disabled as i32,
                ..Default::default()
            }),
            ping_interval: PING_INTERVAL_SECS,
            ping_timeout: PING_TIMEOUT_SECS,
            ..Default::default()
        };
        let transports = Transports::new(&room.name, &participant.identity, &participant.sid);
        let session = Self {
            room,
            participant,
            cids: Vec::new(),
            transports,
        };
        (session, response(Response::Join(join)))
    }

    /// The participant's sid (`PA_…`).
    pub fn participant_sid(&self) -> &str {
        &self.participant.sid
    }

    /// The participant as the others see it: identity, permissions, tracks.
    pub fn participant(&self) -> &proto::ParticipantInfo {
        &self.participant
    }

    /// The room's name.
    pub fn room_name(&self) -> &str {
        &self.room.name
    }

    /// What starts the media of the session, once the `JoinResponse` is sent: the subscriber
    /// connection.
    pub fn start_media(&self) -> ToMedia {
        self.transports.start(self.may(|p| p.can_subscribe))
    }

    /// What ends the media of the session (it ended for `reason`).
    pub fn end_media(&self, reason: &str) -> Vec<ToMedia> {
        self.transports.end(reason)
    }

    /// The media plane's calls of this session, publisher's first.
    pub fn calls(&self) -> [cascade_protocol::CallKey; 2] {
        use crate::transport::Target;
        [
            self.transports.call(Target::Publisher),
            self.transports.call(Target::Subscriber),
        ]
    }

    /// Handles a message of the media plane about this session's calls (see
    /// [`Transports::from_media`]); a connection the media plane ended ends the session.
    pub fn on_media(&mut self, message: FromMedia) -> Outcome {
        if let FromMedia::Data {
            call,
            reliable,
            payload,
        } = message
        {
            let mut outcome = Outcome::default();
            if !self.may(|p| p.can_publish_data) {
                outcome.refused = Some("data_without_permission");
                return outcome;
            }
            let (identity, sid) = (&self.participant.identity, &self.participant.sid);
            match crate::data::relay(&payload, identity, sid, reliable) {
                Ok(relay) => {
                    outcome.data = Some(DataToRelay {
                        call,
                        reliable,
                        relay,
                    });
                }
                Err(refusal) => outcome.refused = Some(refusal.name()),
            }
            return outcome;
        }
        let exchange = self.transports.from_media(message);
        let mut outcome = Outcome {
            leave: exchange.ended,
            ..Outcome::default()
        };
        take(&mut outcome, exchange);
        outcome
    }

    /// Handles one request from the client, at `now_ms` (Unix ms).
    pub fn on_request(&mut self, request: proto::SignalRequest, now_ms: i64) -> Outcome {
        let mut outcome = Outcome::default();
        match request.message {
            Some(Request::PingReq(ping)) => {
                outcome
                    .responses
                    .push(response(Response::PongResp(proto::Pong {
                        last_ping_timestamp: ping.timestamp,
                        timestamp: now_ms,
                    })))
            }
            Some(Request::Ping(timestamp)) => {
                outcome.responses.push(response(Response::Pong(timestamp)));
            }
            Some(Request::Leave(_)) => outcome.leave = true,
            // Media sections need `canPublish`; a data-only offer (the data channels)
            // `canPublishData`.
            Some(Request::Offer(description))
                if !self.may(|p| p.can_publish)
                    && (has_media(&description.sdp) || !self.may(|p| p.can_publish_data)) =>
            {
                outcome.refused = Some("cannot_publish");
            }
            Some(Request::Offer(description)) => {
                let tracks: Vec<(String, String)> = self
                    .cids
                    .iter()
                    .cloned()
                    .zip(self.participant.tracks.iter().map(|t| t.sid.clone()))
                    .collect();
                take(&mut outcome, self.transports.offer(description, &tracks));
            }
            Some(Request::Answer(description)) => {
                take(&mut outcome, self.transports.answer(description));
            }
            Some(Request::Trickle(trickle)) => {
                take(&mut outcome, self.transports.trickle(trickle));
            }
            Some(Request::Subscription(update)) => {
                take(&mut outcome, self.transports.subscription(update));
            }
            Some(Request::TrackSetting(settings)) => {
                take(&mut outcome, self.transports.track_settings(settings));
            }
            Some(Request::AddTrack(request)) => self.add_track(request, &mut outcome),
            Some(Request::Mute(request)) => {
                match self
                    .participant
                    .tracks
                    .iter_mut()
                    .find(|t| t.sid == request.sid)
                {
                    Some(track) => {
                        if track.muted != request.muted {
                            track.muted = request.muted;
                            self.changed(&mut outcome);
                        }
                    }
                    None => outcome.refused = Some("unknown_track"),
                }
            }
            Some(other) => outcome.unsupported = Some(request_name(&other)),
            None => outcome.unsupported = Some("empty"),
        }
        outcome
    }

    /// `add_track`: the track is announced (sid `TR_…`) and answered with
    /// `TrackPublishedResponse` naming the client's `cid`; the same `cid` again gets the same
    /// track.
    fn add_track(&mut self, request: proto::AddTrackRequest, outcome: &mut Outcome) {
        if !self.may(|p| p.can_publish) {
            outcome.refused = Some("cannot_publish");
            return;
        }
        let cid = request.cid.clone();
        if let Some(track) = self
            .participant
            .tracks
            .iter()
            .zip(&self.cids)
            .find_map(|(track, c)| (*c == cid).then(|| track.clone()))
        {
            outcome.responses.push(published(cid, track));
            return;
        }
        if self.participant.tracks.len() >= MAX_TRACKS {
            outcome.refused = Some("too_many_tracks");
            return;
        }
        let track = proto::TrackInfo {
            sid: new_sid("TR_"),
            mime_type: mime_type(&request),
            r#type: request.r#type,
            name: request.name,
            muted: request.muted,
            width: request.width,
            height: request.height,
            source: request.source,
            encryption: request.encryption,
            stream: request.stream,
            ..Default::default()
        };
        self.participant.tracks.push(track.clone());
        self.cids.push(cid.clone());
        outcome.responses.push(published(cid, track));
        self.changed(outcome);
    }

    /// Whether the token's grant allows what `allowed` checks.
    fn may(&self, allowed: impl Fn(&proto::ParticipantPermission) -> bool) -> bool {
        self.participant.permission.as_ref().is_some_and(allowed)
    }

    /// Marks the participant's info changed: a newer version for the others to take.
    fn changed(&mut self, outcome: &mut Outcome) {
        self.participant.version = self.participant.version.wrapping_add(1);
        outcome.changed = true;
    }
}

/// Whether an SDP has an audio or video section (RFC 8866 §5.14).
fn has_media(sdp: &str) -> bool {
    sdp.lines()
        .any(|line| line.starts_with("m=audio") || line.starts_with("m=video"))
}

/// Adds what `exchange` led to to `outcome`.
fn take(outcome: &mut Outcome, exchange: Exchange) {
    outcome.to_media.extend(exchange.to_media);
    outcome.responses.extend(exchange.responses);
    outcome.refused = outcome.refused.or(exchange.refused);
}

/// The MIME type of the track `request` announces: for video the first codec it says it
/// encodes (`simulcast_codecs`; VP8 when it names none), for audio Opus. A receiving client
/// needs it to decrypt the track end to end.
fn mime_type(request: &proto::AddTrackRequest) -> String {
    if request.r#type != proto::TrackType::Video as i32 {
        return "audio/opus".to_owned();
    }
    match request
        .simulcast_codecs
        .iter()
        .find(|c| !c.codec.is_empty())
    {
        Some(codec) if codec.codec.contains('/') => codec.codec.clone(),
        Some(codec) => format!("video/{}", codec.codec.to_ascii_uppercase()),
        None => "video/VP8".to_owned(),
    }
}

fn published(cid: String, track: proto::TrackInfo) -> proto::SignalResponse {
    response(Response::TrackPublished(proto::TrackPublishedResponse {
        cid,
        track: Some(track),
    }))
}

/// The participant whose token carried `claims`, with sid `sid`, joining at `now_secs` (Unix
/// seconds): its identity is the token's `sub`, its permissions the token's grant.
pub fn participant_info(claims: &Claims, sid: &str, now_secs: i64) -> proto::ParticipantInfo {
    proto::ParticipantInfo {
        sid: sid.to_owned(),
        identity: claims.sub.clone(),
        state: proto::participant_info::State::Joined as i32,
        joined_at: now_secs,
        permission: Some(proto::ParticipantPermission {
            can_subscribe: claims.video.can_subscribe,
            can_publish: claims.video.can_publish,
            can_publish_data: claims.video.can_publish_data,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn response(message: Response) -> proto::SignalResponse {
    proto::SignalResponse {
        message: Some(message),
    }
}

/// A request's name, for counting what is not handled.
fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Offer(_) => "offer",
        Request::Answer(_) => "answer",
        Request::Trickle(_) => "trickle",
        Request::AddTrack(_) => "add_track",
        Request::Mute(_) => "mute",
        Request::Subscription(_) => "subscription",
        Request::TrackSetting(_) => "track_setting",
        Request::Leave(_) => "leave",
        Request::SubscriptionPermission(_) => "subscription_permission",
        Request::SyncState(_) => "sync_state",
        Request::Simulate(_) => "simulate",
        Request::Ping(_) => "ping",
        Request::UpdateMetadata(_) => "update_metadata",
        Request::PingReq(_) => "ping_req",
        Request::UpdateAudioTrack(_) => "update_audio_track",
        Request::UpdateVideoTrack(_) => "update_video_track",
        _ => "other",
    }
}

/// A LiveKit-style sid: `prefix` and 12 random base-62 characters.
pub fn new_sid(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let mut sid = String::with_capacity(prefix.len() + 12);
    sid.push_str(prefix);
    for _ in 0..12 {
        sid.push(char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]));
    }
    sid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims::join("key", "@alice:hs:DEVICE", "!room:hs", 1_000, 60)
    }

    #[test]
    fn the_join_response_names_the_room_and_the_token_s_identity() {
        let alice = participant_info(&claims(), "PA_y", 1_000);
        let bob = participant_info(
            &Claims::join("key", "@bob:hs:D", "!room:hs", 1_000, 60),
            "PA_z",
            900,
        );
        let (session, first) = Session::join(&claims(), "RM_x", alice, vec![bob.clone()], 1_000);
        let Some(Response::Join(join)) = first.message else {
            panic!("the first response is not a JoinResponse: {first:?}");
        };
        let participant = join.participant.expect("a participant");
        assert_eq!(participant.sid, "PA_y");
        assert_eq!(participant.identity, "@alice:hs:DEVICE");
        assert_eq!(join.room.expect("a room").name, "!room:hs");
        assert!(!join.server_info.expect("server info").version.is_empty());
        assert!(join.ping_interval > 0 && join.ping_timeout > join.ping_interval);
        assert_eq!(join.other_participants, vec![bob]);
        assert_eq!(
            join.client_configuration.map(|c| c.resume_connection),
            Some(proto::ClientConfigSetting::Disabled as i32),
            "a client rejoins rather than resumes"
        );
        assert_eq!(session.participant_sid(), "PA_y");
    }

    #[test]
    fn data_packets_are_relayed_from_their_sender_and_only_with_can_publish_data() {
        use prost::Message as _;
        let packet = proto::DataPacket {
            participant_identity: "@mallory:hs:M".into(),
            value: Some(proto::data_packet::Value::ChatMessage(proto::ChatMessage {
                message: "hi".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
        .encode_to_vec();
        let alice = participant_info(&claims(), "PA_y", 1_000);
        let (mut session, _) = Session::join(&claims(), "RM_x", alice, Vec::new(), 1_000);
        let call = session.calls()[0].clone();
        let data = |payload: Vec<u8>| FromMedia::Data {
            call: call.clone(),
            reliable: true,
            payload,
        };
        let outcome = session.on_media(data(packet.clone()));
        let relayed = outcome.data.expect("the packet is relayed");
        assert_eq!((relayed.call, relayed.reliable), (call.clone(), true));
        let sent = proto::DataPacket::decode(relayed.relay.payload.as_slice()).unwrap();
        assert_eq!(sent.participant_identity, "@alice:hs:DEVICE");
        assert_eq!(sent.participant_sid, "PA_y");
        assert!(relayed.relay.to.everyone());
        let outcome = session.on_media(data(b"\xff\xff".to_vec()));
        assert_eq!(
            (outcome.data, outcome.refused),
            (None, Some("data_undecodable"))
        );
        // Without `canPublishData`, nothing is relayed.
        let mut muzzled = claims();
        muzzled.video.can_publish_data = false;
        let alice = participant_info(&muzzled, "PA_y", 1_000);
        let (mut session, _) = Session::join(&muzzled, "RM_x", alice, Vec::new(), 1_000);
        let outcome = session.on_media(data(packet));
        assert_eq!(
            (outcome.data, outcome.refused),
            (None, Some("data_without_permission"))
        );
    }

    #[test]
    fn pings_are_answered_leave_ends_and_the_rest_is_named() {
        let alice = participant_info(&claims(), "PA_y", 1_000);
        let (mut session, _) = Session::join(&claims(), "RM_x", alice, Vec::new(), 1_000);
        let request = |message| proto::SignalRequest {
            message: Some(message),
        };
        let outcome = session.on_request(
            request(Request::PingReq(proto::Ping {
                timestamp: 42,
                rtt: 3,
            })),
            5_000,
        );
        assert_eq!(
            outcome.responses,
            vec![response(Response::PongResp(proto::Pong {
                last_ping_timestamp: 42,
                timestamp: 5_000
            }))]
        );
        let outcome = session.on_request(request(Request::Ping(7)), 5_000);
        assert_eq!(outcome.responses, vec![response(Response::Pong(7))]);
        let outcome = session.on_request(
            request(Request::SyncState(proto::SyncState::default())),
            5_000,
        );
        assert_eq!(outcome.unsupported, Some("sync_state"));
        assert!(outcome.responses.is_empty() && !outcome.leave);
        let outcome = session.on_request(
            request(Request::Leave(proto::LeaveRequest::default())),
            5_000,
        );
        assert!(outcome.leave);
    }

    #[test]
    fn tracks_are_published_muted_and_bounded() {
        let alice = participant_info(&claims(), "PA_y", 1_000);
        let (mut session, _) = Session::join(&claims(), "RM_x", alice, Vec::new(), 1_000);
        let add = |cid: &str| proto::SignalRequest {
            message: Some(Request::AddTrack(proto::AddTrackRequest {
                cid: cid.into(),
                name: "camera".into(),
                r#type: proto::TrackType::Video as i32,
                width: 1280,
                height: 720,
                encryption: proto::encryption::Type::Gcm as i32,
                ..Default::default()
            })),
        };
        let outcome = session.on_request(add("c1"), 0);
        let Some(Response::TrackPublished(published)) = &outcome.responses[0].message else {
            panic!("not a TrackPublishedResponse: {outcome:?}");
        };
        assert_eq!(published.cid, "c1");
        let track = published.track.clone().expect("a track");
        assert!(track.sid.starts_with("TR_"), "{}", track.sid);
        assert_eq!(
            track.encryption,
            proto::encryption::Type::Gcm as i32,
            "echoed"
        );
        // A receiving client cannot decrypt a track whose MIME type it does not know.
        assert_eq!(track.mime_type, "video/VP8");
        assert!(outcome.changed);
        assert_eq!(session.participant().tracks, vec![track.clone()]);
        let version = session.participant().version;
        // The same cid again: the same track, nothing changed.
        let again = session.on_request(add("c1"), 0);
        assert_eq!(again.responses, outcome.responses);
        assert!(!again.changed);
        // Muting changes the participant's info, and its version.
        let mute = |sid: &str| proto::SignalRequest {
            message: Some(Request::Mute(proto::MuteTrackRequest {
                sid: sid.into(),
                muted: true,
            })),
        };
        assert!(session.on_request(mute(&track.sid), 0).changed);
        assert!(session.participant().tracks[0].muted);
        assert!(session.participant().version > version);
        assert_eq!(
            session.on_request(mute("TR_nope"), 0).refused,
            Some("unknown_track")
        );
        // At most MAX_TRACKS.
        for i in 1..MAX_TRACKS {
            assert!(session.on_request(add(&format!("c{}", i + 1)), 0).changed);
        }
        let beyond = session.on_request(add("one-too-many"), 0);
        assert_eq!(beyond.refused, Some("too_many_tracks"));
        assert!(beyond.responses.is_empty());
        assert_eq!(session.participant().tracks.len(), MAX_TRACKS);
    }

    #[test]
    fn a_token_without_publish_rights_publishes_nothing() {
        let mut viewer = claims();
        viewer.video.can_publish = false;
        viewer.video.can_publish_data = false;
        let alice = participant_info(&viewer, "PA_y", 1_000);
        let (mut session, _) = Session::join(&viewer, "RM_x", alice, Vec::new(), 1_000);
        let add = session.on_request(
            proto::SignalRequest {
                message: Some(Request::AddTrack(proto::AddTrackRequest {
                    cid: "c1".into(),
                    r#type: proto::TrackType::Audio as i32,
                    ..Default::default()
                })),
            },
            0,
        );
        assert_eq!(add.refused, Some("cannot_publish"));
        assert!(add.responses.is_empty() && !add.changed);
        let offer = session.on_request(
            proto::SignalRequest {
                message: Some(Request::Offer(proto::SessionDescription {
                    r#type: "offer".into(),
                    sdp: "v=0\r\n".into(),
                    id: 1,
                    ..Default::default()
                })),
            },
            0,
        );
        assert_eq!(offer.refused, Some("cannot_publish"));
        assert!(offer.to_media.is_empty());
        assert!(session.participant().tracks.is_empty());
        // With `canPublishData` alone, data channels may be offered but media may not.
        let mut data_only = claims();
        data_only.video.can_publish = false;
        let bob = participant_info(&data_only, "PA_z", 1_000);
        let (mut session, _) = Session::join(&data_only, "RM_x", bob, Vec::new(), 1_000);
        let offer = |sdp: &str| proto::SignalRequest {
            message: Some(Request::Offer(proto::SessionDescription {
                r#type: "offer".into(),
                sdp: sdp.into(),
                id: 1,
                ..Default::default()
            })),
        };
        let media = session.on_request(offer("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"), 0);
        assert_eq!(media.refused, Some("cannot_publish"));
        let data = session.on_request(
            offer("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"),
            0,
        );
        assert_eq!(data.refused, None);
        assert_eq!(data.to_media.len(), 1);
    }

    #[test]
    fn sids_have_their_prefix_and_differ() {
        let (a, b) = (new_sid("PA_"), new_sid("PA_"));
        assert!(a.starts_with("PA_") && a.len() == 15);
        assert_ne!(a, b);
    }
}
