#[cfg(test)]
mod playout_delay_extension_test;

use bytes::BufMut;
use shared::error::{Error, Result};
use shared::marshal::{Marshal, MarshalSize, Unmarshal};

/// The extension's encoded size: two 12-bit values packed into 3 bytes.
pub const PLAYOUT_DELAY_EXTENSION_SIZE: usize = 3;
/// The largest representable delay, in 10 ms units — about 40 seconds.
pub const PLAYOUT_DELAY_MAX_VALUE: u16 = (1 << 12) - 1;

/// PlayoutDelayExtension is an extension payload format described in
/// <http://www.webrtc.org/experiments/rtp-hdrext/playout-delay>
/// 0                   1                   2                   3
/// 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  ID   | len=2 |       MIN delay       |       MAX delay       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#[derive(PartialEq, Eq, Debug, Default, Copy, Clone)]
pub struct PlayoutDelayExtension {
    /// The minimum playout delay in 10 ms units.
    pub min_delay: u16,
    /// The maximum playout delay in 10 ms units.
    pub max_delay: u16,
}

impl Unmarshal for PlayoutDelayExtension {
    /// Unmarshal parses the passed byte slice and stores the result in the members.
    fn unmarshal<B>(buf: &mut B) -> Result<Self>
    where
        Self: Sized,
        B: bytes::Buf,
    {
        if buf.remaining() < PLAYOUT_DELAY_EXTENSION_SIZE {
            return Err(Error::ErrBufferTooSmall);
        }

        let b0 = buf.get_u8();
        let b1 = buf.get_u8();
        let b2 = buf.get_u8();

        let min_delay = u16::from_be_bytes([b0, b1]) >> 4;
        let max_delay = u16::from_be_bytes([b1, b2]) & 0x0FFF;

        Ok(PlayoutDelayExtension {
            min_delay,
            max_delay,
        })
    }
}

impl MarshalSize for PlayoutDelayExtension {
    /// MarshalSize returns the size of the PlayoutDelayExtension once marshaled.
    fn marshal_size(&self) -> usize {
        PLAYOUT_DELAY_EXTENSION_SIZE
    }
}

impl Marshal for PlayoutDelayExtension {
    /// MarshalTo serializes the members to buffer
    fn marshal_to(&self, mut buf: &mut [u8]) -> Result<usize> {
        if buf.remaining_mut() < PLAYOUT_DELAY_EXTENSION_SIZE {
            return Err(Error::ErrBufferTooSmall);
        }
        if self.min_delay > PLAYOUT_DELAY_MAX_VALUE || self.max_delay > PLAYOUT_DELAY_MAX_VALUE {
            return Err(Error::PlayoutDelayOverflow);
        }

        buf.put_u8((self.min_delay >> 4) as u8);
        buf.put_u8(((self.min_delay << 4) as u8) | (self.max_delay >> 8) as u8);
        buf.put_u8(self.max_delay as u8);

        Ok(PLAYOUT_DELAY_EXTENSION_SIZE)
    }
}

impl PlayoutDelayExtension {
    /// A playout-delay extension requesting a delay between `min_delay` and `max_delay`, both in
    /// 10 ms units.
    pub fn new(min_delay: u16, max_delay: u16) -> Self {
        PlayoutDelayExtension {
            min_delay,
            max_delay,
        }
    }
}
