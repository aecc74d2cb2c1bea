//! RabbitMQ: connection, the one topology every binary declares, and confirmed publishing.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use crate::events::EventType;

/// Work queues, each consumed by one service and dead-lettered to `<name>.dlq`.
pub const WORK_QUEUES: [&str; 5] = [
    DIALER_QUEUE,
    EXTRACTOR_QUEUE,
    BILLING_QUEUE,
    WEBHOOK_EVENTS_QUEUE,
    WEBHOOK_DELIVERIES_QUEUE,
];
pub const DIALER_QUEUE: &str = "dialer";
pub const EXTRACTOR_QUEUE: &str = "extractor";
pub const BILLING_QUEUE: &str = "billing";
pub const WEBHOOK_EVENTS_QUEUE: &str = "webhooks.events";
pub const WEBHOOK_DELIVERIES_QUEUE: &str = "webhooks.deliveries";

/// A queue whose messages wait a short while and then return to the dialer
/// (a call over its org's concurrency limit waits here without holding a consumer).
pub const DIALER_DELAY_QUEUE: &str = "dialer.delay";
/// Nominal wait in `dialer.delay` before a call is tried again.
pub const DIALER_DELAY: Duration = Duration::from_secs(2);

/// The dispatcher's queue for jobs whose destination is at its in-flight cap:
/// a fixed short wait (not time-scaled), then back to `webhooks.deliveries`.
pub const WEBHOOK_THROTTLE_QUEUE: &str = "webhooks.throttle";
pub const WEBHOOK_THROTTLE_DELAY: Duration = Duration::from_millis(500);

/// Webhook retry tiers: attempt n+1 waits in `webhooks.retry.<label>` (message TTL),
/// then is dead-lettered back to `webhooks.deliveries`. One queue per tier because
/// per-message TTLs only expire at the head of a queue.
pub const WEBHOOK_RETRY_TIERS: [(&str, Duration); 7] = [
    ("1m", Duration::from_secs(60)),
    ("5m", Duration::from_secs(5 * 60)),
    ("30m", Duration::from_secs(30 * 60)),
    ("2h", Duration::from_secs(2 * 3600)),
    ("5h", Duration::from_secs(5 * 3600)),
    ("10h", Duration::from_secs(10 * 3600)),
    ("24h", Duration::from_secs(24 * 3600)),
];

/// How long a connection attempt may take, handshake included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the broker may take to confirm a batch of publishes before the
/// publisher gives up (and, for the outbox, rolls back to retry later).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Broker::close`] waits for the broker to answer.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Delivery limit of dead-letter queues: effectively none.
pub const DEAD_LETTER_DELIVERY_LIMIT: u32 = 1_000_000_000;

/// Every broker name, under an optional namespace prefix.
#[derive(Debug, Clone, Default)]
pub struct Names {
    namespace: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn prefixed(&self, name: &str) -> String {
        if self.namespace.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{}", self.namespace, name)
        }
    }

    /// The topic exchange every event is published to.
    pub fn events_exchange(&self) -> String {
        self.prefixed("ringer.events")
    }

    /// The direct exchange that routes dead letters to `<queue>.dlq`.
    pub fn dead_letter_exchange(&self) -> String {
        self.prefixed("ringer.dlx")
    }

    pub fn queue(&self, name: &str) -> String {
        self.prefixed(name)
    }

    pub fn dead_letter_queue(&self, queue: &str) -> String {
        self.prefixed(&format!("{queue}.dlq"))
    }

    pub fn webhook_retry_queue(&self, tier_label: &str) -> String {
        self.prefixed(&format!("webhooks.retry.{tier_label}"))
    }

    /// Every queue the topology declares, for operators' tools and test clean-up.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = Vec::new();
        for queue in WORK_QUEUES {
            queues.push(self.queue(queue));
            queues.push(self.dead_letter_queue(queue));
        }
        queues.push(self.queue(DIALER_DELAY_QUEUE));
        for (label, _) in WEBHOOK_RETRY_TIERS {
            queues.push(self.webhook_retry_queue(label));
        }
        queues.push(self.queue(WEBHOOK_THROTTLE_QUEUE));
        queues
    }

    /// The dead-letter queues, with the work queue each belongs to.
    pub fn dead_letter_queues(&self) -> Vec<(String, String)> {
        WORK_QUEUES
            .iter()
            .map(|queue| (self.queue(queue), self.dead_letter_queue(queue)))
            .collect()
    }
}

/// Which routing keys feed each work queue.
pub fn bindings(queue: &str) -> Vec<String> {
    match queue {
        DIALER_QUEUE => vec![
            EventType::CallQueued.routing_key().to_owned(),
            EventType::CancelRequested.routing_key().to_owned(),
        ],
        EXTRACTOR_QUEUE | BILLING_QUEUE => vec![EventType::CallEnded.routing_key().to_owned()],
        // `call.*` matches exactly the public events: internal ones live under `internal.`.
        WEBHOOK_EVENTS_QUEUE => vec!["call.*".to_owned()],
        // Deliveries are published straight to the queue (default exchange) by the dispatcher.
        _ => Vec::new(),
    }
}

/// Connected broker: one connection, one confirm-mode channel for publishing.
#[derive(Clone)]
pub struct Broker {
    connection: std::sync::Arc<Connection>,
    publisher: Channel,
    names: Names,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("names", &self.names)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the message was returned unroutable (no queue bound to {0})")]
    Unroutable(String),
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub payload: &'a [u8],
    pub message_id: Option<String>,
    pub headers: FieldTable,
}

impl Broker {
    pub async fn connect(url: &str, names: Names, connection_name: &str) -> lapin::Result<Self> {
        let properties =
            ConnectionProperties::default().with_connection_name(connection_name.into());
        // A broker that accepts TCP but never finishes the handshake (out of file
        // descriptors, say) must not hang start-up: give up and let the caller retry.
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(url, properties),
        )
        .await
        .map_err(|_| {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the broker did not complete the AMQP handshake within {CONNECT_TIMEOUT:?}"
                ),
            ))
        })??;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection: std::sync::Arc::new(connection),
            publisher,
            names,
        })
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The same connection with a publisher channel (confirm mode) of its own,
    /// for a publisher that must see every return and acknowledgement of its
    /// publishes and no one else's (the outbox relay).
    pub async fn with_own_publisher(&self) -> lapin::Result<Self> {
        let publisher = self.connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection: self.connection.clone(),
            publisher,
            names: self.names.clone(),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    pub async fn channel(&self) -> lapin::Result<Channel> {
        self.connection.create_channel().await
    }

    /// Closes the connection, waiting at most [`CLOSE_TIMEOUT`] for the
    /// broker's answer: a broker that stopped answering, or a connection that
    /// failed while closing, must not hold a process's shutdown for ever.
    pub async fn close(&self) {
        let closing = self.connection.close(200, "shutdown".into());
        match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "closing the broker connection"),
            Err(_) => tracing::warn!(
                timeout = ?CLOSE_TIMEOUT,
                "the broker did not answer the connection's close; leaving it"
            ),
        }
    }

    /// Publishes one message and waits for the broker's confirm. Messages are
    /// persistent and `mandatory`, so an unroutable message is an error rather
    /// than silently dropped.
    pub async fn publish_confirmed(&self, message: Outgoing<'_>) -> Result<(), PublishError> {
        let confirmed = tokio::time::timeout(CONFIRM_TIMEOUT, async {
            let confirm = self.start_publish(&message).await?;
            Ok::<_, PublishError>(confirm.await?)
        })
        .await
        .map_err(|_| PublishError::Timeout(CONFIRM_TIMEOUT))??;
        check_confirmation(confirmed, message.routing_key)
    }

    /// Sends without waiting; await the returned confirms (all at once) to batch round trips.
    pub async fn start_publish(
        &self,
        message: &Outgoing<'_>,
    ) -> Result<lapin::PublisherConfirm, PublishError> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(message.headers.clone());
        if let Some(id) = &message.message_id {
            properties = properties.with_message_id(id.as_str().into());
        }
        let confirm = self
            .publisher
            .basic_publish(
                message.exchange.into(),
                message.routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                message.payload,
                properties,
            )
            .await?;
        Ok(confirm)
    }
}

pub fn check_confirmation(
    confirmation: Confirmation,
    routing_key: &str,
) -> Result<(), PublishError> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(routing_key.to_owned())),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
    }
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Declares the exchanges, work queues, dead-letter queues, delay queues and
/// bindings. Idempotent: every binary runs it at start-up with the same arguments.
pub async fn declare_topology(
    channel: &Channel,
    names: &Names,
    delivery_limit: u32,
    time_scale: f64,
) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            names.events_exchange().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            names.dead_letter_exchange().into(),
            ExchangeKind::Direct,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;

    for queue in WORK_QUEUES {
        let queue_name = names.queue(queue);
        let dlq_name = names.dead_letter_queue(queue);
        // RabbitMQ 4 gives quorum queues a default delivery limit of 20 and drops
        // messages past it when the queue has no dead-letter exchange; operators
        // read DLQs repeatedly (`ringer-admin dlq show`), so lift it out of reach.
        let mut dlq_arguments = FieldTable::default();
        dlq_arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongUInt(DEAD_LETTER_DELIVERY_LIMIT),
        );
        declare_quorum_queue(channel, &dlq_name, dlq_arguments).await?;
        channel
            .queue_bind(
                dlq_name.as_str().into(),
                names.dead_letter_exchange().into(),
                queue_name.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongUInt(delivery_limit),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            long_string(&names.dead_letter_exchange()),
        );
        // Every work queue dead-letters under its own name, so that two queues bound
        // to the same event (extractor, billing) keep separate dead-letter queues.
        arguments.insert("x-dead-letter-routing-key".into(), long_string(&queue_name));
        // At-least-once dead-lettering: a message is only removed once the DLQ confirmed it.
        arguments.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        arguments.insert("x-overflow".into(), long_string("reject-publish"));
        declare_quorum_queue(channel, &queue_name, arguments).await?;
        for routing_key in bindings(queue) {
            channel
                .queue_bind(
                    queue_name.as_str().into(),
                    names.events_exchange().into(),
                    routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }

    declare_delay_queue(
        channel,
        &names.queue(DIALER_DELAY_QUEUE),
        crate::config::scale_duration(DIALER_DELAY, time_scale),
        &names.queue(DIALER_QUEUE),
    )
    .await?;
    for (label, delay) in WEBHOOK_RETRY_TIERS {
        declare_delay_queue(
            channel,
            &names.webhook_retry_queue(label),
            crate::config::scale_duration(delay, time_scale),
            &names.queue(WEBHOOK_DELIVERIES_QUEUE),
        )
        .await?;
    }
    declare_delay_queue(
        channel,
        &names.queue(WEBHOOK_THROTTLE_QUEUE),
        WEBHOOK_THROTTLE_DELAY,
        &names.queue(WEBHOOK_DELIVERIES_QUEUE),
    )
    .await?;
    Ok(())
}

async fn declare_quorum_queue(
    channel: &Channel,
    name: &str,
    mut arguments: FieldTable,
) -> lapin::Result<()> {
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    Ok(())
}

/// A queue nobody consumes: messages sit for `delay` (queue TTL), then are
/// dead-lettered through the default exchange to `target`.
async fn declare_delay_queue(
    channel: &Channel,
    name: &str,
    delay: Duration,
    target: &str,
) -> lapin::Result<()> {
    let mut arguments = FieldTable::default();
    let ttl_ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
    arguments.insert("x-message-ttl".into(), AMQPValue::LongUInt(ttl_ms));
    arguments.insert("x-dead-letter-exchange".into(), long_string(""));
    arguments.insert("x-dead-letter-routing-key".into(), long_string(target));
    arguments.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    arguments.insert("x-overflow".into(), long_string("reject-publish"));
    declare_quorum_queue(channel, name, arguments).await
}

/// Ready messages in `queue` (those delivered and not yet acked are not
/// counted), by a passive declare, which fails if the queue does not exist.
pub async fn ready_messages(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}

/// Deletes every queue and exchange of a namespace (tests clean up after themselves).
pub async fn delete_topology(channel: &Channel, names: &Names) -> lapin::Result<()> {
    for queue in names.all_queues() {
        channel
            .queue_delete(
                queue.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await?;
    }
    for exchange in [names.events_exchange(), names.dead_letter_exchange()] {
        channel
            .exchange_delete(
                exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await?;
    }
    Ok(())
}

/// Reads a string header.
pub fn header_str(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    let value = headers?.inner().get(&ShortString::from(key))?;
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}
