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

/// RFC 8285 one-byte header-extension profile.
const ONE_BYTE_PROFILE: u16 = 0xBEDE;
/// RFC 8285 two-byte header-extension profile.
const TWO_BYTE_PROFILE: u16 = 0x1000;

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp::header::Header;
    use rtc::shared::marshal::{Marshal, MarshalSize, Unmarshal};

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
