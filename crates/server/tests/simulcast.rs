//! End-to-end simulcast, keyframe-request and retransmission tests: a real Synapse, the `cascade`
//! binary, and simulated devices publishing three simulcast layers (`q` 320x180, `h` 640x360,
//! `f` 1280x720) whose keyframe headers tell the receiver which layer it gets.

use anyhow::{Result, bail, ensure};
use cascade_simclient::report::LayerChange;
use cascade_simclient::{SimClient, SubscribePolicy, TrackReport};
use cascade_testkit::{Conference, party};
use std::path::Path;
use std::time::{Duration, Instant};

const ANSWER: Duration = Duration::from_secs(20);
const MEDIA: Duration = Duration::from_secs(20);
/// How long a layer switch may take (a fallback waits 1.5 s for the layer to count as gone).
const SWITCH: Duration = Duration::from_secs(8);
const POLL: Duration = Duration::from_millis(25);
/// Packets of layers nobody receives, dropped on arrival.
const UNWATCHED: &str = "cascade_dropped_packets_total{reason=\"unwatched_layer\"}";
/// Layers arriving that nobody receives.
const PAUSED: &str = "cascade_paused_layers";

const Q: (u16, u16) = (320, 180);
const H: (u16, u16) = (640, 360);
const F: (u16, u16) = (1280, 720);

async fn conference() -> Result<Conference> {
    Conference::start(Path::new(env!("CARGO_BIN_EXE_cascade")), "membership").await
}

/// The video track `client` receives from `publisher`, if any.
fn video_from(client: &SimClient, publisher: &(String, String)) -> Option<TrackReport> {
    client
        .report()
        .tracks_from(&publisher.0, &publisher.1)
        .into_iter()
        .find(|t| t.kind == "video")
        .cloned()
}

/// Waits until the video `client` receives from `publisher` satisfies `done`; returns it.
async fn wait_video(
    client: &SimClient,
    publisher: &(String, String),
    timeout: Duration,
    what: &str,
    done: impl Fn(&TrackReport) -> bool,
) -> Result<TrackReport> {
    let deadline = Instant::now() + timeout;
    loop {
        let video = video_from(client, publisher);
        if let Some(video) = &video
            && done(video)
        {
            return Ok(video.clone());
        }
        if client.is_finished() {
            bail!("{what}: the client stopped ({:?})", client.report().error);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}; video track: {video:#?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `done` holds of the focus's metric `series` (e.g. `cascade_paused_layers`);
/// returns its value.
async fn wait_metric(
    conference: &Conference,
    series: &str,
    timeout: Duration,
    done: impl Fn(f64) -> bool,
) -> Result<f64> {
    let deadline = Instant::now() + timeout;
    loop {
        let value = conference.focus.metric(series).await?;
        if done(value) {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("{series} = {value} after {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the focus told `publisher` that subscribers want exactly `rids` of its video
/// track `video` (`cascade.subscribed_layers`).
async fn wait_told(
    publisher: &SimClient,
    video: &TrackReport,
    rids: &[&str],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let told = publisher.subscribed_layers(&video.stream_id, &video.track_id);
        if told.as_deref().is_some_and(|told| told == rids) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the publisher was told {told:?}, not {rids:?}, within {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that the video arrived intact and continuous: payloads as sent, no RTP sequence gap
/// or reorder (layer switches included), no packet of any layer's run missing.
fn check_continuous(video: &TrackReport) -> Result<()> {
    ensure!(
        video.payload_mismatches == 0,
        "{} payloads differ from what was sent",
        video.payload_mismatches
    );
    ensure!(
        video.seq_gaps == 0 && video.seq_reorders == 0,
        "sequence numbers not continuous: {} gaps, {} reorders",
        video.seq_gaps,
        video.seq_reorders
    );
    ensure!(
        video.counter_gaps == 0,
        "{} gaps in a layer's packets",
        video.counter_gaps
    );
    Ok(())
}

/// The latest layer change of `video`, checked to start the new layer at a keyframe of `size`
/// with the old layer arriving right up to the switch.
fn check_switch(video: &TrackReport, size: (u16, u16), after: Instant) -> Result<LayerChange> {
    let Some(change) = video.layer_changes.last().cloned() else {
        bail!("no layer change recorded");
    };
    ensure!(
        change.at > after,
        "the last layer change predates the request"
    );
    ensure!(
        change.at_keyframe && change.size == Some(size),
        "the switch to {size:?} did not start at a keyframe: {change:?}"
    );
    ensure!(
        change.from_packets > 0,
        "nothing of the old layer: {change:?}"
    );
    Ok(change)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_the_layer_its_size_asks_for_and_falls_back_when_it_stops() -> Result<()>
{
    let conference = conference().await?;
    let result = async {
        let alice = conference.device("alice").await?;
        let bob = conference.device("bob").await?;
        let mut publisher = conference.call_config(&alice);
        publisher.simulcast = true;
        publisher.subscribe = SubscribePolicy::None;
        let mut subscriber = conference.call_config(&bob);
        subscriber.publish_video = false;
        subscriber.render_size = Some((320, 180));
        let a = conference.join(publisher).await?;
        let b = conference.join(subscriber).await?;
        a.wait_answered(ANSWER).await?;
        b.wait_answered(ANSWER).await?;
        let alice = party(&alice);

        // A small size gets q.
        let video = wait_video(&b, &alice, MEDIA, "q at 320x180", |v| {
            v.keyframe_size == Some(Q) && v.packets >= 60
        })
        .await?;
        check_continuous(&video)?;
        ensure!(
            video.layer_changes.is_empty(),
            "a 320x180 subscriber saw other layers: {:?}",
            video.layer_changes
        );
        // Nobody receives h or f: the focus drops them on arrival (counted) and tells alice
        // that only q is wanted (`cascade.subscribed_layers`).
        wait_told(&a, &video, &["q"], SWITCH).await?;
        wait_metric(&conference, PAUSED, SWITCH, |n| n == 2.0).await?;
        let before = conference.focus.metric(UNWATCHED).await?;
        wait_metric(&conference, UNWATCHED, SWITCH, |n| n >= before + 100.0).await?;

        // A large size switches to f at a keyframe, without a gap.
        let asked = Instant::now();
        b.set_render_size(1280, 720);
        let video = wait_video(&b, &alice, SWITCH, "switch to f at 1280x720", |v| {
            v.keyframe_size == Some(F)
        })
        .await?;
        let change = check_switch(&video, F, asked)?;
        // q kept coming until f's keyframe: no freeze while the switch waited for it.
        let old_until = change.from_last_at.map(|at| change.at.duration_since(at));
        ensure!(
            old_until.is_some_and(|d| d < Duration::from_millis(200)),
            "q stopped {old_until:?} before f began"
        );
        let video = wait_video(&b, &alice, MEDIA, "f flowing", |v| {
            v.packets >= video.packets + 60
        })
        .await?;
        check_continuous(&video)?;
        ensure!(
            video.keyframe_size == Some(F),
            "left f again: {:?}",
            video.layer_changes
        );
        // f comes back because bob asks for it; q and h are now the ones nobody receives,
        // though alice is asked to keep encoding them (for a downlink that cannot take f).
        wait_told(&a, &video, &["q", "h", "f"], SWITCH).await?;
        wait_metric(&conference, PAUSED, SWITCH, |n| n == 2.0).await?;
        println!(
            "switch q -> f {:?} after the request, {} q packets before it",
            change.at.duration_since(asked),
            change.from_packets
        );

        // The publisher stops f: the subscriber falls back to h, the best layer left.
        let stopped = Instant::now();
        a.set_video_layers(&["q", "h"]);
        let video = wait_video(&b, &alice, SWITCH, "fallback to h at 640x360", |v| {
            v.keyframe_size == Some(H)
        })
        .await?;
        let change = check_switch(&video, H, stopped)?;
        let video = wait_video(&b, &alice, MEDIA, "h flowing", |v| {
            v.packets >= video.packets + 30
        })
        .await?;
        check_continuous(&video)?;
        // Bob still asks for 720 lines, so alice is still asked for f (she may send it again);
        // bob receives h meanwhile, and q arrives unwatched.
        wait_metric(&conference, PAUSED, SWITCH, |n| n == 1.0).await?;
        ensure!(
            a.subscribed_layers(&video.stream_id, &video.track_id)
                .is_some_and(|told| told == ["q", "h", "f"]),
            "alice was told to stop f while bob asks for it"
        );
        println!(
            "fallback f -> h {:?} after f stopped",
            change.at.duration_since(stopped)
        );
        a.hangup().await?;
        b.hangup().await?;
        Ok(())
    }
    .await;
    conference.on_failure(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribers_keyframe_request_reaches_the_publisher_and_the_keyframe_comes_back()
-> Result<()> {
    let conference = conference().await?;
    let result = async {
        let alice = conference.device("alice").await?;
        let bob = conference.device("bob").await?;
        let mut publisher = conference.call_config(&alice);
        publisher.simulcast = true;
        publisher.subscribe = SubscribePolicy::None;
        // No periodic keyframes during the test: every keyframe is a requested one.
        publisher.keyframe_interval = Duration::from_secs(600);
        let mut subscriber = conference.call_config(&bob);
        subscriber.publish_video = false;
        subscriber.render_size = Some((640, 360));
        let a = conference.join(publisher).await?;
        let b = conference.join(subscriber).await?;
        a.wait_answered(ANSWER).await?;
        b.wait_answered(ANSWER).await?;
        let alice = party(&alice);

        wait_video(&b, &alice, MEDIA, "h at 640x360", |v| {
            v.keyframe_size == Some(H) && v.packets >= 30
        })
        .await?;
        // Let the start-up keyframe requests settle (and the focus's throttle interval pass).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = video_from(&b, &alice).map_or(0, |v| v.keyframes);
        let requests_before = a.report().layer_keyframe_requests;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let settled = video_from(&b, &alice).map_or(0, |v| v.keyframes);
        ensure!(
            settled == before,
            "keyframes keep arriving unrequested ({before} -> {settled})"
        );

        b.request_keyframe();
        let video = wait_video(&b, &alice, Duration::from_secs(5), "keyframe after PLI", |v| {
            v.keyframes > before
        })
        .await?;
        ensure!(video.keyframe_size == Some(H), "the keyframe is not h's");
        check_continuous(&video)?;
        let requests = a.report().layer_keyframe_requests;
        let h = |m: &std::collections::BTreeMap<String, u64>| m.get("h").copied().unwrap_or(0);
        ensure!(
            h(&requests) > h(&requests_before),
            "the publisher got no request for h: {requests_before:?} -> {requests:?}"
        );
        println!(
            "keyframes at the subscriber {before} -> {}; publisher's requests {requests_before:?} -> {requests:?}",
            video.keyframes
        );
        a.hangup().await?;
        b.hangup().await?;
        Ok(())
    }
    .await;
    conference.on_failure(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_loses_packets_gets_them_retransmitted() -> Result<()> {
    let conference = conference().await?;
    let result = async {
        let alice = conference.device("alice").await?;
        let bob = conference.device("bob").await?;
        let mut publisher = conference.call_config(&alice);
        publisher.simulcast = true;
        publisher.subscribe = SubscribePolicy::None;
        let mut subscriber = conference.call_config(&bob);
        subscriber.publish_video = false;
        subscriber.render_size = Some((1280, 720));
        subscriber.drop_incoming_rtp = Some(25);
        let a = conference.join(publisher).await?;
        let b = conference.join(subscriber).await?;
        a.wait_answered(ANSWER).await?;
        b.wait_answered(ANSWER).await?;
        let alice = party(&alice);

        let video = wait_video(&b, &alice, MEDIA, "retransmissions", |v| {
            v.packets >= 300 && v.seq_recovered >= 5
        })
        .await?;
        let dropped = b.report().dropped_incoming_rtp;
        println!(
            "dropped {dropped} RTP datagrams (audio and video); video: {} packets, {} gaps, \
             {} recovered, {} outstanding; counters: {} recovered, {} outstanding",
            video.packets,
            video.seq_gaps,
            video.seq_recovered,
            video.seq_outstanding,
            video.counter_recovered,
            video.counter_outstanding
        );
        ensure!(
            video.payload_mismatches == 0,
            "{} retransmitted or forwarded payloads differ",
            video.payload_mismatches
        );
        ensure!(video.counter_recovered > 0, "no publisher packet recovered");
        ensure!(
            video.keyframe_size == Some(F),
            "a 1280x720 subscriber gets {:?}",
            video.keyframe_size
        );
        // Everything dropped long enough ago has come back (a fresh loss may still be on its way).
        ensure!(
            video.seq_outstanding <= 2 && video.counter_outstanding <= 2,
            "losses not recovered: {} sequence numbers, {} packets",
            video.seq_outstanding,
            video.counter_outstanding
        );
        a.hangup().await?;
        b.hangup().await?;
        Ok(())
    }
    .await;
    conference.on_failure(result)
}
