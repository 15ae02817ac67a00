//! Media-plane errors.

/// What can go wrong while setting up or renegotiating a call.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The WebRTC stack refused an operation (bad SDP, wrong state, ...).
    #[error("webrtc: {0}")]
    Rtc(#[from] rtc::shared::error::Error),
    /// The stack produced no local description after setting one.
    #[error("no local description")]
    NoLocalDescription,
    /// A device's description has no m-section the focus can take (audio or video on
    /// UDP/TLS/RTP/SAVPF, or a data channel on UDP/DTLS/SCTP, each with a mid and a port).
    #[error(
        "no m-section the focus can accept (audio/video over UDP/TLS/RTP/SAVPF or a data channel over UDP/DTLS/SCTP, with a mid and a non-zero port)"
    )]
    NothingAccepted,
    /// An answer arrived while no offer was pending.
    #[error("answer without a pending offer")]
    UnexpectedAnswer,
    /// The other focus of a link offered while this focus's offer was pending; this focus
    /// placed the link, so it is the impolite side of glare and keeps its own offer.
    #[error("offer from the other focus ignored: ours is pending (glare)")]
    Glare,
    /// A socket could not be bound or used.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}
