use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{assert_error, call_body, spawn_app_with};

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_creates_never_overdraw(pool: PgPool) {
    // 600 s at 5000/min = 50_000 per hold: the credit covers exactly 10.
    let app = spawn_app_with(pool.clone(), 500_000, |_| {}).await;
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..100 {
        requests.spawn(
            app.client
                .post(app.url("/v1/calls"))
                .bearer_auth(&app.org.api_key)
                .json(&call_body(&format!("+1415555{n:04}")))
                .send(),
        );
    }
    let mut created = 0;
    let mut refused = 0;
    for response in requests.join_all().await {
        match response.unwrap().status() {
            StatusCode::CREATED => created += 1,
            StatusCode::PAYMENT_REQUIRED => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((created, refused), (10, 90));
    let balance: Value = app.get("/v1/balance").await.json().await.unwrap();
    assert_eq!(balance["available_milli_cents"], 0);
    assert_eq!(balance["reserved_milli_cents"], 500_000);
    let mut conn = pool.acquire().await.unwrap();
    assert!(
        ringer::ledger::check_invariant(&mut conn, None)
            .await
            .unwrap()
            .is_empty()
    );
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_short_balance_gets_a_402_that_says_what_to_add(pool: PgPool) {
    let app = spawn_app_with(pool, 188_000, |_| {}).await;
    let mut body = call_body("+14155550100");
    body["max_duration_seconds"] = serde_json::json!(3600);
    let response = app.post("/v1/calls", &body).await;
    let error = assert_error(
        response,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_funds",
        None,
    )
    .await;
    assert_eq!(
        error["error"]["message"],
        "Calls paused. Your balance is $1.88 but each call requires a $3.00 hold (it is released if no one answers). \
         Add $1.12 or more in credits to keep calling."
    );
    assert_eq!(app.written().await, (0, 0, 0));
    app.stop().await;
}
