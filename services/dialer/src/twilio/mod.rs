//! The Twilio carrier: Programmable Voice places the call (REST), status and
//! answering-machine-detection callbacks report its progress, and
//! ConversationRelay carries the conversation as text over a WebSocket that the
//! dialer serves (Twilio does speech-to-text and text-to-speech).
//!
//! Every placed call gets a random key; its callback URLs and its WebSocket URL
//! carry the key (`/twilio/calls/{key}/status|amd|relay`), so callbacks that
//! arrive before the REST answer (Twilio's `initiated` can) still find their leg.
//! Every callback and the WebSocket handshake must carry a valid
//! `X-Twilio-Signature` (403 otherwise): the routes are safe to expose.
//!
//! The routes live on their own listener (`RINGER_TWILIO_HTTP_ADDR`), apart from
//! `/metrics` and the other operational routes, so that only they are published.
//! Callbacks reach the replica that placed the call only: give each dialer
//! replica its own `RINGER_PUBLIC_BASE_URL` (or route `/twilio/calls/{key}` to it).

pub mod relay;
pub mod rest;
mod routes;
pub mod signature;
pub mod status;
pub mod twiml;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use ringer::call::{Call, Language, VoicemailAction};
use ringer::config::scale_duration;
use ringer::retry::RetryPolicy;
use ringer::twilio::{TwilioAccount, TwilioAccountArgs};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::carrier::{AnsweredBy, CallLeg, Carrier, CarrierError, Heard, Progress, Spoken};
use crate::llm_agent::SpeechChannel;

use self::relay::{Inbound, Outbound};
use self::rest::RestClient;
use self::status::{StatusUpdate, TwilioStatus};

pub use self::routes::serve;

pub use ringer::config::Secret;
pub use ringer::twilio::TWILIO_API_BASE;

/// The Twilio settings of the dialer (`RINGER_CARRIER=twilio` or `twilio-fake`).
#[derive(Debug, Clone, clap::Args)]
pub struct TwilioArgs {
    /// Account SID, auth token and REST base URL (`RINGER_TWILIO_ACCOUNT_SID`, `_AUTH_TOKEN`, `_API_BASE`).
    #[command(flatten)]
    pub account: TwilioAccountArgs,

    /// Public base URL at which Twilio reaches this dialer's Twilio listener (https://…; the WebSocket URL is its wss:// twin).
    #[arg(long, env = "RINGER_PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,

    /// Listener for Twilio's callbacks and the ConversationRelay WebSocket (the only routes to expose publicly).
    #[arg(long, env = "RINGER_TWILIO_HTTP_ADDR", default_value = "0.0.0.0:8090")]
    pub twilio_http_addr: SocketAddr,

    /// Seconds a call rings before Twilio gives up with no-answer.
    #[arg(long, env = "RINGER_TWILIO_RING_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(5..=600))]
    pub twilio_ring_timeout_seconds: u32,

    /// Seconds answering-machine detection may take (Twilio's MachineDetectionTimeout).
    #[arg(long, env = "RINGER_TWILIO_AMD_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(3..=59))]
    pub twilio_amd_timeout_seconds: u32,

    /// Milliseconds of callee silence (after our speech ends) before the agent hears "silence".
    #[arg(long, env = "RINGER_TWILIO_SILENCE_MS", default_value_t = 4000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub twilio_silence_ms: u64,

    /// Text-to-speech voice of English calls (the provider's default when unset).
    #[arg(long, env = "RINGER_TWILIO_VOICE_EN")]
    pub twilio_voice_en: Option<String>,

    /// Text-to-speech voice of Spanish calls (the provider's default when unset).
    #[arg(long, env = "RINGER_TWILIO_VOICE_ES")]
    pub twilio_voice_es: Option<String>,

    /// ConversationRelay ttsProvider (ElevenLabs, Google, Amazon; Twilio's default when unset).
    #[arg(long, env = "RINGER_TWILIO_TTS_PROVIDER")]
    pub twilio_tts_provider: Option<String>,
}

impl Default for TwilioArgs {
    /// The defaults of the environment variables, with nothing configured.
    fn default() -> Self {
        Self {
            account: TwilioAccountArgs::default(),
            public_base_url: None,
            twilio_http_addr: SocketAddr::from(([0, 0, 0, 0], 8090)),
            twilio_ring_timeout_seconds: 30,
            twilio_amd_timeout_seconds: 30,
            twilio_silence_ms: 4000,
            twilio_voice_en: None,
            twilio_voice_es: None,
            twilio_tts_provider: None,
        }
    }
}

impl TwilioArgs {
    /// Settings for tests: these credentials and URLs, a loopback listener, the rest default.
    pub fn new(account_sid: &str, auth_token: &str, public_base_url: &str, api_base: &str) -> Self {
        Self {
            account: TwilioAccountArgs::new(account_sid, auth_token, api_base),
            public_base_url: Some(public_base_url.to_owned()),
            twilio_http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }

    /// Checked settings. `allow_plain_http` admits `http://` public URLs (the
    /// local fake); real Twilio only connects to `wss://`.
    pub fn settings(
        &self,
        allow_plain_http: bool,
        time_scale: f64,
    ) -> anyhow::Result<TwilioSettings> {
        let account = self.account.account()?;
        let public = self
            .public_base_url
            .clone()
            .context("RINGER_PUBLIC_BASE_URL is required for the Twilio carrier: the https:// address at which Twilio reaches RINGER_TWILIO_HTTP_ADDR")?;
        let public_base_url = public.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&public_base_url)
            .with_context(|| format!("RINGER_PUBLIC_BASE_URL {public:?} is not a URL"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if allow_plain_http => {}
            "http" => bail!(
                "RINGER_PUBLIC_BASE_URL {public:?} must be https://: Twilio opens ConversationRelay only over wss://"
            ),
            _ => bail!("RINGER_PUBLIC_BASE_URL {public:?} must be an https:// URL"),
        }
        if parsed.query().is_some() {
            bail!("RINGER_PUBLIC_BASE_URL {public:?} must not have a query string");
        }
        Ok(TwilioSettings {
            account,
            public_base_url,
            ring_timeout: Duration::from_secs(self.twilio_ring_timeout_seconds.into()),
            amd_timeout: Duration::from_secs(self.twilio_amd_timeout_seconds.into()),
            silence: Duration::from_millis(self.twilio_silence_ms),
            voice_en: self.twilio_voice_en.clone(),
            voice_es: self.twilio_voice_es.clone(),
            tts_provider: self.twilio_tts_provider.clone(),
            time_scale,
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::new(4, Duration::from_millis(300)).scaled(time_scale.max(0.01)),
        })
    }
}

/// Checked settings of the Twilio carrier.
#[derive(Clone)]
pub struct TwilioSettings {
    pub account: TwilioAccount,
    /// Without a trailing slash.
    pub public_base_url: String,
    pub ring_timeout: Duration,
    pub amd_timeout: Duration,
    /// Callee silence, after our speech ends, reported as [`Heard::Silence`].
    pub silence: Duration,
    pub voice_en: Option<String>,
    pub voice_es: Option<String>,
    pub tts_provider: Option<String>,
    /// Scales our estimate of how long text-to-speech takes (0 in tests).
    pub time_scale: f64,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl fmt::Debug for TwilioSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioSettings")
            .field("account", &self.account)
            .field("public_base_url", &self.public_base_url)
            .finish_non_exhaustive()
    }
}

impl TwilioSettings {
    /// The URL Twilio posts a call's status (`kind` = `status`) or AMD result (`amd`) to.
    pub fn callback_url(&self, key: &str, kind: &str) -> String {
        format!("{}/twilio/calls/{key}/{kind}", self.public_base_url)
    }

    /// The WebSocket URL of a call's ConversationRelay session.
    pub fn relay_url(&self, key: &str) -> String {
        let https = self.callback_url(key, "relay");
        match https.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}"),
            Some(("http", rest)) => format!("ws://{rest}"),
            _ => https,
        }
    }

    fn language_tag(language: Language) -> &'static str {
        match language {
            Language::En => "en-US",
            Language::Es => "es-US",
        }
    }

    fn voice(&self, language: Language) -> Option<&str> {
        match language {
            Language::En => self.voice_en.as_deref(),
            Language::Es => self.voice_es.as_deref(),
        }
    }

    /// The form of `POST /Calls.json` for `call`, whose callbacks carry `key`.
    pub fn create_call_form(&self, call: &Call, key: &str) -> Vec<(String, String)> {
        let relay_url = self.relay_url(key);
        let parameters = [("call_id", call.id.to_string())];
        let twiml = twiml::conversation_relay(&twiml::RelaySpec {
            url: &relay_url,
            language: Self::language_tag(call.language),
            voice: self.voice(call.language),
            tts_provider: self.tts_provider.as_deref(),
            parameters: &parameters,
        });
        // Twilio's own cap a little past ours: the pipeline hangs up at
        // max_duration_seconds; this stops the meter if the dialer dies first.
        let time_limit = call.max_duration_seconds.max(1) + 30;
        let machine_detection = match call.voicemail_action {
            VoicemailAction::Hangup => "Enable",
            // Reports a machine once its greeting ended, so the message follows the beep.
            VoicemailAction::LeaveMessage => "DetectMessageEnd",
        };
        let mut form: Vec<(String, String)> = [
            ("To", call.to_number.clone()),
            ("From", call.from_number.clone()),
            ("Twiml", twiml),
            ("StatusCallback", self.callback_url(key, "status")),
            ("StatusCallbackMethod", "POST".to_owned()),
            ("Timeout", self.ring_timeout.as_secs().to_string()),
            ("TimeLimit", time_limit.to_string()),
            ("MachineDetection", machine_detection.to_owned()),
            (
                "MachineDetectionTimeout",
                self.amd_timeout.as_secs().to_string(),
            ),
            // In the background: the relay session starts at answer, and the
            // leg reports the answer once AMD said who it is.
            ("AsyncAmd", "true".to_owned()),
            ("AsyncAmdStatusCallback", self.callback_url(key, "amd")),
            ("AsyncAmdStatusCallbackMethod", "POST".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        for event in ["initiated", "ringing", "answered", "completed"] {
            form.push(("StatusCallbackEvent".to_owned(), event.to_owned()));
        }
        form
    }
}

/// What reaches a leg from the HTTP routes.
#[derive(Debug, Clone)]
enum LegEvent {
    Status(StatusUpdate),
    Amd(String),
    RelayConnected,
    Relay(Inbound),
    RelayClosed,
}

/// The WebSocket side of a leg, shared with the agent's token stream.
#[derive(Debug, Default)]
struct RelayState {
    outbound: Option<mpsc::UnboundedSender<Outbound>>,
    /// Tokens already sent of the agent's current turn (streamed ahead of `say`).
    streamed: String,
    /// The callee interrupted the current turn: its remaining tokens are dropped.
    turn_interrupted: bool,
    /// What the callee heard of our last turn before interrupting it, for the agent.
    interruption: Option<String>,
}

/// One placed call as the routes see it.
#[derive(Debug)]
struct LegLink {
    key: String,
    call_id: Uuid,
    events: mpsc::UnboundedSender<LegEvent>,
    relay: Mutex<RelayState>,
}

impl LegLink {
    fn relay(&self) -> std::sync::MutexGuard<'_, RelayState> {
        self.relay.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, event: LegEvent) {
        // The leg is gone when this fails: nothing is waiting for the event.
        let _ = self.events.send(event);
    }

    fn attach(&self, outbound: mpsc::UnboundedSender<Outbound>) {
        let mut relay = self.relay();
        relay.outbound = Some(outbound);
        relay.streamed.clear();
        relay.turn_interrupted = false;
    }

    /// Drops our sender: the socket task then closes the WebSocket.
    fn detach(&self) {
        self.relay().outbound = None;
    }

    fn note_interrupt(&self, heard: &str) {
        let mut relay = self.relay();
        if !relay.streamed.is_empty() {
            relay.turn_interrupted = true;
        }
        relay.interruption = Some(heard.to_owned());
    }

    fn send_outbound(&self, message: Outbound) -> bool {
        match &self.relay().outbound {
            Some(outbound) => outbound.send(message).is_ok(),
            None => false,
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    by_key: HashMap<String, Arc<LegLink>>,
    by_call: HashMap<Uuid, String>,
}

/// The live legs of this replica.
#[derive(Debug, Default)]
struct Sessions {
    inner: Mutex<Registry>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, link: Arc<LegLink>) {
        let mut registry = self.lock();
        registry.by_call.insert(link.call_id, link.key.clone());
        registry.by_key.insert(link.key.clone(), link);
    }

    fn by_key(&self, key: &str) -> Option<Arc<LegLink>> {
        self.lock().by_key.get(key).cloned()
    }

    fn by_call(&self, call_id: Uuid) -> Option<Arc<LegLink>> {
        let registry = self.lock();
        let key = registry.by_call.get(&call_id)?;
        registry.by_key.get(key).cloned()
    }

    fn remove(&self, key: &str) {
        let mut registry = self.lock();
        if let Some(link) = registry.by_key.remove(key) {
            if registry.by_call.get(&link.call_id).map(String::as_str) == Some(key) {
                registry.by_call.remove(&link.call_id);
            }
            link.detach();
        }
    }

    fn len(&self) -> usize {
        self.lock().by_key.len()
    }
}

struct Inner {
    settings: TwilioSettings,
    rest: RestClient,
    sessions: Sessions,
    name: &'static str,
}

/// The Twilio carrier. Cheap to clone; clones share their legs.
#[derive(Clone)]
pub struct TwilioCarrier {
    inner: Arc<Inner>,
}

impl fmt::Debug for TwilioCarrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioCarrier")
            .field("settings", &self.inner.settings)
            .field("live_legs", &self.inner.sessions.len())
            .finish()
    }
}

impl TwilioCarrier {
    /// `name` is `twilio` or `twilio-fake` (logs and metrics).
    pub fn new(settings: TwilioSettings, name: &'static str) -> anyhow::Result<Self> {
        let rest = RestClient::new(
            &settings.account,
            settings.request_timeout,
            settings.retry.clone(),
        )
        .context("building the Twilio REST client")?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                rest,
                sessions: Sessions::default(),
                name,
            }),
        })
    }

    pub fn settings(&self) -> &TwilioSettings {
        &self.inner.settings
    }

    /// The routes Twilio calls: status and AMD callbacks, the ConversationRelay WebSocket.
    pub fn router(&self) -> axum::Router {
        routes::router(self.inner.clone())
    }

    /// Legs placed and not yet hung up.
    pub fn live_legs(&self) -> usize {
        self.inner.sessions.len()
    }
}

impl Carrier for TwilioCarrier {
    type Leg = TwilioLeg;

    fn name(&self) -> &'static str {
        self.inner.name
    }

    fn transcript_source(&self) -> &'static str {
        "stt"
    }

    async fn dial(&self, call: &Call) -> Result<TwilioLeg, CarrierError> {
        let key = Uuid::new_v4().simple().to_string();
        let (events, receiver) = mpsc::unbounded_channel();
        let link = Arc::new(LegLink {
            key: key.clone(),
            call_id: call.id,
            events,
            relay: Mutex::default(),
        });
        // Registered before the request: Twilio may call back before it answers.
        self.inner.sessions.insert(link.clone());
        let form = self.inner.settings.create_call_form(call, &key);
        let created = match self.inner.rest.create_call(&form).await {
            Ok(created) => created,
            Err(error) => {
                self.inner.sessions.remove(&key);
                return Err(CarrierError::Other(anyhow::Error::new(error)));
            }
        };
        tracing::info!(call_id = %call.id, call_sid = %created.sid, status = %created.status, "Twilio call placed");
        let settings = &self.inner.settings;
        Ok(TwilioLeg {
            inner: self.inner.clone(),
            link,
            events: receiver,
            call_sid: created.sid,
            // Ringing, plus slack for Twilio queueing the call and its callbacks.
            progress_deadline: Instant::now() + settings.ring_timeout + Duration::from_secs(60),
            amd_deadline: None,
            highest: None,
            final_update: None,
            ringing_seen: false,
            answered_seen: false,
            ringing_reported: false,
            answer_reported: false,
            amd: None,
            relay_connected: false,
            relay_closed: false,
            heard: VecDeque::new(),
            speaking_until: Instant::now(),
            hung_up: false,
        })
    }

    async fn hang_up_orphan(&self, carrier_call_id: &str) -> Result<(), CarrierError> {
        match self.inner.rest.hang_up(carrier_call_id).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_client_error() => Ok(()),
            Err(error) => Err(CarrierError::Other(anyhow::Error::new(error))),
        }
    }
}

impl SpeechChannel for TwilioCarrier {
    fn stream_token(&self, call_id: Uuid, token: &str) -> bool {
        let Some(link) = self.inner.sessions.by_call(call_id) else {
            return false;
        };
        let mut relay = link.relay();
        if relay.turn_interrupted {
            return false;
        }
        let Some(outbound) = &relay.outbound else {
            return false;
        };
        let sent = outbound
            .send(Outbound::Text {
                token: token.to_owned(),
                last: false,
            })
            .is_ok();
        if sent {
            relay.streamed.push_str(token);
        }
        sent
    }

    fn take_interruption(&self, call_id: Uuid) -> Option<String> {
        let link = self.inner.sessions.by_call(call_id)?;
        link.relay().interruption.take()
    }
}

/// How long we wait for Twilio to open the WebSocket after answer.
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// After the WebSocket closed, how long the final status may take to arrive.
const CLOSE_TO_STATUS: Duration = Duration::from_secs(5);
/// After `end`, how long Twilio may take to end the call before we hang up over REST.
const END_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for our last words to be spoken before hanging up.
const MAX_SPEECH_WAIT: Duration = Duration::from_secs(30);

/// Nominal time text-to-speech takes for `text`: about 0.35 s a word.
pub fn speaking_time(text: &str) -> Duration {
    let words = text.split_whitespace().count() as u64;
    Duration::from_millis((words * 350).clamp(500, 60_000))
}

/// One call placed through Twilio.
pub struct TwilioLeg {
    inner: Arc<Inner>,
    link: Arc<LegLink>,
    events: mpsc::UnboundedReceiver<LegEvent>,
    call_sid: String,
    progress_deadline: Instant,
    /// Set at answer: the latest moment the AMD verdict is waited for.
    amd_deadline: Option<Instant>,
    /// The furthest status seen (callbacks may arrive out of order).
    highest: Option<TwilioStatus>,
    final_update: Option<StatusUpdate>,
    ringing_seen: bool,
    answered_seen: bool,
    ringing_reported: bool,
    answer_reported: bool,
    amd: Option<AnsweredBy>,
    relay_connected: bool,
    relay_closed: bool,
    heard: VecDeque<Heard>,
    /// When text-to-speech of what we said is estimated to end.
    speaking_until: Instant,
    hung_up: bool,
}

impl TwilioLeg {
    fn over(&self) -> bool {
        self.final_update.is_some()
    }

    fn absorb(&mut self, event: LegEvent) {
        match event {
            LegEvent::Status(update) => {
                if update.call_sid != self.call_sid {
                    tracing::warn!(call_sid = %self.call_sid, other = %update.call_sid, "status callback for another CallSid; ignored");
                    return;
                }
                if self.highest.is_some_and(|highest| update.status <= highest) {
                    return;
                }
                self.highest = Some(update.status);
                match update.status {
                    TwilioStatus::Queued | TwilioStatus::Initiated => {}
                    TwilioStatus::Ringing => self.ringing_seen = true,
                    TwilioStatus::InProgress => {
                        self.answered_seen = true;
                        if let Some(value) = &update.answered_by {
                            self.amd = Some(status::answered_by(value));
                        }
                    }
                    _ => self.final_update = Some(update),
                }
            }
            LegEvent::Amd(value) => {
                if self.amd.is_none() {
                    self.amd = Some(status::answered_by(&value));
                }
            }
            LegEvent::RelayConnected => self.relay_connected = true,
            LegEvent::RelayClosed => self.relay_closed = true,
            LegEvent::Relay(message) => self.absorb_relay(message),
        }
    }

    fn absorb_relay(&mut self, message: Inbound) {
        match message {
            Inbound::Setup { call_sid, .. } => {
                if !call_sid.is_empty() && call_sid != self.call_sid {
                    tracing::warn!(call_sid = %self.call_sid, other = %call_sid, "ConversationRelay session of another CallSid");
                }
            }
            Inbound::Prompt {
                voice_prompt, last, ..
            } => {
                let text = voice_prompt.trim();
                if last && !text.is_empty() {
                    self.heard.push_back(Heard::Speech {
                        duration: speaking_time(text),
                        text: text.to_owned(),
                    });
                }
            }
            Inbound::Dtmf { digit } => self.heard.push_back(Heard::Speech {
                text: format!("[pressed {digit}]"),
                duration: Duration::from_millis(300),
            }),
            // The callee spoke over us: our speech stopped there.
            Inbound::Interrupt { .. } => self.speaking_until = Instant::now(),
            Inbound::Error { description } => {
                tracing::warn!(call_sid = %self.call_sid, %description, "ConversationRelay reported an error");
            }
            Inbound::Other => {}
        }
    }

    /// The next event, or None at `deadline`. Err when the routes are gone.
    async fn next_event(&mut self, deadline: Instant) -> Result<Option<()>, CarrierError> {
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(event)) => {
                self.absorb(event);
                Ok(Some(()))
            }
            Ok(None) => Err(CarrierError::Other(anyhow::anyhow!(
                "the Twilio routes stopped"
            ))),
        }
    }

    /// Waits for the ConversationRelay WebSocket; HungUp when the call ended first.
    async fn await_relay(&mut self) -> Result<(), CarrierError> {
        let deadline = Instant::now() + RELAY_CONNECT_TIMEOUT;
        while !self.relay_connected || self.relay_closed {
            if self.over() {
                return Err(CarrierError::HungUp);
            }
            if self.relay_closed {
                return self.closed_without_status().await;
            }
            if self.next_event(deadline).await?.is_none() {
                return Err(CarrierError::Other(anyhow::anyhow!(
                    "Twilio did not open the ConversationRelay WebSocket within {RELAY_CONNECT_TIMEOUT:?} of the answer (is {} reachable?)",
                    self.inner.settings.relay_url(&self.link.key)
                )));
            }
        }
        Ok(())
    }

    /// The WebSocket closed: the callee hung up if Twilio says the call ended,
    /// else the session broke.
    async fn closed_without_status(&mut self) -> Result<(), CarrierError> {
        let deadline = Instant::now() + CLOSE_TO_STATUS;
        while !self.over() {
            if self.next_event(deadline).await?.is_none() {
                return Err(CarrierError::Other(anyhow::anyhow!(
                    "the ConversationRelay session closed while the call went on"
                )));
            }
        }
        Err(CarrierError::HungUp)
    }

    async fn wait_until(&mut self, until: Instant) -> Result<(), CarrierError> {
        while Instant::now() < until && !self.over() {
            self.next_event(until).await?;
        }
        Ok(())
    }
}

impl Drop for TwilioLeg {
    fn drop(&mut self) {
        self.inner.sessions.remove(&self.link.key);
    }
}

impl CallLeg for TwilioLeg {
    fn carrier_call_id(&self) -> &str {
        &self.call_sid
    }

    async fn progress(&mut self) -> Result<Progress, CarrierError> {
        if self.answer_reported {
            return Err(CarrierError::Other(anyhow::anyhow!(
                "progress asked after the answer"
            )));
        }
        loop {
            if self.ringing_seen && !self.ringing_reported {
                self.ringing_reported = true;
                return Ok(Progress::Ringing);
            }
            if let Some(update) = &self.final_update {
                if let Some(outcome) = update.unanswered_outcome() {
                    return Ok(outcome);
                }
                // `completed` without `in-progress` seen: answered, and already over.
                self.answer_reported = true;
                return Ok(Progress::Answered(self.amd.unwrap_or(AnsweredBy::Human)));
            }
            if self.answered_seen {
                let deadline = *self.amd_deadline.get_or_insert_with(|| {
                    Instant::now() + self.inner.settings.amd_timeout + Duration::from_secs(2)
                });
                if self.amd.is_some() || Instant::now() >= deadline {
                    self.answer_reported = true;
                    return Ok(Progress::Answered(self.amd.unwrap_or(AnsweredBy::Human)));
                }
                self.next_event(deadline).await?;
                continue;
            }
            if self.next_event(self.progress_deadline).await?.is_none() {
                return Err(CarrierError::Other(anyhow::anyhow!(
                    "no status callback from Twilio for call {} (is {} reachable from Twilio?)",
                    self.call_sid,
                    self.inner.settings.callback_url(&self.link.key, "status")
                )));
            }
        }
    }

    async fn say(&mut self, text: &str) -> Result<Spoken, CarrierError> {
        if self.over() || self.hung_up {
            return Err(CarrierError::HungUp);
        }
        self.await_relay().await?;
        let rest = {
            let mut relay = self.link.relay();
            let streamed = std::mem::take(&mut relay.streamed);
            let interrupted = std::mem::take(&mut relay.turn_interrupted);
            if interrupted {
                // Twilio dropped the turn when the callee spoke over it.
                None
            } else if let Some(rest) = text.strip_prefix(streamed.as_str()) {
                Some(rest.to_owned())
            } else {
                // The turn changed after it began streaming (the agent fell back
                // to another line): say the whole of it after what was said.
                Some(format!(" {text}"))
            }
        };
        if let Some(token) = rest
            && !self
                .link
                .send_outbound(Outbound::Text { token, last: true })
        {
            self.relay_closed = true;
            self.closed_without_status().await?;
        }
        let nominal = speaking_time(text);
        let start = self.speaking_until.max(Instant::now());
        self.speaking_until = start + scale_duration(nominal, self.inner.settings.time_scale);
        Ok(Spoken { duration: nominal })
    }

    async fn listen(&mut self) -> Result<Heard, CarrierError> {
        loop {
            if let Some(heard) = self.heard.pop_front() {
                return Ok(heard);
            }
            if self.over() {
                return Ok(Heard::HungUp);
            }
            if self.relay_closed {
                return match self.closed_without_status().await {
                    Err(CarrierError::HungUp) => Ok(Heard::HungUp),
                    other => other.map(|()| Heard::HungUp),
                };
            }
            let silence = self.inner.settings.silence;
            let deadline = self.speaking_until.max(Instant::now()) + silence;
            if self.next_event(deadline).await?.is_none() {
                return Ok(Heard::Silence { duration: silence });
            }
        }
    }

    async fn hang_up(&mut self) -> Result<(), CarrierError> {
        if self.hung_up {
            return Ok(());
        }
        self.hung_up = true;
        if !self.over() && self.relay_connected && !self.relay_closed {
            // Let our last words be spoken, then end the session: Twilio ends the call.
            let until = self.speaking_until.min(Instant::now() + MAX_SPEECH_WAIT);
            self.wait_until(until).await?;
            if !self.over() && self.link.send_outbound(Outbound::End) {
                self.wait_until(Instant::now() + END_GRACE).await?;
            }
        }
        let outcome = if self.over() {
            Ok(())
        } else {
            match self.inner.rest.hang_up(&self.call_sid).await {
                Ok(_) => Ok(()),
                // Already over on Twilio's side.
                Err(error) if error.is_client_error() => {
                    tracing::info!(call_sid = %self.call_sid, %error, "hang-up refused; the call is already over");
                    Ok(())
                }
                Err(error) => Err(CarrierError::Other(anyhow::Error::new(error))),
            }
        };
        self.inner.sessions.remove(&self.link.key);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TwilioArgs {
        TwilioArgs::new(
            "AC123",
            "token",
            "https://dialer.example.com/",
            TWILIO_API_BASE,
        )
    }

    #[test]
    fn settings_require_credentials_and_an_https_public_url() {
        let settings = args().settings(false, 1.0).expect("valid");
        assert_eq!(settings.public_base_url, "https://dialer.example.com");
        assert_eq!(
            settings.relay_url("k1"),
            "wss://dialer.example.com/twilio/calls/k1/relay"
        );
        assert_eq!(
            settings.callback_url("k1", "status"),
            "https://dialer.example.com/twilio/calls/k1/status"
        );
        assert!(!format!("{settings:?}").contains("token\""));

        let mut plain = args();
        plain.public_base_url = Some("http://127.0.0.1:9000".into());
        let error = plain.settings(false, 1.0).unwrap_err().to_string();
        assert!(error.contains("must be https://"), "{error}");
        let fake = plain.settings(true, 1.0).expect("http for the fake");
        assert_eq!(
            fake.relay_url("k"),
            "ws://127.0.0.1:9000/twilio/calls/k/relay"
        );

        let mut missing = args();
        missing.account.twilio_auth_token = None;
        assert_eq!(
            missing.settings(false, 1.0).unwrap_err().to_string(),
            "RINGER_TWILIO_AUTH_TOKEN is required for the Twilio carrier"
        );
        let mut missing = args();
        missing.public_base_url = None;
        assert!(missing.settings(false, 1.0).is_err());
    }

    #[test]
    fn the_create_form_asks_for_progress_amd_and_the_relay() {
        let settings = args().settings(false, 1.0).unwrap();
        let call: Call = serde_json::from_value(serde_json::json!({
            "id": "0190f4b4-0000-7000-8000-000000000001",
            "to_number": "+14155550100", "from_number": "+14155551234",
            "status": "initiated", "direction": "outbound", "prompt": "p",
            "context": {}, "returns": null, "language": "es",
            "result": null, "result_status": "pending", "result_error": null,
            "created_at": "2026-04-15T14:30:00Z", "started_at": null, "answered_at": null,
            "ended_at": null, "duration_seconds": null, "billed_duration_seconds": null,
            "billing_amount_milli_cents": null, "reservation_status": "reserved",
            "webhook_url": null, "webhook_status": "none", "webhook_error": null,
            "error_code": null, "error_message": null, "hangup_cause": null,
            "answered_by": null, "metadata": null, "updated_at": "2026-04-15T14:30:00Z",
            "voicemail_action": "leave_message", "max_duration_seconds": 120, "tools": null
        }))
        .unwrap();
        let form = settings.create_call_form(&call, "k1");
        let get = |name: &str| -> Vec<&str> {
            form.iter()
                .filter(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
                .collect()
        };
        assert_eq!(get("To"), ["+14155550100"]);
        assert_eq!(get("From"), ["+14155551234"]);
        assert_eq!(
            get("StatusCallback"),
            ["https://dialer.example.com/twilio/calls/k1/status"]
        );
        assert_eq!(
            get("StatusCallbackEvent"),
            ["initiated", "ringing", "answered", "completed"]
        );
        assert_eq!(get("MachineDetection"), ["DetectMessageEnd"]);
        assert_eq!(get("AsyncAmd"), ["true"]);
        assert_eq!(
            get("AsyncAmdStatusCallback"),
            ["https://dialer.example.com/twilio/calls/k1/amd"]
        );
        assert_eq!(get("TimeLimit"), ["150"]);
        let twiml = get("Twiml")[0];
        assert!(twiml.contains(r#"url="wss://dialer.example.com/twilio/calls/k1/relay""#));
        assert!(twiml.contains(r#"language="es-US""#));
        assert!(twiml.contains(
            r#"<Parameter name="call_id" value="0190f4b4-0000-7000-8000-000000000001"/>"#
        ));
    }

    #[test]
    fn speech_time_grows_with_words() {
        assert_eq!(speaking_time("Yes."), Duration::from_millis(500));
        assert_eq!(
            speaking_time("one two three four"),
            Duration::from_millis(1400)
        );
    }
}
