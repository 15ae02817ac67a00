//! Media-plane configuration (the `[rtc]` section).

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Where the media plane listens and how it keeps calls alive.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Address the UDP sockets bind to.
    pub bind_ip: IpAddr,
    /// Addresses put in ICE candidates (NAT 1:1); empty means the bound ones.
    pub public_ips: Vec<IpAddr>,
    /// First UDP port; event loop `i` uses `udp_port + i` (0 picks free ports, for tests).
    pub udp_port: u16,
    /// Number of event loops (one per core); 0 means one per available core.
    pub event_loops: usize,
    /// Seconds between data-channel pings.
    pub keepalive_interval_secs: u64,
    /// Seconds without a pong after which a call is hung up with `keep_alive_timeout`.
    pub keepalive_timeout_secs: u64,
    /// Seconds a call may take to connect before it is hung up: with `ice_timeout` if ICE/DTLS
    /// is not up by then, with `unknown_error` if the signalling data channel is not open.
    pub connect_timeout_secs: u64,
    /// Minimum milliseconds between keyframe requests to one publisher track.
    pub keyframe_request_interval_ms: u64,
    /// Whether datagrams to one address sent together are joined with UDP generic
    /// segmentation offload (`UDP_SEGMENT`, Linux 4.18+; off by itself where the kernel or
    /// the device refuses it).
    pub udp_gso: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            public_ips: Vec::new(),
            udp_port: 7882,
            event_loops: 0,
            keepalive_interval_secs: 10,
            keepalive_timeout_secs: 30,
            connect_timeout_secs: 30,
            keyframe_request_interval_ms: 500,
            udp_gso: true,
        }
    }
}

impl MediaConfig {
    /// The number of event loops to run.
    pub fn loops(&self) -> usize {
        if self.event_loops > 0 {
            return self.event_loops;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }

    /// The data-channel ping interval.
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive_interval_secs.max(1))
    }

    /// How long pongs may be missing.
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs.max(1))
    }

    /// How long a call may take to connect.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }

    /// Minimum time between keyframe requests to one publisher track.
    pub fn keyframe_request_interval(&self) -> Duration {
        Duration::from_millis(self.keyframe_request_interval_ms)
    }

    /// The addresses to advertise in ICE candidates.
    pub fn candidate_ips(&self) -> Vec<IpAddr> {
        if !self.public_ips.is_empty() {
            return self.public_ips.clone();
        }
        if !self.bind_ip.is_unspecified() {
            return vec![self.bind_ip];
        }
        // Bound to every interface: advertise each non-loopback IPv4 address, or loopback if
        // that is all there is.
        let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
            .map(|ifaces| {
                ifaces
                    .into_iter()
                    .map(|iface| iface.ip())
                    .filter(|ip| ip.is_ipv4() && !ip.is_loopback())
                    .collect()
            })
            .unwrap_or_default();
        if ips.is_empty() {
            ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        ips
    }
}
