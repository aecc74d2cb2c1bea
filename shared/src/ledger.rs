//! The money ledger: append-only, double-entry entries in milli-cents, with the
//! `balances` rows kept in step in the same transaction.
//!
//! An org's balance is spread over several bucket rows (summed on read) so that
//! one busy org does not serialise every hold and settlement on one row lock.
//! A hold is taken from one bucket and settled back into that same bucket (the
//! bucket is recorded on the entries), so per bucket `reserved` always equals
//! its holds minus their releases and charges. Credits are spread over the
//! buckets; `available` may move between an org's buckets when a hold needs more
//! than any single bucket has (no entry: it stays in the `available` account).

use rand::RngExt;
use sqlx::PgConnection;
use uuid::Uuid;

/// Buckets a credit is spread over. With one bucket every hold and settlement
/// of an org waits for the previous one's commit on the same row: measured with
/// `billing-bench` (services/billing/README.md), one org then settled at 68–94 %
/// of the many-orgs rate on a 2-core box, and at ~100 % with 8 buckets.
pub const BALANCE_BUCKETS: i16 = 8;

/// Entry kinds and the accounts each moves money between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Operator top-up or starting credit: funding → available.
    Credit,
    /// Taken when a call is created: available → reserved.
    Hold,
    /// The unused part of a hold: reserved → available.
    HoldRelease,
    /// Connected time: reserved → revenue.
    Charge,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Credit => "credit",
            EntryKind::Hold => "hold",
            EntryKind::HoldRelease => "hold_release",
            EntryKind::Charge => "charge",
        }
    }

    /// (from, to) accounts.
    pub fn accounts(self) -> (&'static str, &'static str) {
        match self {
            EntryKind::Credit => ("funding", "available"),
            EntryKind::Hold => ("available", "reserved"),
            EntryKind::HoldRelease => ("reserved", "available"),
            EntryKind::Charge => ("reserved", "revenue"),
        }
    }

    /// How the entry changes (available, reserved).
    fn balance_delta(self, amount: i64) -> (i64, i64) {
        match self {
            EntryKind::Credit => (amount, 0),
            EntryKind::Hold => (-amount, amount),
            EntryKind::HoldRelease => (amount, -amount),
            EntryKind::Charge => (0, -amount),
        }
    }
}

/// An org's money, summed over its balance buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balance {
    pub available_milli_cents: i64,
    pub reserved_milli_cents: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("available balance {available} is below the hold {hold}")]
    InsufficientFunds { available: i64, hold: i64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub async fn balance(conn: &mut PgConnection, org_id: Uuid) -> sqlx::Result<Balance> {
    let (available, reserved): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(available_milli_cents), 0)::bigint, COALESCE(sum(reserved_milli_cents), 0)::bigint \
         FROM balances WHERE org_id = $1",
    )
    .bind(org_id)
    .fetch_one(conn)
    .await?;
    Ok(Balance {
        available_milli_cents: available,
        reserved_milli_cents: reserved,
    })
}

async fn insert_entry(
    conn: &mut PgConnection,
    org_id: Uuid,
    bucket: i16,
    call_id: Option<Uuid>,
    kind: EntryKind,
    amount_milli_cents: i64,
    description: &str,
) -> sqlx::Result<()> {
    let (from, to) = kind.accounts();
    sqlx::query(
        "INSERT INTO ledger_entries (org_id, bucket, call_id, kind, from_account, to_account, amount_milli_cents, description) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(org_id)
    .bind(bucket)
    .bind(call_id)
    .bind(kind.as_str())
    .bind(from)
    .bind(to)
    .bind(amount_milli_cents)
    .bind(description)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds (available, reserved) deltas to one existing bucket row.
async fn apply_to_bucket(
    conn: &mut PgConnection,
    org_id: Uuid,
    bucket: i16,
    available_delta: i64,
    reserved_delta: i64,
) -> sqlx::Result<()> {
    let updated = sqlx::query(
        "UPDATE balances SET available_milli_cents = available_milli_cents + $3, \
                             reserved_milli_cents = reserved_milli_cents + $4 \
         WHERE org_id = $1 AND bucket = $2",
    )
    .bind(org_id)
    .bind(bucket)
    .bind(available_delta)
    .bind(reserved_delta)
    .execute(conn)
    .await?;
    if updated.rows_affected() == 1 {
        Ok(())
    } else {
        Err(sqlx::Error::Protocol(format!(
            "org {org_id} has no balance bucket {bucket}"
        )))
    }
}

/// Appends one entry to bucket 0 and applies it there (creating the row if
/// needed). Zero amounts write nothing. Holds, releases and charges go through
/// [`reserve_hold`] and [`settle_hold`] instead, which track the hold's bucket.
pub async fn append(
    conn: &mut PgConnection,
    org_id: Uuid,
    call_id: Option<Uuid>,
    kind: EntryKind,
    amount_milli_cents: i64,
    description: &str,
) -> sqlx::Result<()> {
    if amount_milli_cents == 0 {
        return Ok(());
    }
    insert_entry(
        conn,
        org_id,
        0,
        call_id,
        kind,
        amount_milli_cents,
        description,
    )
    .await?;
    let (available, reserved) = kind.balance_delta(amount_milli_cents);
    sqlx::query(
        "INSERT INTO balances (org_id, bucket, available_milli_cents, reserved_milli_cents) VALUES ($1, 0, $2, $3) \
         ON CONFLICT (org_id, bucket) DO UPDATE SET \
           available_milli_cents = balances.available_milli_cents + EXCLUDED.available_milli_cents, \
           reserved_milli_cents = balances.reserved_milli_cents + EXCLUDED.reserved_milli_cents",
    )
    .bind(org_id)
    .bind(available)
    .bind(reserved)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds money to an org (operator top-up, starting credit), spread over
/// [`BALANCE_BUCKETS`] buckets.
pub async fn credit(
    conn: &mut PgConnection,
    org_id: Uuid,
    amount_milli_cents: i64,
    description: &str,
) -> sqlx::Result<()> {
    credit_spread(
        conn,
        org_id,
        amount_milli_cents,
        BALANCE_BUCKETS,
        description,
    )
    .await
}

/// Adds money to an org spread evenly over buckets `0..buckets` (the remainder
/// to bucket 0), creating missing bucket rows. One `credit` entry records it.
pub async fn credit_spread(
    conn: &mut PgConnection,
    org_id: Uuid,
    amount_milli_cents: i64,
    buckets: i16,
    description: &str,
) -> sqlx::Result<()> {
    if amount_milli_cents == 0 {
        return Ok(());
    }
    let buckets = buckets.max(1);
    insert_entry(
        conn,
        org_id,
        0,
        None,
        EntryKind::Credit,
        amount_milli_cents,
        description,
    )
    .await?;
    // Rows are written in bucket order, the order every multi-bucket lock takes.
    sqlx::query(
        "INSERT INTO balances (org_id, bucket, available_milli_cents) \
         SELECT $1, b::smallint, $2 / $3 + CASE WHEN b = 0 THEN $2 % $3 ELSE 0 END \
         FROM generate_series(0, $3 - 1) AS b ORDER BY b \
         ON CONFLICT (org_id, bucket) DO UPDATE SET \
           available_milli_cents = balances.available_milli_cents + EXCLUDED.available_milli_cents",
    )
    .bind(org_id)
    .bind(amount_milli_cents)
    .bind(i64::from(buckets))
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves `hold` from available to reserved for a new call, or reports the
/// shortfall. Concurrent creates on one org never overdraw: the bucket row is
/// locked and its `available` checked under the lock. Run it in the
/// transaction that inserts the call, which keeps that lock until it commits.
pub async fn reserve_hold(
    conn: &mut PgConnection,
    org_id: Uuid,
    call_id: Uuid,
    hold: i64,
) -> Result<(), HoldError> {
    reserve_hold_in_bucket(conn, org_id, call_id, hold)
        .await
        .map(|_| ())
}

/// [`reserve_hold`], returning the bucket the hold was taken from.
pub async fn reserve_hold_in_bucket(
    conn: &mut PgConnection,
    org_id: Uuid,
    call_id: Uuid,
    hold: i64,
) -> Result<i16, HoldError> {
    if hold <= 0 {
        return Ok(0);
    }
    let bucket = match pick_bucket(conn, org_id, hold).await? {
        Some(bucket) => bucket,
        None => consolidate_for_hold(conn, org_id, hold).await?,
    };
    apply_to_bucket(conn, org_id, bucket, -hold, hold).await?;
    insert_entry(
        conn,
        org_id,
        bucket,
        Some(call_id),
        EntryKind::Hold,
        hold,
        "hold for call",
    )
    .await?;
    Ok(bucket)
}

/// Locks one bucket that can cover `hold`, or returns None holding no bucket
/// lock. First a bucket no other transaction holds, starting at a random one so
/// that concurrent holds spread out; then, if all are busy, it waits for one.
///
/// Each try runs in a savepoint: a locking scan keeps the lock on a row it
/// locked and then rejected (changed since the snapshot), and a transaction
/// that went on to wait for other buckets while keeping such a lock could
/// deadlock with [`consolidate_for_hold`]. Rolling back to the savepoint
/// releases those locks.
async fn pick_bucket(
    conn: &mut PgConnection,
    org_id: Uuid,
    hold: i64,
) -> sqlx::Result<Option<i16>> {
    let start: i16 = rand::rng().random_range(0..BALANCE_BUCKETS);
    let mut attempt = sqlx::Connection::begin(&mut *conn).await?;
    let free: Option<(i16,)> = sqlx::query_as(
        "SELECT bucket FROM balances WHERE org_id = $1 AND available_milli_cents >= $2 \
         ORDER BY bucket < $3, bucket LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED",
    )
    .bind(org_id)
    .bind(hold)
    .bind(start)
    .fetch_optional(&mut *attempt)
    .await?;
    if let Some((bucket,)) = free {
        attempt.commit().await?;
        return Ok(Some(bucket));
    }
    attempt.rollback().await?;

    // Every bucket that could cover it is busy: wait for one of them (the first
    // at or after `start` as of now), then check it still covers the hold.
    let candidate: Option<(i16,)> = sqlx::query_as(
        "SELECT bucket FROM balances WHERE org_id = $1 AND available_milli_cents >= $2 \
         ORDER BY bucket < $3, bucket LIMIT 1",
    )
    .bind(org_id)
    .bind(hold)
    .bind(start)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((bucket,)) = candidate else {
        return Ok(None);
    };
    let mut attempt = sqlx::Connection::begin(&mut *conn).await?;
    let (available,): (i64,) = sqlx::query_as(
        "SELECT available_milli_cents FROM balances WHERE org_id = $1 AND bucket = $2 FOR NO KEY UPDATE",
    )
    .bind(org_id)
    .bind(bucket)
    .fetch_one(&mut *attempt)
    .await?;
    if available >= hold {
        attempt.commit().await?;
        Ok(Some(bucket))
    } else {
        attempt.rollback().await?;
        Ok(None)
    }
}

/// No single bucket covers `hold`: lock all of the org's buckets (in bucket
/// order, like every multi-bucket lock) and, if together they cover it, move
/// available money into the richest bucket. Returns that bucket.
async fn consolidate_for_hold(
    conn: &mut PgConnection,
    org_id: Uuid,
    hold: i64,
) -> Result<i16, HoldError> {
    let buckets: Vec<(i16, i64)> = sqlx::query_as(
        "SELECT bucket, available_milli_cents FROM balances WHERE org_id = $1 \
         ORDER BY bucket FOR NO KEY UPDATE",
    )
    .bind(org_id)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = buckets.iter().map(|(_, available)| available).sum();
    let Some(&(target, target_available)) = buckets.iter().max_by_key(|(_, available)| *available)
    else {
        return Err(HoldError::InsufficientFunds { available: 0, hold });
    };
    if total < hold {
        return Err(HoldError::InsufficientFunds {
            available: total,
            hold,
        });
    }
    let mut missing = hold - target_available;
    for &(bucket, available) in &buckets {
        if missing <= 0 {
            break;
        }
        if bucket == target || available == 0 {
            continue;
        }
        let moved = available.min(missing);
        apply_to_bucket(conn, org_id, bucket, -moved, 0).await?;
        apply_to_bucket(conn, org_id, target, moved, 0).await?;
        missing -= moved;
    }
    Ok(target)
}

/// A call's hold as the ledger recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Hold {
    pub bucket: i16,
    pub amount_milli_cents: i64,
}

/// The hold entry of `call_id`, if one was taken (a zero hold writes none).
pub async fn find_hold(conn: &mut PgConnection, call_id: Uuid) -> sqlx::Result<Option<Hold>> {
    sqlx::query_as(
        "SELECT bucket, amount_milli_cents FROM ledger_entries WHERE call_id = $1 AND kind = 'hold'",
    )
    .bind(call_id)
    .fetch_optional(conn)
    .await
}

/// Settles a call's hold in the bucket it came from: `charge` (at most the
/// hold) to revenue, the rest back to available. The unique (call_id, kind)
/// index makes a second settlement of the same call fail
/// (`ledger_entries_one_per_call`). Returns (charged, released).
///
/// This locks the org's bucket row until the transaction ends, so callers run
/// it as the last statement before committing.
pub async fn settle_hold(
    conn: &mut PgConnection,
    org_id: Uuid,
    call_id: Uuid,
    hold: Hold,
    charge: i64,
) -> sqlx::Result<(i64, i64)> {
    let charged = charge.clamp(0, hold.amount_milli_cents);
    let released = hold.amount_milli_cents - charged;
    if charged > 0 {
        insert_entry(
            conn,
            org_id,
            hold.bucket,
            Some(call_id),
            EntryKind::Charge,
            charged,
            "connected time",
        )
        .await?;
    }
    if released > 0 {
        insert_entry(
            conn,
            org_id,
            hold.bucket,
            Some(call_id),
            EntryKind::HoldRelease,
            released,
            "unused hold",
        )
        .await?;
    }
    if hold.amount_milli_cents > 0 {
        apply_to_bucket(
            conn,
            org_id,
            hold.bucket,
            released,
            -hold.amount_milli_cents,
        )
        .await?;
    }
    Ok((charged, released))
}

/// Drift between the balance rows and the sum of the entries, per org
/// (empty when the ledger is consistent).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Drift {
    pub org_id: Uuid,
    pub balance_available: i64,
    pub ledger_available: i64,
    pub balance_reserved: i64,
    pub ledger_reserved: i64,
}

pub async fn check_invariant(
    conn: &mut PgConnection,
    org_id: Option<Uuid>,
) -> sqlx::Result<Vec<Drift>> {
    sqlx::query_as(
        "WITH ledger AS ( \
             SELECT org_id, \
               COALESCE(sum(CASE WHEN to_account = 'available' THEN amount_milli_cents ELSE 0 END) \
                      - sum(CASE WHEN from_account = 'available' THEN amount_milli_cents ELSE 0 END), 0)::bigint AS available, \
               COALESCE(sum(CASE WHEN to_account = 'reserved' THEN amount_milli_cents ELSE 0 END) \
                      - sum(CASE WHEN from_account = 'reserved' THEN amount_milli_cents ELSE 0 END), 0)::bigint AS reserved \
             FROM ledger_entries WHERE ($1::uuid IS NULL OR org_id = $1) GROUP BY org_id), \
         bal AS ( \
             SELECT org_id, sum(available_milli_cents)::bigint AS available, sum(reserved_milli_cents)::bigint AS reserved \
             FROM balances WHERE ($1::uuid IS NULL OR org_id = $1) GROUP BY org_id) \
         SELECT COALESCE(bal.org_id, ledger.org_id) AS org_id, \
                COALESCE(bal.available, 0) AS balance_available, COALESCE(ledger.available, 0) AS ledger_available, \
                COALESCE(bal.reserved, 0) AS balance_reserved, COALESCE(ledger.reserved, 0) AS ledger_reserved \
         FROM bal FULL OUTER JOIN ledger ON bal.org_id = ledger.org_id \
         WHERE COALESCE(bal.available, 0) <> COALESCE(ledger.available, 0) \
            OR COALESCE(bal.reserved, 0) <> COALESCE(ledger.reserved, 0)",
    )
    .bind(org_id)
    .fetch_all(conn)
    .await
}

/// A bucket whose `reserved` differs from its holds minus their releases and
/// charges (a settlement applied to the wrong bucket).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BucketDrift {
    pub org_id: Uuid,
    pub bucket: i16,
    pub balance_reserved: i64,
    pub ledger_reserved: i64,
}

pub async fn check_buckets(
    conn: &mut PgConnection,
    org_id: Option<Uuid>,
) -> sqlx::Result<Vec<BucketDrift>> {
    sqlx::query_as(
        "WITH ledger AS ( \
             SELECT org_id, bucket, \
               (sum(CASE WHEN to_account = 'reserved' THEN amount_milli_cents ELSE 0 END) \
              - sum(CASE WHEN from_account = 'reserved' THEN amount_milli_cents ELSE 0 END))::bigint AS reserved \
             FROM ledger_entries WHERE ($1::uuid IS NULL OR org_id = $1) GROUP BY org_id, bucket), \
         bal AS ( \
             SELECT org_id, bucket, reserved_milli_cents AS reserved FROM balances \
             WHERE ($1::uuid IS NULL OR org_id = $1)) \
         SELECT COALESCE(bal.org_id, ledger.org_id) AS org_id, COALESCE(bal.bucket, ledger.bucket) AS bucket, \
                COALESCE(bal.reserved, 0) AS balance_reserved, COALESCE(ledger.reserved, 0) AS ledger_reserved \
         FROM bal FULL OUTER JOIN ledger ON bal.org_id = ledger.org_id AND bal.bucket = ledger.bucket \
         WHERE COALESCE(bal.reserved, 0) <> COALESCE(ledger.reserved, 0) \
         ORDER BY 1, 2",
    )
    .bind(org_id)
    .fetch_all(conn)
    .await
}

/// A call whose entries disagree with its row: the hold differs from the call's
/// `hold_milli_cents`, a reserved call already has a charge or release, or a
/// settled/released call's charge and release do not add up to its hold or its
/// charge differs from `billing_amount_milli_cents`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CallDrift {
    pub call_id: Uuid,
    pub org_id: Uuid,
    pub reservation_status: String,
    pub hold_milli_cents: i64,
    pub billing_amount_milli_cents: Option<i64>,
    pub ledger_hold: i64,
    pub ledger_charge: i64,
    pub ledger_release: i64,
}

pub async fn check_calls(
    conn: &mut PgConnection,
    org_id: Option<Uuid>,
) -> sqlx::Result<Vec<CallDrift>> {
    sqlx::query_as(
        "SELECT c.id AS call_id, c.org_id, c.reservation_status, c.hold_milli_cents, c.billing_amount_milli_cents, \
                e.hold AS ledger_hold, e.charge AS ledger_charge, e.release AS ledger_release \
         FROM calls c \
         CROSS JOIN LATERAL ( \
             SELECT COALESCE(sum(amount_milli_cents) FILTER (WHERE kind = 'hold'), 0)::bigint AS hold, \
                    COALESCE(sum(amount_milli_cents) FILTER (WHERE kind = 'charge'), 0)::bigint AS charge, \
                    COALESCE(sum(amount_milli_cents) FILTER (WHERE kind = 'hold_release'), 0)::bigint AS release \
             FROM ledger_entries WHERE call_id = c.id) e \
         WHERE ($1::uuid IS NULL OR c.org_id = $1) \
           AND (e.hold <> c.hold_milli_cents \
             OR (c.reservation_status = 'reserved' AND e.charge + e.release <> 0) \
             OR (c.reservation_status <> 'reserved' AND (e.charge + e.release <> e.hold \
                 OR e.charge <> COALESCE(c.billing_amount_milli_cents, 0)))) \
         ORDER BY c.created_at",
    )
    .bind(org_id)
    .fetch_all(conn)
    .await
}
