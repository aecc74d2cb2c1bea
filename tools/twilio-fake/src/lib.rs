//! A local fake of the parts of Twilio that ringer's Twilio carrier uses:
//!
//! - REST: `POST /2010-04-01/Accounts/{sid}/Calls.json` (basic auth, Twilio's
//!   error shape), `POST …/Calls/{CallSid}.json` with `Status=completed|canceled`
//!   (hang up), `GET …/Calls/{CallSid}.json`.
//! - Status callbacks (`initiated`, `ringing`, `in-progress`, then the final
//!   status) and async AMD callbacks, form-encoded and signed with
//!   `X-Twilio-Signature` like Twilio's.
//! - A ConversationRelay client: at answer it opens the WebSocket named in the
//!   call's TwiML (signed handshake), sends `setup`, and plays a scripted callee
//!   ([`Scenario`]) with `prompt`, `interrupt` and `dtmf` messages, recording
//!   every `text` turn and `end` it receives.
//! - Phone numbers: search, buy, list and release (see [`numbers`]).

pub mod numbers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

/// Twilio's signature of a request to `url` with form `params`.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut mac = HmacSha1::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// How the destination answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Human,
    /// An answering machine; its greeting is the scenario's first line.
    Machine,
    Busy,
    NoAnswer,
    /// Twilio fails the call (with this SIP response).
    Fail {
        sip: u16,
    },
}

/// What the callee does in response to the agent's next complete turn (the
/// first `Say` is said at pick-up instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Say(String),
    /// Speaks over the agent's next turn as soon as its first token arrives.
    Interrupt(String),
    /// Presses a key.
    Dtmf(char),
    /// Says nothing any more (the agent hears silence until it hangs up).
    Hold,
    /// Hangs up.
    HangUp,
}

/// One scripted destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub answer: Answer,
    /// Ringing before the answer (or busy / no-answer / failure).
    pub ring: Option<Duration>,
    pub lines: Vec<Line>,
}

impl Scenario {
    pub fn human(lines: &[&str]) -> Self {
        Self {
            answer: Answer::Human,
            ring: None,
            lines: lines
                .iter()
                .map(|line| Line::Say((*line).to_owned()))
                .collect(),
        }
    }

    pub fn with_lines(answer: Answer, lines: Vec<Line>) -> Self {
        Self {
            answer,
            ring: None,
            lines,
        }
    }

    /// The callee of an unscripted number. Like the simulated carrier's test
    /// numbers, `+1 NPA 555-0100`…`0106` pick an outcome: answers, busy, no
    /// answer, voicemail, failed (SIP 503), hangs up at the first question, puts
    /// the agent on hold. Any other number answers and agrees to everything.
    pub fn for_number(to: &str) -> Self {
        let line = to
            .strip_prefix("+1")
            .filter(|digits| digits.len() == 10)
            .and_then(|digits| digits[3..].strip_prefix("55501"))
            .and_then(|line| line.parse::<u32>().ok());
        let agreeable = || {
            let mut lines = vec![
                Line::Say("Hello?".to_owned()),
                Line::Say("Sure, go ahead.".to_owned()),
            ];
            lines.extend((0..8).map(|_| Line::Say("Yes.".to_owned())));
            lines
        };
        let with = |answer: Answer, lines: Vec<Line>| Scenario::with_lines(answer, lines);
        match line {
            Some(1) => with(Answer::Busy, Vec::new()),
            Some(2) => with(Answer::NoAnswer, Vec::new()),
            Some(3) => with(
                Answer::Machine,
                vec![Line::Say(
                    "Hi, you've reached voicemail. Please leave a message after the tone."
                        .to_owned(),
                )],
            ),
            Some(4) => with(Answer::Fail { sip: 503 }, Vec::new()),
            Some(5) => with(
                Answer::Human,
                vec![
                    Line::Say("Hello?".to_owned()),
                    Line::Say("Sorry, I have to go.".to_owned()),
                    Line::HangUp,
                ],
            ),
            Some(6) => with(
                Answer::Human,
                vec![
                    Line::Say("Hello?".to_owned()),
                    Line::Say("Please hold on a moment.".to_owned()),
                    Line::Hold,
                ],
            ),
            _ => with(Answer::Human, agreeable()),
        }
    }
}

/// Who ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// The application sent ConversationRelay's `end`.
    RelayEnd,
    /// A REST request set `Status=completed|canceled`.
    RestHangUp,
    /// The callee hung up (scenario), or the destination did not answer.
    Callee,
    /// `TimeLimit` ran out.
    TimeLimit,
    /// The WebSocket could not be opened or broke.
    RelayFailed,
}

/// Everything the fake saw and did for one call.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub sid: String,
    pub to: String,
    pub from: String,
    /// The create request's form.
    pub form: Vec<(String, String)>,
    /// Status callbacks sent: (CallStatus, HTTP status of the answer, or 0 when unreachable).
    pub callbacks: Vec<(String, u16)>,
    /// AMD callbacks sent: (AnsweredBy, HTTP status).
    pub amd_callbacks: Vec<(String, u16)>,
    /// The agent's complete turns, as received (tokens joined until `last`).
    pub heard: Vec<String>,
    /// `text` messages received.
    pub tokens: usize,
    /// What the callee said, in order (prompts and `[dtmf d]`).
    pub said: Vec<String>,
    pub interrupts: usize,
    /// Status of the WebSocket handshake when it was refused.
    pub relay_refused: Option<u16>,
    pub hangup_requests: usize,
    pub status: String,
    pub ended_by: Option<EndedBy>,
}

impl CallRecord {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn params(&self, name: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    pub fn callback_statuses(&self) -> Vec<&str> {
        self.callbacks
            .iter()
            .map(|(status, _)| status.as_str())
            .collect()
    }

    pub fn is_over(&self) -> bool {
        matches!(
            self.status.as_str(),
            "completed" | "busy" | "no-answer" | "failed" | "canceled"
        )
    }
}

/// The fake's settings.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub account_sid: String,
    pub auth_token: String,
    /// Ringing of scenarios without their own.
    pub ring: Duration,
}

impl FakeConfig {
    pub fn new(account_sid: &str, auth_token: &str) -> Self {
        Self {
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            ring: Duration::from_millis(30),
        }
    }
}

struct CallSlot {
    record: CallRecord,
    hang_up: watch::Sender<bool>,
}

struct FakeState {
    config: FakeConfig,
    scenarios: Mutex<HashMap<String, Scenario>>,
    calls: Mutex<Vec<CallSlot>>,
    numbers: Mutex<numbers::NumberStock>,
    http: reqwest::Client,
}

impl FakeState {
    fn with_call<T>(&self, sid: &str, change: impl FnOnce(&mut CallRecord) -> T) -> Option<T> {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls
            .iter_mut()
            .find(|slot| slot.record.sid == sid)
            .map(|slot| change(&mut slot.record))
    }

    fn end(&self, sid: &str, by: EndedBy) {
        self.with_call(sid, |record| {
            record.ended_by.get_or_insert(by);
        });
    }
}

/// A running fake; stops when dropped.
pub struct FakeTwilio {
    /// `http://127.0.0.1:port`: what `RINGER_TWILIO_API_BASE` takes.
    pub base_url: String,
    state: Arc<FakeState>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeTwilio {
    /// On a free loopback port.
    pub async fn start(account_sid: &str, auth_token: &str) -> FakeTwilio {
        Self::start_on(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            FakeConfig::new(account_sid, auth_token),
        )
        .await
        .expect("a free loopback port")
    }

    pub async fn start_on(addr: SocketAddr, config: FakeConfig) -> std::io::Result<FakeTwilio> {
        let state = Arc::new(FakeState {
            config,
            scenarios: Mutex::default(),
            calls: Mutex::default(),
            numbers: Mutex::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(std::io::Error::other)?,
        });
        let app = axum::Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Calls.json",
                post(create_call),
            )
            .route(
                "/2010-04-01/Accounts/{account}/Calls/{file}",
                post(update_call).get(fetch_call),
            )
            .route(
                "/2010-04-01/Accounts/{account}/AvailablePhoneNumbers/{country}/{file}",
                get(numbers::available),
            )
            .route(
                "/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json",
                post(numbers::buy).get(numbers::list_owned),
            )
            .route(
                "/2010-04-01/Accounts/{account}/IncomingPhoneNumbers/{file}",
                delete(numbers::release),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeTwilio {
            base_url: format!("http://{addr}"),
            state,
            server,
        })
    }

    pub fn account_sid(&self) -> &str {
        &self.state.config.account_sid
    }

    pub fn auth_token(&self) -> &str {
        &self.state.config.auth_token
    }

    /// Calls to `to` play `scenario`.
    pub fn script(&self, to: &str, scenario: Scenario) {
        self.state
            .scenarios
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(to.to_owned(), scenario);
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.state
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|slot| slot.record.clone())
            .collect()
    }

    /// The last call placed to `to`.
    pub fn call_to(&self, to: &str) -> Option<CallRecord> {
        self.calls().into_iter().rev().find(|call| call.to == to)
    }

    /// Waits until the last call to `to` satisfies `done`; panics after `timeout`.
    pub async fn wait_for(
        &self,
        to: &str,
        timeout: Duration,
        done: impl Fn(&CallRecord) -> bool,
    ) -> CallRecord {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(call) = self.call_to(to)
                && done(&call)
            {
                return call;
            }
            assert!(
                Instant::now() < deadline,
                "the fake's call to {to} did not get there within {timeout:?}: {:?}",
                self.call_to(to)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn twilio_error(status: StatusCode, code: u32, message: String) -> Response {
    (
        status,
        Json(
            json!({"code": code, "message": message, "status": status.as_u16(),
                    "more_info": format!("https://www.twilio.com/docs/errors/{code}")}),
        ),
    )
        .into_response()
}

/// Twilio's 401 unless the request carries the account's credentials.
fn unauthorized(state: &FakeState, account: &str, headers: &HeaderMap) -> Option<Response> {
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!(
            "{}:{}",
            state.config.account_sid, state.config.auth_token
        ))
    );
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if given != Some(expected.as_str()) || account != state.config.account_sid {
        return Some(twilio_error(
            StatusCode::UNAUTHORIZED,
            20003,
            "Authentication Error - invalid username".to_owned(),
        ));
    }
    None
}

fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// The first value of `name` among form or query pairs.
fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

fn resource(record: &CallRecord, account: &str) -> Value {
    json!({
        "sid": record.sid, "account_sid": account, "to": record.to, "from": record.from,
        "status": record.status, "direction": "outbound-api", "api_version": "2010-04-01",
    })
}

async fn create_call(
    State(state): State<Arc<FakeState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = unauthorized(&state, &account, &headers) {
        return response;
    }
    let form = parse_form(&body);
    let get = |name: &str| param(&form, name).map(str::to_owned);
    let (Some(to), Some(from)) = (get("To"), get("From")) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21201,
            "To and From are required".to_owned(),
        );
    };
    if !is_e164(&to) {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            format!("Invalid 'To' Phone Number: {to}"),
        );
    }
    if !is_e164(&from) {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21212,
            format!("Invalid 'From' Phone Number: {from}"),
        );
    }
    if get("Twiml").is_none() && get("Url").is_none() {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21205,
            "Url or Twiml is required".to_owned(),
        );
    }
    let sid = format!("CA{}", uuid::Uuid::new_v4().simple());
    let scenario = state
        .scenarios
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&to)
        .cloned()
        .unwrap_or_else(|| Scenario::for_number(&to));
    let (hang_up, hung_up) = watch::channel(false);
    let record = CallRecord {
        sid: sid.clone(),
        to,
        from,
        form,
        callbacks: Vec::new(),
        amd_callbacks: Vec::new(),
        heard: Vec::new(),
        tokens: 0,
        said: Vec::new(),
        interrupts: 0,
        relay_refused: None,
        hangup_requests: 0,
        status: "queued".to_owned(),
        ended_by: None,
    };
    let body = resource(&record, &account);
    state
        .calls
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(CallSlot { record, hang_up });
    tokio::spawn(run_call(state.clone(), sid, scenario, hung_up));
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn update_call(
    State(state): State<Arc<FakeState>>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = unauthorized(&state, &account, &headers) {
        return response;
    }
    let sid = file.trim_end_matches(".json").to_owned();
    let form = parse_form(&body);
    let status = param(&form, "Status");
    let found = {
        let mut calls = state.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls
            .iter_mut()
            .find(|slot| slot.record.sid == sid)
            .map(|slot| {
                if matches!(status, Some("completed" | "canceled")) {
                    slot.record.hangup_requests += 1;
                    let _ = slot.hang_up.send(true);
                }
                resource(&slot.record, &account)
            })
    };
    match (found, status) {
        (None, _) => twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource /Calls/{sid}.json was not found"),
        ),
        (Some(_), Some(other)) if !matches!(other, "completed" | "canceled") => twilio_error(
            StatusCode::BAD_REQUEST,
            21218,
            format!("Invalid Status {other:?}"),
        ),
        (Some(call), _) => Json(call).into_response(),
    }
}

async fn fetch_call(
    State(state): State<Arc<FakeState>>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = unauthorized(&state, &account, &headers) {
        return response;
    }
    let sid = file.trim_end_matches(".json");
    match state.with_call(sid, |record| resource(record, &account)) {
        Some(call) => Json(call).into_response(),
        None => twilio_error(StatusCode::NOT_FOUND, 20404, "not found".to_owned()),
    }
}

/// One call's life on the fake network.
struct CallRun {
    state: Arc<FakeState>,
    sid: String,
    to: String,
    from: String,
    form: Vec<(String, String)>,
    sequence: u32,
    answered_at: Option<Instant>,
}

impl CallRun {
    fn param(&self, name: &str) -> Option<String> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }

    async fn post_signed(&self, url: &str, params: Vec<(String, String)>) -> u16 {
        let signature = sign(&self.state.config.auth_token, url, &params);
        let sent = self
            .state
            .http
            .post(url)
            .header("X-Twilio-Signature", signature)
            .form(&params)
            .send()
            .await;
        match sent {
            Ok(response) => response.status().as_u16(),
            Err(error) => {
                tracing::debug!(%error, url, "twilio-fake: callback unreachable");
                0
            }
        }
    }

    /// Sends a status callback when the create request subscribed to it (final
    /// statuses always go, as Twilio's `completed` event covers them all).
    async fn status(&mut self, status: &str, extra: &[(&str, String)]) {
        let set_status = |record: &mut CallRecord| record.status = status.to_owned();
        let event = match status {
            "initiated" => "initiated",
            "ringing" => "ringing",
            "in-progress" => "answered",
            _ => "completed",
        };
        let subscribed = self
            .form
            .iter()
            .any(|(key, value)| key == "StatusCallbackEvent" && value == event);
        let Some(url) = self.param("StatusCallback") else {
            self.state.with_call(&self.sid, set_status);
            return;
        };
        if event != "completed" && !subscribed {
            self.state.with_call(&self.sid, set_status);
            return;
        }
        let mut params: Vec<(String, String)> = vec![
            ("AccountSid".into(), self.state.config.account_sid.clone()),
            ("ApiVersion".into(), "2010-04-01".into()),
            ("CallSid".into(), self.sid.clone()),
            ("CallStatus".into(), status.to_owned()),
            ("CallbackSource".into(), "call-progress-events".into()),
            ("Direction".into(), "outbound-api".into()),
            ("From".into(), self.from.clone()),
            ("To".into(), self.to.clone()),
            ("SequenceNumber".into(), self.sequence.to_string()),
        ];
        self.sequence += 1;
        params.extend(
            extra
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone())),
        );
        let code = self.post_signed(&url, params).await;
        // The status changes once its callback was answered, so that a test
        // seeing the final status also sees every callback.
        self.state.with_call(&self.sid, |record| {
            record.callbacks.push((status.to_owned(), code));
            set_status(record);
        });
    }

    async fn finish(&mut self, status: &str, sip: Option<u16>) {
        let duration = self
            .answered_at
            .map_or(0, |answered| answered.elapsed().as_secs());
        let mut extra = vec![("CallDuration", duration.to_string())];
        if let Some(sip) = sip {
            extra.push(("SipResponseCode", sip.to_string()));
        }
        self.status(status, &extra).await;
    }

    async fn amd(&self, answered_by: &str) {
        if self.param("MachineDetection").is_none() {
            return;
        }
        let Some(url) = self.param("AsyncAmdStatusCallback") else {
            return;
        };
        let params = vec![
            (
                "AccountSid".to_owned(),
                self.state.config.account_sid.clone(),
            ),
            ("AnsweredBy".to_owned(), answered_by.to_owned()),
            ("CallSid".to_owned(), self.sid.clone()),
            ("MachineDetectionDuration".to_owned(), "1200".to_owned()),
        ];
        let code = self.post_signed(&url, params).await;
        self.state.with_call(&self.sid, |record| {
            record.amd_callbacks.push((answered_by.to_owned(), code))
        });
    }
}

/// Resolves once a hang-up was requested (never when the fake is dropped).
async fn wait_hung_up(hung_up: &mut watch::Receiver<bool>) {
    // The borrow `wait_for` returns is not Send: drop it here.
    if hung_up.wait_for(|hung_up| *hung_up).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleeps `pause` unless a hang-up comes first (true then).
async fn hung_up_during(hung_up: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    if *hung_up.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(pause) => false,
        () = wait_hung_up(hung_up) => true,
    }
}

async fn run_call(
    state: Arc<FakeState>,
    sid: String,
    scenario: Scenario,
    mut hung_up: watch::Receiver<bool>,
) {
    let Some((to, from, form)) = state.with_call(&sid, |record| {
        (record.to.clone(), record.from.clone(), record.form.clone())
    }) else {
        return;
    };
    let ring = scenario.ring.unwrap_or(state.config.ring);
    let mut run = CallRun {
        state: state.clone(),
        sid: sid.clone(),
        to,
        from,
        form,
        sequence: 0,
        answered_at: None,
    };
    run.status("initiated", &[]).await;
    if let Answer::Fail { sip } = scenario.answer
        && !hung_up_during(&mut hung_up, ring / 2).await
    {
        run.finish("failed", Some(sip)).await;
        state.end(&sid, EndedBy::Callee);
        return;
    }
    run.status("ringing", &[]).await;
    if hung_up_during(&mut hung_up, ring).await {
        run.finish("canceled", Some(487)).await;
        state.end(&sid, EndedBy::RestHangUp);
        return;
    }
    let machine = match scenario.answer {
        Answer::Busy => {
            run.finish("busy", Some(486)).await;
            state.end(&sid, EndedBy::Callee);
            return;
        }
        Answer::NoAnswer | Answer::Fail { .. } => {
            run.finish("no-answer", Some(487)).await;
            state.end(&sid, EndedBy::Callee);
            return;
        }
        Answer::Human => false,
        Answer::Machine => true,
    };
    run.answered_at = Some(Instant::now());
    let sync_amd =
        run.param("MachineDetection").is_some() && run.param("AsyncAmd").as_deref() != Some("true");
    let answered_by = match (machine, run.param("MachineDetection").as_deref()) {
        (false, _) => "human",
        (true, Some("DetectMessageEnd")) => "machine_end_beep",
        (true, _) => "machine_start",
    };
    let extra: Vec<(&str, String)> = if sync_amd {
        vec![("AnsweredBy", answered_by.to_owned())]
    } else {
        Vec::new()
    };
    run.status("in-progress", &extra).await;

    let time_limit = run
        .param("TimeLimit")
        .and_then(|limit| limit.parse::<u64>().ok())
        .map_or(Duration::from_secs(4 * 3600), Duration::from_secs);
    let relay = run.param("Twiml").and_then(|twiml| relay_of(&twiml));
    let ended_by = match relay {
        None => EndedBy::RelayFailed,
        Some((url, parameters)) => {
            let session = play_callee(&run, &url, parameters, &scenario, answered_by, &mut hung_up);
            match tokio::time::timeout(time_limit, session).await {
                Ok(ended_by) => ended_by,
                Err(_) => EndedBy::TimeLimit,
            }
        }
    };
    state.end(&sid, ended_by);
    run.finish("completed", Some(200)).await;
}

fn xml_unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn attribute(element: &str, name: &str) -> Option<String> {
    let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = element[start..].find('"')? + start;
    Some(xml_unescape(&element[start..end]))
}

/// The ConversationRelay URL and `<Parameter>`s of the call's TwiML.
fn relay_of(twiml: &str) -> Option<(String, serde_json::Map<String, Value>)> {
    let start = twiml.find("<ConversationRelay")?;
    let element = &twiml[start..];
    let url = attribute(element, "url")?;
    let mut parameters = serde_json::Map::new();
    for piece in element.split("<Parameter").skip(1) {
        if let (Some(name), Some(value)) = (attribute(piece, "name"), attribute(piece, "value")) {
            parameters.insert(name, Value::String(value));
        }
    }
    Some((url, parameters))
}

/// Plays the callee over the WebSocket until someone ends the call.
async fn play_callee(
    run: &CallRun,
    url: &str,
    parameters: serde_json::Map<String, Value>,
    scenario: &Scenario,
    answered_by: &str,
    hung_up: &mut watch::Receiver<bool>,
) -> EndedBy {
    let state = &run.state;
    let sid = &run.sid;
    let Ok(mut request) = url.into_client_request() else {
        return EndedBy::RelayFailed;
    };
    let signature = sign(&state.config.auth_token, url, &[]);
    if let Ok(value) = signature.parse() {
        request.headers_mut().insert("X-Twilio-Signature", value);
    }
    let socket = match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => socket,
        Err(error) => {
            let refused = match &error {
                tokio_tungstenite::tungstenite::Error::Http(response) => response.status().as_u16(),
                _ => 0,
            };
            state.with_call(sid, |record| record.relay_refused = Some(refused));
            tracing::debug!(%error, "twilio-fake: ConversationRelay handshake failed");
            return EndedBy::RelayFailed;
        }
    };
    let (mut sink, mut stream) = socket.split();
    let setup = json!({
        "type": "setup", "sessionId": format!("VX{}", uuid::Uuid::new_v4().simple()),
        "accountSid": state.config.account_sid, "callSid": sid, "from": run.from, "to": run.to,
        "direction": "outbound-api", "callType": "PSTN", "callStatus": "IN-PROGRESS",
        "customParameters": parameters,
    });
    if sink
        .send(Message::Text(setup.to_string().into()))
        .await
        .is_err()
    {
        return EndedBy::RelayFailed;
    }
    let mut lines = scenario.lines.iter().cloned().peekable();
    // The first line is said at pick-up (a person's "Hello?", a machine's greeting).
    if let Some(Line::Say(_)) = lines.peek()
        && let Some(Line::Say(text)) = lines.next()
    {
        say(&mut sink, state, sid, &text).await;
    }
    // A machine's greeting ended: its AMD verdict (DetectMessageEnd) follows.
    run.amd(answered_by).await;
    let mut turn = String::new();
    let mut on_hold = false;
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            () = wait_hung_up(hung_up) => {
                let _ = sink.send(Message::Close(None)).await;
                return EndedBy::RestHangUp;
            }
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return EndedBy::RelayFailed,
            Some(Ok(_)) => continue,
        };
        let Ok(message) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        match message["type"].as_str() {
            Some("end") => {
                let _ = sink.send(Message::Close(None)).await;
                return EndedBy::RelayEnd;
            }
            Some("text") => {
                let token = message["token"].as_str().unwrap_or_default();
                let last = message["last"].as_bool().unwrap_or(false);
                state.with_call(sid, |record| record.tokens += 1);
                turn.push_str(token);
                if !on_hold
                    && let Some(Line::Interrupt(_)) = lines.peek()
                    && let Some(Line::Interrupt(reply)) = lines.next()
                {
                    // Twilio stops speaking the turn and drops what is queued of it.
                    let words: Vec<&str> = turn.split_whitespace().collect();
                    let heard = words[..words.len().div_ceil(2)].join(" ");
                    turn.clear();
                    state.with_call(sid, |record| {
                        record.interrupts += 1;
                        record.heard.push(format!("{heard}…"));
                    });
                    let interrupt = json!({"type": "interrupt", "utteranceUntilInterrupt": heard,
                                           "durationUntilInterruptMs": 800});
                    let _ = sink.send(Message::Text(interrupt.to_string().into())).await;
                    say(&mut sink, state, sid, &reply).await;
                    continue;
                }
                if !last {
                    continue;
                }
                let complete = std::mem::take(&mut turn);
                state.with_call(sid, |record| record.heard.push(complete));
                if on_hold {
                    continue;
                }
                match lines.next() {
                    Some(Line::Say(reply) | Line::Interrupt(reply)) => {
                        say(&mut sink, state, sid, &reply).await;
                    }
                    Some(Line::Dtmf(digit)) => {
                        state.with_call(sid, |record| record.said.push(format!("[dtmf {digit}]")));
                        let dtmf = json!({"type": "dtmf", "digit": digit.to_string()});
                        let _ = sink.send(Message::Text(dtmf.to_string().into())).await;
                    }
                    Some(Line::Hold) => on_hold = true,
                    Some(Line::HangUp) => {
                        let _ = sink.send(Message::Close(None)).await;
                        return EndedBy::Callee;
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
}

async fn say<S>(sink: &mut S, state: &FakeState, sid: &str, text: &str)
where
    S: futures_util::Sink<Message> + Unpin,
{
    state.with_call(sid, |record| record.said.push(text.to_owned()));
    let prompt = json!({"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": true});
    let _ = sink.send(Message::Text(prompt.to_string().into())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_twilio() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            sign(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn reads_the_relay_from_twiml() {
        let twiml = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><ConversationRelay url="ws://127.0.0.1:9/twilio/calls/k/relay?a=1&amp;b=2" language="en-US"><Parameter name="call_id" value="c1"/></ConversationRelay></Connect></Response>"#;
        let (url, parameters) = relay_of(twiml).expect("a relay");
        assert_eq!(url, "ws://127.0.0.1:9/twilio/calls/k/relay?a=1&b=2");
        assert_eq!(parameters["call_id"], "c1");
    }

    #[test]
    fn test_numbers_pick_outcomes() {
        assert_eq!(Scenario::for_number("+14155550101").answer, Answer::Busy);
        assert_eq!(Scenario::for_number("+14155550103").answer, Answer::Machine);
        assert_eq!(
            Scenario::for_number("+14155550104").answer,
            Answer::Fail { sip: 503 }
        );
        assert_eq!(Scenario::for_number("+14155551234").answer, Answer::Human);
    }
}
