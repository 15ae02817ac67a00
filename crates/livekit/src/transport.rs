//! A LiveKit client's two peer connections with the media plane, sans-IO: the client's
//! offers, answers and candidates in, messages for the media plane out; the media plane's
//! answers, offers and candidates in, responses for the client out.
//!
//! A LiveKit client (protocol 16, `subscriber_primary`) has a *publisher* connection, which it
//! offers whenever it publishes, and a *subscriber* connection, which the server offers right
//! after the join and again whenever what the client receives changes. Each is a call of the
//! media plane ([`ToMedia::Publisher`], [`ToMedia::Subscriber`]) in the conference of the
//! LiveKit room. Offers and answers carry a number (`SessionDescription.id`): the client
//! numbers its publisher offers and applies an answer only when it names the offer it
//! answers; the server numbers its subscriber offers and the client's answer names them.
//!
//! Forwarded tracks must carry the msid `"<PA_sid>|<TR_sid>" "<TR_sid>"` or the receiving
//! client drops them. The media plane forwards a track under the msid the publisher offered
//! it with, so the publisher's offer is rewritten on the way in: the track the client named
//! with its `cid` in `add_track` gets its participant's and its own sid.

use cascade_protocol::event::{Candidate, SessionDescription};
use cascade_protocol::{CallKey, FromMedia, ToMedia};
use livekit_protocol as proto;
use proto::signal_response::Message as Response;

/// The session id of a participant's publisher connection's call.
pub const PUBLISHER: &str = "livekit-publisher";

/// The session id of a participant's subscriber connection's call.
pub const SUBSCRIBER: &str = "livekit-subscriber";

/// The conf id of every LiveKit room's conference: the room name alone tells conferences
/// apart (see [`cascade_protocol::conference_key`]).
pub const CONF_ID: &str = "livekit";

/// The most tracks one `UpdateSubscription` or `UpdateTrackSettings` may name; a longer one
/// is refused whole (every track of a large room fits; a flood does not reach the media plane).
pub const MAX_TRACKS_PER_REQUEST: usize = 256;

/// The render height a `MEDIUM` quality stands for: the middle layer of a 720p or 1080p
/// publisher's three.
pub const MEDIUM_HEIGHT: u32 = 360;

/// Which of its two connections a message concerns, as the client numbers them
/// (`SignalTarget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The connection the client sends on.
    Publisher,
    /// The connection the client receives on.
    Subscriber,
}

/// The media plane's call of the `target` connection of the participant with `identity` and
/// sid `participant_sid` in the room named `room`.
pub fn call_of(room: &str, identity: &str, participant_sid: &str, target: Target) -> CallKey {
    CallKey {
        user_id: identity.to_owned(),
        device_id: participant_sid.to_owned(),
        session_id: match target {
            Target::Publisher => PUBLISHER,
            Target::Subscriber => SUBSCRIBER,
        }
        .to_owned(),
        call_id: room.to_owned(),
    }
}

/// What a client's request or a media-plane message led to.
#[derive(Debug, Default, PartialEq)]
pub struct Exchange {
    /// For the media plane, in order.
    pub to_media: Vec<ToMedia>,
    /// For the client, in order.
    pub responses: Vec<proto::SignalResponse>,
    /// Why the request was refused, for counting (`None` when it was not).
    pub refused: Option<&'static str>,
    /// The media plane ended a connection: end the session.
    pub ended: bool,
}

/// One participant's two connections.
#[derive(Debug)]
pub struct Transports {
    room: String,
    identity: String,
    participant_sid: String,
    /// Whether the publisher connection's call is open in the media plane.
    publishing: bool,
    /// The id of the client's latest publisher offer, which the answer names.
    offer_id: u32,
    /// The id of the server's latest subscriber offer.
    subscriber_offer_id: u32,
    /// The sid of the participant last told to be the active speaker.
    speaker: Option<String>,
}

impl Transports {
    /// The connections of participant `participant_sid` with `identity` in the room named
    /// `room`.
    pub fn new(room: &str, identity: &str, participant_sid: &str) -> Self {
        Self {
            room: room.to_owned(),
            identity: identity.to_owned(),
            participant_sid: participant_sid.to_owned(),
            publishing: false,
            offer_id: 0,
            subscriber_offer_id: 0,
            speaker: None,
        }
    }

    /// The media plane's call for the connection `target`: user = identity, device = the
    /// participant sid, session = [`PUBLISHER`] or [`SUBSCRIBER`], call id = the room name.
    pub fn call(&self, target: Target) -> CallKey {
        call_of(&self.room, &self.identity, &self.participant_sid, target)
    }

    /// Which connection `call` is, if it is one of this participant's.
    pub fn target_of(&self, call: &CallKey) -> Option<Target> {
        [Target::Publisher, Target::Subscriber]
            .into_iter()
            .find(|target| self.call(*target) == *call)
    }

    /// What starts the subscriber connection, right after the join (the server offers it even
    /// before there is anything to receive: it carries the data channels); it receives the
    /// room's tracks when `receive` (the token's `canSubscribe`).
    pub fn start(&self, receive: bool) -> ToMedia {
        ToMedia::Subscriber {
            call: self.call(Target::Subscriber),
            conf_id: CONF_ID.to_owned(),
            room_id: Some(self.room.clone()),
            receive,
        }
    }

    /// What ends both connections (the session ended for `reason`).
    pub fn end(&self, reason: &str) -> Vec<ToMedia> {
        [Target::Publisher, Target::Subscriber]
            .into_iter()
            .filter(|target| *target == Target::Subscriber || self.publishing)
            .map(|target| ToMedia::Close {
                call: self.call(target),
                reason: reason.to_owned(),
            })
            .collect()
    }

    /// The client's publisher offer: opens the publisher connection's call, or renegotiates
    /// it. `tracks` are the participant's tracks with the `cid` each was added with; the msid
    /// of each offered track the client named in `add_track` becomes
    /// `"<PA_sid>|<TR_sid>" "<TR_sid>"`.
    pub fn offer(
        &mut self,
        description: proto::SessionDescription,
        tracks: &[(String, String)],
    ) -> Exchange {
        let mut exchange = Exchange::default();
        if description.r#type != "offer" {
            exchange.refused = Some("not_an_offer");
            return exchange;
        }
        self.offer_id = description.id;
        let sdp = with_track_sids(&description.sdp, &self.participant_sid, tracks);
        let call = self.call(Target::Publisher);
        exchange.to_media.push(if self.publishing {
            ToMedia::Negotiate {
                call,
                description: SessionDescription::offer(sdp),
                metadata: None,
            }
        } else {
            self.publishing = true;
            ToMedia::Publisher {
                call,
                conf_id: CONF_ID.to_owned(),
                room_id: Some(self.room.clone()),
                offer_sdp: sdp,
            }
        });
        exchange
    }

    /// The client's answer to the latest subscriber offer; an answer to an older one is
    /// refused (a newer offer is on its way to the client).
    pub fn answer(&mut self, description: proto::SessionDescription) -> Exchange {
        let mut exchange = Exchange::default();
        if description.r#type != "answer" {
            exchange.refused = Some("not_an_answer");
        } else if description.id != 0 && description.id != self.subscriber_offer_id {
            exchange.refused = Some("stale_answer");
        } else {
            exchange.to_media.push(ToMedia::Negotiate {
                call: self.call(Target::Subscriber),
                description: SessionDescription::answer(description.sdp),
                metadata: None,
            });
        }
        exchange
    }

    /// A candidate the client trickles (`candidate_init` is the JSON of its
    /// `RTCIceCandidateInit`); refused when it does not parse, or names the publisher
    /// connection before it was offered.
    pub fn trickle(&self, trickle: proto::TrickleRequest) -> Exchange {
        let mut exchange = Exchange::default();
        let target = if trickle.target == proto::SignalTarget::Subscriber as i32 {
            Target::Subscriber
        } else {
            Target::Publisher
        };
        if target == Target::Publisher && !self.publishing {
            exchange.refused = Some("trickle_before_offer");
            return exchange;
        }
        match serde_json::from_str::<Candidate>(&trickle.candidate_init) {
            Ok(candidate) => exchange.to_media.push(ToMedia::Candidates {
                call: self.call(target),
                candidates: vec![candidate],
            }),
            Err(_) => exchange.refused = Some("bad_candidate"),
        }
        exchange
    }

    /// The client's `UpdateTrackSettings` for tracks it receives: each named track's render
    /// height (`height`, else from the older `quality`: `LOW` the lowest layer, `MEDIUM` a
    /// layer at least [`MEDIUM_HEIGHT`] tall, `HIGH` the best, `OFF` none), or that it wants
    /// none of it for now (`disabled`).
    pub fn track_settings(&self, settings: proto::UpdateTrackSettings) -> Exchange {
        let quality = proto::VideoQuality::try_from(settings.quality).ok();
        let off = quality == Some(proto::VideoQuality::Off);
        let height = match (settings.height, quality) {
            (0, Some(proto::VideoQuality::Low)) => Some(1),
            (0, Some(proto::VideoQuality::Medium)) => Some(MEDIUM_HEIGHT),
            (0, _) => None,
            (height, _) => Some(height),
        };
        let mut exchange = Exchange::default();
        if settings.track_sids.len() > MAX_TRACKS_PER_REQUEST {
            exchange.refused = Some("too_many_tracks");
            return exchange;
        }
        for track_id in settings.track_sids {
            exchange.to_media.push(ToMedia::TrackSettings {
                call: self.call(Target::Subscriber),
                track_id,
                height,
                disabled: settings.disabled || off,
            });
        }
        exchange
    }

    /// The client's `UpdateSubscription`: each named track (in `track_sids` or
    /// `participant_tracks`, once) is received again, or no longer.
    pub fn subscription(&self, update: proto::UpdateSubscription) -> Exchange {
        let mut tracks: Vec<String> = update.track_sids;
        for participant in update.participant_tracks {
            tracks.extend(participant.track_sids);
        }
        tracks.sort();
        tracks.dedup();
        let mut exchange = Exchange::default();
        if tracks.len() > MAX_TRACKS_PER_REQUEST {
            exchange.refused = Some("too_many_tracks");
            return exchange;
        }
        for track_id in tracks {
            exchange.to_media.push(ToMedia::Subscription {
                call: self.call(Target::Subscriber),
                track_id,
                subscribe: update.subscribe,
            });
        }
        exchange
    }

    /// A message of the media plane about one of the two connections: answers name the
    /// client's latest offer, the server's offers are numbered, candidates are trickled to the
    /// connection they belong to; a hangup ends the session. Messages about other calls are
    /// ignored.
    pub fn from_media(&mut self, message: FromMedia) -> Exchange {
        let mut exchange = Exchange::default();
        let Some(target) = self.target_of(message.call()) else {
            return exchange;
        };
        match message {
            FromMedia::Answer { sdp, .. } => exchange.responses.push(self.answer_for_client(sdp)),
            FromMedia::Invite { sdp, .. } => exchange.responses.push(self.offer_for_client(sdp)),
            FromMedia::Negotiate { description, .. } => {
                exchange.responses.push(if description.kind == "offer" {
                    self.offer_for_client(description.sdp)
                } else {
                    self.answer_for_client(description.sdp)
                })
            }
            FromMedia::Candidates { candidates, .. } => {
                for candidate in candidates.iter().filter(|c| !c.is_end()) {
                    let Ok(candidate_init) = serde_json::to_string(candidate) else {
                        continue;
                    };
                    exchange
                        .responses
                        .push(response(Response::Trickle(proto::TrickleRequest {
                            candidate_init,
                            target: match target {
                                Target::Publisher => proto::SignalTarget::Publisher,
                                Target::Subscriber => proto::SignalTarget::Subscriber,
                            } as i32,
                            r#final: false,
                        })));
                }
            }
            FromMedia::ActiveSpeaker { speaker, .. } => {
                if let Some(changed) = self.speakers_changed(&speaker) {
                    exchange.responses.push(changed);
                }
            }
            FromMedia::SubscribedLayers {
                layers, mime_type, ..
            } if target == Target::Publisher => {
                exchange
                    .responses
                    .push(subscribed_quality_update(&layers, &mime_type));
            }
            // Data packets are the session's to check and relay (see `crate::data`).
            FromMedia::SubscribedLayers { .. } | FromMedia::Data { .. } => {}
            FromMedia::Hangup { reason, .. } => {
                tracing::info!(
                    participant = self.participant_sid,
                    ?target,
                    reason,
                    "the media plane ended a livekit connection"
                );
                if target == Target::Publisher {
                    self.publishing = false;
                }
                exchange.ended = true;
            }
        }
        exchange
    }

    /// `SpeakersChanged` for a new active speaker of the conference, the publisher
    /// connection `speaker` of a participant of this room: it speaks, the one before does
    /// not. `None` when `speaker` is no LiveKit participant's of this room, or is already the
    /// speaker.
    fn speakers_changed(&mut self, speaker: &CallKey) -> Option<proto::SignalResponse> {
        if speaker.session_id != PUBLISHER || speaker.call_id != self.room {
            return None;
        }
        let sid = speaker.device_id.clone();
        if self.speaker.as_ref() == Some(&sid) {
            return None;
        }
        let mut speakers = vec![proto::SpeakerInfo {
            sid: sid.clone(),
            level: 1.0,
            active: true,
        }];
        if let Some(before) = self.speaker.replace(sid) {
            speakers.push(proto::SpeakerInfo {
                sid: before,
                level: 0.0,
                active: false,
            });
        }
        Some(response(Response::SpeakersChanged(
            proto::SpeakersChanged { speakers },
        )))
    }

    fn answer_for_client(&self, sdp: String) -> proto::SignalResponse {
        response(Response::Answer(proto::SessionDescription {
            r#type: "answer".to_owned(),
            sdp,
            id: self.offer_id,
            ..Default::default()
        }))
    }

    fn offer_for_client(&mut self, sdp: String) -> proto::SignalResponse {
        self.subscriber_offer_id = self.subscriber_offer_id.wrapping_add(1).max(1);
        response(Response::Offer(proto::SessionDescription {
            r#type: "offer".to_owned(),
            sdp,
            id: self.subscriber_offer_id,
            ..Default::default()
        }))
    }
}

/// `SubscribedQualityUpdate` for the layers of a published track that subscribers want
/// (LiveKit's "dynacast": a client that enables it stops encoding the others). The track's
/// id in the media plane is its `TR_` sid (the publisher's offer carries it, see
/// [`with_track_sids`]); rids `q`/`h`/`f` are LiveKit's low, medium and high qualities;
/// `mime_type` (`video/VP8`) names the codec the per-codec list is for.
fn subscribed_quality_update(
    layers: &cascade_protocol::datachannel::SubscribedLayers,
    mime_type: &str,
) -> proto::SignalResponse {
    let qualities: Vec<proto::SubscribedQuality> = [
        ("q", proto::VideoQuality::Low),
        ("h", proto::VideoQuality::Medium),
        ("f", proto::VideoQuality::High),
    ]
    .iter()
    .map(|(rid, quality)| proto::SubscribedQuality {
        quality: *quality as i32,
        enabled: layers.rids.iter().any(|r| r == rid),
    })
    .collect();
    let codec = mime_type
        .rsplit('/')
        .next()
        .unwrap_or(mime_type)
        .to_ascii_lowercase();
    // livekit-client 2.x reads the per-codec list (its codec named as in `video/<codec>`,
    // lower case); older clients the per-quality one, which the protocol marks deprecated.
    #[allow(deprecated)]
    let update = proto::SubscribedQualityUpdate {
        track_sid: layers.track_id.clone(),
        subscribed_qualities: qualities.clone(),
        subscribed_codecs: vec![proto::SubscribedCodec { codec, qualities }],
    };
    response(Response::SubscribedQualityUpdate(update))
}

/// `sdp` with the msid of every track named in `tracks` (`(cid, TR_sid)`) rewritten to
/// `"<participant_sid>|<TR_sid>" "<TR_sid>"`, and of any other track to
/// `"<participant_sid>|<cid>" "<participant_sid>-<cid>"`, in `a=msid:` lines and in
/// `a=ssrc:… msid:` lines (RFC 8830 §2); other lines are kept byte for byte.
pub fn with_track_sids(sdp: &str, participant_sid: &str, tracks: &[(String, String)]) -> String {
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        match rewrite_msid(body, participant_sid, tracks) {
            Some(rewritten) => {
                out.push_str(&rewritten);
                out.push_str(ending);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The line with its msid rewritten, when it is an msid line naming one of `tracks`.
fn rewrite_msid(line: &str, participant_sid: &str, tracks: &[(String, String)]) -> Option<String> {
    let (prefix, value) = if let Some(value) = line.strip_prefix("a=msid:") {
        ("a=msid:".to_owned(), value)
    } else if let Some(rest) = line.strip_prefix("a=ssrc:") {
        let (ssrc, attribute) = rest.split_once(' ')?;
        let value = attribute.strip_prefix("msid:")?;
        (format!("a=ssrc:{ssrc} msid:"), value)
    } else {
        return None;
    };
    let value = value.trim();
    let cid = value
        .split_once(' ')
        .map_or(value, |(_stream, cid)| cid.trim());
    Some(match tracks.iter().find(|(c, _)| c == cid) {
        Some((_, sid)) => format!("{prefix}{participant_sid}|{sid} {sid}"),
        // A track the client did not announce keeps a name of its own participant's, so that
        // it can never pass for another participant's track.
        None => format!("{prefix}{participant_sid}|{cid} {participant_sid}-{cid}"),
    })
}

fn response(message: Response) -> proto::SignalResponse {
    proto::SignalResponse {
        message: Some(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transports() -> Transports {
        Transports::new("room-hash", "@alice:hs:DEV", "PA_alice")
    }

    fn offer(sdp: &str, id: u32) -> proto::SessionDescription {
        proto::SessionDescription {
            r#type: "offer".into(),
            sdp: sdp.into(),
            id,
            ..Default::default()
        }
    }

    #[test]
    fn offered_tracks_get_the_participant_s_and_their_own_sid() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=msid:stream-1 cam-cid\r\n\
                   a=ssrc:1234 msid:stream-1 cam-cid\r\na=ssrc:1234 cname:x\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=msid:stream-1 unknown-cid\r\n";
        let tracks = vec![("cam-cid".to_owned(), "TR_cam".to_owned())];
        let rewritten = with_track_sids(sdp, "PA_alice", &tracks);
        assert_eq!(
            rewritten,
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=msid:PA_alice|TR_cam TR_cam\r\n\
             a=ssrc:1234 msid:PA_alice|TR_cam TR_cam\r\na=ssrc:1234 cname:x\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=msid:PA_alice|unknown-cid PA_alice-unknown-cid\r\n"
        );
        // Naming another participant's track gets a name of one's own.
        let forged = with_track_sids("a=msid:PA_bob|TR_cam TR_cam\r\n", "PA_eve", &[]);
        assert_eq!(forged, "a=msid:PA_eve|TR_cam PA_eve-TR_cam\r\n");
    }

    #[test]
    fn the_first_offer_opens_the_publisher_call_and_later_ones_renegotiate_it() {
        let mut t = transports();
        let first = t.offer(offer("v=0\r\n", 1), &[]);
        assert!(matches!(
            &first.to_media[..],
            [ToMedia::Publisher { call, conf_id, room_id: Some(room), .. }]
                if call.session_id == PUBLISHER && conf_id == CONF_ID && room == "room-hash"
        ));
        let second = t.offer(offer("v=0\r\n", 2), &[]);
        assert!(matches!(
            &second.to_media[..],
            [ToMedia::Negotiate { call, description, .. }]
                if call.session_id == PUBLISHER && description.kind == "offer"
        ));
        // The media plane's answer names the latest offer.
        let answer = t.from_media(FromMedia::Negotiate {
            call: t.call(Target::Publisher),
            description: SessionDescription::answer("v=0\r\n"),
            metadata: Default::default(),
        });
        let Some(Response::Answer(description)) = &answer.responses[0].message else {
            panic!("not an answer: {answer:?}");
        };
        assert_eq!((description.id, description.r#type.as_str()), (2, "answer"));
        // Closing ends both calls once the publisher one exists.
        assert_eq!(t.end("left").len(), 2);
        assert_eq!(transports().end("left").len(), 1);
    }

    #[test]
    fn server_offers_are_numbered_and_only_the_latest_answer_is_taken() {
        let mut t = transports();
        assert!(
            matches!(t.start(true), ToMedia::Subscriber { call, receive: true, .. } if call.session_id == SUBSCRIBER)
        );
        for expected in 1..=2 {
            let offered = t.from_media(FromMedia::Negotiate {
                call: t.call(Target::Subscriber),
                description: SessionDescription::offer("v=0\r\n"),
                metadata: Default::default(),
            });
            let Some(Response::Offer(description)) = &offered.responses[0].message else {
                panic!("not an offer: {offered:?}");
            };
            assert_eq!(description.id, expected);
        }
        let answer = |id| proto::SessionDescription {
            r#type: "answer".into(),
            sdp: "v=0\r\n".into(),
            id,
            ..Default::default()
        };
        assert_eq!(t.answer(answer(1)).refused, Some("stale_answer"));
        let taken = t.answer(answer(2));
        assert!(matches!(
            &taken.to_media[..],
            [ToMedia::Negotiate { call, description, .. }]
                if call.session_id == SUBSCRIBER && description.kind == "answer"
        ));
    }

    #[test]
    fn a_new_active_speaker_speaks_and_the_one_before_does_not() {
        let mut t = transports();
        let bob = Transports::new("room-hash", "@bob:hs:D", "PA_bob");
        let carol = Transports::new("room-hash", "@carol:hs:D", "PA_carol");
        let told = |t: &mut Transports, speaker: CallKey| {
            let exchange = t.from_media(FromMedia::ActiveSpeaker {
                call: t.call(Target::Subscriber),
                speaker,
            });
            exchange
                .responses
                .into_iter()
                .map(|r| match r.message {
                    Some(Response::SpeakersChanged(changed)) => changed
                        .speakers
                        .into_iter()
                        .map(|s| (s.sid, s.active))
                        .collect::<Vec<_>>(),
                    other => panic!("not SpeakersChanged: {other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            told(&mut t, bob.call(Target::Publisher)),
            vec![vec![("PA_bob".to_owned(), true)]]
        );
        // The same speaker again: nothing to say.
        assert!(told(&mut t, bob.call(Target::Publisher)).is_empty());
        assert_eq!(
            told(&mut t, carol.call(Target::Publisher)),
            vec![vec![
                ("PA_carol".to_owned(), true),
                ("PA_bob".to_owned(), false)
            ]]
        );
        // A call that is no LiveKit participant's publisher connection here is not named.
        let mut device = carol.call(Target::Publisher);
        device.session_id = "a-matrix-session".into();
        assert!(told(&mut t, device).is_empty());
    }

    #[test]
    fn a_subscription_update_names_each_track_once() {
        let update = proto::UpdateSubscription {
            track_sids: vec!["TR_a".into()],
            subscribe: false,
            participant_tracks: vec![proto::ParticipantTracks {
                participant_sid: "PA_bob".into(),
                track_sids: vec!["TR_a".into(), "TR_b".into()],
            }],
        };
        let sent: Vec<(String, bool)> = transports()
            .subscription(update)
            .to_media
            .into_iter()
            .map(|m| match m {
                ToMedia::Subscription {
                    call,
                    track_id,
                    subscribe,
                } => {
                    assert_eq!(call.session_id, SUBSCRIBER);
                    (track_id, subscribe)
                }
                other => panic!("not a subscription: {other:?}"),
            })
            .collect();
        assert_eq!(sent, vec![("TR_a".into(), false), ("TR_b".into(), false)]);
        let flood = proto::UpdateSubscription {
            track_sids: (0..=MAX_TRACKS_PER_REQUEST)
                .map(|i| format!("TR_{i}"))
                .collect(),
            subscribe: true,
            participant_tracks: Vec::new(),
        };
        let refused = transports().subscription(flood);
        assert_eq!(refused.refused, Some("too_many_tracks"));
        assert!(refused.to_media.is_empty());
        let flood = proto::UpdateTrackSettings {
            track_sids: (0..=MAX_TRACKS_PER_REQUEST)
                .map(|i| format!("TR_{i}"))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            transports().track_settings(flood).refused,
            Some("too_many_tracks")
        );
    }

    #[test]
    fn track_settings_name_a_height_or_disable() {
        let t = transports();
        let settings =
            |height, quality: proto::VideoQuality, disabled| proto::UpdateTrackSettings {
                track_sids: vec!["TR_a".into(), "TR_b".into()],
                disabled,
                quality: quality as i32,
                height,
                ..Default::default()
            };
        let sent = |s| -> Vec<(String, Option<u32>, bool)> {
            t.track_settings(s)
                .to_media
                .into_iter()
                .map(|m| match m {
                    ToMedia::TrackSettings {
                        call,
                        track_id,
                        height,
                        disabled,
                    } => {
                        assert_eq!(call.session_id, SUBSCRIBER);
                        (track_id, height, disabled)
                    }
                    other => panic!("not track settings: {other:?}"),
                })
                .collect()
        };
        use proto::VideoQuality::*;
        assert_eq!(
            sent(settings(180, High, false)),
            vec![
                ("TR_a".into(), Some(180), false),
                ("TR_b".into(), Some(180), false)
            ]
        );
        assert_eq!(sent(settings(0, Low, false))[0].1, Some(1));
        assert_eq!(sent(settings(0, Medium, false))[0].1, Some(MEDIUM_HEIGHT));
        assert_eq!(sent(settings(0, High, false))[0].1, None);
        assert!(sent(settings(0, Off, false))[0].2);
        assert!(sent(settings(720, High, true))[0].2);
    }

    #[test]
    fn candidates_go_to_their_connection_and_bad_ones_are_refused() {
        let mut t = transports();
        let candidate = r#"{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}"#;
        let trickle = |target: proto::SignalTarget, init: &str| proto::TrickleRequest {
            candidate_init: init.into(),
            target: target as i32,
            r#final: false,
        };
        let before = t.trickle(trickle(proto::SignalTarget::Publisher, candidate));
        assert_eq!(before.refused, Some("trickle_before_offer"));
        let subscriber = t.trickle(trickle(proto::SignalTarget::Subscriber, candidate));
        assert!(matches!(
            &subscriber.to_media[..],
            [ToMedia::Candidates { call, candidates }]
                if call.session_id == SUBSCRIBER && candidates[0].sdp_mid.as_deref() == Some("0")
        ));
        let bad = t.trickle(trickle(proto::SignalTarget::Subscriber, "{nope"));
        assert_eq!(bad.refused, Some("bad_candidate"));
        // The media plane's candidates go out on the connection they belong to.
        let out = t.from_media(FromMedia::Candidates {
            call: t.call(Target::Subscriber),
            candidates: vec![
                serde_json::from_str(candidate).expect("a candidate"),
                Candidate::default(),
            ],
        });
        assert_eq!(out.responses.len(), 1, "the end marker is not sent");
        let Some(Response::Trickle(sent)) = &out.responses[0].message else {
            panic!("not a trickle: {out:?}");
        };
        assert_eq!(sent.target, proto::SignalTarget::Subscriber as i32);
        assert!(sent.candidate_init.contains("typ host"));
        // Another participant's call is none of this one's business; a hangup ends it.
        let other = Transports::new("room-hash", "@bob:hs:D", "PA_bob");
        let ignored = t.from_media(FromMedia::Hangup {
            call: other.call(Target::Subscriber),
            reason: "ice_failed".into(),
        });
        assert_eq!(ignored, Exchange::default());
        let ended = t.from_media(FromMedia::Hangup {
            call: t.call(Target::Subscriber),
            reason: "ice_failed".into(),
        });
        assert!(ended.ended);
    }

    #[test]
    #[allow(deprecated)]
    fn wanted_layers_reach_the_publisher_as_subscribed_qualities() {
        use cascade_protocol::datachannel::SubscribedLayers;
        let mut t = Transports::new("room-hash", "@alice:hs:D", "PA_alice");
        let layers = SubscribedLayers {
            stream_id: "PA_alice|TR_cam".into(),
            track_id: "TR_cam".into(),
            rids: vec!["q".into(), "f".into()],
        };
        let told = t.from_media(FromMedia::SubscribedLayers {
            call: t.call(Target::Publisher),
            layers: layers.clone(),
            mime_type: "video/VP8".into(),
        });
        let [update] = &told.responses[..] else {
            panic!("one response: {told:?}");
        };
        let Some(Response::SubscribedQualityUpdate(update)) = &update.message else {
            panic!("not SubscribedQualityUpdate: {update:?}");
        };
        assert_eq!(update.track_sid, "TR_cam");
        let [codec] = &update.subscribed_codecs[..] else {
            panic!("one codec: {update:?}");
        };
        assert_eq!(codec.codec, "vp8");
        assert_eq!(codec.qualities, update.subscribed_qualities);
        let enabled: Vec<(i32, bool)> = update
            .subscribed_qualities
            .iter()
            .map(|q| (q.quality, q.enabled))
            .collect();
        assert_eq!(
            enabled,
            vec![
                (proto::VideoQuality::Low as i32, true),
                (proto::VideoQuality::Medium as i32, false),
                (proto::VideoQuality::High as i32, true),
            ]
        );
        // Only the publisher connection publishes: the subscriber's call says nothing.
        let nothing = t.from_media(FromMedia::SubscribedLayers {
            call: t.call(Target::Subscriber),
            layers,
            mime_type: "video/VP8".into(),
        });
        assert_eq!(nothing, Exchange::default());
    }
}
