use std::collections::HashMap;
use std::time::Duration;

use ringer::events::EventType;
use ringer::outbox;
use ringer::testing::{TestBroker, insert_queued_call, new_call, random_namespace, seed_org};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn unpublished(pool: &PgPool) -> i64 {
    outbox::lag(pool).await.expect("lag").0
}

#[sqlx::test(migrations = "../migrations")]
async fn a_committed_event_reaches_the_broker_with_the_call(pool: PgPool) {
    let test = TestBroker::start(&random_namespace(), 5).await;
    let mut tap = test.observe("call.queued").await;
    let org = seed_org(&pool, 500_000).await;
    let call = insert_queued_call(&pool, &new_call(&org, "+14155550100")).await;

    let published = outbox::relay_batch(&pool, &test.broker, 100)
        .await
        .expect("relay");
    assert_eq!(published, 1);

    let event = tap
        .next(Duration::from_secs(5))
        .await
        .expect("event arrives");
    assert_eq!(event.event_type, EventType::CallQueued);
    assert_eq!(event.call_id, call.id);
    assert_eq!(event.org_id, org.id);
    assert_eq!(event.sequence, 1);
    assert_eq!(event.call, call);
    assert_eq!(unpublished(&pool).await, 0);
    test.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rolled_back_change_publishes_nothing(pool: PgPool) {
    let test = TestBroker::start(&random_namespace(), 5).await;
    let mut tap = test.observe("#").await;
    let org = seed_org(&pool, 500_000).await;
    let mut tx = pool.begin().await.unwrap();
    ringer::call::insert_queued_call(&mut tx, &new_call(&org, "+14155550100"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(
        outbox::relay_batch(&pool, &test.broker, 100).await.unwrap(),
        0
    );
    assert!(tap.next(Duration::from_millis(300)).await.is_none());
    test.cleanup().await;
}

async fn insert_calls(pool: &PgPool, count: usize) -> Vec<Uuid> {
    let org = seed_org(pool, 1_000_000_000).await;
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let call = insert_queued_call(pool, &new_call(&org, &format!("+1415555{n:04}"))).await;
        ids.push(call.id);
    }
    ids
}

#[sqlx::test(migrations = "../migrations")]
async fn two_concurrent_relays_publish_each_event_exactly_once(pool: PgPool) {
    let test = TestBroker::start(&random_namespace(), 5).await;
    let second = TestBroker::start(test.names.namespace(), 5).await;
    let mut tap = test.observe("call.queued").await;
    let ids = insert_calls(&pool, 400).await;

    let shutdown = CancellationToken::new();
    let relays = [
        tokio::spawn(outbox::run_relay(
            pool.clone(),
            test.broker.clone(),
            25,
            Duration::from_millis(20),
            shutdown.clone(),
        )),
        tokio::spawn(outbox::run_relay(
            pool.clone(),
            second.broker.clone(),
            25,
            Duration::from_millis(20),
            shutdown.clone(),
        )),
    ];
    let events = tap.drain(Duration::from_secs(2)).await;
    shutdown.cancel();
    for relay in relays {
        relay.await.unwrap();
    }

    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    for event in &events {
        *seen.entry(event.call_id).or_default() += 1;
    }
    assert_eq!(events.len(), ids.len(), "every event once, none twice");
    assert!(ids.iter().all(|id| seen.get(id) == Some(&1)));
    assert_eq!(unpublished(&pool).await, 0);
    second.cleanup().await;
    test.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_relay_killed_mid_batch_loses_nothing(pool: PgPool) {
    let test = TestBroker::start(&random_namespace(), 5).await;
    let doomed = TestBroker::start(test.names.namespace(), 5).await;
    let mut tap = test.observe("call.queued").await;
    let ids = insert_calls(&pool, 300).await;

    // The doomed relay loses its broker connection while publishing its batches:
    // its transaction rolls back and the rows stay unpublished.
    let shutdown = CancellationToken::new();
    let doomed_relay = tokio::spawn(outbox::run_relay(
        pool.clone(),
        doomed.broker.clone(),
        300,
        Duration::from_millis(20),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(5)).await;
    doomed.broker.close().await;
    doomed_relay.abort();
    let _ = doomed_relay.await;

    let survivor = tokio::spawn(outbox::run_relay(
        pool.clone(),
        test.broker.clone(),
        50,
        Duration::from_millis(20),
        shutdown.clone(),
    ));
    let events = tap.drain(Duration::from_secs(2)).await;
    shutdown.cancel();
    survivor.await.unwrap();

    // At-least-once: whatever the doomed relay got confirmed before it died may
    // come again (consumers dedupe by event id); nothing may be missing.
    let distinct: std::collections::HashSet<Uuid> =
        events.iter().map(|event| event.call_id).collect();
    assert!(
        ids.iter().all(|id| distinct.contains(id)),
        "every committed event is published"
    );
    let mut per_event: HashMap<Uuid, usize> = HashMap::new();
    for event in &events {
        *per_event.entry(event.id).or_default() += 1;
    }
    assert!(
        per_event.values().all(|&n| n <= 2),
        "a row is republished at most by the relay that took it over"
    );
    assert_eq!(unpublished(&pool).await, 0);
    test.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn informational_events_without_subscribers_do_not_block_the_outbox(pool: PgPool) {
    let test = TestBroker::start(&random_namespace(), 5).await;
    let org = seed_org(&pool, 500_000).await;
    let call = insert_queued_call(&pool, &new_call(&org, "+14155550100")).await;
    let mut tx = pool.begin().await.unwrap();
    // Nothing is bound to `internal.call.billed`: the broker returns it.
    outbox::emit(&mut tx, org.id, EventType::CallBilled, &call)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let published = outbox::relay_batch(&pool, &test.broker, 100)
        .await
        .expect("no error for an informational event");
    assert_eq!(published, 2);
    assert_eq!(unpublished(&pool).await, 0);
    test.cleanup().await;
}

/// A batch mixing events nobody subscribes to (returned by the broker) with
/// routed ones: each row is judged by its own return. (With many publishes in
/// flight RabbitMQ acknowledges several at once, and lapin hands a return to
/// whichever of those confirms it resolves first, not always its own.)
#[sqlx::test(migrations = "../migrations")]
async fn each_row_of_a_mixed_batch_is_judged_by_its_own_return(pool: PgPool) {
    let test = TestBroker::start(&random_namespace(), 5).await;
    let org = seed_org(&pool, 500_000).await;
    let call = insert_queued_call(&pool, &new_call(&org, "+14155550100")).await;
    for round in 0..5 {
        let mut tx = pool.begin().await.unwrap();
        for index in 0..100 {
            let event_type = if index % 2 == 0 {
                EventType::CallBilled
            } else {
                EventType::CallRinging
            };
            outbox::emit(&mut tx, org.id, event_type, &call)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let published = outbox::relay_batch(&pool, &test.broker, 1000)
            .await
            .unwrap_or_else(|error| panic!("round {round}: {error:#}"));
        assert!(published >= 100, "round {round}: {published} published");
        assert_eq!(unpublished(&pool).await, 0, "round {round}");
    }
    test.cleanup().await;
}

/// An event that must reach a queue and reaches none stays unpublished (and
/// the batch reports it), whatever else its batch holds.
#[sqlx::test(migrations = "../migrations")]
async fn an_event_no_queue_takes_stays_unpublished_beside_routed_ones(pool: PgPool) {
    let test = TestBroker::start(&random_namespace(), 5).await;
    let org = seed_org(&pool, 500_000).await;
    let call = insert_queued_call(&pool, &new_call(&org, "+14155550100")).await;
    let mut tx = pool.begin().await.unwrap();
    for index in 0..60 {
        let event_type = match index % 3 {
            0 => EventType::CallBilled,
            _ => EventType::CallRinging,
        };
        outbox::emit(&mut tx, org.id, event_type, &call)
            .await
            .unwrap();
    }
    // A routing key nothing binds and no rule lets go unrouted.
    let lost = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, payload) VALUES ($1, 'internal.call.unheard_of', '{}')",
    )
    .bind(lost)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let error = outbox::relay_batch(&pool, &test.broker, 1000)
        .await
        .expect_err("the unroutable event is reported");
    assert!(
        format!("{error:#}").contains("1 outbox events"),
        "{error:#}"
    );
    let left: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM outbox WHERE published_at IS NULL")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(left, vec![lost]);
    test.cleanup().await;
}

/// A commit wakes the relay of the process that made it, not every relay: a
/// binary's sessions (named `ringer-<service>/<instance>`) notify a channel of
/// their own; any other session notifies the shared one.
#[sqlx::test(migrations = "../migrations")]
async fn a_commit_wakes_the_relay_of_its_own_process(pool: PgPool) {
    let url = ringer::testing::database_url(&pool);
    let dialer = ringer::db::connect_named(&url, 2, "ringer-dialer/aaaaaaaa")
        .await
        .unwrap();
    let billing = ringer::db::connect_named(&url, 2, "ringer-billing/bbbbbbbb")
        .await
        .unwrap();
    let dialer_channel = outbox::channel(&dialer).await.unwrap();
    let billing_channel = outbox::channel(&billing).await.unwrap();
    assert_ne!(dialer_channel, billing_channel);
    assert_ne!(dialer_channel, outbox::NOTIFY_CHANNEL);
    assert_eq!(
        outbox::channel(&pool).await.unwrap(),
        outbox::NOTIFY_CHANNEL
    );

    let org = seed_org(&pool, 500_000).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener
        .listen_all([
            dialer_channel.as_str(),
            billing_channel.as_str(),
            outbox::NOTIFY_CHANNEL,
        ])
        .await
        .unwrap();
    let mut next_channel = async || {
        tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("a notification")
            .unwrap()
            .channel()
            .to_owned()
    };

    insert_queued_call(&dialer, &new_call(&org, "+14155550100")).await;
    assert_eq!(next_channel().await, dialer_channel);
    insert_queued_call(&pool, &new_call(&org, "+14155550101")).await;
    assert_eq!(next_channel().await, outbox::NOTIFY_CHANNEL);
    insert_queued_call(&billing, &new_call(&org, "+14155550102")).await;
    assert_eq!(next_channel().await, billing_channel);
}
