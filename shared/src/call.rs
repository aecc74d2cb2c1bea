//! The Call object of API.md, its status enums, and the queries every service shares.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

macro_rules! str_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
        #[sqlx(type_name = "text")]
        pub enum $name {
            $(
                #[serde(rename = $text)]
                #[sqlx(rename = $text)]
                $variant,
            )+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown value {other:?}; expected one of {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}
pub(crate) use str_enum;

str_enum!(
    /// Where a call is in its life. Terminal: completed, no_answer, busy, canceled, failed.
    CallStatus {
        Queued => "queued",
        Initiated => "initiated",
        Ringing => "ringing",
        InProgress => "in_progress",
        Completed => "completed",
        NoAnswer => "no_answer",
        Busy => "busy",
        Canceled => "canceled",
        Failed => "failed",
    }
);

impl CallStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            CallStatus::Completed
                | CallStatus::NoAnswer
                | CallStatus::Busy
                | CallStatus::Canceled
                | CallStatus::Failed
        )
    }
}

str_enum!(
    ResultStatus {
        Pending => "pending",
        Completed => "completed",
        Failed => "failed",
    }
);

str_enum!(
    ReservationStatus {
        Reserved => "reserved",
        Settled => "settled",
        Released => "released",
    }
);

str_enum!(
    WebhookStatus {
        None => "none",
        Pending => "pending",
        Delivered => "delivered",
        Failed => "failed",
    }
);

str_enum!(
    VoicemailAction {
        Hangup => "hangup",
        LeaveMessage => "leave_message",
    }
);

str_enum!(
    Language {
        En => "en",
        Es => "es",
    }
);

/// The Call object: returned by the API and carried by every event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Call {
    pub id: Uuid,
    pub to_number: String,
    pub from_number: String,
    pub status: CallStatus,
    /// Always `outbound`.
    pub direction: String,
    pub prompt: String,
    #[schema(value_type = Object)]
    pub context: Value,
    #[schema(value_type = Option<Object>)]
    pub returns: Option<Value>,
    pub language: Language,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub result_status: ResultStatus,
    pub result_error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When ringing began.
    pub started_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_seconds: Option<i32>,
    /// Connected seconds: `ended_at − answered_at`.
    pub billed_duration_seconds: Option<i32>,
    pub billing_amount_milli_cents: Option<i64>,
    pub reservation_status: ReservationStatus,
    pub webhook_url: Option<String>,
    pub webhook_status: WebhookStatus,
    pub webhook_error: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub hangup_cause: Option<String>,
    /// `human` or `machine` once the carrier knows.
    pub answered_by: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub updated_at: DateTime<Utc>,
    pub voicemail_action: VoicemailAction,
    pub max_duration_seconds: i32,
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
}

/// Column list matching [`Call`], for `SELECT`/`RETURNING` clauses.
#[macro_export]
macro_rules! call_columns {
    () => {
        "id, to_number, from_number, status, direction, prompt, context, returns, language, \
         result, result_status, result_error, created_at, started_at, answered_at, ended_at, \
         duration_seconds, billed_duration_seconds, billing_amount_milli_cents, \
         reservation_status, webhook_url, webhook_status, webhook_error, error_code, \
         error_message, hangup_cause, answered_by, metadata, updated_at, voicemail_action, \
         max_duration_seconds, tools"
    };
}

/// A call with the owner column services need beside the public object.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OwnedCall {
    pub org_id: Uuid,
    #[sqlx(flatten)]
    pub call: Call,
}

/// A call as an update that also took its next event sequence number left it
/// (`SET event_seq = event_seq + 1 … RETURNING event_seq, org_id, <columns>`),
/// for [`crate::outbox::emit_numbered`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NumberedCall {
    pub event_seq: i64,
    #[sqlx(flatten)]
    pub owned: OwnedCall,
}

pub async fn find_call(conn: &mut PgConnection, call_id: Uuid) -> sqlx::Result<Option<OwnedCall>> {
    sqlx::query_as::<_, OwnedCall>(concat!(
        "SELECT org_id, ",
        call_columns!(),
        " FROM calls WHERE id = $1"
    ))
    .bind(call_id)
    .fetch_optional(conn)
    .await
}

/// The whole-second connected time of a call, capped at its maximum duration.
pub fn billable_seconds(
    answered_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
    max_duration_seconds: i32,
) -> i32 {
    let seconds = (ended_at - answered_at).num_seconds().max(0);
    i32::try_from(seconds)
        .unwrap_or(i32::MAX)
        .min(max_duration_seconds)
}

/// A validated request for a new call, ready to insert.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub id: Uuid,
    pub org_id: Uuid,
    pub to_number: String,
    pub from_number: String,
    pub prompt: String,
    pub context: Value,
    pub returns: Option<Value>,
    pub language: Language,
    pub webhook_url: Option<String>,
    pub voicemail_action: VoicemailAction,
    pub max_duration_seconds: i32,
    pub metadata: Option<Value>,
    pub tools: Option<Value>,
    pub rate_per_minute_milli_cents: i64,
    pub hold_milli_cents: i64,
}

/// Inserts a `queued` call with its `reserved` hold and writes `call.queued`
/// to the outbox. Run it in the transaction that took the hold.
pub async fn insert_queued_call(conn: &mut PgConnection, new: &NewCall) -> sqlx::Result<Call> {
    let webhook_status = if new.webhook_url.is_some() {
        WebhookStatus::Pending
    } else {
        WebhookStatus::None
    };
    // `call.queued` is the call's first event: its sequence number is set here.
    let inserted = sqlx::query_as::<_, NumberedCall>(concat!(
        "INSERT INTO calls (id, org_id, to_number, from_number, prompt, context, returns, language, \
         webhook_url, webhook_status, voicemail_action, max_duration_seconds, metadata, tools, \
         rate_per_minute_milli_cents, hold_milli_cents, event_seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 1) \
         RETURNING event_seq, org_id, ",
        call_columns!()
    ))
    .bind(new.id)
    .bind(new.org_id)
    .bind(&new.to_number)
    .bind(&new.from_number)
    .bind(&new.prompt)
    .bind(&new.context)
    .bind(&new.returns)
    .bind(new.language)
    .bind(&new.webhook_url)
    .bind(webhook_status)
    .bind(new.voicemail_action)
    .bind(new.max_duration_seconds)
    .bind(&new.metadata)
    .bind(&new.tools)
    .bind(new.rate_per_minute_milli_cents)
    .bind(new.hold_milli_cents)
    .fetch_one(&mut *conn)
    .await?;
    let call = inserted.owned.call;
    crate::outbox::emit_numbered(
        conn,
        new.org_id,
        crate::events::EventType::CallQueued,
        &call,
        inserted.event_seq,
    )
    .await?;
    Ok(call)
}

/// The completion join (DESIGN.md rule 5). Extractor and billing each run it in
/// the transaction that finished their part; whichever finishes second gets the
/// row back, marks the call done (an answered call becomes `completed`) and
/// writes the call's one terminal event. Returns that event, or None when the
/// other side is not done yet or the join already closed.
pub async fn close_completion_join(
    conn: &mut PgConnection,
    call_id: Uuid,
) -> sqlx::Result<Option<crate::events::Event>> {
    let closed = sqlx::query_as::<_, NumberedCall>(concat!(
        "UPDATE calls SET completed_at = now(), updated_at = now(), event_seq = event_seq + 1, \
           status = CASE WHEN status = 'in_progress' THEN 'completed' ELSE status END \
         WHERE id = $1 AND ended_at IS NOT NULL AND result_status <> 'pending' \
           AND reservation_status <> 'reserved' AND completed_at IS NULL \
         RETURNING event_seq, org_id, ",
        call_columns!()
    ))
    .bind(call_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(NumberedCall {
        event_seq,
        owned: OwnedCall { org_id, call },
    }) = closed
    else {
        return Ok(None);
    };
    let Some(event_type) = crate::events::EventType::terminal_for(call.status) else {
        // Unreachable while the dialer sets ended_at only with a terminal or
        // in_progress status; refuse rather than emit a wrong event.
        return Err(sqlx::Error::Protocol(format!(
            "call {call_id} closed its completion join in status {}",
            call.status
        )));
    };
    crate::outbox::emit_numbered(conn, org_id, event_type, &call, event_seq)
        .await
        .map(Some)
}
