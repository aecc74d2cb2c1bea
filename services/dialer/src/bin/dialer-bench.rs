//! `make bench`: calls taken from `queued` to ended per second through one dialer
//! replica and through two, at time scale 0, with the API bypassed (calls and their
//! `call.queued` outbox rows inserted directly). Prints a markdown section.
//!
//! Environment: `DATABASE_URL` (a migrated database), `AMQP_URL`,
//! `DIALER_BENCH_CALLS` (default 5000), `DIALER_BENCH_ORGS` (default 50),
//! `RINGER_DB_MAX_CONNECTIONS` (default 16), `RINGER_PREFETCH` (default 256) and
//! `RINGER_DIALER_EXTRA_RELAYS` (default 0) per replica.

use std::time::{Duration, Instant};

use anyhow::Context;
use ringer::broker::{self, Broker, Names};
use ringer::call::{Language, NewCall, VoicemailAction};
use ringer::config::CommonConfig;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} must be a number, got {value:?}")),
        Err(_) => Ok(default),
    }
}

struct Settings {
    database_url: String,
    amqp_url: String,
    calls: usize,
    orgs: usize,
    db_connections: u32,
    prefetch: u16,
    extra_relays: u32,
    /// Measure one replica only (`DIALER_BENCH_ONLY_ONE=1`), for profiling.
    only_one: bool,
}

struct Measurement {
    replicas: usize,
    calls: usize,
    elapsed: Duration,
}

impl Measurement {
    fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings {
        database_url: std::env::var("DATABASE_URL").context("DATABASE_URL must be set")?,
        amqp_url: std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
        calls: env_or("DIALER_BENCH_CALLS", 5000)?,
        orgs: env_or("DIALER_BENCH_ORGS", 50)?,
        db_connections: env_or("RINGER_DB_MAX_CONNECTIONS", 16)?,
        prefetch: env_or("RINGER_PREFETCH", 256)?,
        extra_relays: env_or("RINGER_DIALER_EXTRA_RELAYS", 0)?,
        only_one: env_or("DIALER_BENCH_ONLY_ONE", 0)? == 1,
    };
    anyhow::ensure!(
        settings.calls > 0 && settings.orgs > 0,
        "calls and orgs must be positive"
    );
    let pool = ringer::db::connect(&settings.database_url, 8)
        .await
        .context("connecting to DATABASE_URL")?;

    let mut results = Vec::new();
    for replicas in [1, 2] {
        if settings.only_one && replicas == 2 {
            break;
        }
        let measurement = measure(&settings, &pool, replicas).await?;
        eprintln!(
            "==> dialer-bench: {} replica(s): {} calls in {:.2} s = {:.0}/s",
            replicas,
            measurement.calls,
            measurement.elapsed.as_secs_f64(),
            measurement.per_second()
        );
        results.push(measurement);
    }

    let one = results[0].per_second();
    let two = results.get(1).map_or(one, Measurement::per_second);
    println!("## Dialer: calls from queued to ended (issue 4)\n");
    println!(
        "{} calls over {} orgs (per-org limit 10), time scale 0 (the simulated carrier does not wait), \
         inserted with their `call.queued` outbox rows before the clock starts; the clock stops when \
         the last call has `ended_at`. Each call: claim, dial, ringing, answered, a scripted \
         conversation of one question, end with its transcript; three events through the outbox.\n",
        settings.calls, settings.orgs
    );
    println!("| dialer replicas | calls | seconds | calls/s | goal |");
    println!("|---|---|---|---|---|");
    for result in &results {
        let goal = if result.replicas == 1 { "≥ 1000" } else { "" };
        println!(
            "| {} | {} | {:.2} | {:.0} | {} |",
            result.replicas,
            result.calls,
            result.elapsed.as_secs_f64(),
            result.per_second(),
            goal
        );
    }
    println!("| **ratio two / one** | | | **{:.2}** | |", two / one);
    pool.close().await;
    Ok(())
}

async fn measure(
    settings: &Settings,
    pool: &PgPool,
    replicas: usize,
) -> anyhow::Result<Measurement> {
    let namespace = format!("dialerbench{}", &Uuid::new_v4().simple().to_string()[..12]);
    let names = Names::new(&namespace);
    let admin = Broker::connect(&settings.amqp_url, names.clone(), "ringer-dialer-bench")
        .await
        .context("connecting to AMQP_URL")?;
    let channel = admin.channel().await?;
    broker::declare_topology(&channel, &names, 5, 0.0).await?;
    let measured = run_calls(settings, pool, replicas, &namespace).await;
    // The namespace goes, whatever happened.
    broker::delete_topology(&channel, &names).await?;
    admin.close().await;
    let elapsed = measured?;
    Ok(Measurement {
        replicas,
        calls: settings.calls,
        elapsed,
    })
}

/// Queues the calls, runs `replicas` dialers until every call ended, and returns
/// the time from the dialers' start to the last end.
async fn run_calls(
    settings: &Settings,
    pool: &PgPool,
    replicas: usize,
    namespace: &str,
) -> anyhow::Result<Duration> {
    let orgs = seed_orgs(pool, settings.orgs).await?;
    insert_calls(pool, &orgs, settings.calls).await?;
    // Production runs autovacuum; this machine's Postgres may not. Start each
    // run from a vacuumed database so that the dead rows of the previous run
    // (and of the inserts) do not weigh on this one.
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    eprintln!(
        "==> dialer-bench: {} calls queued; starting {replicas} dialer(s)",
        settings.calls
    );

    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let mut dialers = Vec::new();
    for _ in 0..replicas {
        let mut common = CommonConfig::new(&settings.database_url, &settings.amqp_url);
        common.namespace = namespace.to_owned();
        common.http_addr = Some("127.0.0.1:0".parse()?);
        common.time_scale = 0.0;
        common.db_max_connections = settings.db_connections;
        common.prefetch = settings.prefetch;
        common.shutdown_grace_seconds = 10;
        let mut config = ringer_dialer::Config::new(common);
        config.extra_relays = settings.extra_relays;
        dialers.push(tokio::spawn(ringer_dialer::run(config, shutdown.clone())));
    }

    let deadline = started + Duration::from_secs(300);
    let mut outcome = Ok(());
    loop {
        let (ended,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM calls WHERE org_id = ANY($1) AND ended_at IS NOT NULL",
        )
        .bind(&orgs)
        .fetch_one(pool)
        .await?;
        if ended as usize >= settings.calls {
            break;
        }
        if dialers.iter().any(|dialer| dialer.is_finished()) || Instant::now() > deadline {
            outcome = Err(anyhow::anyhow!(
                "the dialers stopped or stalled after {ended} calls"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();

    shutdown.cancel();
    for dialer in dialers {
        dialer.await??;
    }
    outcome.map(|()| elapsed)
}

async fn seed_orgs(pool: &PgPool, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let mut tx = pool.begin().await?;
    // Caller IDs +1 628 000 0000 onwards, after the ones earlier runs took.
    let (taken,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM phone_numbers WHERE e164 LIKE '+1628%'")
            .fetch_one(&mut *tx)
            .await?;
    let mut orgs = Vec::with_capacity(count);
    for index in 0..count {
        let org = ringer::orgs::create_org(&mut tx, "Dialer bench org", 1_000_000_000_000).await?;
        let number = format!("+1628{:07}", taken as usize + index);
        ringer::orgs::add_number(&mut tx, org.id, &number, "US", "local", 100).await?;
        orgs.push(org.id);
    }
    tx.commit().await?;
    Ok(orgs)
}

/// Inserts the calls the way the API does (hold, row, `call.queued`), eight at a time.
async fn insert_calls(pool: &PgPool, orgs: &[Uuid], calls: usize) -> anyhow::Result<()> {
    let numbers: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT org_id, e164 FROM phone_numbers WHERE org_id = ANY($1) AND status = 'active'",
    )
    .bind(orgs)
    .fetch_all(pool)
    .await?;
    let inserters = 8;
    let mut tasks = Vec::new();
    for inserter in 0..inserters {
        let pool = pool.clone();
        let numbers = numbers.clone();
        tasks.push(tokio::spawn(async move {
            let mut index = inserter;
            while index < calls {
                let (org_id, from) = &numbers[index % numbers.len()];
                insert_call(&pool, *org_id, from).await?;
                index += inserters;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn insert_call(pool: &PgPool, org_id: Uuid, from: &str) -> anyhow::Result<()> {
    let rate = 5000;
    let max_duration_seconds = 300;
    let new = NewCall {
        id: Uuid::now_v7(),
        org_id,
        to_number: "+14155550100".to_owned(),
        from_number: from.to_owned(),
        prompt: "Confirm tomorrow's appointment at 3 pm".to_owned(),
        context: serde_json::json!({"name": "Ana", "confirmed": true}),
        returns: Some(serde_json::json!({"confirmed": "boolean"})),
        language: Language::En,
        webhook_url: None,
        voicemail_action: VoicemailAction::Hangup,
        max_duration_seconds,
        metadata: None,
        tools: None,
        rate_per_minute_milli_cents: rate,
        hold_milli_cents: ringer::money::hold_for(max_duration_seconds, rate),
    };
    let mut tx = pool.begin().await?;
    ringer::ledger::reserve_hold(&mut tx, org_id, new.id, new.hold_milli_cents).await?;
    ringer::call::insert_queued_call(&mut tx, &new).await?;
    tx.commit().await?;
    Ok(())
}
