//! Delivery jobs on the broker: `webhooks.deliveries` (attempt now), the retry
//! tiers (attempt later), `webhooks.throttle` (step aside for a busy
//! destination) and the dead-letter queue (exhausted).

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use ringer::broker::{
    Broker, PublishError, WEBHOOK_DELIVERIES_QUEUE, WEBHOOK_RETRY_TIERS, check_confirmation,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the job layout; bump on an incompatible change.
pub const JOB_VERSION: u16 = 1;

/// The delay queue (declared with the shared topology) for jobs whose
/// destination is at its in-flight cap.
pub use ringer::broker::{
    WEBHOOK_THROTTLE_DELAY as THROTTLE_DELAY, WEBHOOK_THROTTLE_QUEUE as THROTTLE_QUEUE,
};
/// Bounces through the throttle queue before a job of a struggling (failing or
/// slow) destination waits in the shortest retry tier instead, so that a dead
/// endpoint's backlog does not churn through the broker twice a second.
pub const THROTTLE_BOUNCES: u32 = 4;

/// "Attempt delivery `delivery_id`", published by the fan-out, the delivery
/// consumer (retries, successors) and the sweeper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub version: u16,
    pub delivery_id: Uuid,
    /// The delivery's attempt count when the job was published: a job whose
    /// count no longer matches is a stale copy and is dropped.
    pub attempts: i32,
    /// Key of the in-flight cap: `endpoint:<id>` or `inline:<host:port>`.
    pub destination: String,
    /// Times this job stepped aside for a busy destination.
    #[serde(default)]
    pub throttled: u32,
}

impl DeliveryJob {
    pub fn new(delivery_id: Uuid, attempts: i32, endpoint_id: Option<Uuid>, url: &str) -> Self {
        Self {
            version: JOB_VERSION,
            delivery_id,
            attempts,
            destination: destination_key(endpoint_id, url),
            throttled: 0,
        }
    }
}

/// `endpoint:<id>` for endpoints; inline URLs are grouped by host and port.
pub fn destination_key(endpoint_id: Option<Uuid>, url: &str) -> String {
    match endpoint_id {
        Some(id) => format!("endpoint:{id}"),
        None => match url::Url::parse(url) {
            Ok(parsed) => format!(
                "inline:{}:{}",
                parsed.host_str().unwrap_or(""),
                parsed.port_or_known_default().unwrap_or(0)
            ),
            Err(_) => format!("inline:{url}"),
        },
    }
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Why a job went to the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub reason: &'a str,
    pub last_error: Option<&'a str>,
}

/// Publishes jobs with publisher confirms on its own channel (per-message
/// expirations need properties the shared `Outgoing` does not carry).
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    deliveries: String,
    throttle: String,
    dead_letter_exchange: String,
    /// Retry tiers, shortest first, with their TTL as declared (scaled).
    tiers: Vec<(Duration, String)>,
}

impl Publisher {
    pub async fn connect(broker: &Broker, time_scale: f64) -> anyhow::Result<Self> {
        let channel = broker.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let names = broker.names();
        let tiers = WEBHOOK_RETRY_TIERS
            .iter()
            .map(|(label, nominal)| {
                (
                    ringer::config::scale_duration(*nominal, time_scale),
                    names.webhook_retry_queue(label),
                )
            })
            .collect();
        Ok(Self {
            channel,
            deliveries: names.queue(WEBHOOK_DELIVERIES_QUEUE),
            throttle: names.queue(THROTTLE_QUEUE),
            dead_letter_exchange: names.dead_letter_exchange(),
            tiers,
        })
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        job: &DeliveryJob,
        expiration: Option<Duration>,
        headers: FieldTable,
    ) -> Result<lapin::PublisherConfirm, PublishError> {
        let payload = serde_json::to_vec(job).expect("a job always serializes");
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(job.delivery_id.to_string().as_str().into())
            .with_headers(headers);
        if let Some(expiration) = expiration {
            properties = properties.with_expiration(expiration.as_millis().to_string().into());
        }
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                properties,
            )
            .await?;
        Ok(confirm)
    }

    async fn publish_to_queue(
        &self,
        queue: &str,
        job: &DeliveryJob,
        expiration: Option<Duration>,
    ) -> Result<(), PublishError> {
        // The default exchange routes by queue name.
        let confirm = self
            .publish("", queue, job, expiration, FieldTable::default())
            .await?;
        check_confirmation(confirm.await?, queue)
    }

    /// Jobs to attempt now; all confirms awaited together.
    pub async fn publish_now(&self, jobs: &[DeliveryJob]) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(jobs.len());
        for job in jobs {
            confirms.push(
                self.publish("", &self.deliveries, job, None, FieldTable::default())
                    .await?,
            );
        }
        for confirm in confirms {
            check_confirmation(confirm.await?, &self.deliveries)?;
        }
        Ok(())
    }

    /// A job to attempt after `delay`: it waits in the longest retry tier not
    /// longer than the delay (exact, the tier's TTL), and is re-parked on return
    /// until due; a remainder shorter than the shortest tier waits there with a
    /// per-message expiration (at most that tier's TTL, since a message only
    /// expires at the head of its queue).
    pub async fn publish_delayed(
        &self,
        job: &DeliveryJob,
        delay: Duration,
    ) -> Result<(), PublishError> {
        if delay.is_zero() {
            return self.publish_now(std::slice::from_ref(job)).await;
        }
        match self.tiers.iter().rev().find(|(ttl, _)| *ttl <= delay) {
            Some((_, queue)) => self.publish_to_queue(queue, job, None).await,
            None => {
                let (_, shortest) = &self.tiers[0];
                self.publish_to_queue(shortest, job, Some(delay)).await
            }
        }
    }

    /// A job whose destination is busy: a short fixed wait, then back (or the
    /// shortest retry tier, once a struggling destination kept it waiting a while).
    pub async fn publish_throttled(
        &self,
        job: &DeliveryJob,
        struggling: bool,
    ) -> Result<(), PublishError> {
        let mut job = job.clone();
        job.throttled = job.throttled.saturating_add(1);
        if struggling && job.throttled > THROTTLE_BOUNCES && !self.tiers[0].0.is_zero() {
            let (_, shortest) = &self.tiers[0];
            return self.publish_to_queue(shortest, &job, None).await;
        }
        self.publish_to_queue(&self.throttle, &job, None).await
    }

    /// Publishes an exhausted delivery's job to the dead-letter exchange under
    /// the `webhooks.deliveries` queue name, so it lands in `webhooks.deliveries.dlq`.
    pub async fn publish_dead_letter(
        &self,
        job: &DeliveryJob,
        dead_letter: DeadLetter<'_>,
    ) -> Result<(), PublishError> {
        let mut headers = FieldTable::default();
        headers.insert("x-ringer-reason".into(), long_string(dead_letter.reason));
        if let Some(error) = dead_letter.last_error {
            let excerpt: String = error.chars().take(512).collect();
            headers.insert("x-ringer-last-error".into(), long_string(&excerpt));
        }
        let confirm = self
            .publish(
                &self.dead_letter_exchange,
                &self.deliveries,
                job,
                None,
                headers,
            )
            .await?;
        check_confirmation(confirm.await?, &self.deliveries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_group_endpoints_by_id_and_inline_urls_by_host() {
        let id = Uuid::nil();
        assert_eq!(
            destination_key(Some(id), "https://a.example/x"),
            format!("endpoint:{id}")
        );
        assert_eq!(
            destination_key(None, "https://a.example/x?y=1"),
            "inline:a.example:443"
        );
        assert_eq!(
            destination_key(None, "http://127.0.0.1:8080/hook"),
            "inline:127.0.0.1:8080"
        );
    }
}
