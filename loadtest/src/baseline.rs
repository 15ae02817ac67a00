//! The kernel's own fan-out on this machine: a loop that receives one UDP packet and sends it to
//! N loopback sockets, with no SRTP and no logic. The focus's packets per CPU-second are
//! reported as a fraction of this loop's.
//!
//! On loopback, delivering a datagram runs in the sender's context, and so does waking a
//! receiver that sleeps on the socket. The simulated devices wait on theirs (one tokio task
//! each, in epoll), so every datagram the focus sends wakes one; [`Sinks::Waiting`] gives the
//! relay receivers of that shape. [`Sinks::Polled`] drains the sinks without ever sleeping on
//! them, so the relay wakes nobody: a cheaper send than the focus can have here.

use crate::procstat;
use anyhow::{Context, Result};
use serde::Serialize;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How the baseline runs.
#[derive(Clone, Copy, Debug)]
pub struct BaselineOptions {
    /// Sockets each received packet is sent to.
    pub fanout: usize,
    /// UDP payload size.
    pub packet_size: usize,
    /// How long the relay runs.
    pub duration: Duration,
    /// Packets per second the source sends to the relay.
    pub input_pps: u64,
    /// How the sinks receive.
    pub sinks: Sinks,
}

/// How the baseline's sinks receive (see the module's docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Sinks {
    /// One thread drains every sink in turn without waiting on them (the default: the
    /// cheapest send, the baseline the README's ratios are measured against).
    #[default]
    Polled,
    /// Each sink is a task that waits on its socket in epoll, as a simulated device's does.
    Waiting,
}

impl Default for BaselineOptions {
    fn default() -> Self {
        Self {
            fanout: 100,
            packet_size: 1200,
            duration: Duration::from_secs(5),
            input_pps: 20_000,
            sinks: Sinks::Polled,
        }
    }
}

/// What the baseline measured.
#[derive(Clone, Debug, Serialize)]
pub struct BaselineResult {
    /// Sockets each packet went to.
    pub fanout: usize,
    /// UDP payload size.
    pub packet_size: usize,
    /// How long the relay ran, seconds.
    pub seconds: f64,
    /// Packets the relay received.
    pub packets_in: u64,
    /// Packets the relay sent.
    pub packets_out: u64,
    /// The relay thread's CPU time, seconds.
    pub relay_cpu_seconds: f64,
    /// Packets sent per second of the relay's CPU time.
    pub packets_per_cpu_second: f64,
    /// Packets sent per wall-clock second.
    pub packets_per_second: f64,
    /// Packets the sinks received.
    pub packets_delivered: u64,
    /// How the sinks received.
    pub sinks: Sinks,
}

/// Pins the calling thread to one CPU, if there is such a CPU (best effort).
fn pin_to(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return;
    }
    // SAFETY: the cpu_set_t is zero-initialised and only touched through the libc macros.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs the fan-out loop and returns what it did; the relay runs on CPU 0, the source and the
/// sinks on CPU 1 (on a machine with more than one CPU).
pub fn run(options: BaselineOptions) -> Result<BaselineResult> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let relay = UdpSocket::bind(loopback).context("binding the relay socket")?;
    relay.set_read_timeout(Some(Duration::from_millis(50)))?;
    let relay_addr = relay.local_addr()?;
    let mut sinks = Vec::with_capacity(options.fanout);
    for _ in 0..options.fanout.max(1) {
        let sink = UdpSocket::bind(loopback).context("binding a sink socket")?;
        sink.set_nonblocking(true)?;
        sinks.push(sink);
    }
    let sink_addrs: Vec<SocketAddr> = sinks
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<_>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));

    let sink_thread = {
        let stop = stop.clone();
        let delivered = delivered.clone();
        match options.sinks {
            Sinks::Waiting => std::thread::spawn(move || wait_on(sinks, &stop, &delivered)),
            Sinks::Polled => std::thread::spawn(move || poll(sinks, &stop, &delivered)),
        }
    };

    // Source: paced input to the relay.
    let source_thread = {
        let stop = stop.clone();
        let size = options.packet_size;
        let pps = options.input_pps.max(1);
        std::thread::spawn(move || -> Result<()> {
            pin_to(1);
            let source = UdpSocket::bind(loopback)?;
            let payload = vec![0x5au8; size];
            let start = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
                while sent < due {
                    let _ = source.send_to(&payload, relay_addr);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(())
        })
    };

    // Relay: this thread.
    let relay_thread = {
        let stop = stop.clone();
        let duration = options.duration;
        std::thread::spawn(move || {
            pin_to(0);
            let mut buf = [0u8; 2048];
            let (mut packets_in, mut packets_out) = (0u64, 0u64);
            let cpu0 = procstat::thread_cpu_seconds();
            let start = Instant::now();
            while start.elapsed() < duration {
                let Ok(n) = relay.recv(&mut buf) else {
                    continue;
                };
                packets_in += 1;
                for addr in &sink_addrs {
                    if relay.send_to(&buf[..n], addr).is_ok() {
                        packets_out += 1;
                    }
                }
            }
            let cpu = procstat::thread_cpu_seconds() - cpu0;
            stop.store(true, Ordering::Relaxed);
            (packets_in, packets_out, cpu, start.elapsed())
        })
    };
    let relayed = relay_thread.join();
    stop.store(true, Ordering::Relaxed);
    let _ = sink_thread.join();
    let _ = source_thread.join();
    let (packets_in, packets_out, cpu, elapsed) =
        relayed.map_err(|_| anyhow::anyhow!("the relay thread panicked"))?;
    let seconds = elapsed.as_secs_f64();
    Ok(BaselineResult {
        fanout: options.fanout,
        packet_size: options.packet_size,
        seconds,
        packets_in,
        packets_out,
        relay_cpu_seconds: cpu,
        packets_per_cpu_second: if cpu > 0.0 {
            packets_out as f64 / cpu
        } else {
            0.0
        },
        packets_per_second: packets_out as f64 / seconds.max(1e-9),
        packets_delivered: delivered.load(Ordering::Relaxed),
        sinks: options.sinks,
    })
}

/// Drains every sink round-robin until `stop`, sleeping between rounds that found nothing, so
/// the relay's sends are never refused for a full receive buffer more than a real receiver
/// would cause; counts what arrived into `delivered`.
fn poll(sinks: Vec<UdpSocket>, stop: &AtomicBool, delivered: &AtomicU64) {
    pin_to(1);
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let mut got = 0u64;
        for sink in &sinks {
            while sink.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        delivered.fetch_add(got, Ordering::Relaxed);
        if got == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Receives on every sink from a task of its own that waits in epoll (a current-thread tokio
/// runtime, as the simulated devices' sockets are served) until `stop`; counts what arrived
/// into `delivered`.
fn wait_on(sinks: Vec<UdpSocket>, stop: &AtomicBool, delivered: &AtomicU64) {
    pin_to(1);
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let count = Arc::new(AtomicU64::new(0));
        for sink in sinks {
            let Ok(sink) = tokio::net::UdpSocket::from_std(sink) else {
                continue;
            };
            let count = count.clone();
            tasks.spawn(async move {
                let mut buf = [0u8; 2048];
                while sink.recv(&mut buf).await.is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tasks.abort_all();
        delivered.fetch_add(count.load(Ordering::Relaxed), Ordering::Relaxed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_fanout_moves_packets() {
        for sinks in [Sinks::Polled, Sinks::Waiting] {
            let result = run(BaselineOptions {
                fanout: 4,
                packet_size: 200,
                duration: Duration::from_millis(300),
                // Few enough that a sink socket's buffer holds all it gets even if the sinks'
                // thread is starved for the whole run.
                input_pps: 500,
                sinks,
            })
            .expect("baseline runs");
            assert!(result.packets_in > 0, "{sinks:?}");
            assert_eq!(result.packets_out, result.packets_in * 4, "{sinks:?}");
            assert!(result.packets_per_cpu_second > 0.0, "{sinks:?}");
            // The sinks get what was sent, but for what was in flight when they stopped.
            assert!(
                result.packets_delivered * 2 >= result.packets_out,
                "{sinks:?}: {} of {} delivered",
                result.packets_delivered,
                result.packets_out
            );
        }
    }
}
