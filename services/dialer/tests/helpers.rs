//! Running dialers in-process against a test database and broker namespace, and
//! reading back what they did.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ringer::broker::{self, Broker, Names, Outgoing};
use ringer::call::{Call, CallStatus};
use ringer::events::{Event, EventType};
use ringer::testing::{EventTap, TestBroker, amqp_url, common_config};
use ringer_dialer::Config;
use ringer_dialer::carrier::{CallLeg, Carrier, CarrierError, Heard, Progress, Spoken};
use ringer_dialer::sim::SimulatedCarrier;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Logs go to the test output only when `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        ringer::telemetry::init(ringer::config::LogFormat::Pretty);
    }
}

/// A namespace with the topology declared at `time_scale` (the delay queue's TTL
/// depends on it, and every declaration of a queue must agree).
pub async fn test_broker(namespace: &str, time_scale: f64) -> TestBroker {
    init_logs();
    let names = Names::new(namespace);
    let broker = Broker::connect(&amqp_url(), names.clone(), "ringer-dialer-test")
        .await
        .expect("RabbitMQ must be running on AMQP_URL");
    let channel = broker.channel().await.expect("channel");
    broker::declare_topology(&channel, &names, 5, time_scale)
        .await
        .expect("declare topology");
    let _ = channel.close(200, "declared".into()).await;
    TestBroker { broker, names }
}

pub fn dialer_config(pool: &PgPool, namespace: &str, time_scale: f64) -> Config {
    let mut common = common_config(pool, namespace);
    common.time_scale = time_scale;
    let mut config = Config::new(common);
    config.lease_seconds = 2;
    config
}

/// A dialer running in this process.
pub struct RunningDialer {
    pub shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningDialer {
    pub fn start(config: Config) -> Self {
        let carrier = SimulatedCarrier::new(config.common.time_scale);
        Self::start_with(config, carrier)
    }

    pub fn start_with<C: Carrier>(config: Config, carrier: C) -> Self {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(ringer_dialer::run_with(
            config,
            carrier,
            ringer_dialer::agent::ScriptedAgent,
            shutdown.clone(),
        ));
        Self { shutdown, handle }
    }

    /// Stops the dialer gracefully and returns how `run` ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the dialer stops within 30 s")
            .expect("the dialer task does not panic")
    }
}

/// The Call with the dialer's internal columns.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallRow {
    #[sqlx(flatten)]
    pub call: Call,
    pub dial_attempts: i32,
    pub dialer_id: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub carrier_call_id: Option<String>,
}

pub async fn call_row(pool: &PgPool, id: Uuid) -> CallRow {
    sqlx::query_as::<_, CallRow>(concat!(
        "SELECT ",
        ringer::call_columns!(),
        ", dial_attempts, dialer_id, lease_expires_at, carrier_call_id FROM calls WHERE id = $1"
    ))
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("the call exists")
}

/// Polls until `done` holds for the call, or panics after `timeout`.
pub async fn wait_for_call(
    pool: &PgPool,
    id: Uuid,
    timeout: Duration,
    what: &str,
    done: impl Fn(&CallRow) -> bool,
) -> CallRow {
    let deadline = Instant::now() + timeout;
    loop {
        let row = call_row(pool, id).await;
        if done(&row) {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "call {id} did not get {what} within {timeout:?}; it is {:?} (hangup {:?})",
            row.call.status,
            row.call.hangup_cause
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn wait_until_ended(pool: &PgPool, id: Uuid, timeout: Duration) -> CallRow {
    wait_for_call(pool, id, timeout, "ended", |row| {
        row.call.ended_at.is_some()
    })
    .await
}

pub async fn wait_for_status(pool: &PgPool, id: Uuid, status: CallStatus) -> CallRow {
    wait_for_call(pool, id, Duration::from_secs(10), status.as_str(), |row| {
        row.call.status == status
    })
    .await
}

/// Every event arriving on `tap` until `count` `internal.call.ended` events were
/// seen, then whatever else arrives within a short quiet period (duplicates).
pub async fn collect_until_ended(
    tap: &mut EventTap,
    count: usize,
    timeout: Duration,
) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    let mut ended = 0;
    while ended < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = tap.next(left).await else {
            panic!("only {ended} of {count} calls announced their end within {timeout:?}");
        };
        if event.event_type == EventType::CallEnded {
            ended += 1;
        }
        events.push(event);
    }
    events.extend(tap.drain(Duration::from_millis(300)).await);
    events
}

/// Events by call, in arrival order.
pub fn by_call(events: &[Event]) -> HashMap<Uuid, Vec<Event>> {
    let mut calls: HashMap<Uuid, Vec<Event>> = HashMap::new();
    for event in events {
        calls.entry(event.call_id).or_default().push(event.clone());
    }
    for events in calls.values_mut() {
        events.sort_by_key(|event| event.sequence);
    }
    calls
}

/// One transcript row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SegmentRow {
    pub sequence_no: i32,
    pub role: String,
    pub text: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub source: String,
}

pub async fn transcript(pool: &PgPool, id: Uuid) -> Vec<SegmentRow> {
    sqlx::query_as(
        "SELECT sequence_no, role, text, started_at, ended_at, duration_ms, source \
         FROM call_transcripts WHERE call_id = $1 ORDER BY sequence_no",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .expect("transcript")
}

/// Publishes `event` again, as the broker would on a redelivery.
pub async fn republish(test: &TestBroker, event: &Event) {
    let payload = serde_json::to_vec(event).expect("serialise");
    test.broker
        .publish_confirmed(Outgoing {
            exchange: &test.names.events_exchange(),
            routing_key: event.event_type.routing_key(),
            payload: &payload,
            message_id: Some(event.id.to_string()),
            headers: Default::default(),
        })
        .await
        .expect("republish");
}

/// Legs on the line now and at most, per `from_number` (one number per test org).
#[derive(Debug, Default)]
pub struct LineCounts {
    by_from: Mutex<HashMap<String, (usize, usize)>>,
}

impl LineCounts {
    fn up(&self, from: &str) {
        let mut counts = self.by_from.lock().unwrap();
        let (now, max) = counts.entry(from.to_owned()).or_default();
        *now += 1;
        *max = (*max).max(*now);
    }

    fn down(&self, from: &str) {
        if let Some((now, _)) = self.by_from.lock().unwrap().get_mut(from) {
            *now -= 1;
        }
    }

    pub fn max_on_line(&self, from: &str) -> usize {
        self.by_from
            .lock()
            .unwrap()
            .get(from)
            .map_or(0, |(_, max)| *max)
    }
}

/// Wraps the simulated carrier: counts dials and the legs alive at once.
#[derive(Clone)]
pub struct CountingCarrier {
    inner: SimulatedCarrier,
    pub dials: Arc<AtomicUsize>,
    pub lines: Arc<LineCounts>,
}

impl CountingCarrier {
    pub fn new(time_scale: f64) -> Self {
        Self {
            inner: SimulatedCarrier::new(time_scale),
            dials: Arc::default(),
            lines: Arc::default(),
        }
    }
}

pub struct CountedLeg {
    inner: <SimulatedCarrier as Carrier>::Leg,
    from: String,
    lines: Arc<LineCounts>,
}

impl Drop for CountedLeg {
    fn drop(&mut self) {
        self.lines.down(&self.from);
    }
}

impl Carrier for CountingCarrier {
    type Leg = CountedLeg;

    fn name(&self) -> &'static str {
        "counting"
    }

    fn transcript_source(&self) -> &'static str {
        self.inner.transcript_source()
    }

    async fn dial(&self, call: &Call) -> Result<CountedLeg, CarrierError> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let inner = self.inner.dial(call).await?;
        self.lines.up(&call.from_number);
        Ok(CountedLeg {
            inner,
            from: call.from_number.clone(),
            lines: self.lines.clone(),
        })
    }
}

impl CallLeg for CountedLeg {
    fn carrier_call_id(&self) -> &str {
        self.inner.carrier_call_id()
    }

    async fn progress(&mut self) -> Result<Progress, CarrierError> {
        self.inner.progress().await
    }

    async fn say(&mut self, text: &str) -> Result<Spoken, CarrierError> {
        self.inner.say(text).await
    }

    async fn listen(&mut self) -> Result<Heard, CarrierError> {
        self.inner.listen().await
    }

    async fn hang_up(&mut self) -> Result<(), CarrierError> {
        self.inner.hang_up().await
    }
}
