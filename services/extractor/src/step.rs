//! The extractor's worker step: on `internal.call.ended`, decide the call's
//! final result, store it with `internal.call.result_ready`, and close the
//! completion join, all in one transaction.
//!
//! In the service, the writes of results decided at the same time share that
//! transaction (a [`ResultWriter`]): one commit, and one WAL flush, for many
//! calls. Each call's writes still happen, and are guarded, as if alone.

use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use ringer::batch::{Batcher, together_or_alone};
use ringer::call::{Call, NumberedCall, OwnedCall, ResultStatus};
use ringer::consumer::{DeliveryInfo, Step, StepError};
use ringer::events::{Event, EventType};
use ringer::returns::ReturnsSchema;
use ringer::telemetry::{self, TraceContext};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
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

impl FinalResult {
    fn columns(&self) -> (ResultStatus, Option<&Value>, Option<&str>) {
        match self {
            FinalResult::Completed(result) => (ResultStatus::Completed, Some(result), None),
            FinalResult::Failed(error) => (ResultStatus::Failed, None, Some(error.as_str())),
        }
    }
}

/// A decided result, waiting to be written, with the trace of its call.
struct ResultWrite {
    call_id: Uuid,
    final_result: FinalResult,
    trace: Option<TraceContext>,
}

/// What writing a result did: the call as stored and its terminal event when
/// the write closed the completion join; None when the result was already final.
type Written = Option<(NumberedCall, Option<Event>)>;

/// Results written at most per transaction, and such transactions at once.
const WRITE_BATCH_MAX: usize = 64;
const WRITES_IN_FLIGHT: usize = 2;

/// Writes the results of concurrent extractions together: one transaction
/// (and commit) per batch, each call's statements inside it as they would
/// run alone. A batch that fails is written again call by call, so one call
/// that cannot be written fails alone.
pub struct ResultWriter {
    batches: Batcher<ResultWrite, anyhow::Result<Written>>,
}

impl ResultWriter {
    pub fn start(db: PgPool) -> Self {
        let batches = Batcher::spawn(
            "extractor_result",
            WRITE_BATCH_MAX,
            WRITES_IN_FLIGHT,
            move |writes: Vec<ResultWrite>| {
                let db = db.clone();
                async move {
                    let each =
                        together_or_alone(&writes, |writes| write_results(&db, writes)).await?;
                    Ok(each
                        .into_iter()
                        .map(|written| written.map_err(Into::into))
                        .collect())
                }
            },
        );
        Self { batches }
    }

    async fn write(&self, write: ResultWrite) -> Result<Written, StepError> {
        self.batches
            .call(write)
            .await
            .and_then(|written| written)
            .map_err(StepError::Transient)
    }
}

/// Writes `writes` in one transaction, in order of call id (so that two
/// batches lock their rows alike), each under its call's trace.
async fn write_results(db: &PgPool, writes: &[ResultWrite]) -> sqlx::Result<Vec<Written>> {
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by_key(|&index| writes[index].call_id);
    let mut written: Vec<Written> = (0..writes.len()).map(|_| None).collect();
    let mut tx = db.begin().await?;
    for index in order {
        let write = &writes[index];
        written[index] =
            telemetry::within_optional(write.trace, write_result(&mut tx, write)).await?;
    }
    tx.commit().await?;
    Ok(written)
}

/// Stores one result if it is still pending, with `internal.call.result_ready`,
/// and closes the completion join.
async fn write_result(conn: &mut PgConnection, write: &ResultWrite) -> sqlx::Result<Written> {
    let (status, result, error) = write.final_result.columns();
    let Some(stored) = store::store_result(conn, write.call_id, status, result, error).await?
    else {
        return Ok(None);
    };
    ringer::outbox::emit_numbered(
        conn,
        stored.owned.org_id,
        EventType::ResultReady,
        &stored.owned.call,
        stored.event_seq,
    )
    .await?;
    let terminal = ringer::call::close_completion_join(conn, write.call_id).await?;
    Ok(Some((stored, terminal)))
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
    extract(db, None, extractor, call_id).await
}

/// [`extract_call_result`], its write made by `writer` when there is one.
async fn extract<E: Extractor>(
    db: &PgPool,
    writer: Option<&ResultWriter>,
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

    let status = final_result.columns().0;
    let result_error = match &final_result {
        FinalResult::Completed(_) => None,
        FinalResult::Failed(error) => Some(error.clone()),
    };
    let write = ResultWrite {
        call_id,
        final_result,
        trace: telemetry::current(),
    };
    let written = match writer {
        Some(writer) => writer.write(write).await?,
        None => write_results(db, std::slice::from_ref(&write))
            .await?
            .pop()
            .flatten(),
    };
    let Some((
        NumberedCall {
            owned: OwnedCall { call, .. },
            ..
        },
        terminal,
    )) = written
    else {
        record_outcome(extractor, "duplicate");
        return Ok(Outcome::AlreadyFinal);
    };

    let outcome = if call.answered_at.is_none() {
        "not_answered"
    } else {
        status.as_str()
    };
    record_outcome(extractor, outcome);
    match result_error {
        None => tracing::info!(%call_id, joined = terminal.is_some(), "result stored"),
        Some(error) => {
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
    writer: ResultWriter,
    extractor: Arc<E>,
}

impl<E> ExtractorStep<E> {
    pub fn new(db: PgPool, extractor: Arc<E>) -> Self {
        Self {
            writer: ResultWriter::start(db.clone()),
            db,
            extractor,
        }
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
        extract(
            &self.db,
            Some(&self.writer),
            &*self.extractor,
            event.call_id,
        )
        .await
        .map(|_| ())
    }
}
