//! Operations: SIGTERM under load, and what the services do when RabbitMQ or
//! Postgres goes away and comes back (through a proxy the test breaks, so that
//! the shared servers of this machine keep serving the other tests; `make
//! chaos` restarts the real ones).

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use ringer::testing::{TestBroker, amqp_url, common_config, database_url, random_namespace};
use ringer_e2e::{Options, Proxy, System, start_services};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TERMINAL: [&str; 5] = ["completed", "no_answer", "busy", "failed", "canceled"];

fn call_body(to: &str, receiver: &str) -> Value {
    json!({
        "to": to,
        "prompt": "Confirm the appointment",
        "context": {"confirmed": true},
        "returns": {"confirmed": "boolean"},
        "webhook_url": receiver,
        // A $0.05 hold each: the 60 calls of the SIGTERM test fit the org's
        // $5.00 even if none has ended (and released its hold) yet.
        "max_duration_seconds": 60
    })
}

async fn create_call(system: &System, to: &str) -> String {
    let response = system
        .post("/v1/calls", &call_body(to, &system.receiver.url))
        .await;
    let status = response.status();
    let created: Value = response.json().await.expect("JSON");
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().expect("id").to_owned()
}

async fn wait_terminal(system: &System, id: &str, timeout: Duration) -> Value {
    system
        .wait_for_call(id, timeout, |call| {
            TERMINAL.contains(&call["status"].as_str().unwrap_or(""))
        })
        .await
}

/// Terminal events per call among what the receiver got.
fn terminal_events(system: &System) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in system.receiver.received() {
        let body = request.json();
        let kind = body["type"].as_str().unwrap_or("");
        if [
            "call.completed",
            "call.no_answer",
            "call.busy",
            "call.failed",
            "call.canceled",
        ]
        .contains(&kind)
        {
            let id = body["data"]["call"]["id"].as_str().unwrap_or("").to_owned();
            *counts.entry(id).or_default() += 1;
        }
    }
    counts
}

#[sqlx::test(migrations = "../migrations")]
async fn sigterm_under_load_drains_and_a_successor_finishes_with_nothing_lost_or_doubled(
    pool: PgPool,
) {
    // Calls last a few hundred milliseconds of simulated time: some are live,
    // some queued, some finishing when the stop comes.
    let options = Options {
        time_scale: 0.02,
        ..Options::default()
    };
    let first = System::start_with(pool.clone(), options.clone()).await;
    let numbers = [
        "+14155550100",
        "+14155550101",
        "+14155550102",
        "+14155550100",
    ];
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(create_call(&first, numbers[n % numbers.len()]).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (live,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM calls WHERE status NOT IN ('completed','no_answer','busy','failed','canceled')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(live > 0, "the stop comes while calls are in flight");

    // What SIGTERM does: every service stops consuming, finishes its in-flight
    // work within the grace period and exits 0 (shut_down panics otherwise).
    let org = first.org.clone();
    let receiver = first.receiver.clone();
    let namespace = first.broker.names.namespace().to_owned();
    let broker = first.shut_down().await;

    let second = System::start_with(
        pool.clone(),
        Options {
            namespace: Some(namespace),
            org: Some(org),
            receiver: Some(receiver),
            ..options
        },
    )
    .await;
    for id in &ids {
        let call = wait_terminal(&second, id, Duration::from_secs(60)).await;
        assert!(
            TERMINAL.contains(&call["status"].as_str().unwrap_or("")),
            "{call}"
        );
        assert_ne!(call["error_code"], "dialer_lost", "{call}");
    }

    // Nothing doubled: dialled once, settled once, one terminal event each.
    let (dialled_twice,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM calls WHERE dial_attempts > 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(dialled_twice, 0);
    let (charged_twice,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT call_id FROM ledger_entries WHERE kind = 'charge' \
         GROUP BY call_id HAVING count(*) > 1) doubled",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(charged_twice, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts = terminal_events(&second);
        if counts.len() == ids.len() || tokio::time::Instant::now() > deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let counts = terminal_events(&second);
            for id in &ids {
                assert_eq!(counts.get(id), Some(&1), "one terminal webhook for {id}");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.stop().await;
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn every_binary_exits_non_zero_when_it_loses_rabbitmq_and_comes_back_when_restarted(
    pool: PgPool,
) {
    let namespace = random_namespace();
    let broker = TestBroker::start(&namespace, 5).await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let proxied = proxy.url_for(&amqp_url());
    let common = || {
        let mut config = common_config(&pool, &namespace);
        config.amqp_url = proxied.clone();
        config
    };

    let start_all = || async {
        let token = CancellationToken::new();
        let (addr, running) = start_services(common, &token).await;
        (addr, token, running)
    };

    let (_, _token, running) = start_all().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while proxy.open_connections() < running.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // RabbitMQ "restarts": every connection drops and none is accepted for a while.
    proxy.refuse(true);
    proxy.cut();
    for (name, handle) in running {
        let outcome = tokio::time::timeout(Duration::from_secs(15), handle)
            .await
            .unwrap_or_else(|_| panic!("{name} kept running without its broker"))
            .expect("no panic");
        let error = outcome.expect_err(name);
        assert!(
            format!("{error:#}").contains("RabbitMQ"),
            "{name} says why it stopped: {error:#}"
        );
    }

    // The supervisor starts them again once the broker is back: a call goes through.
    proxy.refuse(false);
    let (addr, token, running) = start_all().await;
    let org = ringer::testing::seed_org(&pool, 500_000).await;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("http://{addr}/v1/calls"))
        .bearer_auth(&org.api_key)
        .json(&json!({"to": "+14155550100", "prompt": "Confirm", "returns": {"confirmed": "boolean"}}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    let id: Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status,): (String,) = sqlx::query_as("SELECT status::text FROM calls WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        if status == "completed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call completes after the restart (still {status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    for (name, handle) in running {
        let outcome = tokio::time::timeout(Duration::from_secs(15), handle)
            .await
            .unwrap_or_else(|_| panic!("{name} stops"))
            .expect("no panic");
        assert!(outcome.is_ok(), "{name}: {outcome:?}");
    }
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_services_ride_out_a_postgres_restart(pool: PgPool) {
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let system = System::start_with(
        pool.clone(),
        Options {
            database_url: Some(proxy.url_for(&database_url(&pool))),
            ..Options::default()
        },
    )
    .await;
    let before = create_call(&system, "+14155550100").await;
    assert_eq!(
        wait_terminal(&system, &before, Duration::from_secs(30)).await["status"],
        "completed"
    );

    // A call in flight when Postgres goes away for three seconds.
    let during = create_call(&system, "+14155550100").await;
    proxy.refuse(true);
    proxy.cut();
    let refused = system
        .post(
            "/v1/calls",
            &call_body("+14155550100", &system.receiver.url),
        )
        .await;
    assert_eq!(
        refused.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a create while the database is away is refused as retryable"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.refuse(false);

    // Everyone is still running and carries on by itself.
    let after = create_call(&system, "+14155550100").await;
    for id in [&during, &after] {
        let call = wait_terminal(&system, id, Duration::from_secs(30)).await;
        assert_eq!(call["status"], "completed", "{call}");
        assert_eq!(call["reservation_status"], "settled", "{call}");
    }
    assert!(system.running(), "no service stopped over the outage");
    let (calls,): (i64,) = sqlx::query_as("SELECT count(*) FROM calls")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(calls, 3, "the refused create left nothing behind");
    let (settled_twice,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT call_id, kind FROM ledger_entries WHERE call_id IS NOT NULL \
         GROUP BY call_id, kind HAVING count(*) > 1) doubled",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(settled_twice, 0, "no ledger entry written twice");
    system.stop().await;
}
