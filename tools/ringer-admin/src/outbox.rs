//! `outbox status`: how far the relays are behind.

use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize)]
pub struct OutboxStatus {
    /// Events committed but not yet confirmed by the broker.
    pub unpublished: i64,
    /// Age of the oldest of them, in seconds (0 when there are none).
    pub oldest_age_seconds: f64,
}

pub async fn status(pool: &PgPool) -> sqlx::Result<OutboxStatus> {
    let (unpublished, oldest_age_seconds) = ringer::outbox::lag(pool).await?;
    Ok(OutboxStatus {
        unpublished,
        oldest_age_seconds,
    })
}
