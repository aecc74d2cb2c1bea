//! The service's step settles the calls of concurrent `call.ended` events in
//! shared transactions (`Settler`): each call as if alone, its trace kept,
//! and a call that cannot be settled failing alone.

use std::sync::Arc;

use ringer::call::ReservationStatus;
use ringer::consumer::{DeliveryInfo, Step, StepError};
use ringer::telemetry::{self, TraceContext};
use ringer::testing::seed_org;
use ringer_billing::{SettleOnCallEnded, Settler};
use sqlx::PgPool;

use crate::helpers::*;

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_settlements_share_a_transaction_and_a_bad_call_fails_alone(pool: PgPool) {
    let org = seed_org(&pool, 10_000_000).await;
    let mut events = Vec::new();
    for seconds in 1..=12 {
        events.push(ended_call(&pool, &org, Ending::Answered(f64::from(seconds) * 10.0)).await);
    }
    // An `ended` event for a call the database has not ended: poison, alone.
    let live = queued(&pool, &org).await;
    let mut not_ended = events[0].clone();
    not_ended.call_id = live.id;
    not_ended.call = live.clone();
    events.insert(4, not_ended);

    let step = Arc::new(SettleOnCallEnded {
        settler: Settler::start(pool.clone()),
        fault_exit_after_commit: false,
    });
    let trace = TraceContext::parse(TRACE).unwrap();
    let mut running = tokio::task::JoinSet::new();
    for event in events.clone() {
        let step = step.clone();
        running.spawn(async move {
            let info = DeliveryInfo {
                routing_key: event.event_type.routing_key().to_owned(),
                redelivered: false,
                delivery_count: 0,
                message_id: Some(event.id.to_string()),
            };
            let call_id = event.call_id;
            let handled = telemetry::within(trace, step.handle(event, info)).await;
            (call_id, handled)
        });
    }
    for (call_id, handled) in running.join_all().await {
        if call_id == live.id {
            assert!(matches!(handled, Err(StepError::Poison(_))), "{handled:?}");
        } else {
            assert!(handled.is_ok(), "{call_id}: {handled:?}");
        }
    }

    for event in events.iter().filter(|event| event.call_id != live.id) {
        let settled = call(&pool, event.call_id).await;
        assert_eq!(settled.reservation_status, ReservationStatus::Settled);
        let entries = entries(&pool, event.call_id).await;
        assert_eq!(
            (entries.hold.len(), entries.charge.len()),
            (1, 1),
            "{entries:?}"
        );
    }
    assert_eq!(
        call(&pool, live.id).await.reservation_status,
        ReservationStatus::Reserved,
        "the call that had not ended is untouched"
    );
    assert_ledger_consistent(&pool).await;

    // Every event written in a shared transaction continues its own call's trace.
    let traces: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT traceparent FROM outbox WHERE routing_key = 'internal.call.billed'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(traces.len(), 12);
    assert!(
        traces.iter().all(|trace| trace
            .as_deref()
            .is_some_and(|t| t.starts_with(&TRACE[..36]))),
        "{traces:?}"
    );
}
