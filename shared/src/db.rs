//! Postgres: the pool and the embedded migrations.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Every migration of `migrations/`, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

pub async fn connect(database_url: &str, max_connections: u32) -> sqlx::Result<PgPool> {
    let options: PgConnectOptions = database_url.parse()?;
    pool_options(max_connections).connect_with(options).await
}

/// A pool whose sessions carry `application_name` (unless `database_url`
/// sets one): what operators see in `pg_stat_activity`, and, for a binary's
/// `ringer-<service>/<instance>` name, the outbox channel its commits notify
/// (see [`crate::outbox::run_relay`]).
pub async fn connect_named(
    database_url: &str,
    max_connections: u32,
    application_name: &str,
) -> sqlx::Result<PgPool> {
    let mut options: PgConnectOptions = database_url.parse()?;
    if options.get_application_name().is_none() {
        options = options.application_name(application_name);
    }
    pool_options(max_connections).connect_with(options).await
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// True when the error is a violation of the named constraint.
pub fn is_constraint_violation(error: &sqlx::Error, constraint: &str) -> bool {
    match error {
        sqlx::Error::Database(db) => db.constraint() == Some(constraint),
        _ => false,
    }
}

/// SQLSTATE 40001/40P01: the transaction lost a race and may simply be retried.
pub fn is_retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40001" | "40P01")),
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        _ => false,
    }
}

/// Records that `consumer` processed `event_id`; false when it already had.
/// Run it inside the transaction of the effect it guards.
pub async fn mark_processed(
    conn: &mut sqlx::PgConnection,
    consumer: &str,
    event_id: uuid::Uuid,
) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "INSERT INTO processed_messages (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}
