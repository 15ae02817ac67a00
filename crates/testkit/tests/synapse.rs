//! Starts a real Synapse and exercises registration against it.

use anyhow::{Context, Result, ensure};
use cascade_testkit::{Registered, Synapse, register_with_secret};
use serde::Deserialize;

/// Asks the homeserver who owns `user`'s access token.
async fn whoami(synapse: &Synapse, user: &Registered) -> Result<String> {
    #[derive(Deserialize)]
    struct WhoAmI {
        user_id: String,
    }
    let reply = cascade_signalling::http::client_builder()
        .no_proxy()
        .build()?
        .get(format!(
            "{}/_matrix/client/v3/account/whoami",
            synapse.url()
        ))
        .bearer_auth(&user.access_token)
        .send()
        .await?;
    ensure!(
        reply.status().is_success(),
        "whoami answered {}",
        reply.status()
    );
    Ok(reply.json::<WhoAmI>().await?.user_id)
}

#[tokio::test]
async fn registers_users_on_a_real_synapse() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("cascade_testkit=debug,info")
        .try_init();

    let mut synapse = Synapse::start().await.context("starting Synapse")?;
    assert!(synapse.url().starts_with("http://127.0.0.1:"));
    assert_eq!(synapse.server_name(), "localhost");

    let alice = synapse.register("alice", "alice-password", false).await?;
    let bob = register_with_secret(
        synapse.url(),
        synapse.shared_secret(),
        "bob",
        "bob-password",
        true,
    )
    .await?;
    assert_eq!(alice.user_id, "@alice:localhost");
    assert_eq!(bob.user_id, "@bob:localhost");
    assert_eq!(bob.password, "bob-password");
    assert!(!alice.device_id.is_empty());

    assert_eq!(whoami(&synapse, &alice).await?, alice.user_id);
    assert_eq!(whoami(&synapse, &bob).await?, bob.user_id);

    let again = synapse.register("alice", "other-password", false).await;
    assert!(again.is_err(), "registering alice twice must fail");
    if let Err(error) = again {
        println!("second registration rejected: {error:#}");
    }

    synapse.stop().await?;
    Ok(())
}

#[tokio::test]
async fn rate_limits_are_lifted_and_openid_is_served() -> Result<()> {
    let synapse = Synapse::start().await.context("starting Synapse")?;
    let user = synapse.register("loader", "loader-password", false).await?;
    let http = cascade_signalling::http::client_builder()
        .no_proxy()
        .build()?;
    let base = synapse.url();

    // Default Synapse allows a burst of 10 messages; send far more at once.
    let room: serde_json::Value = http
        .post(format!("{base}/_matrix/client/v3/createRoom"))
        .bearer_auth(&user.access_token)
        .json(&serde_json::json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let room_id = room["room_id"]
        .as_str()
        .context("createRoom without room_id")?;
    for i in 0..40 {
        let status = http
            .put(format!(
                "{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/txn{i}"
            ))
            .bearer_auth(&user.access_token)
            .json(&serde_json::json!({"msgtype": "m.text", "body": format!("message {i}")}))
            .send()
            .await?
            .status();
        ensure!(status.is_success(), "message {i} answered {status}");
    }

    // A MatrixRTC focus validates OpenID tokens via the openid listener resource.
    let token: serde_json::Value = http
        .post(format!(
            "{base}/_matrix/client/v3/user/{}/openid/request_token",
            user.user_id
        ))
        .bearer_auth(&user.access_token)
        .json(&serde_json::json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let access_token = token["access_token"]
        .as_str()
        .context("request_token without access_token")?;
    let info: serde_json::Value = http
        .get(format!(
            "{base}/_matrix/federation/v1/openid/userinfo?access_token={access_token}"
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(info["sub"].as_str(), Some(user.user_id.as_str()));
    Ok(())
}
