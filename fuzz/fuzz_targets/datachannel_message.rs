//! Data-channel messages: whatever parses must serialize and parse back to the same message.
#![no_main]

use cascade_protocol::datachannel::DataChannelMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = DataChannelMessage::parse(text) {
        let again = DataChannelMessage::parse(&message.to_text()).expect("own output parses");
        assert_eq!(again, message);
    }
});
