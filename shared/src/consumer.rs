//! The consume loop every worker shares: decode, run the step, ack after it
//! committed, retry transient failures, dead-letter poison.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::broker::{Broker, header_str};
use crate::telemetry::{self, TraceContext};

/// What went wrong in a step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Worth trying again (database or broker hiccup, lost race): the message is
    /// requeued, and dead-lettered once the queue's delivery limit is reached.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Will never succeed (malformed message, broken invariant): dead-lettered at once.
    #[error("poison: {0:#}")]
    Poison(anyhow::Error),
}

impl From<sqlx::Error> for StepError {
    fn from(error: sqlx::Error) -> Self {
        StepError::Transient(error.into())
    }
}

impl From<crate::broker::PublishError> for StepError {
    fn from(error: crate::broker::PublishError) -> Self {
        StepError::Transient(error.into())
    }
}

/// Facts about the delivery a step may want (for logs and reconciliation).
#[derive(Debug, Clone)]
pub struct DeliveryInfo {
    pub routing_key: String,
    pub redelivered: bool,
    /// How many times the broker delivered this message before (quorum `x-delivery-count`).
    pub delivery_count: u32,
    pub message_id: Option<String>,
}

/// One worker step: given a decoded message, make its effects (in its own
/// transaction) and return once they are committed.
pub trait Step: Send + Sync + 'static {
    type Message: DeserializeOwned + Send + 'static;

    fn handle(
        &self,
        message: Self::Message,
        info: DeliveryInfo,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
}

/// Consumes `queue` until `shutdown`, running `step` on up to `prefetch` messages
/// at once. On shutdown it stops receiving, then waits up to `grace` for
/// in-flight steps (unacked messages return to the queue if it runs out).
pub async fn run<S: Step>(
    broker: &Broker,
    queue: &str,
    prefetch: u16,
    grace: Duration,
    step: Arc<S>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let channel = broker.channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("{queue}.{}", uuid::Uuid::new_v4());
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(), // manual ack
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue, prefetch, "consuming");
    let tracker = TaskTracker::new();
    let queue_label = queue.to_owned();

    let stop_reason = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let step = step.clone();
                    let queue = queue_label.clone();
                    tracker.spawn(async move { process(&queue, &*step, delivery).await });
                }
                Some(Err(error)) => break Some(anyhow::Error::from(error)),
                None => break Some(anyhow::anyhow!("the broker closed the consumer on {queue}")),
            }
        }
    };

    if let Err(error) = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await
    {
        tracing::debug!(%error, "cancelling the consumer");
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            queue,
            "in-flight messages did not finish within the grace period; they will be redelivered"
        );
    }
    let _ = channel.close(200, "shutdown".into()).await;
    match stop_reason {
        None => Ok(()),
        Some(error) => Err(error),
    }
}

async fn process<S: Step>(queue: &str, step: &S, delivery: Delivery) {
    let started = Instant::now();
    metrics::counter!("ringer_messages_consumed_total", "queue" => queue.to_owned()).increment(1);
    let headers = delivery.properties.headers().as_ref();
    let trace = header_str(headers, "traceparent")
        .and_then(|header| TraceContext::parse(&header))
        .unwrap_or_else(TraceContext::new_root)
        .child();
    let info = DeliveryInfo {
        routing_key: delivery.routing_key.to_string(),
        redelivered: delivery.redelivered,
        delivery_count: delivery_count(headers),
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
    };
    let span = tracing::info_span!(
        "message",
        queue,
        routing_key = %info.routing_key,
        message_id = info.message_id.as_deref().unwrap_or(""),
        trace_id = %trace.trace_id_hex(),
        redelivered = info.redelivered,
    );

    let outcome = async {
        match serde_json::from_slice::<S::Message>(&delivery.data) {
            Ok(message) => telemetry::within(trace, step.handle(message, info)).await,
            Err(error) => Err(StepError::Poison(anyhow::anyhow!(
                "undecodable message: {error}"
            ))),
        }
    }
    .instrument(span.clone())
    .await;

    // Settling awaits: the span goes with the future (`instrument`), not a
    // guard held across an await, which would leak it into other tasks
    // polled on this thread.
    settle(queue, &delivery, outcome, started)
        .instrument(span)
        .await;
}

async fn settle(
    queue: &str,
    delivery: &Delivery,
    outcome: Result<(), StepError>,
    started: Instant,
) {
    let label = match &outcome {
        Ok(()) => "ok",
        Err(StepError::Transient(_)) => "transient",
        Err(StepError::Poison(_)) => "poison",
    };
    metrics::histogram!("ringer_handler_duration_seconds", "queue" => queue.to_owned(), "outcome" => label)
        .record(started.elapsed().as_secs_f64());
    let acked = match outcome {
        Ok(()) => {
            metrics::counter!("ringer_messages_acked_total", "queue" => queue.to_owned())
                .increment(1);
            delivery.ack(BasicAckOptions::default()).await
        }
        Err(StepError::Transient(error)) => {
            tracing::warn!(error = format!("{error:#}"), "step failed; requeueing");
            metrics::counter!("ringer_messages_nacked_total", "queue" => queue.to_owned())
                .increment(1);
            // A short pause so that a persistent failure does not spin; the queue's
            // delivery limit dead-letters the message if it never succeeds.
            tokio::time::sleep(Duration::from_millis(
                100 * u64::from(info_backoff(delivery)),
            ))
            .await;
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Err(StepError::Poison(error)) => {
            tracing::error!(
                error = format!("{error:#}"),
                "poison message; dead-lettering"
            );
            metrics::counter!("ringer_messages_dead_lettered_total", "queue" => queue.to_owned())
                .increment(1);
            delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    ..BasicNackOptions::default()
                })
                .await
        }
    };
    if let Err(error) = acked {
        // The channel is gone; the broker redelivers the message to another consumer.
        tracing::warn!(%error, "could not settle the delivery");
    }
}

fn info_backoff(delivery: &Delivery) -> u32 {
    delivery_count(delivery.properties.headers().as_ref()).clamp(1, 20)
}

fn delivery_count(headers: Option<&FieldTable>) -> u32 {
    let Some(headers) = headers else { return 0 };
    match headers
        .inner()
        .get(&lapin::types::ShortString::from("x-delivery-count"))
    {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}
