//! Faults survived (issue 14): the homeserver goes away in the middle of a call and comes back.
//! A real Synapse (stopped and started again on the same port and database), the real focus,
//! simulated devices.

use anyhow::{Context, Result, ensure};
use cascade_signalling::MatrixClient;
use cascade_simclient::SimClient;
use cascade_testkit::{Conference, party};
use std::path::Path;
use std::time::{Duration, Instant};

#[allow(dead_code)] // each test file uses part of the shared checks
mod common;
use common::{check_intact, wait_more_from};

const ANSWER: Duration = Duration::from_secs(30);
/// How long the homeserver stays away (issue 14, item 1).
const OUTAGE: Duration = Duration::from_secs(20);

/// `/readyz`'s status code and body.
async fn readyz(conference: &Conference) -> Result<(u16, String)> {
    let response = cascade_signalling::http::client()?
        .get(format!("{}/readyz", conference.focus.http_url()))
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// Waits (up to `timeout`) until `/readyz` answers `code`; returns its body.
async fn wait_readyz(conference: &Conference, code: u16, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let (now, body) = readyz(conference).await?;
        if now == code {
            return Ok(body);
        }
        ensure!(
            Instant::now() < deadline,
            "/readyz still {now} ({body:?}) after {timeout:?}, not {code}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new device `localpart` in the conference's call, answered.
async fn join(conference: &Conference, localpart: &str) -> Result<(MatrixClient, SimClient)> {
    let matrix = conference.device(localpart).await?;
    let client = conference.join(conference.call_config(&matrix)).await?;
    client
        .wait_answered(ANSWER)
        .await
        .with_context(|| format!("{localpart}'s call"))?;
    Ok((matrix, client))
}

/// Every device receives `more` further packets from every other.
async fn all_receive_more(devices: &[(MatrixClient, SimClient)], more: u64) -> Result<()> {
    for (matrix, client) in devices {
        for (other, _) in devices
            .iter()
            .filter(|(o, _)| o.user_id() != matrix.user_id())
        {
            wait_more_from(client, &party(other), more)
                .await
                .with_context(|| format!("{} from {}", matrix.user_id(), other.user_id()))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_homeserver_outage_neither_stops_media_nor_loses_signalling() -> Result<()> {
    let mut conference =
        Conference::start(Path::new(env!("CARGO_BIN_EXE_cascade")), "membership").await?;
    let result = async {
        let mut devices = Vec::new();
        for localpart in ["ann", "ben", "cat"] {
            devices.push(join(&conference, localpart).await?);
        }
        all_receive_more(&devices, 100).await?;
        wait_readyz(&conference, 200, Duration::from_secs(5)).await?;

        conference.synapse.stop().await?;
        let down_since = Instant::now();
        // The focus reports the outage, and media goes on through it.
        let body = wait_readyz(&conference, 503, Duration::from_secs(10)).await?;
        ensure!(
            body.contains("homeserver"),
            "/readyz during the outage: {body:?}"
        );
        all_receive_more(&devices, 100)
            .await
            .context("during the outage")?;
        // The outage lasts its full length (the fault being simulated, not a wait for a result).
        tokio::time::sleep(OUTAGE.saturating_sub(down_since.elapsed())).await;
        ensure!(
            readyz(&conference).await?.0 == 503,
            "ready while the homeserver is down"
        );
        all_receive_more(&devices, 50)
            .await
            .context("at the end of the outage")?;
        conference.synapse.start_again().await?;
        wait_readyz(&conference, 200, Duration::from_secs(60)).await?;

        // Signalling resumes: a new device joins, and everyone receives everyone.
        devices.push(join(&conference, "dan").await?);
        all_receive_more(&devices, 100)
            .await
            .context("after the outage")?;
        // Nothing lost or handled twice: every stream arrived without a gap through the outage,
        // each device got one answer, and the focus saw no event twice.
        for (matrix, client) in &devices {
            for (other, _) in devices
                .iter()
                .filter(|(o, _)| o.user_id() != matrix.user_id())
            {
                check_intact(matrix.user_id(), &client.report(), &party(other))?;
            }
            ensure!(
                client.answers_received() == 1,
                "{} got {} answers",
                matrix.user_id(),
                client.answers_received()
            );
        }
        let duplicates = conference
            .focus
            .metric("cascade_signalling_ignored_events_total{reason=\"duplicate\"}")
            .await?;
        ensure!(duplicates == 0.0, "the focus saw {duplicates} events twice");
        Ok(())
    }
    .await;
    conference.on_failure(result)
}
