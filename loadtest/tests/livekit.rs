//! The load tester through the focus's LiveKit endpoint in the test command (issue 12, test 4):
//! `cascade-loadtest --target livekit` starts a Synapse and a debug focus with `[livekit]` on
//! 127.0.0.1, and a video publisher (camera and microphone), an audio publisher and three
//! subscribers join one LiveKit room as simulated LiveKit clients for 10 s of measurement. Every
//! device must join, every subscriber must receive every publisher's tracks with under 1 %
//! loss, and the summary line must name a positive figure of packets per focus CPU-second.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// How long the whole command may take (Synapse, the focus, joins, 3 s of warm-up, 10 s of
/// measurement, leaving).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// The figure before `pkt per focus CPU-s` in the summary line, without its separators.
fn per_cpu_second(line: &str) -> Option<f64> {
    let before = line.split(" pkt per focus CPU-s").next()?;
    before.rsplit(' ').next()?.replace(',', "").parse().ok()
}

/// Runs `cascade-loadtest` with `args` until it exits or [`COMMAND_TIMEOUT`] passes (then it
/// is killed); its exit success, stdout and stderr.
fn run_loadtest(args: &[&str], dir: &Path) -> (bool, String, String) {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_cascade-loadtest"))
        .args(args)
        .stdout(Stdio::from(
            std::fs::File::create(&out).expect("a stdout file"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(&err).expect("a stderr file"),
        ))
        .spawn()
        .expect("cascade-loadtest starts");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let success = loop {
        if let Some(status) = child.try_wait().expect("waiting for cascade-loadtest") {
            break status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cascade-loadtest did not finish within {COMMAND_TIMEOUT:?}:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    (success, read(&out), read(&err))
}

#[test]
fn simulated_livekit_clients_receive_every_publisher_through_the_focus() {
    let focus = common::focus_binary();
    let dir = std::env::temp_dir().join(format!("cascade-loadtest-livekit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let json = dir.join("summary.json");
    let focus_arg = focus.display().to_string();
    let json_arg = json.display().to_string();
    let args = [
        "--target",
        "livekit",
        "--video-publishers",
        "1",
        "--audio-publishers",
        "1",
        "--subscribers",
        "3",
        "--video-bitrate",
        "300000",
        "--duration",
        "10",
        "--focus-binary",
        &focus_arg,
        "--json",
        &json_arg,
        "--no-progress",
    ];
    let (success, stdout, stderr) = run_loadtest(&args, &dir);
    println!("{stdout}");
    assert!(success, "cascade-loadtest failed:\n{stdout}\n{stderr}");

    let line = stdout
        .lines()
        .find(|l| l.starts_with("cascade (LiveKit endpoint)"))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let figure = per_cpu_second(line).unwrap_or_else(|| panic!("no per-CPU-second figure: {line}"));
    assert!(figure > 0.0, "{line}");

    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON"))
        .expect("the summary parses");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(summary["joined"], 5, "{summary:#}");
    assert_eq!(summary["failed"], 0, "{summary:#}");
    // Every subscriber, every publisher track: the camera and both microphones.
    let expected: BTreeSet<(String, String, String)> = (0..3)
        .flat_map(|s| {
            [("v0", "audio"), ("v0", "video"), ("a0", "audio")]
                .map(|(p, kind)| (format!("lt1-s{s}"), format!("lt1-{p}"), kind.to_owned()))
        })
        .collect();
    let received = summary["received"].as_array().expect("a received list");
    let got: BTreeSet<(String, String, String)> = received
        .iter()
        .map(|r| {
            let field = |name: &str| r[name].as_str().unwrap_or_default().to_owned();
            (field("watcher"), field("publisher"), field("kind"))
        })
        .collect();
    assert_eq!(got, expected);
    for r in received {
        assert!(
            r["packets"].as_u64().is_some_and(|n| n > 0),
            "nothing arrived: {r}"
        );
    }
    let number = |name: &str| summary[name].as_f64().unwrap_or(f64::NAN);
    assert!(number("loss_pct") < 1.0, "loss {}", number("loss_pct"));
    // 3 subscribers × 2 microphones × 50 packets/s; the camera's video on top.
    assert!(number("audio_pps") > 150.0, "audio {}", number("audio_pps"));
    assert!(number("video_pps") > 30.0, "video {}", number("video_pps"));
    assert_eq!(summary["corrupt_packets"], 0);
    assert!(
        (number("packets_per_cpu_second") - figure).abs() <= figure * 0.01 + 1.0,
        "the line and the JSON disagree: {figure} and {}",
        number("packets_per_cpu_second")
    );
}
