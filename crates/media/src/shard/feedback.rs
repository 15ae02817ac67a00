//! Feedback on the egress side: subscribers' RTCP (keyframe requests, NACKs answered from the
//! outgoing streams' history, congestion feedback for their downlink estimates) and the
//! focus's sender reports.

use super::*;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;

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
        let Some(route) = self
            .routes
            .values_mut()
            .flat_map(|routes| routes.iter_mut())
            .find(|r| r.subscriber == subscriber && r.stream.ssrc() == nack.media_ssrc)
        else {
            return;
        };
        for pair in &nack.nacks {
            for lost in *pair {
                let Some(len) = route.stream.kept_len(lost) else {
                    continue;
                };
                if !p.downlink.may_retransmit(now, len + IP_UDP_HEADERS) {
                    self.stats.count_retransmission_refused();
                    continue;
                }
                match resend(now, route, p, lost, &mut self.datagram) {
                    Some(Ok(to)) => {
                        self.stats.count_retransmitted();
                        send(socket_of(&self.socket, p), &self.stats, &self.datagram, to);
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
/// where negotiated, see [`OutboundStream::retransmission`]), with the subscriber's next
/// transport-wide sequence number where it negotiated transport-cc, and protects it: the
/// address to send it to, or why it cannot be sent. `None` when the packet is no longer kept.
pub(super) fn resend(
    now: Instant,
    route: &mut Route,
    p: &mut Participant,
    sequence_number: u16,
    out: &mut Vec<u8>,
) -> Option<Result<SocketAddr, egress::NotSent>> {
    let (header_len, ssrc, sequence) = route.stream.retransmission(sequence_number, out)?;
    let stamped = route
        .transport_cc
        .is_some_and(|id| crate::rewrite::set_transport_cc(out, id, p.downlink.next_sequence()));
    let sent = p.egress.protect(out, header_len, ssrc, sequence);
    if sent.is_ok() && stamped {
        p.downlink.sent(now, out.len() + IP_UDP_HEADERS);
    }
    Some(sent)
}
