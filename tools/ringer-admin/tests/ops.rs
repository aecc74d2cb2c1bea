use ringer::testing::{TestOrg, insert_queued_call, new_call, seed_org};
use ringer_admin::calls::{self, Thresholds};
use ringer_admin::outbox;
use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test(migrations = "../../migrations")]
async fn outbox_status_counts_unpublished_events_and_their_age(pool: PgPool) {
    let empty = outbox::status(&pool).await.unwrap();
    assert_eq!((empty.unpublished, empty.oldest_age_seconds), (0, 0.0));

    let org = seed_org(&pool, 1_000_000).await;
    insert_queued_call(&pool, &new_call(&org, "+14155550100")).await;
    insert_queued_call(&pool, &new_call(&org, "+14155550101")).await;
    sqlx::query("UPDATE outbox SET created_at = now() - interval '1 hour' WHERE id = (SELECT min(id) FROM outbox)")
        .execute(&pool)
        .await
        .unwrap();
    let status = outbox::status(&pool).await.unwrap();
    assert_eq!(status.unpublished, 2);
    assert!(status.oldest_age_seconds >= 3600.0, "{status:?}");

    sqlx::query("UPDATE outbox SET published_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(outbox::status(&pool).await.unwrap().unpublished, 0);
}

async fn call_in(pool: &PgPool, org: &TestOrg, adjust: &'static str) -> Uuid {
    let call = insert_queued_call(pool, &new_call(org, "+14155550100")).await;
    if !adjust.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE calls SET {adjust} WHERE id = $1"
        )))
        .bind(call.id)
        .execute(pool)
        .await
        .unwrap();
    }
    call.id
}

#[sqlx::test(migrations = "../../migrations")]
async fn calls_stuck_finds_calls_past_what_their_state_allows(pool: PgPool) {
    let org = seed_org(&pool, 10_000_000).await;
    let queued_long = call_in(&pool, &org, "created_at = now() - interval '20 minutes'").await;
    call_in(&pool, &org, "").await;
    let ringing_lost = call_in(
        &pool,
        &org,
        "status = 'ringing', started_at = now() - interval '20 minutes', \
         dialer_id = 'dialer-7', lease_expires_at = now() - interval '1 minute'",
    )
    .await;
    // max_duration_seconds is 300: 300 + 300 s of margin have passed.
    let overran = call_in(
        &pool,
        &org,
        "status = 'in_progress', started_at = now() - interval '11 minutes', \
         answered_at = now() - interval '11 minutes', dialer_id = 'dialer-7', \
         lease_expires_at = now() + interval '1 minute'",
    )
    .await;
    call_in(
        &pool,
        &org,
        "status = 'in_progress', started_at = now() - interval '2 minutes', \
         answered_at = now() - interval '1 minute'",
    )
    .await;
    let never_completed = call_in(
        &pool,
        &org,
        "status = 'in_progress', answered_at = now() - interval '30 minutes', \
         ended_at = now() - interval '20 minutes', result_status = 'completed'",
    )
    .await;
    call_in(
        &pool,
        &org,
        "status = 'completed', answered_at = now() - interval '30 minutes', \
         ended_at = now() - interval '20 minutes', result_status = 'completed', \
         reservation_status = 'settled', completed_at = now() - interval '19 minutes'",
    )
    .await;
    let recently_ended = call_in(
        &pool,
        &org,
        "status = 'no_answer', ended_at = now() - interval '1 minute'",
    )
    .await;
    let other_org = seed_org(&pool, 1_000_000).await;
    let elsewhere = call_in(&pool, &other_org, "created_at = now() - interval '1 hour'").await;

    let stuck = calls::stuck(&pool, Thresholds::default(), Some(org.id), 100)
        .await
        .unwrap();
    let found: Vec<(Uuid, &str)> = stuck.iter().map(|c| (c.id, c.reason.as_str())).collect();
    let ids: Vec<Uuid> = found.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 4, "{found:#?}");
    for id in [queued_long, ringing_lost, overran, never_completed] {
        assert!(ids.contains(&id), "{id} missing from {found:#?}");
    }
    let reason = |id: Uuid| found.iter().find(|(i, _)| *i == id).unwrap().1;
    assert!(reason(queued_long).starts_with("queued over 600s"));
    assert!(reason(ringing_lost).contains("lease of dialer dialer-7 expired"));
    assert!(reason(overran).contains("max_duration_seconds (300) + 300s"));
    assert!(reason(never_completed).contains("hold still reserved (billing)"));
    assert!(!reason(never_completed).contains("result"));
    assert!(
        stuck
            .windows(2)
            .all(|w| w[0].age_seconds >= w[1].age_seconds),
        "oldest first"
    );

    let everyone = calls::stuck(&pool, Thresholds::default(), None, 100)
        .await
        .unwrap();
    assert!(everyone.iter().any(|c| c.id == elsewhere));
    assert!(!everyone.iter().any(|c| c.id == recently_ended));
    let stricter = Thresholds {
        completion_seconds: 30,
        ..Thresholds::default()
    };
    let strict = calls::stuck(&pool, stricter, Some(org.id), 100)
        .await
        .unwrap();
    assert!(strict.iter().any(|c| c.id == recently_ended));
}
