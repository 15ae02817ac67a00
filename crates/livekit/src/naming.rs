//! The LiveKit room and participant identity a token names for a MatrixRTC member.
//!
//! For `/get_token` (a MatrixRTC slot) the room is a hash of the Matrix room and slot, so the
//! SFU never learns the Matrix room id; the identity joins the user, device and membership
//! ids. For the legacy `/sfu/get` the room is the one the client names and the identity
//! `<user id>:<device id>`, which the older Element Call versions that use it expect.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// The LiveKit room of slot `slot_id` in Matrix room `room_id`: unpadded URL-safe base64 of
/// SHA-256 of `<room_id>|<slot_id>` (43 characters).
pub fn slot_room(room_id: &str, slot_id: &str) -> String {
    let digest = Sha256::digest(format!("{room_id}|{slot_id}").as_bytes());
    URL_SAFE_NO_PAD.encode(digest)
}

/// The LiveKit identity of a MatrixRTC member: `<user id>:<device id>:<member id>`.
pub fn member_identity(user_id: &str, device_id: &str, member_id: &str) -> String {
    format!("{user_id}:{device_id}:{member_id}")
}

/// The LiveKit identity of a legacy (`/sfu/get`) caller: `<user id>:<device id>`.
pub fn legacy_identity(user_id: &str, device_id: &str) -> String {
    format!("{user_id}:{device_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_rooms_differ_by_room_and_slot_and_hide_both() {
        let a = slot_room("!a:hs", "m.call#ROOM");
        assert_eq!(a.len(), 43);
        assert_eq!(a, slot_room("!a:hs", "m.call#ROOM"));
        assert_ne!(a, slot_room("!b:hs", "m.call#ROOM"));
        assert_ne!(a, slot_room("!a:hs", "m.call#OTHER"));
        assert!(!a.contains("!a:hs"));
    }
}
