//! The balance buckets of `ringer::ledger` and the figures of the 402 message.

use ringer::ledger::{self, BALANCE_BUCKETS, HoldError};
use ringer::money::format_dollars;
use ringer::testing::seed_org;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

async fn bucket_rows(pool: &PgPool, org: Uuid) -> Vec<(i16, i64, i64)> {
    sqlx::query_as(
        "SELECT bucket, available_milli_cents, reserved_milli_cents FROM balances WHERE org_id = $1 ORDER BY bucket",
    )
    .bind(org)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Takes a hold for a call id that is inserted later (the api's order); the
/// transaction is rolled back so no call row is needed. Returns the error if refused.
async fn try_hold(pool: &PgPool, org: Uuid, hold: i64) -> Result<i16, (i64, i64)> {
    let mut tx = pool.begin().await.unwrap();
    let result = ledger::reserve_hold_in_bucket(&mut tx, org, Uuid::now_v7(), hold).await;
    let _ = tx.rollback().await;
    match result {
        Ok(bucket) => Ok(bucket),
        Err(HoldError::InsufficientFunds { available, hold }) => Err((available, hold)),
        Err(HoldError::Database(error)) => panic!("{error}"),
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_credit_is_spread_over_the_buckets_and_summed_on_read(pool: PgPool) {
    let org = seed_org(&pool, 1_000_003).await;
    let rows = bucket_rows(&pool, org.id).await;
    assert_eq!(rows.len(), BALANCE_BUCKETS as usize);
    let share = 1_000_003 / i64::from(BALANCE_BUCKETS);
    assert_eq!(rows[0].1, share + 1_000_003 % i64::from(BALANCE_BUCKETS));
    assert!(rows[1..].iter().all(|row| row.1 == share));
    assert_eq!(balance(&pool, &org).await.available_milli_cents, 1_000_003);

    let mut conn = pool.acquire().await.unwrap();
    ledger::credit(&mut conn, org.id, 500, "top-up")
        .await
        .unwrap();
    drop(conn);
    assert_eq!(balance(&pool, &org).await.available_milli_cents, 1_000_503);
    let credits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger_entries WHERE org_id = $1 AND kind = 'credit'",
    )
    .bind(org.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(credits, 2, "one entry per credit, however it is spread");
    assert_ledger_consistent(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_hold_no_single_bucket_covers_gathers_money_from_the_others(pool: PgPool) {
    // $3.00 spread over 8 buckets: no bucket holds more than $0.38.
    let org = seed_org(&pool, 300_000).await;
    let call = queued_with(&pool, &org, 5000, 3600).await; // a $3.00 hold
    let rows = bucket_rows(&pool, org.id).await;
    assert_eq!(rows.iter().map(|row| row.1).sum::<i64>(), 0);
    assert_eq!(rows.iter().map(|row| row.2).sum::<i64>(), 300_000);
    let entries = entries(&pool, call.id).await;
    let bucket = entries.hold[0].0;
    assert_eq!(
        rows.iter().find(|row| row.0 == bucket).unwrap().2,
        300_000,
        "the whole hold sits in the bucket its entry names"
    );
    assert_ledger_consistent(&pool).await;

    let event = end_call(&pool, call.id, Ending::Answered(61.0)).await;
    ringer_billing::handle_call_ended(&pool, &event)
        .await
        .unwrap();
    assert_eq!(
        balance(&pool, &org).await.available_milli_cents,
        300_000 - 5084
    );
    assert_ledger_consistent(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_402_figures_state_the_balance_the_hold_and_the_shortfall(pool: PgPool) {
    // The example of the issue: $1.88 available, a $3.00 hold.
    let org = seed_org(&pool, 188_000).await;
    let (available, hold) = try_hold(&pool, org.id, 300_000).await.unwrap_err();
    assert_eq!((available, hold), (188_000, 300_000));
    let message = format!(
        "Calls paused. Your balance is {} but each call requires a {} hold (it is released if no one answers). \
         Add {} or more in credits to keep calling.",
        format_dollars(available),
        format_dollars(hold),
        format_dollars(hold - available),
    );
    assert_eq!(
        message,
        "Calls paused. Your balance is $1.88 but each call requires a $3.00 hold (it is released if no one answers). \
         Add $1.12 or more in credits to keep calling."
    );

    // The balance reported is the sum over every bucket, with money held for
    // calls in flight excluded.
    let mut conn = pool.acquire().await.unwrap();
    ledger::credit(&mut conn, org.id, 100_000, "top-up")
        .await
        .unwrap();
    drop(conn);
    queued_with(&pool, &org, 5000, 600).await; // a $0.50 hold
    let (available, hold) = try_hold(&pool, org.id, 300_000).await.unwrap_err();
    assert_eq!(available, 188_000 + 100_000 - 50_000);
    assert_eq!(format_dollars(available), "$2.38");
    assert_eq!(format_dollars(hold - available), "$0.62");

    // A shortfall of a fraction of a cent asks for the next whole cent.
    let org = seed_org(&pool, 299_999).await;
    let (available, hold) = try_hold(&pool, org.id, 300_000).await.unwrap_err();
    assert_eq!(format_dollars(hold - available), "$0.01");
    assert!(
        try_hold(&pool, org.id, 299_999).await.is_ok(),
        "exactly enough is enough"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn holds_spread_over_the_buckets(pool: PgPool) {
    let org = seed_org(&pool, 10_000_000).await;
    let mut used = std::collections::HashSet::new();
    for _ in 0..64 {
        used.insert(try_hold(&pool, org.id, 25_000).await.unwrap());
    }
    assert!(used.len() > 1, "random starting buckets: {used:?}");
}
