use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use ringer_e2e::{Received, System};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(30);

/// Checks `CallingBox-Signature: t=…,v1=…` with a plain HMAC written here,
/// independent of the signing code under test.
fn signature_verifies(received: &Received, secret: &str) -> bool {
    let header = received.header("callingbox-signature");
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => timestamp = Some(value.to_owned()),
            Some(("v1", value)) => signatures.push(value.to_owned()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&received.body);
    let expected = hex::encode(mac.finalize().into_bytes());
    signatures.contains(&expected)
}

fn event_types(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn an_answered_call_ends_completed_with_its_result_charge_and_webhooks(pool: PgPool) {
    let system = System::start(pool, 0.0).await;
    let response = system
        .post(
            "/v1/calls",
            &json!({
                "to": "+14155550100",
                "prompt": "Confirm the appointment and ask how many people will come",
                "context": {"confirmed": true, "party_size": 3},
                "returns": {"confirmed": "boolean", "party_size": "integer"},
                "webhook_url": system.receiver.url,
                "max_duration_seconds": 120
            }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["webhook_status"], "pending");

    let call = system
        .wait_for_call(&id, WAIT, |c| c["status"] == "completed")
        .await;
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["result_status"], "completed");
    assert_eq!(call["result"], json!({"confirmed": true, "party_size": 3}));
    assert_eq!(call["reservation_status"], "settled");
    let billed = call["billed_duration_seconds"].as_i64().unwrap();
    let amount = call["billing_amount_milli_cents"].as_i64().unwrap();
    assert_eq!(amount, (billed * 5000 + 59) / 60);
    for field in ["started_at", "answered_at", "ended_at"] {
        assert!(call[field].is_string(), "{field} set");
    }
    assert!(call["started_at"].as_str() <= call["answered_at"].as_str());
    assert!(call["answered_at"].as_str() <= call["ended_at"].as_str());

    let transcript = system.get(&format!("/v1/calls/{id}/transcript")).await;
    assert!(transcript["segments"].as_array().unwrap().len() >= 4);

    let balance = system.get("/v1/balance").await;
    assert_eq!(balance["reserved_milli_cents"], 0);
    assert_eq!(balance["available_milli_cents"], 500_000 - amount);

    let received = system.wait_for_webhooks(&id, 4, WAIT).await;
    assert_eq!(
        event_types(&received),
        [
            "call.queued",
            "call.ringing",
            "call.answered",
            "call.completed"
        ],
        "each event once, in order"
    );
    let secret = system.org_webhook_secret().await;
    for request in &received {
        assert!(
            signature_verifies(request, &secret),
            "signature of {}",
            request.json()["type"]
        );
        assert_eq!(
            request.header("callingbox-event-type"),
            request.json()["type"].as_str().unwrap()
        );
        assert_eq!(request.header("x-callingbox-call-id"), id);
        assert!(!request.header("callingbox-event-id").is_empty());
        assert!(!request.header("webhook-signature").is_empty());
        assert_eq!(request.json()["api_version"], "2026-04");
    }
    let completed = received.last().unwrap().json();
    assert_eq!(completed["data"]["call"]["result"], call["result"]);
    assert_eq!(
        completed["data"]["call"]["billing_amount_milli_cents"],
        amount
    );

    let call = system
        .wait_for_call(&id, WAIT, |c| c["webhook_status"] == "delivered")
        .await;
    assert_eq!(call["webhook_status"], "delivered");
    system.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn unanswered_calls_cost_nothing_and_end_with_their_own_event(pool: PgPool) {
    let system = System::start(pool, 0.0).await;
    let cases = [
        ("+14155550101", "busy", "call.busy"),
        ("+14155550102", "no_answer", "call.no_answer"),
        ("+14155550104", "failed", "call.failed"),
    ];
    let mut ids = Vec::new();
    for (to, _, _) in cases {
        let response = system
            .post(
                "/v1/calls",
                &json!({"to": to, "prompt": "Say hello", "returns": {"ok": "boolean"}, "webhook_url": system.receiver.url}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        ids.push(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for ((_, status, event), id) in cases.iter().zip(&ids) {
        let call = system
            .wait_for_call(id, WAIT, |c| {
                c["reservation_status"] == "released" && c["result_status"] != "pending"
            })
            .await;
        assert_eq!(call["status"], *status, "{call}");
        assert_eq!(call["reservation_status"], "released");
        assert_eq!(call["billing_amount_milli_cents"], 0);
        assert_eq!(call["result_status"], "failed");
        assert!(
            call["result_error"]
                .as_str()
                .unwrap()
                .contains("not answered")
        );
        let received = system.wait_for_webhooks(id, 3, WAIT).await;
        let types = event_types(&received);
        assert_eq!(types.first().map(String::as_str), Some("call.queued"));
        assert_eq!(types.last().map(String::as_str), Some(*event), "{types:?}");
        assert_eq!(types.iter().filter(|t| t.as_str() == *event).count(), 1);
    }
    let balance = system.get("/v1/balance").await;
    assert_eq!(
        balance,
        json!({"available_milli_cents": 500_000, "reserved_milli_cents": 0, "currency": "usd"})
    );
    system.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_call_canceled_before_dialing_ends_canceled_and_released(pool: PgPool) {
    // A slow simulated network keeps the dialer from answering before the cancel.
    let system = System::start(pool, 1.0).await;
    let response = system
        .post("/v1/calls", &json!({"to": "+14155550102", "prompt": "Say hello", "webhook_url": system.receiver.url}))
        .await;
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let canceled = system
        .post(&format!("/v1/calls/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(canceled.status(), StatusCode::OK);
    let call = system
        .wait_for_call(&id, WAIT, |c| c["reservation_status"] == "released")
        .await;
    assert_eq!(call["status"], "canceled");
    assert_eq!(call["billing_amount_milli_cents"], 0);
    let received = system.wait_for_webhooks(&id, 2, WAIT).await;
    let types = event_types(&received);
    assert_eq!(
        types.last().map(String::as_str),
        Some("call.canceled"),
        "{types:?}"
    );
    assert!(!types.contains(&"call.answered".to_owned()));
    system.stop().await;
}
