//! `/v1/webhook_endpoints` and `/v1/webhook_deliveries`.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

const HOOK: &str = "http://127.0.0.1:9/hooks";

async fn create_endpoint(app: &crate::helpers::TestApp, body: &Value) -> Value {
    let response = app.post("/v1/webhook_endpoints", body).await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{:?}",
        response.text().await
    );
    response.json().await.unwrap()
}

async fn patch(app: &crate::helpers::TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .patch(app.url(path))
        .bearer_auth(&app.org.api_key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn delete(app: &crate::helpers::TestApp, path: &str) -> reqwest::Response {
    app.client
        .delete(app.url(path))
        .bearer_auth(&app.org.api_key)
        .send()
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn endpoints_are_created_listed_updated_and_deleted(pool: PgPool) {
    let app = spawn_app(pool).await;
    let created = create_endpoint(
        &app,
        &json!({"url": HOOK, "description": "CRM", "enabled_events": ["call.completed", "call.failed", "call.completed"]}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["signing_secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() > 40);
    assert_eq!(created["org_id"], app.org.id.to_string());
    assert_eq!(
        created["enabled_events"],
        json!(["call.completed", "call.failed"])
    );
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["consecutive_failures"], 0);
    assert_eq!(created["disabled_reason"], Value::Null);
    for field in [
        "created_at",
        "updated_at",
        "description",
        "url",
        "disabled_at",
    ] {
        assert!(created.get(field).is_some(), "{field}");
    }

    let defaults = create_endpoint(&app, &json!({"url": HOOK})).await;
    assert_eq!(defaults["enabled_events"], json!(["*"]));

    let list: Value = app.get("/v1/webhook_endpoints").await.json().await.unwrap();
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert!(
        data.iter().all(|e| e.get("signing_secret").is_none()),
        "secrets are shown once"
    );
    assert_eq!(data[0]["id"], defaults["id"], "newest first");

    let fetched: Value = app
        .get(&format!("/v1/webhook_endpoints/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["description"], "CRM");
    assert!(fetched.get("signing_secret").is_none());

    let response = patch(
        &app,
        &format!("/v1/webhook_endpoints/{id}"),
        &json!({"description": null, "enabled_events": ["*", "call.busy"], "url": "http://127.0.0.1:10/new"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["description"], Value::Null);
    assert_eq!(patched["enabled_events"], json!(["*"]));
    assert_eq!(patched["url"], "http://127.0.0.1:10/new");

    // Disable, then enable: the counter and reason are cleared.
    sqlx::query(
        "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = 'too_many_failures', \
         disabled_at = now(), consecutive_failures = 10 WHERE id = $1",
    )
    .bind(Uuid::parse_str(&id).unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    let enabled: Value = patch(
        &app,
        &format!("/v1/webhook_endpoints/{id}"),
        &json!({"status": "enabled"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(enabled["status"], "enabled");
    assert_eq!(enabled["consecutive_failures"], 0);
    assert_eq!(enabled["disabled_reason"], Value::Null);
    assert_eq!(enabled["disabled_at"], Value::Null);
    let disabled: Value = patch(
        &app,
        &format!("/v1/webhook_endpoints/{id}"),
        &json!({"status": "disabled"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(disabled["status"], "disabled");
    assert!(disabled["disabled_at"].is_string());

    let response = delete(&app, &format!("/v1/webhook_endpoints/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted, json!({"id": id, "deleted": true}));
    let response = app.get(&format!("/v1/webhook_endpoints/{id}")).await;
    assert_error(response, StatusCode::NOT_FOUND, "resource_missing", None).await;
    let list: Value = app.get("/v1/webhook_endpoints").await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_endpoint_input_is_a_400_naming_the_field(pool: PgPool) {
    let app = spawn_app(pool).await;
    for (body, code, param) in [
        (json!({}), "parameter_missing", "url"),
        (json!({"url": 5}), "parameter_invalid", "url"),
        (json!({"url": "not a url"}), "parameter_invalid", "url"),
        (
            json!({"url": "ftp://example.com/x"}),
            "parameter_invalid",
            "url",
        ),
        (
            json!({"url": HOOK, "enabled_events": []}),
            "parameter_invalid",
            "enabled_events",
        ),
        (
            json!({"url": HOOK, "enabled_events": ["call.exploded"]}),
            "parameter_invalid",
            "enabled_events",
        ),
        (
            json!({"url": HOOK, "enabled_events": ["internal.call.ended"]}),
            "parameter_invalid",
            "enabled_events",
        ),
        (
            json!({"url": HOOK, "enabled_events": "*"}),
            "parameter_invalid",
            "enabled_events",
        ),
        (
            json!({"url": HOOK, "description": 7}),
            "parameter_invalid",
            "description",
        ),
        (
            json!({"url": HOOK, "secret": "mine"}),
            "parameter_unknown",
            "secret",
        ),
    ] {
        let response = app.post("/v1/webhook_endpoints", &body).await;
        assert_error(response, StatusCode::BAD_REQUEST, code, Some(param)).await;
    }
    let created = create_endpoint(&app, &json!({"url": HOOK})).await;
    let path = format!("/v1/webhook_endpoints/{}", created["id"].as_str().unwrap());
    for (body, param) in [
        (json!({"status": "paused"}), "status"),
        (json!({"enabled_events": ["call.nope"]}), "enabled_events"),
        (json!({"url": "mailto:a@b.c"}), "url"),
    ] {
        let response = patch(&app, &path, &body).await;
        assert_error(
            response,
            StatusCode::BAD_REQUEST,
            "parameter_invalid",
            Some(param),
        )
        .await;
    }
    let rotate = format!("{path}/rotate_secret");
    let response = app.post(&rotate, &json!({"overlap_seconds": -1})).await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "parameter_invalid",
        Some("overlap_seconds"),
    )
    .await;
    let response = app.get("/v1/webhook_deliveries?limit=201").await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "parameter_invalid",
        Some("limit"),
    )
    .await;
    let response = app.get("/v1/webhook_deliveries?status=lost").await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "parameter_invalid",
        Some("status"),
    )
    .await;
    let response = app.get("/v1/webhook_deliveries?endpoint_id=abc").await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "parameter_invalid",
        Some("endpoint_id"),
    )
    .await;
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn outside_dev_mode_internal_and_plain_http_urls_are_refused(pool: PgPool) {
    let app = spawn_app_with(pool, 500_000, |config| config.common.dev_mode = false).await;
    for (url, rule) in [
        ("http://example.com/hooks", "https"),
        ("https://127.0.0.1/hooks", "loopback"),
        ("https://10.0.0.8/hooks", "private"),
        ("https://169.254.169.254/latest", "link-local"),
        ("https://100.64.0.1/hooks", "CGNAT"),
        ("https://[::1]/hooks", "loopback"),
        ("https://localhost/hooks", "loopback"),
    ] {
        let response = app
            .post("/v1/webhook_endpoints", &json!({"url": url}))
            .await;
        let body = assert_error(
            response,
            StatusCode::BAD_REQUEST,
            "parameter_invalid",
            Some("url"),
        )
        .await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(rule), "{url}: {message}");
    }
    let (endpoints,): (i64,) = sqlx::query_as("SELECT count(*) FROM webhook_endpoints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(endpoints, 0);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn rotation_returns_a_new_secret_and_keeps_the_old_one_for_the_overlap(pool: PgPool) {
    let app = spawn_app(pool).await;
    let created = create_endpoint(&app, &json!({"url": HOOK})).await;
    let id = created["id"].as_str().unwrap();
    let first = created["signing_secret"].as_str().unwrap().to_owned();

    let response = app
        .post(
            &format!("/v1/webhook_endpoints/{id}/rotate_secret"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let rotated: Value = response.json().await.unwrap();
    let second = rotated["signing_secret"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(rotated["id"], id);

    // No body at all is fine too; overlap 0 cuts over at once.
    let response = app
        .client
        .post(app.url(&format!("/v1/webhook_endpoints/{id}/rotate_secret")))
        .bearer_auth(&app.org.api_key)
        .json(&json!({"overlap_seconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let third: Value = response.json().await.unwrap();
    let third = third["signing_secret"].as_str().unwrap().to_owned();
    let response = app
        .client
        .post(app.url(&format!("/v1/webhook_endpoints/{id}/rotate_secret")))
        .bearer_auth(&app.org.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let valid: Vec<(String, Option<f64>)> = sqlx::query_as(
        "SELECT secret, EXTRACT(EPOCH FROM expires_at - now())::float8 FROM webhook_endpoint_secrets \
         WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > now()) ORDER BY id",
    )
    .bind(Uuid::parse_str(id).unwrap())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let secrets: Vec<&str> = valid.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        !secrets.contains(&first.as_str()),
        "cut over at once with overlap 0"
    );
    assert!(
        !secrets.contains(&second.as_str()),
        "cut over at once with overlap 0"
    );
    assert!(
        secrets.contains(&third.as_str()),
        "the default overlap keeps the previous secret"
    );
    let (_, left) = valid.iter().find(|(s, _)| *s == third).unwrap();
    let left = left.unwrap();
    assert!(
        (86_000.0..=86_400.0).contains(&left),
        "24 h overlap: {left}"
    );
    assert_eq!(valid.len(), 2);
    app.stop().await;
}

async fn insert_delivery(
    app: &crate::helpers::TestApp,
    endpoint_id: Option<Uuid>,
    status: &str,
) -> Uuid {
    let call = ringer::testing::insert_queued_call(
        &app.pool,
        &ringer::testing::new_call(&app.org, "+14155550100"),
    )
    .await;
    let event_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhook_messages (event_id, org_id, call_id, event_type, sequence, body) \
         VALUES ($1, $2, $3, 'call.queued', 1, '{}')",
    )
    .bind(event_id)
    .bind(app.org.id)
    .bind(call.id)
    .execute(&app.pool)
    .await
    .unwrap();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, org_id, event_id, endpoint_id, call_id, event_type, sequence, url, \
           status, attempt_count, last_error, last_response_status, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, 'call.queued', 1, $6, $7, 8, 'the endpoint answered 500', 500, NULL)",
    )
    .bind(id)
    .bind(app.org.id)
    .bind(event_id)
    .bind(endpoint_id)
    .bind(call.id)
    .bind(HOOK)
    .bind(status)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, number, started_at, response_status, response_body_excerpt, duration_ms, error) \
         SELECT $1, n, now(), 500, 'oops', 12, 'the endpoint answered 500' FROM generate_series(1, 8) n",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    id
}

#[sqlx::test(migrations = "../../migrations")]
async fn deliveries_are_listed_shown_with_attempts_and_redelivered(pool: PgPool) {
    let app = spawn_app(pool).await;
    let endpoint = create_endpoint(&app, &json!({"url": HOOK})).await;
    let endpoint_id = Uuid::parse_str(endpoint["id"].as_str().unwrap()).unwrap();
    let exhausted = insert_delivery(&app, Some(endpoint_id), "exhausted").await;
    let inline = insert_delivery(&app, None, "delivered").await;

    let page: Value = app
        .get("/v1/webhook_deliveries")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["has_more"], false);
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], inline.to_string(), "newest first");
    assert_eq!(data[0]["endpoint_id"], Value::Null);
    for field in [
        "id",
        "org_id",
        "endpoint_id",
        "call_id",
        "event_type",
        "url",
        "status",
        "attempt_count",
        "manual_retry_count",
        "next_attempt_at",
        "last_error",
        "last_response_status",
        "delivered_at",
        "created_at",
        "updated_at",
    ] {
        assert!(data[1].get(field).is_some(), "{field}");
    }
    let filtered: Value = app
        .get(&format!(
            "/v1/webhook_deliveries?endpoint_id={endpoint_id}&status=exhausted&limit=1"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["data"][0]["id"], exhausted.to_string());
    let next: Value = app
        .get(&format!(
            "/v1/webhook_deliveries?limit=1&starting_after={inline}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["data"][0]["id"], exhausted.to_string());
    assert_eq!(next["has_more"], false);

    let shown: Value = app
        .get(&format!("/v1/webhook_deliveries/{exhausted}"))
        .await
        .json()
        .await
        .unwrap();
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 8);
    assert_eq!(attempts[0]["number"], 1);
    assert_eq!(attempts[0]["response_status"], 500);
    assert_eq!(attempts[0]["response_body_excerpt"], "oops");
    assert_eq!(attempts[0]["duration_ms"], 12);
    assert!(attempts[0]["error"].is_string() && attempts[0]["started_at"].is_string());

    let response = app
        .post(
            &format!("/v1/webhook_deliveries/{exhausted}/redeliver"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let redelivered: Value = response.json().await.unwrap();
    assert_eq!(redelivered["id"], exhausted.to_string());
    assert_eq!(redelivered["status"], "pending");
    assert_eq!(redelivered["manual_retry_count"], 1);
    assert!(redelivered["next_attempt_at"].is_string());
    let (max_attempts, enqueued): (i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT max_attempts, enqueued_at FROM webhook_deliveries WHERE id = $1")
            .bind(exhausted)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(max_attempts, 9, "one more attempt");
    assert_eq!(enqueued, None, "left for the dispatcher's sweeper");

    // Inline redelivery puts the call's webhook_status back to pending.
    let again: Value = app
        .post(
            &format!("/v1/webhook_deliveries/{inline}/redeliver"),
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["manual_retry_count"], 1);
    let (status,): (String,) = sqlx::query_as("SELECT webhook_status FROM calls WHERE id = $1")
        .bind(Uuid::parse_str(again["call_id"].as_str().unwrap()).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "pending");

    // A disabled endpoint's deliveries cannot be redelivered until it is enabled.
    patch(
        &app,
        &format!("/v1/webhook_endpoints/{endpoint_id}"),
        &json!({"status": "disabled"}),
    )
    .await;
    let response = app
        .post(
            &format!("/v1/webhook_deliveries/{exhausted}/redeliver"),
            &json!({}),
        )
        .await;
    assert_error(response, StatusCode::CONFLICT, "endpoint_disabled", None).await;
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn another_orgs_endpoints_and_deliveries_are_not_found(pool: PgPool) {
    let app = spawn_app(pool).await;
    let other = ringer::testing::seed_org(&app.pool, 500_000).await;
    let created = create_endpoint(&app, &json!({"url": HOOK})).await;
    let endpoint = created["id"].as_str().unwrap().to_owned();
    let delivery = insert_delivery(&app, None, "exhausted").await;
    let as_other = |path: String| {
        let app = &app;
        let key = other.api_key.clone();
        async move { app.get_as(&key, &path).await }
    };
    for path in [
        format!("/v1/webhook_endpoints/{endpoint}"),
        format!("/v1/webhook_deliveries/{delivery}"),
        "/v1/webhook_endpoints/not-a-uuid".to_owned(),
    ] {
        let response = as_other(path).await;
        assert_error(response, StatusCode::NOT_FOUND, "resource_missing", None).await;
    }
    let response = app
        .post_as(
            &other.api_key,
            &format!("/v1/webhook_deliveries/{delivery}/redeliver"),
            &json!({}),
        )
        .await;
    assert_error(response, StatusCode::NOT_FOUND, "resource_missing", None).await;
    let response = app
        .post_as(
            &other.api_key,
            &format!("/v1/webhook_endpoints/{endpoint}/rotate_secret"),
            &json!({}),
        )
        .await;
    assert_error(response, StatusCode::NOT_FOUND, "resource_missing", None).await;
    let list: Value = app
        .get_as(&other.api_key, "/v1/webhook_endpoints")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]));
    let list: Value = app
        .get_as(&other.api_key, "/v1/webhook_deliveries")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]));
    let response = app
        .client
        .delete(app.url(&format!("/v1/webhook_endpoints/{endpoint}")))
        .bearer_auth(&other.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_openapi_document_lists_the_webhook_routes(pool: PgPool) {
    let app = spawn_app(pool).await;
    let doc: Value = app.get("/v1/openapi.json").await.json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/webhook_endpoints",
        "/v1/webhook_endpoints/{id}",
        "/v1/webhook_endpoints/{id}/rotate_secret",
        "/v1/webhook_deliveries",
        "/v1/webhook_deliveries/{id}",
        "/v1/webhook_deliveries/{id}/redeliver",
    ] {
        assert!(paths.contains_key(path), "{path}");
    }
    app.stop().await;
}
