//! Registering users through Synapse's shared-secret admin API.

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha1::Sha1;

/// Credentials of a freshly registered user.
#[derive(Clone, Debug)]
pub struct Registered {
    /// Full Matrix user ID, e.g. `@alice:localhost`.
    pub user_id: String,
    /// Access token for the client-server API.
    pub access_token: String,
    /// Device ID the access token belongs to.
    pub device_id: String,
    /// The password the user was registered with.
    pub password: String,
}

/// Registers a user on any Synapse given its URL and shared secret (used by the load tester against a running homeserver).
pub async fn register_with_secret(
    homeserver_url: &str,
    shared_secret: &str,
    localpart: &str,
    password: &str,
    admin: bool,
) -> Result<Registered> {
    let client = cascade_signalling::http::client_builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("building HTTP client")?;
    register_via(
        &client,
        homeserver_url,
        shared_secret,
        localpart,
        password,
        admin,
    )
    .await
}

/// Registers a user using an existing HTTP client.
pub(crate) async fn register_via(
    client: &reqwest::Client,
    homeserver_url: &str,
    shared_secret: &str,
    localpart: &str,
    password: &str,
    admin: bool,
) -> Result<Registered> {
    #[derive(Deserialize)]
    struct Nonce {
        nonce: String,
    }
    #[derive(Deserialize)]
    struct Response {
        user_id: String,
        access_token: String,
        device_id: String,
    }

    let endpoint = format!(
        "{}/_synapse/admin/v1/register",
        homeserver_url.trim_end_matches('/')
    );

    let reply = client
        .get(&endpoint)
        .send()
        .await
        .with_context(|| format!("GET {endpoint}"))?;
    let Nonce { nonce } = json_or_error(reply, &endpoint).await?;

    let mac = registration_mac(shared_secret, &nonce, localpart, password, admin)?;
    let body = json!({
        "nonce": nonce,
        "username": localpart,
        "password": password,
        "admin": admin,
        "mac": mac,
    });
    let reply = client
        .post(&endpoint)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {endpoint}"))?;
    let response: Response = json_or_error(reply, &endpoint)
        .await
        .with_context(|| format!("registering {localpart:?}"))?;

    tracing::debug!(user_id = %response.user_id, "registered user");
    Ok(Registered {
        user_id: response.user_id,
        access_token: response.access_token,
        device_id: response.device_id,
        password: password.to_owned(),
    })
}

/// Computes the HMAC-SHA1 (hex) Synapse expects for shared-secret registration.
fn registration_mac(
    shared_secret: &str,
    nonce: &str,
    localpart: &str,
    password: &str,
    admin: bool,
) -> Result<String> {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(shared_secret.as_bytes()).context("initialising HMAC-SHA1")?;
    let role = if admin { "admin" } else { "notadmin" };
    for (i, part) in [nonce, localpart, password, role].iter().enumerate() {
        if i > 0 {
            mac.update(b"\0");
        }
        mac.update(part.as_bytes());
    }
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// Decodes a successful JSON reply, or fails with the status and body.
async fn json_or_error<T: serde::de::DeserializeOwned>(
    reply: reqwest::Response,
    endpoint: &str,
) -> Result<T> {
    let status = reply.status();
    let text = reply
        .text()
        .await
        .with_context(|| format!("reading reply from {endpoint}"))?;
    if !status.is_success() {
        bail!("{endpoint} answered {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("decoding reply from {endpoint}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_matches_reference() -> Result<()> {
        // Reference computed with Python's hmac module:
        // hmac.new(b"secret", b"abc\0alice\0pw\0notadmin", hashlib.sha1).hexdigest()
        let mac = registration_mac("secret", "abc", "alice", "pw", false)?;
        assert_eq!(mac, "42e32623fe124933c326f9d2d67ff7c617915a10");
        Ok(())
    }
}
