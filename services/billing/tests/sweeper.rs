//! The stuck-hold sweeper reconciles holds past their call's latest end and
//! leaves every other hold alone.

use ringer::call::ReservationStatus;
use ringer::events::EventType;
use ringer::testing::seed_org;
use ringer_billing::sweeper::{SweepReport, SweepSettings, sweep_once};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

const SETTINGS: SweepSettings = SweepSettings {
    margin_seconds: 600,
    batch: 100,
};

/// Moves a call's creation into the past.
async fn age(pool: &PgPool, call_id: Uuid, seconds: i64) {
    sqlx::query("UPDATE calls SET created_at = now() - make_interval(secs => $2) WHERE id = $1")
        .bind(call_id)
        .bind(seconds as f64)
        .execute(pool)
        .await
        .unwrap();
}

/// Puts a call in a live state owned by a dialer whose lease ends in `lease_seconds`.
async fn in_flight(pool: &PgPool, call_id: Uuid, status: &str, lease_seconds: Option<i64>) {
    sqlx::query(
        "UPDATE calls SET status = $2, started_at = now(), \
           answered_at = CASE WHEN $2 = 'in_progress' THEN now() END, \
           dialer_id = 'dialer-1', lease_expires_at = now() + make_interval(secs => $3) \
         WHERE id = $1",
    )
    .bind(call_id)
    .bind(status)
    .bind(lease_seconds.map(|seconds| seconds as f64))
    .execute(pool)
    .await
    .unwrap();
}

async fn reservation(pool: &PgPool, call_id: Uuid) -> ReservationStatus {
    call(pool, call_id).await.reservation_status
}

#[sqlx::test(migrations = "../../migrations")]
async fn stuck_holds_are_reconciled_and_live_ones_left_alone(pool: PgPool) {
    let org = seed_org(&pool, 10_000_000).await;
    // new_call's max duration is 300 s: 300 + 600 margin = 900 s.
    let old = 1_000;

    // Ended and answered, but its call.ended was never settled (dead-lettered).
    let ended = ended_call(&pool, &org, Ending::Answered(61.0))
        .await
        .call_id;
    age(&pool, ended, old).await;
    // Its dialer died mid-call and nobody ended it.
    let abandoned = queued(&pool, &org).await.id;
    in_flight(&pool, abandoned, "in_progress", Some(-120)).await;
    age(&pool, abandoned, old).await;
    // Ringing with no lease at all.
    let leaseless = queued(&pool, &org).await.id;
    in_flight(&pool, leaseless, "ringing", None).await;
    age(&pool, leaseless, old).await;

    // Left alone: a live lease, a call still queued, a call not old enough,
    // and one already settled.
    let live = queued(&pool, &org).await.id;
    in_flight(&pool, live, "in_progress", Some(60)).await;
    age(&pool, live, old).await;
    let waiting = queued(&pool, &org).await.id;
    age(&pool, waiting, old).await;
    let young = queued(&pool, &org).await.id;
    in_flight(&pool, young, "in_progress", Some(-120)).await;
    age(&pool, young, 800).await;
    let settled = ended_call(&pool, &org, Ending::Busy).await;
    ringer_billing::handle_call_ended(&pool, &settled)
        .await
        .unwrap();
    age(&pool, settled.call_id, old).await;

    let report = sweep_once(&pool, SETTINGS).await.unwrap();

    assert_eq!(
        report,
        SweepReport {
            settled: 1,
            released: 2
        }
    );
    let ended_call = call(&pool, ended).await;
    assert_eq!(ended_call.reservation_status, ReservationStatus::Settled);
    assert_eq!(ended_call.billing_amount_milli_cents, Some(5084));
    for stuck in [abandoned, leaseless] {
        let call = call(&pool, stuck).await;
        assert_eq!(call.reservation_status, ReservationStatus::Released);
        assert_eq!(call.billing_amount_milli_cents, Some(0));
        assert_eq!(entries(&pool, stuck).await.release.len(), 1);
        assert_eq!(count_events(&pool, stuck, EventType::CallBilled).await, 1);
    }
    for untouched in [live, waiting, young] {
        assert_eq!(
            reservation(&pool, untouched).await,
            ReservationStatus::Reserved
        );
        assert!(entries(&pool, untouched).await.release.is_empty());
    }
    assert_ledger_consistent(&pool).await;

    // A second pass finds nothing; the abandoned call ending later (the dialer's
    // own sweeper marks it failed) is a no-op for billing.
    assert_eq!(
        sweep_once(&pool, SETTINGS).await.unwrap(),
        SweepReport::default()
    );
    let late = end_call(&pool, abandoned, Ending::Failed).await;
    assert_eq!(
        ringer_billing::handle_call_ended(&pool, &late)
            .await
            .unwrap(),
        ringer_billing::Settlement::AlreadySettled
    );
    assert_ledger_consistent(&pool).await;
}
