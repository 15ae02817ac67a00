//! Installing Synapse into a virtualenv under the workspace target directory.
//!
//! Installation is idempotent (a marker file is written after a successful
//! `pip install`) and safe across concurrent test processes (an advisory file
//! lock serialises installers; the OS releases it if a process dies).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tracing::{debug, info};

/// The Synapse version installed into the virtualenv.
pub const SYNAPSE_VERSION: &str = "1.163.2";

/// Environment variable naming an existing virtualenv to use instead of installing one.
const VENV_OVERRIDE_VAR: &str = "CASCADE_SYNAPSE_VENV";

/// Environment variable naming the Python used to create the virtualenv (default `python3`).
const PYTHON_VAR: &str = "CASCADE_PYTHON";

/// File inside the venv recording which Synapse version was installed successfully.
const MARKER_FILE: &str = ".cascade-synapse-installed";

/// Ensures the Synapse virtualenv exists and returns the path of its python.
///
/// Blocking: it may run `python3 -m venv` and `pip install`, which take a
/// minute or two on first use. Set `CASCADE_SYNAPSE_VENV` to use an existing
/// virtualenv that already has Synapse installed.
pub fn ensure_installed() -> Result<PathBuf> {
    if let Some(venv) = std::env::var_os(VENV_OVERRIDE_VAR) {
        let python = venv_python(Path::new(&venv));
        if !python.is_file() {
            bail!(
                "{VENV_OVERRIDE_VAR}={} does not contain bin/python",
                Path::new(&venv).display()
            );
        }
        return Ok(python);
    }

    let target = target_dir();
    let venv = target.join("synapse-venv");
    if is_installed(&venv) {
        return Ok(venv_python(&venv));
    }

    fs::create_dir_all(&target)
        .with_context(|| format!("creating target directory {}", target.display()))?;
    let lock_path = target.join("synapse-venv.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    debug!(lock = %lock_path.display(), "waiting for the Synapse install lock");
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;

    // Another process may have finished installing while we waited.
    if !is_installed(&venv) {
        install(&venv)?;
    }
    // The lock is released when `lock` is dropped here.
    Ok(venv_python(&venv))
}

/// The directory holding the venv: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let workspace = workspace.canonicalize().unwrap_or(workspace);
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace.join(dir),
        _ => workspace.join("target"),
    }
}

/// The python interpreter inside a virtualenv.
fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// Whether `venv` holds a completed install of [`SYNAPSE_VERSION`].
fn is_installed(venv: &Path) -> bool {
    let marker = fs::read_to_string(venv.join(MARKER_FILE)).unwrap_or_default();
    marker.trim() == SYNAPSE_VERSION && venv_python(venv).is_file()
}

/// Creates the virtualenv from scratch and installs Synapse into it.
fn install(venv: &Path) -> Result<()> {
    let started = Instant::now();
    info!(venv = %venv.display(), version = SYNAPSE_VERSION, "installing Synapse (first use; this takes a minute or two)");

    if venv.exists() {
        // Left over from an interrupted install.
        fs::remove_dir_all(venv)
            .with_context(|| format!("removing incomplete venv {}", venv.display()))?;
    }

    let python = std::env::var_os(PYTHON_VAR).unwrap_or_else(|| "python3".into());
    run(Command::new(&python).arg("-m").arg("venv").arg(venv))
        .context("creating the Synapse virtualenv")?;
    run(Command::new(venv_python(venv))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
        ])
        .arg(format!("matrix-synapse=={SYNAPSE_VERSION}")))
    .context("installing matrix-synapse with pip")?;

    fs::write(venv.join(MARKER_FILE), SYNAPSE_VERSION)
        .with_context(|| format!("writing install marker in {}", venv.display()))?;
    info!(elapsed = ?started.elapsed(), "Synapse installed");
    Ok(())
}

/// Runs a command to completion, failing with the tail of its output if it fails.
fn run(command: &mut Command) -> Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        bail!(
            "{command:?} failed with {}:\n{}",
            output.status,
            crate::server::tail(&text, 40)
        );
    }
    Ok(output)
}
