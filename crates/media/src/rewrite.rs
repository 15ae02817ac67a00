//! Rewriting a forwarded packet's header for one subscriber.

use cascade_forward::ExtensionMap;
use rtc::rtp;

/// Renumbers a forwarded packet's header extensions to the subscriber's ids and removes the
/// ones it did not negotiate (or that describe the publisher's connection).
pub fn map_extensions(header: &mut rtp::header::Header, map: &ExtensionMap) {
    header
        .extensions
        .retain_mut(|extension| match map.map(extension.id) {
            Some(id) => {
                extension.id = id;
                true
            }
            None => false,
        });
    // The publisher's padding within the block was for its own extension list; with another
    // list it would make the header's computed size disagree with what is written.
    header.extensions_padding = 0;
    header.extension = !header.extensions.is_empty();
    header.extension_profile = if !header.extension {
        0
    } else if header
        .extensions
        .iter()
        .all(|e| (1..=14).contains(&e.id) && (1..=16).contains(&e.payload.len()))
    {
        ONE_BYTE_PROFILE
    } else {
        TWO_BYTE_PROFILE
    };
}

/// The fields a forwarded packet's header gets for one subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// The subscriber-side SSRC.
    pub ssrc: u32,
    /// The rewritten sequence number.
    pub sequence_number: u16,
    /// The rewritten timestamp.
    pub timestamp: u32,
    /// The payload type the subscriber negotiated for the codec.
    pub payload_type: u8,
    /// The subscriber's transport-cc extension id and the packet's transport-wide sequence
    /// number, where the subscriber negotiated the extension (see [`crate::downlink`]).
    pub transport_cc: Option<(u8, u16)>,
}

/// Writes a forwarded packet's RTP header into `out` (cleared first), as [`map_extensions`]
/// would leave it and without padding (RFC 3550 §5.1, RFC 8285 §4), with the transport-cc
/// element of `fields` last, and returns its length.
///
/// Nothing is allocated once `out` has the capacity. Extensions the subscriber did not
/// negotiate are left out; the block uses the one-byte form when every remaining element fits
/// it, else the two-byte form, and an element too long for either is left out.
pub fn write_header(
    out: &mut Vec<u8>,
    header: &rtp::header::Header,
    fields: Rewritten,
    map: &ExtensionMap,
) -> usize {
    out.clear();
    let csrc = &header.csrc[..header.csrc.len().min(15)];
    out.push(0x80 | csrc.len() as u8);
    out.push((u8::from(header.marker) << 7) | (fields.payload_type & 0x7f));
    out.extend_from_slice(&fields.sequence_number.to_be_bytes());
    out.extend_from_slice(&fields.timestamp.to_be_bytes());
    out.extend_from_slice(&fields.ssrc.to_be_bytes());
    for c in csrc {
        out.extend_from_slice(&c.to_be_bytes());
    }
    let transport_cc = fields
        .transport_cc
        .map(|(id, sequence)| (id, sequence.to_be_bytes()));
    let mapped = || {
        header
            .extensions
            .iter()
            .filter_map(|e| {
                let id = map.map(e.id)?;
                (e.payload.len() <= 255).then_some((id, &e.payload[..]))
            })
            .chain(transport_cc.iter().map(|(id, bytes)| (*id, &bytes[..])))
    };
    if mapped().next().is_none() {
        return out.len();
    }
    let one_byte = mapped().all(|(id, p)| (1..=14).contains(&id) && (1..=16).contains(&p.len()));
    let profile = if one_byte {
        ONE_BYTE_PROFILE
    } else {
        TWO_BYTE_PROFILE
    };
    out[0] |= 0x10;
    let block = out.len();
    out.extend_from_slice(&profile.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    for (id, payload) in mapped() {
        if one_byte {
            out.push((id << 4) | (payload.len() as u8 - 1));
        } else {
            out.push(id);
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
    }
    while !(out.len() - block).is_multiple_of(4) {
        out.push(0);
    }
    let words = ((out.len() - block - 4) / 4) as u16;
    out[block + 2..block + 4].copy_from_slice(&words.to_be_bytes());
    out.len()
}

/// Overwrites the value of the transport-cc element `id` (2 bytes, the transport-wide sequence
/// number) in the header extension block of the RTP packet `packet` with `sequence`: a packet
/// sent again (a retransmission, a probe) is a new packet to congestion control
/// (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2). Returns whether the element was
/// found; a packet without one, or whose header is malformed, is left as it is.
pub fn set_transport_cc(packet: &mut [u8], id: u8, sequence: u16) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    if first & 0x10 == 0 {
        return false;
    }
    let block = 12 + 4 * usize::from(first & 0x0f);
    let Some(head) = packet.get(block..block + 4) else {
        return false;
    };
    let profile = u16::from_be_bytes([head[0], head[1]]);
    let end = block + 4 + 4 * usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut at = block + 4;
    while at < end.min(packet.len()) {
        let (element, len, value) = match profile {
            ONE_BYTE_PROFILE => {
                let byte = packet[at];
                if byte == 0 {
                    at += 1;
                    continue;
                }
                if byte >> 4 == 15 {
                    return false;
                }
                (byte >> 4, usize::from(byte & 0x0f) + 1, at + 1)
            }
            _ if profile & 0xfff0 == TWO_BYTE_PROFILE => {
                let element = packet[at];
                if element == 0 {
                    at += 1;
                    continue;
                }
                let Some(&len) = packet.get(at + 1) else {
                    return false;
                };
                (element, usize::from(len), at + 2)
            }
            _ => return false,
        };
        if value + len > end.min(packet.len()) {
            return false;
        }
        if element == id && len == 2 {
            packet[value..value + 2].copy_from_slice(&sequence.to_be_bytes());
            return true;
        }
        at = value + len;
    }
    false
}

/// RFC 8285 one-byte header-extension profile.
const ONE_BYTE_PROFILE: u16 = 0xBEDE;
/// RFC 8285 two-byte header-extension profile.
const TWO_BYTE_PROFILE: u16 = 0x1000;

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp::header::Header;
    use rtc::shared::marshal::{Marshal, MarshalSize, Unmarshal};

    /// What the stack's own marshalling makes of the mapped header, for comparison.
    fn marshalled(header: &Header, fields: Rewritten, map: &ExtensionMap) -> Vec<u8> {
        let mut header = header.clone();
        header.ssrc = fields.ssrc;
        header.sequence_number = fields.sequence_number;
        header.timestamp = fields.timestamp;
        header.payload_type = fields.payload_type;
        header.padding = false;
        map_extensions(&mut header, map);
        if let Some((id, sequence)) = fields.transport_cc {
            header.extensions.push(rtc::rtp::header::Extension {
                id,
                payload: sequence.to_be_bytes().to_vec().into(),
            });
            header.extension = true;
            if id > 14 {
                header.extension_profile = TWO_BYTE_PROFILE;
            } else if header.extension_profile == 0 {
                header.extension_profile = ONE_BYTE_PROFILE;
            }
        }
        header
            .marshal()
            .expect("the mapped header marshals")
            .to_vec()
    }

    #[test]
    fn the_written_header_is_the_mapped_header() {
        let level = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
        let send_time = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
        let long = "urn:example:long";
        let fields = Rewritten {
            ssrc: 0xdead_beef,
            sequence_number: 65_535,
            timestamp: 4_000_000_000,
            payload_type: 111,
            transport_cc: None,
        };
        let mut base = Header {
            version: 2,
            marker: true,
            payload_type: 96,
            csrc: vec![7, 8],
            ..Default::default()
        };
        // (publisher id, payload) of each element, and the map to the subscriber's ids.
        type Case = (Vec<(u8, Vec<u8>)>, ExtensionMap);
        let cases: Vec<Case> = vec![
            // No extensions at all.
            (vec![], ExtensionMap::default()),
            // One-byte elements, one of them not negotiated by the subscriber.
            (
                vec![(1, vec![0x7f]), (2, vec![1, 2, 3]), (3, vec![0, 7])],
                ExtensionMap::new(
                    [
                        (level, 1),
                        (send_time, 2),
                        (cascade_forward::extension::TRANSPORT_CC, 3),
                    ],
                    &[(level, 5), (send_time, 6)],
                ),
            ),
            // Nothing negotiated: no block, X clear.
            (vec![(1, vec![0x7f])], ExtensionMap::new([(level, 1)], &[])),
            // A 20-byte element needs the two-byte form.
            (
                vec![(1, vec![0x10]), (4, vec![9; 20])],
                ExtensionMap::new([(level, 1), (long, 4)], &[(level, 1), (long, 4)]),
            ),
            // A subscriber id above 14 needs the two-byte form too.
            (
                vec![(1, vec![0x10])],
                ExtensionMap::new([(level, 1)], &[(level, 20)]),
            ),
        ];
        let mut out = Vec::new();
        for (extensions, map) in cases {
            base.extension = !extensions.is_empty();
            base.extension_profile = ONE_BYTE_PROFILE;
            base.extensions = extensions
                .into_iter()
                .map(|(id, payload)| rtc::rtp::header::Extension {
                    id,
                    payload: payload.into(),
                })
                .collect();
            // And each again with the subscriber's transport-wide sequence number.
            for transport_cc in [None, Some((9, 0xbeef)), Some((15, 7))] {
                let fields = Rewritten {
                    transport_cc,
                    ..fields
                };
                let len = write_header(&mut out, &base, fields, &map);
                assert_eq!(len, out.len());
                assert_eq!(
                    out,
                    marshalled(&base, fields, &map),
                    "{:?} {transport_cc:?}",
                    base.extensions
                );
            }
        }
    }

    #[test]
    fn the_transport_wide_sequence_number_of_a_written_header_can_be_replaced() {
        let level = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
        let long = "urn:example:long";
        let header = Header {
            version: 2,
            csrc: vec![3],
            extension: true,
            extension_profile: ONE_BYTE_PROFILE,
            extensions: vec![
                rtc::rtp::header::Extension {
                    id: 1,
                    payload: vec![0x10].into(),
                },
                rtc::rtp::header::Extension {
                    id: 4,
                    payload: vec![9; 20].into(),
                },
            ],
            ..Default::default()
        };
        let one_byte = ExtensionMap::new([(level, 1)], &[(level, 1)]);
        let two_byte = ExtensionMap::new([(level, 1), (long, 4)], &[(level, 1), (long, 4)]);
        for (map, id) in [(&one_byte, 3), (&two_byte, 3), (&two_byte, 20)] {
            let fields = Rewritten {
                ssrc: 1,
                sequence_number: 2,
                timestamp: 3,
                payload_type: 96,
                transport_cc: Some((id, 0x0102)),
            };
            let mut out = Vec::new();
            let len = write_header(&mut out, &header, fields, map);
            out.extend_from_slice(&[0xaa; 10]);
            assert!(set_transport_cc(&mut out, id, 0xbeef));
            let mut expected = Vec::new();
            write_header(
                &mut expected,
                &header,
                Rewritten {
                    transport_cc: Some((id, 0xbeef)),
                    ..fields
                },
                map,
            );
            assert_eq!(&out[..len], &expected[..], "id {id}");
            assert_eq!(&out[len..], &[0xaa; 10], "the payload is untouched");
            assert!(!set_transport_cc(&mut out, 7, 1), "no element 7");
        }
        // No extension block, or one cut short: nothing is written.
        let mut bare = vec![0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa];
        assert!(!set_transport_cc(&mut bare, 3, 1));
        let mut cut = vec![
            0x90, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0, 2, 0x31,
        ];
        assert!(!set_transport_cc(&mut cut, 3, 1));
    }

    #[test]
    fn a_mapped_header_marshals_to_its_size() {
        // A browser's block: audio level (1 byte), abs-send-time (3), transport-cc (2), and
        // 3 bytes of padding to the word boundary: 9 + 3 = 12 bytes.
        let raw: &[u8] = &[
            0x80, 0x6f, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, // fixed header, X set below
            0xbe, 0xde, 0, 3, // one-byte profile, 3 words
            0x10, 0x7f, // id 1, audio level
            0x22, 1, 2, 3, // id 2, abs-send-time
            0x31, 0, 7, // id 3, transport-cc
            0, 0, 0, // padding
        ];
        let mut raw = raw.to_vec();
        raw[0] |= 0x10;
        let mut header = Header::unmarshal(&mut &raw[..]).expect("a valid header");
        assert_eq!(header.extensions.len(), 3);
        // The subscriber negotiated audio level (as 5) and abs-send-time (as 6) only.
        let level = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
        let send_time = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
        let map = ExtensionMap::new(
            [
                (level, 1),
                (send_time, 2),
                (cascade_forward::extension::TRANSPORT_CC, 3),
            ],
            &[(level, 5), (send_time, 6)],
        );
        map_extensions(&mut header, &map);
        assert_eq!(
            header.extensions.iter().map(|e| e.id).collect::<Vec<_>>(),
            [5, 6]
        );
        let bytes = header.marshal().expect("the mapped header marshals");
        assert_eq!(bytes.len(), header.marshal_size());
        let back = Header::unmarshal(&mut &bytes[..]).expect("and parses again");
        assert_eq!(back.extensions.len(), 2);
    }
}
