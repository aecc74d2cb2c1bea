//! The per-org limit on live calls holds across replicas, and excess calls wait
//! (in `dialer.delay`) rather than being refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ringer::call::CallStatus;
use ringer::testing::{insert_queued_call, new_call, random_namespace, seed_org};
use ringer_dialer::sim::SimOutcome;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const CALLS: usize = 50;
const LIMIT: i32 = 5;

#[sqlx::test(migrations = "../../migrations")]
async fn the_org_limit_holds_under_fifty_simultaneous_calls(pool: PgPool) {
    // Scale 0.02: a call lasts about 0.3 s, so fifty of them overlap heavily.
    let scale = 0.02;
    let namespace = random_namespace();
    let test = test_broker(&namespace, scale).await;
    let mut tap = test.observe("internal.call.ended").await;
    let org = seed_org(&pool, 1_000_000_000).await;
    let other_org = seed_org(&pool, 1_000_000_000).await;

    let mut ids = Vec::new();
    for _ in 0..CALLS {
        let call =
            insert_queued_call(&pool, &new_call(&org, &SimOutcome::Answered.test_number())).await;
        ids.push(call.id);
    }
    // Another org's calls do not count against this org's limit.
    for _ in 0..3 {
        insert_queued_call(
            &pool,
            &new_call(&other_org, &SimOutcome::Answered.test_number()),
        )
        .await;
    }

    // Samples the org's live calls as the database sees them.
    let stop_sampling = CancellationToken::new();
    let max_live = Arc::new(AtomicI64::new(0));
    let sampler = tokio::spawn({
        let (pool, stop, max_live, org_id) = (
            pool.clone(),
            stop_sampling.clone(),
            max_live.clone(),
            org.id,
        );
        async move {
            while !stop.is_cancelled() {
                let (live,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM calls WHERE org_id = $1 AND ended_at IS NULL \
                     AND status IN ('initiated', 'ringing', 'in_progress')",
                )
                .bind(org_id)
                .fetch_one(&pool)
                .await
                .unwrap();
                max_live.fetch_max(live, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });

    let carrier = CountingCarrier::new(scale);
    let replicas: Vec<RunningDialer> = (0..2)
        .map(|_| {
            let mut config = dialer_config(&pool, &namespace, scale);
            config.org_concurrency = LIMIT;
            RunningDialer::start_with(config, carrier.clone())
        })
        .collect();
    collect_until_ended(&mut tap, CALLS + 3, Duration::from_secs(60)).await;
    stop_sampling.cancel();
    sampler.await.unwrap();
    for replica in replicas {
        replica.stop().await.expect("the dialer stops cleanly");
    }

    for id in &ids {
        let row = call_row(&pool, *id).await;
        assert_eq!(row.call.status, CallStatus::InProgress);
        assert_eq!(row.call.hangup_cause.as_deref(), Some("completed"));
        assert_eq!(row.dial_attempts, 1);
    }
    let max_live = max_live.load(Ordering::SeqCst);
    let max_on_line = carrier.lines.max_on_line(&org.number);
    assert!(
        max_live <= i64::from(LIMIT),
        "at most {LIMIT} live calls in the database, saw {max_live}"
    );
    assert!(
        max_on_line <= LIMIT as usize,
        "at most {LIMIT} calls on the line, saw {max_on_line}"
    );
    assert!(max_live >= 2, "the calls did overlap (max {max_live})");
    assert_eq!(
        carrier.dials.load(Ordering::SeqCst),
        CALLS + 3,
        "every call dialled once"
    );
    test.cleanup().await;
}
