//! `fake-llm`: serves the interviewer script on `FAKE_LLM_ADDR` (default
//! 127.0.0.1:8200), so that `RINGER_AGENT=llm` runs without a real model:
//! `RINGER_LLM_BASE_URL=http://127.0.0.1:8200/v1 RINGER_LLM_MODEL=fake`.

use fake_llm::{FakeLlm, Reply};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("FAKE_LLM_ADDR").unwrap_or_else(|_| "127.0.0.1:8200".to_owned());
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|error| anyhow::anyhow!("FAKE_LLM_ADDR {addr:?} is not an address: {error}"))?;
    let fake = FakeLlm::start_on(addr, Vec::new(), Reply::Interviewer).await?;
    eprintln!("fake-llm: OpenAI-compatible API at {}", fake.base_url);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
