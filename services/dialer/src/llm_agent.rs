//! The LLM agent: each turn asks an OpenAI-compatible `/chat/completions`
//! endpoint (streaming, SSE) what to say next, given the call's prompt, context,
//! language and `returns`. The call's HTTP `tools` are offered as function
//! tools: `policy: read` ones run whenever the model calls them;
//! `confirm_first_write` ones only when the callee has just agreed to a
//! question of ours (otherwise the model is told to ask first). The model ends
//! the call with the built-in `end_call` function.
//!
//! Text is streamed to the line as the model produces it, through a
//! [`SpeechChannel`] (the Twilio carrier is one); the turn's full text is then
//! returned to the pipeline, which says what was not streamed yet and writes
//! the transcript. A turn that fails or outlasts the turn timeout gets a
//! fallback line instead: first "could you say that again", and after a second
//! failure in a row a polite goodbye.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use ringer::call::{Call, Language};
use ringer::returns::{FieldKind, ReturnsSchema};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::agent::{
    Agent, AgentError, AgentTurn, Conversation, ScriptedAgent, humanise_field_name,
};
use crate::carrier::Heard;
use ringer::config::Secret;

/// The function the model calls to hang up.
pub const END_CALL: &str = "end_call";
/// Longest tool response body handed to the model, in characters.
const TOOL_BODY_CHARS: usize = 4000;
/// Longest `context` rendered into the system prompt, in characters.
const CONTEXT_CHARS: usize = 4000;
/// Callee silence after which the model is asked what to do.
const SILENCE_BEFORE_NUDGE: Duration = Duration::from_secs(8);

/// Where the agent streams text while the model produces it, and learns what
/// the callee heard of a turn they interrupted.
pub trait SpeechChannel: Send + Sync + 'static {
    /// Speaks `token` on the call's line now, ahead of the end of the turn.
    /// False when it could not (no live line); the turn is then said whole.
    fn stream_token(&self, call_id: Uuid, token: &str) -> bool;

    /// What the callee heard of our last turn before speaking over it, once.
    fn take_interruption(&self, call_id: Uuid) -> Option<String>;
}

/// The agent's settings (`RINGER_AGENT=llm`).
#[derive(Debug, Clone, clap::Args)]
pub struct LlmAgentArgs {
    /// Base URL of the OpenAI-compatible API for the agent, without `/chat/completions`.
    #[arg(long, env = "RINGER_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,

    /// Model the agent talks with.
    #[arg(long, env = "RINGER_LLM_MODEL")]
    pub llm_model: Option<String>,

    /// Bearer token for the LLM endpoint (optional for local endpoints).
    #[arg(long, env = "RINGER_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<Secret>,

    /// Milliseconds one agent turn (model requests and tool calls) may take before the fallback line.
    #[arg(long, env = "RINGER_LLM_TURN_TIMEOUT_MS", default_value_t = 8000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub llm_turn_timeout_ms: u64,

    /// Model requests per turn at most (each tool round is one).
    #[arg(long, env = "RINGER_LLM_MAX_TOOL_ROUNDS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    pub llm_max_tool_rounds: u32,
}

impl Default for LlmAgentArgs {
    /// The defaults of the environment variables, with no endpoint configured.
    fn default() -> Self {
        Self {
            llm_base_url: None,
            llm_model: None,
            llm_api_key: None,
            llm_turn_timeout_ms: 8000,
            llm_max_tool_rounds: 3,
        }
    }
}

impl LlmAgentArgs {
    /// `dev_mode` lets tools call private addresses (tests, local stacks).
    pub fn settings(&self, dev_mode: bool) -> anyhow::Result<LlmAgentSettings> {
        let base_url = self
            .llm_base_url
            .clone()
            .filter(|url| !url.trim().is_empty())
            .context("RINGER_LLM_BASE_URL is required when RINGER_AGENT=llm")?;
        let model = self
            .llm_model
            .clone()
            .filter(|model| !model.trim().is_empty())
            .context("RINGER_LLM_MODEL is required when RINGER_AGENT=llm")?;
        Ok(LlmAgentSettings {
            base_url,
            model,
            api_key: self.llm_api_key.as_ref().map(|key| key.expose().to_owned()),
            turn_timeout: Duration::from_millis(self.llm_turn_timeout_ms),
            max_rounds: self.llm_max_tool_rounds,
            default_tool_timeout: Duration::from_secs(5),
            allow_private_tool_urls: dev_mode,
        })
    }
}

#[derive(Clone)]
pub struct LlmAgentSettings {
    /// Up to and without `/chat/completions` (`https://api.openai.com/v1`).
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// One turn: every model request and tool call of it.
    pub turn_timeout: Duration,
    /// Model requests per turn at most.
    pub max_rounds: u32,
    /// For tools without `timeout_ms`.
    pub default_tool_timeout: Duration,
    /// Tools may call loopback and private addresses (dev mode only: SSRF).
    pub allow_private_tool_urls: bool,
}

impl fmt::Debug for LlmAgentSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmAgentSettings")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("turn_timeout", &self.turn_timeout)
            .field("max_rounds", &self.max_rounds)
            .finish_non_exhaustive()
    }
}

struct Shared {
    settings: LlmAgentSettings,
    endpoint: reqwest::Url,
    http: reqwest::Client,
    speech: Option<Arc<dyn SpeechChannel>>,
}

/// The LLM agent. Cheap to clone.
#[derive(Clone)]
pub struct LlmAgent {
    shared: Arc<Shared>,
}

impl LlmAgent {
    pub fn new(settings: LlmAgentSettings) -> anyhow::Result<Self> {
        Self::with_speech(settings, None)
    }

    /// An agent that streams its text through `speech` as the model writes it.
    pub fn with_speech(
        settings: LlmAgentSettings,
        speech: Option<Arc<dyn SpeechChannel>>,
    ) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(&settings.base_url)
            .with_context(|| format!("RINGER_LLM_BASE_URL {:?} is not a URL", settings.base_url))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!(
                "RINGER_LLM_BASE_URL {:?} must be http or https",
                settings.base_url
            );
        }
        let endpoint = reqwest::Url::parse(&format!(
            "{}/chat/completions",
            settings.base_url.trim_end_matches('/')
        ))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client of the LLM agent")?;
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                endpoint,
                http,
                speech,
            }),
        })
    }
}

impl Agent for LlmAgent {
    type Conversation = LlmConversation;

    fn start(&self, call: &Call) -> LlmConversation {
        let tools = parse_tools(call);
        LlmConversation {
            shared: self.shared.clone(),
            call_id: call.id,
            language: call.language,
            messages: vec![json!({"role": "system", "content": system_prompt(call, &tools)})],
            tool_specs: tool_specs(&tools),
            tools,
            greeted: false,
            silence: Duration::ZERO,
            failures: 0,
            last_said: None,
            consent: false,
        }
    }

    fn voicemail_message(&self, call: &Call) -> String {
        // Said once to a machine: the deterministic message needs no model.
        ScriptedAgent.voicemail_message(call)
    }
}

/// Whether a tool changes something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolPolicy {
    Read,
    ConfirmFirstWrite,
}

/// An HTTP tool of the call (API.md: `{type:"http", name, description, url,
/// parameters, policy, headers?, timeout_ms?}`), called with a POST of its
/// arguments as JSON.
#[derive(Debug, Clone)]
pub struct HttpTool {
    pub name: String,
    pub description: String,
    pub url: String,
    pub parameters: Value,
    pub policy: ToolPolicy,
    pub headers: Vec<(String, String)>,
    pub timeout: Option<Duration>,
}

/// The call's usable tools; malformed ones are skipped with a warning (the API
/// validates them; a stored one that no longer fits must not stop the call).
pub fn parse_tools(call: &Call) -> Vec<HttpTool> {
    let Some(Value::Array(items)) = &call.tools else {
        return Vec::new();
    };
    let mut tools: Vec<HttpTool> = Vec::new();
    for item in items {
        let text = |key: &str| item.get(key).and_then(Value::as_str).map(str::to_owned);
        let (Some(name), Some(url)) = (text("name"), text("url")) else {
            tracing::warn!(call_id = %call.id, "a tool without name or url; skipped");
            continue;
        };
        if name == END_CALL || tools.iter().any(|tool| tool.name == name) {
            tracing::warn!(call_id = %call.id, tool = %name, "duplicate or reserved tool name; skipped");
            continue;
        }
        if text("type").is_some_and(|kind| kind != "http") {
            tracing::warn!(call_id = %call.id, tool = %name, "a tool of an unknown type; skipped");
            continue;
        }
        let policy = match text("policy").as_deref() {
            Some("read") => ToolPolicy::Read,
            // Unknown or missing: the safe side.
            _ => ToolPolicy::ConfirmFirstWrite,
        };
        let headers = item
            .get("headers")
            .and_then(Value::as_object)
            .map(|headers| {
                headers
                    .iter()
                    .filter_map(|(name, value)| Some((name.clone(), value.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let parameters = match item.get("parameters") {
            Some(schema @ Value::Object(_)) => schema.clone(),
            _ => json!({"type": "object", "properties": {}}),
        };
        tools.push(HttpTool {
            description: text("description").unwrap_or_default(),
            timeout: item
                .get("timeout_ms")
                .and_then(Value::as_u64)
                .map(|ms| Duration::from_millis(ms.clamp(100, 30_000))),
            name,
            url,
            parameters,
            policy,
            headers,
        });
    }
    tools
}

fn tool_specs(tools: &[HttpTool]) -> Vec<Value> {
    let mut specs: Vec<Value> = tools
        .iter()
        .map(|tool| {
            let description = match tool.policy {
                ToolPolicy::Read => tool.description.clone(),
                ToolPolicy::ConfirmFirstWrite => format!(
                    "{} (Changes something: first tell the callee exactly what you will do and ask \
                     them to confirm; call this only right after they said yes.)",
                    tool.description
                ),
            };
            json!({"type": "function", "function": {
                "name": tool.name, "description": description, "parameters": tool.parameters,
            }})
        })
        .collect();
    specs.push(json!({"type": "function", "function": {
        "name": END_CALL,
        "description": "Hang up. Call it once the conversation is over (you have what you need, \
                        or the callee wants to stop), after saying goodbye.",
        "parameters": {"type": "object", "properties": {
            "goodbye": {"type": "string", "description": "Your last words, if you have not said goodbye yet."}
        }},
    }}));
    specs
}

fn field_type(kind: &FieldKind) -> String {
    match kind {
        FieldKind::Enum(options) => format!("one of: {}", options.join(", ")),
        FieldKind::Date => "a date".to_owned(),
        FieldKind::DateTime => "a date and time".to_owned(),
        FieldKind::Boolean => "yes or no".to_owned(),
        FieldKind::Integer => "a whole number".to_owned(),
        FieldKind::Number => "a number".to_owned(),
        FieldKind::String => "text".to_owned(),
    }
}

/// The instructions of one call.
pub fn system_prompt(call: &Call, tools: &[HttpTool]) -> String {
    let language = match call.language {
        Language::En => "English",
        Language::Es => "Spanish",
    };
    let mut context = serde_json::to_string_pretty(&call.context).unwrap_or_default();
    if context.chars().count() > CONTEXT_CHARS {
        context = context.chars().take(CONTEXT_CHARS).collect::<String>() + " …";
    }
    let fields = match call.returns.as_ref().map(ReturnsSchema::parse) {
        Some(Ok(schema)) => schema
            .fields
            .iter()
            .map(|field| {
                let description = field
                    .description
                    .as_deref()
                    .map(|text| format!(" — {text}"))
                    .unwrap_or_default();
                format!(
                    "- {} ({}){description}",
                    humanise_field_name(&field.name),
                    field_type(&field.kind)
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    let fields = if fields.is_empty() {
        "Nothing specific; accomplish the task.".to_owned()
    } else {
        fields
    };
    let tools_note = if tools.is_empty() {
        String::new()
    } else {
        "\nYou have tools. Use the ones that only look things up whenever they help. Tools that \
         change something need the callee's consent: say exactly what you will do, ask them to \
         confirm, and call the tool only after they said yes.\n"
            .to_owned()
    };
    format!(
        "You are an AI voice assistant placing an outbound phone call for a client. The callee \
         hears you through text-to-speech: answer in one or two short, natural spoken sentences, \
         without lists, markdown or emojis.\n\
         Speak only {language}.\n\n\
         Task from the client:\n{prompt}\n\n\
         Facts you may use (JSON):\n{context}\n\n\
         Information to get from the callee, one question at a time (never invent an answer; \
         when they do not know or refuse, move on):\n{fields}\n{tools_note}\n\
         Start by greeting the callee and saying why you are calling. When you have what you \
         need, or the callee wants to stop, thank them, say goodbye and call {END_CALL}. If \
         asked, say that you are an AI assistant.",
        prompt = call.prompt.trim(),
    )
}

/// A tool call as the model streamed it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// One model answer, reassembled from its stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelReply {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
}

/// Folds one SSE `data:` payload into `reply`; returns the content it added.
/// Err for a payload that is not a chat-completion chunk.
pub fn apply_chunk(reply: &mut ModelReply, payload: &str) -> anyhow::Result<String> {
    let chunk: Value = serde_json::from_str(payload).context("an unreadable stream chunk")?;
    if let Some(error) = chunk.get("error") {
        bail!("the model stream reported an error: {error}");
    }
    let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
        return Ok(String::new());
    };
    // Streams carry `delta`; a server that ignored `stream` sends `message`.
    let delta = choice.get("delta").or_else(|| choice.get("message"));
    let Some(delta) = delta else {
        return Ok(String::new());
    };
    let added = delta
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    reply.content.push_str(&added);
    if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
        for (position, call) in calls.iter().enumerate() {
            let index = call
                .get("index")
                .and_then(Value::as_u64)
                .map_or(position, |index| index as usize);
            while reply.tool_calls.len() <= index {
                reply.tool_calls.push(ToolCall::default());
            }
            let slot = &mut reply.tool_calls[index];
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                slot.id = id.to_owned();
            }
            if let Some(function) = call.get("function") {
                if let Some(name) = function.get("name").and_then(Value::as_str) {
                    slot.name.push_str(name);
                }
                if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
                    slot.arguments.push_str(arguments);
                }
            }
        }
    }
    Ok(added)
}

/// Words that agree, in every supported language.
const AGREEMENT: [&str; 30] = [
    "yes",
    "yeah",
    "yep",
    "yup",
    "sure",
    "ok",
    "okay",
    "correct",
    "right",
    "please",
    "go ahead",
    "sounds good",
    "that works",
    "do it",
    "confirm",
    "absolutely",
    "definitely",
    "of course",
    "sí",
    "si",
    "claro",
    "vale",
    "de acuerdo",
    "adelante",
    "correcto",
    "perfecto",
    "por supuesto",
    "hágalo",
    "confirmo",
    "dale",
];
/// Words that hold back, checked first.
const REFUSAL: [&str; 14] = [
    "no",
    "nope",
    "don't",
    "do not",
    "not",
    "wait",
    "hold on",
    "cancel",
    "never",
    "mejor no",
    "todavía no",
    "espere",
    "nunca",
    "cancele",
];

fn words(text: &str) -> String {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect();
    format!(
        " {} ",
        cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// Whether the callee's words agree (and do not refuse).
pub fn is_agreement(text: &str) -> bool {
    let padded = words(text);
    let has = |phrase: &str| padded.contains(&format!(" {phrase} "));
    !REFUSAL.iter().any(|phrase| has(phrase)) && AGREEMENT.iter().any(|phrase| has(phrase))
}

/// One call's conversation with the model.
pub struct LlmConversation {
    shared: Arc<Shared>,
    call_id: Uuid,
    language: Language,
    messages: Vec<Value>,
    tools: Vec<HttpTool>,
    tool_specs: Vec<Value>,
    greeted: bool,
    silence: Duration,
    /// Failed turns in a row.
    failures: u32,
    /// What we said last (to tell a consent question).
    last_said: Option<String>,
    /// This turn answers a question of ours with agreement.
    consent: bool,
}

/// The text of a turn: what was streamed, and what is still to say.
#[derive(Default)]
struct TurnText {
    text: String,
}

impl LlmConversation {
    fn speak(&self, spoken: &mut TurnText, piece: &str) {
        if piece.is_empty() {
            return;
        }
        spoken.text.push_str(piece);
        if let Some(speech) = &self.shared.speech {
            speech.stream_token(self.call_id, piece);
        }
    }

    /// Streams one model request, speaking its content as it arrives.
    async fn complete(
        &self,
        offer_tools: bool,
        spoken: &mut TurnText,
    ) -> anyhow::Result<ModelReply> {
        let settings = &self.shared.settings;
        let mut body = json!({
            "model": settings.model,
            "messages": self.messages,
            "stream": true,
            "temperature": 0.3,
        });
        if offer_tools {
            body["tools"] = Value::Array(self.tool_specs.clone());
            body["tool_choice"] = json!("auto");
        }
        let mut request = self
            .shared
            .http
            .post(self.shared.endpoint.clone())
            .json(&body);
        if let Some(key) = &settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.context("could not reach the model")?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!(
                "the model answered HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            );
        }
        let mut reply = ModelReply::default();
        let mut started = false;
        let mut pending = String::new();
        let mut done = false;
        let mut stream = response.bytes_stream();
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.context("the model stream broke")?;
            pending.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let line = line.trim();
                let Some(payload) = line.strip_prefix("data:") else {
                    continue;
                };
                let payload = payload.trim();
                if payload == "[DONE]" {
                    done = true;
                    break;
                }
                let added = apply_chunk(&mut reply, payload)?;
                if !added.is_empty() {
                    // Rounds of one turn are said as one text, a space apart.
                    if !started && !spoken.text.is_empty() && !added.starts_with(' ') {
                        self.speak(spoken, " ");
                    }
                    started = true;
                    self.speak(spoken, &added);
                }
            }
            if done {
                break;
            }
        }
        if !done {
            // A plain JSON answer (the server ignored `stream`) has no [DONE].
            let rest = pending.trim();
            if rest.starts_with('{') {
                let added = apply_chunk(&mut reply, rest)?;
                if !spoken.text.is_empty() && !added.is_empty() {
                    self.speak(spoken, " ");
                }
                self.speak(spoken, &added);
            } else if reply.content.is_empty() && reply.tool_calls.is_empty() {
                bail!("the model stream ended before [DONE]");
            } else {
                bail!("the model stream was cut off");
            }
        }
        Ok(reply)
    }

    /// One turn: model requests and tool calls until the model has spoken.
    async fn run_turn(&mut self, spoken: &mut TurnText) -> anyhow::Result<AgentTurn> {
        let max_rounds = self.shared.settings.max_rounds;
        for round in 1..=max_rounds {
            let reply = self
                .complete(round < max_rounds || max_rounds == 1, spoken)
                .await?;
            let mut message = json!({"role": "assistant", "content": reply.content});
            if !reply.tool_calls.is_empty() {
                message["tool_calls"] = reply
                    .tool_calls
                    .iter()
                    .map(|call| {
                        json!({"id": call.id, "type": "function",
                               "function": {"name": call.name, "arguments": call.arguments}})
                    })
                    .collect();
            }
            self.messages.push(message);
            if reply.tool_calls.is_empty() {
                return Ok(if spoken.text.trim().is_empty() {
                    AgentTurn::Wait
                } else {
                    AgentTurn::Say(spoken.text.clone())
                });
            }
            let mut hang_up = false;
            for call in &reply.tool_calls {
                let result = if call.name == END_CALL {
                    hang_up = true;
                    let goodbye = serde_json::from_str::<Value>(&call.arguments)
                        .ok()
                        .and_then(|args| args.get("goodbye")?.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    let goodbye = goodbye.trim();
                    if !goodbye.is_empty() {
                        if !spoken.text.is_empty() {
                            self.speak(spoken, " ");
                        }
                        self.speak(spoken, goodbye);
                    }
                    json!({"ok": true})
                } else {
                    self.run_tool(call).await
                };
                self.messages.push(json!({
                    "role": "tool", "tool_call_id": call.id, "content": result.to_string(),
                }));
            }
            if hang_up {
                return Ok(if spoken.text.trim().is_empty() {
                    AgentTurn::HangUp
                } else {
                    AgentTurn::SayAndHangUp(spoken.text.clone())
                });
            }
        }
        if spoken.text.trim().is_empty() {
            bail!("the model called tools for {max_rounds} rounds without saying anything");
        }
        Ok(AgentTurn::Say(spoken.text.clone()))
    }

    async fn run_tool(&self, call: &ToolCall) -> Value {
        let Some(tool) = self.tools.iter().find(|tool| tool.name == call.name) else {
            return json!({"error": format!("there is no tool named {:?}", call.name)});
        };
        let policy = match tool.policy {
            ToolPolicy::Read => "read",
            ToolPolicy::ConfirmFirstWrite => "confirm_first_write",
        };
        let count = |outcome: &'static str| {
            metrics::counter!("ringer_agent_tool_calls_total", "policy" => policy, "outcome" => outcome)
                .increment(1);
        };
        let arguments: Value = match serde_json::from_str(if call.arguments.trim().is_empty() {
            "{}"
        } else {
            &call.arguments
        }) {
            Ok(arguments) => arguments,
            Err(_) => {
                count("bad_arguments");
                return json!({"error": "the arguments are not valid JSON; call the tool again"});
            }
        };
        if tool.policy == ToolPolicy::ConfirmFirstWrite && !self.consent {
            count("held_for_consent");
            tracing::info!(call_id = %self.call_id, tool = %tool.name, "write tool held back: no consent yet");
            return json!({
                "status": "not_executed",
                "reason": "The callee has not agreed to this yet. Tell them exactly what you are \
                           about to do and ask them to confirm; call the tool again only after \
                           they said yes.",
            });
        }
        match self.call_http_tool(tool, &arguments).await {
            Ok(result) => {
                count("called");
                result
            }
            Err(error) => {
                count("failed");
                tracing::warn!(call_id = %self.call_id, tool = %tool.name, error = format!("{error:#}"), "tool call failed");
                json!({"error": format!("{error:#}")})
            }
        }
    }

    async fn call_http_tool(&self, tool: &HttpTool, arguments: &Value) -> anyhow::Result<Value> {
        let url = reqwest::Url::parse(&tool.url).context("the tool URL is invalid")?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("the tool URL must be http or https");
        }
        if !self.shared.settings.allow_private_tool_urls {
            let host = url.host_str().context("the tool URL has no host")?;
            let port = url.port_or_known_default().unwrap_or(443);
            ringer::url_guard::check_host(host, port).await?;
        }
        let timeout = tool
            .timeout
            .unwrap_or(self.shared.settings.default_tool_timeout);
        let mut request = self.shared.http.post(url).json(arguments).timeout(timeout);
        for (name, value) in &tool.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|error| {
            if error.is_timeout() {
                anyhow::anyhow!("the tool did not answer within {timeout:?}")
            } else {
                anyhow::anyhow!("the tool could not be reached: {error}")
            }
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str::<Value>(&text)
            .ok()
            .filter(|_| text.len() <= TOOL_BODY_CHARS)
            .unwrap_or_else(|| Value::String(text.chars().take(TOOL_BODY_CHARS).collect()));
        Ok(json!({"status": status, "body": body}))
    }

    fn fallback(&self, give_up: bool) -> String {
        match (self.language, give_up) {
            (Language::En, false) => "Sorry, I missed that. Could you say it again?",
            (Language::Es, false) => "Perdone, no le he entendido bien. ¿Me lo puede repetir?",
            (Language::En, true) => {
                "I'm sorry, I'm having technical trouble. We'll call you back later. Goodbye."
            }
            (Language::Es, true) => {
                "Lo siento, tengo un problema técnico. Le volveremos a llamar más tarde. Adiós."
            }
        }
        .to_owned()
    }
}

impl Conversation for LlmConversation {
    async fn respond(&mut self, heard: &Heard) -> Result<AgentTurn, AgentError> {
        let note = match heard {
            Heard::HungUp => return Ok(AgentTurn::HangUp),
            Heard::Silence { duration } if self.greeted => {
                self.silence += *duration;
                if self.silence < SILENCE_BEFORE_NUDGE {
                    return Ok(AgentTurn::Wait);
                }
                format!(
                    "(The callee has been silent for {} seconds.)",
                    self.silence.as_secs()
                )
            }
            Heard::Silence { .. } => {
                "(The callee picked up and has not said anything yet.)".to_owned()
            }
            Heard::Speech { text, .. } => {
                if let Some(speech) = &self.shared.speech
                    && let Some(heard_part) = speech.take_interruption(self.call_id)
                {
                    // The model should know what the callee actually heard.
                    if let Some(last) = self.messages.iter_mut().rev().find(|message| {
                        message["role"] == "assistant" && message["content"].is_string()
                    }) {
                        last["content"] =
                            json!(format!("{heard_part}… [interrupted by the callee]"));
                    }
                }
                text.clone()
            }
        };
        self.silence = Duration::ZERO;
        self.consent = matches!(heard, Heard::Speech { text, .. } if is_agreement(text))
            && self
                .last_said
                .as_deref()
                .is_some_and(|said| said.contains('?'));
        self.messages.push(json!({"role": "user", "content": note}));

        let mut spoken = TurnText::default();
        let timeout = self.shared.settings.turn_timeout;
        let outcome = tokio::time::timeout(timeout, self.run_turn(&mut spoken)).await;
        let turn = match outcome {
            Ok(Ok(turn)) => {
                self.failures = 0;
                metrics::counter!("ringer_agent_turns_total", "outcome" => "ok").increment(1);
                turn
            }
            failed => {
                let error = match failed {
                    Ok(Err(error)) => format!("{error:#}"),
                    _ => format!("no answer within {timeout:?}"),
                };
                self.failures += 1;
                let give_up = self.failures >= 2;
                metrics::counter!("ringer_agent_turns_total", "outcome" => "fallback").increment(1);
                tracing::warn!(call_id = %self.call_id, %error, failures = self.failures, "the model failed; saying the fallback line");
                let line = self.fallback(give_up);
                self.messages
                    .push(json!({"role": "assistant", "content": line}));
                if give_up {
                    AgentTurn::SayAndHangUp(line)
                } else {
                    AgentTurn::Say(line)
                }
            }
        };
        match &turn {
            AgentTurn::Say(text) | AgentTurn::SayAndHangUp(text) => {
                self.greeted = true;
                self.last_said = Some(text.clone());
            }
            AgentTurn::Wait | AgentTurn::HangUp => {}
        }
        Ok(turn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_is_read_from_the_callees_words() {
        for yes in [
            "Yes.",
            "Yeah, go ahead!",
            "Sure, please book it",
            "Sí, claro.",
            "De acuerdo",
            "OK",
        ] {
            assert!(is_agreement(yes), "{yes}");
        }
        for no in [
            "No.",
            "No, don't.",
            "Wait, not yet",
            "I'm not sure",
            "Mejor no, gracias",
            "Maybe later",
            "What time?",
        ] {
            assert!(!is_agreement(no), "{no}");
        }
    }

    #[test]
    fn stream_chunks_reassemble_content_and_tool_calls() {
        let mut reply = ModelReply::default();
        let chunks = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Let me"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":" check."}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\"da"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"y\":1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        ];
        let added: Vec<String> = chunks
            .iter()
            .map(|chunk| apply_chunk(&mut reply, chunk).unwrap())
            .collect();
        assert_eq!(added, ["Let me", " check.", "", "", ""]);
        assert_eq!(
            reply,
            ModelReply {
                content: "Let me check.".into(),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "lookup".into(),
                    arguments: r#"{"day":1}"#.into(),
                }],
            }
        );
        assert!(apply_chunk(&mut reply, "not json").is_err());
        assert!(apply_chunk(&mut reply, r#"{"error":{"message":"overloaded"}}"#).is_err());
    }
}
