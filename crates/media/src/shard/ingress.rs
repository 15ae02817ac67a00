//! Ingress: the publishers' streams (tracks that end, keyframe requests to publishers, the
//! header extensions they negotiated).

use super::*;
use cascade_protocol::datachannel::TrackRequest;
use cascade_protocol::metadata::split_link_track_id;

impl Shard {
    /// A device's track opened (its first packet arrived): a new publication, or another
    /// simulcast layer of one it has; the conference hears of new publications.
    pub(super) fn publish(&mut self, now: Instant, id: ParticipantId, init: RTCTrackEventInit) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let Some(mut receiver) = p.pc.rtp_receiver(init.receiver_id) else {
            return;
        };
        let track = receiver.track();
        let kind = track.kind();
        let Some(codec) = track.codec(init.ssrc).cloned() else {
            tracing::debug!(call = %p.call, ssrc = init.ssrc, "track without codec");
            return;
        };
        let audio_level_id = receiver
            .get_parameters()
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == AUDIO_LEVEL_URI)
            .and_then(|e| u8::try_from(e.id).ok());
        if p.publication(init.ssrc).is_some() {
            return;
        }
        tracing::info!(call = %p.call, conf_id = p.conf_id, track = init.track_id, rid = init.rid, mime = codec.mime_type, ssrc = init.ssrc, audio_level = audio_level_id, "publication");
        if p.publications.is_empty() {
            // A track opens with its first packet: the call's first media.
            self.stats
                .first_packet_latency
                .observe(now.saturating_duration_since(p.opened_at));
        }
        // Over a link each simulcast layer arrives as a track of its own, named after its
        // layer (README, "Cascaded foci").
        let (track_id, rid) = if p.is_link() {
            let (track_id, rid) = split_link_track_id(&init.track_id);
            (track_id.to_owned(), rid.map(str::to_owned))
        } else {
            (init.track_id.clone(), init.rid.clone())
        };
        let layer = Layer {
            rid,
            ssrc: init.ssrc,
            last_packet_at: Some(now),
            last_keyframe_request: None,
            received: Default::default(),
            bitrate: Default::default(),
            watched: true,
        };
        // Track ids are only unique within a stream: a link carries the tracks of many devices.
        let stream_id = init.stream_ids.first().cloned().unwrap_or_default();
        if let Some(existing) = p
            .publications
            .iter_mut()
            .find(|pb| pb.track_id == track_id && pb.stream_id == stream_id)
        {
            // Another simulcast layer of a track we know: keep the layers lowest first.
            let ssrc = layer.ssrc;
            existing.layers.push(layer);
            existing
                .layers
                .sort_by_key(|l| cascade_forward::layer::rank(l.rid.as_deref()));
            // Layers below it arriving later (a link may carry the top layer first) shift it:
            // the subscriptions' layer ids follow, so nobody is moved to another layer.
            let publication = existing.id;
            if let Some(at) = existing
                .layers
                .iter()
                .position(|l| l.ssrc == ssrc)
                .and_then(|at| LayerId::try_from(at).ok())
                && let Some(routes) = self.routes.get_mut(&(id, publication))
            {
                for route in routes {
                    route.forward.layer_inserted(at);
                    route.ceiling.layer_inserted(at);
                }
            }
            // Links announce each layer as a track: they hear of this one.
            let conf_id = p.conf_id.clone();
            self.announce_conference(now, &conf_id, Some(id));
            return;
        }
        let publication_id = p.next_publication_id;
        p.next_publication_id += 1;
        let muted = muted_by_metadata(&p.metadata, init.stream_ids.first(), kind);
        // Devices here that subscribed to the track before the link carried it.
        let mut waiting = Vec::new();
        p.link_pending.retain(|(subscriber, request)| {
            let hit = request.stream_id == stream_id && request.track_id == track_id;
            if hit {
                waiting.push((*subscriber, request.clone()));
            }
            !hit
        });
        p.publications.push(Publication {
            id: publication_id,
            stream_id,
            track_id,
            kind,
            layers: vec![layer],
            receiver_id: init.receiver_id,
            codec,
            audio_level_id,
            loudness: 0.0,
            muted,
            told_layers: None,
        });
        let conf_id = p.conf_id.clone();
        self.announce_conference(now, &conf_id, Some(id));
        for (subscriber, request) in waiting {
            if self.subscribe(now, subscriber, &request) {
                self.offer(now, subscriber);
            }
        }
    }

    /// A publisher's track ended: stop its routes and tell the others.
    pub(super) fn unpublish(&mut self, now: Instant, publisher: ParticipantId, track_id: &str) {
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        // Over a link one layer's track ending ends the publication: the other focus sends
        // every layer of a track until the track ends.
        let track_id = if p.is_link() {
            split_link_track_id(track_id).0
        } else {
            track_id
        };
        let ended: Vec<PublicationId> = p
            .publications
            .iter()
            .filter(|pb| pb.track_id == track_id)
            .map(|pb| pb.id)
            .collect();
        p.publications.retain(|pb| pb.track_id != track_id);
        let conf_id = p.conf_id.clone();
        let is_link = p.is_link();
        let mut affected = Vec::new();
        let mut waiting = Vec::new();
        for publication in ended {
            for route in self
                .routes
                .remove(&(publisher, publication))
                .unwrap_or_default()
            {
                if let Some(s) = self.participants.get_mut(&route.subscriber) {
                    let _ = s.pc.remove_track(route.sender_id);
                    affected.push(route.subscriber);
                }
                // Over a link the device's subscription outlives the track: it waits for the
                // track to come back while the other focus still announces it.
                if is_link {
                    let request = TrackRequest {
                        stream_id: route.stream_id,
                        track_id: route.track_id,
                        width: None,
                        height: route.requested_height,
                    };
                    waiting.push((route.subscriber, request));
                }
            }
        }
        if let Some(p) = self.participants.get_mut(&publisher) {
            p.link_pending.extend(waiting);
        }
        affected.dedup();
        for id in affected {
            self.offer(now, id);
        }
        self.announce_conference(now, &conf_id, Some(publisher));
    }

    /// Asks a publisher for a keyframe of one layer, at most once per interval unless `always`.
    pub(super) fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        publication: PublicationId,
        layer: LayerId,
        always: bool,
    ) {
        let interval = self.config.keyframe_request_interval();
        // Whoever waits for this layer's keyframe receives it from now on.
        self.watch(publisher, publication, layer);
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        let Some(publication) = p.publication_by_id(publication) else {
            return;
        };
        if publication.kind != RtpCodecKind::Video {
            return;
        }
        let receiver_id = publication.receiver_id;
        let Some(layer) = publication.layers.get_mut(usize::from(layer)) else {
            return;
        };
        if !always
            && layer
                .last_keyframe_request
                .is_some_and(|at| now.duration_since(at) < interval)
        {
            return;
        }
        layer.last_keyframe_request = Some(now);
        let media_ssrc = layer.ssrc;
        if let Some(mut receiver) = p.pc.rtp_receiver(receiver_id) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            if receiver.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                self.stats.count_keyframe_request();
            }
        }
        flush(&self.socket, &self.stats, p);
    }

    /// The header extensions (URI, id) the publisher of `key` negotiated.
    pub(super) fn publisher_extensions(
        &mut self,
        key: (ParticipantId, PublicationId),
    ) -> Vec<(String, u8)> {
        let Some(p) = self.participants.get_mut(&key.0) else {
            return Vec::new();
        };
        let Some(receiver_id) = p
            .publications
            .iter()
            .find(|pb| pb.id == key.1)
            .map(|pb| pb.receiver_id)
        else {
            return Vec::new();
        };
        p.pc.rtp_receiver(receiver_id)
            .map(|mut r| extension_ids(&r.get_parameters().rtp_parameters.header_extensions))
            .unwrap_or_default()
    }
}
