//! Reading AMQP headers: JSON for display, and RabbitMQ's dead-lettering headers.

use chrono::{DateTime, Utc};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::Serialize;
use serde_json::{Map, Value};

/// A header table as JSON (timestamps as RFC 3339, byte arrays as lossy UTF-8).
pub fn table_to_json(table: &FieldTable) -> Value {
    let map: Map<String, Value> = table
        .inner()
        .iter()
        .map(|(key, value)| (key.to_string(), value_to_json(value)))
        .collect();
    Value::Object(map)
}

pub fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Float(f) => (*f).into(),
        AMQPValue::Double(f) => (*f).into(),
        AMQPValue::DecimalValue(d) => (f64::from(d.value) / 10f64.powi(i32::from(d.scale))).into(),
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::FieldArray(array) => {
            Value::Array(array.as_slice().iter().map(value_to_json).collect())
        }
        AMQPValue::Timestamp(seconds) => timestamp(*seconds)
            .map(|t| Value::String(t.to_rfc3339()))
            .unwrap_or_else(|| (*seconds).into()),
        AMQPValue::FieldTable(table) => table_to_json(table),
        AMQPValue::ByteArray(bytes) => {
            Value::String(String::from_utf8_lossy(bytes.as_slice()).into())
        }
        AMQPValue::Void => Value::Null,
    }
}

/// AMQP timestamps are whole seconds since the epoch.
pub fn timestamp(seconds: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(seconds).ok()?, 0)
}

fn get<'a>(table: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    table.inner().get(&ShortString::from(key))
}

pub fn string(table: &FieldTable, key: &str) -> Option<String> {
    match get(table, key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

pub fn integer(table: &FieldTable, key: &str) -> Option<i64> {
    match get(table, key)? {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// One entry of RabbitMQ's `x-death` header: a (queue, reason) the message was
/// dead-lettered from, how often, and where it had been published.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Death {
    pub queue: String,
    pub reason: String,
    pub count: i64,
    /// The exchange the message had been published to (not the dead-letter exchange).
    pub exchange: String,
    /// The routing keys it had been published with.
    pub routing_keys: Vec<String>,
    /// The first time it was dead-lettered from this queue for this reason.
    pub time: Option<DateTime<Utc>>,
}

/// The `x-death` entries, most recent first (RabbitMQ's order).
pub fn deaths(headers: &FieldTable) -> Vec<Death> {
    let Some(AMQPValue::FieldArray(entries)) = get(headers, "x-death") else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(table) => Some(Death {
                queue: string(table, "queue").unwrap_or_default(),
                reason: string(table, "reason").unwrap_or_default(),
                count: integer(table, "count").unwrap_or(0),
                exchange: string(table, "exchange").unwrap_or_default(),
                routing_keys: match get(table, "routing-keys") {
                    Some(AMQPValue::FieldArray(keys)) => keys
                        .as_slice()
                        .iter()
                        .filter_map(|key| match key {
                            AMQPValue::LongString(s) => {
                                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                            }
                            AMQPValue::ShortString(s) => Some(s.to_string()),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                },
                time: match get(table, "time") {
                    Some(AMQPValue::Timestamp(seconds)) => timestamp(*seconds),
                    _ => None,
                },
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString};

    use super::*;

    fn long(value: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(value))
    }

    fn death_headers() -> FieldTable {
        let mut entry = FieldTable::default();
        entry.insert("count".into(), AMQPValue::LongLongInt(1));
        entry.insert("reason".into(), long("delivery_limit"));
        entry.insert("queue".into(), long("ns.dialer"));
        entry.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        entry.insert("exchange".into(), long("ns.ringer.events"));
        let mut keys = FieldArray::default();
        keys.push(long("call.queued"));
        entry.insert("routing-keys".into(), AMQPValue::FieldArray(keys));
        let mut deaths = FieldArray::default();
        deaths.push(AMQPValue::FieldTable(entry));
        let mut headers = FieldTable::default();
        headers.insert("x-death".into(), AMQPValue::FieldArray(deaths));
        headers.insert("x-first-death-reason".into(), long("delivery_limit"));
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        headers
    }

    #[test]
    fn x_death_entries_are_read_with_their_fields() {
        let headers = death_headers();
        let deaths = deaths(&headers);
        assert_eq!(
            deaths,
            vec![Death {
                queue: "ns.dialer".into(),
                reason: "delivery_limit".into(),
                count: 1,
                exchange: "ns.ringer.events".into(),
                routing_keys: vec!["call.queued".into()],
                time: timestamp(1_700_000_000),
            }]
        );
        assert_eq!(
            string(&headers, "x-first-death-reason").as_deref(),
            Some("delivery_limit")
        );
        assert_eq!(integer(&headers, "x-delivery-count"), Some(3));
    }

    #[test]
    fn headers_render_as_json() {
        let json = table_to_json(&death_headers());
        assert_eq!(json["x-death"][0]["queue"], "ns.dialer");
        assert_eq!(json["x-death"][0]["time"], "2023-11-14T22:13:20+00:00");
        assert_eq!(json["x-death"][0]["routing-keys"][0], "call.queued");
        assert_eq!(json["x-delivery-count"], 3);
    }
}
