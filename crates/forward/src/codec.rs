//! The codecs the focus forwards.

/// A codec, as far as forwarding needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opus audio.
    Opus,
    /// VP8 video.
    Vp8,
    /// VP9 video.
    Vp9,
    /// H.264 video.
    H264,
    /// AV1 video.
    Av1,
    /// Anything else: forwarded without keyframe awareness.
    Other,
}

impl Codec {
    /// Maps a MIME type such as `video/VP8` (case-insensitive) to a codec.
    pub fn from_mime(mime: &str) -> Self {
        let sub = mime.rsplit('/').next().unwrap_or(mime);
        match sub.to_ascii_lowercase().as_str() {
            "opus" => Self::Opus,
            "vp8" => Self::Vp8,
            "vp9" => Self::Vp9,
            "h264" => Self::H264,
            "av1" => Self::Av1,
            _ => Self::Other,
        }
    }

    /// Whether a subscriber must start this codec at a keyframe.
    pub fn needs_keyframe(self) -> bool {
        matches!(self, Self::Vp8 | Self::Vp9 | Self::H264 | Self::Av1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_mime_types() {
        assert_eq!(Codec::from_mime("video/VP8"), Codec::Vp8);
        assert_eq!(Codec::from_mime("audio/opus"), Codec::Opus);
        assert_eq!(Codec::from_mime("video/H264"), Codec::H264);
        assert_eq!(Codec::from_mime("video/rtx"), Codec::Other);
        assert!(!Codec::Opus.needs_keyframe());
        assert!(Codec::Av1.needs_keyframe());
    }
}
