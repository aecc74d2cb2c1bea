//! The service's step writes the results of concurrent extractions in shared
//! transactions (`ResultWriter`): each call's writes as if alone, its trace
//! kept, and a call that cannot be written failing alone.

use std::sync::Arc;

use ringer::call::{CallStatus, ResultStatus};
use ringer::consumer::{DeliveryInfo, Step};
use ringer::events::{Event, EventType};
use ringer::telemetry::{self, TraceContext};
use ringer_extractor::{BuiltinExtractor, ExtractorStep};
use sqlx::PgPool;

use crate::helpers::{
    EndedCall, fetch_call, finish_billing, insert_ended_call, outbox_events, reservation_returns,
    reservation_transcript, seed,
};

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_results_are_written_together_and_a_broken_call_fails_alone(pool: PgPool) {
    let org = seed(&pool).await;
    let answered = EndedCall::answered(reservation_returns(), &reservation_transcript());
    let mut calls = Vec::new();
    for _ in 0..12 {
        let call = insert_ended_call(&pool, &org, &answered).await;
        assert_eq!(finish_billing(&pool, call.id).await, None);
        calls.push(call);
    }
    // Ended and settled but still `ringing`: no terminal event fits, so its
    // completion join refuses and its whole write rolls back.
    let broken = insert_ended_call(&pool, &org, &answered).await;
    sqlx::query(
        "UPDATE calls SET status = 'ringing', reservation_status = 'released' WHERE id = $1",
    )
    .bind(broken.id)
    .execute(&pool)
    .await
    .unwrap();
    calls.insert(5, broken.clone());

    let step = Arc::new(ExtractorStep::new(pool.clone(), Arc::new(BuiltinExtractor)));
    let trace = TraceContext::parse(TRACE).unwrap();
    let mut running = tokio::task::JoinSet::new();
    for call in &calls {
        let step = step.clone();
        let event = Event::new(EventType::CallEnded, org.id, call.clone(), 2);
        running.spawn(async move {
            let info = DeliveryInfo {
                routing_key: EventType::CallEnded.routing_key().to_owned(),
                redelivered: false,
                delivery_count: 0,
                message_id: Some(event.id.to_string()),
            };
            let call_id = event.call_id;
            let handled = telemetry::within(trace, step.handle(event, info)).await;
            (call_id, handled.is_ok())
        });
    }
    let outcomes = running.join_all().await;
    for (call_id, handled) in &outcomes {
        assert_eq!(*handled, *call_id != broken.id, "{call_id}: {outcomes:?}");
    }

    for call in calls.iter().filter(|call| call.id != broken.id) {
        let stored = fetch_call(&pool, call.id).await;
        assert_eq!(stored.status, CallStatus::Completed);
        assert_eq!(stored.result_status, ResultStatus::Completed);
        let events = outbox_events(&pool, call.id).await;
        assert_eq!(
            &events[2..],
            ["internal.call.result_ready", "call.completed"],
            "{events:?}"
        );
    }
    assert_eq!(
        fetch_call(&pool, broken.id).await.result_status,
        ResultStatus::Pending,
        "the broken call's write rolled back"
    );
    assert_eq!(&outbox_events(&pool, broken.id).await[2..], [] as [&str; 0]);

    // Every event written in a shared transaction continues its own call's trace.
    let traces: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT traceparent FROM outbox \
         WHERE routing_key IN ('internal.call.result_ready', 'call.completed')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(traces.len(), 24);
    assert!(
        traces.iter().all(|trace| trace
            .as_deref()
            .is_some_and(|t| t.starts_with(&TRACE[..36]))),
        "{traces:?}"
    );
}
