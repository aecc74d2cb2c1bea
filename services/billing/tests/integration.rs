//! Integration tests of the billing service against the real Postgres and RabbitMQ.

mod helpers;

mod buckets;
mod concurrency;
mod crash;
mod join;
mod settlement;
mod settler;
mod sweeper;
mod worker;
