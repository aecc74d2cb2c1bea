//! Webhook delivery benchmark: throughput to a local receiver answering 200 at
//! once, latency from an event's commit to the receiver at a steady rate, and
//! the same with a hanging endpoint beside the healthy one. Prints a markdown
//! table. Needs Postgres (`DATABASE_URL`, a server it may create a database on)
//! and RabbitMQ (`AMQP_URL`); cleans up after itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use clap::Parser;
use rand::RngExt;
use ringer::broker::{Broker, Names};
use ringer::call::{Language, NewCall, VoicemailAction};
use ringer::config::CommonConfig;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "webhook-bench",
    about = "Benchmarks ringer's webhook dispatcher"
)]
struct Args {
    /// Postgres server; a scratch database is created on it and dropped afterwards.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// RabbitMQ connection string.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Events of the throughput run.
    #[arg(long, default_value_t = 2000)]
    throughput_events: usize,
    /// Endpoints each throughput event goes to.
    #[arg(long, default_value_t = 5)]
    endpoints: usize,
    /// Events per second of the latency runs.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds of each latency run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// When each call's delivery arrived.
type ArrivalLog = Vec<(Uuid, Instant)>;

/// Arrival times per receiver path.
#[derive(Clone, Default)]
struct Arrivals {
    seen: Arc<Mutex<HashMap<String, ArrivalLog>>>,
    hang: Arc<Mutex<Option<String>>>,
}

impl Arrivals {
    fn count(&self, path: &str) -> usize {
        self.seen.lock().unwrap().get(path).map_or(0, Vec::len)
    }

    fn take(&self, path: &str) -> Vec<(Uuid, Instant)> {
        self.seen.lock().unwrap().remove(path).unwrap_or_default()
    }
}

async fn receive(
    State(arrivals): State<Arrivals>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> &'static str {
    let at = Instant::now();
    let path = uri.path().to_owned();
    let hang = arrivals.hang.lock().unwrap().clone();
    if hang.as_deref() == Some(path.as_str()) {
        tokio::time::sleep(Duration::from_secs(60)).await;
        return "late";
    }
    let call_id = headers
        .get("x-callingbox-call-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    arrivals
        .seen
        .lock()
        .unwrap()
        .entry(path)
        .or_default()
        .push((call_id, at));
    "ok"
}

struct Bench {
    pool: PgPool,
    org_id: Uuid,
    base_url: String,
    arrivals: Arrivals,
}

impl Bench {
    async fn endpoint(&self, path: &str) -> anyhow::Result<()> {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO webhook_endpoints (id, org_id, url) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(self.org_id)
            .bind(format!("{}{path}", self.base_url))
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO webhook_endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)")
            .bind(id)
            .bind(ringer::orgs::generate_webhook_secret())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn clear_endpoints(&self) -> anyhow::Result<()> {
        sqlx::query("UPDATE webhook_endpoints SET deleted_at = now() WHERE deleted_at IS NULL")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Commits a queued call and its `call.queued`; returns its id and commit time.
    async fn event(&self) -> anyhow::Result<(Uuid, Instant)> {
        let new = NewCall {
            id: Uuid::now_v7(),
            org_id: self.org_id,
            to_number: "+14155550100".to_owned(),
            from_number: "+14155550199".to_owned(),
            prompt: "Confirm the appointment".to_owned(),
            context: serde_json::json!({"name": "Ana"}),
            returns: Some(serde_json::json!({"confirmed": "boolean"})),
            language: Language::En,
            webhook_url: None,
            voicemail_action: VoicemailAction::Hangup,
            max_duration_seconds: 60,
            metadata: None,
            tools: None,
            rate_per_minute_milli_cents: 5000,
            hold_milli_cents: ringer::money::hold_for(60, 5000),
        };
        // No balance hold: the bench measures webhooks, not the ledger's hot row.
        let mut tx = self.pool.begin().await?;
        ringer::call::insert_queued_call(&mut tx, &new).await?;
        tx.commit().await?;
        Ok((new.id, Instant::now()))
    }

    async fn wait_for(&self, path: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.arrivals.count(path) < count {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Events at `rate` for `seconds`; latency of each to `path` (and how many arrived).
    async fn paced(
        &self,
        path: &str,
        rate: u32,
        seconds: u64,
    ) -> anyhow::Result<(Vec<Duration>, usize)> {
        let total = rate as usize * seconds as usize;
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        let mut committed = HashMap::with_capacity(total);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let pending = Arc::new(tokio::sync::Semaphore::new(8));
        let (sender, mut results) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..total {
            ticker.tick().await;
            let permit = pending.clone().acquire_owned().await?;
            let bench = self.clone_handle();
            let sender = sender.clone();
            tokio::spawn(async move {
                let result = bench.event().await;
                drop(permit);
                let _ = sender.send(result);
            });
        }
        drop(sender);
        while let Some(result) = results.recv().await {
            let (id, at) = result?;
            committed.insert(id, at);
        }
        if !self.wait_for(path, total, Duration::from_secs(60)).await {
            eprintln!(
                "only {} of {total} deliveries to {path} arrived within 60 s",
                self.arrivals.count(path)
            );
        }
        let latencies: Vec<Duration> = self
            .arrivals
            .take(path)
            .into_iter()
            .filter_map(|(id, at)| committed.get(&id).map(|c| at.saturating_duration_since(*c)))
            .collect();
        Ok((latencies, total))
    }

    fn clone_handle(&self) -> Bench {
        Bench {
            pool: self.pool.clone(),
            org_id: self.org_id,
            base_url: self.base_url.clone(),
            arrivals: self.arrivals.clone(),
        }
    }
}

/// The baseline: the same number of signed POSTs to the same receiver through
/// the dispatcher's own HTTP sender, at the concurrency the dispatcher may use
/// (the per-destination cap on each endpoint), with no database and no broker.
/// Returns deliveries per second.
async fn bare_http(base_url: &str, paths: &[String], per_path: usize) -> anyhow::Result<f64> {
    let sender = Arc::new(ringer_webhook_dispatcher::http::Sender::new(
        true,
        Duration::from_secs(10),
    )?);
    let secrets = vec![ringer::orgs::generate_webhook_secret()];
    let body = serde_json::to_vec(&serde_json::json!({
        "id": Uuid::now_v7(), "type": "call.queued", "api_version": "v1",
        "data": {"call": {"id": Uuid::now_v7(), "status": "queued"}}
    }))?;
    let cap = ringer_webhook_dispatcher::Config::with_common(CommonConfig::new("", ""))
        .per_destination_in_flight;
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for path in paths {
        for worker in 0..cap {
            let (sender, secrets, body) = (sender.clone(), secrets.clone(), body.clone());
            let url = format!("{base_url}/bare{path}");
            let count = per_path / cap + usize::from(worker < per_path % cap);
            workers.spawn(async move {
                for _ in 0..count {
                    let signing = ringer_webhook_dispatcher::envelope::Signing {
                        delivery_id: Uuid::now_v7(),
                        event_type: "call.queued",
                        call_id: Uuid::now_v7(),
                        timestamp: chrono::Utc::now().timestamp(),
                        secrets: &secrets,
                    };
                    let headers = ringer_webhook_dispatcher::envelope::headers(&signing, &body)
                        .map_err(anyhow::Error::msg)?;
                    let result = sender.post(&url, headers, body.clone()).await;
                    if let Some(error) = result.error {
                        anyhow::bail!("bare POST failed: {error}");
                    }
                }
                Ok(count)
            });
        }
    }
    let mut sent = 0;
    while let Some(done) = workers.join_next().await {
        sent += done??;
    }
    Ok(sent as f64 / started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

async fn scratch_database(server_url: &str) -> anyhow::Result<(String, String)> {
    let suffix: u32 = rand::rng().random();
    let name = format!("ringer_bench_{suffix:08x}");
    let admin = PgPool::connect(server_url)
        .await
        .context("connecting to DATABASE_URL")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    admin.close().await;
    let (location, query) = match server_url.split_once('?') {
        Some((location, query)) => (location.to_owned(), format!("?{query}")),
        None => (server_url.to_owned(), String::new()),
    };
    let server = location
        .rsplit_once('/')
        .map_or(location.as_str(), |(s, _)| s);
    Ok((name.clone(), format!("{server}/{name}{query}")))
}

async fn drop_database(server_url: &str, name: &str) -> anyhow::Result<()> {
    let admin = PgPool::connect(server_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ringer::telemetry::init(ringer::config::LogFormat::Pretty);
    let (database, database_url) = scratch_database(&args.database_url).await?;
    let outcome = run(&args, &database_url).await;
    drop_database(&args.database_url, &database).await?;
    outcome
}

async fn run(args: &Args, database_url: &str) -> anyhow::Result<()> {
    ringer::ops::metrics_handle();
    let pool = ringer::db::connect(database_url, 10).await?;
    ringer::db::migrate(&pool).await?;
    let mut conn = pool.acquire().await?;
    let org = ringer::orgs::create_org(&mut conn, "Bench org", 1_000_000_000_000).await?;
    drop(conn);
    eprintln!("bench: database ready");

    let arrivals = Arrivals::default();
    let app = Router::new().fallback(receive).with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let stop_receiver = CancellationToken::new();
    let stop = stop_receiver.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    let bench = Bench {
        pool: pool.clone(),
        org_id: org.id,
        base_url,
        arrivals: arrivals.clone(),
    };

    let namespace = format!("bench{:08x}", rand::rng().random::<u32>());
    let mut common = CommonConfig::new(database_url, &args.amqp_url);
    common.namespace = namespace.clone();
    common.http_addr = Some("127.0.0.1:0".parse()?);
    common.dev_mode = true;
    common.db_max_connections = 16;
    common.shutdown_grace_seconds = 2;
    let mut config = ringer_webhook_dispatcher::Config::with_common(common);
    config.delivery_concurrency = 512;

    // 1. Throughput: events committed first, then the dispatcher drains them;
    // the baseline is the same POSTs without the dispatcher.
    let paths: Vec<String> = (0..args.endpoints).map(|n| format!("/fast/{n}")).collect();
    let bare = bare_http(&bench.base_url, &paths, args.throughput_events).await?;
    eprintln!("baseline: bare signed POSTs {bare:.0}/s");
    for path in &paths {
        arrivals.take(&format!("/bare{path}"));
    }
    for path in &paths {
        bench.endpoint(path).await?;
    }
    for _ in 0..args.throughput_events {
        bench.event().await?;
    }
    eprintln!(
        "bench: {} events committed; starting the dispatcher",
        args.throughput_events
    );
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let dispatcher = tokio::spawn(ringer_webhook_dispatcher::run(
        config.clone(),
        shutdown.clone(),
    ));
    for path in &paths {
        if !bench
            .wait_for(path, args.throughput_events, Duration::from_secs(300))
            .await
        {
            anyhow::bail!("throughput run: deliveries to {path} did not all arrive");
        }
    }
    let elapsed = started.elapsed();
    let total = args.throughput_events * args.endpoints;
    let throughput = total as f64 / elapsed.as_secs_f64();
    // The same run without the process's start-up (pools, broker, topology):
    // from the first delivery's arrival to the last one's.
    let arrived: Vec<Instant> = paths
        .iter()
        .flat_map(|path| arrivals.take(path))
        .map(|(_, at)| at)
        .collect();
    let first = arrived.iter().min().copied().unwrap_or(started);
    let last = arrived.iter().max().copied().unwrap_or(started);
    let delivering = last.duration_since(first);
    let steady = (total.saturating_sub(1)) as f64 / delivering.as_secs_f64().max(f64::EPSILON);
    eprintln!(
        "throughput: {total} deliveries in {elapsed:?} = {throughput:.0}/s; \
         first to last delivery {delivering:?} = {steady:.0}/s"
    );
    bench.clear_endpoints().await?;

    // 2. Latency at a steady rate, one healthy endpoint.
    bench.endpoint("/alone").await?;
    let (mut alone, alone_total) = bench.paced("/alone", args.rate, args.seconds).await?;
    alone.sort();
    eprintln!(
        "alone: {} of {alone_total}, p50 {}, p99 {}",
        alone.len(),
        millis(percentile(&alone, 0.5)),
        millis(percentile(&alone, 0.99))
    );
    bench.clear_endpoints().await?;

    // 3. The same beside an endpoint that never answers (attempts time out after 10 s).
    *arrivals.hang.lock().unwrap() = Some("/hanging".to_owned());
    bench.endpoint("/hanging").await?;
    bench.endpoint("/beside").await?;
    let (mut beside, beside_total) = bench.paced("/beside", args.rate, args.seconds).await?;
    beside.sort();

    if std::env::var_os("BENCH_METRICS").is_some() {
        for line in ringer::ops::metrics_handle().render().lines() {
            if line.contains("_sum") || line.contains("_count") || line.contains("_total") {
                eprintln!("{line}");
            }
        }
    }
    shutdown.cancel();
    let _ = dispatcher.await;
    stop_receiver.cancel();
    let broker = Broker::connect(&args.amqp_url, Names::new(&namespace), "webhook-bench").await?;
    let channel = broker.channel().await?;
    ringer::broker::delete_topology(&channel, broker.names()).await?;
    broker.close().await;
    pool.close().await;

    println!("## Webhooks: deliveries and latency (issue 7)\n");
    println!("| webhook benchmark | result | goal |");
    println!("|---|---|---|");
    println!(
        "| throughput ({} events × {} endpoints committed first, receiver answers 200 at once), first delivery to last | **{steady:.0} deliveries/s** ({total} in {:.2} s) | ≥ 2,000/s |",
        args.throughput_events,
        args.endpoints,
        delivering.as_secs_f64()
    );
    println!(
        "| same run, from the dispatcher's start (its start-up included) | {throughput:.0} deliveries/s ({total} in {:.2} s) | |",
        elapsed.as_secs_f64()
    );
    println!(
        "| baseline: the same signed POSTs to the same receiver, same concurrency, no database or broker | {bare:.0} POSTs/s; **dispatcher / bare = {:.2}** | |",
        steady / bare
    );
    println!(
        "| commit → receiver at {} events/s for {} s, p50 / p99 ({} of {alone_total} arrived) | {} / {} | p99 < 100 ms |",
        args.rate,
        args.seconds,
        alone.len(),
        millis(percentile(&alone, 0.5)),
        millis(percentile(&alone, 0.99))
    );
    println!(
        "| same, beside an endpoint that never answers (10 s timeouts), p50 / p99 ({} of {beside_total} arrived) | {} / {} | unaffected |",
        beside.len(),
        millis(percentile(&beside, 0.5)),
        millis(percentile(&beside, 0.99))
    );
    Ok(())
}
