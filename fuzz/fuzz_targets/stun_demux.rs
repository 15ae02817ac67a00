//! The STUN USERNAME lookup that demultiplexes datagrams on the shared port.
#![no_main]

use cascade_forward::demux::{is_stun, stun_local_ufrag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(ufrag) = stun_local_ufrag(data) {
        assert!(is_stun(data));
        assert!(!ufrag.contains(':'));
    }
});
