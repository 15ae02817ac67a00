//! A short load test in the test command: a local Synapse and the focus, 2 audio+video
//! publishers that watch each other and 3 subscribers for a few seconds; fails unless media
//! flows to everyone, intact. The same with two cascaded foci (`--foci 2`): media must also
//! cross the link both ways, and the per-hop delay be measured.

use cascade_loadtest::preset;
use cascade_loadtest::scenario::{self, RunOptions};
use std::time::Duration;

mod common;

/// Runs the `smoke` preset for 4 s (after 2 s of warm-up) against a local Synapse and `foci`
/// foci, with accounts named after `account_prefix`; fails unless media reached everyone.
async fn smoke_run(foci: usize, account_prefix: &str) -> cascade_loadtest::stats::Summary {
    let binary = common::focus_binary();
    assert!(binary.is_file(), "{} not built", binary.display());
    let (setup, target) = cascade_loadtest::local::start(Some(binary), 1, foci)
        .await
        .expect("Synapse and the foci start");
    let mut scenario = preset::find("smoke").expect("smoke preset").scenario();
    scenario.duration = Duration::from_secs(4);
    let options = RunOptions {
        progress: false,
        warmup: Duration::from_secs(2),
        account_prefix: account_prefix.into(),
        ..RunOptions::default()
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        scenario::run(target, &scenario, &options),
    )
    .await
    .expect("the run finishes")
    .expect("the run succeeds");
    println!("{}", cascade_loadtest::report::table(&summary));
    if let Some(why) = summary.media_failure() {
        panic!("media did not flow: {why}\n{}", setup.log_tails());
    }
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_flows_under_a_small_load() {
    let summary = smoke_run(1, "").await;
    assert_eq!(summary.joins_ok, 5);
    // 5 devices × 2 other publishers × (audio + video).
    assert_eq!(summary.audio_subscriptions, 8);
    assert_eq!(summary.video_subscriptions, 8);
    assert!(summary.audio.pps > 300.0, "audio {:?}", summary.audio);
    assert!(summary.video.pps > 200.0, "video {:?}", summary.video);
    assert!(summary.loss_pct < 1.0, "loss {}", summary.loss_pct);
    assert!(summary.forwarded_per_focus_cpu_second.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_flows_across_two_foci_under_a_small_load() {
    let summary = smoke_run(2, "smoke2").await;
    assert_eq!(summary.joins_ok, 5);
    // Everyone still gets everything: 5 devices × 2 other publishers × (audio + video).
    assert_eq!(summary.audio_subscriptions, 8);
    assert_eq!(summary.video_subscriptions, 8);
    assert!(summary.loss_pct < 1.0, "loss {}", summary.loss_pct);
    let hops = &summary.hops;
    assert!(hops.same_focus_packets > 0, "{hops:?}");
    assert!(hops.cross_focus_packets > 0, "{hops:?}");
    assert!(hops.added_per_hop_p50.is_some(), "{hops:?}");
    assert_eq!(summary.foci.len(), 2);
    for focus in &summary.foci {
        // Each focus has a local publisher whose streams the other focus's devices watch.
        assert_eq!(focus.links, Some(1.0), "{focus:?}");
        assert!(focus.link_packets.is_some_and(|n| n > 0), "{focus:?}");
        assert!(focus.cpu_us_per_forwarded_packet.is_some(), "{focus:?}");
    }
}
