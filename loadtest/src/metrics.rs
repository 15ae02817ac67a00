//! The few figures the load tester reads from a focus's Prometheus `/metrics`.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of one focus at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FocusMetrics {
    /// RTP packets forwarded so far, all kinds (`cascade_forwarded_packets_total`).
    pub forwarded_packets: u64,
    /// Link calls now (`cascade_links`).
    pub links: f64,
    /// Packets not forwarded so far, by reason (`cascade_dropped_packets_total`).
    pub dropped: BTreeMap<String, u64>,
    /// Conferences on the event loops now (`cascade_conferences`).
    pub conferences: f64,
    /// Calls on the event loops now (`cascade_participants`).
    pub participants: f64,
    /// Peer connections in any state now (`cascade_peer_connections`, all states).
    pub peer_connections: f64,
    /// Subscriptions now (`cascade_subscriptions`).
    pub subscriptions: f64,
    /// Call events the focus could not decode so far
    /// (`cascade_signalling_errors_total{reason="decode_error"}`).
    pub signalling_decode_errors: u64,
    /// Transport-cc feedback packets received so far
    /// (`cascade_congestion_feedback_total{kind="transport_cc"}`).
    pub transport_cc_feedback: u64,
    /// Probe packets sent so far (`cascade_probe_packets_total`).
    pub probe_packets: u64,
    /// Datagrams the media sockets sent so far
    /// (`cascade_udp_datagrams_total{direction="out"}`).
    pub datagrams_out: u64,
    /// Of those, the ones joined with others into one UDP GSO message
    /// (`cascade_udp_segmented_datagrams_total`).
    pub segmented_datagrams_out: u64,
    /// Changes of subscriptions' allowed layers so far, by cause
    /// (`cascade_layer_allocation_changes_total`).
    pub allocation_changes: BTreeMap<String, u64>,
    /// Subscriptions held below their asked-for layer by their downlink now
    /// (`cascade_downlink_limited_subscriptions`).
    pub limited_subscriptions: f64,
}

/// The value of a sample line `name{labels} value` or `name value` if it is of `name`.
fn value_of(line: &str, name: &str) -> Option<f64> {
    let rest = line.strip_prefix(name)?;
    let rest = match rest.strip_prefix('{') {
        Some(labelled) => &labelled[labelled.find('}')? + 1..],
        None => rest,
    };
    if !rest.starts_with(' ') {
        return None;
    }
    rest.split_whitespace().next()?.parse().ok()
}

/// The value of label `name` in a sample line (`name="value"`).
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// Reads the figures from the text exposition format (series missing count as 0).
pub fn parse(text: &str) -> FocusMetrics {
    let mut forwarded = 0.0;
    let mut m = FocusMetrics::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(v) = value_of(line, "cascade_forwarded_packets_total") {
            forwarded += v;
        } else if let Some(v) = value_of(line, "cascade_links") {
            m.links += v;
        } else if let Some(v) = value_of(line, "cascade_conferences") {
            m.conferences += v;
        } else if let Some(v) = value_of(line, "cascade_participants") {
            m.participants += v;
        } else if let Some(v) = value_of(line, "cascade_peer_connections") {
            m.peer_connections += v;
        } else if let Some(v) = value_of(line, "cascade_subscriptions") {
            m.subscriptions += v;
        } else if let Some(v) = value_of(line, "cascade_signalling_errors_total") {
            if label(line, "reason") == Some("decode_error") {
                m.signalling_decode_errors += v.max(0.0) as u64;
            }
        } else if let Some(v) = value_of(line, "cascade_congestion_feedback_total") {
            if label(line, "kind") == Some("transport_cc") {
                m.transport_cc_feedback += v.max(0.0) as u64;
            }
        } else if let Some(v) = value_of(line, "cascade_udp_datagrams_total") {
            if label(line, "direction") == Some("out") {
                m.datagrams_out += v.max(0.0) as u64;
            }
        } else if let Some(v) = value_of(line, "cascade_udp_segmented_datagrams_total") {
            m.segmented_datagrams_out += v.max(0.0) as u64;
        } else if let Some(v) = value_of(line, "cascade_probe_packets_total") {
            m.probe_packets += v.max(0.0) as u64;
        } else if let Some(v) = value_of(line, "cascade_layer_allocation_changes_total") {
            let cause = label(line, "cause").unwrap_or("").to_owned();
            *m.allocation_changes.entry(cause).or_insert(0) += v.max(0.0) as u64;
        } else if let Some(v) = value_of(line, "cascade_downlink_limited_subscriptions") {
            m.limited_subscriptions += v;
        } else if let Some(v) = value_of(line, "cascade_dropped_packets_total") {
            let reason = label(line, "reason").unwrap_or("").to_owned();
            *m.dropped.entry(reason).or_insert(0) += v.max(0.0) as u64;
        }
    }
    m.forwarded_packets = forwarded.max(0.0) as u64;
    m
}

/// Reads `url` (a focus's `/metrics`).
pub async fn scrape(client: &reqwest::Client, url: &str) -> Result<FocusMetrics> {
    let text = client
        .get(url)
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?
        .text()
        .await
        .with_context(|| format!("reading {url}"))?;
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forwarded_packets_and_links() {
        let text = "\
# HELP cascade_links Calls that are links.
# TYPE cascade_links gauge
cascade_links 1
cascade_link_calls_total{side=\"placed\"} 3
# TYPE cascade_forwarded_packets_total counter
cascade_forwarded_packets_total{kind=\"audio\"} 1200
cascade_forwarded_packets_total{kind=\"video\"} 3400
cascade_forwarded_packets_totally 7
cascade_forwarded_bytes_total{kind=\"audio\"} 99999
cascade_dropped_packets_total{reason=\"unrouted\"} 5
cascade_dropped_packets_total{reason=\"unbound_ssrc\"} 0
cascade_participants 4
cascade_peer_connections{state=\"connected\"} 3
cascade_peer_connections{state=\"new\"} 1
cascade_subscriptions 6
cascade_conferences 1
cascade_udp_datagrams_total{direction=\"in\"} 50
cascade_udp_datagrams_total{direction=\"out\"} 900
cascade_udp_segmented_datagrams_total 600
";
        let m = parse(text);
        assert_eq!(m.forwarded_packets, 4600);
        assert_eq!(m.links, 1.0);
        assert_eq!(m.dropped.get("unrouted"), Some(&5));
        assert_eq!(m.dropped.get("unbound_ssrc"), Some(&0));
        assert_eq!(m.participants, 4.0);
        assert_eq!(m.peer_connections, 4.0);
        assert_eq!(m.subscriptions, 6.0);
        assert_eq!(m.conferences, 1.0);
        assert_eq!((m.datagrams_out, m.segmented_datagrams_out), (900, 600));
        assert_eq!(parse(""), FocusMetrics::default());
    }
}
