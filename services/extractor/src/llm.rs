//! The LLM extractor: any OpenAI-compatible `/chat/completions` endpoint, asked
//! for a structured output whose JSON Schema is built from `returns`.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use ringer::retry::{Failure, RetryError, RetryPolicy, retry};
use ringer::returns::{FieldKind, FieldSpec};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::extraction::{ExtractionError, ExtractionRequest, Extractor, Speaker};

/// Name of the structured-output schema sent with each request.
const SCHEMA_NAME: &str = "call_result";
/// Longest excerpt of an error response kept in `result_error`.
const BODY_EXCERPT_CHARS: usize = 200;

const SYSTEM_PROMPT: &str = "\
You read the transcript of a phone call that an AI agent made, and extract the answers \
the person called (the callee) gave. Answer with one JSON object holding exactly the \
requested fields.
- Use only what the callee said or clearly agreed to; the agent's own words are not answers.
- When the callee corrected themselves, use their final answer.
- Use null when the callee did not give a value, refused, or did not know.
- Write dates as YYYY-MM-DD and date-times as RFC 3339 with an offset (Z when no time zone \
was given); resolve relative expressions (\"next Friday\", \"mañana\") against the call date.
- An enum field takes one of its listed options, spelled exactly.
- A text field keeps the callee's words, in the language they spoke.";

/// Where and how to reach the endpoint.
#[derive(Clone)]
pub struct LlmSettings {
    /// Base URL of the API, up to and without `/chat/completions` (`https://api.openai.com/v1`).
    pub base_url: String,
    pub model: String,
    /// Sent as a bearer token when set.
    pub api_key: Option<String>,
    /// Limit on one request, from connecting to the last byte of the answer.
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

impl fmt::Debug for LlmSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmSettings")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

pub struct LlmExtractor {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
    retry: RetryPolicy,
}

impl LlmExtractor {
    pub fn new(settings: LlmSettings) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(&settings.base_url)
            .with_context(|| format!("RINGER_LLM_BASE_URL {:?} is not a URL", settings.base_url))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!(
                "RINGER_LLM_BASE_URL {:?} must be an http or https URL",
                settings.base_url
            );
        }
        let endpoint = reqwest::Url::parse(&format!(
            "{}/chat/completions",
            settings.base_url.trim_end_matches('/')
        ))?;
        if settings.model.trim().is_empty() {
            bail!("RINGER_LLM_MODEL must name the model to use");
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .build()
            .context("building the HTTP client of the LLM extractor")?;
        Ok(Self {
            client,
            endpoint,
            model: settings.model,
            api_key: settings.api_key,
            timeout: settings.timeout,
            retry: settings.retry,
        })
    }

    /// The chat-completions request body for `request`.
    pub fn request_body(&self, request: &ExtractionRequest<'_>) -> Value {
        json!({
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user_message(request)},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": SCHEMA_NAME,
                    "strict": true,
                    "schema": request.schema.to_json_schema(),
                },
            },
        })
    }

    async fn complete(&self, body: &Value) -> Result<ChatCompletion, RetryError<String>> {
        retry(&self.retry, |attempt| async move {
            let outcome = self.attempt(body).await;
            let label = match &outcome {
                Ok(_) => "ok",
                Err(Failure::Transient { .. }) => "retryable_error",
                Err(Failure::Permanent(_)) => "error",
            };
            metrics::counter!("ringer_llm_requests_total", "outcome" => label).increment(1);
            if let Err(Failure::Transient { error, .. } | Failure::Permanent(error)) = &outcome {
                tracing::warn!(attempt, %error, "LLM request failed");
            }
            outcome
        })
        .await
    }

    async fn attempt(&self, body: &Value) -> Result<ChatCompletion, Failure<String>> {
        let mut request = self.client.post(self.endpoint.clone()).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|error| Failure::transient(self.describe(&error)))?;
        let status = response.status();
        if status.is_success() {
            let text = response
                .text()
                .await
                .map_err(|error| Failure::transient(self.describe(&error)))?;
            return serde_json::from_str::<ChatCompletion>(&text).map_err(|error| {
                Failure::permanent(format!(
                    "HTTP {status} with a body that is not a chat completion ({error})"
                ))
            });
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        let error = format!("HTTP {status}{}", excerpt(&body));
        let retryable = status.is_server_error()
            || matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT | StatusCode::CONFLICT
            );
        Err(if retryable {
            Failure::Transient { error, retry_after }
        } else {
            Failure::permanent(error)
        })
    }

    fn describe(&self, error: &reqwest::Error) -> String {
        if error.is_timeout() {
            format!("no answer within {:?}", self.timeout)
        } else if error.is_connect() {
            format!("could not connect to {}", self.endpoint)
        } else {
            ringer::error_chain(error)
        }
    }
}

impl Extractor for LlmExtractor {
    fn name(&self) -> &'static str {
        "llm"
    }

    fn extract(
        &self,
        request: &ExtractionRequest<'_>,
    ) -> impl Future<Output = Result<Value, ExtractionError>> + Send {
        let body = self.request_body(request);
        async move {
            let completion =
                self.complete(&body)
                    .await
                    .map_err(|failure| ExtractionError::EndpointFailed {
                        attempts: failure.attempts,
                        last_error: failure.error,
                    })?;
            if let Some(usage) = &completion.usage {
                metrics::counter!("ringer_llm_tokens_total", "kind" => "prompt")
                    .increment(usage.prompt_tokens);
                metrics::counter!("ringer_llm_tokens_total", "kind" => "completion")
                    .increment(usage.completion_tokens);
            }
            read_answer(completion)
        }
    }
}

/// The JSON object of the first choice, or why there is none.
fn read_answer(completion: ChatCompletion) -> Result<Value, ExtractionError> {
    let Some(choice) = completion.choices.into_iter().next() else {
        return Err(ExtractionError::OffSchema(
            "the answer holds no choices".to_owned(),
        ));
    };
    if let Some(refusal) = choice.message.refusal.filter(|r| !r.trim().is_empty()) {
        return Err(ExtractionError::Refused(truncate(&refusal)));
    }
    let content = choice.message.content.unwrap_or_default();
    let json_text = strip_code_fence(content.trim());
    if json_text.is_empty() {
        return Err(ExtractionError::OffSchema("the answer is empty".to_owned()));
    }
    match serde_json::from_str::<Value>(json_text) {
        Ok(value) => Ok(value),
        Err(error) if choice.finish_reason.as_deref() == Some("length") => {
            Err(ExtractionError::OffSchema(format!(
                "the answer was cut off at the token limit and is not valid JSON ({error})"
            )))
        }
        Err(error) => Err(ExtractionError::OffSchema(format!(
            "the answer is not valid JSON ({error}): {:?}",
            truncate(json_text)
        ))),
    }
}

/// Endpoints that ignore `response_format` often wrap JSON in a Markdown fence.
fn strip_code_fence(text: &str) -> &str {
    let Some(inner) = text.strip_prefix("```") else {
        return text;
    };
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    inner.strip_suffix("```").unwrap_or(inner).trim()
}

fn user_message(request: &ExtractionRequest<'_>) -> String {
    let mut message = format!(
        "Call date: {} ({})\nConversation language: {}\nThe agent's task: {}\n\nFields to extract:\n",
        request.call_date.format("%Y-%m-%d"),
        request.call_date.format("%A"),
        request.language,
        request.prompt.trim(),
    );
    for field in &request.schema.fields {
        message.push_str(&describe_field(field));
        message.push('\n');
    }
    message.push_str("\nTranscript:\n");
    for utterance in request.transcript {
        let speaker = match utterance.speaker {
            Speaker::Agent => "Agent",
            Speaker::Callee => "Callee",
        };
        message.push_str(speaker);
        message.push_str(": ");
        message.push_str(utterance.text.trim());
        message.push('\n');
    }
    message
}

fn describe_field(field: &FieldSpec) -> String {
    let kind = match &field.kind {
        FieldKind::Enum(options) => format!("one of: {}", options.join(", ")),
        FieldKind::Date => "date, YYYY-MM-DD".to_owned(),
        FieldKind::DateTime => "date-time, RFC 3339".to_owned(),
        other => other.type_name().to_owned(),
    };
    match &field.description {
        Some(description) => format!("- {} ({kind}): {description}", field.name),
        None => format!("- {} ({kind})", field.name),
    }
}

fn excerpt(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        String::new()
    } else {
        format!(": {}", truncate(body))
    }
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= BODY_EXCERPT_CHARS {
        text.to_owned()
    } else {
        let prefix: String = text.chars().take(BODY_EXCERPT_CHARS).collect();
        format!("{prefix}…")
    }
}

#[derive(Debug, Deserialize)]
struct ChatCompletion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: Message,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(content: &str, finish_reason: &str) -> ChatCompletion {
        serde_json::from_value(json!({
            "choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}]
        }))
        .unwrap()
    }

    #[test]
    fn reads_json_with_or_without_a_fence() {
        assert_eq!(
            read_answer(completion("{\"a\": 1}", "stop")),
            Ok(json!({"a": 1}))
        );
        assert_eq!(
            read_answer(completion("```json\n{\"a\": 1}\n```", "stop")),
            Ok(json!({"a": 1}))
        );
    }

    #[test]
    fn explains_answers_that_are_not_json() {
        let error = read_answer(completion("The party size is four.", "stop")).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "the LLM answered off-schema: the answer is not valid JSON (expected value"
            ),
            "{error}"
        );
        let error = read_answer(completion("{\"a\": ", "length")).unwrap_err();
        assert!(error.to_string().contains("cut off"), "{error}");
        let error = read_answer(completion("  ", "stop")).unwrap_err();
        assert_eq!(
            error,
            ExtractionError::OffSchema("the answer is empty".into())
        );
    }

    #[test]
    fn reports_refusals() {
        let refused: ChatCompletion = serde_json::from_value(json!({
            "choices": [{"message": {"content": null, "refusal": "I can't help with that."}}]
        }))
        .unwrap();
        assert_eq!(
            read_answer(refused),
            Err(ExtractionError::Refused("I can't help with that.".into()))
        );
    }

    #[test]
    fn debug_never_shows_the_api_key() {
        let settings = LlmSettings {
            base_url: "http://127.0.0.1:1/v1".into(),
            model: "m".into(),
            api_key: Some("sk-secret".into()),
            timeout: Duration::from_secs(1),
            retry: RetryPolicy::new(1, Duration::ZERO),
        };
        assert!(!format!("{settings:?}").contains("sk-secret"));
    }
}
