//! The extractor service as the binary runs it: consume loop, outbox relay,
//! real broker.

use std::time::{Duration, Instant};

use ringer::call::{CallStatus, ResultStatus};
use ringer::events::EventType;
use ringer::testing::{TestBroker, common_config, random_namespace};
use ringer_extractor::{Config, ExtractorKind};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{
    EndedCall, FakeLlm, Reply, fetch_call, finish_billing, insert_ended_call, outbox_events,
    reservation_returns, reservation_transcript, seed,
};

const WAIT: Duration = Duration::from_secs(20);

/// A running extractor service in its own broker namespace.
struct Service {
    broker: TestBroker,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(pool: &PgPool, adjust: impl FnOnce(&mut Config)) -> Service {
    let namespace = random_namespace();
    let broker = TestBroker::start(&namespace, 5).await;
    let mut config = Config::with_common(common_config(pool, &namespace));
    adjust(&mut config);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(ringer_extractor::run(config, shutdown.clone()));
    Service {
        broker,
        shutdown,
        handle,
    }
}

impl Service {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("the service stops within the grace period")
            .expect("the service task did not panic")
            .expect("the service stops cleanly");
        self.broker.cleanup().await;
    }
}

async fn wait_for_result(pool: &PgPool, call_id: Uuid) -> ringer::call::Call {
    let started = Instant::now();
    loop {
        let call = fetch_call(pool, call_id).await;
        if call.result_status != ResultStatus::Pending {
            return call;
        }
        assert!(started.elapsed() < WAIT, "no result within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_ended_call_gets_its_result_through_the_broker(pool: PgPool) {
    let service = start(&pool, |_| {}).await;
    let mut ready = service.broker.observe("internal.call.result_ready").await;
    let mut terminal = service.broker.observe("call.completed").await;
    let org = seed(&pool).await;

    // The dialer's side: the call ends and `internal.call.ended` goes to the outbox.
    let call = insert_ended_call(
        &pool,
        &org,
        &EndedCall::answered(reservation_returns(), &reservation_transcript()),
    )
    .await;

    let stored = wait_for_result(&pool, call.id).await;
    assert_eq!(stored.result_status, ResultStatus::Completed);
    assert_eq!(
        stored.result,
        Some(json!({"party_size": 6, "high_chair": false}))
    );
    let event = ready.next(WAIT).await.expect("result_ready is published");
    assert_eq!(event.event_type, EventType::ResultReady);
    assert_eq!(event.call_id, call.id);
    assert_eq!(event.call.result, stored.result);

    // Billing finishes second; the relay publishes the one terminal event.
    finish_billing(&pool, call.id)
        .await
        .expect("billing closes the join");
    let completed = terminal
        .next(WAIT)
        .await
        .expect("call.completed is published");
    assert_eq!(completed.call_id, call.id);
    assert_eq!(completed.call.status, CallStatus::Completed);
    assert!(terminal.next(Duration::from_millis(500)).await.is_none());

    // A redelivered `internal.call.ended` is consumed and changes nothing.
    let mut tx = pool.begin().await.unwrap();
    ringer::outbox::emit(&mut tx, org.id, EventType::CallEnded, &call)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(ready.next(Duration::from_secs(2)).await.is_none());
    assert_eq!(fetch_call(&pool, call.id).await.result, stored.result);
    let events = outbox_events(&pool, call.id).await;
    assert_eq!(
        events,
        [
            "call.queued",
            "internal.call.ended",
            "internal.call.result_ready",
            "call.completed",
            "internal.call.ended"
        ]
    );
    service.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_llm_extractor_is_chosen_by_configuration(pool: PgPool) {
    let fake = FakeLlm::start(vec![
        Reply::Status(502, "bad gateway".into()),
        Reply::json(json!({"party_size": 4, "high_chair": true})),
    ])
    .await;
    let base_url = fake.base_url.clone();
    let service = start(&pool, |config| {
        config.extractor = ExtractorKind::Llm;
        config.llm_base_url = Some(base_url);
        config.llm_model = Some("test-model".into());
        config.llm_timeout_seconds = 5;
    })
    .await;
    let org = seed(&pool).await;
    let call = insert_ended_call(
        &pool,
        &org,
        &EndedCall::answered(reservation_returns(), &reservation_transcript()),
    )
    .await;

    let stored = wait_for_result(&pool, call.id).await;

    assert_eq!(stored.result_status, ResultStatus::Completed);
    assert_eq!(
        stored.result,
        Some(json!({"party_size": 4, "high_chair": true}))
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "the 502 was retried");
    assert_eq!(
        requests[0].authorization, None,
        "no key configured, none sent"
    );
    service.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_misconfigured_llm_stops_start_up_with_one_clear_line(pool: PgPool) {
    let namespace = random_namespace();
    let mut config = Config::with_common(common_config(&pool, &namespace));
    config.extractor = ExtractorKind::Llm;
    config.llm_model = Some("m".into());
    let error = ringer_extractor::run(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "RINGER_LLM_BASE_URL is required when RINGER_EXTRACTOR=llm"
    );
}
