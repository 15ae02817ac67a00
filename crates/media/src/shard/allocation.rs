//! The periodic choice of each subscription's simulcast layer: the layer its rendered size
//! asks for, as far as its subscriber's downlink carries it (see
//! [`cascade_forward::allocation`] and [`crate::downlink`]).

use super::*;
use cascade_forward::allocation::{Want, allocate};

/// The share of a downlink estimate that allocation hands out: the rest is room for
/// retransmissions, RTCP and the estimate's own error.
const USABLE_SHARE: f64 = 0.9;

/// Probes pad a stream this much above the rate of the layer probed for.
const PROBE_MARGIN: f64 = 1.1;
use crate::downlink::PROBE_LOSS;

/// One route under review.
struct Review {
    key: (ParticipantId, PublicationId),
    index: usize,
    /// The layer its size asks for.
    wanted: LayerId,
    /// What allocation weighs, for a video route that is being forwarded.
    want: Option<Want>,
    /// The publication's rate, for an audio route (served before any video).
    audio_bps: u64,
}

impl Shard {
    /// Moves subscriptions to the layer that fits them now that layers may have started or
    /// stopped arriving and downlink estimates moved, and asks for the keyframes the switches
    /// wait for.
    pub(super) fn review_layers(&mut self, now: Instant) {
        // What each route's size asks for, grouped by subscriber.
        let mut by_subscriber: FxHashMap<ParticipantId, Vec<Review>> = FxHashMap::default();
        for (&key, routes) in &self.routes {
            let Some(publisher) = self.participants.get(&key.0) else {
                continue;
            };
            let Some(publication) = publisher.publications.iter().find(|pb| pb.id == key.1) else {
                continue;
            };
            for (index, route) in routes.iter().enumerate() {
                let selected = if route.layer_pinned {
                    None
                } else {
                    select_layer(publication, route.requested_height, now)
                };
                let forwarded = !route.disabled && !publication.muted;
                let video = publication.kind == RtpCodecKind::Video;
                let rates = || {
                    publication
                        .layers
                        .iter()
                        .map(|layer| layer.bitrate.bits_per_second(now))
                };
                let review = match selected {
                    // Left on its layer (pinned, or nothing arrives); its keyframe wait is
                    // still looked at below.
                    None => Review {
                        key,
                        index,
                        wanted: route.forward.target(),
                        want: None,
                        audio_bps: 0,
                    },
                    Some(wanted) => Review {
                        key,
                        index,
                        wanted,
                        want: (video && forwarded).then(|| Want {
                            wanted,
                            rates: rates().collect(),
                            speaker: self
                                .participants
                                .get(&route.subscriber)
                                .and_then(|s| self.speakers.get(&s.conf_id))
                                .is_some_and(|&(speaker, _)| speaker == key.0),
                            height: route.requested_height.unwrap_or(FULL_HEIGHT),
                        }),
                        audio_bps: if !video && forwarded {
                            rates().sum()
                        } else {
                            0
                        },
                    },
                };
                by_subscriber
                    .entry(route.subscriber)
                    .or_default()
                    .push(review);
            }
        }
        // Each subscriber's downlink shared among its video routes.
        let mut limited = 0u64;
        self.probing.clear();
        let mut requests = Vec::new();
        for (subscriber, reviews) in by_subscriber {
            let (estimate, loss) = self
                .participants
                .get_mut(&subscriber)
                .map_or((None, None), |p| {
                    (p.downlink.estimate(now), p.downlink.take_loss())
                });
            let probe_failed = loss.is_some_and(|loss| loss > PROBE_LOSS);
            // (`take_loss` covers the review's 250 ms: a single lost packet among the twenty
            // or so a thin downlink carries in that time is not above it.)
            let allocated = estimate.map(|estimate| {
                self.stats.downlink_estimate.observe_value(estimate as f64);
                let audio: u64 = reviews.iter().map(|r| r.audio_bps).sum();
                let budget = ((estimate as f64 * USABLE_SHARE) as u64).saturating_sub(audio);
                let wants: Vec<Want> = reviews.iter().filter_map(|r| r.want.clone()).collect();
                allocate(budget, &wants)
            });
            let mut allocated = allocated.unwrap_or_default().into_iter();
            // What the subscriber is sent, what probing its pending raises adds, and a route
            // whose packets probes can repeat.
            let (mut current_bps, mut extra_bps) = (0u64, 0u64);
            let mut probe_route = None;
            for review in reviews {
                current_bps += review.audio_bps;
                let Some(route) = self
                    .routes
                    .get_mut(&review.key)
                    .and_then(|routes| routes.get_mut(review.index))
                else {
                    continue;
                };
                let mut layer = review.wanted;
                if review.want.is_some()
                    && let Some(proposed) = allocated.next()
                {
                    if probe_failed && route.ceiling.abort_probe(now) {
                        tracing::debug!(
                            stream_id = route.stream_id,
                            track_id = route.track_id,
                            ?loss,
                            "probe met loss"
                        );
                    }
                    if let Some(change) = route.ceiling.propose(now, proposed, review.wanted) {
                        tracing::debug!(
                            stream_id = route.stream_id,
                            track_id = route.track_id,
                            ?change,
                            allowed = route.ceiling.allowed(),
                            "downlink allocation"
                        );
                        self.stats.count_allocation_change(change);
                    }
                    if let Some(allowed) = route.ceiling.allowed()
                        && allowed < layer
                    {
                        layer = allowed;
                        limited += 1;
                    }
                }
                if let Some(want) = &review.want {
                    let rate =
                        |layer: LayerId| want.rates.get(usize::from(layer)).copied().unwrap_or(0);
                    current_bps += rate(layer);
                    if let Some(probed) = route.ceiling.probing() {
                        // A raise goes one layer up at a time: probe for that one.
                        let next = probed.min(layer.saturating_add(1));
                        extra_bps += rate(next).saturating_sub(rate(layer));
                    }
                    if route.stream.retransmits_over_rtx() && route.stream.last_sequence().is_some()
                    {
                        probe_route.get_or_insert((review.key, review.index));
                    }
                }
                if layer != route.forward.target() {
                    tracing::debug!(
                        stream_id = route.stream_id,
                        track_id = route.track_id,
                        from = route.forward.target(),
                        to = layer,
                        "layer change"
                    );
                    route.forward.set_target(layer);
                    self.stats.count_layer_switch();
                }
                if let Some(wanted) = route.forward.wants_keyframe() {
                    requests.push((review.key.0, review.key.1, wanted));
                }
            }
            if let Some(p) = self.participants.get_mut(&subscriber) {
                match probe_route {
                    Some((key, index)) if extra_bps > 0 && p.own_socket.is_none() => {
                        let rate = extra_bps as f64 * PROBE_MARGIN;
                        // A probe stopped by loss stays stopped until the allocation
                        // aborted it (at this review: `probe_failed`).
                        if !p.downlink.probing() && !probe_failed {
                            tracing::debug!(call = %p.call, rate, current_bps, "probing");
                        }
                        p.downlink
                            .set_probe_rate(if probe_failed { 0.0 } else { rate });
                        if p.downlink.probing() {
                            self.probing.push((subscriber, key, index));
                        }
                    }
                    _ => p.downlink.set_probe_rate(0.0),
                }
            }
        }
        self.stats
            .limited_subscriptions
            .store(limited, std::sync::atomic::Ordering::Relaxed);
        for (publisher, publication, layer) in requests {
            self.request_keyframe(now, publisher, publication, layer, false);
        }
    }

    /// Sends each probed subscriber the probes due now: the packet its probe route sent last,
    /// again over RTX (the subscriber drops it as a duplicate; congestion control counts it).
    pub(super) fn send_probes(&mut self, now: Instant) {
        let probing = std::mem::take(&mut self.probing);
        for &(subscriber, key, index) in &probing {
            let Some(p) = self.participants.get_mut(&subscriber) else {
                continue;
            };
            let Some(route) = self
                .routes
                .get_mut(&key)
                .and_then(|routes| routes.get_mut(index))
                .filter(|route| route.subscriber == subscriber)
            else {
                continue;
            };
            let Some(payloads) = self.payloads.get(&key) else {
                continue;
            };
            let Some(sequence) = route.stream.last_sequence() else {
                continue;
            };
            let Some(len) = route.stream.kept_len(sequence, payloads) else {
                continue;
            };
            while p.downlink.probe_due(now, len + IP_UDP_HEADERS) {
                if self.batch.is_full() {
                    self.batch.send(&self.socket, &self.stats);
                }
                let out = self.batch.next_buffer();
                match super::feedback::resend(now, route, payloads, p, sequence, out) {
                    Some(Ok(to)) => {
                        self.stats.count_probe();
                        self.batch.commit(to);
                    }
                    _ => break,
                }
            }
        }
        if !self.batch.is_empty() {
            self.batch.send(&self.socket, &self.stats);
        }
        self.probing = probing
            .into_iter()
            .filter(|(subscriber, _, _)| {
                self.participants
                    .get(subscriber)
                    .is_some_and(|p| p.downlink.probing())
            })
            .collect();
    }
}
