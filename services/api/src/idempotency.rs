//! `Idempotency-Key`: the same key and body within 24 h returns the first
//! response; the same key with another body is a 409.
//!
//! The key row is inserted inside the handler's own transaction, so the stored
//! response commits with the effect it describes. A concurrent request with the
//! same key blocks on the key's unique index until the first commits, then
//! replays its response; if the first fails, its row rolls back and the second
//! runs.

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::ApiError;

pub const HEADER: &str = "idempotency-key";

/// The idempotency key of a request, if it sent one.
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|key| !key.is_empty() && key.len() <= 255)
        .ok_or_else(|| {
            ApiError::bad_request(
                "idempotency_key_invalid",
                "Idempotency-Key must be 1 to 255 printable ASCII characters.",
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// SHA-256 of the method, path and the body's JSON value (so whitespace and
/// key order do not matter).
pub fn fingerprint(method: &str, path: &str, body: &Value) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b" ");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(serde_json::to_vec(body).unwrap_or_default());
    hasher.finalize().to_vec()
}

/// What the handler should do.
pub enum Begin {
    /// No earlier request: go ahead, then call [`finish`] in the same transaction.
    Proceed,
    /// An earlier request with this key and body succeeded: return its response.
    Replay(StatusCode, Value),
}

pub async fn begin(
    conn: &mut PgConnection,
    org_id: Uuid,
    key: &str,
    method: &str,
    path: &str,
    request_hash: &[u8],
) -> Result<Begin, ApiError> {
    // Keys are kept for 24 hours; an older one may be reused.
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE org_id = $1 AND key = $2 AND created_at < now() - interval '24 hours'",
    )
    .bind(org_id)
    .bind(key)
    .execute(&mut *conn)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (org_id, key, request_method, request_path, request_hash) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org_id, key) DO NOTHING",
    )
    .bind(org_id)
    .bind(key)
    .bind(method)
    .bind(path)
    .bind(request_hash)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Begin::Proceed);
    }
    let (stored_hash, status, body): (Vec<u8>, i32, Value) = sqlx::query_as(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys WHERE org_id = $1 AND key = $2",
    )
    .bind(org_id)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    if stored_hash != request_hash {
        return Err(ApiError::Conflict {
            code: "idempotency_key_in_use",
            message: format!(
                "Idempotency-Key '{key}' was already used with a different request; use a new key for a new request."
            ),
        });
    }
    let status = u16::try_from(status)
        .ok()
        .and_then(|status| StatusCode::from_u16(status).ok())
        .ok_or_else(|| anyhow::anyhow!("stored idempotent response has status {status}"))?;
    Ok(Begin::Replay(status, body))
}

pub async fn finish(
    conn: &mut PgConnection,
    org_id: Uuid,
    key: &str,
    status: StatusCode,
    body: &Value,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE idempotency_keys SET response_status = $3, response_body = $4 WHERE org_id = $1 AND key = $2")
        .bind(org_id)
        .bind(key)
        .bind(i32::from(status.as_u16()))
        .bind(body)
        .execute(conn)
        .await?;
    Ok(())
}

/// A write transaction that honours the request's Idempotency-Key.
pub struct WriteTx {
    pub tx: sqlx::Transaction<'static, sqlx::Postgres>,
    org_id: Uuid,
    key: Option<String>,
}

pub enum Started {
    Run(WriteTx),
    Replay(axum::response::Response),
}

impl WriteTx {
    /// Begins the transaction; replays the stored response when the key was seen.
    pub async fn start(
        db: &sqlx::PgPool,
        org_id: Uuid,
        headers: &HeaderMap,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<Started, ApiError> {
        let key = key_from(headers)?;
        let mut tx = db.begin().await?;
        if let Some(key) = &key {
            let hash = fingerprint(method, path, body);
            if let Begin::Replay(status, body) =
                begin(&mut tx, org_id, key, method, path, &hash).await?
            {
                tx.rollback().await?;
                let mut response =
                    axum::response::IntoResponse::into_response((status, axum::Json(body)));
                response.headers_mut().insert(
                    "idempotent-replayed",
                    axum::http::HeaderValue::from_static("true"),
                );
                return Ok(Started::Replay(response));
            }
        }
        Ok(Started::Run(WriteTx { tx, org_id, key }))
    }

    /// Stores the response under the key (if any) and commits.
    pub async fn commit<T: serde::Serialize>(
        mut self,
        status: StatusCode,
        body: &T,
    ) -> Result<axum::response::Response, ApiError> {
        let value = serde_json::to_value(body).map_err(|error| ApiError::Internal(error.into()))?;
        if let Some(key) = &self.key {
            finish(&mut self.tx, self.org_id, key, status, &value).await?;
        }
        self.tx.commit().await?;
        Ok(axum::response::IntoResponse::into_response((
            status,
            axum::Json(value),
        )))
    }
}
