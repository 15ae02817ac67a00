//! Starts two real Synapse homeservers that federate with each other and checks that a room
//! join and to-device messages (which carry Matrix call signalling) cross between them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cascade_signalling::{MatrixClient, RawEvent, SyncResponse};
use cascade_testkit::Synapse;
use serde_json::{Value, json};

/// How long anything that crosses federation may take before the test fails.
const FEDERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long each `/sync` long-polls.
const SYNC_TIMEOUT_MS: u64 = 5_000;

/// Syncs `client` from `since` until `found` picks a value out of a response; returns it
/// with the response's `next_batch`.
async fn sync_until<T>(
    client: &MatrixClient,
    since: Option<String>,
    what: &str,
    mut found: impl FnMut(&SyncResponse) -> Option<T>,
) -> Result<(T, String)> {
    let deadline = Instant::now() + FEDERATION_TIMEOUT;
    let mut since = since;
    loop {
        let response = client
            .sync(since.as_deref(), SYNC_TIMEOUT_MS, None)
            .await
            .with_context(|| format!("{} syncing while waiting for {what}", client.user_id()))?;
        if let Some(value) = found(&response) {
            return Ok((value, response.next_batch));
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not see {what} within {FEDERATION_TIMEOUT:?}",
                client.user_id()
            );
        }
        since = Some(response.next_batch);
    }
}

/// Whether `event` is `user_id`'s membership event saying "join".
fn is_join_of(event: &RawEvent, user_id: &str) -> bool {
    event.event_type == "m.room.member"
        && event.state_key.as_deref() == Some(user_id)
        && event.content.get("membership").and_then(Value::as_str) == Some("join")
}

/// Sends one to-device event of `event_type` from `from` to one device of `to`, and waits
/// until that device's `/sync` (resumed from `to_since`) delivers it; returns the delivered
/// event and the receiver's next sync token.
async fn send_and_receive(
    from: &MatrixClient,
    to: &MatrixClient,
    to_since: String,
    event_type: &str,
    content: &Value,
) -> Result<(RawEvent, String)> {
    let messages = BTreeMap::from([(
        to.user_id().to_owned(),
        BTreeMap::from([(to.device_id().to_owned(), content.clone())]),
    )]);
    let sent = Instant::now();
    from.send_to_device(event_type, &messages)
        .await
        .with_context(|| format!("sending {event_type} to {}", to.user_id()))?;
    let (event, since) = sync_until(to, Some(to_since), event_type, |sync| {
        sync.to_device
            .iter()
            .find(|event| event.event_type == event_type && event.sender == from.user_id())
            .cloned()
    })
    .await?;
    println!(
        "{event_type} from {} reached {} in {:?}",
        from.user_id(),
        to.user_id(),
        sent.elapsed()
    );
    Ok((event, since))
}

#[tokio::test]
async fn a_room_join_and_to_device_messages_cross_federation() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("cascade_testkit=debug,info")
        .try_init();

    let started = Instant::now();
    let (mut one, mut two) = Synapse::start_federating_pair()
        .await
        .context("starting two federating Synapses")?;
    println!(
        "federating pair {} and {} ready in {:?}",
        one.server_name(),
        two.server_name(),
        started.elapsed()
    );
    for synapse in [&one, &two] {
        let port = synapse
            .federation_port()
            .context("a federating Synapse without a federation port")?;
        assert_eq!(synapse.server_name(), format!("127.0.0.1:{port}"));
        assert_eq!(
            synapse.federation_url(),
            Some(format!("https://127.0.0.1:{port}").as_str())
        );
    }
    assert_ne!(one.server_name(), two.server_name());

    let alice = one.register("alice", "alice-password", false).await?;
    let bob = two.register("bob", "bob-password", false).await?;
    assert_eq!(bob.user_id, format!("@bob:{}", two.server_name()));
    let alice = MatrixClient::with_access_token(one.url(), &alice.access_token).await?;
    let bob = MatrixClient::with_access_token(two.url(), &bob.access_token).await?;

    // Alice (server one) creates a room and invites Bob (server two), who joins.
    let room_id = alice
        .create_room(json!({"preset": "private_chat", "name": "Federation"}))
        .await?;
    alice
        .invite_user(&room_id, bob.user_id())
        .await
        .context("inviting a user of the other server")?;
    let ((), bob_since) = sync_until(&bob, None, "the invite", |sync| {
        sync.invited.contains_key(&room_id).then_some(())
    })
    .await?;
    let joined = bob
        .join_room(&room_id)
        .await
        .context("joining a room of the other server")?;
    assert_eq!(joined, room_id);

    // Alice's server sees the join.
    let ((), alice_since) = sync_until(&alice, None, "Bob's join", |sync| {
        let room = sync.joined.get(&room_id)?;
        room.state
            .iter()
            .chain(&room.timeline)
            .any(|event| is_join_of(event, bob.user_id()))
            .then_some(())
    })
    .await?;
    let state = alice.room_state(&room_id).await?;
    ensure!(
        state.iter().any(|event| is_join_of(event, bob.user_id())),
        "Bob's join is missing from the room state on Alice's server: {state:?}"
    );

    // A call invite from Alice's device to Bob's, and Bob's answer back.
    let invite = json!({
        "call_id": "federation-call",
        "party_id": alice.device_id(),
        "version": "1",
        "lifetime": 30_000,
        "conf_id": room_id,
        "device_id": alice.device_id(),
        "seq": 0,
        "offer": {"type": "offer", "sdp": "v=0\r\n"},
    });
    let (received, _) = send_and_receive(&alice, &bob, bob_since, "m.call.invite", &invite).await?;
    assert_eq!(received.sender, alice.user_id());
    assert_eq!(received.content, invite);

    let answer = json!({
        "call_id": "federation-call",
        "party_id": bob.device_id(),
        "version": "1",
        "conf_id": room_id,
        "device_id": bob.device_id(),
        "seq": 0,
        "answer": {"type": "answer", "sdp": "v=0\r\n"},
    });
    let (received, _) =
        send_and_receive(&bob, &alice, alice_since, "m.call.answer", &answer).await?;
    assert_eq!(received.sender, bob.user_id());
    assert_eq!(received.content, answer);

    one.stop().await?;
    two.stop().await?;
    Ok(())
}
