//! Mapping RTP header-extension ids from what the publisher negotiated to what each subscriber
//! negotiated.

/// `urn:ietf:params:rtp-hdrext:sdes:mid`: per connection, so never forwarded.
pub const MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// `rtp-stream-id`: names the publisher's simulcast layer; a subscriber gets one stream.
pub const RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
/// `repaired-rtp-stream-id`: as for `rtp-stream-id`.
pub const REPAIRED_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
/// Transport-wide congestion control: its sequence is per connection; the subscriber's own
/// sender writes it.
pub const TRANSPORT_CC: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Whether an extension describes the media itself and so is forwarded (audio level, video
/// orientation, dependency descriptor, abs-send-time, capture time, ...), rather than the
/// publisher's connection.
pub fn forwarded(uri: &str) -> bool {
    !matches!(uri, MID | RID | REPAIRED_RID | TRANSPORT_CC)
}

/// Publisher id → subscriber id for every forwarded extension both sides negotiated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtensionMap {
    /// Indexed by publisher id (1..=255); 0 means not forwarded.
    to: Vec<u8>,
}

impl ExtensionMap {
    /// Builds the map from both sides' negotiated `(uri, id)` lists.
    pub fn new<'a>(
        publisher: impl IntoIterator<Item = (&'a str, u8)>,
        subscriber: &[(&str, u8)],
    ) -> Self {
        let mut to = Vec::new();
        for (uri, from) in publisher {
            if !forwarded(uri) || from == 0 {
                continue;
            }
            if let Some((_, id)) = subscriber.iter().find(|(u, _)| *u == uri) {
                let index = usize::from(from);
                if to.len() <= index {
                    to.resize(index + 1, 0);
                }
                to[index] = *id;
            }
        }
        Self { to }
    }

    /// The subscriber's id for a publisher's extension id, if it is forwarded.
    pub fn map(&self, from: u8) -> Option<u8> {
        self.to
            .get(usize::from(from))
            .copied()
            .filter(|id| *id != 0)
    }

    /// Whether nothing is forwarded.
    pub fn is_empty(&self) -> bool {
        self.to.iter().all(|id| *id == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
    const ORIENTATION: &str = "urn:3gpp:video-orientation";

    #[test]
    fn maps_by_uri_and_drops_connection_extensions() {
        let publisher = [
            (MID, 1),
            (LEVEL, 2),
            (TRANSPORT_CC, 3),
            (ORIENTATION, 13),
            (RID, 10),
        ];
        let subscriber = [(LEVEL, 5), (MID, 4), (TRANSPORT_CC, 7), (RID, 6)];
        let map = ExtensionMap::new(publisher, &subscriber);
        assert_eq!(map.map(2), Some(5), "audio level renumbered");
        assert_eq!(map.map(1), None, "mid is per connection");
        assert_eq!(map.map(3), None, "transport-cc is per connection");
        assert_eq!(map.map(10), None, "rid names the publisher's layer");
        assert_eq!(
            map.map(13),
            None,
            "subscriber did not negotiate orientation"
        );
        assert_eq!(map.map(200), None);
        assert!(!map.is_empty());
        assert!(ExtensionMap::new([(MID, 1)], &[(MID, 1)]).is_empty());
    }
}
