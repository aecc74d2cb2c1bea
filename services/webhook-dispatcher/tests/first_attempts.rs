//! The fan-out makes the first attempt of each new delivery itself; jobs on
//! `webhooks.deliveries` carry only the later ones.

use std::sync::Arc;
use std::time::Duration;

use ringer::broker::{Broker, WEBHOOK_DELIVERIES_QUEUE};
use ringer::consumer::{DeliveryInfo, Step};
use ringer::events::Event;
use ringer::testing::ready_messages;
use ringer_webhook_dispatcher::envelope::Envelope;
use ringer_webhook_dispatcher::{deliver, fanout, http, jobs, store};
use sqlx::PgPool;

use crate::helpers::*;

/// The fan-out step on its own, with no consumer on `webhooks.deliveries`:
/// whatever is published there stays to be counted.
struct FanoutAlone {
    fanout: Arc<fanout::Fanout>,
    broker: Broker,
    deliveries_queue: String,
}

impl FanoutAlone {
    async fn start(pool: &PgPool, namespace: &Namespace) -> Self {
        let config = dispatcher_config(pool, namespace, 0.0);
        let broker = namespace.broker().await;
        let channel = broker.channel().await.unwrap();
        ringer::broker::declare_topology(&channel, &namespace.names, 5, 0.0)
            .await
            .unwrap();
        let publisher = jobs::Publisher::connect(&broker, 0.0).await.unwrap();
        let sender = http::Sender::new(true, config.attempt_timeout()).unwrap();
        let dispatcher = Arc::new(deliver::Dispatcher::new(
            pool.clone(),
            publisher.clone(),
            sender,
            &config,
        ));
        Self {
            fanout: Arc::new(fanout::Fanout::new(pool.clone(), publisher, dispatcher)),
            deliveries_queue: namespace.names.queue(WEBHOOK_DELIVERIES_QUEUE),
            broker,
        }
    }

    async fn handle(&self, event: &Event, redelivered: bool) {
        self.fanout
            .handle(event.clone(), delivery_info(event, redelivered))
            .await
            .unwrap();
    }

    async fn jobs_published(&self) -> u32 {
        ready_messages(&self.broker, &self.deliveries_queue).await
    }

    async fn stop(self, namespace: Namespace) {
        self.broker.close().await;
        namespace.cleanup().await;
    }
}

fn delivery_info(event: &Event, redelivered: bool) -> DeliveryInfo {
    DeliveryInfo {
        routing_key: event.event_type.as_str().to_owned(),
        redelivered,
        delivery_count: u32::from(redelivered),
        message_id: Some(event.id.to_string()),
    }
}

/// A call with an inline URL and an endpoint, both at a receiver, and its
/// `call.queued` event as the call's insert wrote it to the outbox (no relay
/// runs here), with the fan-out step to hand it to.
async fn queued_call_to_fan_out(pool: &PgPool) -> (Namespace, FanoutAlone, Receiver, Event) {
    let namespace = Namespace::new();
    let step = FanoutAlone::start(pool, &namespace).await;
    let receiver = Receiver::start(Plan::default()).await;
    let org = seed_org(pool).await;
    create_endpoint(pool, &org, &receiver.url, &["*"]).await;
    queued_call(pool, &org, Some(&receiver.url)).await;
    let (payload,): (serde_json::Value,) = sqlx::query_as("SELECT payload FROM outbox")
        .fetch_one(pool)
        .await
        .unwrap();
    let event = serde_json::from_value(payload).unwrap();
    (namespace, step, receiver, event)
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_new_delivery_is_attempted_by_its_fan_out_without_a_job(pool: PgPool) {
    let (namespace, step, mut receiver, event) = queued_call_to_fan_out(&pool).await;

    step.handle(&event, false).await;

    // Attempted and recorded before the event's handling returned (and was acked).
    let rows = deliveries(&pool).await;
    assert_eq!(rows.len(), 2, "the endpoint and the inline URL: {rows:?}");
    assert!(
        rows.iter()
            .all(|row| row.status == "delivered" && row.attempt_count == 1),
        "{rows:?}"
    );
    assert_eq!(receiver.take(2, Duration::from_secs(5)).await.len(), 2);
    assert_eq!(
        step.jobs_published().await,
        0,
        "no job went through the broker"
    );

    step.stop(namespace).await;
}

/// The event comes back after its dispatcher died between the fan-out's
/// commit and the attempts' records: its deliveries, never attempted and
/// still leased to the dead process, go out as jobs (which wait the lease out)
/// rather than waiting for the sweeper.
#[sqlx::test(migrations = "../../migrations")]
async fn a_redelivered_event_publishes_jobs_for_deliveries_a_dead_dispatcher_held(pool: PgPool) {
    let (namespace, step, mut receiver, event) = queued_call_to_fan_out(&pool).await;
    let body = serde_json::to_value(Envelope::for_event(&event)).unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let created = store::fan_out(&mut conn, &event, &body).await.unwrap();
    assert!(created.iter().all(|fanned| fanned.created), "{created:?}");
    sqlx::query("UPDATE webhook_deliveries SET lease_expires_at = now() + interval '20 seconds'")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    step.handle(&event, true).await;

    assert_eq!(step.jobs_published().await, 2, "a job per delivery");
    assert!(
        receiver.drain(Duration::from_millis(500)).await.is_empty(),
        "nothing attempted while the lease holds"
    );
    let rows = deliveries(&pool).await;
    assert_eq!(rows.len(), 2, "nothing created twice: {rows:?}");
    assert!(
        rows.iter()
            .all(|row| row.status == "pending" && row.attempt_count == 0),
        "{rows:?}"
    );

    step.stop(namespace).await;
}

/// Events handled at the same time share a fan-out transaction. One that
/// cannot be stored (its org and call do not exist) fails alone: the others
/// are fanned out and attempted all the same.
#[sqlx::test(migrations = "../../migrations")]
async fn an_event_that_cannot_be_fanned_out_fails_alone(pool: PgPool) {
    let namespace = Namespace::new();
    let step = FanoutAlone::start(&pool, &namespace).await;
    let mut receiver = Receiver::start(Plan::default()).await;
    let org = seed_org(&pool).await;
    create_endpoint(&pool, &org, &receiver.url, &["*"]).await;
    for _ in 0..12 {
        queued_call(&pool, &org, None).await;
    }
    let payloads: Vec<(serde_json::Value,)> =
        sqlx::query_as("SELECT payload FROM outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut events: Vec<Event> = payloads
        .into_iter()
        .map(|(payload,)| serde_json::from_value(payload).unwrap())
        .collect();
    let mut orphan = events[0].clone();
    orphan.id = uuid::Uuid::new_v4();
    orphan.org_id = uuid::Uuid::new_v4();
    orphan.call_id = uuid::Uuid::new_v4();
    events.insert(6, orphan.clone());

    let mut running = tokio::task::JoinSet::new();
    for event in events {
        let fanout = step.fanout.clone();
        running.spawn(async move {
            let info = delivery_info(&event, false);
            (event.id, fanout.handle(event, info).await.is_ok())
        });
    }
    let outcomes = running.join_all().await;
    for (event_id, handled) in &outcomes {
        assert_eq!(
            *handled,
            *event_id != orphan.id,
            "event {event_id}: {outcomes:?}"
        );
    }
    let rows = deliveries(&pool).await;
    assert_eq!(rows.len(), 12, "{rows:?}");
    assert!(rows.iter().all(|row| row.status == "delivered"), "{rows:?}");
    assert_eq!(receiver.take(12, Duration::from_secs(5)).await.len(), 12);

    step.stop(namespace).await;
}
