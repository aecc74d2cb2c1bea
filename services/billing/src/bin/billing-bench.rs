//! Settlements per second for one org and for many orgs, with the org's
//! balance in one bucket and spread over several, and, in the same run,
//! pgbench running the same settlement transaction as a SQL script.
//!
//! Creates a scratch database next to `DATABASE_URL`'s, migrates it, and drops
//! it at the end. Calls are pre-inserted in their ended state with their holds;
//! N concurrent workers call the settlement step directly.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use rand::RngExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "billing-bench",
    about = "Settlement throughput: ringer-billing vs pgbench"
)]
struct Args {
    /// Postgres server to benchmark on (a scratch database is created next to this one).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,

    /// Calls settled per scenario (by each of ringer and pgbench).
    #[arg(long, default_value_t = 3000)]
    calls: usize,

    /// Concurrent settling workers (and pgbench clients).
    #[arg(long, default_value_t = 16)]
    workers: usize,

    /// Orgs in the many-orgs scenario.
    #[arg(long, default_value_t = 64)]
    orgs: usize,

    /// Runs of every scenario; the table shows the median.
    #[arg(long, default_value_t = 1)]
    rounds: usize,

    /// Bucket counts to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    buckets: Vec<i16>,

    /// The pgbench executable.
    #[arg(long, env = "PGBENCH", default_value = "pgbench")]
    pgbench: String,

    /// pgbench worker threads (-j).
    #[arg(long, default_value_t = 2)]
    pgbench_threads: usize,

    /// Keep the scratch database afterwards (for inspection).
    #[arg(long)]
    keep_database: bool,
}

/// `new_call`'s shape: 300 s cap at 5000 milli-cents a minute.
const MAX_SECONDS: i32 = 300;
const RATE: i64 = 5000;
const HOLD: i64 = 25_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    OneOrg,
    ManyOrgs,
}

#[derive(Debug)]
struct Row {
    buckets: i16,
    scenario: Scenario,
    ours: f64,
    pgbench: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.workers > 0 && args.calls >= args.workers && args.orgs > 0 && args.rounds > 0,
        "--workers, --orgs and --rounds must be positive and --calls at least --workers"
    );
    let server = PgConnectOptions::from_str(&args.database_url)
        .context("parsing DATABASE_URL")?
        .disable_statement_logging();
    let suffix: u32 = rand::rng().random();
    let database = format!("ringer_bench_{suffix:08x}");
    let mut admin = PgConnection::connect_with(&server.clone().database("postgres")).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await?;
    eprintln!("scratch database {database}");

    let result = run(&args, &server.clone().database(&database), &database).await;

    if !args.keep_database {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
    }
    let rows = result?;
    print_table(&args, &rows);
    Ok(())
}

async fn run(args: &Args, options: &PgConnectOptions, database: &str) -> anyhow::Result<Vec<Row>> {
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(args.workers)? + 2)
        .connect_with(options.clone())
        .await?;
    ringer::db::migrate(&pool)
        .await
        .context("migrating the scratch database")?;
    sqlx::query(BENCH_TABLES).execute(&pool).await?;
    let script = std::env::temp_dir().join(format!("{database}.pgbench.sql"));
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let pgbench_url = connection_url(&args.database_url, database);

    let mut runs: Vec<Row> = Vec::new();
    for round in 1..=args.rounds {
        for &buckets in &args.buckets {
            for scenario in [Scenario::OneOrg, Scenario::ManyOrgs] {
                let orgs = match scenario {
                    Scenario::OneOrg => 1,
                    Scenario::ManyOrgs => args.orgs,
                };
                let ours_calls = prepare(&pool, orgs, args.calls, buckets).await?;
                let pgbench_calls = prepare(&pool, orgs, args.calls, buckets).await?;
                queue_for_pgbench(&pool, &pgbench_calls).await?;
                sqlx::query("ANALYZE").execute(&pool).await?;

                let ours = settle_all(&pool, &ours_calls, args.workers).await?;
                let (pgbench, settled) =
                    run_pgbench(args, &pgbench_url, &script, args.calls).await?;
                verify(&pool, &ours_calls).await?;
                verify(&pool, &pgbench_calls[..settled]).await?;
                eprintln!(
                    "round {round}, {buckets} bucket(s), {scenario:?}: ringer {ours:.0}/s, pgbench {pgbench:.0}/s"
                );
                runs.push(Row {
                    buckets,
                    scenario,
                    ours,
                    pgbench,
                });
            }
        }
    }
    let mut rows = Vec::new();
    for &buckets in &args.buckets {
        for scenario in [Scenario::OneOrg, Scenario::ManyOrgs] {
            let same = || {
                runs.iter()
                    .filter(move |run| run.buckets == buckets && run.scenario == scenario)
            };
            rows.push(Row {
                buckets,
                scenario,
                ours: median(same().map(|run| run.ours).collect()),
                pgbench: median(same().map(|run| run.pgbench).collect()),
            });
        }
    }
    let _ = std::fs::remove_file(&script);
    pool.close().await;
    Ok(rows)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `url` with its database name replaced.
fn connection_url(url: &str, database: &str) -> String {
    let (location, query) = match url.split_once('?') {
        Some((location, query)) => (location, format!("?{query}")),
        None => (url, String::new()),
    };
    let server = location
        .rsplit_once('/')
        .map_or(location, |(server, _)| server);
    format!("{server}/{database}{query}")
}

/// Creates `orgs` orgs with their credit spread over `buckets` buckets and
/// `calls` calls among them, ended (4 in 5 answered with 5–294 connected
/// seconds, 1 in 5 unanswered), half with their result already extracted so
/// that settling closes the completion join. Holds are spread evenly over the
/// buckets. Returns the call ids, shuffled.
async fn prepare(
    pool: &PgPool,
    orgs: usize,
    calls: usize,
    buckets: i16,
) -> anyhow::Result<Vec<Uuid>> {
    let per_org = calls.div_ceil(orgs) as i64;
    let mut tx = pool.begin().await?;
    let mut org_ids = Vec::with_capacity(orgs);
    for n in 0..orgs {
        let org = ringer::orgs::create_org(&mut tx, &format!("bench org {n}"), 0).await?;
        // Twice what the holds need, so that no bucket runs short.
        ringer::ledger::credit_spread(
            &mut tx,
            org.id,
            2 * per_org * HOLD + 1,
            buckets,
            "bench credit",
        )
        .await?;
        org_ids.push(org.id);
    }
    let mut ids: Vec<Uuid> = sqlx::query_scalar(
        "WITH orgs AS (SELECT org_id, (ordinality - 1)::int AS k FROM unnest($1::uuid[]) WITH ORDINALITY AS o(org_id)), \
         inserted AS ( \
           INSERT INTO calls (id, org_id, to_number, from_number, prompt, context, returns, status, \
                              started_at, answered_at, ended_at, duration_seconds, max_duration_seconds, \
                              hold_milli_cents, rate_per_minute_milli_cents, result_status, result, event_seq) \
           SELECT gen_random_uuid(), o.org_id, '+14155550100', '+14155550199', 'Confirm the appointment', \
                  '{\"name\": \"Ana\"}', '{\"confirmed\": \"boolean\"}', \
                  CASE WHEN n % 5 = 0 THEN 'no_answer' ELSE 'in_progress' END, \
                  now() - interval '10 minutes', \
                  CASE WHEN n % 5 = 0 THEN NULL ELSE now() - make_interval(secs => 5 + n % 290 + 0.25) END, \
                  now(), CASE WHEN n % 5 = 0 THEN 0 ELSE 5 + n % 290 END, $3, $4, $5, \
                  CASE WHEN n % 2 = 0 THEN CASE WHEN n % 5 = 0 THEN 'failed' ELSE 'completed' END ELSE 'pending' END, \
                  CASE WHEN n % 2 = 0 AND n % 5 <> 0 THEN '{\"confirmed\": true}'::jsonb END, 4 \
           FROM generate_series(0, $2 - 1) AS n JOIN orgs o ON o.k = n % $6 \
           RETURNING id, org_id), \
         numbered AS (SELECT id, org_id, row_number() OVER (PARTITION BY org_id ORDER BY id) - 1 AS i FROM inserted) \
         INSERT INTO ledger_entries (org_id, bucket, call_id, kind, from_account, to_account, amount_milli_cents, description) \
         SELECT org_id, (i % $7)::smallint, id, 'hold', 'available', 'reserved', $4, 'hold for call' FROM numbered \
         RETURNING call_id",
    )
    .bind(&org_ids)
    .bind(calls as i64)
    .bind(MAX_SECONDS)
    .bind(HOLD)
    .bind(RATE)
    .bind(orgs as i64)
    .bind(i64::from(buckets))
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE balances b SET available_milli_cents = b.available_milli_cents - h.total, \
                               reserved_milli_cents = b.reserved_milli_cents + h.total \
         FROM (SELECT org_id, bucket, sum(amount_milli_cents) AS total FROM ledger_entries \
               WHERE kind = 'hold' AND call_id = ANY($1) GROUP BY org_id, bucket) h \
         WHERE b.org_id = h.org_id AND b.bucket = h.bucket",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    shuffle(&mut ids);
    Ok(ids)
}

fn shuffle(ids: &mut [Uuid]) {
    let mut rng = rand::rng();
    for i in (1..ids.len()).rev() {
        let j = rng.random_range(0..=i);
        ids.swap(i, j);
    }
}

/// Settles every call with `workers` concurrent workers; settlements per second.
async fn settle_all(pool: &PgPool, ids: &[Uuid], workers: usize) -> anyhow::Result<f64> {
    let ids: Arc<Vec<Uuid>> = Arc::new(ids.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (pool, ids, next) = (pool.clone(), ids.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&id) = ids.get(n) else {
                    return anyhow::Ok(());
                };
                let settlement = ringer_billing::settle(&pool, id).await?;
                anyhow::ensure!(
                    settlement != ringer_billing::Settlement::AlreadySettled,
                    "call {id} was settled twice"
                );
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(ids.len() as f64 / started.elapsed().as_secs_f64())
}

/// The settlement transaction as pgbench SQL: the same statements, in the same
/// order, as `ringer_billing::settle_call` (terminal-event routing included).
/// A sequence hands each client the next call of a shuffled queue (inside the
/// locking read, so it costs no extra round trip), so every transaction
/// settles a call that is still reserved.
const PGBENCH_SCRIPT: &str = r#"BEGIN;
SELECT id AS cid, org_id AS org, hold_milli_cents AS callhold, rate_per_minute_milli_cents AS rate,
       CASE WHEN status IN ('in_progress', 'completed') AND answered_at IS NOT NULL
            THEN LEAST(floor(extract(epoch FROM ended_at - answered_at))::int, max_duration_seconds) ELSE 0 END AS billed,
       CASE WHEN status IN ('in_progress', 'completed') AND answered_at IS NOT NULL
            THEN 'settled' ELSE 'released' END AS rstatus
  FROM calls WHERE id = (SELECT call_id FROM bench_queue WHERE n = (SELECT nextval('bench_seq')))
   AND reservation_status = 'reserved' FOR NO KEY UPDATE \gset
SELECT bucket, amount_milli_cents AS hold FROM ledger_entries WHERE call_id = :cid::uuid AND kind = 'hold' \gset
\set charge least((:billed * :rate + 59) / 60, :hold)
\set release :hold - :charge
UPDATE calls SET billed_duration_seconds = :billed::int, billing_amount_milli_cents = :charge::bigint,
       reservation_status = :rstatus::text, updated_at = now()
 WHERE id = :cid::uuid RETURNING *;
WITH s AS (UPDATE calls SET event_seq = event_seq + 1 WHERE id = :cid::uuid RETURNING *)
INSERT INTO outbox (event_id, routing_key, payload)
SELECT gen_random_uuid(), 'internal.call.billed',
       jsonb_build_object('id', gen_random_uuid(), 'type', 'internal.call.billed', 'version', 1, 'org_id', s.org_id,
                          'call_id', s.id, 'sequence', s.event_seq, 'occurred_at', now(), 'call', to_jsonb(s))
  FROM s;
WITH j AS (UPDATE calls SET completed_at = now(), updated_at = now(), event_seq = event_seq + 1,
                  status = CASE WHEN status = 'in_progress' THEN 'completed' ELSE status END
            WHERE id = :cid::uuid AND ended_at IS NOT NULL AND result_status <> 'pending'
              AND reservation_status <> 'reserved' AND completed_at IS NULL RETURNING *)
INSERT INTO outbox (event_id, routing_key, payload)
SELECT gen_random_uuid(), CASE j.status WHEN 'completed' THEN 'call.completed' WHEN 'no_answer' THEN 'call.no_answer'
                                        WHEN 'busy' THEN 'call.busy' WHEN 'canceled' THEN 'call.canceled' ELSE 'call.failed' END,
       jsonb_build_object('id', gen_random_uuid(), 'type', j.status, 'version', 1, 'org_id', j.org_id,
                          'call_id', j.id, 'sequence', j.event_seq, 'occurred_at', now(), 'call', to_jsonb(j))
  FROM j;
INSERT INTO ledger_entries (org_id, bucket, call_id, kind, from_account, to_account, amount_milli_cents, description)
SELECT :org::uuid, :bucket::smallint, :cid::uuid, 'charge', 'reserved', 'revenue', :charge::bigint, 'connected time'
 WHERE :charge::bigint > 0;
INSERT INTO ledger_entries (org_id, bucket, call_id, kind, from_account, to_account, amount_milli_cents, description)
SELECT :org::uuid, :bucket::smallint, :cid::uuid, 'hold_release', 'reserved', 'available', :release::bigint, 'unused hold'
 WHERE :release::bigint > 0;
UPDATE balances SET available_milli_cents = available_milli_cents + :release::bigint,
                    reserved_milli_cents = reserved_milli_cents - :hold::bigint
 WHERE org_id = :org::uuid AND bucket = :bucket::smallint;
END;
"#;

const BENCH_TABLES: &str = "CREATE TABLE bench_queue (n bigint PRIMARY KEY, call_id uuid NOT NULL)";

async fn queue_for_pgbench(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("TRUNCATE bench_queue")
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO bench_queue (n, call_id) SELECT ordinality, id FROM unnest($1::uuid[]) WITH ORDINALITY AS q(id)")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DROP SEQUENCE IF EXISTS bench_seq")
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE SEQUENCE bench_seq")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Runs pgbench over `calls` queued calls; (transactions per second, calls settled).
async fn run_pgbench(
    args: &Args,
    url: &str,
    script: &std::path::Path,
    calls: usize,
) -> anyhow::Result<(f64, usize)> {
    let per_client = calls / args.workers;
    let output = tokio::process::Command::new(&args.pgbench)
        .arg("--no-vacuum")
        .args(["--protocol", "prepared"])
        .args(["--client", &args.workers.to_string()])
        .args([
            "--jobs",
            &args.pgbench_threads.min(args.workers).to_string(),
        ])
        .args(["--transactions", &per_client.to_string()])
        .arg("--file")
        .arg(script)
        .arg(url)
        .output()
        .await
        .with_context(|| format!("running {}", args.pgbench))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let tps = stdout
        .lines()
        .find(|line| line.starts_with("tps = "))
        .and_then(|line| line["tps = ".len()..].split_whitespace().next())
        .and_then(|tps| tps.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench's output:\n{stdout}"))?;
    Ok((tps, per_client * args.workers))
}

/// Every call settled once and the ledger exact.
async fn verify(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<()> {
    let (reserved, charges): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM calls WHERE id = ANY($1) AND reservation_status = 'reserved'), \
                (SELECT count(*) FROM ledger_entries WHERE call_id = ANY($1) AND kind IN ('charge', 'hold_release'))",
    )
    .bind(ids)
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(reserved == 0, "{reserved} calls were not settled");
    anyhow::ensure!(charges >= ids.len() as i64, "missing settlement entries");
    let mut conn = pool.acquire().await?;
    let drift = ringer::ledger::check_invariant(&mut conn, None).await?;
    anyhow::ensure!(drift.is_empty(), "ledger drift: {drift:?}");
    let buckets = ringer::ledger::check_buckets(&mut conn, None).await?;
    anyhow::ensure!(buckets.is_empty(), "bucket drift: {buckets:?}");
    Ok(())
}

fn print_table(args: &Args, rows: &[Row]) {
    println!(
        "## Billing: settlements, one org and many, beside pgbench (issue 6)\n\n### Settlements per second ({} calls per run, {} workers / pgbench clients, {} orgs in the many-orgs runs, median of {} round(s))\n",
        args.calls, args.workers, args.orgs, args.rounds
    );
    println!("| buckets | orgs | ringer-billing (settle/s) | pgbench (tps) | ours/pgbench |");
    println!("|---:|---|---:|---:|---:|");
    for row in rows {
        let orgs = match row.scenario {
            Scenario::OneOrg => "one".to_owned(),
            Scenario::ManyOrgs => args.orgs.to_string(),
        };
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} % |",
            row.buckets,
            orgs,
            row.ours,
            row.pgbench,
            100.0 * row.ours / row.pgbench
        );
    }
    println!();
    for &buckets in &args.buckets {
        let find = |scenario| {
            rows.iter()
                .find(|row| row.buckets == buckets && row.scenario == scenario)
        };
        if let (Some(one), Some(many)) = (find(Scenario::OneOrg), find(Scenario::ManyOrgs)) {
            println!(
                "- {buckets} bucket(s): one org settles at {:.0} % of the many-orgs rate (pgbench: {:.0} %)",
                100.0 * one.ours / many.ours,
                100.0 * one.pgbench / many.pgbench
            );
        }
    }
}
