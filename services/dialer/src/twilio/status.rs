//! What Twilio's status and answering-machine-detection callbacks say, mapped to
//! the dialer's [`Progress`](crate::carrier::Progress).
//!
//! | Twilio `CallStatus` | ringer |
//! |---|---|
//! | `queued`, `initiated` | nothing (the call is already `initiated`) |
//! | `ringing` | `ringing` |
//! | `in-progress` | answered (`answered_by` from AMD) → `in_progress` |
//! | `completed` | the callee hung up (after answer) |
//! | `busy` | `busy`, hangup cause `busy` |
//! | `no-answer` | `no_answer`, hangup cause `no_answer` |
//! | `failed` | `failed`, hangup cause and error code `carrier_error`; the message names Twilio's error code or SIP response |
//! | `canceled` | `failed` (we cancel only through the pipeline, which has ended the call first) |
//!
//! `AnsweredBy`: `human` and `unknown` count as a person; `machine_*` and `fax`
//! as a machine, which `voicemail_action` then hangs up on (`no_answer`,
//! hangup cause `voicemail`) or leaves the message for.

use crate::carrier::{AnsweredBy, CarrierFailure, Progress};

/// Twilio's call statuses, in the order a call passes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TwilioStatus {
    Queued,
    Initiated,
    Ringing,
    InProgress,
    Completed,
    Busy,
    NoAnswer,
    Failed,
    Canceled,
}

impl TwilioStatus {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => Self::Queued,
            "initiated" => Self::Initiated,
            "ringing" => Self::Ringing,
            "in-progress" | "answered" => Self::InProgress,
            "completed" => Self::Completed,
            "busy" => Self::Busy,
            "no-answer" => Self::NoAnswer,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Initiated => "initiated",
            Self::Ringing => "ringing",
            Self::InProgress => "in-progress",
            Self::Completed => "completed",
            Self::Busy => "busy",
            Self::NoAnswer => "no-answer",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// The call is over on Twilio's side.
    pub fn is_final(self) -> bool {
        self >= Self::Completed
    }
}

/// One status callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub call_sid: String,
    pub status: TwilioStatus,
    /// `SequenceNumber`: callbacks may arrive out of order.
    pub sequence: Option<u32>,
    pub sip_response_code: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub answered_by: Option<String>,
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
        .filter(|value| !value.is_empty())
}

impl StatusUpdate {
    /// Reads a status callback's form parameters; None when it names no known status.
    pub fn from_params(params: &[(String, String)]) -> Option<Self> {
        Some(Self {
            call_sid: param(params, "CallSid")?.to_owned(),
            status: TwilioStatus::parse(param(params, "CallStatus")?)?,
            sequence: param(params, "SequenceNumber").and_then(|n| n.parse().ok()),
            sip_response_code: param(params, "SipResponseCode").map(str::to_owned),
            error_code: param(params, "ErrorCode").map(str::to_owned),
            error_message: param(params, "ErrorMessage").map(str::to_owned),
            answered_by: param(params, "AnsweredBy").map(str::to_owned),
        })
    }

    /// The progress this final status reports before answer (None for the
    /// statuses that are not outcomes: queued, initiated, ringing, in-progress, completed).
    pub fn unanswered_outcome(&self) -> Option<Progress> {
        Some(match self.status {
            TwilioStatus::Busy => Progress::Busy,
            TwilioStatus::NoAnswer => Progress::NoAnswer,
            TwilioStatus::Failed => Progress::Failed(self.failure()),
            TwilioStatus::Canceled => Progress::Failed(CarrierFailure {
                provider_code: "canceled".to_owned(),
                message: "Twilio canceled the call before it was answered".to_owned(),
            }),
            _ => return None,
        })
    }

    fn failure(&self) -> CarrierFailure {
        let provider_code = match (&self.error_code, &self.sip_response_code) {
            (Some(code), _) => format!("Twilio {code}"),
            (None, Some(sip)) => format!("SIP {sip}"),
            (None, None) => "Twilio failed".to_owned(),
        };
        let message = self
            .error_message
            .clone()
            .or_else(|| self.sip_response_code.as_deref().map(sip_reason))
            .unwrap_or_else(|| "the call could not be connected".to_owned());
        CarrierFailure {
            provider_code,
            message,
        }
    }
}

/// A short reason for the SIP responses a failed call commonly carries.
pub fn sip_reason(code: &str) -> String {
    match code {
        "403" => "the destination network refused the call (403 Forbidden)",
        "404" => "the number does not exist (404 Not Found)",
        "408" => "the destination did not respond (408 Request Timeout)",
        "480" => "the destination is temporarily unavailable (480)",
        "484" => "the number is incomplete (484 Address Incomplete)",
        "486" => "the line is busy (486 Busy Here)",
        "487" => "the call was canceled (487 Request Terminated)",
        "488" | "606" => "the destination cannot accept the call (not acceptable)",
        "500" | "502" | "503" => "the carrier network failed (5xx)",
        "603" => "the callee declined the call (603 Decline)",
        _ => return format!("SIP response {code}"),
    }
    .to_owned()
}

/// What answered, from AMD's `AnsweredBy`. `unknown` (detection timed out)
/// counts as a person: talking to a machine costs less than hanging up on one.
pub fn answered_by(value: &str) -> AnsweredBy {
    if value.starts_with("machine") || value == "fax" {
        AnsweredBy::Machine
    } else {
        AnsweredBy::Human
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_twilio_status_parses_and_orders() {
        for text in [
            "queued",
            "initiated",
            "ringing",
            "in-progress",
            "completed",
            "busy",
            "no-answer",
            "failed",
            "canceled",
        ] {
            let status = TwilioStatus::parse(text).expect(text);
            assert_eq!(status.as_str(), text);
        }
        assert_eq!(
            TwilioStatus::parse("answered"),
            Some(TwilioStatus::InProgress)
        );
        assert_eq!(TwilioStatus::parse("in_progress"), None);
        assert!(TwilioStatus::Ringing < TwilioStatus::InProgress);
        assert!(!TwilioStatus::InProgress.is_final());
        assert!(TwilioStatus::Completed.is_final() && TwilioStatus::Canceled.is_final());
    }

    #[test]
    fn final_statuses_map_to_outcomes() {
        let update = |status: &str, extra: &[(&str, &str)]| {
            let mut items = vec![("CallSid", "CA1"), ("CallStatus", status)];
            items.extend_from_slice(extra);
            StatusUpdate::from_params(&params(&items)).expect("parses")
        };
        assert_eq!(
            update("busy", &[]).unanswered_outcome(),
            Some(Progress::Busy)
        );
        assert_eq!(
            update("no-answer", &[]).unanswered_outcome(),
            Some(Progress::NoAnswer)
        );
        assert_eq!(
            update("failed", &[("SipResponseCode", "404")]).unanswered_outcome(),
            Some(Progress::Failed(CarrierFailure {
                provider_code: "SIP 404".into(),
                message: "the number does not exist (404 Not Found)".into(),
            }))
        );
        assert_eq!(
            update(
                "failed",
                &[
                    ("ErrorCode", "13224"),
                    ("ErrorMessage", "Invalid phone number")
                ]
            )
            .unanswered_outcome(),
            Some(Progress::Failed(CarrierFailure {
                provider_code: "Twilio 13224".into(),
                message: "Invalid phone number".into(),
            }))
        );
        assert!(matches!(
            update("canceled", &[]).unanswered_outcome(),
            Some(Progress::Failed(_))
        ));
        for status in ["queued", "initiated", "ringing", "in-progress", "completed"] {
            assert_eq!(update(status, &[]).unanswered_outcome(), None, "{status}");
        }
        let ringing = update(
            "ringing",
            &[("SequenceNumber", "1"), ("SipResponseCode", "")],
        );
        assert_eq!(ringing.sequence, Some(1));
        assert_eq!(ringing.sip_response_code, None);
        assert_eq!(
            StatusUpdate::from_params(&params(&[("CallSid", "CA1"), ("CallStatus", "odd")])),
            None
        );
        assert_eq!(
            StatusUpdate::from_params(&params(&[("CallStatus", "busy")])),
            None
        );
    }

    #[test]
    fn amd_results_map_to_who_answered() {
        for machine in [
            "machine_start",
            "machine_end_beep",
            "machine_end_silence",
            "machine_end_other",
            "fax",
        ] {
            assert_eq!(answered_by(machine), AnsweredBy::Machine, "{machine}");
        }
        assert_eq!(answered_by("human"), AnsweredBy::Human);
        assert_eq!(answered_by("unknown"), AnsweredBy::Human);
    }
}
