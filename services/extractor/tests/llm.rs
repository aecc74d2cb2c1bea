//! The LLM extractor against a local fake of an OpenAI-compatible endpoint.

use std::time::{Duration, Instant};

use ringer::call::{Call, Language, ResultStatus};
use ringer::returns::ReturnsSchema;
use ringer_extractor::{LlmExtractor, extract_call_result};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{
    EndedCall, FakeLlm, Reply, fetch_call, insert_ended_call, reservation_returns,
    reservation_transcript, seed,
};

const SECOND: Duration = Duration::from_secs(1);

async fn extract_with(pool: &PgPool, extractor: &LlmExtractor) -> Call {
    let org = seed(pool).await;
    let call = insert_ended_call(
        pool,
        &org,
        &EndedCall::answered(reservation_returns(), &reservation_transcript()),
    )
    .await;
    extract_call_result(pool, extractor, call.id)
        .await
        .expect("an LLM failure is a failed result, not a failed step");
    fetch_call(pool, call.id).await
}

fn assert_failed(call: &Call, expected_error: &str) {
    assert_eq!(call.result_status, ResultStatus::Failed);
    assert_eq!(call.result, None, "a failed extraction stores no value");
    assert_eq!(call.result_error.as_deref(), Some(expected_error));
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_structured_answer_is_stored(pool: PgPool) {
    let fake = FakeLlm::start(vec![Reply::json(
        json!({"party_size": 6, "high_chair": false}),
    )])
    .await;

    let call = extract_with(&pool, &fake.extractor(3, SECOND)).await;

    assert_eq!(call.result_status, ResultStatus::Completed);
    assert_eq!(
        call.result,
        Some(json!({"party_size": 6, "high_chair": false}))
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(request.body["model"], "test-model");
    let schema = ReturnsSchema::parse(&reservation_returns()).unwrap();
    assert_eq!(
        request.body["response_format"],
        json!({
            "type": "json_schema",
            "json_schema": {"name": "call_result", "strict": true, "schema": schema.to_json_schema()},
        })
    );
    let messages = request.body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    let user = messages[1]["content"].as_str().unwrap();
    assert!(user.contains("Call date: 2026-03-11 (Wednesday)"), "{user}");
    assert!(user.contains("- party_size (integer)"), "{user}");
    assert!(user.contains("Callee: We'll be six."), "{user}");
}

#[sqlx::test(migrations = "../../migrations")]
async fn server_errors_are_retried_until_an_answer_comes(pool: PgPool) {
    let fake = FakeLlm::start(vec![
        Reply::Status(500, "{\"error\": {\"message\": \"overloaded\"}}".into()),
        Reply::Status(503, String::new()),
        Reply::Status(429, "slow down".into()),
        Reply::json(json!({"party_size": 6, "high_chair": null})),
    ])
    .await;

    let call = extract_with(&pool, &fake.extractor(4, SECOND)).await;

    assert_eq!(call.result_status, ResultStatus::Completed);
    assert_eq!(
        call.result,
        Some(json!({"party_size": 6, "high_chair": null}))
    );
    assert_eq!(fake.requests().len(), 4);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_endpoint_that_keeps_failing_gives_a_clear_error(pool: PgPool) {
    let fake = FakeLlm::start(vec![Reply::Status(
        500,
        "{\"error\": {\"message\": \"The server had an error\"}}".into(),
    )])
    .await;

    let call = extract_with(&pool, &fake.extractor(3, SECOND)).await;

    assert_failed(
        &call,
        "Extraction failed: the LLM endpoint did not answer successfully after 3 attempts \
         (last error: HTTP 500 Internal Server Error: {\"error\": {\"message\": \"The server had an error\"}}).",
    );
    assert_eq!(fake.requests().len(), 3);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_client_error_is_not_retried(pool: PgPool) {
    let fake = FakeLlm::start(vec![Reply::Status(401, "invalid api key".into())]).await;

    let call = extract_with(&pool, &fake.extractor(3, SECOND)).await;

    assert_failed(
        &call,
        "Extraction failed: the LLM endpoint did not answer successfully after 1 attempt \
         (last error: HTTP 401 Unauthorized: invalid api key).",
    );
    assert_eq!(fake.requests().len(), 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_slow_endpoint_times_out_and_is_retried(pool: PgPool) {
    let answer = Reply::json(json!({"party_size": 6, "high_chair": false}));
    let fake = FakeLlm::start(vec![Reply::Slow(Duration::from_secs(5), Box::new(answer))]).await;

    let started = Instant::now();
    let call = extract_with(&pool, &fake.extractor(2, Duration::from_millis(300))).await;

    assert_failed(
        &call,
        "Extraction failed: the LLM endpoint did not answer successfully after 2 attempts \
         (last error: no answer within 300ms).",
    );
    assert_eq!(fake.requests().len(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout cut both attempts short"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_timeout_then_an_answer_succeeds(pool: PgPool) {
    let answer = Reply::json(json!({"party_size": 6, "high_chair": false}));
    let fake = FakeLlm::start(vec![
        Reply::Slow(Duration::from_secs(5), Box::new(answer.clone())),
        answer,
    ])
    .await;

    let call = extract_with(&pool, &fake.extractor(3, Duration::from_millis(300))).await;

    assert_eq!(call.result_status, ResultStatus::Completed);
    assert_eq!(fake.requests().len(), 2);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_answer_that_is_not_json_fails_clearly(pool: PgPool) {
    let fake = FakeLlm::start(vec![Reply::Content(
        "Sure! They will be six and need no high chair.".into(),
    )])
    .await;

    let call = extract_with(&pool, &fake.extractor(3, SECOND)).await;

    assert_failed(
        &call,
        "Extraction failed: the LLM answered off-schema: the answer is not valid JSON \
         (expected value at line 1 column 1): \"Sure! They will be six and need no high chair.\".",
    );
    assert_eq!(
        fake.requests().len(),
        1,
        "an off-schema answer is not retried"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_wrong_typed_value_from_the_llm_is_never_stored(pool: PgPool) {
    let fake = FakeLlm::start(vec![Reply::json(
        json!({"party_size": "six", "high_chair": false}),
    )])
    .await;

    let call = extract_with(&pool, &fake.extractor(3, SECOND)).await;

    assert_failed(
        &call,
        "Extraction failed: the llm extractor's answer does not match the returns schema \
         (result.party_size must be an integer or null, got \"six\"), so no result was stored.",
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_answer_with_missing_or_extra_keys_is_off_schema(pool: PgPool) {
    for (answer, reason) in [
        (
            json!({"party_size": 6}),
            "result is missing field \"high_chair\" declared in returns",
        ),
        (
            json!({"party_size": 6, "high_chair": false, "mood": "happy"}),
            "result has field \"mood\" that returns does not declare",
        ),
    ] {
        let fake = FakeLlm::start(vec![Reply::json(answer)]).await;
        let call = extract_with(&pool, &fake.extractor(3, SECOND)).await;
        assert_eq!(call.result_status, ResultStatus::Failed);
        assert_eq!(call.result, None);
        assert!(call.result_error.unwrap().contains(reason));
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_unreachable_endpoint_fails_after_its_retries(pool: PgPool) {
    // A port nothing listens on: bind one, then free it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let extractor = LlmExtractor::new(ringer_extractor::LlmSettings {
        base_url: format!("http://{addr}/v1/"),
        model: "test-model".into(),
        api_key: None,
        timeout: SECOND,
        retry: ringer::retry::RetryPolicy::new(2, Duration::ZERO),
    })
    .unwrap();

    let call = extract_with(&pool, &extractor).await;

    assert_failed(
        &call,
        &format!(
            "Extraction failed: the LLM endpoint did not answer successfully after 2 attempts \
             (last error: could not connect to http://{addr}/v1/chat/completions)."
        ),
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn spanish_calls_and_every_type_round_trip(pool: PgPool) {
    let returns = json!({
        "nombre": "string",
        "edad": "integer?",
        "altura": "number",
        "confirmado": "boolean",
        "fecha": "date",
        "hora": "datetime",
        "mesa": "enum:interior|terraza",
        "notas": {"type": "string", "maxLength": 20, "description": "Peticiones"},
    });
    let answer = json!({
        "nombre": "Ana Torres", "edad": null, "altura": 1.68, "confirmado": true,
        "fecha": "2026-03-17", "hora": "2026-03-17T20:30:00+01:00", "mesa": "terraza",
        "notas": "cumpleaños",
    });
    let fake = FakeLlm::start(vec![Reply::json(answer.clone())]).await;
    let org = seed(&pool).await;
    let mut spec = EndedCall::answered(
        returns,
        &[
            ("agent", "¿Me puede decir su nombre completo?"),
            ("callee", "Ana Torres."),
        ],
    );
    spec.language = Language::Es;
    let call = insert_ended_call(&pool, &org, &spec).await;

    extract_call_result(&pool, &fake.extractor(1, SECOND), call.id)
        .await
        .unwrap();

    let stored = fetch_call(&pool, call.id).await;
    assert_eq!(stored.result_status, ResultStatus::Completed);
    assert_eq!(stored.result, Some(answer));
    let body: Value = fake.requests()[0].body.clone();
    let user = body["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("Conversation language: es"), "{user}");
    assert!(
        user.contains("- mesa (one of: interior, terraza)"),
        "{user}"
    );
    assert!(user.contains("- notas (string): Peticiones"), "{user}");
}
