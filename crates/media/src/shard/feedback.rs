//! Feedback on the egress side: subscribers' RTCP (keyframe requests, NACKs answered from the
//! outgoing streams' history, congestion feedback for their downlink estimates) and the
//! focus's sender reports.
//!
//! A device's SRTCP is read here, past the stack, with an SRTCP context of the focus's own
//! ([`read_feedback`]): a subscriber sends transport-cc feedback ten or more times a second,
//! and through the peer connection's read path (its handlers, the interceptor chain, a queue
//! at each step) each one cost more than the focus's whole handling of it. A compound with a
//! packet the stack has a use for (a sender report, whose time a receiver report must echo;
//! anything the focus does not know) goes to the stack as received, and a link's too (its
//! reception reports come up through the tap, see [`crate::interceptor::FeedbackTap`]).

use super::*;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::source_description::SourceDescription;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;

/// What [`read_feedback`] made of an SRTCP datagram.
pub(super) enum FeedbackRead {
    /// The compound's packets, every one of a kind the focus handles (reception reports and
    /// source descriptions left out): the stack never sees the datagram.
    Taken(Vec<Box<dyn rtc::rtcp::Packet>>),
    /// Refused by SRTCP (authentication or replay, RFC 3711 §3.4): dropped.
    Refused,
    /// For the stack, as received (see the module's documentation).
    ForTheStack,
}

/// Decrypts and parses an SRTCP `datagram` from `p` with the focus's own context (RFC 3711
/// §3.4; the compound's packets per RFC 3550 §6.1 and RFC 4585 §6), and tells whether the
/// focus takes it whole.
pub(super) fn read_feedback(p: &mut Participant, datagram: &[u8]) -> FeedbackRead {
    if p.is_link() {
        return FeedbackRead::ForTheStack;
    }
    let Some(context) = p.feedback_srtcp.as_mut() else {
        return FeedbackRead::ForTheStack;
    };
    let Ok(plain) = context.decrypt_rtcp(datagram) else {
        return FeedbackRead::Refused;
    };
    match taken_compound(&plain) {
        Some(packets) => FeedbackRead::Taken(packets),
        // For the stack; if malformed, the stack refuses it and the refusal is counted there.
        None => FeedbackRead::ForTheStack,
    }
}

/// The packets of the RTCP compound `plain` that the focus acts on, if it takes the compound
/// whole (every packet one [`taken`] accepts); `None` if the stack must have it, or if it
/// does not parse.
fn taken_compound(plain: &[u8]) -> Option<Vec<Box<dyn rtc::rtcp::Packet>>> {
    let mut packets = rtc::rtcp::packet::unmarshal(&mut &plain[..]).ok()?;
    if !packets.iter().all(|packet| taken(packet.as_ref())) {
        return None;
    }
    // Reception reports about the focus's streams and the device's names are of no use to it
    // (a link's are, and never come here).
    packets.retain(|packet| {
        let any = packet.as_any();
        !any.is::<ReceiverReport>() && !any.is::<SourceDescription>()
    });
    Some(packets)
}

/// Whether the focus handles `packet` itself, without the stack.
fn taken(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<ReceiverReport>()
        || any.is::<SourceDescription>()
        || crate::interceptor::is_feedback(packet)
}

impl Shard {
    pub(super) fn on_rtcp(
        &mut self,
        now: Instant,
        subscriber: ParticipantId,
        packets: &[Box<dyn rtc::rtcp::Packet>],
    ) {
        for packet in packets {
            let any = packet.as_any();
            if let Some(report) = any.downcast_ref::<ReceiverReport>() {
                self.on_reception_reports(&report.reports);
                continue;
            }
            if let Some(report) = any.downcast_ref::<SenderReport>() {
                self.on_reception_reports(&report.reports);
                continue;
            }
            if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.stats.count_nack_in();
                self.retransmit(now, subscriber, nack);
                continue;
            }
            if let Some(feedback) = any.downcast_ref::<TransportLayerCc>() {
                self.stats.count_transport_cc_in();
                if let Some(p) = self.participants.get_mut(&subscriber) {
                    let probing = p.downlink.probing();
                    if p.downlink.on_transport_cc(now, feedback).is_err() {
                        self.stats.count_transport_cc_refused();
                    }
                    if probing && !p.downlink.probing() {
                        tracing::debug!(call = %p.call, "probe stopped: feedback reported loss");
                    }
                }
                continue;
            }
            if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                self.stats.count_remb_in();
                if let Some(p) = self.participants.get_mut(&subscriber) {
                    p.downlink.on_remb(now, remb.bitrate);
                }
                continue;
            }
            let media_ssrc = if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                pli.media_ssrc
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                fir.fir
                    .first()
                    .map(|entry| entry.ssrc)
                    .unwrap_or(fir.media_ssrc)
            } else {
                continue;
            };
            self.stats.count_keyframe_request_in();
            // The subscriber asks about the SSRC it sees; the publisher is asked about the
            // layer the subscriber is (or is about to be) on.
            let source = self
                .routes
                .iter()
                .find_map(|(&(publisher, publication), routes)| {
                    routes
                        .iter()
                        .find(|r| r.subscriber == subscriber && r.stream.ssrc() == media_ssrc)
                        .map(|r| (publisher, publication, r.forward.target()))
                });
            if let Some((publisher, publication, layer)) = source {
                self.request_keyframe(now, publisher, publication, layer, false);
            }
        }
    }

    /// Takes the round-trip times of a link's reception reports into the link RTT histogram
    /// (only links' peer connections pass reception reports up, see
    /// [`crate::interceptor::FeedbackTap`]).
    fn on_reception_reports(&self, reports: &[ReceptionReport]) {
        let arrival = crate::egress::ntp_time(std::time::SystemTime::now());
        for report in reports {
            if let Some(rtt) =
                crate::egress::round_trip(arrival, report.last_sender_report, report.delay)
            {
                self.stats.link_rtt.observe(rtt);
            }
        }
    }

    /// Answers a subscriber's NACK (RFC 4585 §6.2.1) from the outgoing stream's recent
    /// packets, over RTX where negotiated; packets no longer kept are skipped.
    pub(super) fn retransmit(
        &mut self,
        now: Instant,
        subscriber: ParticipantId,
        nack: &TransportLayerNack,
    ) {
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        let Some((key, route)) = self
            .routes
            .iter_mut()
            .flat_map(|(key, routes)| routes.iter_mut().map(move |route| (key, route)))
            .find(|(_, r)| r.subscriber == subscriber && r.stream.ssrc() == nack.media_ssrc)
        else {
            return;
        };
        let Some(payloads) = self.payloads.get(key) else {
            return;
        };
        for pair in &nack.nacks {
            for lost in *pair {
                let Some(len) = route.stream.kept_len(lost, payloads) else {
                    continue;
                };
                if !p.downlink.may_retransmit(now, len + IP_UDP_HEADERS) {
                    self.stats.count_retransmission_refused();
                    continue;
                }
                // Into the batch, behind the forwarded packets still waiting in it: the
                // transport-cc numbers leave in the order they were given. A placed link's
                // datagrams leave from its own socket at once.
                let own_socket = p.own_socket.is_some();
                if !own_socket && self.batch.is_full() {
                    self.batch.send(&self.socket, &self.stats);
                }
                let out = if own_socket {
                    &mut self.datagram
                } else {
                    self.batch.next_buffer()
                };
                match resend(now, route, payloads, p, lost, out) {
                    Some(Ok(to)) => {
                        self.stats.count_retransmitted();
                        if own_socket {
                            send(socket_of(&self.socket, p), &self.stats, &self.datagram, to);
                        } else {
                            self.batch.commit(to);
                        }
                    }
                    Some(Err(reason)) => {
                        self.stats.count_dropped();
                        tracing::trace!(?reason, "retransmission refused");
                    }
                    None => {}
                }
            }
        }
    }

    /// Sends a sender report (RFC 3550 §6.4.1) for every forwarded stream that has sent
    /// something, through each subscriber's stack (which protects RTCP).
    pub(super) fn send_sender_reports(&mut self, now: Instant) {
        let wall = std::time::SystemTime::now();
        for route in self.routes.values().flatten() {
            let Some(report) = route.stream.sender_report(now, wall) else {
                continue;
            };
            let Some(p) = self.participants.get_mut(&route.subscriber) else {
                continue;
            };
            if let Some(mut sender) = p.pc.rtp_sender(route.sender_id)
                && let Err(err) = sender.write_rtcp(now, vec![Box::new(report)])
            {
                tracing::trace!(call = %p.call, %err, "sender report refused");
            }
            flush(&self.socket, &self.stats, p);
        }
    }
}

/// Writes into `out` the packet `route` sent to `p` with `sequence_number`, again (over RTX
/// where negotiated, see [`OutboundStream::retransmission`]; its payload from `payloads`,
/// the publication's), with the subscriber's next transport-wide sequence number where it
/// negotiated transport-cc, and protects it: the address to send it to, or why it cannot be
/// sent. `None` when the packet is no longer kept.
pub(super) fn resend(
    now: Instant,
    route: &mut Route,
    payloads: &egress::PayloadHistory,
    p: &mut Participant,
    sequence_number: u16,
    out: &mut Vec<u8>,
) -> Option<Result<SocketAddr, egress::NotSent>> {
    let (header_len, ssrc, sequence) =
        route
            .stream
            .retransmission(sequence_number, payloads, out)?;
    let stamped = route
        .transport_cc
        .is_some_and(|id| crate::rewrite::set_transport_cc(out, id, p.downlink.next_sequence()));
    let sent = p.egress.protect(out, header_len, ssrc, sequence);
    if sent.is_ok() && stamped {
        p.downlink.sent(now, out.len() + IP_UDP_HEADERS);
    }
    Some(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::goodbye::Goodbye;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    fn compound(packets: Vec<Box<dyn rtc::rtcp::Packet>>) -> Vec<u8> {
        rtc::rtcp::packet::marshal(&packets)
            .expect("a valid compound")
            .to_vec()
    }

    fn receiver_report() -> Box<dyn rtc::rtcp::Packet> {
        Box::new(ReceiverReport {
            ssrc: 1,
            reports: vec![ReceptionReport {
                ssrc: 2,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn nack() -> Box<dyn rtc::rtcp::Packet> {
        Box::new(TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 2,
            nacks: vec![NackPair {
                packet_id: 7,
                lost_packets: 0,
            }],
        })
    }

    #[test]
    fn feedback_is_taken_without_the_reports_around_it() {
        let taken = taken_compound(&compound(vec![
            receiver_report(),
            nack(),
            Box::new(PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc: 2,
            }),
        ]))
        .expect("taken");
        assert_eq!(taken.len(), 2);
        assert!(taken[0].as_any().is::<TransportLayerNack>());
        assert!(taken[1].as_any().is::<PictureLossIndication>());
    }

    #[test]
    fn a_compound_with_a_sender_report_or_an_unknown_packet_goes_to_the_stack() {
        let sender_report: Box<dyn rtc::rtcp::Packet> = Box::new(SenderReport {
            ssrc: 1,
            ..Default::default()
        });
        assert!(taken_compound(&compound(vec![sender_report, nack()])).is_none());
        let bye: Box<dyn rtc::rtcp::Packet> = Box::new(Goodbye {
            sources: vec![1],
            reason: bytes::Bytes::new(),
        });
        assert!(taken_compound(&compound(vec![receiver_report(), bye])).is_none());
        // Not RTCP at all.
        assert!(taken_compound(&[0x80, 0xc9, 0xff, 0xff]).is_none());
    }

    #[test]
    fn the_focus_context_refuses_a_replayed_or_forged_compound() {
        let profile = rtc::srtp::protection_profile::ProtectionProfile::AeadAes128Gcm;
        let provider = rtc::crypto::default_provider().expect("a crypto provider");
        let key = vec![7u8; profile.key_len()];
        let salt = vec![9u8; profile.salt_len()];
        let context = |replay: bool| {
            rtc::srtp::context::Context::new(
                &key,
                &salt,
                profile,
                None,
                replay.then(|| rtc::srtp::option::srtcp_replay_protection(64)),
                provider.crypto(),
            )
            .expect("a context")
        };
        let (mut sender, mut focus) = (context(false), context(true));
        let plain = compound(vec![nack()]);
        let protected = sender.encrypt_rtcp(&plain).expect("protected");
        let opened = focus.decrypt_rtcp(&protected).expect("opened");
        assert!(taken_compound(&opened).is_some());
        assert!(focus.decrypt_rtcp(&protected).is_err(), "a replay");
        let mut forged = protected.to_vec();
        if let Some(byte) = forged.get_mut(10) {
            *byte ^= 1;
        }
        assert!(focus.decrypt_rtcp(&forged).is_err(), "a forgery");
    }
}
