//! Wires the pieces together: the sync loop feeds the room store and the call engine, the engine
//! feeds the media plane and the to-device sender, and room invites are joined or rejected.
//!
//! [`Signaller`] is the synchronous core (no I/O); [`run`] drives it with tasks and channels.

use crate::authorize::{JoinDecision, decide_room_invite};
use crate::calls::{Calls, CallsConfig, Effects, Incoming};
use crate::checkpoint::OpenCall;
use crate::client::{MatrixClient, SyncResponse};
use crate::config::{ConferenceConfig, MatrixConfig};
use crate::crypto::OlmMachine;
use crate::fault;
use crate::outbound::{self, CallContext, FocusIdentity, Outgoing, run_outbound};
use crate::state::RoomStore;
use crate::status::Counter;
use crate::sync::{Batch, SyncLoop, SyncStore, login_with_retry, sync_filter};
use anyhow::Context;
use cascade_protocol::event::reason;
use cascade_protocol::{CallKey, FromMedia, ToMedia};
use ruma::UserId;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub use crate::status::Status;

/// How often held invites and `seq` gaps are re-examined.
const TICK: Duration = Duration::from_millis(250);
/// While this many messages wait for the media plane, no new sync batch is taken.
const MAX_PENDING_TO_MEDIA: usize = 4096;
/// How long a room join/reject is considered under way (repeated invites are ignored meanwhile).
const ROOM_ACTION_PENDING_MS: u64 = 5 * 60_000;
/// How long shutdown waits for queued to-device messages to go out (and the sync loop to stop).
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);
/// Attempts to join a room before giving up.
const JOIN_ATTEMPTS: u32 = 3;

/// A room operation the signaller wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomAction {
    /// Join the room the focus was invited to.
    Join {
        /// The room.
        room_id: String,
        /// Who invited the focus, if known.
        inviter: Option<String>,
    },
    /// Reject the invite (leave the room).
    Reject {
        /// The room.
        room_id: String,
        /// Who invited the focus, if known.
        inviter: Option<String>,
        /// Why.
        reason: String,
    },
}

/// The synchronous core of the Matrix side: room state, calls and room-invite handling.
#[derive(Debug)]
pub struct Signaller {
    conference: ConferenceConfig,
    focus_user_id: String,
    store: RoomStore,
    calls: Calls,
    /// Rooms with a join/reject under way, by room id, with when it started.
    room_actions: HashMap<String, u64>,
}

impl Signaller {
    /// A signaller for the focus `focus` with `conference`'s policy.
    pub fn new(conference: ConferenceConfig, focus: FocusIdentity) -> Self {
        let calls = Calls::new(CallsConfig {
            focus: focus.clone(),
            authorization: conference.authorization,
            hold_ms: conference.hold_ms,
        });
        Self {
            conference,
            focus_user_id: focus.user_id,
            store: RoomStore::new(),
            calls,
            room_actions: HashMap::new(),
        }
    }

    /// The room state known so far.
    pub fn store(&self) -> &RoomStore {
        &self.store
    }

    /// The call engine.
    pub fn calls(&self) -> &Calls {
        &self.calls
    }

    /// Handles one sync response: left and joined rooms first (so state that arrived with an
    /// invite authorizes it), then room invites, then to-device events aged from
    /// `aged_from_ms` (arrival time normally; the persisted last-sync time for the backlog).
    pub fn handle_sync(
        &mut self,
        sync: SyncResponse,
        aged_from_ms: Option<u64>,
        now_ms: u64,
        status: &Status,
    ) -> (Effects, Vec<RoomAction>) {
        let mut state_changed = false;
        for room_id in &sync.left {
            self.room_actions.remove(room_id);
            if self.store.remove_room(room_id) {
                info!(room_id, "left room");
                state_changed = true;
            }
        }
        for (room_id, room) in &sync.joined {
            self.room_actions.remove(room_id);
            state_changed |= self.store.apply_joined(room_id, room);
        }
        let mut actions = Vec::new();
        for (room_id, invite_state) in &sync.invited {
            if self.store.room(room_id).is_some() {
                continue;
            }
            if let Some(started) = self.room_actions.get(room_id)
                && now_ms.saturating_sub(*started) < ROOM_ACTION_PENDING_MS
            {
                continue;
            }
            self.room_actions.insert(room_id.clone(), now_ms);
            let action =
                match decide_room_invite(&self.conference, &self.focus_user_id, invite_state) {
                    JoinDecision::Join { inviter } => {
                        status.incr(Counter::RoomInvitesAccepted);
                        info!(
                            room_id,
                            inviter = inviter.as_deref().unwrap_or("?"),
                            "accepting room invite"
                        );
                        RoomAction::Join {
                            room_id: room_id.clone(),
                            inviter,
                        }
                    }
                    JoinDecision::Reject { inviter, reason } => {
                        status.incr(Counter::RoomInvitesRejected);
                        info!(
                            room_id,
                            inviter = inviter.as_deref().unwrap_or("?"),
                            reason,
                            "rejecting room invite"
                        );
                        RoomAction::Reject {
                            room_id: room_id.clone(),
                            inviter,
                            reason,
                        }
                    }
                };
            actions.push(action);
        }
        let mut effects = Effects::default();
        if state_changed {
            effects.extend(self.calls.recheck(&self.store, now_ms, status));
        }
        let events = sync
            .to_device
            .into_iter()
            .map(|event| Incoming {
                sender: event.sender,
                event_type: event.event_type,
                content: event.content,
                aged_from_ms,
            })
            .collect();
        effects.extend(self.calls.handle_batch(events, &self.store, now_ms, status));
        (effects, actions)
    }

    /// Handles a message from the media plane.
    pub fn from_media(&mut self, message: FromMedia, now_ms: u64, status: &Status) -> Effects {
        self.calls.from_media(message, now_ms, status)
    }

    /// Lets time pass (hold timeouts, `seq` gaps, pruning).
    pub fn tick(&mut self, now_ms: u64, status: &Status) -> Effects {
        self.calls.tick(&self.store, now_ms, status)
    }
}

/// Runs the invite flow until `shutdown` resolves: logs in, syncs, authorizes, talks to the media plane.
///
/// Login failures that may pass (connection errors, 5xx, rate limits) are retried; bad
/// configuration or credentials end it with an error, as does the media plane dropping the
/// receiver of `to_media`. A closed `from_media` only stops outgoing answers being read.
pub async fn run(
    matrix: MatrixConfig,
    conference: ConferenceConfig,
    to_media: mpsc::Sender<ToMedia>,
    mut from_media: mpsc::Receiver<FromMedia>,
    status: Arc<Status>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    UserId::parse(&matrix.user_id)
        .with_context(|| format!("configured user_id {:?}", matrix.user_id))?;
    anyhow::ensure!(
        !matrix.device_id.trim().is_empty(),
        "device_id must not be empty"
    );
    anyhow::ensure!(
        matrix.password.is_some() || matrix.access_token.is_some(),
        "either password or access_token must be configured"
    );
    let store = SyncStore::open(&matrix.state_dir)
        .with_context(|| format!("state directory {}", matrix.state_dir.display()))?;
    let client = tokio::select! {
        _ = &mut shutdown => return Ok(()),
        client = login_with_retry(&matrix, &store, true) => client.context("login")?,
    };
    status.set_logged_in(true);
    let filter = tokio::select! {
        _ = &mut shutdown => return Ok(()),
        filter = client.create_filter(sync_filter()) => match filter {
            Ok(id) => id,
            Err(err) => {
                warn!(error = %err, "could not upload the sync filter; sending it inline");
                sync_filter().to_string()
            }
        },
    };
    let focus = FocusIdentity {
        user_id: client.user_id().to_owned(),
        device_id: client.device_id().to_owned(),
        session_id: status.session_id().to_owned(),
    };
    info!(
        user = %focus.user_id,
        device = %focus.device_id,
        session = %focus.session_id,
        authorization = ?conference.authorization,
        "focus signalling started"
    );

    let mut olm = OlmMachine::open(
        &matrix.state_dir,
        matrix.pickle_key.as_deref(),
        client.user_id(),
        client.device_id(),
        matrix.require_encryption,
    )
    .context("the checkpoint and Olm identity")?;
    // Backlog invites are aged from the last moment the focus is known to have been listening.
    let backlog_since = olm.last_sync_ms();
    let interrupted_calls = olm.restore_calls();
    tokio::select! {
        _ = &mut shutdown => return Ok(()),
        () = olm.publish_keys(&client, None, None) => {}
    }
    if matrix.require_encryption {
        info!("encryption required: plaintext call events are refused");
    }
    status.set_olm(olm.stats());
    let olm = Arc::new(tokio::sync::Mutex::new(olm));
    let olm_commit = olm.clone();

    let (client_tx, client_rx) = watch::channel(client);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let mut outbound = tokio::spawn(run_outbound(
        out_rx,
        client_rx.clone(),
        status.clone(),
        olm.clone(),
    ));
    let (batch_tx, mut batch_rx) = mpsc::channel::<Batch>(1);
    let (stop_sync, sync_stopped) = watch::channel(false);
    let mut sync_task = tokio::spawn(
        SyncLoop {
            matrix: matrix.clone(),
            store,
            filter,
            client: client_tx,
            status: status.clone(),
            stop: sync_stopped,
            olm,
        }
        .run(batch_tx),
    );
    let mut room_tasks = JoinSet::new();
    // Calls open when the previous run stopped without ending them died with it: tell their
    // devices, so they call again at once.
    let hangups = restart_hangups(&focus, &interrupted_calls);
    if !hangups.is_empty() {
        info!(
            calls = hangups.len(),
            "hanging up the calls the previous run left open"
        );
        status.add(Counter::RestartHangups, hangups.len() as u64);
        send_to_device(&out_tx, hangups);
    }
    let mut signaller = Signaller::new(conference, focus);
    let mut pending: VecDeque<ToMedia> = VecDeque::new();
    let mut media_open = true;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let result: anyhow::Result<()> = loop {
        let effects = tokio::select! {
            biased;
            _ = &mut shutdown => break Ok(()),
            permit = to_media.reserve(), if !pending.is_empty() => {
                match permit {
                    Ok(permit) => {
                        if let Some(message) = pending.pop_front() {
                            permit.send(message);
                        }
                        continue;
                    }
                    Err(_) => break Err(anyhow::anyhow!("the media plane closed its channel")),
                }
            }
            batch = batch_rx.recv(), if pending.len() < MAX_PENDING_TO_MEDIA => {
                let Some(batch) = batch else {
                    break match (&mut sync_task).await {
                        Ok(Ok(())) => Err(anyhow::anyhow!("the sync loop stopped")),
                        Ok(Err(err)) => Err(err.context("sync loop")),
                        Err(err) => Err(anyhow::anyhow!("the sync loop panicked: {err}")),
                    };
                };
                let now = crate::now_ms();
                let aged_from = if batch.backlog { backlog_since } else { Some(now) };
                let next_batch = batch.response.next_batch.clone();
                let has_invite = batch.response.to_device.iter().any(|e| is_invite(&e.event_type));
                let (effects, actions) = signaller.handle_sync(batch.response, aged_from, now, &status);
                fault::point(fault::Point::Handled, has_invite);
                // Commit before any effect leaves: a crash before this line redelivers the batch
                // (its messages from the journal) and nothing of it was sent; after it, the
                // batch is done and its calls are hung up after a restart.
                let committed = olm_commit
                    .lock()
                    .await
                    .commit(next_batch, crate::now_ms(), signaller.calls().call_records());
                if let Err(err) = committed {
                    status.incr(Counter::CheckpointFailures);
                    warn!(error = %err, "could not write the checkpoint; the batch will be delivered again after a restart");
                }
                fault::point(fault::Point::Committed, has_invite);
                for action in actions {
                    let client = client_rx.borrow().clone();
                    room_tasks.spawn(perform_room_action(client, action));
                }
                let _ = batch.done.send(());
                effects
            }
            message = from_media.recv(), if media_open => match message {
                Some(message) => signaller.from_media(message, crate::now_ms(), &status),
                None => {
                    warn!("the media plane closed its outgoing channel");
                    media_open = false;
                    continue;
                }
            },
            Some(_) = room_tasks.join_next(), if !room_tasks.is_empty() => continue,
            _ = tick.tick() => signaller.tick(crate::now_ms(), &status),
        };
        send_to_device(&out_tx, effects.to_device);
        pending.extend(effects.to_media);
        if let Err(err) = flush(&to_media, &mut pending) {
            break Err(err);
        }
    };

    // Hang-ups the media plane reported just before shutdown (the end of a drain) still go out.
    while let Ok(message) = from_media.try_recv() {
        let effects = signaller.from_media(message, crate::now_ms(), &status);
        send_to_device(&out_tx, effects.to_device);
    }
    // Let the sync loop finish persisting the token of a batch already handled (it stops at
    // its next wait); a batch not yet handled is dropped and will be synced again.
    let _ = stop_sync.send(true);
    drop(batch_rx);
    if !sync_task.is_finished()
        && tokio::time::timeout(SHUTDOWN_FLUSH, &mut sync_task)
            .await
            .is_err()
    {
        warn!("the sync loop did not stop in time");
        sync_task.abort();
    }
    room_tasks.abort_all();
    drop(out_tx);
    if tokio::time::timeout(SHUTDOWN_FLUSH, &mut outbound)
        .await
        .is_err()
    {
        warn!("to-device messages still queued at shutdown were dropped");
        outbound.abort();
    }
    status.set_logged_in(false);
    info!("focus signalling stopped");
    result
}

/// Whether `event_type` is an invite (stable or unstable name).
pub(crate) fn is_invite(event_type: &str) -> bool {
    cascade_protocol::CallEventKind::from_type(event_type)
        == Some(cascade_protocol::CallEventKind::Invite)
}

/// `m.call.hangup`s (reason `unknown_error`) for calls the previous run left open.
fn restart_hangups(focus: &FocusIdentity, calls: &[OpenCall]) -> Vec<Outgoing> {
    calls
        .iter()
        .map(|call| {
            let key = CallKey {
                user_id: call.user_id.clone(),
                device_id: call.device_id.clone(),
                session_id: call.session_id.clone(),
                call_id: call.call_id.clone(),
            };
            let ctx = CallContext {
                call: &key,
                conf_id: &call.conf_id,
                room_id: call.room_id.as_deref(),
                seq: call.seq_out,
                // A link's hangup is encrypted if the other focus wrote encrypted (`olm_key`).
                link: false,
            };
            outbound::hangup_event(focus, ctx, reason::UNKNOWN_ERROR)
        })
        .collect()
}

/// Hands queued messages to the media plane without waiting.
fn flush(to_media: &mpsc::Sender<ToMedia>, pending: &mut VecDeque<ToMedia>) -> anyhow::Result<()> {
    while let Some(message) = pending.pop_front() {
        match to_media.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(message)) => {
                pending.push_front(message);
                return Ok(());
            }
            Err(TrySendError::Closed(_)) => {
                return Err(anyhow::anyhow!("the media plane closed its channel"));
            }
        }
    }
    Ok(())
}

fn send_to_device(queue: &mpsc::UnboundedSender<Outgoing>, messages: Vec<Outgoing>) {
    for message in messages {
        if queue.send(message).is_err() {
            warn!("the to-device sender has stopped; dropping a message");
        }
    }
}

async fn perform_room_action(client: MatrixClient, action: RoomAction) {
    match action {
        RoomAction::Join { room_id, .. } => {
            let mut backoff =
                crate::sync::Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
            for attempt in 1..=JOIN_ATTEMPTS {
                match client.join_room(&room_id).await {
                    Ok(_) => {
                        info!(room_id, "joined room");
                        return;
                    }
                    Err(err) if err.is_transient() && attempt < JOIN_ATTEMPTS => {
                        debug!(room_id, attempt, error = %err, "joining room failed; retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(err) => {
                        warn!(room_id, error = %err, "could not join room");
                        return;
                    }
                }
            }
        }
        RoomAction::Reject { room_id, .. } => match client.leave_room(&room_id).await {
            Ok(()) => info!(room_id, "rejected room invite"),
            Err(err) => warn!(room_id, error = %err, "could not reject room invite"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{JoinedRoom, RawEvent};
    use crate::config::Authorization;
    use serde_json::{Value, json};

    const NOW: u64 = 1_000_000_000;

    fn signaller(conference: ConferenceConfig) -> Signaller {
        Signaller::new(
            conference,
            FocusIdentity {
                user_id: "@focus:hs".into(),
                device_id: "FOCUS".into(),
                session_id: "FS".into(),
            },
        )
    }

    fn state(event_type: &str, sender: &str, state_key: &str, content: Value) -> RawEvent {
        RawEvent {
            event_type: event_type.into(),
            sender: sender.into(),
            state_key: Some(state_key.into()),
            content,
            origin_server_ts: Some(NOW),
        }
    }

    fn membership_room() -> JoinedRoom {
        JoinedRoom {
            state: vec![state(
                "m.room.member",
                "@a:hs",
                "@a:hs",
                json!({"membership": "join"}),
            )],
            timeline: vec![state(
                "org.matrix.msc3401.call.member",
                "@a:hs",
                "_@a:hs_D_m.call",
                json!({"application": "m.call", "call_id": "", "device_id": "D", "membershipID": "S1",
                       "expires": 3_600_000, "created_ts": NOW}),
            )],
        }
    }

    fn invite() -> RawEvent {
        RawEvent {
            event_type: "m.call.invite".into(),
            sender: "@a:hs".into(),
            state_key: None,
            content: json!({"call_id": "c1", "party_id": "D", "version": "1", "conf_id": "", "device_id": "D",
                            "sender_session_id": "S1", "dest_session_id": "FS", "seq": 0, "lifetime": 60000,
                            "offer": {"type": "offer", "sdp": "v=0"}}),
            origin_server_ts: None,
        }
    }

    #[test]
    fn state_in_the_same_sync_authorizes_the_invite() {
        let status = Status::with_session_id("FS");
        let mut s = signaller(ConferenceConfig::default());
        let mut sync = SyncResponse {
            next_batch: "n".into(),
            to_device: vec![invite()],
            ..SyncResponse::default()
        };
        sync.joined.insert("!r:hs".into(), membership_room());
        let (effects, actions) = s.handle_sync(sync, Some(NOW), NOW, &status);
        assert!(actions.is_empty());
        assert!(
            matches!(effects.to_media.as_slice(), [ToMedia::Open { conf_id, .. }] if conf_id.is_empty())
        );
        assert_eq!(s.calls().open_calls(), 1);
    }

    #[test]
    fn leaving_the_room_removes_its_state() {
        let status = Status::with_session_id("FS");
        let mut s = signaller(ConferenceConfig {
            hold_ms: 0,
            ..ConferenceConfig::default()
        });
        let mut sync = SyncResponse::default();
        sync.joined.insert("!r:hs".into(), membership_room());
        s.handle_sync(sync, Some(NOW), NOW, &status);
        let sync = SyncResponse {
            left: vec!["!r:hs".into()],
            to_device: vec![invite()],
            ..SyncResponse::default()
        };
        let (effects, _) = s.handle_sync(sync, Some(NOW), NOW, &status);
        assert!(effects.to_media.is_empty());
        assert_eq!(effects.to_device.len(), 1, "refused with a hangup");
        assert!(s.store().is_empty());
    }

    #[test]
    fn backlog_of_unknown_age_is_void() {
        let status = Status::with_session_id("FS");
        let mut s = signaller(ConferenceConfig {
            authorization: Authorization::Open,
            ..ConferenceConfig::default()
        });
        let sync = SyncResponse {
            to_device: vec![invite()],
            ..SyncResponse::default()
        };
        let (effects, _) = s.handle_sync(sync, None, NOW, &status);
        assert!(effects.is_empty());
        assert_eq!(status.get(Counter::InvitesVoid), 1);
    }

    #[test]
    fn room_invites_are_decided_once() {
        let status = Status::with_session_id("FS");
        let mut s = signaller(ConferenceConfig {
            allowed_servers: vec!["good.org".into()],
            ..ConferenceConfig::default()
        });
        let invite_from = |sender: &str| {
            vec![state(
                "m.room.member",
                sender,
                "@focus:hs",
                json!({"membership": "invite"}),
            )]
        };
        let mut sync = SyncResponse::default();
        sync.invited
            .insert("!good:hs".into(), invite_from("@a:good.org"));
        sync.invited
            .insert("!evil:hs".into(), invite_from("@a:evil.org"));
        let (_, actions) = s.handle_sync(sync.clone(), Some(NOW), NOW, &status);
        assert_eq!(
            actions,
            [
                RoomAction::Reject {
                    room_id: "!evil:hs".into(),
                    inviter: Some("@a:evil.org".into()),
                    reason: "inviter's server evil.org is not in allowed_servers".into(),
                },
                RoomAction::Join {
                    room_id: "!good:hs".into(),
                    inviter: Some("@a:good.org".into()),
                },
            ]
        );
        assert_eq!(status.get(Counter::RoomInvitesAccepted), 1);
        assert_eq!(status.get(Counter::RoomInvitesRejected), 1);
        let (_, again) = s.handle_sync(sync.clone(), Some(NOW), NOW + 1000, &status);
        assert!(again.is_empty(), "an action under way is not repeated");
        let (_, later) = s.handle_sync(sync, Some(NOW), NOW + ROOM_ACTION_PENDING_MS, &status);
        assert_eq!(later.len(), 2, "retried once the earlier attempt is stale");
    }
}
