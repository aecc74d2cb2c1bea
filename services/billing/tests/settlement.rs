//! Charges for answered calls, nothing for the rest, exactly once.

use ringer::call::ReservationStatus;
use ringer::consumer::StepError;
use ringer::events::EventType;
use ringer::testing::seed_org;
use ringer_billing::{Settlement, handle_call_ended};
use sqlx::PgPool;

use crate::helpers::*;

const CREDIT: i64 = 1_000_000;
/// `new_call`'s hold: 300 s at 5000 milli-cents a minute.
const HOLD: i64 = 25_000;

#[sqlx::test(migrations = "../../migrations")]
async fn an_answered_call_is_charged_for_its_connected_seconds(pool: PgPool) {
    let org = seed_org(&pool, CREDIT).await;
    let event = ended_call(&pool, &org, Ending::Answered(61.0)).await;

    let settlement = handle_call_ended(&pool, &event).await.unwrap();

    // ceil(61 × 5000 / 60) = ceil(5083.33) = 5084
    assert_eq!(
        settlement,
        Settlement::Settled {
            billed_seconds: 61,
            charged: 5084,
            released: HOLD - 5084,
            completed: false,
        }
    );
    let call = call(&pool, event.call_id).await;
    assert_eq!(call.billed_duration_seconds, Some(61));
    assert_eq!(call.billing_amount_milli_cents, Some(5084));
    assert_eq!(call.reservation_status, ReservationStatus::Settled);
    let entries = entries(&pool, event.call_id).await;
    let bucket = entries.hold[0].0;
    assert_eq!(entries.hold, vec![(bucket, HOLD)]);
    assert_eq!(
        entries.charge,
        vec![(bucket, 5084)],
        "settled in the hold's bucket"
    );
    assert_eq!(entries.release, vec![(bucket, HOLD - 5084)]);
    let balance = balance(&pool, &org).await;
    assert_eq!(balance.available_milli_cents, CREDIT - 5084);
    assert_eq!(balance.reserved_milli_cents, 0);
    assert_eq!(
        count_events(&pool, event.call_id, EventType::CallBilled).await,
        1
    );
    assert_ledger_consistent(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn connected_time_is_billed_in_whole_seconds(pool: PgPool) {
    let org = seed_org(&pool, CREDIT).await;
    // (connected seconds, billed seconds, charge)
    let cases = [
        (61.9, 61, 5084),
        (60.0, 60, 5000),
        (1.0, 1, 84),
        (0.4, 0, 0),
        (59.999, 59, 4917),
    ];
    for (connected, billed, charge) in cases {
        let event = ended_call(&pool, &org, Ending::Answered(connected)).await;
        let settlement = handle_call_ended(&pool, &event).await.unwrap();
        assert_eq!(
            settlement,
            Settlement::Settled {
                billed_seconds: billed,
                charged: charge,
                released: HOLD - charge,
                completed: false,
            },
            "{connected} s"
        );
        let call = call(&pool, event.call_id).await;
        assert_eq!(call.billed_duration_seconds, Some(billed));
        assert_eq!(call.billing_amount_milli_cents, Some(charge));
        // An answered call is settled even when its billed time rounds to zero.
        assert_eq!(call.reservation_status, ReservationStatus::Settled);
    }
    let total: i64 = cases.iter().map(|(_, _, charge)| charge).sum();
    assert_eq!(
        balance(&pool, &org).await.available_milli_cents,
        CREDIT - total
    );
    assert_ledger_consistent(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_call_is_billed_at_its_own_rate_and_never_past_its_max_duration(pool: PgPool) {
    let org = seed_org(&pool, CREDIT).await;
    // The rate captured when the call was created (an org override).
    let call = queued_with(&pool, &org, 7000, 120).await;
    let event = end_call(&pool, call.id, Ending::Answered(61.0)).await;
    let settlement = handle_call_ended(&pool, &event).await.unwrap();
    // ceil(61 × 7000 / 60) = ceil(7116.67)
    assert!(
        matches!(settlement, Settlement::Settled { charged: 7117, .. }),
        "{settlement:?}"
    );

    // Connected longer than its cap (a late hang-up): billed at the cap, the
    // whole hold charged, nothing left to release.
    let call = queued_with(&pool, &org, 5000, 120).await;
    let event = end_call(&pool, call.id, Ending::Answered(130.0)).await;
    let settlement = handle_call_ended(&pool, &event).await.unwrap();
    assert_eq!(
        settlement,
        Settlement::Settled {
            billed_seconds: 120,
            charged: 10_000,
            released: 0,
            completed: false,
        }
    );
    let entries = entries(&pool, call.id).await;
    assert_eq!(entries.charge.len(), 1);
    assert!(entries.release.is_empty(), "a zero release writes no entry");
    assert_ledger_consistent(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn unanswered_calls_cost_nothing_and_release_the_whole_hold(pool: PgPool) {
    let org = seed_org(&pool, CREDIT).await;
    let mut endings = Ending::UNANSWERED.to_vec();
    endings.push(Ending::FailedAfterAnswer(42.0));
    for ending in endings {
        let event = ended_call(&pool, &org, ending).await;
        let settlement = handle_call_ended(&pool, &event).await.unwrap();
        assert_eq!(
            settlement,
            Settlement::Released {
                released: HOLD,
                completed: false,
            },
            "{ending:?}"
        );
        let call = call(&pool, event.call_id).await;
        assert_eq!(call.billed_duration_seconds, Some(0), "{ending:?}");
        assert_eq!(call.billing_amount_milli_cents, Some(0), "{ending:?}");
        assert_eq!(call.reservation_status, ReservationStatus::Released);
        let entries = entries(&pool, event.call_id).await;
        assert!(entries.charge.is_empty(), "{ending:?}");
        assert_eq!(entries.release, vec![(entries.hold[0].0, HOLD)]);
    }
    let balance = balance(&pool, &org).await;
    assert_eq!(balance.available_milli_cents, CREDIT);
    assert_eq!(balance.reserved_milli_cents, 0);
    assert_ledger_consistent(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_redelivered_call_ended_changes_nothing(pool: PgPool) {
    let org = seed_org(&pool, CREDIT).await;
    let event = ended_call(&pool, &org, Ending::Answered(61.0)).await;

    let first = handle_call_ended(&pool, &event).await.unwrap();
    let before = call(&pool, event.call_id).await;
    for _ in 0..3 {
        let again = handle_call_ended(&pool, &event).await.unwrap();
        assert_eq!(again, Settlement::AlreadySettled);
    }

    assert!(matches!(first, Settlement::Settled { charged: 5084, .. }));
    let entries = entries(&pool, event.call_id).await;
    assert_eq!(entries.charge.len(), 1);
    assert_eq!(entries.release.len(), 1);
    assert_eq!(
        call(&pool, event.call_id).await,
        before,
        "the call is untouched"
    );
    assert_eq!(
        count_events(&pool, event.call_id, EventType::CallBilled).await,
        1,
        "no second call.billed"
    );
    assert_eq!(
        balance(&pool, &org).await.available_milli_cents,
        CREDIT - 5084
    );
    assert_ledger_consistent(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn raced_settlements_of_one_call_charge_once(pool: PgPool) {
    let wide = wide_pool(&pool, 12).await;
    let org = seed_org(&pool, CREDIT).await;
    for round in 0..10 {
        let event = ended_call(&pool, &org, Ending::Answered(61.0)).await;
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (pool, event) = (wide.clone(), event.clone());
            racers.spawn(async move { handle_call_ended(&pool, &event).await.unwrap() });
        }
        let outcomes = racers.join_all().await;
        let settled = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Settlement::Settled { .. }))
            .count();
        assert_eq!(settled, 1, "round {round}: {outcomes:?}");
        assert_eq!(
            entries(&pool, event.call_id).await.charge,
            vec![(entries(&pool, event.call_id).await.hold[0].0, 5084)]
        );
        assert_eq!(
            count_events(&pool, event.call_id, EventType::CallBilled).await,
            1
        );
    }
    assert_eq!(
        balance(&pool, &org).await.available_milli_cents,
        CREDIT - 10 * 5084
    );
    assert_ledger_consistent(&pool).await;
    wide.close().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn events_that_cannot_be_settled_are_poison(pool: PgPool) {
    let org = seed_org(&pool, CREDIT).await;
    let event = ended_call(&pool, &org, Ending::Answered(10.0)).await;

    let mut wrong_type = event.clone();
    wrong_type.event_type = EventType::CallQueued;
    assert!(matches!(
        handle_call_ended(&pool, &wrong_type).await,
        Err(StepError::Poison(_))
    ));

    let mut unknown = event.clone();
    unknown.call_id = uuid::Uuid::now_v7();
    unknown.call.id = unknown.call_id;
    assert!(matches!(
        handle_call_ended(&pool, &unknown).await,
        Err(StepError::Poison(_))
    ));

    // An `ended` event for a call the database has not ended.
    let live = queued(&pool, &org).await;
    let mut not_ended = event.clone();
    not_ended.call_id = live.id;
    not_ended.call = live.clone();
    assert!(matches!(
        handle_call_ended(&pool, &not_ended).await,
        Err(StepError::Poison(_))
    ));
    assert_eq!(
        call(&pool, live.id).await.reservation_status,
        ReservationStatus::Reserved,
        "nothing changed"
    );
    assert_ledger_consistent(&pool).await;
}
