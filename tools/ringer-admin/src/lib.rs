//! ringer-admin's operations, as a library so that the integration tests run
//! the same code as the command line: dead-letter queues, the outbox, stuck calls.

pub mod calls;
pub mod dlq;
pub mod headers;
pub mod ledger;
pub mod outbox;
pub mod table;
