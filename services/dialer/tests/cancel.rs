//! Cancel before answer: the API sets `cancel_requested_at` (and emits
//! `internal.call.cancel_requested`); the dialer hangs up and ends the call `canceled`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringer::call::{Call, CallStatus};
use ringer::events::EventType;
use ringer::testing::{insert_queued_call, new_call, random_namespace, seed_org};
use ringer_dialer::carrier::{Carrier, CarrierError};
use ringer_dialer::sim::{SimOutcome, SimulatedCarrier};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use crate::helpers::*;

/// What the API's cancel handler does for a call the dialer owns.
async fn request_cancel(pool: &PgPool, call_id: Uuid, with_event: bool) {
    let mut tx = pool.begin().await.unwrap();
    let owned = sqlx::query_as::<_, ringer::call::OwnedCall>(concat!(
        "UPDATE calls SET cancel_requested_at = now(), updated_at = now() \
         WHERE id = $1 AND status IN ('initiated', 'ringing') RETURNING org_id, ",
        ringer::call_columns!()
    ))
    .bind(call_id)
    .fetch_one(&mut *tx)
    .await
    .expect("the call is cancelable");
    if with_event {
        ringer::outbox::emit(
            &mut tx,
            owned.org_id,
            EventType::CancelRequested,
            &owned.call,
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_ringing_call_is_canceled(pool: PgPool) {
    // Scale 0.05: a no-answer call rings for 1.5 s.
    let scale = 0.05;
    let namespace = random_namespace();
    let test = test_broker(&namespace, scale).await;
    let mut tap = test.observe("#").await;
    let org = seed_org(&pool, 100_000_000).await;
    let dialer = RunningDialer::start(dialer_config(&pool, &namespace, scale));

    // Woken by the event, and (the event reaching another replica) by polling.
    for with_event in [true, false] {
        let call =
            insert_queued_call(&pool, &new_call(&org, &SimOutcome::NoAnswer.test_number())).await;
        wait_for_status(&pool, call.id, CallStatus::Ringing).await;
        let requested = Instant::now();
        request_cancel(&pool, call.id, with_event).await;
        let row = wait_until_ended(&pool, call.id, Duration::from_secs(5)).await;
        assert!(
            requested.elapsed() < Duration::from_millis(1000),
            "canceled promptly, not when the ringing ran out ({:?})",
            requested.elapsed()
        );
        assert_eq!(row.call.status, CallStatus::Canceled);
        assert_eq!(row.call.hangup_cause.as_deref(), Some("canceled"));
        assert!(row.call.started_at.is_some());
        assert_eq!(row.call.answered_at, None);
        assert!(row.call.started_at <= row.call.ended_at);
        assert_eq!(row.dial_attempts, 1);
        assert!(transcript(&pool, call.id).await.is_empty());
    }
    let events = collect_until_ended(&mut tap, 2, Duration::from_secs(10)).await;
    dialer.stop().await.expect("the dialer stops cleanly");
    for events in by_call(&events).values() {
        let types: Vec<EventType> = events
            .iter()
            .map(|event| event.event_type)
            .filter(|kind| *kind != EventType::CancelRequested)
            .collect();
        assert_eq!(
            types,
            [
                EventType::CallQueued,
                EventType::CallRinging,
                EventType::CallEnded
            ]
        );
        assert_eq!(events.last().unwrap().call.status, CallStatus::Canceled);
    }
    test.cleanup().await;
}

/// The simulated carrier, but `dial` waits for the test's go.
struct GatedCarrier {
    inner: SimulatedCarrier,
    dialing: Arc<Notify>,
    gate: Arc<Semaphore>,
}

impl Carrier for GatedCarrier {
    type Leg = <SimulatedCarrier as Carrier>::Leg;

    fn name(&self) -> &'static str {
        "gated"
    }

    fn transcript_source(&self) -> &'static str {
        "simulated"
    }

    async fn dial(&self, call: &Call) -> Result<Self::Leg, CarrierError> {
        self.dialing.notify_one();
        self.gate.acquire().await.expect("gate open").forget();
        self.inner.dial(call).await
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_initiated_call_is_canceled_before_it_rings(pool: PgPool) {
    let namespace = random_namespace();
    let test = test_broker(&namespace, 0.0).await;
    let mut tap = test.observe("#").await;
    let org = seed_org(&pool, 100_000_000).await;
    let dialing = Arc::new(Notify::new());
    let gate = Arc::new(Semaphore::new(0));
    let carrier = GatedCarrier {
        inner: SimulatedCarrier::new(0.0),
        dialing: dialing.clone(),
        gate: gate.clone(),
    };
    let dialer = RunningDialer::start_with(dialer_config(&pool, &namespace, 0.0), carrier);

    let call =
        insert_queued_call(&pool, &new_call(&org, &SimOutcome::Answered.test_number())).await;
    tokio::time::timeout(Duration::from_secs(10), dialing.notified())
        .await
        .expect("the dialer dials");
    let row = call_row(&pool, call.id).await;
    assert_eq!(row.call.status, CallStatus::Initiated);
    request_cancel(&pool, call.id, true).await;
    gate.add_permits(1);

    let row = wait_until_ended(&pool, call.id, Duration::from_secs(5)).await;
    let events = collect_until_ended(&mut tap, 1, Duration::from_secs(10)).await;
    dialer.stop().await.expect("the dialer stops cleanly");

    assert_eq!(row.call.status, CallStatus::Canceled);
    assert_eq!(row.call.hangup_cause.as_deref(), Some("canceled"));
    assert_eq!(row.call.started_at, None, "it never rang");
    assert_eq!(row.call.answered_at, None);
    let mut events = events;
    events.sort_by_key(|event| event.sequence);
    let types: Vec<EventType> = events.iter().map(|event| event.event_type).collect();
    assert_eq!(
        types,
        [
            EventType::CallQueued,
            EventType::CancelRequested,
            EventType::CallEnded
        ]
    );
    test.cleanup().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_cancel_after_answer_does_not_apply(pool: PgPool) {
    let scale = 0.05;
    let namespace = random_namespace();
    let test = test_broker(&namespace, scale).await;
    let org = seed_org(&pool, 100_000_000).await;
    let dialer = RunningDialer::start(dialer_config(&pool, &namespace, scale));

    let call =
        insert_queued_call(&pool, &new_call(&org, &SimOutcome::Answered.test_number())).await;
    wait_for_status(&pool, call.id, CallStatus::InProgress).await;
    // What the API refuses with a 409; even written directly, it changes nothing.
    sqlx::query("UPDATE calls SET cancel_requested_at = now() WHERE id = $1")
        .bind(call.id)
        .execute(&pool)
        .await
        .unwrap();
    let row = wait_until_ended(&pool, call.id, Duration::from_secs(10)).await;
    dialer.stop().await.expect("the dialer stops cleanly");
    assert_eq!(row.call.status, CallStatus::InProgress);
    assert_eq!(row.call.hangup_cause.as_deref(), Some("completed"));
    test.cleanup().await;
}
