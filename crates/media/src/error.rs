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
    /// An answer arrived while no offer was pending.
    #[error("answer without a pending offer")]
    UnexpectedAnswer,
    /// A socket could not be bound or used.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}
