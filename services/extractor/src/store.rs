//! The extractor's queries: it reads transcripts and writes only `result`,
//! `result_status` and `result_error`.

use ringer::call::{NumberedCall, ResultStatus};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::extraction::Utterance;

pub async fn load_transcript(
    conn: &mut PgConnection,
    call_id: Uuid,
) -> sqlx::Result<Vec<Utterance>> {
    sqlx::query_as::<_, Utterance>(
        "SELECT role, text FROM call_transcripts WHERE call_id = $1 ORDER BY sequence_no",
    )
    .bind(call_id)
    .fetch_all(conn)
    .await
}

/// Stores the final result of a call whose result is still pending and
/// returns the call as stored; None when another delivery got there first.
/// The guard takes the row lock, so concurrent deliveries serialise here and
/// only the first one writes.
pub async fn store_result(
    conn: &mut PgConnection,
    call_id: Uuid,
    status: ResultStatus,
    result: Option<&Value>,
    error: Option<&str>,
) -> sqlx::Result<Option<NumberedCall>> {
    sqlx::query_as::<_, NumberedCall>(concat!(
        "UPDATE calls SET result = $2, result_status = $3, result_error = $4, updated_at = now(), \
           event_seq = event_seq + 1 \
         WHERE id = $1 AND result_status = 'pending' \
         RETURNING event_seq, org_id, ",
        ringer::call_columns!()
    ))
    .bind(call_id)
    .bind(result)
    .bind(status)
    .bind(error)
    .fetch_optional(conn)
    .await
}
