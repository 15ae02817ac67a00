//! A subscriber's downlink: how fast the path from the focus to it carries media, estimated
//! from the feedback it sends about what the focus forwarded.
//!
//! Every forwarded packet leaves with a transport-wide sequence number (the transport-cc header
//! extension, draft-holmer-rmcat-transport-wide-cc-extensions-01 §2) where the subscriber
//! negotiated it; [`Downlink`] remembers when each left and how large it was, joins the
//! subscriber's transport-cc feedback (§3.1) with that, and hands the result to the stack's
//! Google Congestion Control estimator (delay-based and loss-based halves,
//! draft-ietf-rmcat-gcc-02). A peer that sends REMB (draft-alvestrand-rmcat-remb-03) instead
//! caps the estimate with it.
//!
//! The record of sent packets is a ring indexed by sequence number rather than the stack's
//! `History` (three hash-map insertions per packet): it is written once per forwarded packet
//! per subscriber, on the packet path, which allocates nothing and hashes nothing.

use rtc::interceptor::{Acknowledgement, BandwidthEstimator, Gcc, PacketReport, convert_twcc};
use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::{PacketStatusChunk, TransportLayerCc};
use std::time::{Duration, Instant};

/// Sent packets remembered: at 2,000 packets a second (a subscriber of several HD videos),
/// half a second; feedback comes every 50–250 ms. 32 KiB per subscriber, allocated at its
/// first packet.
pub const SENT_RECORDS: usize = 1_024;

/// The estimate a downlink starts from, in bits per second, before any feedback: high, so that
/// a subscriber gets the layers it asks for until its feedback shows the path cannot carry them
/// (the first congestion brings the estimate down to what arrives).
pub const INITIAL_ESTIMATE: f64 = 10_000_000.0;
/// The fastest probes go, in bits per second.
pub const MAX_PROBE_RATE: f64 = 10_000_000.0;
/// The most probe bytes sent back to back.
pub const PROBE_BURST: usize = 2_500;
/// The share of the estimate that retransmissions may take: a subscriber whose downlink is
/// congested asks for many packets again, and answering them all would congest it further
/// (a NACK storm).
pub const RETRANSMISSION_SHARE: f64 = 0.25;
/// How much of that budget can be saved up: this long at the budget's rate.
pub const RETRANSMISSION_BURST: std::time::Duration = std::time::Duration::from_millis(250);
/// Feedback reporting more than this share of its packets lost (and at least
/// [`PROBE_LOST_PACKETS`]) stops a probe at once: the downlink's queue overflowed at the higher
/// rate. A path's background loss (a few per cent on busy Wi-Fi) must not fail every probe:
/// an overflowing queue loses a fifth or more.
pub const PROBE_LOSS: f64 = 0.05;
/// See [`PROBE_LOSS`].
pub const PROBE_LOST_PACKETS: usize = 2;
/// The least the estimate goes down to, in bits per second.
pub const MIN_ESTIMATE: f64 = 50_000.0;
/// The most the estimate goes up to, in bits per second.
pub const MAX_ESTIMATE: f64 = 100_000_000.0;
/// How long a REMB counts: browsers send one about every second while their estimate holds
/// (and at once when it drops), so one this old is from a peer that stopped sending them.
pub const REMB_LIFETIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Feedback the downlink would not take (see [`Downlink::on_transport_cc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

#[derive(Clone, Copy)]
struct Sent {
    /// The extended (never wrapping) sequence number; `u64::MAX` for an empty slot.
    sequence: u64,
    departure: Instant,
    size: u32,
}

/// One subscriber's downlink estimate (see the module's documentation).
pub struct Downlink {
    next: u64,
    sent: Box<[Sent]>,
    estimator: Gcc,
    /// The last REMB's bitrate and when it came.
    remb: Option<(f64, Instant)>,
    feedback: bool,
    reports: Vec<PacketReport>,
    /// The rate probes are sent at, bits per second (0: not probing).
    probe_rate: f64,
    /// Bytes of probes that may be sent now, and when that was last topped up.
    probe_tokens: f64,
    probe_refill: Option<Instant>,
    /// Packets reported lost, and reported at all, since [`Downlink::take_loss`].
    window_lost: u32,
    window_total: u32,
    /// Bytes of retransmissions allowed now, and when that was last topped up.
    retransmission_tokens: f64,
    retransmission_refill: Option<Instant>,
}

impl Default for Downlink {
    fn default() -> Self {
        Self::new()
    }
}

impl Downlink {
    /// A downlink about which nothing is known yet.
    pub fn new() -> Self {
        Self {
            next: 0,
            sent: Box::default(),
            estimator: Gcc::new(INITIAL_ESTIMATE, MIN_ESTIMATE, MAX_ESTIMATE),
            remb: None,
            feedback: false,
            reports: Vec::new(),
            probe_rate: 0.0,
            probe_tokens: 0.0,
            probe_refill: None,
            retransmission_tokens: 0.0,
            retransmission_refill: None,
            window_lost: 0,
            window_total: 0,
        }
    }

    /// The transport-wide sequence number for the next packet to this subscriber (written into
    /// its transport-cc header extension); [`Downlink::sent`] records it once sent, or
    /// [`Downlink::not_sent`] gives it back.
    pub fn next_sequence(&self) -> u16 {
        self.next as u16
    }

    /// Records that the packet numbered [`Downlink::next_sequence`] left at `now`, `size`
    /// bytes on the wire (IP and UDP headers included).
    pub fn sent(&mut self, now: Instant, size: usize) {
        if self.sent.is_empty() {
            self.sent = vec![
                Sent {
                    sequence: u64::MAX,
                    departure: now,
                    size: 0,
                };
                SENT_RECORDS
            ]
            .into_boxed_slice();
        }
        let slot = (self.next % SENT_RECORDS as u64) as usize;
        if let Some(record) = self.sent.get_mut(slot) {
            *record = Sent {
                sequence: self.next,
                departure: now,
                size: size.min(u32::MAX as usize) as u32,
            };
        }
        self.next += 1;
    }

    /// Takes a transport-cc feedback packet (draft-holmer-rmcat-transport-wide-cc-extensions-01
    /// §3.1) received at `now`: each packet it reports on, if still remembered, goes to the
    /// estimator with its departure and arrival. Reports on packets never sent or long
    /// forgotten are ignored.
    ///
    /// # Errors
    ///
    /// [`Refused`] for feedback on more packets than are remembered ([`SENT_RECORDS`]; a
    /// subscriber reports on what arrived in the last 100 ms or so): a peer could otherwise
    /// make the focus walk 65,535 reports per feedback packet. Nothing is taken from it.
    pub fn on_transport_cc(
        &mut self,
        now: Instant,
        feedback: &TransportLayerCc,
    ) -> Result<(), Refused> {
        // The chunks' own lengths count (a run-length chunk may claim 8,191 packets whatever
        // the header's count says), not the header's.
        let claimed: usize = feedback
            .packet_chunks
            .iter()
            .map(|chunk| match chunk {
                PacketStatusChunk::RunLengthChunk(run) => usize::from(run.run_length),
                PacketStatusChunk::StatusVectorChunk(vector) => vector.symbol_list.len(),
            })
            .sum();
        if claimed.max(usize::from(feedback.packet_status_count)) > SENT_RECORDS {
            return Err(Refused);
        }
        let acknowledgements = convert_twcc(feedback);
        self.on_acknowledgements(now, &acknowledgements);
        Ok(())
    }

    /// Takes the acknowledgements of one feedback packet, in the order it lists them.
    pub fn on_acknowledgements(&mut self, now: Instant, acknowledgements: &[Acknowledgement]) {
        self.reports.clear();
        for ack in acknowledgements {
            let Some(sequence) = self.extend(ack.sequence_number) else {
                continue;
            };
            let slot = (sequence % SENT_RECORDS as u64) as usize;
            let Some(record) = self.sent.get_mut(slot) else {
                continue;
            };
            if record.sequence != sequence {
                continue;
            }
            // Each packet is reported once: a later feedback naming it again says nothing new.
            record.sequence = u64::MAX;
            self.reports.push(PacketReport {
                ssrc: 0,
                id: sequence,
                rtp_sequence_number: 0,
                is_twcc: true,
                twcc_sequence_number: ack.sequence_number,
                size: record.size as usize,
                arrived: ack.arrived,
                departure: record.departure,
                arrival: ack.arrival,
                ecn: Ecn::NotEct,
            });
        }
        if self.reports.is_empty() {
            return;
        }
        self.reports.sort_by_key(|report| report.id);
        self.feedback = true;
        let lost = self.reports.iter().filter(|r| !r.arrived).count();
        self.window_lost = self.window_lost.saturating_add(lost as u32);
        self.window_total = self.window_total.saturating_add(self.reports.len() as u32);
        if lost >= PROBE_LOST_PACKETS && lost as f64 > PROBE_LOSS * self.reports.len() as f64 {
            // The probe overflowed the path: stop it now rather than at the next allocation.
            self.set_probe_rate(0.0);
        }
        self.estimator.on_reports(now, &self.reports);
    }

    /// The share of the packets that feedback since the last call reported lost (0 to 1);
    /// `None` if feedback reported on none. A probe that meets loss failed (the downlink does
    /// not carry the higher rate).
    pub fn take_loss(&mut self) -> Option<f64> {
        let (lost, total) = (self.window_lost, self.window_total);
        self.window_lost = 0;
        self.window_total = 0;
        (total > 0).then(|| f64::from(lost) / f64::from(total))
    }

    /// Takes a REMB's maximum bitrate (bits per second) for the subscriber's whole downlink,
    /// received at `now` (draft-alvestrand-rmcat-remb-03); it counts for [`REMB_LIFETIME`].
    pub fn on_remb(&mut self, now: Instant, bits_per_second: f32) {
        if bits_per_second.is_finite() && bits_per_second > 0.0 {
            self.remb = Some((f64::from(bits_per_second), now));
        }
    }

    /// The estimate at `now` in bits per second: the congestion controller's where the
    /// subscriber sent transport-cc feedback, capped by its REMB where it sent one in the
    /// last [`REMB_LIFETIME`]; `None` before either (or once a REMB-only subscriber's last
    /// REMB is that old).
    pub fn estimate(&self, now: Instant) -> Option<u64> {
        let remb = self
            .remb
            .filter(|(_, at)| now.saturating_duration_since(*at) < REMB_LIFETIME)
            .map(|(bps, _)| bps);
        let estimate = match (self.feedback, remb) {
            (true, Some(remb)) => self.estimator.target_bitrate().min(remb),
            (true, None) => self.estimator.target_bitrate(),
            (false, remb) => remb?,
        };
        Some(estimate as u64)
    }

    /// Whether a retransmission of `bytes` may be sent at `now`: retransmissions take at most
    /// [`RETRANSMISSION_SHARE`] of the estimate (saved up for [`RETRANSMISSION_BURST`] at
    /// most); without an estimate, always. If so it is counted against the budget.
    pub fn may_retransmit(&mut self, now: Instant, bytes: usize) -> bool {
        let Some(estimate) = self.estimate(now) else {
            return true;
        };
        let rate = estimate as f64 * RETRANSMISSION_SHARE / 8.0;
        let cap = (rate * RETRANSMISSION_BURST.as_secs_f64()).max(2.0 * 1_500.0);
        let elapsed = self
            .retransmission_refill
            .map_or(RETRANSMISSION_BURST, |at| now.saturating_duration_since(at));
        self.retransmission_refill = Some(now);
        self.retransmission_tokens =
            (self.retransmission_tokens + rate * elapsed.as_secs_f64()).min(cap);
        let allowed = self.retransmission_tokens >= bytes as f64;
        if allowed {
            self.retransmission_tokens -= bytes as f64;
        }
        allowed
    }

    /// Sets the rate at which probes go to this subscriber, in bits per second, besides its
    /// media: allocation probes whether the downlink carries a higher layer by padding the
    /// stream up to that layer's rate (see [`cascade_forward::allocation::Ceiling`]). 0 stops
    /// probing; at most [`MAX_PROBE_RATE`].
    pub fn set_probe_rate(&mut self, bits_per_second: f64) {
        self.probe_rate = if bits_per_second.is_finite() {
            bits_per_second.clamp(0.0, MAX_PROBE_RATE)
        } else {
            0.0
        };
        if self.probe_rate == 0.0 {
            self.probe_tokens = 0.0;
            self.probe_refill = None;
        }
    }

    /// Whether probing is under way.
    pub fn probing(&self) -> bool {
        self.probe_rate > 0.0
    }

    /// Whether a probe of `bytes` is due at `now`: probes leave evenly at the rate set, never
    /// more than [`PROBE_BURST`] bytes at once (a burst would overflow a thin path's queue
    /// sooner than the rate itself). If so it is counted as sent.
    pub fn probe_due(&mut self, now: Instant, bytes: usize) -> bool {
        if self.probe_rate == 0.0 {
            return false;
        }
        let elapsed = self
            .probe_refill
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        self.probe_refill = Some(now);
        self.probe_tokens = (self.probe_tokens + self.probe_rate / 8.0 * elapsed.as_secs_f64())
            .min(PROBE_BURST as f64);
        let due = self.probe_tokens >= bytes as f64;
        if due {
            self.probe_tokens -= bytes as f64;
        }
        due
    }

    /// The sequence number within the last [`SENT_RECORDS`] sent whose low 16 bits are
    /// `sequence`, if any.
    fn extend(&self, sequence: u16) -> Option<u64> {
        let newest = self.next.checked_sub(1)?;
        let behind = (newest as u16).wrapping_sub(sequence) as u64;
        (behind < SENT_RECORDS as u64 && behind <= newest).then(|| newest - behind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bottleneck of `rate` bits per second with a queue of `queue` (what tbf's `latency`
    /// allows): packets queue behind each other and are dropped when they would wait longer.
    struct Bottleneck {
        rate: f64,
        queue: Duration,
        free_at: Duration,
    }

    impl Bottleneck {
        /// When a packet of `size` bytes sent at `at` arrives, or `None` if it is dropped.
        fn pass(&mut self, at: Duration, size: usize) -> Option<Duration> {
            let start = self.free_at.max(at);
            if start - at > self.queue {
                return None;
            }
            let transmit = Duration::from_secs_f64(size as f64 * 8.0 / self.rate);
            self.free_at = start + transmit;
            Some(self.free_at + Duration::from_millis(5))
        }
    }

    /// Sends `seconds` of 1,200-byte packets at `send_rate` bits per second through
    /// `bottleneck` (if any), feedback every 100 ms; returns the estimate each second.
    fn run(
        downlink: &mut Downlink,
        start: Instant,
        from: Duration,
        seconds: u64,
        send_rate: f64,
        mut bottleneck: Option<&mut Bottleneck>,
    ) -> Vec<u64> {
        let size = 1_200;
        let interval = Duration::from_secs_f64(size as f64 * 8.0 / send_rate);
        let mut pending = Vec::new();
        let mut estimates = Vec::new();
        let mut at = from;
        let mut next_feedback = from + Duration::from_millis(100);
        let mut next_second = from + Duration::from_secs(1);
        let end = from + Duration::from_secs(seconds);
        while at < end {
            let sequence = downlink.next_sequence();
            downlink.sent(start + at, size);
            let arrival = match bottleneck.as_deref_mut() {
                Some(b) => b.pass(at, size),
                None => Some(at + Duration::from_millis(5)),
            };
            pending.push((sequence, arrival));
            at += interval;
            if at >= next_feedback {
                let acks: Vec<Acknowledgement> = pending
                    .drain(..)
                    .map(|(sequence, arrival)| match arrival {
                        Some(arrival) => {
                            Acknowledgement::received(sequence, Some(arrival), Ecn::NotEct)
                        }
                        None => Acknowledgement::lost(sequence),
                    })
                    .collect();
                downlink.on_acknowledgements(start + at + Duration::from_millis(10), &acks);
                next_feedback += Duration::from_millis(100);
            }
            if at >= next_second {
                estimates.push(downlink.estimate(start + at).unwrap_or(0));
                next_second += Duration::from_secs(1);
            }
        }
        estimates
    }

    #[test]
    fn nothing_is_estimated_before_feedback() {
        let now = Instant::now();
        let mut downlink = Downlink::new();
        assert_eq!(downlink.estimate(now), None);
        downlink.on_remb(now, 800_000.0);
        assert_eq!(downlink.estimate(now), Some(800_000));
    }

    #[test]
    fn a_remb_that_stops_coming_expires() {
        let start = Instant::now();
        let mut downlink = Downlink::new();
        downlink.on_remb(start, 300_000.0);
        let later = start + REMB_LIFETIME - Duration::from_millis(1);
        assert_eq!(downlink.estimate(later), Some(300_000));
        assert_eq!(
            downlink.estimate(start + REMB_LIFETIME),
            None,
            "a REMB-only subscriber's old REMB no longer holds it down"
        );
        // Behind transport-cc feedback, an old REMB no longer caps the estimate either.
        run(&mut downlink, start, Duration::ZERO, 2, 1_500_000.0, None);
        let now = start + Duration::from_secs(2);
        downlink.on_remb(now, 300_000.0);
        assert_eq!(downlink.estimate(now), Some(300_000));
        assert!(
            downlink
                .estimate(now + REMB_LIFETIME)
                .is_some_and(|e| e > 300_000)
        );
    }

    #[test]
    fn a_clear_path_keeps_a_high_estimate() {
        let start = Instant::now();
        let mut downlink = Downlink::new();
        let estimates = run(&mut downlink, start, Duration::ZERO, 10, 1_500_000.0, None);
        assert!(
            estimates.iter().all(|&e| e >= 1_500_000),
            "estimates {estimates:?}"
        );
    }

    /// The layer rate a focus would send within `estimate`: the highest of 150, 500 and
    /// 1,500 kb/s under 90 % of it, else the lowest.
    fn layer_within(estimate: Option<u64>) -> f64 {
        let usable = estimate.map_or(f64::MAX, |e| e as f64 * 0.9);
        [1_500_000.0, 500_000.0, 150_000.0]
            .into_iter()
            .find(|&rate| rate <= usable)
            .unwrap_or(150_000.0)
    }

    #[test]
    fn a_400_kbps_bottleneck_brings_a_layered_stream_under_it_and_a_clear_path_back_up() {
        let start = Instant::now();
        let mut downlink = Downlink::new();
        let mut bottleneck = Bottleneck {
            rate: 400_000.0,
            queue: Duration::from_millis(50),
            free_at: Duration::ZERO,
        };
        // The sender picks its layer from the estimate once a second, as allocation does.
        let mut sent = Vec::new();
        let mut estimates = Vec::new();
        for second in 0..10 {
            let rate = layer_within(downlink.estimate(start + Duration::from_secs(second)));
            sent.push(rate);
            estimates.extend(run(
                &mut downlink,
                start,
                Duration::from_secs(second),
                1,
                rate,
                Some(&mut bottleneck),
            ));
        }
        assert_eq!(sent[0], 1_500_000.0);
        assert!(
            estimates[1] <= 450_000 && sent[2] == 150_000.0,
            "within two seconds the estimate is down near the bottleneck and only the lowest \
             layer fits: sent {sent:?}, estimates {estimates:?}"
        );
        // Sending less than the path carries, the estimate grows again without evidence
        // (Google Congestion Control's increase when nothing is overused); allocation probes
        // before it believes that (`cascade_forward::allocation::Ceiling`). Here, with no
        // probes, the middle layer is tried and the estimate falls back, but the top layer is
        // never tried again.
        assert!(
            sent[2..].iter().all(|&rate| rate < 1_500_000.0),
            "sent {sent:?}, estimates {estimates:?}"
        );
        // The path clears: the estimate climbs back past what the top layer needs within 15 s.
        let mut later = Vec::new();
        for second in 10..25 {
            let rate = layer_within(downlink.estimate(start + Duration::from_secs(second)));
            later.extend(run(
                &mut downlink,
                start,
                Duration::from_secs(second),
                1,
                rate,
                None,
            ));
        }
        assert!(
            later.iter().any(|&e| e as f64 * 0.9 >= 1_500_000.0),
            "estimates after the path cleared {later:?}"
        );
    }

    #[test]
    fn loss_is_told_once_per_window() {
        let start = Instant::now();
        let mut downlink = Downlink::new();
        for _ in 0..4 {
            downlink.sent(start, 1_000);
        }
        assert_eq!(downlink.take_loss(), None);
        downlink.on_acknowledgements(
            start,
            &[
                Acknowledgement::received(0, Some(Duration::ZERO), Ecn::NotEct),
                Acknowledgement::lost(1),
                Acknowledgement::received(2, Some(Duration::from_millis(1)), Ecn::NotEct),
                Acknowledgement::received(3, Some(Duration::from_millis(2)), Ecn::NotEct),
            ],
        );
        assert_eq!(downlink.take_loss(), Some(0.25));
        assert_eq!(downlink.take_loss(), None);
    }

    #[test]
    fn remb_caps_the_estimate() {
        let start = Instant::now();
        let mut downlink = Downlink::new();
        run(&mut downlink, start, Duration::ZERO, 2, 1_500_000.0, None);
        let now = start + Duration::from_secs(2);
        downlink.on_remb(now, 600_000.0);
        assert_eq!(downlink.estimate(now), Some(600_000));
        downlink.on_remb(now, f32::NAN);
        assert_eq!(
            downlink.estimate(now),
            Some(600_000),
            "a nonsense REMB is ignored"
        );
    }

    #[test]
    fn feedback_on_packets_never_sent_or_long_gone_is_ignored() {
        let start = Instant::now();
        let mut downlink = Downlink::new();
        downlink.on_acknowledgements(
            start,
            &[Acknowledgement::received(
                7,
                Some(Duration::ZERO),
                Ecn::NotEct,
            )],
        );
        assert_eq!(downlink.estimate(start), None, "nothing was sent");
        for _ in 0..(SENT_RECORDS + 10) {
            downlink.sent(start, 1_000);
        }
        downlink.on_acknowledgements(start, &[Acknowledgement::lost(3)]);
        assert_eq!(downlink.estimate(start), None, "packet 3 is forgotten");
        let newest = downlink.next_sequence().wrapping_sub(1);
        downlink.on_acknowledgements(
            start,
            &[Acknowledgement::received(
                newest,
                Some(Duration::ZERO),
                Ecn::NotEct,
            )],
        );
        assert!(downlink.estimate(start).is_some());
    }

    #[test]
    fn probes_leave_evenly_at_the_rate_set_until_they_meet_loss() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut downlink = Downlink::new();
        assert!(!downlink.probe_due(at(0), 1_000), "not probing");
        // 400 kb/s: 50 bytes a millisecond.
        downlink.set_probe_rate(400_000.0);
        let mut sent = 0;
        for ms in 0..=1_000 {
            while downlink.probe_due(at(ms), 1_000) {
                sent += 1_000;
            }
        }
        assert!(
            (49_000..=51_000).contains(&sent),
            "{sent} bytes in a second"
        );
        // A pause does not save up more than a burst.
        let mut burst = 0;
        while downlink.probe_due(at(5_000), 1_000) {
            burst += 1_000;
        }
        assert_eq!(burst, 2_000);
        downlink.set_probe_rate(f64::NAN);
        assert!(!downlink.probing(), "nonsense stops probing");
        // Feedback reporting loss stops the probe.
        downlink.set_probe_rate(400_000.0);
        for _ in 0..22 {
            downlink.sent(at(5_000), 1_000);
        }
        let report = |lost: &[u16]| -> Vec<Acknowledgement> {
            (0..22u16)
                .map(|sequence| {
                    if lost.contains(&sequence) {
                        Acknowledgement::lost(sequence)
                    } else {
                        Acknowledgement::received(sequence, Some(Duration::ZERO), Ecn::NotEct)
                    }
                })
                .collect()
        };
        downlink.on_acknowledgements(at(5_100), &report(&[3])[..20]);
        assert!(
            downlink.probing(),
            "one packet in twenty is background loss"
        );
        downlink.on_acknowledgements(at(5_200), &report(&[20, 21])[20..]);
        assert!(!downlink.probing(), "a probe meeting loss stops");
    }

    #[test]
    fn feedback_on_more_packets_than_are_remembered_is_refused() {
        use rtc::rtcp::transport_feedbacks::transport_layer_cc::{RunLengthChunk, SymbolTypeTcc};
        let start = Instant::now();
        let mut downlink = Downlink::new();
        downlink.sent(start, 1_000);
        let feedback = |count: u16| TransportLayerCc {
            base_sequence_number: 0,
            packet_status_count: count,
            packet_chunks: vec![PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                packet_status_symbol: SymbolTypeTcc::PacketNotReceived,
                run_length: count,
                ..Default::default()
            })],
            ..Default::default()
        };
        assert_eq!(
            downlink.on_transport_cc(start, &feedback(65_535)),
            Err(Refused)
        );
        assert_eq!(downlink.take_loss(), None, "nothing was taken from it");
        // A header claiming one packet, a chunk claiming 8,191.
        let mut understated = feedback(8_191);
        understated.packet_status_count = 1;
        assert_eq!(downlink.on_transport_cc(start, &understated), Err(Refused));
        assert_eq!(downlink.on_transport_cc(start, &feedback(1)), Ok(()));
        assert_eq!(downlink.take_loss(), Some(1.0), "a fitting one is taken");
    }

    #[test]
    fn sequence_numbers_wrap() {
        let start = Instant::now();
        let mut downlink = Downlink::new();
        for _ in 0..70_000 {
            downlink.sent(start, 1_000);
        }
        let newest = downlink.next_sequence().wrapping_sub(1);
        assert_eq!(downlink.extend(newest), Some(69_999));
        assert_eq!(downlink.extend(newest.wrapping_sub(5)), Some(69_994));
        assert_eq!(
            downlink.extend(newest.wrapping_add(1)),
            None,
            "not sent yet"
        );
    }
}
