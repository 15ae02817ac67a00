//! Graceful drain: the first SIGTERM (or SIGINT) stops new calls and waits for the running ones;
//! a second one exits at once.

use cascade_media::MediaPlane;
use cascade_protocol::event::reason;
use cascade_signalling::Status;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

/// Hangup reason for the calls still running when the drain times out.
pub const DRAIN_HANGUP_REASON: &str = reason::USER_HANGUP;
/// How often the drain looks at the number of calls.
const POLL: Duration = Duration::from_millis(200);
/// How often a long drain logs how many calls are left.
const PROGRESS: Duration = Duration::from_secs(30);
/// How long the event loops get to hang up every call at the drain timeout.
const HANG_UP_WAIT: Duration = Duration::from_secs(5);
/// Time for the last hang-ups to reach the signalling side before it stops.
const SETTLE: Duration = Duration::from_millis(200);

/// SIGTERM and SIGINT, whichever comes.
struct Signals {
    terminate: Option<Signal>,
    interrupt: Option<Signal>,
}

impl Signals {
    fn new() -> Self {
        let open = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(err) => {
                tracing::warn!(%err, signal = name, "cannot listen for the signal");
                None
            }
        };
        Self {
            terminate: open(SignalKind::terminate(), "SIGTERM"),
            interrupt: open(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn next(&mut self) {
        async fn one(signal: &mut Option<Signal>) {
            match signal {
                Some(signal) => {
                    if signal.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.terminate) => {}
            _ = one(&mut self.interrupt) => {}
        }
    }
}

/// Listens for SIGTERM/SIGINT from now on; the returned future resolves when the focus should
/// stop: right away if no call is running, else once the calls ended or were hung up after
/// `timeout`. Meanwhile `status` reports draining (not ready, new invites refused). A second
/// signal exits the process at once with status 0.
pub fn on_signals(
    media: Arc<MediaPlane>,
    status: Arc<Status>,
    timeout: Duration,
) -> impl Future<Output = ()> {
    let mut signals = Signals::new();
    async move {
        signals.next().await;
        status.set_draining(true);
        let calls = media.participants();
        if calls == 0 {
            tracing::info!("shutting down: no calls running");
            return;
        }
        tracing::info!(
            calls,
            timeout_secs = timeout.as_secs(),
            "draining: refusing new invites, waiting for running calls to end (signal again to exit now)"
        );
        let deadline = Instant::now() + timeout;
        let mut progress = Instant::now() + PROGRESS;
        loop {
            tokio::select! {
                _ = signals.next() => {
                    tracing::warn!(calls = media.participants(), "second signal: exiting without waiting for calls");
                    std::process::exit(0);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        calls = media.participants(),
                        reason = DRAIN_HANGUP_REASON,
                        "drain timeout: hanging up the remaining calls"
                    );
                    media.hang_up_all(DRAIN_HANGUP_REASON, HANG_UP_WAIT).await;
                    break;
                }
                _ = tokio::time::sleep(POLL) => {
                    let calls = media.participants();
                    if calls == 0 {
                        tracing::info!("drained: every call ended");
                        break;
                    }
                    if Instant::now() >= progress {
                        tracing::info!(calls, "draining: calls still running");
                        progress = Instant::now() + PROGRESS;
                    }
                }
            }
        }
        tokio::time::sleep(SETTLE).await;
        tracing::info!("shutting down");
    }
}
