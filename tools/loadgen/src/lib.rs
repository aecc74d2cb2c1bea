//! loadgen: drives ringer's public API like a fleet of clients and audits
//! what the whole system did with the load.
//!
//! - [`audit`]: the checks, over plain data (unit-tested with injected faults).
//! - [`receiver`]: the webhook receiver that verifies both signatures.
//! - [`run`]: `loadgen run` — orgs, endpoints, calls, waiting, collection, report.

pub mod audit;
pub mod broker_floor;
pub mod receiver;
pub mod run;
