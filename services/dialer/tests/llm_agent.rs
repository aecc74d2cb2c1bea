//! The LLM agent against tools/fake-llm: turns, streaming, tools (read, and
//! confirm-first-write only after consent), fallback lines when the model
//! fails; and a whole call through the Twilio fake with an interruption and a
//! model failure mid-call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use fake_llm::{FakeLlm, Reply};
use ringer::call::{Call, CallStatus};
use ringer::testing::{insert_queued_call, new_call, random_namespace, seed_org};
use ringer_dialer::agent::{Agent, AgentTurn, Conversation};
use ringer_dialer::carrier::Heard;
use ringer_dialer::llm_agent::{LlmAgent, LlmAgentSettings, SpeechChannel};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use twilio_fake::{Answer, EndedBy, Line, Scenario};
use uuid::Uuid;

use crate::helpers::*;
use crate::twilio::{TwilioRig, number};

fn settings(llm: &FakeLlm, turn_timeout: Duration) -> LlmAgentSettings {
    LlmAgentSettings {
        base_url: llm.base_url.clone(),
        model: "test-model".to_owned(),
        api_key: Some("sk-test".to_owned()),
        turn_timeout,
        max_rounds: 3,
        default_tool_timeout: Duration::from_secs(2),
        allow_private_tool_urls: true,
    }
}

fn speech(text: &str) -> Heard {
    Heard::Speech {
        text: text.to_owned(),
        duration: Duration::from_secs(1),
    }
}

/// Requests a tool server got: (endpoint, JSON body, `X-Api-Key`).
type Seen = Arc<Mutex<Vec<(String, Value, Option<String>)>>>;

/// A local HTTP API for the call's tools, recording what it is asked.
struct ToolServer {
    url: String,
    seen: Seen,
}

impl ToolServer {
    async fn start() -> Self {
        let seen: Seen = Arc::default();
        let record = |name: &'static str, answer: Value| {
            move |State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>| {
                let answer = answer.clone();
                async move {
                    let key = headers
                        .get("x-api-key")
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned);
                    seen.lock().unwrap().push((name.to_owned(), body, key));
                    Json(answer)
                }
            }
        };
        let app = axum::Router::new()
            .route(
                "/slots",
                post(record("slots", json!({"free": ["15:00", "16:30"]}))),
            )
            .route(
                "/book",
                post(record("book", json!({"booked": true, "reference": "BK-7"}))),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<(String, Value, Option<String>)> {
        self.seen.lock().unwrap().clone()
    }

    fn tools(&self) -> Value {
        json!([
            {"type": "http", "name": "check_slots", "description": "Free appointment slots of a day.",
             "url": format!("{}/slots", self.url), "policy": "read",
             "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
             "headers": {"X-Api-Key": "tool-key"}},
            {"type": "http", "name": "book_slot", "description": "Books a slot.",
             "url": format!("{}/book", self.url), "policy": "confirm_first_write",
             "parameters": {"type": "object", "properties": {"time": {"type": "string"}}, "required": ["time"]}},
        ])
    }
}

fn call_with(tools: Option<Value>) -> Call {
    serde_json::from_value(json!({
        "id": Uuid::now_v7(),
        "to_number": "+14155550100", "from_number": "+14155551234",
        "status": "in_progress", "direction": "outbound",
        "prompt": "Book a dental check-up for Ana next week.",
        "context": {"name": "Ana", "clinic": "Smile Dental"},
        "returns": {"preferred_time": "string", "booked": "boolean"}, "language": "en",
        "result": null, "result_status": "pending", "result_error": null,
        "created_at": "2026-04-15T14:30:00Z", "started_at": null, "answered_at": null,
        "ended_at": null, "duration_seconds": null, "billed_duration_seconds": null,
        "billing_amount_milli_cents": null, "reservation_status": "reserved",
        "webhook_url": null, "webhook_status": "none", "webhook_error": null,
        "error_code": null, "error_message": null, "hangup_cause": null,
        "answered_by": null, "metadata": null, "updated_at": "2026-04-15T14:30:00Z",
        "voicemail_action": "hangup", "max_duration_seconds": 300, "tools": tools,
    }))
    .expect("a valid call")
}

/// Records what the agent streams.
#[derive(Default)]
struct Tokens(Mutex<Vec<String>>);

impl SpeechChannel for Tokens {
    fn stream_token(&self, _call_id: Uuid, token: &str) -> bool {
        self.0.lock().unwrap().push(token.to_owned());
        true
    }

    fn take_interruption(&self, _call_id: Uuid) -> Option<String> {
        None
    }
}

impl Tokens {
    fn take(&self) -> String {
        std::mem::take(&mut *self.0.lock().unwrap()).concat()
    }
}

#[tokio::test]
async fn a_read_tool_is_called_directly() {
    let tools = ToolServer::start().await;
    let llm = FakeLlm::start(vec![
        Reply::say_and_call("Let me check.", "check_slots", json!({"day": "2026-05-05"})),
        Reply::text("We have 3pm or 4:30pm free. Which would you prefer?"),
    ])
    .await;
    let streamed = Arc::new(Tokens::default());
    let agent = LlmAgent::with_speech(
        settings(&llm, Duration::from_secs(5)),
        Some(streamed.clone()),
    )
    .unwrap();
    let call = call_with(Some(tools.tools()));
    let mut conversation = agent.start(&call);

    let turn = conversation.respond(&speech("Hello?")).await.unwrap();
    let said = "Let me check. We have 3pm or 4:30pm free. Which would you prefer?";
    assert_eq!(turn, AgentTurn::Say(said.to_owned()));
    assert_eq!(
        streamed.take(),
        said,
        "the whole turn was streamed as it came"
    );
    assert_eq!(
        tools.seen(),
        [(
            "slots".to_owned(),
            json!({"day": "2026-05-05"}),
            Some("tool-key".to_owned())
        )]
    );

    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(requests[0].body["stream"], true);
    assert_eq!(
        requests[0].tool_names(),
        ["check_slots", "book_slot", "end_call"]
    );
    let system = requests[0].messages()[0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    for expected in [
        "Book a dental check-up for Ana",
        "Smile Dental",
        "- preferred time (text)",
        "- booked (yes or no)",
        "Speak only English",
    ] {
        assert!(
            system.contains(expected),
            "system prompt lacks {expected:?}:\n{system}"
        );
    }
    let tool_result = requests[1].messages().last().cloned().unwrap();
    assert_eq!(tool_result["role"], "tool");
    assert_eq!(tool_result["tool_call_id"], "call_0");
    let content: Value = serde_json::from_str(tool_result["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        content,
        json!({"status": 200, "body": {"free": ["15:00", "16:30"]}})
    );
}

#[tokio::test]
async fn a_write_tool_runs_only_after_the_callee_agreed() {
    let tools = ToolServer::start().await;
    let llm = FakeLlm::start(vec![
        // Too eager: books before asking.
        Reply::call("book_slot", json!({"time": "15:00"})),
        Reply::text("Shall I book 3pm on Tuesday for you?"),
        // The callee hesitates; the model tries anyway.
        Reply::call("book_slot", json!({"time": "15:00"})),
        Reply::text("No problem. Shall I book it now, then?"),
        // The callee agrees.
        Reply::call("book_slot", json!({"time": "15:00"})),
        Reply::say_and_call(
            "You're booked, reference BK-7. Goodbye!",
            "end_call",
            json!({}),
        ),
    ])
    .await;
    let agent = LlmAgent::new(settings(&llm, Duration::from_secs(5))).unwrap();
    let mut conversation = agent.start(&call_with(Some(tools.tools())));

    let turn = conversation.respond(&speech("Hello?")).await.unwrap();
    assert_eq!(
        turn,
        AgentTurn::Say("Shall I book 3pm on Tuesday for you?".to_owned())
    );
    assert!(tools.seen().is_empty(), "held back: nobody agreed yet");
    let held = llm.requests()[1].messages().last().cloned().unwrap();
    assert!(
        held["content"].as_str().unwrap().contains("not_executed"),
        "{held}"
    );

    let turn = conversation
        .respond(&speech("Hmm, wait, not yet."))
        .await
        .unwrap();
    assert_eq!(
        turn,
        AgentTurn::Say("No problem. Shall I book it now, then?".to_owned())
    );
    assert!(
        tools.seen().is_empty(),
        "held back: the callee did not agree"
    );

    let turn = conversation
        .respond(&speech("Yes, please go ahead."))
        .await
        .unwrap();
    assert_eq!(
        turn,
        AgentTurn::SayAndHangUp("You're booked, reference BK-7. Goodbye!".to_owned())
    );
    assert_eq!(
        tools.seen(),
        [("book".to_owned(), json!({"time": "15:00"}), None)],
        "booked once, after consent"
    );
}

#[tokio::test]
async fn a_failing_model_gets_fallback_lines_then_a_goodbye() {
    let llm = FakeLlm::start(vec![
        Reply::Status(500, "boom".to_owned()),
        Reply::text("Hello Ana! Could you tell me your preferred time?"),
        Reply::CutOff("Great, I will".to_owned()),
        Reply::Slow(Duration::from_secs(3), Box::new(Reply::text("too late"))),
    ])
    .await;
    let streamed = Arc::new(Tokens::default());
    let agent = LlmAgent::with_speech(
        settings(&llm, Duration::from_secs(1)),
        Some(streamed.clone()),
    )
    .unwrap();
    let mut conversation = agent.start(&call_with(None));
    let again = "Sorry, I missed that. Could you say it again?".to_owned();

    // HTTP 500: a line asking the callee to repeat.
    assert_eq!(
        conversation.respond(&speech("Hello?")).await.unwrap(),
        AgentTurn::Say(again.clone())
    );
    // The model recovers.
    assert_eq!(
        conversation.respond(&speech("Hello?")).await.unwrap(),
        AgentTurn::Say("Hello Ana! Could you tell me your preferred time?".to_owned())
    );
    assert_eq!(
        streamed.take(),
        "Hello Ana! Could you tell me your preferred time?"
    );
    // The stream breaks mid-answer: what was streamed stays said, the fallback follows.
    assert_eq!(
        conversation.respond(&speech("At 3pm.")).await.unwrap(),
        AgentTurn::Say(again)
    );
    assert_eq!(streamed.take(), "Great, I will");
    // A second failure in a row (the turn times out): goodbye and hang up.
    let started = std::time::Instant::now();
    assert_eq!(
        conversation.respond(&speech("I said 3pm.")).await.unwrap(),
        AgentTurn::SayAndHangUp(
            "I'm sorry, I'm having technical trouble. We'll call you back later. Goodbye."
                .to_owned()
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the turn timeout holds"
    );
}

#[tokio::test]
async fn silence_waits_and_hang_up_ends() {
    let llm = FakeLlm::start(vec![Reply::text("Hello, is this Ana?")]).await;
    let agent = LlmAgent::new(settings(&llm, Duration::from_secs(5))).unwrap();
    let mut conversation = agent.start(&call_with(None));
    let silence = Heard::Silence {
        duration: Duration::from_secs(2),
    };
    // A callee who says nothing still gets the greeting…
    assert_eq!(
        conversation.respond(&silence).await.unwrap(),
        AgentTurn::Say("Hello, is this Ana?".to_owned())
    );
    // …then short silences just wait, without asking the model.
    assert_eq!(
        conversation.respond(&silence).await.unwrap(),
        AgentTurn::Wait
    );
    assert_eq!(llm.requests().len(), 1);
    assert_eq!(
        conversation.respond(&Heard::HungUp).await.unwrap(),
        AgentTurn::HangUp
    );
    assert_eq!(
        agent.voicemail_message(&call_with(None)),
        "Hello, this is an automated assistant calling about the following: Book a dental \
         check-up for Ana next week. Please call us back at +14155551234. Goodbye."
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_llm_call_through_twilio_streams_survives_an_interruption_and_a_model_failure(
    pool: PgPool,
) {
    let namespace = random_namespace();
    let test = test_broker(&namespace, 0.0).await;
    let org = seed_org(&pool, 100_000_000).await;
    let rig = TwilioRig::start().await;
    let to = number(400);
    rig.fake.script(
        &to,
        Scenario::with_lines(
            Answer::Human,
            vec![
                Line::Say("Hello?".into()),
                Line::Interrupt("Sorry, which day?".into()),
                Line::Say("Yes, 3pm works.".into()),
                Line::Say("I said 3pm works.".into()),
            ],
        ),
    );
    let greeting = "Hello Ana, this is an assistant from Smile Dental calling about your check-up. \
                    Would Tuesday at 3pm work for you?";
    let llm = FakeLlm::start(vec![
        Reply::text(greeting),
        Reply::text("Tuesday, May 5th. Does 3pm work?"),
        Reply::CutOff("Great, I will".to_owned()),
        Reply::say_and_call(
            "Perfect, see you Tuesday at 3pm. Goodbye!",
            "end_call",
            json!({}),
        ),
    ])
    .await;
    let speech: Arc<dyn SpeechChannel> = Arc::new(rig.carrier.clone());
    let agent =
        LlmAgent::with_speech(settings(&llm, Duration::from_secs(5)), Some(speech)).unwrap();
    let mut new = new_call(&org, &to);
    new.context = json!({"name": "Ana", "clinic": "Smile Dental"});
    new.returns = Some(json!({"preferred_time": "string"}));
    let call = insert_queued_call(&pool, &new).await;
    let shutdown = CancellationToken::new();
    let dialer = tokio::spawn(ringer_dialer::run_with(
        dialer_config(&pool, &namespace, 0.0),
        rig.carrier.clone(),
        agent,
        shutdown.clone(),
    ));

    let row = wait_until_ended(&pool, call.id, Duration::from_secs(20)).await;
    let fake = rig
        .fake
        .wait_for(&to, Duration::from_secs(5), |call| call.is_over())
        .await;
    shutdown.cancel();
    dialer.await.unwrap().expect("the dialer stops cleanly");

    assert_eq!(row.call.status, CallStatus::InProgress);
    assert_eq!(row.call.hangup_cause.as_deref(), Some("completed"));
    assert_eq!(fake.ended_by, Some(EndedBy::RelayEnd));
    assert_eq!(fake.interrupts, 1);
    assert!(
        fake.tokens > fake.heard.len() + 5,
        "turns were streamed token by token ({} tokens, {} turns)",
        fake.tokens,
        fake.heard.len()
    );

    // The model learned what the callee heard of the interrupted greeting.
    let requests = llm.requests();
    assert_eq!(requests.len(), 4);
    let history = requests[1].messages();
    let interrupted = history
        .iter()
        .find(|message| message["role"] == "assistant")
        .and_then(|message| message["content"].as_str())
        .unwrap();
    assert!(
        interrupted.ends_with("… [interrupted by the callee]"),
        "{interrupted}"
    );
    assert!(greeting.starts_with(interrupted.trim_end_matches("… [interrupted by the callee]")));
    assert_eq!(history.last().unwrap()["content"], "Sorry, which day?");

    let segments = transcript(&pool, call.id).await;
    let said: Vec<(&str, &str)> = segments
        .iter()
        .map(|s| (s.role.as_str(), s.text.as_str()))
        .collect();
    assert_eq!(
        said,
        [
            ("callee", "Hello?"),
            ("agent", greeting),
            ("callee", "Sorry, which day?"),
            ("agent", "Tuesday, May 5th. Does 3pm work?"),
            ("callee", "Yes, 3pm works."),
            ("agent", "Sorry, I missed that. Could you say it again?"),
            ("callee", "I said 3pm works."),
            ("agent", "Perfect, see you Tuesday at 3pm. Goodbye!"),
        ]
    );
    // What the callee heard: the fallback after the words streamed before the break.
    assert!(
        fake.heard
            .iter()
            .any(|turn| turn.starts_with("Great, I will")
                && turn.ends_with("Could you say it again?")),
        "{:?}",
        fake.heard
    );
    assert_eq!(
        fake.heard.last().map(String::as_str),
        Some("Perfect, see you Tuesday at 3pm. Goodbye!")
    );
    test.cleanup().await;
}
