//! Test support: a webhook receiver, a dispatcher in-process or as a child
//! process, calls and events without the dialer, and an independent
//! implementation of both signature schemes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ringer::broker::{Broker, Names};
use ringer::call::Call;
use ringer::events::EventType;
use ringer::testing::{TestOrg, common_config, insert_queued_call, new_call, random_namespace};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        ringer::telemetry::init(ringer::config::LogFormat::Pretty);
    }
}

// ------------------------------------------------------------------ receiver

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_else(|| panic!("missing header {name}"))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Answer `fail_status` to the first this many requests of each webhook-id.
    pub failures_per_delivery: u32,
    pub fail_status: u16,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            failures_per_delivery: 0,
            fail_status: 500,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Clone)]
struct ReceiverState {
    plan: Arc<Mutex<Plan>>,
    seen: Arc<Mutex<std::collections::HashMap<String, u32>>>,
    sender: mpsc::UnboundedSender<Received>,
}

/// A local HTTP server that records every webhook it receives.
pub struct Receiver {
    pub url: String,
    plan: Arc<Mutex<Plan>>,
    received: mpsc::UnboundedReceiver<Received>,
    shutdown: CancellationToken,
}

impl Receiver {
    pub async fn start(plan: Plan) -> Self {
        let (sender, received) = mpsc::unbounded_channel();
        let plan = Arc::new(Mutex::new(plan));
        let state = ReceiverState {
            plan: plan.clone(),
            seen: Arc::default(),
            sender,
        };
        let app = Router::new().fallback(receive).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        Self {
            url: format!("http://{addr}/hooks"),
            plan,
            received,
            shutdown,
        }
    }

    pub fn set_plan(&self, plan: Plan) {
        *self.plan.lock().unwrap() = plan;
    }

    /// The next request, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.received.recv())
            .await
            .ok()
            .flatten()
    }

    /// Exactly `count` requests (panics if they do not come within `timeout`).
    pub async fn take(&mut self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::with_capacity(count);
        while all.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(received) => all.push(received),
                None => panic!(
                    "expected {count} webhooks within {timeout:?}, got {}: {:?}",
                    all.len(),
                    all.iter().map(Received::event_type).collect::<Vec<_>>()
                ),
            }
        }
        all
    }

    /// Whatever arrives until `quiet` passes without a request.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Received> {
        let mut all = Vec::new();
        while let Some(received) = self.next(quiet).await {
            all.push(received);
        }
        all
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let plan = state.plan.lock().unwrap().clone();
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let seen = {
        let mut seen = state.seen.lock().unwrap();
        let count = seen.entry(id).or_insert(0);
        *count += 1;
        *count
    };
    let status = if seen <= plan.failures_per_delivery {
        StatusCode::from_u16(plan.fail_status).unwrap()
    } else {
        StatusCode::OK
    };
    let _ = state.sender.send(Received {
        headers,
        body,
        at: Instant::now(),
        answered: status.as_u16(),
    });
    (status, "thanks")
}

// ------------------------------------------------------------------ dispatcher

/// A broker namespace the dispatcher declares (with its time scale) and the test deletes.
pub struct Namespace {
    pub names: Names,
}

impl Namespace {
    pub fn new() -> Self {
        Self {
            names: Names::new(&random_namespace()),
        }
    }

    pub async fn broker(&self) -> Broker {
        Broker::connect(
            &ringer::testing::amqp_url(),
            self.names.clone(),
            "ringer-test",
        )
        .await
        .expect("RabbitMQ must be running on AMQP_URL")
    }

    pub async fn cleanup(self) {
        let broker = self.broker().await;
        if let Ok(channel) = broker.channel().await {
            let _ = ringer::broker::delete_topology(&channel, &self.names).await;
        }
        broker.close().await;
    }
}

pub fn dispatcher_config(
    pool: &PgPool,
    namespace: &Namespace,
    time_scale: f64,
) -> ringer_webhook_dispatcher::Config {
    let mut common = common_config(pool, namespace.names.namespace());
    common.time_scale = time_scale;
    let mut config = ringer_webhook_dispatcher::Config::with_common(common);
    config.attempt_timeout_seconds = 3;
    config.sweep_interval_seconds = 1;
    config.sweep_after_seconds = 5;
    config
}

/// A dispatcher running in this process.
pub struct Dispatcher {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Dispatcher {
    pub async fn start(config: ringer_webhook_dispatcher::Config) -> Self {
        init_logs();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(ringer_webhook_dispatcher::run(config, shutdown.clone()));
        let dispatcher = Self { shutdown, handle };
        // Topology is declared at start-up; give it a moment before events flow.
        tokio::time::sleep(Duration::from_millis(300)).await;
        dispatcher
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("the dispatcher stops within its grace period");
        result.expect("no panic").expect("clean exit");
    }
}

// ------------------------------------------------------------------ data

pub async fn seed_org(pool: &PgPool) -> TestOrg {
    ringer::testing::seed_org(pool, 1_000_000_000).await
}

/// A queued call (its `call.queued` in the outbox) with an inline webhook URL.
pub async fn queued_call(pool: &PgPool, org: &TestOrg, webhook_url: Option<&str>) -> Call {
    let mut new = new_call(org, "+14155550100");
    new.webhook_url = webhook_url.map(str::to_owned);
    insert_queued_call(pool, &new).await
}

/// Emits public events for a call, each in its own transaction, as the dialer would.
pub async fn emit(pool: &PgPool, org: &TestOrg, call: &Call, events: &[EventType]) {
    for event in events {
        let mut tx = pool.begin().await.unwrap();
        ringer::outbox::emit(&mut tx, org.id, *event, call)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
}

/// An endpoint with its signing secret, inserted as the api does.
pub async fn create_endpoint(
    pool: &PgPool,
    org: &TestOrg,
    url: &str,
    events: &[&str],
) -> (Uuid, String) {
    let id = Uuid::now_v7();
    let secret = ringer::orgs::generate_webhook_secret();
    let events: Vec<String> = events.iter().map(|e| (*e).to_owned()).collect();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, org_id, url, enabled_events) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(org.id)
    .bind(url)
    .bind(&events)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO webhook_endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)")
        .bind(id)
        .bind(&secret)
        .execute(pool)
        .await
        .unwrap();
    (id, secret)
}

pub async fn org_secret(pool: &PgPool, org: &TestOrg) -> String {
    let (secret,): (String,) = sqlx::query_as("SELECT webhook_secret FROM orgs WHERE id = $1")
        .bind(org.id)
        .fetch_one(pool)
        .await
        .unwrap();
    secret
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub endpoint_id: Option<Uuid>,
    pub status: String,
    pub attempt_count: i32,
    pub manual_retry_count: i32,
    pub last_error: Option<String>,
    pub last_response_status: Option<i32>,
}

pub async fn deliveries(pool: &PgPool) -> Vec<DeliveryRow> {
    sqlx::query_as(
        "SELECT id, endpoint_id, status, attempt_count, manual_retry_count, last_error, \
         last_response_status FROM webhook_deliveries ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Polls until `check` holds on the deliveries (panics after `timeout`).
pub async fn wait_for_deliveries(
    pool: &PgPool,
    timeout: Duration,
    what: &str,
    check: impl Fn(&[DeliveryRow]) -> bool,
) -> Vec<DeliveryRow> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = deliveries(pool).await;
        if check(&rows) {
            return rows;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}: {rows:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------ signatures

/// HMAC-SHA256 written from RFC 2104 on top of SHA-256, independent of the
/// `hmac` crate and of `ringer::signing`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner_pad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer_pad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let mut inner = Sha256::new();
    inner.update(&inner_pad);
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(&outer_pad);
    outer.update(inner);
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer.finalize());
    out
}

/// The `v1` values of `CallingBox-Signature` that verify with `secret`.
pub fn callingbox_matches(header: &str, secret: &str, body: &[u8]) -> usize {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part.split_once('=').expect("key=value");
        match key {
            "t" => timestamp = Some(value.to_owned()),
            "v1" => signatures.push(value.to_owned()),
            other => panic!("unexpected part {other}"),
        }
    }
    let timestamp = timestamp.expect("t=");
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    let expected = hex::encode(hmac_sha256(secret.as_bytes(), &message));
    signatures.iter().filter(|s| **s == expected).count()
}

/// The `v1,` signatures of Standard Webhooks that verify with `secret`.
pub fn standard_matches(
    id: &str,
    timestamp: &str,
    header: &str,
    secret: &str,
    body: &[u8],
) -> usize {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    let expected = format!("v1,{}", STANDARD.encode(hmac_sha256(&key, &message)));
    header.split(' ').filter(|s| *s == expected).count()
}

/// Both schemes verify `received` with `secret`; returns how many `v1` values each carried.
pub fn assert_signed(received: &Received, secret: &str) -> (usize, usize) {
    let body = &received.body;
    let callingbox = received.header("callingbox-signature");
    assert_eq!(
        callingbox_matches(callingbox, secret, body),
        1,
        "CallingBox-Signature {callingbox} does not verify"
    );
    let standard = received.header("webhook-signature");
    assert_eq!(
        standard_matches(
            received.header("webhook-id"),
            received.header("webhook-timestamp"),
            standard,
            secret,
            body
        ),
        1,
        "webhook-signature {standard} does not verify"
    );
    let t: i64 = received.header("webhook-timestamp").parse().unwrap();
    assert!(callingbox.starts_with(&format!("t={t},")));
    assert!((chrono::Utc::now().timestamp() - t).abs() < 60);
    (
        callingbox.matches("v1=").count(),
        standard.split(' ').count(),
    )
}
