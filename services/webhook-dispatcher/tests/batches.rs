//! The claim and record statements on batches of jobs, straight against
//! Postgres: each delivery is taken once, a blocked one is parked, and an
//! endpoint's failures recorded together still add up.

use std::time::Duration;

use chrono::Utc;
use ringer::call::Call;
use ringer::events::{Event, EventType};
use ringer::testing::TestOrg;
use ringer_webhook_dispatcher::envelope::Envelope;
use ringer_webhook_dispatcher::http::AttemptResult;
use ringer_webhook_dispatcher::store::{self, ClaimRequest, Outcome, Record};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

const LEASE: Duration = Duration::from_secs(20);
const EARLY: Duration = Duration::from_millis(5);

/// Emits `events` for the call and fans each out; returns the deliveries in event order.
async fn fanned_out(
    pool: &PgPool,
    org: &TestOrg,
    call: &Call,
    events: &[EventType],
) -> Vec<store::JobRow> {
    let mut ids = Vec::new();
    for event_type in events {
        let mut tx = pool.begin().await.unwrap();
        let event: Event = ringer::outbox::emit(&mut tx, org.id, *event_type, call)
            .await
            .unwrap();
        let body = serde_json::to_value(Envelope::for_event(&event)).unwrap();
        let rows = store::fan_out(&mut tx, &event, &body).await.unwrap();
        let rows = rows.into_iter().map(|fanned| fanned.row);
        tx.commit().await.unwrap();
        ids.extend(rows);
    }
    ids
}

fn request(delivery_id: Uuid) -> ClaimRequest {
    ClaimRequest {
        delivery_id,
        attempts: 0,
    }
}

fn answered(status: u16) -> AttemptResult {
    AttemptResult {
        started_at: Utc::now(),
        duration: Duration::from_millis(3),
        response_status: Some(status),
        response_excerpt: Some("ok".to_owned()),
        error: (status >= 300).then(|| format!("HTTP {status}")),
        permanent: false,
    }
}

fn record(delivery_id: Uuid, outcome: Outcome, status: u16) -> Record {
    let attempt = answered(status);
    Record {
        delivery_id,
        claimed_attempts: 0,
        outcome,
        error: attempt.error.clone(),
        attempt: Some(attempt),
    }
}

async fn waiting(pool: &PgPool, id: Uuid) -> bool {
    let (waiting,): (bool,) =
        sqlx::query_as("SELECT waiting FROM webhook_deliveries WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    waiting
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_batch_claims_each_delivery_once_parks_the_blocked_and_records_once(pool: PgPool) {
    let org = seed_org(&pool).await;
    create_endpoint(&pool, &org, "http://127.0.0.1:9/a", &["*"]).await;
    let first_call = queued_call(&pool, &org, None).await;
    let second_call = queued_call(&pool, &org, None).await;
    let first = fanned_out(
        &pool,
        &org,
        &first_call,
        &[EventType::CallQueued, EventType::CallRinging],
    )
    .await;
    let second = fanned_out(&pool, &org, &second_call, &[EventType::CallQueued]).await;
    let (queued, ringing, other) = (first[0].id, first[1].id, second[0].id);
    let unknown = Uuid::now_v7();

    let mut conn = pool.acquire().await.unwrap();
    let answers = store::claim(
        &mut conn,
        &[
            request(queued),
            request(ringing),
            request(other),
            request(other),
            request(unknown),
        ],
        LEASE,
        EARLY,
    )
    .await
    .unwrap();
    assert_eq!(answers.len(), 5);
    let (_, claimed) = answers[0].as_ref().expect("known");
    assert_eq!(claimed.as_ref().map(|c| c.id), Some(queued));
    let (state, claimed) = answers[1].as_ref().expect("known");
    assert!(
        claimed.is_none() && state.behind,
        "ringing waits for queued"
    );
    assert!(waiting(&pool, ringing).await);
    let (_, claimed) = answers[2].as_ref().expect("known");
    assert_eq!(claimed.as_ref().map(|c| c.id), Some(other));
    let (state, claimed) = answers[3].as_ref().expect("known");
    assert!(
        claimed.is_none(),
        "a second copy in the same batch is not taken"
    );
    assert!(
        state
            .lease_expires_at
            .is_some_and(|until| until > state.now)
    );
    assert!(
        answers[4].is_none(),
        "an unknown delivery is reported as such"
    );

    // Taken once: the same requests again find both leased.
    let again = store::claim(&mut conn, &[request(queued), request(other)], LEASE, EARLY)
        .await
        .unwrap();
    assert!(again.iter().all(|a| a.as_ref().unwrap().1.is_none()));

    let recorded = store::record(
        &mut conn,
        &[
            record(queued, Outcome::Delivered, 200),
            record(other, Outcome::Retry(Duration::from_secs(60)), 503),
            record(queued, Outcome::Delivered, 200),
        ],
        10,
    )
    .await
    .unwrap();
    assert!(recorded[0].recorded);
    assert_eq!(
        recorded[0].successor.as_ref().map(|s| s.id),
        Some(ringing),
        "the delivered one frees the call's next delivery"
    );
    assert!(recorded[1].recorded && recorded[1].successor.is_none());
    assert!(!recorded[2].recorded, "recorded once");
    let (attempts,): (i64,) = sqlx::query_as("SELECT count(*) FROM webhook_attempts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    let rows = deliveries(&pool).await;
    let status = |id: Uuid| {
        let row = rows.iter().find(|r| r.id == id).unwrap();
        (row.status.clone(), row.attempt_count)
    };
    assert_eq!(status(queued), ("delivered".to_owned(), 1));
    assert_eq!(status(other), ("pending".to_owned(), 1));
    assert_eq!(status(ringing), ("pending".to_owned(), 0));

    // The freed delivery is now taken.
    let answers = store::claim(&mut conn, &[request(ringing)], LEASE, EARLY)
        .await
        .unwrap();
    assert!(answers[0].as_ref().unwrap().1.is_some());
}

#[sqlx::test(migrations = "../../migrations")]
async fn failures_recorded_together_add_up_and_a_success_among_them_resets(pool: PgPool) {
    let org = seed_org(&pool).await;
    let (failing, _) = create_endpoint(&pool, &org, "http://127.0.0.1:9/failing", &["*"]).await;
    let (flaky, _) = create_endpoint(&pool, &org, "http://127.0.0.1:9/flaky", &["*"]).await;
    sqlx::query(
        "UPDATE webhook_endpoints SET consecutive_failures = CASE WHEN id = $1 THEN 7 ELSE 5 END",
    )
    .bind(failing)
    .execute(&pool)
    .await
    .unwrap();
    let mut records = Vec::new();
    for n in 0..4 {
        let call = queued_call(&pool, &org, None).await;
        for row in fanned_out(&pool, &org, &call, &[EventType::CallQueued]).await {
            let id = row.id;
            if row.endpoint_id == Some(failing) {
                records.push(record(id, Outcome::Exhausted, 500));
            } else if n == 0 {
                records.push(record(id, Outcome::Delivered, 200));
            } else {
                records.push(record(id, Outcome::Exhausted, 500));
            }
        }
    }
    let mut conn = pool.acquire().await.unwrap();
    let recorded = store::record(&mut conn, &records, 10).await.unwrap();
    assert!(recorded.iter().all(|r| r.recorded));
    assert_eq!(
        recorded.iter().filter(|r| r.disabled).count(),
        1,
        "the endpoint's disabling is reported once"
    );
    let endpoint = |id: Uuid| {
        let pool = pool.clone();
        async move {
            let row: (i32, String, Option<String>) = sqlx::query_as(
                "SELECT consecutive_failures, status, disabled_reason FROM webhook_endpoints WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
            row
        }
    };
    assert_eq!(
        endpoint(failing).await,
        (
            11,
            "disabled".to_owned(),
            Some("too_many_failures".to_owned())
        ),
        "7 + 4 failures crosses 10"
    );
    assert_eq!(endpoint(flaky).await, (0, "enabled".to_owned(), None));
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_record_that_waited_for_a_claim_frees_the_delivery_that_claim_parked(pool: PgPool) {
    let org = seed_org(&pool).await;
    create_endpoint(&pool, &org, "http://127.0.0.1:9/a", &["*"]).await;
    let call = queued_call(&pool, &org, None).await;
    let queued = fanned_out(&pool, &org, &call, &[EventType::CallQueued]).await[0].id;
    let mut conn = pool.acquire().await.unwrap();
    let answers = store::claim(&mut conn, &[request(queued)], LEASE, EARLY)
        .await
        .unwrap();
    assert!(answers[0].as_ref().unwrap().1.is_some());

    // The claim of a later delivery has locked `queued` (its first statement)...
    let mut claim = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM webhook_deliveries WHERE id = $1 FOR UPDATE")
        .bind(queued)
        .execute(&mut *claim)
        .await
        .unwrap();
    // ...when the record of `queued` starts and waits for it.
    let recording = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            store::record(&mut conn, &[record(queued, Outcome::Delivered, 200)], 10)
                .await
                .unwrap()
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (blocked,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if blocked > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the record never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Meanwhile the later event is fanned out, and the claim, which still saw
    // `queued` pending, parks its delivery and commits.
    let ringing = fanned_out(&pool, &org, &call, &[EventType::CallRinging]).await[0].id;
    sqlx::query("UPDATE webhook_deliveries SET waiting = true WHERE id = $1")
        .bind(ringing)
        .execute(&mut *claim)
        .await
        .unwrap();
    claim.commit().await.unwrap();

    let recorded = recording.await.unwrap();
    assert!(recorded[0].recorded);
    assert_eq!(
        recorded[0].successor.as_ref().map(|s| s.id),
        Some(ringing),
        "the record names the parked delivery, which would otherwise wait for the sweeper"
    );
}

/// Claims, records and fan-outs whose plans were cached while the tables were
/// empty still reach deliveries, messages and calls through indexes (see
/// [`ringer::testing::assert_cached_plans_find_rows_by_index`]).
#[sqlx::test(migrations = "../../migrations")]
async fn plans_cached_on_empty_tables_still_find_rows_by_index(pool: PgPool) {
    let org = seed_org(&pool).await;
    create_endpoint(&pool, &org, "http://127.0.0.1:9/a", &["*"]).await;
    let call = queued_call(&pool, &org, None).await;
    let mut conn = pool.acquire().await.unwrap();
    ringer::testing::cache_generic_plans(&mut conn).await;
    let unknown = Uuid::now_v7();
    store::claim(&mut conn, &[request(unknown)], LEASE, EARLY)
        .await
        .unwrap();
    store::record(&mut conn, &[record(unknown, Outcome::Delivered, 200)], 10)
        .await
        .unwrap();
    let event = ringer::outbox::emit(&mut conn, org.id, EventType::CallQueued, &call)
        .await
        .unwrap();
    let body = serde_json::to_value(Envelope::for_event(&event)).unwrap();
    store::fan_out(&mut conn, &event, &body).await.unwrap();

    let growing = [
        "calls",
        "webhook_messages",
        "webhook_deliveries",
        "webhook_attempts",
    ];
    let checked =
        ringer::testing::assert_cached_plans_find_rows_by_index(&mut conn, &growing).await;
    assert!(
        checked >= 5,
        "claim, record and fan-out were prepared ({checked})"
    );
}
