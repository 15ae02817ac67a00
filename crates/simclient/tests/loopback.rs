//! Two `SimPeer`s connected directly (no Matrix, no focus): proves the peer-connection setup,
//! the data channel, synthetic media sending, receive accounting and keyframe requests.

use cascade_protocol::datachannel::{DataChannelMessage, Empty};
use cascade_simclient::{MediaKind, PeerEvent, PeerOptions, SimPeer};
use std::time::{Duration, Instant};

struct Side {
    peer: SimPeer,
    dc_open: bool,
    connected: bool,
    texts: Vec<String>,
    tracks: Vec<(String, String, Option<MediaKind>)>,
}

impl Side {
    fn new(peer: SimPeer) -> Self {
        Self {
            peer,
            dc_open: false,
            connected: false,
            texts: Vec::new(),
            tracks: Vec::new(),
        }
    }

    async fn step(&mut self) {
        self.peer.process();
        self.peer.flush().await;
        while let Some(event) = self.peer.poll_event() {
            match event {
                PeerEvent::Connected => self.connected = true,
                PeerEvent::DataChannelOpen => self.dc_open = true,
                PeerEvent::DataChannelText(text) => self.texts.push(text),
                PeerEvent::TrackOpened {
                    track_id,
                    stream_id,
                    kind,
                } => self.tracks.push((track_id, stream_id, kind)),
                PeerEvent::Disconnected(state) => panic!("peer disconnected: {state}"),
                PeerEvent::DataChannelClosed => {}
            }
        }
    }
}

async fn drive_until(
    a: &mut Side,
    b: &mut Side,
    timeout: Duration,
    mut done: impl FnMut(&Side, &Side) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        a.step().await;
        b.step().await;
        if done(a, b) {
            return true;
        }
        tokio::select! {
            _ = a.peer.wait() => {}
            _ = b.peer.wait() => {}
        }
    }
    false
}

#[tokio::test]
async fn loopback_offer_answer_media_and_datachannel() {
    let offerer = SimPeer::bind(PeerOptions::new("@alice:hs", "ALICE"))
        .await
        .unwrap();
    let mut answer_opts = PeerOptions::new("@focus:hs", "FOCUS");
    answer_opts.publish_audio = false;
    answer_opts.publish_video = false;
    answer_opts.create_data_channel = false;
    let answerer = SimPeer::bind(answer_opts).await.unwrap();
    let mut a = Side::new(offerer);
    let mut b = Side::new(answerer);

    let offer = a.peer.create_offer().unwrap();
    assert!(
        offer.contains("a=candidate:"),
        "offer carries our host candidate"
    );
    assert!(offer.contains("m=audio") && offer.contains("m=video"));
    assert!(offer.contains("m=application"));
    assert!(offer.contains(a.peer.stream_id()));
    let answer = b.peer.accept_offer(&offer).unwrap();
    a.peer.accept_answer(&answer).unwrap();
    for c in a.peer.local_candidates() {
        b.peer.add_remote_candidate(&c).unwrap();
    }
    for c in b.peer.local_candidates() {
        a.peer.add_remote_candidate(&c).unwrap();
    }

    // Connect, open the data channel both ways, and exchange a ping/pong.
    let connected = drive_until(&mut a, &mut b, Duration::from_secs(10), |a, b| {
        a.connected && b.connected && a.dc_open && b.dc_open
    })
    .await;
    assert!(
        connected,
        "connected={} {} dc={} {}",
        a.connected, b.connected, a.dc_open, b.dc_open
    );
    let ping = DataChannelMessage::Ping(Empty {}).to_text();
    b.peer.send_text(&ping).unwrap();
    assert!(
        drive_until(&mut a, &mut b, Duration::from_secs(5), |a, _| !a
            .texts
            .is_empty())
        .await,
        "ping over data channel"
    );
    assert_eq!(
        DataChannelMessage::parse(&a.texts[0]).unwrap(),
        DataChannelMessage::Ping(Empty {})
    );

    // Media: ~2 s of audio and video.
    let receiving = b.peer.receiving();
    let got_media = drive_until(&mut a, &mut b, Duration::from_secs(10), |_, _| {
        let recv = receiving.lock().unwrap();
        let audio = recv
            .tracks
            .values()
            .filter(|t| t.kind == Some(MediaKind::Audio))
            .map(|t| t.packets)
            .sum::<u64>();
        let video = recv
            .tracks
            .values()
            .filter(|t| t.kind == Some(MediaKind::Video))
            .map(|t| t.packets)
            .sum::<u64>();
        audio >= 100 && video >= 60
    })
    .await;
    assert!(got_media, "media arrives: {:?}", receiving.lock().unwrap());

    let local = a.peer.local_tracks();
    {
        let recv = receiving.lock().unwrap();
        assert_eq!(recv.tracks.len(), 2, "{:?}", recv.tracks.keys());
        for (track_id, kind) in &local {
            let stats = recv.tracks.get(track_id).expect("track id kept end to end");
            assert_eq!(stats.kind, Some(*kind));
            assert_eq!(stats.stream_id, a.peer.stream_id());
            assert_eq!(stats.payload_mismatches, 0);
            assert_eq!(stats.seq.gaps, 0);
            assert_eq!(stats.counter_gaps(), 0);
            assert!(stats.delays.quantile(0.5).unwrap() < 200_000);
            let tag =
                cascade_simclient::synth::publisher_tag("@alice:hs", "ALICE", track_id, *kind);
            assert_eq!(stats.publisher_tag, Some(tag));
            if *kind == MediaKind::Video {
                assert!(stats.keyframes >= 1, "the first frame is a keyframe");
            }
        }
    }
    assert_eq!(b.tracks.len(), 2);

    // A PLI from the receiver makes the sender send a keyframe soon.
    let video_track = local
        .iter()
        .find(|(_, k)| *k == MediaKind::Video)
        .map(|(t, _)| t.clone())
        .unwrap();
    let keyframes_before = receiving.lock().unwrap().tracks[&video_track].keyframes;
    b.peer.send_pli(&video_track).unwrap();
    let sender_stats = a.peer.receiving();
    let got_key = drive_until(&mut a, &mut b, Duration::from_secs(2), |_, _| {
        receiving.lock().unwrap().tracks[&video_track].keyframes > keyframes_before
    })
    .await;
    assert!(got_key, "keyframe after PLI");
    assert!(sender_stats.lock().unwrap().keyframe_requests >= 1);

    a.peer.close();
    a.peer.flush().await;
}
