//! Offers with m-sections the focus rejects, answered by [`Participant::answer`] on the real
//! WebRTC stack, without Matrix: a device built on `rtc` offers, the focus answers, and for the
//! offers a real stack makes, both peers connect over loopback UDP.
//!
//! The device's stack makes the issue's rejected section itself: a video transceiver for which
//! it has no codec goes into its offer as `m=video 0 UDP/TLS/RTP/SAVPF 0` with a mid and no
//! direction, left out of the BUNDLE group. The issue's own section (`m=video 0 … 96` with an
//! `a=rtpmap`) is checked in the answer only: the device's stack cannot parse an answered
//! `m=video 0 … 96` without an `a=rtpmap` for 96, so it could not go on with that call.

use bytes::{Bytes, BytesMut};
use cascade_media::participant::Participant;
use cascade_media::{MediaError, description};
use cascade_protocol::{CallKey, Candidate, SdpStreamMetadata};
use rtc::data_channel::{RTCDataChannelId, RTCDataChannelInit};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The focus's default connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The SSRC of the device's audio.
const AUDIO_SSRC: u32 = 0x5eed_0001;

/// One end's socket and what it has seen of its peer connection.
struct Side {
    socket: UdpSocket,
    local_addr: SocketAddr,
    connected: bool,
    channel_open: bool,
    /// The signalling data channel, once open.
    channel: Option<RTCDataChannelId>,
    tracks: usize,
}

impl Side {
    fn bind() -> Side {
        let socket = UdpSocket::bind(SocketAddr::new(LOOPBACK, 0)).expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let local_addr = socket.local_addr().expect("local address");
        Side {
            socket,
            local_addr,
            connected: false,
            channel_open: false,
            channel: None,
            tracks: 0,
        }
    }

    /// Feeds the datagrams waiting on the socket and due timers in, sends what the stack
    /// wants sent, and notes its events.
    fn pump(&mut self, pc: &mut RTCPeerConnection) {
        let mut buf = [0u8; 1500];
        while let Ok((len, from)) = self.socket.recv_from(&mut buf) {
            let _ = pc.handle_read(TaggedBytesMut {
                now: Instant::now(),
                transport: TransportContext {
                    local_addr: self.local_addr,
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: BytesMut::from(&buf[..len]),
            });
        }
        let now = Instant::now();
        if pc.poll_timeout().is_some_and(|at| at <= now) {
            let _ = pc.handle_timeout(now);
        }
        while let Some(out) = pc.poll_write() {
            let _ = self.socket.send_to(&out.message, out.transport.peer_addr);
        }
        while let Some(event) = pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                    assert_ne!(state, RTCPeerConnectionState::Failed);
                    self.connected |= state == RTCPeerConnectionState::Connected;
                }
                RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id))
                    if pc
                        .data_channel(id)
                        .is_some_and(|c| Participant::is_signalling_channel(c.label())) =>
                {
                    self.channel_open = true;
                    self.channel = Some(id);
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(_)) => self.tracks += 1,
                _ => {}
            }
        }
        while pc.poll_read().is_some() {}
    }
}

/// Where a device's stack puts a video m-section it has no codec for, if anywhere.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Video {
    None,
    First,
    AfterAudio,
}

/// A device on the real stack: Opus only, an audio track, and the signalling data channel.
struct Device {
    pc: RTCPeerConnection,
    side: Side,
    audio: RTCRtpSenderId,
    _channel: RTCDataChannelId,
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

impl Device {
    /// A device; with `video` other than [`Video::None`] it also asks to receive video, for
    /// which it has no codec, so its stack offers that m-section rejected.
    fn new(video: Video) -> Device {
        let side = Side::bind();
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus(),
                    payload_type: 111,
                },
                RtpCodecKind::Audio,
            )
            .expect("opus");
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .build(Instant::now())
            .expect("peer connection");
        let track = MediaStreamTrack::new(
            "device-stream".to_owned(),
            "device-audio".to_owned(),
            "audio".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(AUDIO_SSRC),
                    ..Default::default()
                },
                codec: opus(),
                ..Default::default()
            }],
        );
        let add_video = |pc: &mut RTCPeerConnection| {
            let init = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: Vec::new(),
                send_encodings: Vec::new(),
            };
            pc.add_transceiver_from_kind(RtpCodecKind::Video, Some(init))
                .expect("video transceiver");
        };
        if video == Video::First {
            add_video(&mut pc);
        }
        let audio = pc.add_track(track).expect("audio track");
        if video == Video::AfterAudio {
            add_video(&mut pc);
        }
        let init = RTCDataChannelInit {
            ordered: true,
            ..Default::default()
        };
        let channel = pc
            .create_data_channel(cascade_protocol::datachannel::LABEL, Some(init))
            .expect("data channel")
            .id();
        let host = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: side.local_addr.ip().to_string(),
                port: side.local_addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .expect("host candidate");
        let candidate = RTCIceCandidate::from(&host).to_json().expect("candidate");
        pc.add_local_candidate(candidate).expect("local candidate");
        pc.add_local_candidate(RTCIceCandidateInit::default())
            .expect("end of candidates");
        Device {
            pc,
            side,
            audio,
            _channel: channel,
        }
    }

    /// Makes the offer, applies it and returns its SDP.
    fn offer(&mut self) -> String {
        let offer = self.pc.create_offer(None).expect("offer");
        self.pc
            .set_local_description(Instant::now(), offer)
            .expect("local offer");
        self.pc.local_description().expect("offer").sdp
    }

    /// Applies the focus's answer and candidates.
    fn accept(&mut self, answer: &str, candidates: &[Candidate]) {
        let answer = RTCSessionDescription::answer(answer.to_owned()).expect("answer");
        self.pc
            .set_remote_description(Instant::now(), answer)
            .expect("the device applies the focus's answer");
        for candidate in candidates.iter().filter(|c| !c.is_end()) {
            self.pc
                .add_remote_candidate(RTCIceCandidateInit {
                    candidate: candidate.candidate.clone(),
                    sdp_mid: candidate.sdp_mid.clone(),
                    sdp_mline_index: candidate.sdp_mline_index,
                    ..Default::default()
                })
                .expect("remote candidate");
        }
    }

    /// Sends one 20 ms Opus packet, once the audio's payload type is negotiated.
    fn send_audio(&mut self, seq: u16) {
        let Some(mut sender) = self.pc.rtp_sender(self.audio) else {
            return;
        };
        let Some(payload_type) = sender
            .get_parameters()
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
        else {
            return;
        };
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type,
                sequence_number: seq,
                timestamp: u32::from(seq) * 960,
                ssrc: AUDIO_SSRC,
                ..Default::default()
            },
            payload: Bytes::from_static(&[0xfc; 80]),
        };
        let _ = sender.write_rtp(Instant::now(), packet);
    }
}

/// The focus's side of a call: its participant and socket.
struct Focus {
    participant: Participant,
    side: Side,
    answer: String,
    candidates: Vec<Candidate>,
}

fn answer(offer: String) -> Result<Focus, MediaError> {
    let side = Side::bind();
    let call = CallKey {
        user_id: "@device:localhost".to_owned(),
        device_id: "DEVICE".to_owned(),
        session_id: "session".to_owned(),
        call_id: "call".to_owned(),
    };
    let (participant, answer, candidates) = Participant::answer(
        Instant::now(),
        call,
        "conference".to_owned(),
        offer,
        SdpStreamMetadata::new(),
        false,
        &[LOOPBACK],
        side.local_addr,
    )?;
    Ok(Focus {
        participant,
        side,
        answer,
        candidates,
    })
}

/// Runs both ends until `done` or `timeout`; the device sends audio once connected.
fn drive(
    device: &mut Device,
    focus: &mut Focus,
    timeout: Duration,
    done: impl Fn(&Side, &Side) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut seq = 0u16;
    let mut next_audio = Instant::now();
    while Instant::now() < deadline {
        device.side.pump(&mut device.pc);
        focus.side.pump(&mut focus.participant.pc);
        if done(&device.side, &focus.side) {
            return true;
        }
        if device.side.connected && Instant::now() >= next_audio {
            device.send_audio(seq);
            seq = seq.wrapping_add(1);
            next_audio += Duration::from_millis(20);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Adds a track for the device on a transceiver of its own, as a subscription does, and
/// returns the focus's offer.
fn offer_a_track(p: &mut Participant) -> String {
    let track = MediaStreamTrack::new(
        "forwarded-stream".to_owned(),
        "forwarded-audio".to_owned(),
        "forwarded-audio".to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(0x5eed_0002),
                ..Default::default()
            },
            codec: opus(),
            ..Default::default()
        }],
    );
    let init = RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendonly,
        streams: Vec::new(),
        send_encodings: Vec::new(),
    };
    p.pc.add_transceiver_from_track(track, Some(init))
        .expect("a track for the device");
    p.make_offer(Instant::now())
        .expect("focus offer")
        .expect("an offer is made")
}

/// The m-lines of a description.
fn m_lines(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter(|l| l.starts_with("m="))
        .map(|l| l.trim_end().to_owned())
        .collect()
}

/// The lines of the m-section at `index`, m-line first.
fn section(sdp: &str, index: usize) -> Vec<String> {
    let lines: Vec<&str> = sdp.lines().map(str::trim_end).collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].starts_with("m="))
        .collect();
    let end = starts.get(index + 1).copied().unwrap_or(lines.len());
    lines[starts[index]..end]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

/// The `a=mid` of each m-section, in order (`-` for none).
fn mids(sdp: &str) -> Vec<String> {
    (0..m_lines(sdp).len())
        .map(|i| {
            section(sdp, i)
                .iter()
                .find_map(|l| l.strip_prefix("a=mid:").map(str::to_owned))
                .unwrap_or_else(|| "-".to_owned())
        })
        .collect()
}

/// `sdp` with `lines` (ending in CRLF) inserted as m-section `index` (past the last: appended).
fn insert_section(sdp: &str, index: usize, lines: &str) -> String {
    let at = sdp
        .match_indices("m=")
        .filter(|(at, _)| *at == 0 || sdp[..*at].ends_with('\n'))
        .nth(index)
        .map_or(sdp.len(), |(at, _)| at);
    format!("{}{lines}{}", &sdp[..at], &sdp[at..])
}

#[test]
fn rejected_video_from_a_real_stack_is_answered_in_place_and_the_call_connects() {
    let mut device = Device::new(Video::AfterAudio);
    let offer = device.offer();
    // The device's own stack rejects the video it has no codec for: the issue's shape.
    assert_eq!(
        m_lines(&offer),
        [
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=video 0 UDP/TLS/RTP/SAVPF 0",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel"
        ],
        "{offer}"
    );
    assert!(offer.contains("a=group:BUNDLE 0 2\r\n"), "{offer}");

    let mut focus = answer(offer).expect("the focus answers");
    let sdp = focus.answer.clone();
    assert_eq!(
        m_lines(&sdp),
        [
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=video 0 UDP/TLS/RTP/SAVPF 0",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel"
        ],
        "{sdp}"
    );
    assert_eq!(mids(&sdp), ["0", "1", "2"]);
    assert_eq!(
        section(&sdp, 1),
        [
            "m=video 0 UDP/TLS/RTP/SAVPF 0",
            "c=IN IP4 0.0.0.0",
            "a=mid:1"
        ]
    );
    assert!(sdp.contains("a=group:BUNDLE 0 2\r\n"), "{sdp}");
    assert_eq!(focus.participant.rejected.len(), 1);
    for candidate in &focus.candidates {
        assert_eq!(candidate.sdp_mid.as_deref(), Some("0"));
        assert_eq!(candidate.sdp_mline_index, Some(0));
    }

    device.accept(&sdp, &focus.candidates);
    let up = drive(&mut device, &mut focus, Duration::from_secs(10), |d, f| {
        d.connected && f.connected && d.channel_open && f.channel_open && f.tracks > 0
    });
    assert!(
        up,
        "device: connected {} channel {}; focus: connected {} channel {} tracks {}",
        device.side.connected,
        device.side.channel_open,
        focus.side.connected,
        focus.side.channel_open,
        focus.side.tracks
    );

    // The focus's next offer (a track for the device) keeps the rejected section in place, and
    // its new section gets a mid of its own, not the rejected one's.
    let p = &mut focus.participant;
    p.data_channel = focus.side.channel;
    let offer = offer_a_track(p);
    assert_eq!(mids(&offer), ["0", "1", "2", "3"], "{offer}");
    assert_eq!(
        section(&offer, 1),
        [
            "m=video 0 UDP/TLS/RTP/SAVPF 0",
            "c=IN IP4 0.0.0.0",
            "a=mid:1"
        ]
    );
    assert!(m_lines(&offer)[3].starts_with("m=audio 9 "), "{offer}");

    // The device answers it; the focus applies the answer.
    let remote = RTCSessionDescription::offer(offer).expect("offer");
    device
        .pc
        .set_remote_description(Instant::now(), remote)
        .expect("the device applies the focus's offer");
    let device_answer = device.pc.create_answer(None).expect("device answer");
    device
        .pc
        .set_local_description(Instant::now(), device_answer.clone())
        .expect("device answer applied");
    p.accept_answer(Instant::now(), device_answer.sdp)
        .expect("the focus applies the device's answer");
}

/// The issue's port-0 video section, with a mid the device's offer does not use.
const ISSUE_VIDEO: &str =
    "m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:5\r\na=rtpmap:96 VP8/90000\r\n";

#[test]
fn issue_video_section_is_answered_in_place() {
    let mut device = Device::new(Video::None);
    let offer = device.offer();
    assert_eq!(mids(&offer), ["0", "1"]);
    let focus = answer(insert_section(&offer, 1, ISSUE_VIDEO)).expect("the focus answers");
    let sdp = &focus.answer;
    assert_eq!(
        m_lines(sdp),
        [
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=video 0 UDP/TLS/RTP/SAVPF 96",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel"
        ],
        "{sdp}"
    );
    assert_eq!(mids(sdp), ["0", "5", "1"]);
    assert_eq!(
        section(sdp, 1),
        [
            "m=video 0 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 0.0.0.0",
            "a=mid:5"
        ]
    );

    // The same section first: the focus's candidates go to the BUNDLE tag, m-line 1.
    let focus = answer(insert_section(&offer, 0, ISSUE_VIDEO)).expect("the focus answers");
    let sdp = &focus.answer;
    assert_eq!(mids(sdp), ["5", "0", "1"]);
    assert_eq!(m_lines(sdp)[0], "m=video 0 UDP/TLS/RTP/SAVPF 96");
    assert!(
        section(sdp, 1)
            .iter()
            .any(|l| l.starts_with("a=candidate:"))
    );
    for candidate in &focus.candidates {
        assert_eq!(candidate.sdp_mid.as_deref(), Some("0"));
        assert_eq!(candidate.sdp_mline_index, Some(1));
    }
}

#[test]
fn an_audio_section_without_direction_is_answered() {
    // No direction attribute means sendrecv (RFC 8866 §6.7); the stack would leave it out.
    let mut device = Device::new(Video::None);
    let offer = device.offer();
    assert!(
        section(&offer, 0).contains(&"a=sendrecv".to_owned()),
        "{offer}"
    );
    let offer = offer.replacen("a=sendrecv\r\n", "", 1);
    assert!(
        !section(&offer, 0).contains(&"a=sendrecv".to_owned()),
        "{offer}"
    );
    let focus = answer(offer).expect("the focus answers");
    assert_eq!(mids(&focus.answer), ["0", "1"]);
    assert!(
        section(&focus.answer, 0).contains(&"a=recvonly".to_owned()),
        "{}",
        focus.answer
    );
}

#[test]
fn a_new_section_never_takes_the_mid_of_a_rejected_one() {
    // The rejected section has the highest mid: the stack must still count it, or it hands
    // mid 2 to the next transceiver and that section would be dropped for the rejected one.
    let mut device = Device::new(Video::None);
    let offer = device.offer();
    let video = ISSUE_VIDEO.replace("a=mid:5", "a=mid:2");
    let mut focus = answer(insert_section(&offer, 2, &video)).expect("the focus answers");
    assert_eq!(mids(&focus.answer), ["0", "1", "2"]);
    let p = &mut focus.participant;
    p.data_channel = Some(0);
    let offer = offer_a_track(p);
    assert_eq!(mids(&offer), ["0", "1", "2", "3"], "{offer}");
    assert_eq!(
        section(&offer, 2),
        [
            "m=video 0 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 0.0.0.0",
            "a=mid:2"
        ]
    );
    assert!(m_lines(&offer)[3].starts_with("m=audio 9 "), "{offer}");
}

#[test]
fn data_section_over_tcp_is_rejected_and_the_call_is_hung_up_without_data_channel() {
    let mut device = Device::new(Video::None);
    let offer = device.offer().replace(
        "m=application 9 UDP/DTLS/SCTP",
        "m=application 9 TCP/DTLS/SCTP",
    );

    let mut focus = answer(offer).expect("the focus answers");
    let sdp = focus.answer.clone();
    assert_eq!(
        m_lines(&sdp),
        [
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=application 0 TCP/DTLS/SCTP webrtc-datachannel"
        ],
        "{sdp}"
    );
    assert_eq!(
        section(&sdp, 1),
        [
            "m=application 0 TCP/DTLS/SCTP webrtc-datachannel",
            "c=IN IP4 0.0.0.0",
            "a=mid:1"
        ]
    );
    assert!(!sdp.contains("UDP/DTLS/SCTP"), "{sdp}");

    // Audio connects; the data channel never opens on the focus.
    device.accept(&sdp, &focus.candidates);
    let up = drive(&mut device, &mut focus, Duration::from_secs(10), |d, f| {
        d.connected && f.connected && f.tracks > 0
    });
    assert!(up, "the call connects with audio");
    assert!(!focus.side.channel_open);

    // As the event loop does: connected, but without the signalling data channel the call is
    // hung up once the connect timeout has passed.
    let p = &mut focus.participant;
    p.connected = true;
    let opened = p.opened_at;
    assert_eq!(
        p.setup_failure(opened + CONNECT_TIMEOUT / 2, CONNECT_TIMEOUT),
        None
    );
    assert_eq!(
        p.due(CONNECT_TIMEOUT, CONNECT_TIMEOUT)
            .min(opened + CONNECT_TIMEOUT),
        p.due(CONNECT_TIMEOUT, CONNECT_TIMEOUT),
        "the loop wakes up for the connect timeout"
    );
    assert_eq!(
        p.setup_failure(opened + CONNECT_TIMEOUT, CONNECT_TIMEOUT),
        Some(cascade_protocol::event::reason::UNKNOWN_ERROR)
    );
    p.connected = false;
    assert_eq!(
        p.setup_failure(opened + CONNECT_TIMEOUT, CONNECT_TIMEOUT),
        Some(cascade_protocol::event::reason::ICE_TIMEOUT)
    );
}

#[test]
fn first_m_section_rejected_by_a_real_stack_moves_the_candidates_to_the_bundle_tag() {
    let mut device = Device::new(Video::First);
    let offer = device.offer();
    assert_eq!(
        m_lines(&offer)[0],
        "m=video 0 UDP/TLS/RTP/SAVPF 0",
        "{offer}"
    );
    assert!(offer.contains("a=group:BUNDLE 1 2\r\n"), "{offer}");

    let mut focus = answer(offer).expect("the focus answers");
    let sdp = focus.answer.clone();
    assert_eq!(mids(&sdp), ["0", "1", "2"]);
    assert_eq!(
        section(&sdp, 0),
        [
            "m=video 0 UDP/TLS/RTP/SAVPF 0",
            "c=IN IP4 0.0.0.0",
            "a=mid:0"
        ]
    );
    assert_eq!(
        description::bundle_tag(&sdp),
        Some(("1".to_owned(), 1)),
        "{sdp}"
    );
    assert!(
        section(&sdp, 1)
            .iter()
            .any(|l| l.starts_with("a=candidate:"))
    );
    for candidate in &focus.candidates {
        assert_eq!(candidate.sdp_mid.as_deref(), Some("1"));
        assert_eq!(candidate.sdp_mline_index, Some(1));
    }

    device.accept(&sdp, &focus.candidates);
    let up = drive(&mut device, &mut focus, Duration::from_secs(10), |d, f| {
        d.connected && f.connected && d.channel_open && f.channel_open && f.tracks > 0
    });
    assert!(up, "the call connects with audio and data channel");
}

#[test]
fn an_offer_with_nothing_to_take_is_refused() {
    let mut device = Device::new(Video::None);
    let offer = device
        .offer()
        .replace("m=audio 9 UDP/TLS/RTP/SAVPF", "m=audio 9 RTP/AVP")
        .replace(
            "m=application 9 UDP/DTLS/SCTP",
            "m=application 9 TCP/DTLS/SCTP",
        );
    assert!(matches!(answer(offer), Err(MediaError::NothingAccepted)));
}
