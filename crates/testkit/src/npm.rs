//! npm packages for the interop tests that run released JavaScript clients (installed from the
//! npm registry with `npm ci`, pinned by each test's `package-lock.json`).

use anyhow::{Context, Result, ensure};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// How long `npm ci` may take.
const INSTALL: Duration = Duration::from_secs(300);

/// The version `tool --version` prints; fails (the interop tests fail, not skip) when the tool
/// cannot be run.
pub async fn require(tool: &str) -> Result<String> {
    let output = Command::new(tool)
        .arg("--version")
        .output()
        .await
        .with_context(|| format!("`{tool}` is required by this test but could not be run"))?;
    ensure!(output.status.success(), "`{tool} --version` failed");
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs `npm ci` in `dir` unless every package in `packages` is installed there already
/// (`node_modules/<package>/package.json` exists); fails with npm's output when it fails or
/// takes over 5 minutes.
pub async fn install(dir: &Path, packages: &[&str]) -> Result<()> {
    if packages.iter().all(|package| {
        dir.join("node_modules")
            .join(package)
            .join("package.json")
            .exists()
    }) {
        return Ok(());
    }
    require("npm").await?;
    let child = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(INSTALL, child)
        .await
        .context("npm ci timed out")??;
    ensure!(
        output.status.success(),
        "npm ci failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
