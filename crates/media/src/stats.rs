//! Counters of one event loop, readable from any thread without locks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters one event loop keeps.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Datagrams received.
    pub datagrams_in: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// RTP packets forwarded to subscribers.
    pub forwarded_packets: AtomicU64,
    /// RTP payload bytes forwarded to subscribers.
    pub forwarded_bytes: AtomicU64,
    /// Forwarded packets the subscriber's sender refused.
    pub dropped_packets: AtomicU64,
    /// RTP packets of tracks nobody subscribes to.
    pub unrouted_packets: AtomicU64,
    /// Datagrams from addresses that belong to no call.
    pub unknown_source: AtomicU64,
    /// Socket send errors.
    pub send_errors: AtomicU64,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests: AtomicU64,
    /// Data-channel messages that could not be parsed.
    pub bad_channel_messages: AtomicU64,
    /// Subscriptions to tracks that do not exist.
    pub bad_subscriptions: AtomicU64,
    /// Offers that could not be answered.
    pub failed_offers: AtomicU64,
    /// Messages to the signalling side dropped because its channel was full.
    pub signal_overflow: AtomicU64,
    /// Calls currently in this loop.
    pub participants: AtomicU64,
}

impl ShardStats {
    pub(crate) fn count_received(&self, len: usize) {
        self.datagrams_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(len as u64, Relaxed);
    }
    pub(crate) fn count_sent(&self, len: usize) {
        self.datagrams_out.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(len as u64, Relaxed);
    }
    pub(crate) fn count_forwarded(&self, payload_len: usize) {
        self.forwarded_packets.fetch_add(1, Relaxed);
        self.forwarded_bytes.fetch_add(payload_len as u64, Relaxed);
    }
    pub(crate) fn count_dropped(&self) {
        self.dropped_packets.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_unrouted(&self) {
        self.unrouted_packets.fetch_add(1, Relaxed);
    }
    pub(crate) fn count_unknown_source(&self) {
        self.unknown_source.fetch_add(1, Relaxed);
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
