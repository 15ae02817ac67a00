//! Counters of one event loop, readable from any thread without locks.

use cascade_telemetry::{CONNECT_BUCKETS, Histogram};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bucket upper bounds (seconds) of round-trip times between foci.
pub const RTT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Bucket upper bounds (bits per second) of subscribers' downlink estimates.
pub const ESTIMATE_BUCKETS: &[f64] = &[
    100e3, 200e3, 400e3, 800e3, 1.5e6, 3e6, 6e6, 12e6, 25e6, 50e6,
];
/// Causes of a change of a subscription's allowed layer, in the order of
/// [`ShardStats::allocation_changes`] (see [`cascade_forward::allocation::Change`]).
pub const ALLOCATION_CAUSES: [&str; 2] = ["congestion", "recovery"];

/// Index of audio in the per-kind arrays.
pub const KIND_AUDIO: usize = 0;
/// Index of video in the per-kind arrays.
pub const KIND_VIDEO: usize = 1;
/// Label of each index of the per-kind arrays.
pub const KINDS: [&str; 2] = ["audio", "video"];
/// Peer-connection states, in the order of [`ShardStats::peer_connections`].
pub const PC_STATES: [&str; 6] = [
    "new",
    "connecting",
    "connected",
    "disconnected",
    "failed",
    "closed",
];
/// The index in [`HELD_BACK`] of a reason the forwarding core holds a packet back.
pub(crate) fn held_back_index(reason: cascade_forward::DropReason) -> usize {
    use cascade_forward::DropReason;
    match reason {
        DropReason::WaitingForKeyframe => 0,
        DropReason::OtherLayer => 1,
        DropReason::Paused => 2,
        DropReason::TooLate => 3,
    }
}

/// Reasons the forwarding core holds a packet back from a subscriber, in the order of
/// [`ShardStats::held_back`] (`other` is kept for the series' continuity and stays 0).
pub const HELD_BACK: [&str; 5] = [
    "waiting_for_keyframe",
    "other_layer",
    "paused",
    "too_late",
    "other",
];
/// Spatial layers counted per published track (0 when the track has no simulcast).
pub const LAYERS: usize = 3;

/// Counters one event loop keeps.
#[derive(Debug)]
pub struct ShardStats {
    /// Datagrams received.
    pub datagrams_in: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Datagrams sent joined with others to the same address in one message (UDP GSO).
    pub segmented_datagrams_out: AtomicU64,
    /// RTP packets forwarded to subscribers.
    pub forwarded_packets: AtomicU64,
    /// RTP payload bytes forwarded to subscribers.
    pub forwarded_bytes: AtomicU64,
    /// Forwarded packets the subscriber's sender refused.
    pub dropped_packets: AtomicU64,
    /// RTP packets of tracks nobody subscribes to.
    pub unrouted_packets: AtomicU64,
    /// RTP packets of a layer no subscription receives (dropped on arrival).
    pub unwatched_packets: AtomicU64,
    /// Layers of subscribed tracks arriving that no subscription receives, at the last
    /// layer review.
    pub paused_layers: AtomicU64,
    /// RTP packets of a layer that arrived again (not forwarded again).
    pub duplicate_packets: AtomicU64,
    /// Datagrams from addresses that belong to no call.
    pub unknown_source: AtomicU64,
    /// (S)RTP and (S)RTCP datagrams dropped because their call already sends as many distinct
    /// SSRCs as it may (see [`crate::admission`]).
    pub ssrc_limit: AtomicU64,
    /// (S)RTP and (S)RTCP datagrams the WebRTC stack refused: failed SRTP authentication, a
    /// replay, or a malformed packet.
    pub srtp_refused: AtomicU64,
    /// RTP packets from an SSRC the stack bound to none of the call's tracks (a new SSRC on a
    /// known media section, say); the stack drops them.
    pub unbound_ssrc: AtomicU64,
    /// Socket send errors.
    pub send_errors: AtomicU64,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests: AtomicU64,
    /// Data-channel messages that could not be parsed.
    pub bad_channel_messages: AtomicU64,
    /// Subscriptions to tracks that do not exist.
    pub bad_subscriptions: AtomicU64,
    /// LiveKit data packets not sent to a recipient: its channel not open, or too much already
    /// waiting on it.
    pub data_dropped: AtomicU64,
    /// Offers that could not be answered.
    pub failed_offers: AtomicU64,
    /// Messages to the signalling side dropped because its channel was full.
    pub signal_overflow: AtomicU64,
    /// Calls currently in this loop.
    pub participants: AtomicU64,
    /// RTP packets forwarded to subscribers, by kind ([`KIND_AUDIO`], [`KIND_VIDEO`]).
    pub forwarded_packets_by_kind: [AtomicU64; 2],
    /// RTP payload bytes forwarded to subscribers, by kind.
    pub forwarded_bytes_by_kind: [AtomicU64; 2],
    /// Packets the forwarding core held back from a subscriber, by reason ([`HELD_BACK`]).
    pub held_back: [AtomicU64; HELD_BACK.len()],
    /// Keyframe requests (PLI or FIR) received from subscribers.
    pub keyframe_requests_in: AtomicU64,
    /// NACKs (generic transport feedback) received from subscribers.
    pub nacks_in: AtomicU64,
    /// Packets retransmitted in answer to NACKs by the focus's own cache (issue 3; 0 until then).
    pub retransmitted_packets: AtomicU64,
    /// Simulcast layer switches of subscriptions (issue 3; 0 until then).
    pub layer_switches: AtomicU64,
    /// Time from the call's invite reaching this loop to the first media packet from the device.
    pub first_packet_latency: Histogram,
    /// Conferences with at least one call in this loop (refreshed at scrape time).
    pub conferences: AtomicU64,
    /// Peer connections by state, in [`PC_STATES`] order (refreshed at scrape time).
    pub peer_connections: [AtomicU64; PC_STATES.len()],
    /// Published tracks by kind and spatial layer (refreshed at scrape time).
    pub published_tracks: [[AtomicU64; LAYERS]; 2],
    /// Track subscriptions being forwarded (refreshed at scrape time).
    pub subscriptions: AtomicU64,
    /// Calls that are links with other foci (refreshed at scrape time).
    pub links: AtomicU64,
    /// Links whose peer connection is connected (refreshed at scrape time).
    pub links_connected: AtomicU64,
    /// Conferences with at least one link in this loop (refreshed at scrape time).
    pub linked_conferences: AtomicU64,
    /// Round-trip times to the other focus of links, from the reception reports it sends
    /// for the streams forwarded to it.
    pub link_rtt: Histogram,
    /// RTP packets and payload bytes received over links from other foci.
    pub link_packets_in: AtomicU64,
    /// Payload bytes of [`ShardStats::link_packets_in`].
    pub link_bytes_in: AtomicU64,
    /// RTP packets forwarded into links to other foci.
    pub link_packets_out: AtomicU64,
    /// Payload bytes of [`ShardStats::link_packets_out`].
    pub link_bytes_out: AtomicU64,
    /// Retransmissions not sent because the subscriber's downlink budget for them was spent
    /// (see [`crate::downlink::Downlink::may_retransmit`]).
    pub retransmissions_refused: AtomicU64,
    /// Transport-cc feedback packets received from subscribers.
    pub transport_cc_in: AtomicU64,
    /// Of those, refused: reporting on more packets than a downlink remembers.
    pub transport_cc_refused: AtomicU64,
    /// Probe packets sent to subscribers (recent packets again over RTX, to find out whether
    /// a downlink carries a higher layer).
    pub probe_packets: AtomicU64,
    /// REMB packets received from subscribers.
    pub remb_in: AtomicU64,
    /// Subscribers' downlink estimates (bits per second), one observation per subscriber with
    /// an estimate at each layer review.
    pub downlink_estimate: Histogram,
    /// Changes of a subscription's allowed layer, by cause ([`ALLOCATION_CAUSES`]).
    pub allocation_changes: [AtomicU64; ALLOCATION_CAUSES.len()],
    /// Subscriptions held below the layer their size asks for by their subscriber's downlink
    /// (refreshed at each layer review).
    pub limited_subscriptions: AtomicU64,
}

impl Default for ShardStats {
    fn default() -> Self {
        let zero = || AtomicU64::new(0);
        Self {
            datagrams_in: zero(),
            bytes_in: zero(),
            datagrams_out: zero(),
            bytes_out: zero(),
            forwarded_packets: zero(),
            forwarded_bytes: zero(),
            dropped_packets: zero(),
            unrouted_packets: zero(),
            unwatched_packets: zero(),
            paused_layers: zero(),
            duplicate_packets: zero(),
            unknown_source: zero(),
            ssrc_limit: zero(),
            srtp_refused: zero(),
            unbound_ssrc: zero(),
            send_errors: zero(),
            segmented_datagrams_out: zero(),
            keyframe_requests: zero(),
            bad_channel_messages: zero(),
            bad_subscriptions: zero(),
            data_dropped: zero(),
            failed_offers: zero(),
            signal_overflow: zero(),
            participants: zero(),
            forwarded_packets_by_kind: std::array::from_fn(|_| zero()),
            forwarded_bytes_by_kind: std::array::from_fn(|_| zero()),
            held_back: std::array::from_fn(|_| zero()),
            keyframe_requests_in: zero(),
            nacks_in: zero(),
            retransmitted_packets: zero(),
            layer_switches: zero(),
            first_packet_latency: Histogram::new(CONNECT_BUCKETS),
            conferences: zero(),
            peer_connections: std::array::from_fn(|_| zero()),
            published_tracks: std::array::from_fn(|_| std::array::from_fn(|_| zero())),
            subscriptions: zero(),
            links: zero(),
            links_connected: zero(),
            linked_conferences: zero(),
            link_rtt: Histogram::new(RTT_BUCKETS),
            link_packets_in: zero(),
            link_bytes_in: zero(),
            link_packets_out: zero(),
            link_bytes_out: zero(),
            transport_cc_in: zero(),
            transport_cc_refused: zero(),
            retransmissions_refused: zero(),
            probe_packets: zero(),
            remb_in: zero(),
            downlink_estimate: Histogram::of_values(ESTIMATE_BUCKETS),
            allocation_changes: std::array::from_fn(|_| zero()),
            limited_subscriptions: zero(),
        }
    }
}

/// Scrape-time counts an event loop takes of its own state (see [`ShardStats::store_gauges`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Conferences with at least one call.
    pub conferences: u64,
    /// Peer connections by state, in [`PC_STATES`] order.
    pub peer_connections: [u64; PC_STATES.len()],
    /// Published tracks by kind and spatial layer.
    pub published_tracks: [[u64; LAYERS]; 2],
    /// Track subscriptions being forwarded.
    pub subscriptions: u64,
    /// Calls that are links with other foci (issue 11).
    pub links: u64,
    /// Links whose peer connection is connected.
    pub links_connected: u64,
    /// Conferences with at least one link.
    pub linked_conferences: u64,
}

impl ShardStats {
    pub(crate) fn count_received(&self, len: usize) {
        self.datagrams_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(len as u64, Relaxed);
    }
    pub(crate) fn count_sent(&self, len: usize) {
        self.count_sent_many(1, len as u64);
    }
    /// Counts `datagrams` sent, `bytes` in all: once per batch, since an atomic add per
    /// datagram was a measurable share of the packet path's time (`perf`, README "Where the
    /// focus's time goes").
    pub(crate) fn count_sent_many(&self, datagrams: u64, bytes: u64) {
        self.datagrams_out.fetch_add(datagrams, Relaxed);
        self.bytes_out.fetch_add(bytes, Relaxed);
    }
    pub(crate) fn count_link_in(&self, payload_len: usize) {
        self.link_packets_in.fetch_add(1, Relaxed);
        self.link_bytes_in.fetch_add(payload_len as u64, Relaxed);
    }
    pub(crate) fn count_link_out(&self, packets: u64, payload_bytes: u64) {
        self.link_packets_out.fetch_add(packets, Relaxed);
        self.link_bytes_out.fetch_add(payload_bytes, Relaxed);
    }
    /// Counts `packets` of kind `kind` forwarded, `payload_bytes` of payload in all: once per
    /// incoming packet for all its subscribers (see [`ShardStats::count_sent_many`]).
    pub(crate) fn count_forwarded(&self, kind: usize, packets: u64, payload_bytes: u64) {
        if packets == 0 {
            return;
        }
        self.forwarded_packets.fetch_add(packets, Relaxed);
        self.forwarded_bytes.fetch_add(payload_bytes, Relaxed);
        if let (Some(counter), Some(bytes)) = (
            self.forwarded_packets_by_kind.get(kind),
            self.forwarded_bytes_by_kind.get(kind),
        ) {
            counter.fetch_add(packets, Relaxed);
            bytes.fetch_add(payload_bytes, Relaxed);
        }
    }
    /// Counts packets held back from subscribers, `counts[i]` for reason [`HELD_BACK`]`[i]`
    /// (see [`held_back_index`]): once per incoming packet for all its subscribers.
    pub(crate) fn count_held_back(&self, counts: &[u64; HELD_BACK.len()]) {
        for (cell, &n) in self.held_back.iter().zip(counts) {
            if n > 0 {
                cell.fetch_add(n, Relaxed);
            }
        }
    }
    pub(crate) fn count_keyframe_request_in(&self) {
        self.keyframe_requests_in.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_retransmitted(&self) {
        self.retransmitted_packets.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_nack_in(&self) {
        self.nacks_in.fetch_add(1, Relaxed);
    }
    /// Stores the scrape-time counts an event loop took of its state.
    pub fn store_gauges(&self, gauges: &Gauges) {
        self.conferences.store(gauges.conferences, Relaxed);
        for (cell, n) in self.peer_connections.iter().zip(gauges.peer_connections) {
            cell.store(n, Relaxed);
        }
        for (cells, ns) in self.published_tracks.iter().zip(gauges.published_tracks) {
            for (cell, n) in cells.iter().zip(ns) {
                cell.store(n, Relaxed);
            }
        }
        self.subscriptions.store(gauges.subscriptions, Relaxed);
        self.links.store(gauges.links, Relaxed);
        self.links_connected.store(gauges.links_connected, Relaxed);
        self.linked_conferences
            .store(gauges.linked_conferences, Relaxed);
    }
    pub(crate) fn count_transport_cc_in(&self) {
        self.transport_cc_in.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_retransmission_refused(&self) {
        self.retransmissions_refused.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_probe(&self) {
        self.probe_packets.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_transport_cc_refused(&self) {
        self.transport_cc_refused.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_remb_in(&self) {
        self.remb_in.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_allocation_change(&self, change: cascade_forward::allocation::Change) {
        let index = match change {
            cascade_forward::allocation::Change::Congestion => 0,
            cascade_forward::allocation::Change::Recovery => 1,
        };
        if let Some(cell) = self.allocation_changes.get(index) {
            cell.fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn count_layer_switch(&self) {
        self.layer_switches.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_dropped(&self) {
        self.dropped_packets.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_duplicate(&self) {
        self.duplicate_packets.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_unwatched(&self) {
        self.unwatched_packets.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_unrouted(&self) {
        self.unrouted_packets.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_unknown_source(&self) {
        self.unknown_source.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_ssrc_limit(&self) {
        self.ssrc_limit.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_srtp_refused(&self) {
        self.srtp_refused.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_unbound_ssrc(&self) {
        self.unbound_ssrc.fetch_add(1, Relaxed);
    }
    /// Counts `datagrams` that left joined into messages of two or more (once per batch).
    pub(crate) fn count_segmented(&self, datagrams: u64) {
        if datagrams > 0 {
            self.segmented_datagrams_out.fetch_add(datagrams, Relaxed);
        }
    }
    pub(crate) fn count_send_error(&self) {
        self.send_errors.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_keyframe_request(&self) {
        self.keyframe_requests.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_bad_channel_message(&self) {
        self.bad_channel_messages.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_bad_subscription(&self) {
        self.bad_subscriptions.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_data_dropped(&self) {
        self.data_dropped.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_failed_offer(&self) {
        self.failed_offers.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_signal_overflow(&self) {
        self.signal_overflow.fetch_add(1, Relaxed);
    }
    pub(crate) fn set_participants(&self, n: usize) {
        self.participants.store(n as u64, Relaxed);
    }
}
