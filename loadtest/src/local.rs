//! `--local`: a homeserver and one focus or more started by the load tester itself, on 127.0.0.1.

use crate::scenario::{FocusTarget, Target};
use anyhow::{Context, Result, bail};
use cascade_testkit::{Focus, FocusOptions, Synapse};
use std::path::{Path, PathBuf};

/// Password of the foci's accounts on the local homeserver.
const FOCUS_PASSWORD: &str = "focus-password";

/// A local Synapse and foci, stopped when dropped.
pub struct LocalSetup {
    /// The focus processes, in the order of the target's foci.
    pub foci: Vec<Focus>,
    /// The homeserver; declared last so it outlives the foci on drop.
    pub synapse: Synapse,
}

impl LocalSetup {
    /// The last lines of every focus's log, each under a header naming the focus.
    pub fn log_tails(&self) -> String {
        self.foci
            .iter()
            .map(|f| format!("---- focus log ({}) ----\n{}", f.user_id(), f.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Writes each focus's whole log into `dir` as `focus-<i>.log`.
pub fn write_logs(setup: &LocalSetup, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, focus) in setup.foci.iter().enumerate() {
        let path = dir.join(format!("focus-{i}.log"));
        std::fs::write(&path, focus.log())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The localpart of local focus number `index`: `focus`, then `focus1`, `focus2`, …
pub fn focus_localpart(index: usize) -> String {
    if index == 0 {
        cascade_testkit::FOCUS_LOCALPART.to_owned()
    } else {
        format!("{}{index}", cascade_testkit::FOCUS_LOCALPART)
    }
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

/// Starts Synapse and `foci` focus processes, each its own user (with `event_loops` media loops,
/// logging at warn), and returns them with the target that drives them.
pub async fn start(
    binary: Option<PathBuf>,
    event_loops: u32,
    foci: usize,
) -> Result<(LocalSetup, Target)> {
    start_with(binary, event_loops, foci, &[]).await
}

/// As [`start`], with `env` (configuration overrides such as `CASCADE_RTC__UDP_PORT`) added to
/// every focus's environment.
pub async fn start_with(
    binary: Option<PathBuf>,
    event_loops: u32,
    foci: usize,
    env: &[(String, String)],
) -> Result<(LocalSetup, Target)> {
    let Some(binary) = binary.or_else(find_focus_binary) else {
        bail!(
            "no `cascade` binary found; build it (cargo build --release -p cascade) or pass --focus-binary"
        );
    };
    let synapse = Synapse::start().await.context("starting Synapse")?;
    let mut processes = Vec::new();
    let mut targets = Vec::new();
    for index in 0..foci.max(1) {
        let localpart = focus_localpart(index);
        let account = synapse
            .register(&localpart, FOCUS_PASSWORD, false)
            .await
            .with_context(|| format!("registering the focus {localpart}"))?;
        let mut options =
            FocusOptions::new(&binary, synapse.url(), &account.user_id, FOCUS_PASSWORD);
        options
            .env
            .push(("CASCADE_RTC__EVENT_LOOPS".into(), event_loops.to_string()));
        options.env.extend(env.iter().cloned());
        options.env.push((
            "RUST_LOG".into(),
            std::env::var("CASCADE_LOADTEST_FOCUS_LOG").unwrap_or_else(|_| "warn".into()),
        ));
        let focus = Focus::start(options)
            .await
            .with_context(|| format!("starting {} as {localpart}", binary.display()))?;
        tracing::info!(binary = %binary.display(), user = %account.user_id, pid = ?focus.pid(), "local focus ready");
        targets.push(FocusTarget {
            user: account.user_id.clone(),
            device: focus.device_id().to_owned(),
            pid: focus.pid(),
            metrics_url: Some(format!("{}/metrics", focus.http_url())),
        });
        processes.push(focus);
    }
    let target = Target {
        homeserver_url: synapse.url().to_owned(),
        registration_secret: synapse.shared_secret().to_owned(),
        foci: targets,
        room: None,
    };
    Ok((
        LocalSetup {
            foci: processes,
            synapse,
        },
        target,
    ))
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
