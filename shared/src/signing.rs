//! Webhook signatures: the `CallingBox-Signature` scheme and Standard Webhooks
//! (<https://www.standardwebhooks.com>). The dispatcher signs with these
//! functions; tests and loadgen verify with them (and the dispatcher's tests
//! also with an independent implementation).
//!
//! - `CallingBox-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//!   keyed with the whole secret string (`whsec_` included) as UTF-8 bytes.
//! - `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<t>.<body>")>`, keyed
//!   with the base64-decoded part of the secret after `whsec_`.
//!
//! During a secret rotation every valid secret signs: one `v1=` each in
//! `CallingBox-Signature`, one space-separated `v1,…` each in `webhook-signature`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

pub const SECRET_PREFIX: &str = "whsec_";

/// A secret that cannot key Standard Webhooks signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret must start with `whsec_`")]
    MissingPrefix,
    #[error("the part of a webhook secret after `whsec_` must be base64")]
    NotBase64,
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The Standard Webhooks key: the base64-decoded part of `whsec_…`.
pub fn standard_key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SecretError::MissingPrefix)?;
    STANDARD.decode(encoded).map_err(|_| SecretError::NotBase64)
}

/// Hex `v1` value of the CallingBox scheme for one secret.
pub fn callingbox_v1(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    hex::encode(hmac_sha256(secret.as_bytes(), &[t.as_bytes(), b".", body]))
}

/// `t=<unix>,v1=<hex>[,v1=<hex>…]`, one `v1` per secret (newest first).
pub fn callingbox_header(secrets: &[&str], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&callingbox_v1(secret, timestamp, body));
    }
    header
}

/// `v1,<base64>` of Standard Webhooks for one secret.
pub fn standard_v1(
    secret: &str,
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SecretError> {
    let key = standard_key(secret)?;
    let t = timestamp.to_string();
    let signature = hmac_sha256(
        &key,
        &[message_id.as_bytes(), b".", t.as_bytes(), b".", body],
    );
    Ok(format!("v1,{}", STANDARD.encode(signature)))
}

/// The `webhook-signature` header: one `v1,…` per secret, space-separated.
pub fn standard_header(
    secrets: &[&str],
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SecretError> {
    let signatures = secrets
        .iter()
        .map(|secret| standard_v1(secret, message_id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(signatures.join(" "))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the timestamp is outside the tolerance")]
    TimestampOutOfTolerance,
    #[error("no signature matches the secret")]
    NoMatch,
    #[error(transparent)]
    Secret(#[from] SecretError),
}

fn within_tolerance(timestamp: i64, now: i64, tolerance_seconds: i64) -> bool {
    (now - timestamp).abs() <= tolerance_seconds
}

/// Verifies a `CallingBox-Signature` header against one secret: any `v1` may match.
pub fn verify_callingbox(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => {
                timestamp = Some(value.parse::<i64>().map_err(|_| VerifyError::Malformed)?);
            }
            Some(("v1", value)) => candidates.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed)?;
    if !within_tolerance(timestamp, now, tolerance_seconds) {
        return Err(VerifyError::TimestampOutOfTolerance);
    }
    let t = timestamp.to_string();
    for candidate in candidates {
        let Ok(signature) = hex::decode(candidate) else {
            continue;
        };
        let mut mac =
            HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&signature).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

/// Verifies Standard Webhooks headers against one secret: any `v1,` may match.
pub fn verify_standard(
    secret: &str,
    message_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(), VerifyError> {
    let key = standard_key(secret)?;
    let timestamp: i64 = timestamp_header
        .trim()
        .parse()
        .map_err(|_| VerifyError::Malformed)?;
    if !within_tolerance(timestamp, now, tolerance_seconds) {
        return Err(VerifyError::TimestampOutOfTolerance);
    }
    let t = timestamp.to_string();
    for candidate in signature_header.split_whitespace() {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(signature) = STANDARD.decode(encoded) else {
            continue;
        };
        let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&signature).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const PAYLOAD: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn standard_webhooks_specification_vector() {
        assert_eq!(
            standard_v1(SECRET, MSG_ID, TIMESTAMP, PAYLOAD).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let header = standard_header(&[SECRET], MSG_ID, TIMESTAMP, PAYLOAD).unwrap();
        verify_standard(
            SECRET,
            MSG_ID,
            "1614265330",
            &header,
            PAYLOAD,
            TIMESTAMP,
            300,
        )
        .unwrap();
    }

    #[test]
    fn callingbox_signature_round_trips_and_lists_every_secret() {
        let other = "whsec_c2Vjb25kIHNlY3JldCBvZiB0aGlydHktdHdvIGJ5dGVzIQ==";
        let header = callingbox_header(&[other, SECRET], TIMESTAMP, PAYLOAD);
        assert!(header.starts_with("t=1614265330,v1="));
        assert_eq!(header.matches("v1=").count(), 2);
        verify_callingbox(SECRET, &header, PAYLOAD, TIMESTAMP, 300).unwrap();
        verify_callingbox(other, &header, PAYLOAD, TIMESTAMP, 300).unwrap();
        assert_eq!(
            verify_callingbox(SECRET, &header, b"tampered", TIMESTAMP, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify_callingbox(SECRET, &header, PAYLOAD, TIMESTAMP + 301, 300),
            Err(VerifyError::TimestampOutOfTolerance)
        );
    }

    #[test]
    fn standard_header_is_space_separated_and_rejects_bad_secrets() {
        let other = "whsec_c2Vjb25kIHNlY3JldCBvZiB0aGlydHktdHdvIGJ5dGVzIQ==";
        let header = standard_header(&[other, SECRET], MSG_ID, TIMESTAMP, PAYLOAD).unwrap();
        assert_eq!(header.split(' ').count(), 2);
        verify_standard(
            other,
            MSG_ID,
            "1614265330",
            &header,
            PAYLOAD,
            TIMESTAMP,
            300,
        )
        .unwrap();
        assert_eq!(
            standard_v1(
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                MSG_ID,
                TIMESTAMP,
                PAYLOAD
            ),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(
            standard_v1("whsec_!!!", MSG_ID, TIMESTAMP, PAYLOAD),
            Err(SecretError::NotBase64)
        );
    }
}
