//! A local OpenAI-compatible `/v1/chat/completions` for tests and `make up`.
//! It answers from a script, one [`Reply`] per request in order (then the
//! fallback reply), streaming as Server-Sent Events when the request asks for
//! `stream: true`, and records every request it got.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The assistant says this.
    Text(String),
    /// The assistant calls these functions (name, arguments), after saying `content`.
    ToolCalls {
        content: String,
        calls: Vec<(String, Value)>,
    },
    /// An HTTP error with this body.
    Status(u16, String),
    /// The reply, after a pause.
    Slow(Duration, Box<Reply>),
    /// Streams this text, then drops the connection without finishing the stream.
    CutOff(String),
    /// Asks for the fields the system prompt lists, one per turn, then ends the
    /// call: a plausible agent without a model.
    Interviewer,
}

impl Reply {
    pub fn text(text: &str) -> Self {
        Reply::Text(text.to_owned())
    }

    pub fn call(name: &str, arguments: Value) -> Self {
        Reply::ToolCalls {
            content: String::new(),
            calls: vec![(name.to_owned(), arguments)],
        }
    }

    pub fn say_and_call(content: &str, name: &str, arguments: Value) -> Self {
        Reply::ToolCalls {
            content: content.to_owned(),
            calls: vec![(name.to_owned(), arguments)],
        }
    }
}

/// A request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub body: Value,
    pub authorization: Option<String>,
}

impl Recorded {
    /// The messages of the request.
    pub fn messages(&self) -> Vec<Value> {
        self.body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The names of the functions offered.
    pub fn tool_names(&self) -> Vec<String> {
        self.body["tools"]
            .as_array()
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|tool| tool["function"]["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct FakeState {
    script: Mutex<VecDeque<Reply>>,
    fallback: Reply,
    requests: Mutex<Vec<Recorded>>,
    token_delay: Duration,
}

/// A running fake; stops when dropped.
pub struct FakeLlm {
    /// `http://127.0.0.1:port/v1`: what `RINGER_LLM_BASE_URL` takes.
    pub base_url: String,
    state: Arc<FakeState>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    /// On a free loopback port; when the script runs out, every request gets 500.
    pub async fn start(script: Vec<Reply>) -> FakeLlm {
        Self::start_on(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            script,
            Reply::Status(500, "the fake's script ran out".to_owned()),
        )
        .await
        .expect("a free loopback port")
    }

    pub async fn start_on(
        addr: SocketAddr,
        script: Vec<Reply>,
        fallback: Reply,
    ) -> std::io::Result<FakeLlm> {
        let state = Arc::new(FakeState {
            script: Mutex::new(script.into()),
            fallback,
            requests: Mutex::default(),
            token_delay: Duration::from_millis(2),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeLlm {
            base_url: format!("http://{addr}/v1"),
            state,
            server,
        })
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Appends to the script.
    pub fn push(&self, reply: Reply) {
        self.state
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(reply);
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
    state
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Recorded {
            body: body.clone(),
            authorization: headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
        });
    let scripted = state
        .script
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front();
    let mut reply = scripted.unwrap_or_else(|| state.fallback.clone());
    loop {
        match reply {
            Reply::Slow(pause, inner) => {
                tokio::time::sleep(pause).await;
                reply = *inner;
            }
            Reply::Interviewer => reply = interview(&body),
            _ => break,
        }
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    match reply {
        Reply::Status(status, text) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(json!({"error": {"message": text, "type": "fake_error"}})),
        )
            .into_response(),
        Reply::Text(text) => answer(&text, &[], stream, false, state.token_delay),
        Reply::ToolCalls { content, calls } => {
            answer(&content, &calls, stream, false, state.token_delay)
        }
        Reply::CutOff(text) => answer(&text, &[], true, true, state.token_delay),
        Reply::Slow(..) | Reply::Interviewer => unreachable!("resolved above"),
    }
}

/// Splits text into word tokens that keep their leading space, like a model's.
pub fn tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c == ' ' && !current.trim().is_empty() {
            tokens.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

fn answer(
    content: &str,
    calls: &[(String, Value)],
    stream: bool,
    cut_off: bool,
    token_delay: Duration,
) -> Response {
    let tool_calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(index, (name, arguments))| {
            json!({"index": index, "id": format!("call_{index}"), "type": "function",
                   "function": {"name": name, "arguments": arguments.to_string()}})
        })
        .collect();
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    if !stream {
        let mut message = json!({"role": "assistant", "content": content});
        if !tool_calls.is_empty() {
            message["tool_calls"] = Value::Array(tool_calls);
        }
        return Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": "fake",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for token in tokens(content) {
        events.push(chunk(json!({"content": token}), None));
    }
    if cut_off {
        // The connection drops mid-answer: no finish, no [DONE].
        events.push(String::new());
    } else {
        for call in &tool_calls {
            // Arguments arrive in two pieces, as real streams split them.
            let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
            let middle = arguments.len() / 2;
            let middle = (0..=middle)
                .rev()
                .find(|at| arguments.is_char_boundary(*at))
                .unwrap_or(0);
            let mut head = call.clone();
            head["function"]["arguments"] = json!(&arguments[..middle]);
            events.push(chunk(json!({"tool_calls": [head]}), None));
            let tail =
                json!({"index": call["index"], "function": {"arguments": &arguments[middle..]}});
            events.push(chunk(json!({"tool_calls": [tail]}), None));
        }
        events.push(chunk(json!({}), Some(finish)));
        events.push("data: [DONE]\n\n".to_owned());
    }
    let body = futures_util::stream::unfold(
        (events.into_iter(), cut_off),
        move |(mut events, cut_off)| async move {
            let event = events.next()?;
            if event.is_empty() && cut_off {
                // Let what was sent reach the client before the connection breaks.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Some((
                    Err(std::io::Error::other("the fake cut the stream off")),
                    (events, cut_off),
                ));
            }
            tokio::time::sleep(token_delay).await;
            Some((Ok::<_, std::io::Error>(event), (events, cut_off)))
        },
    );
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

/// The interviewer: the fields listed under "Information to get from the
/// callee" in the system prompt, asked one per turn in the call's language
/// with the field's words (as the built-in extractor expects), then goodbye.
fn interview(body: &Value) -> Reply {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let system = messages
        .first()
        .and_then(|message| message["content"].as_str())
        .unwrap_or_default();
    let spanish = system.contains("Speak only Spanish");
    let fields: Vec<String> = system
        .split("Information to get from the callee")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with("- "))
        .map(|line| {
            line.trim_start_matches("- ")
                .split(" (")
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let asked = messages
        .iter()
        .filter(|message| message["role"] == "assistant")
        .count();
    let last_user = messages
        .iter()
        .rev()
        .find(|message| message["role"] == "user")
        .and_then(|message| message["content"].as_str())
        .unwrap_or_default();
    if last_user.starts_with("(The callee has been silent") {
        return Reply::text(if spanish {
            "¿Sigue ahí?"
        } else {
            "Are you still there?"
        });
    }
    match fields.get(asked) {
        Some(field) => {
            let question = if spanish {
                format!("¿Me puede decir su {field}?")
            } else {
                format!("Could you tell me your {field}?")
            };
            Reply::Text(if asked == 0 {
                let hello = if spanish {
                    "Hola, le llama un asistente automático."
                } else {
                    "Hello, this is an automated assistant calling."
                };
                format!("{hello} {question}")
            } else {
                question
            })
        }
        None => Reply::call(
            "end_call",
            json!({"goodbye": if spanish {
                "Muchas gracias, eso es todo. ¡Adiós!"
            } else {
                "Thank you, that's everything I needed. Goodbye!"
            }}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_their_spaces() {
        assert_eq!(tokens("Hello there, Ana."), ["Hello", " there,", " Ana."]);
        assert_eq!(tokens(""), Vec::<String>::new());
    }

    #[test]
    fn the_interviewer_asks_each_field_then_ends() {
        let system = "…\nInformation to get from the callee, one question at a time:\n- preferred time (text)\n- confirmed (yes or no)\n\nStart…";
        let request = |assistant_turns: usize| {
            let mut messages = vec![json!({"role": "system", "content": system})];
            for _ in 0..assistant_turns {
                messages.push(json!({"role": "user", "content": "hi"}));
                messages.push(json!({"role": "assistant", "content": "q"}));
            }
            messages.push(json!({"role": "user", "content": "hi"}));
            json!({"messages": messages})
        };
        assert!(
            matches!(interview(&request(0)), Reply::Text(text) if text.ends_with("Could you tell me your preferred time?"))
        );
        assert!(
            matches!(interview(&request(1)), Reply::Text(text) if text == "Could you tell me your confirmed?")
        );
        assert!(
            matches!(interview(&request(2)), Reply::ToolCalls { calls, .. } if calls[0].0 == "end_call")
        );
    }
}
