//! The billing worker against the real broker: `internal.call.ended` in,
//! settlement and `internal.call.billed` out.

use std::time::Duration;

use ringer::broker::BILLING_QUEUE;
use ringer::call::ReservationStatus;
use ringer::events::EventType;
use ringer::testing::{TestBroker, random_namespace, seed_org};
use sqlx::PgPool;

use crate::helpers::*;

#[sqlx::test(migrations = "../../migrations")]
async fn the_worker_settles_ended_calls_from_the_queue(pool: PgPool) {
    init_logs();
    let test = TestBroker::start(&random_namespace(), 5).await;
    let mut billed = test.observe(EventType::CallBilled.routing_key()).await;
    let org = seed_org(&pool, 1_000_000).await;
    let answered = ended_call(&pool, &org, Ending::Answered(61.0)).await;
    let busy = ended_call(&pool, &org, Ending::Busy).await;

    let (shutdown, worker) = spawn_worker(billing_config(&pool, test.names.namespace()));

    let mut seen = Vec::new();
    for _ in 0..2 {
        let event = billed
            .next(Duration::from_secs(15))
            .await
            .expect("call.billed is published");
        seen.push(event);
    }
    shutdown.cancel();
    worker.await.unwrap().unwrap();

    let settled = seen
        .iter()
        .find(|event| event.call_id == answered.call_id)
        .unwrap();
    assert_eq!(settled.call.billing_amount_milli_cents, Some(5084));
    assert_eq!(settled.call.reservation_status, ReservationStatus::Settled);
    let released = seen
        .iter()
        .find(|event| event.call_id == busy.call_id)
        .unwrap();
    assert_eq!(
        released.call.reservation_status,
        ReservationStatus::Released
    );
    assert!(
        settled.sequence > answered.sequence,
        "ordered after call.ended"
    );
    let queue = test.names.queue(BILLING_QUEUE);
    assert_eq!(ready_messages(&test.broker, &queue).await, 0, "both acked");
    assert_ledger_consistent(&pool).await;
    test.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_poison_message_is_dead_lettered_and_the_queue_moves_on(pool: PgPool) {
    init_logs();
    let test = TestBroker::start(&random_namespace(), 5).await;
    let mut billed = test.observe(EventType::CallBilled.routing_key()).await;
    let org = seed_org(&pool, 1_000_000).await;
    // Undecodable: dead-lettered at once.
    let exchange = test.names.events_exchange();
    test.broker
        .publish_confirmed(ringer::broker::Outgoing {
            exchange: &exchange,
            routing_key: EventType::CallEnded.routing_key(),
            payload: b"{\"not\": \"an event\"}",
            message_id: None,
            headers: Default::default(),
        })
        .await
        .unwrap();
    let good = ended_call(&pool, &org, Ending::Answered(5.0)).await;

    let (shutdown, worker) = spawn_worker(billing_config(&pool, test.names.namespace()));
    let event = billed
        .next(Duration::from_secs(15))
        .await
        .expect("the good one is settled");
    assert_eq!(event.call_id, good.call_id);
    let dlq = test.names.dead_letter_queue(BILLING_QUEUE);
    eventually(
        Duration::from_secs(10),
        "the poison message in the DLQ",
        || async { ready_messages(&test.broker, &dlq).await == 1 },
    )
    .await;
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    test.cleanup().await;
}
