//! The end-of-run table, and the JSON file.

use crate::stats::{FocusFigures, Percentiles, Summary};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// `12345678.9` → `12,345,679`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percentiles(p: &Percentiles) -> String {
    format!(
        "{} / {} / {} ms",
        opt(p.p50, 0),
        opt(p.p95, 0),
        opt(p.p99, 0)
    )
}

/// One focus's line: CPU, forwarded packets (over links), links, CPU per forwarded packet.
fn focus_figures(f: &FocusFigures) -> String {
    let count = |v: Option<u64>| v.map_or_else(|| "n/a".to_owned(), |v| thousands(v as f64));
    let mut line = format!(
        "CPU {} s ({} %), forwarded {} pkt ({} over links, {} links), {} µs CPU per forwarded pkt",
        opt(f.cpu_seconds, 2),
        opt(f.cpu_pct, 1),
        count(f.forwarded_packets),
        count(f.link_packets),
        opt(f.links, 0),
        opt(f.cpu_us_per_forwarded_packet, 2)
    );
    if let Some((sent, joined)) = f.datagrams_sent.filter(|(sent, _)| *sent > 0) {
        let _ = write!(
            line,
            "; {} datagrams sent, {:.0} % joined by UDP GSO",
            thousands(sent as f64),
            joined as f64 * 100.0 / sent as f64
        );
    }
    if !f.dropped_packets.is_empty() {
        let dropped: Vec<String> = f
            .dropped_packets
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let _ = write!(line, "; dropped {}", dropped.join(", "));
    }
    line
}

/// Renders the summary as a two-column table.
pub fn table(s: &Summary) -> String {
    let sc = &s.scenario;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
    row(
        "scenario",
        format!(
            "{}{}: {} video + {} audio publishers, {} subscribers{}, simulcast {}, layout {}",
            sc.preset.as_deref().unwrap_or("custom"),
            if sc.conferences > 1 {
                format!(" × {} conferences", sc.conferences)
            } else {
                String::new()
            },
            sc.video_publishers,
            sc.audio_publishers,
            sc.subscribers,
            if sc.publishers_subscribe {
                ", publishers watch each other"
            } else {
                ""
            },
            if sc.simulcast { "on" } else { "off" },
            sc.layout
        ),
    );
    row("machine", format!("{} CPUs", s.cpus));
    if s.foci_count > 1 {
        row(
            "foci",
            format!(
                "{} (device i calls focus i mod {}; the foci link)",
                s.foci_count, s.foci_count
            ),
        );
    }
    row(
        "joins ok / failed",
        format!("{} / {}", s.joins_ok, s.joins_failed),
    );
    row("join time p50 / p95 / p99", percentiles(&s.join_ms));
    row("invite→answer p50 / p95 / p99", percentiles(&s.answer_ms));
    row("measurement window", format!("{:.1} s", s.window_secs));
    row(
        "received audio",
        format!(
            "{} pkt/s  {:.0} kb/s  ({} subscriptions)",
            thousands(s.audio.pps),
            s.audio.kbps,
            s.audio_subscriptions
        ),
    );
    row(
        "received video",
        format!(
            "{} pkt/s  {:.0} kb/s  ({} subscriptions)",
            thousands(s.video.pps),
            s.video.kbps,
            s.video_subscriptions
        ),
    );
    row("loss", format!("{:.3} %", s.loss_pct));
    row("corrupt payloads", s.corrupt_packets.to_string());
    row(
        "silent watchers",
        format!("{} of {}", s.silent_watchers, s.watchers),
    );
    row(
        "watchers missing a publisher",
        format!("{} of {}", s.incomplete_watchers, s.watchers),
    );
    row(
        "one-way delay p50 / p99",
        format!("{} / {} ms", opt(s.delay_ms_p50, 2), opt(s.delay_ms_p99, 2)),
    );
    if s.foci_count > 1 {
        let h = &s.hops;
        let mut delay_row = |label, p50, p99, packets: u64| {
            let delay = format!("{} / {} ms", opt(p50, 2), opt(p99, 2));
            row(
                label,
                format!("{delay}  ({} pkt)", thousands(packets as f64)),
            );
        };
        delay_row(
            "delay same focus p50 / p99",
            h.same_focus_p50,
            h.same_focus_p99,
            h.same_focus_packets,
        );
        delay_row(
            "delay across foci p50 / p99",
            h.cross_focus_p50,
            h.cross_focus_p99,
            h.cross_focus_packets,
        );
        row(
            "added per hop p50 / p99",
            format!(
                "{} / {} ms",
                opt(h.added_per_hop_p50, 2),
                opt(h.added_per_hop_p99, 2)
            ),
        );
    }
    row(
        if s.foci_count > 1 {
            "foci CPU (all)"
        } else {
            "focus CPU"
        },
        format!(
            "{} s  ({} % of one core)",
            opt(s.focus_cpu_seconds, 2),
            opt(s.focus_cpu_pct, 1)
        ),
    );
    for (i, f) in s.foci.iter().enumerate() {
        row(&format!("focus {i} ({})", f.user_id), focus_figures(f));
    }
    row(
        "forwarded pkt per focus CPU-s",
        s.forwarded_per_focus_cpu_second
            .map_or_else(|| "n/a".to_owned(), thousands),
    );
    row(
        "focus peak RSS",
        format!("{} MiB", opt(s.focus_peak_rss_mib, 1)),
    );
    row(
        "load generator CPU",
        format!(
            "{:.2} s  ({:.0} % of one core)",
            s.loadgen_cpu_seconds,
            if s.window_secs > 0.0 {
                s.loadgen_cpu_seconds * 100.0 / s.window_secs
            } else {
                0.0
            }
        ),
    );
    if let Some(b) = &s.baseline {
        row(
            "kernel UDP fan-out baseline",
            format!(
                "{} pkt per CPU-s (1 → {} sockets, {} B, {} pkt/s in, sinks {}), {:.2} µs CPU per sent pkt",
                thousands(b.packets_per_cpu_second),
                b.fanout,
                b.packet_size,
                thousands(b.packets_in as f64 / b.seconds.max(1e-9)),
                match b.sinks {
                    crate::baseline::Sinks::Polled => "polled",
                    crate::baseline::Sinks::Waiting => "waiting",
                },
                if b.packets_per_cpu_second > 0.0 {
                    1e6 / b.packets_per_cpu_second
                } else {
                    0.0
                }
            ),
        );
        row(
            "focus / baseline",
            s.focus_vs_kernel
                .map_or_else(|| "n/a".to_owned(), |r| format!("{:.1} %", r * 100.0)),
        );
    }
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<width$}  {v}");
    }
    for line in &s.incomplete_watcher_details {
        let _ = writeln!(out, "missing: {line}");
    }
    for err in &s.join_errors {
        let _ = writeln!(out, "join error: {err}");
    }
    out
}

/// Writes the summary as pretty JSON.
pub fn write_json(summary: &Summary, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(summary).context("serializing the summary")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }
}
