//! Feedback on the egress side: subscribers' RTCP (keyframe requests, NACKs answered from the
//! outgoing streams' history) and the focus's sender reports.

use super::*;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;

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
                self.retransmit(subscriber, nack);
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
    pub(super) fn retransmit(&mut self, subscriber: ParticipantId, nack: &TransportLayerNack) {
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
                let Some((header_len, ssrc, sequence_number)) =
                    route.stream.retransmission(lost, &mut self.datagram)
                else {
                    continue;
                };
                match p
                    .egress
                    .protect(&mut self.datagram, header_len, ssrc, sequence_number)
                {
                    Ok(to) => {
                        self.stats.count_retransmitted();
                        send(socket_of(&self.socket, p), &self.stats, &self.datagram, to);
                    }
                    Err(reason) => {
                        self.stats.count_dropped();
                        tracing::trace!(?reason, "retransmission refused");
                    }
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
