//! What a run measured: running totals over all devices, the time series, and the summary.

use crate::preset::Scenario;
use crate::procstat::ProcSample;
use cascade_simclient::SimClient;
use cascade_simclient::report::DelayHistogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Which focus each device calls, by `(user_id, device_id)`: an index into the run's foci.
pub type FocusOf = HashMap<(String, String), usize>;

/// How a received stream reached its subscriber, from the foci of the two ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Publisher and subscriber call the same focus.
    SameFocus,
    /// They call different foci: the stream crossed one link.
    CrossFocus,
}

impl Hop {
    /// The hop between a subscriber on focus `subscriber` and a publisher on focus `publisher`
    /// (`None` when the publisher is not known).
    pub fn between(subscriber: usize, publisher: Option<usize>) -> Option<Self> {
        publisher.map(|p| {
            if p == subscriber {
                Self::SameFocus
            } else {
                Self::CrossFocus
            }
        })
    }
}

/// Received-media totals over every device, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Audio RTP packets received.
    pub audio_packets: u64,
    /// Audio payload bytes received.
    pub audio_bytes: u64,
    /// Video RTP packets received.
    pub video_packets: u64,
    /// Video payload bytes received.
    pub video_bytes: u64,
    /// Publisher packets missing from what arrived (counter gaps).
    pub missing: u64,
    /// Payloads that failed verification.
    pub corrupt: u64,
    /// One-way delay of every packet (µs).
    pub delays: DelayHistogram,
    /// One-way delay of the packets whose publisher calls the subscriber's focus (µs).
    pub same_focus_delays: DelayHistogram,
    /// One-way delay of the packets whose publisher calls another focus (µs).
    pub cross_focus_delays: DelayHistogram,
    /// Packets received by the devices of each focus, by focus index.
    pub packets_by_focus: Vec<u64>,
}

impl Totals {
    /// Adds up the reports of `clients`, each with the index of the focus it calls; `focus_of`
    /// says which focus each publisher calls (to split the delays by hop).
    pub fn collect<'a>(
        clients: impl Iterator<Item = (&'a SimClient, usize)>,
        focus_of: &FocusOf,
    ) -> Self {
        let mut totals = Self::default();
        for (client, focus) in clients {
            for track in client.report().tracks {
                let publisher = match (&track.publisher_user, &track.publisher_device) {
                    (Some(user), Some(device)) => {
                        focus_of.get(&(user.clone(), device.clone())).copied()
                    }
                    _ => None,
                };
                match Hop::between(focus, publisher) {
                    Some(Hop::SameFocus) => totals.same_focus_delays.merge(&track.delays),
                    Some(Hop::CrossFocus) => totals.cross_focus_delays.merge(&track.delays),
                    None => {}
                }
                if totals.packets_by_focus.len() <= focus {
                    totals.packets_by_focus.resize(focus + 1, 0);
                }
                totals.packets_by_focus[focus] += track.packets;
                match track.kind.as_str() {
                    "video" => {
                        totals.video_packets += track.packets;
                        totals.video_bytes += track.bytes;
                    }
                    _ => {
                        totals.audio_packets += track.packets;
                        totals.audio_bytes += track.bytes;
                    }
                }
                totals.missing += track.counter_missing;
                totals.corrupt += track.payload_mismatches;
                totals.delays.merge(&track.delays);
            }
        }
        totals
    }

    /// Adds what one peer connection received, without the split by focus (the Janus and
    /// LiveKit paths, where the devices are no [`SimClient`]s).
    pub fn add_receiving(&mut self, receiving: &cascade_simclient::report::Receiving) {
        for track in receiving.tracks.values() {
            match track.kind {
                Some(cascade_simclient::MediaKind::Video) => {
                    self.video_packets += track.packets;
                    self.video_bytes += track.bytes;
                }
                _ => {
                    self.audio_packets += track.packets;
                    self.audio_bytes += track.bytes;
                }
            }
            self.missing += track.counter_missing();
            self.corrupt += track.payload_mismatches;
            self.delays.merge(&track.delays);
        }
    }

    /// Packets of both kinds.
    pub fn packets(&self) -> u64 {
        self.audio_packets + self.video_packets
    }
}

/// One second of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// Seconds since the run started.
    pub t: f64,
    /// Devices connected so far.
    pub joined: usize,
    /// Joins that failed so far.
    pub failed: usize,
    /// Audio packets received per second, over all devices.
    pub audio_pps: f64,
    /// Video packets received per second, over all devices.
    pub video_pps: f64,
    /// Megabits per second received, over all devices.
    pub rx_mbps: f64,
    /// Packets lost in this second, percent of those sent.
    pub loss_pct: f64,
    /// The focus's CPU use, percent of one core.
    pub focus_cpu_pct: Option<f64>,
    /// The focus's resident set size at the end of the interval (MiB), if it is local.
    pub focus_rss_mib: Option<f64>,
    /// The load generator's CPU use, percent of one core.
    pub loadgen_cpu_pct: f64,
}

fn rate(delta: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        delta as f64 / seconds
    } else {
        0.0
    }
}

fn loss_pct(received: u64, missing: u64) -> f64 {
    if received + missing == 0 {
        0.0
    } else {
        missing as f64 * 100.0 / (received + missing) as f64
    }
}

impl Point {
    /// The point between two samplings.
    pub fn between(
        t: Duration,
        joined: usize,
        failed: usize,
        (before, after): (&Totals, &Totals),
        (focus_before, focus_after): (Option<&ProcSample>, Option<&ProcSample>),
        (own_before, own_after): ((Instant, f64), (Instant, f64)),
    ) -> Self {
        let dt = own_after.0.duration_since(own_before.0).as_secs_f64();
        let bytes = (after.audio_bytes + after.video_bytes)
            .saturating_sub(before.audio_bytes + before.video_bytes);
        let focus_cpu_pct = match (focus_before, focus_after) {
            (Some(b), Some(a)) => {
                let wall = a.at.duration_since(b.at).as_secs_f64();
                (wall > 0.0).then(|| (a.cpu_seconds - b.cpu_seconds) * 100.0 / wall)
            }
            _ => None,
        };
        Self {
            t: t.as_secs_f64(),
            joined,
            failed,
            audio_pps: rate(after.audio_packets.saturating_sub(before.audio_packets), dt),
            video_pps: rate(after.video_packets.saturating_sub(before.video_packets), dt),
            rx_mbps: rate(bytes * 8, dt) / 1e6,
            loss_pct: loss_pct(
                after.packets().saturating_sub(before.packets()),
                after.missing.saturating_sub(before.missing),
            ),
            focus_cpu_pct,
            focus_rss_mib: focus_after.map(|a| a.rss_bytes as f64 / (1024.0 * 1024.0)),
            loadgen_cpu_pct: if dt > 0.0 {
                (own_after.1 - own_before.1) * 100.0 / dt
            } else {
                0.0
            },
        }
    }
}

/// p50, p95 and p99 of some durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// The p50/p95/p99 of `values`, in milliseconds (nearest rank).
pub fn percentile_ms(values: &[Duration]) -> Percentiles {
    let mut sorted: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if sorted.is_empty() {
            return None;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    };
    Percentiles {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
    }
}

/// Received media of one kind in the measurement window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct KindRate {
    /// Packets received, over all devices.
    pub packets: u64,
    /// Packets per second.
    pub pps: f64,
    /// Kilobits per second (payload).
    pub kbps: f64,
}

/// One-way delay by hop in the measurement window (cascade mode), milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HopDelays {
    /// Packets measured between devices on the same focus.
    pub same_focus_packets: u64,
    /// Median delay between devices on the same focus.
    pub same_focus_p50: Option<f64>,
    /// 99th percentile delay between devices on the same focus.
    pub same_focus_p99: Option<f64>,
    /// Packets measured between devices on different foci.
    pub cross_focus_packets: u64,
    /// Median delay between devices on different foci (one link hop).
    pub cross_focus_p50: Option<f64>,
    /// 99th percentile delay between devices on different foci.
    pub cross_focus_p99: Option<f64>,
    /// What one hop over a link adds to the median: cross-focus p50 minus same-focus p50.
    pub added_per_hop_p50: Option<f64>,
    /// What one hop over a link adds to the 99th percentile: cross-focus p99 minus same-focus p99.
    pub added_per_hop_p99: Option<f64>,
}

impl HopDelays {
    /// The delays by hop of the packets received between two snapshots of the totals.
    pub fn between(before: &Totals, after: &Totals) -> Self {
        let same = after.same_focus_delays.since(&before.same_focus_delays);
        let cross = after.cross_focus_delays.since(&before.cross_focus_delays);
        let ms = |h: &DelayHistogram, q: f64| h.quantile(q).map(|us| us as f64 / 1000.0);
        let added = |q: f64| Some(ms(&cross, q)? - ms(&same, q)?);
        Self {
            same_focus_packets: same.count(),
            same_focus_p50: ms(&same, 0.5),
            same_focus_p99: ms(&same, 0.99),
            cross_focus_packets: cross.count(),
            cross_focus_p50: ms(&cross, 0.5),
            cross_focus_p99: ms(&cross, 0.99),
            added_per_hop_p50: added(0.5),
            added_per_hop_p99: added(0.99),
        }
    }
}

/// One focus process at one end of the measurement window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FocusMark {
    /// Its CPU time and memory, if its process is local.
    pub sample: Option<ProcSample>,
    /// Its `/metrics`, if they could be read.
    pub metrics: Option<crate::metrics::FocusMetrics>,
}

/// What one focus spent and forwarded in the measurement window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FocusFigures {
    /// The focus's user id.
    pub user_id: String,
    /// Its process id, if known.
    pub pid: Option<u32>,
    /// Its CPU time in the window, seconds.
    pub cpu_seconds: Option<f64>,
    /// Its CPU use in the window, percent of one core.
    pub cpu_pct: Option<f64>,
    /// Packets it forwarded in the window, to devices and over links
    /// (`cascade_forwarded_packets_total`).
    pub forwarded_packets: Option<u64>,
    /// Packets the devices calling it received in the window.
    pub local_received_packets: u64,
    /// Forwarded packets that no local device received: about what it sent over links (the
    /// two counts are read a few milliseconds apart, so small runs are approximate); `None`
    /// when it had no link at either end of the window.
    pub link_packets: Option<u64>,
    /// Its links at the end of the window (`cascade_links`).
    pub links: Option<f64>,
    /// CPU microseconds per forwarded packet.
    pub cpu_us_per_forwarded_packet: Option<f64>,
    /// Packets it did not forward in the window, by reason (those that moved).
    pub dropped_packets: BTreeMap<String, u64>,
    /// Datagrams its media sockets sent in the window, and how many of them left joined with
    /// others to the same device in one UDP GSO message.
    pub datagrams_sent: Option<(u64, u64)>,
}

impl FocusFigures {
    /// The figures of focus `user_id` between its two marks, `window` seconds apart, whose
    /// local devices received `local_received_packets` in that time.
    pub fn between(
        user_id: &str,
        pid: Option<u32>,
        (start, end): (&FocusMark, &FocusMark),
        window: f64,
        local_received_packets: u64,
    ) -> Self {
        let cpu_seconds = match (start.sample, end.sample) {
            (Some(s), Some(e)) => Some((e.cpu_seconds - s.cpu_seconds).max(0.0)),
            _ => None,
        };
        let forwarded_packets = match (&start.metrics, &end.metrics) {
            (Some(s), Some(e)) => Some(e.forwarded_packets.saturating_sub(s.forwarded_packets)),
            _ => None,
        };
        let dropped_packets = match (&start.metrics, &end.metrics) {
            (Some(s), Some(e)) => e
                .dropped
                .iter()
                .map(|(reason, n)| {
                    let before = s.dropped.get(reason).copied().unwrap_or(0);
                    (reason.clone(), n.saturating_sub(before))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            _ => BTreeMap::new(),
        };
        let datagrams_sent = match (&start.metrics, &end.metrics) {
            (Some(s), Some(e)) => Some((
                e.datagrams_out.saturating_sub(s.datagrams_out),
                e.segmented_datagrams_out
                    .saturating_sub(s.segmented_datagrams_out),
            )),
            _ => None,
        };
        Self {
            user_id: user_id.to_owned(),
            pid,
            cpu_seconds,
            cpu_pct: cpu_seconds
                .filter(|_| window > 0.0)
                .map(|c| c * 100.0 / window),
            forwarded_packets,
            local_received_packets,
            link_packets: forwarded_packets
                .filter(|_| {
                    [start, end]
                        .iter()
                        .any(|m| m.metrics.as_ref().is_some_and(|m| m.links > 0.0))
                })
                .map(|f| f.saturating_sub(local_received_packets)),
            links: end.metrics.as_ref().map(|m| m.links),
            cpu_us_per_forwarded_packet: match (cpu_seconds, forwarded_packets) {
                (Some(c), Some(f)) if f > 0 => Some(c * 1e6 / f as f64),
                _ => None,
            },
            dropped_packets,
            datagrams_sent,
        }
    }
}

/// The whole result of one run, as printed and as written to JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The scenario that ran.
    pub scenario: Scenario,
    /// The homeserver used.
    pub homeserver: String,
    /// The (first) focus's process id, if known.
    pub focus_pid: Option<u32>,
    /// CPUs of this machine.
    pub cpus: usize,
    /// Devices the scenario has.
    pub devices: usize,
    /// Devices that connected.
    pub joins_ok: usize,
    /// Devices that did not.
    pub joins_failed: usize,
    /// The first few join errors.
    pub join_errors: Vec<String>,
    /// Start of join (account, room, membership, invite) to connected call, milliseconds.
    pub join_ms: Percentiles,
    /// Invite sent to the focus's answer received, milliseconds.
    pub answer_ms: Percentiles,
    /// Length of the measurement window, seconds.
    pub window_secs: f64,
    /// Audio received in the window.
    pub audio: KindRate,
    /// Video received in the window.
    pub video: KindRate,
    /// Packets the publishers sent over the whole run.
    pub publisher_packets_sent: u64,
    /// Audio tracks received with media (one per subscription).
    pub audio_subscriptions: usize,
    /// Video tracks received with media.
    pub video_subscriptions: usize,
    /// Packets lost in the window, percent.
    pub loss_pct: f64,
    /// Payloads that failed verification over the whole run.
    pub corrupt_packets: u64,
    /// Devices that subscribe to something.
    pub watchers: usize,
    /// Watchers that received nothing at all.
    pub silent_watchers: usize,
    /// Watchers that received nothing from some publisher they watch.
    pub incomplete_watchers: usize,
    /// The first few of them: who, on which focus, and whom they missed.
    pub incomplete_watcher_details: Vec<String>,
    /// One-way delay in the window, milliseconds.
    pub delay_ms_p50: Option<f64>,
    /// One-way delay in the window, milliseconds.
    pub delay_ms_p99: Option<f64>,
    /// One-way delay by hop (same focus, across a link, added per hop), milliseconds.
    pub hops: HopDelays,
    /// Focus processes the devices are spread over (`--foci`).
    pub foci_count: usize,
    /// Each focus's CPU and forwarding in the window.
    pub foci: Vec<FocusFigures>,
    /// The foci's CPU time in the window (all of them), seconds.
    pub focus_cpu_seconds: Option<f64>,
    /// The foci's CPU use in the window (all of them), percent of one core.
    pub focus_cpu_pct: Option<f64>,
    /// Packets the subscribers received per focus CPU-second (all foci).
    pub forwarded_per_focus_cpu_second: Option<f64>,
    /// The foci's peak resident memory (added up), MiB.
    pub focus_peak_rss_mib: Option<f64>,
    /// The load generator's CPU time in the window, seconds.
    pub loadgen_cpu_seconds: f64,
    /// The plain UDP fan-out baseline on this machine, if it was run.
    pub baseline: Option<crate::baseline::BaselineResult>,
    /// Forwarded packets per focus CPU-second as a fraction of the baseline's.
    pub focus_vs_kernel: Option<f64>,
    /// One point per second.
    pub series: Vec<Point>,
}

/// One end of the measurement window: when, totals, the focus's sample, own CPU seconds.
pub type Mark<'a> = (Instant, &'a Totals, Option<&'a ProcSample>, f64);

impl Summary {
    /// Builds the summary from the measurement window's two ends and the run's bookkeeping.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        scenario: &Scenario,
        homeserver: &str,
        focus_pid: Option<u32>,
        (devices, joins_ok, failures): (usize, usize, &[String]),
        (join_ms, answer_ms): (Percentiles, Percentiles),
        start: Mark<'_>,
        end: Mark<'_>,
        (watchers, silent_watchers): (usize, usize),
        publisher_packets_sent: u64,
        (audio_subscriptions, video_subscriptions): (usize, usize),
        series: Vec<Point>,
    ) -> Self {
        let window = end.0.duration_since(start.0).as_secs_f64();
        let kind = |packets: u64, bytes: u64| KindRate {
            packets,
            pps: rate(packets, window),
            kbps: rate(bytes * 8, window) / 1000.0,
        };
        let (a, b) = (start.1, end.1);
        let audio = kind(
            b.audio_packets.saturating_sub(a.audio_packets),
            b.audio_bytes.saturating_sub(a.audio_bytes),
        );
        let video = kind(
            b.video_packets.saturating_sub(a.video_packets),
            b.video_bytes.saturating_sub(a.video_bytes),
        );
        let delays = b.delays.since(&a.delays);
        let ms = |q: f64| delays.quantile(q).map(|us| us as f64 / 1000.0);
        let focus_cpu_seconds = match (start.2, end.2) {
            (Some(s), Some(e)) => Some(e.cpu_seconds - s.cpu_seconds),
            _ => None,
        };
        let forwarded = audio.packets + video.packets;
        Self {
            scenario: scenario.clone(),
            homeserver: homeserver.to_owned(),
            focus_pid,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            devices,
            joins_ok,
            joins_failed: failures.len(),
            join_errors: failures.iter().take(5).cloned().collect(),
            join_ms,
            answer_ms,
            window_secs: window,
            audio,
            video,
            publisher_packets_sent,
            audio_subscriptions,
            video_subscriptions,
            loss_pct: loss_pct(forwarded, b.missing.saturating_sub(a.missing)),
            corrupt_packets: b.corrupt,
            watchers,
            silent_watchers,
            incomplete_watchers: 0,
            incomplete_watcher_details: Vec::new(),
            delay_ms_p50: ms(0.5),
            delay_ms_p99: ms(0.99),
            hops: HopDelays::between(a, b),
            foci_count: 1,
            foci: Vec::new(),
            focus_cpu_seconds,
            focus_cpu_pct: focus_cpu_seconds
                .filter(|_| window > 0.0)
                .map(|c| c * 100.0 / window),
            forwarded_per_focus_cpu_second: focus_cpu_seconds
                .filter(|c| *c > 0.0)
                .map(|c| forwarded as f64 / c),
            focus_peak_rss_mib: end.2.map(|s| s.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
            loadgen_cpu_seconds: end.3 - start.3,
            baseline: None,
            focus_vs_kernel: None,
            series,
        }
    }

    /// Records the watchers that missed publishers (one line each).
    pub fn set_incomplete_watchers(&mut self, lines: Vec<String>) {
        self.incomplete_watchers = lines.len();
        self.incomplete_watcher_details = lines.into_iter().take(10).collect();
    }

    /// Records the foci's own figures.
    pub fn set_foci(&mut self, foci: Vec<FocusFigures>) {
        self.foci_count = foci.len().max(1);
        self.foci = foci;
    }

    /// Records the baseline and the focus's fraction of it.
    pub fn set_baseline(&mut self, baseline: crate::baseline::BaselineResult) {
        self.focus_vs_kernel = self
            .forwarded_per_focus_cpu_second
            .filter(|_| baseline.packets_per_cpu_second > 0.0)
            .map(|f| f / baseline.packets_per_cpu_second);
        self.baseline = Some(baseline);
    }

    /// Packets received per second in the window, both kinds.
    pub fn total_pps(&self) -> f64 {
        self.audio.pps + self.video.pps
    }

    /// Why the run counts as failed (media did not flow, or arrived corrupt), if it does.
    pub fn media_failure(&self) -> Option<String> {
        let mut problems = Vec::new();
        if self.joins_ok == 0 {
            problems.push("no device joined".to_owned());
        }
        if self.joins_failed > 0 {
            problems.push(format!("{} joins failed", self.joins_failed));
        }
        if self.watchers > 0 && self.audio.packets + self.video.packets == 0 {
            problems.push("no media received in the measurement window".to_owned());
        }
        if self.silent_watchers > 0 {
            problems.push(format!(
                "{} watchers received nothing",
                self.silent_watchers
            ));
        }
        if self.incomplete_watchers > 0 {
            problems.push(format!(
                "{} watchers got nothing from some publisher they watch",
                self.incomplete_watchers
            ));
        }
        if self.foci_count > 1
            && self.audio.packets + self.video.packets > 0
            && self.hops.cross_focus_packets == 0
        {
            problems.push("no media crossed between foci".to_owned());
        }
        if self.corrupt_packets > 0 {
            problems.push(format!("{} corrupt payloads", self.corrupt_packets));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = percentile_ms(&values);
        assert_eq!(p.p50, Some(50.0));
        assert_eq!(p.p95, Some(95.0));
        assert_eq!(p.p99, Some(99.0));
        assert!(percentile_ms(&[]).p50.is_none());
    }

    #[test]
    fn hops_from_the_two_foci() {
        assert_eq!(Hop::between(0, Some(0)), Some(Hop::SameFocus));
        assert_eq!(Hop::between(1, Some(0)), Some(Hop::CrossFocus));
        assert_eq!(Hop::between(1, None), None);
    }

    #[test]
    fn added_delay_per_hop_is_cross_minus_same_in_the_window() {
        let mut before = Totals::default();
        // Before the window: slow packets that must not count.
        for _ in 0..1000 {
            before.same_focus_delays.record(50_000);
            before.cross_focus_delays.record(50_000);
        }
        let mut after = before.clone();
        for i in 0..100u64 {
            after.same_focus_delays.record(1_000 + i * 10);
            after.cross_focus_delays.record(3_000 + i * 20);
        }
        let h = HopDelays::between(&before, &after);
        assert_eq!(h.same_focus_packets, 100);
        assert_eq!(h.cross_focus_packets, 100);
        let near = |v: Option<f64>, want: f64| {
            let v = v.expect("a value");
            assert!((v - want).abs() <= want * 0.07, "{v} vs {want}");
        };
        near(h.same_focus_p50, 1.5);
        near(h.cross_focus_p50, 4.0);
        near(h.same_focus_p99, 1.98);
        near(h.cross_focus_p99, 4.96);
        let added = h.added_per_hop_p50.expect("added p50");
        assert_eq!(
            added,
            h.cross_focus_p50.unwrap_or(0.0) - h.same_focus_p50.unwrap_or(0.0)
        );
        assert!((added - 2.5).abs() < 0.3, "{added}");
        let added99 = h.added_per_hop_p99.expect("added p99");
        assert!((added99 - 2.98).abs() < 0.4, "{added99}");
        // One focus: nothing crosses, nothing is added.
        let mut one = Totals::default();
        one.same_focus_delays.record(1_000);
        let h = HopDelays::between(&Totals::default(), &one);
        assert_eq!(h.cross_focus_packets, 0);
        assert!(h.cross_focus_p50.is_none());
        assert!(h.added_per_hop_p50.is_none());
    }

    #[test]
    fn focus_figures_per_forwarded_packet() {
        let at = Instant::now();
        let sample = |cpu: f64| ProcSample {
            at,
            cpu_seconds: cpu,
            peak_rss_bytes: 0,
            rss_bytes: 0,
        };
        let metrics = |forwarded: u64, links: f64, unrouted: u64| crate::metrics::FocusMetrics {
            forwarded_packets: forwarded,
            links,
            dropped: [
                ("unrouted".to_owned(), unrouted),
                ("ssrc_limit".to_owned(), 2),
            ]
            .into(),
            ..Default::default()
        };
        let start = FocusMark {
            sample: Some(sample(10.0)),
            metrics: Some(metrics(1_000, 1.0, 3)),
        };
        let end = FocusMark {
            sample: Some(sample(12.0)),
            metrics: Some(metrics(101_000, 1.0, 10)),
        };
        let f = FocusFigures::between("@focus:hs", Some(7), (&start, &end), 10.0, 60_000);
        assert_eq!(f.cpu_seconds, Some(2.0));
        assert_eq!(f.cpu_pct, Some(20.0));
        assert_eq!(f.forwarded_packets, Some(100_000));
        assert_eq!(f.link_packets, Some(40_000));
        assert_eq!(f.links, Some(1.0));
        assert_eq!(f.cpu_us_per_forwarded_packet, Some(20.0));
        assert_eq!(f.dropped_packets, [("unrouted".to_owned(), 7)].into());
        let unlinked = |m: &FocusMark| FocusMark {
            metrics: m
                .metrics
                .clone()
                .map(|m| crate::metrics::FocusMetrics { links: 0.0, ..m }),
            ..m.clone()
        };
        let alone = FocusFigures::between(
            "@f:hs",
            None,
            (&unlinked(&start), &unlinked(&end)),
            10.0,
            99_990,
        );
        assert_eq!(alone.forwarded_packets, Some(100_000));
        assert!(alone.link_packets.is_none(), "no link, nothing over links");
        let unknown = FocusFigures::between("@f:hs", None, (&FocusMark::default(), &end), 10.0, 5);
        assert!(unknown.cpu_seconds.is_none());
        assert!(unknown.forwarded_packets.is_none());
        assert!(unknown.cpu_us_per_forwarded_packet.is_none());
    }

    #[test]
    fn point_rates() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let before = Totals::default();
        let after = Totals {
            audio_packets: 100,
            audio_bytes: 10_000,
            video_packets: 300,
            video_bytes: 240_000,
            missing: 4,
            ..Default::default()
        };
        let p = Point::between(
            Duration::from_secs(5),
            3,
            0,
            (&before, &after),
            (None, None),
            ((t0, 1.0), (t1, 1.5)),
        );
        assert_eq!(p.audio_pps, 50.0);
        assert_eq!(p.video_pps, 150.0);
        assert!((p.rx_mbps - 1.0).abs() < 1e-9);
        assert!((p.loss_pct - 4.0 * 100.0 / 404.0).abs() < 1e-9);
        assert!((p.loadgen_cpu_pct - 25.0).abs() < 1e-9);
        assert!(p.focus_cpu_pct.is_none());
    }
}
