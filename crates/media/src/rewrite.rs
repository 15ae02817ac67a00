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
