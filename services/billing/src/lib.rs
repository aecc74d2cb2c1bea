//! The billing service: settles every ended call's hold against the ledger
//! (`billing` queue, bound to `internal.call.ended`) and reconciles stuck holds.

pub mod settle;
pub mod sweeper;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringer::consumer::{DeliveryInfo, Step, StepError};
use ringer::events::{Event, EventType};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use settle::{Settlement, Settler, settle, settle_call};

/// Settings of the billing service.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ringer-billing",
    about = "ringer's billing worker: settles call holds"
)]
pub struct Config {
    #[command(flatten)]
    pub common: ringer::config::CommonConfig,

    /// Seconds past a call's latest possible end (created_at + max_duration_seconds) before its still-reserved hold counts as stuck.
    #[arg(
        long,
        env = "RINGER_BILLING_STUCK_HOLD_MARGIN_SECONDS",
        default_value_t = 900
    )]
    pub stuck_hold_margin_seconds: u32,

    /// Seconds between two passes of the stuck-hold sweeper.
    #[arg(
        long,
        env = "RINGER_BILLING_SWEEP_INTERVAL_SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub sweep_interval_seconds: u64,

    /// Calls the stuck-hold sweeper reconciles per pass.
    #[arg(
        long,
        env = "RINGER_BILLING_SWEEP_BATCH",
        default_value_t = 100,
        value_parser = clap::value_parser!(i64).range(1..)
    )]
    pub sweep_batch: i64,

    /// Fault injection for crash tests: exit the process right after a
    /// settlement commits, before its message is acknowledged.
    #[arg(
        long,
        env = "RINGER_BILLING_FAULT_EXIT_AFTER_COMMIT",
        hide = true,
        default_value_t = false
    )]
    pub fault_exit_after_commit: bool,
}

impl Config {
    /// Settings for tests: the shared ones plus billing's defaults.
    pub fn new(common: ringer::config::CommonConfig) -> Self {
        Self {
            common,
            stuck_hold_margin_seconds: 900,
            sweep_interval_seconds: 60,
            sweep_batch: 100,
            fault_exit_after_commit: false,
        }
    }

    pub fn sweep_settings(&self) -> sweeper::SweepSettings {
        sweeper::SweepSettings {
            margin_seconds: i64::from(self.stuck_hold_margin_seconds),
            batch: self.sweep_batch,
        }
    }
}

/// Default address of the ops HTTP listener (`/healthz`, `/readyz`, `/metrics`).
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8083);

/// The consumer step: settle the call an `internal.call.ended` event announces.
pub struct SettleOnCallEnded {
    pub settler: Settler,
    pub fault_exit_after_commit: bool,
}

impl Step for SettleOnCallEnded {
    type Message = Event;

    async fn handle(&self, event: Event, _info: DeliveryInfo) -> Result<(), StepError> {
        check_call_ended(&event)?;
        let settlement = self.settler.settle(event.call_id).await?;
        log_settlement(&event, &settlement);
        if self.fault_exit_after_commit {
            tracing::error!(call_id = %event.call_id, "fault injection: exiting after commit, before ack");
            // The exit status of a SIGKILL; no destructor runs, nothing is acked.
            std::process::exit(137);
        }
        Ok(())
    }
}

/// The step as a function: checks the event and settles its call.
pub async fn handle_call_ended(db: &PgPool, event: &Event) -> Result<Settlement, StepError> {
    check_call_ended(event)?;
    let settlement = settle(db, event.call_id).await?;
    log_settlement(event, &settlement);
    Ok(settlement)
}

fn log_settlement(event: &Event, settlement: &Settlement) {
    tracing::info!(
        call_id = %event.call_id,
        outcome = settlement.outcome(),
        "billing settled the call"
    );
}

/// Refuses (as poison) an event billing cannot settle from.
fn check_call_ended(event: &Event) -> Result<(), StepError> {
    if event.event_type != EventType::CallEnded {
        return Err(StepError::Poison(anyhow::anyhow!(
            "billing consumes {} only; got {}",
            EventType::CallEnded,
            event.event_type
        )));
    }
    if event.call.id != event.call_id {
        return Err(StepError::Poison(anyhow::anyhow!(
            "event {} names call {} but carries call {}",
            event.id,
            event.call_id,
            event.call.id
        )));
    }
    Ok(())
}

/// Runs the billing worker until `shutdown`: the `billing` consumer, the
/// stuck-hold sweeper, the outbox relay and the ops HTTP routes.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let common = config.common.clone();
    ringer::service::run_worker(
        &common,
        "billing",
        DEFAULT_HTTP_ADDR,
        shutdown,
        |infra, shutdown| async move {
            let sweeper = tokio::spawn(sweeper::run(
                infra.db.clone(),
                config.sweep_settings(),
                Duration::from_secs(config.sweep_interval_seconds),
                shutdown.clone(),
            ));
            let step = Arc::new(SettleOnCallEnded {
                settler: Settler::start(infra.db.clone()),
                fault_exit_after_commit: config.fault_exit_after_commit,
            });
            let queue = infra.broker.names().queue(ringer::broker::BILLING_QUEUE);
            let consumed = ringer::consumer::run(
                &infra.broker,
                &queue,
                config.common.prefetch,
                config.common.shutdown_grace(),
                step,
                shutdown.clone(),
            )
            .await;
            shutdown.cancel();
            let _ = sweeper.await;
            consumed
        },
    )
    .await
}
