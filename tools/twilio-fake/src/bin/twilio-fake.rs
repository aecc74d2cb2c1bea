//! `twilio-fake`: a local stand-in for Twilio's API, for `RINGER_CARRIER=twilio-fake`.
//!
//! Settings: `TWILIO_FAKE_ADDR` (default 127.0.0.1:8300), `RINGER_TWILIO_ACCOUNT_SID`
//! and `RINGER_TWILIO_AUTH_TOKEN` (the same the dialer uses; defaults
//! `ACfake` / `fake-token`), `TWILIO_FAKE_RING_MS` (default 2000). Destination
//! numbers pick the callee as documented on `Scenario::for_number`; the phone
//! numbers for sale are listed in the `numbers` module.

use std::time::Duration;

use twilio_fake::{FakeConfig, FakeTwilio};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let addr = env("TWILIO_FAKE_ADDR", "127.0.0.1:8300");
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|error| anyhow::anyhow!("TWILIO_FAKE_ADDR {addr:?} is not an address: {error}"))?;
    let ring_ms: u64 = env("TWILIO_FAKE_RING_MS", "2000")
        .parse()
        .map_err(|error| anyhow::anyhow!("TWILIO_FAKE_RING_MS: {error}"))?;
    let config = FakeConfig {
        account_sid: env("RINGER_TWILIO_ACCOUNT_SID", "ACfake"),
        auth_token: env("RINGER_TWILIO_AUTH_TOKEN", "fake-token"),
        ring: Duration::from_millis(ring_ms),
    };
    let fake = FakeTwilio::start_on(addr, config).await?;
    eprintln!(
        "twilio-fake: REST API at {} (RINGER_TWILIO_API_BASE)",
        fake.base_url
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
