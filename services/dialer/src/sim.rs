//! The embedded phone network: a simulated carrier with realistic timing (every
//! delay multiplied by `RINGER_TIME_SCALE`, so 0 is instant) and a simulated
//! callee. Outcomes come from documented test numbers or `metadata.sim.outcome`;
//! the callee answers from `metadata.sim.answers`, else from the call's `context`
//! (a key equal to the field name), else says it does not know.

use std::collections::VecDeque;
use std::time::Duration;

use ringer::call::{Call, Language};
use ringer::config::scale_duration;
use ringer::returns::ReturnsSchema;
use serde_json::Value;

use crate::agent::humanise_field_name;
use crate::carrier::{
    AnsweredBy, CallLeg, Carrier, CarrierError, CarrierFailure, Heard, Progress, Spoken,
};

/// What the simulated network and callee do with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimOutcome {
    /// A person answers and answers every question they can.
    Answered,
    Busy,
    /// Rings until the network gives up (30 s).
    NoAnswer,
    /// An answering machine picks up.
    Voicemail,
    /// The network rejects the call before it rings (SIP 503).
    Failed,
    /// A person answers, then hangs up at the first question.
    HangupEarly,
    /// A person answers, then puts the agent on hold for ever (ends at `max_duration_seconds`).
    OnHold,
    /// A person answers and declines every question.
    Unhelpful,
}

impl SimOutcome {
    pub const ALL: [SimOutcome; 8] = [
        SimOutcome::Answered,
        SimOutcome::Busy,
        SimOutcome::NoAnswer,
        SimOutcome::Voicemail,
        SimOutcome::Failed,
        SimOutcome::HangupEarly,
        SimOutcome::OnHold,
        SimOutcome::Unhelpful,
    ];

    /// The `metadata.sim.outcome` value that selects this outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            SimOutcome::Answered => "answered",
            SimOutcome::Busy => "busy",
            SimOutcome::NoAnswer => "no_answer",
            SimOutcome::Voicemail => "voicemail",
            SimOutcome::Failed => "failed",
            SimOutcome::HangupEarly => "hangup_early",
            SimOutcome::OnHold => "on_hold",
            SimOutcome::Unhelpful => "unhelpful",
        }
    }

    pub fn parse(text: &str) -> Option<SimOutcome> {
        Self::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }

    /// The test number of this outcome in area code 415 (any area code works).
    pub fn test_number(self) -> String {
        let line = Self::ALL
            .iter()
            .position(|outcome| *outcome == self)
            .unwrap_or(0);
        format!("+1415555{:04}", 100 + line)
    }

    /// The outcome a call gets: `metadata.sim.outcome` when it names one, else its
    /// number's ([`outcome_for_number`]), else [`SimOutcome::Answered`].
    pub fn for_call(call: &Call) -> SimOutcome {
        let chosen = sim_metadata(call)
            .and_then(|sim| sim.get("outcome"))
            .and_then(Value::as_str);
        if let Some(text) = chosen {
            match SimOutcome::parse(text) {
                Some(outcome) => return outcome,
                None => tracing::warn!(
                    call_id = %call.id,
                    outcome = text,
                    "unknown metadata.sim.outcome; using the number's outcome"
                ),
            }
        }
        outcome_for_number(&call.to_number).unwrap_or(SimOutcome::Answered)
    }
}

/// Test numbers: the North American fictional range `+1 NPA 555-0100` to `0107`
/// (any area code), one outcome each in the order of [`SimOutcome::ALL`].
pub fn outcome_for_number(number: &str) -> Option<SimOutcome> {
    let digits = number.strip_prefix("+1")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let line: usize = digits[3..].strip_prefix("55501")?.parse().ok()?;
    SimOutcome::ALL.get(line).copied()
}

fn sim_metadata(call: &Call) -> Option<&serde_json::Map<String, Value>> {
    call.metadata.as_ref()?.get("sim")?.as_object()
}

// Nominal timings of the simulated network, before `time_scale`.
const DIAL_TO_RING: Duration = Duration::from_secs(1);
const DIAL_TO_FAILURE: Duration = Duration::from_millis(500);
const RING_BEFORE_BUSY: Duration = Duration::from_secs(1);
const RING_BEFORE_NO_ANSWER: Duration = Duration::from_secs(30);
const RING_BEFORE_VOICEMAIL: Duration = Duration::from_secs(20);
const RING_MIN_MS: u64 = 2_000;
const RING_MAX_MS: u64 = 8_000;
const HOLD_SILENCE: Duration = Duration::from_secs(5);
const IDLE_SILENCE: Duration = Duration::from_secs(2);

/// Nominal time to say `text`: about 0.35 s a word, 1 to 3 s a turn.
pub fn speaking_time(text: &str) -> Duration {
    let words = text.split_whitespace().count() as u64;
    Duration::from_millis((words * 350).clamp(1_000, 3_000))
}

/// Ringing time of an answered call: 2–8 s, fixed per call id.
fn ring_time(call: &Call) -> Duration {
    let spread = RING_MAX_MS - RING_MIN_MS + 1;
    let random_bits = call.id.as_u128() as u64;
    Duration::from_millis(RING_MIN_MS + random_bits % spread)
}

/// The simulated carrier: in process, deterministic, no network.
#[derive(Debug, Clone, Copy)]
pub struct SimulatedCarrier {
    time_scale: f64,
}

impl SimulatedCarrier {
    pub fn new(time_scale: f64) -> Self {
        Self { time_scale }
    }
}

impl Carrier for SimulatedCarrier {
    type Leg = SimLeg;

    fn name(&self) -> &'static str {
        "simulated"
    }

    fn transcript_source(&self) -> &'static str {
        "simulated"
    }

    async fn dial(&self, call: &Call) -> Result<SimLeg, CarrierError> {
        Ok(SimLeg::new(call, self.time_scale))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Dialed,
    Ringing,
    Connected,
    Over,
}

/// One simulated call: the network's progress, then the callee.
#[derive(Debug)]
pub struct SimLeg {
    id: String,
    time_scale: f64,
    outcome: SimOutcome,
    ring: Duration,
    phase: Phase,
    callee: Callee,
}

impl SimLeg {
    fn new(call: &Call, time_scale: f64) -> Self {
        let outcome = SimOutcome::for_call(call);
        Self {
            id: format!("SIM{}", uuid::Uuid::new_v4().simple()),
            time_scale,
            outcome,
            ring: ring_time(call),
            phase: Phase::Dialed,
            callee: Callee::new(call, outcome),
        }
    }

    async fn pass(&self, nominal: Duration) {
        let wait = scale_duration(nominal, self.time_scale);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    fn connect(&mut self, by: AnsweredBy) -> Progress {
        self.phase = Phase::Connected;
        self.callee.pick_up();
        Progress::Answered(by)
    }
}

impl CallLeg for SimLeg {
    fn carrier_call_id(&self) -> &str {
        &self.id
    }

    async fn progress(&mut self) -> Result<Progress, CarrierError> {
        match self.phase {
            Phase::Dialed if self.outcome == SimOutcome::Failed => {
                self.pass(DIAL_TO_FAILURE).await;
                self.phase = Phase::Over;
                Ok(Progress::Failed(CarrierFailure {
                    provider_code: "SIP 503".to_owned(),
                    message: "Service Unavailable: the destination network rejected the call \
                              (simulated)"
                        .to_owned(),
                }))
            }
            Phase::Dialed => {
                self.pass(DIAL_TO_RING).await;
                self.phase = Phase::Ringing;
                Ok(Progress::Ringing)
            }
            Phase::Ringing => match self.outcome {
                SimOutcome::Busy => {
                    self.pass(RING_BEFORE_BUSY).await;
                    self.phase = Phase::Over;
                    Ok(Progress::Busy)
                }
                SimOutcome::NoAnswer => {
                    self.pass(RING_BEFORE_NO_ANSWER).await;
                    self.phase = Phase::Over;
                    Ok(Progress::NoAnswer)
                }
                SimOutcome::Voicemail => {
                    self.pass(RING_BEFORE_VOICEMAIL).await;
                    Ok(self.connect(AnsweredBy::Machine))
                }
                _ => {
                    self.pass(self.ring).await;
                    Ok(self.connect(AnsweredBy::Human))
                }
            },
            Phase::Connected | Phase::Over => Err(CarrierError::Other(anyhow::anyhow!(
                "progress asked after the call's outcome"
            ))),
        }
    }

    async fn say(&mut self, text: &str) -> Result<Spoken, CarrierError> {
        if self.phase != Phase::Connected || self.callee.hung_up {
            return Err(CarrierError::HungUp);
        }
        let duration = speaking_time(text);
        self.pass(duration).await;
        self.callee.hear(text);
        Ok(Spoken { duration })
    }

    async fn listen(&mut self) -> Result<Heard, CarrierError> {
        if self.phase != Phase::Connected {
            return Ok(Heard::HungUp);
        }
        let heard = self.callee.next_heard();
        match &heard {
            Heard::Speech { duration, .. } | Heard::Silence { duration } => {
                self.pass(*duration).await;
            }
            Heard::HungUp => self.phase = Phase::Over,
        }
        Ok(heard)
    }

    async fn hang_up(&mut self) -> Result<(), CarrierError> {
        self.phase = Phase::Over;
        Ok(())
    }
}

/// The person (or machine) at the other end.
#[derive(Debug)]
struct Callee {
    language: Language,
    behaviour: SimOutcome,
    to_number: String,
    /// (words the agent uses for the field, what the callee knows about it)
    fields: Vec<(String, Option<Value>)>,
    heard_greeting: bool,
    on_hold: bool,
    hung_up: bool,
    pending: VecDeque<Heard>,
}

impl Callee {
    fn new(call: &Call, behaviour: SimOutcome) -> Self {
        let answers = sim_metadata(call)
            .and_then(|sim| sim.get("answers"))
            .and_then(Value::as_object);
        let fields = call
            .returns
            .as_ref()
            .and_then(|returns| ReturnsSchema::parse(returns).ok())
            .map(|schema| schema.fields)
            .unwrap_or_default()
            .into_iter()
            .map(|field| {
                let known = answers
                    .and_then(|answers| answers.get(&field.name))
                    .or_else(|| call.context.get(&field.name))
                    .cloned();
                (humanise_field_name(&field.name), known)
            })
            .collect();
        Self {
            language: call.language,
            behaviour,
            to_number: call.to_number.clone(),
            fields,
            heard_greeting: false,
            on_hold: false,
            hung_up: false,
            pending: VecDeque::new(),
        }
    }

    fn say(&mut self, text: String) {
        let duration = speaking_time(&text);
        self.pending.push_back(Heard::Speech { text, duration });
    }

    fn pick_up(&mut self) {
        let opening = match (self.behaviour, self.language) {
            (SimOutcome::Voicemail, Language::En) => format!(
                "Hi, you've reached {}. Please leave a message after the tone.",
                self.to_number
            ),
            (SimOutcome::Voicemail, Language::Es) => format!(
                "Ha llamado al {}. Deje su mensaje después de la señal.",
                self.to_number
            ),
            (_, Language::En) => "Hello?".to_owned(),
            (_, Language::Es) => "¿Diga?".to_owned(),
        };
        self.say(opening);
    }

    fn next_heard(&mut self) -> Heard {
        if let Some(heard) = self.pending.pop_front() {
            return heard;
        }
        if self.hung_up {
            return Heard::HungUp;
        }
        let duration = if self.on_hold {
            HOLD_SILENCE
        } else {
            IDLE_SILENCE
        };
        Heard::Silence { duration }
    }

    /// The field the agent asks about: the longest field name its words contain.
    fn asked_field(&self, agent_text: &str) -> Option<usize> {
        let lower = agent_text.to_lowercase();
        self.fields
            .iter()
            .enumerate()
            .filter(|(_, (words, _))| !words.is_empty() && lower.contains(words.as_str()))
            .max_by_key(|(_, (words, _))| words.len())
            .map(|(index, _)| index)
    }

    fn hear(&mut self, agent_text: &str) {
        if self.behaviour == SimOutcome::Voicemail || self.on_hold || self.hung_up {
            return;
        }
        let es = self.language == Language::Es;
        if !self.heard_greeting {
            self.heard_greeting = true;
            self.say(
                if es {
                    "Claro, dígame."
                } else {
                    "Sure, go ahead."
                }
                .to_owned(),
            );
            return;
        }
        let Some(index) = self.asked_field(agent_text) else {
            self.say(if es { "Vale." } else { "Okay." }.to_owned());
            return;
        };
        match self.behaviour {
            SimOutcome::HangupEarly => {
                self.say(
                    if es {
                        "Perdone, tengo que colgar."
                    } else {
                        "Sorry, I have to go."
                    }
                    .to_owned(),
                );
                self.hung_up = true;
            }
            SimOutcome::OnHold => {
                self.say(
                    if es {
                        "Espere un momento, por favor."
                    } else {
                        "Please hold on a moment."
                    }
                    .to_owned(),
                );
                self.on_hold = true;
            }
            SimOutcome::Unhelpful => {
                self.say(
                    if es {
                        "Prefiero no decirlo."
                    } else {
                        "I'd rather not say."
                    }
                    .to_owned(),
                );
            }
            _ => {
                let answer = spoken_answer(self.fields[index].1.as_ref(), self.language);
                self.say(answer);
            }
        }
    }
}

/// A known value said as a short natural sentence ("Yes.", "It's 3pm.", "Es 4.").
fn spoken_answer(value: Option<&Value>, language: Language) -> String {
    let es = language == Language::Es;
    let text = match value {
        None | Some(Value::Null) => {
            return if es {
                "Lo siento, no lo sé."
            } else {
                "Sorry, I don't know."
            }
            .to_owned();
        }
        Some(Value::Bool(true)) => return if es { "Sí." } else { "Yes." }.to_owned(),
        Some(Value::Bool(false)) => return "No.".to_owned(),
        Some(Value::String(text)) => text.trim().trim_end_matches('.').to_owned(),
        Some(Value::Number(number)) => number.to_string(),
        Some(other) => other.to_string(),
    };
    if es {
        format!("Es {text}.")
    } else {
        format!("It's {text}.")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn test_numbers_select_outcomes() {
        for outcome in SimOutcome::ALL {
            assert_eq!(outcome_for_number(&outcome.test_number()), Some(outcome));
            assert_eq!(SimOutcome::parse(outcome.as_str()), Some(outcome));
        }
        assert_eq!(outcome_for_number("+12025550101"), Some(SimOutcome::Busy));
        assert_eq!(outcome_for_number("+14155550199"), None);
        assert_eq!(outcome_for_number("+14155551234"), None);
        assert_eq!(outcome_for_number("+4415555010"), None);
    }

    #[test]
    fn answers_are_natural_sentences() {
        assert_eq!(spoken_answer(Some(&json!(true)), Language::En), "Yes.");
        assert_eq!(spoken_answer(Some(&json!(true)), Language::Es), "Sí.");
        assert_eq!(
            spoken_answer(Some(&json!("3pm.")), Language::En),
            "It's 3pm."
        );
        assert_eq!(spoken_answer(Some(&json!(4)), Language::Es), "Es 4.");
        assert_eq!(spoken_answer(None, Language::En), "Sorry, I don't know.");
        assert_eq!(
            spoken_answer(Some(&Value::Null), Language::Es),
            "Lo siento, no lo sé."
        );
    }

    #[test]
    fn speaking_takes_one_to_three_seconds() {
        assert_eq!(speaking_time("Yes."), Duration::from_secs(1));
        assert_eq!(speaking_time(&"word ".repeat(50)), Duration::from_secs(3));
    }
}
