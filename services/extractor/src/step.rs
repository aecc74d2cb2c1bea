//! The extractor's worker step: on `internal.call.ended`, decide the call's
//! final result, store it with `internal.call.result_ready`, and close the
//! completion join, all in one transaction.

use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use ringer::call::{Call, NumberedCall, OwnedCall, ResultStatus};
use ringer::consumer::{DeliveryInfo, Step, StepError};
use ringer::events::{Event, EventType};
use ringer::returns::ReturnsSchema;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::extraction::{ExtractionRequest, Extractor, Speaker, Utterance};
use crate::store;

/// What one run of the step did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The result was stored; `terminal` is the call's terminal event when this
    /// step closed the completion join.
    Stored {
        call: Box<Call>,
        terminal: Option<Box<Event>>,
    },
    /// The result was already final (a redelivery, or a concurrent one won): nothing changed.
    AlreadyFinal,
}

/// The result a call ends up with.
#[derive(Debug, Clone, PartialEq)]
enum FinalResult {
    Completed(Value),
    Failed(String),
}

/// Extracts and stores the result of the ended call `call_id`, then closes the
/// completion join. Idempotent: a call whose result is no longer pending is
/// left untouched and nothing is emitted.
///
/// The extractor runs outside any transaction (an LLM may take seconds); the
/// write re-checks that the result is still pending under the row lock.
pub async fn extract_call_result<E: Extractor>(
    db: &PgPool,
    extractor: &E,
    call_id: Uuid,
) -> Result<Outcome, StepError> {
    // The connection goes back to the pool before the extractor runs: an
    // LLM may take many seconds, and a pooled connection is scarcer than a task.
    let (call, work) = {
        let mut conn = db.acquire().await?;
        let Some(OwnedCall { call, .. }) = ringer::call::find_call(&mut conn, call_id).await?
        else {
            return Err(StepError::Poison(anyhow!("call {call_id} does not exist")));
        };
        if call.result_status != ResultStatus::Pending {
            record_outcome(extractor, "duplicate");
            return Ok(Outcome::AlreadyFinal);
        }
        if call.ended_at.is_none() {
            // `internal.call.ended` commits with `ended_at`; this is a broken invariant.
            return Err(StepError::Poison(anyhow!(
                "call {call_id} has not ended (status {})",
                call.status
            )));
        }
        let work = plan_work(&mut conn, &call).await?;
        (call, work)
    };
    let final_result = match work {
        Work::Decided(final_result) => final_result,
        Work::Extract { schema, transcript } => {
            run_extractor(extractor, &call, &schema, &transcript).await
        }
    };

    let (status, result, error) = match &final_result {
        FinalResult::Completed(result) => (ResultStatus::Completed, Some(result), None),
        FinalResult::Failed(error) => (ResultStatus::Failed, None, Some(error.as_str())),
    };
    let mut tx = db.begin().await?;
    let Some(NumberedCall {
        event_seq,
        owned: OwnedCall { org_id, call },
    }) = store::store_result(&mut tx, call_id, status, result, error).await?
    else {
        record_outcome(extractor, "duplicate");
        return Ok(Outcome::AlreadyFinal);
    };
    ringer::outbox::emit_numbered(&mut tx, org_id, EventType::ResultReady, &call, event_seq)
        .await?;
    let terminal = ringer::call::close_completion_join(&mut tx, call_id).await?;
    tx.commit().await?;

    let outcome = if call.answered_at.is_none() {
        "not_answered"
    } else {
        status.as_str()
    };
    record_outcome(extractor, outcome);
    match &final_result {
        FinalResult::Completed(_) => {
            tracing::info!(%call_id, joined = terminal.is_some(), "result stored")
        }
        FinalResult::Failed(error) => {
            tracing::info!(%call_id, joined = terminal.is_some(), result_error = %error, "result failed")
        }
    }
    Ok(Outcome::Stored {
        call: Box::new(call),
        terminal: terminal.map(Box::new),
    })
}

/// What is left to do for a call whose result is pending.
enum Work {
    /// The result follows from the call itself.
    Decided(FinalResult),
    /// The extractor must read the transcript.
    Extract {
        schema: ReturnsSchema,
        transcript: Vec<Utterance>,
    },
}

async fn plan_work(conn: &mut sqlx::PgConnection, call: &Call) -> Result<Work, StepError> {
    if call.answered_at.is_none() {
        return Ok(Work::Decided(FinalResult::Failed(format!(
            "The call was not answered ({}), so nothing was extracted.",
            call.status
        ))));
    }
    let Some(returns) = &call.returns else {
        return Ok(Work::Decided(FinalResult::Completed(Value::Object(
            Default::default(),
        ))));
    };
    let schema = match ReturnsSchema::parse(returns) {
        Ok(schema) => schema,
        Err(error) => {
            return Ok(Work::Decided(FinalResult::Failed(format!(
                "The call's returns schema could not be read ({error}), so nothing was extracted."
            ))));
        }
    };
    let all_null = FinalResult::Completed(Value::Object(schema.null_result()));
    // A voicemail (a message left or not) holds no answers.
    if call.answered_by.as_deref() == Some("machine") {
        return Ok(Work::Decided(all_null));
    }
    let transcript = store::load_transcript(conn, call.id).await?;
    if !transcript.iter().any(|u| u.speaker == Speaker::Callee) {
        return Ok(Work::Decided(all_null));
    }
    Ok(Work::Extract { schema, transcript })
}

async fn run_extractor<E: Extractor>(
    extractor: &E,
    call: &Call,
    schema: &ReturnsSchema,
    transcript: &[Utterance],
) -> FinalResult {
    let call_date = call.answered_at.unwrap_or(call.created_at).date_naive();
    let request = ExtractionRequest {
        schema,
        transcript,
        language: call.language,
        call_date,
        prompt: &call.prompt,
    };
    let started = Instant::now();
    let final_result = match extractor.extract(&request).await {
        Ok(result) => match schema.validate_result(&result) {
            Ok(()) => FinalResult::Completed(result),
            Err(error) => FinalResult::Failed(format!(
                "Extraction failed: the {} extractor's answer does not match the returns schema ({error}), so no result was stored.",
                extractor.name()
            )),
        },
        Err(error) => FinalResult::Failed(format!("Extraction failed: {error}.")),
    };
    let label = match final_result {
        FinalResult::Completed(_) => "completed",
        FinalResult::Failed(_) => "failed",
    };
    metrics::histogram!(
        "ringer_extraction_duration_seconds",
        "extractor" => extractor.name(),
        "outcome" => label
    )
    .record(started.elapsed().as_secs_f64());
    final_result
}

fn record_outcome<E: Extractor>(extractor: &E, outcome: &'static str) {
    metrics::counter!(
        "ringer_extractions_total",
        "extractor" => extractor.name(),
        "outcome" => outcome
    )
    .increment(1);
}

/// The step the consume loop runs for each message on the `extractor` queue.
pub struct ExtractorStep<E> {
    db: PgPool,
    extractor: Arc<E>,
}

impl<E> ExtractorStep<E> {
    pub fn new(db: PgPool, extractor: Arc<E>) -> Self {
        Self { db, extractor }
    }
}

impl<E: Extractor> Step for ExtractorStep<E> {
    type Message = Event;

    async fn handle(&self, event: Event, _info: DeliveryInfo) -> Result<(), StepError> {
        if event.event_type != EventType::CallEnded {
            return Err(StepError::Poison(anyhow!(
                "the extractor queue received {}, not {}",
                event.event_type,
                EventType::CallEnded
            )));
        }
        extract_call_result(&self.db, &*self.extractor, event.call_id)
            .await
            .map(|_| ())
    }
}
