//! The api service: the public HTTP API of API.md.

pub mod balance;
pub mod calls;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod middleware;
pub mod numbers;
pub mod openapi;
pub mod pagination;
pub mod rate_limit;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, StatusCode};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;

use ringer::config::CarrierKind;

use crate::error::ApiError;
use crate::numbers::inventory::NumberInventory;
use crate::numbers::twilio::TwilioNumbersArgs;
use crate::rate_limit::RateLimiter;

/// Settings of the api service.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ringer-api", about = "ringer's public HTTP API")]
pub struct Config {
    #[command(flatten)]
    pub common: ringer::config::CommonConfig,

    /// Default price of connected time per minute, in milli-cents (orgs may override).
    #[arg(
        long,
        env = "RINGER_RATE_PER_MINUTE_MILLI_CENTS",
        default_value_t = 5000
    )]
    pub rate_per_minute_milli_cents: i64,

    /// `max_duration_seconds` of a call that does not set one.
    #[arg(
        long,
        env = "RINGER_DEFAULT_MAX_DURATION_SECONDS",
        default_value_t = 600
    )]
    pub default_max_duration_seconds: i32,

    /// The largest `max_duration_seconds` a call may ask for.
    #[arg(
        long,
        env = "RINGER_MAX_DURATION_CEILING_SECONDS",
        default_value_t = 3600
    )]
    pub max_duration_ceiling_seconds: i32,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "RINGER_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// Requests per second allowed per organisation (bursts up to twice that); 0 disables.
    #[arg(long, env = "RINGER_RATE_LIMIT_PER_SECOND", default_value_t = 200)]
    pub rate_limit_per_second: u32,

    /// Carrier whose numbers `/v1/numbers` searches, buys and releases (the dialer's setting).
    #[arg(long, env = "RINGER_CARRIER", value_enum, default_value = "simulated")]
    pub carrier: CarrierKind,

    #[command(flatten)]
    pub twilio: TwilioNumbersArgs,
}

impl Config {
    /// The defaults around a common config (tests, tools).
    pub fn with_common(common: ringer::config::CommonConfig) -> Self {
        Self {
            common,
            rate_per_minute_milli_cents: 5000,
            default_max_duration_seconds: 600,
            max_duration_ceiling_seconds: 3600,
            max_body_bytes: 256 * 1024,
            rate_limit_per_second: 200,
            carrier: CarrierKind::Simulated,
            twilio: TwilioNumbersArgs::default(),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub rate_limiter: Arc<RateLimiter>,
    /// Where `/v1/numbers` buys numbers.
    pub numbers: Arc<dyn NumberInventory>,
}

pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// The public API routes with their middleware (no operational routes).
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("request-id");
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .merge(calls::routes())
        .merge(numbers::routes())
        .merge(balance::routes())
        .merge(webhooks::routes())
        .route("/v1/openapi.json", axum::routing::get(openapi::serve))
        .fallback(|| async {
            ApiError::not_found("route", "the requested path; see /v1/openapi.json")
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::MethodNotAllowed {
                method: method.to_string(),
            }
        })
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(middleware::trace_and_measure))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Runs the api until `shutdown`: the HTTP API and the operational routes on
/// one listener, plus the outbox relay.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (addr, handle) = start(config, shutdown).await?;
    tracing::info!(%addr, "api ready");
    handle.await?
}

/// Starts the api and returns its bound address (port 0 in tests picks a free one).
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let numbers =
        numbers::inventory::from_config(config.carrier, &config.twilio, config.common.time_scale)?;
    let infra = ringer::service::Infrastructure::connect(&config.common, "api").await?;
    let state = AppState {
        db: infra.db.clone(),
        rate_limiter: Arc::new(RateLimiter::new(config.rate_limit_per_second)),
        config: Arc::new(config.clone()),
        numbers,
    };
    let app = router(state).merge(ringer::ops::router(infra.readiness(&shutdown)));
    let (addr, http) =
        ringer::service::spawn_http(config.common.http_addr, DEFAULT_ADDR, app, &shutdown).await?;
    let relay = infra.spawn_outbox_relay(&config.common, &shutdown);
    let watch = infra.watch_broker(&shutdown);
    let handle = tokio::spawn(async move {
        let served = http.await;
        shutdown.cancel();
        let _ = relay.await;
        let connection = watch.finish();
        infra.close().await;
        connection?;
        served??;
        Ok(())
    });
    Ok((addr, handle))
}
