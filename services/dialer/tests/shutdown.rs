//! Graceful shutdown: intake stops, live calls get the grace period, the rest are
//! hung up and ended `dialer_lost` by the replica itself.

use std::time::{Duration, Instant};

use ringer::call::CallStatus;
use ringer::testing::{insert_queued_call, new_call, random_namespace, seed_org};
use ringer_dialer::sim::SimOutcome;
use sqlx::PgPool;

use crate::helpers::*;

#[sqlx::test(migrations = "../../migrations")]
async fn shutdown_finishes_short_calls_and_gives_up_the_rest(pool: PgPool) {
    let scale = 0.05;
    let namespace = random_namespace();
    let test = test_broker(&namespace, scale).await;
    let mut tap = test.observe("internal.call.ended").await;
    let org = seed_org(&pool, 100_000_000).await;
    let mut config = dialer_config(&pool, &namespace, scale);
    config.common.shutdown_grace_seconds = 2;
    config.lease_seconds = 30;
    let dialer = RunningDialer::start(config);

    let short =
        insert_queued_call(&pool, &new_call(&org, &SimOutcome::Answered.test_number())).await;
    let endless =
        insert_queued_call(&pool, &new_call(&org, &SimOutcome::OnHold.test_number())).await;
    wait_for_status(&pool, endless.id, CallStatus::InProgress).await;
    wait_for_call(&pool, short.id, Duration::from_secs(10), "claimed", |row| {
        row.call.status != CallStatus::Queued
    })
    .await;
    let stopping = Instant::now();
    dialer.stop().await.expect("the dialer stops cleanly");
    let stopped_after = stopping.elapsed();
    assert!(
        stopped_after < Duration::from_secs(6),
        "grace 2 s, then a prompt exit ({stopped_after:?})"
    );

    let short = call_row(&pool, short.id).await;
    assert_eq!(
        short.call.status,
        CallStatus::InProgress,
        "finished within the grace period"
    );
    assert_eq!(short.call.hangup_cause.as_deref(), Some("completed"));
    let endless = call_row(&pool, endless.id).await;
    assert_eq!(
        endless.call.status,
        CallStatus::Failed,
        "given up, not left to its lease"
    );
    assert_eq!(endless.call.error_code.as_deref(), Some("dialer_lost"));
    // The replica published both ends before exiting.
    let ended = collect_until_ended(&mut tap, 2, Duration::from_secs(5)).await;
    assert_eq!(ended.len(), 2);
    test.cleanup().await;
}
