//! LiveKit access tokens: HS256 JWTs whose `iss` is the API key, `sub` the participant's
//! identity, with `nbf`/`exp` and a video grant naming the one room they join.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token allows in its room (LiveKit's `video` grant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    /// May join the room.
    pub room_join: bool,
    /// The room.
    pub room: String,
    /// May publish tracks.
    pub can_publish: bool,
    /// May subscribe to tracks.
    pub can_subscribe: bool,
    /// May send data packets.
    #[serde(default = "yes")]
    pub can_publish_data: bool,
}

fn yes() -> bool {
    true
}

/// A token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that signed it.
    pub iss: String,
    /// The participant's identity.
    pub sub: String,
    /// Not valid before (seconds since the Unix epoch).
    pub nbf: u64,
    /// Expiry (seconds since the Unix epoch).
    pub exp: u64,
    /// The room and what may be done in it.
    pub video: VideoGrant,
}

impl Claims {
    /// Claims for `identity` to join `room` and publish and subscribe there, valid from `now`
    /// (seconds since the Unix epoch) for `ttl_secs`.
    pub fn join(api_key: &str, identity: &str, room: &str, now: u64, ttl_secs: u64) -> Self {
        Self {
            iss: api_key.to_owned(),
            sub: identity.to_owned(),
            nbf: now,
            exp: now.saturating_add(ttl_secs),
            video: VideoGrant {
                room_join: true,
                room: room.to_owned(),
                can_publish: true,
                can_subscribe: true,
                can_publish_data: true,
            },
        }
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, a bad signature, another algorithm or issuer, expired, not yet valid, or
    /// claims of the wrong shape.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

/// Signs `claims` with HS256 and `secret` (RFC 7519, RFC 7518 §3.2).
///
/// Errors: the JWT library's (serialisation), which these claims never cause.
pub fn sign(claims: &Claims, secret: &str) -> Result<String, TokenError> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Checks a token: HS256 with `secret`, issued by `api_key`, within `nbf`..`exp` (30 s
/// leeway, by the system clock). Returns its claims.
pub fn verify(token: &str, api_key: &str, secret: &str) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[api_key]);
    validation.validate_nbf = true;
    validation.leeway = 30;
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )?;
    Ok(data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn a_signed_token_verifies_with_its_claims() -> Result<(), TokenError> {
        let claims = Claims::join("key", "@a:hs:D", "room", now(), 60);
        let token = sign(&claims, SECRET)?;
        assert_eq!(verify(&token, "key", SECRET)?, claims);
        Ok(())
    }

    #[test]
    fn wrong_secret_issuer_expiry_or_garbage_are_refused() -> Result<(), TokenError> {
        let claims = Claims::join("key", "@a:hs:D", "room", now(), 60);
        let token = sign(&claims, SECRET)?;
        assert!(verify(&token, "key", "another secret of at least 32 bytes").is_err());
        assert!(verify(&token, "other", SECRET).is_err());
        let expired = Claims::join("key", "@a:hs:D", "room", now() - 3600, 60);
        assert!(verify(&sign(&expired, SECRET)?, "key", SECRET).is_err());
        let later = Claims::join("key", "@a:hs:D", "room", now() + 3600, 60);
        assert!(verify(&sign(&later, SECRET)?, "key", SECRET).is_err());
        assert!(verify("not.a.jwt", "key", SECRET).is_err());
        assert!(verify("", "key", SECRET).is_err());
        Ok(())
    }
}
