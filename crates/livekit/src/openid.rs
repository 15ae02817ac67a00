//! Checking a Matrix OpenID token with the homeserver that issued it.

use serde::Deserialize;

/// An OpenID token as a client obtains it (`POST /_matrix/client/v3/user/{userId}/openid/request_token`).
#[derive(Clone, Debug, Deserialize)]
pub struct OpenIdToken {
    /// The token itself.
    pub access_token: String,
    /// `Bearer`.
    #[serde(default)]
    pub token_type: String,
    /// The server name of the homeserver that issued it (and checks it).
    pub matrix_server_name: String,
    /// Seconds it is valid for.
    #[serde(default)]
    pub expires_in: u64,
}

/// Why an OpenID token did not name a user.
#[derive(Debug, thiserror::Error)]
pub enum OpenIdError {
    /// The homeserver does not know the token (expired, forged, used on another server).
    #[error("the homeserver refused the OpenID token (HTTP {0})")]
    Refused(u16),
    /// The homeserver could not be asked, or answered something else than a user.
    #[error("could not check the OpenID token with {server}: {why}")]
    Unreachable {
        /// The server name.
        server: String,
        /// What went wrong.
        why: String,
    },
    /// The homeserver vouched for a user of another server.
    #[error("{server} vouched for {user}, who is not one of its users")]
    ForeignUser {
        /// The server name.
        server: String,
        /// The user it named.
        user: String,
    },
}

#[derive(Deserialize)]
struct UserInfo {
    sub: String,
}

/// Asks the homeserver at `base_url` (the one named `server_name`) who `token` belongs to,
/// with `GET /_matrix/federation/v1/openid/userinfo` (Matrix server-server API, "OpenID").
/// Returns the user id, which must be on `server_name`.
///
/// Errors: [`OpenIdError::Refused`] for a 4xx answer, [`OpenIdError::Unreachable`] for a
/// network error, a 5xx or an answer without `sub`, [`OpenIdError::ForeignUser`] when the
/// user is not on `server_name`.
pub async fn user_of(
    http: &reqwest::Client,
    base_url: &str,
    server_name: &str,
    token: &str,
) -> Result<String, OpenIdError> {
    let unreachable = |why: String| OpenIdError::Unreachable {
        server: server_name.to_owned(),
        why,
    };
    let mut url = url::Url::parse(base_url).map_err(|err| unreachable(err.to_string()))?;
    url.set_path("/_matrix/federation/v1/openid/userinfo");
    url.query_pairs_mut().append_pair("access_token", token);
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    let status = response.status();
    if status.is_client_error() {
        return Err(OpenIdError::Refused(status.as_u16()));
    }
    if !status.is_success() {
        return Err(unreachable(format!("HTTP {status}")));
    }
    let info: UserInfo = response
        .json()
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    let on_server = info
        .sub
        .strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(local, server)| !local.is_empty() && server == server_name);
    if !on_server {
        return Err(OpenIdError::ForeignUser {
            server: server_name.to_owned(),
            user: info.sub,
        });
    }
    Ok(info.sub)
}
