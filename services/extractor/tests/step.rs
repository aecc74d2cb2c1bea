use std::future::Future;

use ringer::call::{CallStatus, ResultStatus, VoicemailAction};
use ringer::consumer::StepError;
use ringer::events::EventType;
use ringer_extractor::{
    BuiltinExtractor, ExtractionError, ExtractionRequest, Extractor, Outcome, extract_call_result,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{
    EndedCall, Ending, count, fetch_call, insert_ended_call, outbox_events, reservation_returns,
    reservation_transcript, seed, terminal_events,
};

/// An extractor that answers the same value for every call.
struct Fixed(Value);

impl Extractor for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn extract(
        &self,
        _request: &ExtractionRequest<'_>,
    ) -> impl Future<Output = Result<Value, ExtractionError>> + Send {
        std::future::ready(Ok(self.0.clone()))
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_answered_call_gets_the_builtin_extractors_result(pool: PgPool) {
    let org = seed(&pool).await;
    let call = insert_ended_call(
        &pool,
        &org,
        &EndedCall::answered(reservation_returns(), &reservation_transcript()),
    )
    .await;

    let outcome = extract_call_result(&pool, &BuiltinExtractor, call.id)
        .await
        .unwrap();

    let Outcome::Stored {
        call: stored,
        terminal,
    } = outcome
    else {
        panic!("the result is stored: {outcome:?}");
    };
    assert_eq!(terminal, None, "billing has not finished yet");
    assert_eq!(stored.result_status, ResultStatus::Completed);
    assert_eq!(
        stored.result,
        Some(json!({"party_size": 6, "high_chair": false}))
    );
    assert_eq!(stored.result_error, None);
    assert_eq!(stored.status, CallStatus::InProgress);
    assert_eq!(fetch_call(&pool, call.id).await, *stored);
    let events = outbox_events(&pool, call.id).await;
    assert_eq!(
        events,
        [
            "call.queued",
            "internal.call.ended",
            "internal.call.result_ready"
        ]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_result_ready_event_carries_the_stored_result(pool: PgPool) {
    let org = seed(&pool).await;
    let call = insert_ended_call(
        &pool,
        &org,
        &EndedCall::answered(reservation_returns(), &reservation_transcript()),
    )
    .await;
    extract_call_result(&pool, &BuiltinExtractor, call.id)
        .await
        .unwrap();
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE routing_key = 'internal.call.result_ready'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(payload["call_id"], json!(call.id));
    assert_eq!(payload["call"]["result_status"], "completed");
    assert_eq!(payload["call"]["result"]["party_size"], 6);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_call_without_returns_gets_an_empty_result(pool: PgPool) {
    let org = seed(&pool).await;
    let mut spec = EndedCall::answered(json!({}), &reservation_transcript());
    spec.returns = None;
    let call = insert_ended_call(&pool, &org, &spec).await;

    extract_call_result(&pool, &BuiltinExtractor, call.id)
        .await
        .unwrap();

    let stored = fetch_call(&pool, call.id).await;
    assert_eq!(stored.result_status, ResultStatus::Completed);
    assert_eq!(stored.result, Some(json!({})));
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_unanswered_call_fails_with_a_clear_error(pool: PgPool) {
    let org = seed(&pool).await;
    for status in [CallStatus::NoAnswer, CallStatus::Busy, CallStatus::Canceled] {
        let call = insert_ended_call(&pool, &org, &EndedCall::not_answered(status)).await;

        extract_call_result(&pool, &BuiltinExtractor, call.id)
            .await
            .unwrap();

        let stored = fetch_call(&pool, call.id).await;
        assert_eq!(stored.result_status, ResultStatus::Failed);
        assert_eq!(stored.result, None);
        assert_eq!(
            stored.result_error.as_deref(),
            Some(
                format!("The call was not answered ({status}), so nothing was extracted.").as_str()
            )
        );
        assert_eq!(stored.status, status);
        assert_eq!(
            count(&outbox_events(&pool, call.id).await, EventType::ResultReady),
            1
        );
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_voicemail_completes_with_every_field_null(pool: PgPool) {
    let org = seed(&pool).await;
    let mut spec = EndedCall::answered(
        reservation_returns(),
        &[
            (
                "callee",
                "Hi, you've reached Ana. Please leave a message after the tone.",
            ),
            (
                "agent",
                "Hello, this is Sam from Bella Cucina calling about your reservation for six.",
            ),
        ],
    );
    spec.ending = Ending::Voicemail;
    spec.voicemail_action = VoicemailAction::LeaveMessage;
    let call = insert_ended_call(&pool, &org, &spec).await;

    // Even an extractor that would answer something is not asked.
    extract_call_result(
        &pool,
        &Fixed(json!({"party_size": 6, "high_chair": true})),
        call.id,
    )
    .await
    .unwrap();

    let stored = fetch_call(&pool, call.id).await;
    assert_eq!(stored.result_status, ResultStatus::Completed);
    assert_eq!(
        stored.result,
        Some(json!({"party_size": null, "high_chair": null}))
    );
    assert_eq!(stored.result_error, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_answered_call_where_the_callee_said_nothing_completes_with_nulls(pool: PgPool) {
    let org = seed(&pool).await;
    let spec = EndedCall::answered(
        reservation_returns(),
        &[("agent", "Hi, how many people will be in your party?")],
    );
    let call = insert_ended_call(&pool, &org, &spec).await;

    extract_call_result(&pool, &BuiltinExtractor, call.id)
        .await
        .unwrap();

    let stored = fetch_call(&pool, call.id).await;
    assert_eq!(stored.result_status, ResultStatus::Completed);
    assert_eq!(
        stored.result,
        Some(json!({"party_size": null, "high_chair": null}))
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_wrong_typed_value_is_never_stored(pool: PgPool) {
    let org = seed(&pool).await;
    let cases = [
        (
            json!({"party_size": "six", "high_chair": false}),
            "result.party_size must be an integer or null, got \"six\"",
        ),
        (
            json!({"party_size": 6}),
            "result is missing field \"high_chair\" declared in returns",
        ),
        (
            json!({"party_size": 6, "high_chair": false, "notes": "x"}),
            "result has field \"notes\" that returns does not declare",
        ),
        (json!([6, false]), "result must be an object"),
    ];
    for (answer, reason) in cases {
        let call = insert_ended_call(
            &pool,
            &org,
            &EndedCall::answered(reservation_returns(), &reservation_transcript()),
        )
        .await;

        extract_call_result(&pool, &Fixed(answer.clone()), call.id)
            .await
            .unwrap();

        let stored = fetch_call(&pool, call.id).await;
        assert_eq!(stored.result_status, ResultStatus::Failed, "{answer}");
        assert_eq!(stored.result, None, "{answer}");
        let error = stored.result_error.unwrap();
        assert!(
            error.starts_with(
                "Extraction failed: the fixed extractor's answer does not match the returns schema ("
            ) && error.contains(reason)
                && error.ends_with("so no result was stored."),
            "{error}"
        );
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_redelivered_event_changes_nothing_and_emits_nothing(pool: PgPool) {
    let org = seed(&pool).await;
    for spec in [
        EndedCall::answered(reservation_returns(), &reservation_transcript()),
        EndedCall::not_answered(CallStatus::NoAnswer),
    ] {
        let call = insert_ended_call(&pool, &org, &spec).await;
        extract_call_result(&pool, &BuiltinExtractor, call.id)
            .await
            .unwrap();
        let stored = fetch_call(&pool, call.id).await;
        let events = outbox_events(&pool, call.id).await;

        // Redeliveries, even to an extractor that would now answer differently.
        for _ in 0..3 {
            let outcome = extract_call_result(
                &pool,
                &Fixed(json!({"party_size": 2, "high_chair": true})),
                call.id,
            )
            .await
            .unwrap();
            assert_eq!(outcome, Outcome::AlreadyFinal);
        }

        assert_eq!(fetch_call(&pool, call.id).await, stored);
        assert_eq!(outbox_events(&pool, call.id).await, events);
        assert!(terminal_events(&events).is_empty());
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_deliveries_store_one_result(pool: PgPool) {
    let org = seed(&pool).await;
    let call = insert_ended_call(
        &pool,
        &org,
        &EndedCall::answered(reservation_returns(), &reservation_transcript()),
    )
    .await;
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let pool = pool.clone();
        runs.spawn(async move { extract_call_result(&pool, &BuiltinExtractor, call.id).await });
    }
    let mut stored = 0;
    while let Some(outcome) = runs.join_next().await {
        if let Outcome::Stored { .. } = outcome.unwrap().unwrap() {
            stored += 1;
        }
    }
    assert_eq!(stored, 1);
    let events = outbox_events(&pool, call.id).await;
    assert_eq!(count(&events, EventType::ResultReady), 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_unknown_call_is_poison(pool: PgPool) {
    seed(&pool).await;
    let error = extract_call_result(&pool, &BuiltinExtractor, Uuid::now_v7())
        .await
        .unwrap_err();
    assert!(matches!(error, StepError::Poison(_)), "{error}");
}
