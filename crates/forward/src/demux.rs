//! Finding the peer connection a datagram belongs to, when all peers share one UDP port.
//!
//! A STUN binding request names the focus-side ICE username fragment in its USERNAME attribute
//! (`focus_ufrag:client_ufrag`) and goes to that peer; once the peer's stack has answered one
//! from a remote address ([`is_binding_success`]: it answers only requests whose
//! MESSAGE-INTEGRITY it verified, RFC 8445 §7.3), that address is bound to the peer. Everything
//! else (DTLS, SRTP, SRTCP) is looked up by remote address alone.

/// Whether a datagram is a STUN message (RFC 7983 demultiplexing plus the magic cookie).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0] < 4 && datagram[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// Whether a datagram is a STUN Binding success response (RFC 5389 §6: class success, method
/// Binding, type 0x0101).
pub fn is_binding_success(datagram: &[u8]) -> bool {
    is_stun(datagram) && datagram[..2] == [0x01, 0x01]
}

/// The local (focus-side) username fragment of a STUN request's USERNAME attribute.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    if !is_stun(datagram) {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let end = 20usize.checked_add(length)?.min(datagram.len());
    let mut at = 20;
    while at + 4 <= end {
        let kind = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let len = usize::from(u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]));
        let value = datagram.get(at + 4..at + 4 + len)?;
        if kind == 0x0006 {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        // A PRIORITY attribute first, to check that attributes are walked.
        let mut attrs = vec![0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4];
        attrs.extend(attr);
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        msg.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        msg.extend_from_slice(&[7; 12]);
        msg.extend(attrs);
        msg
    }

    #[test]
    fn finds_local_ufrag() {
        assert_eq!(
            stun_local_ufrag(&binding_request("focusUf:clientUf")),
            Some("focusUf")
        );
    }

    #[test]
    fn tells_binding_success_responses() {
        let mut msg = binding_request("abc:def");
        assert!(!is_binding_success(&msg), "a request");
        msg[..2].copy_from_slice(&[0x01, 0x01]);
        assert!(is_binding_success(&msg));
        msg[..2].copy_from_slice(&[0x01, 0x11]);
        assert!(!is_binding_success(&msg), "an error response");
        assert!(!is_binding_success(&[0x01, 0x01, 0, 0]), "truncated");
    }

    #[test]
    fn ignores_non_stun_and_truncated_input() {
        assert_eq!(stun_local_ufrag(&[0x80; 40]), None);
        let mut msg = binding_request("abc:def");
        msg.truncate(msg.len() - 6);
        assert_eq!(stun_local_ufrag(&msg), None);
        assert_eq!(stun_local_ufrag(&[]), None);
    }
}
