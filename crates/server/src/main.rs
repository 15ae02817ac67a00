//! `cascade`: the Matrix focus. Reads its configuration, starts the media plane, the HTTP
//! endpoint and the signalling loop, and runs until SIGINT or SIGTERM.

mod config;
mod http;

use anyhow::Context;
use cascade_media::MediaPlane;
use cascade_signalling::Status;
use clap::Parser;
use config::{Config, LogFormat};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "cascade",
    version,
    about = "A selective forwarding unit for Matrix group calls"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, env = "CASCADE_CONFIG")]
    config: PathBuf,
    /// Only check the configuration file and print what is wrong.
    #[arg(long)]
    check_config: bool,
}

fn init_logs(config: &config::LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(&cli.config)?;
    if cli.check_config {
        println!("{}: ok", cli.config.display());
        return Ok(());
    }
    init_logs(&config.log);

    let (to_media, to_media_rx) = mpsc::channel(1024);
    let (from_media, from_media_rx) = mpsc::channel(4096);
    let media = Arc::new(
        MediaPlane::start(config.rtc.clone(), from_media).context("starting the media plane")?,
    );
    for addr in media.local_addrs() {
        tracing::info!(%addr, "media listening");
    }
    tokio::spawn(media.clone().serve(to_media_rx));

    let status = Arc::new(Status::new());
    let http = tokio::spawn(http::serve(
        config.http.listen,
        media.clone(),
        status.clone(),
    ));
    let signalling = cascade_signalling::run(
        config.matrix,
        config.conference,
        to_media,
        from_media_rx,
        status,
        shutdown_signal(),
    );
    tokio::select! {
        result = signalling => result,
        result = http => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err.context("http endpoint failed")),
            Err(err) => Err(anyhow::anyhow!("http endpoint panicked: {err}")),
        },
    }
}
