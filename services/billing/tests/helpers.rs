//! Test support: calls prepared in an ended state the way the dialer leaves
//! them, the ledger and outbox rows of a call, and a billing worker run
//! in-process or as a child process.

use std::process::Stdio;
use std::time::Duration;

use ringer::call::{Call, NewCall, OwnedCall};
use ringer::events::{Event, EventType};
pub use ringer::testing::ready_messages;
use ringer::testing::{TestOrg, insert_queued_call, new_call};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        ringer::telemetry::init(ringer::config::LogFormat::Pretty);
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ending {
    /// Answered and hung up after this many connected seconds (fractions allowed).
    Answered(f64),
    NoAnswer,
    Busy,
    /// Failed before an answer (carrier error).
    Failed,
    /// Answered, then failed (say the dialer was lost mid-call).
    FailedAfterAnswer(f64),
    /// Canceled by the client before it was dialled.
    Canceled,
}

impl Ending {
    pub const UNANSWERED: [Ending; 4] = [
        Ending::NoAnswer,
        Ending::Busy,
        Ending::Failed,
        Ending::Canceled,
    ];

    fn status(self) -> &'static str {
        match self {
            Ending::Answered(_) => "in_progress",
            Ending::NoAnswer => "no_answer",
            Ending::Busy => "busy",
            Ending::Failed | Ending::FailedAfterAnswer(_) => "failed",
            Ending::Canceled => "canceled",
        }
    }

    fn connected_seconds(self) -> Option<f64> {
        match self {
            Ending::Answered(seconds) | Ending::FailedAfterAnswer(seconds) => Some(seconds),
            _ => None,
        }
    }

    /// The terminal event the completion join writes for this ending.
    pub fn terminal_event(self) -> EventType {
        match self {
            Ending::Answered(_) => EventType::CallCompleted,
            Ending::NoAnswer => EventType::CallNoAnswer,
            Ending::Busy => EventType::CallBusy,
            Ending::Failed | Ending::FailedAfterAnswer(_) => EventType::CallFailed,
            Ending::Canceled => EventType::CallCanceled,
        }
    }
}

/// A queued call with its hold, as the api creates it.
pub async fn queued(pool: &PgPool, org: &TestOrg) -> Call {
    insert_queued_call(pool, &new_call(org, "+14155550100")).await
}

/// A queued call at a given rate and maximum duration.
pub async fn queued_with(pool: &PgPool, org: &TestOrg, rate: i64, max_seconds: i32) -> Call {
    let new = NewCall {
        rate_per_minute_milli_cents: rate,
        max_duration_seconds: max_seconds,
        hold_milli_cents: ringer::money::hold_for(max_seconds, rate),
        ..new_call(org, "+14155550100")
    };
    insert_queued_call(pool, &new).await
}

/// Ends `call_id` the way the dialer does: the ended state and
/// `internal.call.ended` in one transaction. Returns that event.
pub async fn end_call(pool: &PgPool, call_id: Uuid, ending: Ending) -> Event {
    let mut tx = pool.begin().await.unwrap();
    let connected = ending.connected_seconds();
    let OwnedCall { org_id, call } = sqlx::query_as::<_, OwnedCall>(concat!(
        "UPDATE calls SET status = $2, \
           started_at = CASE WHEN $2 = 'canceled' THEN NULL ELSE now() - make_interval(secs => COALESCE($3, 0) + 5) END, \
           answered_at = CASE WHEN $3 IS NULL THEN NULL ELSE now() - make_interval(secs => $3) END, \
           ended_at = now(), \
           duration_seconds = COALESCE($3, 0)::integer, \
           hangup_cause = 'normal', updated_at = now() \
         WHERE id = $1 RETURNING org_id, ",
        ringer::call_columns!()
    ))
    .bind(call_id)
    .bind(ending.status())
    .bind(connected)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let event = ringer::outbox::emit(&mut tx, org_id, EventType::CallEnded, &call)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    event
}

/// A new call, ended as `ending`.
pub async fn ended_call(pool: &PgPool, org: &TestOrg, ending: Ending) -> Event {
    let call = queued(pool, org).await;
    end_call(pool, call.id, ending).await
}

/// What the extractor does when it finishes: the result and the join, in one
/// transaction. Returns the terminal event if the join closed there.
pub async fn extractor_finishes(pool: &PgPool, call_id: Uuid, status: &str) -> Option<Event> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE calls SET result_status = $2, result = CASE WHEN $2 = 'completed' THEN '{\"confirmed\": true}'::jsonb END, \
           result_error = CASE WHEN $2 = 'failed' THEN 'the call was not answered' END, updated_at = now() \
         WHERE id = $1",
    )
    .bind(call_id)
    .bind(status)
    .execute(&mut *tx)
    .await
    .unwrap();
    let closed = ringer::call::close_completion_join(&mut tx, call_id)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    closed
}

/// The amounts of a call's ledger entries, by kind, with their buckets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CallEntries {
    pub hold: Vec<(i16, i64)>,
    pub charge: Vec<(i16, i64)>,
    pub release: Vec<(i16, i64)>,
}

pub async fn entries(pool: &PgPool, call_id: Uuid) -> CallEntries {
    let rows: Vec<(String, i16, i64)> = sqlx::query_as(
        "SELECT kind, bucket, amount_milli_cents FROM ledger_entries WHERE call_id = $1 ORDER BY id",
    )
    .bind(call_id)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut entries = CallEntries::default();
    for (kind, bucket, amount) in rows {
        match kind.as_str() {
            "hold" => entries.hold.push((bucket, amount)),
            "charge" => entries.charge.push((bucket, amount)),
            "hold_release" => entries.release.push((bucket, amount)),
            other => panic!("unexpected entry {other} for a call"),
        }
    }
    entries
}

/// Routing keys of the outbox rows about `call_id`, in order.
pub async fn outbox_events(pool: &PgPool, call_id: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT routing_key FROM outbox WHERE (payload->>'call_id')::uuid = $1 ORDER BY id",
    )
    .bind(call_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

pub async fn count_events(pool: &PgPool, call_id: Uuid, event: EventType) -> usize {
    outbox_events(pool, call_id)
        .await
        .iter()
        .filter(|key| key.as_str() == event.routing_key())
        .count()
}

/// Terminal events (the eight public ones that end a call) written for `call_id`.
pub async fn terminal_events(pool: &PgPool, call_id: Uuid) -> Vec<String> {
    outbox_events(pool, call_id)
        .await
        .into_iter()
        .filter(|key| {
            key.parse::<EventType>()
                .map(EventType::is_terminal)
                .unwrap_or(false)
        })
        .collect()
}

pub async fn call(pool: &PgPool, call_id: Uuid) -> Call {
    let mut conn = pool.acquire().await.unwrap();
    ringer::call::find_call(&mut conn, call_id)
        .await
        .unwrap()
        .expect("the call exists")
        .call
}

/// Asserts every ledger check is clean: balances equal the entries per org and
/// per bucket, and every call's entries agree with its row.
pub async fn assert_ledger_consistent(pool: &PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let drift = ringer::ledger::check_invariant(&mut conn, None)
        .await
        .unwrap();
    assert!(drift.is_empty(), "balance drift: {drift:?}");
    let buckets = ringer::ledger::check_buckets(&mut conn, None)
        .await
        .unwrap();
    assert!(buckets.is_empty(), "bucket drift: {buckets:?}");
    let calls = ringer::ledger::check_calls(&mut conn, None).await.unwrap();
    assert!(calls.is_empty(), "call drift: {calls:?}");
}

pub async fn balance(pool: &PgPool, org: &TestOrg) -> ringer::ledger::Balance {
    let mut conn = pool.acquire().await.unwrap();
    ringer::ledger::balance(&mut conn, org.id).await.unwrap()
}

/// A second pool on the test database, larger than the 5 connections
/// `#[sqlx::test]` gives, for tests that need real concurrency.
pub async fn wide_pool(pool: &PgPool, connections: u32) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap()
}

/// Billing's config for the test database and namespace, sweeper idle.
pub fn billing_config(pool: &PgPool, namespace: &str) -> ringer_billing::Config {
    let mut config = ringer_billing::Config::new(ringer::testing::common_config(pool, namespace));
    config.sweep_interval_seconds = 3600;
    config
}

/// The billing worker running in this process until the returned token is cancelled.
pub fn spawn_worker(
    config: ringer_billing::Config,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(ringer_billing::run(config, shutdown.clone()));
    (shutdown, handle)
}

/// The `ringer-billing` binary as a child process.
pub fn spawn_binary(
    config: &ringer_billing::Config,
    extra_env: &[(&str, &str)],
) -> tokio::process::Child {
    let quiet = std::env::var_os("TEST_LOG").is_none();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringer-billing"));
    command
        .env("DATABASE_URL", &config.common.database_url)
        .env("AMQP_URL", &config.common.amqp_url)
        .env("RINGER_NAMESPACE", &config.common.namespace)
        .env("RINGER_HTTP_ADDR", "127.0.0.1:0")
        .env("RINGER_TIME_SCALE", "0")
        .env("RINGER_DB_MAX_CONNECTIONS", "3")
        .env("RINGER_BILLING_SWEEP_INTERVAL_SECONDS", "3600")
        .env("RINGER_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(if quiet {
            Stdio::null()
        } else {
            Stdio::inherit()
        })
        .kill_on_drop(true);
    for (key, value) in extra_env {
        command.env(key, value);
    }
    command.spawn().expect("the billing binary starts")
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
