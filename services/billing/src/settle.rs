//! Settling a call's hold once it ended: the charge for connected time, the
//! release of the rest, the call's billing fields, `internal.call.billed` and
//! the completion join, all in one transaction.

use chrono::{DateTime, Utc};
use ringer::batch::Batcher;
use ringer::call::{self, CallStatus, NumberedCall, OwnedCall, ReservationStatus};
use ringer::consumer::StepError;
use ringer::events::EventType;
use ringer::ledger::{self, Hold};
use ringer::telemetry::{self, TraceContext};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// What settling a call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Answered: `charged` for `billed_seconds`, the rest of the hold released.
    Settled {
        billed_seconds: i32,
        charged: i64,
        released: i64,
        /// The completion join closed here (the terminal event was written).
        completed: bool,
    },
    /// Not answered (no answer, busy, failed, canceled) or stuck: the whole hold released.
    Released { released: i64, completed: bool },
    /// Settled or released before (a redelivery or a lost race): nothing done.
    AlreadySettled,
}

impl Settlement {
    pub fn outcome(&self) -> &'static str {
        match self {
            Settlement::Settled { .. } => "settled",
            Settlement::Released { .. } => "released",
            Settlement::AlreadySettled => "already_settled",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("call {0} does not exist")]
    CallNotFound(Uuid),
    #[error("call {0} has not ended (no ended_at)")]
    NotEnded(Uuid),
    #[error("call {call_id}: the ledger holds {ledger} but the call records a hold of {call}")]
    HoldMismatch {
        call_id: Uuid,
        ledger: i64,
        call: i64,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The settler's batch task is gone (the process is shutting down).
    #[error("the settlement batch task stopped: {0}")]
    Stopped(String),
}

impl From<SettleError> for StepError {
    fn from(error: SettleError) -> Self {
        match error {
            SettleError::Database(error) => StepError::Transient(error.into()),
            stopped @ SettleError::Stopped(_) => StepError::Transient(stopped.into()),
            // The call row and the event disagree, or the ledger is broken:
            // retrying cannot help, an operator must look.
            other => StepError::Poison(other.into()),
        }
    }
}

/// The columns settlement reads from the locked call row.
#[derive(Debug, sqlx::FromRow)]
struct BillableCall {
    org_id: Uuid,
    status: CallStatus,
    answered_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    max_duration_seconds: i32,
    hold_milli_cents: i64,
    rate_per_minute_milli_cents: i64,
    reservation_status: ReservationStatus,
}

/// Locks the call row. `NO KEY UPDATE` because the row is updated but its key is
/// not: rows referencing the call (transcripts, deliveries) can still be inserted.
async fn lock_call(conn: &mut PgConnection, call_id: Uuid) -> sqlx::Result<Option<BillableCall>> {
    sqlx::query_as(
        "SELECT org_id, status, answered_at, ended_at, max_duration_seconds, hold_milli_cents, \
                rate_per_minute_milli_cents, reservation_status \
         FROM calls WHERE id = $1 FOR NO KEY UPDATE",
    )
    .bind(call_id)
    .fetch_optional(conn)
    .await
}

/// Locks the call row if its hold is stuck: reserved, never ended, not queued
/// (a queued call may still be dialled), no live dialer lease, and created more
/// than its max duration plus `margin_seconds` ago. The conditions are checked
/// again on the row's latest version once the lock is granted.
async fn lock_stuck_call(
    conn: &mut PgConnection,
    call_id: Uuid,
    margin_seconds: i64,
) -> sqlx::Result<Option<BillableCall>> {
    sqlx::query_as(
        "SELECT org_id, status, answered_at, ended_at, max_duration_seconds, hold_milli_cents, \
                rate_per_minute_milli_cents, reservation_status \
         FROM calls WHERE id = $1 AND reservation_status = 'reserved' AND ended_at IS NULL \
           AND status <> 'queued' AND (lease_expires_at IS NULL OR lease_expires_at < now()) \
           AND created_at + make_interval(secs => max_duration_seconds + $2) < now() \
         FOR NO KEY UPDATE",
    )
    .bind(call_id)
    .bind(margin_seconds as f64)
    .fetch_optional(conn)
    .await
}

async fn record_billing(
    conn: &mut PgConnection,
    call_id: Uuid,
    billed_seconds: i32,
    amount: i64,
    status: ReservationStatus,
) -> sqlx::Result<NumberedCall> {
    sqlx::query_as(concat!(
        "UPDATE calls SET billed_duration_seconds = $2, billing_amount_milli_cents = $3, \
           reservation_status = $4, updated_at = now(), event_seq = event_seq + 1 \
         WHERE id = $1 RETURNING event_seq, org_id, ",
        ringer::call_columns!()
    ))
    .bind(call_id)
    .bind(billed_seconds)
    .bind(amount)
    .bind(status)
    .fetch_one(conn)
    .await
}

/// The ledger's hold for the call, checked against the call row.
async fn hold_of(
    conn: &mut PgConnection,
    call_id: Uuid,
    row: &BillableCall,
) -> Result<Hold, SettleError> {
    let hold = ledger::find_hold(conn, call_id).await?.unwrap_or(Hold {
        bucket: 0,
        amount_milli_cents: 0,
    });
    if hold.amount_milli_cents != row.hold_milli_cents {
        return Err(SettleError::HoldMismatch {
            call_id,
            ledger: hold.amount_milli_cents,
            call: row.hold_milli_cents,
        });
    }
    Ok(hold)
}

/// Seconds billed and the charge for an ended call: connected time for a call
/// that was answered and finished normally, nothing for the rest (no answer,
/// busy, canceled, and failed even after an answer, as API.md lists it).
fn price(row: &BillableCall, ended_at: DateTime<Utc>) -> Option<(i32, i64)> {
    let answered = matches!(row.status, CallStatus::InProgress | CallStatus::Completed);
    let answered_at = row.answered_at.filter(|_| answered)?;
    let seconds = call::billable_seconds(answered_at, ended_at, row.max_duration_seconds);
    Some((
        seconds,
        ringer::money::charge_for(seconds, row.rate_per_minute_milli_cents),
    ))
}

/// Settles `call_id` in the caller's transaction. Idempotent: a call whose
/// reservation is no longer `reserved` is left alone and nothing is emitted.
pub async fn settle_call(
    conn: &mut PgConnection,
    call_id: Uuid,
) -> Result<Settlement, SettleError> {
    let row = lock_call(conn, call_id)
        .await?
        .ok_or(SettleError::CallNotFound(call_id))?;
    if row.reservation_status != ReservationStatus::Reserved {
        if row.reservation_status == ReservationStatus::Released && row.answered_at.is_some() {
            tracing::warn!(%call_id, "an answered call ended after its hold was released; it is not charged");
        }
        return Ok(Settlement::AlreadySettled);
    }
    let ended_at = row.ended_at.ok_or(SettleError::NotEnded(call_id))?;
    let hold = hold_of(conn, call_id, &row).await?;
    let priced = price(&row, ended_at);
    let (billed_seconds, charge) = priced.unwrap_or((0, 0));
    let charge = charge.min(hold.amount_milli_cents);
    let status = if priced.is_some() {
        ReservationStatus::Settled
    } else {
        ReservationStatus::Released
    };
    let completed = finish(conn, call_id, billed_seconds, charge, status).await?;
    // Last, so that the org's bucket row stays locked only until the commit.
    let (charged, released) = ledger::settle_hold(conn, row.org_id, call_id, hold, charge).await?;
    Ok(match status {
        ReservationStatus::Settled => Settlement::Settled {
            billed_seconds,
            charged,
            released,
            completed,
        },
        _ => Settlement::Released {
            released,
            completed,
        },
    })
}

/// Records the billing fields, emits `internal.call.billed` and runs the
/// completion join. True when the join closed here.
async fn finish(
    conn: &mut PgConnection,
    call_id: Uuid,
    billed_seconds: i32,
    amount: i64,
    status: ReservationStatus,
) -> sqlx::Result<bool> {
    let NumberedCall {
        event_seq,
        owned: OwnedCall { org_id, call },
    } = record_billing(conn, call_id, billed_seconds, amount, status).await?;
    ringer::outbox::emit_numbered(conn, org_id, EventType::CallBilled, &call, event_seq).await?;
    let terminal = call::close_completion_join(conn, call_id).await?;
    Ok(terminal.is_some())
}

/// Releases the whole hold of a call that never ended and whose dialer is gone
/// (the stuck-hold sweeper). None when the call is not stuck (any more).
pub async fn release_stuck_hold(
    conn: &mut PgConnection,
    call_id: Uuid,
    margin_seconds: i64,
) -> Result<Option<Settlement>, SettleError> {
    let Some(row) = lock_stuck_call(conn, call_id, margin_seconds).await? else {
        return Ok(None);
    };
    let hold = hold_of(conn, call_id, &row).await?;
    let completed = finish(conn, call_id, 0, 0, ReservationStatus::Released).await?;
    let (_, released) = ledger::settle_hold(conn, row.org_id, call_id, hold, 0).await?;
    Ok(Some(Settlement::Released {
        released,
        completed,
    }))
}

/// Runs [`settle_call`] in its own transaction and commits, retrying a lost
/// serialization race a few times. A settlement racing this one on another
/// connection and winning shows up as `AlreadySettled`.
pub async fn settle(pool: &PgPool, call_id: Uuid) -> Result<Settlement, SettleError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = pool.begin().await?;
        let result = settle_call(&mut tx, call_id).await;
        let result = match result {
            Ok(settlement) => tx.commit().await.map(|()| settlement).map_err(Into::into),
            Err(error) => {
                let _ = tx.rollback().await;
                Err(error)
            }
        };
        match result {
            Ok(settlement) => {
                record_metrics(&settlement);
                return Ok(settlement);
            }
            // The unique index is the last line of defence should two
            // settlements ever pass the row lock: the second one changes nothing.
            Err(SettleError::Database(error))
                if ringer::db::is_constraint_violation(&error, "ledger_entries_one_per_call") =>
            {
                tracing::warn!(%call_id, "a second settlement hit the one-per-call index; ignored");
                record_metrics(&Settlement::AlreadySettled);
                return Ok(Settlement::AlreadySettled);
            }
            Err(SettleError::Database(error))
                if ringer::db::is_retryable(&error) && attempt < 3 =>
            {
                tracing::debug!(%call_id, %error, "settlement lost a race; retrying");
            }
            Err(error) => return Err(error),
        }
    }
}

/// Settlements in one transaction at most. One such transaction runs at a
/// time per process, and every batch locks its balance buckets first, in one
/// order, so batches (of any replica) never wait for each other in a cycle.
const BATCH_MAX: usize = 64;

/// Settles the calls of concurrent `call.ended` events together: one
/// transaction (and commit) for a batch, each call settled in it exactly as
/// [`settle_call`] settles it alone, under its own trace. When the shared
/// transaction fails, each call of the batch is settled again alone by
/// [`settle`] (with its retries), so one call's failure stays its own.
pub struct Settler {
    batches: Batcher<(Uuid, Option<TraceContext>), Result<Settlement, SettleError>>,
}

impl Settler {
    pub fn start(pool: PgPool) -> Self {
        let batches = Batcher::spawn(
            "billing_settle",
            BATCH_MAX,
            1,
            move |calls: Vec<(Uuid, Option<TraceContext>)>| {
                let pool = pool.clone();
                async move { Ok(settle_together(&pool, &calls).await) }
            },
        );
        Self { batches }
    }

    /// Settles `call_id` with whatever other calls are waiting.
    pub async fn settle(&self, call_id: Uuid) -> Result<Settlement, SettleError> {
        self.batches
            .call((call_id, telemetry::current()))
            .await
            .map_err(|error| SettleError::Stopped(format!("{error:#}")))?
    }
}

async fn settle_together(
    pool: &PgPool,
    calls: &[(Uuid, Option<TraceContext>)],
) -> Vec<Result<Settlement, SettleError>> {
    if calls.len() > 1 {
        match settle_in_one_transaction(pool, calls).await {
            Ok(settlements) => {
                settlements.iter().for_each(record_metrics);
                return settlements.into_iter().map(Ok).collect();
            }
            Err(error) => {
                tracing::warn!(%error, calls = calls.len(), "settlement batch failed; settling its calls one by one");
            }
        }
    }
    let mut each = Vec::with_capacity(calls.len());
    for (call_id, trace) in calls {
        each.push(telemetry::within_optional(*trace, settle(pool, *call_id)).await);
    }
    each
}

/// Settles `calls` in one transaction, in order of call id (the order the
/// extractor's batches lock call rows in).
async fn settle_in_one_transaction(
    pool: &PgPool,
    calls: &[(Uuid, Option<TraceContext>)],
) -> Result<Vec<Settlement>, SettleError> {
    let mut order: Vec<usize> = (0..calls.len()).collect();
    order.sort_by_key(|&index| calls[index].0);
    let mut settled: Vec<Option<Settlement>> = (0..calls.len()).map(|_| None).collect();
    let mut tx = pool.begin().await?;
    let call_ids: Vec<Uuid> = calls.iter().map(|(call_id, _)| *call_id).collect();
    lock_hold_buckets(&mut tx, &call_ids).await?;
    for index in order {
        let (call_id, trace) = calls[index];
        settled[index] =
            Some(telemetry::within_optional(trace, settle_call(&mut tx, call_id)).await?);
    }
    tx.commit().await?;
    Ok(settled.into_iter().flatten().collect())
}

/// Locks the balance buckets the holds of `call_ids` were taken from, in one
/// order (org, bucket), before any call row. Settling one call locks its row,
/// then its bucket; a batch settling several would otherwise take buckets in
/// the order of its calls, and two replicas' batches could each hold a bucket
/// the other waits for (a deadlock Postgres breaks only after a second).
async fn lock_hold_buckets(conn: &mut PgConnection, call_ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query(
        // Row by row through the indexes (as the dispatcher's claims do), so
        // that no cached plan turns this into a scan of the ledger.
        "SELECT locked.org_id FROM ( \
           SELECT DISTINCT hold.org_id, hold.bucket FROM unnest($1::uuid[]) AS wanted(call_id) \
           CROSS JOIN LATERAL (SELECT org_id, bucket FROM ledger_entries \
                               WHERE call_id = wanted.call_id AND kind = 'hold') hold \
           ORDER BY hold.org_id, hold.bucket) buckets \
         CROSS JOIN LATERAL (SELECT org_id FROM balances \
                             WHERE org_id = buckets.org_id AND bucket = buckets.bucket \
                             FOR NO KEY UPDATE) locked",
    )
    .bind(call_ids)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) fn record_metrics(settlement: &Settlement) {
    metrics::counter!("ringer_billing_settlements_total", "outcome" => settlement.outcome())
        .increment(1);
    match *settlement {
        Settlement::Settled {
            charged, released, ..
        } => {
            metrics::counter!("ringer_billing_charged_milli_cents_total")
                .increment(charged.unsigned_abs());
            metrics::counter!("ringer_billing_released_milli_cents_total")
                .increment(released.unsigned_abs());
        }
        Settlement::Released { released, .. } => {
            metrics::counter!("ringer_billing_released_milli_cents_total")
                .increment(released.unsigned_abs());
        }
        Settlement::AlreadySettled => {}
    }
}
