//! Cascading (issue 11): which other foci this focus links with in a conference (pure).
//!
//! Each member device names its active focus in its call-membership state
//! ([`DeviceMembership::active_focus`]). The foci of one conference form a full mesh: this focus
//! links with every other focus that an unexpired member names, as long as an unexpired member
//! names this focus too. For each pair exactly one side places the call, the one with the lower
//! `(user_id, device_id)`, so the two foci's link invites never cross.
//!
//! How the signaller is meant to use it (not wired in yet):
//! 1. after each room-state change, and on the periodic membership recheck (expiry depends on
//!    time), it computes [`plan`] for every conference of every joined room, from
//!    [`conference_memberships`], and keeps the previous plan per `(room_id, conf_id)`;
//! 2. [`diff`] of the previous and the new plan lists the links to open: each becomes an
//!    `m.call.invite` to-device to the peer focus device, as to a member device. It also lists
//!    the links to hang up (`m.call.hangup`), whichever side opened them;
//! 3. an `m.call.invite` from a device that is not a member is checked with [`may_link`] (and with
//!    [`role_towards`] being [`Role::Callee`], which refuses crossed invites) before it reaches
//!    the media plane; refusals are logged and counted as for devices.
//!
//! A conference is `(room_id, conf_id)`: MatrixRTC room calls all use the conf id `""`.

use crate::state::{DeviceMembership, FocusDevice, RoomState};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// Which side of a link places the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// This focus sends the `m.call.invite`.
    Caller,
    /// This focus waits for the peer's `m.call.invite`.
    Callee,
}

impl Role {
    /// The peer's role on the same link.
    pub fn opposite(self) -> Self {
        match self {
            Role::Caller => Role::Callee,
            Role::Callee => Role::Caller,
        }
    }
}

/// This focus's role on a link to `peer`: the lower `(user_id, device_id)` calls (`None` for itself).
pub fn role_towards(own: &FocusDevice, peer: &FocusDevice) -> Option<Role> {
    let own_key = (own.user_id.as_str(), own.device_id.as_str());
    let peer_key = (peer.user_id.as_str(), peer.device_id.as_str());
    match own_key.cmp(&peer_key) {
        Ordering::Less => Some(Role::Caller),
        Ordering::Greater => Some(Role::Callee),
        Ordering::Equal => None,
    }
}

/// The links one focus should have in one conference: a role per peer focus, ordered by peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkPlan {
    links: BTreeMap<FocusDevice, Role>,
}

impl LinkPlan {
    /// This focus's role on the link to `peer`, if the plan has one.
    pub fn role(&self, peer: &FocusDevice) -> Option<Role> {
        self.links.get(peer).copied()
    }

    /// Every planned link as (peer, this focus's role), ordered by peer.
    pub fn iter(&self) -> impl Iterator<Item = (&FocusDevice, Role)> {
        self.links.iter().map(|(peer, role)| (peer, *role))
    }

    /// How many links are planned.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether no link is planned.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}

/// What to do to go from one plan to the next, each list ordered by peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkChanges {
    /// Peers to send a link invite to (new links where this focus is the caller).
    pub call: Vec<FocusDevice>,
    /// Peers whose link to hang up (links no longer planned, whichever side placed them).
    pub hang_up: Vec<FocusDevice>,
}

impl LinkChanges {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.call.is_empty() && self.hang_up.is_empty()
    }
}

/// The memberships of `conf_id` in `room` whose user is joined, while the conference is not terminated.
///
/// Expiry is left to [`plan`] and [`may_link`], which take the time.
pub fn conference_memberships<'a>(
    room: &'a RoomState,
    conf_id: &'a str,
) -> impl Iterator<Item = &'a DeviceMembership> + 'a {
    let live = !room.is_terminated(conf_id);
    room.call_memberships().filter(move |m| {
        live && m.conf_id == conf_id && room.membership(&m.user_id) == Some("join")
    })
}

/// The links `own` should have, given one conference's memberships at wall-clock `now_ms`.
///
/// Empty unless an unexpired member names `own` as its active focus; otherwise one link to every
/// other focus an unexpired member names, with [`role_towards`] that focus.
pub fn plan<'a>(
    own: &FocusDevice,
    memberships: impl IntoIterator<Item = &'a DeviceMembership>,
    now_ms: u64,
) -> LinkPlan {
    let mut named_own = false;
    let mut peers = BTreeSet::new();
    for focus in active_foci(memberships, now_ms) {
        if focus == own {
            named_own = true;
        } else {
            peers.insert(focus);
        }
    }
    if !named_own {
        return LinkPlan::default();
    }
    let links = peers
        .into_iter()
        .filter_map(|peer| role_towards(own, peer).map(|role| (peer.clone(), role)))
        .collect();
    LinkPlan { links }
}

/// Whether `own` may accept a link invite from `remote` in one conference at wall-clock `now_ms`.
///
/// True only when `remote` is another focus, an unexpired member names it as its active focus,
/// and an unexpired member names `own`. The direction ([`role_towards`]) is not checked here.
pub fn may_link<'a>(
    own: &FocusDevice,
    memberships: impl IntoIterator<Item = &'a DeviceMembership>,
    now_ms: u64,
    remote: &FocusDevice,
) -> bool {
    if own == remote {
        return false;
    }
    let (mut own_named, mut remote_named) = (false, false);
    for focus in active_foci(memberships, now_ms) {
        own_named |= focus == own;
        remote_named |= focus == remote;
        if own_named && remote_named {
            return true;
        }
    }
    false
}

/// The changes that turn `previous` into `next`.
pub fn diff(previous: &LinkPlan, next: &LinkPlan) -> LinkChanges {
    let mut changes = LinkChanges::default();
    for (peer, role) in previous.iter() {
        if next.role(peer) != Some(role) {
            changes.hang_up.push(peer.clone());
        }
    }
    for (peer, role) in next.iter() {
        if role == Role::Caller && previous.role(peer) != Some(role) {
            changes.call.push(peer.clone());
        }
    }
    changes
}

/// The active foci of the unexpired memberships (the same expiry rule as authorization).
fn active_foci<'a>(
    memberships: impl IntoIterator<Item = &'a DeviceMembership>,
    now_ms: u64,
) -> impl Iterator<Item = &'a FocusDevice> {
    memberships
        .into_iter()
        .filter(move |m| m.expires_ts > now_ms)
        .filter_map(|m| m.active_focus.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::RawEvent;
    use serde_json::json;

    const NOW: u64 = 1_000_000;

    fn focus(user: &str, device: &str) -> FocusDevice {
        FocusDevice::new(user, device)
    }

    fn member(device: &str, active: Option<&FocusDevice>, expires_ts: u64) -> DeviceMembership {
        DeviceMembership {
            user_id: format!("@{device}:hs"),
            device_id: device.into(),
            session_id: None,
            conf_id: "conf".into(),
            expires_ts,
            active_focus: active.cloned(),
        }
    }

    fn live(device: &str, active: &FocusDevice) -> DeviceMembership {
        member(device, Some(active), NOW + 60_000)
    }

    fn links(plan: &LinkPlan) -> Vec<(FocusDevice, Role)> {
        plan.iter()
            .map(|(peer, role)| (peer.clone(), role))
            .collect()
    }

    #[test]
    fn two_foci_link_once_the_lower_calling() {
        let (a, b) = (focus("@fa:hs", "A"), focus("@fb:hs", "B"));
        let members = [live("a1", &a), live("a2", &a), live("b1", &b)];
        assert_eq!(
            links(&plan(&a, &members, NOW)),
            vec![(b.clone(), Role::Caller)]
        );
        assert_eq!(links(&plan(&b, &members, NOW)), vec![(a, Role::Callee)]);
    }

    #[test]
    fn three_foci_form_a_mesh() {
        let (a, b, c) = (
            focus("@f:a.hs", "X"),
            focus("@f:b.hs", "X"),
            focus("@f:c.hs", "X"),
        );
        let members = [
            live("a1", &a),
            live("b1", &b),
            live("b2", &b),
            live("c1", &c),
        ];
        assert_eq!(
            links(&plan(&a, &members, NOW)),
            vec![(b.clone(), Role::Caller), (c.clone(), Role::Caller)]
        );
        assert_eq!(
            links(&plan(&b, &members, NOW)),
            vec![(a.clone(), Role::Callee), (c.clone(), Role::Caller)]
        );
        assert_eq!(
            links(&plan(&c, &members, NOW)),
            vec![(a, Role::Callee), (b, Role::Callee)]
        );
    }

    #[test]
    fn the_same_user_orders_by_device() {
        let (a, b) = (focus("@focus:hs", "DEV1"), focus("@focus:hs", "DEV2"));
        assert_eq!(role_towards(&a, &b), Some(Role::Caller));
        assert_eq!(role_towards(&b, &a), Some(Role::Callee));
        assert_eq!(role_towards(&a, &a), None);
        // The user id decides before the device id, byte by byte.
        let (c, d) = (focus("@a:hs", "Z"), focus("@ab:hs", "A"));
        assert_eq!(role_towards(&c, &d), Some(Role::Caller));
    }

    #[test]
    fn expired_memberships_do_not_count() {
        let (a, b, c) = (
            focus("@a:hs", "A"),
            focus("@b:hs", "B"),
            focus("@c:hs", "C"),
        );
        let members = [
            live("a1", &a),
            member("b1", Some(&b), NOW + 1),
            member("c1", Some(&c), NOW),
        ];
        assert_eq!(
            links(&plan(&a, &members, NOW)),
            vec![(b.clone(), Role::Caller)]
        );
        assert!(plan(&a, &members, NOW + 1).is_empty());
        assert!(
            plan(&c, &members, NOW).is_empty(),
            "c's only member expired"
        );
        let own_expired = [member("a1", Some(&a), NOW), live("b1", &b)];
        assert!(plan(&a, &own_expired, NOW).is_empty());
    }

    #[test]
    fn members_without_a_focus_device_and_duplicates() {
        let (a, b) = (focus("@a:hs", "A"), focus("@b:hs", "B"));
        let members = [
            live("a1", &a),
            member("lk", None, NOW + 1),
            live("b1", &b),
            live("b2", &b),
            live("a2", &a),
        ];
        let plan_a = plan(&a, &members, NOW);
        assert_eq!(plan_a.len(), 1);
        assert_eq!(plan_a.role(&b), Some(Role::Caller));
        let alone = [live("a1", &a), member("lk", None, NOW + 1)];
        assert!(plan(&a, &alone, NOW).is_empty(), "no peer focus, no link");
    }

    #[test]
    fn a_peer_member_leaving() {
        let (a, b, c) = (
            focus("@a:hs", "A"),
            focus("@b:hs", "B"),
            focus("@c:hs", "C"),
        );
        let before = [
            live("a1", &a),
            live("b1", &b),
            live("c1", &c),
            live("c2", &c),
        ];
        // c2 leaves: c still has c1, nothing changes.
        let c2_left = [live("a1", &a), live("b1", &b), live("c1", &c)];
        assert!(diff(&plan(&a, &before, NOW), &plan(&a, &c2_left, NOW)).is_empty());
        // b1, b's last member, leaves: both a and c hang up their link to b.
        let b1_left = [live("a1", &a), live("c1", &c), live("c2", &c)];
        assert_eq!(
            diff(&plan(&a, &before, NOW), &plan(&a, &b1_left, NOW)),
            LinkChanges {
                call: vec![],
                hang_up: vec![b.clone()]
            }
        );
        assert_eq!(
            diff(&plan(&c, &before, NOW), &plan(&c, &b1_left, NOW)).hang_up,
            vec![b.clone()]
        );
        // b's membership expires instead of being removed: the same.
        let b1_expired = [
            live("a1", &a),
            member("b1", Some(&b), NOW + 10),
            live("c1", &c),
        ];
        assert_eq!(
            diff(
                &plan(&a, &b1_expired, NOW),
                &plan(&a, &b1_expired, NOW + 10)
            )
            .hang_up,
            vec![b]
        );
    }

    #[test]
    fn the_last_local_member_leaving_hangs_every_link_up() {
        let (a, b, c) = (
            focus("@a:hs", "A"),
            focus("@b:hs", "B"),
            focus("@c:hs", "C"),
        );
        let before = [live("a1", &a), live("b1", &b), live("c1", &c)];
        let after = [live("b1", &b), live("c1", &c)];
        // b calls c and is called by a; with a's last member gone only b–c remains.
        let (b_before, b_after) = (plan(&b, &before, NOW), plan(&b, &after, NOW));
        assert_eq!(
            diff(&b_before, &b_after),
            LinkChanges {
                call: vec![],
                hang_up: vec![a.clone()]
            }
        );
        let (a_before, a_after) = (plan(&a, &before, NOW), plan(&a, &after, NOW));
        assert!(a_after.is_empty());
        assert_eq!(
            diff(&a_before, &a_after),
            LinkChanges {
                call: vec![],
                hang_up: vec![b, c]
            }
        );
    }

    #[test]
    fn diff_calls_only_new_links_it_places() {
        let (a, b, c, d) = (
            focus("@a:hs", "A"),
            focus("@b:hs", "B"),
            focus("@c:hs", "C"),
            focus("@d:hs", "D"),
        );
        let empty = LinkPlan::default();
        // c joins: b calls c; c only waits for b's invite, and calls d.
        let members = [live("b1", &b), live("c1", &c), live("d1", &d)];
        assert_eq!(
            diff(&empty, &plan(&b, &members, NOW)),
            LinkChanges {
                call: vec![c.clone(), d.clone()],
                hang_up: vec![]
            }
        );
        assert_eq!(
            diff(&empty, &plan(&c, &members, NOW)),
            LinkChanges {
                call: vec![d.clone()],
                hang_up: vec![]
            }
        );
        // a joins later: b is called by a, and keeps its links.
        let more = [
            live("a1", &a),
            live("b1", &b),
            live("c1", &c),
            live("d1", &d),
        ];
        assert!(diff(&plan(&b, &members, NOW), &plan(&b, &more, NOW)).is_empty());
        assert_eq!(
            diff(&plan(&a, &members, NOW), &plan(&a, &more, NOW)).call,
            vec![b.clone(), c.clone(), d]
        );
        // A role that changed (it cannot for one focus, but a plan is only data): redo the link.
        let as_caller = LinkPlan {
            links: BTreeMap::from([(c.clone(), Role::Caller)]),
        };
        let as_callee = LinkPlan {
            links: BTreeMap::from([(c.clone(), Role::Callee)]),
        };
        assert_eq!(
            diff(&as_callee, &as_caller),
            LinkChanges {
                call: vec![c.clone()],
                hang_up: vec![c.clone()]
            }
        );
        assert_eq!(diff(&as_caller, &as_callee).hang_up, vec![c]);
        assert!(diff(&as_caller, &as_caller).is_empty());
    }

    #[test]
    fn may_link_needs_both_foci_named() {
        let (a, b, x) = (
            focus("@a:hs", "A"),
            focus("@b:hs", "B"),
            focus("@x:hs", "X"),
        );
        let members = [live("a1", &a), live("b1", &b), member("lk", None, NOW + 1)];
        assert!(may_link(&a, &members, NOW, &b));
        assert!(may_link(&b, &members, NOW, &a));
        assert!(!may_link(&a, &members, NOW, &x), "a focus named by nobody");
        assert!(
            !may_link(&a, &members, NOW, &focus("@b:hs", "OTHER")),
            "another device of a named focus's user"
        );
        assert!(!may_link(&a, &members, NOW, &a), "itself");
        assert!(
            !may_link(&x, &members, NOW, &a),
            "no member names this focus"
        );
        let b_expired = [live("a1", &a), member("b1", Some(&b), NOW)];
        assert!(
            !may_link(&a, &b_expired, NOW, &b),
            "only an expired member names b"
        );
        assert!(!may_link(&a, &[], NOW, &b));
    }

    #[test]
    fn conference_memberships_filters_room_state() {
        let event = |event_type: &str, sender: &str, key: &str, content| RawEvent {
            event_type: event_type.into(),
            sender: sender.into(),
            state_key: Some(key.into()),
            content,
            origin_server_ts: Some(1),
        };
        let call_member = |user: &str, conf: &str| {
            event(
                "m.call.member",
                user,
                user,
                json!({"m.calls": [{"m.call_id": conf, "m.devices": [{"device_id": "D",
                    "expires_ts": NOW + 1, "m.foci.active": [{"user_id": "@f:hs", "device_id": "F"}]}]}]}),
            )
        };
        let mut room = RoomState::default();
        for user in ["@a:hs", "@b:hs"] {
            room.apply(&event(
                "m.room.member",
                user,
                user,
                json!({"membership": "join"}),
            ));
        }
        room.apply(&event(
            "m.room.member",
            "@c:hs",
            "@c:hs",
            json!({"membership": "leave"}),
        ));
        room.apply(&call_member("@a:hs", "conf"));
        room.apply(&call_member("@b:hs", "other"));
        room.apply(&call_member("@c:hs", "conf"));
        let users = |room: &RoomState| -> Vec<String> {
            conference_memberships(room, "conf")
                .map(|m| m.user_id.clone())
                .collect()
        };
        assert_eq!(users(&room), vec!["@a:hs".to_owned()]);
        room.apply(&event(
            "m.call",
            "@a:hs",
            "conf",
            json!({"m.terminated": "call_ended"}),
        ));
        assert!(users(&room).is_empty());
    }

    /// Foci whose ids are close: shared prefixes, the same user, case, a port.
    fn universe() -> Vec<FocusDevice> {
        vec![
            focus("@a:hs", "A"),
            focus("@a:hs", "AA"),
            focus("@a:hs", "B"),
            focus("@a:hs:8448", "A"),
            focus("@ab:hs", "A"),
            focus("@A:hs", "a"),
            focus("@b:hs", "A"),
            focus("@é:hs", "A"),
        ]
    }

    #[test]
    fn exactly_one_side_calls_for_every_pair() {
        let foci = universe();
        for a in &foci {
            assert_eq!(role_towards(a, a), None);
            for b in foci.iter().filter(|b| *b != a) {
                let (ab, ba) = (role_towards(a, b), role_towards(b, a));
                assert!(ab.is_some() && ab.map(Role::opposite) == ba, "{a} vs {b}");
                for c in foci.iter().filter(|c| *c != a && *c != b) {
                    // No cycle of callers: the rule is a total order.
                    if ab == Some(Role::Caller) && role_towards(b, c) == Some(Role::Caller) {
                        assert_eq!(role_towards(a, c), Some(Role::Caller), "{a} {b} {c}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_focus_agrees_on_the_mesh() {
        let foci = universe();
        for named in 0u32..(1 << foci.len()) {
            let is_named = |i: usize| named & (1 << i) != 0;
            // Each named focus gets one live member; the others one expired member.
            let members: Vec<DeviceMembership> = foci
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let expiry = if is_named(i) { NOW + 1 } else { NOW };
                    member(&format!("m{i}"), Some(f), expiry)
                })
                .collect();
            let plans: Vec<LinkPlan> = foci.iter().map(|f| plan(f, &members, NOW)).collect();
            for (i, a) in foci.iter().enumerate() {
                if !is_named(i) {
                    assert!(plans[i].is_empty(), "{a} is named by no live member");
                }
                for (j, b) in foci.iter().enumerate() {
                    let linked = i != j && is_named(i) && is_named(j);
                    assert_eq!(plans[i].role(b).is_some(), linked, "{a} -> {b}");
                    assert_eq!(may_link(a, &members, NOW, b), linked, "{a} <- {b}");
                    if linked {
                        let (ab, ba) = (plans[i].role(b), plans[j].role(a));
                        assert_eq!(ab.map(Role::opposite), ba, "{a} / {b}");
                    }
                }
            }
        }
    }
}
