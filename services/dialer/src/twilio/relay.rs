//! ConversationRelay's WebSocket messages. Twilio sends `setup` once, then
//! `prompt` (the callee's transcribed speech), `interrupt` (the callee spoke over
//! our text-to-speech), `dtmf` and `error`; we send `text` tokens (`last` on a
//! turn's final one) and `end`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message from Twilio.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Inbound {
    Setup {
        #[serde(default)]
        session_id: String,
        #[serde(default)]
        call_sid: String,
        #[serde(default)]
        custom_parameters: Option<Value>,
    },
    Prompt {
        voice_prompt: String,
        #[serde(default)]
        lang: Option<String>,
        /// Absent means a complete utterance (partial prompts are off by default).
        #[serde(default = "default_true")]
        last: bool,
    },
    Interrupt {
        /// The part of our last turn the callee heard before speaking over it.
        #[serde(default)]
        utterance_until_interrupt: String,
        /// A number or, in some of Twilio's examples, a string of one.
        #[serde(default)]
        duration_until_interrupt_ms: Option<Value>,
    },
    Dtmf {
        digit: String,
    },
    Error {
        #[serde(default)]
        description: String,
    },
    /// A message type this adapter does not use (`info` and future ones).
    #[serde(other)]
    Other,
}

fn default_true() -> bool {
    true
}

/// A message to Twilio.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Outbound {
    /// Text to speak; ConversationRelay speaks tokens as they come, `last` closes the turn.
    Text { token: String, last: bool },
    /// Ends the session; with no TwiML after `<Connect>`, Twilio ends the call.
    End,
}

impl Outbound {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("outbound messages serialise")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Inbound {
        serde_json::from_value(value).expect("parses")
    }

    #[test]
    fn twilios_messages_parse() {
        assert_eq!(
            parse(
                json!({"type": "setup", "sessionId": "VX1", "callSid": "CA1",
                         "from": "+1", "to": "+2", "customParameters": {"call_id": "x"}})
            ),
            Inbound::Setup {
                session_id: "VX1".into(),
                call_sid: "CA1".into(),
                custom_parameters: Some(json!({"call_id": "x"})),
            }
        );
        assert_eq!(
            parse(
                json!({"type": "prompt", "voicePrompt": "Hello?", "lang": "en-US", "last": true})
            ),
            Inbound::Prompt {
                voice_prompt: "Hello?".into(),
                lang: Some("en-US".into()),
                last: true
            }
        );
        assert!(matches!(
            parse(json!({"type": "interrupt", "utteranceUntilInterrupt": "Life is", "durationUntilInterruptMs": "460"})),
            Inbound::Interrupt { utterance_until_interrupt, .. } if utterance_until_interrupt == "Life is"
        ));
        assert_eq!(
            parse(json!({"type": "dtmf", "digit": "1"})),
            Inbound::Dtmf { digit: "1".into() }
        );
        assert_eq!(
            parse(json!({"type": "error", "description": "Invalid message"})),
            Inbound::Error {
                description: "Invalid message".into()
            }
        );
        assert_eq!(parse(json!({"type": "info", "x": 1})), Inbound::Other);
    }

    #[test]
    fn our_messages_serialise_as_twilio_expects() {
        assert_eq!(
            serde_json::from_str::<Value>(
                &Outbound::Text {
                    token: "Hi".into(),
                    last: false
                }
                .to_json()
            )
            .unwrap(),
            json!({"type": "text", "token": "Hi", "last": false})
        );
        assert_eq!(Outbound::End.to_json(), r#"{"type":"end"}"#);
    }
}
