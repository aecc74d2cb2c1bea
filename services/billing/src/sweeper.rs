//! The stuck-hold sweeper: a hold still `reserved` long after its call could
//! have ended (created_at + max duration + margin) is reconciled. An ended
//! call whose settlement never happened (its `call.ended` was dead-lettered) is
//! settled normally; a call stuck before its end with no live dialer has its
//! whole hold released. Safe with any number of billing replicas: each call is
//! re-checked under its row lock.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::settle::{self, SettleError, Settlement};

/// How the sweeper behaves.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// Seconds past created_at + max_duration before a hold counts as stuck.
    pub margin_seconds: i64,
    /// Calls looked at per pass.
    pub batch: i64,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Ended calls settled (or released, when unanswered) late.
    pub settled: usize,
    /// Never-ended calls whose hold was released.
    pub released: usize,
}

/// Candidates: reserved holds past their call's latest possible end, either
/// ended (settle) or not ended, not queued and without a live lease (release).
async fn stuck_holds(pool: &PgPool, settings: SweepSettings) -> sqlx::Result<Vec<(Uuid, bool)>> {
    // `created_at < now() - margin` is implied by the exact condition and lets
    // the partial index calls_reserved_created narrow the scan.
    sqlx::query_as(
        "SELECT id, ended_at IS NOT NULL AS ended FROM calls \
         WHERE reservation_status = 'reserved' \
           AND created_at < now() - make_interval(secs => $1) \
           AND created_at + make_interval(secs => max_duration_seconds + $1) < now() \
           AND (ended_at IS NOT NULL \
             OR (status <> 'queued' AND (lease_expires_at IS NULL OR lease_expires_at < now()))) \
         ORDER BY created_at LIMIT $2",
    )
    .bind(settings.margin_seconds as f64)
    .bind(settings.batch)
    .fetch_all(pool)
    .await
}

/// One pass over the stuck holds.
pub async fn sweep_once(pool: &PgPool, settings: SweepSettings) -> anyhow::Result<SweepReport> {
    let mut report = SweepReport::default();
    for (call_id, ended) in stuck_holds(pool, settings).await? {
        let outcome = if ended {
            settle::settle(pool, call_id).await.map(Some)
        } else {
            release_stuck(pool, call_id, settings.margin_seconds).await
        };
        match outcome {
            Ok(Some(Settlement::AlreadySettled)) | Ok(None) => {}
            Ok(Some(settlement)) => {
                let (label, reason) = if ended {
                    report.settled += 1;
                    ("settled", "the call ended but was never settled")
                } else {
                    report.released += 1;
                    ("released", "the call never ended and has no live dialer")
                };
                tracing::warn!(
                    %call_id,
                    outcome = settlement.outcome(),
                    reason,
                    "reconciled a stuck hold"
                );
                metrics::counter!("ringer_billing_stuck_holds_released_total", "outcome" => label)
                    .increment(1);
            }
            Err(error) => {
                tracing::error!(%call_id, error = format!("{error:#}"), "cannot reconcile a stuck hold");
                metrics::counter!("ringer_billing_stuck_hold_errors_total").increment(1);
            }
        }
    }
    Ok(report)
}

async fn release_stuck(
    pool: &PgPool,
    call_id: Uuid,
    margin_seconds: i64,
) -> Result<Option<Settlement>, SettleError> {
    let mut tx = pool.begin().await?;
    let released = settle::release_stuck_hold(&mut tx, call_id, margin_seconds).await?;
    tx.commit().await?;
    if let Some(settlement) = &released {
        settle::record_metrics(settlement);
    }
    Ok(released)
}

/// Sweeps every `interval` until `shutdown`.
pub async fn run(
    pool: PgPool,
    settings: SweepSettings,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        match sweep_once(&pool, settings).await {
            Ok(report) if report != SweepReport::default() => {
                tracing::info!(
                    settled = report.settled,
                    released = report.released,
                    "stuck-hold sweep"
                );
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "stuck-hold sweep failed");
            }
        }
    }
}
