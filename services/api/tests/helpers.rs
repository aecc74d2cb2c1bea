use std::time::Duration;

use reqwest::{Client, Response, StatusCode};
use ringer::testing::{TestBroker, TestOrg, common_config, random_namespace, seed_org};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// A running api on a free port, its own broker namespace, and a seeded org.
pub struct TestApp {
    pub base: String,
    pub client: Client,
    pub pool: PgPool,
    pub org: TestOrg,
    pub broker: TestBroker,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, 500_000, |_| {}).await
}

pub async fn spawn_app_with(
    pool: PgPool,
    credit_milli_cents: i64,
    adjust: impl FnOnce(&mut ringer_api::Config),
) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        ringer::telemetry::init(ringer::config::LogFormat::Pretty);
    }
    let namespace = random_namespace();
    let broker = TestBroker::start(&namespace, 5).await;
    let mut config = ringer_api::Config::with_common(common_config(&pool, &namespace));
    config.rate_limit_per_second = 0;
    adjust(&mut config);
    let shutdown = CancellationToken::new();
    let (addr, handle) = ringer_api::start(config, shutdown.clone())
        .await
        .expect("api starts");
    let org = seed_org(&pool, credit_milli_cents).await;
    TestApp {
        base: format!("http://{addr}"),
        client: Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        pool,
        org,
        broker,
        shutdown,
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.post_as(&self.org.api_key, path, body).await
    }

    pub async fn post_as(&self, key: &str, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.get_as(&self.org.api_key, path).await
    }

    pub async fn get_as(&self, key: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(&self.org.api_key)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn create_call(&self, body: &Value) -> Value {
        let response = self.post("/v1/calls", body).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{:?}",
            response.text().await
        );
        response.json().await.unwrap()
    }

    /// Counts of what a request could have written.
    pub async fn written(&self) -> (i64, i64, i64) {
        let (calls,): (i64,) = sqlx::query_as("SELECT count(*) FROM calls")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        let (outbox,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        let (holds,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM ledger_entries WHERE kind = 'hold'")
                .fetch_one(&self.pool)
                .await
                .unwrap();
        (calls, outbox, holds)
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
        self.broker.cleanup().await;
    }
}

pub fn call_body(to: &str) -> Value {
    json!({
        "to": to,
        "prompt": "Confirm tomorrow's appointment",
        "context": {"name": "Ana", "confirmed": true},
        "returns": {"confirmed": "boolean", "notes": "string?"},
        "metadata": {"ref": "A-1"}
    })
}

/// Asserts an error response of `status` with `code` (and `param` when given).
pub async fn assert_error(
    response: Response,
    status: StatusCode,
    code: &str,
    param: Option<&str>,
) -> Value {
    assert_eq!(response.status(), status);
    assert!(response.headers().contains_key("request-id"));
    let body: Value = response.json().await.expect("JSON error body");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.len() > 10),
        "{body}"
    );
    assert!(error["type"].is_string());
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
    }
    body
}
