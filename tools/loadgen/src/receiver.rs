//! The built-in webhook receiver: answers 200 to every request and records it
//! after checking both signatures with HMAC code written here, independent
//! of ringer's signing module.
//!
//! Routes: `POST /hooks/inline/{org_id}` (a call's `webhook_url`, signed with the
//! org's default secret) and `POST /hooks/endpoint/{token}` (an endpoint,
//! signed with the secret its creation returned).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit::{INLINE, Received};

/// How far a signature's timestamp may be from the receiver's clock.
const TIMESTAMP_TOLERANCE_SECONDS: i64 = 300;

#[derive(Debug, Clone)]
struct Destination {
    /// The audit's name of the destination: [`INLINE`] or the endpoint id.
    name: String,
    secret: String,
}

#[derive(Default)]
struct Inner {
    destinations: RwLock<HashMap<String, Destination>>,
    received: Mutex<Vec<Received>>,
}

/// A running receiver.
#[derive(Clone)]
pub struct Receiver {
    pub base_url: String,
    started: Instant,
    inner: Arc<Inner>,
}

impl Receiver {
    /// Binds `addr` (port 0 for any) and serves until `shutdown`.
    pub async fn start(
        addr: SocketAddr,
        started: Instant,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let inner = Arc::new(Inner::default());
        let receiver = Receiver {
            base_url: String::new(),
            started,
            inner,
        };
        let app = axum::Router::new()
            .route("/hooks/{kind}/{key}", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
        Ok(Receiver {
            base_url: format!("http://{bound}"),
            ..receiver
        })
    }

    /// The `webhook_url` for calls of `org`.
    pub fn inline_url(&self, org: Uuid) -> String {
        format!("{}/hooks/inline/{org}", self.base_url)
    }

    pub fn add_inline(&self, org: Uuid, secret: String) {
        self.insert(
            format!("inline/{org}"),
            Destination {
                name: INLINE.to_owned(),
                secret,
            },
        );
    }

    /// A fresh URL for an endpoint about to be created, and its key.
    pub fn endpoint_url(&self) -> (String, String) {
        let token = Uuid::new_v4().simple().to_string();
        (
            format!("{}/hooks/endpoint/{token}", self.base_url),
            format!("endpoint/{token}"),
        )
    }

    pub fn add_endpoint(&self, key: String, endpoint_id: String, secret: String) {
        self.insert(
            key,
            Destination {
                name: endpoint_id,
                secret,
            },
        );
    }

    fn insert(&self, key: String, destination: Destination) {
        self.inner
            .destinations
            .write()
            .expect("receiver lock")
            .insert(key, destination);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().expect("receiver lock").clone()
    }

    pub fn count(&self) -> usize {
        self.inner.received.lock().expect("receiver lock").len()
    }

    /// Distinct delivery ids received so far.
    pub fn distinct(&self) -> usize {
        let received = self.inner.received.lock().expect("receiver lock");
        let ids: std::collections::HashSet<Option<Uuid>> =
            received.iter().map(|r| r.delivery_id).collect();
        ids.len()
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    Path((kind, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at_ms = receiver.started.elapsed().as_millis() as u64;
    let destination = receiver
        .inner
        .destinations
        .read()
        .expect("receiver lock")
        .get(&format!("{kind}/{key}"))
        .cloned();
    let mut problems = Vec::new();
    let (name, callingbox_ok, standard_ok) = match &destination {
        Some(destination) => (
            destination.name.clone(),
            verify_callingbox(&headers, &body, &destination.secret).unwrap_or_else(|p| {
                problems.push(p);
                false
            }),
            verify_standard(&headers, &body, &destination.secret).unwrap_or_else(|p| {
                problems.push(p);
                false
            }),
        ),
        None => {
            problems.push(format!("no destination {kind}/{key}"));
            (format!("{kind}/{key}"), false, false)
        }
    };
    let json: Value = serde_json::from_slice(&body).unwrap_or_else(|error| {
        problems.push(format!("body is not JSON: {error}"));
        Value::Null
    });
    let event_type = json["type"].as_str().unwrap_or("").to_owned();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("callingbox-event-type") != Some(event_type.as_str()) {
        problems.push(format!(
            "CallingBox-Event-Type {:?} differs from the body's type {event_type:?}",
            header("callingbox-event-type")
        ));
    }
    let call = json["data"]["call"].clone();
    let call_id = call["id"].as_str().and_then(|id| Uuid::parse_str(id).ok());
    if header("x-callingbox-call-id") != call["id"].as_str() {
        problems.push("X-CallingBox-Call-Id differs from the body's call id".to_owned());
    }
    let delivery_id = header("callingbox-event-id").and_then(|id| Uuid::parse_str(id).ok());
    if header("webhook-id") != header("callingbox-event-id") {
        problems.push("webhook-id differs from CallingBox-Event-Id".to_owned());
    }
    let mut received = receiver.inner.received.lock().expect("receiver lock");
    let arrival = received.len() as u64;
    received.push(Received {
        arrival,
        at_ms,
        destination: name,
        delivery_id,
        event_type,
        call_id,
        call,
        callingbox_signature_ok: callingbox_ok,
        standard_signature_ok: standard_ok,
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
    });
    StatusCode::OK
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn timestamp_is_fresh(timestamp: i64) -> bool {
    let now = chrono::Utc::now().timestamp();
    (now - timestamp).abs() <= TIMESTAMP_TOLERANCE_SECONDS
}

/// `CallingBox-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
/// keyed with the whole secret string.
pub fn verify_callingbox(headers: &HeaderMap, body: &[u8], secret: &str) -> Result<bool, String> {
    let header = headers
        .get("callingbox-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or("no CallingBox-Signature header")?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = Some(value.to_owned()),
            Some(("v1", value)) => signatures.push(value.to_owned()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("CallingBox-Signature has no t=")?;
    let unix: i64 = timestamp
        .parse()
        .map_err(|_| format!("CallingBox-Signature t={timestamp} is not a number"))?;
    if !timestamp_is_fresh(unix) {
        return Err(format!("CallingBox-Signature t={unix} is stale"));
    }
    let expected = hex::encode(hmac_sha256(
        secret.as_bytes(),
        &[timestamp.as_bytes(), b".", body],
    ));
    if signatures.contains(&expected) {
        Ok(true)
    } else {
        Err("CallingBox-Signature does not match".to_owned())
    }
}

/// Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<ts>.<body>")>`,
/// keyed with the base64-decoded part of the secret after `whsec_`.
pub fn verify_standard(headers: &HeaderMap, body: &[u8], secret: &str) -> Result<bool, String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(format!("no {name} header"))
    };
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    let signatures = header("webhook-signature")?;
    let unix: i64 = timestamp
        .parse()
        .map_err(|_| format!("webhook-timestamp {timestamp} is not a number"))?;
    if !timestamp_is_fresh(unix) {
        return Err(format!("webhook-timestamp {unix} is stale"));
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| "the secret is not base64 after whsec_".to_owned())?;
    let expected = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(
        &key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    ));
    let matches = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected);
    if matches {
        Ok(true)
    } else {
        Err("webhook-signature does not match".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// The example of the Standard Webhooks specification.
    #[test]
    fn the_standard_webhooks_example_verifies() {
        let body = br#"{"test": 2432232314}"#;
        let mut headers = HeaderMap::new();
        headers.insert(
            "webhook-id",
            HeaderValue::from_static("msg_p5jXN8AQM9LWM0D4loKWxJek"),
        );
        let now = chrono::Utc::now().timestamp().to_string();
        headers.insert("webhook-timestamp", HeaderValue::from_str(&now).unwrap());
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let signature = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(
            &key,
            &[b"msg_p5jXN8AQM9LWM0D4loKWxJek.", now.as_bytes(), b".", body],
        ));
        headers.insert(
            "webhook-signature",
            HeaderValue::from_str(&format!("v1,bogus v1,{signature}")).unwrap(),
        );
        assert_eq!(verify_standard(&headers, body, SECRET), Ok(true));
        assert!(verify_standard(&headers, b"{}", SECRET).is_err());
    }

    #[test]
    fn callingbox_signatures_are_keyed_with_the_whole_secret() {
        let body = b"{\"id\":1}";
        let now = chrono::Utc::now().timestamp().to_string();
        let good = hex::encode(hmac_sha256(
            SECRET.as_bytes(),
            &[now.as_bytes(), b".", body],
        ));
        let mut headers = HeaderMap::new();
        headers.insert(
            "callingbox-signature",
            HeaderValue::from_str(&format!("t={now},v1=00ff,v1={good}")).unwrap(),
        );
        assert_eq!(verify_callingbox(&headers, body, SECRET), Ok(true));
        assert!(verify_callingbox(&headers, body, "whsec_other").is_err());
        headers.insert(
            "callingbox-signature",
            HeaderValue::from_str(&format!("t=1000,v1={good}")).unwrap(),
        );
        assert!(verify_callingbox(&headers, body, SECRET).is_err());
    }
}
