//! Regression tests for RTP inputs that other SFUs' users reported and that the published RTP
//! parser got wrong (patched in `vendor/rtc-rtp`, see `vendor/README.md`). Each input goes
//! through the same SRTP contexts and parser the focus's peer connections use.

use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::{MarshalSize, Unmarshal};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

/// An SRTP sender and receiver sharing one key, as the device and the focus do.
fn contexts(profile: ProtectionProfile) -> (Context, Context) {
    let provider = rtc::crypto::default_provider().expect("a crypto provider");
    let key = vec![7u8; profile.key_len()];
    let salt = vec![9u8; profile.salt_len()];
    let make = || {
        Context::new(&key, &salt, profile, None, None, provider.crypto()).expect("an SRTP context")
    };
    (make(), make())
}

/// A publisher's audio packet: V=2, the given first byte flags, PT 111, and `rest` (extension
/// block and body) after the fixed header.
fn packet(flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut raw = vec![
        0x80 | flags,
        111,
        0x12,
        0x34,
        0,
        0,
        0x10,
        0,
        0xde,
        0xad,
        0xbe,
        0xef,
    ];
    raw.extend_from_slice(rest);
    raw
}

const X: u8 = 0x10;
const P: u8 = 0x20;
/// The negotiated `sdes:mid` extension's id in these inputs.
const MID_EXT: u8 = 1;

#[test]
fn a_one_byte_extension_with_id_15_ends_the_block_and_the_packet_arrives() {
    // `BE DE 00 02 | <mid-ext>0 30 F0 BB CC DD EE FF`, payload `01 02 03 04` (RFC 8285 §4.2:
    // id 15 ends the parsing of the block; its length field still gives the header's length).
    let raw = packet(
        X,
        &[
            0xbe,
            0xde,
            0,
            2,
            MID_EXT << 4,
            0x30,
            0xf0,
            0xbb,
            0xcc,
            0xdd,
            0xee,
            0xff,
            1,
            2,
            3,
            4,
        ],
    );
    let header = Header::unmarshal(&mut &raw[..]).expect("the header parses");
    assert_eq!(
        header.marshal_size(),
        24,
        "the header's size is its size on the wire"
    );
    for profile in [
        ProtectionProfile::AeadAes128Gcm,
        ProtectionProfile::Aes128CmHmacSha1_80,
    ] {
        let (mut device, mut focus) = contexts(profile);
        let encrypted = device.encrypt_rtp(&raw).expect("encrypts");
        let decrypted = focus
            .decrypt_rtp(&encrypted)
            .unwrap_or_else(|err| panic!("{profile:?}: refused a valid packet: {err}"));
        assert_eq!(&decrypted[..], &raw[..], "{profile:?}");
        let packet = Packet::unmarshal(&mut &decrypted[..]).expect("the packet parses");
        assert_eq!(&packet.payload[..], &[1, 2, 3, 4], "{profile:?}");
        assert_eq!(packet.header.extensions.len(), 1);
        assert_eq!(packet.header.extensions[0].id, MID_EXT);
        assert_eq!(&packet.header.extensions[0].payload[..], &[0x30]);
    }
}

#[test]
fn a_padding_count_of_zero_is_refused() {
    // P=1, X=1, `BE DE 00 01 | <mid-ext>0 30 00 00`, body `CA FE 00 66 11 11 11 11 11 00`: the
    // last byte, the padding count, is 0, which RFC 3550 §5.1 does not allow (it counts itself).
    let body = [0xca, 0xfe, 0x00, 0x66, 0x11, 0x11, 0x11, 0x11, 0x11, 0x00];
    let mut rest = vec![0xbe, 0xde, 0, 1, MID_EXT << 4, 0x30, 0, 0];
    rest.extend_from_slice(&body);
    let raw = packet(X | P, &rest);
    assert!(
        Packet::unmarshal(&mut &raw[..]).is_err(),
        "a padding count of 0 must not make the padding byte payload"
    );
    // The same body with a valid count of 2 loses its two padding bytes.
    let mut valid = raw.clone();
    let last = valid.len() - 1;
    valid[last] = 2;
    let packet = Packet::unmarshal(&mut &valid[..]).expect("valid padding parses");
    assert_eq!(&packet.payload[..], &body[..8]);
    // And a count larger than the body is refused, as before.
    let mut too_long = raw;
    too_long[last] = 200;
    assert!(Packet::unmarshal(&mut &too_long[..]).is_err());
}

#[test]
fn an_extension_element_must_end_within_its_block() {
    // A one-word block whose element claims 8 bytes: it would run into the payload.
    let raw = packet(
        X,
        &[0xbe, 0xde, 0, 1, (MID_EXT << 4) | 7, 1, 2, 3, 4, 5, 6, 7, 8],
    );
    assert!(Header::unmarshal(&mut &raw[..]).is_err());
}
