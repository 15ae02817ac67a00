//! Signed JSON and device keys: canonical JSON, signing and verifying objects, reading the
//! device keys of `/keys/query` and the signed one-time keys of `/keys/claim`, and building the
//! body of `/keys/upload`.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use vodozemac::olm::Account;
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

/// The Olm algorithm name.
pub const OLM_ALGORITHM: &str = "m.olm.v1.curve25519-aes-sha2";
/// The Megolm algorithm name (advertised, not used by the focus).
pub const MEGOLM_ALGORITHM: &str = "m.megolm.v1.aes-sha2";
/// The algorithm of signed one-time and fallback keys.
pub const SIGNED_CURVE25519: &str = "signed_curve25519";

/// Canonical JSON of `value` (keys sorted at every level, no whitespace), without the top-level
/// `signatures` and `unsigned` fields, as the Matrix signing rules want.
pub fn canonical_json_for_signing(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) => {
            let mut stripped = map.clone();
            stripped.remove("signatures");
            stripped.remove("unsigned");
            write_canonical(&Value::Object(stripped), &mut out);
        }
        other => write_canonical(other, &mut out),
    }
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push('{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Signs `object` with `account`'s Ed25519 key as `user_id`/`device_id`, adding the signature
/// under `signatures.{user_id}."ed25519:{device_id}"` (other signatures are kept).
pub fn sign_json(account: &Account, user_id: &str, device_id: &str, object: &mut Value) {
    let signature = account.sign(canonical_json_for_signing(object)).to_base64();
    if let Value::Object(map) = object {
        let signatures = map
            .entry("signatures")
            .or_insert_with(|| Value::Object(Map::new()));
        if !signatures.is_object() {
            *signatures = Value::Object(Map::new());
        }
        if let Value::Object(by_user) = signatures {
            let mine = by_user
                .entry(user_id.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !mine.is_object() {
                *mine = Value::Object(Map::new());
            }
            if let Value::Object(mine) = mine {
                mine.insert(format!("ed25519:{device_id}"), Value::String(signature));
            }
        }
    }
}

/// Whether `object` carries a valid signature by `key` as `user_id`/`device_id`.
pub fn verify_json(object: &Value, user_id: &str, device_id: &str, key: &Ed25519PublicKey) -> bool {
    let Some(signature) = object
        .get("signatures")
        .and_then(|s| s.get(user_id))
        .and_then(|s| s.get(format!("ed25519:{device_id}")))
        .and_then(Value::as_str)
    else {
        return false;
    };
    let Ok(signature) = Ed25519Signature::from_base64(signature) else {
        return false;
    };
    key.verify(canonical_json_for_signing(object).as_bytes(), &signature)
        .is_ok()
}

/// The published identity keys of one device, self-signature checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceKeys {
    /// The device's Curve25519 identity key.
    pub curve25519: Curve25519PublicKey,
    /// The device's Ed25519 signing key.
    pub ed25519: Ed25519PublicKey,
}

/// Why published device keys were not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceKeysError {
    /// `user_id`/`device_id` inside the object differ from where it was listed.
    #[error("the keys name another user or device")]
    WrongOwner,
    /// The device does not support Olm.
    #[error("the device does not support Olm")]
    NoOlm,
    /// A key is missing or not valid base64 of the right length.
    #[error("a key is missing or malformed")]
    BadKey,
    /// The device's own signature is missing or wrong.
    #[error("the device's self-signature does not verify")]
    BadSignature,
}

/// Reads and checks the device keys `object` listed for `user_id`/`device_id` in `/keys/query`.
pub fn parse_device_keys(
    user_id: &str,
    device_id: &str,
    object: &Value,
) -> Result<DeviceKeys, DeviceKeysError> {
    if object.get("user_id").and_then(Value::as_str) != Some(user_id)
        || object.get("device_id").and_then(Value::as_str) != Some(device_id)
    {
        return Err(DeviceKeysError::WrongOwner);
    }
    let olm = object
        .get("algorithms")
        .and_then(Value::as_array)
        .is_some_and(|algs| algs.iter().any(|a| a == OLM_ALGORITHM));
    if !olm {
        return Err(DeviceKeysError::NoOlm);
    }
    let key = |name: &str| {
        object
            .get("keys")
            .and_then(|k| k.get(format!("{name}:{device_id}")))
            .and_then(Value::as_str)
    };
    let curve25519 = key("curve25519")
        .and_then(|k| Curve25519PublicKey::from_base64(k).ok())
        .ok_or(DeviceKeysError::BadKey)?;
    let ed25519 = key("ed25519")
        .and_then(|k| Ed25519PublicKey::from_base64(k).ok())
        .ok_or(DeviceKeysError::BadKey)?;
    if !verify_json(object, user_id, device_id, &ed25519) {
        return Err(DeviceKeysError::BadSignature);
    }
    Ok(DeviceKeys {
        curve25519,
        ed25519,
    })
}

/// Reads every device of `user_id` from a `/keys/query` `device_keys` object, skipping (and
/// returning the ids and reasons of) devices whose keys do not check out.
pub fn parse_user_devices(
    user_id: &str,
    device_keys: &Value,
) -> (BTreeMap<String, DeviceKeys>, Vec<(String, DeviceKeysError)>) {
    let mut good = BTreeMap::new();
    let mut bad = Vec::new();
    if let Some(devices) = device_keys.get(user_id).and_then(Value::as_object) {
        for (device_id, object) in devices {
            match parse_device_keys(user_id, device_id, object) {
                Ok(keys) => {
                    good.insert(device_id.clone(), keys);
                }
                Err(err) => bad.push((device_id.clone(), err)),
            }
        }
    }
    (good, bad)
}

/// Finds the signed one-time (or fallback) key claimed for `user_id`/`device_id` in a
/// `/keys/claim` `one_time_keys` object and checks it is signed by the device's `ed25519` key.
pub fn parse_claimed_key(
    one_time_keys: &Value,
    user_id: &str,
    device_id: &str,
    ed25519: &Ed25519PublicKey,
) -> Option<Curve25519PublicKey> {
    let keys = one_time_keys.get(user_id)?.get(device_id)?.as_object()?;
    keys.iter().find_map(|(key_id, object)| {
        if !key_id.starts_with(&format!("{SIGNED_CURVE25519}:")) {
            return None;
        }
        let key = object.get("key")?.as_str()?;
        let key = Curve25519PublicKey::from_base64(key).ok()?;
        verify_json(object, user_id, device_id, ed25519).then_some(key)
    })
}

/// The signed `device_keys` object of `account` for `user_id`/`device_id`.
pub fn device_keys_object(account: &Account, user_id: &str, device_id: &str) -> Value {
    let identity = account.identity_keys();
    let mut object = json!({
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": [OLM_ALGORITHM, MEGOLM_ALGORITHM],
        "keys": {
            format!("curve25519:{device_id}"): identity.curve25519.to_base64(),
            format!("ed25519:{device_id}"): identity.ed25519.to_base64(),
        },
    });
    sign_json(account, user_id, device_id, &mut object);
    object
}

/// A signed `signed_curve25519` key object (`fallback: true` for fallback keys).
pub fn signed_key_object(
    account: &Account,
    user_id: &str,
    device_id: &str,
    key: &Curve25519PublicKey,
    fallback: bool,
) -> Value {
    let mut object = json!({ "key": key.to_base64() });
    if fallback {
        object["fallback"] = Value::Bool(true);
    }
    sign_json(account, user_id, device_id, &mut object);
    object
}

/// The `/keys/upload` body for `account`'s unpublished one-time keys and fallback key, with the
/// device keys when `with_device_keys`; `None` when there is nothing to upload.
pub fn upload_body(
    account: &Account,
    user_id: &str,
    device_id: &str,
    with_device_keys: bool,
) -> Option<Value> {
    let mut body = Map::new();
    if with_device_keys {
        body.insert(
            "device_keys".into(),
            device_keys_object(account, user_id, device_id),
        );
    }
    let one_time: Map<String, Value> = account
        .one_time_keys()
        .iter()
        .map(|(id, key)| {
            (
                format!("{SIGNED_CURVE25519}:{}", id.to_base64()),
                signed_key_object(account, user_id, device_id, key, false),
            )
        })
        .collect();
    if !one_time.is_empty() {
        body.insert("one_time_keys".into(), Value::Object(one_time));
    }
    let fallback: Map<String, Value> = account
        .fallback_key()
        .iter()
        .map(|(id, key)| {
            (
                format!("{SIGNED_CURVE25519}:{}", id.to_base64()),
                signed_key_object(account, user_id, device_id, key, true),
            )
        })
        .collect();
    if !fallback.is_empty() {
        body.insert("fallback_keys".into(), Value::Object(fallback));
    }
    (!body.is_empty()).then_some(Value::Object(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_and_strips() {
        let value = json!({"b": 1, "a": {"d": [true, null, "x\"y"], "c": -2}, "signatures": {}, "unsigned": {"age": 1}, "é": "ü"});
        assert_eq!(
            canonical_json_for_signing(&value),
            r#"{"a":{"c":-2,"d":[true,null,"x\"y"]},"b":1,"é":"ü"}"#
        );
    }

    #[test]
    fn device_keys_round_trip_and_tampering_fails() {
        let account = Account::new();
        let object = device_keys_object(&account, "@a:hs", "DEV");
        let keys = parse_device_keys("@a:hs", "DEV", &object).unwrap();
        assert_eq!(keys.curve25519, account.curve25519_key());
        assert_eq!(keys.ed25519, account.ed25519_key());
        assert_eq!(
            parse_device_keys("@a:hs", "OTHER", &object),
            Err(DeviceKeysError::WrongOwner)
        );
        let mut tampered = object.clone();
        tampered["keys"]["curve25519:DEV"] = json!(Account::new().curve25519_key().to_base64());
        assert_eq!(
            parse_device_keys("@a:hs", "DEV", &tampered),
            Err(DeviceKeysError::BadSignature)
        );
        let mut unsigned = object;
        unsigned["unsigned"] = json!({"device_display_name": "x"});
        assert!(parse_device_keys("@a:hs", "DEV", &unsigned).is_ok());
        let listing = json!({"@a:hs": {"DEV": unsigned, "BAD": {"user_id": "@a:hs"}}});
        let (good, bad) = parse_user_devices("@a:hs", &listing);
        assert_eq!(good.len(), 1);
        assert_eq!(bad, vec![("BAD".to_owned(), DeviceKeysError::WrongOwner)]);
    }

    #[test]
    fn upload_body_and_claimed_keys_verify() {
        let mut account = Account::new();
        account.generate_one_time_keys(2);
        account.generate_fallback_key();
        let body = upload_body(&account, "@a:hs", "DEV", true).unwrap();
        assert_eq!(body["one_time_keys"].as_object().unwrap().len(), 2);
        assert_eq!(body["fallback_keys"].as_object().unwrap().len(), 1);
        let (id, key) = body["one_time_keys"]
            .as_object()
            .unwrap()
            .iter()
            .next()
            .unwrap();
        let claimed = json!({"@a:hs": {"DEV": {id.clone(): key.clone()}}});
        let ed = account.ed25519_key();
        assert!(parse_claimed_key(&claimed, "@a:hs", "DEV", &ed).is_some());
        let other = Account::new().ed25519_key();
        assert!(parse_claimed_key(&claimed, "@a:hs", "DEV", &other).is_none());
        account.mark_keys_as_published();
        let rest = upload_body(&account, "@a:hs", "DEV", false);
        assert!(rest.is_none(), "{rest:?}");
    }
}
