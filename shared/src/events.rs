//! The one list of events: the eight public call events of API.md and the internal
//! ones services exchange. The routing key is derived from the variant.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::call::{Call, CallStatus};

/// Version of the event message layout; bump on an incompatible change.
pub const EVENT_VERSION: u16 = 1;

crate::call::str_enum!(
    /// Every event type. `call.*` are public (sent to webhooks); `internal.*` are not.
    EventType {
        CallQueued => "call.queued",
        CallRinging => "call.ringing",
        CallAnswered => "call.answered",
        CallCompleted => "call.completed",
        CallFailed => "call.failed",
        CallNoAnswer => "call.no_answer",
        CallBusy => "call.busy",
        CallCanceled => "call.canceled",
        CallEnded => "internal.call.ended",
        ResultReady => "internal.call.result_ready",
        CallBilled => "internal.call.billed",
        CancelRequested => "internal.call.cancel_requested",
    }
);

impl EventType {
    /// The eight events webhooks receive.
    pub const PUBLIC: [EventType; 8] = [
        EventType::CallQueued,
        EventType::CallRinging,
        EventType::CallAnswered,
        EventType::CallCompleted,
        EventType::CallFailed,
        EventType::CallNoAnswer,
        EventType::CallBusy,
        EventType::CallCanceled,
    ];

    pub fn routing_key(self) -> &'static str {
        self.as_str()
    }

    pub fn is_public(self) -> bool {
        Self::PUBLIC.contains(&self)
    }

    /// The terminal event announcing a call that ended in `status`.
    pub fn terminal_for(status: CallStatus) -> Option<EventType> {
        match status {
            CallStatus::Completed => Some(EventType::CallCompleted),
            CallStatus::Failed => Some(EventType::CallFailed),
            CallStatus::NoAnswer => Some(EventType::CallNoAnswer),
            CallStatus::Busy => Some(EventType::CallBusy),
            CallStatus::Canceled => Some(EventType::CallCanceled),
            _ => None,
        }
    }

    /// Whether a consumer must receive the event. Informational events
    /// (`result_ready`, `billed`) may have no subscriber: the relay counts them
    /// published even when the broker returns them unroutable, instead of
    /// retrying them forever.
    pub fn requires_subscriber(self) -> bool {
        !matches!(self, EventType::ResultReady | EventType::CallBilled)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventType::CallCompleted
                | EventType::CallFailed
                | EventType::CallNoAnswer
                | EventType::CallBusy
                | EventType::CallCanceled
        )
    }
}

/// A message on the broker: one event about one call, with the Call as of that event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub version: u16,
    pub org_id: Uuid,
    pub call_id: Uuid,
    /// Per-call sequence number: orders a call's events whatever order they were published in.
    pub sequence: i64,
    pub occurred_at: DateTime<Utc>,
    pub call: Call,
}

impl Event {
    /// `event_type` about `call`, happening now, numbered `sequence` (taken
    /// from the call's `event_seq` in the transaction that made the change).
    pub fn new(event_type: EventType, org_id: Uuid, call: Call, sequence: i64) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type,
            version: EVENT_VERSION,
            org_id,
            call_id: call.id,
            sequence,
            occurred_at: Utc::now(),
            call,
        }
    }
}
