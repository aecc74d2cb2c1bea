//! A dispatcher killed with SIGKILL while retries wait loses none of them.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use sqlx::PgPool;

use crate::helpers::*;

fn spawn_binary(pool: &PgPool, namespace: &Namespace, time_scale: f64) -> tokio::process::Child {
    let config = dispatcher_config(pool, namespace, time_scale);
    let quiet = std::env::var_os("TEST_LOG").is_none();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ringer-webhook-dispatcher"))
        .env("DATABASE_URL", &config.common.database_url)
        .env("AMQP_URL", &config.common.amqp_url)
        .env("RINGER_NAMESPACE", namespace.names.namespace())
        .env("RINGER_HTTP_ADDR", "127.0.0.1:0")
        .env("RINGER_TIME_SCALE", time_scale.to_string())
        .env("RINGER_DEV_MODE", "true")
        .env("RINGER_DB_MAX_CONNECTIONS", "5")
        .env("RINGER_WEBHOOK_SWEEP_INTERVAL_SECONDS", "1")
        .env("RINGER_WEBHOOK_SWEEP_AFTER_SECONDS", "5")
        .env("RINGER_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(if quiet {
            Stdio::null()
        } else {
            Stdio::inherit()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("the dispatcher binary starts")
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_sigkilled_dispatcher_loses_no_pending_retry(pool: PgPool) {
    // 1 min → 0.6 s, 5 min → 3 s: retries are waiting in the tier queues when it dies.
    let scale = 0.01;
    let namespace = Namespace::new();
    let mut receiver = Receiver::start(Plan {
        failures_per_delivery: 2,
        ..Plan::default()
    })
    .await;
    let org = seed_org(&pool).await;
    create_endpoint(&pool, &org, &receiver.url, &["*"]).await;

    let mut first = spawn_binary(&pool, &namespace, scale);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let calls = 8;
    for _ in 0..calls {
        queued_call(&pool, &org, Some(&receiver.url)).await;
    }
    // Every delivery failed once and waits for its retry.
    wait_for_deliveries(&pool, Duration::from_secs(20), "first attempts", |rows| {
        rows.len() == calls * 2 && rows.iter().all(|row| row.attempt_count >= 1)
    })
    .await;
    first.start_kill().expect("SIGKILL");
    first.wait().await.unwrap();
    let pending = deliveries(&pool)
        .await
        .iter()
        .filter(|row| row.status == "pending")
        .count();
    assert!(pending > 0, "the kill came while retries were pending");

    let mut second = spawn_binary(&pool, &namespace, scale);
    let rows = wait_for_deliveries(&pool, Duration::from_secs(40), "all delivered", |rows| {
        rows.iter().all(|row| row.status == "delivered")
    })
    .await;
    assert!(rows.iter().all(|row| row.attempt_count >= 3), "{rows:?}");
    let mut per_delivery: HashMap<String, Vec<u16>> = HashMap::new();
    for received in receiver.drain(Duration::from_millis(500)).await {
        per_delivery
            .entry(received.header("webhook-id").to_owned())
            .or_default()
            .push(received.answered);
    }
    assert_eq!(per_delivery.len(), calls * 2);
    for (id, answers) in &per_delivery {
        // At least once: an attempt cut off by the kill may be repeated.
        assert!(answers.contains(&200), "{id}: {answers:?}");
    }

    second.start_kill().expect("SIGKILL");
    second.wait().await.unwrap();
    namespace.cleanup().await;
}
