//! Integration tests of the dialer against the real Postgres and RabbitMQ.

mod helpers;

mod cancel;
mod limits;
mod llm_agent;
mod lost;
mod outcomes;
mod shutdown;
mod twilio;
mod twilio_wiring;
