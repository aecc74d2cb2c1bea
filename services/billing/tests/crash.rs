//! A billing worker that dies between its ledger commit and its ack: the
//! message comes back and nothing is charged twice.

use std::time::Duration;

use ringer::broker::BILLING_QUEUE;
use ringer::call::ReservationStatus;
use ringer::events::EventType;
use ringer::testing::{TestBroker, random_namespace, seed_org};
use sqlx::PgPool;

use crate::helpers::*;

#[sqlx::test(migrations = "../../migrations")]
async fn a_worker_killed_after_its_commit_and_before_its_ack_charges_once(pool: PgPool) {
    init_logs();
    let test = TestBroker::start(&random_namespace(), 5).await;
    let mut billed = test.observe(EventType::CallBilled.routing_key()).await;
    let org = seed_org(&pool, 1_000_000).await;
    let event = ended_call(&pool, &org, Ending::Answered(61.0)).await;
    let config = billing_config(&pool, test.names.namespace());
    let queue = test.names.queue(BILLING_QUEUE);

    // The binary's relay publishes call.ended; it settles, commits, and exits
    // before acknowledging.
    let mut doomed = spawn_binary(
        &config,
        &[("RINGER_BILLING_FAULT_EXIT_AFTER_COMMIT", "true")],
    );
    let status = tokio::time::timeout(Duration::from_secs(60), doomed.wait())
        .await
        .expect("the worker exits after settling")
        .unwrap();
    assert!(!status.success(), "it crashed: {status}");
    assert_eq!(
        call(&pool, event.call_id).await.reservation_status,
        ReservationStatus::Settled,
        "the settlement committed before the crash"
    );
    // The unacknowledged message went back to the queue.
    eventually(
        Duration::from_secs(10),
        "the message back in the queue",
        || async { ready_messages(&test.broker, &queue).await == 1 },
    )
    .await;

    // A healthy worker gets the redelivery, finds the call settled, acks.
    let (shutdown, worker) = spawn_worker(config.clone());
    eventually(
        Duration::from_secs(30),
        "the redelivery consumed",
        || async { ready_messages(&test.broker, &queue).await == 0 },
    )
    .await;
    // The billed event the crashed worker committed reaches the exchange: its
    // relay may have published it just before the exit, and this one's relay
    // publishes whatever was left unmarked. The relay is at-least-once, so a
    // copy may arrive twice, but always as the same event (consumers dedupe by
    // its id): there is only one call.billed.
    let published = billed
        .next(Duration::from_secs(15))
        .await
        .expect("call.billed");
    assert_eq!(published.call_id, event.call_id);
    // A graceful stop finishes in-flight work: an unacknowledged message would
    // be back in the queue afterwards.
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(ready_messages(&test.broker, &queue).await, 0, "acked");
    for copy in billed.drain(Duration::from_millis(500)).await {
        assert_eq!(
            copy.id, published.id,
            "one call.billed, maybe published twice"
        );
    }
    let entries = entries(&pool, event.call_id).await;
    assert_eq!(entries.charge.len(), 1);
    assert_eq!(entries.charge[0].1, 5084);
    assert_eq!(entries.release.len(), 1);
    assert_eq!(
        count_events(&pool, event.call_id, EventType::CallBilled).await,
        1
    );
    assert_eq!(
        balance(&pool, &org).await.available_milli_cents,
        1_000_000 - 5084
    );
    assert_ledger_consistent(&pool).await;
    test.cleanup().await;
}
