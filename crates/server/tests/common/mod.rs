//! Checks shared by the end-to-end test files.

use anyhow::{Result, bail, ensure};
use cascade_simclient::{Report, SimClient};
use std::time::Duration;

/// Checks that every track received from `publisher` arrived intact, in order and without gaps,
/// and that both its audio and its video arrived.
pub fn check_intact(receiver: &str, report: &Report, publisher: &(String, String)) -> Result<()> {
    let tracks = report.tracks_from(&publisher.0, &publisher.1);
    let kinds: Vec<&str> = tracks.iter().map(|t| t.kind.as_str()).collect();
    ensure!(
        kinds.contains(&"audio") && kinds.contains(&"video"),
        "{receiver} got {kinds:?} from {}, expected audio and video",
        publisher.0
    );
    for track in tracks {
        ensure!(
            track.packets > 0,
            "{receiver}: no packets on {}",
            track.track_id
        );
        ensure!(
            track.payload_mismatches == 0,
            "{receiver}: {} payloads differ from what {} sent on {}",
            track.payload_mismatches,
            publisher.0,
            track.kind
        );
        ensure!(
            track.seq_gaps == 0 && track.seq_reorders == 0,
            "{receiver}: sequence numbers not continuous on {} ({} gaps, {} reorders)",
            track.kind,
            track.seq_gaps,
            track.seq_reorders
        );
        ensure!(
            track.counter_gaps == 0,
            "{receiver}: {} packets of {}'s {} missing or out of order",
            track.counter_gaps,
            publisher.0,
            track.kind
        );
    }
    Ok(())
}

/// Waits until `client` no longer has `publisher` among the streams the focus offers it.
pub async fn wait_unannounced(client: &SimClient, publisher: &(String, String)) -> Result<()> {
    for _ in 0..200 {
        let listed = client
            .available()
            .values()
            .any(|s| s.user_id.as_deref() == Some(&publisher.0));
        if !listed {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{} still listed after 10 s", publisher.0)
}

/// Waits (up to 30 s) until `client` has received `more` packets from `publisher` (user,
/// device), over all its tracks, beyond what it had when called.
pub async fn wait_more_from(
    client: &SimClient,
    publisher: &(String, String),
    more: u64,
) -> Result<()> {
    let count = || client.report().packets_from(&publisher.0, &publisher.1);
    let before = count();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count() < before + more {
        if std::time::Instant::now() >= deadline {
            bail!(
                "{} stopped receiving {} ({before} → {})",
                client.user_id(),
                publisher.0,
                count()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
