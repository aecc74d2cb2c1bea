//! Integration tests of the extractor against the real Postgres and RabbitMQ,
//! with a local fake of the LLM endpoint.

mod e2e;
mod helpers;
mod join;
mod llm;
mod step;
mod writer;
