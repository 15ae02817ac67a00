//! To-device call events: any JSON under any call event type decodes or is refused, never panics.
#![no_main]

use cascade_protocol::CallEvent;
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 9] = [
    "m.call.invite",
    "m.call.answer",
    "m.call.candidates",
    "m.call.select_answer",
    "m.call.negotiate",
    "m.call.sdp_stream_metadata_changed",
    "org.matrix.call.sdp_stream_metadata_changed",
    "m.call.reject",
    "m.call.hangup",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let Ok(content) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let event_type = TYPES[usize::from(selector) % TYPES.len()];
    if let Ok(event) = CallEvent::decode(event_type, &content) {
        let _ = event.content.metadata();
        let _ = event.content.hangup_reason();
        let value = serde_json::to_value(&event.content).expect("own content serializes");
        assert!(CallEvent::decode(event_type, &value).is_ok());
    }
});
