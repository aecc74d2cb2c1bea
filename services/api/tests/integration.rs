//! Integration tests of the api against the real Postgres and RabbitMQ.

mod bad_input;
mod calls;
mod helpers;
mod money;
mod numbers;
mod twilio_numbers;
mod webhooks;
