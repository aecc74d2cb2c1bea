//! Integration tests of ringer-admin against the real Postgres and RabbitMQ.

mod dlq;
mod helpers;
mod ops;
