//! Cascade's media plane: per-core event loops that own the UDP sockets and drive the peer
//! connections (webrtc-rs's sans-IO `rtc` core), calling the forwarding crate inline.
//!
//! Each loop ([`shard`]) binds one UDP port and serves whole conferences: a new conference is
//! placed on the loop serving the fewest ([`placement`]), so a packet never leaves the thread
//! it arrived on and conferences spread over the cores. Control
//! messages from the signalling side reach a loop through a channel; media never does.

pub mod admission;
pub mod batch;
pub mod conference;
pub mod config;
pub mod description;
pub mod downlink;
pub mod egress;
pub mod error;
pub mod interceptor;
pub mod link_socket;
pub mod participant;
pub mod placement;
pub mod rewrite;
pub mod shard;
pub mod socket;
pub mod stats;

pub use config::MediaConfig;
pub use error::MediaError;
pub use stats::ShardStats;

use cascade_protocol::{FromMedia, ToMedia, conference_key};
use placement::Placement;
use shard::{Command, Shard};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A running event loop, seen from outside.
struct LoopHandle {
    commands: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    stats: Arc<ShardStats>,
}

/// The running media plane.
pub struct MediaPlane {
    loops: Vec<LoopHandle>,
    /// Which loop serves which conference.
    placement: Arc<Mutex<Placement>>,
}

impl MediaPlane {
    /// Binds one UDP socket per event loop and starts each loop on its own thread.
    pub fn start(
        config: MediaConfig,
        to_signalling: mpsc::Sender<FromMedia>,
    ) -> Result<Self, MediaError> {
        let config = Arc::new(config);
        let placement = Arc::new(Mutex::new(Placement::new(config.loops())));
        let mut loops = Vec::new();
        for index in 0..config.loops() {
            let port = if config.udp_port == 0 {
                0
            } else {
                config.udp_port.saturating_add(index as u16)
            };
            // Made non-blocking when registered with its loop (`socket::MediaSocket::new`).
            let socket = std::net::UdpSocket::bind(SocketAddr::new(config.bind_ip, port))?;
            let (receive_buffer, send_buffer) = batch::enlarge_buffers(&socket);
            batch::stamp_arrivals(&socket);
            let local_addr = socket.local_addr()?;
            let stats = Arc::new(ShardStats::default());
            let (commands, receiver) = mpsc::unbounded_channel();
            let (thread_config, thread_stats, thread_signal, thread_placement) = (
                config.clone(),
                stats.clone(),
                to_signalling.clone(),
                placement.clone(),
            );
            std::thread::Builder::new()
                .name(format!("cascade-media-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            tracing::error!(%err, "cannot start a media event loop");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let socket = match socket::MediaSocket::new(socket) {
                            Ok(socket) => socket,
                            Err(err) => {
                                tracing::error!(%err, "cannot register the media socket");
                                return;
                            }
                        };
                        let shard = Shard::new(
                            index,
                            thread_placement,
                            thread_config,
                            socket,
                            thread_signal,
                            thread_stats,
                        );
                        match shard {
                            Ok(shard) => shard.run(receiver).await,
                            Err(err) => tracing::error!(%err, "cannot start a media event loop"),
                        }
                    });
                })?;
            tracing::info!(
                %local_addr,
                index,
                receive_buffer,
                send_buffer,
                "media event loop started"
            );
            loops.push(LoopHandle {
                commands,
                local_addr,
                stats,
            });
        }
        Ok(Self { loops, placement })
    }

    /// The UDP addresses the event loops listen on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.loops.iter().map(|l| l.local_addr).collect()
    }

    /// The counters of every event loop.
    pub fn stats(&self) -> Vec<Arc<ShardStats>> {
        self.loops.iter().map(|l| l.stats.clone()).collect()
    }

    /// Passes a signalling message to the loop that owns (or will own) its call.
    ///
    /// An `Open`, `Link`, `Publisher` or `Subscriber` goes to the loop its conference is placed on; a
    /// LiveKit data packet (`Data`, not rare) to the loop of its conference if it is placed
    /// (else nowhere: the conference ended); other messages go to every loop, and only the one
    /// holding the call acts on them (they are rare, and this keeps the plane free of a shared
    /// call table).
    pub fn dispatch(&self, message: ToMedia) {
        if let ToMedia::Data {
            conf_id, room_id, ..
        } = &message
        {
            let key = conference_key(room_id.as_deref(), conf_id);
            let index = match self.placement.lock() {
                Ok(placement) => placement.find(&key),
                Err(poisoned) => poisoned.into_inner().find(&key),
            };
            if let Some(index) = index {
                let _ = self.loops[index].commands.send(Command::Signal(message));
            }
            return;
        }
        if let ToMedia::Open {
            conf_id, room_id, ..
        }
        | ToMedia::Link {
            conf_id, room_id, ..
        }
        | ToMedia::Publisher {
            conf_id, room_id, ..
        }
        | ToMedia::Subscriber {
            conf_id, room_id, ..
        } = &message
        {
            let key = conference_key(room_id.as_deref(), conf_id);
            let index = match self.placement.lock() {
                Ok(mut placement) => placement.place(&key),
                Err(poisoned) => poisoned.into_inner().place(&key),
            };
            let _ = self.loops[index].commands.send(Command::Signal(message));
            return;
        }
        for handle in &self.loops {
            let _ = handle.commands.send(Command::Signal(message.clone()));
        }
    }

    /// Runs the dispatcher: every message from the signalling side goes to its loop.
    pub async fn serve(self: Arc<Self>, mut to_media: mpsc::Receiver<ToMedia>) {
        while let Some(message) = to_media.recv().await {
            self.dispatch(message);
        }
    }

    /// Whether every event loop answers within `timeout`.
    pub async fn healthy(&self, timeout: Duration) -> bool {
        for handle in &self.loops {
            let (reply, answered) = oneshot::channel();
            if handle.commands.send(Command::Health(reply)).is_err() {
                return false;
            }
            if !matches!(tokio::time::timeout(timeout, answered).await, Ok(Ok(()))) {
                return false;
            }
        }
        true
    }

    /// Has every event loop count its conferences, peer-connection states, tracks and
    /// subscriptions into its [`ShardStats`]; returns whether all answered within `timeout`.
    pub async fn refresh_gauges(&self, timeout: Duration) -> bool {
        let mut answers = Vec::new();
        for handle in &self.loops {
            let (reply, answered) = oneshot::channel();
            if handle.commands.send(Command::Gauges(reply)).is_ok() {
                answers.push(answered);
            }
        }
        let all = answers.len() == self.loops.len();
        let waited = tokio::time::timeout(timeout, async {
            for answered in answers {
                let _ = answered.await;
            }
        })
        .await;
        all && waited.is_ok()
    }

    /// Hangs up every call on every event loop with `reason`, each reported to the signalling
    /// side as a [`FromMedia::Hangup`]; returns once every loop is done or `timeout` passed.
    pub async fn hang_up_all(&self, reason: &str, timeout: Duration) {
        let mut answers = Vec::new();
        for handle in &self.loops {
            let (reply, answered) = oneshot::channel();
            if handle
                .commands
                .send(Command::HangUpAll(reason.to_owned(), reply))
                .is_ok()
            {
                answers.push(answered);
            }
        }
        let _ = tokio::time::timeout(timeout, async {
            for answered in answers {
                let _ = answered.await;
            }
        })
        .await;
    }

    /// The number of calls on all event loops.
    pub fn participants(&self) -> u64 {
        self.loops
            .iter()
            .map(|l| {
                l.stats
                    .participants
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    }
}
