//! LiveKit data packets between the participants of a room, sans-IO: a packet a client sent
//! on its `_reliable` or `_lossy` data channel in; the packet its recipients get, and who they
//! are, out.
//!
//! The focus relays what clients send one another — user packets, chat messages, RPC, data
//! streams, end-to-end encrypted packets, SIP DTMF — on the channel of the same kind, and says
//! who sent each and how: the sender's identity and sid are written into the packet (its own
//! fields and, in a user packet, the older ones inside it), and so is its kind (reliable or
//! lossy: the channel it came on), whatever the client put there, so that no client can speak
//! for another. The recipients are everyone
//! else in the room, or those the packet names by identity (`destination_identities`, in the
//! packet or in its user packet) or, as older clients do, by sid (a user packet's
//! `destination_sids`). Packets only a server sends (active speakers) or reads (a client's
//! metrics) are not relayed, nor are transcriptions: a receiving client shows one as the
//! words of the participant it names, so only a server's agent may send them.

use livekit_protocol as proto;
use prost::Message as _;
use proto::data_packet::Value;

/// The largest data packet relayed, in bytes: SCTP's usual message size limit (a larger
/// message is what livekit-client's data streams cut into chunks).
pub const MAX_PACKET_BYTES: usize = 65_535;

/// Who gets a relayed packet, besides never its sender.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recipients {
    /// Participants named by identity.
    pub identities: Vec<String>,
    /// Participants named by sid (`PA_…`).
    pub sids: Vec<String>,
}

impl Recipients {
    /// Whether the packet goes to everyone else in the room (it names nobody).
    pub fn everyone(&self) -> bool {
        self.identities.is_empty() && self.sids.is_empty()
    }

    /// Whether the participant with `identity` and `sid` is one of them.
    pub fn include(&self, identity: &str, sid: &str) -> bool {
        self.everyone()
            || self.identities.iter().any(|i| i == identity)
            || self.sids.iter().any(|s| s == sid)
    }
}

/// A packet to relay.
#[derive(Clone, Debug, PartialEq)]
pub struct Relay {
    /// The packet as the recipients get it (protobuf `DataPacket`, its sender written in).
    pub payload: Vec<u8>,
    /// Who gets it.
    pub to: Recipients,
}

/// Why a packet is not relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than [`MAX_PACKET_BYTES`].
    TooLarge,
    /// Not a protobuf `DataPacket`, or one without a value.
    Undecodable,
    /// A kind only a server sends or reads.
    NotRelayed,
}

impl Refusal {
    /// The refusal's name, for logs and counting.
    pub fn name(self) -> &'static str {
        match self {
            Self::TooLarge => "data_too_large",
            Self::Undecodable => "data_undecodable",
            Self::NotRelayed => "data_not_relayed",
        }
    }
}

/// The packet `bytes` (a protobuf `DataPacket`) from the participant with `identity` and
/// `sid`, which came on its reliable channel (or, `reliable` false, its lossy one), ready to
/// relay: its sender and kind written in, its recipients read out.
///
/// # Errors
/// [`Refusal`] when it is too large, does not decode, or is of a kind not relayed.
pub fn relay(bytes: &[u8], identity: &str, sid: &str, reliable: bool) -> Result<Relay, Refusal> {
    if bytes.len() > MAX_PACKET_BYTES {
        return Err(Refusal::TooLarge);
    }
    let mut packet = proto::DataPacket::decode(bytes).map_err(|_| Refusal::Undecodable)?;
    let mut to = Recipients {
        identities: packet.destination_identities.clone(),
        sids: Vec::new(),
    };
    match packet.value.as_mut() {
        None => return Err(Refusal::Undecodable),
        #[allow(deprecated)]
        Some(Value::Speaker(_)) => return Err(Refusal::NotRelayed),
        Some(Value::Metrics(_) | Value::Transcription(_)) => return Err(Refusal::NotRelayed),
        #[allow(deprecated)]
        Some(Value::User(user)) => {
            user.participant_identity = identity.to_owned();
            user.participant_sid = sid.to_owned();
            to.identities
                .extend(user.destination_identities.iter().cloned());
            to.sids.extend(user.destination_sids.iter().cloned());
        }
        Some(_) => {}
    }
    packet.participant_identity = identity.to_owned();
    packet.participant_sid = sid.to_owned();
    // Deprecated in the protocol, but what livekit-client 2.x reports a packet's kind from.
    #[allow(deprecated)]
    let kind = &mut packet.kind;
    *kind = if reliable {
        proto::data_packet::Kind::Reliable
    } else {
        proto::data_packet::Kind::Lossy
    } as i32;
    Ok(Relay {
        payload: packet.encode_to_vec(),
        to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(deprecated)]
    fn user_packet(claimed: &str, to: &[&str], to_sids: &[&str]) -> Vec<u8> {
        proto::DataPacket {
            kind: proto::data_packet::Kind::Reliable as i32,
            participant_identity: claimed.into(),
            value: Some(Value::User(proto::UserPacket {
                participant_identity: claimed.into(),
                participant_sid: "PA_forged".into(),
                payload: b"hello".to_vec(),
                destination_identities: to.iter().map(|s| (*s).to_owned()).collect(),
                destination_sids: to_sids.iter().map(|s| (*s).to_owned()).collect(),
                topic: Some("chat".into()),
                ..Default::default()
            })),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    #[allow(deprecated)]
    fn the_sender_is_written_in_whatever_the_client_claimed() {
        // Sent as reliable, it came on the lossy channel: it goes on as lossy.
        let relayed = relay(&user_packet("mallory", &[], &[]), "alice", "PA_a", false).unwrap();
        assert!(relayed.to.everyone());
        let packet = proto::DataPacket::decode(relayed.payload.as_slice()).unwrap();
        #[allow(deprecated)]
        let kind = packet.kind;
        assert_eq!(kind, proto::data_packet::Kind::Lossy as i32);
        assert_eq!(
            (
                packet.participant_identity.as_str(),
                packet.participant_sid.as_str()
            ),
            ("alice", "PA_a")
        );
        let Some(Value::User(user)) = packet.value else {
            panic!("not a user packet: {packet:?}");
        };
        assert_eq!(
            (
                user.participant_identity.as_str(),
                user.participant_sid.as_str()
            ),
            ("alice", "PA_a")
        );
        assert_eq!(
            (user.payload.as_slice(), user.topic.as_deref()),
            (&b"hello"[..], Some("chat"))
        );
    }

    #[test]
    fn recipients_are_named_by_identity_or_sid_or_are_everyone() {
        let named = relay(
            &user_packet("alice", &["bob"], &["PA_c"]),
            "alice",
            "PA_a",
            true,
        )
        .unwrap();
        assert!(!named.to.everyone());
        assert!(named.to.include("bob", "PA_b"));
        assert!(named.to.include("carol", "PA_c"));
        assert!(!named.to.include("dave", "PA_d"));
        // A chat message names them at the top level.
        let chat = proto::DataPacket {
            destination_identities: vec!["dave".into()],
            value: Some(Value::ChatMessage(proto::ChatMessage {
                message: "hi".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let chat = relay(&chat.encode_to_vec(), "alice", "PA_a", true).unwrap();
        assert!(chat.to.include("dave", "PA_d") && !chat.to.include("bob", "PA_b"));
    }

    #[test]
    fn what_is_not_a_packet_to_relay_is_refused() {
        let large = vec![0u8; MAX_PACKET_BYTES + 1];
        assert_eq!(relay(&large, "a", "PA_a", true), Err(Refusal::TooLarge));
        assert_eq!(
            relay(&[0xff, 0xff, 0xff], "a", "PA_a", true),
            Err(Refusal::Undecodable)
        );
        let empty = proto::DataPacket::default().encode_to_vec();
        assert_eq!(relay(&empty, "a", "PA_a", true), Err(Refusal::Undecodable));
        let metrics = proto::DataPacket {
            value: Some(Value::Metrics(proto::MetricsBatch::default())),
            ..Default::default()
        };
        assert_eq!(
            relay(&metrics.encode_to_vec(), "a", "PA_a", true),
            Err(Refusal::NotRelayed)
        );
        // A transcription would put words in the mouth of the participant it names.
        let transcription = proto::DataPacket {
            value: Some(Value::Transcription(proto::Transcription {
                transcribed_participant_identity: "bob".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            relay(&transcription.encode_to_vec(), "a", "PA_a", true),
            Err(Refusal::NotRelayed)
        );
    }
}
