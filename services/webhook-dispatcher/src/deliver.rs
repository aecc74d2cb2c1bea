//! `webhooks.deliveries`: claim a delivery, attempt it, record the attempt,
//! and schedule what comes next (a retry, the call's next delivery to the same
//! destination, or the dead-letter queue).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use ringer::consumer::{DeliveryInfo, Step, StepError};
use ringer::retry::{Failure, RetryPolicy};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::envelope::{self, Signing};
use crate::http::{AttemptResult, Sender};
use crate::jobs::{DeadLetter, DeliveryJob, Publisher};
use crate::schedule;
use crate::store::{self, ClaimAnswer, ClaimRequest, Claimed, Outcome, Record, Recorded};
use ringer::batch::Batcher;

/// A job may arrive this much before its delivery is due and still be attempted.
const EARLY_TOLERANCE: Duration = Duration::from_millis(5);
/// How long a job waits for its busy destination when that destination is
/// healthy (answering 2xx fast): a burst to a fast endpoint rides it out. Jobs of
/// a struggling destination do not wait, so they never hold consumer slots the
/// other destinations need.
const PERMIT_WAIT: Duration = Duration::from_millis(250);
/// Claims (and records) of concurrent jobs run together, this many at most per statement.
const BATCH_MAX: usize = 128;
/// Claim statements running at once: a job's claim need not wait for the one
/// before it (its attempt waits on it). Records run one batch at a time, so
/// that two batches never lock the same endpoints in opposite orders.
const CLAIMS_IN_FLIGHT: usize = 4;
/// An attempt slower than this marks its destination as struggling.
const SLOW_ATTEMPT: Duration = Duration::from_secs(1);
/// Runs of a claim or record batch at most (the first and three more) when
/// Postgres aborts it to break a deadlock or a serialization conflict, and the
/// pause before the first rerun (doubling, with jitter).
const LOST_RACE_ATTEMPTS: u32 = 4;
const LOST_RACE_PAUSE: Duration = Duration::from_millis(5);

/// One destination's cap on attempts in flight, and how its attempts go.
pub struct Destination {
    permits: Arc<Semaphore>,
    struggling: AtomicBool,
    epoch: Instant,
    /// Milliseconds after `epoch` when an attempt last finished.
    last_finished_ms: AtomicU64,
}

/// A slot of a destination's cap; giving it back records that an attempt finished.
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    destination: Arc<Destination>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed =
            u64::try_from(self.destination.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.destination
            .last_finished_ms
            .store(elapsed, Ordering::Relaxed);
    }
}

impl Destination {
    /// Failing or slow at its last attempt, or every slot busy and none freed
    /// for a while (the attempts in flight hang).
    pub fn is_struggling(&self) -> bool {
        if self.struggling.load(Ordering::Relaxed) {
            return true;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_finished_ms.load(Ordering::Relaxed);
        let slow_ms = u64::try_from(SLOW_ATTEMPT.as_millis()).unwrap_or(u64::MAX);
        self.permits.available_permits() == 0 && now.saturating_sub(last) > slow_ms
    }

    pub fn observe(&self, result: &AttemptResult) {
        self.struggling.store(
            !result.succeeded() || result.duration > SLOW_ATTEMPT,
            Ordering::Relaxed,
        );
    }

    /// A slot, waiting for one only while the destination is healthy.
    pub async fn acquire(self: &Arc<Self>) -> Option<InFlight> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if self.is_struggling() => return None,
            Err(_) => tokio::time::timeout(PERMIT_WAIT, self.permits.clone().acquire_owned())
                .await
                .ok()?
                .ok()?,
        };
        Some(InFlight {
            _permit: permit,
            destination: self.clone(),
        })
    }
}

/// Per-destination caps on attempts in flight in this process.
pub struct DestinationLimiter {
    per_destination: usize,
    destinations: Mutex<HashMap<String, Arc<Destination>>>,
}

impl DestinationLimiter {
    pub fn new(per_destination: usize) -> Self {
        Self {
            per_destination: per_destination.max(1),
            destinations: Mutex::new(HashMap::new()),
        }
    }

    pub fn destination(&self, key: &str) -> Arc<Destination> {
        let mut destinations = self
            .destinations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Idle destinations are forgotten so that the map does not grow without bound.
        if destinations.len() > 10_000 {
            let full = self.per_destination;
            destinations.retain(|_, d| d.permits.available_permits() < full);
        }
        destinations
            .entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(Destination {
                    permits: Arc::new(Semaphore::new(self.per_destination)),
                    struggling: AtomicBool::new(false),
                    epoch: Instant::now(),
                    last_finished_ms: AtomicU64::new(0),
                })
            })
            .clone()
    }
}

/// What the claim found.
enum Claim {
    /// Not pending any more, or the job is a stale copy.
    Gone,
    /// Not due yet: wait this long.
    NotDue(Duration),
    /// Another dispatcher holds it (or held it and died): look again after this.
    Leased,
    /// Parked behind an earlier pending delivery of the same call and destination.
    Waiting,
    /// Parked until an earlier public event of the call is fanned out.
    AwaitingEvents,
    Ready(Box<Claimed>),
}

pub struct Dispatcher {
    claims: Batcher<ClaimRequest, ClaimAnswer>,
    records: Batcher<Record, Recorded>,
    publisher: Publisher,
    sender: Sender,
    limiter: DestinationLimiter,
    time_scale: f64,
}

impl Dispatcher {
    pub fn new(db: PgPool, publisher: Publisher, sender: Sender, config: &crate::Config) -> Self {
        let lease = config.lease();
        let claim_db = db.clone();
        let claims = Batcher::spawn(
            "webhook_claim",
            BATCH_MAX,
            CLAIMS_IN_FLIGHT,
            move |requests: Vec<ClaimRequest>| {
                let db = claim_db.clone();
                async move {
                    retry_lost_races("claim", || async {
                        let mut conn = db.acquire().await?;
                        store::claim(&mut conn, &requests, lease, EARLY_TOLERANCE).await
                    })
                    .await
                }
            },
        );
        let records = Batcher::spawn(
            "webhook_record",
            BATCH_MAX,
            1,
            move |records: Vec<Record>| {
                let db = db.clone();
                async move {
                    retry_lost_races("record", || async {
                        let mut conn = db.acquire().await?;
                        store::record(&mut conn, &records, schedule::DISABLE_AFTER_FAILURES).await
                    })
                    .await
                }
            },
        );
        Self {
            claims,
            records,
            publisher,
            sender,
            limiter: DestinationLimiter::new(config.per_destination_in_flight),
            time_scale: config.common.time_scale,
        }
    }

    async fn claim(&self, job: &DeliveryJob) -> Result<Claim, StepError> {
        let claimed = self
            .claims
            .call(ClaimRequest {
                delivery_id: job.delivery_id,
                attempts: job.attempts,
            })
            .await
            .map_err(StepError::Transient)?;
        let Some((state, claimed)) = claimed else {
            tracing::warn!(delivery_id = %job.delivery_id, "job for an unknown delivery; dropped");
            return Ok(Claim::Gone);
        };
        if let Some(claimed) = claimed {
            return Ok(Claim::Ready(Box::new(claimed)));
        }
        if state.status != "pending" || state.attempt_count != job.attempts {
            return Ok(Claim::Gone);
        }
        if let Some(due) = state.next_attempt_at {
            let early = (due - state.now).to_std().unwrap_or_default();
            if early > EARLY_TOLERANCE {
                return Ok(Claim::NotDue(early));
            }
        }
        if state
            .lease_expires_at
            .is_some_and(|until| until > state.now)
        {
            return Ok(Claim::Leased);
        }
        if state.awaiting_events {
            return Ok(Claim::AwaitingEvents);
        }
        if state.behind {
            return Ok(Claim::Waiting);
        }
        // Lost a race with another copy of the job.
        Ok(Claim::Gone)
    }

    async fn attempt(&self, claimed: &Claimed) -> AttemptResult {
        let body = envelope::body_bytes(&claimed.body);
        let signing = Signing {
            delivery_id: claimed.id,
            event_type: &claimed.event_type,
            call_id: claimed.call_id,
            timestamp: Utc::now().timestamp(),
            secrets: &claimed.secrets,
        };
        match envelope::headers(&signing, &body) {
            Ok(headers) => self.sender.post(&claimed.url, headers, body).await,
            Err(error) => AttemptResult {
                started_at: Utc::now(),
                duration: Duration::ZERO,
                response_status: None,
                response_excerpt: None,
                error: Some(error),
                permanent: true,
            },
        }
    }

    fn outcome(&self, claimed: &Claimed, attempts_made: i32, result: &AttemptResult) -> Outcome {
        if result.succeeded() {
            Outcome::Delivered
        } else if result.permanent || attempts_made >= claimed.max_attempts {
            Outcome::Exhausted
        } else {
            Outcome::Retry(schedule::retry_delay(attempts_made, self.time_scale))
        }
    }

    /// Publishes what follows a recorded outcome. A failure here loses only
    /// jobs the sweeper re-publishes (the delivery rows say what is pending).
    async fn follow_up(
        &self,
        job: &DeliveryJob,
        outcome: Outcome,
        successor: Option<DeliveryJob>,
        error: Option<&str>,
    ) -> Result<(), StepError> {
        let mut next = job.clone();
        next.attempts += 1;
        next.throttled = 0;
        match outcome {
            Outcome::Retry(delay) => self.publisher.publish_delayed(&next, delay).await?,
            Outcome::Exhausted => {
                self.publisher
                    .publish_dead_letter(
                        &next,
                        DeadLetter {
                            reason: "exhausted",
                            last_error: error,
                        },
                    )
                    .await?
            }
            Outcome::Delivered => {}
        }
        if let Some(successor) = successor {
            self.publisher.publish_now(&[successor]).await?;
        }
        Ok(())
    }

    /// Runs one job to its end: an attempt recorded, or the job parked or dropped.
    pub async fn run_job(&self, job: DeliveryJob) -> Result<(), StepError> {
        let destination = self.limiter.destination(&job.destination);
        let Some(permit) = destination.acquire().await else {
            metrics::counter!("ringer_webhook_jobs_parked_total", "reason" => "destination_busy")
                .increment(1);
            self.publisher
                .publish_throttled(&job, destination.is_struggling())
                .await?;
            return Ok(());
        };
        let claimed = match self.claim(&job).await? {
            Claim::Gone => return Ok(()),
            Claim::Waiting => {
                metrics::counter!("ringer_webhook_jobs_parked_total", "reason" => "ordering")
                    .increment(1);
                return Ok(());
            }
            Claim::AwaitingEvents => {
                // The earlier event's fan-out wakes parked deliveries, but one
                // committing while this claim parked ours cannot see the mark
                // (its snapshot predates it). So the job also comes back on
                // its own: after the throttle delay a few times, then after
                // the shortest retry tier, until the events are in (or the
                // wait for them runs out and it goes anyway).
                metrics::counter!("ringer_webhook_jobs_parked_total", "reason" => "awaiting_events")
                    .increment(1);
                self.publisher.publish_throttled(&job, true).await?;
                return Ok(());
            }
            Claim::NotDue(wait) => {
                let mut job = job;
                job.throttled = 0;
                self.publisher.publish_delayed(&job, wait).await?;
                return Ok(());
            }
            Claim::Leased => {
                metrics::counter!("ringer_webhook_jobs_parked_total", "reason" => "leased")
                    .increment(1);
                self.publisher.publish_throttled(&job, false).await?;
                return Ok(());
            }
            Claim::Ready(claimed) => claimed,
        };

        let skip_reason = match claimed.endpoint_state.as_deref() {
            Some("disabled") => Some("the endpoint is disabled"),
            Some("deleted") => Some("the endpoint was deleted"),
            _ => None,
        };
        let (result, outcome, error) = match skip_reason {
            Some(reason) => (None, Outcome::Exhausted, Some(reason.to_owned())),
            None => {
                let result = self.attempt(&claimed).await;
                destination.observe(&result);
                metrics::histogram!(
                    "ringer_webhook_attempt_duration_seconds",
                    "result" => if result.succeeded() { "success" } else { "failure" }
                )
                .record(result.duration.as_secs_f64());
                let outcome = self.outcome(&claimed, job.attempts + 1, &result);
                let error = result.error.clone();
                (Some(result), outcome, error)
            }
        };
        // The cap counts attempts on the wire; recording is ours to wait for.
        drop(permit);
        let recorded = self
            .records
            .call(Record {
                delivery_id: claimed.id,
                claimed_attempts: job.attempts,
                outcome,
                attempt: result,
                error: error.clone(),
            })
            .await
            .map_err(StepError::Transient)?;
        if !recorded.recorded {
            // Another dispatcher took over after our lease ran out and recorded first.
            return Ok(());
        }
        if recorded.disabled {
            tracing::warn!(endpoint_id = ?claimed.endpoint_id, "endpoint disabled after too many failed deliveries");
            metrics::counter!("ringer_webhook_endpoints_disabled_total").increment(1);
        }
        let successor = recorded.successor.map(|row| row.job());
        metrics::counter!("ringer_webhook_deliveries_total", "outcome" => outcome.label())
            .increment(1);
        tracing::debug!(
            delivery_id = %claimed.id,
            attempt = job.attempts + 1,
            outcome = outcome.label(),
            error = error.as_deref().unwrap_or(""),
            "delivery attempted"
        );
        if let Err(error) = self
            .follow_up(&job, outcome, successor, error.as_deref())
            .await
        {
            // The outcome is committed and this job is now stale, so a requeue
            // would do nothing: the sweeper re-publishes what is pending.
            tracing::warn!(delivery_id = %claimed.id, %error, "publishing the follow-up job failed; the sweeper will");
        }
        Ok(())
    }
}

/// Runs a batch statement again when Postgres aborted it to break a deadlock
/// or a serialization conflict (it rolled back; nothing is half done), so one
/// lost race does not send a whole batch of jobs back to the queue.
pub(crate) async fn retry_lost_races<T, F, Fut>(what: &'static str, mut run: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<T>>,
{
    let policy = RetryPolicy::new(LOST_RACE_ATTEMPTS, LOST_RACE_PAUSE);
    ringer::retry::retry(&policy, |attempt| {
        if attempt > 1 {
            metrics::counter!("ringer_webhook_batch_retries_total", "statement" => what)
                .increment(1);
        }
        let pending = run();
        async move {
            pending.await.map_err(|error| {
                if ringer::db::is_retryable(&error) {
                    tracing::debug!(%error, attempt, "webhook {what} batch lost a race");
                    Failure::transient(error)
                } else {
                    Failure::permanent(error)
                }
            })
        }
    })
    .await
    .map_err(|failed| failed.error.into())
}

impl Step for Dispatcher {
    type Message = DeliveryJob;

    async fn handle(&self, job: DeliveryJob, _info: DeliveryInfo) -> Result<(), StepError> {
        self.run_job(job).await
    }
}
