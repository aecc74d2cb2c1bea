//! The completion join: whichever of extractor and billing finishes second
//! writes the call's one terminal event.

use ringer::call::{CallStatus, ReservationStatus};
use ringer::testing::seed_org;
use ringer_billing::{Settlement, handle_call_ended};
use sqlx::PgPool;

use crate::helpers::*;

/// The result the extractor records for each ending.
fn result_status(ending: Ending) -> &'static str {
    match ending {
        Ending::Answered(_) => "completed",
        _ => "failed",
    }
}

fn endings() -> Vec<Ending> {
    let mut endings = vec![Ending::Answered(61.0)];
    endings.extend(Ending::UNANSWERED);
    endings
}

#[sqlx::test(migrations = "../../migrations")]
async fn billing_finishing_second_writes_the_terminal_event(pool: PgPool) {
    let org = seed_org(&pool, 1_000_000).await;
    for ending in endings() {
        let event = ended_call(&pool, &org, ending).await;
        assert!(
            extractor_finishes(&pool, event.call_id, result_status(ending))
                .await
                .is_none(),
            "billing has not settled yet"
        );

        let settlement = handle_call_ended(&pool, &event).await.unwrap();
        let completed = match settlement {
            Settlement::Settled { completed, .. } | Settlement::Released { completed, .. } => {
                completed
            }
            Settlement::AlreadySettled => panic!("{ending:?}: settled before"),
        };
        assert!(completed, "{ending:?}: billing closed the join");
        assert_eq!(
            terminal_events(&pool, event.call_id).await,
            vec![ending.terminal_event().routing_key().to_owned()],
            "{ending:?}"
        );
        let call = call(&pool, event.call_id).await;
        if let Ending::Answered(_) = ending {
            assert_eq!(call.status, CallStatus::Completed);
            assert_eq!(call.reservation_status, ReservationStatus::Settled);
        }
        // A redelivery afterwards writes no second terminal event.
        handle_call_ended(&pool, &event).await.unwrap();
        assert_eq!(terminal_events(&pool, event.call_id).await.len(), 1);
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_extractor_finishing_second_writes_the_terminal_event(pool: PgPool) {
    let org = seed_org(&pool, 1_000_000).await;
    for ending in endings() {
        let event = ended_call(&pool, &org, ending).await;
        let settlement = handle_call_ended(&pool, &event).await.unwrap();
        assert!(
            matches!(
                settlement,
                Settlement::Settled {
                    completed: false,
                    ..
                } | Settlement::Released {
                    completed: false,
                    ..
                }
            ),
            "{ending:?}: the result is still pending: {settlement:?}"
        );
        assert!(terminal_events(&pool, event.call_id).await.is_empty());

        let closed = extractor_finishes(&pool, event.call_id, result_status(ending))
            .await
            .expect("the extractor closes the join");
        assert_eq!(closed.event_type, ending.terminal_event());
        // The terminal event carries the final billing fields.
        assert_ne!(closed.call.reservation_status, ReservationStatus::Reserved);
        assert!(closed.call.billing_amount_milli_cents.is_some());
        assert_eq!(
            terminal_events(&pool, event.call_id).await,
            vec![ending.terminal_event().routing_key().to_owned()]
        );
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_racing_extractor_and_billing_write_one_terminal_event(pool: PgPool) {
    let wide = wide_pool(&pool, 10).await;
    let org = seed_org(&pool, 10_000_000).await;
    let mut calls = Vec::new();
    for n in 0..30 {
        let ending = endings()[n % endings().len()];
        calls.push((ended_call(&pool, &org, ending).await, ending));
    }
    let mut racers = tokio::task::JoinSet::new();
    for (event, ending) in &calls {
        let (pool, event, ending) = (wide.clone(), event.clone(), *ending);
        let call_id = event.call_id;
        racers.spawn(async move {
            handle_call_ended(&pool, &event).await.unwrap();
        });
        let pool = wide.clone();
        racers.spawn(async move {
            extractor_finishes(&pool, call_id, result_status(ending)).await;
        });
    }
    racers.join_all().await;
    for (event, ending) in &calls {
        assert_eq!(
            terminal_events(&pool, event.call_id).await,
            vec![ending.terminal_event().routing_key().to_owned()],
            "{ending:?}"
        );
    }
    assert_ledger_consistent(&pool).await;
    wide.close().await;
}
