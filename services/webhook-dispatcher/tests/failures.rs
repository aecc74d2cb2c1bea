//! Failing receivers: the retry schedule, exhaustion, auto-disable, 410, the
//! SSRF guard, and a dead endpoint beside a healthy one.

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use ringer::broker::WEBHOOK_DELIVERIES_QUEUE;
use ringer::events::EventType;
use sqlx::PgPool;

use crate::helpers::*;

#[sqlx::test(migrations = "../../migrations")]
async fn a_receiver_failing_n_times_gets_n_plus_one_attempts_on_the_schedule(pool: PgPool) {
    // 1 min → 120 ms, 5 min → 600 ms, 30 min → 3.6 s.
    let scale = 0.002;
    let namespace = Namespace::new();
    let dispatcher = Dispatcher::start(dispatcher_config(&pool, &namespace, scale)).await;
    let failures = 3;
    let mut receiver = Receiver::start(Plan {
        failures_per_delivery: failures,
        fail_status: 503,
        ..Plan::default()
    })
    .await;
    let org = seed_org(&pool).await;
    let (_, secret) = create_endpoint(&pool, &org, &receiver.url, &["*"]).await;
    queued_call(&pool, &org, None).await;

    let got = receiver
        .take(failures as usize + 1, Duration::from_secs(20))
        .await;
    let answered: Vec<u16> = got.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [503, 503, 503, 200]);
    let ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one delivery id on every attempt"
    );
    for received in &got {
        assert_signed(received, &secret);
        assert_eq!(received.body, got[0].body);
    }
    for (n, pair) in got.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let nominal =
            ringer_webhook_dispatcher::schedule::nominal_delay(n as i32 + 1).mul_f64(scale);
        let low = nominal
            .mul_f64(0.8)
            .saturating_sub(Duration::from_millis(20));
        let high = nominal.mul_f64(1.2) + Duration::from_millis(400);
        assert!(
            gap >= low && gap <= high,
            "gap {n}: {gap:?} outside {low:?}..{high:?}"
        );
    }
    assert!(receiver.drain(Duration::from_millis(500)).await.is_empty());

    let rows = wait_for_deliveries(&pool, Duration::from_secs(5), "delivered", |rows| {
        rows.len() == 1 && rows[0].status == "delivered"
    })
    .await;
    assert_eq!(rows[0].attempt_count, 4);
    type AttemptRow = (i32, Option<i32>, Option<String>, Option<String>);
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "SELECT number, response_status, response_body_excerpt, error FROM webhook_attempts \
         WHERE delivery_id = $1 ORDER BY number",
    )
    .bind(rows[0].id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(attempts.len(), 4);
    assert_eq!(attempts[0].1, Some(503));
    assert_eq!(attempts[0].2.as_deref(), Some("thanks"));
    assert!(attempts[0].3.as_deref().unwrap().contains("503"));
    assert_eq!(attempts[3].1, Some(200));
    assert_eq!(attempts[3].3, None);

    dispatcher.stop().await;
    namespace.cleanup().await;
}

/// Dead letters of `webhooks.deliveries` with their reason header.
async fn dead_letters(namespace: &Namespace, expected: usize) -> Vec<(serde_json::Value, String)> {
    let broker = namespace.broker().await;
    let channel = broker.channel().await.unwrap();
    let queue = namespace.names.dead_letter_queue(WEBHOOK_DELIVERIES_QUEUE);
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut letters = Vec::new();
    while letters.len() < expected {
        let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        else {
            break;
        };
        let reason =
            ringer::broker::header_str(delivery.properties.headers().as_ref(), "x-ringer-reason")
                .unwrap_or_default();
        letters.push((serde_json::from_slice(&delivery.data).unwrap(), reason));
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = channel.close(200, "done".into()).await;
    broker.close().await;
    letters
}

#[sqlx::test(migrations = "../../migrations")]
async fn ten_exhausted_deliveries_disable_the_endpoint_until_it_is_enabled(pool: PgPool) {
    let namespace = Namespace::new();
    let dispatcher = Dispatcher::start(dispatcher_config(&pool, &namespace, 0.0)).await;
    let mut receiver = Receiver::start(Plan {
        failures_per_delivery: u32::MAX,
        ..Plan::default()
    })
    .await;
    let org = seed_org(&pool).await;
    let (endpoint_id, _) = create_endpoint(&pool, &org, &receiver.url, &["*"]).await;
    for _ in 0..10 {
        queued_call(&pool, &org, None).await;
    }
    let rows = wait_for_deliveries(&pool, Duration::from_secs(30), "10 exhausted", |rows| {
        rows.len() == 10 && rows.iter().all(|row| row.status == "exhausted")
    })
    .await;
    assert!(rows.iter().all(|row| row.attempt_count == 8), "{rows:?}");
    assert!(rows.iter().all(|row| row.last_response_status == Some(500)));
    assert_eq!(receiver.drain(Duration::from_millis(300)).await.len(), 80);

    let (status, reason, failures, disabled_at): (String, Option<String>, i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as(
            "SELECT status, disabled_reason, consecutive_failures, disabled_at FROM webhook_endpoints WHERE id = $1",
        )
        .bind(endpoint_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "disabled");
    assert_eq!(reason.as_deref(), Some("too_many_failures"));
    assert_eq!(failures, 10);
    assert!(disabled_at.is_some());

    let letters = dead_letters(&namespace, 10).await;
    assert_eq!(letters.len(), 10);
    assert!(letters.iter().all(|(_, reason)| reason == "exhausted"));
    let mut ids: Vec<String> = letters
        .iter()
        .map(|(job, _)| job["delivery_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);

    // Disabled: new events do not go there.
    queued_call(&pool, &org, None).await;
    assert!(receiver.drain(Duration::from_millis(800)).await.is_empty());
    assert_eq!(deliveries(&pool).await.len(), 10);

    // What PATCH {"status": "enabled"} does; a 2xx then keeps the counter at zero.
    sqlx::query(
        "UPDATE webhook_endpoints SET status = 'enabled', consecutive_failures = 0, \
         disabled_reason = NULL, disabled_at = NULL WHERE id = $1",
    )
    .bind(endpoint_id)
    .execute(&pool)
    .await
    .unwrap();
    receiver.set_plan(Plan::default());
    queued_call(&pool, &org, None).await;
    let got = receiver
        .next(Duration::from_secs(10))
        .await
        .expect("delivered");
    assert_eq!(got.answered, 200);
    wait_for_deliveries(
        &pool,
        Duration::from_secs(5),
        "the new one delivered",
        |rows| rows.iter().filter(|row| row.status == "delivered").count() == 1,
    )
    .await;
    let (status, failures): (String, i32) =
        sqlx::query_as("SELECT status, consecutive_failures FROM webhook_endpoints WHERE id = $1")
            .bind(endpoint_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), failures), ("enabled", 0));

    dispatcher.stop().await;
    namespace.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn gone_stops_retries_and_the_inline_status_follows_the_delivery(pool: PgPool) {
    let namespace = Namespace::new();
    let dispatcher = Dispatcher::start(dispatcher_config(&pool, &namespace, 0.0)).await;
    let mut receiver = Receiver::start(Plan {
        failures_per_delivery: u32::MAX,
        fail_status: 410,
        ..Plan::default()
    })
    .await;
    let org = seed_org(&pool).await;
    let call = queued_call(&pool, &org, Some(&receiver.url)).await;
    let rows = wait_for_deliveries(&pool, Duration::from_secs(10), "exhausted", |rows| {
        rows.len() == 1 && rows[0].status == "exhausted"
    })
    .await;
    assert_eq!(rows[0].attempt_count, 1);
    assert_eq!(receiver.drain(Duration::from_millis(500)).await.len(), 1);
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT webhook_status, webhook_error FROM calls WHERE id = $1")
            .bind(call.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("410"));

    // A later event delivered makes the call's inline status follow it.
    receiver.set_plan(Plan::default());
    emit(&pool, &org, &call, &[EventType::CallRinging]).await;
    receiver
        .next(Duration::from_secs(10))
        .await
        .expect("delivered");
    wait_for_deliveries(&pool, Duration::from_secs(5), "second delivered", |rows| {
        rows.len() == 2 && rows[1].status == "delivered"
    })
    .await;
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT webhook_status, webhook_error FROM calls WHERE id = $1")
            .bind(call.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), error), ("delivered", None));

    dispatcher.stop().await;
    namespace.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn outside_dev_mode_a_loopback_delivery_is_refused(pool: PgPool) {
    let namespace = Namespace::new();
    let mut config = dispatcher_config(&pool, &namespace, 0.0);
    config.common.dev_mode = false;
    let dispatcher = Dispatcher::start(config).await;
    let mut receiver = Receiver::start(Plan::default()).await;
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let org = seed_org(&pool).await;
    // The endpoint first: a call.queued fanned out before it existed would
    // never reach it.
    create_endpoint(&pool, &org, &receiver.url, &["*"]).await;
    let literal = queued_call(
        &pool,
        &org,
        Some(&format!("https://127.0.0.1:{port}/hooks")),
    )
    .await;

    let rows = wait_for_deliveries(&pool, Duration::from_secs(10), "both finished", |rows| {
        rows.len() == 2 && rows.iter().all(|row| row.status == "exhausted")
    })
    .await;
    let inline = rows.iter().find(|row| row.endpoint_id.is_none()).unwrap();
    let error = inline.last_error.as_deref().unwrap();
    assert!(
        error.contains("refused") && error.contains("127.0.0.1") && error.contains("loopback"),
        "{error}"
    );
    assert_eq!(inline.attempt_count, 1);
    let endpoint = rows.iter().find(|row| row.endpoint_id.is_some()).unwrap();
    let error = endpoint.last_error.as_deref().unwrap();
    assert!(error.contains("https"), "{error}");
    assert!(receiver.drain(Duration::from_millis(300)).await.is_empty());
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT webhook_status, webhook_error FROM calls WHERE id = $1")
            .bind(literal.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("loopback"));

    dispatcher.stop().await;
    namespace.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_hanging_endpoint_does_not_delay_a_healthy_one(pool: PgPool) {
    let namespace = Namespace::new();
    let mut config = dispatcher_config(&pool, &namespace, 1.0);
    // Healthy deliveries must not wait for the hanging attempts to time out.
    let timeout = Duration::from_secs(6);
    config.attempt_timeout_seconds = timeout.as_secs();
    let dispatcher = Dispatcher::start(config).await;
    let _hanging = Receiver::start(Plan {
        delay: Duration::from_secs(30),
        ..Plan::default()
    })
    .await;
    let mut healthy = Receiver::start(Plan::default()).await;
    let org = seed_org(&pool).await;
    let (hanging_id, _) = create_endpoint(&pool, &org, &_hanging.url, &["*"]).await;
    create_endpoint(&pool, &org, &healthy.url, &["*"]).await;

    let calls = 60;
    let started = Instant::now();
    for _ in 0..calls {
        queued_call(&pool, &org, None).await;
    }
    healthy.take(calls, timeout).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < timeout - Duration::from_secs(1),
        "healthy endpoint took {elapsed:?}, about the hanging one's timeout of {timeout:?}"
    );
    let (in_flight,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM webhook_deliveries \
         WHERE endpoint_id = $1 AND lease_expires_at > now() AND status = 'pending'",
    )
    .bind(hanging_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        in_flight <= 10,
        "at most 10 attempts in flight to the hanging endpoint: {in_flight}"
    );

    dispatcher.stop().await;
    namespace.cleanup().await;
}
