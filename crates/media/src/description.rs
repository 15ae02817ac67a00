//! Session descriptions between the focus and a device: what the focus applies of the device's
//! later descriptions, and what it leaves out of its own.
//!
//! # Renegotiation with a device that already publishes simulcast
//!
//! A simulcast publication is learned from its packets: the description names only its rids
//! (RFC 8851), and each layer's SSRC is bound when the first packet carrying the `sdes:mid` and
//! `sdes:rtp-stream-id` header extensions arrives. Browsers stop putting those extensions on a
//! stream once an RTCP receiver report has acknowledged its SSRC (about a second in). The WebRTC
//! stack rebuilds the receiver of every m-section named in a remote description it applies, as
//! if the track were new, and so forgets the learned SSRCs; the layers' later packets then match
//! nothing and are dropped inside the stack. That made an existing publisher's video vanish for
//! every device that joined after it: the publisher's answer to the offer that added the new
//! device's tracks was the first renegotiation after its layers were learned.
//!
//! The fix: before a renegotiation's description is applied, the m-sections of simulcast
//! publications that are already receiving lose their track declarations (`a=msid`, `a=ssrc`,
//! `a=ssrc-group`), so the stack leaves their receivers as they are. Their rids, direction,
//! codecs and extensions stay, so negotiation itself is unchanged.

use std::collections::HashSet;

/// Removes `a=msid`, `a=ssrc` and `a=ssrc-group` lines from each m-section of `sdp` whose
/// `a=mid` is in `receiving` and which declares rids (`a=rid:`), i.e. a simulcast publication
/// that is already being received. Other sections and the session part are returned unchanged,
/// with the description's own line endings (`\r\n`, or `\n`).
pub fn keep_learned_simulcast(sdp: &str, receiving: &HashSet<String>) -> String {
    if receiving.is_empty() {
        return sdp.to_owned();
    }
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(sdp.len());
    let mut section: Vec<&str> = Vec::new();
    let flush = |section: &mut Vec<&str>, out: &mut String| {
        let is_media = section.first().is_some_and(|l| l.starts_with("m="));
        let mid = section.iter().find_map(|l| l.strip_prefix("a=mid:"));
        let simulcast = section.iter().any(|l| l.starts_with("a=rid:"));
        let strip = is_media && simulcast && mid.is_some_and(|m| receiving.contains(m.trim()));
        for line in section.drain(..) {
            if strip
                && (line.starts_with("a=msid:")
                    || line.starts_with("a=ssrc:")
                    || line.starts_with("a=ssrc-group:"))
            {
                continue;
            }
            out.push_str(line);
            out.push_str(eol);
        }
    };
    for line in sdp.split(eol).filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            flush(&mut section, &mut out);
        }
        section.push(line);
    }
    flush(&mut section, &mut out);
    out
}

/// Removes the ICE candidates of component 2 (RTCP) from `sdp`.
///
/// The focus always multiplexes RTCP with RTP (`a=rtcp-mux`, RFC 8858, with BUNDLE), so it has
/// no RTCP component to offer; the WebRTC stack writes a component-2 copy of each candidate
/// anyway, which browsers reject as errors. A candidate line is `a=candidate:<foundation>
/// <component> <transport> ...` (RFC 8839 §5.1).
pub fn without_rtcp_candidates(sdp: &str) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split(eol).filter(|l| !l.is_empty()) {
        let rtcp = line
            .strip_prefix("a=candidate:")
            .and_then(|rest| rest.split(' ').nth(1))
            == Some("2");
        if !rtcp {
            out.push_str(line);
            out.push_str(eol);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:s a\r\na=ssrc:11 cname:x\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:s v\r\na=rid:q send\r\na=rid:h send\r\n\
a=simulcast:send q;h\r\na=ssrc-group:FID 21 22\r\na=ssrc:21 cname:x\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=msid:s w\r\na=rid:q send\r\na=simulcast:send q\r\n";

    fn mids(list: &[&str]) -> HashSet<String> {
        list.iter().map(|m| (*m).to_owned()).collect()
    }

    #[test]
    fn strips_only_receiving_simulcast_sections() {
        let out = keep_learned_simulcast(ANSWER, &mids(&["0", "1"]));
        // mid 1: simulcast and receiving, its declarations go.
        let section1 = out.split("m=video").nth(1).unwrap();
        assert!(!section1.contains("a=msid"), "{section1}");
        assert!(!section1.contains("a=ssrc"), "{section1}");
        assert!(section1.contains("a=rid:q send") && section1.contains("a=simulcast:send q;h"));
        // mid 0: receiving but not simulcast; mid 2: simulcast but new. Both unchanged.
        assert!(out.contains("a=mid:0\r\na=msid:s a\r\na=ssrc:11 cname:x\r\n"));
        assert!(out.contains("a=mid:2\r\na=msid:s w\r\n"));
        assert!(out.starts_with("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"));
        assert!(out.ends_with("a=simulcast:send q\r\n"));
    }

    #[test]
    fn rtcp_candidates_are_left_out() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtcp-mux\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
a=candidate:1 2 udp 2130706431 127.0.0.1 7882 typ host\r\na=end-of-candidates\r\n";
        let out = without_rtcp_candidates(sdp);
        assert!(out.contains("a=candidate:1 1 udp"));
        assert!(!out.contains("a=candidate:1 2 udp"), "{out}");
        assert!(out.ends_with("a=end-of-candidates\r\n"));
        assert_eq!(without_rtcp_candidates(&out), out);
    }

    #[test]
    fn nothing_receiving_or_lf_endings() {
        assert_eq!(keep_learned_simulcast(ANSWER, &mids(&[])), ANSWER);
        let lf = ANSWER.replace("\r\n", "\n");
        let out = keep_learned_simulcast(&lf, &mids(&["1"]));
        assert!(!out.contains('\r'));
        assert_eq!(out.lines().count(), lf.lines().count() - 3);
    }
}
