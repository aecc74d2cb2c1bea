//! The completion join (DESIGN.md rule 5) between the extractor and billing.

use std::sync::Arc;
use std::time::Duration;

use ringer::call::{CallStatus, ResultStatus};
use ringer::events::EventType;
use ringer_extractor::{BuiltinExtractor, Outcome, extract_call_result};
use sqlx::PgPool;

use crate::helpers::{
    EndedCall, count, fetch_call, finish_billing, insert_ended_call, outbox_events,
    reservation_returns, reservation_transcript, seed, terminal_events,
};

fn answered() -> EndedCall {
    EndedCall::answered(reservation_returns(), &reservation_transcript())
}

#[sqlx::test(migrations = "../../migrations")]
async fn billing_first_then_the_extractor_closes_the_join(pool: PgPool) {
    let org = seed(&pool).await;
    let call = insert_ended_call(&pool, &org, &answered()).await;

    assert_eq!(finish_billing(&pool, call.id).await, None);
    let outcome = extract_call_result(&pool, &BuiltinExtractor, call.id)
        .await
        .unwrap();

    let Outcome::Stored {
        terminal: Some(terminal),
        ..
    } = outcome
    else {
        panic!("the extractor finished second and closes the join: {outcome:?}");
    };
    assert_eq!(terminal.event_type, EventType::CallCompleted);
    assert_eq!(terminal.call.status, CallStatus::Completed);
    assert_eq!(terminal.call.result_status, ResultStatus::Completed);
    let stored = fetch_call(&pool, call.id).await;
    assert_eq!(stored.status, CallStatus::Completed);
    let events = outbox_events(&pool, call.id).await;
    assert_eq!(
        events,
        [
            "call.queued",
            "internal.call.ended",
            "internal.call.result_ready",
            "call.completed"
        ]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_extractor_first_then_billing_closes_the_join(pool: PgPool) {
    let org = seed(&pool).await;
    let call = insert_ended_call(&pool, &org, &answered()).await;

    let outcome = extract_call_result(&pool, &BuiltinExtractor, call.id)
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Stored { terminal: None, .. }));
    assert_eq!(
        fetch_call(&pool, call.id).await.status,
        CallStatus::InProgress
    );

    let terminal = finish_billing(&pool, call.id)
        .await
        .expect("billing finished second and closes the join");
    assert_eq!(terminal.event_type, EventType::CallCompleted);
    assert_eq!(
        terminal.call.result,
        Some(serde_json::json!({"party_size": 6, "high_chair": false}))
    );
    // A redelivery to either side afterwards emits nothing more.
    assert_eq!(
        extract_call_result(&pool, &BuiltinExtractor, call.id)
            .await
            .unwrap(),
        Outcome::AlreadyFinal
    );
    assert_eq!(finish_billing(&pool, call.id).await, None);
    let events = outbox_events(&pool, call.id).await;
    assert_eq!(terminal_events(&events), ["call.completed"]);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_unanswered_call_gets_its_own_terminal_event_in_either_order(pool: PgPool) {
    let org = seed(&pool).await;
    for extractor_first in [true, false] {
        let call = insert_ended_call(&pool, &org, &EndedCall::not_answered(CallStatus::Busy)).await;
        if extractor_first {
            extract_call_result(&pool, &BuiltinExtractor, call.id)
                .await
                .unwrap();
            finish_billing(&pool, call.id).await;
        } else {
            finish_billing(&pool, call.id).await;
            extract_call_result(&pool, &BuiltinExtractor, call.id)
                .await
                .unwrap();
        }
        let events = outbox_events(&pool, call.id).await;
        assert_eq!(
            terminal_events(&events),
            ["call.busy"],
            "extractor first: {extractor_first}"
        );
        assert_eq!(fetch_call(&pool, call.id).await.status, CallStatus::Busy);
    }
}

/// The interleaving the join exists for: billing's transaction has left
/// `reserved` but not committed when the extractor writes. The extractor waits
/// on the row lock, then sees billing's commit and closes the join.
#[sqlx::test(migrations = "../../migrations")]
async fn the_extractor_waiting_on_billings_open_transaction_closes_the_join(pool: PgPool) {
    let org = seed(&pool).await;
    let call = insert_ended_call(&pool, &org, &answered()).await;

    let mut billing = pool.begin().await.unwrap();
    sqlx::query("UPDATE calls SET reservation_status = 'settled' WHERE id = $1")
        .bind(call.id)
        .execute(&mut *billing)
        .await
        .unwrap();
    let billing_join = ringer::call::close_completion_join(&mut billing, call.id)
        .await
        .unwrap();
    assert_eq!(
        billing_join, None,
        "the result is still pending in billing's view"
    );

    let extractor = {
        let pool = pool.clone();
        tokio::spawn(async move { extract_call_result(&pool, &BuiltinExtractor, call.id).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !extractor.is_finished(),
        "the extractor waits for billing's row lock"
    );
    billing.commit().await.unwrap();

    let outcome = extractor.await.unwrap().unwrap();
    let Outcome::Stored {
        terminal: Some(terminal),
        ..
    } = outcome
    else {
        panic!("the extractor sees billing's commit and closes the join: {outcome:?}");
    };
    assert_eq!(terminal.event_type, EventType::CallCompleted);
    let events = outbox_events(&pool, call.id).await;
    assert_eq!(terminal_events(&events), ["call.completed"]);
}

/// The extractor and billing finish at the same moment, many times over:
/// every call gets exactly one terminal event, never none and never two.
#[sqlx::test(migrations = "../../migrations")]
async fn racing_billing_yields_exactly_one_terminal_event_per_call(pool: PgPool) {
    const CALLS: usize = 100;
    let org = seed(&pool).await;
    let mut calls = Vec::with_capacity(CALLS);
    for index in 0..CALLS {
        let spec = if index % 5 == 4 {
            EndedCall::not_answered(CallStatus::NoAnswer)
        } else {
            answered()
        };
        calls.push(insert_ended_call(&pool, &org, &spec).await);
    }

    // Waves small enough that the pool does not serialise the two sides.
    let mut closed_by_extractor = 0;
    let mut closed_by_billing = 0;
    for (wave, chunk) in calls.chunks(10).enumerate() {
        let mut races = tokio::task::JoinSet::new();
        for (offset, call) in chunk.iter().enumerate() {
            let index = wave * 10 + offset;
            let (pool, call_id) = (pool.clone(), call.id);
            races.spawn(async move {
                let start = Arc::new(tokio::sync::Barrier::new(2));
                let extractor = {
                    let (pool, start) = (pool.clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        extract_call_result(&pool, &BuiltinExtractor, call_id).await
                    })
                };
                let billing = tokio::spawn(async move {
                    start.wait().await;
                    // Spread billing's start over the extractor's read and
                    // write, so that either side may finish second.
                    let jitter = Duration::from_micros((index as u64 * 7919) % 4000);
                    tokio::time::sleep(jitter).await;
                    finish_billing(&pool, call_id).await
                });
                let extracted = extractor.await.unwrap().unwrap();
                let billed = billing.await.unwrap();
                let by_extractor = matches!(
                    extracted,
                    Outcome::Stored {
                        terminal: Some(_),
                        ..
                    }
                );
                (by_extractor, billed.is_some())
            });
        }
        while let Some(race) = races.join_next().await {
            let (by_extractor, by_billing) = race.unwrap();
            assert!(
                by_extractor != by_billing,
                "exactly one side closes the join"
            );
            closed_by_extractor += usize::from(by_extractor);
            closed_by_billing += usize::from(by_billing);
        }
    }
    assert_eq!(closed_by_extractor + closed_by_billing, CALLS);

    for (index, call) in calls.iter().enumerate() {
        let events = outbox_events(&pool, call.id).await;
        let expected = if index % 5 == 4 {
            "call.no_answer"
        } else {
            "call.completed"
        };
        assert_eq!(terminal_events(&events), [expected], "call {index}");
        assert_eq!(count(&events, EventType::ResultReady), 1, "call {index}");
    }
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE completed_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(open, 0);
    tracing::info!(closed_by_extractor, closed_by_billing, "race outcome");
}
