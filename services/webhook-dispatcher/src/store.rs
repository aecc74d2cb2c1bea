//! The dispatcher's SQL: messages, deliveries, attempts, and the inline
//! webhook fields of calls. One small function per query, each taking a
//! connection so it runs inside the caller's transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Connection, FromRow, PgConnection, Row};
use uuid::Uuid;

use crate::http::AttemptResult;

/// Enough of a delivery to publish its job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub attempt_count: i32,
    pub endpoint_id: Option<Uuid>,
    pub url: String,
}

/// A delivery the fan-out returns: its job, and whether this fan-out created it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FannedOut {
    #[sqlx(flatten)]
    pub row: JobRow,
    /// Created by this very statement, so no job of it exists anywhere yet.
    pub created: bool,
}

impl JobRow {
    pub fn job(&self) -> crate::jobs::DeliveryJob {
        crate::jobs::DeliveryJob::new(self.id, self.attempt_count, self.endpoint_id, &self.url)
    }
}

/// How many public events of the call come before `event`, read off the Call
/// it carries: `call.queued` always; `call.ringing` once `started_at` is set
/// (the ringing step sets both); `call.answered` once `answered_at` is.
pub fn public_predecessors(event: &ringer::events::Event) -> Option<i32> {
    use ringer::events::EventType;
    let rang = i32::from(event.call.started_at.is_some());
    let answered = i32::from(event.call.answered_at.is_some());
    match event.event_type {
        EventType::CallQueued => Some(0),
        EventType::CallRinging => Some(1),
        EventType::CallAnswered => Some(1 + rang),
        EventType::CallCompleted
        | EventType::CallFailed
        | EventType::CallNoAnswer
        | EventType::CallBusy
        | EventType::CallCanceled => Some(1 + rang + answered),
        _ => None,
    }
}

/// How long a delivery waits for an earlier event of its call that has not
/// reached the dispatcher yet; past it (an event that will never come) it goes.
pub const MISSING_PREDECESSOR_WAIT_SECONDS: f64 = 600.0;

/// Stores an event's envelope and creates one delivery per destination (the
/// call's inline URL, and every enabled endpoint of the org subscribed to the
/// event type) in one statement, and marks the call's inline webhook pending.
/// For an event seen before nothing is created (the unique constraints hold)
/// and the deliveries never attempted are returned instead, to publish again:
/// leased ones too, since a redelivered event usually means that the
/// dispatcher attempting them died (their jobs wait out the lease, then go).
/// Deliveries of the call's later events parked waiting for this one are
/// returned too, to publish again.
pub async fn fan_out(
    conn: &mut PgConnection,
    event: &ringer::events::Event,
    body: &Value,
) -> sqlx::Result<Vec<FannedOut>> {
    sqlx::query_as(
        "WITH message AS ( \
           INSERT INTO webhook_messages \
             (event_id, org_id, call_id, event_type, sequence, body, predecessors) \
           VALUES ($1, $2, $3, $4, $5, $6, $8) ON CONFLICT (event_id) DO NOTHING RETURNING event_id), \
         targets AS ( \
           SELECT NULL::uuid AS endpoint_id, $7::text AS url, 0 AS rank WHERE $7::text IS NOT NULL \
           UNION ALL \
           SELECT id, url, 1 FROM webhook_endpoints \
           WHERE org_id = $2 AND status = 'enabled' AND deleted_at IS NULL \
             AND ('*' = ANY (enabled_events) OR $4 = ANY (enabled_events))), \
         inserted AS ( \
           INSERT INTO webhook_deliveries \
             (id, org_id, event_id, endpoint_id, call_id, event_type, sequence, url, next_attempt_at) \
           SELECT gen_random_uuid(), $2, message.event_id, t.endpoint_id, $3, $4, $5, t.url, now() \
           FROM message, targets t ORDER BY t.rank \
           ON CONFLICT ON CONSTRAINT webhook_deliveries_event_destination DO NOTHING \
           RETURNING id, attempt_count, endpoint_id, url), \
         inline AS ( \
           UPDATE calls SET webhook_status = 'pending', webhook_error = NULL \
           WHERE id = $3 AND EXISTS (SELECT 1 FROM inserted WHERE endpoint_id IS NULL) \
             AND (webhook_status, webhook_error) IS DISTINCT FROM ('pending', NULL) \
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
                             WHERE d.call_id = $3 AND d.endpoint_id IS NULL AND d.sequence > $5)), \
         again AS ( \
           UPDATE webhook_deliveries SET enqueued_at = now() \
           WHERE call_id = $3 AND event_id = $1 AND NOT EXISTS (SELECT 1 FROM message) \
             AND status = 'pending' AND attempt_count = 0 \
           RETURNING id, attempt_count, endpoint_id, url), \
         wake AS ( \
           UPDATE webhook_deliveries w SET enqueued_at = now(), waiting = false \
           WHERE w.call_id = $3 AND w.sequence > $5 AND w.waiting AND w.status = 'pending' \
             AND EXISTS (SELECT 1 FROM message) \
           RETURNING id, attempt_count, endpoint_id, url) \
         SELECT id, attempt_count, endpoint_id, url, true AS created FROM inserted \
         UNION ALL SELECT id, attempt_count, endpoint_id, url, false FROM again \
         UNION ALL SELECT id, attempt_count, endpoint_id, url, false FROM wake",
    )
    .bind(event.id)
    .bind(event.org_id)
    .bind(event.call_id)
    .bind(event.event_type.as_str())
    .bind(event.sequence)
    .bind(body)
    .bind(event.call.webhook_url.as_deref())
    .bind(public_predecessors(event))
    .fetch_all(conn)
    .await
}

/// The first of each delivery's items in a batch, in order, and where each
/// delivery first appears: a delivery repeated in one batch reaches SQL once.
fn first_of_each<T>(items: &[T], id: impl Fn(&T) -> Uuid) -> (Vec<&T>, HashMap<Uuid, usize>) {
    let mut first = HashMap::with_capacity(items.len());
    let mut unique = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        if let std::collections::hash_map::Entry::Vacant(entry) = first.entry(id(item)) {
            entry.insert(index);
            unique.push(item);
        }
    }
    (unique, first)
}

/// What the claim saw of the delivery.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimState {
    pub status: String,
    pub attempt_count: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    /// An earlier delivery of the same call and destination is still pending.
    pub behind: bool,
    /// An earlier public event of the call has not been fanned out yet.
    pub awaiting_events: bool,
}

/// A claimed delivery: everything an attempt needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub org_id: Uuid,
    pub endpoint_id: Option<Uuid>,
    pub call_id: Uuid,
    pub event_type: String,
    pub sequence: i64,
    pub url: String,
    pub max_attempts: i32,
    pub body: Value,
    /// `enabled`, `disabled`, `deleted`, or None for the inline destination.
    pub endpoint_state: Option<String>,
    /// Valid secrets, newest first.
    pub secrets: Vec<String>,
}

/// One job's request to claim its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRequest {
    pub delivery_id: Uuid,
    /// The attempt count the job was published with.
    pub attempts: i32,
}

/// What the claim of one job found: None for an unknown delivery; the state,
/// and the delivery when this job won it.
pub type ClaimAnswer = Option<(ClaimState, Option<Claimed>)>;

/// Takes deliveries for one attempt each, in one statement: a delivery is
/// taken only if it is pending with the job's attempt count, due (within
/// `early`), not leased, no earlier delivery of the same call and destination
/// is pending, and every earlier public event of the call has been fanned out
/// (see [`public_predecessors`]); a blocked one is marked waiting, for the
/// earlier one's record (or its fan-out) to publish again. Sets a lease other
/// dispatchers respect and returns the endpoint's current URL, the envelope
/// and the valid secrets. Answers in the order of `requests`; a delivery asked
/// for twice is taken at most once (the later copy finds it leased).
///
/// The earlier pending deliveries are locked first, in a statement of their
/// own, so that one being recorded meanwhile is waited for and then seen as
/// it ended up: if its record's snapshot predates this delivery's fan-out,
/// that record cannot name this one as its successor, and parking this one
/// would strand it. (In the claim statement itself the lock would not do: an
/// earlier delivery taken by the same statement counts as modified by it, and
/// a lock skips such rows, so the later one would go too.)
pub async fn claim(
    conn: &mut PgConnection,
    requests: &[ClaimRequest],
    lease: std::time::Duration,
    early: std::time::Duration,
) -> sqlx::Result<Vec<ClaimAnswer>> {
    // One request per delivery reaches SQL; repeated ones are answered from
    // the first's state without the delivery (a lost race with a copy).
    let (unique, first) = first_of_each(requests, |request| request.delivery_id);
    let ids: Vec<Uuid> = unique.iter().map(|request| request.delivery_id).collect();
    let attempts: Vec<i32> = unique.iter().map(|request| request.attempts).collect();
    let mut tx = conn.begin().await?;
    // The claimed deliveries and the earlier pending ones of their calls are
    // all locked here, ordered by id: claims (and records, which lock by id
    // too) take their rows in one order, whichever batch they are in, so two
    // batches holding deliveries of one call never wait for each other in a
    // cycle.
    //
    // Every row is reached by an index probe, whatever the planner believes
    // of the table's size: a plan cached while the table was small (a new
    // database, or statistics not yet gathered after a burst) would otherwise
    // keep scanning the whole table long after it has grown. `OFFSET 0` keeps
    // a lateral subquery a per-row probe; the ids collected are sorted, and
    // each is locked by its own probe in that order.
    sqlx::query(
        "SELECT locked.id FROM ( \
           SELECT DISTINCT w.id FROM unnest(ARRAY( \
             SELECT unnest($1::uuid[]) \
             UNION ALL \
             SELECT earlier.id FROM unnest($1::uuid[]) AS j(id) \
             CROSS JOIN LATERAL ( \
               SELECT d.call_id, d.destination, d.sequence FROM webhook_deliveries d \
               WHERE d.id = j.id OFFSET 0) d \
             CROSS JOIN LATERAL ( \
               SELECT p.id FROM webhook_deliveries p \
               WHERE p.call_id = d.call_id AND p.destination = d.destination \
                 AND p.status = 'pending' AND p.sequence < d.sequence OFFSET 0) earlier \
           )) AS w(id) ORDER BY w.id) wanted \
         CROSS JOIN LATERAL ( \
           SELECT e.id FROM webhook_deliveries e WHERE e.id = wanted.id FOR UPDATE) locked",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    // `me` finds each job's delivery by a per-row probe (as above), and the
    // two updates join to `me` by id alone (an `id = ANY($1)` beside it looks
    // to a stale plan like a filter best applied to a whole-table scan).
    // `d.status = (SELECT 'pending')`, for the reason given in `record`:
    // never through the due index.
    let rows = sqlx::query(
        "WITH job AS (SELECT * FROM unnest($1::uuid[], $2::int4[]) AS j(id, attempts)), \
         me AS ( \
           SELECT d.id AS job_id, d.status, d.attempt_count, d.next_attempt_at, d.lease_expires_at, \
             j.attempts AS job_attempts, \
             EXISTS (SELECT 1 FROM webhook_deliveries e \
                      WHERE e.call_id = d.call_id AND e.destination = d.destination \
                        AND e.status = 'pending' AND e.sequence < d.sequence) AS behind, \
             EXISTS (SELECT 1 FROM webhook_messages m \
                      WHERE m.event_id = d.event_id AND m.predecessors IS NOT NULL \
                        AND m.created_at > now() - make_interval(secs => $5) \
                        AND (SELECT count(*) FROM webhook_messages p \
                             WHERE p.call_id = d.call_id AND p.sequence < d.sequence) \
                            < m.predecessors) AS awaiting_events \
           FROM job j CROSS JOIN LATERAL ( \
             SELECT * FROM webhook_deliveries d WHERE d.id = j.id OFFSET 0) d), \
         claimed AS ( \
           UPDATE webhook_deliveries d \
           SET lease_expires_at = now() + make_interval(secs => $3), waiting = false, \
               url = COALESCE((SELECT e.url FROM webhook_endpoints e WHERE e.id = d.endpoint_id), d.url) \
           FROM me \
           WHERE d.id = me.job_id AND me.status = 'pending' \
             AND me.attempt_count = me.job_attempts \
             AND (me.next_attempt_at IS NULL OR me.next_attempt_at <= now() + make_interval(secs => $4)) \
             AND (me.lease_expires_at IS NULL OR me.lease_expires_at < now()) \
             AND NOT me.behind AND NOT me.awaiting_events \
             AND d.status = (SELECT 'pending'::text) AND d.attempt_count = me.job_attempts \
             AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now()) \
           RETURNING d.id, d.org_id, d.endpoint_id, d.call_id, d.event_type, d.sequence, d.url, \
             d.max_attempts, \
             (SELECT m.body FROM webhook_messages m WHERE m.event_id = d.event_id) AS body, \
             (SELECT CASE WHEN e.deleted_at IS NOT NULL THEN 'deleted' ELSE e.status END \
                FROM webhook_endpoints e WHERE e.id = d.endpoint_id) AS endpoint_state, \
             CASE WHEN d.endpoint_id IS NULL \
               THEN ARRAY(SELECT o.webhook_secret FROM orgs o WHERE o.id = d.org_id) \
               ELSE ARRAY(SELECT s.secret FROM webhook_endpoint_secrets s \
                          WHERE s.endpoint_id = d.endpoint_id \
                            AND (s.expires_at IS NULL OR s.expires_at > now()) \
                          ORDER BY s.id DESC) \
             END AS secrets), \
         parked AS ( \
           UPDATE webhook_deliveries d SET waiting = true FROM me \
           WHERE d.id = me.job_id AND me.status = 'pending' AND NOT d.waiting \
             AND (me.behind OR me.awaiting_events)) \
         SELECT me.job_id, me.status, me.attempt_count, me.next_attempt_at, me.lease_expires_at, \
           now() AS now, me.behind, me.awaiting_events, \
           c.id, c.org_id, c.endpoint_id, c.call_id, c.event_type, c.sequence, c.url, \
           c.max_attempts, c.body, c.endpoint_state, c.secrets \
         FROM me LEFT JOIN claimed c ON c.id = me.job_id",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(lease.as_secs_f64())
    .bind(early.as_secs_f64())
    .bind(MISSING_PREDECESSOR_WAIT_SECONDS)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut found: HashMap<Uuid, (ClaimState, Option<Claimed>)> =
        HashMap::with_capacity(rows.len());
    for row in rows {
        let state = ClaimState::from_row(&row)?;
        let claimed = match row.try_get::<Option<Uuid>, _>("id")? {
            Some(_) => Some(Claimed::from_row(&row)?),
            None => None,
        };
        found.insert(row.try_get("job_id")?, (state, claimed));
    }
    Ok(requests
        .iter()
        .enumerate()
        .map(|(index, request)| {
            let (state, claimed) = found.get(&request.delivery_id)?;
            let repeated = first.get(&request.delivery_id) != Some(&index);
            if repeated {
                // The copy that came first holds the lease (or met the same refusal).
                let mut state = state.clone();
                if claimed.is_some() {
                    state.lease_expires_at = Some(state.now + chrono::Duration::seconds(1));
                }
                return Some((state, None));
            }
            Some((state.clone(), claimed.clone()))
        })
        .collect())
}

/// What an attempt (or a refusal to attempt) leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Failed; the next attempt is due after the delay.
    Retry(std::time::Duration),
    Exhausted,
}

impl Outcome {
    pub fn status(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry(_) => "pending",
            Outcome::Exhausted => "exhausted",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry(_) => "retry_scheduled",
            Outcome::Exhausted => "exhausted",
        }
    }
}

/// What an attempt's outcome changes.
#[derive(Debug, Clone)]
pub struct Record {
    pub delivery_id: Uuid,
    /// The attempt count the delivery was claimed with.
    pub claimed_attempts: i32,
    pub outcome: Outcome,
    /// None: nothing was sent (the endpoint is disabled or deleted).
    pub attempt: Option<AttemptResult>,
    pub error: Option<String>,
}

/// What recording did.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// False when another dispatcher recorded this attempt first.
    pub recorded: bool,
    /// This batch's failures disabled the delivery's endpoint (said of one
    /// delivery per endpoint).
    pub disabled: bool,
    /// The next pending delivery of the same call and destination, now free to go.
    pub successor: Option<JobRow>,
}

/// Records attempts' outcomes in one statement, each guarded by the attempt
/// count it was claimed with: the delivery, the attempt row, the endpoint's
/// run of failures (a 2xx resets it; the `disable_after`th exhausted delivery
/// in a row disables it), the call's inline webhook fields (they follow its
/// latest inline delivery), and — once a delivery is finished — the next
/// delivery in its call's order. Answers in the order of `records`; a
/// delivery recorded twice in one batch is recorded once (the first).
pub async fn record(
    conn: &mut PgConnection,
    records: &[Record],
    disable_after: i32,
) -> sqlx::Result<Vec<Recorded>> {
    let (unique, first) = first_of_each(records, |record| record.delivery_id);
    let ids: Vec<Uuid> = unique.iter().map(|r| r.delivery_id).collect();
    let claimed: Vec<i32> = unique.iter().map(|r| r.claimed_attempts).collect();
    let statuses: Vec<&str> = unique.iter().map(|r| r.outcome.status()).collect();
    let attempted: Vec<bool> = unique.iter().map(|r| r.attempt.is_some()).collect();
    let delays: Vec<f64> = unique
        .iter()
        .map(|r| match r.outcome {
            Outcome::Retry(delay) => delay.as_secs_f64(),
            _ => 0.0,
        })
        .collect();
    let errors: Vec<Option<&str>> = unique.iter().map(|r| r.error.as_deref()).collect();
    let response_statuses: Vec<Option<i32>> = unique
        .iter()
        .map(|r| {
            r.attempt
                .as_ref()
                .and_then(|a| a.response_status)
                .map(i32::from)
        })
        .collect();
    let started: Vec<Option<DateTime<Utc>>> = unique
        .iter()
        .map(|r| r.attempt.as_ref().map(|a| a.started_at))
        .collect();
    let excerpts: Vec<Option<&str>> = unique
        .iter()
        .map(|r| {
            r.attempt
                .as_ref()
                .and_then(|a| a.response_excerpt.as_deref())
        })
        .collect();
    let durations: Vec<Option<i32>> = unique
        .iter()
        .map(|r| {
            r.attempt
                .as_ref()
                .map(|a| i32::try_from(a.duration.as_millis()).unwrap_or(i32::MAX))
        })
        .collect();
    // The rows are locked first, in a statement of their own, ordered by id as
    // the claims lock theirs: a record never waits in a cycle with a claim, and
    // the statement that looks for successors takes its snapshot after any
    // claim that locked one of these rows first has committed. (Its snapshot
    // taken before such a claim parked the next delivery behind this one, and
    // before that delivery's fan-out committed, it would not see the delivery
    // to name it as successor, and the delivery would wait for the sweeper.)
    let mut tx = conn.begin().await?;
    // Row by row, in id order, each by its own probe (see `claim`).
    sqlx::query(
        "SELECT locked.id FROM (SELECT DISTINCT w.id FROM unnest($1::uuid[]) AS w(id) ORDER BY w.id) \
           wanted \
         CROSS JOIN LATERAL ( \
           SELECT e.id FROM webhook_deliveries e WHERE e.id = wanted.id FOR UPDATE) locked",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    // `status = (SELECT 'pending')`, not `= 'pending'`: the literal matches the
    // predicate of `webhook_deliveries_due`, and the planner would AND a scan
    // of that whole index (every pending delivery) into this primary-key lookup.
    // Each delivery is found by a per-row probe (`OFFSET 0`), and the update
    // reaches it through the address that probe read: the rows are locked by
    // the statement above, so the address cannot move, and a TID scan is the
    // one plan no stale estimate outbids. The inline check's subquery is
    // fenced the same way (see `claim`).
    let rows = sqlx::query(
        "WITH input AS ( \
           SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::bool[], $5::float8[], \
                                $6::text[], $7::int4[], $8::timestamptz[], $9::text[], $10::int4[]) \
             AS r(id, claimed, status, attempted, delay, error, response_status, started_at, \
                  excerpt, duration_ms)), \
         updated AS ( \
           UPDATE webhook_deliveries d SET \
             status = r.status, \
             attempt_count = d.attempt_count + CASE WHEN r.attempted THEN 1 ELSE 0 END, \
             next_attempt_at = CASE WHEN r.status = 'pending' \
                                    THEN now() + make_interval(secs => r.delay) END, \
             last_error = r.error, \
             last_response_status = CASE WHEN r.attempted THEN r.response_status \
                                         ELSE d.last_response_status END, \
             delivered_at = CASE WHEN r.status = 'delivered' THEN now() ELSE d.delivered_at END, \
             lease_expires_at = NULL, enqueued_at = now(), updated_at = now() \
           FROM ( \
             SELECT r.*, found.row_ctid FROM input r CROSS JOIN LATERAL ( \
               SELECT d.ctid AS row_ctid FROM webhook_deliveries d \
               WHERE d.id = r.id AND d.attempt_count = r.claimed \
                 AND d.status = (SELECT 'pending'::text) OFFSET 0) found) r \
           WHERE d.ctid = r.row_ctid \
           RETURNING d.id, d.endpoint_id, d.call_id, d.destination, d.sequence, d.attempt_count, \
             r.status, r.attempted, r.error, r.response_status, r.started_at, r.excerpt, \
             r.duration_ms, \
             CASE r.status WHEN 'exhausted' THEN 'failed' ELSE r.status END AS inline_status), \
         attempt AS ( \
           INSERT INTO webhook_attempts \
             (delivery_id, number, started_at, response_status, response_body_excerpt, duration_ms, error) \
           SELECT id, attempt_count, started_at, response_status, excerpt, duration_ms, error \
           FROM updated WHERE attempted), \
         runs AS ( \
           SELECT endpoint_id, bool_or(status = 'delivered') AS any_delivered, \
             count(*) FILTER (WHERE status = 'exhausted') AS exhausted \
           FROM updated WHERE attempted AND endpoint_id IS NOT NULL \
           GROUP BY endpoint_id), \
         endpoints AS ( \
           UPDATE webhook_endpoints e SET \
             consecutive_failures = CASE WHEN runs.any_delivered THEN 0 \
                                         ELSE e.consecutive_failures + runs.exhausted END, \
             status = CASE WHEN NOT runs.any_delivered \
                            AND e.consecutive_failures + runs.exhausted >= $11 \
                           THEN 'disabled' ELSE e.status END, \
             disabled_reason = CASE WHEN NOT runs.any_delivered AND e.status = 'enabled' \
                                     AND e.consecutive_failures + runs.exhausted >= $11 \
                                    THEN 'too_many_failures' ELSE e.disabled_reason END, \
             disabled_at = CASE WHEN NOT runs.any_delivered AND e.status = 'enabled' \
                                 AND e.consecutive_failures + runs.exhausted >= $11 \
                                THEN now() ELSE e.disabled_at END, \
             updated_at = now() \
           FROM runs \
           WHERE e.id = runs.endpoint_id \
             AND ((runs.any_delivered AND e.consecutive_failures <> 0) \
                  OR (NOT runs.any_delivered AND runs.exhausted > 0)) \
           RETURNING e.id, NOT runs.any_delivered AND e.status = 'disabled' \
             AND e.consecutive_failures >= $11 \
             AND e.consecutive_failures - runs.exhausted < $11 AS disabled_now), \
         inline AS ( \
           UPDATE calls c SET webhook_status = u.inline_status, webhook_error = u.error \
           FROM updated u WHERE c.id = u.call_id AND u.endpoint_id IS NULL \
             AND (c.webhook_status, c.webhook_error) IS DISTINCT FROM (u.inline_status, u.error) \
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries x \
                             WHERE x.call_id = u.call_id AND x.endpoint_id IS NULL \
                               AND x.sequence > u.sequence OFFSET 0)) \
         SELECT u.id AS recorded_id, \
           COALESCE((SELECT bool_or(disabled_now) FROM endpoints WHERE endpoints.id = u.endpoint_id), \
                    false) AS disabled, \
           u.endpoint_id AS recorded_endpoint_id, \
           s.id, s.attempt_count, s.endpoint_id, s.url \
         FROM updated u \
         LEFT JOIN LATERAL ( \
           SELECT s.id, s.attempt_count, s.endpoint_id, s.url FROM webhook_deliveries s \
           WHERE u.status <> 'pending' AND s.call_id = u.call_id \
             AND s.destination = u.destination AND s.status = 'pending' \
             AND s.sequence > u.sequence \
           ORDER BY s.sequence, s.id LIMIT 1) s ON true",
    )
    .bind(&ids)
    .bind(&claimed)
    .bind(&statuses)
    .bind(&attempted)
    .bind(&delays)
    .bind(&errors)
    .bind(&response_statuses)
    .bind(&started)
    .bind(&excerpts)
    .bind(&durations)
    .bind(disable_after)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut found: HashMap<Uuid, Recorded> = HashMap::with_capacity(rows.len());
    let mut disabled_told = std::collections::HashSet::new();
    for row in rows {
        let endpoint: Option<Uuid> = row.try_get("recorded_endpoint_id")?;
        let disabled: bool = row.try_get("disabled")?;
        let successor = match row.try_get::<Option<Uuid>, _>("id")? {
            Some(_) => Some(JobRow::from_row(&row)?),
            None => None,
        };
        found.insert(
            row.try_get("recorded_id")?,
            Recorded {
                recorded: true,
                disabled: disabled && endpoint.is_some_and(|id| disabled_told.insert(id)),
                successor,
            },
        );
    }
    Ok(records
        .iter()
        .enumerate()
        .map(|(index, record)| match found.get(&record.delivery_id) {
            Some(recorded) if first.get(&record.delivery_id) == Some(&index) => recorded.clone(),
            _ => Recorded {
                recorded: false,
                disabled: false,
                successor: None,
            },
        })
        .collect())
}

/// Pending deliveries whose job seems lost: due for a while with no job
/// published since (or never, after a redeliver), first in their call's order.
/// Marks them enqueued; the caller publishes after commit.
pub async fn sweep_due(
    conn: &mut PgConnection,
    overdue_after: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(
        "WITH due AS ( \
           SELECT d.id FROM webhook_deliveries d \
           WHERE d.status = 'pending' \
             AND ((d.enqueued_at IS NULL AND d.next_attempt_at <= now()) \
                  OR (d.next_attempt_at < now() - make_interval(secs => $1) \
                      AND d.enqueued_at < now() - make_interval(secs => $1))) \
             AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now()) \
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e \
                             WHERE e.call_id = d.call_id AND e.destination = d.destination \
                               AND e.status = 'pending' AND e.sequence < d.sequence) \
           ORDER BY d.next_attempt_at LIMIT $2 \
           FOR UPDATE OF d SKIP LOCKED) \
         UPDATE webhook_deliveries d SET enqueued_at = now(), waiting = false \
         FROM due WHERE d.id = due.id \
         RETURNING d.id, d.attempt_count, d.endpoint_id, d.url",
    )
    .bind(overdue_after.as_secs_f64())
    .bind(limit)
    .fetch_all(conn)
    .await
}
