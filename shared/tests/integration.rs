//! Integration tests of the shared crate against the real Postgres and RabbitMQ.

mod outbox;
mod topology;
