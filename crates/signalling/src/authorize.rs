//! Pure decisions: may this device's invite be answered, and may this room invite be accepted.

use crate::client::RawEvent;
use crate::config::{Authorization, ConferenceConfig};
use crate::state::{ROOM_MEMBER_TYPE, RoomStore};
use ruma::UserId;
use serde_json::Value;

/// Why an invite was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalCause {
    /// No joined room declares the device a member of the conference.
    NotMember,
    /// A membership exists, but the user's room membership is not `join`.
    NotInRoom,
    /// The conference's `m.call` event is terminated.
    Terminated,
    /// A membership exists for another session of the device.
    SessionMismatch,
    /// A membership exists but has expired.
    Expired,
    /// The focus is draining (shutting down) and takes no new calls.
    Draining,
}

impl RefusalCause {
    /// Every cause, in a stable order.
    pub const ALL: [RefusalCause; 6] = [
        RefusalCause::NotMember,
        RefusalCause::NotInRoom,
        RefusalCause::Terminated,
        RefusalCause::SessionMismatch,
        RefusalCause::Expired,
        RefusalCause::Draining,
    ];

    /// A snake_case name fit for a metric label.
    pub fn name(self) -> &'static str {
        match self {
            RefusalCause::NotMember => "not_member",
            RefusalCause::NotInRoom => "not_in_room",
            RefusalCause::Terminated => "terminated",
            RefusalCause::SessionMismatch => "session_mismatch",
            RefusalCause::Expired => "expired",
            RefusalCause::Draining => "draining",
        }
    }

    pub(crate) fn index(self) -> usize {
        RefusalCause::ALL
            .iter()
            .position(|c| *c == self)
            .unwrap_or_default()
    }

    /// How telling the cause is: when rooms disagree, the most specific one is reported.
    fn rank(self) -> u8 {
        match self {
            RefusalCause::NotMember => 0,
            RefusalCause::NotInRoom => 1,
            RefusalCause::Terminated => 2,
            RefusalCause::SessionMismatch => 3,
            RefusalCause::Expired => 4,
            RefusalCause::Draining => 5,
        }
    }
}

/// Who is calling, into which conference.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The sender of the invite.
    pub user_id: &'a str,
    /// The sender's device.
    pub device_id: &'a str,
    /// The sender's session (`sender_session_id`).
    pub session_id: &'a str,
    /// The invite's `conf_id`.
    pub conf_id: &'a str,
    /// The invite's `room_id`, searched first when present.
    pub room_hint: Option<&'a str>,
}

/// The outcome of authorizing an invite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answer it; `room_id` is where the membership was found (or the invite's own room).
    Allow {
        /// The conference's room, when known.
        room_id: Option<String>,
    },
    /// Do not answer it (yet).
    Refuse {
        /// The category, for counting.
        cause: RefusalCause,
        /// A sentence for the log.
        detail: String,
    },
}

/// Decides whether `caller` may be answered at wall-clock `now_ms`.
///
/// In `membership` mode the device must be an unexpired member of `conf_id` in a room the focus
/// has joined, with room membership `join` and the conference not terminated; when the
/// membership names a session it must be the caller's. In `open` mode anyone is allowed.
pub fn authorize(
    mode: Authorization,
    store: &RoomStore,
    caller: &Caller<'_>,
    now_ms: u64,
) -> Decision {
    if mode == Authorization::Open {
        let room_id = caller
            .room_hint
            .map(str::to_owned)
            .or_else(|| find_room(store, caller, now_ms));
        return Decision::Allow { room_id };
    }
    let hinted = caller
        .room_hint
        .and_then(|id| store.room(id).map(|room| (id, room)));
    let others = store
        .rooms()
        .filter(|(id, _)| Some(*id) != caller.room_hint);
    let mut best: Option<(RefusalCause, String)> = None;
    let mut refuse = |cause: RefusalCause, detail: String| {
        if best.as_ref().is_none_or(|(c, _)| cause.rank() > c.rank()) {
            best = Some((cause, detail));
        }
    };
    for (room_id, room) in hinted.into_iter().chain(others) {
        let candidates = room.call_memberships().filter(|m| {
            m.user_id == caller.user_id
                && m.device_id == caller.device_id
                && m.conf_id == caller.conf_id
        });
        for membership in candidates {
            if room.membership(caller.user_id) != Some("join") {
                refuse(
                    RefusalCause::NotInRoom,
                    format!("not joined to room {room_id}"),
                );
            } else if room.is_terminated(caller.conf_id) {
                refuse(
                    RefusalCause::Terminated,
                    format!("conf {:?} in room {room_id} is terminated", caller.conf_id),
                );
            } else if membership.expires_ts <= now_ms {
                refuse(
                    RefusalCause::Expired,
                    format!(
                        "membership of conf {:?} in room {room_id} expired {} ms ago",
                        caller.conf_id,
                        now_ms - membership.expires_ts
                    ),
                );
            } else if membership
                .session_id
                .as_deref()
                .is_some_and(|s| s != caller.session_id)
            {
                refuse(
                    RefusalCause::SessionMismatch,
                    format!(
                        "membership of conf {:?} in room {room_id} is for session {:?}, not {:?}",
                        caller.conf_id,
                        membership.session_id.as_deref().unwrap_or_default(),
                        caller.session_id
                    ),
                );
            } else {
                return Decision::Allow {
                    room_id: Some(room_id.to_owned()),
                };
            }
        }
    }
    let (cause, detail) = best.unwrap_or_else(|| {
        (
            RefusalCause::NotMember,
            format!(
                "not a member of conf {:?} in any of the {} joined rooms",
                caller.conf_id,
                store.len()
            ),
        )
    });
    Decision::Refuse { cause, detail }
}

/// In open mode: a room where the caller has a valid membership, for `room_id` in replies.
fn find_room(store: &RoomStore, caller: &Caller<'_>, now_ms: u64) -> Option<String> {
    match authorize(Authorization::Membership, store, caller, now_ms) {
        Decision::Allow { room_id } => room_id,
        Decision::Refuse { .. } => None,
    }
}

/// What to do with an invite of the focus into a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinDecision {
    /// Join the room.
    Join {
        /// Who invited the focus, when the invite state says.
        inviter: Option<String>,
    },
    /// Reject (leave) the invite.
    Reject {
        /// Who invited the focus, when the invite state says.
        inviter: Option<String>,
        /// Why, for the log.
        reason: String,
    },
}

/// Decides on a room invite from its stripped `invite_state`: join when `auto_join` is on and
/// the inviter's server (after the first `:` of the user id) is allowed (an empty list allows
/// every server); otherwise reject.
pub fn decide_room_invite(
    conference: &ConferenceConfig,
    focus_user_id: &str,
    invite_state: &[RawEvent],
) -> JoinDecision {
    let inviter = invite_state
        .iter()
        .find(|e| {
            e.event_type == ROOM_MEMBER_TYPE
                && e.state_key.as_deref() == Some(focus_user_id)
                && e.content.get("membership").and_then(Value::as_str) == Some("invite")
        })
        .map(|e| e.sender.clone());
    if !conference.auto_join {
        return JoinDecision::Reject {
            inviter,
            reason: "auto_join is disabled".into(),
        };
    }
    if conference.allowed_servers.is_empty() {
        return JoinDecision::Join { inviter };
    }
    let server = inviter
        .as_deref()
        .and_then(|sender| UserId::parse(sender).ok())
        .map(|id| id.server_name().as_str().to_owned());
    match server {
        Some(server) if conference.allowed_servers.contains(&server) => {
            JoinDecision::Join { inviter }
        }
        Some(server) => JoinDecision::Reject {
            inviter,
            reason: format!("inviter's server {server} is not in allowed_servers"),
        },
        None => JoinDecision::Reject {
            inviter,
            reason: "the inviter is unknown or not a valid user id".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 10_000;

    fn ev(event_type: &str, sender: &str, state_key: &str, content: Value) -> RawEvent {
        RawEvent {
            event_type: event_type.into(),
            sender: sender.into(),
            state_key: Some(state_key.into()),
            content,
            origin_server_ts: Some(1),
        }
    }

    fn joined(user: &str) -> RawEvent {
        ev("m.room.member", user, user, json!({"membership": "join"}))
    }

    fn legacy(user: &str, device: &str, session: &str, conf: &str, expires: u64) -> RawEvent {
        ev(
            "m.call.member",
            user,
            user,
            json!({"m.calls": [{"m.call_id": conf, "m.devices": [{"device_id": device, "session_id": session, "expires_ts": expires}]}]}),
        )
    }

    fn store(events: &[(&str, RawEvent)]) -> RoomStore {
        let mut store = RoomStore::new();
        for (room, event) in events {
            store.apply(room, event);
        }
        store
    }

    fn caller<'a>(conf: &'a str, room_hint: Option<&'a str>) -> Caller<'a> {
        Caller {
            user_id: "@a:hs",
            device_id: "D",
            session_id: "S",
            conf_id: conf,
            room_hint,
        }
    }

    fn cause(decision: Decision) -> Option<RefusalCause> {
        match decision {
            Decision::Allow { .. } => None,
            Decision::Refuse { cause, .. } => Some(cause),
        }
    }

    #[test]
    fn membership_decisions() {
        use RefusalCause::*;
        type Case = (
            &'static str,
            Vec<(&'static str, RawEvent)>,
            Option<RefusalCause>,
        );
        let cases: Vec<Case> = vec![
            ("no rooms", vec![], Some(NotMember)),
            (
                "valid legacy member",
                vec![
                    ("!r", joined("@a:hs")),
                    ("!r", legacy("@a:hs", "D", "S", "conf", NOW + 1)),
                ],
                None,
            ),
            (
                "expired",
                vec![
                    ("!r", joined("@a:hs")),
                    ("!r", legacy("@a:hs", "D", "S", "conf", NOW)),
                ],
                Some(Expired),
            ),
            (
                "other session",
                vec![
                    ("!r", joined("@a:hs")),
                    ("!r", legacy("@a:hs", "D", "S0", "conf", NOW + 1)),
                ],
                Some(SessionMismatch),
            ),
            (
                "other device",
                vec![
                    ("!r", joined("@a:hs")),
                    ("!r", legacy("@a:hs", "E", "S", "conf", NOW + 1)),
                ],
                Some(NotMember),
            ),
            (
                "other conf",
                vec![
                    ("!r", joined("@a:hs")),
                    ("!r", legacy("@a:hs", "D", "S", "other", NOW + 1)),
                ],
                Some(NotMember),
            ),
            (
                "left the room",
                vec![
                    (
                        "!r",
                        ev(
                            "m.room.member",
                            "@a:hs",
                            "@a:hs",
                            json!({"membership": "leave"}),
                        ),
                    ),
                    ("!r", legacy("@a:hs", "D", "S", "conf", NOW + 1)),
                ],
                Some(NotInRoom),
            ),
            (
                "no room membership at all",
                vec![("!r", legacy("@a:hs", "D", "S", "conf", NOW + 1))],
                Some(NotInRoom),
            ),
            (
                "terminated conference",
                vec![
                    ("!r", joined("@a:hs")),
                    (
                        "!r",
                        ev("m.call", "@a:hs", "conf", json!({"m.terminated": "ended"})),
                    ),
                    ("!r", legacy("@a:hs", "D", "S", "conf", NOW + 1)),
                ],
                Some(Terminated),
            ),
            (
                "membership without session matches on user and device",
                vec![
                    ("!r", joined("@a:hs")),
                    (
                        "!r",
                        ev(
                            "org.matrix.msc3401.call.member",
                            "@a:hs",
                            "_@a:hs_D",
                            json!({"call_id": "conf", "device_id": "D", "expires_ts": NOW + 1}),
                        ),
                    ),
                ],
                None,
            ),
            (
                "expired in one room, valid in another",
                vec![
                    ("!a", joined("@a:hs")),
                    ("!a", legacy("@a:hs", "D", "S", "conf", NOW - 1)),
                    ("!b", joined("@a:hs")),
                    ("!b", legacy("@a:hs", "D", "S", "conf", NOW + 1)),
                ],
                None,
            ),
            (
                "most specific cause wins",
                vec![
                    ("!a", legacy("@a:hs", "D", "S", "conf", NOW + 1)),
                    ("!b", joined("@a:hs")),
                    ("!b", legacy("@a:hs", "D", "S", "conf", NOW - 1)),
                ],
                Some(Expired),
            ),
            (
                "someone else's membership",
                vec![
                    ("!r", joined("@a:hs")),
                    ("!r", legacy("@b:hs", "D", "S", "conf", NOW + 1)),
                ],
                Some(NotMember),
            ),
        ];
        for (name, events, expected) in cases {
            let store = store(&events);
            let decision = authorize(
                Authorization::Membership,
                &store,
                &caller("conf", None),
                NOW,
            );
            assert_eq!(cause(decision), expected, "{name}");
        }
    }

    #[test]
    fn allow_names_the_room_preferring_the_hint() {
        let store = store(&[
            ("!a", joined("@a:hs")),
            ("!a", legacy("@a:hs", "D", "S", "conf", NOW + 1)),
            ("!b", joined("@a:hs")),
            ("!b", legacy("@a:hs", "D", "S", "conf", NOW + 1)),
        ]);
        let m = Authorization::Membership;
        assert_eq!(
            authorize(m, &store, &caller("conf", None), NOW),
            Decision::Allow {
                room_id: Some("!a".into())
            }
        );
        assert_eq!(
            authorize(m, &store, &caller("conf", Some("!b")), NOW),
            Decision::Allow {
                room_id: Some("!b".into())
            }
        );
        assert_eq!(
            authorize(m, &store, &caller("conf", Some("!unknown")), NOW),
            Decision::Allow {
                room_id: Some("!a".into())
            }
        );
    }

    #[test]
    fn open_mode_allows_anyone() {
        let empty = RoomStore::new();
        let o = Authorization::Open;
        assert_eq!(
            authorize(o, &empty, &caller("conf", None), NOW),
            Decision::Allow { room_id: None }
        );
        assert_eq!(
            authorize(o, &empty, &caller("conf", Some("!h")), NOW),
            Decision::Allow {
                room_id: Some("!h".into())
            }
        );
        let store = store(&[
            ("!a", joined("@a:hs")),
            ("!a", legacy("@a:hs", "D", "S", "conf", NOW + 1)),
        ]);
        assert_eq!(
            authorize(o, &store, &caller("conf", None), NOW),
            Decision::Allow {
                room_id: Some("!a".into())
            }
        );
    }

    #[test]
    fn room_invite_decisions() {
        let invite = |sender: &str| {
            vec![
                ev("m.room.create", "@x:other", "", json!({})),
                ev(
                    "m.room.member",
                    sender,
                    "@focus:hs",
                    json!({"membership": "invite"}),
                ),
            ]
        };
        let conf = |auto_join: bool, allowed: &[&str]| ConferenceConfig {
            auto_join,
            allowed_servers: allowed.iter().map(|s| s.to_string()).collect(),
            ..ConferenceConfig::default()
        };
        let joins = |d: &JoinDecision| matches!(d, JoinDecision::Join { .. });
        let cases = [
            ("any server", conf(true, &[]), invite("@a:evil.org"), true),
            (
                "allowed server",
                conf(true, &["hs", "good.org"]),
                invite("@a:good.org"),
                true,
            ),
            (
                "allowed server with port",
                conf(true, &["hs:8448"]),
                invite("@a:hs:8448"),
                true,
            ),
            (
                "not allowed",
                conf(true, &["good.org"]),
                invite("@a:evil.org"),
                false,
            ),
            ("auto join off", conf(false, &[]), invite("@a:hs"), false),
            (
                "unknown inviter with a list",
                conf(true, &["hs"]),
                vec![],
                false,
            ),
            ("unknown inviter, any server", conf(true, &[]), vec![], true),
        ];
        for (name, conference, state, expected) in cases {
            let decision = decide_room_invite(&conference, "@focus:hs", &state);
            assert_eq!(joins(&decision), expected, "{name}: {decision:?}");
        }
        assert_eq!(
            decide_room_invite(&conf(true, &[]), "@focus:hs", &invite("@a:hs")),
            JoinDecision::Join {
                inviter: Some("@a:hs".into())
            }
        );
    }
}
