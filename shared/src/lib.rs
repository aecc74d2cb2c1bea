//! The shared library of ringer's five services: configuration, database,
//! broker topology, events, the outbox and its relay, the consume loop, the
//! Call model, money, telemetry and shutdown.

pub mod batch;
pub mod broker;
pub mod call;
pub mod config;
pub mod consumer;
pub mod db;
pub mod events;
pub mod ledger;
pub mod money;
pub mod ops;
pub mod orgs;
pub mod outbox;
pub mod retry;
pub mod returns;
pub mod service;
pub mod shutdown;
pub mod signing;
pub mod telemetry;
pub mod twilio;
pub mod url_guard;

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

/// An error and its causes, outermost first, joined by `": "`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
