//! Per-call bookkeeping: decoding and filtering incoming call events, device sessions, `seq`
//! reordering, invite lifetime, holding invites until they are authorized, outgoing `seq`.
//!
//! [`Calls`] is a pure state machine: events, room state and the time go in, messages for the
//! media plane and to-device messages come out as [`Effects`]. The signaller does the I/O.
//!
//! # Invite lifetime
//!
//! An invite is void once it is older than its `lifetime` (60 s when absent). To-device events
//! carry no timestamp, so the age is counted from [`Incoming::aged_from_ms`]:
//!
//! - events received while the focus is running normally are aged from their arrival;
//! - events in the backlog (the first `/sync` after a (re)start) are aged from the persisted
//!   `last_sync_ms`, the last moment the focus is known to have been listening: if
//!   `now - last_sync_ms > lifetime` the invite is void — not answered, logged and counted;
//! - backlog events with no persisted `last_sync_ms` (first start with this state directory) are
//!   of unknown age, so backlog invites are void;
//! - an invite whose call is hung up (or rejected) within the same sync batch is void too, so a
//!   backlog holding an invite and a later hangup never opens the call.
//!
//! The age is checked when the invite arrives and again when it is finally authorized.

use crate::authorize::{Caller, Decision, RefusalCause, authorize};
use crate::config::Authorization;
use crate::link::{self, Role};
use crate::log_budget::LogBudget;
use crate::ordering::{Rejected, Reorder};
use crate::outbound::{self, CallContext, FocusIdentity, Outgoing};
use crate::state::{FocusDevice, RoomStore};
use crate::status::{Counter, Direction, Status};
use cascade_protocol::event::{DecodeError, reason};
use cascade_protocol::{
    CallEvent, CallEventContent, CallEventKind, CallKey, FromMedia, SdpStreamMetadata, ToMedia,
};
use ruma::UserId;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use tracing::{debug, info, warn};

/// `dest_session_id` clients built for the earlier Go focus use.
pub const SFU_SESSION_ID: &str = "sfu";
/// `lifetime` assumed for an invite that does not state one.
pub const DEFAULT_INVITE_LIFETIME_MS: u64 = 60_000;
/// How long a gap in a call's `seq` is waited for.
pub const REORDER_WAIT_MS: u64 = 3_000;
/// How many out-of-order events one call may buffer.
pub const REORDER_MAX_PENDING: usize = 64;
/// How many events a held (not yet authorized) call may queue.
pub const HOLD_QUEUE_MAX: usize = 256;
/// `Close` reason when a device's session was replaced by a newer one.
pub const REASON_SESSION_REPLACED: &str = "session_replaced";
/// `Close` reason when the caller selected another party's answer.
pub const REASON_ANSWERED_ELSEWHERE: &str = "answered_elsewhere";
/// Hangup reason for invites refused while the focus drains: clients read `user_busy` as "try
/// another focus".
pub const REASON_DRAINING: &str = reason::USER_BUSY;

/// How often open calls are checked against the expiry of their memberships when no room state
/// changes (a change is checked at once).
pub const MEMBERSHIP_RECHECK_MS: u64 = 5_000;
/// `Close` reason when the membership that authorized a call ended.
pub const REASON_MEMBERSHIP_ENDED: &str = "membership_ended";

/// How long after a link call this focus placed ended (or failed) it is placed again, while
/// the conference still needs it; doubled after each attempt that was not answered, up to
/// [`LINK_RETRY_MAX_MS`].
pub const LINK_RETRY_MS: u64 = 5_000;
/// The longest wait before a link call is placed again.
pub const LINK_RETRY_MAX_MS: u64 = 320_000;
/// `Close` and hangup reason when a link is no longer needed (no local member, or no member on
/// the other focus, is left).
pub const REASON_LINK_UNNEEDED: &str = reason::USER_HANGUP;

/// How long an ended call is remembered (to drop its late events quietly).
const ENDED_KEEP_MS: u64 = 10 * 60_000;
/// How long an idle reorder buffer of an unknown call is kept.
const IDLE_ORDERER_MS: u64 = 60_000;
/// How long a device without calls is remembered (with its retired sessions).
const IDLE_DEVICE_MS: u64 = 30 * 60_000;
/// How many replaced sessions per device are remembered as stale.
const RETIRED_SESSIONS_KEPT: usize = 8;

/// What [`Calls`] needs to know about the focus and its policy.
#[derive(Clone, Debug)]
pub struct CallsConfig {
    /// The focus's user, device and session.
    pub focus: FocusIdentity,
    /// Which invites are answered.
    pub authorization: Authorization,
    /// How long an unauthorized invite is held waiting for room state.
    pub hold_ms: u64,
}

/// A to-device event as received.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// The sending user.
    pub sender: String,
    /// The event type.
    pub event_type: String,
    /// The event content.
    pub content: Value,
    /// Wall-clock ms the event's age counts from, `None` when unknown (see the module docs).
    pub aged_from_ms: Option<u64>,
}

/// What handling produced: messages for the media plane and to-device messages to send.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// Messages for the media plane, in order.
    pub to_media: Vec<ToMedia>,
    /// To-device messages to send, in order.
    pub to_device: Vec<Outgoing>,
}

impl Effects {
    /// Appends another batch of effects.
    pub fn extend(&mut self, other: Effects) {
        self.to_media.extend(other.to_media);
        self.to_device.extend(other.to_device);
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.to_media.is_empty() && self.to_device.is_empty()
    }
}

/// A decoded event on its way through reordering.
#[derive(Clone, Debug)]
struct Delivered {
    kind: CallEventKind,
    content: CallEventContent,
    aged_from_ms: Option<u64>,
}

/// An invite waiting for authorization.
#[derive(Debug)]
struct Held {
    since_ms: u64,
    queue: Vec<Delivered>,
    offer_sdp: String,
    metadata: SdpStreamMetadata,
    lifetime_ms: u64,
    aged_from_ms: Option<u64>,
    last_cause: Option<RefusalCause>,
}

#[derive(Debug)]
enum Phase {
    Held(Box<Held>),
    Open,
}

#[derive(Debug)]
struct Call {
    conf_id: String,
    room_id: Option<String>,
    /// The next `seq` the focus sends on this call.
    seq_out: u64,
    phase: Phase,
    /// For a link with another focus, this focus's side of it.
    link: Option<Role>,
}

impl Call {
    /// What the next event the focus sends on this call (`key`) carries.
    fn context<'a>(&'a self, key: &'a CallKey) -> CallContext<'a> {
        CallContext {
            call: key,
            conf_id: &self.conf_id,
            room_id: self.room_id.as_deref(),
            seq: self.seq_out,
            link: self.link.is_some(),
        }
    }

    /// The calling device (`key`) as authorization sees it.
    fn caller<'a>(&'a self, key: &'a CallKey) -> Caller<'a> {
        Caller {
            user_id: &key.user_id,
            device_id: &key.device_id,
            session_id: &key.session_id,
            conf_id: &self.conf_id,
            room_hint: self.room_id.as_deref(),
        }
    }
}

#[derive(Debug)]
struct Device {
    session: String,
    retired: VecDeque<String>,
    last_seen_ms: u64,
}

/// The calls of the focus and everything needed to route their events.
#[derive(Debug)]
pub struct Calls {
    config: CallsConfig,
    devices: HashMap<(String, String), Device>,
    calls: HashMap<CallKey, Call>,
    orderers: HashMap<CallKey, Reorder<Delivered>>,
    ended: HashMap<CallKey, u64>,
    /// When open calls were last checked against their memberships.
    membership_checked_ms: u64,
    /// When a link call to each (room, conf id, peer focus) was last placed, and how many
    /// attempts in a row were not answered.
    link_placed_ms: HashMap<(String, String, FocusDevice), (u64, u32)>,
    /// Counter for the call ids of the link calls this focus places.
    link_serial: u64,
    /// Warnings about devices' bad call events logged lately (see [`LogBudget`]).
    warnings: LogBudget,
}

impl Calls {
    /// No calls yet.
    pub fn new(config: CallsConfig) -> Self {
        Self {
            config,
            devices: HashMap::new(),
            calls: HashMap::new(),
            orderers: HashMap::new(),
            ended: HashMap::new(),
            membership_checked_ms: 0,
            link_placed_ms: HashMap::new(),
            link_serial: 0,
            warnings: LogBudget::default(),
        }
    }

    /// The focus's identity.
    pub fn focus(&self) -> &FocusIdentity {
        &self.config.focus
    }

    /// How many calls are open (answered or being answered by the media plane).
    pub fn open_calls(&self) -> usize {
        self.calls
            .values()
            .filter(|c| matches!(c.phase, Phase::Open))
            .count()
    }

    /// How many invites are held waiting for authorization.
    pub fn held_calls(&self) -> usize {
        self.calls.len() - self.open_calls()
    }

    /// Whether `call` is open.
    pub fn is_open(&self, call: &CallKey) -> bool {
        self.calls
            .get(call)
            .is_some_and(|c| matches!(c.phase, Phase::Open))
    }

    /// The calls the focus has taken on, open or held, as the checkpoint keeps them (see
    /// [`crate::checkpoint`]): after a crash each is hung up.
    pub fn call_records(&self) -> Vec<crate::checkpoint::OpenCall> {
        self.calls
            .iter()
            .map(|(key, c)| crate::checkpoint::OpenCall {
                user_id: key.user_id.clone(),
                device_id: key.device_id.clone(),
                session_id: key.session_id.clone(),
                call_id: key.call_id.clone(),
                conf_id: c.conf_id.clone(),
                room_id: c.room_id.clone(),
                seq_out: c.seq_out,
                olm_key: None,
            })
            .collect()
    }

    /// The room recorded for an open or held call.
    pub fn room_of(&self, call: &CallKey) -> Option<&str> {
        self.calls.get(call).and_then(|c| c.room_id.as_deref())
    }

    /// Handles one sync batch of to-device events, in order.
    pub fn handle_batch(
        &mut self,
        events: Vec<Incoming>,
        store: &RoomStore,
        now_ms: u64,
        status: &Status,
    ) -> Effects {
        let mut effects = Effects::default();
        status.add(Counter::ToDeviceIn, events.len() as u64);
        for event in &events {
            status.count_to_device(Direction::In, &event.event_type, 1);
        }
        let decoded: Vec<(CallKey, Delivered)> = events
            .into_iter()
            .filter_map(|event| self.decode(event, now_ms, status))
            .collect();
        let hung_up: HashSet<CallKey> = decoded
            .iter()
            .filter(|(_, d)| matches!(d.kind, CallEventKind::Hangup | CallEventKind::Reject))
            .map(|(key, _)| key.clone())
            .collect();
        for (key, delivered) in decoded {
            self.accept(
                key,
                delivered,
                &hung_up,
                store,
                now_ms,
                status,
                &mut effects,
            );
        }
        effects
    }

    /// After new room state: hangs up the open calls whose membership ended (expired, left
    /// the conference, or left the room) and re-decides every held invite.
    pub fn recheck(&mut self, store: &RoomStore, now_ms: u64, status: &Status) -> Effects {
        let mut effects = Effects::default();
        self.end_unauthorized(store, now_ms, status, &mut effects);
        effects.extend(self.recheck_held(store, now_ms, status));
        self.reconcile_links(store, now_ms, status, &mut effects);
        effects
    }

    /// The links of every conference in every joined room, made what the members' active foci
    /// say (see [`crate::link`]): the calls this focus is to place and has no live call for (or
    /// placed more than [`LINK_RETRY_MS`] ago) are placed, and every link call, whichever side
    /// placed it, that is no longer planned is hung up.
    fn reconcile_links(
        &mut self,
        store: &RoomStore,
        now_ms: u64,
        status: &Status,
        effects: &mut Effects,
    ) {
        let own = FocusDevice::new(&self.config.focus.user_id, &self.config.focus.device_id);
        let mut planned: HashSet<(String, String, FocusDevice)> = HashSet::new();
        let mut to_place = Vec::new();
        for (room_id, room) in store.rooms() {
            let conf_ids: HashSet<&str> = room
                .call_memberships()
                .map(|m| m.conf_id.as_str())
                .collect();
            for conf_id in conf_ids {
                let plan = link::plan(&own, link::conference_memberships(room, conf_id), now_ms);
                for (peer, role) in plan.iter() {
                    let key = (room_id.to_owned(), conf_id.to_owned(), peer.clone());
                    if role == Role::Caller {
                        to_place.push(key.clone());
                    }
                    planned.insert(key);
                }
            }
        }
        // Hang up the links no longer planned.
        let unneeded: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(key, call)| {
                call.link.is_some()
                    && !planned.contains(&(
                        call.room_id.clone().unwrap_or_default(),
                        call.conf_id.clone(),
                        FocusDevice::new(&key.user_id, &key.device_id),
                    ))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in unneeded {
            let Some(call) = self.calls.get(&key) else {
                continue;
            };
            info!(conf_id = %call.conf_id, focus_user = %key.user_id, focus_device = %key.device_id, call_id = %key.call_id, "link no longer needed; hanging up");
            status.incr(Counter::CallsClosed);
            effects.to_device.push(outbound::hangup_event(
                &self.config.focus,
                call.context(&key),
                REASON_LINK_UNNEEDED,
            ));
            if matches!(call.phase, Phase::Open) {
                effects.to_media.push(ToMedia::Close {
                    call: key.clone(),
                    reason: REASON_LINK_UNNEEDED.to_owned(),
                });
            }
            self.forget(&key, now_ms);
        }
        self.link_placed_ms.retain(|key, _| planned.contains(key));
        // A draining focus places no new calls; the links it has go on while its members stay.
        if status.draining() {
            return;
        }
        // Place the planned links that have no call.
        for (room_id, conf_id, peer) in to_place {
            let live = self.calls.iter().any(|(key, call)| {
                call.link == Some(Role::Caller)
                    && key.user_id == peer.user_id
                    && key.device_id == peer.device_id
                    && call.conf_id == conf_id
                    && call.room_id.as_deref() == Some(room_id.as_str())
            });
            let placed_key = (room_id, conf_id, peer);
            let recently = self
                .link_placed_ms
                .get(&placed_key)
                .is_some_and(|(at, unanswered)| {
                    now_ms.saturating_sub(*at) < link_retry_ms(*unanswered)
                });
            if live || recently {
                continue;
            }
            let (room_id, conf_id, peer) = placed_key;
            self.link_serial += 1;
            let key = CallKey {
                user_id: peer.user_id.clone(),
                device_id: peer.device_id.clone(),
                // The other focus's session is learnt from its answer; until then, and for
                // every event of this call, the key's session stays empty (see `decode`).
                session_id: String::new(),
                call_id: format!("link-{}-{}", self.config.focus.session_id, self.link_serial),
            };
            info!(%conf_id, %room_id, focus_user = %peer.user_id, focus_device = %peer.device_id, call_id = %key.call_id, "placing a link call");
            status.incr(Counter::LinksPlaced);
            let attempts = self
                .link_placed_ms
                .entry((room_id.clone(), conf_id.clone(), peer))
                .or_insert((now_ms, 0));
            *attempts = (now_ms, attempts.1.saturating_add(1));
            self.calls.insert(
                key.clone(),
                Call {
                    conf_id: conf_id.clone(),
                    room_id: Some(room_id.clone()),
                    seq_out: 0,
                    phase: Phase::Open,
                    link: Some(Role::Caller),
                },
            );
            effects.to_media.push(ToMedia::Link {
                call: key,
                conf_id,
                room_id: Some(room_id),
            });
        }
    }

    /// The room in which `remote` may link with this focus in `conf_id` (preferring `room_hint`):
    /// an unexpired member names `remote` as its active focus and one names this focus, and
    /// `remote` is the side that places the call ([`link::role_towards`]).
    fn link_room(
        &self,
        store: &RoomStore,
        remote: &FocusDevice,
        conf_id: &str,
        room_hint: Option<&str>,
        now_ms: u64,
    ) -> Option<String> {
        let own = FocusDevice::new(&self.config.focus.user_id, &self.config.focus.device_id);
        if link::role_towards(&own, remote) != Some(Role::Callee) {
            return None;
        }
        let hinted = room_hint.and_then(|id| store.room(id).map(|room| (id, room)));
        let others = store.rooms().filter(|(id, _)| Some(*id) != room_hint);
        hinted
            .into_iter()
            .chain(others)
            .find_map(|(room_id, room)| {
                link::may_link(
                    &own,
                    link::conference_memberships(room, conf_id),
                    now_ms,
                    remote,
                )
                .then(|| room_id.to_owned())
            })
    }

    /// Hangs up (`m.call.hangup` with `user_hangup`, and `Close` to the media plane) every open
    /// call whose device is no longer an unexpired member of its conference in a joined room.
    fn end_unauthorized(
        &mut self,
        store: &RoomStore,
        now_ms: u64,
        status: &Status,
        effects: &mut Effects,
    ) {
        self.membership_checked_ms = now_ms;
        if self.config.authorization != Authorization::Membership {
            return;
        }
        // Links are not members: `reconcile_links` ends them.
        let open: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Open) && c.link.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for key in open {
            let Some(call) = self.calls.get(&key) else {
                continue;
            };
            let Decision::Refuse { cause, detail } =
                authorize(self.config.authorization, store, &call.caller(&key), now_ms)
            else {
                continue;
            };
            status.incr(Counter::MembershipEnded);
            status.incr(Counter::CallsClosed);
            info!(conf_id = %call.conf_id, user = %key.user_id, device = %key.device_id, call_id = %key.call_id, cause = cause.name(), detail, "the call's membership ended; hanging up");
            let hangup =
                outbound::hangup_event(&self.config.focus, call.context(&key), reason::USER_HANGUP);
            effects.to_device.push(hangup);
            effects.to_media.push(ToMedia::Close {
                call: key.clone(),
                reason: REASON_MEMBERSHIP_ENDED.to_owned(),
            });
            self.forget(&key, now_ms);
        }
    }

    /// Re-decides every held invite.
    fn recheck_held(&mut self, store: &RoomStore, now_ms: u64, status: &Status) -> Effects {
        let mut effects = Effects::default();
        let held: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Held(_)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            self.try_open(&key, store, now_ms, status, &mut effects);
        }
        effects
    }

    /// Time passes: skips `seq` gaps waited on too long, settles held invites whose hold is
    /// over, and forgets idle bookkeeping.
    pub fn tick(&mut self, store: &RoomStore, now_ms: u64, status: &Status) -> Effects {
        let mut effects = Effects::default();
        let waiting: Vec<CallKey> = self
            .orderers
            .iter()
            .filter(|(_, o)| o.has_pending())
            .map(|(k, _)| k.clone())
            .collect();
        let no_hangups = HashSet::new();
        for key in waiting {
            let Some(orderer) = self.orderers.get_mut(&key) else {
                continue;
            };
            let ready = orderer.expire(now_ms);
            let skipped = orderer.take_skipped();
            if skipped > 0 {
                status.add(Counter::GapsSkipped, skipped);
                debug!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, "skipped a seq gap");
            }
            for delivered in ready {
                self.dispatch(
                    &key,
                    delivered,
                    &no_hangups,
                    store,
                    now_ms,
                    status,
                    &mut effects,
                );
            }
        }
        if now_ms.saturating_sub(self.membership_checked_ms) >= MEMBERSHIP_RECHECK_MS {
            self.end_unauthorized(store, now_ms, status, &mut effects);
            self.reconcile_links(store, now_ms, status, &mut effects);
        }
        effects.extend(self.recheck_held(store, now_ms, status));
        self.prune(now_ms);
        effects
    }

    /// Turns a media-plane message into a to-device message (for open calls only).
    pub fn from_media(&mut self, message: FromMedia, now_ms: u64, status: &Status) -> Effects {
        let mut effects = Effects::default();
        let key = message.call();
        let Some(call) = self.calls.get_mut(key) else {
            status.incr(Counter::MediaUnknownCall);
            debug!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, "media message for a call that is gone");
            return effects;
        };
        if !matches!(call.phase, Phase::Open) {
            status.incr(Counter::MediaUnknownCall);
            debug!(call_id = %key.call_id, "media message for a call that is not open");
            return effects;
        }
        let Some((kind, content)) = outbound::media_event(&message) else {
            return effects;
        };
        effects.to_device.push(outbound::call_event(
            &self.config.focus,
            call.context(key),
            kind,
            content,
        ));
        call.seq_out += 1;
        if let FromMedia::Hangup { reason, .. } = &message {
            info!(conf_id = %call.conf_id, user = %key.user_id, device = %key.device_id, call_id = %key.call_id, reason, "media plane hung up");
            let key = key.clone();
            self.forget(&key, now_ms);
            status.incr(Counter::CallsClosed);
        }
        effects
    }

    /// Whether a warning about a device's bad call event may be logged at `now_ms` (see
    /// [`LogBudget`]); when warnings were left out before it, says how many.
    fn may_warn(&mut self, now_ms: u64) -> bool {
        match self.warnings.admit(now_ms) {
            Some(0) => true,
            Some(left_out) => {
                warn!(
                    left_out,
                    "warnings about bad call events were left out of the log (each is counted in cascade_signalling_errors_total)"
                );
                true
            }
            None => false,
        }
    }

    /// Decodes and filters one event; `None` when it is not for the focus or not usable.
    fn decode(
        &mut self,
        event: Incoming,
        now_ms: u64,
        status: &Status,
    ) -> Option<(CallKey, Delivered)> {
        let decoded = match CallEvent::decode(&event.event_type, &event.content) {
            Ok(decoded) => decoded,
            Err(DecodeError::NotACallEvent) => {
                debug!(event_type = %event.event_type, sender = %event.sender, "ignoring to-device event");
                return None;
            }
            Err(DecodeError::Malformed(err)) => {
                status.incr(Counter::DecodeErrors);
                if self.may_warn(now_ms) {
                    warn!(event_type = %event.event_type, sender = %event.sender, error = %err, "malformed call event");
                }
                return None;
            }
        };
        let content = decoded.content;
        if let Some(dest) = content.dest_session_id.as_deref()
            && dest != self.config.focus.session_id
            && dest != SFU_SESSION_ID
        {
            status.incr(Counter::NotForThisSession);
            debug!(dest_session_id = dest, call_id = %content.call_id, sender = %event.sender, "call event for another session");
            return None;
        }
        let device_id = content
            .device_id
            .as_deref()
            .or(content.party_id.as_deref())
            .filter(|d| !d.is_empty());
        let problem = if UserId::parse(&event.sender).is_err() {
            Some("sender is not a valid user id")
        } else if device_id.is_none() {
            Some("neither device_id nor party_id")
        } else if content.call_id.is_empty() {
            Some("no call_id")
        } else {
            None
        };
        if let Some(problem) = problem {
            status.incr(Counter::DecodeErrors);
            if self.may_warn(now_ms) {
                warn!(event_type = %event.event_type, sender = %event.sender, call_id = %content.call_id, problem, "unusable call event");
            }
            return None;
        }
        let mut key = CallKey {
            user_id: event.sender,
            device_id: device_id.unwrap_or_default().to_owned(),
            session_id: content.sender_session_id.clone().unwrap_or_default(),
            call_id: content.call_id.clone(),
        };
        // A link call this focus placed is keyed without the other focus's session, which
        // was not known when it was placed.
        let placed = CallKey {
            session_id: String::new(),
            ..key.clone()
        };
        let is_placed = self
            .calls
            .get(&placed)
            .is_some_and(|c| c.link == Some(Role::Caller))
            || (placed.call_id.starts_with("link-") && self.ended.contains_key(&placed));
        if is_placed {
            key = placed;
        }
        Some((
            key,
            Delivered {
                kind: decoded.kind,
                content,
                aged_from_ms: event.aged_from_ms,
            },
        ))
    }

    /// Session check, then reordering, then dispatch of whatever is ready.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        key: CallKey,
        delivered: Delivered,
        hung_up: &HashSet<CallKey>,
        store: &RoomStore,
        now_ms: u64,
        status: &Status,
        effects: &mut Effects,
    ) {
        if !self.check_session(&key, now_ms, status, effects) {
            return;
        }
        if self.ended.contains_key(&key) {
            status.incr(Counter::UnknownCall);
            debug!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, kind = ?delivered.kind, "event for an ended call");
            return;
        }
        let open = self.is_open(&key);
        let orderer = self
            .orderers
            .entry(key.clone())
            .or_insert_with(|| Reorder::new(REORDER_MAX_PENDING, REORDER_WAIT_MS, now_ms));
        let seq = delivered.content.seq;
        let starts = delivered.kind == CallEventKind::Invite;
        let kind = delivered.kind;
        // A hangup is final and idempotent: one whose seq was already used (a peer that
        // restarted and lost count, as a crashed focus does) still ends an open call.
        let hangup = (kind == CallEventKind::Hangup).then(|| delivered.clone());
        let ready = match orderer.push(seq, starts, delivered, now_ms) {
            Ok(ready) => ready,
            Err(Rejected::Duplicate { seq }) if hangup.is_some() && open => {
                info!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, seq, "hangup with a seq already used; the call ends");
                hangup.into_iter().collect()
            }
            Err(Rejected::Duplicate { seq }) => {
                status.incr(Counter::Duplicates);
                debug!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, seq, ?kind, "duplicate event");
                return;
            }
        };
        let skipped = orderer.take_skipped();
        status.add(Counter::GapsSkipped, skipped);
        for delivered in ready {
            self.dispatch(&key, delivered, hung_up, store, now_ms, status, effects);
        }
    }

    /// Tracks the device's current session; replaces it (closing its calls) when a new one shows
    /// up. Returns `false` for events from a session already replaced.
    fn check_session(
        &mut self,
        key: &CallKey,
        now_ms: u64,
        status: &Status,
        effects: &mut Effects,
    ) -> bool {
        let device_key = (key.user_id.clone(), key.device_id.clone());
        let device = self.devices.entry(device_key).or_insert_with(|| Device {
            session: key.session_id.clone(),
            retired: VecDeque::new(),
            last_seen_ms: now_ms,
        });
        device.last_seen_ms = now_ms;
        if device.session == key.session_id {
            return true;
        }
        if device.retired.contains(&key.session_id) {
            status.incr(Counter::StaleSession);
            debug!(user = %key.user_id, device = %key.device_id, session = %key.session_id, call_id = %key.call_id, "event from a replaced session");
            return false;
        }
        let old = std::mem::replace(&mut device.session, key.session_id.clone());
        device.retired.push_back(old.clone());
        if device.retired.len() > RETIRED_SESSIONS_KEPT {
            device.retired.pop_front();
        }
        status.incr(Counter::SessionsReplaced);
        info!(user = %key.user_id, device = %key.device_id, old_session = %old, new_session = %key.session_id, "device session replaced");
        let old_calls: HashSet<CallKey> = self
            .calls
            .keys()
            .chain(self.orderers.keys())
            .filter(|k| {
                k.user_id == key.user_id && k.device_id == key.device_id && k.session_id == old
            })
            .cloned()
            .collect();
        for old_key in old_calls {
            if self.is_open(&old_key) {
                effects.to_media.push(ToMedia::Close {
                    call: old_key.clone(),
                    reason: REASON_SESSION_REPLACED.to_owned(),
                });
                status.incr(Counter::CallsClosed);
            }
            self.forget(&old_key, now_ms);
        }
        true
    }

    /// Handles one in-order event.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        key: &CallKey,
        delivered: Delivered,
        hung_up: &HashSet<CallKey>,
        store: &RoomStore,
        now_ms: u64,
        status: &Status,
        effects: &mut Effects,
    ) {
        if delivered.kind == CallEventKind::Invite {
            self.on_invite(key, delivered, hung_up, store, now_ms, status, effects);
            return;
        }
        let Some(call) = self.calls.get_mut(key) else {
            status.incr(Counter::UnknownCall);
            debug!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, kind = ?delivered.kind, "event for an unknown call");
            return;
        };
        match &mut call.phase {
            Phase::Held(held) => {
                if matches!(
                    delivered.kind,
                    CallEventKind::Hangup | CallEventKind::Reject
                ) {
                    info!(conf_id = %call.conf_id, user = %key.user_id, device = %key.device_id, call_id = %key.call_id, "hung up before the invite was authorized");
                    status.incr(Counter::CallsClosed);
                    self.forget(key, now_ms);
                } else if held.queue.len() >= HOLD_QUEUE_MAX {
                    status.incr(Counter::QueueOverflow);
                    warn!(conf_id = %call.conf_id, user = %key.user_id, device = %key.device_id, call_id = %key.call_id, "held call's queue is full; dropping event");
                } else {
                    held.queue.push(delivered);
                }
            }
            Phase::Open => self.forward(key, delivered, now_ms, status, effects),
        }
    }

    /// Maps an event of an open call to the media plane.
    fn forward(
        &mut self,
        key: &CallKey,
        delivered: Delivered,
        now_ms: u64,
        status: &Status,
        effects: &mut Effects,
    ) {
        let content = delivered.content;
        let call = key.clone();
        let message = match delivered.kind {
            CallEventKind::Candidates => match content.candidates {
                Some(candidates) if !candidates.is_empty() => {
                    Some(ToMedia::Candidates { call, candidates })
                }
                _ => None,
            },
            CallEventKind::Negotiate => {
                let metadata = content.metadata().cloned();
                match content.description {
                    Some(description) => Some(ToMedia::Negotiate {
                        call,
                        description,
                        metadata,
                    }),
                    None => {
                        status.incr(Counter::DecodeErrors);
                        if self.may_warn(now_ms) {
                            warn!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, "negotiate without description");
                        }
                        None
                    }
                }
            }
            CallEventKind::SdpStreamMetadataChanged => content
                .metadata()
                .cloned()
                .map(|metadata| ToMedia::Metadata { call, metadata }),
            CallEventKind::Hangup | CallEventKind::Reject => {
                let reason = content.hangup_reason().to_owned();
                info!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, reason, "device hung up");
                self.forget(key, now_ms);
                status.incr(Counter::CallsClosed);
                Some(ToMedia::Close { call, reason })
            }
            CallEventKind::SelectAnswer => match content.selected_party_id.as_deref() {
                Some(party) if party != self.config.focus.device_id => {
                    info!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, selected = party, "caller selected another answer");
                    self.forget(key, now_ms);
                    status.incr(Counter::CallsClosed);
                    Some(ToMedia::Close {
                        call,
                        reason: REASON_ANSWERED_ELSEWHERE.to_owned(),
                    })
                }
                _ => None,
            },
            CallEventKind::Answer
                if self
                    .calls
                    .get(key)
                    .is_some_and(|c| c.link == Some(Role::Caller)) =>
            {
                match content.answer {
                    Some(description) => {
                        info!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, "link call answered");
                        if let Some(call) = self.calls.get(key) {
                            let peer = FocusDevice::new(&key.user_id, &key.device_id);
                            let placed = (
                                call.room_id.clone().unwrap_or_default(),
                                call.conf_id.clone(),
                                peer,
                            );
                            if let Some(attempts) = self.link_placed_ms.get_mut(&placed) {
                                attempts.1 = 0;
                            }
                        }
                        Some(ToMedia::Negotiate {
                            call,
                            description,
                            metadata: None,
                        })
                    }
                    None => {
                        status.incr(Counter::DecodeErrors);
                        if self.may_warn(now_ms) {
                            warn!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, "answer without description");
                        }
                        None
                    }
                }
            }
            CallEventKind::Answer | CallEventKind::Invite => {
                debug!(user = %key.user_id, call_id = %key.call_id, kind = ?delivered.kind, "ignoring event the focus does not expect");
                None
            }
        };
        effects.to_media.extend(message);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_invite(
        &mut self,
        key: &CallKey,
        delivered: Delivered,
        hung_up: &HashSet<CallKey>,
        store: &RoomStore,
        now_ms: u64,
        status: &Status,
        effects: &mut Effects,
    ) {
        status.incr(Counter::InvitesReceived);
        if self.calls.contains_key(key) {
            status.incr(Counter::Duplicates);
            debug!(user = %key.user_id, device = %key.device_id, call_id = %key.call_id, "repeated invite for a known call");
            return;
        }
        let content = delivered.content;
        let conf_id = content.conf_id.clone().unwrap_or_default();
        let lifetime_ms = content.lifetime.unwrap_or(DEFAULT_INVITE_LIFETIME_MS);
        let void_reason = if hung_up.contains(key) {
            Some("hung up in the same sync batch".to_owned())
        } else {
            match delivered.aged_from_ms {
                None => Some("age unknown (backlog before any recorded sync)".to_owned()),
                Some(from) if now_ms.saturating_sub(from) > lifetime_ms => Some(format!(
                    "older than its lifetime ({} ms > {lifetime_ms} ms)",
                    now_ms.saturating_sub(from)
                )),
                Some(_) => None,
            }
        };
        if let Some(why) = void_reason {
            status.incr(Counter::InvitesVoid);
            info!(%conf_id, user = %key.user_id, device = %key.device_id, call_id = %key.call_id, why, "invite void");
            self.forget(key, now_ms);
            return;
        }
        let Some(offer) = content.offer.clone() else {
            status.incr(Counter::DecodeErrors);
            if self.may_warn(now_ms) {
                warn!(%conf_id, user = %key.user_id, device = %key.device_id, call_id = %key.call_id, "invite without offer");
            }
            self.forget(key, now_ms);
            return;
        };
        info!(%conf_id, user = %key.user_id, device = %key.device_id, session = %key.session_id, call_id = %key.call_id, "invite received");
        let held = Held {
            since_ms: now_ms,
            queue: Vec::new(),
            offer_sdp: offer.sdp,
            metadata: content.metadata().cloned().unwrap_or_default(),
            lifetime_ms,
            aged_from_ms: delivered.aged_from_ms,
            last_cause: None,
        };
        self.calls.insert(
            key.clone(),
            Call {
                conf_id,
                room_id: content.room_id,
                seq_out: 0,
                phase: Phase::Held(Box::new(held)),
                link: None,
            },
        );
        self.try_open(key, store, now_ms, status, effects);
    }

    /// Authorizes a held invite: opens it, keeps holding it, or refuses it once the hold is over.
    fn try_open(
        &mut self,
        key: &CallKey,
        store: &RoomStore,
        now_ms: u64,
        status: &Status,
        effects: &mut Effects,
    ) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let Phase::Held(held) = &mut call.phase else {
            return;
        };
        if let Some(from) = held.aged_from_ms
            && now_ms.saturating_sub(from) > held.lifetime_ms
        {
            status.incr(Counter::InvitesVoid);
            info!(conf_id = %call.conf_id, user = %key.user_id, device = %key.device_id, call_id = %key.call_id, "invite expired while held");
            self.forget(key, now_ms);
            return;
        }
        if status.draining() {
            status.refuse(RefusalCause::Draining);
            info!(conf_id = %call.conf_id, user = %key.user_id, device = %key.device_id, call_id = %key.call_id, cause = RefusalCause::Draining.name(), "invite refused: the focus is draining");
            let hangup =
                outbound::hangup_event(&self.config.focus, call.context(key), REASON_DRAINING);
            effects.to_device.push(hangup);
            self.forget(key, now_ms);
            return;
        }
        let (conf_id, room_hint) = (call.conf_id.clone(), call.room_id.clone());
        let caller = Caller {
            user_id: &key.user_id,
            device_id: &key.device_id,
            session_id: &key.session_id,
            conf_id: &conf_id,
            room_hint: room_hint.as_deref(),
        };
        let mut decision = authorize(self.config.authorization, store, &caller, now_ms);
        let mut link = None;
        if matches!(decision, Decision::Refuse { .. }) {
            // Not a member: another focus's link invite is authorized by the members who name
            // the two foci.
            let remote = FocusDevice::new(&key.user_id, &key.device_id);
            if let Some(room_id) =
                self.link_room(store, &remote, &conf_id, room_hint.as_deref(), now_ms)
            {
                decision = Decision::Allow {
                    room_id: Some(room_id),
                };
                link = Some(Role::Callee);
                status.incr(Counter::LinksAccepted);
            }
        }
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let Phase::Held(held) = &mut call.phase else {
            return;
        };
        call.link = link;
        match decision {
            Decision::Allow { room_id } => {
                let Phase::Held(held) = std::mem::replace(&mut call.phase, Phase::Open) else {
                    return;
                };
                if room_id.is_some() {
                    call.room_id = room_id;
                }
                info!(conf_id = %call.conf_id, user = %key.user_id, device = %key.device_id, call_id = %key.call_id, room_id = call.room_id.as_deref().unwrap_or(""), "invite authorized");
                status.incr(Counter::InvitesOpened);
                effects.to_media.push(ToMedia::Open {
                    call: key.clone(),
                    conf_id: call.conf_id.clone(),
                    room_id: call.room_id.clone(),
                    offer_sdp: held.offer_sdp,
                    metadata: held.metadata,
                    link: call.link.is_some(),
                });
                for delivered in held.queue {
                    self.forward(key, delivered, now_ms, status, effects);
                }
            }
            Decision::Refuse { cause, detail } => {
                if now_ms.saturating_sub(held.since_ms) < self.config.hold_ms {
                    if held.last_cause != Some(cause) {
                        debug!(conf_id = %call.conf_id, user = %key.user_id, device = %key.device_id, call_id = %key.call_id, detail, "holding invite until room state authorizes it");
                        held.last_cause = Some(cause);
                    }
                    return;
                }
                status.refuse(cause);
                warn!(conf_id = %call.conf_id, user = %key.user_id, device = %key.device_id, call_id = %key.call_id, cause = cause.name(), detail, "invite refused");
                let hangup = outbound::hangup_event(
                    &self.config.focus,
                    call.context(key),
                    reason::UNKNOWN_ERROR,
                );
                effects.to_device.push(hangup);
                self.forget(key, now_ms);
            }
        }
    }

    /// Drops a call and remembers it as ended, so its late events are dropped quietly.
    fn forget(&mut self, key: &CallKey, ended_at: u64) {
        self.calls.remove(key);
        self.orderers.remove(key);
        self.ended.insert(key.clone(), ended_at);
    }

    fn prune(&mut self, now_ms: u64) {
        self.ended
            .retain(|_, at| now_ms.saturating_sub(*at) < ENDED_KEEP_MS);
        let calls = &self.calls;
        self.orderers.retain(|key, orderer| {
            calls.contains_key(key)
                || orderer.has_pending()
                || now_ms.saturating_sub(orderer.last_activity_ms()) < IDLE_ORDERER_MS
        });
        let active: HashSet<(&str, &str)> = calls
            .keys()
            .map(|k| (k.user_id.as_str(), k.device_id.as_str()))
            .collect();
        self.devices.retain(|(user, device), entry| {
            active.contains(&(user.as_str(), device.as_str()))
                || now_ms.saturating_sub(entry.last_seen_ms) < IDLE_DEVICE_MS
        });
    }
}

/// How long to wait before placing a link call again after `unanswered` attempts in a row
/// were not answered: [`LINK_RETRY_MS`], doubled per unanswered attempt beyond the first, at most
/// [`LINK_RETRY_MAX_MS`].
fn link_retry_ms(unanswered: u32) -> u64 {
    let doublings = unanswered.saturating_sub(1).min(16);
    LINK_RETRY_MS
        .saturating_mul(1 << doublings)
        .min(LINK_RETRY_MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorize::RefusalCause;
    use crate::client::RawEvent;
    use serde_json::json;

    const NOW: u64 = 1_000_000_000;

    fn focus() -> FocusIdentity {
        FocusIdentity {
            user_id: "@focus:hs".into(),
            device_id: "FOCUS".into(),
            session_id: "FS".into(),
        }
    }

    fn engine(authorization: Authorization, hold_ms: u64) -> Calls {
        Calls::new(CallsConfig {
            focus: focus(),
            authorization,
            hold_ms,
        })
    }

    fn open_engine() -> Calls {
        engine(Authorization::Open, 5000)
    }

    fn key(session: &str, call: &str) -> CallKey {
        CallKey {
            user_id: "@a:hs".into(),
            device_id: "D".into(),
            session_id: session.into(),
            call_id: call.into(),
        }
    }

    fn base(call: &str, session: &str, seq: u64) -> Value {
        json!({"call_id": call, "party_id": "D", "version": "1", "conf_id": "conf", "device_id": "D",
               "sender_session_id": session, "dest_session_id": "sfu", "seq": seq})
    }

    fn with(mut content: Value, extra: Value) -> Value {
        if let (Some(c), Some(e)) = (content.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        content
    }

    fn incoming(event_type: &str, content: Value) -> Incoming {
        Incoming {
            sender: "@a:hs".into(),
            event_type: event_type.into(),
            content,
            aged_from_ms: Some(NOW),
        }
    }

    fn invite(call: &str, session: &str, seq: u64) -> Incoming {
        incoming(
            "m.call.invite",
            with(
                base(call, session, seq),
                json!({"offer": {"type": "offer", "sdp": "v=0 offer"}, "lifetime": 60000,
                       "sdp_stream_metadata": {"s1": {"purpose": "m.usermedia"}}}),
            ),
        )
    }

    fn candidates(call: &str, session: &str, seq: u64) -> Incoming {
        incoming(
            "m.call.candidates",
            with(
                base(call, session, seq),
                json!({"candidates": [{"candidate": "candidate:1 1 udp 1 10.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}]}),
            ),
        )
    }

    fn hangup(call: &str, session: &str, seq: u64) -> Incoming {
        incoming(
            "m.call.hangup",
            with(base(call, session, seq), json!({"reason": "user_hangup"})),
        )
    }

    fn member_store(session: Option<&str>, expires_ts: u64) -> RoomStore {
        let mut store = RoomStore::new();
        let event = |event_type: &str, state_key: &str, content: Value| RawEvent {
            event_type: event_type.into(),
            sender: "@a:hs".into(),
            state_key: Some(state_key.into()),
            content,
            origin_server_ts: Some(NOW),
        };
        store.apply(
            "!room:hs",
            &event("m.room.member", "@a:hs", json!({"membership": "join"})),
        );
        let mut device = json!({"device_id": "D", "expires_ts": expires_ts, "feeds": []});
        if let Some(session) = session {
            device["session_id"] = json!(session);
        }
        store.apply(
            "!room:hs",
            &event(
                "m.call.member",
                "@a:hs",
                json!({"m.calls": [{"m.call_id": "conf", "m.devices": [device]}]}),
            ),
        );
        store
    }

    /// A compact view of media-plane messages for assertions.
    fn media(effects: &Effects) -> Vec<String> {
        effects
            .to_media
            .iter()
            .map(|m| match m {
                ToMedia::Open { call, link, .. } => {
                    let what = if *link { "open link" } else { "open" };
                    format!("{what} {}/{}", call.session_id, call.call_id)
                }
                ToMedia::Link { call, .. } => {
                    format!("link {}/{}", call.device_id, call.call_id)
                }
                ToMedia::Publisher { call, .. }
                | ToMedia::Subscriber { call, .. }
                | ToMedia::TrackSettings { call, .. }
                | ToMedia::Subscription { call, .. }
                | ToMedia::Data { call, .. } => {
                    format!("livekit {}/{}", call.session_id, call.call_id)
                }
                ToMedia::Candidates { call, .. } => format!("candidates {}", call.call_id),
                ToMedia::Negotiate { call, .. } => format!("negotiate {}", call.call_id),
                ToMedia::Metadata { call, .. } => format!("metadata {}", call.call_id),
                ToMedia::Close { call, reason } => {
                    format!("close {}/{} {reason}", call.session_id, call.call_id)
                }
            })
            .collect()
    }

    /// Hangups sent to the device, as `call_id reason`.
    fn hangups(effects: &Effects) -> Vec<String> {
        effects
            .to_device
            .iter()
            .filter(|m| m.event_type == "m.call.hangup")
            .map(|m| {
                format!(
                    "{} {}",
                    m.content["call_id"].as_str().unwrap_or(""),
                    m.content["reason"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn calls_end_with_their_membership_by_expiry_leaving_the_conference_or_the_room() {
        let status = Status::with_session_id("FS");
        let closed = ["close S1/c1 membership_ended"];
        // Expiry: nothing changes in the room, the membership's time runs out.
        let store = member_store(Some("S1"), NOW + 10_000);
        let mut calls = engine(Authorization::Membership, 5000);
        let out = calls.handle_batch(vec![invite("c1", "S1", 0)], &store, NOW, &status);
        assert_eq!(media(&out), ["open S1/c1"]);
        let out = calls.tick(&store, NOW + 9_000, &status);
        assert!(out.is_empty(), "still a member: {:?}", media(&out));
        let out = calls.tick(&store, NOW + 10_000 + MEMBERSHIP_RECHECK_MS, &status);
        assert_eq!(media(&out), closed);
        assert_eq!(hangups(&out), ["c1 user_hangup"]);
        assert_eq!(calls.open_calls(), 0);
        assert_eq!(status.get(Counter::MembershipEnded), 1);

        // Leaving the conference: the user's call-member state becomes empty.
        let mut store = member_store(Some("S1"), NOW + 3_600_000);
        let mut calls = engine(Authorization::Membership, 5000);
        calls.handle_batch(vec![invite("c1", "S1", 0)], &store, NOW, &status);
        let left = RawEvent {
            event_type: "m.call.member".into(),
            sender: "@a:hs".into(),
            state_key: Some("@a:hs".into()),
            content: json!({"m.calls": []}),
            origin_server_ts: Some(NOW),
        };
        store.apply("!room:hs", &left);
        let out = calls.recheck(&store, NOW + 1, &status);
        assert_eq!(media(&out), closed);
        assert_eq!(hangups(&out), ["c1 user_hangup"]);

        // Leaving the room.
        let mut store = member_store(Some("S1"), NOW + 3_600_000);
        let mut calls = engine(Authorization::Membership, 5000);
        calls.handle_batch(vec![invite("c1", "S1", 0)], &store, NOW, &status);
        let leave = RawEvent {
            event_type: "m.room.member".into(),
            sender: "@a:hs".into(),
            state_key: Some("@a:hs".into()),
            content: json!({"membership": "leave"}),
            origin_server_ts: Some(NOW),
        };
        store.apply("!room:hs", &leave);
        let out = calls.recheck(&store, NOW + 1, &status);
        assert_eq!(media(&out), closed);
        assert_eq!(status.get(Counter::MembershipEnded), 3);

        // With open authorization nothing is ended.
        let mut calls = open_engine();
        calls.handle_batch(vec![invite("c1", "S1", 0)], &RoomStore::new(), NOW, &status);
        let out = calls.tick(&RoomStore::new(), NOW + 3_600_000, &status);
        assert!(out.is_empty());
    }

    #[test]
    fn draining_refuses_new_invites_as_busy_and_keeps_open_calls() {
        let status = Status::with_session_id("FS");
        let store = RoomStore::new();
        let mut calls = open_engine();
        let out = calls.handle_batch(vec![invite("c1", "S1", 0)], &store, NOW, &status);
        assert_eq!(media(&out), ["open S1/c1"]);
        status.set_draining(true);
        let out = calls.handle_batch(
            vec![candidates("c1", "S1", 1), invite("c2", "S1", 0)],
            &store,
            NOW,
            &status,
        );
        assert_eq!(media(&out), ["candidates c1"], "the open call goes on");
        assert_eq!(out.to_device.len(), 1);
        assert_eq!(out.to_device[0].event_type, "m.call.hangup");
        assert_eq!(out.to_device[0].content["reason"], "user_busy");
        assert_eq!(out.to_device[0].content["call_id"], "c2");
        assert_eq!(status.refused(RefusalCause::Draining), 1);
        assert!(calls.is_open(&key("S1", "c1")));
        assert!(!calls.is_open(&key("S1", "c2")));
        assert_eq!(
            status.to_device(Direction::In)[0],
            2,
            "two invites counted by type"
        );
    }

    #[test]
    fn open_mode_opens_and_forwards_in_order() {
        let status = Status::with_session_id("FS");
        let store = RoomStore::new();
        let mut calls = open_engine();
        let out = calls.handle_batch(
            vec![invite("c1", "S1", 0), candidates("c1", "S1", 1)],
            &store,
            NOW,
            &status,
        );
        assert_eq!(media(&out), ["open S1/c1", "candidates c1"]);
        match &out.to_media[0] {
            ToMedia::Open {
                conf_id,
                offer_sdp,
                metadata,
                ..
            } => {
                assert_eq!(conf_id, "conf");
                assert_eq!(offer_sdp, "v=0 offer");
                assert!(metadata.contains_key("s1"));
            }
            other => panic!("{other:?}"),
        }
        let negotiate = incoming(
            "m.call.negotiate",
            with(
                base("c1", "S1", 2),
                json!({"description": {"type": "offer", "sdp": "v=0 re"}}),
            ),
        );
        let metadata = incoming(
            "org.matrix.call.sdp_stream_metadata_changed",
            with(
                base("c1", "S1", 3),
                json!({"org.matrix.msc3077.sdp_stream_metadata": {"s1": {"purpose": "m.usermedia", "audio_muted": true}}}),
            ),
        );
        let out = calls.handle_batch(
            vec![negotiate, metadata, hangup("c1", "S1", 4)],
            &store,
            NOW,
            &status,
        );
        assert_eq!(
            media(&out),
            ["negotiate c1", "metadata c1", "close S1/c1 user_hangup"]
        );
        assert_eq!(calls.open_calls(), 0);
        let out = calls.handle_batch(vec![candidates("c1", "S1", 5)], &store, NOW, &status);
        assert!(out.is_empty());
        assert_eq!(status.get(Counter::UnknownCall), 1);
        assert_eq!(status.get(Counter::InvitesOpened), 1);
        assert_eq!(status.get(Counter::CallsClosed), 1);
        assert_eq!(status.get(Counter::ToDeviceIn), 6);
    }

    #[test]
    fn reorders_across_batches_and_skips_gaps() {
        let status = Status::with_session_id("FS");
        let store = RoomStore::new();
        let mut calls = open_engine();
        let out = calls.handle_batch(vec![candidates("c1", "S1", 1)], &store, NOW, &status);
        assert!(out.is_empty(), "candidates wait for the invite");
        let out = calls.handle_batch(vec![invite("c1", "S1", 0)], &store, NOW + 10, &status);
        assert_eq!(media(&out), ["open S1/c1", "candidates c1"]);
        let out = calls.handle_batch(vec![candidates("c1", "S1", 3)], &store, NOW + 20, &status);
        assert!(out.is_empty(), "seq 2 is missing");
        let out = calls.tick(&store, NOW + 20 + REORDER_WAIT_MS - 1, &status);
        assert!(out.is_empty());
        let out = calls.tick(&store, NOW + 20 + REORDER_WAIT_MS, &status);
        assert_eq!(media(&out), ["candidates c1"]);
        assert_eq!(status.get(Counter::GapsSkipped), 1);
        let out = calls.handle_batch(
            vec![candidates("c1", "S1", 2), candidates("c1", "S1", 3)],
            &store,
            NOW + 5000,
            &status,
        );
        assert!(out.is_empty());
        assert_eq!(status.get(Counter::Duplicates), 2);
    }

    #[test]
    fn events_without_seq_pass_and_unknown_calls_are_dropped() {
        let status = Status::with_session_id("FS");
        let store = RoomStore::new();
        let mut calls = open_engine();
        let mut no_seq = candidates("c9", "S1", 0);
        no_seq.content.as_object_mut().unwrap().remove("seq");
        let out = calls.handle_batch(vec![no_seq], &store, NOW, &status);
        assert!(out.is_empty());
        assert_eq!(status.get(Counter::UnknownCall), 1);
        // An unknown call's event with seq waits for a possible invite, then is dropped.
        calls.handle_batch(vec![candidates("c8", "S1", 4)], &store, NOW, &status);
        assert_eq!(status.get(Counter::UnknownCall), 1);
        let out = calls.tick(&store, NOW + REORDER_WAIT_MS, &status);
        assert!(out.is_empty());
        assert_eq!(status.get(Counter::UnknownCall), 2);
    }

    #[test]
    fn filters_by_dest_session_and_rejects_unusable_events() {
        let cases: Vec<(&str, Incoming, Counter)> = vec![
            (
                "dest other session",
                {
                    let mut e = invite("c", "S1", 0);
                    e.content["dest_session_id"] = json!("OTHER");
                    e
                },
                Counter::NotForThisSession,
            ),
            (
                "malformed content",
                incoming("m.call.invite", json!({"call_id": 5})),
                Counter::DecodeErrors,
            ),
            (
                "no device",
                {
                    let mut e = invite("c", "S1", 0);
                    let c = e.content.as_object_mut().unwrap();
                    c.remove("device_id");
                    c.remove("party_id");
                    e
                },
                Counter::DecodeErrors,
            ),
            ("no call id", invite("", "S1", 0), Counter::DecodeErrors),
            (
                "bad sender",
                Incoming {
                    sender: "nobody".into(),
                    ..invite("c", "S1", 0)
                },
                Counter::DecodeErrors,
            ),
            (
                "invite without offer",
                incoming("m.call.invite", base("c", "S1", 0)),
                Counter::DecodeErrors,
            ),
        ];
        for (name, event, counter) in cases {
            let status = Status::with_session_id("FS");
            let mut calls = open_engine();
            let out = calls.handle_batch(vec![event], &RoomStore::new(), NOW, &status);
            assert!(out.is_empty(), "{name}");
            assert_eq!(status.get(counter), 1, "{name}");
        }
        let accepted = [None, Some("sfu"), Some("FS")];
        for dest in accepted {
            let status = Status::with_session_id("FS");
            let mut calls = open_engine();
            let mut event = invite("c", "S1", 0);
            match dest {
                Some(d) => event.content["dest_session_id"] = json!(d),
                None => {
                    event
                        .content
                        .as_object_mut()
                        .unwrap()
                        .remove("dest_session_id");
                }
            }
            let out = calls.handle_batch(vec![event], &RoomStore::new(), NOW, &status);
            assert_eq!(media(&out), ["open S1/c"], "dest {dest:?}");
        }
        // party_id stands in for a missing device_id; non-call types pass quietly.
        let status = Status::with_session_id("FS");
        let mut calls = open_engine();
        let mut event = invite("c", "S1", 0);
        event.content.as_object_mut().unwrap().remove("device_id");
        let other = incoming("m.room_key_request", json!({}));
        let out = calls.handle_batch(vec![other, event], &RoomStore::new(), NOW, &status);
        assert_eq!(media(&out), ["open S1/c"]);
        assert_eq!(status.get(Counter::DecodeErrors), 0);
    }

    #[test]
    fn invite_lifetime_and_backlog() {
        // (name, aged_from, lifetime, opened)
        let cases: Vec<(&str, Option<u64>, Option<u64>, bool)> = vec![
            ("fresh", Some(NOW), Some(60_000), true),
            (
                "exactly its lifetime old",
                Some(NOW - 60_000),
                Some(60_000),
                true,
            ),
            (
                "backlog older than lifetime",
                Some(NOW - 60_001),
                Some(60_000),
                false,
            ),
            ("short lifetime", Some(NOW - 10_000), Some(5_000), false),
            ("default lifetime, old", Some(NOW - 61_000), None, false),
            ("default lifetime, recent", Some(NOW - 59_000), None, true),
            ("age unknown", None, Some(60_000), false),
        ];
        for (name, aged_from, lifetime, opened) in cases {
            let status = Status::with_session_id("FS");
            let mut calls = open_engine();
            let mut event = invite("c", "S1", 0);
            event.aged_from_ms = aged_from;
            match lifetime {
                Some(l) => event.content["lifetime"] = json!(l),
                None => {
                    event.content.as_object_mut().unwrap().remove("lifetime");
                }
            }
            let out = calls.handle_batch(vec![event], &RoomStore::new(), NOW, &status);
            assert_eq!(!out.to_media.is_empty(), opened, "{name}");
            assert!(
                out.to_device.is_empty(),
                "{name}: a void invite is not answered"
            );
            assert_eq!(
                status.get(Counter::InvitesVoid),
                u64::from(!opened),
                "{name}"
            );
        }
    }

    #[test]
    fn invite_hung_up_in_the_same_batch_is_not_opened() {
        let status = Status::with_session_id("FS");
        let mut calls = open_engine();
        let batch = vec![
            invite("c1", "S1", 0),
            candidates("c1", "S1", 1),
            hangup("c1", "S1", 2),
            invite("c2", "S1", 0),
        ];
        let out = calls.handle_batch(batch, &RoomStore::new(), NOW, &status);
        assert_eq!(media(&out), ["open S1/c2"]);
        assert_eq!(status.get(Counter::InvitesVoid), 1);
        // A reject counts as a hangup too, whatever the order within the batch.
        let out = calls.handle_batch(
            vec![
                incoming("m.call.reject", base("c3", "S1", 1)),
                invite("c3", "S1", 0),
            ],
            &RoomStore::new(),
            NOW,
            &status,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn held_invite_opens_when_membership_arrives() {
        let status = Status::with_session_id("FS");
        let mut calls = engine(Authorization::Membership, 5000);
        let empty = RoomStore::new();
        let out = calls.handle_batch(
            vec![invite("c1", "S1", 0), candidates("c1", "S1", 1)],
            &empty,
            NOW,
            &status,
        );
        assert!(out.is_empty());
        assert_eq!(calls.held_calls(), 1);
        assert!(calls.tick(&empty, NOW + 4999, &status).is_empty());
        let store = member_store(Some("S1"), NOW + 60_000);
        let out = calls.recheck(&store, NOW + 4999, &status);
        assert_eq!(media(&out), ["open S1/c1", "candidates c1"]);
        assert_eq!(calls.room_of(&key("S1", "c1")), Some("!room:hs"));
        let answer = FromMedia::Answer {
            call: key("S1", "c1"),
            sdp: "v=0 answer".into(),
            metadata: SdpStreamMetadata::new(),
        };
        let out = calls.from_media(answer, NOW + 5000, &status);
        assert_eq!(out.to_device[0].content["room_id"], "!room:hs");
    }

    #[test]
    fn refusals_after_the_hold() {
        // (name, store, refusal cause)
        let cases = vec![
            ("no membership", RoomStore::new(), RefusalCause::NotMember),
            (
                "expired",
                member_store(Some("S1"), NOW - 1),
                RefusalCause::Expired,
            ),
            (
                "other session",
                member_store(Some("S0"), NOW + 60_000),
                RefusalCause::SessionMismatch,
            ),
        ];
        for (name, store, cause) in cases {
            let status = Status::with_session_id("FS");
            let mut calls = engine(Authorization::Membership, 5000);
            let out = calls.handle_batch(vec![invite("c1", "S1", 0)], &store, NOW, &status);
            assert!(out.is_empty(), "{name}");
            let out = calls.tick(&store, NOW + 5000, &status);
            assert!(out.to_media.is_empty(), "{name}");
            assert_eq!(out.to_device.len(), 1, "{name}");
            let hangup = &out.to_device[0];
            assert_eq!(hangup.event_type, "m.call.hangup");
            assert_eq!(
                (hangup.user_id.as_str(), hangup.device_id.as_str()),
                ("@a:hs", "D")
            );
            assert_eq!(hangup.content["reason"], "unknown_error");
            assert_eq!(hangup.content["dest_session_id"], "S1");
            assert_eq!(hangup.content["sender_session_id"], "FS");
            assert_eq!(hangup.content["seq"], 0);
            assert_eq!(status.refused(cause), 1, "{name}");
            assert_eq!(status.get(Counter::InvitesRefused), 1, "{name}");
            assert_eq!(calls.held_calls(), 0, "{name}");
            let out =
                calls.handle_batch(vec![candidates("c1", "S1", 1)], &store, NOW + 6000, &status);
            assert!(out.is_empty(), "{name}");
        }
    }

    #[test]
    fn zero_hold_refuses_at_once_and_valid_membership_opens_at_once() {
        let status = Status::with_session_id("FS");
        let mut calls = engine(Authorization::Membership, 0);
        let out = calls.handle_batch(vec![invite("c1", "S1", 0)], &RoomStore::new(), NOW, &status);
        assert_eq!(out.to_device.len(), 1);
        let store = member_store(None, NOW + 1);
        let out = calls.handle_batch(vec![invite("c2", "S1", 0)], &store, NOW, &status);
        assert_eq!(media(&out), ["open S1/c2"]);
    }

    #[test]
    fn a_hangup_with_a_used_seq_still_ends_the_call() {
        let status = Status::with_session_id("FS");
        let store = RoomStore::new();
        let mut calls = open_engine();
        calls.handle_batch(
            vec![invite("c1", "S1", 0), candidates("c1", "S1", 1)],
            &store,
            NOW,
            &status,
        );
        // A second copy of the candidates is a duplicate; a hangup with their seq is not.
        let out = calls.handle_batch(vec![candidates("c1", "S1", 1)], &store, NOW + 1, &status);
        assert!(out.is_empty());
        assert_eq!(status.get(Counter::Duplicates), 1);
        let out = calls.handle_batch(vec![hangup("c1", "S1", 1)], &store, NOW + 2, &status);
        assert_eq!(media(&out), ["close S1/c1 user_hangup"]);
        // Once the call has ended, a repeated hangup changes nothing.
        let out = calls.handle_batch(vec![hangup("c1", "S1", 1)], &store, NOW + 3, &status);
        assert!(out.is_empty());
    }

    #[test]
    fn hangup_while_held_drops_the_call() {
        let status = Status::with_session_id("FS");
        let mut calls = engine(Authorization::Membership, 5000);
        let empty = RoomStore::new();
        calls.handle_batch(vec![invite("c1", "S1", 0)], &empty, NOW, &status);
        calls.handle_batch(vec![hangup("c1", "S1", 1)], &empty, NOW + 1, &status);
        let store = member_store(Some("S1"), NOW + 60_000);
        assert!(calls.recheck(&store, NOW + 2, &status).is_empty());
        assert!(calls.tick(&store, NOW + 10_000, &status).is_empty());
        assert_eq!(status.get(Counter::InvitesRefused), 0);
    }

    #[test]
    fn held_invite_expires_with_its_lifetime() {
        let status = Status::with_session_id("FS");
        let mut calls = engine(Authorization::Membership, 100_000);
        let mut event = invite("c1", "S1", 0);
        event.content["lifetime"] = json!(1000);
        let empty = RoomStore::new();
        calls.handle_batch(vec![event], &empty, NOW, &status);
        let out = calls.tick(&empty, NOW + 1001, &status);
        assert!(out.is_empty(), "a void invite is not answered");
        assert_eq!(status.get(Counter::InvitesVoid), 1);
        assert_eq!(calls.held_calls(), 0);
    }

    #[test]
    fn new_session_replaces_the_old_one() {
        let status = Status::with_session_id("FS");
        let store = RoomStore::new();
        let mut calls = open_engine();
        calls.handle_batch(vec![invite("c1", "S1", 0)], &store, NOW, &status);
        let out = calls.handle_batch(vec![invite("c2", "S2", 0)], &store, NOW + 1, &status);
        assert_eq!(media(&out), ["close S1/c1 session_replaced", "open S2/c2"]);
        assert_eq!(status.get(Counter::SessionsReplaced), 1);
        // Late events of the old session are stale and do not flip the device back.
        let out = calls.handle_batch(
            vec![candidates("c1", "S1", 1), invite("c3", "S1", 0)],
            &store,
            NOW + 2,
            &status,
        );
        assert!(out.is_empty());
        assert_eq!(status.get(Counter::StaleSession), 2);
        assert!(calls.is_open(&key("S2", "c2")));
        // A held call of a replaced session is dropped without a Close.
        let mut strict = engine(Authorization::Membership, 5000);
        strict.handle_batch(vec![invite("c1", "S1", 0)], &store, NOW, &status);
        let out = strict.handle_batch(vec![candidates("x", "S2", 1)], &store, NOW, &status);
        assert!(out.is_empty());
        assert_eq!(strict.held_calls(), 0);
    }

    #[test]
    fn select_answer_for_someone_else_closes() {
        let status = Status::with_session_id("FS");
        let store = RoomStore::new();
        let mut calls = open_engine();
        calls.handle_batch(vec![invite("c1", "S1", 0)], &store, NOW, &status);
        let mine = incoming(
            "m.call.select_answer",
            with(base("c1", "S1", 1), json!({"selected_party_id": "FOCUS"})),
        );
        assert!(
            calls
                .handle_batch(vec![mine], &store, NOW, &status)
                .is_empty()
        );
        let theirs = incoming(
            "m.call.select_answer",
            with(base("c1", "S1", 2), json!({"selected_party_id": "OTHER"})),
        );
        let out = calls.handle_batch(vec![theirs], &store, NOW, &status);
        assert_eq!(media(&out), ["close S1/c1 answered_elsewhere"]);
    }

    #[test]
    fn repeated_invites_are_ignored() {
        let status = Status::with_session_id("FS");
        let store = RoomStore::new();
        let mut calls = open_engine();
        let out = calls.handle_batch(
            vec![
                invite("c1", "S1", 0),
                invite("c1", "S1", 0),
                invite("c1", "S1", 1),
            ],
            &store,
            NOW,
            &status,
        );
        assert_eq!(media(&out), ["open S1/c1"]);
        assert_eq!(status.get(Counter::Duplicates), 2);
    }

    #[test]
    fn outgoing_events_count_seq_per_call() {
        let status = Status::with_session_id("FS");
        let store = RoomStore::new();
        let mut calls = open_engine();
        let mut event = invite("c1", "S1", 0);
        event.content["room_id"] = json!("!hint:hs");
        calls.handle_batch(vec![event], &store, NOW, &status);
        calls.handle_batch(vec![invite("c2", "S1", 0)], &store, NOW, &status);
        let messages = [
            FromMedia::Answer {
                call: key("S1", "c1"),
                sdp: "v=0 answer".into(),
                metadata: SdpStreamMetadata::new(),
            },
            FromMedia::Candidates {
                call: key("S1", "c1"),
                candidates: vec![],
            },
            FromMedia::Answer {
                call: key("S1", "c2"),
                sdp: "v=0 answer".into(),
                metadata: SdpStreamMetadata::new(),
            },
            FromMedia::Hangup {
                call: key("S1", "c1"),
                reason: "ice_failed".into(),
            },
        ];
        let sent: Vec<Outgoing> = messages
            .into_iter()
            .flat_map(|m| calls.from_media(m, NOW, &status).to_device)
            .collect();
        let summary: Vec<(String, &str, u64)> = sent
            .iter()
            .map(|o| {
                (
                    o.event_type.clone(),
                    o.content["call_id"].as_str().unwrap_or_default(),
                    o.content["seq"].as_u64().unwrap_or(99),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("m.call.answer".to_owned(), "c1", 0),
                ("m.call.candidates".to_owned(), "c1", 1),
                ("m.call.answer".to_owned(), "c2", 0),
                ("m.call.hangup".to_owned(), "c1", 2),
            ]
        );
        assert_eq!(sent[0].content["room_id"], "!hint:hs");
        assert!(sent[2].content.get("room_id").is_none());
        assert_eq!(sent[3].content["reason"], "ice_failed");
        let late = FromMedia::Candidates {
            call: key("S1", "c1"),
            candidates: vec![],
        };
        assert!(calls.from_media(late, NOW, &status).is_empty());
        assert_eq!(status.get(Counter::MediaUnknownCall), 1);
        let out = calls.handle_batch(vec![candidates("c1", "S1", 1)], &store, NOW, &status);
        assert!(
            out.is_empty(),
            "the device's late events for a call the focus hung up"
        );
    }

    #[test]
    fn idle_bookkeeping_is_pruned() {
        let status = Status::with_session_id("FS");
        let store = RoomStore::new();
        let mut calls = open_engine();
        calls.handle_batch(
            vec![invite("c1", "S1", 0), hangup("c1", "S1", 1)],
            &store,
            NOW,
            &status,
        );
        calls.handle_batch(vec![candidates("u", "S1", 3)], &store, NOW, &status);
        calls.tick(&store, NOW + IDLE_DEVICE_MS + ENDED_KEEP_MS, &status);
        assert!(calls.orderers.is_empty());
        assert!(calls.ended.is_empty());
        assert!(calls.devices.is_empty());
    }

    /// A room where `@a:hs`'s device `D` names this focus and each `(user, device, focus user,
    /// focus device)` of `others` names its focus, all joined, in conf `conf`.
    fn linked_store(others: &[(&str, &str, &str, &str)]) -> RoomStore {
        let mut store = RoomStore::new();
        let members = [("@a:hs", "D", "@focus:hs", "FOCUS")]
            .into_iter()
            .chain(others.iter().copied());
        for (user, device, focus_user, focus_device) in members {
            let event = |event_type: &str, content: Value| RawEvent {
                event_type: event_type.into(),
                sender: user.into(),
                state_key: Some(user.into()),
                content,
                origin_server_ts: Some(NOW),
            };
            store.apply(
                "!room:hs",
                &event("m.room.member", json!({"membership": "join"})),
            );
            let device = json!({"device_id": device, "expires_ts": NOW + 3_600_000, "feeds": [],
                "org.matrix.msc3898.foci.active": [{"user_id": focus_user, "device_id": focus_device}]});
            store.apply(
                "!room:hs",
                &event(
                    "m.call.member",
                    json!({"m.calls": [{"m.call_id": "conf", "m.devices": [device]}]}),
                ),
            );
        }
        store
    }

    /// `user` leaves every call of the room of [`linked_store`].
    fn leave_call(store: &mut RoomStore, user: &str) {
        store.apply(
            "!room:hs",
            &RawEvent {
                event_type: "m.call.member".into(),
                sender: user.into(),
                state_key: Some(user.into()),
                content: json!({"m.calls": []}),
                origin_server_ts: Some(NOW),
            },
        );
    }

    /// An event from another focus (`sender`, device `FD`, session `FS2`) on call `call_id`.
    fn from_focus(
        sender: &str,
        event_type: &str,
        call_id: &str,
        seq: u64,
        extra: Value,
    ) -> Incoming {
        let content = json!({"call_id": call_id, "party_id": "FD", "version": "1",
            "conf_id": "conf", "device_id": "FD", "sender_session_id": "FS2", "seq": seq,
            "room_id": "!room:hs"});
        Incoming {
            sender: sender.into(),
            event_type: event_type.into(),
            content: with(content, extra),
            aged_from_ms: Some(NOW),
        }
    }

    #[test]
    fn a_link_is_placed_to_a_higher_focus_answered_and_hung_up_with_its_last_member() {
        let status = Status::new();
        let mut calls = engine(Authorization::Membership, 0);
        let store = linked_store(&[("@b:hs", "E", "@zfocus:hs", "FD")]);
        let effects = calls.recheck(&store, NOW, &status);
        assert_eq!(media(&effects), vec!["link FD/link-FS-1"]);
        // Planned again while the call lives: nothing new.
        assert!(calls.recheck(&store, NOW + 100, &status).is_empty());

        let call = CallKey {
            user_id: "@zfocus:hs".into(),
            device_id: "FD".into(),
            session_id: String::new(),
            call_id: "link-FS-1".into(),
        };
        let invite = FromMedia::Invite {
            call: call.clone(),
            sdp: "v=0 link offer".into(),
        };
        let effects = calls.from_media(invite, NOW + 200, &status);
        let [sent] = effects.to_device.as_slice() else {
            panic!("one invite expected: {effects:?}");
        };
        assert_eq!(sent.event_type, "m.call.invite");
        assert_eq!(sent.user_id, "@zfocus:hs");
        assert_eq!(sent.content["offer"]["sdp"], "v=0 link offer");
        assert_eq!(sent.content["room_id"], "!room:hs");
        // The other focus's session is not known yet: no `dest_session_id`.
        assert!(sent.content.get("dest_session_id").is_none());

        // Its answer, from a session of its own, reaches the call placed without one.
        let answer = from_focus(
            "@zfocus:hs",
            "m.call.answer",
            "link-FS-1",
            0,
            json!({"answer": {"type": "answer", "sdp": "v=0 answer"}}),
        );
        let effects = calls.handle_batch(vec![answer], &store, NOW + 300, &status);
        assert_eq!(media(&effects), vec!["negotiate link-FS-1"]);

        // Bob, the only member on the other focus, leaves: the link is hung up.
        let mut store = store;
        leave_call(&mut store, "@b:hs");
        let effects = calls.recheck(&store, NOW + 400, &status);
        assert_eq!(
            media(&effects),
            vec![format!("close /link-FS-1 {REASON_LINK_UNNEEDED}")]
        );
        assert_eq!(
            hangups(&effects),
            vec![format!("link-FS-1 {REASON_LINK_UNNEEDED}")]
        );
        assert!(calls.recheck(&store, NOW + 10_000, &status).is_empty());
    }

    #[test]
    fn a_draining_focus_places_no_link_but_keeps_and_ends_the_ones_it_has() {
        let status = Status::new();
        let mut calls = engine(Authorization::Membership, 0);
        let store = linked_store(&[
            ("@b:hs", "E", "@zfocus:hs", "FD"),
            ("@c:hs", "F", "@yfocus:hs", "FE"),
        ]);
        status.set_draining(true);
        assert!(
            calls.recheck(&store, NOW, &status).is_empty(),
            "no link placed while draining"
        );
        // Placed before the drain, a link goes on during it and ends with its members.
        status.set_draining(false);
        let effects = calls.recheck(&store, NOW + 100, &status);
        assert_eq!(
            media(&effects),
            vec!["link FE/link-FS-1", "link FD/link-FS-2"]
        );
        status.set_draining(true);
        assert!(calls.recheck(&store, NOW + 200, &status).is_empty());
        let mut store = store;
        leave_call(&mut store, "@b:hs");
        let effects = calls.recheck(&store, NOW + 300, &status);
        assert_eq!(
            hangups(&effects),
            vec![format!("link-FS-2 {REASON_LINK_UNNEEDED}")]
        );
    }

    #[test]
    fn a_failed_link_is_placed_again_later_and_later() {
        let status = Status::new();
        let mut calls = engine(Authorization::Membership, 0);
        let store = linked_store(&[("@b:hs", "E", "@zfocus:hs", "FD")]);
        let mut at = NOW;
        let mut placed_at = Vec::new();
        for serial in 1..=3 {
            // Wait for the next attempt, looking every second.
            let effects = loop {
                at += 1_000;
                let effects = calls.tick(&store, at, &status);
                if !effects.to_media.is_empty() || at > NOW + 60_000 {
                    break effects;
                }
            };
            assert_eq!(media(&effects), vec![format!("link FD/link-FS-{serial}")]);
            placed_at.push(at);
            // The media plane gives up on it (ICE failed): the focus hangs up.
            let call = CallKey {
                user_id: "@zfocus:hs".into(),
                device_id: "FD".into(),
                session_id: String::new(),
                call_id: format!("link-FS-{serial}"),
            };
            let hangup = FromMedia::Hangup {
                call,
                reason: reason::ICE_FAILED.into(),
            };
            assert_eq!(calls.from_media(hangup, at, &status).to_device.len(), 1);
        }
        // Unanswered attempts wait longer each time (5 s, then 10 s; ticks are 5 s apart).
        assert!(placed_at[1] - placed_at[0] >= LINK_RETRY_MS);
        assert!(placed_at[2] - placed_at[1] >= 2 * LINK_RETRY_MS);
        assert_eq!(link_retry_ms(1), LINK_RETRY_MS);
        assert_eq!(link_retry_ms(3), 4 * LINK_RETRY_MS);
        assert_eq!(link_retry_ms(40), LINK_RETRY_MAX_MS);
    }

    #[test]
    fn link_invites_are_accepted_only_from_a_named_focus_that_places_the_call() {
        let status = Status::new();
        let mut calls = engine(Authorization::Membership, 0);
        // `@afocus:hs` sorts before this focus, `@zfocus:hs` after it.
        let store = linked_store(&[
            ("@b:hs", "E", "@afocus:hs", "FD"),
            ("@c:hs", "G", "@zfocus:hs", "FD"),
        ]);
        let offer = json!({"offer": {"type": "offer", "sdp": "v=0 link offer"}, "lifetime": 60000});
        let named_lower = from_focus("@afocus:hs", "m.call.invite", "l1", 0, offer.clone());
        let effects = calls.handle_batch(vec![named_lower], &store, NOW, &status);
        assert_eq!(media(&effects), vec!["open link FS2/l1"]);
        assert_eq!(status.get(Counter::LinksAccepted), 1);

        // A focus that sorts after this one must wait for this focus's call, not cross it.
        let crossed = from_focus("@zfocus:hs", "m.call.invite", "l2", 0, offer.clone());
        let effects = calls.handle_batch(vec![crossed], &store, NOW, &status);
        assert!(effects.to_media.is_empty(), "{effects:?}");
        assert_eq!(hangups(&effects), vec!["l2 unknown_error"]);

        // A focus no member names.
        let unnamed = from_focus("@mallory:hs", "m.call.invite", "l3", 0, offer);
        let effects = calls.handle_batch(vec![unnamed], &store, NOW, &status);
        assert!(effects.to_media.is_empty(), "{effects:?}");
        assert_eq!(hangups(&effects), vec!["l3 unknown_error"]);
        assert_eq!(status.get(Counter::LinksAccepted), 1);
        assert_eq!(status.refused(RefusalCause::NotMember), 2);
    }
}
