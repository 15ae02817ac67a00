//! Cascaded foci (issue 11), end to end: a real Synapse on 127.0.0.1, two or three `cascade`
//! processes, and simulated devices, each calling the focus its membership names. The foci
//! link by themselves, from the conference's `m.call.member` state.

use anyhow::{Context, Result, ensure};
use cascade_signalling::MatrixClient;
use cascade_simclient::{SimClient, SimConfig, SubscribePolicy, TrackReport, signalling};
use cascade_testkit::{Conference, Focus, FocusOptions, Synapse, party};
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{check_intact, wait_more_from, wait_unannounced};

const ANSWER: Duration = Duration::from_secs(20);
const MEDIA: Duration = Duration::from_secs(30);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cascade"))
}

/// Waits (up to `timeout`) until `focus`'s metric `series` equals `value`; fails with the
/// last value read and the focus's log tail.
async fn wait_metric_eq(focus: &Focus, series: &str, value: f64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = focus.metric(series).await?;
        if now == value {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{series} of {} is {now}, not {value}, after {timeout:?}; its log:\n{}",
            focus.user_id(),
            focus.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to `timeout`) until `focus`'s counter `series` is at least `value`.
async fn wait_metric_at_least(
    focus: &Focus,
    series: &str,
    value: f64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = focus.metric(series).await?;
        if now >= value {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{series} of {} is {now}, below {value}, after {timeout:?}",
            focus.user_id(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A device of a new user `localpart`, in a call with `focus` (which its membership names).
async fn join_on(
    conference: &Conference,
    focus: &Focus,
    localpart: &str,
) -> Result<(MatrixClient, SimClient)> {
    let matrix = conference.device(localpart).await?;
    let client = conference
        .join(conference.call_config_on(&matrix, focus))
        .await?;
    client
        .wait_answered(ANSWER)
        .await
        .with_context(|| format!("{localpart} calling {}", focus.user_id()))?;
    Ok((matrix, client))
}

/// Every device receives every other device's audio and video, intact and attributed to its
/// publisher's user and device.
async fn check_everyone_receives_everyone(devices: &[(MatrixClient, SimClient)]) -> Result<()> {
    for (matrix, client) in devices {
        let others: Vec<(String, String)> = devices
            .iter()
            .filter(|(other, _)| other.user_id() != matrix.user_id())
            .map(|(other, _)| party(other))
            .collect();
        client
            .wait_receiving_from(&others, 100, MEDIA)
            .await
            .with_context(|| format!("{} receiving", matrix.user_id()))?;
    }
    for (matrix, client) in devices {
        let report = client.report();
        for (other, _) in devices
            .iter()
            .filter(|(o, _)| o.user_id() != matrix.user_id())
        {
            check_intact(matrix.user_id(), &report, &party(other))?;
        }
    }
    Ok(())
}

/// Prints both foci's logs when the test failed.
fn on_failure<T>(foci: &[&Focus], result: Result<T>) -> Result<T> {
    if result.is_err() {
        for (index, focus) in foci.iter().enumerate() {
            eprintln!("---- {} log ----\n{}", focus.user_id(), focus.log_tail());
            if let Ok(dir) = std::env::var("CASCADE_TEST_LOG_DIR") {
                let _ = std::fs::write(format!("{dir}/focus-{index}.log"), focus.log());
            }
        }
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_devices_on_two_foci_receive_each_other_until_the_link_is_no_longer_needed()
-> Result<()> {
    let conference = Conference::start(binary(), "membership").await?;
    let focus_b = conference.add_focus(binary(), "focusb").await?;
    let focus_a = &conference.focus;
    let result = async {
        let mut devices = vec![
            join_on(&conference, focus_a, "ann").await?,
            join_on(&conference, focus_a, "ben").await?,
            join_on(&conference, &focus_b, "cat").await?,
            join_on(&conference, &focus_b, "dan").await?,
        ];
        check_everyone_receives_everyone(&devices).await?;
        // One link between the two foci, placed by the one with the lower (user, device):
        // `@focus:…` sorts before `@focusb:…`.
        for focus in [focus_a, &focus_b] {
            wait_metric_eq(focus, "cascade_links", 1.0, Duration::from_secs(5)).await?;
        }
        let placed = "cascade_link_calls_total{side=\"placed\"}";
        ensure!(
            focus_a.metric(placed).await? == 1.0,
            "focus A placed no single link"
        );
        ensure!(
            focus_b.metric(placed).await? == 0.0,
            "focus B placed a link"
        );
        // Media crossed the link both ways, and each focus counts what the other sent it.
        for (from, to) in [(focus_a, &focus_b), (&focus_b, focus_a)] {
            let sent = from
                .metric("cascade_link_packets_total{direction=\"out\"}")
                .await?;
            let received = to
                .metric("cascade_link_packets_total{direction=\"in\"}")
                .await?;
            ensure!(
                sent > 100.0 && received > 100.0,
                "over the link from {}: {sent} packets sent, {received} received",
                from.user_id()
            );
        }
        // The link's state, and its round-trip time from the other focus's reception reports.
        for focus in [focus_a, &focus_b] {
            wait_metric_eq(
                focus,
                "cascade_links_connected",
                1.0,
                Duration::from_secs(5),
            )
            .await?;
            wait_metric_eq(
                focus,
                "cascade_linked_conferences",
                1.0,
                Duration::from_secs(5),
            )
            .await?;
            wait_metric_at_least(
                focus,
                "cascade_link_rtt_seconds_count",
                1.0,
                Duration::from_secs(10),
            )
            .await?;
        }

        // Dan (on B) leaves: the devices on A stop being offered his streams; the others
        // go on.
        let (dan, dan_call) = devices.pop().context("dan")?;
        dan_call.hangup().await?;
        signalling::remove_membership(&dan, &conference.room_id).await?;
        for (_, client) in &devices[..2] {
            wait_unannounced(client, &party(&dan)).await?;
        }
        let remaining: Vec<(String, String)> = devices.iter().map(|(m, _)| party(m)).collect();
        for (matrix, client) in &devices {
            if matrix.user_id() != remaining[2].0 {
                wait_more_from(client, &remaining[2], 50)
                    .await
                    .context("after dan left")?;
            }
        }

        // Cat, the last member on B, leaves: the link is hung up on both sides.
        let (cat, cat_call) = devices.pop().context("cat")?;
        cat_call.hangup().await?;
        signalling::remove_membership(&cat, &conference.room_id).await?;
        for focus in [focus_a, &focus_b] {
            wait_metric_eq(focus, "cascade_links", 0.0, Duration::from_secs(15)).await?;
        }
        for (_, client) in &devices {
            wait_unannounced(client, &party(&cat)).await?;
        }
        // Ann and Ben, both on A, still have their call.
        let (ann, a) = &devices[0];
        let (ben, b) = &devices[1];
        wait_more_from(a, &party(ben), 50).await?;
        check_intact(ann.user_id(), &a.report(), &party(ben))?;
        check_intact(ben.user_id(), &b.report(), &party(ann))?;
        Ok(())
    }
    .await;
    on_failure(&[focus_a, &focus_b], result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_devices_on_three_foci_each_stream_crossing_one_link() -> Result<()> {
    let conference = Conference::start(binary(), "membership").await?;
    let focus_b = conference.add_focus(binary(), "focusb").await?;
    let focus_c = conference.add_focus(binary(), "focusc").await?;
    let focus_a = &conference.focus;
    let result = async {
        let mut devices = Vec::new();
        for (focus, users) in [
            (focus_a, ["ann", "ben"]),
            (&focus_b, ["cat", "dan"]),
            (&focus_c, ["eve", "fay"]),
        ] {
            for user in users {
                devices.push(join_on(&conference, focus, user).await?);
            }
        }
        check_everyone_receives_everyone(&devices).await?;
        // A full mesh of links: two per focus. Each focus forwards 2 local devices' 2 tracks to
        // its 2 links (8 subscriptions), and each local device gets the other local device's
        // 2 tracks and the 8 that came over the links (20): 28. A stream forwarded from one
        // link into another would add subscriptions of links to links.
        for focus in [focus_a, &focus_b, &focus_c] {
            wait_metric_eq(focus, "cascade_links", 2.0, Duration::from_secs(5)).await?;
            wait_metric_eq(focus, "cascade_subscriptions", 28.0, Duration::from_secs(5)).await?;
        }
        Ok(())
    }
    .await;
    on_failure(&[focus_a, &focus_b, &focus_c], result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_invite_in_a_room_this_focus_has_not_joined_is_refused() -> Result<()> {
    let conference = Conference::start(binary(), "membership").await?;
    // Focus C sorts before focus A (`@afocus` < `@focus`), so C places the link.
    let focus_c = conference.add_focus(binary(), "afocus").await?;
    let focus_a = &conference.focus;
    let result = async {
        // A second room, which C joins and A is never invited to. One member there names A as
        // its focus, another names C: C calls A, and A, not in that room, must refuse.
        let other_room =
            signalling::create_call_room(&conference.owner, &[focus_c.user_id().to_owned()])
                .await?;
        signalling::create_conference(&conference.owner, &other_room, &conference.conf_id).await?;
        conference
            .wait_joined_in(&other_room, focus_c.user_id(), Duration::from_secs(30))
            .await?;
        for (localpart, focus) in [("eve", focus_a), ("fay", &focus_c)] {
            let matrix = conference.device_in(&other_room, localpart).await?;
            let mut config = conference.call_config_on(&matrix, focus);
            config.room_id = other_room.clone();
            config.publish_membership().await?;
        }
        let placed = "cascade_link_calls_total{side=\"placed\"}";
        let refused = "cascade_invite_refusals_total{reason=\"not_member\"}";
        // The invite is held for `hold_ms` (5 s) in case state that allows it is on its way.
        wait_metric_at_least(&focus_c, placed, 1.0, Duration::from_secs(15)).await?;
        wait_metric_at_least(focus_a, refused, 1.0, Duration::from_secs(15)).await?;
        ensure!(focus_a.metric("cascade_links").await? == 0.0, "A linked");
        ensure!(
            focus_a
                .metric("cascade_link_calls_total{side=\"accepted\"}")
                .await?
                == 0.0,
            "A accepted the link"
        );
        Ok(())
    }
    .await;
    on_failure(&[focus_a, &focus_c], result)
}

/// Registers `localpart` on `synapse`, has `owner` invite it to `room_id`, and joins it (the
/// invite may take a moment to cross federation).
async fn member_on(
    synapse: &Synapse,
    owner: &MatrixClient,
    room_id: &str,
    localpart: &str,
) -> Result<MatrixClient> {
    let account = synapse
        .register(localpart, "device-password", false)
        .await?;
    let matrix = MatrixClient::with_access_token(synapse.url(), &account.access_token).await?;
    owner.invite_user(room_id, matrix.user_id()).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match matrix.join_room(room_id).await {
            Ok(_) => return Ok(matrix),
            Err(err) => ensure!(
                Instant::now() < deadline,
                "{localpart} could not join {room_id}: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `user_id` has joined `room_id`, as `owner`'s homeserver sees it.
async fn wait_joined(owner: &MatrixClient, room_id: &str, user_id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let joined = owner.room_state(room_id).await?.iter().any(|event| {
            event.event_type == "m.room.member"
                && event.state_key.as_deref() == Some(user_id)
                && event.content.get("membership").and_then(|m| m.as_str()) == Some("join")
        });
        if joined {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{user_id} did not join {room_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_homeservers_each_with_its_focus_carry_media_end_to_end() -> Result<()> {
    let (one, two) = Synapse::start_federating_pair().await?;
    let mut foci = Vec::new();
    for synapse in [&one, &two] {
        let account = synapse.register("focus", "focus-password", false).await?;
        let options =
            FocusOptions::new(binary(), synapse.url(), &account.user_id, "focus-password");
        foci.push(Focus::start(options).await?);
    }
    let (focus_one, focus_two) = (&foci[0], &foci[1]);
    let result = async {
        let owner_account = one.register("owner", "owner-password", false).await?;
        let owner = MatrixClient::with_access_token(one.url(), &owner_account.access_token).await?;
        let invitees = [
            focus_one.user_id().to_owned(),
            focus_two.user_id().to_owned(),
        ];
        let room_id = signalling::create_call_room(&owner, &invitees).await?;
        let conf_id = "conf-federated";
        signalling::create_conference(&owner, &room_id, conf_id).await?;
        for focus in [focus_one, focus_two] {
            wait_joined(&owner, &room_id, focus.user_id()).await?;
        }
        let mut devices = Vec::new();
        for (synapse, focus, users) in [
            (&one, focus_one, ["ann", "ben"]),
            (&two, focus_two, ["cat", "dan"]),
        ] {
            for user in users {
                let matrix = member_on(synapse, &owner, &room_id, user).await?;
                let config = SimConfig::new(
                    matrix.clone(),
                    &room_id,
                    conf_id,
                    focus.user_id(),
                    focus.device_id(),
                );
                config.publish_membership().await?;
                let client = SimClient::start(config).await?;
                client
                    .wait_answered(ANSWER)
                    .await
                    .with_context(|| format!("{user} calling {}", focus.user_id()))?;
                devices.push((matrix, client));
            }
        }
        check_everyone_receives_everyone(&devices).await?;
        for focus in [focus_one, focus_two] {
            wait_metric_eq(focus, "cascade_links", 1.0, Duration::from_secs(5)).await?;
        }
        Ok(())
    }
    .await;
    on_failure(&[focus_one, focus_two], result)
}

/// Waits until the video `client` receives from `publisher` has shown keyframes of `size` and
/// `packets` packets; returns its report.
async fn wait_video_of_size(
    client: &SimClient,
    publisher: &(String, String),
    size: (u16, u16),
    packets: u64,
) -> Result<TrackReport> {
    let deadline = Instant::now() + MEDIA;
    loop {
        let video = client
            .report()
            .tracks_from(&publisher.0, &publisher.1)
            .into_iter()
            .find(|t| t.kind == "video")
            .cloned();
        if let Some(video) = &video
            && video.keyframe_size == Some(size)
            && video.packets >= packets
        {
            return Ok(video.clone());
        }
        ensure!(
            Instant::now() < deadline,
            "{} did not get {size:?} video from {} within {MEDIA:?}: {video:#?}",
            client.user_id(),
            publisher.0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_crosses_a_link_with_its_layers_and_each_focus_picks_per_subscriber() -> Result<()>
{
    let conference = Conference::start(binary(), "membership").await?;
    let focus_b = conference.add_focus(binary(), "focusb").await?;
    let focus_a = &conference.focus;
    let result = async {
        let alice = conference.device("alice").await?;
        let mut publisher = conference.call_config_on(&alice, focus_a);
        publisher.simulcast = true;
        publisher.subscribe = SubscribePolicy::None;
        let a = conference.join(publisher).await?;
        a.wait_answered(ANSWER).await?;
        let mut subscribers = Vec::new();
        for (localpart, size) in [("bob", (320u16, 180u16)), ("carol", (1280, 720))] {
            let matrix = conference.device(localpart).await?;
            let mut config = conference.call_config_on(&matrix, &focus_b);
            config.publish_video = false;
            config.render_size = Some((u32::from(size.0), u32::from(size.1)));
            let client = conference.join(config).await?;
            client.wait_answered(ANSWER).await?;
            subscribers.push((client, size));
        }
        let alice = party(&alice);
        for (client, size) in &subscribers {
            let video = wait_video_of_size(client, &alice, *size, 60).await?;
            ensure!(
                video.layer_changes.is_empty(),
                "{} asked for {size:?} and saw other layers: {:?}",
                client.user_id(),
                video.layer_changes
            );
            ensure!(
                video.payload_mismatches == 0 && video.seq_gaps == 0 && video.counter_gaps == 0,
                "{}'s video is not intact: {video:#?}",
                client.user_id()
            );
        }
        // Every layer crossed the link once: A forwards alice's three layers and her audio
        // over the link, to B, which forwards one layer to each of bob and carol.
        wait_metric_eq(
            focus_a,
            "cascade_subscriptions",
            4.0,
            Duration::from_secs(5),
        )
        .await?;
        Ok(())
    }
    .await;
    on_failure(&[focus_a, &focus_b], result)
}

/// Two conferences in one room, each with a member on either focus: the same two foci link
/// twice (each focus runs one event loop, so both links share its socket), and each link
/// carries only its own conference's media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_conferences_between_the_same_two_foci_each_get_their_own_link() -> Result<()> {
    let conference = Conference::start(binary(), "membership").await?;
    let focus_b = conference.add_focus(binary(), "focusb").await?;
    let focus_a = &conference.focus;
    let result = async {
        let second = format!("conf-{}", cascade_simclient::random_id(8));
        signalling::create_conference(&conference.owner, &conference.room_id, &second).await?;
        let mut first_devices = Vec::new();
        let mut second_devices = Vec::new();
        for (localpart, focus, conf_id) in [
            ("ann", focus_a, &conference.conf_id),
            ("cat", &focus_b, &conference.conf_id),
            ("ben", focus_a, &second),
            ("dan", &focus_b, &second),
        ] {
            let matrix = conference.device(localpart).await?;
            let mut config = conference.call_config_on(&matrix, focus);
            config.conf_id = conf_id.clone();
            let client = conference.join(config).await?;
            client
                .wait_answered(ANSWER)
                .await
                .with_context(|| format!("{localpart} calling {}", focus.user_id()))?;
            if *conf_id == conference.conf_id {
                first_devices.push((matrix, client));
            } else {
                second_devices.push((matrix, client));
            }
        }
        for focus in [focus_a, &focus_b] {
            wait_metric_eq(focus, "cascade_links", 2.0, Duration::from_secs(15)).await?;
        }
        check_everyone_receives_everyone(&first_devices).await?;
        check_everyone_receives_everyone(&second_devices).await?;
        // Nothing of one conference reaches the other.
        for (mine, theirs) in [
            (&first_devices, &second_devices),
            (&second_devices, &first_devices),
        ] {
            for (matrix, client) in mine.iter() {
                let report = client.report();
                for (other, _) in theirs.iter() {
                    ensure!(
                        report.packets_from(other.user_id(), other.device_id()) == 0,
                        "{} received {} of the other conference",
                        matrix.user_id(),
                        other.user_id()
                    );
                }
            }
        }
        ensure!(
            focus_a
                .metric("cascade_link_calls_total{side=\"placed\"}")
                .await?
                == 2.0,
            "A did not place both links"
        );
        Ok(())
    }
    .await;
    on_failure(&[focus_a, &focus_b], result)
}

/// Waits until `client` is offered a stream of every one of `parties` (user, device).
async fn wait_offered(client: &SimClient, parties: &[(String, String)]) -> Result<()> {
    let deadline = Instant::now() + MEDIA;
    loop {
        let available = client.available();
        let offered = |(user, device): &(String, String)| {
            available.values().any(|stream| {
                stream.user_id.as_deref() == Some(user.as_str())
                    && stream.device_id.as_deref() == Some(device.as_str())
            })
        };
        if parties.iter().all(offered) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} is not offered {parties:?}: {available:?}",
            client.user_id()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A link carries what the devices on the receiving focus subscribe to, and nothing else: a
/// device on B that subscribes to nothing is offered A's members' streams while none of them
/// crosses; it subscribes to one publisher and that publisher's tracks cross, the other's do
/// not; it unsubscribes and they stop crossing; it subscribes again and they cross again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_carries_only_what_devices_on_the_other_focus_subscribe_to() -> Result<()> {
    let conference = Conference::start(binary(), "membership").await?;
    let focus_b = conference.add_focus(binary(), "focusb").await?;
    let focus_a = &conference.focus;
    let result = async {
        let devices = vec![
            join_on(&conference, focus_a, "ann").await?,
            join_on(&conference, focus_a, "ben").await?,
        ];
        let cat_matrix = conference.device("cat").await?;
        let mut config = conference.call_config_on(&cat_matrix, &focus_b);
        config.subscribe = SubscribePolicy::None;
        let cat = conference.join(config).await?;
        cat.wait_answered(ANSWER).await.context("cat calling B")?;
        check_everyone_receives_everyone(&devices).await?;
        let (ann, ben) = (&devices[0].0, &devices[1].0);
        let ann_tracks = devices[0].1.local_tracks().len() as f64;
        wait_offered(&cat, &[party(ann), party(ben)]).await?;

        // Nothing crosses while ben receives another 100 of ann's packets.
        let subscriptions = "cascade_subscriptions";
        let link_out = "cascade_link_packets_total{direction=\"out\"}";
        let ben_call = &devices[1].1;
        wait_more_from(ben_call, &party(ann), 100).await?;
        ensure!(
            focus_a.metric(link_out).await? == 0.0,
            "A forwarded over the link what nobody on B subscribed to"
        );
        // On A: ann and ben to each other (4), cat's two tracks (over the link) to each (4).
        let base = 4.0 + 2.0 * cat.local_tracks().len() as f64;
        ensure!(focus_a.metric(subscriptions).await? == base);

        for round in 0..2 {
            // Cat subscribes to ann: ann's tracks cross, ben's do not.
            cat.set_subscribe_policy(SubscribePolicy::Publishers(vec![party(ann)]));
            wait_more_from(&cat, &party(ann), 100)
                .await
                .with_context(|| format!("round {round}"))?;
            if round == 0 {
                check_intact(cat_matrix.user_id(), &cat.report(), &party(ann))?;
            } else {
                // What ann sent while cat was not subscribed is missing; what arrived is
                // intact, and the new RTP streams are continuous.
                for track in cat.report().tracks_from(ann.user_id(), ann.device_id()) {
                    ensure!(
                        track.payload_mismatches == 0 && track.seq_gaps == 0,
                        "cat's {} from ann after subscribing again: {track:?}",
                        track.kind
                    );
                }
            }
            wait_metric_eq(
                focus_a,
                subscriptions,
                base + ann_tracks,
                Duration::from_secs(5),
            )
            .await?;
            ensure!(
                cat.report().packets_from(ben.user_id(), ben.device_id()) == 0,
                "cat received ben"
            );
            // Cat unsubscribes: the link stops carrying ann.
            cat.set_subscribe_policy(SubscribePolicy::None);
            wait_metric_eq(focus_a, subscriptions, base, Duration::from_secs(15)).await?;
        }
        Ok(())
    }
    .await;
    on_failure(&[focus_a, &focus_b], result)
}

/// Two foci that both refuse plaintext call events (`require_encryption`), with devices that
/// call encrypted: every event of the link is Olm-encrypted to the other focus's published
/// keys, so the link forms, the devices receive each other, and neither focus refused a
/// plaintext event or failed to encrypt one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foci_that_require_encryption_link_over_olm() -> Result<()> {
    let env = vec![(
        "CASCADE_MATRIX__REQUIRE_ENCRYPTION".to_owned(),
        "true".to_owned(),
    )];
    let conference = Conference::start_with_env(binary(), "membership", env.clone()).await?;
    let focus_b = conference
        .add_focus_with_env(binary(), "focusb", env)
        .await?;
    let focus_a = &conference.focus;
    let result = async {
        let mut devices = Vec::new();
        for (localpart, focus) in [("ann", focus_a), ("cat", &focus_b)] {
            let matrix = conference.device(localpart).await?;
            let mut config = conference.call_config_on(&matrix, focus);
            config.olm = Some(cascade_simclient::OlmDevice::setup(&matrix).await?);
            let client = conference.join(config).await?;
            client
                .wait_answered(ANSWER)
                .await
                .with_context(|| format!("{localpart} calling {}", focus.user_id()))?;
            devices.push((matrix, client));
        }
        check_everyone_receives_everyone(&devices).await?;
        for focus in [focus_a, &focus_b] {
            wait_metric_eq(focus, "cascade_links", 1.0, Duration::from_secs(5)).await?;
            for (outcome, at_least) in [("encrypted", 3.0), ("decrypted", 3.0)] {
                let series = format!("cascade_olm_messages_total{{outcome=\"{outcome}\"}}");
                let value = focus.metric(&series).await?;
                ensure!(
                    value >= at_least,
                    "{} {outcome} only {value} messages",
                    focus.user_id()
                );
            }
            for outcome in ["refused_plaintext_refused", "encrypt_failures"] {
                let series = format!("cascade_olm_messages_total{{outcome=\"{outcome}\"}}");
                ensure!(
                    focus.metric(&series).await? == 0.0,
                    "{} counted {outcome}",
                    focus.user_id()
                );
            }
        }
        Ok(())
    }
    .await;
    on_failure(&[focus_a, &focus_b], result)
}

/// A focus of a linked conference crashes (SIGKILL) while media crosses the link, and comes
/// back: its device calls it again, the foci link again by themselves, and every device
/// receives every other again, intact; the other focus's own call went on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_focus_that_crashes_mid_call_links_again_when_it_comes_back() -> Result<()> {
    let conference = Conference::start(binary(), "membership").await?;
    let mut focus_b = conference.add_focus(binary(), "focusb").await?;
    let focus_a = &conference.focus;
    let result = async {
        let ann = join_on(&conference, focus_a, "ann").await?;
        let ben = join_on(&conference, focus_a, "ben").await?;
        let cat_matrix = conference.device("cat").await?;
        let cat = conference
            .join(conference.call_config_on(&cat_matrix, &focus_b))
            .await?;
        cat.wait_answered(ANSWER).await.context("cat calling B")?;
        let everyone = [party(&ann.0), party(&ben.0), party(&cat_matrix)];
        for (matrix, client) in [(&ann.0, &ann.1), (&ben.0, &ben.1), (&cat_matrix, &cat)] {
            let others: Vec<_> = everyone
                .iter()
                .filter(|p| p.0 != matrix.user_id())
                .cloned()
                .collect();
            client.wait_receiving_from(&others, 100, MEDIA).await?;
        }

        focus_b.crash_and_restart().await?;
        focus_b.wait_ready(Duration::from_secs(30)).await?;
        // Ann and ben's call on A goes on while B is away.
        wait_more_from(&ann.1, &party(&ben.0), 100)
            .await
            .context("while B restarts")?;
        // Cat's device calls B again, with a new session.
        drop(cat);
        let cat = conference
            .join(conference.call_config_on(&cat_matrix, &focus_b))
            .await?;
        cat.wait_answered(ANSWER)
            .await
            .context("cat calling B after its restart")?;
        for focus in [focus_a, &focus_b] {
            wait_metric_eq(focus, "cascade_links_connected", 1.0, MEDIA).await?;
        }
        cat.wait_receiving_from(&[party(&ann.0), party(&ben.0)], 100, MEDIA)
            .await
            .context("cat receiving after the restart")?;
        for (matrix, client) in [&ann, &ben] {
            wait_more_from(client, &party(&cat_matrix), 100)
                .await
                .context("after the restart")?;
            check_intact(matrix.user_id(), &client.report(), &party(&cat_matrix))?;
        }
        for other in [&ann.0, &ben.0] {
            check_intact(cat_matrix.user_id(), &cat.report(), &party(other))?;
        }
        Ok(())
    }
    .await;
    on_failure(&[focus_a, &focus_b], result)
}
