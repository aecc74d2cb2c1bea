//! Every malformed request gets a clear 4xx and writes nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, assert_error, call_body, spawn_app, spawn_app_with};

async fn assert_rejected(app: &TestApp, body: Value, code: &str, param: Option<&str>) {
    let response = app.post("/v1/calls", &body).await;
    assert_error(response, StatusCode::BAD_REQUEST, code, param).await;
    assert_eq!(app.written().await, (0, 0, 0), "{body}");
}

fn with(field: &str, value: Value) -> Value {
    let mut body = call_body("+14155550100");
    body[field] = value;
    body
}

#[sqlx::test(migrations = "../../migrations")]
async fn invalid_fields_are_refused_with_their_param(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_rejected(
        &app,
        json!({"prompt": "x"}),
        "parameter_missing",
        Some("to"),
    )
    .await;
    assert_rejected(
        &app,
        json!({"to": "+14155550100"}),
        "parameter_missing",
        Some("prompt"),
    )
    .await;
    assert_rejected(
        &app,
        with("to", json!(14155550100u64)),
        "parameter_invalid",
        Some("to"),
    )
    .await;
    for bad in [
        "4155550100",
        "+0123456789",
        "+1 415 555 0100",
        "+1415",
        "+1234567890123456",
        "++14155550100",
    ] {
        assert_rejected(
            &app,
            with("to", json!(bad)),
            "parameter_invalid",
            Some("to"),
        )
        .await;
    }
    assert_rejected(
        &app,
        with("prompt", json!("   ")),
        "parameter_invalid",
        Some("prompt"),
    )
    .await;
    assert_rejected(
        &app,
        with("prompt", json!(["a"])),
        "parameter_invalid",
        Some("prompt"),
    )
    .await;
    assert_rejected(
        &app,
        with("context", json!("text")),
        "parameter_invalid",
        Some("context"),
    )
    .await;
    assert_rejected(
        &app,
        with("returns", json!({"age": "int"})),
        "parameter_invalid",
        Some("returns.age"),
    )
    .await;
    assert_rejected(
        &app,
        with("returns", json!({"when": {"type": "object"}})),
        "parameter_invalid",
        Some("returns.when.type"),
    )
    .await;
    assert_rejected(
        &app,
        with("returns", json!(["age"])),
        "parameter_invalid",
        Some("returns"),
    )
    .await;
    assert_rejected(
        &app,
        with("language", json!("fr")),
        "parameter_invalid",
        Some("language"),
    )
    .await;
    assert_rejected(
        &app,
        with("voicemail_action", json!("shout")),
        "parameter_invalid",
        Some("voicemail_action"),
    )
    .await;
    for bad in [
        json!(-1),
        json!(0),
        json!(3601),
        json!(1e12),
        json!(1.5),
        json!("60"),
    ] {
        assert_rejected(
            &app,
            with("max_duration_seconds", bad),
            "parameter_invalid",
            Some("max_duration_seconds"),
        )
        .await;
    }
    assert_rejected(
        &app,
        with("webhook_url", json!("ftp://example.com/x")),
        "parameter_invalid",
        Some("webhook_url"),
    )
    .await;
    assert_rejected(
        &app,
        with("webhook_url", json!("not a url")),
        "parameter_invalid",
        Some("webhook_url"),
    )
    .await;
    assert_rejected(
        &app,
        with("metadata", json!([1])),
        "parameter_invalid",
        Some("metadata"),
    )
    .await;
    assert_rejected(
        &app,
        with("tools", json!([{"type": "http", "name": "x"}])),
        "parameter_invalid",
        Some("tools[0].description"),
    )
    .await;
    assert_rejected(
        &app,
        with("tools", json!({"a": 1})),
        "parameter_invalid",
        Some("tools"),
    )
    .await;
    assert_rejected(
        &app,
        with("surprise", json!(1)),
        "parameter_unknown",
        Some("surprise"),
    )
    .await;
    assert_rejected(
        &app,
        with("from_number", json!("+19995550000")),
        "parameter_invalid",
        Some("from_number"),
    )
    .await;
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn http_webhook_urls_need_dev_mode(pool: PgPool) {
    let app = spawn_app_with(pool, 500_000, |config| config.common.dev_mode = false).await;
    assert_rejected(
        &app,
        with("webhook_url", json!("http://example.com/hook")),
        "parameter_invalid",
        Some("webhook_url"),
    )
    .await;
    let call = app
        .create_call(&with("webhook_url", json!("https://example.com/hook")))
        .await;
    assert_eq!(call["webhook_status"], "pending");
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn malformed_bodies_are_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    let raw = |content_type: &'static str, body: Vec<u8>| {
        app.client
            .post(app.url("/v1/calls"))
            .bearer_auth(&app.org.api_key)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let response = raw("application/json", b"{\"to\": \"+1415\xff\"}".to_vec())
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_utf8", None).await;
    let response = raw("application/json", b"{\"to\": ".to_vec())
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_json", None).await;
    let response = raw("application/json", b"[1, 2]".to_vec()).await.unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_json", None).await;
    let response = raw(
        "text/plain",
        serde_json::to_vec(&call_body("+14155550100")).unwrap(),
    )
    .await
    .unwrap();
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_content_type",
        None,
    )
    .await;
    let huge = json!({"to": "+14155550100", "prompt": "x".repeat(300 * 1024)});
    let response = raw("application/json", serde_json::to_vec(&huge).unwrap())
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        None,
    )
    .await;
    assert_eq!(app.written().await, (0, 0, 0));
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_queries_and_ids_are_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    for (path, code, param) in [
        ("/v1/calls?limit=0", "parameter_invalid", Some("limit")),
        ("/v1/calls?limit=101", "parameter_invalid", Some("limit")),
        ("/v1/calls?limit=abc", "parameter_invalid", Some("limit")),
        (
            "/v1/calls?starting_after=nope",
            "parameter_invalid",
            Some("starting_after"),
        ),
        (
            "/v1/calls?ending_before=00000000-0000-0000-0000-000000000000",
            "parameter_invalid",
            Some("ending_before"),
        ),
        (
            "/v1/calls?status=flying",
            "parameter_invalid",
            Some("status"),
        ),
        (
            "/v1/calls?created_after=yesterday",
            "parameter_invalid",
            Some("created_after"),
        ),
        ("/v1/calls?to=12345", "parameter_invalid", Some("to")),
        ("/v1/calls?bogus=1", "invalid_query", None),
        (
            "/v1/numbers/available?country_code=ZZ",
            "parameter_invalid",
            Some("country_code"),
        ),
    ] {
        assert_error(app.get(path).await, StatusCode::BAD_REQUEST, code, param).await;
    }
    for path in [
        "/v1/calls/not-a-uuid",
        "/v1/calls/00000000-0000-0000-0000-000000000000",
        "/v1/nothing",
    ] {
        assert_error(
            app.get(path).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
            None,
        )
        .await;
    }
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_and_revoked_keys_are_refused(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let no_key = app.client.get(app.url("/v1/calls")).send().await.unwrap();
    assert_error(no_key, StatusCode::UNAUTHORIZED, "invalid_api_key", None).await;
    let wrong = app
        .get_as("sk_0000000000000000000000000000000000000000", "/v1/calls")
        .await;
    assert_error(wrong, StatusCode::UNAUTHORIZED, "invalid_api_key", None).await;
    let malformed = app
        .client
        .get(app.url("/v1/calls"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_error(malformed, StatusCode::UNAUTHORIZED, "invalid_api_key", None).await;

    let mut conn = pool.acquire().await.unwrap();
    ringer::orgs::revoke_api_key(
        &mut conn,
        &app.org.api_key[..ringer::orgs::API_KEY_PREFIX_LEN],
    )
    .await
    .unwrap();
    let revoked = app.post("/v1/calls", &call_body("+14155550100")).await;
    assert_error(revoked, StatusCode::UNAUTHORIZED, "invalid_api_key", None).await;
    assert_eq!(app.written().await, (0, 0, 0));
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_burst_over_the_rate_limit_gets_429_with_retry_after(pool: PgPool) {
    let app = spawn_app_with(pool, 500_000, |config| config.rate_limit_per_second = 2).await;
    let mut limited = None;
    for _ in 0..10 {
        let response = app.get("/v1/balance").await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("the burst is limited");
    assert!(response.headers().contains_key("retry-after"));
    assert_error(
        response,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        None,
    )
    .await;
    app.stop().await;
}
