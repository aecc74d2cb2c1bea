//! Dead-letter queues (DESIGN.md rule 6): list them, show what is in one,
//! replay its messages to the queue they died in, purge it.
//!
//! Messages are read with `basic.get` and left unacknowledged: until this tool
//! acks one, it stays in the queue, and releasing the reader (nack with requeue,
//! then closing the channel) returns the rest untouched. If the tool dies, the
//! broker returns them when the connection drops.
//!
//! Each return counts as a redelivery on the quorum DLQ (`x-delivery-count`,
//! `x-acquired-count`). The DLQs are declared without a delivery limit, but
//! RabbitMQ 4.0 and later give such quorum queues a default limit of 20 and
//! drop a message past it (a DLQ has no dead-letter exchange of its own). So a
//! message that has been read [`REFRESH_AFTER_READS`] times is not returned but
//! re-enqueued: a fresh copy is published to the DLQ, confirmed, and only then is
//! the original acked. It moves to the tail of the DLQ with its counts reset;
//! its headers, `x-death` history included, are unchanged.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueuePurgeOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, message::Delivery};
use ringer::broker::{Broker, Names, WORK_QUEUES, check_confirmation};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::headers::{self, Death};

/// A dead-letter queue and the work queue it belongs to, both with the namespace applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterQueue {
    pub dlq: String,
    pub work_queue: String,
}

/// Finds the dead-letter queue an operator means: `dialer`, `dialer.dlq`, or
/// either with the namespace already in front.
pub fn resolve(names: &Names, queue: &str) -> anyhow::Result<DeadLetterQueue> {
    let bare = queue.strip_suffix(".dlq").unwrap_or(queue);
    WORK_QUEUES
        .iter()
        .find(|work| bare == **work || bare == names.queue(work))
        .map(|work| DeadLetterQueue {
            dlq: names.dead_letter_queue(work),
            work_queue: names.queue(work),
        })
        .with_context(|| {
            format!(
                "{queue:?} is not a dead-letter queue; expected one of {}",
                WORK_QUEUES
                    .iter()
                    .map(|work| format!("{work}.dlq"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Every dead-letter queue of the namespace.
pub fn all(names: &Names) -> Vec<DeadLetterQueue> {
    names
        .dead_letter_queues()
        .into_iter()
        .map(|(work_queue, dlq)| DeadLetterQueue { dlq, work_queue })
        .collect()
}

/// How many ready messages `queue` holds (a passive declare, which fails if it does not exist).
async fn depth(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    ringer::broker::ready_messages(channel, queue)
        .await
        .with_context(|| {
            format!("queue {queue} does not exist (is RINGER_NAMESPACE / --namespace right?)")
        })
}

/// One line of `dlq list`.
#[derive(Debug, Clone, Serialize)]
pub struct DlqSummary {
    pub queue: String,
    pub work_queue: String,
    /// Ready messages (messages another reader holds right now are not counted).
    pub depth: u32,
    /// When the message at the head was dead-lettered.
    pub oldest_dead_lettered_at: Option<DateTime<Utc>>,
    pub oldest_age_seconds: Option<f64>,
}

/// Depth and oldest message of every dead-letter queue.
pub async fn list(broker: &Broker) -> anyhow::Result<Vec<DlqSummary>> {
    let mut summaries = Vec::new();
    for queue in all(broker.names()) {
        let mut reader = DlqReader::open(broker, queue.clone(), None).await?;
        let depth = reader.depth;
        let oldest = if depth > 0 {
            reader
                .next()
                .await?
                .and_then(|letter| letter.dead_lettered_at)
        } else {
            None
        };
        reader.release().await?;
        summaries.push(DlqSummary {
            queue: queue.dlq,
            work_queue: queue.work_queue,
            depth,
            oldest_dead_lettered_at: oldest,
            oldest_age_seconds: oldest.map(age_seconds),
        });
    }
    Ok(summaries)
}

fn age_seconds(at: DateTime<Utc>) -> f64 {
    (Utc::now() - at).num_milliseconds() as f64 / 1000.0
}

/// The call a dead letter is about, as the database has it now.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CallState {
    pub id: Uuid,
    pub org_id: Uuid,
    pub status: String,
    pub ended_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// One message of a dead-letter queue, described.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// 1 = the head of the queue.
    pub position: usize,
    pub message_id: Option<String>,
    /// The queue it was dead-lettered from (its `x-death` entry for this DLQ's
    /// work queue, else the most recent entry).
    pub original_queue: Option<String>,
    /// The exchange and routing keys it had been published with.
    pub original_exchange: Option<String>,
    pub original_routing_keys: Vec<String>,
    /// Why it was dead-lettered from `original_queue`: `delivery_limit` (failed
    /// too often), `rejected` (a consumer declared it poison), `expired`,
    /// `maxlen`; or the `x-ringer-reason` a service gave when it dead-lettered
    /// the message itself.
    pub reason: Option<String>,
    pub first_death_reason: Option<String>,
    pub first_death_queue: Option<String>,
    /// The first time it was dead-lettered from `original_queue`.
    pub dead_lettered_at: Option<DateTime<Utc>>,
    pub age_seconds: Option<f64>,
    /// How often it was dead-lettered from `original_queue` (a replay that
    /// failed again adds one).
    pub death_count: i64,
    /// Deliveries its consumer got in all: for `delivery_limit` deaths, the
    /// queue's delivery limit plus one, times `death_count`. Unknown for other
    /// reasons: quorum queues do not carry the work queue's delivery count into
    /// the dead letter, and a `rejected` message may have failed transiently first.
    pub attempts: Option<i64>,
    /// `x-delivery-count` as the DLQ reports it: how often the message was
    /// read from the dead-letter queue and returned (by `dlq show`, for instance).
    pub dlq_delivery_count: Option<i64>,
    pub deaths: Vec<Death>,
    pub headers: Value,
    pub content_type: Option<String>,
    pub published_at: Option<DateTime<Utc>>,
    /// The body: JSON when it parses, else the text as received.
    pub payload: Value,
    pub payload_bytes: usize,
    pub call_id: Option<Uuid>,
    /// Filled in by [`show`] from the database.
    pub call: Option<CallState>,
    #[serde(skip)]
    body: Vec<u8>,
    #[serde(skip)]
    properties: BasicProperties,
}

impl DeadLetter {
    fn from_delivery(
        position: usize,
        queue: &DeadLetterQueue,
        delivery_limit: Option<u32>,
        delivery: &Delivery,
    ) -> Self {
        let properties = delivery.properties.clone();
        let header_table = properties.headers().clone().unwrap_or_default();
        let deaths = headers::deaths(&header_table);
        let death = deaths
            .iter()
            .find(|death| death.queue == queue.work_queue)
            .or_else(|| deaths.first());
        let payload = serde_json::from_slice::<Value>(&delivery.data)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&delivery.data).into()));
        let dead_lettered_at = death.and_then(|death| death.time);
        Self {
            position,
            message_id: properties.message_id().as_ref().map(ToString::to_string),
            original_queue: death.map(|death| death.queue.clone()),
            original_exchange: death.map(|death| death.exchange.clone()),
            original_routing_keys: death
                .map(|death| death.routing_keys.clone())
                .unwrap_or_default(),
            // Services that dead-letter a message themselves (the webhook
            // dispatcher's exhausted deliveries) publish it with this header.
            reason: death
                .map(|death| death.reason.clone())
                .or_else(|| headers::string(&header_table, "x-ringer-reason")),
            first_death_reason: headers::string(&header_table, "x-first-death-reason"),
            first_death_queue: headers::string(&header_table, "x-first-death-queue"),
            dead_lettered_at,
            age_seconds: dead_lettered_at.map(age_seconds),
            death_count: death.map_or(0, |death| death.count),
            attempts: death
                .filter(|death| death.reason == "delivery_limit")
                .zip(delivery_limit)
                .map(|(death, limit)| death.count * (i64::from(limit) + 1)),
            dlq_delivery_count: headers::integer(&header_table, "x-delivery-count"),
            call_id: call_id_of(&payload),
            deaths,
            headers: headers::table_to_json(&header_table),
            content_type: properties.content_type().as_ref().map(ToString::to_string),
            published_at: properties.timestamp().and_then(headers::timestamp),
            payload,
            payload_bytes: delivery.data.len(),
            call: None,
            body: delivery.data.clone(),
            properties,
        }
    }
}

/// The call a message is about: `call_id` at the top (events), or `call.id`.
pub fn call_id_of(payload: &Value) -> Option<Uuid> {
    payload
        .get("call_id")
        .or_else(|| payload.get("call").and_then(|call| call.get("id")))
        .and_then(Value::as_str)
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// Takes messages from a dead-letter queue without acknowledging them.
pub struct DlqReader {
    broker: Broker,
    channel: Channel,
    pub queue: DeadLetterQueue,
    /// Ready messages when the reader opened.
    pub depth: u32,
    /// The work queue's `x-delivery-limit` (RINGER_DELIVERY_LIMIT of the
    /// services), to count attempts (AMQP cannot read a queue's arguments).
    delivery_limit: Option<u32>,
    held: Vec<Option<Delivery>>,
}

/// Reads of one message from a DLQ after which it is re-enqueued rather than
/// returned: well below RabbitMQ 4's default quorum delivery limit of 20.
pub const REFRESH_AFTER_READS: i64 = 10;

/// How often a message has been handed out by the DLQ before this read.
fn times_read(properties: &BasicProperties) -> i64 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    ["x-delivery-count", "x-acquired-count"]
        .iter()
        .filter_map(|key| headers::integer(headers, key))
        .max()
        .unwrap_or(0)
}

/// What [`DlqReader::release`] did with the messages it still held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Released {
    /// Returned to their place in the queue.
    pub returned: u32,
    /// Re-enqueued at the tail with fresh delivery counts.
    pub refreshed: u32,
}

impl DlqReader {
    pub async fn open(
        broker: &Broker,
        queue: DeadLetterQueue,
        delivery_limit: Option<u32>,
    ) -> anyhow::Result<Self> {
        let channel = broker.channel().await?;
        let depth = depth(&channel, &queue.dlq).await?;
        Ok(Self {
            broker: broker.clone(),
            channel,
            queue,
            depth,
            delivery_limit,
            held: Vec::new(),
        })
    }

    /// The next message, or None when the queue has no more ready messages.
    /// The reader holds it until [`ack`](Self::ack) or [`release`](Self::release).
    pub async fn next(&mut self) -> anyhow::Result<Option<DeadLetter>> {
        let got = self
            .channel
            .basic_get(
                self.queue.dlq.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .with_context(|| format!("reading {}", self.queue.dlq))?;
        let Some(got) = got else { return Ok(None) };
        let letter = DeadLetter::from_delivery(
            self.held.len() + 1,
            &self.queue,
            self.delivery_limit,
            &got.delivery,
        );
        self.held.push(Some(got.delivery));
        Ok(Some(letter))
    }

    /// Removes a message for good (after it was safely republished).
    pub async fn ack(&mut self, letter: &DeadLetter) -> anyhow::Result<()> {
        let delivery = self
            .held
            .get_mut(letter.position - 1)
            .and_then(Option::take)
            .context("this message is not held by the reader")?;
        delivery
            .ack(BasicAckOptions::default())
            .await
            .with_context(|| format!("acknowledging a message on {}", self.queue.dlq))?;
        Ok(())
    }

    /// Returns every message still held to the queue, in order (re-enqueuing
    /// those read too often, see the module notes), and closes the channel.
    pub async fn release(self) -> anyhow::Result<Released> {
        let mut released = Released::default();
        let mut worn = Vec::new();
        for delivery in self.held.into_iter().flatten() {
            if times_read(&delivery.properties) + 1 >= REFRESH_AFTER_READS {
                worn.push(delivery);
                continue;
            }
            delivery
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
                .context("returning a message to its dead-letter queue")?;
            released.returned += 1;
        }
        if !worn.is_empty() {
            let publisher = confirm_channel(&self.broker).await?;
            for delivery in worn {
                let copied = publish_confirmed(
                    &publisher,
                    &self.queue.dlq,
                    &delivery.data,
                    fresh_properties(&delivery.properties),
                )
                .await;
                // Without a confirmed copy, the original goes back as usual.
                let (settled, counter) = match copied {
                    Ok(()) => (
                        delivery.ack(BasicAckOptions::default()).await,
                        &mut released.refreshed,
                    ),
                    Err(_) => (
                        delivery
                            .nack(BasicNackOptions {
                                multiple: false,
                                requeue: true,
                            })
                            .await,
                        &mut released.returned,
                    ),
                };
                settled.context("settling a message read too often")?;
                *counter += 1;
            }
            let _ = publisher.close(200, "done".into()).await;
        }
        // A quorum queue applies returns asynchronously (a few milliseconds):
        // wait until it counts them again, so that the next command (a replay
        // right after a show) sees every message. Bounded, in case another
        // reader takes them meanwhile.
        let expected = released.returned + released.refreshed;
        let deadline = Instant::now() + Duration::from_secs(5);
        while expected > 0 && Instant::now() < deadline {
            if depth(&self.channel, &self.queue.dlq).await? >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Closing returns anything a failed nack left behind.
        self.channel
            .close(200, "done".into())
            .await
            .context("closing the reading channel")?;
        Ok(released)
    }
}

/// What `dlq show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ShowReport {
    pub queue: String,
    pub work_queue: String,
    pub depth: u32,
    pub messages: Vec<DeadLetter>,
    /// Messages read so often that they were re-enqueued at the tail rather
    /// than returned to their place (see the module notes).
    pub moved_to_tail: u32,
    /// Why calls could not be looked up, if they could not.
    pub call_lookup_error: Option<String>,
}

/// Describes up to `limit` messages from the head of `queue`, leaving them in place,
/// with the current state of the calls they are about when `pool` is given.
pub async fn show(
    broker: &Broker,
    pool: Option<&PgPool>,
    queue: DeadLetterQueue,
    limit: usize,
    delivery_limit: u32,
) -> anyhow::Result<ShowReport> {
    let mut reader = DlqReader::open(broker, queue.clone(), Some(delivery_limit)).await?;
    let depth = reader.depth;
    let mut messages = Vec::new();
    let read = async {
        while messages.len() < limit {
            match reader.next().await? {
                Some(letter) => messages.push(letter),
                None => break,
            }
        }
        anyhow::Ok(())
    }
    .await;
    let released = reader.release().await?;
    read?;

    let mut call_lookup_error = None;
    if let Some(pool) = pool {
        let ids: Vec<Uuid> = messages.iter().filter_map(|m| m.call_id).collect();
        if !ids.is_empty() {
            match find_calls(pool, &ids).await {
                Ok(calls) => {
                    for message in &mut messages {
                        message.call = message
                            .call_id
                            .and_then(|id| calls.iter().find(|call| call.id == id).cloned());
                    }
                }
                Err(error) => call_lookup_error = Some(format!("{error:#}")),
            }
        }
    }
    Ok(ShowReport {
        queue: queue.dlq,
        work_queue: queue.work_queue,
        depth,
        messages,
        moved_to_tail: released.refreshed,
        call_lookup_error,
    })
}

async fn find_calls(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<CallState>> {
    sqlx::query_as(
        "SELECT id, org_id, status, ended_at, completed_at, updated_at FROM calls WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// A new channel in confirm mode.
async fn confirm_channel(broker: &Broker) -> anyhow::Result<Channel> {
    let channel = broker.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// A confirm-mode channel that puts dead letters back in their work queue.
pub struct Republisher {
    channel: Channel,
}

impl Republisher {
    pub async fn open(broker: &Broker) -> anyhow::Result<Self> {
        Ok(Self {
            channel: confirm_channel(broker).await?,
        })
    }

    /// Publishes `letter` to `queue` and returns once the broker confirmed it
    /// was stored there.
    ///
    /// Through the default exchange, routed by queue name, rather than to the
    /// events exchange with the original routing key: `internal.call.ended`
    /// feeds both extractor and billing, so republishing it on the topic
    /// exchange would hand a message only one of them failed to both again.
    pub async fn republish(&self, letter: &DeadLetter, queue: &str) -> anyhow::Result<()> {
        publish_confirmed(
            &self.channel,
            queue,
            &letter.body,
            fresh_properties(&letter.properties),
        )
        .await
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}

/// Publishes to `queue` through the default exchange and waits for the
/// broker's confirm. `mandatory`, so a missing queue is an error (the message
/// comes back), never a silent drop.
async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> anyhow::Result<()> {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await
        .with_context(|| format!("publishing to {queue}"))?;
    let confirmation = confirm
        .await
        .with_context(|| format!("waiting for the broker to confirm the message to {queue}"))?;
    check_confirmation(confirmation, queue)?;
    Ok(())
}

/// The message's own properties and headers, minus the broker's delivery
/// counters (`x-delivery-count`, `x-acquired-count`): they count deliveries
/// from the DLQ (our reads), and carried along they would make a fresh
/// delivery look like a retry. `x-death` stays, so a message that dies again
/// shows its whole history.
fn fresh_properties(properties: &BasicProperties) -> BasicProperties {
    let mut properties = properties.clone();
    if let Some(headers) = properties.headers().clone() {
        let mut kept = FieldTable::default();
        for (key, value) in headers.inner() {
            if !matches!(key.as_str(), "x-delivery-count" | "x-acquired-count") {
                kept.insert(ShortString::from(key.as_str()), value.clone());
            }
        }
        properties = properties.with_headers(kept);
    }
    properties
}

/// Which messages `dlq replay` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    /// Every message with this message id.
    Id(String),
}

/// One message `dlq replay` handled.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    pub message_id: Option<String>,
    pub call_id: Option<Uuid>,
    pub reason: Option<String>,
    pub to_queue: String,
    /// `replayed`, or `would replay` on a dry run.
    pub outcome: &'static str,
}

/// A message left in the dead-letter queue, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub message_id: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub queue: String,
    pub work_queue: String,
    pub dry_run: bool,
    pub replayed: Vec<Replayed>,
    pub skipped: Vec<Skipped>,
}

/// Puts the chosen messages of `queue` back in its work queue: each is
/// republished and confirmed before it is acked on the dead-letter queue, so an
/// interruption can duplicate a message (consumers are idempotent) but never
/// lose one. Messages not chosen are returned untouched.
pub async fn replay(
    broker: &Broker,
    queue: DeadLetterQueue,
    selection: &Selection,
    dry_run: bool,
) -> anyhow::Result<ReplayReport> {
    let mut reader = DlqReader::open(broker, queue.clone(), None).await?;
    let republisher = if dry_run {
        None
    } else {
        Some(Republisher::open(broker).await?)
    };
    let mut report = ReplayReport {
        queue: queue.dlq.clone(),
        work_queue: queue.work_queue.clone(),
        dry_run,
        replayed: Vec::new(),
        skipped: Vec::new(),
    };
    let outcome = replay_held(&mut reader, republisher.as_ref(), selection, &mut report).await;
    let released = reader.release().await;
    if let Some(republisher) = republisher {
        republisher.close().await;
    }
    outcome.with_context(|| {
        format!(
            "replay stopped after {} message(s); the rest are still in {}",
            report.replayed.len(),
            queue.dlq
        )
    })?;
    released?;
    if let Selection::Id(id) = selection
        && report.replayed.is_empty()
    {
        anyhow::bail!("no message with id {id} in {}", queue.dlq);
    }
    Ok(report)
}

async fn replay_held(
    reader: &mut DlqReader,
    republisher: Option<&Republisher>,
    selection: &Selection,
    report: &mut ReplayReport,
) -> anyhow::Result<()> {
    // Only the messages present at the start: a replayed message that fails
    // again lands at the tail while we work and must not be replayed in a loop.
    for _ in 0..reader.depth {
        let Some(letter) = reader.next().await? else {
            break;
        };
        if let Selection::Id(id) = selection
            && letter.message_id.as_deref() != Some(id.as_str())
        {
            continue;
        }
        // A dead-letter queue only receives from its own work queue (the
        // dead-letter routing key is that queue's name): anything else got here
        // by hand and is not ours to route.
        if let Some(original) = &letter.original_queue
            && *original != reader.queue.work_queue
        {
            report.skipped.push(Skipped {
                message_id: letter.message_id.clone(),
                reason: format!(
                    "dead-lettered from {original}, not {}",
                    reader.queue.work_queue
                ),
            });
            continue;
        }
        let to_queue = reader.queue.work_queue.clone();
        let outcome = match republisher {
            None => "would replay",
            Some(republisher) => {
                republisher.republish(&letter, &to_queue).await?;
                reader.ack(&letter).await?;
                "replayed"
            }
        };
        report.replayed.push(Replayed {
            message_id: letter.message_id.clone(),
            call_id: letter.call_id,
            reason: letter.reason.clone(),
            to_queue,
            outcome,
        });
    }
    Ok(())
}

/// Ready messages in `queue` (what a purge would delete).
pub async fn depth_of(broker: &Broker, queue: &DeadLetterQueue) -> anyhow::Result<u32> {
    let channel = broker.channel().await?;
    let depth = depth(&channel, &queue.dlq).await;
    let _ = channel.close(200, "done".into()).await;
    depth
}

/// Deletes every ready message of `queue`; returns how many.
pub async fn purge(broker: &Broker, queue: &DeadLetterQueue) -> anyhow::Result<u32> {
    let channel = broker.channel().await?;
    depth(&channel, &queue.dlq).await?;
    let purged = channel
        .queue_purge(queue.dlq.as_str().into(), QueuePurgeOptions::default())
        .await
        .with_context(|| format!("purging {}", queue.dlq))?;
    let _ = channel.close(200, "done".into()).await;
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_resolve_with_or_without_suffix_and_namespace() {
        let names = Names::new("ns");
        let expected = DeadLetterQueue {
            dlq: "ns.dialer.dlq".into(),
            work_queue: "ns.dialer".into(),
        };
        for given in ["dialer", "dialer.dlq", "ns.dialer", "ns.dialer.dlq"] {
            assert_eq!(resolve(&names, given).unwrap(), expected, "{given}");
        }
        assert_eq!(
            resolve(&Names::new(""), "webhooks.deliveries.dlq")
                .unwrap()
                .work_queue,
            "webhooks.deliveries"
        );
        let error = resolve(&names, "nope").unwrap_err().to_string();
        assert!(error.contains("dialer.dlq"), "{error}");
    }

    #[test]
    fn the_call_id_comes_from_the_event_or_the_call() {
        let id = Uuid::now_v7();
        assert_eq!(call_id_of(&serde_json::json!({"call_id": id})), Some(id));
        assert_eq!(
            call_id_of(&serde_json::json!({"call": {"id": id}})),
            Some(id)
        );
        assert_eq!(call_id_of(&serde_json::json!({"delivery_id": id})), None);
        assert_eq!(call_id_of(&Value::String("garbage".into())), None);
    }

    #[test]
    fn replay_drops_only_the_delivery_counters() {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-delivery-count".into(),
            lapin::types::AMQPValue::LongLongInt(4),
        );
        headers.insert(
            "x-acquired-count".into(),
            lapin::types::AMQPValue::LongLongInt(4),
        );
        headers.insert(
            "traceparent".into(),
            lapin::types::AMQPValue::LongString("00-abc-def-01".into()),
        );
        let properties = BasicProperties::default()
            .with_message_id("m1".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let replayed = fresh_properties(&properties);
        let kept = replayed.headers().clone().unwrap();
        assert!(!kept.contains_key("x-delivery-count"));
        assert!(!kept.contains_key("x-acquired-count"));
        assert!(kept.contains_key("traceparent"));
        assert_eq!(replayed.message_id().as_ref().unwrap().as_str(), "m1");
        assert_eq!(*replayed.delivery_mode(), Some(2));
    }
}
