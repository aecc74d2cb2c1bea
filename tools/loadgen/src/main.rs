//! loadgen: drives ringer's public API like a fleet of clients.
//!
//! `loadgen create-calls` posts calls over keep-alive connections, first as fast
//! as `--concurrency` clients can (throughput), then at a fixed rate (latency),
//! and prints one JSON line of figures.
//!
//! `loadgen run` drives the whole system (calls with outcomes, schemas and
//! webhooks to a built-in receiver), waits for everything to finish, audits it,
//! prints a one-page report and exits non-zero on any violation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Load generator for the ringer API")]
struct Cli {
    /// Base URL of the api; `run` takes several, comma-separated (one per replica).
    #[arg(long, env = "RINGER_API_URL", default_value = "http://127.0.0.1:8080")]
    api_url: String,
    /// API key of the org to load (`create-calls`; `run` creates its own orgs).
    #[arg(long, env = "RINGER_API_KEY")]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure `POST /v1/calls`: maximum rate, then latency at a fixed rate.
    CreateCalls {
        /// Concurrent keep-alive clients for the throughput phase.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds of the throughput phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Requests per second of the latency phase (0 = half the measured maximum).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Seconds of the latency phase.
        #[arg(long, default_value_t = 10)]
        latency_seconds: u64,
    },
    /// Drive the whole system, wait for every call and webhook, audit, report.
    Run(Box<loadgen::run::RunArgs>),
    /// Replay a call's messages through RabbitMQ alone: the broker's ceiling
    /// on the end-to-end rate (printed as JSON).
    BrokerFloor(loadgen::broker_floor::BrokerFloorArgs),
}

fn call_body(n: u64) -> serde_json::Value {
    json!({
        "to": format!("+1415{:07}", n % 10_000_000),
        "prompt": "Confirm tomorrow's appointment at 3 pm",
        "context": {"name": "Ana", "confirmed": true},
        "returns": {"confirmed": "boolean", "notes": "string?"},
        "max_duration_seconds": 60
    })
}

struct Target {
    client: reqwest::Client,
    url: String,
    key: String,
}

impl Target {
    async fn create(&self, n: u64) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.key)
            .json(&call_body(n))
            .send()
            .await?;
        let status = response.status();
        let _ = response.bytes().await?;
        anyhow::ensure!(status.as_u16() == 201, "POST /v1/calls answered {status}");
        Ok(started.elapsed())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

async fn throughput(target: Arc<Target>, concurrency: usize, seconds: u64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let target = target.clone();
        let counter = counter.clone();
        workers.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                target.create(n).await?;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0;
    for result in workers.join_all().await {
        total += result?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn latency_at(
    target: Arc<Target>,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(f64, f64, usize)> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = rate * seconds;
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..total {
        ticker.tick().await;
        let target = target.clone();
        requests.spawn(async move { target.create(1_000_000 + n).await });
    }
    let mut latencies = Vec::with_capacity(total as usize);
    for result in requests.join_all().await {
        latencies.push(result?);
    }
    latencies.sort();
    Ok((
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.len(),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            if !loadgen::run::run(&cli.api_url, *args).await? {
                std::process::exit(1);
            }
        }
        Command::BrokerFloor(args) => {
            let report = loadgen::broker_floor::run(args).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::CreateCalls {
            concurrency,
            seconds,
            rate,
            latency_seconds,
        } => {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(concurrency.max(64))
                .timeout(Duration::from_secs(30))
                .build()?;
            let target = Arc::new(Target {
                client,
                url: format!("{}/v1/calls", cli.api_url.trim_end_matches('/')),
                key: cli
                    .api_key
                    .ok_or_else(|| anyhow::anyhow!("create-calls needs --api-key"))?,
            });
            // Warm up connections and caches.
            throughput(target.clone(), concurrency, 1).await?;
            let max_rate = throughput(target.clone(), concurrency, seconds).await?;
            let rate = if rate == 0 {
                (max_rate / 2.0).max(1.0) as u64
            } else {
                rate
            };
            let (p50, p99, samples) = latency_at(target, rate, latency_seconds).await?;
            println!(
                "{}",
                json!({
                    "requests_per_second": (max_rate * 10.0).round() / 10.0,
                    "concurrency": concurrency,
                    "latency_rate": rate,
                    "latency_samples": samples,
                    "p50_ms": (p50 * 100.0).round() / 100.0,
                    "p99_ms": (p99 * 100.0).round() / 100.0,
                })
            );
        }
    }
    Ok(())
}
