//! Operations end to end: `/metrics` during a real call, the drain on SIGTERM, and a real
//! Prometheus scraping the focus. Real Synapse, real `cascade` process, simulated devices.

use anyhow::{Context, Result, bail, ensure};
use cascade_testkit::{Conference, party};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const ANSWER: Duration = Duration::from_secs(20);
const MEDIA: Duration = Duration::from_secs(30);

async fn get(url: &str) -> Result<(u16, String)> {
    let response = cascade_signalling::http::client()?
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// The value of the sample `series` (name plus labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}

fn must(text: &str, series: &str) -> Result<f64> {
    sample(text, series).with_context(|| format!("{series} is not exposed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_during_a_call_and_sigterm_drains_until_it_ends() -> Result<()> {
    let mut conference =
        Conference::start(Path::new(env!("CARGO_BIN_EXE_cascade")), "membership").await?;
    let result = async {
        let base = conference.focus.http_url();
        let metrics = format!("{base}/metrics");
        let alice = conference.device("alice").await?;
        let bob = conference.device("bob").await?;
        let a = conference.join(conference.call_config(&alice)).await?;
        let b = conference.join(conference.call_config(&bob)).await?;
        a.wait_receiving_from(&[party(&bob)], 50, MEDIA).await?;
        b.wait_receiving_from(&[party(&alice)], 50, MEDIA).await?;

        let (code, first) = get(&metrics).await?;
        ensure!(code == 200, "/metrics answered {code}");
        println!("---- first scrape (excerpt) ----");
        for line in first.lines().filter(|l| !l.starts_with('#')).take(60) {
            println!("{line}");
        }
        ensure!(must(&first, "cascade_participants")? == 2.0);
        ensure!(must(&first, "cascade_conferences")? == 1.0);
        ensure!(must(&first, r#"cascade_peer_connections{state="connected"}"#)? == 2.0);
        ensure!(
            must(
                &first,
                r#"cascade_published_tracks{kind="audio",layer="0"}"#
            )? >= 2.0
        );
        ensure!(
            must(
                &first,
                r#"cascade_published_tracks{kind="video",layer="0"}"#
            )? >= 2.0
        );
        ensure!(must(&first, "cascade_subscriptions")? >= 4.0);
        ensure!(
            must(
                &first,
                r#"cascade_to_device_events_total{direction="in",type="m.call.invite"}"#
            )? >= 2.0
        );
        ensure!(
            must(
                &first,
                r#"cascade_to_device_events_total{direction="out",type="m.call.answer"}"#
            )? >= 2.0
        );
        ensure!(must(&first, r#"cascade_invites_total{outcome="opened"}"#)? >= 2.0);
        ensure!(must(&first, "cascade_invite_to_first_packet_seconds_count")? >= 2.0);
        ensure!(
            must(
                &first,
                r#"cascade_keyframe_requests_total{direction="out"}"#
            )? >= 1.0
        );
        ensure!(must(&first, "cascade_sync_request_duration_seconds_count")? >= 1.0);
        ensure!(must(&first, r#"cascade_status{flag="ready"}"#)? == 1.0);
        ensure!(must(&first, "cascade_process_resident_memory_bytes")? > 0.0);
        ensure!(must(&first, "cascade_process_open_fds")? > 0.0);
        must(&first, "cascade_process_cpu_seconds_total")?;

        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, second) = get(&metrics).await?;
        for series in [
            r#"cascade_forwarded_packets_total{kind="audio"}"#,
            r#"cascade_forwarded_packets_total{kind="video"}"#,
            r#"cascade_forwarded_bytes_total{kind="video"}"#,
            r#"cascade_udp_datagrams_total{direction="in"}"#,
            r#"cascade_udp_datagrams_total{direction="out"}"#,
        ] {
            let (before, after) = (must(&first, series)?, must(&second, series)?);
            ensure!(
                after > before && before > 0.0,
                "{series} did not move: {before} -> {after}"
            );
        }

        // SIGTERM: not ready any more, new invites refused, the running call goes on.
        ensure!(conference.focus.terminate(), "the focus is not running");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (code, body) = get(&format!("{base}/readyz")).await?;
            if code == 503 {
                ensure!(body.contains("draining"), "/readyz says {body:?}");
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "/readyz still {code} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (code, _) = get(&format!("{base}/healthz")).await?;
        ensure!(code == 200, "/healthz answered {code} while draining");
        let before = b.report().packets_from(alice.user_id(), alice.device_id());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = b.report().packets_from(alice.user_id(), alice.device_id());
        ensure!(
            after > before,
            "the call stopped on SIGTERM: {before} -> {after}"
        );

        let carol = conference.device("carol").await?;
        let late = conference.join(conference.call_config(&carol)).await?;
        let reason = late.wait_hangup(Duration::from_secs(20)).await?;
        ensure!(
            reason == "user_busy",
            "a late invite got hangup reason {reason:?}"
        );
        let (_, draining) = get(&metrics).await?;
        ensure!(
            must(
                &draining,
                r#"cascade_invite_refusals_total{reason="draining"}"#
            )? == 1.0
        );
        ensure!(must(&draining, r#"cascade_status{flag="draining"}"#)? == 1.0);
        ensure!(conference.focus.log().contains("draining"));
        ensure!(
            conference
                .focus
                .wait_exit(Duration::from_secs(1))
                .await
                .is_err(),
            "the focus exited while a call was running"
        );

        // The call ends: the focus exits 0.
        a.hangup().await?;
        b.hangup().await?;
        let code = conference.focus.wait_exit(Duration::from_secs(20)).await?;
        ensure!(code == Some(0), "the focus exited with {code:?}");
        Ok(())
    }
    .await;
    conference.on_failure(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_hangs_up_the_remaining_calls_and_exits_0() -> Result<()> {
    let env = vec![(
        "CASCADE_SERVER__DRAIN_TIMEOUT_SECS".to_owned(),
        "2".to_owned(),
    )];
    let mut conference =
        Conference::start_with_env(Path::new(env!("CARGO_BIN_EXE_cascade")), "membership", env)
            .await?;
    let result = async {
        let alice = conference.device("alice").await?;
        let a = conference.join(conference.call_config(&alice)).await?;
        a.wait_answered(ANSWER).await?;
        ensure!(conference.focus.terminate(), "the focus is not running");
        let reason = a.wait_hangup(Duration::from_secs(20)).await?;
        ensure!(reason == "user_hangup", "hangup reason {reason:?}");
        let code = conference.focus.wait_exit(Duration::from_secs(20)).await?;
        ensure!(code == Some(0), "the focus exited with {code:?}");
        ensure!(conference.focus.log().contains("drain timeout"));
        Ok(())
    }
    .await;
    conference.on_failure(result)
}

/// The Prometheus server binary (Debian's `prometheus` package; `scripts/prepare.sh` installs it).
fn prometheus_binary() -> Result<std::path::PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/bin")]);
    for dir in candidates {
        let binary = dir.join("prometheus");
        if binary.is_file() {
            return Ok(binary);
        }
    }
    bail!("no prometheus binary; run scripts/prepare.sh (apt-get install prometheus)")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_focus() -> Result<()> {
    let binary = prometheus_binary()?;
    let conference =
        Conference::start(Path::new(env!("CARGO_BIN_EXE_cascade")), "membership").await?;
    let result = async {
        let alice = conference.device("alice").await?;
        let bob = conference.device("bob").await?;
        let a = conference.join(conference.call_config(&alice)).await?;
        let b = conference.join(conference.call_config(&bob)).await?;
        a.wait_receiving_from(&[party(&bob)], 20, MEDIA).await?;
        b.wait_receiving_from(&[party(&alice)], 20, MEDIA).await?;

        let dir = tempfile::Builder::new().prefix("cascade-prom-").tempdir()?;
        let target = conference.focus.http_url().replace("http://", "");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: cascade\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let _prometheus = tokio::process::Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let query = format!(
            "http://127.0.0.1:{port}/api/v1/query?query=sum(cascade_forwarded_packets_total)"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = get(&query).await {
                let json: serde_json::Value = serde_json::from_str(&body)?;
                let value = json["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok());
                if let Some(value) = value.filter(|v| *v > 0.0) {
                    println!("prometheus: sum(cascade_forwarded_packets_total) = {value}");
                    println!("{body}");
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
                bail!("Prometheus returned no cascade_ data within 30 s; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    .await;
    conference.on_failure(result)
}
