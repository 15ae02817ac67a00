//! The LiveKit rooms this focus serves and who is in each, sans-IO: joins and leaves in, what
//! each participant must be told out.
//!
//! A room exists while someone is in it. A participant who joins is told who else is there (in
//! its `JoinResponse`); the others get a `ParticipantUpdate` naming it, and another when it
//! leaves (state `DISCONNECTED`). An identity joining a room it is already in replaces its
//! older session, which is sent a `leave` (`DUPLICATE_IDENTITY`), as LiveKit does.

use livekit_protocol as proto;
use proto::signal_response::Message as Response;
use std::collections::{BTreeMap, HashMap};

/// A response for the participant with the given sid.
pub type Notice = (String, proto::SignalResponse);

/// What a join produced.
#[derive(Debug, PartialEq)]
pub struct Joined {
    /// The room's sid.
    pub room_sid: String,
    /// The participants already there (for the `JoinResponse`).
    pub others: Vec<proto::ParticipantInfo>,
    /// What others must be told, in order.
    pub notices: Vec<Notice>,
}

/// Every room and its participants.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<String, Room>,
}

#[derive(Debug)]
struct Room {
    sid: String,
    /// By participant sid.
    participants: BTreeMap<String, proto::ParticipantInfo>,
}

impl Rooms {
    /// `participant` joins the room named `room`; `new_room_sid` names the room if it is
    /// created now.
    pub fn join(
        &mut self,
        room: &str,
        participant: proto::ParticipantInfo,
        new_room_sid: impl FnOnce() -> String,
    ) -> Joined {
        let entry = self.rooms.entry(room.to_owned()).or_insert_with(|| Room {
            sid: new_room_sid(),
            participants: BTreeMap::new(),
        });
        let mut notices = Vec::new();
        let replaced: Vec<String> = entry
            .participants
            .values()
            .filter(|p| p.identity == participant.identity)
            .map(|p| p.sid.clone())
            .collect();
        for sid in replaced {
            notices.push((
                sid.clone(),
                response(Response::Leave(proto::LeaveRequest {
                    can_reconnect: false,
                    reason: proto::DisconnectReason::DuplicateIdentity as i32,
                    action: proto::leave_request::Action::Disconnect as i32,
                    ..Default::default()
                })),
            ));
            notices.extend(Self::remove(entry, &sid));
        }
        let others: Vec<proto::ParticipantInfo> = entry.participants.values().cloned().collect();
        for other in &others {
            notices.push((other.sid.clone(), update(participant.clone())));
        }
        entry
            .participants
            .insert(participant.sid.clone(), participant);
        Joined {
            room_sid: entry.sid.clone(),
            others,
            notices,
        }
    }

    /// The participant with sid `participant_sid` left the room named `room` (nothing if it is
    /// not there, e.g. replaced already); returns what the others must be told.
    pub fn leave(&mut self, room: &str, participant_sid: &str) -> Vec<Notice> {
        let Some(entry) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
        let notices = Self::remove(entry, participant_sid);
        if entry.participants.is_empty() {
            self.rooms.remove(room);
        }
        notices
    }

    /// The participant `participant` (by its sid) in the room named `room` changed (its
    /// tracks); returns what the others must be told. Nothing when it is not there.
    pub fn update(&mut self, room: &str, participant: proto::ParticipantInfo) -> Vec<Notice> {
        let Some(entry) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
        let Some(known) = entry.participants.get_mut(&participant.sid) else {
            return Vec::new();
        };
        *known = participant.clone();
        entry
            .participants
            .values()
            .filter(|p| p.sid != participant.sid)
            .map(|p| (p.sid.clone(), update(participant.clone())))
            .collect()
    }

    /// The identities and sids of the participants of the room named `room`, other than the
    /// one with sid `from_sid`, that `to` includes (the recipients of a data packet).
    pub fn recipients(
        &self,
        room: &str,
        from_sid: &str,
        to: &crate::data::Recipients,
    ) -> Vec<(String, String)> {
        let Some(entry) = self.rooms.get(room) else {
            return Vec::new();
        };
        entry
            .participants
            .values()
            .filter(|p| p.sid != from_sid && to.include(&p.identity, &p.sid))
            .map(|p| (p.identity.clone(), p.sid.clone()))
            .collect()
    }

    /// How many rooms have someone in them.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room has anyone in it.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    fn remove(room: &mut Room, participant_sid: &str) -> Vec<Notice> {
        let Some(mut gone) = room.participants.remove(participant_sid) else {
            return Vec::new();
        };
        gone.state = proto::participant_info::State::Disconnected as i32;
        room.participants
            .values()
            .map(|p| (p.sid.clone(), update(gone.clone())))
            .collect()
    }
}

fn response(message: Response) -> proto::SignalResponse {
    proto::SignalResponse {
        message: Some(message),
    }
}

fn update(participant: proto::ParticipantInfo) -> proto::SignalResponse {
    response(Response::Update(proto::ParticipantUpdate {
        participants: vec![participant],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(sid: &str, identity: &str) -> proto::ParticipantInfo {
        proto::ParticipantInfo {
            sid: sid.into(),
            identity: identity.into(),
            state: proto::participant_info::State::Joined as i32,
            ..Default::default()
        }
    }

    fn updated(notice: &Notice) -> (&str, &str, i32) {
        match &notice.1.message {
            Some(Response::Update(update)) => (
                notice.0.as_str(),
                update.participants[0].sid.as_str(),
                update.participants[0].state,
            ),
            other => panic!("not a participant update: {other:?}"),
        }
    }

    #[test]
    fn joiners_see_who_is_there_and_the_others_see_them_come_and_go() {
        let mut rooms = Rooms::default();
        let a = rooms.join("r", participant("PA_a", "alice"), || "RM_1".into());
        assert_eq!(
            (a.room_sid.as_str(), a.others.len(), a.notices.len()),
            ("RM_1", 0, 0)
        );
        let b = rooms.join("r", participant("PA_b", "bob"), || "RM_2".into());
        assert_eq!(b.room_sid, "RM_1", "the room exists already");
        assert_eq!(b.others, vec![participant("PA_a", "alice")]);
        let joined = proto::participant_info::State::Joined as i32;
        assert_eq!(updated(&b.notices[0]), ("PA_a", "PA_b", joined));
        let c = rooms.join("r", participant("PA_c", "carol"), || "RM_3".into());
        assert_eq!(c.others.len(), 2);
        assert_eq!(c.notices.len(), 2);
        // Another room is another room.
        let d = rooms.join("s", participant("PA_d", "dave"), || "RM_4".into());
        assert_eq!((d.room_sid.as_str(), d.others.len()), ("RM_4", 0));
        // Bob leaves: Alice and Carol are told.
        let gone = proto::participant_info::State::Disconnected as i32;
        let notices = rooms.leave("r", "PA_b");
        let told: Vec<_> = notices.iter().map(updated).collect();
        assert_eq!(told, vec![("PA_a", "PA_b", gone), ("PA_c", "PA_b", gone)]);
        assert!(
            rooms.leave("r", "PA_b").is_empty(),
            "leaving twice tells nobody"
        );
        // Alice publishes: Carol is told (not Alice herself).
        let mut alice = participant("PA_a", "alice");
        alice.version = 1;
        let notices = rooms.update("r", alice);
        let told: Vec<_> = notices.iter().map(updated).collect();
        assert_eq!(told, vec![("PA_c", "PA_a", joined)]);
        assert!(
            rooms.update("r", participant("PA_b", "bob")).is_empty(),
            "gone"
        );
        // Data packets: to everyone else in the room, or to those named.
        let everyone = crate::data::Recipients::default();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        assert_eq!(
            rooms.recipients("r", "PA_a", &everyone),
            pairs(&[("carol", "PA_c")])
        );
        let named = crate::data::Recipients {
            identities: vec!["alice".into(), "dave".into()],
            sids: Vec::new(),
        };
        assert_eq!(
            rooms.recipients("r", "PA_c", &named),
            pairs(&[("alice", "PA_a")]),
            "dave is in another room"
        );
        assert!(rooms.recipients("nowhere", "PA_a", &everyone).is_empty());
        rooms.leave("r", "PA_a");
        rooms.leave("r", "PA_c");
        rooms.leave("s", "PA_d");
        assert!(rooms.is_empty(), "empty rooms are gone");
    }

    #[test]
    fn the_same_identity_joining_again_replaces_the_older_session() {
        let mut rooms = Rooms::default();
        rooms.join("r", participant("PA_a1", "alice"), || "RM_1".into());
        rooms.join("r", participant("PA_b", "bob"), || "RM_1".into());
        let again = rooms.join("r", participant("PA_a2", "alice"), || "RM_1".into());
        assert_eq!(again.others, vec![participant("PA_b", "bob")]);
        let Some(Response::Leave(leave)) = &again.notices[0].1.message else {
            panic!("the old session is not told to leave: {:?}", again.notices);
        };
        assert_eq!(again.notices[0].0, "PA_a1");
        assert_eq!(
            leave.reason,
            proto::DisconnectReason::DuplicateIdentity as i32
        );
        let gone = proto::participant_info::State::Disconnected as i32;
        let joined = proto::participant_info::State::Joined as i32;
        assert_eq!(updated(&again.notices[1]), ("PA_b", "PA_a1", gone));
        assert_eq!(updated(&again.notices[2]), ("PA_b", "PA_a2", joined));
        // The old session's own leave afterwards changes nothing.
        assert!(rooms.leave("r", "PA_a1").is_empty());
    }
}
