//! The demo: a local Synapse, the focus, and a short simulated conference. Prints what every
//! simulated device receives from every other, and exits non-zero if any pair got no audio or
//! no video.

use anyhow::{Context, Result, bail};
use cascade_simclient::SimClient;
use cascade_testkit::Conference;
use clap::Parser;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "cascade-demo",
    about = "A short simulated conference through the Cascade focus"
)]
struct Cli {
    /// Path of the `cascade` binary.
    #[arg(long)]
    focus_binary: PathBuf,
    /// Number of simulated devices.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=12))]
    devices: u32,
    /// How long the conference runs once everyone is connected, in seconds.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
}

const NAMES: [&str; 12] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj",
];

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    println!("starting Synapse on 127.0.0.1 (installed into target/synapse-venv on first use) ...");
    let conference = Conference::start(&cli.focus_binary, "membership")
        .await
        .context("starting Synapse and the focus")?;
    println!(
        "homeserver {}  focus {} ({})  room {}  conference {}",
        conference.synapse.url(),
        conference.focus.user_id(),
        conference.focus.http_url(),
        conference.room_id,
        conference.conf_id
    );
    let outcome = run(&conference, &cli).await;
    if outcome.is_err() {
        eprintln!("---- focus log ----\n{}", conference.focus.log_tail());
    }
    outcome
}

async fn run(conference: &Conference, cli: &Cli) -> Result<()> {
    let mut devices = Vec::new();
    for name in NAMES.iter().take(cli.devices as usize) {
        let matrix = conference.device(name).await?;
        let client = conference.join(conference.call_config(&matrix)).await?;
        println!("{name}: invited the focus (call {})", client.call_id());
        devices.push((name.to_string(), matrix, client));
    }
    for (name, _, client) in &devices {
        client.wait_answered(Duration::from_secs(20)).await?;
        let after = client.report().answered_after.unwrap_or_default();
        println!("{name}: answered after {} ms", after.as_millis());
    }
    println!("conference running for {} s ...", cli.seconds);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(cli.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let line: Vec<String> = devices
            .iter()
            .map(|(name, _, client)| {
                let packets: u64 = client.report().tracks.iter().map(|t| t.packets).sum();
                format!("{name} {packets} pkts")
            })
            .collect();
        println!(
            "  t={:>2}s  {}",
            started.elapsed().as_secs(),
            line.join("  ")
        );
    }

    println!();
    println!(
        "{:<8} {:<8} {:<6} {:>8} {:>9} {:>6} {:>9} {:>10} {:>10}",
        "receiver",
        "from",
        "kind",
        "packets",
        "kbit/s",
        "lost",
        "corrupt",
        "delay p50",
        "delay p99"
    );
    let mut missing = Vec::new();
    for (name, _, client) in &devices {
        let report = client.report();
        for (other, matrix, _) in devices.iter().filter(|(other, _, _)| other != name) {
            let tracks = report.tracks_from(matrix.user_id(), matrix.device_id());
            for kind in ["audio", "video"] {
                let Some(track) = tracks.iter().find(|t| t.kind == kind && t.packets > 0) else {
                    missing.push(format!("{name} got no {kind} from {other}"));
                    continue;
                };
                let seconds = match (track.first_at, track.last_at) {
                    (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
                    _ => 0.0,
                };
                let kbps = if seconds > 0.0 {
                    track.bytes as f64 * 8.0 / seconds / 1000.0
                } else {
                    0.0
                };
                println!(
                    "{:<8} {:<8} {:<6} {:>8} {:>9.0} {:>6} {:>9} {:>8}µs {:>8}µs",
                    name,
                    other,
                    kind,
                    track.packets,
                    kbps,
                    track.counter_gaps,
                    track.payload_mismatches,
                    track.delay_us_p50.unwrap_or(0),
                    track.delay_us_p99.unwrap_or(0)
                );
            }
        }
    }
    for (_, _, client) in devices {
        hang_up(client).await;
    }
    if !missing.is_empty() {
        bail!("incomplete conference:\n  {}", missing.join("\n  "));
    }
    println!();
    println!("every device received every other device's audio and video through the focus");
    Ok(())
}

async fn hang_up(client: SimClient) {
    if let Err(err) = client.hangup().await {
        eprintln!("hangup failed: {err:#}");
    }
}
