//! `--local`: a homeserver and a focus started by the load tester itself, on 127.0.0.1.

use crate::scenario::Target;
use anyhow::{Context, Result, bail};
use cascade_testkit::{Focus, FocusOptions, Synapse};
use std::path::{Path, PathBuf};

/// Password of the focus's account on the local homeserver.
const FOCUS_PASSWORD: &str = "focus-password";

/// A local Synapse and focus, stopped when dropped.
pub struct LocalSetup {
    /// The focus process.
    pub focus: Focus,
    /// The homeserver; declared last so it outlives the focus on drop.
    pub synapse: Synapse,
}

/// The `cascade` binary to run: next to this executable (or one directory up, as for tests),
/// else `target/release/cascade`, else `target/debug/cascade`.
pub fn find_focus_binary() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("cascade"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("cascade"));
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for root in [PathBuf::from("."), workspace] {
        candidates.push(root.join("target/release/cascade"));
        candidates.push(root.join("target/debug/cascade"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Starts Synapse and the focus (with `event_loops` media loops, logging at warn) and returns
/// them with the target that drives them.
pub async fn start(binary: Option<PathBuf>, event_loops: u32) -> Result<(LocalSetup, Target)> {
    let Some(binary) = binary.or_else(find_focus_binary) else {
        bail!(
            "no `cascade` binary found; build it (cargo build --release -p cascade) or pass --focus-binary"
        );
    };
    let synapse = Synapse::start().await.context("starting Synapse")?;
    let account = synapse
        .register(cascade_testkit::FOCUS_LOCALPART, FOCUS_PASSWORD, false)
        .await
        .context("registering the focus")?;
    let mut options = FocusOptions::new(&binary, synapse.url(), &account.user_id, FOCUS_PASSWORD);
    options
        .env
        .push(("CASCADE_RTC__EVENT_LOOPS".into(), event_loops.to_string()));
    options.env.push((
        "RUST_LOG".into(),
        std::env::var("CASCADE_LOADTEST_FOCUS_LOG").unwrap_or_else(|_| "warn".into()),
    ));
    let focus = Focus::start(options)
        .await
        .with_context(|| format!("starting {}", binary.display()))?;
    let target = Target {
        homeserver_url: synapse.url().to_owned(),
        registration_secret: synapse.shared_secret().to_owned(),
        focus_user: account.user_id.clone(),
        focus_device: focus.device_id().to_owned(),
        focus_pid: focus.pid(),
        room: None,
    };
    tracing::info!(binary = %binary.display(), homeserver = %target.homeserver_url, pid = ?target.focus_pid, "local focus ready");
    Ok((LocalSetup { focus, synapse }, target))
}

/// Pins every thread of a process to one CPU (best effort; logs what it could not pin).
pub fn pin_process(pid: u32, cpu: usize) {
    let tasks: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for tid in tasks {
        // SAFETY: the cpu_set_t is zero-initialised and only touched through the libc macros.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            tracing::warn!(pid, tid, cpu, "could not pin a thread");
        }
    }
}
