//! The LiveKit signalling endpoint over a real WebSocket on 127.0.0.1, as `livekit-client`
//! meets it: `/rtc/v1` answers 404 with CORS (so the client falls back to `/rtc`), a bad token
//! gets 401 before the upgrade, a good one a `JoinResponse` first, pings get pongs, leave
//! closes; a token without publish rights cannot publish. (The media plane is not attached
//! here: `crates/server/tests/livekit_browser.rs` tests publishing and subscribing.)

use cascade_livekit::token::{self, Claims};
use cascade_livekit::{LiveKitConfig, Stats, endpoint};
use livekit_protocol as proto;
use prost::Message as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::{self, Message};

const KEY: &str = "cascade-test";
const SECRET: &str = "0123456789abcdef0123456789abcdef";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The endpoint on a free port; its address and what it counts.
async fn serve() -> Result<(std::net::SocketAddr, Stats)> {
    let config = LiveKitConfig {
        enabled: true,
        api_key: KEY.into(),
        api_secret: SECRET.into(),
        ..Default::default()
    };
    let stats = Stats::default();
    let router = endpoint::router(config, stats.signal.clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((addr, stats))
}

/// The next binary message decoded as a signal response, within 5 s.
async fn next_response<S>(socket: &mut S) -> Result<proto::SignalResponse>
where
    S: futures_util::Stream<Item = tungstenite::Result<Message>> + Unpin,
{
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await?
            .ok_or("the server closed")??;
        if let Message::Binary(bytes) = message {
            return Ok(proto::SignalResponse::decode(bytes)?);
        }
    }
}

/// Whether the server closes `socket` (a close frame, or the end of the stream) within 5 s.
async fn closes_within_5_s<S>(socket: &mut S) -> bool
where
    S: futures_util::Stream<Item = tungstenite::Result<Message>> + Unpin,
{
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_client_joins_pings_and_leaves() -> Result<()> {
    use futures_util::SinkExt;
    let (addr, stats) = serve().await?;
    let claims = Claims::join(KEY, "@alice:hs:DEVICE", "!room:hs", now(), 60);
    let jwt = token::sign(&claims, SECRET)?;
    let url = format!("ws://{addr}/rtc?access_token={jwt}&protocol=16&sdk=js&auto_subscribe=1");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;

    let first = next_response(&mut socket).await?;
    let Some(proto::signal_response::Message::Join(join)) = first.message else {
        return Err(format!("the first message is not a JoinResponse: {first:?}").into());
    };
    let participant = join.participant.ok_or("no participant")?;
    assert!(participant.sid.starts_with("PA_"), "{}", participant.sid);
    assert_eq!(participant.identity, "@alice:hs:DEVICE");
    assert_eq!(join.room.ok_or("no room")?.name, "!room:hs");
    assert!(!join.server_info.ok_or("no server info")?.version.is_empty());
    assert!(join.ping_interval > 0 && join.ping_timeout > join.ping_interval);

    let ping = proto::SignalRequest {
        message: Some(proto::signal_request::Message::PingReq(proto::Ping {
            timestamp: 1234,
            rtt: 0,
        })),
    };
    socket
        .send(Message::Binary(ping.encode_to_vec().into()))
        .await?;
    let pong = next_response(&mut socket).await?;
    match pong.message {
        Some(proto::signal_response::Message::PongResp(pong)) => {
            assert_eq!(pong.last_ping_timestamp, 1234);
        }
        other => return Err(format!("a ping_req answered with {other:?}").into()),
    }

    // Garbage (bytes that are no protobuf, a text frame) is counted and the session goes on;
    // a client in another room hears nothing of it and goes on too.
    let (mut other_room, _) = self::join(addr, "@bob:hs:D", "!other:hs").await?;
    socket
        .send(Message::Binary(vec![0xff, 0xff, 0xff].into()))
        .await?;
    socket.send(Message::Text("{\"join\": 1}".into())).await?;
    for client in [&mut socket, &mut other_room] {
        client
            .send(Message::Binary(ping.encode_to_vec().into()))
            .await?;
        let answer = next_response(client).await?.message;
        assert!(
            matches!(answer, Some(proto::signal_response::Message::PongResp(_))),
            "a ping after the garbage got {answer:?}"
        );
    }
    assert_eq!(stats.signal.malformed(), 2);

    let leave = proto::SignalRequest {
        message: Some(proto::signal_request::Message::Leave(
            proto::LeaveRequest::default(),
        )),
    };
    socket
        .send(Message::Binary(leave.encode_to_vec().into()))
        .await?;
    assert!(
        closes_within_5_s(&mut socket).await,
        "the connection stayed open after leave"
    );
    assert_eq!(stats.signal.joined(), 2);
    Ok(())
}

#[tokio::test]
async fn bad_tokens_are_refused_and_v1_is_not_found_with_cors() -> Result<()> {
    let (addr, stats) = serve().await?;
    let http = cascade_signalling::http::client()?;
    // The single-peer-connection path: 404, readable from another origin.
    for path in ["/rtc/v1/validate", "/rtc/v1"] {
        let answer = http
            .get(format!("http://{addr}{path}"))
            .header("Origin", "https://call.example")
            .send()
            .await?;
        assert_eq!(answer.status(), 404, "{path}");
        assert_eq!(
            answer
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.as_bytes()),
            Some(&b"*"[..]),
            "{path}"
        );
    }
    // Validation: a good token passes, others do not.
    let good = token::sign(
        &Claims::join(KEY, "@bob:hs:D", "!room:hs", now(), 60),
        SECRET,
    )?;
    let forged = token::sign(
        &Claims::join(KEY, "@bob:hs:D", "!room:hs", now(), 60),
        "another secret of thirty-two bytes!",
    )?;
    let expired = token::sign(
        &Claims::join(KEY, "@bob:hs:D", "!room:hs", now() - 7200, 60),
        SECRET,
    )?;
    let status = |token: String| {
        let http = http.clone();
        async move {
            http.get(format!("http://{addr}/rtc/validate?access_token={token}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(status(good).await?, 200);
    assert_eq!(status(forged.clone()).await?, 401);
    assert_eq!(status(expired).await?, 401);
    assert_eq!(status("not-a-jwt".into()).await?, 401);
    // The WebSocket is refused before the upgrade.
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{addr}/rtc?access_token={forged}")).await;
    match refused {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => return Err(format!("a forged token connected: {other:?}").into()),
    }
    assert_eq!(stats.signal.refused(), 4);
    assert_eq!(stats.signal.joined(), 0);
    Ok(())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `identity` joins `room`: its socket and its `JoinResponse`.
async fn join(
    addr: std::net::SocketAddr,
    identity: &str,
    room: &str,
) -> Result<(Socket, proto::JoinResponse)> {
    let jwt = token::sign(&Claims::join(KEY, identity, room, now(), 60), SECRET)?;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/rtc?access_token={jwt}")).await?;
    match next_response(&mut socket).await?.message {
        Some(proto::signal_response::Message::Join(join)) => Ok((socket, join)),
        other => Err(format!("{identity} got {other:?} first").into()),
    }
}

/// The participant a `ParticipantUpdate` names, with its state.
async fn next_update(socket: &mut Socket) -> Result<(String, String, i32)> {
    match next_response(socket).await?.message {
        Some(proto::signal_response::Message::Update(update)) => {
            let p = update.participants.first().ok_or("an empty update")?;
            Ok((p.identity.clone(), p.sid.clone(), p.state))
        }
        other => Err(format!("not a participant update: {other:?}").into()),
    }
}

#[tokio::test]
async fn participants_of_a_room_see_each_other_come_publish_and_go() -> Result<()> {
    use futures_util::SinkExt;
    let (addr, _) = serve().await?;
    let joined = proto::participant_info::State::Joined as i32;
    let gone = proto::participant_info::State::Disconnected as i32;
    let (mut alice, alice_join) = join(addr, "alice", "!room:hs").await?;
    assert!(alice_join.other_participants.is_empty());
    let (mut bob, bob_join) = join(addr, "bob", "!room:hs").await?;
    let others: Vec<&str> = bob_join
        .other_participants
        .iter()
        .map(|p| p.identity.as_str())
        .collect();
    assert_eq!(others, ["alice"]);
    let bob_sid = bob_join.participant.ok_or("no participant")?.sid;
    assert_eq!(
        next_update(&mut alice).await?,
        ("bob".into(), bob_sid.clone(), joined)
    );
    // Bob publishes a camera: he gets its TrackPublishedResponse, Alice his new info.
    let add = proto::SignalRequest {
        message: Some(proto::signal_request::Message::AddTrack(
            proto::AddTrackRequest {
                cid: "camera-1".into(),
                name: "camera".into(),
                r#type: proto::TrackType::Video as i32,
                ..Default::default()
            },
        )),
    };
    bob.send(Message::Binary(add.encode_to_vec().into()))
        .await?;
    let track = match next_response(&mut bob).await?.message {
        Some(proto::signal_response::Message::TrackPublished(published)) => {
            assert_eq!(published.cid, "camera-1");
            published.track.ok_or("no track")?
        }
        other => return Err(format!("add_track answered with {other:?}").into()),
    };
    let tracks_of_bob = |response: proto::SignalResponse| match response.message {
        Some(proto::signal_response::Message::Update(update)) => Ok(update
            .participants
            .into_iter()
            .find(|p| p.identity == "bob")
            .map(|p| p.tracks)
            .unwrap_or_default()),
        other => Err(format!("not a participant update: {other:?}")),
    };
    assert_eq!(
        tracks_of_bob(next_response(&mut alice).await?)?,
        vec![track.clone()]
    );
    // He mutes it: Alice sees it muted.
    let mute = proto::SignalRequest {
        message: Some(proto::signal_request::Message::Mute(
            proto::MuteTrackRequest {
                sid: track.sid.clone(),
                muted: true,
            },
        )),
    };
    bob.send(Message::Binary(mute.encode_to_vec().into()))
        .await?;
    let tracks = tracks_of_bob(next_response(&mut alice).await?)?;
    assert!(tracks.len() == 1 && tracks[0].muted, "{tracks:?}");
    // Someone in another room is nobody's business here.
    let (_carol, carol_join) = join(addr, "carol", "!other:hs").await?;
    assert!(carol_join.other_participants.is_empty());
    // Bob leaves: Alice is told.
    let leave = proto::SignalRequest {
        message: Some(proto::signal_request::Message::Leave(
            proto::LeaveRequest::default(),
        )),
    };
    bob.send(Message::Binary(leave.encode_to_vec().into()))
        .await?;
    assert_eq!(
        next_update(&mut alice).await?,
        ("bob".into(), bob_sid, gone)
    );
    // Alice joins again from elsewhere: the old session is told to leave and closed; the
    // new one finds the room empty.
    let (_alice_again, again) = join(addr, "alice", "!room:hs").await?;
    assert!(again.other_participants.is_empty(), "{again:?}");
    match next_response(&mut alice).await?.message {
        Some(proto::signal_response::Message::Leave(leave)) => assert_eq!(
            leave.reason,
            proto::DisconnectReason::DuplicateIdentity as i32
        ),
        other => return Err(format!("the replaced session got {other:?}").into()),
    }
    assert!(
        closes_within_5_s(&mut alice).await,
        "the replaced session stayed open"
    );
    Ok(())
}

#[tokio::test]
async fn a_token_without_publish_rights_publishes_nothing_and_the_session_goes_on() -> Result<()> {
    use futures_util::SinkExt;
    let (addr, stats) = serve().await?;
    let mut claims = Claims::join(KEY, "viewer", "!room:hs", now(), 60);
    claims.video.can_publish = false;
    claims.video.can_publish_data = false;
    let jwt = token::sign(&claims, SECRET)?;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/rtc?access_token={jwt}")).await?;
    assert!(matches!(
        next_response(&mut socket).await?.message,
        Some(proto::signal_response::Message::Join(_))
    ));
    let requests = [
        proto::signal_request::Message::AddTrack(proto::AddTrackRequest {
            cid: "camera-1".into(),
            r#type: proto::TrackType::Video as i32,
            ..Default::default()
        }),
        proto::signal_request::Message::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: "v=0\r\n".into(),
            id: 1,
            ..Default::default()
        }),
        proto::signal_request::Message::PingReq(proto::Ping {
            timestamp: 7,
            rtt: 0,
        }),
    ];
    for message in requests {
        let request = proto::SignalRequest {
            message: Some(message),
        };
        socket
            .send(Message::Binary(request.encode_to_vec().into()))
            .await?;
    }
    // Neither the track nor the offer is answered: the first response is the pong.
    match next_response(&mut socket).await?.message {
        Some(proto::signal_response::Message::PongResp(pong)) => {
            assert_eq!(pong.last_ping_timestamp, 7);
        }
        other => return Err(format!("expected only a pong, got {other:?}").into()),
    }
    assert_eq!(stats.signal.refused_requests(), 2);
    Ok(())
}
