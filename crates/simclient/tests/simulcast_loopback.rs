//! Two `SimPeer`s connected directly (no focus): a simulcast publisher's offer and layers, layer
//! switching off and on, per-layer keyframe requests, and NACK recovery of dropped datagrams.

use cascade_simclient::synth::{self, layer_tag};
use cascade_simclient::{MediaKind, PeerOptions, SimPeer};
use std::time::{Duration, Instant};

/// Runs both peers until `done` holds or `timeout` passes; returns whether it held.
async fn drive_until(
    a: &mut SimPeer,
    b: &mut SimPeer,
    timeout: Duration,
    mut done: impl FnMut(&SimPeer, &SimPeer) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for peer in [&mut *a, &mut *b] {
            peer.process();
            peer.flush().await;
            while peer.poll_event().is_some() {}
        }
        if done(a, b) {
            return true;
        }
        tokio::select! {
            _ = a.wait() => {}
            _ = b.wait() => {}
        }
    }
    false
}

/// A connected publisher (`publisher`) and receiver (`receiver` options), video only.
async fn connect(publisher: PeerOptions, receiver: PeerOptions) -> (SimPeer, SimPeer, String) {
    let mut a = SimPeer::bind(publisher).await.unwrap();
    let mut b = SimPeer::bind(receiver).await.unwrap();
    let offer = a.create_offer().unwrap();
    let answer = b.accept_offer(&offer).unwrap();
    a.accept_answer(&answer).unwrap();
    for c in a.local_candidates() {
        b.add_remote_candidate(&c).unwrap();
    }
    for c in b.local_candidates() {
        a.add_remote_candidate(&c).unwrap();
    }
    let connected = drive_until(&mut a, &mut b, Duration::from_secs(10), |a, b| {
        a.is_connected() && b.is_connected()
    })
    .await;
    assert!(connected, "peers connect");
    (a, b, offer)
}

fn publisher_options(simulcast: bool) -> PeerOptions {
    let mut opts = PeerOptions::new("@alice:hs", "ALICE");
    opts.publish_audio = false;
    opts.simulcast = simulcast;
    opts.create_data_channel = false;
    opts
}

fn receiver_options() -> PeerOptions {
    let mut opts = PeerOptions::new("@focus:hs", "FOCUS");
    opts.publish_audio = false;
    opts.publish_video = false;
    opts.create_data_channel = false;
    opts
}

/// Packets received per publisher tag on the one incoming track.
fn packets_by_tag(peer: &SimPeer) -> Vec<(u32, u64)> {
    let receiving = peer.receiving();
    let recv = receiving.lock().unwrap();
    recv.tracks
        .values()
        .flat_map(|t| {
            t.counters
                .iter()
                .map(|(tag, c)| (*tag, c.received))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn simulcast_offer_layers_and_layer_keyframe_requests() {
    let (mut a, mut b, offer) = connect(publisher_options(true), receiver_options()).await;
    for rid in ["q", "h", "f"] {
        assert!(offer.contains(&format!("a=rid:{rid} send")), "{offer}");
    }
    assert!(offer.contains("a=simulcast:send q;h;f"), "{offer}");
    let (track_id, _) = a.local_tracks().into_iter().next().unwrap();
    assert_eq!(a.local_tracks().len(), 1, "one video track");
    let base = synth::publisher_tag("@alice:hs", "ALICE", &track_id, MediaKind::Video);
    let tags: Vec<u32> = ["q", "h", "f"].iter().map(|r| layer_tag(base, r)).collect();

    let receiving = b.receiving();
    let all_layers = drive_until(&mut a, &mut b, Duration::from_secs(10), |_, _| {
        let recv = receiving.lock().unwrap();
        recv.tracks
            .values()
            .any(|t| tags.iter().all(|tag| t.counters.contains_key(tag)))
    })
    .await;
    assert!(
        all_layers,
        "all three layers arrive: {:?}",
        packets_by_tag(&b)
    );
    {
        let recv = receiving.lock().unwrap();
        let stats = recv.tracks.values().next().unwrap();
        assert_eq!(stats.payload_mismatches, 0);
        for tag in &tags {
            assert_eq!(stats.counters[tag].gaps, 0, "layer {tag:x} continuous");
        }
    }

    // Only q keeps sending.
    a.set_video_layers(&["q"]);
    drive_until(&mut a, &mut b, Duration::from_millis(300), |_, _| false).await;
    let before = packets_by_tag(&b);
    drive_until(&mut a, &mut b, Duration::from_millis(500), |_, _| false).await;
    let after = packets_by_tag(&b);
    for (tag, count) in &after {
        let earlier = before.iter().find(|(t, _)| t == tag).map_or(0, |(_, c)| *c);
        if *tag == tags[0] {
            assert!(*count > earlier, "q goes on");
        } else {
            assert_eq!(*count, earlier, "layer {tag:x} stopped");
        }
    }

    // f starts again with a keyframe; a PLI on the layers' SSRCs reaches each layer.
    a.set_video_layers(&["q", "f"]);
    assert_eq!(a.video_layer_ssrcs().len(), 3);
    let sent = a.receiving();
    let f_keys = |sent: &std::sync::Mutex<cascade_simclient::report::Receiving>| {
        sent.lock()
            .unwrap()
            .layer_sent_keyframes
            .get("f")
            .copied()
            .unwrap_or(0)
    };
    let f_before = f_keys(&sent);
    assert!(
        drive_until(&mut a, &mut b, Duration::from_secs(2), |_, _| f_keys(&sent)
            > f_before)
        .await,
        "f restarts with a keyframe"
    );
    b.send_pli(&track_id).unwrap();
    let asked = drive_until(&mut a, &mut b, Duration::from_secs(2), |_, _| {
        sent.lock()
            .unwrap()
            .layer_keyframe_requests
            .contains_key("f")
    })
    .await;
    assert!(
        asked,
        "PLI reaches layer f: {:?}",
        sent.lock().unwrap().layer_keyframe_requests
    );
}

#[tokio::test]
async fn dropped_datagrams_are_recovered_by_nack() {
    let mut receiver = receiver_options();
    receiver.drop_incoming_rtp = Some(10);
    let (mut a, mut b, _) = connect(publisher_options(false), receiver).await;
    let receiving = b.receiving();
    let recovered = drive_until(&mut a, &mut b, Duration::from_secs(10), |_, _| {
        let recv = receiving.lock().unwrap();
        recv.dropped_incoming_rtp >= 20 && recv.tracks.values().any(|t| t.seq.recovered >= 10)
    })
    .await;
    let recv = receiving.lock().unwrap();
    let stats = recv.tracks.values().next().unwrap();
    assert!(
        recovered,
        "dropped {}, recovered {} (seq), outstanding {}",
        recv.dropped_incoming_rtp,
        stats.seq.recovered,
        stats.seq.outstanding()
    );
    assert_eq!(stats.payload_mismatches, 0);
    assert!(stats.counter_recovered() >= 10);
}
