//! Prometheus metrics: built at scrape time from the lock-free counters the planes keep.
//!
//! Nothing here runs on the packet path. The media event loops count in their
//! [`ShardStats`](cascade_media::ShardStats) atomics and the Matrix side in
//! [`Status`]; a scrape refreshes the loops' gauges (conferences, peer-connection states,
//! tracks, subscriptions), sums the loops, and turns everything into metric families.

use cascade_livekit::service::Refusal;
use cascade_media::MediaPlane;
use cascade_media::stats::{HELD_BACK, KINDS, LAYERS, PC_STATES, ShardStats};
use cascade_signalling::authorize::RefusalCause;
use cascade_signalling::status::{Direction, TO_DEVICE_TYPES};
use cascade_signalling::{Counter, Status};
use cascade_telemetry::HistogramSnapshot;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Every family the focus itself exports: name, type, help and label names.
const FAMILIES: &[(&str, MetricType, &str, &[&str])] = &[
    (
        "cascade_livekit_signal_total",
        MetricType::COUNTER,
        "The LiveKit signalling endpoint ([livekit]): sessions joined, connections refused for their token, messages that were not a signal request, requests not handled yet, requests refused (too many tracks, an unknown track).",
        &["event"],
    ),
    (
        "cascade_livekit_token_requests_total",
        MetricType::COUNTER,
        "Requests to the MatrixRTC token service ([livekit]): tokens issued, and refusals by cause.",
        &["outcome"],
    ),
    (
        "cascade_conferences",
        MetricType::GAUGE,
        "Conferences with at least one call on this focus.",
        &[],
    ),
    (
        "cascade_participants",
        MetricType::GAUGE,
        "Calls (one per device) on this focus.",
        &[],
    ),
    (
        "cascade_peer_connections",
        MetricType::GAUGE,
        "Peer connections by connection state.",
        &["state"],
    ),
    (
        "cascade_published_tracks",
        MetricType::GAUGE,
        "Tracks devices publish to the focus, by kind and spatial layer (0 without simulcast).",
        &["kind", "layer"],
    ),
    (
        "cascade_subscriptions",
        MetricType::GAUGE,
        "Track subscriptions the focus forwards.",
        &[],
    ),
    (
        "cascade_links",
        MetricType::GAUGE,
        "Calls that are links with other foci of the same conferences (cascading).",
        &[],
    ),
    (
        "cascade_links_connected",
        MetricType::GAUGE,
        "Links with other foci whose peer connection is connected.",
        &[],
    ),
    (
        "cascade_linked_conferences",
        MetricType::GAUGE,
        "Conferences with at least one link with another focus (links per conference: cascade_links over this).",
        &[],
    ),
    (
        "cascade_downlink_estimate_bits_per_second",
        MetricType::HISTOGRAM,
        "Subscribers' downlink estimates from their transport-cc feedback (Google Congestion Control) or REMB, one observation per subscriber every 250 ms.",
        &[],
    ),
    (
        "cascade_congestion_feedback_total",
        MetricType::COUNTER,
        "Congestion-control feedback received from subscribers, by kind (transport_cc, remb; transport_cc_refused: reporting on more packets than the focus remembers, not taken).",
        &["kind"],
    ),
    (
        "cascade_probe_packets_total",
        MetricType::COUNTER,
        "Probe packets sent to subscribers: recent packets again over RTX, padding a stream up to a higher layer's rate before the focus raises it.",
        &[],
    ),
    (
        "cascade_layer_allocation_changes_total",
        MetricType::COUNTER,
        "Changes of the highest layer a subscriber's downlink allows a subscription, by cause: congestion (lowered) or recovery (raised).",
        &["cause"],
    ),
    (
        "cascade_paused_layers",
        MetricType::GAUGE,
        "Layers of subscribed tracks arriving from publishers that no subscription receives: dropped on arrival (reason unwatched_layer of cascade_dropped_packets_total).",
        &[],
    ),
    (
        "cascade_downlink_limited_subscriptions",
        MetricType::GAUGE,
        "Video subscriptions held below the layer their rendered size asks for by their subscriber's downlink.",
        &[],
    ),
    (
        "cascade_link_rtt_seconds",
        MetricType::HISTOGRAM,
        "Round-trip time to the other focus of each link, from its RTCP reception reports (RFC 3550 6.4.1); a hop adds about half of it plus the focus's forwarding time.",
        &[],
    ),
    (
        "cascade_link_packets_total",
        MetricType::COUNTER,
        "RTP packets over links with other foci, by direction (in: received over a link; out: forwarded into one).",
        &["direction"],
    ),
    (
        "cascade_link_bytes_total",
        MetricType::COUNTER,
        "RTP payload bytes over links with other foci, by direction.",
        &["direction"],
    ),
    (
        "cascade_link_calls_total",
        MetricType::COUNTER,
        "Link calls with other foci, by the side this focus took: placed or accepted.",
        &["side"],
    ),
    (
        "cascade_media_event_loops",
        MetricType::GAUGE,
        "Media event loops (threads with their own UDP port).",
        &[],
    ),
    (
        "cascade_udp_datagrams_total",
        MetricType::COUNTER,
        "UDP datagrams on the media sockets.",
        &["direction"],
    ),
    (
        "cascade_udp_segmented_datagrams_total",
        MetricType::COUNTER,
        "UDP datagrams sent joined with others to the same address in one message (UDP GSO).",
        &[],
    ),
    (
        "cascade_udp_bytes_total",
        MetricType::COUNTER,
        "UDP bytes on the media sockets.",
        &["direction"],
    ),
    (
        "cascade_forwarded_packets_total",
        MetricType::COUNTER,
        "RTP packets forwarded to subscribers, by kind.",
        &["kind"],
    ),
    (
        "cascade_forwarded_bytes_total",
        MetricType::COUNTER,
        "RTP payload bytes forwarded to subscribers, by kind.",
        &["kind"],
    ),
    (
        "cascade_dropped_packets_total",
        MetricType::COUNTER,
        "Packets not forwarded, by reason.",
        &["reason"],
    ),
    (
        "cascade_nacks_received_total",
        MetricType::COUNTER,
        "NACK (generic transport feedback) packets received from subscribers.",
        &[],
    ),
    (
        "cascade_retransmitted_packets_total",
        MetricType::COUNTER,
        "Packets the focus retransmitted from its own cache in answer to NACKs.",
        &[],
    ),
    (
        "cascade_keyframe_requests_total",
        MetricType::COUNTER,
        "Keyframe requests: in = PLI/FIR from subscribers, out = PLI sent to publishers.",
        &["direction"],
    ),
    (
        "cascade_layer_switches_total",
        MetricType::COUNTER,
        "Simulcast layer switches of subscriptions.",
        &[],
    ),
    (
        "cascade_media_errors_total",
        MetricType::COUNTER,
        "Media-plane problems, by reason.",
        &["reason"],
    ),
    (
        "cascade_invite_to_first_packet_seconds",
        MetricType::HISTOGRAM,
        "Time from a call's invite reaching its media event loop to the first media packet from the device.",
        &[],
    ),
    (
        "cascade_to_device_events_total",
        MetricType::COUNTER,
        "To-device events received (in) and sent (out), by type.",
        &["direction", "type"],
    ),
    (
        "cascade_invites_total",
        MetricType::COUNTER,
        "Call invites by outcome: received, opened (handed to the media plane), void (too old or hung up), refused.",
        &["outcome"],
    ),
    (
        "cascade_invite_refusals_total",
        MetricType::COUNTER,
        "Call invites refused, by reason.",
        &["reason"],
    ),
    (
        "cascade_signalling_errors_total",
        MetricType::COUNTER,
        "Signalling errors, by reason.",
        &["reason"],
    ),
    (
        "cascade_signalling_ignored_events_total",
        MetricType::COUNTER,
        "Call events dropped without error, by reason.",
        &["reason"],
    ),
    (
        "cascade_calls_closed_total",
        MetricType::COUNTER,
        "Calls closed by the device, by session replacement or by the media plane.",
        &[],
    ),
    (
        "cascade_restart_hangups_total",
        MetricType::COUNTER,
        "Calls open when the focus last stopped without ending them, hung up after the restart.",
        &[],
    ),
    (
        "cascade_log_events_total",
        MetricType::COUNTER,
        "Log events at WARN and ERROR that the log filter lets through.",
        &["level"],
    ),
    (
        "cascade_membership_ended_calls_total",
        MetricType::COUNTER,
        "Open calls hung up because the membership that authorized them ended (expired, left the conference or the room).",
        &[],
    ),
    (
        "cascade_olm_messages_total",
        MetricType::COUNTER,
        "Olm to-device messages by outcome: decrypted, encrypted, journal_replays, duplicates, refused_<cause>, ...",
        &["outcome"],
    ),
    (
        "cascade_sessions_replaced_total",
        MetricType::COUNTER,
        "Device sessions replaced by a newer session.",
        &[],
    ),
    (
        "cascade_room_invites_total",
        MetricType::COUNTER,
        "Room invites to the focus, by outcome.",
        &["outcome"],
    ),
    (
        "cascade_sync_batches_total",
        MetricType::COUNTER,
        "/sync responses fully handled.",
        &[],
    ),
    (
        "cascade_sync_request_duration_seconds",
        MetricType::HISTOGRAM,
        "Duration of /sync requests, long polls included.",
        &[],
    ),
    (
        "cascade_last_sync_timestamp_seconds",
        MetricType::GAUGE,
        "Unix time of the last successful /sync (0 if none).",
        &[],
    ),
    (
        "cascade_status",
        MetricType::GAUGE,
        "State flags of the focus: logged_in, syncing, draining, ready (1 or 0).",
        &["flag"],
    ),
];

/// One family under construction.
struct Family(MetricFamily);

impl Family {
    fn new(name: &str) -> Self {
        let (_, kind, help, _) = FAMILIES
            .iter()
            .find(|(n, ..)| *n == name)
            .copied()
            .unwrap_or((name, MetricType::UNTYPED, "", &[]));
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        Self(family)
    }

    fn metric(labels: &[(&str, &str)]) -> proto::Metric {
        let mut metric = proto::Metric::default();
        metric.set_label(
            labels
                .iter()
                .map(|(name, value)| {
                    let mut pair = proto::LabelPair::default();
                    pair.set_name((*name).to_owned());
                    pair.set_value((*value).to_owned());
                    pair
                })
                .collect(),
        );
        metric
    }

    /// Adds a sample (a counter's or a gauge's value, per the family's type).
    fn add(mut self, labels: &[(&str, &str)], value: f64) -> Self {
        let mut metric = Self::metric(labels);
        if self.0.get_field_type() == MetricType::COUNTER {
            let mut counter = proto::Counter::default();
            counter.set_value(value);
            metric.set_counter(counter);
        } else {
            let mut gauge = proto::Gauge::default();
            gauge.set_value(value);
            metric.set_gauge(gauge);
        }
        self.0.mut_metric().push(metric);
        self
    }

    fn histogram(mut self, snapshot: &HistogramSnapshot) -> Self {
        let mut histogram = proto::Histogram::default();
        histogram.set_sample_count(snapshot.count);
        histogram.set_sample_sum(snapshot.sum_secs);
        histogram.set_bucket(
            snapshot
                .buckets
                .iter()
                .map(|(bound, count)| {
                    let mut bucket = proto::Bucket::default();
                    bucket.set_upper_bound(*bound);
                    bucket.set_cumulative_count(*count);
                    bucket
                })
                .collect(),
        );
        let mut metric = Self::metric(&[]);
        metric.set_histogram(histogram);
        self.0.mut_metric().push(metric);
        self
    }
}

/// Sums one atomic over every event loop.
fn sum(loops: &[Arc<ShardStats>], field: impl Fn(&ShardStats) -> &AtomicU64) -> f64 {
    loops.iter().map(|s| field(s).load(Relaxed)).sum::<u64>() as f64
}

/// The collector behind `/metrics`.
pub struct FocusCollector {
    media: Arc<MediaPlane>,
    status: Arc<Status>,
    livekit: cascade_livekit::Stats,
    descs: Vec<Desc>,
}

impl FocusCollector {
    /// A collector reading `media`, `status` and the LiveKit front door's `livekit`.
    pub fn new(
        media: Arc<MediaPlane>,
        status: Arc<Status>,
        livekit: cascade_livekit::Stats,
    ) -> prometheus::Result<Self> {
        let descs = FAMILIES
            .iter()
            .map(|(name, _, help, labels)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(Self {
            media,
            status,
            livekit,
            descs,
        })
    }

    fn media_families(&self) -> Vec<MetricFamily> {
        let loops = self.media.stats();
        let l = loops.as_slice();
        let mut out = Vec::new();
        out.push(Family::new("cascade_conferences").add(&[], sum(l, |s| &s.conferences)));
        out.push(Family::new("cascade_participants").add(&[], sum(l, |s| &s.participants)));
        let mut states = Family::new("cascade_peer_connections");
        for (i, state) in PC_STATES.iter().enumerate() {
            states = states.add(&[("state", state)], sum(l, |s| &s.peer_connections[i]));
        }
        out.push(states);
        let mut tracks = Family::new("cascade_published_tracks");
        for (k, kind) in KINDS.iter().enumerate() {
            for layer in 0..LAYERS {
                let name = layer.to_string();
                tracks = tracks.add(
                    &[("kind", kind), ("layer", &name)],
                    sum(l, |s| &s.published_tracks[k][layer]),
                );
            }
        }
        out.push(tracks);
        out.push(Family::new("cascade_subscriptions").add(&[], sum(l, |s| &s.subscriptions)));
        out.push(Family::new("cascade_links").add(&[], sum(l, |s| &s.links)));
        out.push(Family::new("cascade_links_connected").add(&[], sum(l, |s| &s.links_connected)));
        out.push(
            Family::new("cascade_linked_conferences").add(&[], sum(l, |s| &s.linked_conferences)),
        );
        out.push(
            Family::new("cascade_link_packets_total")
                .add(&[("direction", "in")], sum(l, |s| &s.link_packets_in))
                .add(&[("direction", "out")], sum(l, |s| &s.link_packets_out)),
        );
        out.push(
            Family::new("cascade_link_bytes_total")
                .add(&[("direction", "in")], sum(l, |s| &s.link_bytes_in))
                .add(&[("direction", "out")], sum(l, |s| &s.link_bytes_out)),
        );
        out.push(Family::new("cascade_media_event_loops").add(&[], l.len() as f64));
        out.push(
            Family::new("cascade_udp_datagrams_total")
                .add(&[("direction", "in")], sum(l, |s| &s.datagrams_in))
                .add(&[("direction", "out")], sum(l, |s| &s.datagrams_out)),
        );
        out.push(
            Family::new("cascade_udp_segmented_datagrams_total")
                .add(&[], sum(l, |s| &s.segmented_datagrams_out)),
        );
        out.push(
            Family::new("cascade_udp_bytes_total")
                .add(&[("direction", "in")], sum(l, |s| &s.bytes_in))
                .add(&[("direction", "out")], sum(l, |s| &s.bytes_out)),
        );
        let mut packets = Family::new("cascade_forwarded_packets_total");
        let mut bytes = Family::new("cascade_forwarded_bytes_total");
        for (k, kind) in KINDS.iter().enumerate() {
            packets = packets.add(
                &[("kind", kind)],
                sum(l, |s| &s.forwarded_packets_by_kind[k]),
            );
            bytes = bytes.add(&[("kind", kind)], sum(l, |s| &s.forwarded_bytes_by_kind[k]));
        }
        out.push(packets);
        out.push(bytes);
        let mut dropped = Family::new("cascade_dropped_packets_total")
            .add(
                &[("reason", "send_refused")],
                sum(l, |s| &s.dropped_packets),
            )
            .add(&[("reason", "unrouted")], sum(l, |s| &s.unrouted_packets))
            .add(
                &[("reason", "unwatched_layer")],
                sum(l, |s| &s.unwatched_packets),
            )
            .add(&[("reason", "duplicate")], sum(l, |s| &s.duplicate_packets))
            .add(&[("reason", "ssrc_limit")], sum(l, |s| &s.ssrc_limit))
            .add(&[("reason", "srtp_refused")], sum(l, |s| &s.srtp_refused))
            .add(&[("reason", "unbound_ssrc")], sum(l, |s| &s.unbound_ssrc))
            .add(
                &[("reason", "unknown_source")],
                sum(l, |s| &s.unknown_source),
            )
            .add(&[("reason", "send_error")], sum(l, |s| &s.send_errors))
            .add(
                &[("reason", "retransmission_budget")],
                sum(l, |s| &s.retransmissions_refused),
            );
        for (i, reason) in HELD_BACK.iter().enumerate() {
            dropped = dropped.add(&[("reason", reason)], sum(l, |s| &s.held_back[i]));
        }
        out.push(dropped);
        out.push(Family::new("cascade_nacks_received_total").add(&[], sum(l, |s| &s.nacks_in)));
        out.push(
            Family::new("cascade_retransmitted_packets_total")
                .add(&[], sum(l, |s| &s.retransmitted_packets)),
        );
        out.push(
            Family::new("cascade_keyframe_requests_total")
                .add(&[("direction", "in")], sum(l, |s| &s.keyframe_requests_in))
                .add(&[("direction", "out")], sum(l, |s| &s.keyframe_requests)),
        );
        out.push(
            Family::new("cascade_layer_switches_total").add(&[], sum(l, |s| &s.layer_switches)),
        );
        out.push(
            Family::new("cascade_congestion_feedback_total")
                .add(&[("kind", "transport_cc")], sum(l, |s| &s.transport_cc_in))
                .add(
                    &[("kind", "transport_cc_refused")],
                    sum(l, |s| &s.transport_cc_refused),
                )
                .add(&[("kind", "remb")], sum(l, |s| &s.remb_in)),
        );
        out.push(Family::new("cascade_probe_packets_total").add(&[], sum(l, |s| &s.probe_packets)));
        let mut allocation = Family::new("cascade_layer_allocation_changes_total");
        for (index, cause) in cascade_media::stats::ALLOCATION_CAUSES.iter().enumerate() {
            allocation = allocation.add(
                &[("cause", cause)],
                l.iter()
                    .filter_map(|s| s.allocation_changes.get(index))
                    .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
                    .sum::<u64>() as f64,
            );
        }
        out.push(allocation);
        out.push(Family::new("cascade_paused_layers").add(&[], sum(l, |s| &s.paused_layers)));
        out.push(
            Family::new("cascade_downlink_limited_subscriptions")
                .add(&[], sum(l, |s| &s.limited_subscriptions)),
        );
        out.push(
            Family::new("cascade_media_errors_total")
                .add(
                    &[("reason", "bad_channel_message")],
                    sum(l, |s| &s.bad_channel_messages),
                )
                .add(
                    &[("reason", "bad_subscription")],
                    sum(l, |s| &s.bad_subscriptions),
                )
                .add(&[("reason", "failed_offer")], sum(l, |s| &s.failed_offers))
                .add(&[("reason", "data_dropped")], sum(l, |s| &s.data_dropped))
                .add(
                    &[("reason", "oversized_channel_message")],
                    crate::log_events::COUNTS
                        .oversized_channel_messages
                        .load(std::sync::atomic::Ordering::Relaxed) as f64,
                )
                .add(
                    &[("reason", "signal_overflow")],
                    sum(l, |s| &s.signal_overflow),
                ),
        );
        let merged = |histogram: fn(&ShardStats) -> &cascade_telemetry::Histogram| {
            let mut snapshot = HistogramSnapshot {
                buckets: Vec::new(),
                sum_secs: 0.0,
                count: 0,
            };
            for stats in l {
                histogram(stats).add_to(&mut snapshot);
            }
            snapshot
        };
        out.push(
            Family::new("cascade_invite_to_first_packet_seconds")
                .histogram(&merged(|s| &s.first_packet_latency)),
        );
        out.push(Family::new("cascade_link_rtt_seconds").histogram(&merged(|s| &s.link_rtt)));
        out.push(
            Family::new("cascade_downlink_estimate_bits_per_second")
                .histogram(&merged(|s| &s.downlink_estimate)),
        );
        out.into_iter().map(|f| f.0).collect()
    }

    fn signalling_families(&self) -> Vec<MetricFamily> {
        let st = &self.status;
        let c = |counter: Counter| st.get(counter) as f64;
        let mut out = Vec::new();
        let mut to_device = Family::new("cascade_to_device_events_total");
        for (direction, label) in [(Direction::In, "in"), (Direction::Out, "out")] {
            for (event_type, n) in TO_DEVICE_TYPES.iter().zip(st.to_device(direction)) {
                to_device = to_device.add(&[("direction", label), ("type", event_type)], n as f64);
            }
        }
        out.push(to_device);
        out.push(
            Family::new("cascade_invites_total")
                .add(&[("outcome", "received")], c(Counter::InvitesReceived))
                .add(&[("outcome", "opened")], c(Counter::InvitesOpened))
                .add(&[("outcome", "void")], c(Counter::InvitesVoid))
                .add(&[("outcome", "refused")], c(Counter::InvitesRefused)),
        );
        out.push(
            Family::new("cascade_link_calls_total")
                .add(&[("side", "placed")], c(Counter::LinksPlaced))
                .add(&[("side", "accepted")], c(Counter::LinksAccepted)),
        );
        let mut refusals = Family::new("cascade_invite_refusals_total");
        for cause in RefusalCause::ALL {
            refusals = refusals.add(&[("reason", cause.name())], st.refused(cause) as f64);
        }
        out.push(refusals);
        out.push(
            Family::new("cascade_signalling_errors_total")
                .add(&[("reason", "decode_error")], c(Counter::DecodeErrors))
                .add(
                    &[("reason", "malformed_sync_event")],
                    c(Counter::MalformedSyncEvents),
                )
                .add(&[("reason", "send_failure")], c(Counter::SendFailures))
                .add(&[("reason", "sync_error")], c(Counter::SyncErrors))
                .add(&[("reason", "queue_overflow")], c(Counter::QueueOverflow))
                .add(
                    &[("reason", "checkpoint_failure")],
                    c(Counter::CheckpointFailures),
                ),
        );
        out.push(
            Family::new("cascade_signalling_ignored_events_total")
                .add(
                    &[("reason", "not_for_this_session")],
                    c(Counter::NotForThisSession),
                )
                .add(&[("reason", "stale_session")], c(Counter::StaleSession))
                .add(&[("reason", "unknown_call")], c(Counter::UnknownCall))
                .add(&[("reason", "duplicate")], c(Counter::Duplicates))
                .add(&[("reason", "gap_skipped")], c(Counter::GapsSkipped))
                .add(
                    &[("reason", "media_unknown_call")],
                    c(Counter::MediaUnknownCall),
                ),
        );
        out.push(Family::new("cascade_calls_closed_total").add(&[], c(Counter::CallsClosed)));
        out.push(Family::new("cascade_restart_hangups_total").add(&[], c(Counter::RestartHangups)));
        let logs = &crate::log_events::COUNTS;
        out.push(
            Family::new("cascade_log_events_total")
                .add(
                    &[("level", "warn")],
                    logs.warnings.load(std::sync::atomic::Ordering::Relaxed) as f64,
                )
                .add(
                    &[("level", "error")],
                    logs.errors.load(std::sync::atomic::Ordering::Relaxed) as f64,
                ),
        );
        out.push(
            Family::new("cascade_membership_ended_calls_total")
                .add(&[], c(Counter::MembershipEnded)),
        );
        if let Some(olm) = st.olm() {
            let mut events = Family::new("cascade_olm_messages_total");
            for (name, value) in olm.snapshot() {
                let outcome = name.trim_start_matches("olm_");
                events = events.add(&[("outcome", outcome)], value as f64);
            }
            out.push(events);
        }
        out.push(
            Family::new("cascade_sessions_replaced_total").add(&[], c(Counter::SessionsReplaced)),
        );
        out.push(
            Family::new("cascade_room_invites_total")
                .add(&[("outcome", "accepted")], c(Counter::RoomInvitesAccepted))
                .add(&[("outcome", "rejected")], c(Counter::RoomInvitesRejected)),
        );
        out.push(Family::new("cascade_sync_batches_total").add(&[], c(Counter::SyncBatches)));
        out.push(
            Family::new("cascade_sync_request_duration_seconds").histogram(&st.sync_latency()),
        );
        out.push(
            Family::new("cascade_last_sync_timestamp_seconds")
                .add(&[], st.last_sync_ok_ms() as f64 / 1000.0),
        );
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        out.push(
            Family::new("cascade_status")
                .add(&[("flag", "logged_in")], flag(st.logged_in()))
                .add(&[("flag", "syncing")], flag(st.syncing()))
                .add(&[("flag", "draining")], flag(st.draining()))
                .add(&[("flag", "ready")], flag(st.is_ready())),
        );
        out.into_iter().map(|f| f.0).collect()
    }
}

impl Collector for FocusCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.media_families();
        families.extend(self.signalling_families());
        let issued = &self.livekit.tokens;
        let mut tokens = Family::new("cascade_livekit_token_requests_total")
            .add(&[("outcome", "issued")], issued.issued() as f64);
        for cause in Refusal::ALL {
            tokens = tokens.add(&[("outcome", cause.name())], issued.refused(cause) as f64);
        }
        families.push(tokens.0);
        let signal = &self.livekit.signal;
        families.push(
            Family::new("cascade_livekit_signal_total")
                .add(&[("event", "joined")], signal.joined() as f64)
                .add(&[("event", "refused_token")], signal.refused() as f64)
                .add(&[("event", "malformed")], signal.malformed() as f64)
                .add(&[("event", "unsupported")], signal.unsupported() as f64)
                .add(
                    &[("event", "refused_request")],
                    signal.refused_requests() as f64,
                )
                .add(&[("event", "data_relayed")], signal.data_relayed() as f64)
                .add(&[("event", "data_dropped")], signal.data_dropped() as f64)
                .0,
        );
        families
    }
}

/// The registry `/metrics` serves: the focus's own families and the process's CPU, memory and
/// file descriptors (`cascade_process_*`).
pub fn registry(
    media: Arc<MediaPlane>,
    status: Arc<Status>,
    livekit: cascade_livekit::Stats,
) -> prometheus::Result<Registry> {
    let registry = Registry::new();
    registry.register(Box::new(FocusCollector::new(media, status, livekit)?))?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, "cascade"),
    ))?;
    Ok(registry)
}

/// Renders `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<(String, String), prometheus::Error> {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    encoder.encode(&registry.gather(), &mut buffer)?;
    let text = String::from_utf8(buffer)
        .map_err(|err| prometheus::Error::Msg(format!("metrics are not UTF-8: {err}")))?;
    Ok((encoder.format_type().to_owned(), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grafana_dashboard_uses_only_exported_series() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../config/grafana/cascade.json");
        let text = std::fs::read_to_string(path).unwrap();
        let process = [
            "cascade_process_cpu_seconds_total",
            "cascade_process_resident_memory_bytes",
            "cascade_process_open_fds",
            "cascade_process_max_fds",
        ];
        let mut used = 0;
        for (start, _) in text.match_indices("cascade_") {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if name == "cascade_" || name == "cascade_focus" {
                continue;
            }
            let family = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                FAMILIES.iter().any(|(n, ..)| *n == family) || process.contains(&family),
                "the dashboard uses {name}, which is not exported"
            );
            used += 1;
        }
        assert!(used > 20);
    }

    #[test]
    fn every_family_has_a_unit_or_total_in_its_name_and_help() {
        for (name, kind, help, _) in FAMILIES {
            assert!(name.starts_with("cascade_"), "{name}");
            assert!(!help.is_empty(), "{name} has no help");
            if *kind == MetricType::COUNTER {
                assert!(name.ends_with("_total"), "{name}");
            }
            if *kind == MetricType::HISTOGRAM {
                assert!(
                    name.ends_with("_seconds") || name.ends_with("_bits_per_second"),
                    "{name}"
                );
            }
        }
    }
}
