//! The `Extractor` trait both extractors implement, what they are given, and
//! the built-in one (a thin adapter over [`crate::builtin`]).

use std::future::Future;

use chrono::NaiveDate;
use ringer::call::Language;
use ringer::returns::ReturnsSchema;
use serde_json::Value;

use crate::builtin;

/// Who said a line of the transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Speaker {
    Agent,
    Callee,
}

/// One line of the transcript (`call_transcripts`), in conversation order.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Utterance {
    #[sqlx(rename = "role")]
    pub speaker: Speaker,
    pub text: String,
}

impl Utterance {
    pub fn agent(text: impl Into<String>) -> Self {
        Self {
            speaker: Speaker::Agent,
            text: text.into(),
        }
    }

    pub fn callee(text: impl Into<String>) -> Self {
        Self {
            speaker: Speaker::Callee,
            text: text.into(),
        }
    }
}

/// Everything an extractor may use to read a call's result.
#[derive(Debug, Clone, Copy)]
pub struct ExtractionRequest<'a> {
    pub schema: &'a ReturnsSchema,
    pub transcript: &'a [Utterance],
    pub language: Language,
    /// The day the call took place (UTC): "next Friday" is read relative to it.
    pub call_date: NaiveDate,
    /// What the agent was asked to accomplish.
    pub prompt: &'a str,
}

/// Why an extractor produced no result. `Display` completes the sentence
/// "Extraction failed: …" stored in `result_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractionError {
    #[error(
        "the LLM endpoint did not answer successfully after {attempts} attempt{} (last error: {last_error})",
        if *attempts == 1 { "" } else { "s" }
    )]
    EndpointFailed { attempts: u32, last_error: String },
    #[error("the LLM answered off-schema: {0}")]
    OffSchema(String),
    #[error("the LLM refused to answer: {0}")]
    Refused(String),
}

/// Reads a call's `result` from its transcript. The returned value is checked
/// against the schema by the caller before anything is stored.
pub trait Extractor: Send + Sync + 'static {
    /// Short label for logs and metrics.
    fn name(&self) -> &'static str;

    fn extract(
        &self,
        request: &ExtractionRequest<'_>,
    ) -> impl Future<Output = Result<Value, ExtractionError>> + Send;
}

/// The deterministic, embedded extractor.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinExtractor;

impl BuiltinExtractor {
    /// Runs the built-in extractor synchronously (it never fails and never waits).
    pub fn extract_now(&self, request: &ExtractionRequest<'_>) -> Value {
        let turns: Vec<builtin::Turn> = request
            .transcript
            .iter()
            .map(|utterance| builtin::Turn {
                role: match utterance.speaker {
                    Speaker::Agent => builtin::Role::Agent,
                    Speaker::Callee => builtin::Role::Callee,
                },
                text: utterance.text.clone(),
            })
            .collect();
        let language = match request.language {
            Language::En => builtin::Language::En,
            Language::Es => builtin::Language::Es,
        };
        Value::Object(builtin::extract(
            request.schema,
            &turns,
            language,
            request.call_date,
        ))
    }
}

impl Extractor for BuiltinExtractor {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn extract(
        &self,
        request: &ExtractionRequest<'_>,
    ) -> impl Future<Output = Result<Value, ExtractionError>> + Send {
        std::future::ready(Ok(self.extract_now(request)))
    }
}
