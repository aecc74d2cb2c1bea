use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_lite::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable};
use ringer::broker::{DIALER_QUEUE, Outgoing};
use ringer::consumer::{DeliveryInfo, Step, StepError};
use ringer::events::EventType;
use ringer::testing::{TestBroker, random_namespace};
use ringer_admin::dlq::{self, DeadLetterQueue};
use tokio_util::sync::CancellationToken;

/// Runs `test` on a fresh namespace with the topology declared, and deletes
/// the namespace's queues afterwards even if the test fails.
pub async fn in_namespace(delivery_limit: u32, test: impl AsyncFnOnce(&TestBroker)) {
    let broker = TestBroker::start(&random_namespace(), delivery_limit).await;
    let outcome = AssertUnwindSafe(test(&broker)).catch_unwind().await;
    broker.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

pub fn dialer_dlq(broker: &TestBroker) -> DeadLetterQueue {
    dlq::resolve(&broker.names, "dialer").expect("dialer has a DLQ")
}

/// How a test step treats every message.
#[derive(Clone, Copy)]
pub enum Behaviour {
    FailTransiently,
    DeclarePoison,
}

/// A step that always fails, counting the deliveries it saw.
pub struct FailingStep {
    behaviour: Behaviour,
    pub deliveries: AtomicU32,
}

impl Step for FailingStep {
    type Message = serde_json::Value;

    async fn handle(&self, _: serde_json::Value, _: DeliveryInfo) -> Result<(), StepError> {
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        match self.behaviour {
            Behaviour::FailTransiently => {
                Err(StepError::Transient(anyhow::anyhow!("database down")))
            }
            Behaviour::DeclarePoison => {
                Err(StepError::Poison(anyhow::anyhow!("cannot be handled")))
            }
        }
    }
}

/// Publishes an event-shaped message about `call_id` on `call.queued` (it routes
/// to the dialer queue) with a traceparent header, and returns its message id.
pub async fn publish_event(broker: &TestBroker, call_id: uuid::Uuid) -> String {
    let message_id = uuid::Uuid::now_v7().to_string();
    let payload = serde_json::to_vec(&serde_json::json!({
        "id": message_id,
        "type": "call.queued",
        "call_id": call_id,
        "sequence": 1,
    }))
    .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    );
    broker
        .broker
        .publish_confirmed(Outgoing {
            exchange: &broker.names.events_exchange(),
            routing_key: EventType::CallQueued.routing_key(),
            payload: &payload,
            message_id: Some(message_id.clone()),
            headers,
        })
        .await
        .expect("published");
    message_id
}

/// Runs the shared consume loop with a failing step on the dialer queue until
/// `count` messages are in its DLQ; returns how many deliveries the step saw.
pub async fn dead_letter(
    broker: &TestBroker,
    behaviour: Behaviour,
    call_ids: &[uuid::Uuid],
) -> (Vec<String>, u32) {
    let step = Arc::new(FailingStep {
        behaviour,
        deliveries: AtomicU32::new(0),
    });
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn({
        let broker = broker.broker.clone();
        let queue = broker.names().queue(DIALER_QUEUE);
        let step = step.clone();
        let shutdown = shutdown.clone();
        async move {
            ringer::consumer::run(&broker, &queue, 4, Duration::from_secs(5), step, shutdown).await
        }
    });
    let mut ids = Vec::new();
    for call_id in call_ids {
        ids.push(publish_event(broker, *call_id).await);
    }
    let target = u32::try_from(call_ids.len()).unwrap();
    wait_for_depth(broker, &dialer_dlq(broker).dlq, target).await;
    shutdown.cancel();
    consumer.await.unwrap().expect("consumer stops cleanly");
    (ids, step.deliveries.load(Ordering::SeqCst))
}

/// Ready messages in `queue`.
pub async fn depth(broker: &TestBroker, queue: &str) -> u32 {
    ringer::testing::ready_messages(&broker.broker, queue).await
}

pub async fn wait_for_depth(broker: &TestBroker, queue: &str, expected: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let current = depth(broker, queue).await;
        if current == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} holds {current} messages, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every message arriving on `queue` until `quiet` passes without one (acked).
pub async fn drain(
    broker: &TestBroker,
    queue: &str,
    quiet: Duration,
) -> Vec<lapin::message::Delivery> {
    let channel = broker.broker.channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(quiet, consumer.next()).await {
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        received.push(delivery);
    }
    let _ = channel.close(200, "done".into()).await;
    received
}
