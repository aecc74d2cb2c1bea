//! The body of every delivery: `{id, type, created, api_version, data: {call}}`,
//! and the headers that go with it.

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use ringer::call::Call;
use ringer::events::Event;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const API_VERSION: &str = "2026-04";
pub const USER_AGENT: &str = concat!("ringer-webhooks/", env!("CARGO_PKG_VERSION"));

/// The webhook body. Field order is the documented one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The event id.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Unix seconds.
    pub created: i64,
    pub api_version: String,
    pub data: EnvelopeData,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvelopeData {
    /// The Call as of the event.
    pub call: Call,
}

impl Envelope {
    pub fn for_event(event: &Event) -> Self {
        Self {
            id: event.id,
            event_type: event.event_type.as_str().to_owned(),
            created: event.occurred_at.timestamp(),
            api_version: API_VERSION.to_owned(),
            data: EnvelopeData {
                call: event.call.clone(),
            },
        }
    }
}

/// The exact bytes sent for a stored envelope (typed, so the field order is
/// the documented one and every retry sends the same bytes).
pub fn body_bytes(stored: &serde_json::Value) -> Vec<u8> {
    match serde_json::from_value::<Envelope>(stored.clone()) {
        Ok(envelope) => serde_json::to_vec(&envelope),
        Err(_) => serde_json::to_vec(stored),
    }
    .expect("JSON values always serialize")
}

/// What the headers of one attempt are made of.
#[derive(Debug, Clone)]
pub struct Signing<'a> {
    pub delivery_id: Uuid,
    pub event_type: &'a str,
    pub call_id: Uuid,
    pub timestamp: i64,
    /// Every valid secret, newest first.
    pub secrets: &'a [String],
}

/// `CallingBox-Signature`, the Standard Webhooks headers and the event headers.
pub fn headers(signing: &Signing<'_>, body: &[u8]) -> Result<HeaderMap, String> {
    let secrets: Vec<&str> = signing.secrets.iter().map(String::as_str).collect();
    let delivery_id = signing.delivery_id.to_string();
    let callingbox = ringer::signing::callingbox_header(&secrets, signing.timestamp, body);
    let standard =
        ringer::signing::standard_header(&secrets, &delivery_id, signing.timestamp, body)
            .map_err(|error| format!("cannot sign: {error}"))?;
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| -> Result<(), String> {
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("header {name} cannot carry {value:?}"))?;
        headers.insert(HeaderName::from_static(name), value);
        Ok(())
    };
    put("callingbox-signature", &callingbox)?;
    put("webhook-id", &delivery_id)?;
    put("webhook-timestamp", &signing.timestamp.to_string())?;
    put("webhook-signature", &standard)?;
    put("callingbox-event-id", &delivery_id)?;
    put("callingbox-event-type", signing.event_type)?;
    put("x-callingbox-event", signing.event_type)?;
    put("x-callingbox-call-id", &signing.call_id.to_string())?;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(headers)
}
