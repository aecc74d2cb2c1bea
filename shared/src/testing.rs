//! Test support (feature `test-support`): a private broker namespace per test,
//! configs pointing at a `#[sqlx::test]` database, seeded orgs, and queues that
//! observe published events.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use rand::RngExt;
use sqlx::PgPool;
use uuid::Uuid;

use crate::broker::{self, Broker, Names};
use crate::config::CommonConfig;
use crate::events::Event;
use crate::orgs;

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A namespace no other test uses.
pub fn random_namespace() -> String {
    let suffix: u64 = rand::rng().random();
    format!("test{suffix:016x}")
}

/// The URL of the database behind a `#[sqlx::test]` pool: `DATABASE_URL` with
/// its database name replaced.
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let database = pool
        .connect_options()
        .get_database()
        .unwrap_or("postgres")
        .to_owned();
    let (location, query) = match base.split_once('?') {
        Some((location, query)) => (location.to_owned(), format!("?{query}")),
        None => (base.clone(), String::new()),
    };
    let server = location
        .rsplit_once('/')
        .map_or(location.as_str(), |(server, _)| server);
    format!("{server}/{database}{query}")
}

/// Settings for running a service against a test database and namespace:
/// time scale 0, dev mode, HTTP on a free port.
pub fn common_config(pool: &PgPool, namespace: &str) -> CommonConfig {
    let mut config = CommonConfig::new(database_url(pool), amqp_url());
    config.namespace = namespace.to_owned();
    config.http_addr = Some("127.0.0.1:0".parse().expect("valid address"));
    config.time_scale = 0.0;
    config.dev_mode = true;
    config.db_max_connections = 5;
    config.shutdown_grace_seconds = 5;
    config
}

/// A broker namespace with the topology declared; `cleanup` deletes it.
pub struct TestBroker {
    pub broker: Broker,
    pub names: Names,
}

impl TestBroker {
    pub async fn start(namespace: &str, delivery_limit: u32) -> Self {
        Self::start_scaled(namespace, delivery_limit, 0.0).await
    }

    /// Like [`TestBroker::start`], with delay queues declared for `time_scale`
    /// (the services of the namespace must use the same scale).
    pub async fn start_scaled(namespace: &str, delivery_limit: u32, time_scale: f64) -> Self {
        let names = Names::new(namespace);
        let broker = Broker::connect(&amqp_url(), names.clone(), "ringer-test")
            .await
            .expect("RabbitMQ must be running on AMQP_URL");
        let channel = broker.channel().await.expect("channel");
        broker::declare_topology(&channel, &names, delivery_limit, time_scale)
            .await
            .expect("declare topology");
        Self { broker, names }
    }

    /// Declares an exclusive, auto-deleted queue bound to `routing_key` on the
    /// events exchange and returns a receiver of the events it gets.
    pub async fn observe(&self, routing_key: &str) -> EventTap {
        let channel = self.broker.channel().await.expect("channel");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare tap queue");
        channel
            .queue_bind(
                queue.name().clone(),
                self.names.events_exchange().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind tap queue");
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume tap queue");
        EventTap {
            consumer,
            _channel: channel,
        }
    }

    pub async fn cleanup(self) {
        if let Ok(channel) = self.broker.channel().await {
            let _ = broker::delete_topology(&channel, &self.names).await;
        }
        self.broker.close().await;
    }
}

/// Ready messages in a queue (unacknowledged ones are not counted).
pub async fn ready_messages(broker: &Broker, queue: &str) -> u32 {
    let channel = broker.channel().await.expect("channel");
    let count = broker::ready_messages(&channel, queue)
        .await
        .expect("the queue exists");
    let _ = channel.close(200, "counted".into()).await;
    count
}

/// Events arriving on a test queue.
pub struct EventTap {
    consumer: lapin::Consumer,
    _channel: lapin::Channel,
}

impl EventTap {
    /// The next event, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        self.next_with_trace(timeout).await.map(|(event, _)| event)
    }

    /// The next event with its `traceparent` header.
    pub async fn next_with_trace(&mut self, timeout: Duration) -> Option<(Event, Option<String>)> {
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        let _ = delivery.ack(BasicAckOptions::default()).await;
        let traceparent =
            crate::broker::header_str(delivery.properties.headers().as_ref(), "traceparent");
        let event = serde_json::from_slice(&delivery.data).expect("events are valid JSON");
        Some((event, traceparent))
    }

    /// Every event arriving until `quiet` passes without one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.next(quiet).await {
            events.push(event);
        }
        events
    }
}

/// An org with credit, an API key and an active number.
#[derive(Debug, Clone)]
pub struct TestOrg {
    pub id: Uuid,
    pub api_key: String,
    pub number: String,
}

pub async fn seed_org(pool: &PgPool, credit_milli_cents: i64) -> TestOrg {
    let mut tx = pool.begin().await.expect("begin");
    let org = orgs::create_org(&mut tx, "Test org", credit_milli_cents)
        .await
        .expect("create org");
    let key = orgs::create_api_key(&mut tx, org.id, "test")
        .await
        .expect("create key");
    let suffix: u32 = rand::rng().random_range(0..10_000_000);
    let number = format!("+1415{suffix:07}");
    orgs::add_number(&mut tx, org.id, &number, "US", "local", 100)
        .await
        .expect("add number");
    tx.commit().await.expect("commit");
    TestOrg {
        id: org.id,
        api_key: key.key,
        number,
    }
}

/// A plain call request for `org` (5-minute cap, default rate), for tests and
/// benchmarks that bypass the API.
pub fn new_call(org: &TestOrg, to_number: &str) -> crate::call::NewCall {
    let max_duration_seconds = 300;
    let rate = 5000;
    crate::call::NewCall {
        id: Uuid::now_v7(),
        org_id: org.id,
        to_number: to_number.to_owned(),
        from_number: org.number.clone(),
        prompt: "Confirm the appointment".to_owned(),
        context: serde_json::json!({"name": "Ana"}),
        returns: Some(serde_json::json!({"confirmed": "boolean"})),
        language: crate::call::Language::En,
        webhook_url: None,
        voicemail_action: crate::call::VoicemailAction::Hangup,
        max_duration_seconds,
        metadata: None,
        tools: None,
        rate_per_minute_milli_cents: rate,
        hold_milli_cents: crate::money::hold_for(max_duration_seconds, rate),
    }
}

/// Inserts a queued call the way the API does (hold, row, `call.queued` in one
/// transaction), bypassing HTTP.
pub async fn insert_queued_call(pool: &PgPool, new: &crate::call::NewCall) -> crate::call::Call {
    let mut tx = pool.begin().await.expect("begin");
    crate::ledger::reserve_hold(&mut tx, new.org_id, new.id, new.hold_milli_cents)
        .await
        .expect("the test org can afford the hold");
    let call = crate::call::insert_queued_call(&mut tx, new)
        .await
        .expect("insert call");
    tx.commit().await.expect("commit");
    call
}

/// Makes every statement `conn` prepares from now on keep a generic plan, as
/// a long-lived pooled connection ends up doing: with the tables still empty,
/// the plans are what a new database, or tables that grew faster than anything
/// analyzed them, leave cached. Follow with [`assert_cached_plans_find_rows_by_index`].
pub async fn cache_generic_plans(conn: &mut sqlx::PgConnection) {
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .expect("setting plan_cache_mode");
}

/// Fails the test when the cached plan of any statement `conn` has prepared
/// reads one of `tables` (those that grow with every call) by a whole-table
/// scan: such a plan, cached while the table was small, gets slower with every
/// row. Returns how many statements were checked.
pub async fn assert_cached_plans_find_rows_by_index(
    conn: &mut sqlx::PgConnection,
    tables: &[&str],
) -> usize {
    let statements: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT name, statement, cardinality(parameter_types) FROM pg_prepared_statements \
         WHERE statement NOT LIKE '%pg_prepared_statements%'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("listing prepared statements");
    for (name, statement, parameters) in &statements {
        // The name is Postgres's own (sqlx_s_…), the arguments literal NULLs.
        let arguments = match usize::try_from(*parameters).unwrap_or(0) {
            0 => String::new(),
            n => format!("({})", vec!["NULL"; n].join(", ")),
        };
        let explain = sqlx::AssertSqlSafe(format!("EXPLAIN EXECUTE {name}{arguments}"));
        let plan: Vec<String> = sqlx::query_scalar(explain)
            .fetch_all(&mut *conn)
            .await
            .expect("explaining a prepared statement");
        let whole_table = |line: &String| {
            tables
                .iter()
                .any(|table| line.contains(&format!("Seq Scan on {table} ")))
        };
        assert!(
            !plan.iter().any(whole_table),
            "a whole-table scan in the cached plan of\n{statement}\n{}",
            plan.join("\n")
        );
    }
    statements.len()
}
