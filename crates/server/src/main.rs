//! `cascade`: the Matrix focus. Reads its configuration, starts the media plane, the HTTP
//! endpoint and the signalling loop, and runs until SIGINT or SIGTERM, after which it drains:
//! it refuses new invites and reports not-ready, waits up to `[server] drain_timeout_secs` for
//! the running calls to end, hangs up the rest and exits 0. A second signal exits at once.

mod config;
mod drain;
mod http;
mod log_events;
mod metrics;

use anyhow::Context;
use cascade_media::MediaPlane;
use cascade_signalling::Status;
use clap::Parser;
use config::{Config, LogFormat};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// jemalloc instead of glibc's malloc. Under churn (calls joining and leaving thousands of
/// times) glibc's per-thread arenas kept the memory freed after each peak of calls, so the
/// focus's RSS crept up without a leak: after 2,000 cycles `malloc_trim` gave back 3.9 of
/// 21.5 MiB, and a debug build's 500 cycles ended anywhere from +1 % to +12 % RSS. jemalloc
/// returns freed pages to the system after a short decay, so RSS follows what is in use
/// (README, "Faults survived": churn).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (its `malloc_conf`, read once at start): one background thread gives
/// freed pages back within about a second, whether or not the process allocates meanwhile.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
    config: Option<PathBuf>,
    /// Only check a configuration file (this one, or `--config`'s) and print what is wrong.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "")]
    check_config: Option<PathBuf>,
}

fn init_logs(config: &config::LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(log_events::CountingLayer);
    match config.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .init(),
        // Colour codes only where a person reads the log on a terminal, never in files or pipes.
        LogFormat::Human => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .init(),
    }
}

/// `--check-config`: prints `FILE: ok` or every problem, and exits 0 or 1.
fn check_config(path: &std::path::Path) -> std::process::ExitCode {
    match Config::check(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            std::process::ExitCode::SUCCESS
        }
        Err(problems) => {
            println!("{}: {} problem(s)", path.display(), problems.len());
            for problem in problems {
                println!("  - {problem}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    if let Some(path) = &cli.check_config {
        let path = match (path.as_os_str().is_empty(), &cli.config) {
            (false, _) => path.clone(),
            (true, Some(config)) => config.clone(),
            (true, None) => anyhow::bail!("--check-config needs a FILE (or --config FILE)"),
        };
        return Ok(check_config(&path));
    }
    let path = cli
        .config
        .context("--config FILE (or CASCADE_CONFIG) is required")?;
    let config = Config::load(&path)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(config))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Passes each media-plane message to the LiveKit session whose call it concerns, or else to
/// the Matrix signalling side; ends when either side is gone. It never waits for the Matrix
/// side: a message for it that does not fit is dropped (as the media plane drops what does
/// not fit its own channel), so that a slow homeserver never holds LiveKit sessions' offers up.
async fn route_from_media(
    mut from_media: mpsc::Receiver<cascade_protocol::FromMedia>,
    bridge: cascade_livekit::endpoint::MediaBridge,
    to_signalling: mpsc::Sender<cascade_protocol::FromMedia>,
) {
    while let Some(message) = from_media.recv().await {
        let Some(message) = bridge.deliver(message) else {
            continue;
        };
        match to_signalling.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                tracing::warn!(call = %message.call(), "signalling channel full; message dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
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
    let livekit = cascade_livekit::Stats::default();
    // The media plane's messages for LiveKit sessions' calls go to those sessions, the rest
    // to the Matrix signalling side.
    let (from_media_rx, bridge) = if config.livekit.enabled {
        let bridge =
            cascade_livekit::endpoint::MediaBridge::new(to_media.clone(), livekit.signal.clone());
        let (to_signalling, to_signalling_rx) = mpsc::channel(4096);
        tokio::spawn(route_from_media(
            from_media_rx,
            bridge.clone(),
            to_signalling,
        ));
        (to_signalling_rx, Some(bridge))
    } else {
        (from_media_rx, None)
    };
    if config.livekit.enabled {
        let listener = tokio::net::TcpListener::bind(config.livekit.listen)
            .await
            .with_context(|| format!("binding [livekit] listen {}", config.livekit.listen))?;
        let router = cascade_livekit::service::router(
            config.livekit.clone(),
            cascade_signalling::http::client()?,
            livekit.tokens.clone(),
        )
        .merge(cascade_livekit::endpoint::router(
            config.livekit.clone(),
            livekit.signal.clone(),
            bridge,
        ));
        tracing::info!(listen = %config.livekit.listen, "token service and LiveKit signalling listening");
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::error!(%err, "token service failed");
            }
        });
    }
    let http = tokio::spawn(http::serve(
        config.http.listen,
        media.clone(),
        status.clone(),
        livekit,
    ));
    let shutdown = drain::on_signals(media.clone(), status.clone(), config.server.drain_timeout());
    let signalling = cascade_signalling::run(
        config.matrix,
        config.conference,
        to_media,
        from_media_rx,
        status,
        shutdown,
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
