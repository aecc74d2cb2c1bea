//! Integration tests of the webhook-dispatcher against the real Postgres and
//! RabbitMQ, with local HTTP receivers.

mod batches;
mod crash;
mod delivery;
mod failures;
mod first_attempts;
mod helpers;
