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
}

/// Writes a forwarded packet's RTP header into `out` (cleared first), as [`map_extensions`]
/// would leave it and without padding (RFC 3550 §5.1, RFC 8285 §4), and returns its length.
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
    let mapped = || {
        header.extensions.iter().filter_map(|e| {
            let id = map.map(e.id)?;
            (e.payload.len() <= 255).then_some((id, &e.payload[..]))
        })
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
            let len = write_header(&mut out, &base, fields, &map);
            assert_eq!(len, out.len());
            assert_eq!(
                out,
                marshalled(&base, fields, &map),
                "{:?}",
                base.extensions
            );
        }
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
