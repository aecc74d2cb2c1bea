//! The safety net: re-publishes jobs of pending deliveries nobody is working
//! on — lost between a commit and its publish, or asked for by the api's
//! redeliver (which sets `enqueued_at` to NULL and notifies
//! [`NOTIFY_CHANNEL`], so redeliveries go out at once).

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::jobs::Publisher;
use crate::store;

/// Postgres channel the api notifies after a redeliver commits.
pub const NOTIFY_CHANNEL: &str = "ringer_webhook_deliveries";
const BATCH: i64 = 500;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub interval: Duration,
    pub overdue_after: Duration,
}

/// Publishes one batch; returns how many jobs went out.
pub async fn sweep_once(
    db: &PgPool,
    publisher: &Publisher,
    settings: Settings,
) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    let rows = store::sweep_due(&mut tx, settings.overdue_after, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let jobs: Vec<_> = rows.iter().map(store::JobRow::job).collect();
    // Publish before commit: a failed publish rolls the marks back for the next sweep.
    publisher.publish_now(&jobs).await?;
    tx.commit().await?;
    metrics::counter!("ringer_webhook_swept_total").increment(jobs.len() as u64);
    Ok(jobs.len())
}

pub async fn run(
    db: PgPool,
    publisher: Publisher,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let mut listener = match PgListener::connect_with(&db).await {
        Ok(mut listener) => match listener.listen(NOTIFY_CHANNEL).await {
            Ok(()) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "sweeper cannot LISTEN; polling only");
                None
            }
        },
        Err(error) => {
            tracing::warn!(%error, "sweeper cannot LISTEN; polling only");
            None
        }
    };
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let more = match sweep_once(&db, &publisher, settings).await {
            Ok(published) => {
                if published > 0 {
                    tracing::info!(published, "sweeper re-published delivery jobs");
                }
                published as i64 >= BATCH
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "webhook sweep failed");
                false
            }
        };
        if more {
            continue;
        }
        match listener.as_mut() {
            Some(listener) => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    notification = listener.recv() => {
                        if let Err(error) = notification {
                            tracing::warn!(%error, "sweeper LISTEN connection lost; reconnecting");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    _ = tokio::time::sleep(settings.interval) => {}
                }
            }
            None => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(settings.interval) => {}
                }
            }
        }
    }
}
