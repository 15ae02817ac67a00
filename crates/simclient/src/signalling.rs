//! The Matrix side of a simulated device: room and membership helpers, and the to-device call
//! events it sends to the focus.

use anyhow::{Context, Result};
use cascade_protocol::event::SessionDescription;
use cascade_protocol::{CallEventContent, CallEventKind, Candidate, SdpStreamMetadata};
use cascade_signalling::MatrixClient;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// The `m.call` state event type (state key = conf id).
pub const CALL_EVENT: &str = "m.call";
/// The `m.call.member` state event type (state key = user id).
pub const CALL_MEMBER_EVENT: &str = "m.call.member";
/// How long a published membership stays valid.
pub const MEMBERSHIP_LIFETIME: Duration = Duration::from_secs(3600);
/// Inline `/sync` filter: no room data, no presence, no account data — to-device only.
pub const TO_DEVICE_ONLY_FILTER: &str =
    r#"{"room":{"rooms":[]},"presence":{"types":[]},"account_data":{"types":[]}}"#;

fn now_ms() -> u64 {
    crate::synth::now_us() / 1000
}

/// Creates a private room members can send call state in (every power level default 0),
/// inviting `invitees`; returns the room id.
pub async fn create_call_room(matrix: &MatrixClient, invitees: &[String]) -> Result<String> {
    let body = json!({
        "preset": "private_chat",
        "invite": invitees,
        "power_level_content_override": {
            "events_default": 0,
            "state_default": 0,
            "users_default": 0,
        },
    });
    matrix
        .create_room(body)
        .await
        .context("creating the call room")
}

/// Joins a room by id or alias; returns the room id.
pub async fn join_room(matrix: &MatrixClient, room: &str) -> Result<String> {
    matrix
        .join_room(room)
        .await
        .with_context(|| format!("joining {room}"))
}

/// Creates the conference: `m.call` state with state key `conf_id`.
pub async fn create_conference(matrix: &MatrixClient, room_id: &str, conf_id: &str) -> Result<()> {
    matrix
        .send_state(
            room_id,
            CALL_EVENT,
            conf_id,
            &json!({"m.intent": "m.room", "m.type": "m.video"}),
        )
        .await
        .context("sending m.call")?;
    Ok(())
}

/// One device entry of `m.call.member`.
pub fn membership_device(
    device_id: &str,
    session_id: &str,
    focus_user: &str,
    focus_device: &str,
    expires_ts: u64,
) -> Value {
    json!({
        "device_id": device_id,
        "session_id": session_id,
        "expires_ts": expires_ts,
        "feeds": [{"purpose": "m.usermedia"}],
        "org.matrix.msc3898.foci.active": [{"user_id": focus_user, "device_id": focus_device}],
    })
}

/// Merges our device into an existing `m.call.member` content: drops expired devices and any
/// earlier entry of our device, keeps other calls and devices, and adds `device`.
pub fn merge_membership(
    existing: Option<&Value>,
    conf_id: &str,
    device: Value,
    now_ms: u64,
) -> Value {
    let device_id = device.get("device_id").cloned().unwrap_or(Value::Null);
    let mut calls: Vec<Value> = existing
        .and_then(|c| c.get("m.calls"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut placed = false;
    for call in &mut calls {
        let Some(obj) = call.as_object_mut() else {
            continue;
        };
        let is_ours = obj.get("m.call_id").and_then(Value::as_str) == Some(conf_id);
        let mut devices: Vec<Value> = obj
            .get("m.devices")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        devices.retain(|d| {
            d.get("device_id") != Some(&device_id)
                && d.get("expires_ts").and_then(Value::as_u64).unwrap_or(0) > now_ms
        });
        if is_ours && !placed {
            devices.push(device.clone());
            placed = true;
        }
        obj.insert("m.devices".to_owned(), Value::Array(devices));
    }
    calls.retain(|c| {
        c.get("m.devices")
            .and_then(Value::as_array)
            .is_some_and(|d| !d.is_empty())
    });
    if !placed {
        calls.push(json!({"m.call_id": conf_id, "m.devices": [device]}));
    }
    json!({ "m.calls": calls })
}

async fn current_membership(matrix: &MatrixClient, room_id: &str) -> Option<Value> {
    let state = matrix.room_state(room_id).await.ok()?;
    state
        .into_iter()
        .find(|e| {
            e.event_type == CALL_MEMBER_EVENT && e.state_key.as_deref() == Some(matrix.user_id())
        })
        .map(|e| e.content)
}

/// Publishes this device's `m.call.member` entry for `conf_id` (expires in an hour), keeping
/// the user's other live devices; concurrent publishes by devices of one user may race.
pub async fn publish_membership(
    matrix: &MatrixClient,
    room_id: &str,
    conf_id: &str,
    session_id: &str,
    focus_user: &str,
    focus_device: &str,
) -> Result<()> {
    let now = now_ms();
    let device = membership_device(
        matrix.device_id(),
        session_id,
        focus_user,
        focus_device,
        now + MEMBERSHIP_LIFETIME.as_millis() as u64,
    );
    let existing = current_membership(matrix, room_id).await;
    let content = merge_membership(existing.as_ref(), conf_id, device, now);
    matrix
        .send_state(room_id, CALL_MEMBER_EVENT, matrix.user_id(), &content)
        .await
        .context("sending m.call.member")?;
    Ok(())
}

/// Removes this device from the user's `m.call.member` state (leaving the conference).
pub async fn remove_membership(matrix: &MatrixClient, room_id: &str) -> Result<()> {
    let now = now_ms();
    let existing = current_membership(matrix, room_id).await;
    let own = Value::from(matrix.device_id());
    let mut calls: Vec<Value> = existing
        .as_ref()
        .and_then(|c| c.get("m.calls"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for call in &mut calls {
        if let Some(devices) = call.get_mut("m.devices").and_then(Value::as_array_mut) {
            devices.retain(|d| {
                d.get("device_id") != Some(&own)
                    && d.get("expires_ts").and_then(Value::as_u64).unwrap_or(0) > now
            });
        }
    }
    calls.retain(|c| {
        c.get("m.devices")
            .and_then(Value::as_array)
            .is_some_and(|d| !d.is_empty())
    });
    matrix
        .send_state(
            room_id,
            CALL_MEMBER_EVENT,
            matrix.user_id(),
            &json!({ "m.calls": calls }),
        )
        .await
        .context("sending m.call.member")?;
    Ok(())
}

/// Builds this device's to-device call events to the focus, numbering them by `seq`, and sends
/// them.
#[derive(Clone, Debug)]
pub struct CallSignaller {
    /// Our device (party id and device id of every event).
    pub device_id: String,
    /// The focus user.
    pub focus_user: String,
    /// The focus device.
    pub focus_device: String,
    /// Our call id.
    pub call_id: String,
    /// The conference.
    pub conf_id: String,
    /// The room of the conference.
    pub room_id: String,
    /// Our session.
    pub session_id: String,
    /// The focus's session as we address it (`"sfu"` by default).
    pub dest_session_id: String,
    /// When set, events are sent Olm-encrypted with this device's sessions.
    pub olm: Option<crate::olm::OlmDevice>,
    seq: u64,
}

impl CallSignaller {
    /// A signaller for a new call; the first event gets seq 0.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        device_id: &str,
        focus_user: &str,
        focus_device: &str,
        call_id: &str,
        conf_id: &str,
        room_id: &str,
        session_id: &str,
        dest_session_id: &str,
    ) -> Self {
        Self {
            device_id: device_id.to_owned(),
            focus_user: focus_user.to_owned(),
            focus_device: focus_device.to_owned(),
            call_id: call_id.to_owned(),
            conf_id: conf_id.to_owned(),
            room_id: room_id.to_owned(),
            session_id: session_id.to_owned(),
            dest_session_id: dest_session_id.to_owned(),
            olm: None,
            seq: 0,
        }
    }

    /// The seq the next event will carry.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// The fields every call event carries, taking the next seq.
    pub fn base(&mut self) -> CallEventContent {
        let seq = self.seq;
        self.seq += 1;
        CallEventContent {
            call_id: self.call_id.clone(),
            party_id: Some(self.device_id.clone()),
            version: Some(Value::from("1")),
            conf_id: Some(self.conf_id.clone()),
            device_id: Some(self.device_id.clone()),
            sender_session_id: Some(self.session_id.clone()),
            dest_session_id: Some(self.dest_session_id.clone()),
            seq: Some(seq),
            room_id: Some(self.room_id.clone()),
            ..Default::default()
        }
    }

    /// `m.call.invite` content.
    pub fn invite(
        &mut self,
        sdp: &str,
        lifetime_ms: u64,
        metadata: SdpStreamMetadata,
    ) -> CallEventContent {
        let mut content = self.base();
        content.offer = Some(SessionDescription::offer(sdp));
        content.lifetime = Some(lifetime_ms);
        content.invitee = Some(self.focus_user.clone());
        content.set_metadata(metadata);
        content
    }

    /// `m.call.candidates` content.
    pub fn candidates(&mut self, candidates: Vec<Candidate>) -> CallEventContent {
        let mut content = self.base();
        content.candidates = Some(candidates);
        content
    }

    /// `m.call.negotiate` content.
    pub fn negotiate(
        &mut self,
        description: SessionDescription,
        lifetime_ms: u64,
        metadata: SdpStreamMetadata,
    ) -> CallEventContent {
        let mut content = self.base();
        content.description = Some(description);
        content.lifetime = Some(lifetime_ms);
        content.set_metadata(metadata);
        content
    }

    /// `m.call.hangup` content.
    pub fn hangup(&mut self, reason: &str) -> CallEventContent {
        let mut content = self.base();
        content.reason = Some(reason.to_owned());
        content
    }

    /// Sends one event to the focus device (Olm-encrypted when [`Self::olm`] is set).
    pub async fn send(
        &self,
        matrix: &MatrixClient,
        kind: CallEventKind,
        content: &CallEventContent,
    ) -> Result<()> {
        let value = serde_json::to_value(content).context("serializing call event")?;
        let (event_type, value) = match &self.olm {
            Some(olm) => (
                cascade_signalling::crypto::envelope::ENCRYPTED_EVENT,
                olm.encrypt(&self.focus_user, &self.focus_device, kind.as_type(), &value)?,
            ),
            None => (kind.as_type(), value),
        };
        let messages = BTreeMap::from([(
            self.focus_user.clone(),
            BTreeMap::from([(self.focus_device.clone(), value)]),
        )]);
        matrix
            .send_to_device(event_type, &messages)
            .await
            .with_context(|| format!("sending {}", kind.as_type()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_merge_keeps_other_devices_and_drops_stale() {
        let now = 1_000_000;
        let existing = json!({"m.calls": [
            {"m.call_id": "conf", "m.devices": [
                {"device_id": "OTHER", "session_id": "s", "expires_ts": now + 10, "feeds": []},
                {"device_id": "ME", "session_id": "old", "expires_ts": now + 10, "feeds": []},
                {"device_id": "STALE", "session_id": "s", "expires_ts": now - 1, "feeds": []},
            ]},
            {"m.call_id": "dead", "m.devices": [
                {"device_id": "X", "session_id": "s", "expires_ts": now - 1, "feeds": []},
            ]},
        ]});
        let device = membership_device("ME", "new", "@focus:hs", "FOCUS", now + 3_600_000);
        let merged = merge_membership(Some(&existing), "conf", device.clone(), now);
        let calls = merged["m.calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        let devices = calls[0]["m.devices"].as_array().unwrap();
        let ids: Vec<_> = devices
            .iter()
            .map(|d| d["device_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["OTHER", "ME"]);
        assert_eq!(devices[1]["session_id"], "new");
        assert_eq!(
            devices[1]["org.matrix.msc3898.foci.active"][0]["device_id"],
            "FOCUS"
        );
        assert_eq!(devices[1]["feeds"][0]["purpose"], "m.usermedia");

        let fresh = merge_membership(None, "conf", device, now);
        assert_eq!(fresh["m.calls"][0]["m.call_id"], "conf");
        assert_eq!(fresh["m.calls"][0]["m.devices"][0]["device_id"], "ME");
    }

    #[test]
    fn invite_and_candidates_content() {
        let mut sig = CallSignaller::new(
            "DEV",
            "@focus:hs",
            "FOCUS",
            "call1",
            "conf",
            "!room:hs",
            "sess",
            "sfu",
        );
        let mut metadata = SdpStreamMetadata::new();
        metadata.insert("stream-DEV".into(), Default::default());
        let invite = serde_json::to_value(sig.invite("v=0", 60_000, metadata)).unwrap();
        assert_eq!(invite["call_id"], "call1");
        assert_eq!(invite["party_id"], "DEV");
        assert_eq!(invite["device_id"], "DEV");
        assert_eq!(invite["version"], "1");
        assert_eq!(invite["conf_id"], "conf");
        assert_eq!(invite["sender_session_id"], "sess");
        assert_eq!(invite["dest_session_id"], "sfu");
        assert_eq!(invite["seq"], 0);
        assert_eq!(invite["offer"]["type"], "offer");
        assert_eq!(invite["offer"]["sdp"], "v=0");
        assert_eq!(invite["lifetime"], 60_000);
        assert_eq!(invite["invitee"], "@focus:hs");
        assert_eq!(invite["room_id"], "!room:hs");
        assert!(invite["sdp_stream_metadata"]["stream-DEV"].is_object());
        assert!(invite["org.matrix.msc3077.sdp_stream_metadata"]["stream-DEV"].is_object());

        let cands = sig.candidates(vec![
            Candidate {
                candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
                username_fragment: None,
            },
            Candidate::default(),
        ]);
        let cands = serde_json::to_value(cands).unwrap();
        assert_eq!(cands["seq"], 1);
        assert_eq!(cands["candidates"][1]["candidate"], "");
        let hangup = serde_json::to_value(sig.hangup("user_hangup")).unwrap();
        assert_eq!(hangup["seq"], 2);
        assert_eq!(hangup["reason"], "user_hangup");
    }

    #[test]
    fn filter_is_json() {
        let v: Value = serde_json::from_str(TO_DEVICE_ONLY_FILTER).unwrap();
        assert!(v["room"]["rooms"].as_array().unwrap().is_empty());
    }
}
