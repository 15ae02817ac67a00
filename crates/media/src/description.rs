//! Session descriptions between the focus and a device: what the WebRTC stack gets of the
//! device's descriptions, and what the device gets of the stack's.
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
//!
//! # Rejected m-sections
//!
//! An answer has exactly the offer's m-sections, in the offer's order; one the answerer does not
//! take is rejected by echoing its m-line with port 0 (RFC 3264 §6, RFC 9429 §5.3.1). The stack
//! does neither: it leaves out an audio or video section without a direction attribute (a port-0
//! section usually has none), never reads ports, and answers any `application …
//! webrtc-datachannel` section as `UDP/DTLS/SCTP`, whatever proto was offered. A device then got
//! an answer with fewer m-lines than its offer, or a data section on a transport it never
//! offered, and could not apply it.
//!
//! The fix: [`split_rejected`] decides, before the stack sees a device's description, which
//! sections the focus takes: audio and video on `UDP/TLS/RTP/SAVPF`, one data channel on exactly
//! `UDP/DTLS/SCTP webrtc-datachannel`, each with a mid and a port other than 0 (or
//! `a=bundle-only`). The stack gets the others as inert `text` stubs that keep their mids (so the
//! stack never hands a rejected mid to a new transceiver), the taken audio and video sections
//! without a direction get the SDP default `a=sendrecv`, and rejected mids leave the BUNDLE
//! group. [`restore_rejected`] puts the rejected m-lines back, with port 0, at their places in
//! every description the focus sends the device: the answer, and its later offers, which must
//! keep every m-section of the negotiation in place (RFC 3264 §8).

use std::collections::HashSet;

/// What every m-section the focus answers as audio or video is carried on (RFC 5764).
const RTP_PROTO: &str = "UDP/TLS/RTP/SAVPF";
/// What the data-channel m-section the focus answers is carried on (RFC 8841).
const SCTP_PROTO: &str = "UDP/DTLS/SCTP";
/// The format of a data-channel m-section (RFC 8841).
const DATA_CHANNEL_FORMAT: &str = "webrtc-datachannel";
/// The connection line of a rejected m-section.
const REJECTED_CONNECTION: &str = "c=IN IP4 0.0.0.0";
/// The m-line of the stand-in the stack gets for a rejected m-section: a media type the stack
/// ignores, and fixed fields, so nothing of a malformed m-line reaches its parser.
const STACK_STUB: &str = "m=text 0 RTP/AVP 0";

/// An m-section of a device's description that the focus rejects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Its position among the description's m-sections.
    pub index: usize,
    /// Its `a=mid`, if it had one.
    pub mid: Option<String>,
    /// Its m-line with port 0, as the focus's descriptions echo it.
    pub m_line: String,
}

/// A device's description split into what the WebRTC stack applies and what the focus rejects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// The description for the stack (see the module documentation).
    pub for_stack: String,
    /// The rejected m-sections, by ascending index.
    pub rejected: Vec<Rejected>,
    /// How many m-sections the stack negotiates (0: there is nothing to answer).
    pub accepted: usize,
}

/// A description cut into its session part and its m-sections, with the line ending it uses.
struct Sections<'a> {
    eol: &'static str,
    session: Vec<&'a str>,
    media: Vec<Vec<&'a str>>,
}

impl<'a> Sections<'a> {
    /// Cuts `sdp` at each `m=` line; empty lines go, `\r\n` and `\n` endings are both read.
    fn parse(sdp: &'a str) -> Self {
        let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
        let mut session = Vec::new();
        let mut media: Vec<Vec<&str>> = Vec::new();
        let lines = sdp.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        for line in lines.filter(|l| !l.is_empty()) {
            if line.starts_with("m=") {
                media.push(vec![line]);
            } else if let Some(section) = media.last_mut() {
                section.push(line);
            } else {
                session.push(line);
            }
        }
        Self {
            eol,
            session,
            media,
        }
    }
}

/// The `a=mid` of an m-section, if it has a non-empty one.
fn mid_of<'a>(section: &[&'a str]) -> Option<&'a str> {
    section
        .iter()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .map(str::trim)
        .filter(|mid| !mid.is_empty())
}

/// Whether an m-section has an attribute line `a=<name>` (a property, without value).
fn has_property(section: &[&str], name: &str) -> bool {
    section
        .iter()
        .any(|l| l.strip_prefix("a=").is_some_and(|a| a.trim() == name))
}

/// Whether an m-section has a direction attribute (RFC 8866 §6.7).
fn has_direction(section: &[&str]) -> bool {
    ["sendrecv", "sendonly", "recvonly", "inactive"]
        .iter()
        .any(|d| has_property(section, d))
}

/// The fields of an m-line after `m=`: media, port, proto, formats.
fn m_fields(m_line: &str) -> Vec<&str> {
    m_line
        .strip_prefix("m=")
        .unwrap_or(m_line)
        .split_whitespace()
        .collect()
}

/// The m-line with its port set to 0.
fn with_port_zero(m_line: &str) -> String {
    let fields = m_fields(m_line);
    let mut line = format!("m={} 0", fields.first().copied().unwrap_or_default());
    for field in fields.iter().skip(2) {
        line.push(' ');
        line.push_str(field);
    }
    line
}

/// Whether the focus takes this m-section; `data_taken` says whether an earlier one was the
/// data channel.
fn accepts(section: &[&str], data_taken: bool) -> bool {
    let fields = section.first().map(|l| m_fields(l)).unwrap_or_default();
    let [media, port, proto, formats @ ..] = fields.as_slice() else {
        return false;
    };
    if formats.is_empty() || mid_of(section).is_none() {
        return false;
    }
    let port = port.split('/').next().and_then(|p| p.parse::<u16>().ok());
    match port {
        None => return false,
        Some(0) if !has_property(section, "bundle-only") => return false,
        Some(_) => {}
    }
    match *media {
        "audio" | "video" => *proto == RTP_PROTO,
        "application" => !data_taken && *proto == SCTP_PROTO && formats == [DATA_CHANNEL_FORMAT],
        _ => false,
    }
}

/// An `a=group:` line without `leaving` mids; `None` when no mid is left. Other lines pass.
fn group_without(line: &str, leaving: &HashSet<&str>) -> Option<String> {
    let Some(group) = line.strip_prefix("a=group:") else {
        return Some(line.to_owned());
    };
    let mut tokens = group.split_whitespace();
    let semantics = tokens.next().unwrap_or_default();
    let mids: Vec<&str> = tokens.filter(|mid| !leaving.contains(mid)).collect();
    if mids.is_empty() {
        return None;
    }
    Some(format!("a=group:{semantics} {}", mids.join(" ")))
}

/// Appends `lines` to `out`, each ended with `eol`.
fn push_lines<S: AsRef<str>>(out: &mut String, lines: impl IntoIterator<Item = S>, eol: &str) {
    for line in lines {
        out.push_str(line.as_ref());
        out.push_str(eol);
    }
}

/// Splits a device's offer or answer into the description the stack applies and the
/// m-sections the focus rejects (see the module documentation).
pub fn split_rejected(sdp: &str) -> Split {
    let sections = Sections::parse(sdp);
    let mut data_taken = false;
    let mut verdicts = Vec::with_capacity(sections.media.len());
    for section in &sections.media {
        let accepted = accepts(section, data_taken);
        let is_data = section
            .first()
            .is_some_and(|l| l.starts_with("m=application"));
        data_taken |= accepted && is_data;
        verdicts.push(accepted);
    }
    let rejected: Vec<Rejected> = sections
        .media
        .iter()
        .zip(&verdicts)
        .enumerate()
        .filter(|(_, (_, accepted))| !**accepted)
        .map(|(index, (section, _))| Rejected {
            index,
            mid: mid_of(section).map(str::to_owned),
            m_line: with_port_zero(section.first().copied().unwrap_or_default()),
        })
        .collect();
    let leaving: HashSet<&str> = rejected.iter().filter_map(|r| r.mid.as_deref()).collect();
    let eol = sections.eol;
    let mut for_stack = String::with_capacity(sdp.len());
    push_lines(
        &mut for_stack,
        sections
            .session
            .iter()
            .filter_map(|l| group_without(l, &leaving)),
        eol,
    );
    for (section, accepted) in sections.media.iter().zip(&verdicts) {
        if *accepted {
            push_lines(&mut for_stack, section, eol);
            let rtp = section
                .first()
                .is_some_and(|l| !l.starts_with("m=application"));
            if rtp && !has_direction(section) {
                push_lines(&mut for_stack, ["a=sendrecv"], eol);
            }
        } else if let Some(mid) = mid_of(section) {
            let mid = format!("a=mid:{mid}");
            push_lines(
                &mut for_stack,
                [STACK_STUB, REJECTED_CONNECTION, mid.as_str()],
                eol,
            );
        }
    }
    Split {
        for_stack,
        accepted: verdicts.iter().filter(|a| **a).count(),
        rejected,
    }
}

/// Puts the `rejected` m-sections back into a local description of the stack's before it goes
/// to the device: the stack's sections with a rejected mid go, and each rejected m-line (port
/// 0, `c=IN IP4 0.0.0.0`, its mid) takes its original index (or the end, past it). Without
/// rejected sections `local` is returned unchanged; otherwise with its own line endings.
pub fn restore_rejected(local: &str, rejected: &[Rejected]) -> String {
    if rejected.is_empty() {
        return local.to_owned();
    }
    let sections = Sections::parse(local);
    let eol = sections.eol;
    let leaving: HashSet<&str> = rejected.iter().filter_map(|r| r.mid.as_deref()).collect();
    let mut media: Vec<Vec<String>> = sections
        .media
        .iter()
        .filter(|section| mid_of(section).is_none_or(|mid| !leaving.contains(mid)))
        .map(|section| section.iter().map(|l| (*l).to_owned()).collect())
        .collect();
    let mut in_order: Vec<&Rejected> = rejected.iter().collect();
    in_order.sort_by_key(|r| r.index);
    for r in in_order {
        let mut lines = vec![r.m_line.clone(), REJECTED_CONNECTION.to_owned()];
        if let Some(mid) = &r.mid {
            lines.push(format!("a=mid:{mid}"));
        }
        media.insert(r.index.min(media.len()), lines);
    }
    let mut out = String::with_capacity(local.len() + 64 * rejected.len());
    push_lines(
        &mut out,
        sections
            .session
            .iter()
            .filter_map(|l| group_without(l, &leaving)),
        eol,
    );
    for section in &media {
        push_lines(&mut out, section, eol);
    }
    out
}

/// The BUNDLE tag of a description (RFC 8843 §4): the first mid of its `a=group:BUNDLE` line
/// and that m-section's index, which is where the focus's ICE candidates belong; without a
/// BUNDLE group, the first m-section with a mid and a port other than 0.
pub fn bundle_tag(sdp: &str) -> Option<(String, u16)> {
    let sections = Sections::parse(sdp);
    let index_of = |mid: &str| {
        sections
            .media
            .iter()
            .position(|section| mid_of(section) == Some(mid))
    };
    let tagged = sections
        .session
        .iter()
        .find_map(|l| l.strip_prefix("a=group:BUNDLE"))
        .and_then(|mids| mids.split_whitespace().next())
        .and_then(|mid| Some((mid, index_of(mid)?)));
    let (mid, index) = match tagged {
        Some(tagged) => tagged,
        None => sections
            .media
            .iter()
            .enumerate()
            .find_map(|(index, section)| {
                let port = m_fields(section.first()?).get(1).copied()?;
                (port != "0").then_some(())?;
                Some((mid_of(section)?, index))
            })?,
    };
    Some((mid.to_owned(), u16::try_from(index).ok()?))
}

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

    /// The issue's offer: audio, a port-0 video section without direction, a data channel.
    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 2\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n\
a=rtpmap:111 opus/48000/2\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n\
a=sctp-port:5000\r\n";

    /// What the stack answers to the issue's offer once the video section is out of its way.
    const STACK_ANSWER: &str = "v=0\r\no=- 3 4 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 2\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n";

    /// The m-lines of a description.
    fn m_lines(sdp: &str) -> Vec<&str> {
        sdp.lines()
            .map(str::trim_end)
            .filter(|l| l.starts_with("m="))
            .collect()
    }

    /// The mids of a description's m-sections, in order (`-` for none).
    fn mids_in_order(sdp: &str) -> Vec<String> {
        Sections::parse(sdp)
            .media
            .iter()
            .map(|section| mid_of(section).unwrap_or("-").to_owned())
            .collect()
    }

    /// A description with one session part and the given m-sections (each a list of lines).
    fn offer(group: &str, sections: &[&[&str]]) -> String {
        let mut sdp = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        if !group.is_empty() {
            sdp.push_str(&format!("a=group:BUNDLE {group}\r\n"));
        }
        for section in sections {
            for line in *section {
                sdp.push_str(line);
                sdp.push_str("\r\n");
            }
        }
        sdp
    }

    const AUDIO_0: &[&str] = &["m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=sendrecv"];
    const DATA_1: &[&str] = &[
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=mid:1",
    ];
    const DATA_1_AS_2: [&str; 2] = [
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=mid:2",
    ];

    #[test]
    fn port_zero_video_of_the_issue_is_answered_in_place() {
        let split = split_rejected(OFFER);
        assert_eq!(
            split.rejected,
            vec![Rejected {
                index: 1,
                mid: Some("1".to_owned()),
                m_line: "m=video 0 UDP/TLS/RTP/SAVPF 96".to_owned(),
            }]
        );
        assert_eq!(split.accepted, 2);
        // The stack sees an inert stub that keeps mid 1, and the BUNDLE group is unchanged.
        assert!(
            split
                .for_stack
                .contains("m=text 0 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\nm=application"),
            "{}",
            split.for_stack
        );
        assert!(!split.for_stack.contains("VP8"));
        assert!(split.for_stack.contains("a=group:BUNDLE 0 2\r\n"));

        let answer = restore_rejected(STACK_ANSWER, &split.rejected);
        assert_eq!(
            m_lines(&answer),
            [
                "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                "m=video 0 UDP/TLS/RTP/SAVPF 96",
                "m=application 9 UDP/DTLS/SCTP webrtc-datachannel"
            ]
        );
        assert_eq!(mids_in_order(&answer), ["0", "1", "2"]);
        assert!(answer.contains(
            "\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\nm=application"
        ));
        assert!(answer.contains("a=group:BUNDLE 0 2\r\n"));
        assert_eq!(bundle_tag(&answer), Some(("0".to_owned(), 0)));
        assert!(answer.ends_with("a=mid:2\r\n"));
    }

    #[test]
    fn data_section_over_tcp_is_rejected_with_its_own_proto() {
        let sdp = offer(
            "0 1",
            &[
                AUDIO_0,
                &[
                    "m=application 9 TCP/DTLS/SCTP webrtc-datachannel",
                    "c=IN IP4 0.0.0.0",
                    "a=mid:1",
                    "a=sctp-port:5000",
                ],
            ],
        );
        let split = split_rejected(&sdp);
        assert_eq!(split.accepted, 1);
        assert_eq!(split.rejected.len(), 1);
        assert_eq!(
            split.rejected[0].m_line,
            "m=application 0 TCP/DTLS/SCTP webrtc-datachannel"
        );
        assert!(!split.for_stack.contains("webrtc-datachannel"));
        assert!(split.for_stack.contains("a=group:BUNDLE 0\r\n"));
        let stack_answer = "v=0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n";
        let answer = restore_rejected(stack_answer, &split.rejected);
        assert_eq!(
            m_lines(&answer),
            [
                "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                "m=application 0 TCP/DTLS/SCTP webrtc-datachannel"
            ]
        );
        assert!(answer.ends_with(
            "m=application 0 TCP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n"
        ));
    }

    #[test]
    fn bundle_only_section_with_port_zero_is_accepted() {
        let video = &[
            "m=video 0 UDP/TLS/RTP/SAVPF 96",
            "a=mid:1",
            "a=bundle-only",
            "a=sendonly",
        ][..];
        let sdp = offer("0 1", &[AUDIO_0, video]);
        let split = split_rejected(&sdp);
        assert!(split.rejected.is_empty());
        assert_eq!(split.accepted, 2);
        assert_eq!(split.for_stack, sdp);
    }

    #[test]
    fn inactive_section_with_port_zero_is_rejected() {
        let video = &["m=video 0 UDP/TLS/RTP/SAVPF 96", "a=mid:1", "a=inactive"][..];
        let split = split_rejected(&offer("0", &[AUDIO_0, video]));
        assert_eq!(split.rejected.len(), 1);
        assert_eq!(split.rejected[0].index, 1);
        assert_eq!(split.rejected[0].m_line, "m=video 0 UDP/TLS/RTP/SAVPF 96");
        assert!(!split.for_stack.contains("m=video"));
    }

    #[test]
    fn unsupported_protos_and_media_are_rejected() {
        let sections: &[&[&str]] = &[
            AUDIO_0,
            &["m=audio 9 RTP/AVP 0", "a=mid:a", "a=sendrecv"],
            &["m=video 9 TCP/TLS/RTP/SAVPF 96", "a=mid:b", "a=sendrecv"],
            &["m=application 9 DTLS/SCTP 5000", "a=mid:c"],
            &["m=application 9 UDP/BFCP *", "a=mid:d"],
            &["m=text 9 UDP/TLS/RTP/SAVPF 98", "a=mid:e", "a=sendrecv"],
            &["m=message 9 TCP/MSRP *", "a=mid:f"],
            &["m=image 9 udptl t38", "a=mid:g"],
            DATA_1,
            // A second data channel section.
            &[
                "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
                "a=mid:h",
            ],
            // A port that is no number, and an m-line without formats.
            &["m=audio x UDP/TLS/RTP/SAVPF 111", "a=mid:i", "a=sendrecv"],
            &["m=video 9 UDP/TLS/RTP/SAVPF", "a=mid:j", "a=sendrecv"],
        ];
        let split = split_rejected(&offer("0 a b c d e f g 1 h i j", sections));
        assert_eq!(split.accepted, 2);
        let rejected: Vec<(usize, &str)> = split
            .rejected
            .iter()
            .map(|r| (r.index, r.m_line.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                (1, "m=audio 0 RTP/AVP 0"),
                (2, "m=video 0 TCP/TLS/RTP/SAVPF 96"),
                (3, "m=application 0 DTLS/SCTP 5000"),
                (4, "m=application 0 UDP/BFCP *"),
                (5, "m=text 0 UDP/TLS/RTP/SAVPF 98"),
                (6, "m=message 0 TCP/MSRP *"),
                (7, "m=image 0 udptl t38"),
                (9, "m=application 0 UDP/DTLS/SCTP webrtc-datachannel"),
                (10, "m=audio 0 UDP/TLS/RTP/SAVPF 111"),
                (11, "m=video 0 UDP/TLS/RTP/SAVPF"),
            ]
        );
        // The stack sees the two it takes and a stub per rejected mid; the group keeps 0 and 1.
        assert_eq!(
            mids_in_order(&split.for_stack),
            ["0", "a", "b", "c", "d", "e", "f", "g", "1", "h", "i", "j"]
        );
        assert_eq!(m_lines(&split.for_stack).len(), 12);
        assert_eq!(
            m_lines(&split.for_stack)
                .iter()
                .filter(|l| **l == STACK_STUB)
                .count(),
            10
        );
        assert!(split.for_stack.contains("a=group:BUNDLE 0 1\r\n"));
    }

    #[test]
    fn section_without_mid_is_left_out_and_restored_without_one() {
        let video = &["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=sendrecv"][..];
        let empty_mid = &["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:", "a=sendrecv"][..];
        let split = split_rejected(&offer("0 1", &[AUDIO_0, video, empty_mid, DATA_1]));
        assert_eq!(split.accepted, 2);
        assert_eq!(
            split.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(split.rejected.iter().all(|r| r.mid.is_none()));
        // The stack needs a mid on every section: these two are not there at all.
        assert_eq!(mids_in_order(&split.for_stack), ["0", "1"]);
        let stack_answer = offer("0 1", &[AUDIO_0, DATA_1]);
        let answer = restore_rejected(&stack_answer, &split.rejected);
        assert_eq!(mids_in_order(&answer), ["0", "-", "-", "1"]);
        assert!(answer.contains(
            "a=sendrecv\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\nm=application"
        ));
    }

    #[test]
    fn taken_section_without_direction_gets_sendrecv() {
        let audio = &["m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0"][..];
        let video = &["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:1", "a=recvonly"][..];
        let split = split_rejected(&offer("0 1 2", &[audio, video, &DATA_1_AS_2]));
        assert!(split.rejected.is_empty());
        assert!(
            split
                .for_stack
                .contains("a=mid:0\r\na=sendrecv\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\nm=application")
        );
        assert_eq!(split.for_stack.matches("a=sendrecv").count(), 1);
    }

    #[test]
    fn later_offer_keeps_the_rejected_section_in_its_place() {
        let split = split_rejected(OFFER);
        // The stack's next offer: the remote description's sections (mid 1 is a stub it leaves
        // out), then a new transceiver with the next free mid.
        let stack_offer = "v=0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 2 3\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\n";
        let offer = restore_rejected(stack_offer, &split.rejected);
        assert_eq!(mids_in_order(&offer), ["0", "1", "2", "3"]);
        assert_eq!(
            m_lines(&offer),
            [
                "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                "m=video 0 UDP/TLS/RTP/SAVPF 96",
                "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
                "m=video 9 UDP/TLS/RTP/SAVPF 96"
            ]
        );
        assert!(offer.contains("a=group:BUNDLE 0 2 3\r\n"));
    }

    #[test]
    fn stack_section_with_a_rejected_mid_is_dropped() {
        // The device rejected mid 1, which the stack still holds a transceiver for: the stack
        // appends it to its offer, and the offer carries the rejected m-line instead.
        let split = split_rejected(OFFER);
        let stack_offer = "v=0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 2 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\n";
        let offer = restore_rejected(stack_offer, &split.rejected);
        assert_eq!(mids_in_order(&offer), ["0", "1", "2"]);
        assert_eq!(m_lines(&offer)[1], "m=video 0 UDP/TLS/RTP/SAVPF 96");
        assert!(!offer.contains("a=sendonly"));
        assert!(offer.contains("a=group:BUNDLE 0 2\r\n"));
    }

    #[test]
    fn first_m_section_rejected() {
        let video = &["m=video 0 UDP/TLS/RTP/SAVPF 96", "a=mid:0"][..];
        let audio = &["m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:1", "a=sendrecv"][..];
        let data = &DATA_1_AS_2[..];
        let split = split_rejected(&offer("1 2", &[video, audio, data]));
        assert_eq!(split.rejected.len(), 1);
        assert_eq!(split.rejected[0].index, 0);
        let stack_answer = "v=0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 1 2\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        let answer = restore_rejected(stack_answer, &split.rejected);
        assert_eq!(mids_in_order(&answer), ["0", "1", "2"]);
        assert_eq!(m_lines(&answer)[0], "m=video 0 UDP/TLS/RTP/SAVPF 96");
        assert!(answer.starts_with("v=0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 1 2\r\nm=video 0"));
        // The candidates belong to the BUNDLE tag, m-line 1.
        assert_eq!(bundle_tag(&answer), Some(("1".to_owned(), 1)));
    }

    #[test]
    fn rejected_bundle_mids_leave_the_group() {
        let video = &["m=video 0 UDP/TLS/RTP/SAVPF 96", "a=mid:1"][..];
        let split = split_rejected(&offer("1 0", &[AUDIO_0, video]));
        assert!(split.for_stack.contains("a=group:BUNDLE 0\r\n"));
        // A group of rejected mids only goes.
        let split = split_rejected(&offer("1", &[AUDIO_0, video]));
        assert!(!split.for_stack.contains("a=group"), "{}", split.for_stack);
    }

    #[test]
    fn nothing_the_focus_can_take() {
        let video = &["m=video 0 UDP/TLS/RTP/SAVPF 96", "a=mid:0"][..];
        let data = &[
            "m=application 9 TCP/DTLS/SCTP webrtc-datachannel",
            "a=mid:1",
        ][..];
        let split = split_rejected(&offer("", &[video, data]));
        assert_eq!(split.accepted, 0);
        assert_eq!(split.rejected.len(), 2);
    }

    #[test]
    fn lf_endings_are_kept() {
        let lf = OFFER.replace("\r\n", "\n");
        let split = split_rejected(&lf);
        assert_eq!(split.rejected.len(), 1);
        assert!(!split.for_stack.contains('\r'));
        assert!(split.for_stack.ends_with("a=sctp-port:5000\n"));
        let answer = restore_rejected(&STACK_ANSWER.replace("\r\n", "\n"), &split.rejected);
        assert!(!answer.contains('\r'));
        assert!(answer.contains("\nm=video 0 UDP/TLS/RTP/SAVPF 96\nc=IN IP4 0.0.0.0\na=mid:1\n"));
        assert!(answer.ends_with("a=mid:2\n"));
        // A description without a final line ending gets one.
        let unterminated = STACK_ANSWER.trim_end();
        assert!(restore_rejected(unterminated, &split.rejected).ends_with("a=mid:2\r\n"));
    }

    #[test]
    fn nothing_rejected_is_byte_identical() {
        let sdp = offer("0 1", &[AUDIO_0, DATA_1]);
        let split = split_rejected(&sdp);
        assert!(split.rejected.is_empty());
        assert_eq!(split.for_stack, sdp);
        assert_eq!(restore_rejected(&sdp, &[]), sdp);
        assert_eq!(restore_rejected(ANSWER, &split.rejected), ANSWER);
        assert_eq!(bundle_tag(ANSWER), Some(("0".to_owned(), 0)));
    }

    #[test]
    fn bundle_tag_without_a_group() {
        let video = &[
            "m=video 0 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 0.0.0.0",
            "a=mid:0",
        ][..];
        let audio = &["m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:1", "a=sendrecv"][..];
        assert_eq!(
            bundle_tag(&offer("", &[video, audio])),
            Some(("1".to_owned(), 1))
        );
        assert_eq!(bundle_tag(&offer("", &[video])), None);
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
