//! `SimClient` against a mock homeserver and a fake focus built from a `SimPeer`: the whole
//! client side of the protocol (to-device invite/answer/candidates/hangup, data-channel
//! metadata, subscription, ping/pong, renegotiation) and media both ways.

mod common;

use cascade_protocol::datachannel::{
    DataChannelMessage, Empty, MetadataChanged, Negotiate, TrackSubscription,
};
use cascade_protocol::event::SessionDescription;
use cascade_protocol::{SdpStreamMetadata, StreamMetadata, TrackInfo};
use cascade_signalling::MatrixClient;
use cascade_simclient::{MediaKind, PeerEvent, PeerOptions, SimClient, SimConfig, SimPeer};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FOCUS_USER: &str = "@focus:hs";
const FOCUS_DEVICE: &str = "FOCUS";
const FOCUS_SESSION: &str = "focus-session";

struct FakeFocus {
    mock: Arc<common::Mock>,
    peer: Option<SimPeer>,
    to_device: Vec<Value>,
    dc: Vec<DataChannelMessage>,
    dc_open: bool,
    connected: bool,
}

impl FakeFocus {
    fn new(mock: Arc<common::Mock>) -> Self {
        Self {
            mock,
            peer: None,
            to_device: Vec::new(),
            dc: Vec::new(),
            dc_open: false,
            connected: false,
        }
    }

    fn events(&self, event_type: &str) -> Vec<Value> {
        self.to_device
            .iter()
            .filter(|e| e["type"] == event_type)
            .map(|e| e["content"].clone())
            .collect()
    }

    async fn pump_until(&mut self, timeout: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(peer) = &mut self.peer {
                peer.process();
                peer.flush().await;
                while let Some(event) = peer.poll_event() {
                    match event {
                        PeerEvent::Connected => self.connected = true,
                        PeerEvent::DataChannelOpen => self.dc_open = true,
                        PeerEvent::DataChannelText(text) => {
                            self.dc.push(DataChannelMessage::parse(&text).unwrap())
                        }
                        _ => {}
                    }
                }
            }
            self.to_device
                .extend(self.mock.take(FOCUS_USER, FOCUS_DEVICE));
            if done(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let sleep = tokio::time::sleep(Duration::from_millis(10));
            match &mut self.peer {
                Some(peer) => {
                    tokio::select! {
                        _ = peer.wait() => {}
                        _ = sleep => {}
                    }
                }
                None => sleep.await,
            }
        }
    }

    fn send_dc(&mut self, msg: &DataChannelMessage) {
        self.peer
            .as_mut()
            .unwrap()
            .send_text(&msg.to_text())
            .unwrap();
    }

    fn to_client(&self, client: &SimClient, event_type: &str, seq: u64, extra: Value) {
        let mut content = json!({
            "call_id": client.call_id(),
            "party_id": FOCUS_DEVICE,
            "version": "1",
            "device_id": FOCUS_DEVICE,
            "sender_session_id": FOCUS_SESSION,
            "dest_session_id": client.session_id(),
            "seq": seq,
        });
        for (k, v) in extra.as_object().unwrap() {
            content[k] = v.clone();
        }
        self.mock.push(
            client.user_id(),
            client.device_id(),
            FOCUS_USER,
            event_type,
            content,
        );
    }
}

async fn start_client(mock: &common::Mock, url: &str, lifetime_ms: u64) -> SimClient {
    mock.add_device("tok-alice", "@alice:hs", "ALICE");
    let matrix = MatrixClient::with_access_token(url, "tok-alice")
        .await
        .unwrap();
    let mut config = SimConfig::new(matrix, "!room:hs", "conf1", FOCUS_USER, FOCUS_DEVICE);
    config.render_size = Some((320, 180));
    config.lifetime_ms = lifetime_ms;
    SimClient::start(config).await.unwrap()
}

fn stream(user: &str, device: &str, tracks: &[(String, MediaKind)]) -> StreamMetadata {
    StreamMetadata {
        purpose: "m.usermedia".into(),
        user_id: Some(user.into()),
        device_id: Some(device.into()),
        tracks: Some(
            tracks
                .iter()
                .map(|(id, kind)| {
                    (
                        id.clone(),
                        TrackInfo {
                            kind: kind.as_str().into(),
                            ..Default::default()
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

/// Answers the client's invite with a focus peer publishing as `@bob:hs`/`BOB`.
async fn answer_invite(focus: &mut FakeFocus, client: &SimClient) {
    assert!(
        focus
            .pump_until(Duration::from_secs(5), |f| {
                !f.events("m.call.invite").is_empty() && !f.events("m.call.candidates").is_empty()
            })
            .await,
        "invite and candidates arrive"
    );
    let invite = focus.events("m.call.invite").remove(0);
    let candidates = focus.events("m.call.candidates").remove(0);
    assert_eq!(invite["call_id"], client.call_id());
    assert_eq!(invite["party_id"], "ALICE");
    assert_eq!(invite["device_id"], "ALICE");
    assert_eq!(invite["version"], "1");
    assert_eq!(invite["conf_id"], "conf1");
    assert_eq!(invite["sender_session_id"], client.session_id());
    assert_eq!(invite["dest_session_id"], "sfu");
    assert_eq!(invite["seq"], 0);
    assert_eq!(invite["invitee"], FOCUS_USER);
    assert_eq!(invite["room_id"], "!room:hs");
    assert_eq!(invite["lifetime"], 60_000);
    assert_eq!(invite["offer"]["type"], "offer");
    for key in [
        "sdp_stream_metadata",
        "org.matrix.msc3077.sdp_stream_metadata",
    ] {
        assert_eq!(
            invite[key][client.stream_id()]["purpose"],
            "m.usermedia",
            "{key}"
        );
    }
    assert_eq!(candidates["seq"], 1);
    let list = candidates["candidates"].as_array().unwrap();
    assert!(list[0]["candidate"].as_str().unwrap().contains("127.0.0.1"));
    assert_eq!(list.last().unwrap()["candidate"], "");

    let mut opts = PeerOptions::new("@bob:hs", "BOB");
    opts.create_data_channel = false;
    let mut peer = SimPeer::bind(opts).await.unwrap();
    let answer = peer
        .accept_offer(invite["offer"]["sdp"].as_str().unwrap())
        .unwrap();
    for c in list {
        let c: cascade_protocol::Candidate = serde_json::from_value(c.clone()).unwrap();
        peer.add_remote_candidate(&c).unwrap();
    }
    // Candidates before the answer must be buffered by the client; an event for another
    // session must be ignored.
    let focus_candidates: Vec<Value> = peer
        .local_candidates()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .chain([json!({"candidate": ""})])
        .collect();
    focus.to_client(
        client,
        "m.call.candidates",
        1,
        json!({"candidates": focus_candidates}),
    );
    let mut stray = json!({"call_id": client.call_id(), "dest_session_id": "someone-else", "reason": "user_busy"});
    stray["seq"] = json!(5);
    focus.mock.push(
        client.user_id(),
        client.device_id(),
        FOCUS_USER,
        "m.call.hangup",
        stray,
    );
    focus.to_client(
        client,
        "m.call.answer",
        0,
        json!({"answer": {"type": "answer", "sdp": answer}}),
    );
    focus.peer = Some(peer);
}

#[tokio::test]
async fn full_call_flow_against_fake_focus() {
    let (mock, url) = common::start().await;
    let client = start_client(&mock, &url, 60_000).await;
    let mut focus = FakeFocus::new(mock.clone());
    answer_invite(&mut focus, &client).await;
    client.wait_answered(Duration::from_secs(5)).await.unwrap();
    assert!(
        focus
            .pump_until(Duration::from_secs(10), |f| f.connected && f.dc_open)
            .await,
        "focus side connected with data channel"
    );

    // The focus offers alice's own stream and bob's: alice subscribes to bob's only.
    let bob_peer = focus.peer.as_ref().unwrap();
    let bob_stream = bob_peer.stream_id().to_owned();
    let bob_tracks = bob_peer.local_tracks();
    let mut available = SdpStreamMetadata::new();
    available.insert(
        client.stream_id().to_owned(),
        stream("@alice:hs", "ALICE", client.local_tracks()),
    );
    available.insert(bob_stream.clone(), stream("@bob:hs", "BOB", &bob_tracks));
    focus.send_dc(&DataChannelMessage::SdpStreamMetadataChanged(
        MetadataChanged {
            sdp_stream_metadata: available.clone(),
        },
    ));
    focus.send_dc(&DataChannelMessage::Ping(Empty {}));
    assert!(
        focus
            .pump_until(Duration::from_secs(5), |f| {
                f.dc.iter()
                    .any(|m| matches!(m, DataChannelMessage::Pong(_)))
                    && f.dc
                        .iter()
                        .any(|m| matches!(m, DataChannelMessage::TrackSubscription(_)))
            })
            .await,
        "pong and subscription: {:?}",
        focus.dc
    );
    let subs: Vec<TrackSubscription> = focus
        .dc
        .drain(..)
        .filter_map(|m| match m {
            DataChannelMessage::TrackSubscription(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(subs.len(), 1);
    let mut subscribed: Vec<_> = subs[0]
        .subscribe
        .iter()
        .map(|r| (r.stream_id.clone(), r.track_id.clone(), r.width))
        .collect();
    subscribed.sort();
    let mut expected: Vec<_> = bob_tracks
        .iter()
        .map(|(id, kind)| {
            (
                bob_stream.clone(),
                id.clone(),
                (*kind == MediaKind::Video).then_some(320),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(subscribed, expected);
    assert!(subs[0].unsubscribe.is_empty());
    assert_eq!(client.available(), available);

    // Media both ways.
    let publishers = [("@bob:hs".to_owned(), "BOB".to_owned())];
    tokio::select! {
        res = client.wait_receiving_from(&publishers, 50, Duration::from_secs(10)) => res.unwrap(),
        _ = focus.pump_until(Duration::from_secs(15), |_| false) => panic!("focus pump ended"),
    }
    let report = client.report();
    let from_bob = report.tracks_from("@bob:hs", "BOB");
    assert_eq!(from_bob.len(), 2, "{report:#?}");
    for track in &from_bob {
        assert_eq!(track.payload_mismatches, 0);
        assert_eq!(track.seq_gaps, 0);
        assert_eq!(track.counter_gaps, 0);
        assert!(track.delay_us_p50.is_some());
    }
    assert!(report.answered_after.is_some());
    assert!(report.first_media_after.is_some());
    assert!(report.sent_audio_packets > 0 && report.sent_video_packets > 0);
    {
        let recv = focus.peer.as_ref().unwrap().receiving();
        let recv = recv.lock().unwrap();
        let audio = recv
            .tracks
            .values()
            .find(|t| t.kind == Some(MediaKind::Audio))
            .expect("focus receives alice's audio");
        assert!(audio.packets > 0);
        assert_eq!(audio.payload_mismatches, 0);
    }

    // Renegotiation offered by the focus over the data channel.
    let offer = focus.peer.as_mut().unwrap().create_offer().unwrap();
    focus.send_dc(&DataChannelMessage::Negotiate(Negotiate {
        description: SessionDescription::offer(offer),
        sdp_stream_metadata: SdpStreamMetadata::new(),
    }));
    assert!(
        focus
            .pump_until(Duration::from_secs(5), |f| {
                f.dc.iter()
                    .any(|m| matches!(m, DataChannelMessage::Negotiate(_)))
            })
            .await
    );
    let Some(DataChannelMessage::Negotiate(answer)) = focus
        .dc
        .drain(..)
        .find(|m| matches!(m, DataChannelMessage::Negotiate(_)))
    else {
        unreachable!()
    };
    assert_eq!(answer.description.kind, "answer");
    assert!(answer.sdp_stream_metadata.contains_key(client.stream_id()));
    focus
        .peer
        .as_mut()
        .unwrap()
        .accept_answer(&answer.description.sdp)
        .unwrap();
    assert_eq!(client.signalling_counts(), (1, 1));

    // Bob's video disappears: alice unsubscribes from it.
    let bob_video = bob_tracks
        .iter()
        .find(|(_, k)| *k == MediaKind::Video)
        .unwrap()
        .0
        .clone();
    let mut fewer = available.clone();
    if let Some(tracks) = fewer.get_mut(&bob_stream).and_then(|s| s.tracks.as_mut()) {
        tracks.remove(&bob_video);
    }
    focus.send_dc(&DataChannelMessage::SdpStreamMetadataChanged(
        MetadataChanged {
            sdp_stream_metadata: fewer,
        },
    ));
    assert!(
        focus
            .pump_until(Duration::from_secs(5), |f| {
                f.dc.iter()
                    .any(|m| matches!(m, DataChannelMessage::TrackSubscription(_)))
            })
            .await
    );
    let Some(DataChannelMessage::TrackSubscription(sub)) = focus.dc.pop() else {
        unreachable!()
    };
    assert!(sub.subscribe.is_empty());
    assert_eq!(sub.unsubscribe.len(), 1);
    assert_eq!(sub.unsubscribe[0].track_id, bob_video);
    assert_eq!(client.subscribed().len(), 1);

    // Alice hangs up: data-channel hangup and to-device hangup with the next seq.
    let hangup = tokio::spawn(client.hangup());
    assert!(
        focus
            .pump_until(Duration::from_secs(5), |f| {
                !f.events("m.call.hangup").is_empty()
                    && f.dc
                        .iter()
                        .any(|m| matches!(m, DataChannelMessage::Hangup(_)))
            })
            .await,
        "hangups arrive"
    );
    hangup.await.unwrap().unwrap();
    let to_device = focus.events("m.call.hangup").remove(0);
    assert_eq!(to_device["reason"], "user_hangup");
    assert_eq!(to_device["seq"], 2);
}

#[tokio::test]
async fn focus_hangup_and_invite_timeout() {
    let (mock, url) = common::start().await;
    let client = start_client(&mock, &url, 60_000).await;
    let mut focus = FakeFocus::new(mock.clone());
    answer_invite(&mut focus, &client).await;
    client.wait_answered(Duration::from_secs(5)).await.unwrap();
    focus.to_client(
        &client,
        "m.call.hangup",
        2,
        json!({"reason": "keep_alive_timeout"}),
    );
    let reason = client.wait_hangup(Duration::from_secs(5)).await.unwrap();
    assert_eq!(reason, "keep_alive_timeout");
    assert!(client.is_finished());
    assert_eq!(
        client.report().hangup_reason.as_deref(),
        Some("keep_alive_timeout")
    );

    // A second device whose invite is never answered gives up after its lifetime.
    mock.add_device("tok-carol", "@carol:hs", "CAROL");
    let matrix = MatrixClient::with_access_token(&url, "tok-carol")
        .await
        .unwrap();
    let mut config = SimConfig::new(matrix, "!room:hs", "conf1", FOCUS_USER, FOCUS_DEVICE);
    config.lifetime_ms = 300;
    let carol = SimClient::start(config).await.unwrap();
    let err = carol
        .wait_answered(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invite_timeout"), "{err:#}");
    let mut focus = FakeFocus::new(mock.clone());
    assert!(
        focus
            .pump_until(Duration::from_secs(5), |f| {
                f.events("m.call.hangup")
                    .iter()
                    .any(|h| h["reason"] == "invite_timeout" && h["call_id"] == carol.call_id())
            })
            .await
    );
}
