//! The RTP and RTCP parsers every received datagram goes through, and re-serialization of what
//! they accept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtc_shared::marshal::{Marshal, Unmarshal};

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = rtc_rtp::packet::Packet::unmarshal(&mut &data[..]) {
        let _ = packet.marshal();
    }
    if let Ok(packets) = rtc_rtcp::packet::unmarshal(&mut &data[..]) {
        for packet in packets {
            let _ = packet.marshal();
        }
    }
});
