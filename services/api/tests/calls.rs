use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use ringer::events::EventType;
use ringer::testing::seed_org;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{assert_error, call_body, spawn_app};

#[sqlx::test(migrations = "../../migrations")]
async fn a_created_call_is_queued_held_and_announced(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut tap = app.broker.observe("call.queued").await;

    let response = app.post("/v1/calls", &call_body("+14155550100")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().contains_key("request-id"));
    let call: Value = response.json().await.unwrap();
    assert_eq!(call["status"], "queued");
    assert_eq!(call["direction"], "outbound");
    assert_eq!(call["from_number"], app.org.number);
    assert_eq!(call["to_number"], "+14155550100");
    assert_eq!(call["reservation_status"], "reserved");
    assert_eq!(call["result_status"], "pending");
    assert_eq!(call["webhook_status"], "none");
    assert_eq!(call["language"], "en");
    assert_eq!(call["max_duration_seconds"], 600);
    assert_eq!(call["metadata"], json!({"ref": "A-1"}));
    assert!(call["result"].is_null());

    let event = tap
        .next(Duration::from_secs(10))
        .await
        .expect("call.queued is published");
    assert_eq!(event.event_type, EventType::CallQueued);
    assert_eq!(serde_json::to_value(&event.call).unwrap(), call);

    // The hold: 600 s at 5000 milli-cents a minute.
    let balance: Value = app.get("/v1/balance").await.json().await.unwrap();
    assert_eq!(
        balance,
        json!({"available_milli_cents": 450_000, "reserved_milli_cents": 50_000, "currency": "usd"})
    );

    let fetched: Value = app
        .get(&format!("/v1/calls/{}", call["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, call);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_idempotency_key_replays_the_first_response(pool: PgPool) {
    let app = spawn_app(pool).await;
    let send = |body: Value| {
        app.client
            .post(app.url("/v1/calls"))
            .bearer_auth(&app.org.api_key)
            .header("Idempotency-Key", "order-42")
            .json(&body)
            .send()
    };
    let first = send(call_body("+14155550100")).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let replay = send(call_body("+14155550100")).await.unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    assert_eq!(app.written().await.0, 1, "one call, not two");

    let conflict = send(call_body("+14155550199")).await.unwrap();
    assert_error(
        conflict,
        StatusCode::CONFLICT,
        "idempotency_key_in_use",
        None,
    )
    .await;
    assert_eq!(app.written().await.0, 1);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_requests_with_one_key_create_one_call(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..10 {
        requests.spawn(
            app.client
                .post(app.url("/v1/calls"))
                .bearer_auth(&app.org.api_key)
                .header("Idempotency-Key", "same")
                .json(&call_body("+14155550100"))
                .send(),
        );
    }
    let mut ids = HashSet::new();
    for response in requests.join_all().await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        ids.insert(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.written().await.0, 1);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn pagination_walks_every_call_once_in_both_directions(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut created = Vec::new();
    for n in 0..7 {
        let call = app
            .create_call(&call_body(&format!("+1415555010{n}")))
            .await;
        created.push(call["id"].as_str().unwrap().to_owned());
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let mut forward = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(id) => format!("/v1/calls?limit=3&starting_after={id}"),
            None => "/v1/calls?limit=3".to_owned(),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        let ids: Vec<String> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        forward.extend(ids.iter().cloned());
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        cursor = ids.last().cloned();
    }
    assert_eq!(forward, newest_first);

    let mut backward: Vec<String> = Vec::new();
    let mut cursor = newest_first.last().cloned().unwrap();
    backward.push(cursor.clone());
    loop {
        let page: Value = app
            .get(&format!("/v1/calls?limit=3&ending_before={cursor}"))
            .await
            .json()
            .await
            .unwrap();
        let ids: Vec<String> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        backward.splice(0..0, ids.iter().cloned());
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        cursor = ids.first().cloned().unwrap();
    }
    assert_eq!(backward, newest_first);

    let filtered: Value = app
        .get("/v1/calls?to=%2B14155550103&status=queued")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);
    let none: Value = app
        .get("/v1/calls?status=completed")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["data"], json!([]));
    let future: Value = app
        .get("/v1/calls?created_after=2100-01-01T00:00:00Z")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(future["data"], json!([]));
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn organisations_never_see_each_other(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let other = seed_org(&pool, 500_000).await;
    let call = app.create_call(&call_body("+14155550100")).await;
    let id = call["id"].as_str().unwrap();

    for path in [
        format!("/v1/calls/{id}"),
        format!("/v1/calls/{id}/transcript"),
    ] {
        assert_error(
            app.get_as(&other.api_key, &path).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
            None,
        )
        .await;
    }
    let cancel = app
        .post_as(
            &other.api_key,
            &format!("/v1/calls/{id}/cancel"),
            &json!({}),
        )
        .await;
    assert_error(cancel, StatusCode::NOT_FOUND, "resource_missing", None).await;
    let list: Value = app
        .get_as(&other.api_key, "/v1/calls")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]));
    let cursor = app
        .get_as(&other.api_key, &format!("/v1/calls?starting_after={id}"))
        .await;
    assert_error(
        cursor,
        StatusCode::BAD_REQUEST,
        "parameter_invalid",
        Some("starting_after"),
    )
    .await;
    // Another org's number cannot be the caller ID.
    let mut body = call_body("+14155550100");
    body["from_number"] = json!(app.org.number);
    let response = app.post_as(&other.api_key, "/v1/calls", &body).await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "parameter_invalid",
        Some("from_number"),
    )
    .await;
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn cancel_ends_a_queued_call_and_refuses_an_answered_one(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let mut ended = app.broker.observe("internal.call.ended").await;
    let queued = app.create_call(&call_body("+14155550100")).await;
    let id = queued["id"].as_str().unwrap();
    let response = app
        .post(&format!("/v1/calls/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let canceled: Value = response.json().await.unwrap();
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(canceled["hangup_cause"], "canceled");
    assert!(canceled["ended_at"].is_string());
    let event = ended
        .next(Duration::from_secs(10))
        .await
        .expect("internal.call.ended");
    assert_eq!(event.call.id.to_string(), id);
    assert_eq!(event.event_type, EventType::CallEnded);

    let again = app
        .post(&format!("/v1/calls/{id}/cancel"), &json!({}))
        .await;
    assert_error(again, StatusCode::CONFLICT, "call_already_ended", None).await;

    // Ringing: the dialer is asked to hang up.
    let ringing = app.create_call(&call_body("+14155550101")).await;
    let ringing_id = ringing["id"].as_str().unwrap();
    sqlx::query("UPDATE calls SET status = 'ringing' WHERE id = $1::uuid")
        .bind(ringing_id)
        .execute(&pool)
        .await
        .unwrap();
    let response = app
        .post(&format!("/v1/calls/{ringing_id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (requested,): (bool,) =
        sqlx::query_as("SELECT cancel_requested_at IS NOT NULL FROM calls WHERE id = $1::uuid")
            .bind(ringing_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(requested);

    let answered = app.create_call(&call_body("+14155550102")).await;
    let answered_id = answered["id"].as_str().unwrap();
    sqlx::query("UPDATE calls SET status = 'in_progress' WHERE id = $1::uuid")
        .bind(answered_id)
        .execute(&pool)
        .await
        .unwrap();
    let response = app
        .post(&format!("/v1/calls/{answered_id}/cancel"), &json!({}))
        .await;
    assert_error(
        response,
        StatusCode::CONFLICT,
        "call_already_answered",
        None,
    )
    .await;
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn openapi_document_is_served(pool: PgPool) {
    let app = spawn_app(pool).await;
    let response = app
        .client
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/v1/calls"]["post"].is_object());
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_callers_trace_travels_with_the_event(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut tap = app.broker.observe("call.queued").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .client
        .post(app.url("/v1/calls"))
        .bearer_auth(&app.org.api_key)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&call_body("+14155550100"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let (_, traceparent) = tap
        .next_with_trace(Duration::from_secs(10))
        .await
        .expect("event");
    let traceparent = traceparent.expect("the event carries a traceparent header");
    let context = ringer::telemetry::TraceContext::parse(&traceparent).expect("valid traceparent");
    assert_eq!(context.trace_id_hex(), trace_id);
    assert_ne!(
        traceparent,
        format!("00-{trace_id}-00f067aa0ba902b7-01"),
        "a child span, not the caller's"
    );

    let wrong_method = app
        .client
        .put(app.url("/v1/calls"))
        .bearer_auth(&app.org.api_key)
        .send()
        .await
        .unwrap();
    assert_error(
        wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
    app.stop().await;
}
