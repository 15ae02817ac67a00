//! Interoperability with a released matrix-js-sdk: its legacy crypto (libolm,
//! `@matrix-org/olm`), running in Node, sends the focus an Olm-encrypted `m.call.invite` the
//! way its group calls do; the focus must decrypt it and answer with an encrypted
//! `m.call.answer` that the SDK decrypts.
//!
//! Needs `node` and `npm`; the SDK is installed from the npm registry into
//! `tests/jssdk/node_modules` (pinned by `tests/jssdk/package-lock.json`) on first run.

use anyhow::{Context, Result, bail, ensure};
use cascade_simclient::{PeerOptions, SimPeer};
use cascade_testkit::{Conference, npm};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// How long the script waits for the answer after sending the invite.
const ANSWER_MS: u64 = 30_000;
/// How long the whole script may run (login, key upload, sync, invite, answer).
const SCRIPT: Duration = Duration::from_secs(90);

fn jssdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jssdk")
}

/// `line` without ANSI colour escapes.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_legacy_olm_invite_is_answered_encrypted() -> Result<()> {
    let node = npm::require("node").await?;
    let dir = jssdk_dir();
    npm::install(&dir, &["matrix-js-sdk", "@matrix-org/olm"]).await?;

    let conference =
        Conference::start(Path::new(env!("CARGO_BIN_EXE_cascade")), "membership").await?;
    let result = async {
        let js = conference.device("js").await?;
        let config = conference.call_config(&js);
        config.publish_membership().await?;

        // A real offer (audio, video and the data channel) from the simulated peer.
        let mut peer = SimPeer::bind(PeerOptions::new(js.user_id(), js.device_id())).await?;
        let offer = peer.create_offer()?;
        let scratch = tempfile::tempdir()?;
        let offer_file = scratch.path().join("offer.sdp");
        std::fs::write(&offer_file, &offer)?;

        let child = Command::new("node")
            .arg("invite.mjs")
            .current_dir(&dir)
            .env("HOMESERVER_URL", js.homeserver_url())
            .env("ACCESS_TOKEN", js.access_token())
            .env("USER_ID", js.user_id())
            .env("DEVICE_ID", js.device_id())
            .env("FOCUS_USER_ID", conference.focus.user_id())
            .env("FOCUS_DEVICE_ID", conference.focus.device_id())
            .env("ROOM_ID", &conference.room_id)
            .env("CONF_ID", &conference.conf_id)
            .env("SESSION_ID", &config.session_id)
            .env("OFFER_SDP_FILE", &offer_file)
            .env("TIMEOUT_MS", ANSWER_MS.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(SCRIPT, child)
            .await
            .with_context(|| format!("the matrix-js-sdk script ran longer than {SCRIPT:?}"))??;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        let Some(line) = line else {
            bail!(
                "the matrix-js-sdk script ({node}) printed no result ({}):\n{stdout}\n{stderr}",
                output.status
            );
        };
        let report: Value = serde_json::from_str(line)
            .with_context(|| format!("the script's result is not JSON: {line}"))?;
        println!("matrix-js-sdk result: {report}");
        if report["ok"] != Value::Bool(true) {
            bail!("the matrix-js-sdk script failed: {report}\n---- script log ----\n{stderr}");
        }
        ensure!(
            report["encrypted"] == Value::Bool(true),
            "the answer reached the SDK in plaintext: {report}"
        );
        ensure!(
            report["answer_type"] == "answer",
            "no SDP answer in the m.call.answer: {report}"
        );
        ensure!(
            report["sender_curve25519"] == report["focus_curve25519"],
            "the answer was not encrypted by the focus's device: {report}"
        );
        ensure!(
            report["dest_session_id"].as_str() == Some(config.session_id.as_str()),
            "the answer is not addressed to the SDK's session: {report}"
        );
        let call_id = report["call_id"].as_str().unwrap_or_default();
        let log = conference.focus.log();
        let decrypted = log.lines().position(|l| {
            l.contains("decrypted Olm to-device event") && l.contains("m.call.invite")
        });
        let encrypted = log.lines().position(|l| {
            l.contains("encrypted Olm to-device event") && l.contains("m.call.answer")
        });
        match (decrypted, encrypted) {
            (Some(d), Some(e)) => {
                ensure!(d < e, "the focus encrypted its answer before decrypting")
            }
            _ => bail!("the focus log lacks the decrypted invite or the encrypted answer"),
        }
        for l in log.lines().filter(|l| {
            l.contains("Olm to-device event") || (l.contains(call_id) && l.contains("answer"))
        }) {
            println!("focus: {}", plain(l));
        }
        peer.close();
        Ok(())
    }
    .await;
    conference.on_failure(result)
}
