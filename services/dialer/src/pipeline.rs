//! One claimed call, from dial to hang-up. Every step is one transaction that
//! changes the call (guarded by the status we last wrote and by our `dialer_id`)
//! and writes its event to the outbox; a step that matches no row means the call
//! was taken from us (lease expired and swept): we hang up and stop.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ringer::call::{Call, CallStatus, OwnedCall, VoicemailAction};
use ringer::config::scale_duration;
use sqlx::PgPool;
use uuid::Uuid;

use crate::agent::{Agent, AgentTurn, Conversation};
use crate::carrier::{AnsweredBy, CallLeg, Carrier, CarrierError, CarrierFailure, Heard, Progress};
use crate::live::LiveCall;
use crate::store::{self, Answering, Ended, Ending, Refusal, Ringing, Segment};
use crate::writer::{Change, Writer};

/// What every call task of a replica shares.
pub struct Shared<C, A> {
    pub db: PgPool,
    pub writer: Writer,
    pub carrier: C,
    pub agent: A,
    pub dialer_id: String,
    pub lease: Duration,
    pub time_scale: f64,
}

/// How often a ringing call checks for a cancel request, before `time_scale`.
pub const CANCEL_POLL: Duration = Duration::from_millis(200);
/// The shortest cancel poll, whatever the time scale (0 would spin).
pub const MIN_CANCEL_POLL: Duration = Duration::from_millis(10);
/// Transcript segments reach the database at most this long after they were spoken.
const TRANSCRIPT_LAG: Duration = Duration::from_secs(1);
/// Each turn counts at least this much against `max_duration_seconds`, so that a
/// carrier reporting zero-length turns cannot keep a call up for ever.
const MIN_TURN: Duration = Duration::from_millis(100);

/// Why a call task stopped before ending its call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Another replica's sweeper ended the call (our lease expired), or it was ended
    /// some other way: nothing of ours to write any more.
    #[error("the call was taken over")]
    TakenOver,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

fn canceled() -> Ending {
    Ending {
        status: CallStatus::Canceled,
        hangup_cause: "canceled",
        error_code: None,
        error_message: None,
        answered_by: None,
    }
}

fn unanswered(status: CallStatus, hangup_cause: &'static str) -> Ending {
    Ending {
        status,
        hangup_cause,
        error_code: None,
        error_message: None,
        answered_by: None,
    }
}

fn carrier_failed(status: CallStatus, message: String) -> Ending {
    Ending {
        status,
        hangup_cause: "carrier_error",
        error_code: Some("carrier_error"),
        error_message: Some(message),
        answered_by: None,
    }
}

fn failure_message(failure: &CarrierFailure) -> String {
    format!(
        "The carrier could not complete the call ({}: {}).",
        failure.provider_code, failure.message
    )
}

/// Runs a claimed call to its end.
pub async fn run_call<C: Carrier, A: Agent>(
    shared: Arc<Shared<C, A>>,
    claimed: OwnedCall,
    live: &LiveCall,
) -> Result<(), CallError> {
    let mut run = CallRun {
        status: claimed.call.status,
        answered_instant: None,
        call: claimed.call,
        shared: &shared,
        transcript: Transcript::new(shared.carrier.transcript_source()),
    };
    let outcome = run.dial_and_talk(live).await;
    if let Err(CallError::TakenOver) = &outcome {
        tracing::warn!(call_id = %run.call.id, "call taken over by another replica; stopped");
    }
    outcome
}

struct CallRun<'a, C, A> {
    shared: &'a Shared<C, A>,
    call: Call,
    /// The status we last wrote: the guard of our next step.
    status: CallStatus,
    answered_instant: Option<Instant>,
    transcript: Transcript,
}

enum Wait<T> {
    Done(T),
    CancelRequested,
}

impl<C: Carrier, A: Agent> CallRun<'_, C, A> {
    fn id(&self) -> Uuid {
        self.call.id
    }

    async fn dial_and_talk(&mut self, live: &LiveCall) -> Result<(), CallError> {
        // The claim recorded this one dial (`dial_attempts`); a cancel requested
        // from here on stops the call at its first step.
        metrics::counter!("ringer_dialer_dials_total", "carrier" => self.shared.carrier.name())
            .increment(1);
        let mut leg = match self.shared.carrier.dial(&self.call).await {
            Ok(leg) => leg,
            Err(error) => {
                let message = format!("The carrier refused to place the call: {error}.");
                return self.end(carrier_failed(CallStatus::Failed, message)).await;
            }
        };
        let ending = self.follow(&mut leg, live).await;
        // Whatever happened, nobody stays on the line; and the line is free
        // before the call is recorded as ended, so that the org's next call
        // (claimed as soon as this one no longer counts as live) never overlaps it.
        if let Err(error) = leg.hang_up().await {
            tracing::warn!(call_id = %self.id(), %error, "hanging up failed");
        }
        drop(leg);
        self.end(ending?).await
    }

    /// Follows the carrier's progress to an outcome, watching for a cancel request.
    async fn follow(&mut self, leg: &mut C::Leg, live: &LiveCall) -> Result<Ending, CallError> {
        loop {
            let progress = match self.until_canceled(leg.progress(), live).await? {
                Wait::CancelRequested => return Ok(canceled()),
                Wait::Done(progress) => progress,
            };
            let progress = match progress {
                Ok(progress) => progress,
                Err(error) => {
                    let message = format!("The carrier lost the call: {error}.");
                    return Ok(carrier_failed(CallStatus::Failed, message));
                }
            };
            match progress {
                Progress::Ringing => {
                    if self.status == CallStatus::Initiated
                        && self.ring(leg.carrier_call_id().to_owned()).await?
                    {
                        return Ok(canceled());
                    }
                }
                Progress::Busy => return Ok(unanswered(CallStatus::Busy, "busy")),
                Progress::NoAnswer => {
                    return Ok(unanswered(CallStatus::NoAnswer, "no_answer"));
                }
                Progress::Failed(failure) => {
                    let message = failure_message(&failure);
                    return Ok(carrier_failed(CallStatus::Failed, message));
                }
                Progress::Answered(by) => return self.answered(leg, by).await,
            }
        }
    }

    /// Runs `future` unless a cancel request for this call arrives first. Only
    /// used before answer: once answered, cancel does not apply.
    async fn until_canceled<F: Future>(
        &self,
        future: F,
        live: &LiveCall,
    ) -> Result<Wait<F::Output>, CallError> {
        tokio::pin!(future);
        let _waiting = live.waiting();
        loop {
            tokio::select! {
                biased;
                output = &mut future => return Ok(Wait::Done(output)),
                () = live.wake.notified() => {
                    let (db, id, me) = (&self.shared.db, self.id(), &self.shared.dialer_id);
                    let control = retry("check for a cancel", || async move {
                        let mut conn = db.acquire().await?;
                        store::control(&mut conn, id, me).await
                    })
                    .await?;
                    match control {
                        store::Control::Ours { cancel_requested: true, .. } => {
                            return Ok(Wait::CancelRequested);
                        }
                        store::Control::Ours { .. } => {}
                        store::Control::Lost => return Err(CallError::TakenOver),
                    }
                }
            }
        }
    }

    /// `initiated → ringing`, with `call.ringing`. True when a cancel is pending
    /// (the call then never shows as ringing).
    async fn ring(&mut self, carrier_call_id: String) -> Result<bool, CallError> {
        let change = Change::Ring(Ringing {
            call_id: self.id(),
            started_at: Utc::now(),
            carrier_call_id,
        });
        let ringing = self.apply("mark ringing", change).await?;
        let Some(ringing) = ringing else {
            return match self.why_refused(CallStatus::Initiated).await? {
                Refusal::CancelRequested => Ok(true),
                Refusal::Lost => Err(CallError::TakenOver),
            };
        };
        self.call = ringing.call;
        self.status = CallStatus::Ringing;
        Ok(false)
    }

    async fn apply(&self, what: &str, change: Change) -> Result<Option<OwnedCall>, CallError> {
        let writer = &self.shared.writer;
        retry(what, || writer.apply(change.clone())).await
    }

    async fn why_refused(&self, expected: CallStatus) -> Result<Refusal, CallError> {
        let (db, id, me) = (&self.shared.db, self.id(), &self.shared.dialer_id);
        retry("check the call", || async move {
            let mut conn = db.acquire().await?;
            store::why_refused(&mut conn, id, me, expected).await
        })
        .await
    }

    async fn answered(&mut self, leg: &mut C::Leg, by: AnsweredBy) -> Result<Ending, CallError> {
        // A carrier may skip the ringing report; the Call still passes through `ringing`.
        if self.status == CallStatus::Initiated
            && self.ring(leg.carrier_call_id().to_owned()).await?
        {
            return Ok(canceled());
        }
        let leave_message = self.call.voicemail_action == VoicemailAction::LeaveMessage;
        if by == AnsweredBy::Machine && !leave_message {
            return Ok(Ending {
                answered_by: Some(AnsweredBy::Machine.as_str()),
                ..unanswered(CallStatus::NoAnswer, "voicemail")
            });
        }

        let change = Change::Answer(Answering {
            call_id: self.id(),
            answered_at: Utc::now(),
            answered_by: by.as_str(),
        });
        let answered = self.apply("mark answered", change).await?;
        let Some(answered) = answered else {
            return match self.why_refused(CallStatus::Ringing).await? {
                // The cancel committed before the answer: it wins.
                Refusal::CancelRequested => Ok(canceled()),
                Refusal::Lost => Err(CallError::TakenOver),
            };
        };
        self.call = answered.call;
        self.status = CallStatus::InProgress;
        self.answered_instant = Some(Instant::now());

        if by == AnsweredBy::Machine {
            self.leave_message(leg).await
        } else {
            self.converse(leg).await
        }
    }

    fn max_duration(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.call.max_duration_seconds).unwrap_or(0))
    }

    /// A wall-clock cap backing up the line-time count (the carrier reports turn
    /// lengths; a turn that never ends must not outlive the cap). None at time
    /// scale 0, where nothing waits.
    fn wall_deadline(&self) -> Option<Instant> {
        let cap = scale_duration(self.max_duration(), self.shared.time_scale);
        if cap.is_zero() {
            return None;
        }
        self.answered_instant.map(|answered| answered + cap)
    }

    async fn before_deadline<F: Future>(&self, future: F) -> Option<F::Output> {
        match self.wall_deadline() {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), future).await.ok(),
            None => Some(future.await),
        }
    }

    /// The agent and the callee take turns until one hangs up or time runs out.
    async fn converse(&mut self, leg: &mut C::Leg) -> Result<Ending, CallError> {
        let mut conversation = self.shared.agent.start(&self.call);
        let max_duration = self.max_duration();
        let mut line_time = Duration::ZERO;
        loop {
            let started_at = Utc::now();
            let heard = match self.before_deadline(leg.listen()).await {
                None => return Ok(answered_ending("max_duration")),
                Some(Ok(heard)) => heard,
                Some(Err(CarrierError::HungUp)) => Heard::HungUp,
                Some(Err(error)) => return Ok(lost_line(&error)),
            };
            match &heard {
                Heard::Speech { text, duration } => {
                    self.transcript.push("callee", text, started_at, Utc::now());
                    line_time += (*duration).max(MIN_TURN);
                }
                Heard::Silence { duration } => line_time += (*duration).max(MIN_TURN),
                Heard::HungUp => return Ok(answered_ending("callee_hangup")),
            }
            if line_time >= max_duration {
                return Ok(answered_ending("max_duration"));
            }

            let turn = match conversation.respond(&heard).await {
                Ok(turn) => turn,
                Err(error) => {
                    tracing::warn!(call_id = %self.id(), %error, "the agent failed; hanging up");
                    return Ok(Ending {
                        error_code: Some("agent_error"),
                        error_message: Some(
                            "The agent failed during the conversation and hung up.".to_owned(),
                        ),
                        ..answered_ending("agent_error")
                    });
                }
            };
            let (text, then_hang_up) = match turn {
                AgentTurn::Wait => {
                    self.flush_transcript_if_due().await;
                    continue;
                }
                AgentTurn::HangUp => return Ok(answered_ending("completed")),
                AgentTurn::Say(text) => (text, false),
                AgentTurn::SayAndHangUp(text) => (text, true),
            };
            let started_at = Utc::now();
            let spoken = self.before_deadline(leg.say(&text)).await;
            self.transcript.push("agent", &text, started_at, Utc::now());
            match spoken {
                None => return Ok(answered_ending("max_duration")),
                Some(Ok(spoken)) => line_time += spoken.duration.max(MIN_TURN),
                Some(Err(CarrierError::HungUp)) => {
                    return Ok(answered_ending("callee_hangup"));
                }
                Some(Err(error)) => return Ok(lost_line(&error)),
            }
            if then_hang_up {
                return Ok(answered_ending("completed"));
            }
            if line_time >= max_duration {
                return Ok(answered_ending("max_duration"));
            }
            self.flush_transcript_if_due().await;
        }
    }

    /// An answering machine picked up and the call asks to leave a message.
    async fn leave_message(&mut self, leg: &mut C::Leg) -> Result<Ending, CallError> {
        let started_at = Utc::now();
        match self.before_deadline(leg.listen()).await {
            None => return Ok(answered_ending("max_duration")),
            Some(Ok(Heard::Speech { text, .. })) => {
                self.transcript
                    .push("callee", &text, started_at, Utc::now());
            }
            Some(Ok(Heard::Silence { .. })) => {}
            Some(Ok(Heard::HungUp) | Err(CarrierError::HungUp)) => {
                return Ok(answered_ending("callee_hangup"));
            }
            Some(Err(error)) => return Ok(lost_line(&error)),
        }
        let message = self.shared.agent.voicemail_message(&self.call);
        let started_at = Utc::now();
        let spoken = self.before_deadline(leg.say(&message)).await;
        self.transcript
            .push("agent", &message, started_at, Utc::now());
        match spoken {
            None => Ok(answered_ending("max_duration")),
            Some(Ok(_)) => Ok(answered_ending("completed")),
            Some(Err(CarrierError::HungUp)) => Ok(answered_ending("callee_hangup")),
            Some(Err(error)) => Ok(lost_line(&error)),
        }
    }

    async fn flush_transcript_if_due(&mut self) {
        if !self.transcript.due() {
            return;
        }
        let change = Change::Transcript(self.id(), self.transcript.pending.clone());
        match self.shared.writer.apply(change).await {
            Ok(_) => self.transcript.flushed(),
            // The segments stay pending; the end of the call writes them at the latest.
            Err(error) => {
                tracing::warn!(call_id = %self.id(), %error, "transcript flush postponed")
            }
        }
    }

    /// Ends the call with `ending` and emits `internal.call.ended`, in one
    /// transaction with the rest of the transcript (so that the extractor, which
    /// consumes that event, sees the whole conversation).
    async fn end(&mut self, ending: Ending) -> Result<(), CallError> {
        let change = Change::End(
            Ended {
                call_id: self.id(),
                expected: self.status,
                ended_at: Utc::now(),
                ending: ending.clone(),
            },
            self.transcript.pending.clone(),
        );
        let ended = self.apply("end the call", change).await?;
        let ended = ended.ok_or(CallError::TakenOver)?;
        self.transcript.flushed();
        self.status = ended.call.status;
        tracing::info!(
            call_id = %self.id(),
            status = %ended.call.status,
            hangup_cause = ending.hangup_cause,
            "call ended"
        );
        metrics::counter!("ringer_dialer_calls_ended_total", "outcome" => ending.hangup_cause)
            .increment(1);
        self.call = ended.call;
        Ok(())
    }
}

/// An answered call that ended: it stays `in_progress` until extraction and billing close it.
fn answered_ending(hangup_cause: &'static str) -> Ending {
    unanswered(CallStatus::InProgress, hangup_cause)
}

fn lost_line(error: &CarrierError) -> Ending {
    Ending {
        error_code: Some("carrier_error"),
        error_message: Some(format!("The carrier lost the call: {error}.")),
        ..answered_ending("carrier_error")
    }
}

/// Segments spoken but not yet written.
#[derive(Debug)]
struct Transcript {
    source: &'static str,
    next_sequence: i32,
    pending: Vec<Segment>,
    oldest: Option<Instant>,
}

impl Transcript {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            next_sequence: 0,
            pending: Vec::new(),
            oldest: None,
        }
    }

    fn push(
        &mut self,
        role: &'static str,
        text: &str,
        started_at: DateTime<Utc>,
        ended_at: DateTime<Utc>,
    ) {
        self.pending.push(Segment {
            sequence_no: self.next_sequence,
            role,
            text: text.to_owned(),
            started_at,
            ended_at,
            source: self.source,
        });
        self.next_sequence += 1;
        self.oldest.get_or_insert_with(Instant::now);
    }

    fn due(&self) -> bool {
        self.oldest
            .is_some_and(|oldest| oldest.elapsed() >= TRANSCRIPT_LAG)
    }

    fn flushed(&mut self) {
        self.pending.clear();
        self.oldest = None;
    }
}

/// Retries a database step on errors worth retrying (lost connection, pool
/// timeout, serialisation failure), for a few seconds: well inside the lease.
async fn retry<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = sqlx::Result<T>>,
{
    let mut pause = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if tries < 6 && ringer::db::is_retryable(&error) => {
                tries += 1;
                tracing::warn!(%error, what, tries, "database step failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(error) => return Err(CallError::Database(error)),
        }
    }
}
