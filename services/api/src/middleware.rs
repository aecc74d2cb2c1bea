//! Per-request trace context and HTTP metrics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ringer::telemetry::{self, TraceContext};
use tracing::Instrument;

use crate::error::ApiError;

/// Continues the caller's W3C trace (or starts one), logs the request in a span
/// carrying the trace id, and records `ringer_http_requests_total` and
/// `ringer_http_request_duration_seconds` by route and status.
pub async fn trace_and_measure(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let trace = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse)
        .map_or_else(TraceContext::new_root, |parent| parent.child());
    let request_id = request
        .headers()
        .get("request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span = tracing::info_span!("request", %method, %route, %request_id, trace_id = %trace.trace_id_hex());
    let response = telemetry::within(trace, next.run(request))
        .instrument(span.clone())
        .await;
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    span.in_scope(|| tracing::debug!(%status, elapsed, "request finished"));
    metrics::counter!("ringer_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.clone())
        .increment(1);
    metrics::histogram!("ringer_http_request_duration_seconds", "method" => method, "route" => route, "status" => status)
        .record(elapsed);
    response
}

/// A handler panic still answers with the JSON error shape.
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}
