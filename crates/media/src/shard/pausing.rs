//! Pausing: a layer no subscription receives is dropped once, on arrival, instead of being
//! looked at by every route of its track; and a publisher hears which simulcast layers of
//! its tracks are wanted (`cascade.subscribed_layers`, LiveKit's `SubscribedQualityUpdate`):
//! every layer up to the highest one a subscription receives or its rendered size asks for,
//! so that it may stop encoding the layers above.
//!
//! A layer is *watched* while some unpaused subscription forwards it or waits for its
//! keyframe. Anything that makes a layer wanted at once (a new subscription, a switch, a
//! resume) marks it watched at once ([`Shard::watch`]; every keyframe request does); the
//! review every 250 ms recomputes all flags, which is where layers stop being watched.

use super::*;
use cascade_protocol::datachannel::SubscribedLayers;

/// The bit of layer `layer` in a layer set (layers past the eighth have none).
fn bit(layer: LayerId) -> u8 {
    1u8.checked_shl(u32::from(layer)).unwrap_or(0)
}

/// The simulcast layers publishers are told about, lowest first: the RTP stream ids
/// matrix-js-sdk and livekit-client give a camera's quarter, half and full size.
const LADDER: [&str; 3] = ["q", "h", "f"];

/// The position of `rid` in [`LADDER`].
fn rung(rid: Option<&str>) -> Option<LayerId> {
    let rid = rid?;
    LADDER
        .iter()
        .position(|r| *r == rid)
        .and_then(|i| LayerId::try_from(i).ok())
}

/// The rung a subscriber rendering `height` pixels tall asks for (`None`: the best), whether
/// or not the publisher sends it now: layer selection over the whole ladder, every rung
/// taken as arriving. A publisher that stopped a layer, or whose layer has not arrived yet,
/// is asked for it.
fn asked_rung(height: Option<u32>) -> LayerId {
    let ladder = LADDER.map(|rid| LayerInfo {
        active: true,
        height: cascade_forward::layer::nominal_height(Some(rid), FULL_HEIGHT),
    });
    cascade_forward::layer::select(height, &ladder).unwrap_or(LADDER.len() as LayerId - 1)
}

/// Every rung of the ladder.
const ALL_RUNGS: u8 = (1 << LADDER.len()) - 1;

/// The set of every layer up to the highest one in `layers` (none for none).
fn up_to_highest(layers: u8) -> u8 {
    match layers.checked_ilog2() {
        Some(top) => u8::try_from((2u16 << top) - 1).unwrap_or(u8::MAX),
        None => 0,
    }
}

impl Shard {
    /// Marks layer `layer` of `publisher`'s publication `publication` as received: its
    /// packets go through the track's routes again from the next one on.
    pub(super) fn watch(
        &mut self,
        publisher: ParticipantId,
        publication: PublicationId,
        layer: LayerId,
    ) {
        if let Some(layer) = self
            .participants
            .get_mut(&publisher)
            .and_then(|p| p.publication_by_id(publication))
            .and_then(|pb| pb.layers.get_mut(usize::from(layer)))
        {
            layer.watched = true;
        }
    }

    /// Marks the layers route `route` of `key` forwards or waits for as received (after it
    /// was created or resumed).
    pub(super) fn watch_route(&mut self, key: (ParticipantId, PublicationId), index: usize) {
        let Some((target, current)) = self
            .routes
            .get(&key)
            .and_then(|routes| routes.get(index))
            .filter(|route| !route.forward.paused())
            .map(|route| (route.forward.target(), route.forward.current()))
        else {
            return;
        };
        self.watch(key.0, key.1, target);
        if let Some(current) = current {
            self.watch(key.0, key.1, current);
        }
    }

    /// Recomputes which layers are watched, counts the arriving ones of subscribed tracks
    /// that nobody receives (`cascade_paused_layers`), and tells publishers whose wanted simulcast layers changed.
    pub(super) fn review_pausing(&mut self, now: Instant) {
        let mut paused = 0u64;
        let mut tell = Vec::new();
        for (&id, p) in &mut self.participants {
            let link = p.is_link();
            for publication in &mut p.publications {
                let routes = self
                    .routes
                    .get(&(id, publication.id))
                    .map_or(&[][..], Vec::as_slice);
                // Layers (by index) some route forwards or waits for, and rungs of the
                // ladder (by rid) routes receive or ask for.
                let (mut received, mut wanted_rungs) = (0u8, 0u8);
                let rung_of = |layer: LayerId| {
                    publication
                        .layers
                        .get(usize::from(layer))
                        .and_then(|l| rung(l.rid.as_deref()))
                };
                for route in routes.iter().filter(|r| !r.forward.paused()) {
                    let target = route.forward.target();
                    received |= bit(target);
                    wanted_rungs |= rung_of(target).map_or(0, bit);
                    if let Some(current) = route.forward.current() {
                        received |= bit(current);
                        wanted_rungs |= rung_of(current).map_or(0, bit);
                    }
                    if !route.layer_pinned {
                        wanted_rungs |= bit(asked_rung(route.requested_height));
                    }
                }
                for (index, layer) in publication.layers.iter_mut().enumerate() {
                    // (Layers past the eighth have no bit: always watched.)
                    layer.watched = index >= 8 || received & bit(index as LayerId) != 0;
                    let arriving = layer
                        .last_packet_at
                        .is_some_and(|at| now.saturating_duration_since(at) < LAYER_TIMEOUT);
                    // (A track nobody subscribes to counts as unrouted, not here.)
                    if arriving && !layer.watched && !routes.is_empty() {
                        paused += 1;
                    }
                }
                // Publishers hear of simulcast tracks (layers named on the ladder) only; a
                // link's layers are tracks of their own, which the other focus forwards
                // whatever this one wants.
                let simulcast = publication.kind == RtpCodecKind::Video
                    && publication
                        .layers
                        .iter()
                        .all(|l| rung(l.rid.as_deref()).is_some());
                if !simulcast || link || publication.muted {
                    continue;
                }
                // Every rung up to the highest one received or asked for: a subscriber whose
                // downlink allocation moves it down finds its layer encoded already.
                let wanted = up_to_highest(wanted_rungs) & ALL_RUNGS;
                if wanted != publication.told_layers.unwrap_or(ALL_RUNGS) {
                    let rids = LADDER
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| LayerId::try_from(*i).is_ok_and(|i| wanted & bit(i) != 0))
                        .map(|(_, rid)| (*rid).to_owned())
                        .collect();
                    tell.push((
                        id,
                        publication.id,
                        wanted,
                        publication.codec.mime_type.clone(),
                        SubscribedLayers {
                            stream_id: publication.stream_id.clone(),
                            track_id: publication.track_id.clone(),
                            rids,
                        },
                    ));
                }
            }
        }
        self.stats
            .paused_layers
            .store(paused, std::sync::atomic::Ordering::Relaxed);
        for (id, publication, wanted, mime_type, layers) in tell {
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            tracing::debug!(call = %p.call, stream_id = layers.stream_id, track_id = layers.track_id, rids = ?layers.rids, "subscribed layers");
            // Not told until the message left (the data channel took it, or the signalling
            // side's channel had room): the next review tries again.
            let told = if p.out_of_band {
                let signal = FromMedia::SubscribedLayers {
                    call: p.call.clone(),
                    layers,
                    mime_type,
                };
                self.send_signal(signal)
            } else {
                let sent = p.send(now, &DataChannelMessage::SubscribedLayers(layers));
                flush(&self.socket, &self.stats, p);
                sent
            };
            if told
                && let Some(publication) = self
                    .participants
                    .get_mut(&id)
                    .and_then(|p| p.publication_by_id(publication))
            {
                publication.told_layers = Some(wanted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ask_for_rungs_whether_or_not_they_arrive() {
        assert_eq!(asked_rung(Some(180)), 0, "320x180 asks for q");
        assert_eq!(asked_rung(Some(181)), 1, "just above q asks for h");
        assert_eq!(asked_rung(Some(360)), 1);
        assert_eq!(asked_rung(Some(720)), 2);
        assert_eq!(asked_rung(Some(1080)), 2, "above f still asks for f");
        assert_eq!(asked_rung(None), 2, "no size asks for the best");
        assert_eq!(rung(Some("h")), Some(1));
        assert_eq!(
            rung(Some("x")),
            None,
            "rids off the ladder are not told about"
        );
        assert_eq!(rung(None), None);
    }

    #[test]
    fn publishers_are_asked_for_every_layer_up_to_the_highest_wanted() {
        assert_eq!(up_to_highest(0), 0, "nothing wanted");
        assert_eq!(up_to_highest(0b001), 0b001, "q only");
        assert_eq!(
            up_to_highest(0b100),
            0b111,
            "f keeps q and h for downgrades"
        );
        assert_eq!(up_to_highest(0b010), 0b011);
        assert_eq!(up_to_highest(0x80), 0xff);
        assert_eq!(ALL_RUNGS, 0b111);
    }
}
