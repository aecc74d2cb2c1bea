//! `calls stuck`: calls that have stayed in a state longer than they could.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// How long each state may reasonably last.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// queued, initiated or ringing: seconds since the call was created (queued)
    /// or started ringing.
    pub dialing_seconds: u32,
    /// in_progress: seconds past the call's own `max_duration_seconds`.
    pub overrun_seconds: u32,
    /// ended: seconds the completion join (result + billing) may take.
    pub completion_seconds: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            dialing_seconds: 600,
            overrun_seconds: 300,
            completion_seconds: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StuckCall {
    pub id: Uuid,
    pub org_id: Uuid,
    pub status: String,
    /// Seconds spent in the state it is stuck in.
    pub age_seconds: f64,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub dialer_id: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    org_id: Uuid,
    status: String,
    created_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    max_duration_seconds: i32,
    result_status: String,
    reservation_status: String,
    dialer_id: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    age_seconds: f64,
}

/// Calls stuck in a non-terminal state, oldest first. `completed_at` is set by
/// the completion join on every call that ended, so a call without it that
/// ended long ago is waiting for a result or a settlement that is not coming.
/// (A sequential scan of `calls`: this is an operator's occasional query.)
pub async fn stuck(
    pool: &PgPool,
    thresholds: Thresholds,
    org: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<StuckCall>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, org_id, status, created_at, ended_at, max_duration_seconds, result_status, \
                reservation_status, dialer_id, lease_expires_at, age_seconds \
         FROM (SELECT *, EXTRACT(EPOCH FROM now() - CASE \
                   WHEN ended_at IS NOT NULL THEN ended_at \
                   WHEN status = 'in_progress' THEN COALESCE(answered_at, started_at, created_at) \
                   ELSE COALESCE(started_at, created_at) END)::float8 AS age_seconds \
               FROM calls \
               WHERE completed_at IS NULL AND ($5::uuid IS NULL OR org_id = $5)) c \
         WHERE (ended_at IS NOT NULL AND age_seconds > $3) \
            OR (ended_at IS NULL AND status IN ('queued', 'initiated', 'ringing') AND age_seconds > $1) \
            OR (ended_at IS NULL AND status = 'in_progress' AND age_seconds > max_duration_seconds + $2) \
         ORDER BY age_seconds DESC, id \
         LIMIT $4",
    )
    .bind(f64::from(thresholds.dialing_seconds))
    .bind(f64::from(thresholds.overrun_seconds))
    .bind(f64::from(thresholds.completion_seconds))
    .bind(limit)
    .bind(org)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| StuckCall {
            reason: reason(&row, thresholds),
            id: row.id,
            org_id: row.org_id,
            status: row.status,
            age_seconds: row.age_seconds,
            created_at: row.created_at,
            ended_at: row.ended_at,
            dialer_id: row.dialer_id,
            lease_expires_at: row.lease_expires_at,
        })
        .collect())
}

fn reason(row: &Row, thresholds: Thresholds) -> String {
    if row.ended_at.is_some() {
        let mut waiting = Vec::new();
        if row.result_status == "pending" {
            waiting.push("result still pending (extractor)");
        }
        if row.reservation_status == "reserved" {
            waiting.push("hold still reserved (billing)");
        }
        if waiting.is_empty() {
            waiting.push("completion join never closed");
        }
        return format!(
            "ended over {}s ago but not completed: {}",
            thresholds.completion_seconds,
            waiting.join(", ")
        );
    }
    match row.status.as_str() {
        "queued" => format!(
            "queued over {}s: never claimed by a dialer",
            thresholds.dialing_seconds
        ),
        "in_progress" => format!(
            "on the line past its max_duration_seconds ({}) + {}s{}",
            row.max_duration_seconds,
            thresholds.overrun_seconds,
            lease_note(row)
        ),
        status => format!(
            "{status} over {}s{}",
            thresholds.dialing_seconds,
            lease_note(row)
        ),
    }
}

fn lease_note(row: &Row) -> String {
    match (&row.dialer_id, row.lease_expires_at) {
        (Some(dialer), Some(expires)) if expires < Utc::now() => {
            format!("; lease of dialer {dialer} expired")
        }
        (Some(dialer), _) => format!("; owned by dialer {dialer}"),
        (None, _) => "; no dialer owns it".to_owned(),
    }
}
