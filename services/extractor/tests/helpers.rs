use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use ringer::call::{Call, CallStatus, Language, VoicemailAction};
use ringer::events::{Event, EventType};
use ringer::retry::RetryPolicy;
use ringer::testing::{TestOrg, insert_queued_call, new_call, seed_org};
use ringer_extractor::{LlmExtractor, LlmSettings};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub fn init_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        ringer::telemetry::init(ringer::config::LogFormat::Pretty);
    }
}

pub async fn seed(pool: &PgPool) -> TestOrg {
    init_tracing();
    seed_org(pool, 100_000_000).await
}

/// When the test calls were answered: relative dates in transcripts resolve against it.
pub fn answered_at() -> DateTime<Utc> {
    "2026-03-11T10:00:00Z".parse().unwrap()
}

/// How a test call ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ending {
    /// A person answered and talked.
    Answered,
    /// An answering machine picked up.
    Voicemail,
    /// Never answered; the dialer ended it in this status.
    NotAnswered(CallStatus),
}

/// A call as the dialer leaves it when it publishes `internal.call.ended`.
#[derive(Debug, Clone)]
pub struct EndedCall {
    pub returns: Option<Value>,
    pub language: Language,
    pub ending: Ending,
    pub voicemail_action: VoicemailAction,
    /// (role, text): role "agent" or "callee".
    pub transcript: Vec<(&'static str, String)>,
}

impl EndedCall {
    pub fn answered(returns: Value, transcript: &[(&'static str, &str)]) -> Self {
        Self {
            returns: Some(returns),
            language: Language::En,
            ending: Ending::Answered,
            voicemail_action: VoicemailAction::Hangup,
            transcript: transcript
                .iter()
                .map(|(role, text)| (*role, (*text).to_owned()))
                .collect(),
        }
    }

    pub fn not_answered(status: CallStatus) -> Self {
        Self {
            ending: Ending::NotAnswered(status),
            ..Self::answered(json!({"confirmed": "boolean"}), &[])
        }
    }
}

/// The reservation conversation most tests use.
pub fn reservation_returns() -> Value {
    json!({"party_size": "integer", "high_chair": "boolean"})
}

pub fn reservation_transcript() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "agent",
            "Hi, this is Sam from Bella Cucina. How many people will be in your party?",
        ),
        ("callee", "We'll be six."),
        ("agent", "Will you need a high chair?"),
        ("callee", "No, thanks."),
        ("agent", "Perfect, thank you. Have a great day!"),
    ]
}

/// Inserts a call, ends it the way the dialer does (timing, transcript) and
/// writes `internal.call.ended`, in one transaction.
pub async fn insert_ended_call(pool: &PgPool, org: &TestOrg, spec: &EndedCall) -> Call {
    let mut new = new_call(org, "+14155550100");
    new.returns = spec.returns.clone();
    new.language = spec.language;
    new.voicemail_action = spec.voicemail_action;
    let call = insert_queued_call(pool, &new).await;

    let answered = answered_at();
    let (status, answered_at, answered_by) = match spec.ending {
        Ending::Answered => (CallStatus::InProgress, Some(answered), Some("human")),
        Ending::Voicemail => (CallStatus::InProgress, Some(answered), Some("machine")),
        Ending::NotAnswered(status) => (status, None, None),
    };
    let ended_at = answered + chrono::Duration::seconds(95);
    let mut tx = pool.begin().await.unwrap();
    let call: Call = sqlx::query_as(concat!(
        "UPDATE calls SET status = $2, started_at = $3, answered_at = $4, ended_at = $5, \
           duration_seconds = 100, answered_by = $6, updated_at = now() \
         WHERE id = $1 RETURNING ",
        ringer::call_columns!()
    ))
    .bind(call.id)
    .bind(status)
    .bind(answered - chrono::Duration::seconds(5))
    .bind(answered_at)
    .bind(ended_at)
    .bind(answered_by)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    for (sequence_no, (role, text)) in spec.transcript.iter().enumerate() {
        let started = answered + chrono::Duration::seconds(5 * sequence_no as i64);
        sqlx::query(
            "INSERT INTO call_transcripts \
               (call_id, sequence_no, role, text, started_at, ended_at, duration_ms, source) \
             VALUES ($1, $2, $3, $4, $5, $6, 4000, 'simulated')",
        )
        .bind(call.id)
        .bind(sequence_no as i32)
        .bind(role)
        .bind(text)
        .bind(started)
        .bind(started + chrono::Duration::seconds(4))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    ringer::outbox::emit(&mut tx, org.id, EventType::CallEnded, &call)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    call
}

pub async fn fetch_call(pool: &PgPool, call_id: Uuid) -> Call {
    let mut conn = pool.acquire().await.unwrap();
    ringer::call::find_call(&mut conn, call_id)
        .await
        .unwrap()
        .expect("the call exists")
        .call
}

/// Billing's side of the join, as the billing service does it: leave
/// `reserved` (settled when answered, released otherwise), then run the join,
/// in one transaction.
pub async fn finish_billing(pool: &PgPool, call_id: Uuid) -> Option<Event> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE calls SET reservation_status = \
           CASE WHEN answered_at IS NULL THEN 'released' ELSE 'settled' END, updated_at = now() \
         WHERE id = $1 AND reservation_status = 'reserved'",
    )
    .bind(call_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    let terminal = ringer::call::close_completion_join(&mut tx, call_id)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    terminal
}

/// Routing keys of the outbox rows about `call_id`, in the order written.
pub async fn outbox_events(pool: &PgPool, call_id: Uuid) -> Vec<String> {
    sqlx::query_scalar("SELECT routing_key FROM outbox WHERE payload->>'call_id' = $1 ORDER BY id")
        .bind(call_id.to_string())
        .fetch_all(pool)
        .await
        .unwrap()
}

pub fn terminal_events(events: &[String]) -> Vec<&str> {
    events
        .iter()
        .map(String::as_str)
        .filter(|key| key.parse::<EventType>().is_ok_and(EventType::is_terminal))
        .collect()
}

pub fn count(events: &[String], event_type: EventType) -> usize {
    events
        .iter()
        .filter(|key| key.as_str() == event_type.routing_key())
        .count()
}

/// One scripted answer of the fake LLM endpoint.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with a chat completion whose message content is this text.
    Content(String),
    /// This status with this body.
    Status(u16, String),
    /// The reply, after a pause.
    Slow(Duration, Box<Reply>),
}

impl Reply {
    pub fn json(result: Value) -> Self {
        Reply::Content(result.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub body: Value,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct FakeState {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
}

/// A local OpenAI-compatible `/v1/chat/completions` that answers from a
/// script, in order; the last reply repeats for every later request.
pub struct FakeLlm {
    pub base_url: String,
    state: Arc<FakeState>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    pub async fn start(script: Vec<Reply>) -> FakeLlm {
        assert!(!script.is_empty(), "script at least one reply");
        let state = Arc::new(FakeState {
            script: Mutex::new(script.into()),
            requests: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeLlm {
            base_url: format!("http://{addr}/v1"),
            state,
            server,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// An extractor pointed at this fake: no pauses between attempts.
    pub fn extractor(&self, max_attempts: u32, timeout: Duration) -> LlmExtractor {
        LlmExtractor::new(LlmSettings {
            base_url: self.base_url.clone(),
            model: "test-model".to_owned(),
            api_key: Some("sk-test".to_owned()),
            timeout,
            retry: RetryPolicy::new(max_attempts, Duration::ZERO),
        })
        .unwrap()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn chat_completions(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    state.requests.lock().unwrap().push(Recorded {
        body,
        authorization: headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    });
    let reply = {
        let mut script = state.script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front()
        } else {
            script.front().cloned()
        }
    }
    .expect("the script is never empty");
    answer(reply).await
}

async fn answer(mut reply: Reply) -> Response {
    loop {
        match reply {
            Reply::Slow(pause, inner) => {
                tokio::time::sleep(pause).await;
                reply = *inner;
            }
            Reply::Content(content) => {
                return Json(json!({
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "model": "test-model",
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": null},
                        "finish_reason": "stop",
                    }],
                    "usage": {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132},
                }))
                .into_response();
            }
            Reply::Status(status, body) => {
                return (StatusCode::from_u16(status).unwrap(), body).into_response();
            }
        }
    }
}
