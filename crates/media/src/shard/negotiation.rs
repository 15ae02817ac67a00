//! The control side: data-channel messages, subscriptions, focus offers and device answers,
//! stream metadata.

use super::*;
use cascade_protocol::datachannel::TrackSubscription;
use cascade_protocol::metadata::split_link_track_id;
use std::collections::BTreeSet;

impl Shard {
    pub(super) fn on_channel_text(&mut self, now: Instant, id: ParticipantId, text: &str) {
        let message = match DataChannelMessage::parse(text) {
            Ok(message) => message,
            Err(err) => {
                self.stats.count_bad_channel_message();
                if let Some(p) = self.participants.get(&id) {
                    tracing::debug!(call = %p.call, %err, "bad data-channel message");
                }
                return;
            }
        };
        match message {
            DataChannelMessage::TrackSubscription(subscription) => {
                let mut changed = false;
                for request in &subscription.subscribe {
                    changed |= self.subscribe(now, id, request);
                }
                for request in &subscription.unsubscribe {
                    changed |= self.unsubscribe(id, &request.stream_id, &request.track_id);
                }
                if changed {
                    self.offer(now, id);
                }
                self.refresh_links_of(now, id);
            }
            DataChannelMessage::Negotiate(negotiate) => {
                let Negotiate {
                    description,
                    sdp_stream_metadata,
                } = negotiate;
                if description.kind == "offer" {
                    if !sdp_stream_metadata.is_empty()
                        && let Some(p) = self.participants.get_mut(&id)
                    {
                        p.metadata = sdp_stream_metadata;
                    }
                    if let Some(sdp) = self.answer_device_offer(now, id, description.sdp) {
                        let reply = DataChannelMessage::Negotiate(Negotiate {
                            description: SessionDescription::answer(sdp),
                            sdp_stream_metadata: self.forwarded_metadata(id),
                        });
                        let again = self.participants.get_mut(&id).is_some_and(|p| {
                            p.send(now, &reply);
                            p.negotiation.again
                        });
                        // Our offer was rolled back for theirs (glare): make it again.
                        if again {
                            self.offer(now, id);
                        }
                    }
                } else {
                    self.accept_device_answer(now, id, description.sdp);
                }
            }
            DataChannelMessage::SdpStreamMetadataChanged(changed) => {
                self.update_metadata(now, id, changed.sdp_stream_metadata);
            }
            DataChannelMessage::Ping(_) => {
                if let Some(p) = self.participants.get_mut(&id) {
                    p.send(now, &DataChannelMessage::Pong(Empty {}));
                }
            }
            DataChannelMessage::ActiveSpeaker(_) | DataChannelMessage::SubscribedLayers(_) => {
                // Only foci send these: another focus's, over a link, is not used (each focus
                // picks its conference's speaker from the audio levels it forwards, and links
                // are not told which layers to stop); a device sending one is counted.
                if !self.participants.get(&id).is_some_and(Participant::is_link) {
                    self.stats.count_bad_channel_message();
                }
            }
            DataChannelMessage::Pong(_) => {
                if let Some(p) = self.participants.get_mut(&id) {
                    p.last_pong = now;
                }
            }
            DataChannelMessage::Hangup(hangup) => {
                let reason = hangup
                    .reason
                    .unwrap_or_else(|| reason::USER_HANGUP.to_owned());
                if let Some(p) = self.participants.get(&id) {
                    tracing::info!(call = %p.call, reason, "device hung up on the data channel");
                }
                self.remove(now, id, Some(&reason));
            }
        }
    }

    /// Starts forwarding a publisher track to `subscriber`, or updates the size it renders the
    /// track at; returns whether tracks were added (a renegotiation is due).
    pub(super) fn subscribe(
        &mut self,
        now: Instant,
        subscriber: ParticipantId,
        request: &TrackRequest,
    ) -> bool {
        let Some(conf_id) = self
            .participants
            .get(&subscriber)
            .map(|p| p.conf_id.clone())
        else {
            return false;
        };
        let subscriber_is_link = self
            .participants
            .get(&subscriber)
            .is_some_and(Participant::is_link);
        // A link asks for one layer of a track at a time (README, "Cascaded foci").
        let (track_id, link_rid) = if subscriber_is_link {
            split_link_track_id(&request.track_id)
        } else {
            (request.track_id.as_str(), None)
        };
        let members = self.conferences.get(&conf_id).cloned().unwrap_or_default();
        let found = members.iter().filter(|m| **m != subscriber).find_map(|m| {
            self.participants.get(m).and_then(|p| {
                // No stream goes from one link into another.
                if subscriber_is_link && p.is_link() {
                    return None;
                }
                p.publications
                    .iter()
                    .find(|pb| pb.stream_id == request.stream_id && pb.track_id == track_id)
                    .map(|pb| (*m, pb.clone()))
            })
        });
        let Some((publisher, publication)) = found else {
            // A track another focus announced, not carried over the link yet: the request
            // waits for it, and the link subscribes to it.
            let link = members.iter().copied().find(|m| {
                self.participants.get(m).is_some_and(|p| {
                    p.is_link() && announces(&p.metadata, &request.stream_id, track_id)
                })
            });
            match link.and_then(|link| self.participants.get_mut(&link)) {
                Some(link) if !subscriber_is_link => {
                    link.forget_pending(subscriber, Some((&request.stream_id, &request.track_id)));
                    link.link_pending.push((subscriber, request.clone()));
                }
                _ => self.stats.count_bad_subscription(),
            }
            return false;
        };
        let pinned = if subscriber_is_link {
            match publication
                .layers
                .iter()
                .position(|l| l.rid.as_deref() == link_rid)
            {
                Some(index) => Some(index as LayerId),
                None => {
                    self.stats.count_bad_subscription();
                    return false;
                }
            }
        } else {
            None
        };
        let key = (publisher, publication.id);
        let requested_height = request.height;
        let target = pinned.or_else(|| select_layer(&publication, requested_height, now));
        if let Some(route) = self.routes.get_mut(&key).and_then(|routes| {
            routes
                .iter_mut()
                .find(|r| r.subscriber == subscriber && r.track_id == request.track_id)
        }) {
            if route.layer_pinned {
                return false;
            }
            route.requested_height = requested_height;
            if let Some(layer) = target
                && layer != route.forward.target()
            {
                route.forward.set_target(layer);
                self.stats.count_layer_switch();
                self.request_keyframe(now, publisher, publication.id, layer, true);
            }
            return false;
        }
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return false;
        };
        let out_ssrc = rand::random::<u32>();
        let rtx_ssrc = (publication.kind == RtpCodecKind::Video).then(rand::random::<u32>);
        let track = MediaStreamTrack::new(
            publication.stream_id.clone(),
            request.track_id.clone(),
            request.track_id.clone(),
            publication.kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(out_ssrc),
                    // Retransmissions of video go over RTX where the subscriber negotiated it.
                    rtx: rtx_ssrc.map(|ssrc| RTCRtpRtxParameters { ssrc }),
                    ..Default::default()
                },
                codec: publication.codec.clone(),
                ..Default::default()
            }],
        );
        // A transceiver of its own: `add_track` would reuse the first free transceiver of the
        // kind, which can be the one the device publishes on; if the device made that one
        // `sendonly`, its answer refuses the focus's media there and the subscription is dead.
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: Vec::new(),
            send_encodings: Vec::new(),
        };
        let sender_id = match p.pc.add_transceiver_from_track(track, Some(init)) {
            Ok(transceiver_id) => RTCRtpSenderId::from(transceiver_id),
            Err(err) => {
                tracing::warn!(call = %p.call, %err, "cannot add a track for a subscription");
                return false;
            }
        };
        // Its receiver reports come from SSRCs of their own.
        p.admission.allow_streams(1);
        let codec = Codec::from_mime(&publication.codec.mime_type);
        let top = publication.layers.len().saturating_sub(1) as LayerId;
        let mut forward = Subscription::new(
            codec,
            publication.codec.clock_rate,
            rand::random(),
            rand::random(),
            target.unwrap_or(top),
        );
        forward.set_paused(publication.muted);
        tracing::info!(call = %p.call, stream_id = request.stream_id, track_id = request.track_id, height = requested_height, layer = target, "subscribed");
        self.routes.entry(key).or_default().push(Route {
            subscriber,
            sender_id,
            stream: OutboundStream::new(out_ssrc, publication.codec.clock_rate, rtx_ssrc),
            payload_type: None,
            mime_type: publication.codec.mime_type.clone(),
            stream_id: publication.stream_id,
            track_id: request.track_id.clone(),
            requested_height,
            extensions: ExtensionMap::default(),
            transport_cc: None,
            ceiling: Default::default(),
            forward,
            layer_pinned: pinned.is_some(),
            disabled: false,
        });
        let index = self.routes.get(&key).map_or(0, |routes| routes.len() - 1);
        self.watch_route(key, index);
        true
    }

    /// A LiveKit client's settings for track `track_id` its subscriber connection `id`
    /// receives: pauses it while `disabled` (resumed at a keyframe), else picks the layer
    /// for `height` as a subscription's render size does. A track the call does not receive
    /// is counted as a bad subscription.
    pub(super) fn track_settings(
        &mut self,
        now: Instant,
        id: ParticipantId,
        track_id: &str,
        height: Option<u32>,
        disabled: bool,
    ) {
        let found = self.routes.iter().find_map(|(key, routes)| {
            routes
                .iter()
                .find(|r| r.subscriber == id && r.track_id == track_id)
                .map(|r| (*key, r.stream_id.clone()))
        });
        let Some(((publisher, publication), stream_id)) = found else {
            self.stats.count_bad_subscription();
            return;
        };
        let muted = self.participants.get(&publisher).is_some_and(|p| {
            p.publications
                .iter()
                .any(|pb| pb.id == publication && pb.muted)
        });
        let wanted = self
            .routes
            .get_mut(&(publisher, publication))
            .and_then(|routes| {
                let index = routes
                    .iter()
                    .position(|r| r.subscriber == id && r.track_id == track_id)?;
                let route = routes.get_mut(index)?;
                route.disabled = disabled;
                route.forward.set_paused(muted || disabled);
                Some((index, route.forward.wants_keyframe()))
            });
        let wanted = wanted.and_then(|(index, wanted)| {
            self.watch_route((publisher, publication), index);
            wanted
        });
        if let Some(layer) = wanted {
            self.request_keyframe(now, publisher, publication, layer, true);
        }
        if !disabled {
            let request = TrackRequest {
                stream_id,
                track_id: track_id.to_owned(),
                width: None,
                height,
            };
            self.subscribe(now, id, &request);
        }
    }

    /// Stops forwarding a track to `subscriber`; returns whether anything changed.
    pub(super) fn unsubscribe(
        &mut self,
        subscriber: ParticipantId,
        stream_id: &str,
        track_id: &str,
    ) -> bool {
        let mut removed = Vec::new();
        for routes in self.routes.values_mut() {
            routes.retain(|r| {
                let hit = r.subscriber == subscriber
                    && r.stream_id == stream_id
                    && r.track_id == track_id;
                if hit {
                    removed.push(r.sender_id);
                }
                !hit
            });
        }
        self.routes.retain(|_, routes| !routes.is_empty());
        self.payloads.retain(|key, _| self.routes.contains_key(key));
        for link in self.participants.values_mut() {
            link.forget_pending(subscriber, Some((stream_id, track_id)));
        }
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return false;
        };
        for sender_id in &removed {
            if let Err(err) = p.pc.remove_track(*sender_id) {
                tracing::debug!(call = %p.call, %err, "remove_track failed");
            }
        }
        !removed.is_empty()
    }

    /// Makes (or schedules) a focus offer to `id` and sends it on the data channel, or to the
    /// signalling side for a call negotiated out of band.
    pub(super) fn offer(&mut self, now: Instant, id: ParticipantId) {
        let metadata = self.forwarded_metadata(id);
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        match p.make_offer(now) {
            Ok(Some(sdp)) if p.out_of_band => {
                let message = FromMedia::Negotiate {
                    call: p.call.clone(),
                    description: SessionDescription::offer(sdp),
                    metadata,
                };
                self.send_signal(message);
            }
            Ok(Some(sdp)) => {
                let message = DataChannelMessage::Negotiate(Negotiate {
                    description: SessionDescription::offer(sdp),
                    sdp_stream_metadata: metadata,
                });
                p.send(now, &message);
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(call = %p.call, %err, "cannot make an offer"),
        }
        self.process(now, id);
    }

    pub(super) fn answer_device_offer(
        &mut self,
        now: Instant,
        id: ParticipantId,
        sdp: String,
    ) -> Option<String> {
        let p = self.participants.get_mut(&id)?;
        match p.answer_offer(now, sdp) {
            Ok(answer) => Some(answer),
            Err(crate::MediaError::Glare) => {
                tracing::debug!(call = %p.call, "the other focus's offer crossed ours; keeping ours");
                None
            }
            Err(err) => {
                tracing::warn!(call = %p.call, %err, "cannot answer the device's offer");
                None
            }
        }
    }

    pub(super) fn accept_device_answer(&mut self, now: Instant, id: ParticipantId, sdp: String) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let again = match p.accept_answer(now, sdp) {
            Ok(again) => again,
            Err(err) => {
                tracing::warn!(call = %p.call, %err, "cannot apply the device's answer");
                return;
            }
        };
        // Routes negotiated by this answer learn their payload type and extension ids, and
        // start at a keyframe.
        let mut ready = Vec::new();
        for (&key, routes) in self.routes.iter_mut() {
            for route in routes
                .iter_mut()
                .filter(|r| r.subscriber == id && r.payload_type.is_none())
            {
                let Some(mut sender) = p.pc.rtp_sender(route.sender_id) else {
                    continue;
                };
                let parameters = &sender.get_parameters().rtp_parameters;
                let codec = egress::send_codec(&parameters.codecs, &route.mime_type);
                route.payload_type = codec.map(|c| c.payload_type);
                if let Some(codec) = codec {
                    route.stream.negotiated(codec.rtx_payload_type, codec.nack);
                }
                ready.push((
                    key,
                    route.sender_id,
                    extension_ids(&parameters.header_extensions),
                ));
            }
        }
        for (key, sender_id, subscriber_extensions) in ready {
            let publisher_extensions = self.publisher_extensions(key);
            let subscriber_extensions: Vec<(&str, u8)> = subscriber_extensions
                .iter()
                .map(|(uri, id)| (uri.as_str(), *id))
                .collect();
            let map = ExtensionMap::new(
                publisher_extensions
                    .iter()
                    .map(|(uri, id)| (uri.as_str(), *id)),
                &subscriber_extensions,
            );
            let wanted = self.routes.get_mut(&key).and_then(|routes| {
                let route = routes
                    .iter_mut()
                    .find(|r| r.sender_id == sender_id && r.subscriber == id)?;
                route.extensions = map;
                route.transport_cc = subscriber_extensions
                    .iter()
                    .find(|(uri, _)| *uri == cascade_forward::extension::TRANSPORT_CC)
                    .map(|(_, id)| *id);
                route.payload_type.and(route.forward.wants_keyframe())
            });
            if let Some(layer) = wanted {
                self.request_keyframe(now, key.0, key.1, layer, true);
            }
        }
        if again {
            self.offer(now, id);
        }
    }

    pub(super) fn update_metadata(
        &mut self,
        now: Instant,
        id: ParticipantId,
        metadata: SdpStreamMetadata,
    ) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        p.metadata = metadata;
        // MSC3291: muted tracks stop being forwarded; unmuted video resumes at a keyframe.
        let mut changed = Vec::new();
        for publication in &mut p.publications {
            let muted =
                muted_by_metadata(&p.metadata, Some(&publication.stream_id), publication.kind);
            if muted != publication.muted {
                publication.muted = muted;
                changed.push((publication.id, muted));
            }
        }
        let conf_id = p.conf_id.clone();
        if p.is_link() {
            self.subscribe_over_link(now, id);
        }
        for (publication, muted) in changed {
            let mut wanted = None;
            for route in self
                .routes
                .get_mut(&(id, publication))
                .into_iter()
                .flatten()
            {
                route.forward.set_paused(muted || route.disabled);
                wanted = wanted.or(route.forward.wants_keyframe());
            }
            tracing::info!(conf_id, publication, muted, "publication mute changed");
            let routes = self.routes.get(&(id, publication)).map_or(0, Vec::len);
            for index in 0..routes {
                self.watch_route((id, publication), index);
            }
            if let Some(layer) = wanted {
                self.request_keyframe(now, id, publication, layer, true);
            }
        }
        self.announce_conference(now, &conf_id, Some(id));
    }

    /// Subscribes over a link to the tracks the other focus announced that a device here
    /// subscribes to (each with every simulcast layer), and unsubscribes from the others;
    /// drops waiting requests for tracks no longer announced.
    pub(super) fn subscribe_over_link(&mut self, now: Instant, id: ParticipantId) {
        let demand = self.link_demand(id);
        let Some(p) = self.participants.get(&id) else {
            return;
        };
        let wanted: BTreeSet<(String, String)> = p
            .metadata
            .iter()
            .flat_map(|(stream_id, stream)| {
                stream
                    .tracks
                    .iter()
                    .flatten()
                    .map(move |(track_id, _)| (stream_id.clone(), track_id.clone()))
            })
            .filter(|(stream_id, track_id)| {
                let base = split_link_track_id(track_id).0;
                demand.contains(&(stream_id.as_str(), base))
            })
            .collect();
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let metadata = &p.metadata;
        p.link_pending
            .retain(|(_, r)| announces(metadata, &r.stream_id, &r.track_id));
        let Some(change) = TrackSubscription::change(&p.link_subscriptions, &wanted, |_, _| None)
        else {
            return;
        };
        let added = change.subscribe.len();
        let message = DataChannelMessage::TrackSubscription(change);
        if p.send(now, &message) {
            p.link_subscriptions = wanted;
            // The other focus sends each track subscribed to with SSRCs of its own.
            p.admission.allow_streams(added);
        }
    }

    /// The (stream id, track id) of `link`'s tracks that devices here subscribe to: forwarded
    /// to one, or waited for by one.
    fn link_demand(&self, link: ParticipantId) -> BTreeSet<(&str, &str)> {
        let Some(p) = self.participants.get(&link) else {
            return BTreeSet::new();
        };
        let carried = p.publications.iter().filter(|publication| {
            self.routes
                .get(&(link, publication.id))
                .is_some_and(|routes| !routes.is_empty())
        });
        carried
            .map(|pb| (pb.stream_id.as_str(), pb.track_id.as_str()))
            .chain(
                p.link_pending
                    .iter()
                    .map(|(_, r)| (r.stream_id.as_str(), r.track_id.as_str())),
            )
            .collect()
    }

    /// Brings the link subscriptions of `id`'s conference up to date with what its devices
    /// subscribe to (after `id`, a device, subscribed, unsubscribed or left).
    pub(super) fn refresh_links_of(&mut self, now: Instant, id: ParticipantId) {
        let Some(p) = self.participants.get(&id) else {
            return;
        };
        if p.is_link() {
            return;
        }
        let conf_id = p.conf_id.clone();
        self.refresh_links(now, &conf_id);
    }

    /// Brings every link's subscriptions in `conf_id` up to date (see
    /// [`Shard::subscribe_over_link`]).
    pub(super) fn refresh_links(&mut self, now: Instant, conf_id: &str) {
        let links: Vec<ParticipantId> = self
            .conferences
            .get(conf_id)
            .into_iter()
            .flatten()
            .copied()
            .filter(|m| self.participants.get(m).is_some_and(Participant::is_link))
            .collect();
        for link in links {
            self.subscribe_over_link(now, link);
        }
    }

    /// The metadata of the streams the focus forwards to `id`.
    pub(super) fn forwarded_metadata(&self, id: ParticipantId) -> SdpStreamMetadata {
        let Some(p) = self.participants.get(&id) else {
            return SdpStreamMetadata::new();
        };
        let members = self
            .conferences
            .get(&p.conf_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        available_streams(id, members, &self.participants)
    }

    /// Tells `id` which streams it may subscribe to; a call that subscribes by itself
    /// subscribes to them instead (see [`Shard::subscribe_to_all`]).
    pub(super) fn announce_to(&mut self, now: Instant, id: ParticipantId) {
        if self.participants.get(&id).is_some_and(|p| p.auto_subscribe) {
            self.subscribe_to_all(now, id);
            return;
        }
        let metadata = self.forwarded_metadata(id);
        if let Some(p) = self.participants.get_mut(&id) {
            let message = DataChannelMessage::SdpStreamMetadataChanged(
                cascade_protocol::datachannel::MetadataChanged {
                    sdp_stream_metadata: metadata,
                },
            );
            p.send(now, &message);
            flush(&self.socket, &self.stats, p);
        }
    }

    /// Subscribes `id` to every track the conference's other participants publish — but
    /// those of its own user and device (a LiveKit client's own publisher connection) and
    /// those it declined — and
    /// unsubscribes it from tracks no longer published; offers the change.
    pub(super) fn subscribe_to_all(&mut self, now: Instant, id: ParticipantId) {
        let Some(p) = self.participants.get(&id) else {
            return;
        };
        let own = (p.call.user_id.clone(), p.call.device_id.clone());
        let declined = p.declined.clone();
        let receives = p.receives;
        let conf_id = p.conf_id.clone();
        let members = self.conferences.get(&conf_id).cloned().unwrap_or_default();
        let published: BTreeSet<(String, String)> = members
            .iter()
            .filter_map(|m| self.participants.get(m))
            .filter(|m| receives && (&m.call.user_id, &m.call.device_id) != (&own.0, &own.1))
            .flat_map(|m| {
                m.publications
                    .iter()
                    .filter(|pb| !declined.contains(&pb.track_id))
                    .map(|pb| (pb.stream_id.clone(), pb.track_id.clone()))
            })
            .collect();
        let subscribed: BTreeSet<(String, String)> = self
            .routes
            .values()
            .flatten()
            .filter(|r| r.subscriber == id)
            .map(|r| (r.stream_id.clone(), r.track_id.clone()))
            .collect();
        let mut changed = false;
        for (stream_id, track_id) in published.difference(&subscribed) {
            let request = TrackRequest {
                stream_id: stream_id.clone(),
                track_id: track_id.clone(),
                width: None,
                height: None,
            };
            changed |= self.subscribe(now, id, &request);
        }
        for (stream_id, track_id) in subscribed.difference(&published) {
            changed |= self.unsubscribe(id, stream_id, track_id);
        }
        if changed {
            self.offer(now, id);
        }
    }

    /// Tells every member of a conference (but `except`) which streams it may subscribe to.
    pub(super) fn announce_conference(
        &mut self,
        now: Instant,
        conf_id: &str,
        except: Option<ParticipantId>,
    ) {
        let members = self.conferences.get(conf_id).cloned().unwrap_or_default();
        for id in members.into_iter().filter(|id| Some(*id) != except) {
            self.announce_to(now, id);
        }
    }
}

/// Whether the device's metadata says the stream's track of `kind` is muted.
pub(super) fn muted_by_metadata(
    metadata: &SdpStreamMetadata,
    stream_id: Option<&String>,
    kind: RtpCodecKind,
) -> bool {
    let Some(stream) = stream_id.and_then(|id| metadata.get(id)) else {
        return false;
    };
    match kind {
        RtpCodecKind::Audio => stream.audio_muted,
        _ => stream.video_muted,
    }
}

/// (URI, id) of negotiated header extensions.
pub(super) fn extension_ids(
    extensions: &[rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionParameters],
) -> Vec<(String, u8)> {
    extensions
        .iter()
        .filter_map(|e| Some((e.uri.clone(), u8::try_from(e.id).ok()?)))
        .collect()
}

/// Whether `metadata` (a link's) announces some layer of track `track_id` in `stream_id`.
fn announces(metadata: &SdpStreamMetadata, stream_id: &str, track_id: &str) -> bool {
    metadata.get(stream_id).is_some_and(|stream| {
        stream
            .tracks
            .iter()
            .flatten()
            .any(|(id, _)| split_link_track_id(id).0 == track_id)
    })
}
