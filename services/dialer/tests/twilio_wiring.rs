//! `ringer_dialer::run` as `make up` runs it with `RINGER_CARRIER=twilio-fake`
//! and `RINGER_AGENT=llm`: the Twilio routes on their own listener, the LLM
//! agent streaming through the carrier, tools/twilio-fake and tools/fake-llm.

use std::time::Duration;

use fake_llm::{FakeLlm, Reply};
use ringer::call::CallStatus;
use ringer::testing::{insert_queued_call, new_call, random_namespace, seed_org};
use ringer_dialer::llm_agent::LlmAgentArgs;
use ringer_dialer::twilio::TwilioArgs;
use ringer_dialer::{AgentKind, CarrierKind};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use twilio_fake::{EndedBy, FakeTwilio, Scenario};

use crate::helpers::*;
use crate::twilio::{ACCOUNT_SID, AUTH_TOKEN, number};

#[sqlx::test(migrations = "../../migrations")]
async fn the_configured_twilio_fake_and_llm_agent_hold_a_call(pool: PgPool) {
    let namespace = random_namespace();
    let test = test_broker(&namespace, 0.0).await;
    let org = seed_org(&pool, 100_000_000).await;
    let fake = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let llm = FakeLlm::start_on(
        "127.0.0.1:0".parse().unwrap(),
        Vec::new(),
        Reply::Interviewer,
    )
    .await
    .unwrap();
    let to = number(500);
    fake.script(&to, Scenario::human(&["Hello?", "Yes.", "It's 3pm."]));

    // A free port for the Twilio listener (RINGER_TWILIO_HTTP_ADDR).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = dialer_config(&pool, &namespace, 0.0);
    config.carrier = CarrierKind::TwilioFake;
    config.agent = AgentKind::Llm;
    config.twilio = TwilioArgs::new(
        ACCOUNT_SID,
        AUTH_TOKEN,
        &format!("http://127.0.0.1:{port}"),
        &fake.base_url,
    );
    config.twilio.twilio_http_addr = ([127, 0, 0, 1], port).into();
    config.twilio.twilio_silence_ms = 300;
    config.llm = LlmAgentArgs {
        llm_base_url: Some(llm.base_url.clone()),
        llm_model: Some("fake".to_owned()),
        ..LlmAgentArgs::default()
    };

    // Stored as jsonb, `returns` comes back in jsonb's key order: confirmed first.
    let mut new = new_call(&org, &to);
    new.returns = Some(json!({"preferred_time": "string", "confirmed": "boolean"}));
    let call = insert_queued_call(&pool, &new).await;
    let shutdown = CancellationToken::new();
    let dialer = tokio::spawn(ringer_dialer::run(config, shutdown.clone()));

    let row = wait_until_ended(&pool, call.id, Duration::from_secs(20)).await;
    let placed = fake
        .wait_for(&to, Duration::from_secs(5), |call| call.is_over())
        .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), dialer)
        .await
        .expect("the dialer stops")
        .unwrap()
        .expect("the dialer stops cleanly");

    assert_eq!(row.call.status, CallStatus::InProgress);
    assert_eq!(row.call.hangup_cause.as_deref(), Some("completed"));
    assert_eq!(placed.ended_by, Some(EndedBy::RelayEnd));
    let said: Vec<(String, String)> = transcript(&pool, call.id)
        .await
        .into_iter()
        .map(|s| (s.role, s.text))
        .collect();
    let said: Vec<(&str, &str)> = said.iter().map(|(r, t)| (r.as_str(), t.as_str())).collect();
    assert_eq!(
        said,
        [
            ("callee", "Hello?"),
            (
                "agent",
                "Hello, this is an automated assistant calling. Could you tell me your confirmed?"
            ),
            ("callee", "Yes."),
            ("agent", "Could you tell me your preferred time?"),
            ("callee", "It's 3pm."),
            ("agent", "Thank you, that's everything I needed. Goodbye!"),
        ]
    );
    test.cleanup().await;
}
