//! Starts a throwaway Synapse on 127.0.0.1 for scripts and the demo.
//!
//! Prints one JSON line `{"url": ..., "server_name": ..., "shared_secret": ...}`
//! on stdout once the homeserver answers, then runs until SIGINT, SIGTERM or
//! stdin closing. Pass `--ignore-stdin` when stdin is `/dev/null` (for example
//! when started in the background by a non-interactive shell). `--install-only`
//! installs Synapse's virtualenv (from PyPI, under the target directory) and exits,
//! for scripts that later run Synapse where PyPI cannot be reached (a network
//! namespace).

use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context, Result, bail};
use cascade_testkit::Synapse;
use tokio::io::AsyncReadExt as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    const USAGE: &str = "usage: cascade-synapse [--ignore-stdin | --install-only]";
    let mut watch_stdin = true;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--ignore-stdin" => watch_stdin = false,
            "--install-only" => {
                let python = tokio::task::spawn_blocking(cascade_testkit::ensure_installed)
                    .await
                    .context("installing Synapse")??;
                println!("{}", python.display());
                return Ok(());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} ({USAGE})"),
        }
    }

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut synapse = Synapse::start().await?;

    let line = serde_json::json!({
        "url": synapse.url(),
        "server_name": synapse.server_name(),
        "shared_secret": synapse.shared_secret(),
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("writing to stdout")?;
    stdout.flush().context("flushing stdout")?;
    drop(stdout);

    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            result.context("waiting for SIGINT")?;
            tracing::info!("SIGINT received");
        }
        _ = sigterm.recv() => tracing::info!("SIGTERM received"),
        () = stdin_closed(watch_stdin) => tracing::info!("stdin closed"),
    }

    synapse.stop().await
}

/// Resolves once stdin reaches end-of-file or fails; never if `enabled` is false.
async fn stdin_closed(enabled: bool) {
    if !enabled {
        return std::future::pending().await;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 1024];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}
