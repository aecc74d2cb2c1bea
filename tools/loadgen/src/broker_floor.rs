//! `loadgen broker-floor`: what RabbitMQ alone does with the messages of a
//! call, as a same-run baseline for the end-to-end figure.
//!
//! An answered call publishes seven events through the outbox relays (four
//! public, three internal) and RabbitMQ delivers seven copies of them to work
//! queues (dialer, extractor, billing, four to `webhooks.events`); the two
//! internal events nobody binds come back unrouted. This replays exactly that
//! traffic on the real topology of a namespace, with nothing else: persistent
//! messages of an event's size, confirmed in batches like a relay, consumed
//! with the services' prefetch and acknowledged one by one. No database, no
//! HTTP, no service code, so the calls per second it reaches is the ceiling
//! the broker alone puts on the whole system on this machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures_lite::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use ringer::broker::{self, Broker, Names, Outgoing};
use ringer::events::EventType;
use serde::Serialize;
use uuid::Uuid;

/// The events of an answered call, in the order its services publish them.
pub const CALL_EVENTS: [EventType; 7] = [
    EventType::CallQueued,
    EventType::CallRinging,
    EventType::CallAnswered,
    EventType::CallEnded,
    EventType::ResultReady,
    EventType::CallBilled,
    EventType::CallCompleted,
];

/// The queues that receive a call's events (dialer, extractor, billing, fan-out).
const CONSUMED_QUEUES: [&str; 4] = [
    broker::DIALER_QUEUE,
    broker::EXTRACTOR_QUEUE,
    broker::BILLING_QUEUE,
    broker::WEBHOOK_EVENTS_QUEUE,
];

/// Size of an event's JSON in the outbox during `make bench` (1,259–1,396 bytes).
const PAYLOAD_BYTES: usize = 1_330;

#[derive(Debug, Clone, Args)]
pub struct BrokerFloorArgs {
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Namespace of the topology to declare, use and delete (a fresh one by default).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Calls to replay (seven publishes and seven deliveries each).
    #[arg(long, default_value_t = 3000)]
    pub calls: u64,
    /// Publishing connections, one per service that relays events.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Messages a publisher sends before it waits for their confirms (a relay batch).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Unacknowledged deliveries each consumer may hold (the services' default).
    #[arg(long, default_value_t = 32)]
    pub prefetch: u16,
}

#[derive(Debug, Serialize)]
pub struct FloorReport {
    pub calls: u64,
    pub publishes: u64,
    pub deliveries: u64,
    pub seconds: f64,
    pub calls_per_second: f64,
}

/// Runs the replay and deletes its topology, whatever the outcome.
pub async fn run(args: BrokerFloorArgs) -> anyhow::Result<FloorReport> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| format!("floor{}", &Uuid::new_v4().simple().to_string()[..8]));
    let names = Names::new(&namespace);
    let admin = Broker::connect(&args.amqp_url, names.clone(), "loadgen-broker-floor")
        .await
        .context("connecting to RabbitMQ (AMQP_URL)")?;
    let channel = admin.channel().await?;
    broker::declare_topology(&channel, &names, broker::DEAD_LETTER_DELIVERY_LIMIT, 0.0).await?;
    let outcome = replay(&args, &names).await;
    broker::delete_topology(&channel, &names).await?;
    admin.close().await;
    outcome
}

async fn replay(args: &BrokerFloorArgs, names: &Names) -> anyhow::Result<FloorReport> {
    let publishes = args.calls * CALL_EVENTS.len() as u64;
    let expected: u64 = args.calls * deliveries_per_call();
    let delivered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());

    let mut consumers = Vec::new();
    for queue in CONSUMED_QUEUES {
        let connection =
            Broker::connect(&args.amqp_url, names.clone(), &format!("floor-{queue}")).await?;
        let channel = connection.channel().await?;
        channel
            .basic_qos(args.prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                names.queue(queue).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let delivered = delivered.clone();
        let done = done.clone();
        consumers.push(tokio::spawn(async move {
            while let Some(delivery) = deliveries.next().await {
                let delivery = delivery?;
                // A consumer's work: parse the event it was sent.
                serde_json::from_slice::<serde_json::Value>(&delivery.data)?;
                delivery.ack(BasicAckOptions::default()).await?;
                if delivered.fetch_add(1, Ordering::Relaxed) + 1 == expected {
                    done.notify_one();
                }
            }
            drop(connection);
            anyhow::Ok(())
        }));
    }

    let started = Instant::now();
    let mut publishers = Vec::new();
    let per_publisher = args.calls.div_ceil(args.publishers.max(1) as u64);
    for first in (0..args.calls).step_by(per_publisher.max(1) as usize) {
        let calls = first..(first + per_publisher).min(args.calls);
        let broker = Broker::connect(&args.amqp_url, names.clone(), "floor-publisher").await?;
        let batch = args.batch.max(1);
        publishers.push(tokio::spawn(async move {
            publish_calls(&broker, calls, batch).await?;
            broker.close().await;
            anyhow::Ok(())
        }));
    }
    for publisher in publishers {
        publisher.await??;
    }
    let wait = tokio::time::timeout(Duration::from_secs(600), done.notified());
    if delivered.load(Ordering::Relaxed) < expected {
        wait.await
            .context("the broker did not deliver every message within 600 s")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    for consumer in consumers {
        consumer.abort();
    }
    Ok(FloorReport {
        calls: args.calls,
        publishes,
        deliveries: expected,
        seconds: (seconds * 1000.0).round() / 1000.0,
        calls_per_second: (args.calls as f64 / seconds * 10.0).round() / 10.0,
    })
}

/// Copies of a call's events the topology delivers to the consumed queues.
pub fn deliveries_per_call() -> u64 {
    let mut copies = 0;
    for event in CALL_EVENTS {
        for queue in CONSUMED_QUEUES {
            if broker::bindings(queue)
                .iter()
                .any(|binding| topic_matches(binding, event.routing_key()))
            {
                copies += 1;
            }
        }
    }
    copies
}

/// Whether a topic binding matches a routing key (`*` is one word; the
/// topology binds no `#`).
fn topic_matches(binding: &str, key: &str) -> bool {
    let (mut binding, mut key) = (binding.split('.'), key.split('.'));
    loop {
        match (binding.next(), key.next()) {
            (None, None) => return true,
            (Some("*"), Some(_)) => {}
            (Some(word), Some(other)) if word == other => {}
            _ => return false,
        }
    }
}

/// Publishes the events of `calls` in relay-sized batches, each batch's
/// confirms awaited together.
async fn publish_calls(
    broker: &Broker,
    calls: std::ops::Range<u64>,
    batch: usize,
) -> anyhow::Result<()> {
    let exchange = broker.names().events_exchange();
    let padding = "x".repeat(PAYLOAD_BYTES);
    let messages: Vec<(EventType, Uuid)> = calls
        .flat_map(|_| {
            let call_id = Uuid::new_v4();
            CALL_EVENTS.map(|event| (event, call_id))
        })
        .collect();
    for chunk in messages.chunks(batch) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for (sequence, (event, call_id)) in chunk.iter().enumerate() {
            let payload = serde_json::to_vec(&serde_json::json!({
                "id": Uuid::new_v4(),
                "type": event.routing_key(),
                "call_id": call_id,
                "sequence": sequence,
                "call": {"prompt": padding},
            }))?;
            let mut headers = FieldTable::default();
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(
                    format!("00-{}-{:016x}-01", call_id.simple(), sequence).into(),
                ),
            );
            let message = Outgoing {
                exchange: &exchange,
                routing_key: event.routing_key(),
                payload: &payload,
                message_id: Some(Uuid::new_v4().to_string()),
                headers,
            };
            confirms.push(broker.start_publish(&message).await?);
        }
        for confirm in confirms {
            // Unbound internal events come back unrouted, as they do from a relay.
            anyhow::ensure!(
                !matches!(confirm.await?, lapin::Confirmation::Nack(_)),
                "the broker refused a message (nack)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answered_call_is_delivered_seven_times() {
        assert_eq!(deliveries_per_call(), 7);
    }

    #[test]
    fn a_star_matches_one_word() {
        assert!(topic_matches("call.*", "call.queued"));
        assert!(!topic_matches("call.*", "internal.call.ended"));
        assert!(!topic_matches("call.*", "call.a.b"));
        assert!(topic_matches("internal.call.ended", "internal.call.ended"));
    }

    /// Against the real broker: every copy arrives, and the namespace is gone after.
    #[tokio::test]
    async fn replays_every_message_and_removes_its_topology() {
        let namespace = format!("floortest{}", &Uuid::new_v4().simple().to_string()[..8]);
        let amqp_url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        let report = run(BrokerFloorArgs {
            amqp_url: amqp_url.clone(),
            namespace: Some(namespace.clone()),
            calls: 25,
            publishers: 2,
            batch: 8,
            prefetch: 4,
        })
        .await
        .expect("the replay runs");
        assert_eq!(report.publishes, 175);
        assert_eq!(report.deliveries, 175);
        assert!(report.calls_per_second > 0.0);

        let names = Names::new(&namespace);
        let broker = Broker::connect(&amqp_url, names.clone(), "floor-test")
            .await
            .expect("connects");
        let channel = broker.channel().await.expect("a channel");
        let gone = broker::ready_messages(&channel, &names.queue(broker::DIALER_QUEUE)).await;
        assert!(gone.is_err(), "the dialer queue of the replay is deleted");
        broker.close().await;
    }
}
