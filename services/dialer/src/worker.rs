//! The dialer's side of the broker and its background duties: claiming queued
//! calls (within the org's and the replica's limits), waking calls on a cancel,
//! renewing leases, and sweeping calls whose dialer died.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::types::{AMQPValue, FieldTable};
use ringer::broker::{Broker, DIALER_DELAY_QUEUE, Outgoing};
use ringer::consumer::{DeliveryInfo, Step, StepError};
use ringer::events::{EVENT_VERSION, Event, EventType};
use ringer::{outbox, telemetry};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::agent::Agent;
use crate::carrier::Carrier;
use crate::live::LiveCalls;
use crate::pipeline::{self, CANCEL_POLL, MIN_CANCEL_POLL, Shared};
use crate::store::{self, Claim, LostCall};

/// How long a claim waits for a free slot in this replica before the message goes
/// to the delay queue instead (a message must not sit unacknowledged for long).
const SLOT_WAIT: Duration = Duration::from_secs(5);
/// Lost calls ended per sweeper transaction.
const SWEEP_BATCH: i64 = 100;

/// Consumes the `dialer` queue: `call.queued` claims and starts a call,
/// `internal.call.cancel_requested` wakes it.
pub struct DialerStep<C, A> {
    pub shared: Arc<Shared<C, A>>,
    pub broker: Broker,
    pub live: Arc<LiveCalls>,
    /// Slots for live calls in this replica.
    pub slots: Arc<Semaphore>,
    /// Call tasks, for shutdown.
    pub calls: TaskTracker,
    /// Cancelled when the replica stops taking calls.
    pub shutdown: CancellationToken,
    /// Cancelled when the grace period is over and the remaining calls are given up.
    pub abandon: CancellationToken,
}

impl<C: Carrier, A: Agent> Step for DialerStep<C, A> {
    type Message = Event;

    async fn handle(&self, event: Event, info: DeliveryInfo) -> Result<(), StepError> {
        if event.version != EVENT_VERSION {
            return Err(StepError::Poison(anyhow::anyhow!(
                "event version {} is not {EVENT_VERSION}",
                event.version
            )));
        }
        match event.event_type {
            EventType::CallQueued => self.claim_and_dial(event, &info).await,
            EventType::CancelRequested => {
                if !self.live.wake(event.call_id) {
                    // Another replica runs the call; its cancel watcher polls the database.
                    tracing::debug!(call_id = %event.call_id, "cancel request for a call not running here");
                }
                Ok(())
            }
            other => {
                tracing::debug!(event_type = %other, "ignoring an event the dialer does not handle");
                Ok(())
            }
        }
    }
}

impl<C: Carrier, A: Agent> DialerStep<C, A> {
    async fn claim_and_dial(&self, event: Event, info: &DeliveryInfo) -> Result<(), StepError> {
        if self.shutdown.is_cancelled() {
            return Err(StepError::Transient(anyhow::anyhow!(
                "shutting down; leaving the call to another replica"
            )));
        }
        let slot = match tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => return self.defer(&event, "replica_full").await,
        };

        let claim = self
            .shared
            .writer
            .claim(event.call_id, event.org_id)
            .await?;
        let claimed = match claim {
            Claim::Claimed(claimed) => claimed,
            Claim::OverLimit { live, limit } => {
                tracing::debug!(call_id = %event.call_id, live, limit, "org at its concurrency limit; call waits");
                return self.defer(&event, "org_limit").await;
            }
            Claim::NotQueued(status) => {
                // A redelivery, or a call canceled while queued: never dial twice.
                tracing::info!(call_id = %event.call_id, %status, redelivered = info.redelivered, "call is past queued; nothing to do");
                return Ok(());
            }
            Claim::Missing => {
                return Err(StepError::Poison(anyhow::anyhow!(
                    "call {} of org {} does not exist",
                    event.call_id,
                    event.org_id
                )));
            }
        };
        let waited = (Utc::now() - event.occurred_at)
            .to_std()
            .unwrap_or_default();
        metrics::histogram!("ringer_dialer_claim_latency_seconds").record(waited.as_secs_f64());

        let claimed = *claimed;
        let guard = self.live.register(claimed.call.id);
        let shared = self.shared.clone();
        let abandon = self.abandon.clone();
        let span =
            tracing::info_span!("call", call_id = %claimed.call.id, org_id = %claimed.org_id);
        let task = async move {
            let _slot = slot;
            tokio::select! {
                outcome = pipeline::run_call(shared, claimed, guard.call()) => {
                    if let Err(error) = outcome {
                        tracing::warn!(%error, "call task stopped before the call ended");
                    }
                }
                // Dropping the call mid-way: `give_up_calls` ends it for the record.
                () = abandon.cancelled() => {}
            }
            drop(guard);
        }
        .instrument(span);
        // Events the call emits continue the trace of the `call.queued` that started it.
        self.calls
            .spawn(telemetry::within_optional(telemetry::current(), task));
        Ok(())
    }

    /// Puts the message in `dialer.delay`, from where it returns to the `dialer`
    /// queue after a short wait; the caller then acks the original.
    async fn defer(&self, event: &Event, reason: &'static str) -> Result<(), StepError> {
        let payload = serde_json::to_vec(event).map_err(|error| StepError::Poison(error.into()))?;
        let queue = self.broker.names().queue(DIALER_DELAY_QUEUE);
        let mut headers = FieldTable::default();
        if let Some(trace) = telemetry::current() {
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(trace.to_header().as_str().into()),
            );
        }
        self.broker
            .publish_confirmed(Outgoing {
                exchange: "",
                routing_key: &queue,
                payload: &payload,
                message_id: Some(event.id.to_string()),
                headers,
            })
            .await?;
        metrics::counter!("ringer_dialer_deferred_total", "reason" => reason).increment(1);
        Ok(())
    }
}

/// Extends the leases of this replica's calls every third of a lease.
pub async fn renew_leases<C, A>(
    shared: Arc<Shared<C, A>>,
    live: Arc<LiveCalls>,
    stop: CancellationToken,
) {
    let every = shared.lease / 3;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let ids = live.ids();
        if let Err(error) =
            store::renew_leases(&shared.db, &ids, &shared.dialer_id, shared.lease).await
        {
            tracing::warn!(%error, calls = ids.len(), "renewing leases failed; will retry");
        }
    }
}

/// Polls for cancel requests of this replica's ringing calls and wakes them.
/// (The `internal.call.cancel_requested` event wakes a call sooner, but it reaches
/// only one replica, perhaps not the one running the call.)
pub async fn watch_cancels<C, A>(
    shared: Arc<Shared<C, A>>,
    live: Arc<LiveCalls>,
    stop: CancellationToken,
) {
    let every = ringer::config::scale_duration(CANCEL_POLL, shared.time_scale).max(MIN_CANCEL_POLL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let ids = live.waiting_ids(every);
        if ids.is_empty() {
            continue;
        }
        match store::cancel_requested(&shared.db, &ids).await {
            Ok(canceled) => {
                for id in canceled {
                    live.wake(id);
                }
            }
            Err(error) => tracing::warn!(%error, "polling for cancel requests failed"),
        }
    }
}

/// Nominal interval of the sweeper: often enough that a lost call ends soon after
/// its lease, at most every 5 s.
pub fn sweep_interval(lease: Duration) -> Duration {
    (lease / 2).min(Duration::from_secs(5))
}

/// Ends calls whose lease expired (their dialer died), in every replica.
pub async fn sweep_lost_calls<C: Carrier, A: Agent>(
    shared: Arc<Shared<C, A>>,
    stop: CancellationToken,
) {
    let every = sweep_interval(shared.lease);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        loop {
            match end_lost_batch(&shared, None).await {
                Ok(ended) if ended < SWEEP_BATCH as usize => break,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "sweeping lost calls failed; will retry");
                    break;
                }
            }
        }
    }
}

/// Ends one batch of lost calls: expired leases, or (with `of_dialer`) every live
/// call of that replica. Returns how many it ended.
async fn end_lost_batch<C: Carrier, A: Agent>(
    shared: &Shared<C, A>,
    of_dialer: Option<&str>,
) -> sqlx::Result<usize> {
    let mut tx = shared.db.begin().await?;
    let lost: Vec<LostCall> = match of_dialer {
        None => store::end_expired_calls(&mut tx, SWEEP_BATCH).await?,
        Some(dialer_id) => store::end_calls_of_dialer(&mut tx, dialer_id, SWEEP_BATCH).await?,
    };
    for call in &lost {
        outbox::emit(
            &mut tx,
            call.owned.org_id,
            EventType::CallEnded,
            &call.owned.call,
        )
        .await?;
    }
    tx.commit().await?;
    for call in &lost {
        let outcome = call
            .owned
            .call
            .hangup_cause
            .clone()
            .unwrap_or_else(|| store::DIALER_LOST.to_owned());
        tracing::warn!(
            call_id = %call.owned.call.id,
            previous_dialer_id = call.previous_dialer_id.as_deref().unwrap_or(""),
            hangup_cause = %outcome,
            "call ended: its dialer is gone"
        );
        metrics::counter!("ringer_dialer_calls_ended_total", "outcome" => outcome).increment(1);
        // Where the carrier can, nobody stays on a line that nobody talks on.
        if let Some(carrier_call_id) = &call.carrier_call_id
            && let Err(error) = shared.carrier.hang_up_orphan(carrier_call_id).await
        {
            tracing::warn!(call_id = %call.owned.call.id, %error, "could not hang up the orphaned call");
        }
    }
    Ok(lost.len())
}

/// After the grace period: ends this replica's remaining calls as `dialer_lost`
/// at once (instead of leaving them to another replica's sweeper after their
/// lease), so that nobody waits on a dead line. Best effort within `budget`.
pub async fn give_up_calls<C: Carrier, A: Agent>(shared: &Shared<C, A>, budget: Duration) {
    let started = Instant::now();
    while started.elapsed() < budget {
        match end_lost_batch(shared, Some(&shared.dialer_id)).await {
            Ok(ended) if ended < SWEEP_BATCH as usize => return,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "could not end the remaining calls; their leases will expire");
                return;
            }
        }
    }
}
