//! End-to-end tests: a real Synapse on 127.0.0.1, the `cascade` binary as a real process, and
//! simulated devices with real WebRTC peer connections signalling through Matrix.

use anyhow::{Context, Result, bail, ensure};
use cascade_signalling::MatrixClient;
use cascade_simclient::SimClient;
use cascade_testkit::{Conference, party};
use std::path::Path;
use std::time::Duration;

mod common;
use common::{check_intact, wait_more_from, wait_unannounced};

const ANSWER: Duration = Duration::from_secs(20);
const MEDIA: Duration = Duration::from_secs(30);

async fn conference(authorization: &str) -> Result<Conference> {
    Conference::start(Path::new(env!("CARGO_BIN_EXE_cascade")), authorization).await
}

/// Waits (up to 10 s) until the focus's metric `series` reaches `at_least`; returns its value
/// then, or the last one read.
async fn wait_metric(conference: &Conference, series: &str, at_least: f64) -> Result<f64> {
    let mut value = 0.0;
    for _ in 0..100 {
        value = conference.focus.metric(series).await?;
        if value >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(value)
}

/// Both calls still carry media both ways (100 more packets each way); then both hang up.
async fn go_on_and_hang_up(
    (alice, a): (&MatrixClient, SimClient),
    (bob, b): (&MatrixClient, SimClient),
) -> Result<()> {
    wait_more_from(&b, &party(alice), 100).await?;
    wait_more_from(&a, &party(bob), 100).await?;
    a.hangup().await?;
    b.hangup().await
}

/// Alice and Bob in calls, each receiving at least `packets` per track of the other.
async fn two_calls(
    conference: &Conference,
    packets: u64,
) -> Result<(MatrixClient, MatrixClient, SimClient, SimClient)> {
    two_calls_with(conference, packets, |_| {}).await
}

/// [`two_calls`], with Alice's device configured by `configure`.
async fn two_calls_with(
    conference: &Conference,
    packets: u64,
    configure: impl FnOnce(&mut cascade_simclient::SimConfig),
) -> Result<(MatrixClient, MatrixClient, SimClient, SimClient)> {
    let alice = conference.device("alice").await?;
    let bob = conference.device("bob").await?;
    let mut config = conference.call_config(&alice);
    configure(&mut config);
    let a = conference.join(config).await?;
    let b = conference.join(conference.call_config(&bob)).await?;
    a.wait_answered(ANSWER).await?;
    b.wait_answered(ANSWER).await?;
    a.wait_receiving_from(&[party(&bob)], packets, MEDIA)
        .await?;
    b.wait_receiving_from(&[party(&alice)], packets, MEDIA)
        .await?;
    Ok((alice, bob, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_receive_each_others_audio_and_video() -> Result<()> {
    let conference = conference("membership").await?;
    let result = async {
        let (alice, bob, a, b) = two_calls(&conference, 100).await?;
        check_intact("alice", &a.report(), &party(&bob))?;
        check_intact("bob", &b.report(), &party(&alice))?;
        // The focus is ICE-lite (RFC 8445 §2.5): it answers checks and sends none of its own.
        for (name, client) in [("alice", &a), ("bob", &b)] {
            let requests = client.report().stun_requests_received;
            ensure!(
                requests == 0,
                "the focus sent {name} {requests} binding requests"
            );
        }
        a.hangup().await?;
        b.hangup().await?;
        // A healthy call leaves no warning in the focus's log (and, written to a file, no
        // colour codes).
        let log = conference.focus.log();
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
        ensure!(
            warnings.is_empty(),
            "warnings on a healthy call: {warnings:#?}"
        );
        ensure!(
            !log.contains('\u{1b}'),
            "colour codes in the focus's log file"
        );
        Ok(())
    }
    .await;
    conference.on_failure(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_and_one_leaves() -> Result<()> {
    let conference = conference("membership").await?;
    let result = async {
        let users = [
            conference.device("ann").await?,
            conference.device("ben").await?,
            conference.device("cat").await?,
        ];
        let mut clients = Vec::new();
        for user in &users {
            clients.push(conference.join(conference.call_config(user)).await?);
        }
        for (index, client) in clients.iter().enumerate() {
            client.wait_answered(ANSWER).await?;
            let others: Vec<_> = users
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, user)| party(user))
                .collect();
            client.wait_receiving_from(&others, 100, MEDIA).await?;
            for other in &others {
                check_intact(users[index].user_id(), &client.report(), other)?;
            }
        }
        let cat = party(&users[2]);
        let leaving = clients.pop().expect("three clients");
        leaving.hangup().await?;
        for client in &clients {
            wait_unannounced(client, &cat).await?;
        }
        // Once unannounced, nothing more arrives from the one who left.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before: Vec<u64> = clients
            .iter()
            .map(|c| c.report().packets_from(&cat.0, &cat.1))
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after: Vec<u64> = clients
            .iter()
            .map(|c| c.report().packets_from(&cat.0, &cat.1))
            .collect();
        ensure!(
            before == after,
            "still receiving from cat: {before:?} -> {after:?}"
        );
        // The two who stay still receive each other.
        let ann_before = clients[1]
            .report()
            .packets_from(users[0].user_id(), users[0].device_id());
        tokio::time::sleep(Duration::from_secs(1)).await;
        ensure!(
            clients[1]
                .report()
                .packets_from(users[0].user_id(), users[0].device_id())
                > ann_before,
            "ben stopped receiving ann after cat left"
        );
        Ok(())
    }
    .await;
    conference.on_failure(result)
}

/// Each join and leave renegotiates the calls that stay. A renegotiation must not make a
/// device's stack bind again the streams it already receives: each new binding sends receiver
/// reports from a new SSRC, and the focus, which admits a bounded number of SSRCs per call,
/// soon dropped the device's datagrams (about 10 new SSRCs per join and leave here, where the
/// bound grows by 4). Ann, Ben and Dan stay while Cat joins and leaves ten times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_stay_through_many_joins_and_leaves_keep_their_media() -> Result<()> {
    const CYCLES: usize = 10;
    let conference = conference("membership").await?;
    let result = async {
        let users = [
            conference.device("ann").await?,
            conference.device("ben").await?,
            conference.device("dan").await?,
        ];
        let mut clients = Vec::new();
        for user in &users {
            clients.push(conference.join(conference.call_config(user)).await?);
        }
        let parties: Vec<_> = users.iter().map(party).collect();
        let others = |index: usize| -> Vec<(String, String)> {
            let mut others = parties.clone();
            others.remove(index);
            others
        };
        for (index, client) in clients.iter().enumerate() {
            client.wait_answered(ANSWER).await?;
            client.wait_receiving_from(&others(index), 50, MEDIA).await?;
        }
        let cat = conference.device("cat").await?;
        for cycle in 0..CYCLES {
            let c = conference.join(conference.call_config(&cat)).await?;
            c.wait_answered(ANSWER).await?;
            for client in &clients {
                wait_more_from(client, &party(&cat), 20)
                    .await
                    .with_context(|| format!("cycle {cycle}: receiving cat"))?;
            }
            c.hangup().await?;
            for client in &clients {
                wait_unannounced(client, &party(&cat)).await?;
            }
        }
        // Reports from the last renegotiation's bindings go out within a report interval.
        for (index, client) in clients.iter().enumerate() {
            for other in others(index) {
                wait_more_from(client, &other, 100).await?;
            }
        }
        let limit = r#"cascade_dropped_packets_total{reason="ssrc_limit"}"#;
        let dropped = conference.focus.metric(limit).await?;
        ensure!(
            dropped == 0.0,
            "{dropped} datagrams of calls that stayed dropped over the SSRC limit after {CYCLES} joins and leaves"
        );
        for (index, client) in clients.iter().enumerate() {
            for other in others(index) {
                check_intact(users[index].user_id(), &client.report(), &other)?;
            }
        }
        for client in clients {
            client.hangup().await?;
        }
        Ok(())
    }
    .await;
    conference.on_failure(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_is_not_a_member_is_refused() -> Result<()> {
    let conference = conference("membership").await?;
    let result = async {
        // In the room, but never published an m.call.member for the conference.
        let mallory = conference.device("mallory").await?;
        let config = conference.call_config(&mallory);
        let intruder = SimClient::start(config).await?;
        let reason = intruder.wait_hangup(Duration::from_secs(20)).await?;
        ensure!(reason == "unknown_error", "hangup reason {reason:?}");
        ensure!(
            intruder.report().answered_after.is_none(),
            "the focus answered a non-member"
        );
        let log = conference.focus.log();
        ensure!(
            log.contains("invite refused") && log.contains("not_member"),
            "the refusal is not logged with its cause"
        );
        // A member of the same conference is still answered.
        let alice = conference.device("alice").await?;
        let member = conference.join(conference.call_config(&alice)).await?;
        member.wait_answered(ANSWER).await?;
        Ok(())
    }
    .await;
    conference.on_failure(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_replaces_the_old_call() -> Result<()> {
    let conference = conference("membership").await?;
    let result = async {
        let alice = conference.device("alice").await?;
        let bob = conference.device("bob").await?;
        let first = conference.join(conference.call_config(&alice)).await?;
        let b = conference.join(conference.call_config(&bob)).await?;
        b.wait_receiving_from(&[party(&alice)], 50, MEDIA).await?;
        let old_stream = first.stream_id().to_owned();
        // Alice's client restarts: the old session vanishes without a hangup.
        drop(first);
        let second = conference.join(conference.call_config(&alice)).await?;
        second.wait_answered(ANSWER).await?;
        let new_stream = second.stream_id().to_owned();
        ensure!(
            new_stream != old_stream,
            "the new session reused the stream id"
        );
        // Bob is offered only the new session's stream, and receives it.
        let mut listed = Vec::new();
        for _ in 0..200 {
            listed = b
                .available()
                .iter()
                .filter(|(_, s)| s.user_id.as_deref() == Some(alice.user_id()))
                .map(|(stream, _)| stream.clone())
                .collect();
            if listed == [new_stream.clone()] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ensure!(
            listed == [new_stream.clone()],
            "bob is offered {listed:?}, expected only {new_stream}"
        );
        second
            .wait_receiving_from(&[party(&bob)], 50, MEDIA)
            .await?;
        for _ in 0..600 {
            let report = b.report();
            let fresh = report
                .tracks
                .iter()
                .filter(|t| t.stream_id == new_stream && t.packets >= 50)
                .count();
            if fresh == 2 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("bob does not receive alice's new session")
    }
    .await;
    conference.on_failure(result)
}

/// Whether `matrix`'s to-device inbox since `since` holds an answer to `call_id`.
async fn answered_in_inbox(matrix: &MatrixClient, since: &str, call_id: &str) -> Result<bool> {
    let sync = matrix.sync(Some(since), 0, None).await?;
    Ok(sync.to_device.iter().any(|event| {
        event.event_type == "m.call.answer"
            && event.content.get("call_id").and_then(|c| c.as_str()) == Some(call_id)
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_new_invites_are_answered_but_expired_and_handled_ones_are_not()
-> Result<()> {
    let mut conference = conference("membership").await?;
    let result = async {
        // Frank's call is answered before the restart; its invite must not be answered again.
        let frank = conference.device("frank").await?;
        let f = conference.join(conference.call_config(&frank)).await?;
        f.wait_answered(ANSWER).await?;
        let frank_call = f.call_id().to_owned();
        drop(f);
        let frank_since = frank.sync(None, 0, None).await?.next_batch;

        conference.focus.stop().await?;

        // Dave invites while the focus is down, with a 1.5 s lifetime, then goes quiet.
        let dave = conference.device("dave").await?;
        let dave_since = dave.sync(None, 0, None).await?.next_batch;
        let mut config = conference.call_config(&dave);
        config.lifetime_ms = 1_500;
        let d = conference.join(config).await?;
        let dave_call = d.call_id().to_owned();
        drop(d);
        // Let the invite's lifetime pass while the focus is down.
        tokio::time::sleep(Duration::from_millis(2_500)).await;

        conference.focus.restart().await?;

        // A new invite after the restart is answered and gets media going.
        let erin = conference.device("erin").await?;
        let gus = conference.device("gus").await?;
        let e = conference.join(conference.call_config(&erin)).await?;
        let g = conference.join(conference.call_config(&gus)).await?;
        e.wait_receiving_from(&[party(&gus)], 50, MEDIA).await?;
        g.wait_receiving_from(&[party(&erin)], 50, MEDIA).await?;

        // The focus handled its backlog before Erin's invite: by now any answer to Dave's
        // expired invite, or a second answer to Frank's, would be in their inboxes.
        ensure!(
            !answered_in_inbox(&dave, &dave_since, &dave_call).await?,
            "the focus answered an invite that expired while it was down"
        );
        ensure!(
            !answered_in_inbox(&frank, &frank_since, &frank_call).await?,
            "the focus answered an invite it had already handled before the restart"
        );
        ensure!(
            conference.focus.log().contains(&dave_call),
            "the voided invite is not logged"
        );
        Ok(())
    }
    .await;
    conference.on_failure(result)
}

/// A call lasts as long as the membership that authorized it: the device leaving the conference
/// (its `m.call.member` emptied) or its user leaving the room hangs the call up with
/// `user_hangup`, and the other device's call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_end_when_their_membership_ends() -> Result<()> {
    let conference = conference("membership").await?;
    let result = async {
        let alice = conference.device("alice").await?;
        let bob = conference.device("bob").await?;
        let carol = conference.device("carol").await?;
        let a = conference.join(conference.call_config(&alice)).await?;
        let b = conference.join(conference.call_config(&bob)).await?;
        let c = conference.join(conference.call_config(&carol)).await?;
        for client in [&a, &b, &c] {
            client.wait_answered(ANSWER).await?;
        }
        b.wait_receiving_from(&[party(&alice), party(&carol)], 50, MEDIA)
            .await?;

        // Alice leaves the conference without hanging up.
        cascade_simclient::signalling::remove_membership(&alice, &conference.room_id).await?;
        let reason = a.wait_hangup(Duration::from_secs(15)).await?;
        anyhow::ensure!(reason == "user_hangup", "alice's hangup reason {reason:?}");
        wait_unannounced(&b, &party(&alice)).await?;

        // Carol's user leaves the room.
        carol.leave_room(&conference.room_id).await?;
        let reason = c.wait_hangup(Duration::from_secs(15)).await?;
        anyhow::ensure!(reason == "user_hangup", "carol's hangup reason {reason:?}");

        // Bob, still a member, keeps his call.
        anyhow::ensure!(!b.is_finished(), "bob's call ended too");
        b.hangup().await?;
        Ok(())
    }
    .await;
    conference.on_failure(result)
}

/// SSRCs a device never announced. A new SSRC on its audio section (as after an encoder
/// restart) is counted as bound to no track. A device that sends from ever new SSRCs (each
/// packet well formed, with the audio payload type and the section's mid) gets a bounded number
/// of them into the WebRTC stack; the rest are dropped and counted. The calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unannounced_ssrcs_are_counted_and_bounded() -> Result<()> {
    const SENT: u32 = 3_000;
    let conference = conference("membership").await?;
    let result = async {
        let (alice, bob, a, b) = two_calls(&conference, 50).await?;
        let refused = r#"cascade_dropped_packets_total{reason="srtp_refused"}"#;
        let unbound = r#"cascade_dropped_packets_total{reason="unbound_ssrc"}"#;
        for series in [refused, unbound] {
            let value = conference.focus.metric(series).await?;
            ensure!(value == 0.0, "a healthy call counted {value} as {series}");
        }
        // 100 packets on one new SSRC of the audio section.
        let sent = a.send_unannounced_ssrcs(100, 100).await?;
        ensure!(sent == 100, "only {sent} of 100 were sent");
        let counted = wait_metric(&conference, unbound, 95.0).await?;
        ensure!(counted >= 95.0, "only {counted} of 100 counted as unbound");
        let sent = a.send_unannounced_ssrcs(SENT, 1).await?;
        ensure!(sent == SENT, "only {sent} of {SENT} were sent");
        // All but the few admitted ones are dropped before the stack (loopback may lose a few).
        let limit = r#"cascade_dropped_packets_total{reason="ssrc_limit"}"#;
        let floor = f64::from(SENT - cascade_media::admission::MAX_SSRCS_PER_CALL as u32) * 0.95;
        let dropped = wait_metric(&conference, limit, floor).await?;
        ensure!(
            dropped >= floor,
            "only {dropped} of {SENT} counted as over the SSRC limit"
        );
        // Both calls go on: bob still receives alice, alice still receives bob.
        go_on_and_hang_up((&alice, a), (&bob, b)).await
    }
    .await;
    conference.on_failure(result)
}

/// A data-channel message larger than the focus takes is refused inside the stack: counted, and
/// the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_channel_message_is_counted_and_the_call_goes_on() -> Result<()> {
    let conference = conference("membership").await?;
    let result = async {
        let (alice, bob, a, b) = two_calls_with(&conference, 20, |alice| {
            alice.claim_max_message_size = Some(262_144);
        })
        .await?;
        let oversized = r#"cascade_media_errors_total{reason="oversized_channel_message"}"#;
        ensure!(conference.focus.metric(oversized).await? == 0.0);
        let text = format!(
            r#"{{"type":"m.call.ping","content":{{"pad":"{}"}}}}"#,
            "x".repeat(200_000)
        );
        a.send_channel_text(text).await?;
        let counted = wait_metric(&conference, oversized, 1.0).await?;
        ensure!(counted >= 1.0, "the oversized message was not counted");
        go_on_and_hang_up((&alice, a), (&bob, b)).await
    }
    .await;
    conference.on_failure(result)
}

/// Conference ids are unique only within a room (every MatrixRTC room call has the conf id
/// `""`): two rooms whose calls share a conf id are two conferences, and no device of one
/// receives, or is offered, a stream of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_two_rooms_with_the_same_conf_id_never_share_media() -> Result<()> {
    let conference = conference("membership").await?;
    let result = async {
        let focus_user = conference.focus.user_id().to_owned();
        let other_room = cascade_simclient::signalling::create_call_room(
            &conference.owner,
            std::slice::from_ref(&focus_user),
        )
        .await?;
        cascade_simclient::signalling::create_conference(
            &conference.owner,
            &other_room,
            &conference.conf_id,
        )
        .await?;
        let mut other = Vec::new();
        for localpart in ["carol", "dave"] {
            other.push(conference.device_in(&other_room, localpart).await?);
        }
        // The focus must have joined the second room to authorize its calls.
        conference
            .wait_joined_in(&other_room, &focus_user, Duration::from_secs(30))
            .await?;
        let (alice, bob, a, b) = two_calls(&conference, 50).await?;
        let mut clients = Vec::new();
        for matrix in &other {
            let config = cascade_simclient::SimConfig::new(
                matrix.clone(),
                &other_room,
                &conference.conf_id,
                conference.focus.user_id(),
                conference.focus.device_id(),
            );
            clients.push(conference.join(config).await?);
        }
        let (carol, dave) = (&other[0], &other[1]);
        let d = clients.pop().context("dave's call")?;
        let c = clients.pop().context("carol's call")?;
        c.wait_answered(ANSWER).await?;
        d.wait_answered(ANSWER).await?;
        c.wait_receiving_from(&[party(dave)], 50, MEDIA).await?;
        d.wait_receiving_from(&[party(carol)], 50, MEDIA).await?;
        // Both conferences run side by side long enough for anything shared to arrive.
        let more = a.report().packets_from(bob.user_id(), bob.device_id()) + 100;
        a.wait_receiving_from(&[party(&bob)], more, MEDIA).await?;
        for (name, client, strangers) in [
            ("alice", &a, [carol, dave]),
            ("bob", &b, [carol, dave]),
            ("carol", &c, [&alice, &bob]),
            ("dave", &d, [&alice, &bob]),
        ] {
            for stranger in strangers {
                let (user, device) = (stranger.user_id(), stranger.device_id());
                let tracks = client.report().tracks_from(user, device).len();
                ensure!(
                    tracks == 0,
                    "{name} receives {tracks} tracks of {user} from the other room's call"
                );
                let offered = client
                    .available()
                    .values()
                    .filter(|stream| stream.user_id.as_deref() == Some(user))
                    .count();
                ensure!(
                    offered == 0,
                    "{name} is offered {offered} streams of {user} from the other room's call"
                );
            }
        }
        for client in [a, b, c, d] {
            client.hangup().await?;
        }
        Ok(())
    }
    .await;
    conference.on_failure(result)
}

/// The focus's UDP port, from its answer's SDP.
fn focus_port(sdp: &str) -> Result<u16> {
    sdp.lines()
        .filter(|line| line.starts_with("a=candidate:") && line.contains(" udp "))
        .find_map(|line| line.split_whitespace().nth(5)?.parse().ok())
        .or_else(|| {
            sdp.lines()
                .find_map(|line| line.strip_prefix("m=audio "))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .context("the focus's UDP port in the answer")
}

/// A device whose agent checks from more addresses than the focus keeps bound per call
/// ([`cascade_media::participant::MAX_ADDRESSES`]), each check valid and answered, keeps its
/// media both ways: the address its media flows on is never forgotten for a newer one, and
/// the focus keeps sending to it, not to whichever address it answered last (it used to do
/// both: forwarded media followed each answered check, and the call's first address was
/// forgotten after 8 more, its RTP counted from an unknown source).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_from_many_addresses_keep_the_media_address() -> Result<()> {
    let conference = conference("membership").await?;
    let result = async {
        let (alice, bob, a, b) = two_calls(&conference, 50).await?;
        let port = focus_port(&a.answer_sdp().context("alice's answer")?)?;
        let focus = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let unknown = r#"cascade_dropped_packets_total{reason="unknown_source"}"#;
        let unknown_before = conference.focus.metric(unknown).await?;
        let mut sockets = Vec::new();
        for _ in 0..cascade_media::participant::MAX_ADDRESSES + 2 {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            socket.send_to(&a.connectivity_check()?, focus).await?;
            // Answered with a Binding success (class bits 0x0101), so the check was valid.
            let mut response = [0u8; 1500];
            let (len, _) = tokio::time::timeout(ANSWER, socket.recv_from(&mut response))
                .await
                .context("the focus did not answer a valid check")??;
            ensure!(
                len >= 20 && response[..2] == [0x01, 0x01],
                "the focus answered a valid check with {:02x?}",
                &response[..len.min(20)]
            );
            sockets.push(socket);
        }
        wait_more_from(&b, &party(&alice), 100).await?;
        wait_more_from(&a, &party(&bob), 100).await?;
        let counted = conference.focus.metric(unknown).await?;
        ensure!(
            counted == unknown_before,
            "{} datagrams were counted from an unknown source after the checks",
            counted - unknown_before
        );
        go_on_and_hang_up((&alice, a), (&bob, b)).await
    }
    .await;
    conference.on_failure(result)
}

/// A STUN binding request from `username` with a MESSAGE-INTEGRITY that proves nothing.
fn forged_binding_request(username: &str) -> Vec<u8> {
    let mut attributes = Vec::new();
    attributes.extend_from_slice(&0x0006u16.to_be_bytes());
    attributes.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attributes.extend_from_slice(username.as_bytes());
    while attributes.len() % 4 != 0 {
        attributes.push(0);
    }
    attributes.extend_from_slice(&0x0008u16.to_be_bytes());
    attributes.extend_from_slice(&20u16.to_be_bytes());
    attributes.extend_from_slice(&[0xab; 20]);
    let mut message = vec![0x00, 0x01];
    message.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
    message.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    message.extend_from_slice(&[0x5a; 12]);
    message.extend(attributes);
    message
}

/// A binding request that names a call's ICE username fragment but fails its integrity check
/// binds nothing: what follows from its address is from an unknown source, not handed to the
/// call's stack (the focus used to bind any address that named a known ufrag, so whoever knew
/// one could add addresses without bound, or take over a device's address). The call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_request_that_fails_its_integrity_check_binds_nothing() -> Result<()> {
    let conference = conference("membership").await?;
    let result = async {
        let (alice, bob, a, b) = two_calls(&conference, 50).await?;
        let sdp = a.answer_sdp().context("alice's answer")?;
        let ufrag = sdp
            .lines()
            .find_map(|line| line.strip_prefix("a=ice-ufrag:"))
            .context("the answer's ice-ufrag")?
            .trim()
            .to_owned();
        let port = focus_port(&sdp)?;
        let unknown = r#"cascade_dropped_packets_total{reason="unknown_source"}"#;
        let refused = r#"cascade_dropped_packets_total{reason="srtp_refused"}"#;
        let unknown_before = conference.focus.metric(unknown).await?;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let focus = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        socket
            .send_to(&forged_binding_request(&format!("{ufrag}:mallory")), focus)
            .await?;
        // Then what looks like SRTP from that address.
        let mut rtp = vec![0x80, 111, 0, 1, 0, 0, 0, 1, 0x0b, 0xad, 0xbe, 0xef];
        rtp.extend_from_slice(&[0; 40]);
        socket.send_to(&rtp, focus).await?;
        let counted = wait_metric(&conference, unknown, unknown_before + 1.0).await?;
        ensure!(
            counted >= unknown_before + 1.0,
            "the datagram after the forged check was not counted from an unknown source \
             ({unknown_before} → {counted})"
        );
        let refused = conference.focus.metric(refused).await?;
        ensure!(refused == 0.0, "{refused} datagrams reached a call's stack");
        go_on_and_hang_up((&alice, a), (&bob, b)).await
    }
    .await;
    conference.on_failure(result)
}
