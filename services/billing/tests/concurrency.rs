//! One busy org: concurrent holds and settlements keep the ledger exact.

use ringer::ledger::{self, HoldError};
use ringer::testing::{TestOrg, new_call, seed_org};
use ringer_billing::{Settlement, handle_call_ended};
use sqlx::PgPool;

use crate::helpers::*;

/// `new_call`'s hold: 300 s at 5000 milli-cents a minute.
const HOLD: i64 = 25_000;

/// Creates a call the way the api does (hold + row in one transaction), ends it
/// and settles it. None when the hold was refused for want of funds.
async fn create_and_settle(pool: PgPool, org: TestOrg, n: usize) -> Option<Settlement> {
    let new = new_call(&org, "+14155550100");
    let mut tx = pool.begin().await.unwrap();
    match ledger::reserve_hold(&mut tx, org.id, new.id, new.hold_milli_cents).await {
        Ok(()) => {}
        Err(HoldError::InsufficientFunds { available, hold }) => {
            assert!(available < hold);
            return None;
        }
        Err(HoldError::Database(error)) => panic!("{error}"),
    }
    ringer::call::insert_queued_call(&mut tx, &new)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::task::yield_now().await;
    let ending = match n % 5 {
        0 => Ending::NoAnswer,
        1 => Ending::Busy,
        _ => Ending::Answered((n % 400) as f64 + 0.5),
    };
    let event = end_call(&pool, new.id, ending).await;
    Some(handle_call_ended(&pool, &event).await.unwrap())
}

async fn run_200(pool: &PgPool, org: &TestOrg) -> (Vec<Settlement>, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200 {
        tasks.spawn(create_and_settle(pool.clone(), org.clone(), n));
    }
    let outcomes = tasks.join_all().await;
    let refused = outcomes.iter().filter(|outcome| outcome.is_none()).count();
    (outcomes.into_iter().flatten().collect(), refused)
}

fn charged(settlements: &[Settlement]) -> i64 {
    settlements
        .iter()
        .map(|settlement| match settlement {
            Settlement::Settled { charged, .. } => *charged,
            _ => 0,
        })
        .sum()
}

#[sqlx::test(migrations = "../../migrations")]
async fn two_hundred_concurrent_creates_and_settlements_keep_the_ledger_exact(pool: PgPool) {
    let wide = wide_pool(&pool, 16).await;
    let credit = 10_000_000;
    let org = seed_org(&pool, credit).await;

    let (settlements, refused) = run_200(&wide, &org).await;

    assert_eq!(refused, 0, "the org can afford every hold");
    assert_eq!(settlements.len(), 200);
    assert!(
        settlements
            .iter()
            .all(|settlement| !matches!(settlement, Settlement::AlreadySettled))
    );
    let balance = balance(&pool, &org).await;
    // credits − charges − holds still reserved = available; nothing is reserved now.
    assert_eq!(balance.reserved_milli_cents, 0);
    assert_eq!(
        balance.available_milli_cents,
        credit - charged(&settlements)
    );
    let buckets: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT bucket) FROM ledger_entries WHERE org_id = $1 AND kind = 'hold'",
    )
    .bind(org.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(buckets > 1, "holds spread over the org's buckets");
    assert_ledger_consistent(&pool).await;
    wide.close().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_org_short_of_money_is_never_overdrawn_under_concurrency(pool: PgPool) {
    let wide = wide_pool(&pool, 16).await;
    // Enough for 20 holds at once, spread over the buckets so that most single
    // buckets cannot cover a hold and money must move between them.
    let credit = 20 * HOLD + 3_333;
    let org = seed_org(&pool, credit).await;

    let (settlements, refused) = run_200(&wide, &org).await;

    assert_eq!(settlements.len() + refused, 200);
    assert!(settlements.len() >= 20, "at least the first 20 holds fit");
    let balance = balance(&pool, &org).await;
    assert_eq!(balance.reserved_milli_cents, 0);
    assert_eq!(
        balance.available_milli_cents,
        credit - charged(&settlements)
    );
    assert!(balance.available_milli_cents >= 0);
    assert_ledger_consistent(&pool).await;
    wide.close().await;
}
