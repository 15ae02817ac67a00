//! Forwarding: each publisher packet to its subscribers (rewrite, protect, batch), and the
//! periodic choice of active speaker (the choice of layers is in `allocation`).

use super::*;

impl Shard {
    pub(super) fn on_rtp(&mut self, now: Instant, publisher: ParticipantId, packet: rtp::Packet) {
        let ssrc = packet.header.ssrc;
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        let Some((index, layer)) = p.layer_of(ssrc) else {
            self.stats.count_unrouted();
            return;
        };
        if p.is_link() {
            self.stats.count_link_in(packet.payload.len());
        }
        let publication = &mut p.publications[index];
        let received = &mut publication.layers[layer];
        if !received.received.first(packet.header.sequence_number) {
            // Forwarded already (a retransmission that crossed its original, or a browser's
            // RTX bandwidth probe): see `cascade_forward::replay`.
            self.stats.count_duplicate();
            return;
        }
        received.last_packet_at = Some(now);
        received.bitrate.add(
            now,
            rtc::shared::marshal::MarshalSize::marshal_size(&packet.header) + packet.payload.len(),
        );
        let watched = received.watched;
        if let Some(id) = publication.audio_level_id
            && let Some(level) = packet.header.get_extension(id)
            && let Some(&byte) = level.first()
        {
            // RFC 6464: 0 is the loudest, 127 silence (in -dBov).
            let loudness = 127.0 - f32::from(byte & 0x7f);
            publication.loudness += (loudness - publication.loudness) * LOUDNESS_SMOOTHING;
        }
        let publication_id = publication.id;
        let kind = if publication.kind == RtpCodecKind::Video {
            KIND_VIDEO
        } else {
            KIND_AUDIO
        };
        let Some(routes) = self.routes.get_mut(&(publisher, publication_id)) else {
            self.stats.count_unrouted();
            return;
        };
        if !watched {
            // No subscription forwards this layer or waits for it (`pausing`).
            self.stats.count_unwatched();
            return;
        }
        // Kept once here for every subscriber's retransmission history, if any keeps one
        // (audio subscriptions mostly negotiate no NACK).
        let kept = routes
            .iter()
            .any(|route| route.stream.keeps_history())
            .then(|| {
                self.payloads
                    .entry((publisher, publication_id))
                    .or_default()
                    .keep(&packet.payload)
            });
        let meta = PacketMeta {
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            payload: &packet.payload,
            arrival: now,
        };
        let layer = layer as LayerId;
        let mut wanted: Option<LayerId> = None;
        // Counted once for all subscribers, after the loop (see `ShardStats::count_forwarded`).
        let (mut forwarded, mut to_links) = (0u64, 0u64);
        let mut held_back = [0u64; crate::stats::HELD_BACK.len()];
        for route in routes.iter_mut() {
            let Some(payload_type) = route.payload_type else {
                continue;
            };
            match route.forward.forward(layer, &meta) {
                Verdict::Forward {
                    seq,
                    timestamp,
                    patch,
                } => {
                    let Some(subscriber) = self.participants.get_mut(&route.subscriber) else {
                        continue;
                    };
                    if self.batch.is_full() {
                        self.batch.send(&self.socket, &self.stats);
                    }
                    let buf = self.batch.next_buffer();
                    let header_len = write_header(
                        buf,
                        &packet.header,
                        Rewritten {
                            ssrc: route.stream.ssrc(),
                            sequence_number: seq,
                            timestamp,
                            payload_type,
                            transport_cc: route
                                .transport_cc
                                .map(|id| (id, subscriber.downlink.next_sequence())),
                        },
                        &route.extensions,
                    );
                    buf.extend_from_slice(&packet.payload);
                    if patch {
                        route.forward.patch(&mut buf[header_len..]);
                    }
                    route
                        .stream
                        .sent(now, seq, timestamp, buf, header_len, &packet.payload, kept);
                    match subscriber
                        .egress
                        .protect(buf, header_len, route.stream.ssrc(), seq)
                    {
                        Ok(to) => {
                            let len = buf.len() + IP_UDP_HEADERS;
                            if route.transport_cc.is_some() {
                                subscriber.downlink.sent(now, len);
                            }
                            forwarded += 1;
                            if subscriber.is_link() {
                                to_links += 1;
                            }
                            match &subscriber.own_socket {
                                // A placed link's datagrams leave from its own socket; the
                                // buffer is left uncommitted, so the batch reuses it.
                                Some(own) => send(&own.socket, &self.stats, buf, to),
                                None => self.batch.commit(to),
                            }
                        }
                        Err(reason) => {
                            self.stats.count_dropped();
                            tracing::trace!(?reason, "forward refused");
                        }
                    }
                }
                Verdict::Drop(reason) => {
                    if let Some(n) = held_back.get_mut(crate::stats::held_back_index(reason)) {
                        *n += 1;
                    }
                    if reason == DropReason::WaitingForKeyframe {
                        wanted = route.forward.wants_keyframe();
                    }
                }
            }
        }
        // The batch is sent once the datagrams read with this packet are handled (`read_socket`).
        let payload_len = packet.payload.len() as u64;
        self.stats
            .count_forwarded(kind, forwarded, forwarded * payload_len);
        self.stats.count_held_back(&held_back);
        if to_links > 0 {
            self.stats.count_link_out(to_links, to_links * payload_len);
        }
        if let Some(layer) = wanted {
            self.request_keyframe(now, publisher, publication_id, layer, false);
        }
    }

    /// Announces each conference's active speaker when it changes.
    pub(super) fn review_speakers(&mut self, now: Instant) {
        let mut changes = Vec::new();
        for (conf_id, members) in &self.conferences {
            let candidates: Vec<((ParticipantId, PublicationId), f32)> = members
                .iter()
                .filter_map(|id| self.participants.get(id).map(|p| (id, p)))
                .flat_map(|(id, p)| {
                    p.publications
                        .iter()
                        .filter(|pb| pb.audio_level_id.is_some() && !pb.muted)
                        .map(move |pb| ((*id, pb.id), pb.loudness))
                })
                .collect();
            let current = self.speakers.get(conf_id).copied();
            let chosen = cascade_forward::speaker::select_speaker(&candidates, current);
            if chosen != current
                && let Some(speaker) = chosen
            {
                changes.push((conf_id.clone(), speaker));
            }
        }
        for (conf_id, (speaker, publication)) in changes {
            self.speakers
                .insert(conf_id.clone(), (speaker, publication));
            tracing::debug!(conf_id, speaker, "active speaker");
            let members = self.conferences.get(&conf_id).cloned().unwrap_or_default();
            self.announce_speaker(now, speaker, publication, &members);
        }
    }

    /// Tells `id` its conference's active speaker, if there is one: a participant that just
    /// joined learns who speaks without waiting for the next change.
    pub(super) fn tell_speaker(&mut self, now: Instant, id: ParticipantId) {
        let Some(p) = self.participants.get(&id) else {
            return;
        };
        if let Some(&(speaker, publication)) = self.speakers.get(&p.conf_id) {
            self.announce_speaker(now, speaker, publication, &[id]);
        }
    }

    /// Tells `to` that `publication` of `speaker` is the active speaker's: devices on the data
    /// channel, LiveKit subscriber connections through the signalling side.
    fn announce_speaker(
        &mut self,
        now: Instant,
        speaker: ParticipantId,
        publication: PublicationId,
        to: &[ParticipantId],
    ) {
        let Some((message, speaker_call)) = self.participants.get(&speaker).and_then(|p| {
            let stream_id = p
                .publications
                .iter()
                .find(|pb| pb.id == publication)?
                .stream_id
                .clone();
            let message = DataChannelMessage::ActiveSpeaker(ActiveSpeaker {
                user_id: p.call.user_id.clone(),
                device_id: p.call.device_id.clone(),
                stream_id,
            });
            Some((message, p.call.clone()))
        }) else {
            return;
        };
        let mut out_of_band = Vec::new();
        for id in to {
            let Some(p) = self.participants.get_mut(id) else {
                continue;
            };
            if p.auto_subscribe {
                out_of_band.push(FromMedia::ActiveSpeaker {
                    call: p.call.clone(),
                    speaker: speaker_call.clone(),
                });
                continue;
            }
            p.send(now, &message);
            flush(&self.socket, &self.stats, p);
        }
        for message in out_of_band {
            self.send_signal(message);
        }
    }
}

/// The layer of `publication` a subscriber rendering `height` pixels tall should get now.
pub(super) fn select_layer(
    publication: &Publication,
    height: Option<u32>,
    now: Instant,
) -> Option<LayerId> {
    let mut infos = [LayerInfo {
        active: false,
        height: 0,
    }; 4];
    let count = publication.layers.len().min(infos.len());
    for (info, layer) in infos.iter_mut().zip(&publication.layers) {
        info.active = layer
            .last_packet_at
            .is_some_and(|at| now.saturating_duration_since(at) < LAYER_TIMEOUT);
        info.height = cascade_forward::layer::nominal_height(layer.rid.as_deref(), FULL_HEIGHT);
    }
    cascade_forward::layer::select(height, &infos[..count])
}
