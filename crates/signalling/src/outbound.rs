//! Outgoing to-device call events: filling in the fields every event carries, grouping messages
//! into few `sendToDevice` requests, and the task that sends them beside the sync loop.

use crate::client::MatrixClient;
use crate::crypto::OlmMachine;
use crate::status::{Counter, Status};
use cascade_protocol::{CallEventContent, CallEventKind, CallKey, FromMedia, SessionDescription};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// Most recipients put in one `sendToDevice` request.
pub const MAX_MESSAGES_PER_REQUEST: usize = 100;
/// Most queued messages taken into one round of batching.
const MAX_DRAIN: usize = 1000;
/// How long a send waits for a fresh login after the token was rejected.
const RELOGIN_WAIT: Duration = Duration::from_secs(30);
/// `lifetime` the focus puts on the negotiate offers it sends.
pub const NEGOTIATE_OFFER_LIFETIME_MS: u64 = 30_000;

/// The focus as a party to calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FocusIdentity {
    /// The focus's user.
    pub user_id: String,
    /// The focus's device (also its `party_id`).
    pub device_id: String,
    /// The focus's session, made once per process start.
    pub session_id: String,
}

/// One to-device message to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// The event type, e.g. `m.call.answer`.
    pub event_type: String,
    /// The recipient user.
    pub user_id: String,
    /// The recipient device.
    pub device_id: String,
    /// The event content.
    pub content: Value,
    /// The recipient is another focus (an event of a link call, issue 11): the message is
    /// Olm-encrypted whenever that focus device has published keys, not only once it wrote
    /// encrypted.
    pub to_focus: bool,
}

/// What the focus knows about a call that every outgoing event of it carries.
#[derive(Clone, Copy, Debug)]
pub struct CallContext<'a> {
    /// The call (recipient user, device and session, and the call id).
    pub call: &'a CallKey,
    /// The conference.
    pub conf_id: &'a str,
    /// The conference's room, when known.
    pub room_id: Option<&'a str>,
    /// This event's sequence number within the call.
    pub seq: u64,
    /// The call is a link with another focus.
    pub link: bool,
}

/// Builds an outgoing call event of `kind` from its kind-specific `content`, filling in
/// `call_id`, `party_id`, `version`, `conf_id`, `device_id`, `sender_session_id`,
/// `dest_session_id`, `seq` and (when known) `room_id`.
pub fn call_event(
    focus: &FocusIdentity,
    ctx: CallContext<'_>,
    kind: CallEventKind,
    mut content: CallEventContent,
) -> Outgoing {
    content.call_id = ctx.call.call_id.clone();
    content.party_id = Some(focus.device_id.clone());
    content.version = Some(Value::from("1"));
    content.conf_id = Some(ctx.conf_id.to_owned());
    content.device_id = Some(focus.device_id.clone());
    content.sender_session_id = Some(focus.session_id.clone());
    // A link call this focus places does not know the other focus's session until it answers.
    content.dest_session_id = Some(ctx.call.session_id.clone()).filter(|s| !s.is_empty());
    content.seq = Some(ctx.seq);
    content.room_id = ctx.room_id.map(str::to_owned);
    let content = serde_json::to_value(&content).unwrap_or_else(|err| {
        // Cannot happen for these types (string-keyed maps only); never panic on it.
        warn!(error = %err, "could not serialise call event content");
        Value::Object(Default::default())
    });
    Outgoing {
        event_type: kind.as_type().to_owned(),
        user_id: ctx.call.user_id.clone(),
        device_id: ctx.call.device_id.clone(),
        content,
        to_focus: ctx.link,
    }
}

/// The kind and kind-specific content of the event a media-plane message turns into; `None`
/// for messages that are not for Matrix devices (a LiveKit connection's active speaker).
pub fn media_event(message: &FromMedia) -> Option<(CallEventKind, CallEventContent)> {
    let mut content = CallEventContent::default();
    let kind = match message {
        FromMedia::Answer { sdp, metadata, .. } => {
            content.answer = Some(SessionDescription::answer(sdp.clone()));
            content.set_metadata(metadata.clone());
            CallEventKind::Answer
        }
        FromMedia::Invite { sdp, .. } => {
            content.offer = Some(SessionDescription::offer(sdp.clone()));
            content.lifetime = Some(crate::calls::DEFAULT_INVITE_LIFETIME_MS);
            CallEventKind::Invite
        }
        FromMedia::Candidates { candidates, .. } => {
            content.candidates = Some(candidates.clone());
            CallEventKind::Candidates
        }
        FromMedia::Negotiate {
            description,
            metadata,
            ..
        } => {
            if description.kind == "offer" {
                content.lifetime = Some(NEGOTIATE_OFFER_LIFETIME_MS);
            }
            content.description = Some(description.clone());
            content.set_metadata(metadata.clone());
            CallEventKind::Negotiate
        }
        FromMedia::Hangup { reason, .. } => return Some(hangup(reason)),
        FromMedia::ActiveSpeaker { .. }
        | FromMedia::SubscribedLayers { .. }
        | FromMedia::Data { .. } => return None,
    };
    Some((kind, content))
}

/// The kind and content of an `m.call.hangup` with `reason`.
pub fn hangup(reason: &str) -> (CallEventKind, CallEventContent) {
    let content = CallEventContent {
        reason: Some(reason.to_owned()),
        ..CallEventContent::default()
    };
    (CallEventKind::Hangup, content)
}

/// An `m.call.hangup` with `reason` on the call `ctx` names, with every field (see
/// [`call_event`]).
pub fn hangup_event(focus: &FocusIdentity, ctx: CallContext<'_>, reason: &str) -> Outgoing {
    let (kind, content) = hangup(reason);
    call_event(focus, ctx, kind, content)
}

/// One `sendToDevice` request: messages of one type, at most one per recipient device.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// The event type.
    pub event_type: String,
    /// user id → device id → content.
    pub messages: BTreeMap<String, BTreeMap<String, Value>>,
    /// How many messages the batch holds.
    pub len: usize,
}

impl Batch {
    fn holds(&self, user_id: &str, device_id: &str) -> bool {
        self.messages
            .get(user_id)
            .is_some_and(|devices| devices.contains_key(device_id))
    }

    /// The call ids in the batch, for logs.
    pub fn call_ids(&self) -> Vec<&str> {
        self.messages
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(|content| content.get("call_id").and_then(Value::as_str))
            .collect()
    }
}

/// Groups messages into requests by type, in order of first appearance; a device receiving two
/// messages of one type gets them in two requests (in order), and no request exceeds
/// `max_per_request` messages.
pub fn batch(messages: impl IntoIterator<Item = Outgoing>, max_per_request: usize) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    for message in messages {
        let open = batches
            .iter()
            .rposition(|b| b.event_type == message.event_type)
            .filter(|&i| {
                let b = &batches[i];
                b.len < max_per_request.max(1) && !b.holds(&message.user_id, &message.device_id)
            });
        let index = match open {
            Some(i) => i,
            None => {
                batches.push(Batch {
                    event_type: message.event_type.clone(),
                    ..Batch::default()
                });
                batches.len() - 1
            }
        };
        let b = &mut batches[index];
        b.messages
            .entry(message.user_id)
            .or_default()
            .insert(message.device_id, message.content);
        b.len += 1;
    }
    batches
}

/// Sends queued messages until the queue closes: each round takes everything queued at that
/// moment, batches it and sends the requests in order. A failure is logged and counted.
pub(crate) async fn run_outbound(
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    mut client: watch::Receiver<MatrixClient>,
    status: Arc<Status>,
    olm: Arc<tokio::sync::Mutex<OlmMachine>>,
) {
    while let Some(first) = queue.recv().await {
        let mut round = vec![first];
        while round.len() < MAX_DRAIN {
            match queue.try_recv() {
                Ok(message) => round.push(message),
                Err(_) => break,
            }
        }
        // Replies to devices that wrote encrypted are encrypted to them.
        let current = client.borrow().clone();
        let round = olm.lock().await.encrypt_outgoing(&current, round).await;
        for request in batch(round, MAX_MESSAGES_PER_REQUEST) {
            send_batch(&mut client, &request, &status).await;
        }
    }
}

async fn send_batch(client: &mut watch::Receiver<MatrixClient>, batch: &Batch, status: &Status) {
    let current = client.borrow_and_update().clone();
    let mut result = current
        .send_to_device(&batch.event_type, &batch.messages)
        .await;
    if let Err(err) = &result
        && err.is_unknown_token()
    {
        // The sync loop logs in again on a rejected token; send once more with the new session.
        warn!(event_type = %batch.event_type, "access token rejected while sending; waiting for a new login");
        if let Ok(Ok(())) = tokio::time::timeout(RELOGIN_WAIT, client.changed()).await {
            let fresh = client.borrow_and_update().clone();
            result = fresh
                .send_to_device(&batch.event_type, &batch.messages)
                .await;
        }
    }
    let n = batch.len as u64;
    match result {
        Ok(()) => {
            status.add(Counter::ToDeviceOut, n);
            status.count_to_device(crate::status::Direction::Out, &batch.event_type, n);
            debug!(event_type = %batch.event_type, recipients = n, call_ids = ?batch.call_ids(), "sent to-device");
        }
        Err(err) => {
            status.add(Counter::SendFailures, n);
            warn!(
                event_type = %batch.event_type,
                recipients = n,
                call_ids = ?batch.call_ids(),
                error = %err,
                "sending to-device failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_protocol::{Candidate, SdpStreamMetadata, StreamMetadata};
    use serde_json::json;

    fn focus() -> FocusIdentity {
        FocusIdentity {
            user_id: "@focus:hs".into(),
            device_id: "FOCUS".into(),
            session_id: "FS".into(),
        }
    }

    fn key(user: &str, device: &str) -> CallKey {
        CallKey {
            user_id: user.into(),
            device_id: device.into(),
            session_id: "S1".into(),
            call_id: "c1".into(),
        }
    }

    fn message(event_type: &str, user: &str, device: &str, n: u64) -> Outgoing {
        Outgoing {
            event_type: event_type.into(),
            user_id: user.into(),
            device_id: device.into(),
            content: json!({ "n": n }),
            to_focus: false,
        }
    }

    #[test]
    fn fills_common_fields() {
        let call = key("@a:hs", "D");
        let mut metadata = SdpStreamMetadata::new();
        metadata.insert("s".into(), StreamMetadata::default());
        let (kind, content) = media_event(&FromMedia::Answer {
            call: call.clone(),
            sdp: "v=0".into(),
            metadata,
        })
        .expect("an answer is an event");
        let ctx = CallContext {
            call: &call,
            conf_id: "conf",
            room_id: Some("!r:hs"),
            seq: 3,
            link: false,
        };
        let out = call_event(&focus(), ctx, kind, content);
        assert_eq!(out.event_type, "m.call.answer");
        assert_eq!(
            (out.user_id.as_str(), out.device_id.as_str()),
            ("@a:hs", "D")
        );
        let c = &out.content;
        assert_eq!(c["call_id"], "c1");
        assert_eq!(c["party_id"], "FOCUS");
        assert_eq!(c["device_id"], "FOCUS");
        assert_eq!(c["version"], "1");
        assert_eq!(c["conf_id"], "conf");
        assert_eq!(c["sender_session_id"], "FS");
        assert_eq!(c["dest_session_id"], "S1");
        assert_eq!(c["seq"], 3);
        assert_eq!(c["room_id"], "!r:hs");
        assert_eq!(c["answer"], json!({"type": "answer", "sdp": "v=0"}));
        assert!(c["sdp_stream_metadata"]["s"].is_object());
        assert!(c["org.matrix.msc3077.sdp_stream_metadata"]["s"].is_object());

        let ctx = CallContext {
            room_id: None,
            ..ctx
        };
        let (kind, content) = hangup("unknown_error");
        let out = call_event(&focus(), ctx, kind, content);
        assert_eq!(out.event_type, "m.call.hangup");
        assert_eq!(out.content["reason"], "unknown_error");
        assert!(out.content.get("room_id").is_none());
    }

    #[test]
    fn media_events_map_to_types() {
        let call = key("@a:hs", "D");
        let cases = [
            (
                FromMedia::Candidates {
                    call: call.clone(),
                    candidates: vec![Candidate::default()],
                },
                "m.call.candidates",
                "candidates",
            ),
            (
                FromMedia::Negotiate {
                    call: call.clone(),
                    description: SessionDescription::offer("v=0"),
                    metadata: SdpStreamMetadata::new(),
                },
                "m.call.negotiate",
                "description",
            ),
            (
                FromMedia::Hangup {
                    call: call.clone(),
                    reason: "ice_failed".into(),
                },
                "m.call.hangup",
                "reason",
            ),
        ];
        for (message, event_type, field) in cases {
            let (kind, content) = media_event(&message).expect("an event");
            assert_eq!(kind.as_type(), event_type);
            let value = serde_json::to_value(&content).unwrap();
            assert!(value.get(field).is_some(), "{event_type} has {field}");
        }
        let (_, negotiate) = media_event(&FromMedia::Negotiate {
            call: call.clone(),
            description: SessionDescription::offer("v=0"),
            metadata: SdpStreamMetadata::new(),
        })
        .expect("a negotiate is an event");
        assert_eq!(negotiate.lifetime, Some(NEGOTIATE_OFFER_LIFETIME_MS));
        assert!(negotiate.unstable_sdp_stream_metadata.is_some());
        // A LiveKit connection's active speaker is no Matrix event.
        let speaker = FromMedia::ActiveSpeaker {
            call: call.clone(),
            speaker: call,
        };
        assert!(media_event(&speaker).is_none());
    }

    #[test]
    fn batching_groups_by_type_and_splits_repeats() {
        let messages = vec![
            message("m.call.answer", "@a:hs", "A", 0),
            message("m.call.candidates", "@a:hs", "A", 1),
            message("m.call.answer", "@b:hs", "B", 2),
            message("m.call.candidates", "@a:hs", "A", 3),
            message("m.call.candidates", "@b:hs", "B", 4),
            message("m.call.candidates", "@b:hs", "B2", 5),
        ];
        let batches = batch(messages, 100);
        let shape: Vec<(&str, usize)> = batches
            .iter()
            .map(|b| (b.event_type.as_str(), b.len))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("m.call.answer", 2),
                ("m.call.candidates", 1),
                ("m.call.candidates", 3)
            ]
        );
        assert_eq!(batches[1].messages["@a:hs"]["A"]["n"], 1);
        assert_eq!(batches[2].messages["@a:hs"]["A"]["n"], 3);
        assert_eq!(batches[2].messages["@b:hs"].len(), 2);
    }

    #[test]
    fn batching_caps_request_size() {
        let messages = (0..7).map(|i| message("m.call.hangup", "@a:hs", &format!("D{i}"), i));
        let sizes: Vec<usize> = batch(messages, 3).iter().map(|b| b.len).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        assert!(batch(Vec::new(), 3).is_empty());
    }
}
