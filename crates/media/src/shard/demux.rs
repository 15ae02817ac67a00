//! Socket → demux → peer connection: which call a datagram belongs to, what the stack makes
//! of it, and the events and messages it produces.

use super::*;
use crate::participant::{LIVEKIT_LOSSY, LIVEKIT_RELIABLE, MAX_ADDRESSES};
use rtc::data_channel::{RTCDataChannelId, RTCDataChannelMessage};

impl Shard {
    /// Handles one datagram from the socket.
    pub fn on_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.stats.count_received(datagram.len());
        let id = match cascade_forward::demux::stun_local_ufrag(datagram) {
            Some(ufrag) => match self.by_ufrag.get(ufrag) {
                Some(&id) => {
                    self.on_call_datagram(now, id, self.local_addr, from, datagram);
                    // Bound once the stack has answered the check, i.e. verified its
                    // MESSAGE-INTEGRITY: a request that only names the ufrag binds nothing.
                    if let Some(p) = self.participants.get_mut(&id)
                        && p.answered_check.take() == Some(from)
                    {
                        self.bind_address(from, id);
                    }
                    return;
                }
                None => {
                    self.stats.count_unknown_source();
                    return;
                }
            },
            None => match self.by_addr.get(&from) {
                Some(&id) => id,
                None => {
                    self.stats.count_unknown_source();
                    return;
                }
            },
        };
        self.on_call_datagram(now, id, self.local_addr, from, datagram);
    }

    /// Binds remote address `from` to call `id` (moving it from another call, if it was bound
    /// to one) as the call's newest, and forgets the call's least recently answered addresses
    /// beyond [`MAX_ADDRESSES`] — never the one its media is sent to.
    fn bind_address(&mut self, from: SocketAddr, id: ParticipantId) {
        if let Some(previous) = self.by_addr.insert(from, id)
            && previous != id
            && let Some(p) = self.participants.get_mut(&previous)
        {
            p.addresses.retain(|a| *a != from);
        }
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        // Answered again: it moves to the back of the queue.
        p.addresses.retain(|a| *a != from);
        p.addresses.push_back(from);
        let media = p.egress.remote();
        while p.addresses.len() > MAX_ADDRESSES {
            let Some(oldest) = p
                .addresses
                .iter()
                .position(|a| Some(*a) != media)
                .and_then(|at| p.addresses.remove(at))
            else {
                break;
            };
            if self.by_addr.get(&oldest) == Some(&id) {
                self.by_addr.remove(&oldest);
            }
        }
    }

    /// Handles one datagram of call `id`, received on `local_addr` (the loop's socket, or the
    /// call's own).
    pub(super) fn on_call_datagram(
        &mut self,
        now: Instant,
        id: ParticipantId,
        local_addr: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
    ) {
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        let inbound = admission::classify(datagram);
        let media = match inbound {
            Inbound::Rtp { ssrc, .. } | Inbound::Rtcp(ssrc) => {
                if !participant.admission.admit(ssrc) {
                    self.stats.count_ssrc_limit();
                    tracing::debug!(call = %participant.call, ssrc, admitted = participant.admission.len(), rtcp = matches!(inbound, Inbound::Rtcp(_)), "SSRC over the call's limit; dropped");
                    return;
                }
                true
            }
            Inbound::Other => false,
        };
        if let Inbound::Rtcp(_) = inbound {
            match feedback::read_feedback(participant, datagram) {
                feedback::FeedbackRead::Taken(packets) => {
                    self.on_rtcp(now, id, &packets);
                    return;
                }
                feedback::FeedbackRead::Refused => {
                    self.stats.count_srtp_refused();
                    return;
                }
                feedback::FeedbackRead::ForTheStack => {}
            }
        }
        let reads_before = interceptor::reads_on_this_thread();
        let read = participant.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(datagram),
        });
        if let Err(err) = read {
            tracing::trace!(call = %participant.call, %err, "datagram refused");
        }
        if media && interceptor::reads_on_this_thread() == reads_before {
            self.stats.count_srtp_refused();
        } else if let Inbound::Rtp { ssrc, payload_type } = inbound
            && !participant.stack_binds(ssrc, payload_type)
        {
            self.stats.count_unbound_ssrc();
            tracing::debug!(call = %participant.call, ssrc, "RTP from an SSRC bound to no track");
        }
        self.process(now, id);
    }

    /// Drains everything a participant's peer connection produced.
    pub(super) fn process(&mut self, now: Instant, id: ParticipantId) {
        loop {
            let Some(participant) = self.participants.get_mut(&id) else {
                return;
            };
            flush(&self.socket, &self.stats, participant);
            if let Some(event) = participant.pc.poll_event() {
                self.on_event(now, id, event);
                continue;
            }
            if let Some(TaggedRTCMessage { message, .. }) = participant.pc.poll_read() {
                match message {
                    RTCMessage::RtpPacket(_, packet) => self.on_rtp(now, id, packet),
                    RTCMessage::RtcpPacket(_, packets) => self.on_rtcp(now, id, &packets),
                    RTCMessage::DataChannelMessage(channel, message) if participant.out_of_band => {
                        self.on_livekit_data(now, id, channel, message);
                    }
                    RTCMessage::DataChannelMessage(_, message) => {
                        match std::str::from_utf8(&message.data) {
                            Ok(text) => self.on_channel_text(now, id, text),
                            Err(_) => self.stats.count_bad_channel_message(),
                        }
                    }
                    _ => {}
                }
                continue;
            }
            participant.deadline = participant.due(self.connect_timeout, self.keepalive_timeout);
            self.earliest_call_deadline = self.earliest_call_deadline.min(participant.deadline);
            return;
        }
    }

    /// A binary message a LiveKit client sent on its `_reliable` or `_lossy` channel: handed
    /// to the signalling side, which checks it and names its recipients (issue 12). Text,
    /// another channel, or more than
    /// [`DATA_MESSAGES_PER_SECOND`](crate::participant::DATA_MESSAGES_PER_SECOND) a second:
    /// counted as bad.
    fn on_livekit_data(
        &mut self,
        now: Instant,
        id: ParticipantId,
        channel: RTCDataChannelId,
        message: RTCDataChannelMessage,
    ) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let kind = p.livekit_channel_kind(channel);
        let (Some(reliable), false) = (kind, message.is_string) else {
            self.stats.count_bad_channel_message();
            return;
        };
        if !p.data_allowance.take(now) {
            self.stats.count_bad_channel_message();
            return;
        }
        let call = p.call.clone();
        self.send_signal(FromMedia::Data {
            call,
            reliable,
            payload: message.data.to_vec(),
        });
    }

    pub(super) fn on_event(
        &mut self,
        now: Instant,
        id: ParticipantId,
        event: RTCPeerConnectionEvent,
    ) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(p) = self.participants.get_mut(&id) else {
                    return;
                };
                if p.is_link() {
                    tracing::info!(call = %p.call, conf_id = p.conf_id, %state, "link state");
                } else {
                    tracing::debug!(call = %p.call, conf_id = p.conf_id, %state, "connection state");
                }
                self.pc_states.insert(id, state);
                match state {
                    RTCPeerConnectionState::Connected => p.connected = true,
                    RTCPeerConnectionState::Failed => {
                        self.remove(now, id, Some(reason::ICE_FAILED));
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(channel)) => {
                let Some(p) = self.participants.get_mut(&id) else {
                    return;
                };
                let label = p.pc.data_channel(channel).map(|c| c.label().to_owned());
                if p.out_of_band {
                    match label.as_deref() {
                        Some(LIVEKIT_RELIABLE) => p.livekit_channels[0] = Some(channel),
                        Some(LIVEKIT_LOSSY) => p.livekit_channels[1] = Some(channel),
                        _ => {}
                    }
                    return;
                }
                if !label.is_some_and(|l| Participant::is_signalling_channel(&l)) {
                    return;
                }
                p.data_channel = Some(channel);
                p.last_pong = now;
                p.next_ping = Some(now + self.config.keepalive_interval());
                let offer_due = p.negotiation.again;
                self.announce_to(now, id);
                self.tell_speaker(now, id);
                if offer_due {
                    self.offer(now, id);
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                self.publish(now, id, init);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) => {
                self.unpublish(now, id, &track_id);
            }
            _ => {}
        }
    }
}
