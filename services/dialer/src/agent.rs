//! Who talks for us: an [`Agent`] starts one [`Conversation`] per answered call and
//! decides each turn from what it heard. The embedded [`ScriptedAgent`] greets,
//! states the purpose, asks for every `returns` field in the call's language,
//! re-asks once when an answer does not fit the field, and says goodbye. An agent
//! backed by a chat-completions endpoint plugs into the same traits.

use std::future::Future;

use ringer::call::{Call, Language};
use ringer::returns::{FieldKind, FieldSpec, ReturnsSchema};

use crate::carrier::Heard;

/// The agent's next move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentTurn {
    /// Say this, then listen.
    Say(String),
    /// Say this, then hang up: the conversation is over.
    SayAndHangUp(String),
    /// Keep listening (the callee is silent, on hold, or still talking).
    Wait,
    /// Hang up without another word.
    HangUp,
}

#[derive(Debug, thiserror::Error)]
#[error("agent error: {0:#}")]
pub struct AgentError(pub anyhow::Error);

/// Starts conversations. One instance serves every call of a dialer replica.
pub trait Agent: Send + Sync + 'static {
    type Conversation: Conversation;

    /// A conversation for `call`, which the callee just answered.
    fn start(&self, call: &Call) -> Self::Conversation;

    /// What to leave on an answering machine (`voicemail_action: leave_message`).
    fn voicemail_message(&self, call: &Call) -> String;
}

/// One call's conversation, turn by turn.
pub trait Conversation: Send + 'static {
    fn respond(
        &mut self,
        heard: &Heard,
    ) -> impl Future<Output = Result<AgentTurn, AgentError>> + Send;
}

/// A field name as the agent says it: `preferred_time` → `preferred time`.
/// The built-in extractor finds the question about a field by these words, so
/// every question the scripted agent asks contains them.
pub fn humanise_field_name(name: &str) -> String {
    name.split('_')
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The embedded, deterministic agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScriptedAgent;

impl Agent for ScriptedAgent {
    type Conversation = ScriptedConversation;

    fn start(&self, call: &Call) -> ScriptedConversation {
        let fields = match call.returns.as_ref().map(ReturnsSchema::parse) {
            Some(Ok(schema)) => schema.fields,
            Some(Err(error)) => {
                // The API validates `returns`; a stored one that no longer parses
                // gets a conversation without questions rather than no call at all.
                tracing::warn!(call_id = %call.id, %error, "returns does not parse; asking nothing");
                Vec::new()
            }
            None => Vec::new(),
        };
        ScriptedConversation {
            language: call.language,
            greeting: greeting(call, fields.len()),
            fields,
            state: State::AwaitingHello,
        }
    }

    fn voicemail_message(&self, call: &Call) -> String {
        let purpose = purpose(&call.prompt);
        match call.language {
            Language::Es => format!(
                "Hola, le llama un asistente automático sobre lo siguiente: {purpose} \
                 Por favor, devuelva la llamada al {}. Adiós.",
                call.from_number
            ),
            Language::En => format!(
                "Hello, this is an automated assistant calling about the following: {purpose} \
                 Please call us back at {}. Goodbye.",
                call.from_number
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// The callee picked up; we wait for their "Hello?".
    AwaitingHello,
    /// We greeted and stated the purpose; we wait for a go-ahead.
    AwaitingGoAhead,
    /// We asked for `fields[index]`.
    AwaitingAnswer {
        index: usize,
        reasked: bool,
    },
    Done,
}

#[derive(Debug, Clone)]
pub struct ScriptedConversation {
    language: Language,
    greeting: String,
    fields: Vec<FieldSpec>,
    state: State,
}

impl ScriptedConversation {
    fn next_turn(&mut self, heard: &Heard) -> AgentTurn {
        let answer = match heard {
            Heard::HungUp => {
                self.state = State::Done;
                return AgentTurn::HangUp;
            }
            Heard::Speech { text, .. } => Some(text.as_str()),
            Heard::Silence { .. } => None,
        };
        match self.state.clone() {
            // A callee who picks up and says nothing still gets the greeting.
            State::AwaitingHello => {
                self.state = State::AwaitingGoAhead;
                AgentTurn::Say(self.greeting.clone())
            }
            State::AwaitingGoAhead => match answer {
                None => AgentTurn::Wait,
                Some(_) => self.ask_or_close(0),
            },
            State::AwaitingAnswer { index, reasked } => {
                let Some(answer) = answer else {
                    return AgentTurn::Wait;
                };
                let field = &self.fields[index];
                if !reasked && !answer_fits(field, answer) {
                    self.state = State::AwaitingAnswer {
                        index,
                        reasked: true,
                    };
                    return AgentTurn::Say(reask(field, self.language));
                }
                self.ask_or_close(index + 1)
            }
            State::Done => AgentTurn::HangUp,
        }
    }

    fn ask_or_close(&mut self, index: usize) -> AgentTurn {
        match self.fields.get(index) {
            Some(field) => {
                self.state = State::AwaitingAnswer {
                    index,
                    reasked: false,
                };
                AgentTurn::Say(question(field, self.language))
            }
            None => {
                self.state = State::Done;
                AgentTurn::SayAndHangUp(closing(self.language).to_owned())
            }
        }
    }
}

impl Conversation for ScriptedConversation {
    async fn respond(&mut self, heard: &Heard) -> Result<AgentTurn, AgentError> {
        Ok(self.next_turn(heard))
    }
}

/// The prompt as one short spoken sentence (a prompt can be long instructions).
fn purpose(prompt: &str) -> String {
    const MAX_CHARS: usize = 200;
    let trimmed = prompt.trim();
    let mut text: String = trimmed.chars().take(MAX_CHARS).collect();
    if text.chars().count() < trimmed.chars().count() {
        text.push('…');
    }
    let text = text.trim_end_matches(['.', '!', '?', ' ']).to_owned();
    format!("{text}.")
}

fn greeting(call: &Call, questions: usize) -> String {
    let name = call
        .context
        .get("name")
        .and_then(|name| name.as_str())
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| format!(" {name}"))
        .unwrap_or_default();
    let purpose = purpose(&call.prompt);
    match call.language {
        Language::Es => {
            let questions = match questions {
                0 => String::new(),
                1 => " Tengo una pregunta rápida.".to_owned(),
                n => format!(" Tengo {n} preguntas rápidas."),
            };
            format!(
                "Hola{name}, le llama un asistente automático sobre lo siguiente: {purpose}{questions}"
            )
        }
        Language::En => {
            let questions = match questions {
                0 => String::new(),
                1 => " I have one quick question.".to_owned(),
                n => format!(" I have {n} quick questions."),
            };
            format!(
                "Hello{name}, this is an automated assistant calling about the following: {purpose}{questions}"
            )
        }
    }
}

fn subject(field: &FieldSpec) -> String {
    let name = humanise_field_name(&field.name);
    match field.description.as_deref().map(str::trim) {
        Some(description) if !description.is_empty() => format!("{name} ({description})"),
        _ => name,
    }
}

fn options_list(options: &[String], or: &str) -> String {
    match options {
        [] => String::new(),
        [only] => only.clone(),
        [init @ .., last] => format!("{} {or} {last}", init.join(", ")),
    }
}

/// The question for one field, e.g. "Could you tell me your preferred time?".
pub fn question(field: &FieldSpec, language: Language) -> String {
    let subject = subject(field);
    match language {
        Language::Es => {
            let hint = match &field.kind {
                FieldKind::Boolean => " Basta con sí o no.".to_owned(),
                FieldKind::Integer | FieldKind::Number => " Basta con un número.".to_owned(),
                FieldKind::Date => " ¿Qué fecha es?".to_owned(),
                FieldKind::DateTime => " ¿Qué día y a qué hora?".to_owned(),
                FieldKind::Enum(options) => format!(" ¿Es {}?", options_list(options, "o")),
                FieldKind::String => String::new(),
            };
            format!("¿Me puede decir su {subject}?{hint}")
        }
        Language::En => {
            let hint = match &field.kind {
                FieldKind::Boolean => " A yes or no is fine.".to_owned(),
                FieldKind::Integer | FieldKind::Number => " A number is fine.".to_owned(),
                FieldKind::Date => " Which date is it?".to_owned(),
                FieldKind::DateTime => " Which day and time?".to_owned(),
                FieldKind::Enum(options) => format!(" Is it {}?", options_list(options, "or")),
                FieldKind::String => String::new(),
            };
            format!("Could you tell me your {subject}?{hint}")
        }
    }
}

fn reask(field: &FieldSpec, language: Language) -> String {
    match language {
        Language::Es => format!("Perdone, no le he entendido. {}", question(field, language)),
        Language::En => format!("Sorry, I didn't catch that. {}", question(field, language)),
    }
}

fn closing(language: Language) -> &'static str {
    match language {
        Language::Es => "Muchas gracias, eso es todo lo que necesitaba. ¡Adiós!",
        Language::En => "Thank you, that's everything I needed. Goodbye!",
    }
}

/// Phrases that answer nothing, in every supported language.
const NON_ANSWERS: [&str; 8] = [
    "don't know",
    "not sure",
    "rather not",
    "can't say",
    "no lo sé",
    "no estoy seguro",
    "prefiero no",
    "no sabría",
];

/// Whether `answer` plausibly answers `field` (the scripted agent re-asks once
/// when it does not). Deliberately simple: extraction proper is the extractor's job.
pub fn answer_fits(field: &FieldSpec, answer: &str) -> bool {
    let lower = answer.to_lowercase();
    if lower.trim().is_empty() || NON_ANSWERS.iter().any(|phrase| lower.contains(phrase)) {
        return false;
    }
    let first_word: String = lower
        .trim_start_matches(['¿', '¡', ' '])
        .chars()
        .take_while(|c| c.is_alphabetic())
        .collect();
    match &field.kind {
        FieldKind::Boolean => matches!(
            first_word.as_str(),
            "yes" | "yeah" | "yep" | "no" | "nope" | "correct" | "sí" | "si" | "claro"
        ),
        FieldKind::Integer | FieldKind::Number => lower.chars().any(|c| c.is_ascii_digit()),
        FieldKind::Date => contains_iso_date(&lower),
        FieldKind::DateTime => contains_iso_date(&lower) && lower.contains(':'),
        FieldKind::Enum(options) => options
            .iter()
            .any(|option| lower.contains(&option.to_lowercase())),
        FieldKind::String => true,
    }
}

fn contains_iso_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.windows(10).any(|w| {
        w[..4].iter().all(u8::is_ascii_digit)
            && w[4] == b'-'
            && w[5..7].iter().all(u8::is_ascii_digit)
            && w[7] == b'-'
            && w[8..10].iter().all(u8::is_ascii_digit)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    /// The fields of `value`, in the order of `names`.
    fn schema(value: serde_json::Value, names: &[&str]) -> Vec<FieldSpec> {
        let schema = ReturnsSchema::parse(&value).expect("valid returns");
        names
            .iter()
            .map(|name| schema.field(name).expect("declared").clone())
            .collect()
    }

    fn speech(text: &str) -> Heard {
        Heard::Speech {
            text: text.to_owned(),
            duration: Duration::from_secs(1),
        }
    }

    #[test]
    fn field_names_are_humanised() {
        assert_eq!(humanise_field_name("preferred_time"), "preferred time");
        assert_eq!(humanise_field_name("Zip__Code_"), "zip code");
        assert_eq!(humanise_field_name("age"), "age");
    }

    #[test]
    fn questions_name_the_field_in_the_call_language() {
        let fields = schema(
            json!({
                "preferred_time": "string",
                "confirmed": "boolean",
                "party_size": {"type": "integer", "description": "number of guests"},
                "plan": "enum:basic|pro|max",
            }),
            &["preferred_time", "confirmed", "party_size", "plan"],
        );
        let en: Vec<String> = fields.iter().map(|f| question(f, Language::En)).collect();
        assert_eq!(en[0], "Could you tell me your preferred time?");
        assert_eq!(
            en[1],
            "Could you tell me your confirmed? A yes or no is fine."
        );
        assert_eq!(
            en[2],
            "Could you tell me your party size (number of guests)? A number is fine."
        );
        assert_eq!(
            en[3],
            "Could you tell me your plan? Is it basic, pro or max?"
        );
        assert_eq!(
            question(&fields[0], Language::Es),
            "¿Me puede decir su preferred time?"
        );
        assert_eq!(
            question(&fields[1], Language::Es),
            "¿Me puede decir su confirmed? Basta con sí o no."
        );
    }

    #[test]
    fn answers_are_checked_against_the_field_type() {
        let fields = schema(
            json!({
                "ok": "boolean", "n": "integer", "day": "date", "at": "datetime",
                "plan": "enum:basic|pro", "name": "string",
            }),
            &["ok", "n", "day", "at", "plan", "name"],
        );
        assert!(answer_fits(&fields[0], "Yes."));
        assert!(answer_fits(&fields[0], "Sí."));
        assert!(!answer_fits(&fields[0], "Sorry, I don't know."));
        assert!(answer_fits(&fields[1], "It's 4."));
        assert!(!answer_fits(&fields[1], "It's four-ish"));
        assert!(answer_fits(&fields[2], "It's 2026-05-01."));
        assert!(!answer_fits(&fields[2], "Next Tuesday."));
        assert!(answer_fits(&fields[3], "It's 2026-05-01T10:00:00Z."));
        assert!(answer_fits(&fields[4], "Es Pro."));
        assert!(!answer_fits(&fields[4], "The cheap one."));
        assert!(answer_fits(&fields[5], "It's Ana."));
        assert!(!answer_fits(&fields[5], "Lo siento, no lo sé."));
        assert!(!answer_fits(&fields[5], "I'd rather not say."));
    }

    fn call_with(returns: serde_json::Value, language: Language) -> Call {
        serde_json::from_value(json!({
            "id": "0190f4b4-0000-7000-8000-000000000001",
            "to_number": "+14155550100", "from_number": "+14155551234",
            "status": "in_progress", "direction": "outbound",
            "prompt": "Confirm the appointment for Tuesday",
            "context": {"name": "Ana"}, "returns": returns, "language": language,
            "result": null, "result_status": "pending", "result_error": null,
            "created_at": "2026-04-15T14:30:00Z", "started_at": null, "answered_at": null,
            "ended_at": null, "duration_seconds": null, "billed_duration_seconds": null,
            "billing_amount_milli_cents": null, "reservation_status": "reserved",
            "webhook_url": null, "webhook_status": "none", "webhook_error": null,
            "error_code": null, "error_message": null, "hangup_cause": null,
            "answered_by": null, "metadata": null, "updated_at": "2026-04-15T14:30:00Z",
            "voicemail_action": "hangup", "max_duration_seconds": 300, "tools": null
        }))
        .expect("a valid call")
    }

    #[test]
    fn the_script_greets_asks_reasks_once_and_closes() {
        let call = call_with(json!({"confirmed": "boolean", "day": "date"}), Language::En);
        let mut conversation = ScriptedAgent.start(&call);
        let mut turn = |heard: Heard| conversation.next_turn(&heard);
        assert_eq!(
            turn(speech("Hello?")),
            AgentTurn::Say(
                "Hello Ana, this is an automated assistant calling about the following: \
                 Confirm the appointment for Tuesday. I have 2 quick questions."
                    .to_owned()
            )
        );
        assert_eq!(
            turn(speech("Sure, go ahead.")),
            AgentTurn::Say("Could you tell me your confirmed? A yes or no is fine.".to_owned())
        );
        assert_eq!(
            turn(Heard::Silence {
                duration: Duration::from_secs(5)
            }),
            AgentTurn::Wait
        );
        assert_eq!(
            turn(speech("Yes.")),
            AgentTurn::Say("Could you tell me your day? Which date is it?".to_owned())
        );
        assert_eq!(
            turn(speech("Sorry, I don't know.")),
            AgentTurn::Say(
                "Sorry, I didn't catch that. Could you tell me your day? Which date is it?"
                    .to_owned()
            )
        );
        assert_eq!(
            turn(speech("Sorry, I don't know.")),
            AgentTurn::SayAndHangUp("Thank you, that's everything I needed. Goodbye!".to_owned())
        );
    }

    #[test]
    fn spanish_calls_are_held_in_spanish() {
        let call = call_with(json!({"preferred_time": "string"}), Language::Es);
        let mut conversation = ScriptedAgent.start(&call);
        let AgentTurn::Say(greeting) = conversation.next_turn(&speech("¿Diga?")) else {
            panic!("greets first");
        };
        assert!(greeting.starts_with("Hola Ana, le llama un asistente automático"));
        assert_eq!(
            conversation.next_turn(&speech("Claro, dígame.")),
            AgentTurn::Say("¿Me puede decir su preferred time?".to_owned())
        );
        assert!(matches!(
            conversation.next_turn(&speech("Es a las tres.")),
            AgentTurn::SayAndHangUp(text) if text.contains("Adiós")
        ));
    }

    #[test]
    fn voicemail_message_comes_from_the_prompt() {
        let call = call_with(json!({}), Language::En);
        assert_eq!(
            ScriptedAgent.voicemail_message(&call),
            "Hello, this is an automated assistant calling about the following: \
             Confirm the appointment for Tuesday. Please call us back at +14155551234. Goodbye."
        );
    }
}
