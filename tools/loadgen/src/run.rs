//! `loadgen run`: a fleet of clients against the public API, a webhook
//! receiver, then the audit.
//!
//! Phases: set up orgs (in the database, as `ringer-admin` does), webhook
//! endpoints (through the API) and the receiver; submit calls at a rate with
//! bounded concurrency, each POST retried with its `Idempotency-Key` until it
//! gets an answer (an api replica may die mid-request); wait until every call
//! finished and every delivery arrived; collect what the database, the broker
//! and the receiver hold; audit it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit::{
    self, AuditInput, BalanceRow, CallRow, DeadLetter, DeliveryRow, INLINE, LedgerRow, Outcome,
    PlannedCall, QueueDepth,
};
use crate::receiver::Receiver;

/// Settings of `loadgen run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Postgres of the deployment (orgs are created there; the audit reads it).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// RabbitMQ of the deployment (queue depths for the audit).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// The deployment's RINGER_NAMESPACE.
    #[arg(long, env = "RINGER_NAMESPACE", default_value = "")]
    pub namespace: String,
    /// Calls to place in all.
    #[arg(long, default_value_t = 500)]
    pub calls: u64,
    /// Calls per second to submit (0 = as fast as --concurrency allows).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Create requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Organisations to spread the calls over (created for this run).
    #[arg(long, default_value_t = 3)]
    pub orgs: usize,
    /// Webhook endpoints per org (all events), pointing at the built-in receiver.
    #[arg(long, default_value_t = 1)]
    pub endpoints: usize,
    /// Percentage of calls with an inline `webhook_url` (signed with the org's secret).
    #[arg(long, default_value_t = 50)]
    pub inline_percent: u32,
    /// Outcome mix by test number, as weights: `answered=60,busy=10,...`
    /// (answered, busy, no_answer, voicemail, failed, hangup_early, on_hold, unhelpful).
    #[arg(
        long,
        default_value = "answered=50,busy=8,no_answer=8,voicemail=8,failed=8,hangup_early=6,on_hold=4,unhelpful=8"
    )]
    pub mix: String,
    /// Percentage of calls canceled right after creation.
    #[arg(long, default_value_t = 0)]
    pub cancel_percent: u32,
    /// `max_duration_seconds` of every call (on_hold calls last this long, times the time scale).
    #[arg(long, default_value_t = 60)]
    pub max_duration_seconds: u32,
    /// Starting credit of each org, in milli-cents.
    #[arg(long, default_value_t = 100_000_000_000)]
    pub credit_milli_cents: i64,
    /// Live-call limit set on each org (`orgs.max_concurrent_calls`).
    #[arg(long, default_value_t = 10_000)]
    pub org_concurrency: i32,
    /// Seconds a create (or cancel) keeps being retried before it counts as failed.
    #[arg(long, default_value_t = 180)]
    pub retry_seconds: u64,
    /// Seconds to wait, after the last create, for every call and delivery to finish.
    #[arg(long, default_value_t = 300)]
    pub settle_seconds: u64,
    /// Address of the webhook receiver (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub receiver_addr: SocketAddr,
    /// The `ringer-admin` binary (dead-letter inspection); default: next to loadgen, else PATH.
    #[arg(long)]
    pub admin_bin: Option<PathBuf>,
    /// Work queues' delivery limit of the services (for `dlq show`).
    #[arg(long, env = "RINGER_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
    /// Write the figures and the audit as JSON here.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Write everything the audit looked at as JSON here (for post-mortems).
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Seed of the outcome, schema and destination choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// A conversation the simulated callee can hold: the schema and the context
/// that answers it (a context key equal to a returns field is the answer).
struct Scenario {
    language: &'static str,
    prompt: &'static str,
    returns: Value,
    context: Value,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            language: "en",
            prompt: "Confirm the dentist appointment for tomorrow and ask how many people will come",
            returns: json!({"confirmed": "boolean", "party_size": "integer"}),
            context: json!({"confirmed": true, "party_size": 3}),
        },
        Scenario {
            language: "en",
            prompt: "Ask when the delivery can be made and whether there are instructions",
            returns: json!({"delivery_date": "date", "notes": "string?"}),
            context: json!({"delivery_date": "2026-05-14", "notes": "Leave it at the back door"}),
        },
        Scenario {
            language: "en",
            prompt: "Ask the customer to rate the service and which plan they use",
            returns: json!({"rating": "number", "plan": "enum:basic|pro|enterprise"}),
            context: json!({"rating": 4.5, "plan": "pro"}),
        },
        Scenario {
            language: "es",
            prompt: "Confirma la cita de mañana y pregunta cuántas personas vendrán",
            returns: json!({"confirmado": "boolean", "personas": {"type": "integer"}}),
            context: json!({"confirmado": true, "personas": 2}),
        },
    ]
}

/// A deterministic stream of choices (splitmix64).
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn parse_mix(text: &str) -> anyhow::Result<Vec<(Outcome, u64)>> {
    let mut mix = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
        let outcome = Outcome::parse(name.trim())
            .with_context(|| format!("unknown outcome {name:?} in --mix"))?;
        let weight: u64 = weight
            .trim()
            .parse()
            .with_context(|| format!("weight of {name} in --mix is not a whole number"))?;
        mix.push((outcome, weight));
    }
    anyhow::ensure!(
        mix.iter().any(|(_, w)| *w > 0),
        "--mix gives no outcome a weight"
    );
    Ok(mix)
}

struct Org {
    id: Uuid,
    key: String,
    endpoints: Vec<String>,
}

/// The API behind one or several replicas: requests rotate over the URLs and
/// move on to the next one when a replica does not answer (a load balancer's job).
pub struct Api {
    client: reqwest::Client,
    urls: Vec<String>,
    next: AtomicUsize,
    retry_for: Duration,
}

/// The final answer to a request, after retries.
struct Answer {
    status: u16,
    body: Value,
    attempts: u32,
}

impl Api {
    pub fn new(urls: &str, concurrency: usize, retry_for: Duration) -> anyhow::Result<Self> {
        let urls: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        anyhow::ensure!(!urls.is_empty(), "no --api-url");
        Ok(Self {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(concurrency.max(16))
                .timeout(Duration::from_secs(15))
                .connect_timeout(Duration::from_secs(2))
                .build()?,
            urls,
            next: AtomicUsize::new(0),
            retry_for,
        })
    }

    /// Sends until a definite answer: transport errors, 5xx and 429 are
    /// retried (same Idempotency-Key, so a retry never makes a second effect).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(100);
        let mut attempts = 0;
        let mut index = self.next.fetch_add(1, Ordering::Relaxed);
        loop {
            attempts += 1;
            let url = format!("{}{path}", self.urls[index % self.urls.len()]);
            let mut request = self.client.request(method.clone(), &url).bearer_auth(key);
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(idempotency_key) = idempotency_key {
                request = request.header("Idempotency-Key", idempotency_key);
            }
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    match response.bytes().await {
                        Ok(bytes) if status != 429 && status < 500 => {
                            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            return Ok(Answer {
                                status,
                                body,
                                attempts,
                            });
                        }
                        Ok(bytes) => {
                            if let Some(seconds) = retry_after {
                                backoff = Duration::from_secs(seconds.min(5));
                            }
                            format!("{status}: {}", String::from_utf8_lossy(&bytes))
                        }
                        Err(error) => format!("reading the response: {error}"),
                    }
                }
                Err(error) => {
                    index += 1;
                    format!("{error}")
                }
            };
            if Instant::now() + backoff > deadline {
                anyhow::bail!("{method} {path}: gave up after {attempts} attempt(s): {outcome}");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

fn admin_bin(args: &RunArgs) -> PathBuf {
    if let Some(path) = &args.admin_bin {
        return path.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("ringer-admin")))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("ringer-admin"))
}

async fn connect_db(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")
}

/// Runs a query until it succeeds or `patience` passes (the database may be restarting).
async fn patiently<T, F, Fut>(patience: Duration, mut query: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = Instant::now() + patience;
    loop {
        match query().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() < deadline => {
                tracing_like(&format!("database: {error}; retrying"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

fn tracing_like(line: &str) {
    eprintln!("loadgen: {line}");
}

async fn create_orgs(pool: &PgPool, args: &RunArgs, run: &str) -> anyhow::Result<Vec<Org>> {
    let mut orgs = Vec::new();
    for index in 0..args.orgs {
        let mut tx = pool.begin().await?;
        let org = ringer::orgs::create_org(
            &mut tx,
            &format!("loadgen {run} #{index}"),
            args.credit_milli_cents,
        )
        .await?;
        let key = ringer::orgs::create_api_key(&mut tx, org.id, "loadgen").await?;
        // A caller ID of its own (numbers are unique among active ones).
        let digits = (org.id.as_u128() % 10_000_000) as u64;
        let number = format!("+1628{digits:07}");
        ringer::orgs::add_number(&mut tx, org.id, &number, "US", "local", 0).await?;
        sqlx::query("UPDATE orgs SET max_concurrent_calls = $2 WHERE id = $1")
            .bind(org.id)
            .bind(args.org_concurrency)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        orgs.push(Org {
            id: org.id,
            key: key.key,
            endpoints: Vec::new(),
        });
    }
    Ok(orgs)
}

/// What happened to one create.
struct Submitted {
    index: usize,
    call_id: Option<Uuid>,
    error: Option<String>,
    attempts: u32,
    cancel_accepted: Option<bool>,
    started_ms: u64,
}

/// The figures of a run, besides the audit.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub calls: u64,
    pub created: u64,
    pub submit_seconds: f64,
    pub creates_per_second: f64,
    /// From the first POST to the last terminal event received.
    pub end_to_end_seconds: f64,
    pub end_to_end_calls_per_second: f64,
    /// POST sent → terminal event received, per call.
    pub e2e_latency_p50_ms: f64,
    pub e2e_latency_p99_ms: f64,
    pub create_retries: u64,
    pub webhook_requests: usize,
    pub settled: bool,
}

pub async fn run(api_urls: &str, args: RunArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mix = parse_mix(&args.mix)?;
    let total_weight: u64 = mix.iter().map(|(_, w)| w).sum();
    let pool = connect_db(&args.database_url).await?;
    let api = Arc::new(Api::new(
        api_urls,
        args.concurrency,
        Duration::from_secs(args.retry_seconds),
    )?);
    let shutdown = CancellationToken::new();
    let receiver = Receiver::start(args.receiver_addr, started, shutdown.clone()).await?;
    tracing_like(&format!(
        "run {run_id}: {} calls at {} /s over {} org(s), receiver {}",
        args.calls,
        if args.rate > 0.0 {
            args.rate.to_string()
        } else {
            "max".to_owned()
        },
        args.orgs,
        receiver.base_url
    ));

    let mut orgs = create_orgs(&pool, &args, &run_id).await?;
    for org in &mut orgs {
        let (secret,): (String,) = sqlx::query_as("SELECT webhook_secret FROM orgs WHERE id = $1")
            .bind(org.id)
            .fetch_one(&pool)
            .await?;
        receiver.add_inline(org.id, secret);
        for index in 0..args.endpoints {
            let (url, key) = receiver.endpoint_url();
            let answer = api
                .send(
                    reqwest::Method::POST,
                    "/v1/webhook_endpoints",
                    &org.key,
                    Some(&json!({"url": url, "description": format!("loadgen {run_id} #{index}"), "enabled_events": ["*"]})),
                    Some(&format!("loadgen-{run_id}-endpoint-{}-{index}", org.id)),
                )
                .await?;
            anyhow::ensure!(
                answer.status == 201,
                "POST /v1/webhook_endpoints answered {}: {}",
                answer.status,
                answer.body
            );
            let id = answer.body["id"]
                .as_str()
                .context("endpoint id")?
                .to_owned();
            let secret = answer.body["signing_secret"]
                .as_str()
                .context("the endpoint's signing_secret")?
                .to_owned();
            receiver.add_endpoint(key, id.clone(), secret);
            org.endpoints.push(id);
        }
    }

    // The plan: every choice made up front, deterministically.
    let scenarios = scenarios();
    let mut choices = Choices(args.seed);
    let mut planned = Vec::new();
    let mut bodies = Vec::new();
    for n in 0..args.calls {
        let org = &orgs[(n as usize) % orgs.len()];
        let mut pick = choices.below(total_weight);
        let outcome = mix
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(o, _)| *o)
            .unwrap_or(Outcome::Answered);
        let scenario = &scenarios[choices.below(scenarios.len() as u64) as usize];
        let inline = choices.below(100) < u64::from(args.inline_percent);
        let cancel = choices.below(100) < u64::from(args.cancel_percent);
        let npa = [415u16, 212, 312, 617, 206][choices.below(5) as usize];
        let mut body = json!({
            "to": outcome.test_number(npa),
            "prompt": scenario.prompt,
            "context": scenario.context,
            "returns": scenario.returns,
            "language": scenario.language,
            "max_duration_seconds": args.max_duration_seconds,
            "metadata": {"loadgen": {"run": run_id, "n": n}},
        });
        let mut destinations: Vec<String> = org.endpoints.clone();
        if inline {
            body["webhook_url"] = json!(receiver.inline_url(org.id));
            destinations.push(INLINE.to_owned());
        }
        planned.push(PlannedCall {
            n,
            org_id: org.id,
            outcome,
            returns: scenario.returns.clone(),
            answers: scenario.context.clone(),
            destinations,
            call_id: None,
            create_error: None,
            cancel_accepted: None,
        });
        bodies.push((org.key.clone(), body, cancel));
    }

    // Submit.
    let submit_started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let mut ticker = interval.map(|i| {
        let mut t = tokio::time::interval(i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let mut last_progress = Instant::now();
    let mut finished = Vec::new();
    for (index, (key, body, cancel)) in bodies.into_iter().enumerate() {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        let permit = permits.clone().acquire_owned().await?;
        let api = api.clone();
        let idempotency_key = format!("loadgen-{run_id}-{index}");
        let started_ms = started.elapsed().as_millis() as u64;
        tasks.spawn(async move {
            let created = api
                .send(
                    reqwest::Method::POST,
                    "/v1/calls",
                    &key,
                    Some(&body),
                    Some(&idempotency_key),
                )
                .await;
            drop(permit);
            let mut submitted = Submitted {
                index,
                call_id: None,
                error: None,
                attempts: 0,
                cancel_accepted: None,
                started_ms,
            };
            match created {
                Ok(answer) if answer.status == 201 => {
                    submitted.attempts = answer.attempts;
                    submitted.call_id = answer.body["id"]
                        .as_str()
                        .and_then(|id| Uuid::parse_str(id).ok());
                    if submitted.call_id.is_none() {
                        submitted.error = Some(format!("201 without an id: {}", answer.body));
                    }
                }
                Ok(answer) => {
                    submitted.error = Some(format!("answered {}: {}", answer.status, answer.body));
                }
                Err(error) => submitted.error = Some(format!("{error:#}")),
            }
            if let (true, Some(id)) = (cancel, submitted.call_id) {
                let answer = api
                    .send(
                        reqwest::Method::POST,
                        &format!("/v1/calls/{id}/cancel"),
                        &key,
                        Some(&json!({})),
                        Some(&format!("{idempotency_key}-cancel")),
                    )
                    .await;
                submitted.cancel_accepted = match answer {
                    Ok(a) if a.status == 200 => Some(true),
                    Ok(a) if a.status == 409 => Some(false),
                    Ok(a) => {
                        submitted.error = Some(format!("cancel answered {}: {}", a.status, a.body));
                        None
                    }
                    Err(error) => {
                        submitted.error = Some(format!("cancel: {error:#}"));
                        None
                    }
                };
            }
            submitted
        });
        while let Some(done) = tasks.try_join_next() {
            finished.push(done?);
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            last_progress = Instant::now();
            tracing_like(&format!(
                "submitted {}/{} ({} webhook requests received)",
                index + 1,
                args.calls,
                receiver.count()
            ));
        }
    }
    while let Some(done) = tasks.join_next().await {
        finished.push(done?);
    }
    let mut first_post_ms = u64::MAX;
    let mut post_started: BTreeMap<Uuid, u64> = BTreeMap::new();
    let mut retries = 0u64;
    for s in finished {
        first_post_ms = first_post_ms.min(s.started_ms);
        if let Some(id) = s.call_id {
            post_started.insert(id, s.started_ms);
        }
        retries += u64::from(s.attempts.saturating_sub(1));
        record(&mut planned, s);
    }
    let submit_seconds = submit_started.elapsed().as_secs_f64();
    let created = planned.iter().filter(|p| p.call_id.is_some()).count() as u64;
    tracing_like(&format!(
        "submitted {} calls in {submit_seconds:.1} s ({created} created); waiting for them to finish",
        args.calls
    ));

    let org_ids: Vec<Uuid> = orgs.iter().map(|o| o.id).collect();
    let expected_terminal: i64 = planned
        .iter()
        .filter(|p| p.call_id.is_some())
        .map(|p| p.destinations.len() as i64)
        .sum();
    let settled = settle(
        &pool,
        &org_ids,
        &receiver,
        expected_terminal,
        Duration::from_secs(args.settle_seconds),
    )
    .await;

    let input = collect_input(&pool, &args, &api, &orgs, planned, &receiver).await?;
    shutdown.cancel();
    let report = audit::audit(&input);

    // Figures: first POST to the last terminal event received.
    let mut terminal_at: BTreeMap<Uuid, u64> = BTreeMap::new();
    for r in &input.received {
        if let (Some(call), true) = (r.call_id, audit::is_terminal_event(&r.event_type)) {
            let at = terminal_at.entry(call).or_insert(r.at_ms);
            *at = (*at).min(r.at_ms);
        }
    }
    let mut latencies: Vec<u64> = terminal_at
        .iter()
        .filter_map(|(call, at)| post_started.get(call).map(|s| at.saturating_sub(*s)))
        .collect();
    latencies.sort_unstable();
    let last_terminal = terminal_at.values().copied().max().unwrap_or(0);
    let e2e_seconds =
        last_terminal.saturating_sub(first_post_ms.min(last_terminal)) as f64 / 1000.0;
    let figures = Figures {
        calls: args.calls,
        created,
        submit_seconds: round(submit_seconds, 2),
        creates_per_second: round(created as f64 / submit_seconds.max(1e-9), 1),
        end_to_end_seconds: round(e2e_seconds, 2),
        end_to_end_calls_per_second: round(terminal_at.len() as f64 / e2e_seconds.max(1e-9), 1),
        e2e_latency_p50_ms: percentile(&latencies, 0.50),
        e2e_latency_p99_ms: percentile(&latencies, 0.99),
        create_retries: retries,
        webhook_requests: input.received.len(),
        settled,
    };

    print!(
        "{}",
        render_page(&run_id, &args, api_urls, &figures, &report)
    );
    if let Some(path) = &args.report_json {
        let document =
            json!({"run": run_id, "figures": figures, "ok": report.ok(), "audit": report});
        std::fs::write(path, serde_json::to_vec_pretty(&document)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.dump {
        std::fs::write(path, serde_json::to_vec(&input)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.ok())
}

fn record(planned: &mut [PlannedCall], s: Submitted) {
    let plan = &mut planned[s.index];
    plan.call_id = s.call_id;
    plan.create_error = s.error.filter(|_| s.call_id.is_none());
    plan.cancel_accepted = s.cancel_accepted;
}

fn round(value: f64, places: i32) -> f64 {
    let factor = 10f64.powi(places);
    (value * factor).round() / factor
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64
}

#[derive(sqlx::FromRow)]
struct Progress {
    open: i64,
    pending: i64,
    terminal_delivered: i64,
    deliveries: i64,
}

/// Waits until every call closed its completion join, every delivery is
/// delivered and has arrived, and each destination got its terminal event.
async fn settle(
    pool: &PgPool,
    orgs: &[Uuid],
    receiver: &Receiver,
    expected_terminal: i64,
    patience: Duration,
) -> bool {
    let deadline = Instant::now() + patience;
    let mut last_report = Instant::now();
    let mut done_since: Option<Instant> = None;
    loop {
        let progress: Result<Progress, _> = sqlx::query_as(
            "SELECT \
               (SELECT count(*) FROM calls WHERE org_id = ANY($1) AND completed_at IS NULL) AS open, \
               (SELECT count(*) FROM webhook_deliveries WHERE org_id = ANY($1) AND status = 'pending') AS pending, \
               (SELECT count(*) FROM webhook_deliveries WHERE org_id = ANY($1) AND status = 'delivered' \
                  AND event_type IN ('call.completed','call.failed','call.no_answer','call.busy','call.canceled')) AS terminal_delivered, \
               (SELECT count(*) FROM webhook_deliveries WHERE org_id = ANY($1)) AS deliveries",
        )
        .bind(orgs)
        .fetch_one(pool)
        .await;
        match progress {
            Ok(p) => {
                let arrived = receiver.distinct() as i64;
                let done = p.open == 0
                    && p.pending == 0
                    && p.terminal_delivered >= expected_terminal
                    && arrived >= p.deliveries;
                if last_report.elapsed() > Duration::from_secs(5) || (done && done_since.is_none())
                {
                    last_report = Instant::now();
                    tracing_like(&format!(
                        "calls open {}, deliveries pending {}, terminal delivered {}/{expected_terminal}, \
                         arrived {arrived}/{}",
                        p.open, p.pending, p.terminal_delivered, p.deliveries
                    ));
                }
                if done {
                    // A moment of quiet, so that a late duplicate would show up.
                    match done_since {
                        Some(since) if since.elapsed() > Duration::from_secs(3) => return true,
                        Some(_) => {}
                        None => done_since = Some(Instant::now()),
                    }
                } else {
                    done_since = None;
                }
            }
            Err(error) => tracing_like(&format!("database: {error}; retrying")),
        }
        if Instant::now() > deadline {
            tracing_like("gave up waiting; auditing what there is");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn collect_input(
    pool: &PgPool,
    args: &RunArgs,
    api: &Api,
    orgs: &[Org],
    planned: Vec<PlannedCall>,
    receiver: &Receiver,
) -> anyhow::Result<AuditInput> {
    let org_ids: Vec<Uuid> = orgs.iter().map(|o| o.id).collect();
    let patience = Duration::from_secs(60);
    let calls: Vec<CallRow> = patiently(patience, || {
        sqlx::query_as(
            "SELECT id, org_id, (metadata->'loadgen'->>'n')::bigint AS n, status, result_status, result, \
                    result_error, returns, reservation_status, completed_at IS NOT NULL AS completed, \
                    started_at IS NOT NULL AS started, answered_at IS NOT NULL AS answered, \
                    ended_at IS NOT NULL AS ended, \
                    EXTRACT(EPOCH FROM ended_at - answered_at)::float8 AS connected_seconds, \
                    billed_duration_seconds::bigint, billing_amount_milli_cents, hold_milli_cents, \
                    rate_per_minute_milli_cents, dial_attempts::bigint, webhook_url, webhook_status, error_code \
             FROM calls WHERE org_id = ANY($1)",
        )
        .bind(&org_ids)
        .fetch_all(pool)
    })
    .await?;
    let ledger: Vec<LedgerRow> = patiently(patience, || {
        sqlx::query_as(
            "SELECT org_id, call_id, kind, from_account, to_account, amount_milli_cents \
             FROM ledger_entries WHERE org_id = ANY($1)",
        )
        .bind(&org_ids)
        .fetch_all(pool)
    })
    .await?;
    let balances: Vec<BalanceRow> = patiently(patience, || {
        sqlx::query_as(
            "SELECT org_id, sum(available_milli_cents)::bigint AS available_milli_cents, \
                    sum(reserved_milli_cents)::bigint AS reserved_milli_cents \
             FROM balances WHERE org_id = ANY($1) GROUP BY org_id",
        )
        .bind(&org_ids)
        .fetch_all(pool)
    })
    .await?;
    let deliveries: Vec<DeliveryRow> = patiently(patience, || {
        sqlx::query_as(
            "SELECT id, call_id, COALESCE(endpoint_id::text, 'inline') AS destination, event_type, sequence, \
                    status, attempt_count::bigint \
             FROM webhook_deliveries WHERE org_id = ANY($1)",
        )
        .bind(&org_ids)
        .fetch_all(pool)
    })
    .await?;
    let (outbox_unpublished,): (i64,) = patiently(patience, || {
        sqlx::query_as("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(pool)
    })
    .await?;

    let mut api_balances = Vec::new();
    for org in orgs {
        let answer = api
            .send(reqwest::Method::GET, "/v1/balance", &org.key, None, None)
            .await?;
        api_balances.push(BalanceRow {
            org_id: org.id,
            available_milli_cents: answer.body["available_milli_cents"].as_i64().unwrap_or(-1),
            reserved_milli_cents: answer.body["reserved_milli_cents"].as_i64().unwrap_or(-1),
        });
    }

    let (queues, dead_letters, broker_error) = match inspect_broker(args).await {
        Ok((queues, letters)) => (queues, letters, None),
        Err(error) => (Vec::new(), Vec::new(), Some(format!("{error:#}"))),
    };
    Ok(AuditInput {
        org_ids,
        planned,
        calls,
        ledger,
        balances,
        api_balances,
        deliveries,
        received: receiver.received(),
        queues,
        dead_letters,
        broker_error,
        outbox_unpublished,
    })
}

/// Ready messages of every queue of the namespace (passive declares), waiting
/// a little for in-flight work to drain; then the dead letters through `ringer-admin`.
async fn inspect_broker(args: &RunArgs) -> anyhow::Result<(Vec<QueueDepth>, Vec<DeadLetter>)> {
    let names = ringer::broker::Names::new(&args.namespace);
    let dlqs: Vec<String> = names
        .dead_letter_queues()
        .into_iter()
        .map(|(_, dlq)| dlq)
        .collect();
    let connection = lapin::Connection::connect(
        &args.amqp_url,
        lapin::ConnectionProperties::default().with_connection_name("loadgen-audit".into()),
    )
    .await
    .context("connecting to RabbitMQ (AMQP_URL)")?;
    let mut depths = Vec::new();
    for attempt in 0..20 {
        depths.clear();
        for queue in names.all_queues() {
            let channel = connection.create_channel().await?;
            let messages = ringer::broker::ready_messages(&channel, &queue)
                .await
                .with_context(|| format!("queue {queue} (is --namespace right?)"))?;
            let _ = channel.close(200, "done".into()).await;
            depths.push(QueueDepth {
                is_dead_letter_queue: dlqs.contains(&queue),
                queue,
                messages: u64::from(messages),
            });
        }
        let busy = depths
            .iter()
            .any(|q| !q.is_dead_letter_queue && q.messages > 0);
        if !busy || attempt == 19 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = connection.close(200, "done".into()).await;

    let mut letters = Vec::new();
    let admin = admin_bin(args);
    let list = admin_json(&admin, args, &["dlq", "list"])?;
    for summary in list.as_array().cloned().unwrap_or_default() {
        let depth = summary["depth"].as_u64().unwrap_or(0);
        let queue = summary["queue"].as_str().unwrap_or("").to_owned();
        if let Some(q) = depths.iter_mut().find(|q| q.queue == queue) {
            q.messages = q.messages.max(depth);
        }
        if depth == 0 {
            continue;
        }
        let limit = depth.to_string();
        let delivery_limit = args.delivery_limit.to_string();
        let shown = admin_json(
            &admin,
            args,
            &[
                "dlq",
                "show",
                &queue,
                "--limit",
                &limit,
                "--delivery-limit",
                &delivery_limit,
            ],
        )?;
        for message in shown["messages"].as_array().cloned().unwrap_or_default() {
            letters.push(DeadLetter {
                queue: queue.clone(),
                call_id: message["call_id"]
                    .as_str()
                    .and_then(|id| Uuid::parse_str(id).ok()),
                reason: format!(
                    "{} in {}, routing key {}",
                    message["reason"].as_str().unwrap_or("?"),
                    message["original_queue"].as_str().unwrap_or("?"),
                    message["original_routing_keys"]
                ),
            });
        }
    }
    Ok((depths, letters))
}

fn admin_json(admin: &PathBuf, args: &RunArgs, command: &[&str]) -> anyhow::Result<Value> {
    let output = std::process::Command::new(admin)
        .args(command)
        .arg("--json")
        .env("DATABASE_URL", &args.database_url)
        .env("AMQP_URL", &args.amqp_url)
        .env("RINGER_NAMESPACE", &args.namespace)
        .output()
        .with_context(|| format!("running {} (set --admin-bin)", admin.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} {}: {}",
        admin.display(),
        command.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{} {} printed no JSON", admin.display(), command.join(" ")))
}

fn render_page(
    run_id: &str,
    args: &RunArgs,
    api_urls: &str,
    figures: &Figures,
    report: &audit::AuditReport,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "loadgen run {run_id}");
    let _ = writeln!(
        out,
        "  api {api_urls}; namespace {:?}; {} org(s) x {} endpoint(s), {}% inline; mix {}",
        args.namespace, args.orgs, args.endpoints, args.inline_percent, args.mix
    );
    let _ = writeln!(
        out,
        "  calls {} requested, {} created in {:.1} s ({:.1}/s), {} create retries",
        figures.calls,
        figures.created,
        figures.submit_seconds,
        figures.creates_per_second,
        figures.create_retries
    );
    let _ = writeln!(
        out,
        "  end to end: {:.1} calls/s (first POST to last terminal webhook, {:.1} s); \
         POST -> terminal webhook p50 {} ms, p99 {} ms",
        figures.end_to_end_calls_per_second,
        figures.end_to_end_seconds,
        figures.e2e_latency_p50_ms,
        figures.e2e_latency_p99_ms
    );
    let _ = writeln!(
        out,
        "  {} webhook requests received; everything settled: {}",
        figures.webhook_requests,
        if figures.settled {
            "yes"
        } else {
            "NO (timed out)"
        }
    );
    let statuses: Vec<String> = report
        .status_counts
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    let outcomes: Vec<String> = report
        .outcome_counts
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    let _ = writeln!(out, "  outcomes asked: {}", outcomes.join(", "));
    let _ = writeln!(out, "  statuses:       {}", statuses.join(", "));
    let _ = writeln!(out, "audit");
    out.push_str(&report.render(5));
    for note in &report.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    let _ = writeln!(
        out,
        "verdict: {}",
        if report.ok() {
            "PASS — nothing lost, nothing doubled".to_owned()
        } else {
            format!("FAIL — {} violation(s)", report.violations())
        }
    );
    out
}
