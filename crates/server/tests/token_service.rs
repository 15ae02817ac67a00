//! The MatrixRTC token service (issue 12, test 2) against a real Synapse and the real focus: a
//! real OpenID token gets a LiveKit token for the user's device; a forged OpenID token, a member
//! claimed for another user and a malformed body are refused with Matrix-style errors, counted.

use anyhow::{Context, Result, ensure};
use cascade_livekit::{naming, token};
use cascade_signalling::MatrixClient;
use cascade_testkit::Conference;
use serde_json::{Value, json};
use std::path::Path;

const API_KEY: &str = "cascade-test";
const API_SECRET: &str = "a test secret that is long enough for HS256";

/// A free TCP port on 127.0.0.1.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An OpenID token for `matrix`'s user, from its homeserver.
async fn openid_token(matrix: &MatrixClient) -> Result<Value> {
    let url = format!(
        "{}/_matrix/client/v3/user/{}/openid/request_token",
        matrix.homeserver_url().trim_end_matches('/'),
        matrix.user_id()
    );
    let response = cascade_signalling::http::client()?
        .post(url)
        .bearer_auth(matrix.access_token())
        .json(&json!({}))
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "request_token: {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// POSTs `body` to the token service's `path`; returns the status, the CORS header and the body.
async fn post(base: &str, path: &str, body: String) -> Result<(u16, Option<String>, Value)> {
    let response = cascade_signalling::http::client()?
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let cors = response
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, cors, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_tokens_are_traded_for_livekit_tokens_and_bad_requests_refused() -> Result<()> {
    let port = free_port()?;
    // The homeserver's URL is known only once it runs: start it with the focus, then point the
    // focus's token service at it with a restart.
    let mut conference =
        Conference::start(Path::new(env!("CARGO_BIN_EXE_cascade")), "membership").await?;
    for (key, value) in [
        ("CASCADE_LIVEKIT__ENABLED", "true".to_owned()),
        ("CASCADE_LIVEKIT__LISTEN", format!("127.0.0.1:{port}")),
        ("CASCADE_LIVEKIT__URL", "ws://127.0.0.1:7880".to_owned()),
        ("CASCADE_LIVEKIT__API_KEY", API_KEY.to_owned()),
        ("CASCADE_LIVEKIT__API_SECRET", API_SECRET.to_owned()),
        (
            "CASCADE_LIVEKIT__HOMESERVERS__LOCALHOST",
            conference.synapse.url().to_owned(),
        ),
    ] {
        conference.focus.set_env(key, Some(&value));
    }
    conference.focus.restart().await?;
    let base = format!("http://127.0.0.1:{port}");
    let result = async {
        let alice = conference.device("alice").await?;
        let openid = openid_token(&alice).await?;

        // The legacy endpoint: the room as named, the identity `<user>:<device>`.
        let body = json!({"room": conference.room_id, "openid_token": openid, "device_id": alice.device_id()});
        let (status, cors, answer) = post(&base, "/sfu/get", body.to_string()).await?;
        ensure!(status == 200, "/sfu/get: {status} {answer}");
        ensure!(cors.as_deref() == Some("*"), "no CORS header on /sfu/get");
        ensure!(answer["url"] == "ws://127.0.0.1:7880", "{answer}");
        let jwt = answer["jwt"].as_str().context("no jwt")?;
        let claims = token::verify(jwt, API_KEY, API_SECRET)?;
        ensure!(claims.sub == format!("{}:{}", alice.user_id(), alice.device_id()));
        ensure!(claims.video.room == conference.room_id && claims.video.room_join);

        // MSC4195's endpoint: the room a hash of the Matrix room and slot.
        let member = json!({"id": "member-1", "claimed_user_id": alice.user_id(), "claimed_device_id": alice.device_id()});
        let body = json!({"room_id": conference.room_id, "slot_id": "m.call#ROOM", "openid_token": openid, "member": member});
        let (status, cors, answer) = post(&base, "/get_token", body.to_string()).await?;
        ensure!(status == 200, "/get_token: {status} {answer}");
        ensure!(cors.as_deref() == Some("*"));
        let claims = token::verify(answer["jwt"].as_str().context("no jwt")?, API_KEY, API_SECRET)?;
        ensure!(claims.video.room == naming::slot_room(&conference.room_id, "m.call#ROOM"));
        ensure!(claims.sub == format!("{}:{}:member-1", alice.user_id(), alice.device_id()));

        // Refused: a forged OpenID token, a member claimed for another user, a bad body.
        let mut forged = openid.clone();
        forged["access_token"] = json!("forged-token");
        let body = json!({"room": conference.room_id, "openid_token": forged, "device_id": "D"});
        let (status, cors, answer) = post(&base, "/sfu/get", body.to_string()).await?;
        ensure!(status == 401 && answer["errcode"] == "M_UNAUTHORIZED", "forged: {status} {answer}");
        ensure!(cors.as_deref() == Some("*"), "no CORS header on an error");
        let other = json!({"id": "m", "claimed_user_id": "@bob:localhost", "claimed_device_id": "D"});
        let body = json!({"room_id": conference.room_id, "slot_id": "m.call#ROOM", "openid_token": openid, "member": other});
        let (status, _, answer) = post(&base, "/get_token", body.to_string()).await?;
        ensure!(status == 403 && answer["errcode"] == "M_FORBIDDEN", "other user: {status} {answer}");
        let (status, _, answer) = post(&base, "/get_token", "{not json".to_owned()).await?;
        ensure!(status == 400 && answer["errcode"] == "M_BAD_JSON", "garbage: {status} {answer}");

        // A browser's preflight is answered with the CORS headers.
        let preflight = cascade_signalling::http::client()?
            .request(reqwest::Method::OPTIONS, format!("{base}/get_token"))
            .header("origin", "https://call.example")
            .header("access-control-request-method", "POST")
            .send()
            .await?;
        ensure!(preflight.status().is_success(), "preflight: {}", preflight.status());
        ensure!(preflight.headers().contains_key("access-control-allow-origin"));

        let metric = |outcome: &str| {
            format!("cascade_livekit_token_requests_total{{outcome=\"{outcome}\"}}")
        };
        for (outcome, expected) in [("issued", 2.0), ("bad_openid", 1.0), ("wrong_user", 1.0), ("bad_request", 1.0)] {
            let value = conference.focus.metric(&metric(outcome)).await?;
            ensure!(value == expected, "{outcome}: {value}, expected {expected}");
        }
        Ok(())
    }
    .await;
    conference.on_failure(result)
}
