//! Room state the focus needs for authorization: who is joined, which conferences exist, and
//! which devices are members of which conference.
//!
//! `ruma` does not model the MSC3401 / MatrixRTC / Famedly call state events, so their contents
//! are read here from plain JSON, accepting every shape listed in PROTOCOL.md:
//!
//! - legacy `m.call.member` / `org.matrix.msc3401.call.member`, state key = user id, content
//!   `{"m.calls": [{"m.call_id", "m.devices": [{device_id, session_id, expires_ts,
//!   m.foci.active?}]}]}` (the active focus also as `org.matrix.msc3898.foci.active`);
//! - MatrixRTC `org.matrix.msc3401.call.member`, state key `_@user:hs_DEVICE...`, content
//!   `{call_id, device_id, membershipID?, expires, created_ts, expires_ts?, focus_active?}`
//!   (`{}` = left), or the same entries in a `memberships` list under state key = user id;
//! - Famedly `com.famedly.call.member`, state key = user id, `{memberships: [...]}`.
//!
//! A device's active focus is kept only when it is a Matrix focus device (`user_id` and
//! `device_id`); a LiveKit-style focus (`{"type": "livekit", ...}`) names none and is ignored.
//!
//! The shape is recognised from the content, whatever the event type. Everything here is pure.

use crate::client::{JoinedRoom, RawEvent};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use tracing::debug;

/// `m.call` event types (state key = conf id).
pub const CALL_TYPES: [&str; 2] = ["m.call", "org.matrix.msc3401.call"];
/// Call-membership event types.
pub const CALL_MEMBER_TYPES: [&str; 3] = [
    "m.call.member",
    "org.matrix.msc3401.call.member",
    "com.famedly.call.member",
];
/// Room membership event type.
pub const ROOM_MEMBER_TYPE: &str = "m.room.member";
/// The application a MatrixRTC membership must have (when it names one) to count as a call.
pub const RTC_CALL_APPLICATION: &str = "m.call";
/// How long a MatrixRTC membership without `expires`/`expires_ts` lasts (matrix-js-sdk's default).
pub const DEFAULT_RTC_EXPIRY_MS: u64 = 4 * 60 * 60 * 1000;
/// The legacy device keys listing a device's active foci, in the order they are read.
pub const LEGACY_ACTIVE_FOCI_KEYS: [&str; 2] = ["m.foci.active", "org.matrix.msc3898.foci.active"];
/// The MatrixRTC membership key naming a device's active focus.
pub const RTC_ACTIVE_FOCUS_KEY: &str = "focus_active";

/// A focus that is a Matrix device (MSC3401 / MSC3898), ordered by `(user_id, device_id)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FocusDevice {
    /// The focus's user.
    pub user_id: String,
    /// The focus's device.
    pub device_id: String,
}

impl FocusDevice {
    /// A focus device from its user and device ids.
    pub fn new(user_id: impl Into<String>, device_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            device_id: device_id.into(),
        }
    }

    /// Reads a focus entry `{user_id, device_id, ...}` (both non-empty strings), else `None`.
    pub fn from_json(entry: &Value) -> Option<Self> {
        let user_id = non_empty_str(entry.get("user_id"))?;
        let device_id = non_empty_str(entry.get("device_id"))?;
        Some(Self { user_id, device_id })
    }
}

impl std::fmt::Display for FocusDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.user_id, self.device_id)
    }
}

/// One device's membership of one conference, as a state event declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMembership {
    /// The member's user (the sender of the state event).
    pub user_id: String,
    /// The member's device.
    pub device_id: String,
    /// The device's session, when the event names one (`session_id` / `membershipID`).
    pub session_id: Option<String>,
    /// The conference (`m.call_id` / `call_id`; `""` for MatrixRTC room calls).
    pub conf_id: String,
    /// Wall-clock ms after which the membership no longer counts.
    pub expires_ts: u64,
    /// The focus device the device has active, when it names one.
    pub active_focus: Option<FocusDevice>,
}

/// What the focus knows about one joined room.
#[derive(Clone, Debug, Default)]
pub struct RoomState {
    /// Room membership (`join`, `invite`, `leave`, ...) by user id.
    members: HashMap<String, String>,
    /// Conferences by conf id: `true` when terminated.
    calls: HashMap<String, bool>,
    /// Call memberships by (event type, state key), replaced as state events are.
    call_members: HashMap<(String, String), Vec<DeviceMembership>>,
}

impl RoomState {
    /// The user's room membership, if known.
    pub fn membership(&self, user_id: &str) -> Option<&str> {
        self.members.get(user_id).map(String::as_str)
    }

    /// Whether the room's `m.call` event for `conf_id` says the conference is over.
    pub fn is_terminated(&self, conf_id: &str) -> bool {
        self.calls.get(conf_id).copied().unwrap_or(false)
    }

    /// Whether the room has an `m.call` event for `conf_id`.
    pub fn has_call(&self, conf_id: &str) -> bool {
        self.calls.contains_key(conf_id)
    }

    /// Every call membership declared in the room (expired ones included).
    pub fn call_memberships(&self) -> impl Iterator<Item = &DeviceMembership> {
        self.call_members.values().flatten()
    }

    /// Applies one state event; returns whether anything relevant changed.
    pub fn apply(&mut self, event: &RawEvent) -> bool {
        let Some(state_key) = event.state_key.as_deref() else {
            return false;
        };
        let event_type = event.event_type.as_str();
        if event_type == ROOM_MEMBER_TYPE {
            let membership = event
                .content
                .get("membership")
                .and_then(Value::as_str)
                .unwrap_or("leave")
                .to_owned();
            let old = self
                .members
                .insert(state_key.to_owned(), membership.clone());
            old.as_deref() != Some(membership.as_str())
        } else if CALL_TYPES.contains(&event_type) {
            let terminated = event.content.get("m.terminated").is_some();
            self.calls.insert(state_key.to_owned(), terminated) != Some(terminated)
        } else if CALL_MEMBER_TYPES.contains(&event_type) {
            let devices = parse_call_member(event);
            let key = (event_type.to_owned(), state_key.to_owned());
            let changed = self.call_members.get(&key) != Some(&devices);
            if devices.is_empty() {
                self.call_members.remove(&key);
            } else {
                self.call_members.insert(key, devices);
            }
            changed
        } else {
            false
        }
    }
}

/// The state of every room the focus has joined.
#[derive(Clone, Debug, Default)]
pub struct RoomStore {
    rooms: BTreeMap<String, RoomState>,
}

impl RoomStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a joined room's sync section (`state`, then the timeline's state events, in
    /// order); returns whether anything relevant changed.
    pub fn apply_joined(&mut self, room_id: &str, room: &JoinedRoom) -> bool {
        let state = self.rooms.entry(room_id.to_owned()).or_default();
        let mut changed = false;
        for event in room.state.iter().chain(&room.timeline) {
            changed |= state.apply(event);
        }
        changed
    }

    /// Applies one state event to a room (creating the room's entry).
    pub fn apply(&mut self, room_id: &str, event: &RawEvent) -> bool {
        self.rooms
            .entry(room_id.to_owned())
            .or_default()
            .apply(event)
    }

    /// Forgets a room the focus left; returns whether it was known.
    pub fn remove_room(&mut self, room_id: &str) -> bool {
        self.rooms.remove(room_id).is_some()
    }

    /// One room's state.
    pub fn room(&self, room_id: &str) -> Option<&RoomState> {
        self.rooms.get(room_id)
    }

    /// Every room, ordered by room id.
    pub fn rooms(&self) -> impl Iterator<Item = (&str, &RoomState)> {
        self.rooms.iter().map(|(id, state)| (id.as_str(), state))
    }

    /// How many rooms are known.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is known.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

/// Whether `state_key` belongs to `sender`: it is the user id itself, or the user id followed by
/// `_` (MSC3757 style), optionally with a leading `_`.
pub fn state_key_owned_by(state_key: &str, sender: &str) -> bool {
    if sender.is_empty() {
        return false;
    }
    let key = state_key.strip_prefix('_').unwrap_or(state_key);
    match key.strip_prefix(sender) {
        Some(rest) => rest.is_empty() || rest.starts_with('_'),
        None => false,
    }
}

/// Reads the device memberships a call-member state event declares (empty for a leave, for an
/// unknown shape, or when the state key is not the sender's own).
pub fn parse_call_member(event: &RawEvent) -> Vec<DeviceMembership> {
    let Some(state_key) = event.state_key.as_deref() else {
        return Vec::new();
    };
    if !state_key_owned_by(state_key, &event.sender) {
        debug!(
            sender = %event.sender,
            state_key,
            "ignoring call membership whose state key is not the sender's"
        );
        return Vec::new();
    }
    let content = &event.content;
    let user = event.sender.as_str();
    if let Some(calls) = content.get("m.calls") {
        parse_legacy(user, content, calls)
    } else if let Some(entries) = content.get("memberships") {
        entries
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|entry| parse_rtc_entry(user, entry, event.origin_server_ts))
                    .collect()
            })
            .unwrap_or_default()
    } else if content.get("device_id").is_some() || content.get("call_id").is_some() {
        parse_rtc_entry(user, content, event.origin_server_ts)
            .into_iter()
            .collect()
    } else {
        Vec::new()
    }
}

/// The legacy MSC3401 shape: `m.calls[].m.devices[]` with absolute `expires_ts`.
fn parse_legacy(user: &str, content: &Value, calls: &Value) -> Vec<DeviceMembership> {
    let top_expiry = content.get("m.expires_ts").and_then(as_ms);
    let mut out = Vec::new();
    for call in calls.as_array().into_iter().flatten() {
        let Some(conf_id) = call.get("m.call_id").and_then(Value::as_str) else {
            continue;
        };
        for device in call
            .get("m.devices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(device_id) = device.get("device_id").and_then(Value::as_str) else {
                continue;
            };
            let Some(expires_ts) = device.get("expires_ts").and_then(as_ms).or(top_expiry) else {
                continue;
            };
            out.push(DeviceMembership {
                user_id: user.to_owned(),
                device_id: device_id.to_owned(),
                session_id: non_empty_str(device.get("session_id")),
                conf_id: conf_id.to_owned(),
                expires_ts,
                active_focus: legacy_active_focus(device),
            });
        }
    }
    out
}

/// One MatrixRTC / Famedly membership entry.
fn parse_rtc_entry(user: &str, entry: &Value, origin_ts: Option<u64>) -> Option<DeviceMembership> {
    if let Some(application) = entry.get("application").and_then(Value::as_str)
        && application != RTC_CALL_APPLICATION
    {
        return None;
    }
    let device_id = entry.get("device_id").and_then(Value::as_str)?;
    let conf_id = entry
        .get("call_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let expires_ts = match entry.get("expires_ts").and_then(as_ms) {
        Some(ts) => ts,
        None => {
            let created = entry.get("created_ts").and_then(as_ms).or(origin_ts)?;
            let lasts = entry
                .get("expires")
                .and_then(as_ms)
                .unwrap_or(DEFAULT_RTC_EXPIRY_MS);
            created.saturating_add(lasts)
        }
    };
    Some(DeviceMembership {
        user_id: user.to_owned(),
        device_id: device_id.to_owned(),
        session_id: non_empty_str(entry.get("membershipID"))
            .or_else(|| non_empty_str(entry.get("session_id"))),
        conf_id: conf_id.to_owned(),
        expires_ts,
        active_focus: entry.get(RTC_ACTIVE_FOCUS_KEY).and_then(first_focus),
    })
}

/// A legacy device's active focus: the first usable entry of the first key that has one.
fn legacy_active_focus(device: &Value) -> Option<FocusDevice> {
    LEGACY_ACTIVE_FOCI_KEYS
        .iter()
        .find_map(|key| device.get(key).and_then(first_focus))
}

/// The first focus device in a list of focus entries, or the entry itself when it is an object.
fn first_focus(value: &Value) -> Option<FocusDevice> {
    match value {
        Value::Array(list) => list.iter().find_map(FocusDevice::from_json),
        other => FocusDevice::from_json(other),
    }
}

fn non_empty_str(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A non-negative millisecond count from an integer or a (finite) float.
fn as_ms(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(event_type: &str, sender: &str, state_key: &str, content: Value) -> RawEvent {
        RawEvent {
            event_type: event_type.into(),
            sender: sender.into(),
            state_key: Some(state_key.into()),
            content,
            origin_server_ts: Some(1_000),
        }
    }

    fn member(
        user: &str,
        device: &str,
        session: Option<&str>,
        conf: &str,
        exp: u64,
    ) -> DeviceMembership {
        DeviceMembership {
            user_id: user.into(),
            device_id: device.into(),
            session_id: session.map(str::to_owned),
            conf_id: conf.into(),
            expires_ts: exp,
            active_focus: None,
        }
    }

    fn focused(mut m: DeviceMembership, user: &str, device: &str) -> DeviceMembership {
        m.active_focus = Some(FocusDevice::new(user, device));
        m
    }

    #[test]
    fn parses_the_active_focus_of_every_shape() {
        let cases: Vec<(&str, RawEvent, Vec<DeviceMembership>)> = vec![
            (
                "legacy unstable msc3898 key, first usable entry",
                state(
                    "m.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"m.calls": [{"m.call_id": "conf", "m.devices": [
                        {"device_id": "D1", "session_id": "S1", "expires_ts": 5000, "feeds": [],
                         "org.matrix.msc3898.foci.preferred": [{"user_id": "@p:hs", "device_id": "P"}],
                         "org.matrix.msc3898.foci.active": [
                            {"user_id": "@f:hs"},
                            {"device_id": "X"},
                            {"user_id": "", "device_id": "E"},
                            {"user_id": 5, "device_id": "N"},
                            {"user_id": "@f:hs", "device_id": "F1"},
                            {"user_id": "@g:hs", "device_id": "G1"}
                         ]}
                    ]}]}),
                ),
                vec![focused(
                    member("@a:hs", "D1", Some("S1"), "conf", 5000),
                    "@f:hs",
                    "F1",
                )],
            ),
            (
                "legacy stable key, read before the unstable one",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"m.calls": [{"m.call_id": "c", "m.devices": [
                        {"device_id": "D1", "expires_ts": 10,
                         "m.foci.active": [{"user_id": "@s:hs", "device_id": "S"}],
                         "org.matrix.msc3898.foci.active": [{"user_id": "@u:hs", "device_id": "U"}]},
                        {"device_id": "D2", "expires_ts": 10,
                         "m.foci.active": [{"user_id": "@s:hs"}],
                         "org.matrix.msc3898.foci.active": [{"user_id": "@u:hs", "device_id": "U"}]},
                        {"device_id": "D3", "expires_ts": 10,
                         "m.foci.active": [],
                         "org.matrix.msc3898.foci.active": "garbage"},
                        {"device_id": "D4", "expires_ts": 10,
                         "m.foci.preferred": [{"user_id": "@s:hs", "device_id": "S"}]}
                    ]}]}),
                ),
                vec![
                    focused(member("@a:hs", "D1", None, "c", 10), "@s:hs", "S"),
                    focused(member("@a:hs", "D2", None, "c", 10), "@u:hs", "U"),
                    member("@a:hs", "D3", None, "c", 10),
                    member("@a:hs", "D4", None, "c", 10),
                ],
            ),
            (
                "matrixrtc per device naming a focus device",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "_@a:hs_D1_m.call",
                    json!({
                    "application": "m.call", "call_id": "", "scope": "m.room", "device_id": "D1",
                    "membershipID": "M1", "expires": 3000, "created_ts": 2000,
                    "focus_active": {"type": "matrix", "user_id": "@f:hs", "device_id": "F1"},
                    "foci_preferred": [{"user_id": "@p:hs", "device_id": "P"}]}),
                ),
                vec![focused(
                    member("@a:hs", "D1", Some("M1"), "", 5000),
                    "@f:hs",
                    "F1",
                )],
            ),
            (
                "matrixrtc livekit focus names no device",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "_@a:hs_D1_m.call",
                    json!({
                    "application": "m.call", "call_id": "", "device_id": "D1", "expires_ts": 9,
                    "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
                    "foci_preferred": [{"type": "livekit", "livekit_service_url": "https://x"}]}),
                ),
                vec![member("@a:hs", "D1", None, "", 9)],
            ),
            (
                "matrixrtc focus device missing its device id",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "_@a:hs_D1",
                    json!({"call_id": "c", "device_id": "D1", "expires_ts": 9,
                           "focus_active": {"user_id": "@f:hs"}}),
                ),
                vec![member("@a:hs", "D1", None, "c", 9)],
            ),
            (
                "matrixrtc memberships list with and without a focus device",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"memberships": [
                        {"application": "m.call", "call_id": "", "device_id": "D1", "expires_ts": 9,
                         "focus_active": {"user_id": "@f:hs", "device_id": "F1"}},
                        {"application": "m.call", "call_id": "", "device_id": "D2", "expires_ts": 9,
                         "focus_active": {"type": "livekit"}}
                    ]}),
                ),
                vec![
                    focused(member("@a:hs", "D1", None, "", 9), "@f:hs", "F1"),
                    member("@a:hs", "D2", None, "", 9),
                ],
            ),
            (
                "famedly with a mesh backend names no focus",
                state(
                    "com.famedly.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"memberships": [
                    {"application": "m.call", "backend": {"type": "mesh"}, "call_id": "", "device_id": "YV",
                     "expires_ts": 9, "scope": "m.room", "membershipID": "m"}]}),
                ),
                vec![member("@a:hs", "YV", Some("m"), "", 9)],
            ),
        ];
        for (name, event, expected) in cases {
            assert_eq!(parse_call_member(&event), expected, "{name}");
        }
    }

    #[test]
    fn a_changed_active_focus_is_a_change() {
        let mut room = RoomState::default();
        let with = |focus: &str| {
            state(
                "m.call.member",
                "@a:hs",
                "@a:hs",
                json!({"m.calls": [{"m.call_id": "c", "m.devices": [{"device_id": "D", "expires_ts": 9,
                    "m.foci.active": [{"user_id": "@f:hs", "device_id": focus}]}]}]}),
            )
        };
        assert!(room.apply(&with("F1")));
        assert!(!room.apply(&with("F1")));
        assert!(room.apply(&with("F2")));
        let focus = room
            .call_memberships()
            .next()
            .and_then(|m| m.active_focus.clone());
        assert_eq!(focus, Some(FocusDevice::new("@f:hs", "F2")));
    }

    #[test]
    fn parses_every_membership_shape() {
        let cases: Vec<(&str, RawEvent, Vec<DeviceMembership>)> = vec![
            (
                "legacy stable",
                state(
                    "m.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"m.calls": [{"m.call_id": "conf", "m.devices": [
                        {"device_id": "D1", "session_id": "S1", "expires_ts": 5000, "feeds": []},
                        {"device_id": "D2", "expires_ts": 6000},
                        {"session_id": "no device"},
                        {"device_id": "D3", "session_id": "S3"}
                    ]}]}),
                ),
                vec![
                    member("@a:hs", "D1", Some("S1"), "conf", 5000),
                    member("@a:hs", "D2", None, "conf", 6000),
                ],
            ),
            (
                "legacy unstable with top-level expiry",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"m.calls": [{"m.call_id": "c", "m.devices": [
                    {"device_id": "D1", "session_id": "S1"}]}], "m.expires_ts": 7000}),
                ),
                vec![member("@a:hs", "D1", Some("S1"), "c", 7000)],
            ),
            (
                "legacy left",
                state("m.call.member", "@a:hs", "@a:hs", json!({"m.calls": []})),
                vec![],
            ),
            (
                "matrixrtc per device with created_ts + expires",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "_@a:hs_D1_m.call",
                    json!({
                    "application": "m.call", "call_id": "", "scope": "m.room", "device_id": "D1",
                    "membershipID": "M1", "expires": 3000, "created_ts": 2000,
                    "focus_active": {"type": "livekit"}, "foci_preferred": []}),
                ),
                vec![member("@a:hs", "D1", Some("M1"), "", 5000)],
            ),
            (
                "matrixrtc without created_ts uses origin_server_ts",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "_@a:hs_D1",
                    json!({"call_id": "c", "device_id": "D1", "expires": 10}),
                ),
                vec![member("@a:hs", "D1", None, "c", 1010)],
            ),
            (
                "matrixrtc expires_ts wins",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "@a:hs_D1",
                    json!({"call_id": "c", "device_id": "D1", "expires": 10, "expires_ts": 99}),
                ),
                vec![member("@a:hs", "D1", None, "c", 99)],
            ),
            (
                "matrixrtc default expiry",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "_@a:hs_D1",
                    json!({"call_id": "c", "device_id": "D1"}),
                ),
                vec![member(
                    "@a:hs",
                    "D1",
                    None,
                    "c",
                    1000 + DEFAULT_RTC_EXPIRY_MS,
                )],
            ),
            (
                "matrixrtc left",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "_@a:hs_D1_m.call",
                    json!({}),
                ),
                vec![],
            ),
            (
                "matrixrtc other application",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "_@a:hs_D1",
                    json!({"application": "io.example.game", "call_id": "", "device_id": "D1"}),
                ),
                vec![],
            ),
            (
                "matrixrtc memberships list under user state key",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"memberships": [
                        {"application": "m.call", "call_id": "", "device_id": "D1", "expires": 100, "created_ts": 50, "membershipID": "M"},
                        {"application": "m.call", "call_id": "x"}
                    ]}),
                ),
                vec![member("@a:hs", "D1", Some("M"), "", 150)],
            ),
            (
                "famedly",
                state(
                    "com.famedly.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"memberships": [
                    {"application": "m.call", "backend": {"type": "mesh"}, "call_id": "", "device_id": "YV",
                     "expires_ts": 1705152401042u64, "scope": "m.room", "membershipID": "gor1=="}]}),
                ),
                vec![member("@a:hs", "YV", Some("gor1=="), "", 1705152401042)],
            ),
            (
                "famedly left",
                state(
                    "com.famedly.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"memberships": []}),
                ),
                vec![],
            ),
            (
                "float expiry",
                state(
                    "m.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"m.calls": [{"m.call_id": "c", "m.devices": [{"device_id": "D", "expires_ts": 1.5e3}]}]}),
                ),
                vec![member("@a:hs", "D", None, "c", 1500)],
            ),
            (
                "someone else's state key",
                state(
                    "m.call.member",
                    "@evil:hs",
                    "@a:hs",
                    json!({"m.calls": [{"m.call_id": "c", "m.devices": [{"device_id": "D", "expires_ts": 9}]}]}),
                ),
                vec![],
            ),
            (
                "someone else's rtc state key sharing a prefix",
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "_@a:hsx_D",
                    json!({"call_id": "c", "device_id": "D"}),
                ),
                vec![],
            ),
            (
                "garbage shapes",
                state(
                    "m.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"m.calls": "x", "memberships": 5}),
                ),
                vec![],
            ),
        ];
        for (name, event, expected) in cases {
            assert_eq!(parse_call_member(&event), expected, "{name}");
        }
    }

    #[test]
    fn state_key_ownership() {
        let cases = [
            ("@a:hs", "@a:hs", true),
            ("_@a:hs_DEV_m.call", "@a:hs", true),
            ("@a:hs_DEV", "@a:hs", true),
            ("@a:hs2", "@a:hs", false),
            ("_@b:hs_DEV", "@a:hs", false),
            ("", "@a:hs", false),
            ("@a:hs", "", false),
        ];
        for (key, sender, expected) in cases {
            assert_eq!(
                state_key_owned_by(key, sender),
                expected,
                "{key} by {sender}"
            );
        }
    }

    #[test]
    fn store_tracks_replacement_leave_and_termination() {
        let mut store = RoomStore::new();
        let room = JoinedRoom {
            state: vec![
                state(
                    "m.room.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"membership": "join"}),
                ),
                state("m.call", "@a:hs", "conf", json!({"m.intent": "m.room"})),
                state(
                    "m.call.member",
                    "@a:hs",
                    "@a:hs",
                    json!({"m.calls": [{"m.call_id": "conf", "m.devices": [{"device_id": "D", "expires_ts": 9}]}]}),
                ),
            ],
            timeline: vec![
                state(
                    "org.matrix.msc3401.call.member",
                    "@a:hs",
                    "_@a:hs_E",
                    json!({"call_id": "", "device_id": "E"}),
                ),
                RawEvent {
                    event_type: "m.room.message".into(),
                    sender: "@a:hs".into(),
                    state_key: None,
                    content: json!({}),
                    origin_server_ts: None,
                },
            ],
        };
        assert!(store.apply_joined("!r:hs", &room));
        assert!(
            !store.apply_joined("!r:hs", &room),
            "re-applying the same state changes nothing"
        );
        let r = store.room("!r:hs").unwrap();
        assert_eq!(r.membership("@a:hs"), Some("join"));
        assert!(r.has_call("conf") && !r.is_terminated("conf"));
        assert_eq!(r.call_memberships().count(), 2);

        assert!(store.apply(
            "!r:hs",
            &state(
                "org.matrix.msc3401.call.member",
                "@a:hs",
                "_@a:hs_E",
                json!({})
            )
        ));
        assert!(store.apply(
            "!r:hs",
            &state(
                "m.call",
                "@a:hs",
                "conf",
                json!({"m.terminated": "call_ended"})
            )
        ));
        assert!(store.apply(
            "!r:hs",
            &state(
                "m.room.member",
                "@a:hs",
                "@a:hs",
                json!({"membership": "leave"})
            )
        ));
        let r = store.room("!r:hs").unwrap();
        assert_eq!(r.call_memberships().count(), 1);
        assert!(r.is_terminated("conf"));
        assert_eq!(r.membership("@a:hs"), Some("leave"));
        assert!(store.remove_room("!r:hs"));
        assert!(store.is_empty());
    }
}
