//! `webhooks.events`: one message and one delivery per destination per public
//! event, in one statement; then the first attempt of each new delivery,
//! made here rather than through a job on `webhooks.deliveries`.
//!
//! The statements of events handled at the same time commit together (a
//! [`Batcher`] of fan-outs): four public events per call each paid a commit
//! and its WAL flush before, and that was 15–20 % of the end-to-end rate.
//!
//! A first attempt goes through the same [`Dispatcher::run_job`] as a job
//! from the queue (destination cap, claim, ordering, record, follow-ups), so
//! only the broker round trip of the job is saved: a publish, its confirm, a
//! delivery and an ack per delivery. The event is acked once every attempt
//! has run, so a dispatcher that dies meanwhile gets the event back: its
//! fan-out then creates nothing and publishes a job for every delivery still
//! never attempted, which waits out a dead dispatcher's lease like any job.

use std::sync::Arc;

use ringer::consumer::{DeliveryInfo, Step, StepError};
use ringer::events::Event;
use serde_json::Value;
use sqlx::PgPool;

use crate::deliver::{Dispatcher, retry_lost_races};
use crate::envelope::Envelope;
use crate::jobs::{DeliveryJob, Publisher};
use crate::store::{self, FannedOut};
use ringer::batch::{Batcher, together_or_alone};

/// Events fanned out in one transaction at most, and such transactions at once.
const BATCH_MAX: usize = 64;
const BATCHES_IN_FLIGHT: usize = 2;

pub struct Fanout {
    batches: Batcher<(Event, Value), anyhow::Result<Vec<FannedOut>>>,
    publisher: Publisher,
    dispatcher: Arc<Dispatcher>,
}

/// The deliveries of one event: those this fan-out created, to attempt now,
/// and those to publish (never attempted before a redelivery, or woken).
#[derive(Debug, Default)]
pub struct Scheduled {
    pub created: Vec<DeliveryJob>,
    pub again: Vec<DeliveryJob>,
}

impl Fanout {
    pub fn new(db: PgPool, publisher: Publisher, dispatcher: Arc<Dispatcher>) -> Self {
        // Concurrent events share a transaction (one commit for many), each
        // still its own fan-out statement, so a busy dispatcher pays one WAL
        // flush for a batch of events and an idle one commits each at once.
        let batches = Batcher::spawn(
            "webhook_fan_out",
            BATCH_MAX,
            BATCHES_IN_FLIGHT,
            move |events: Vec<(Event, Value)>| {
                let db = db.clone();
                async move {
                    together_or_alone(&events, |events| {
                        retry_lost_races("fan-out", || fan_out_together(&db, events))
                    })
                    .await
                }
            },
        );
        Self {
            batches,
            publisher,
            dispatcher,
        }
    }

    /// Creates the deliveries of `event` (or, for an event seen before, finds
    /// the ones never attempted), committed.
    pub async fn schedule_deliveries(&self, event: &Event) -> Result<Scheduled, StepError> {
        let body = serde_json::to_value(Envelope::for_event(event))
            .map_err(|error| StepError::Poison(error.into()))?;
        let rows = self
            .batches
            .call((event.clone(), body))
            .await
            .and_then(|rows| rows)
            .map_err(StepError::Transient)?;
        let mut scheduled = Scheduled::default();
        for fanned in rows {
            let job = fanned.row.job();
            if fanned.created {
                scheduled.created.push(job);
            } else {
                scheduled.again.push(job);
            }
        }
        Ok(scheduled)
    }

    /// Runs the first attempts of new deliveries side by side. A job whose
    /// run failed (its claim or record did not commit, say) is published to
    /// `webhooks.deliveries` instead, so it is retried like any other job.
    async fn attempt_now(&self, jobs: Vec<DeliveryJob>) -> Result<(), StepError> {
        let running: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let dispatcher = self.dispatcher.clone();
                let retry = job.clone();
                // A task of its own: an attempt is never dropped half-way,
                // even when the event's handling is.
                (
                    retry,
                    tokio::spawn(async move { dispatcher.run_job(job).await }),
                )
            })
            .collect();
        let mut failed = Vec::new();
        for (job, run) in running {
            let error = match run.await {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => anyhow::Error::from(error),
                Err(panicked) => anyhow::anyhow!("the attempt task failed: {panicked}"),
            };
            tracing::warn!(delivery_id = %job.delivery_id, error = format!("{error:#}"), "first attempt did not complete; publishing its job");
            failed.push(job);
        }
        if !failed.is_empty() {
            metrics::counter!("ringer_webhook_first_attempts_requeued_total")
                .increment(failed.len() as u64);
            self.publisher.publish_now(&failed).await?;
        }
        Ok(())
    }
}

/// Fans out `events` in one transaction, a statement each. They run in order
/// of call and sequence, so that two batches touching the same calls lock
/// their rows in the same order.
async fn fan_out_together(
    db: &PgPool,
    events: &[(Event, Value)],
) -> sqlx::Result<Vec<Vec<FannedOut>>> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&index| (events[index].0.call_id, events[index].0.sequence));
    let mut rows: Vec<Vec<FannedOut>> = (0..events.len()).map(|_| Vec::new()).collect();
    let mut tx = db.begin().await?;
    for index in order {
        let (event, body) = &events[index];
        rows[index] = store::fan_out(&mut tx, event, body).await?;
    }
    tx.commit().await?;
    Ok(rows)
}

impl Step for Fanout {
    type Message = Event;

    async fn handle(&self, event: Event, _info: DeliveryInfo) -> Result<(), StepError> {
        if !event.event_type.is_public() {
            // `call.*` binds only public events; anything else is not ours to send.
            return Ok(());
        }
        let scheduled = self.schedule_deliveries(&event).await?;
        metrics::counter!("ringer_webhook_deliveries_created_total")
            .increment(scheduled.created.len() as u64);
        // After the commit: a crash from here on leaves the deliveries pending
        // and never attempted, and the event (not yet acked) comes back and
        // publishes their jobs.
        self.publisher.publish_now(&scheduled.again).await?;
        self.attempt_now(scheduled.created).await
    }
}
