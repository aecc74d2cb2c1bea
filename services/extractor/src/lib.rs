//! The extractor service: on `internal.call.ended` it reads the call's
//! `result` from the transcript (built-in extractor or an LLM), stores it
//! with `internal.call.result_ready`, and closes the completion join.

pub mod builtin;
pub mod extraction;
pub mod llm;
pub mod step;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ringer::broker::EXTRACTOR_QUEUE;
use ringer::config::Secret;
use ringer::retry::RetryPolicy;
use tokio_util::sync::CancellationToken;

pub use crate::extraction::{BuiltinExtractor, ExtractionError, ExtractionRequest, Extractor};
pub use crate::llm::{LlmExtractor, LlmSettings};
pub use crate::step::{ExtractorStep, Outcome, extract_call_result};

pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8082);

/// Which extractor reads the transcripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExtractorKind {
    /// Deterministic, embedded, no network.
    Builtin,
    /// An OpenAI-compatible chat-completions endpoint with structured outputs.
    Llm,
}

/// Settings of the extractor service.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ringer-extractor",
    about = "ringer's extractor: call results from transcripts"
)]
pub struct Config {
    #[command(flatten)]
    pub common: ringer::config::CommonConfig,

    /// Extractor to use: builtin (deterministic, embedded) or llm (OpenAI-compatible endpoint).
    #[arg(long, env = "RINGER_EXTRACTOR", value_enum, default_value = "builtin")]
    pub extractor: ExtractorKind,

    /// Base URL of the OpenAI-compatible API, without `/chat/completions` (required for llm).
    #[arg(long, env = "RINGER_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,

    /// Model name sent with each request (required for llm).
    #[arg(long, env = "RINGER_LLM_MODEL")]
    pub llm_model: Option<String>,

    /// Bearer token for the LLM endpoint (optional for local endpoints).
    #[arg(long, env = "RINGER_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<Secret>,

    /// Limit on one LLM request, in seconds.
    #[arg(long, env = "RINGER_LLM_TIMEOUT_SECONDS", default_value_t = 20)]
    pub llm_timeout_seconds: u64,

    /// Retries of a failed LLM request (server errors, 429, timeouts) before the result fails.
    #[arg(long, env = "RINGER_LLM_MAX_RETRIES", default_value_t = 3)]
    pub llm_max_retries: u32,

    /// Pause before the first LLM retry, in milliseconds (doubling after each; scaled by RINGER_TIME_SCALE).
    #[arg(long, env = "RINGER_LLM_RETRY_INITIAL_MS", default_value_t = 500)]
    pub llm_retry_initial_ms: u64,
}

impl Config {
    /// The defaults around a common config (tests, tools).
    pub fn with_common(common: ringer::config::CommonConfig) -> Self {
        Self {
            common,
            extractor: ExtractorKind::Builtin,
            llm_base_url: None,
            llm_model: None,
            llm_api_key: None,
            llm_timeout_seconds: 20,
            llm_max_retries: 3,
            llm_retry_initial_ms: 500,
        }
    }

    /// The LLM settings, checked: a missing base URL or model stops start-up.
    pub fn llm_settings(&self) -> anyhow::Result<LlmSettings> {
        let base_url = self
            .llm_base_url
            .clone()
            .filter(|url| !url.trim().is_empty())
            .context("RINGER_LLM_BASE_URL is required when RINGER_EXTRACTOR=llm")?;
        let model = self
            .llm_model
            .clone()
            .filter(|model| !model.trim().is_empty())
            .context("RINGER_LLM_MODEL is required when RINGER_EXTRACTOR=llm")?;
        if self.llm_timeout_seconds == 0 {
            anyhow::bail!("RINGER_LLM_TIMEOUT_SECONDS must be at least 1");
        }
        let retry = RetryPolicy::new(
            self.llm_max_retries.saturating_add(1),
            Duration::from_millis(self.llm_retry_initial_ms),
        )
        .scaled(self.common.time_scale);
        Ok(LlmSettings {
            base_url,
            model,
            api_key: self.llm_api_key.as_ref().map(|key| key.expose().to_owned()),
            timeout: Duration::from_secs(self.llm_timeout_seconds),
            retry,
        })
    }
}

/// Runs the extractor until `shutdown`: consumes `extractor`, relays the outbox,
/// serves the operational routes.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    match config.extractor {
        ExtractorKind::Builtin => run_with(config, BuiltinExtractor, shutdown).await,
        ExtractorKind::Llm => {
            let extractor = LlmExtractor::new(config.llm_settings()?)?;
            run_with(config, extractor, shutdown).await
        }
    }
}

/// [`run`] with a given extractor.
pub async fn run_with<E: Extractor>(
    config: Config,
    extractor: E,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(extractor = extractor.name(), "extractor starting");
    let extractor = Arc::new(extractor);
    let common = config.common;
    let (prefetch, grace) = (common.prefetch, common.shutdown_grace());
    ringer::service::run_worker(
        &common,
        "extractor",
        DEFAULT_ADDR,
        shutdown,
        |infra, shutdown| async move {
            let queue = infra.broker.names().queue(EXTRACTOR_QUEUE);
            let step = Arc::new(ExtractorStep::new(infra.db.clone(), extractor));
            ringer::consumer::run(&infra.broker, &queue, prefetch, grace, step, shutdown).await
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["ringer-extractor", "--database-url", "postgres://x/y"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("valid arguments")
    }

    #[test]
    fn llm_needs_a_base_url_and_a_model() {
        let config = parse(&["--extractor", "llm"]);
        let error = config.llm_settings().unwrap_err();
        assert_eq!(
            error.to_string(),
            "RINGER_LLM_BASE_URL is required when RINGER_EXTRACTOR=llm"
        );
        let config = parse(&["--extractor", "llm", "--llm-base-url", "http://h/v1"]);
        assert!(
            config
                .llm_settings()
                .unwrap_err()
                .to_string()
                .contains("RINGER_LLM_MODEL")
        );
    }

    #[test]
    fn llm_settings_carry_retries_and_timeout() {
        let config = parse(&[
            "--extractor",
            "llm",
            "--llm-base-url",
            "http://h/v1",
            "--llm-model",
            "m",
            "--llm-api-key",
            "sk-secret",
            "--llm-max-retries",
            "2",
        ]);
        assert!(!format!("{config:?}").contains("sk-secret"));
        let settings = config.llm_settings().unwrap();
        assert_eq!(settings.retry.max_attempts, 3);
        assert_eq!(settings.timeout, Duration::from_secs(20));
        assert_eq!(settings.api_key.as_deref(), Some("sk-secret"));
    }
}
