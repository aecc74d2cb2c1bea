//! The dialer's queries. Every state change is guarded by the status it expects
//! and by `dialer_id` (the replica that claimed the call), so that a replica whose
//! call was taken over (lease expired, swept) changes nothing. The claim and the
//! call steps take many calls at once (see `crate::writer`): one statement per
//! kind of change, whatever the number of calls.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ringer::call::{CallStatus, NumberedCall, OwnedCall};
use ringer::call_columns;
use ringer::events::Event;
use ringer::telemetry::TraceContext;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Result of trying to claim a queued call.
#[derive(Debug)]
pub enum Claim {
    /// The call is ours to dial.
    Claimed(Box<OwnedCall>),
    /// The org already has `live` calls on the line, at or above its `limit`.
    OverLimit { live: i64, limit: i32 },
    /// The call is past `queued` (claimed before, finished, canceled): nothing to do.
    NotQueued(CallStatus),
    /// No such call (or not of that org).
    Missing,
}

/// Claims queued calls for this replica (`queued → initiated`, lease, one dial
/// recorded) where their org has a free line; `requests` are (call, org) pairs,
/// answered in order. Run in a transaction and commit right after: the org rows
/// locked here (in id order, so replicas never deadlock) serialise claims of an
/// org across replicas, so the count is exact.
pub async fn claim_for_dialing(
    conn: &mut PgConnection,
    requests: &[(Uuid, Uuid)],
    dialer_id: &str,
    lease: Duration,
    default_org_limit: i32,
) -> sqlx::Result<Vec<Claim>> {
    let mut org_ids: Vec<Uuid> = requests.iter().map(|(_, org)| *org).collect();
    org_ids.sort_unstable();
    org_ids.dedup();
    let call_ids: Vec<Uuid> = requests.iter().map(|(call, _)| *call).collect();

    // NO KEY UPDATE, not UPDATE: it does not block inserts of the org's calls
    // (their foreign key takes KEY SHARE).
    let limits: HashMap<Uuid, i32> = sqlx::query_as::<_, (Uuid, i32)>(
        "SELECT id, COALESCE(max_concurrent_calls, $2) FROM orgs WHERE id = ANY($1) \
         ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(&org_ids)
    .bind(default_org_limit)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    // Every statement of the claim probes `calls` row by row (`OFFSET 0`
    // fences the lateral subqueries): a plan cached while the table was small
    // would otherwise keep scanning the whole table as it grows (a new
    // database, a burst before any ANALYZE).
    let calls: HashMap<Uuid, (Uuid, CallStatus)> = sqlx::query_as::<_, (Uuid, Uuid, CallStatus)>(
        "SELECT c.id, c.org_id, c.status FROM unnest($1::uuid[]) AS wanted(id) \
         CROSS JOIN LATERAL ( \
           SELECT id, org_id, status FROM calls WHERE id = wanted.id OFFSET 0) c",
    )
    .bind(&call_ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(id, org, status)| (id, (org, status)))
    .collect();
    // Statements of their own, after the locks: their snapshots see every claim
    // that committed while we waited.
    let mut live: HashMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(
        "SELECT o.id, n.live FROM unnest($1::uuid[]) AS o(id) \
         CROSS JOIN LATERAL ( \
           SELECT count(*) AS live FROM calls WHERE org_id = o.id AND ended_at IS NULL \
             AND status IN ('initiated', 'ringing', 'in_progress') OFFSET 0) n",
    )
    .bind(&org_ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();

    let mut decided: Vec<Option<Claim>> = Vec::with_capacity(requests.len());
    let mut candidates: Vec<Uuid> = Vec::new();
    for (call_id, org_id) in requests {
        let claim = match (limits.get(org_id), calls.get(call_id)) {
            (Some(limit), Some((owner, CallStatus::Queued))) if owner == org_id => {
                let on_line = live.entry(*org_id).or_default();
                if candidates.contains(call_id) {
                    // The same message twice in one batch: the first one claims.
                    Some(Claim::NotQueued(CallStatus::Initiated))
                } else if *on_line >= i64::from(*limit) {
                    Some(Claim::OverLimit {
                        live: *on_line,
                        limit: *limit,
                    })
                } else {
                    *on_line += 1;
                    candidates.push(*call_id);
                    None
                }
            }
            (Some(_), Some((owner, status))) if owner == org_id => Some(Claim::NotQueued(*status)),
            _ => Some(Claim::Missing),
        };
        decided.push(claim);
    }

    let mut claimed: HashMap<Uuid, OwnedCall> = HashMap::new();
    if !candidates.is_empty() {
        // The candidates still queued are locked first, in id order, each by
        // its own probe, in a statement of their own; the update then finds
        // them by the address it reads: its snapshot follows the locks, and a
        // row this transaction holds locked cannot move. (Locking inside the
        // update's own subquery would not do: a row another transaction
        // changed meanwhile is locked at its new version, which that
        // statement's snapshot does not see.)
        sqlx::query(
            "SELECT locked.id \
             FROM (SELECT DISTINCT w.id FROM unnest($1::uuid[]) AS w(id) ORDER BY w.id) wanted \
             CROSS JOIN LATERAL ( \
               SELECT id FROM calls WHERE id = wanted.id AND status = 'queued' FOR UPDATE) locked",
        )
        .bind(&candidates)
        .execute(&mut *conn)
        .await?;
        claimed = sqlx::query_as::<_, OwnedCall>(concat!(
            "UPDATE calls SET status = 'initiated', dialer_id = $2, \
               lease_expires_at = now() + make_interval(secs => $3), \
               dial_attempts = dial_attempts + 1, updated_at = now() \
             FROM unnest($1::uuid[]) AS j(wanted_id) \
             CROSS JOIN LATERAL ( \
               SELECT ctid AS row_ctid FROM calls WHERE id = j.wanted_id AND status = 'queued' \
                 OFFSET 0) found \
             WHERE calls.ctid = found.row_ctid \
             RETURNING org_id, ",
            call_columns!()
        ))
        .bind(&candidates)
        .bind(dialer_id)
        .bind(lease.as_secs_f64())
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|owned| (owned.call.id, owned))
        .collect();
    }
    Ok(requests
        .iter()
        .zip(decided)
        .map(|((call_id, _), claim)| match claim {
            Some(claim) => claim,
            None => match claimed.remove(call_id) {
                Some(owned) => Claim::Claimed(Box::new(owned)),
                // Left `queued` between our read and the update (canceled by the API).
                None => Claim::NotQueued(CallStatus::Canceled),
            },
        })
        .collect())
}

/// Why a guarded step changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The call is still ours and in the expected status, but a cancel was requested.
    CancelRequested,
    /// The call is no longer ours to touch (swept, ended, taken over).
    Lost,
}

/// Whether this replica still controls a call, as the database says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Claimed by this replica and not ended.
    Ours {
        status: CallStatus,
        cancel_requested: bool,
    },
    /// Ended, swept or claimed by someone else.
    Lost,
}

pub async fn control(
    conn: &mut PgConnection,
    call_id: Uuid,
    dialer_id: &str,
) -> sqlx::Result<Control> {
    let row: Option<(CallStatus, bool)> = sqlx::query_as(
        "SELECT status, cancel_requested_at IS NOT NULL FROM calls \
         WHERE id = $1 AND dialer_id = $2 AND ended_at IS NULL",
    )
    .bind(call_id)
    .bind(dialer_id)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some((status, cancel_requested)) => Control::Ours {
            status,
            cancel_requested,
        },
        None => Control::Lost,
    })
}

/// What a guarded step finds when its update matched no row.
pub async fn why_refused(
    conn: &mut PgConnection,
    call_id: Uuid,
    dialer_id: &str,
    expected: CallStatus,
) -> sqlx::Result<Refusal> {
    Ok(match control(conn, call_id, dialer_id).await? {
        Control::Ours {
            status,
            cancel_requested: true,
        } if status == expected => Refusal::CancelRequested,
        _ => Refusal::Lost,
    })
}

/// One call going `initiated → ringing`.
#[derive(Debug, Clone)]
pub struct Ringing {
    pub call_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub carrier_call_id: String,
}

/// `initiated → ringing`: sets `started_at`, renews the lease, takes an event
/// sequence number. Refused (no row back) when a cancel is pending: the call is
/// then canceled without ever showing as ringing.
///
/// The status is matched through `(SELECT 'initiated')` here and in
/// [`mark_answered`]: a literal matches the predicate of `calls_on_the_line`,
/// and with statistics that undercount live calls (a burst, a table not yet
/// analyzed) the planner scanned that whole index (every live call, ~700
/// buffers a batch in the e2e bench) instead of finding the batch by id.
pub async fn mark_ringing(
    conn: &mut PgConnection,
    dialer_id: &str,
    lease: Duration,
    calls: &[&Ringing],
) -> sqlx::Result<Vec<NumberedCall>> {
    let ids: Vec<Uuid> = calls.iter().map(|c| c.call_id).collect();
    let started: Vec<DateTime<Utc>> = calls.iter().map(|c| c.started_at).collect();
    let carrier_ids: Vec<&str> = calls.iter().map(|c| c.carrier_call_id.as_str()).collect();
    sqlx::query_as::<_, NumberedCall>(concat!(
        "UPDATE calls SET status = 'ringing', started_at = v.v_started_at, \
           carrier_call_id = v.v_carrier_call_id, \
           lease_expires_at = now() + make_interval(secs => $2), updated_at = now(), \
           event_seq = event_seq + 1 \
         FROM UNNEST($3::uuid[], $4::timestamptz[], $5::text[]) \
           AS v(v_id, v_started_at, v_carrier_call_id) \
         WHERE id = v.v_id AND dialer_id = $1 AND status = (SELECT 'initiated'::text) \
           AND ended_at IS NULL \
           AND cancel_requested_at IS NULL \
         RETURNING event_seq, org_id, ",
        call_columns!()
    ))
    .bind(dialer_id)
    .bind(lease.as_secs_f64())
    .bind(&ids)
    .bind(&started)
    .bind(&carrier_ids)
    .fetch_all(conn)
    .await
}

/// One call going `ringing → in_progress`.
#[derive(Debug, Clone)]
pub struct Answering {
    pub call_id: Uuid,
    pub answered_at: DateTime<Utc>,
    pub answered_by: &'static str,
}

/// `ringing → in_progress`. Refused when a cancel is pending: a cancel that
/// committed before the answer wins (the API already told the client so).
pub async fn mark_answered(
    conn: &mut PgConnection,
    dialer_id: &str,
    lease: Duration,
    calls: &[&Answering],
) -> sqlx::Result<Vec<NumberedCall>> {
    let ids: Vec<Uuid> = calls.iter().map(|c| c.call_id).collect();
    let answered: Vec<DateTime<Utc>> = calls.iter().map(|c| c.answered_at).collect();
    let by: Vec<&str> = calls.iter().map(|c| c.answered_by).collect();
    sqlx::query_as::<_, NumberedCall>(concat!(
        "UPDATE calls SET status = 'in_progress', answered_at = v.v_answered_at, \
           answered_by = v.v_answered_by, \
           lease_expires_at = now() + make_interval(secs => $2), updated_at = now(), \
           event_seq = event_seq + 1 \
         FROM UNNEST($3::uuid[], $4::timestamptz[], $5::text[]) \
           AS v(v_id, v_answered_at, v_answered_by) \
         WHERE id = v.v_id AND dialer_id = $1 AND status = (SELECT 'ringing'::text) \
           AND ended_at IS NULL \
           AND cancel_requested_at IS NULL \
         RETURNING event_seq, org_id, ",
        call_columns!()
    ))
    .bind(dialer_id)
    .bind(lease.as_secs_f64())
    .bind(&ids)
    .bind(&answered)
    .bind(&by)
    .fetch_all(conn)
    .await
}

/// How a call ended, as written on the Call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// `in_progress` for an answered call (extractor and billing close it), else terminal.
    pub status: CallStatus,
    pub hangup_cause: &'static str,
    pub error_code: Option<&'static str>,
    pub error_message: Option<String>,
    /// Set when the carrier told us late (`machine` on a voicemail we hung up on).
    pub answered_by: Option<&'static str>,
}

/// One call ending.
#[derive(Debug, Clone)]
pub struct Ended {
    pub call_id: Uuid,
    /// The status the call task last wrote (the guard).
    pub expected: CallStatus,
    pub ended_at: DateTime<Utc>,
    pub ending: Ending,
}

/// Ends calls: `ended_at`, `duration_seconds` (from the start of ringing), hang-up
/// and error fields, lease released, event sequence taken. Guarded by the status
/// each call task last wrote.
pub async fn mark_ended(
    conn: &mut PgConnection,
    dialer_id: &str,
    calls: &[&Ended],
) -> sqlx::Result<Vec<NumberedCall>> {
    let ids: Vec<Uuid> = calls.iter().map(|c| c.call_id).collect();
    let expected: Vec<&str> = calls.iter().map(|c| c.expected.as_str()).collect();
    let statuses: Vec<&str> = calls.iter().map(|c| c.ending.status.as_str()).collect();
    let ended: Vec<DateTime<Utc>> = calls.iter().map(|c| c.ended_at).collect();
    let causes: Vec<&str> = calls.iter().map(|c| c.ending.hangup_cause).collect();
    let codes: Vec<Option<&str>> = calls.iter().map(|c| c.ending.error_code).collect();
    let messages: Vec<Option<&str>> = calls
        .iter()
        .map(|c| c.ending.error_message.as_deref())
        .collect();
    let by: Vec<Option<&str>> = calls.iter().map(|c| c.ending.answered_by).collect();
    sqlx::query_as::<_, NumberedCall>(concat!(
        "UPDATE calls SET status = v.v_status, ended_at = v.v_ended_at, \
           duration_seconds = CASE WHEN started_at IS NULL THEN 0 \
             ELSE GREATEST(0, floor(EXTRACT(EPOCH FROM v.v_ended_at - started_at)))::int END, \
           hangup_cause = v.v_cause, error_code = v.v_code, error_message = v.v_message, \
           answered_by = COALESCE(v.v_answered_by, answered_by), lease_expires_at = NULL, \
           updated_at = now(), event_seq = event_seq + 1 \
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], \
           $7::text[], $8::text[], $9::text[]) \
           AS v(v_id, v_expected, v_status, v_ended_at, v_cause, v_code, v_message, v_answered_by) \
         WHERE id = v.v_id AND dialer_id = $1 AND status = v.v_expected AND ended_at IS NULL \
         RETURNING event_seq, org_id, ",
        call_columns!()
    ))
    .bind(dialer_id)
    .bind(&ids)
    .bind(&expected)
    .bind(&statuses)
    .bind(&ended)
    .bind(&causes)
    .bind(&codes)
    .bind(&messages)
    .bind(&by)
    .fetch_all(conn)
    .await
}

/// One transcript segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub sequence_no: i32,
    pub role: &'static str,
    pub text: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub source: &'static str,
}

/// Appends transcript segments of any number of calls (idempotent per
/// `(call_id, sequence_no)`), in one statement.
pub async fn insert_segments(
    conn: &mut PgConnection,
    segments: &[(Uuid, &Segment)],
) -> sqlx::Result<()> {
    if segments.is_empty() {
        return Ok(());
    }
    let calls: Vec<Uuid> = segments.iter().map(|(call, _)| *call).collect();
    let sequence: Vec<i32> = segments.iter().map(|(_, s)| s.sequence_no).collect();
    let roles: Vec<&str> = segments.iter().map(|(_, s)| s.role).collect();
    let texts: Vec<&str> = segments.iter().map(|(_, s)| s.text.as_str()).collect();
    let started: Vec<DateTime<Utc>> = segments.iter().map(|(_, s)| s.started_at).collect();
    let ended: Vec<DateTime<Utc>> = segments.iter().map(|(_, s)| s.ended_at).collect();
    let durations: Vec<i32> = segments
        .iter()
        .map(|(_, s)| {
            let ms = (s.ended_at - s.started_at).num_milliseconds().max(0);
            i32::try_from(ms).unwrap_or(i32::MAX)
        })
        .collect();
    let sources: Vec<&str> = segments.iter().map(|(_, s)| s.source).collect();
    sqlx::query(
        "INSERT INTO call_transcripts \
           (call_id, sequence_no, role, text, started_at, ended_at, duration_ms, source) \
         SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::text[], \
           $5::timestamptz[], $6::timestamptz[], $7::int[], $8::text[]) \
         ON CONFLICT (call_id, sequence_no) DO NOTHING",
    )
    .bind(&calls)
    .bind(&sequence)
    .bind(&roles)
    .bind(&texts)
    .bind(&started)
    .bind(&ended)
    .bind(&durations)
    .bind(&sources)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes events to the outbox in one statement: the multi-row form of
/// `ringer::outbox::enqueue` (same columns, same payload, same `traceparent`: a
/// child of the trace each event continues), for the batch writer.
pub async fn enqueue_events(
    conn: &mut PgConnection,
    events: &[(Event, Option<TraceContext>)],
) -> sqlx::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = events.iter().map(|(event, _)| event.id).collect();
    let keys: Vec<&str> = events
        .iter()
        .map(|(event, _)| event.event_type.routing_key())
        .collect();
    let payloads: Vec<sqlx::types::Json<&Event>> = events
        .iter()
        .map(|(event, _)| sqlx::types::Json(event))
        .collect();
    let traceparents: Vec<Option<String>> = events
        .iter()
        .map(|(_, trace)| trace.map(|trace| trace.child().to_header()))
        .collect();
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, payload, traceparent) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::text[])",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&payloads)
    .bind(&traceparents)
    .execute(conn)
    .await?;
    Ok(())
}

/// Extends the leases of this replica's live calls. Returns how many it renewed.
pub async fn renew_leases(
    pool: &PgPool,
    call_ids: &[Uuid],
    dialer_id: &str,
    lease: Duration,
) -> sqlx::Result<u64> {
    if call_ids.is_empty() {
        return Ok(0);
    }
    let result = sqlx::query(
        "UPDATE calls SET lease_expires_at = now() + make_interval(secs => $3) \
         WHERE id = ANY($1) AND dialer_id = $2 AND ended_at IS NULL",
    )
    .bind(call_ids)
    .bind(dialer_id)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Which of `call_ids` have a cancel request.
pub async fn cancel_requested(pool: &PgPool, call_ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    if call_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT id FROM calls WHERE id = ANY($1) AND cancel_requested_at IS NOT NULL",
    )
    .bind(call_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// A call ended because its dialer is gone: `failed` / `dialer_lost`, or
/// `canceled` when a cancel was requested and the call was not answered (the
/// caller asked for it to stop, and it did not go on).
#[derive(Debug, sqlx::FromRow)]
pub struct LostCall {
    #[sqlx(flatten)]
    pub owned: OwnedCall,
    pub carrier_call_id: Option<String>,
    pub previous_dialer_id: Option<String>,
}

pub const DIALER_LOST: &str = "dialer_lost";
pub const DIALER_LOST_MESSAGE: &str = "The dialer handling this call stopped before the call \
    ended; the call was ended and will not be dialled again.";

macro_rules! end_lost_calls_sql {
    ($which:literal, $limit:literal, $message:literal) => {
        concat!(
            "WITH lost AS ( \
               SELECT id AS lost_id, dialer_id AS lost_dialer_id, \
                 (cancel_requested_at IS NOT NULL AND answered_at IS NULL) AS canceling \
               FROM calls \
               WHERE ended_at IS NULL AND status IN ('initiated', 'ringing', 'in_progress') \
                 AND ",
            $which,
            " ORDER BY lease_expires_at LIMIT ",
            $limit,
            " FOR UPDATE SKIP LOCKED) \
             UPDATE calls SET \
               status = CASE WHEN canceling THEN 'canceled' ELSE 'failed' END, \
               ended_at = GREATEST(now(), answered_at, started_at), \
               duration_seconds = CASE WHEN started_at IS NULL THEN 0 \
                 ELSE GREATEST(0, floor(EXTRACT(EPOCH FROM now() - started_at)))::int END, \
               hangup_cause = CASE WHEN canceling THEN 'canceled' ELSE 'dialer_lost' END, \
               error_code = CASE WHEN canceling THEN NULL ELSE 'dialer_lost' END, \
               error_message = CASE WHEN canceling THEN NULL ELSE ",
            $message,
            "::text END, lease_expires_at = NULL, updated_at = now() \
             FROM lost WHERE id = lost.lost_id \
             RETURNING org_id, ",
            call_columns!(),
            ", carrier_call_id, lost.lost_dialer_id AS previous_dialer_id"
        )
    };
}

/// Ends up to `limit` calls whose lease expired (`failed`, `dialer_lost`).
/// `SKIP LOCKED`: every replica sweeps, none waits for another or ends a call twice.
pub async fn end_expired_calls(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<LostCall>> {
    sqlx::query_as::<_, LostCall>(end_lost_calls_sql!("lease_expires_at < now()", "$1", "$2"))
        .bind(limit)
        .bind(DIALER_LOST_MESSAGE)
        .fetch_all(conn)
        .await
}

/// Ends up to `limit` live calls of `dialer_id` as lost, whatever their lease: a
/// replica that gives up its calls at shutdown.
pub async fn end_calls_of_dialer(
    conn: &mut PgConnection,
    dialer_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<LostCall>> {
    sqlx::query_as::<_, LostCall>(end_lost_calls_sql!("dialer_id = $1", "$2", "$3"))
        .bind(dialer_id)
        .bind(limit)
        .bind(DIALER_LOST_MESSAGE)
        .fetch_all(conn)
        .await
}

#[cfg(test)]
mod tests {
    use ringer::testing::{self, assert_cached_plans_find_rows_by_index, cache_generic_plans};

    use super::*;

    /// The claim, run on a connection whose plans were cached while `calls`
    /// held one row, still finds its calls by index (see
    /// [`ringer::testing::assert_cached_plans_find_rows_by_index`]).
    #[sqlx::test(migrations = "../../migrations")]
    async fn a_claim_planned_on_a_small_table_still_finds_calls_by_index(pool: PgPool) {
        let org = testing::seed_org(&pool, 10_000_000).await;
        let call =
            testing::insert_queued_call(&pool, &testing::new_call(&org, "+15005550006")).await;
        let mut conn = pool.acquire().await.unwrap();
        cache_generic_plans(&mut conn).await;

        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        let lease = Duration::from_secs(30);
        let claims = claim_for_dialing(&mut tx, &[(call.id, org.id)], "plans", lease, 10)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(matches!(claims[..], [Claim::Claimed(_)]), "{claims:?}");

        let checked = assert_cached_plans_find_rows_by_index(&mut conn, &["calls"]).await;
        assert!(
            checked >= 4,
            "every statement of the claim was prepared ({checked})"
        );
    }

    /// A queued call another transaction changes while the claim waits for
    /// it (here its inline webhook status, as the dispatcher writes it) is
    /// still claimed: the claim's update sees the version its lock took.
    #[sqlx::test(migrations = "../../migrations")]
    async fn a_call_changed_while_the_claim_waits_is_still_claimed(pool: PgPool) {
        let org = testing::seed_org(&pool, 10_000_000).await;
        let call =
            testing::insert_queued_call(&pool, &testing::new_call(&org, "+15005550006")).await;
        let mut other = pool.begin().await.unwrap();
        sqlx::query("UPDATE calls SET webhook_status = 'pending' WHERE id = $1")
            .bind(call.id)
            .execute(&mut *other)
            .await
            .unwrap();

        let claiming = tokio::spawn({
            let pool = pool.clone();
            async move {
                let mut tx = pool.begin().await.unwrap();
                let lease = Duration::from_secs(30);
                let claims = claim_for_dialing(&mut tx, &[(call.id, org.id)], "waits", lease, 10)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                claims
            }
        });
        // Long enough for the claim to reach the call's row lock and wait.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !claiming.is_finished(),
            "the claim waits for the other transaction"
        );
        other.commit().await.unwrap();

        let claims = claiming.await.unwrap();
        assert!(matches!(claims[..], [Claim::Claimed(_)]), "{claims:?}");
    }
}
