//! Cascaded foci (issue 11), end to end: a real Synapse on 127.0.0.1, two or three `cascade`
//! processes, and simulated devices, each calling the focus its membership names. The foci
//! link by themselves, from the conference's `m.call.member` state.

use anyhow::{Context, Result, ensure};
use cascade_signalling::MatrixClient;
use cascade_simclient::{SimClient, signalling};
use cascade_testkit::{Conference, Focus, party};
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{check_intact, wait_unannounced};

const ANSWER: Duration = Duration::from_secs(20);
const MEDIA: Duration = Duration::from_secs(30);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cascade"))
}

/// Waits (up to `timeout`) until `focus`'s metric `series` equals `value`; fails with the
/// last value read and the focus's log tail.
async fn wait_metric_eq(focus: &Focus, series: &str, value: f64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = focus.metric(series).await?;
        if now == value {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{series} of {} is {now}, not {value}, after {timeout:?}; its log:\n{}",
            focus.user_id(),
            focus.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A device of a new user `localpart`, in a call with `focus` (which its membership names).
async fn join_on(
    conference: &Conference,
    focus: &Focus,
    localpart: &str,
) -> Result<(MatrixClient, SimClient)> {
    let matrix = conference.device(localpart).await?;
    let client = conference
        .join(conference.call_config_on(&matrix, focus))
        .await?;
    client
        .wait_answered(ANSWER)
        .await
        .with_context(|| format!("{localpart} calling {}", focus.user_id()))?;
    Ok((matrix, client))
}

/// Every device receives every other device's audio and video, intact and attributed to its
/// publisher's user and device.
async fn check_everyone_receives_everyone(devices: &[(MatrixClient, SimClient)]) -> Result<()> {
    for (matrix, client) in devices {
        let others: Vec<(String, String)> = devices
            .iter()
            .filter(|(other, _)| other.user_id() != matrix.user_id())
            .map(|(other, _)| party(other))
            .collect();
        client
            .wait_receiving_from(&others, 100, MEDIA)
            .await
            .with_context(|| format!("{} receiving", matrix.user_id()))?;
    }
    for (matrix, client) in devices {
        let report = client.report();
        for (other, _) in devices
            .iter()
            .filter(|(o, _)| o.user_id() != matrix.user_id())
        {
            check_intact(matrix.user_id(), &report, &party(other))?;
        }
    }
    Ok(())
}

/// Prints both foci's logs when the test failed.
fn on_failure<T>(foci: &[&Focus], result: Result<T>) -> Result<T> {
    if result.is_err() {
        for focus in foci {
            eprintln!("---- {} log ----\n{}", focus.user_id(), focus.log_tail());
        }
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_devices_on_two_foci_receive_each_other_until_the_link_is_no_longer_needed()
-> Result<()> {
    let conference = Conference::start(binary(), "membership").await?;
    let focus_b = conference.add_focus(binary(), "focusb").await?;
    let focus_a = &conference.focus;
    let result = async {
        let mut devices = vec![
            join_on(&conference, focus_a, "ann").await?,
            join_on(&conference, focus_a, "ben").await?,
            join_on(&conference, &focus_b, "cat").await?,
            join_on(&conference, &focus_b, "dan").await?,
        ];
        check_everyone_receives_everyone(&devices).await?;
        // One link between the two foci, placed by the one with the lower (user, device):
        // `@focus:…` sorts before `@focusb:…`.
        for focus in [focus_a, &focus_b] {
            wait_metric_eq(focus, "cascade_links", 1.0, Duration::from_secs(5)).await?;
        }
        let placed = "cascade_link_calls_total{side=\"placed\"}";
        ensure!(
            focus_a.metric(placed).await? == 1.0,
            "focus A placed no single link"
        );
        ensure!(
            focus_b.metric(placed).await? == 0.0,
            "focus B placed a link"
        );

        // Dan (on B) leaves: the devices on A stop being offered his streams; the others
        // go on.
        let (dan, dan_call) = devices.pop().context("dan")?;
        dan_call.hangup().await?;
        signalling::remove_membership(&dan, &conference.room_id).await?;
        for (_, client) in &devices[..2] {
            wait_unannounced(client, &party(&dan)).await?;
        }
        let remaining: Vec<(String, String)> = devices.iter().map(|(m, _)| party(m)).collect();
        for (matrix, client) in &devices {
            let before = client
                .report()
                .packets_from(&remaining[2].0, &remaining[2].1);
            if matrix.user_id() == remaining[2].0 {
                continue;
            }
            let deadline = Instant::now() + MEDIA;
            while client
                .report()
                .packets_from(&remaining[2].0, &remaining[2].1)
                < before + 50
            {
                ensure!(
                    Instant::now() < deadline,
                    "{} stopped receiving cat after dan left",
                    matrix.user_id()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        // Cat, the last member on B, leaves: the link is hung up on both sides.
        let (cat, cat_call) = devices.pop().context("cat")?;
        cat_call.hangup().await?;
        signalling::remove_membership(&cat, &conference.room_id).await?;
        for focus in [focus_a, &focus_b] {
            wait_metric_eq(focus, "cascade_links", 0.0, Duration::from_secs(15)).await?;
        }
        for (_, client) in &devices {
            wait_unannounced(client, &party(&cat)).await?;
        }
        // Ann and Ben, both on A, still have their call.
        let (ann, a) = &devices[0];
        let (ben, b) = &devices[1];
        let before = a.report().packets_from(ben.user_id(), ben.device_id());
        let deadline = Instant::now() + MEDIA;
        while a.report().packets_from(ben.user_id(), ben.device_id()) < before + 50 {
            ensure!(Instant::now() < deadline, "ann stopped receiving ben");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        check_intact(ann.user_id(), &a.report(), &party(ben))?;
        check_intact(ben.user_id(), &b.report(), &party(ann))?;
        Ok(())
    }
    .await;
    on_failure(&[focus_a, &focus_b], result)
}
