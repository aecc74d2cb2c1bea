//! A dialer killed mid-call (SIGKILL): its call ends `failed`/`dialer_lost` by
//! another replica's sweeper, and is never dialled again.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringer::call::CallStatus;
use ringer::events::EventType;
use ringer::testing::{
    amqp_url, database_url, insert_queued_call, new_call, random_namespace, seed_org,
};
use ringer_dialer::sim::SimOutcome;
use sqlx::PgPool;

use crate::helpers::*;

#[sqlx::test(migrations = "../../migrations")]
async fn a_dialer_killed_mid_call_is_swept_and_never_dials_twice(pool: PgPool) {
    // Scale 0.05: the on-hold call would last 15 s, far past the kill.
    let scale = 0.05;
    let namespace = random_namespace();
    let test = test_broker(&namespace, scale).await;
    let mut tap = test.observe("#").await;
    let org = seed_org(&pool, 100_000_000).await;
    let call = insert_queued_call(&pool, &new_call(&org, &SimOutcome::OnHold.test_number())).await;

    let mut doomed = Command::new(env!("CARGO_BIN_EXE_ringer-dialer"))
        .env("DATABASE_URL", database_url(&pool))
        .env("AMQP_URL", amqp_url())
        .env("RINGER_NAMESPACE", &namespace)
        .env("RINGER_TIME_SCALE", scale.to_string())
        .env("RINGER_DIALER_LEASE_SECONDS", "1")
        .env("RINGER_HTTP_ADDR", "127.0.0.1:0")
        .env("RINGER_DIALER_ID", "doomed-dialer")
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("start the dialer binary");
    let live = wait_for_call(&pool, call.id, Duration::from_secs(30), "answered", |row| {
        row.call.status == CallStatus::InProgress
    })
    .await;
    assert_eq!(live.dialer_id.as_deref(), Some("doomed-dialer"));
    assert_eq!(live.call.ended_at, None);
    doomed.kill().expect("SIGKILL the dialer");
    doomed.wait().expect("reap the dialer");
    let killed = Instant::now();

    // The broker redelivers `call.queued` (as after a crash before the ack).
    let queued = loop {
        let event = tap
            .next(Duration::from_secs(10))
            .await
            .expect("call.queued was published");
        if event.event_type == EventType::CallQueued {
            break event;
        }
    };
    republish(&test, &queued).await;

    let carrier = CountingCarrier::new(scale);
    let mut config = dialer_config(&pool, &namespace, scale);
    config.lease_seconds = 1;
    let survivor = RunningDialer::start_with(config, carrier.clone());
    let row = wait_until_ended(&pool, call.id, Duration::from_secs(15)).await;
    let swept_after = killed.elapsed();
    let events = collect_until_ended(&mut tap, 1, Duration::from_secs(10)).await;
    survivor.stop().await.expect("the dialer stops cleanly");

    assert_eq!(row.call.status, CallStatus::Failed);
    assert_eq!(row.call.error_code.as_deref(), Some("dialer_lost"));
    assert_eq!(row.call.hangup_cause.as_deref(), Some("dialer_lost"));
    assert!(
        row.call
            .error_message
            .as_deref()
            .is_some_and(|m| m.contains("dialer handling this call stopped"))
    );
    assert!(row.call.answered_at <= row.call.ended_at);
    assert_eq!(row.lease_expires_at, None);
    assert!(
        swept_after < Duration::from_secs(5),
        "swept soon after the lease ran out ({swept_after:?})"
    );

    assert_eq!(row.dial_attempts, 1, "the call was dialled once in all");
    assert_eq!(
        carrier.dials.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the survivor never dialled"
    );
    // Distinct events (by id): a relay killed between publishing and recording it
    // republishes, which at-least-once delivery allows; a second dial would be a
    // second `call.ringing` event, with an id of its own.
    let mut seen: Vec<(uuid::Uuid, EventType)> = events
        .iter()
        .filter(|event| event.call_id == call.id)
        .map(|event| (event.id, event.event_type))
        .collect();
    seen.sort_by_key(|(id, _)| *id);
    seen.dedup_by_key(|(id, _)| *id);
    let count = |kind: EventType| seen.iter().filter(|(_, seen)| *seen == kind).count();
    assert_eq!(count(EventType::CallRinging), 1, "{seen:?}");
    assert_eq!(count(EventType::CallAnswered), 1, "{seen:?}");
    assert_eq!(count(EventType::CallEnded), 1, "{seen:?}");
    let ringing_in_outbox: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE routing_key = 'call.ringing' AND payload->>'call_id' = $1",
    )
    .bind(call.id.to_string())
    .fetch_one(&pool)
    .await
    .expect("count outbox rows");
    assert_eq!(ringing_in_outbox, 1, "one call.ringing was ever written");
    let ended = events
        .iter()
        .find(|event| event.event_type == EventType::CallEnded)
        .unwrap();
    assert_eq!(ended.call.status, CallStatus::Failed);
    assert_eq!(ended.call.error_code.as_deref(), Some("dialer_lost"));
    test.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_lost_call_whose_cancel_was_requested_ends_canceled(pool: PgPool) {
    let org = seed_org(&pool, 100_000_000).await;
    let number = SimOutcome::NoAnswer.test_number();
    let canceled = insert_queued_call(&pool, &new_call(&org, &number)).await;
    let plain = insert_queued_call(&pool, &new_call(&org, &number)).await;
    // Both were ringing on a dialer that is gone (lease run out); a cancel was
    // requested for the first before it died.
    sqlx::query(
        "UPDATE calls SET status = 'ringing', started_at = now() - interval '5 seconds', \
           dialer_id = 'gone', lease_expires_at = now() - interval '1 second', \
           cancel_requested_at = CASE WHEN id = $1 THEN now() END \
         WHERE id IN ($1, $2)",
    )
    .bind(canceled.id)
    .bind(plain.id)
    .execute(&pool)
    .await
    .unwrap();

    // A surviving replica's sweeper ends them.
    let namespace = random_namespace();
    let test = test_broker(&namespace, 0.0).await;
    let survivor = RunningDialer::start(dialer_config(&pool, &namespace, 0.0));
    wait_until_ended(&pool, canceled.id, Duration::from_secs(20)).await;
    wait_until_ended(&pool, plain.id, Duration::from_secs(20)).await;
    survivor.stop().await.expect("the dialer stops cleanly");
    test.cleanup().await;

    let row = call_row(&pool, canceled.id).await;
    assert_eq!(row.call.status, CallStatus::Canceled);
    assert_eq!(row.call.hangup_cause.as_deref(), Some("canceled"));
    assert_eq!(row.call.error_code, None);
    assert_eq!(row.call.error_message, None);
    let row = call_row(&pool, plain.id).await;
    assert_eq!(row.call.status, CallStatus::Failed);
    assert_eq!(row.call.error_code.as_deref(), Some("dialer_lost"));
}
