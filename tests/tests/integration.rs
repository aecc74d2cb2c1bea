//! End to end: HTTP in, a simulated phone call, a typed result, a settled
//! charge, and signed webhooks out, with all five services running.

mod lifecycle;
mod operations;
