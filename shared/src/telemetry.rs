//! Logging and W3C trace context.
//!
//! A `traceparent` arrives on an HTTP request (or is started there), is stored with
//! each outbox row, travels as an AMQP header, and is restored by the consumer loop,
//! so one trace id follows a call through every service's logs.

use std::io::IsTerminal;

use rand::RngExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber: JSON lines, or human-readable on a terminal.
/// `RUST_LOG` filters (default `info`; lapin's returned-message warnings are
/// off unless `RUST_LOG` names lapin).
pub fn init(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // lapin logs every message the broker returns as unroutable at WARN, with the
    // whole body; the outbox relay already accounts for them (informational
    // events nobody subscribes to are expected, others are retried and logged).
    if !std::env::var("RUST_LOG").is_ok_and(|directives| directives.contains("lapin")) {
        filter = filter.add_directive(
            "lapin::returned_messages=error"
                .parse()
                .expect("a valid directive"),
        );
    }
    let pretty = match format {
        LogFormat::Pretty => true,
        LogFormat::Json => false,
        LogFormat::Auto => std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already installed (tests), which is fine.
    let _ = if pretty {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}

/// A W3C trace context: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// Starts a new trace.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        Self {
            trace_id: rng.random(),
            span_id: rng.random(),
            sampled: true,
        }
    }

    /// The same trace, seen from a new span.
    pub fn child(&self) -> Self {
        Self {
            span_id: rand::rng().random(),
            ..*self
        }
    }

    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    pub fn to_header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The trace the current task works for, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|context| *context).ok()
}

/// Runs `future` as part of `context`'s trace.
pub async fn within<F: std::future::Future>(context: TraceContext, future: F) -> F::Output {
    CURRENT.scope(context, future).await
}

/// Runs `future` as part of `context`'s trace when there is one, else as it is.
pub async fn within_optional<F: std::future::Future>(
    context: Option<TraceContext>,
    future: F,
) -> F::Output {
    match context {
        Some(context) => within(context, future).await,
        None => future.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(header).expect("valid header");
        assert_eq!(context.to_header(), header);
        assert_eq!(context.child().trace_id, context.trace_id);
    }

    #[test]
    fn malformed_traceparent_is_ignored() {
        for header in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(header), None, "{header}");
        }
    }
}
