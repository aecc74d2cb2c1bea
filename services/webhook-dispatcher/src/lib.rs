//! The webhook-dispatcher: turns every public call event into signed HTTP
//! deliveries, one per destination, retried on a schedule of broker delay queues.
//!
//! Two consume loops and a sweeper:
//! - `webhooks.events` ([`fanout`]): one message and one delivery per destination,
//!   in one transaction; then the first attempt of each new delivery, in place.
//! - `webhooks.deliveries` ([`deliver`]): jobs for every later attempt (retries,
//!   parked deliveries, redeliveries): claims a delivery, attempts it, records
//!   the attempt, and schedules the next one in a retry tier (or exhausts it).
//!   A first attempt runs the same code, called by the fan-out.
//! - the [`sweeper`] re-publishes pending deliveries whose job was lost (a crash
//!   between commit and publish) and those the api asked to redeliver.
//!
//! Delivery promises (README):
//! - At least once: a delivery stays `pending` in Postgres until an attempt's
//!   outcome is committed; a job lost anywhere is re-published by the sweeper.
//!   Receivers dedupe by `webhook-id` / `CallingBox-Event-Id` (the delivery id).
//! - In order per call and destination: a call's later event is not attempted
//!   before the earlier one is delivered or exhausted, nor before every earlier
//!   public event of the call has been fanned out (one may arrive late, after a
//!   dispatcher died holding it; see [`store::public_predecessors`]).
//! - Isolation: at most `per_destination_in_flight` attempts to one destination
//!   at once per dispatcher process; excess jobs step aside through a short
//!   delay queue instead of holding a consumer slot, so a slow or dead endpoint
//!   does not delay others.

pub mod deliver;
pub mod envelope;
pub mod fanout;
pub mod http;
pub mod jobs;
pub mod schedule;
pub mod store;
pub mod sweeper;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringer::broker::{WEBHOOK_DELIVERIES_QUEUE, WEBHOOK_EVENTS_QUEUE};
use ringer::config::CommonConfig;
use tokio_util::sync::CancellationToken;

/// Settings of the webhook-dispatcher.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ringer-webhook-dispatcher",
    about = "Signs and delivers ringer's webhooks"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Delivery jobs handled at once by this process (prefetch of `webhooks.deliveries`).
    #[arg(long, env = "RINGER_WEBHOOK_CONCURRENCY", default_value_t = 256)]
    pub delivery_concurrency: u16,

    /// Events fanned out at once by this process, each with the first attempts
    /// of its deliveries (prefetch of `webhooks.events`).
    #[arg(long, env = "RINGER_WEBHOOK_EVENTS_CONCURRENCY", default_value_t = 128)]
    pub events_concurrency: u16,

    /// Attempts in flight at once to one destination (an endpoint, or an inline URL's host) per process.
    #[arg(
        long,
        env = "RINGER_WEBHOOK_PER_DESTINATION_IN_FLIGHT",
        default_value_t = 10
    )]
    pub per_destination_in_flight: usize,

    /// Seconds an attempt may take, connection included; slower is a failed attempt.
    #[arg(long, env = "RINGER_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10)]
    pub attempt_timeout_seconds: u64,

    /// Seconds between sweeps for deliveries whose job was lost.
    #[arg(
        long,
        env = "RINGER_WEBHOOK_SWEEP_INTERVAL_SECONDS",
        default_value_t = 30
    )]
    pub sweep_interval_seconds: u64,

    /// A pending delivery overdue by this many seconds with no job published since is re-published.
    #[arg(
        long,
        env = "RINGER_WEBHOOK_SWEEP_AFTER_SECONDS",
        default_value_t = 120
    )]
    pub sweep_after_seconds: u64,
}

impl Config {
    /// The defaults around a common config (tests, tools).
    pub fn with_common(common: CommonConfig) -> Self {
        Self {
            common,
            delivery_concurrency: 256,
            events_concurrency: 128,
            per_destination_in_flight: 10,
            attempt_timeout_seconds: 10,
            sweep_interval_seconds: 30,
            sweep_after_seconds: 120,
        }
    }

    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_secs(self.attempt_timeout_seconds)
    }

    /// How long a claimed delivery stays reserved for the dispatcher attempting it.
    pub fn lease(&self) -> Duration {
        self.attempt_timeout() + Duration::from_secs(10)
    }
}

pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8085);

/// Runs the dispatcher until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let common = config.common.clone();
    ringer::service::run_worker(
        &common,
        "webhook-dispatcher",
        DEFAULT_ADDR,
        shutdown,
        |infra, shutdown| async move { work(config, infra, shutdown).await },
    )
    .await
}

async fn work(
    config: Config,
    infra: ringer::service::Infrastructure,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let names = infra.broker.names().clone();
    let publisher = jobs::Publisher::connect(&infra.broker, config.common.time_scale).await?;
    let sender = http::Sender::new(config.common.dev_mode, config.attempt_timeout())?;
    let attempts_db = attempts_pool(&config).await?;
    let dispatcher = Arc::new(deliver::Dispatcher::new(
        attempts_db.clone(),
        publisher.clone(),
        sender,
        &config,
    ));
    let fanout = Arc::new(fanout::Fanout::new(
        infra.db.clone(),
        publisher.clone(),
        dispatcher.clone(),
    ));
    let grace = config.common.shutdown_grace();

    let sweeper = tokio::spawn(sweeper::run(
        infra.db.clone(),
        publisher.clone(),
        sweeper::Settings {
            interval: Duration::from_secs(config.sweep_interval_seconds),
            overdue_after: Duration::from_secs(config.sweep_after_seconds),
        },
        shutdown.clone(),
    ));
    let events_queue = names.queue(WEBHOOK_EVENTS_QUEUE);
    let deliveries_queue = names.queue(WEBHOOK_DELIVERIES_QUEUE);
    let events = ringer::consumer::run(
        &infra.broker,
        &events_queue,
        config.events_concurrency,
        grace,
        fanout,
        shutdown.clone(),
    );
    let deliveries = ringer::consumer::run(
        &infra.broker,
        &deliveries_queue,
        config.delivery_concurrency,
        grace,
        dispatcher,
        shutdown.clone(),
    );
    let (events, deliveries) = tokio::join!(
        stop_all_on_exit(events, &shutdown),
        stop_all_on_exit(deliveries, &shutdown)
    );
    let _ = sweeper.await;
    attempts_db.close().await;
    events.and(deliveries)
}

/// The pool of the delivery consumer's claims and records. They commit without
/// waiting for the WAL flush (`synchronous_commit = off`): a Postgres crash may
/// forget the last moments of bookkeeping, which leaves those deliveries
/// `pending` for the sweeper to send again (at least once, as promised), and
/// never loses one. The fan-out keeps synchronous commits: its event is acked
/// on commit, so its deliveries must be durable by then.
async fn attempts_pool(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    use sqlx::Executor;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(config.common.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET synchronous_commit = off").await?;
                Ok(())
            })
        })
        .connect(&config.common.database_url)
        .await
        .map_err(|error| anyhow::anyhow!("connecting to Postgres (DATABASE_URL): {error}"))?;
    Ok(pool)
}

/// A consume loop that fails stops the whole process (the supervisor restarts it).
async fn stop_all_on_exit(
    consume: impl std::future::Future<Output = anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let result = consume.await;
    shutdown.cancel();
    result
}
