//! The auditor: what a run must prove, checked over plain data collected from
//! the database, the broker and the webhook receiver. It knows nothing about
//! how the data was gathered, so tests feed it hand-made faults.
//!
//! Every check is written here from the public contract (API.md, DESIGN.md),
//! not with the services' own helpers: type checks, money sums and event
//! ordering are recomputed independently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The destination name of a call's inline `webhook_url`.
pub const INLINE: &str = "inline";

/// What the simulated callee does, chosen by the test number dialled
/// (`+1 NPA 555-0100` … `0107`, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Answered,
    Busy,
    NoAnswer,
    Voicemail,
    Failed,
    HangupEarly,
    OnHold,
    Unhelpful,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Answered,
        Outcome::Busy,
        Outcome::NoAnswer,
        Outcome::Voicemail,
        Outcome::Failed,
        Outcome::HangupEarly,
        Outcome::OnHold,
        Outcome::Unhelpful,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Busy => "busy",
            Outcome::NoAnswer => "no_answer",
            Outcome::Voicemail => "voicemail",
            Outcome::Failed => "failed",
            Outcome::HangupEarly => "hangup_early",
            Outcome::OnHold => "on_hold",
            Outcome::Unhelpful => "unhelpful",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        Self::ALL.into_iter().find(|o| o.as_str() == text)
    }

    /// The test number selecting this outcome, in area code `npa`.
    pub fn test_number(self, npa: u16) -> String {
        let line = Self::ALL.iter().position(|o| *o == self).unwrap_or(0);
        format!("+1{npa:03}5550{}", 100 + line)
    }

    /// The status a call with this outcome ends in (voicemail is hung up on:
    /// `voicemail_action` is left at its default).
    pub fn expected_status(self) -> &'static str {
        match self {
            Outcome::Answered | Outcome::HangupEarly | Outcome::OnHold | Outcome::Unhelpful => {
                "completed"
            }
            Outcome::Busy => "busy",
            Outcome::NoAnswer | Outcome::Voicemail => "no_answer",
            Outcome::Failed => "failed",
        }
    }
}

/// The public event that ends a call in `status`.
pub fn terminal_event(status: &str) -> Option<&'static str> {
    Some(match status {
        "completed" => "call.completed",
        "failed" => "call.failed",
        "no_answer" => "call.no_answer",
        "busy" => "call.busy",
        "canceled" => "call.canceled",
        _ => return None,
    })
}

pub fn is_terminal_event(event_type: &str) -> bool {
    matches!(
        event_type,
        "call.completed" | "call.failed" | "call.no_answer" | "call.busy" | "call.canceled"
    )
}

/// Position of an event type in a call's life (for ordering without sequence numbers).
fn event_rank(event_type: &str) -> u8 {
    match event_type {
        "call.queued" => 0,
        "call.ringing" => 1,
        "call.answered" => 2,
        _ if is_terminal_event(event_type) => 3,
        _ => 4,
    }
}

/// One call loadgen asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedCall {
    /// loadgen's number for the call (also in the call's `metadata.loadgen.n`).
    pub n: u64,
    pub org_id: Uuid,
    pub outcome: Outcome,
    pub returns: Value,
    /// What the simulated callee answers (the call's `context`).
    pub answers: Value,
    /// Destinations that must receive every event: [`INLINE`] and/or endpoint ids.
    pub destinations: Vec<String>,
    /// The id from the 201 response; None when the create never succeeded.
    pub call_id: Option<Uuid>,
    pub create_error: Option<String>,
    /// `Some(true)`: a cancel was accepted (200); `Some(false)`: refused (409).
    pub cancel_accepted: Option<bool>,
}

/// A `calls` row.
#[derive(Debug, Clone, Default, Serialize, Deserialize, sqlx::FromRow)]
pub struct CallRow {
    pub id: Uuid,
    pub org_id: Uuid,
    /// `metadata.loadgen.n`.
    pub n: Option<i64>,
    pub status: String,
    pub result_status: String,
    pub result: Option<Value>,
    pub result_error: Option<String>,
    pub returns: Option<Value>,
    pub reservation_status: String,
    pub completed: bool,
    pub started: bool,
    pub answered: bool,
    pub ended: bool,
    /// `ended_at − answered_at` in seconds, when both are set.
    pub connected_seconds: Option<f64>,
    pub billed_duration_seconds: Option<i64>,
    pub billing_amount_milli_cents: Option<i64>,
    pub hold_milli_cents: i64,
    pub rate_per_minute_milli_cents: i64,
    pub dial_attempts: i64,
    pub webhook_url: Option<String>,
    pub webhook_status: String,
    pub error_code: Option<String>,
}

/// A `ledger_entries` row.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct LedgerRow {
    pub org_id: Uuid,
    pub call_id: Option<Uuid>,
    pub kind: String,
    pub from_account: String,
    pub to_account: String,
    pub amount_milli_cents: i64,
}

/// An org's balance (its bucket rows summed), from the database or the API.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct BalanceRow {
    pub org_id: Uuid,
    pub available_milli_cents: i64,
    pub reserved_milli_cents: i64,
}

/// A `webhook_deliveries` row.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub call_id: Uuid,
    /// Endpoint id, or [`INLINE`].
    pub destination: String,
    pub event_type: String,
    pub sequence: i64,
    pub status: String,
    pub attempt_count: i64,
}

/// One webhook request as the receiver got it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Received {
    /// Arrival order over the whole run.
    pub arrival: u64,
    /// Milliseconds since the run started.
    pub at_ms: u64,
    pub destination: String,
    /// `CallingBox-Event-Id` (the delivery id; the same on every retry).
    pub delivery_id: Option<Uuid>,
    pub event_type: String,
    pub call_id: Option<Uuid>,
    /// `data.call` of the body.
    pub call: Value,
    pub callingbox_signature_ok: bool,
    pub standard_signature_ok: bool,
    /// Why a signature or the body did not check out.
    pub problem: Option<String>,
}

/// Ready messages of a queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueDepth {
    pub queue: String,
    pub messages: u64,
    pub is_dead_letter_queue: bool,
}

/// A message in a dead-letter queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub queue: String,
    pub call_id: Option<Uuid>,
    pub reason: String,
}

/// Everything the auditor looks at.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditInput {
    pub org_ids: Vec<Uuid>,
    pub planned: Vec<PlannedCall>,
    pub calls: Vec<CallRow>,
    pub ledger: Vec<LedgerRow>,
    pub balances: Vec<BalanceRow>,
    /// `GET /v1/balance` of each org (may be empty when not collected).
    pub api_balances: Vec<BalanceRow>,
    pub deliveries: Vec<DeliveryRow>,
    pub received: Vec<Received>,
    pub queues: Vec<QueueDepth>,
    pub dead_letters: Vec<DeadLetter>,
    /// Why the queues or dead letters could not be inspected.
    pub broker_error: Option<String>,
    pub outbox_unpublished: i64,
}

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub what: &'static str,
    /// How many items it looked at.
    pub checked: usize,
    pub violations: Vec<String>,
}

impl Check {
    fn new(name: &'static str, what: &'static str) -> Self {
        Self {
            name,
            what,
            checked: 0,
            violations: Vec::new(),
        }
    }

    fn fail(&mut self, message: String) {
        self.violations.push(message);
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The audit's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub checks: Vec<Check>,
    /// Facts worth reading that are not violations.
    pub notes: Vec<String>,
    pub status_counts: BTreeMap<String, usize>,
    pub outcome_counts: BTreeMap<String, usize>,
    /// Calls the dialer sweeper ended `failed`/`dialer_lost` (their dialer died).
    pub dialer_lost: usize,
    /// Requests received again with a delivery id already received (at-least-once).
    pub redelivered: usize,
    pub dead_letters_explained: usize,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(Check::passed)
    }

    pub fn violations(&self) -> usize {
        self.checks.iter().map(|c| c.violations.len()).sum()
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The checks, one line each, with the first few violations of a failed one.
    pub fn render(&self, examples: usize) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let mark = if check.passed() { "ok  " } else { "FAIL" };
            let _ = writeln!(
                out,
                "  {mark} {:<16} {:<70} {:>6} checked{}",
                check.name,
                check.what,
                check.checked,
                if check.passed() {
                    String::new()
                } else {
                    format!(", {} violation(s)", check.violations.len())
                }
            );
            for violation in check.violations.iter().take(examples) {
                let _ = writeln!(out, "         - {violation}");
            }
            if check.violations.len() > examples {
                let _ = writeln!(
                    out,
                    "         - … and {} more",
                    check.violations.len() - examples
                );
            }
        }
        out
    }
}

/// Checks `value` against one `returns` field spec: a type string
/// (`"integer"`, `"enum:a|b"`, `"string?"`) or a JSON-Schema object. Null is
/// always allowed (a field the conversation did not yield).
pub fn check_typed(spec: &Value, value: &Value) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    match spec {
        Value::String(shorthand) => {
            let base = shorthand.strip_suffix('?').unwrap_or(shorthand);
            if let Some(options) = base.strip_prefix("enum:") {
                let options: Vec<&str> = options.split('|').map(str::trim).collect();
                return match value.as_str() {
                    Some(text) if options.contains(&text) => Ok(()),
                    _ => Err(format!("{value} is not one of {options:?}")),
                };
            }
            check_base_type(base, None, value)
        }
        Value::Object(schema) => {
            if let Some(options) = schema.get("enum").and_then(Value::as_array)
                && !options.contains(value)
            {
                return Err(format!(
                    "{value} is not one of {}",
                    Value::Array(options.clone())
                ));
            }
            let format = schema.get("format").and_then(Value::as_str);
            match schema.get("type") {
                Some(Value::String(kind)) => check_base_type(kind, format, value),
                Some(Value::Array(kinds)) => {
                    let kinds: Vec<&str> = kinds.iter().filter_map(Value::as_str).collect();
                    if kinds
                        .iter()
                        .any(|kind| check_base_type(kind, format, value).is_ok())
                    {
                        Ok(())
                    } else {
                        Err(format!("{value} is none of the types {kinds:?}"))
                    }
                }
                _ => Ok(()),
            }
        }
        other => Err(format!("unreadable field spec {other}")),
    }
}

fn check_base_type(kind: &str, format: Option<&str>, value: &Value) -> Result<(), String> {
    let ok = match kind {
        "string" => match (value.as_str(), format) {
            (Some(text), Some("date")) => is_date(text),
            (Some(text), Some("date-time")) => is_datetime(text),
            (Some(_), _) => true,
            (None, _) => false,
        },
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "date" => value.as_str().is_some_and(is_date),
        "datetime" => value.as_str().is_some_and(is_datetime),
        "null" => value.is_null(),
        other => return Err(format!("unknown type {other:?} in the schema")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{value} is not a {kind}"))
    }
}

fn is_date(text: &str) -> bool {
    text.len() == 10 && NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
}

fn is_datetime(text: &str) -> bool {
    DateTime::parse_from_rfc3339(text).is_ok()
}

/// Checks a whole result against its `returns`: exactly the schema's keys, each typed or null.
pub fn check_result(returns: &Value, result: &Value) -> Result<(), String> {
    let Some(schema) = returns.as_object() else {
        return Err(format!("returns {returns} is not an object"));
    };
    let Some(object) = result.as_object() else {
        return Err(format!("result {result} is not an object"));
    };
    for (field, spec) in schema {
        let Some(value) = object.get(field) else {
            return Err(format!("result lacks field {field:?}"));
        };
        check_typed(spec, value).map_err(|error| format!("field {field:?}: {error}"))?;
    }
    if let Some(extra) = object.keys().find(|key| !schema.contains_key(*key)) {
        return Err(format!("result has a field {extra:?} not in returns"));
    }
    Ok(())
}

/// Do two JSON values mean the same answer? (3 and 3.0 are the same number.)
fn same_answer(expected: &Value, got: &Value) -> bool {
    match (expected, got) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) => a.trim().eq_ignore_ascii_case(b.trim()),
        _ => expected == got,
    }
}

struct Ledger {
    holds: Vec<i64>,
    charges: Vec<i64>,
    releases: Vec<i64>,
}

/// Runs every check.
pub fn audit(input: &AuditInput) -> AuditReport {
    let mut notes = Vec::new();
    let calls_by_id: HashMap<Uuid, &CallRow> = input.calls.iter().map(|c| (c.id, c)).collect();
    let planned_by_call: HashMap<Uuid, &PlannedCall> = input
        .planned
        .iter()
        .filter_map(|p| p.call_id.map(|id| (id, p)))
        .collect();

    // Receipts per (call, destination), in arrival order.
    let mut received = input.received.clone();
    received.sort_by_key(|r| r.arrival);
    let mut receipts: HashMap<(Uuid, String), Vec<&Received>> = HashMap::new();
    for r in &received {
        if let Some(call_id) = r.call_id {
            receipts
                .entry((call_id, r.destination.clone()))
                .or_default()
                .push(r);
        }
    }
    let deliveries_by_id: HashMap<Uuid, &DeliveryRow> =
        input.deliveries.iter().map(|d| (d.id, d)).collect();

    let mut status_counts = BTreeMap::new();
    for call in &input.calls {
        *status_counts.entry(call.status.clone()).or_insert(0) += 1;
    }
    let mut outcome_counts = BTreeMap::new();
    for p in &input.planned {
        *outcome_counts
            .entry(p.outcome.as_str().to_owned())
            .or_insert(0) += 1;
    }
    let dialer_lost = input
        .calls
        .iter()
        .filter(|c| c.error_code.as_deref() == Some("dialer_lost"))
        .count();

    let mut checks = vec![
        check_created(input),
        check_terminal(input),
        check_outcomes(input, &planned_by_call),
        check_results(input, &planned_by_call),
        check_billing(input),
        check_ledger_per_call(input),
    ];
    checks.push(check_money(input));
    checks.push(check_dialled_once(input, &receipts));
    let (events, redelivered) = check_events(input, &calls_by_id, &receipts, &deliveries_by_id);
    checks.push(events);
    checks.push(check_order(&receipts, &deliveries_by_id));
    checks.push(check_signatures(input));
    checks.push(check_deliveries(input));
    let (queues, explained) = check_queues(input, &calls_by_id, &checks);
    checks.push(queues);
    let mut outbox = Check::new("outbox", "no committed event left unpublished");
    outbox.checked = 1;
    if input.outbox_unpublished > 0 {
        outbox.fail(format!(
            "{} outbox row(s) still unpublished",
            input.outbox_unpublished
        ));
    }
    checks.push(outbox);

    if redelivered > 0 {
        notes.push(format!(
            "{redelivered} webhook request(s) repeated a delivery id already received \
             (at-least-once after a lost acknowledgement; receivers dedupe by webhook-id)"
        ));
    }
    if dialer_lost > 0 {
        notes.push(format!(
            "{dialer_lost} call(s) ended failed/dialer_lost: their dialer died and the sweeper ended them"
        ));
    }
    if explained > 0 {
        notes.push(format!(
            "{explained} dead letter(s), each about a call that finished correctly anyway"
        ));
    }

    AuditReport {
        checks,
        notes,
        status_counts,
        outcome_counts,
        dialer_lost,
        redelivered,
        dead_letters_explained: explained,
    }
}

fn check_created(input: &AuditInput) -> Check {
    let mut check = Check::new(
        "created",
        "every requested call exists exactly once (idempotent retries)",
    );
    let orgs: BTreeSet<Uuid> = input.org_ids.iter().copied().collect();
    let mut rows_by_n: HashMap<i64, Vec<&CallRow>> = HashMap::new();
    for call in &input.calls {
        match call.n {
            Some(n) => rows_by_n.entry(n).or_default().push(call),
            None => check.fail(format!("call {} has no metadata.loadgen.n", call.id)),
        }
        if !orgs.is_empty() && !orgs.contains(&call.org_id) {
            check.fail(format!(
                "call {} belongs to an org outside the run",
                call.id
            ));
        }
    }
    let planned_ns: BTreeSet<i64> = input.planned.iter().map(|p| p.n as i64).collect();
    for planned in &input.planned {
        check.checked += 1;
        if let Some(error) = &planned.create_error {
            check.fail(format!("call #{} was never created: {error}", planned.n));
            continue;
        }
        let rows = rows_by_n
            .get(&(planned.n as i64))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        match rows {
            [] => check.fail(format!(
                "call #{} ({}) answered 201 but has no row",
                planned.n,
                planned.call_id.map(|id| id.to_string()).unwrap_or_default()
            )),
            [row] => {
                if planned.call_id.is_some_and(|id| id != row.id) {
                    check.fail(format!(
                        "call #{}: the API returned {} but the row is {}",
                        planned.n,
                        planned.call_id.unwrap_or_default(),
                        row.id
                    ));
                }
            }
            many => check.fail(format!(
                "call #{} was created {} times: {}",
                planned.n,
                many.len(),
                many.iter()
                    .map(|c| c.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    for (n, rows) in &rows_by_n {
        if !planned_ns.contains(n) {
            check.fail(format!(
                "call {} (#{n}) was never requested",
                rows.first().map(|c| c.id).unwrap_or_default()
            ));
        }
    }
    check
}

fn check_terminal(input: &AuditInput) -> Check {
    let mut check = Check::new(
        "terminal",
        "every call finished: terminal status, completion join closed",
    );
    for call in &input.calls {
        check.checked += 1;
        if terminal_event(&call.status).is_none() {
            check.fail(format!(
                "call {} stuck in {} (result {}, reservation {})",
                call.id, call.status, call.result_status, call.reservation_status
            ));
        } else if !call.completed {
            check.fail(format!(
                "call {} is {} but its completion join never closed (result {}, reservation {})",
                call.id, call.status, call.result_status, call.reservation_status
            ));
        }
    }
    check
}

fn check_outcomes(input: &AuditInput, planned: &HashMap<Uuid, &PlannedCall>) -> Check {
    let mut check = Check::new(
        "outcome",
        "each call ended as its test number says (or canceled / dialer_lost)",
    );
    for call in &input.calls {
        let Some(plan) = planned.get(&call.id) else {
            continue;
        };
        if terminal_event(&call.status).is_none() {
            continue;
        }
        check.checked += 1;
        let expected = plan.outcome.expected_status();
        let dialer_lost =
            call.status == "failed" && call.error_code.as_deref() == Some("dialer_lost");
        let ok = match plan.cancel_accepted {
            Some(true) => call.status == "canceled",
            _ => call.status == expected || dialer_lost,
        };
        if !ok {
            check.fail(format!(
                "call {} ({}{}) ended {} (error_code {:?}); expected {}",
                call.id,
                plan.outcome.as_str(),
                match plan.cancel_accepted {
                    Some(true) => ", cancel accepted",
                    Some(false) => ", cancel refused",
                    None => "",
                },
                call.status,
                call.error_code,
                if plan.cancel_accepted == Some(true) {
                    "canceled"
                } else {
                    expected
                }
            ));
        }
    }
    check
}

fn check_results(input: &AuditInput, planned: &HashMap<Uuid, &PlannedCall>) -> Check {
    let mut check = Check::new(
        "results",
        "every result typed per its returns; answered calls got the answers",
    );
    for call in &input.calls {
        check.checked += 1;
        let returns = call.returns.clone().unwrap_or(Value::Null);
        match call.result_status.as_str() {
            "completed" => {
                let result = call.result.clone().unwrap_or(Value::Null);
                if let Err(error) = check_result(&returns, &result) {
                    check.fail(format!("call {}: {error} (result {result})", call.id));
                    continue;
                }
                let Some(plan) = planned.get(&call.id) else {
                    continue;
                };
                let clean_answer = plan.outcome == Outcome::Answered
                    && call.status == "completed"
                    && call.error_code.is_none();
                if clean_answer && let Some(answers) = plan.answers.as_object() {
                    for field in returns.as_object().into_iter().flat_map(|r| r.keys()) {
                        let (Some(expected), got) = (answers.get(field), &result[field]) else {
                            continue;
                        };
                        if !same_answer(expected, got) {
                            check.fail(format!(
                                "call {}: field {field:?} is {got}, the callee said {expected}",
                                call.id
                            ));
                        }
                    }
                }
            }
            "failed" => {
                if call.result_error.as_deref().unwrap_or("").is_empty() {
                    check.fail(format!(
                        "call {}: result_status failed without result_error",
                        call.id
                    ));
                }
                if let Some(result) = call.result.as_ref().filter(|r| !r.is_null())
                    && let Err(error) = check_result(&returns, result)
                {
                    check.fail(format!("call {}: {error} (result {result})", call.id));
                }
            }
            other => {
                if call.completed || terminal_event(&call.status).is_some() {
                    check.fail(format!(
                        "call {} is {} with result_status {other}",
                        call.id, call.status
                    ));
                }
            }
        }
    }
    check
}

fn check_billing(input: &AuditInput) -> Check {
    let mut check = Check::new(
        "billing",
        "answered: settled at ceil(billed x rate / 60); others: released, free",
    );
    for call in &input.calls {
        if terminal_event(&call.status).is_none() {
            continue;
        }
        check.checked += 1;
        let amount = call.billing_amount_milli_cents.unwrap_or(0);
        if call.status == "completed" {
            if call.reservation_status != "settled" {
                check.fail(format!(
                    "call {} completed with reservation {}",
                    call.id, call.reservation_status
                ));
                continue;
            }
            let Some(billed) = call.billed_duration_seconds else {
                check.fail(format!(
                    "call {} completed without billed_duration_seconds",
                    call.id
                ));
                continue;
            };
            if let Some(connected) = call.connected_seconds {
                let (low, high) = (connected.floor() as i64, connected.ceil() as i64);
                if billed < low || billed > high {
                    check.fail(format!(
                        "call {}: billed {billed} s for {connected:.3} s connected",
                        call.id
                    ));
                }
            }
            let expected = (billed * call.rate_per_minute_milli_cents + 59) / 60;
            if amount != expected {
                check.fail(format!(
                    "call {}: charged {amount} mc for {billed} s at {} mc/min; expected {expected}",
                    call.id, call.rate_per_minute_milli_cents
                ));
            }
        } else {
            if call.reservation_status != "released" {
                check.fail(format!(
                    "call {} ended {} with reservation {}",
                    call.id, call.status, call.reservation_status
                ));
            }
            if amount != 0 {
                check.fail(format!(
                    "call {} ended {} but was charged {amount} mc",
                    call.id, call.status
                ));
            }
        }
    }
    check
}

fn ledger_per_call(input: &AuditInput) -> HashMap<Uuid, Ledger> {
    let mut per_call: HashMap<Uuid, Ledger> = HashMap::new();
    for entry in &input.ledger {
        let Some(call_id) = entry.call_id else {
            continue;
        };
        let ledger = per_call.entry(call_id).or_insert(Ledger {
            holds: Vec::new(),
            charges: Vec::new(),
            releases: Vec::new(),
        });
        match entry.kind.as_str() {
            "hold" => ledger.holds.push(entry.amount_milli_cents),
            "charge" => ledger.charges.push(entry.amount_milli_cents),
            "hold_release" => ledger.releases.push(entry.amount_milli_cents),
            _ => {}
        }
    }
    per_call
}

fn check_ledger_per_call(input: &AuditInput) -> Check {
    let mut check = Check::new(
        "ledger per call",
        "one hold; charge + release = hold; charge = billing_amount",
    );
    let per_call = ledger_per_call(input);
    for call in &input.calls {
        check.checked += 1;
        let Some(ledger) = per_call.get(&call.id) else {
            check.fail(format!("call {} has no ledger entries (no hold)", call.id));
            continue;
        };
        if ledger.holds.len() != 1 {
            check.fail(format!("call {} has {} holds", call.id, ledger.holds.len()));
        }
        if ledger.charges.len() > 1 {
            check.fail(format!(
                "call {} was charged {} times: {:?} mc",
                call.id,
                ledger.charges.len(),
                ledger.charges
            ));
        }
        if ledger.releases.len() > 1 {
            check.fail(format!(
                "call {} had its hold released {} times",
                call.id,
                ledger.releases.len()
            ));
        }
        let hold: i64 = ledger.holds.iter().sum();
        let charged: i64 = ledger.charges.iter().sum();
        let released: i64 = ledger.releases.iter().sum();
        if hold != call.hold_milli_cents {
            check.fail(format!(
                "call {}: held {hold} mc, the call says {}",
                call.id, call.hold_milli_cents
            ));
        }
        if call.reservation_status == "reserved" {
            if charged + released != 0 {
                check.fail(format!(
                    "call {} is still reserved but has {charged} mc charged, {released} mc released",
                    call.id
                ));
            }
        } else {
            if charged + released != hold {
                check.fail(format!(
                    "call {}: charged {charged} + released {released} != held {hold}",
                    call.id
                ));
            }
            if charged != call.billing_amount_milli_cents.unwrap_or(0) {
                check.fail(format!(
                    "call {}: ledger charges {charged} mc, billing_amount_milli_cents is {}",
                    call.id,
                    call.billing_amount_milli_cents.unwrap_or(0)
                ));
            }
        }
    }
    check
}

fn check_money(input: &AuditInput) -> Check {
    let mut check = Check::new(
        "money",
        "per org: credits - charges - holds = available; balances = ledger",
    );
    #[derive(Default)]
    struct Sums {
        credits: i64,
        charges: i64,
        ledger_available: i64,
        ledger_reserved: i64,
        billed: i64,
    }
    let mut sums: BTreeMap<Uuid, Sums> = BTreeMap::new();
    for org in &input.org_ids {
        sums.entry(*org).or_default();
    }
    for entry in &input.ledger {
        let s = sums.entry(entry.org_id).or_default();
        let amount = entry.amount_milli_cents;
        match entry.kind.as_str() {
            "credit" => s.credits += amount,
            "charge" => s.charges += amount,
            _ => {}
        }
        for (account, sign) in [(&entry.to_account, 1), (&entry.from_account, -1)] {
            match account.as_str() {
                "available" => s.ledger_available += sign * amount,
                "reserved" => s.ledger_reserved += sign * amount,
                _ => {}
            }
        }
    }
    for call in &input.calls {
        sums.entry(call.org_id).or_default().billed += call.billing_amount_milli_cents.unwrap_or(0);
    }
    let balances: HashMap<Uuid, &BalanceRow> =
        input.balances.iter().map(|b| (b.org_id, b)).collect();
    let api: HashMap<Uuid, &BalanceRow> =
        input.api_balances.iter().map(|b| (b.org_id, b)).collect();
    for (org, s) in &sums {
        check.checked += 1;
        let Some(balance) = balances.get(org) else {
            check.fail(format!("org {org} has no balance rows"));
            continue;
        };
        let (available, reserved) = (balance.available_milli_cents, balance.reserved_milli_cents);
        if available != s.ledger_available || reserved != s.ledger_reserved {
            check.fail(format!(
                "org {org}: balances say available {available} / reserved {reserved}, \
                 the ledger sums to {} / {}",
                s.ledger_available, s.ledger_reserved
            ));
        }
        if s.credits - s.charges - reserved != available {
            check.fail(format!(
                "org {org}: credits {} - charges {} - holds {reserved} = {}, but available is {available}",
                s.credits,
                s.charges,
                s.credits - s.charges - reserved
            ));
        }
        if s.charges != s.billed {
            check.fail(format!(
                "org {org}: the ledger charged {} mc, its calls' billing amounts add up to {}",
                s.charges, s.billed
            ));
        }
        if reserved != 0 {
            check.fail(format!(
                "org {org}: {reserved} mc still reserved after every call finished"
            ));
        }
        if let Some(seen) = api.get(org)
            && (seen.available_milli_cents != available || seen.reserved_milli_cents != reserved)
        {
            check.fail(format!(
                "org {org}: GET /v1/balance says {} / {}, the database {available} / {reserved}",
                seen.available_milli_cents, seen.reserved_milli_cents
            ));
        }
    }
    check
}

fn check_dialled_once(
    input: &AuditInput,
    receipts: &HashMap<(Uuid, String), Vec<&Received>>,
) -> Check {
    let mut check = Check::new(
        "dialled once",
        "no call dialled twice (dial_attempts, call.ringing events)",
    );
    for call in &input.calls {
        check.checked += 1;
        if call.dial_attempts > 1 {
            check.fail(format!(
                "call {} was dialled {} times",
                call.id, call.dial_attempts
            ));
        }
        if call.started && call.dial_attempts == 0 {
            check.fail(format!("call {} rang but records no dial attempt", call.id));
        }
    }
    for ((call_id, destination), list) in receipts {
        let ringing: BTreeSet<Option<Uuid>> = list
            .iter()
            .filter(|r| r.event_type == "call.ringing")
            .map(|r| r.delivery_id)
            .collect();
        if ringing.len() > 1 {
            check.fail(format!(
                "call {call_id} rang {} times at destination {destination}",
                ringing.len()
            ));
        }
    }
    check
}

/// Events each destination received per call: complete, each once, one terminal.
fn check_events(
    input: &AuditInput,
    calls: &HashMap<Uuid, &CallRow>,
    receipts: &HashMap<(Uuid, String), Vec<&Received>>,
    deliveries: &HashMap<Uuid, &DeliveryRow>,
) -> (Check, usize) {
    let mut check = Check::new(
        "events",
        "each destination got every event once, exactly one terminal",
    );
    let mut redelivered = 0;
    let mut db_per_dest: HashMap<(Uuid, String), Vec<&DeliveryRow>> = HashMap::new();
    for d in &input.deliveries {
        db_per_dest
            .entry((d.call_id, d.destination.clone()))
            .or_default()
            .push(d);
    }
    for plan in &input.planned {
        let Some(call_id) = plan.call_id else {
            continue;
        };
        let Some(call) = calls.get(&call_id) else {
            continue;
        };
        for destination in &plan.destinations {
            check.checked += 1;
            let key = (call_id, destination.clone());
            let got = receipts.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            // Distinct deliveries, first arrival of each.
            let mut seen: BTreeMap<Option<Uuid>, &Received> = BTreeMap::new();
            for r in got {
                match seen.entry(r.delivery_id) {
                    std::collections::btree_map::Entry::Occupied(_) => redelivered += 1,
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(r);
                    }
                }
            }
            let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
            for r in seen.values() {
                *by_type.entry(r.event_type.as_str()).or_insert(0) += 1;
            }
            let types: Vec<String> = {
                let mut firsts: Vec<&&Received> = seen.values().collect();
                firsts.sort_by_key(|r| r.arrival);
                firsts.iter().map(|r| r.event_type.clone()).collect()
            };
            let at = format!("call {call_id} at {destination}");
            for (event_type, count) in &by_type {
                if *count > 1 {
                    check.fail(format!(
                        "{at}: {event_type} received {count} times (distinct deliveries) {types:?}"
                    ));
                }
            }
            if !by_type.contains_key("call.queued") {
                check.fail(format!("{at}: call.queued never received {types:?}"));
            }
            if call.answered && !by_type.contains_key("call.answered") {
                check.fail(format!("{at}: call.answered never received {types:?}"));
            }
            let terminals: Vec<&&Received> = seen
                .values()
                .filter(|r| is_terminal_event(&r.event_type))
                .collect();
            match (terminals.as_slice(), terminal_event(&call.status)) {
                ([], _) => check.fail(format!(
                    "{at}: no terminal event received (call is {}) {types:?}",
                    call.status
                )),
                ([one], Some(expected)) => {
                    if one.event_type != expected {
                        check.fail(format!(
                            "{at}: terminal event {} but the call ended {}",
                            one.event_type, call.status
                        ));
                    } else {
                        check_terminal_body(&mut check, &at, one, call);
                    }
                }
                ([_], None) => check.fail(format!(
                    "{at}: terminal event received but the call is {}",
                    call.status
                )),
                (many, _) => check.fail(format!(
                    "{at}: {} terminal events received: {types:?}",
                    many.len()
                )),
            }
            // What the database says was sent must be what arrived, and back.
            let db = db_per_dest.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            for d in db {
                if !seen.contains_key(&Some(d.id)) {
                    check.fail(format!(
                        "{at}: delivery {} ({}, {}) never arrived",
                        d.id, d.event_type, d.status
                    ));
                }
            }
            for delivery_id in seen.keys() {
                match delivery_id.and_then(|id| deliveries.get(&id)) {
                    Some(d) if d.call_id == call_id && d.destination == *destination => {}
                    Some(d) => check.fail(format!(
                        "{at}: received delivery {} which belongs to call {} at {}",
                        d.id, d.call_id, d.destination
                    )),
                    None => check.fail(format!(
                        "{at}: received a request with delivery id {delivery_id:?} the database does not know"
                    )),
                }
            }
        }
    }
    (check, redelivered)
}

fn check_terminal_body(check: &mut Check, at: &str, terminal: &Received, call: &CallRow) {
    let body = &terminal.call;
    if body["status"].as_str() != Some(call.status.as_str()) {
        check.fail(format!(
            "{at}: the terminal event's call has status {}, the call is {}",
            body["status"], call.status
        ));
    }
    if body["reservation_status"] == "reserved" {
        check.fail(format!(
            "{at}: the terminal event was sent before billing was final (reservation reserved)"
        ));
    }
    let amount = body["billing_amount_milli_cents"].as_i64().unwrap_or(0);
    if amount != call.billing_amount_milli_cents.unwrap_or(0) {
        check.fail(format!(
            "{at}: the terminal event says {amount} mc billed, the call {}",
            call.billing_amount_milli_cents.unwrap_or(0)
        ));
    }
    if body["result_status"] == "pending" {
        check.fail(format!(
            "{at}: the terminal event was sent with result_status pending"
        ));
    }
    let result = call.result.clone().unwrap_or(Value::Null);
    if body["result"] != result {
        check.fail(format!(
            "{at}: the terminal event's result {} differs from the call's {result}",
            body["result"]
        ));
    }
}

fn check_order(
    receipts: &HashMap<(Uuid, String), Vec<&Received>>,
    deliveries: &HashMap<Uuid, &DeliveryRow>,
) -> Check {
    let mut check = Check::new(
        "order",
        "per call and destination, events arrived in sequence order",
    );
    let mut keys: Vec<&(Uuid, String)> = receipts.keys().collect();
    keys.sort();
    for key in keys {
        let list = &receipts[key];
        check.checked += 1;
        let mut firsts = Vec::new();
        let mut seen = BTreeSet::new();
        for r in list {
            if seen.insert(r.delivery_id) {
                firsts.push(*r);
            }
        }
        let positions: Vec<(i64, &str)> = firsts
            .iter()
            .map(|r| {
                let sequence = r
                    .delivery_id
                    .and_then(|id| deliveries.get(&id))
                    .map(|d| d.sequence)
                    .unwrap_or(i64::from(event_rank(&r.event_type)));
                (sequence, r.event_type.as_str())
            })
            .collect();
        let sequence_ok = positions.windows(2).all(|w| w[0].0 < w[1].0);
        let rank_ok = positions
            .windows(2)
            .all(|w| event_rank(w[0].1) <= event_rank(w[1].1));
        if !sequence_ok || !rank_ok {
            check.fail(format!(
                "call {} at {}: arrived as {:?}",
                key.0, key.1, positions
            ));
        }
    }
    check
}

fn check_signatures(input: &AuditInput) -> Check {
    let mut check = Check::new(
        "signatures",
        "every request verified: CallingBox-Signature and Standard Webhooks",
    );
    for r in &input.received {
        check.checked += 1;
        if !r.callingbox_signature_ok || !r.standard_signature_ok || r.problem.is_some() {
            check.fail(format!(
                "request #{} ({} for call {:?} at {}): callingbox {}, standard {}{}",
                r.arrival,
                r.event_type,
                r.call_id,
                r.destination,
                if r.callingbox_signature_ok {
                    "ok"
                } else {
                    "BAD"
                },
                if r.standard_signature_ok { "ok" } else { "BAD" },
                r.problem
                    .as_ref()
                    .map(|p| format!(": {p}"))
                    .unwrap_or_default()
            ));
        }
    }
    check
}

fn check_deliveries(input: &AuditInput) -> Check {
    let mut check = Check::new(
        "deliveries",
        "every webhook delivery delivered; inline webhook_status delivered",
    );
    for d in &input.deliveries {
        check.checked += 1;
        if d.status != "delivered" {
            check.fail(format!(
                "delivery {} ({} of call {} to {}) is {} after {} attempt(s)",
                d.id, d.event_type, d.call_id, d.destination, d.status, d.attempt_count
            ));
        }
    }
    for call in &input.calls {
        if call.webhook_url.is_some() {
            check.checked += 1;
            if call.webhook_status != "delivered" {
                check.fail(format!(
                    "call {} has webhook_status {}",
                    call.id, call.webhook_status
                ));
            }
        }
    }
    check
}

fn check_queues(
    input: &AuditInput,
    calls: &HashMap<Uuid, &CallRow>,
    checks: &[Check],
) -> (Check, usize) {
    let mut check = Check::new("queues", "work queues drained; every dead letter explained");
    if let Some(error) = &input.broker_error {
        check.fail(format!("the broker could not be inspected: {error}"));
    }
    for queue in &input.queues {
        check.checked += 1;
        if !queue.is_dead_letter_queue && queue.messages > 0 {
            check.fail(format!(
                "queue {} still holds {} message(s)",
                queue.queue, queue.messages
            ));
        }
    }
    // A dead letter is explained when it is about a call of the run that
    // finished correctly anyway: it was a redundant copy (a redelivery that
    // ran out of attempts while its work was already done).
    let troubled: BTreeSet<String> = checks
        .iter()
        .flat_map(|c| c.violations.iter())
        .cloned()
        .collect();
    let mut explained = 0;
    for letter in &input.dead_letters {
        check.checked += 1;
        let Some(call_id) = letter.call_id else {
            check.fail(format!(
                "dead letter in {} names no call ({})",
                letter.queue, letter.reason
            ));
            continue;
        };
        let Some(call) = calls.get(&call_id) else {
            check.fail(format!(
                "dead letter in {} is about call {call_id}, not one of this run ({})",
                letter.queue, letter.reason
            ));
            continue;
        };
        let id = call_id.to_string();
        let finished = call.completed && terminal_event(&call.status).is_some();
        if finished && !troubled.iter().any(|v| v.contains(&id)) {
            explained += 1;
        } else {
            check.fail(format!(
                "dead letter in {} ({}) is about call {call_id}, which is {} and did not finish cleanly",
                letter.queue, letter.reason, call.status
            ));
        }
    }
    let dlq_depth: u64 = input
        .queues
        .iter()
        .filter(|q| q.is_dead_letter_queue)
        .map(|q| q.messages)
        .sum();
    if dlq_depth as usize > input.dead_letters.len() {
        check.fail(format!(
            "the dead-letter queues hold {dlq_depth} message(s) but only {} could be read",
            input.dead_letters.len()
        ));
    }
    (check, explained)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ENDPOINT: &str = "0190c3a0-0000-7000-8000-000000000001";

    struct World {
        input: AuditInput,
        next_arrival: u64,
    }

    impl World {
        fn new() -> Self {
            let org = Uuid::from_u128(0xA);
            let mut input = AuditInput {
                org_ids: vec![org],
                ..AuditInput::default()
            };
            input.ledger.push(LedgerRow {
                org_id: org,
                call_id: None,
                kind: "credit".into(),
                from_account: "funding".into(),
                to_account: "available".into(),
                amount_milli_cents: 1_000_000,
            });
            input.balances.push(BalanceRow {
                org_id: org,
                available_milli_cents: 1_000_000,
                reserved_milli_cents: 0,
            });
            Self {
                input,
                next_arrival: 0,
            }
        }

        fn org(&self) -> Uuid {
            self.input.org_ids[0]
        }

        fn entry(&mut self, call: Uuid, kind: &str, amount: i64) {
            let (from, to) = match kind {
                "hold" => ("available", "reserved"),
                "hold_release" => ("reserved", "available"),
                _ => ("reserved", "revenue"),
            };
            self.input.ledger.push(LedgerRow {
                org_id: self.org(),
                call_id: Some(call),
                kind: kind.into(),
                from_account: from.into(),
                to_account: to.into(),
                amount_milli_cents: amount,
            });
        }

        fn receive(&mut self, call: &CallRow, destination: &str, event_type: &str, sequence: i64) {
            let delivery = Uuid::from_u128(0xD000_0000 + u128::from(self.next_arrival));
            self.input.deliveries.push(DeliveryRow {
                id: delivery,
                call_id: call.id,
                destination: destination.into(),
                event_type: event_type.into(),
                sequence,
                status: "delivered".into(),
                attempt_count: 1,
            });
            self.next_arrival += 1;
            let snapshot = if is_terminal_event(event_type) {
                json!({
                    "id": call.id, "status": call.status, "reservation_status": call.reservation_status,
                    "billing_amount_milli_cents": call.billing_amount_milli_cents, "result": call.result,
                    "result_status": call.result_status,
                })
            } else {
                json!({"id": call.id, "status": "queued", "reservation_status": "reserved"})
            };
            self.input.received.push(Received {
                arrival: self.next_arrival,
                at_ms: self.next_arrival,
                destination: destination.into(),
                delivery_id: Some(delivery),
                event_type: event_type.into(),
                call_id: Some(call.id),
                call: snapshot,
                callingbox_signature_ok: true,
                standard_signature_ok: true,
                problem: None,
            });
        }

        /// A call answered for 7 s at 5000 mc/min: 584 mc charged.
        fn answered_call(&mut self, n: u64) -> Uuid {
            let id = Uuid::from_u128(0x1000 + u128::from(n));
            let returns = json!({"confirmed": "boolean", "party_size": "integer", "day": "date?"});
            let answers = json!({"confirmed": true, "party_size": 3, "day": "2026-05-14"});
            let call = CallRow {
                id,
                org_id: self.org(),
                n: Some(n as i64),
                status: "completed".into(),
                result_status: "completed".into(),
                result: Some(answers.clone()),
                result_error: None,
                returns: Some(returns.clone()),
                reservation_status: "settled".into(),
                completed: true,
                started: true,
                answered: true,
                ended: true,
                connected_seconds: Some(7.4),
                billed_duration_seconds: Some(7),
                billing_amount_milli_cents: Some(584),
                hold_milli_cents: 5000,
                rate_per_minute_milli_cents: 5000,
                dial_attempts: 1,
                webhook_url: Some("http://127.0.0.1/hooks/inline".into()),
                webhook_status: "delivered".into(),
                error_code: None,
            };
            self.entry(id, "hold", 5000);
            self.entry(id, "charge", 584);
            self.entry(id, "hold_release", 4416);
            self.input.balances[0].available_milli_cents -= 584;
            for destination in [INLINE, ENDPOINT] {
                for (seq, event) in [
                    (1, "call.queued"),
                    (2, "call.ringing"),
                    (3, "call.answered"),
                    (4, "call.completed"),
                ] {
                    self.receive(&call, destination, event, seq);
                }
            }
            self.input.planned.push(PlannedCall {
                n,
                org_id: self.org(),
                outcome: Outcome::Answered,
                returns,
                answers,
                destinations: vec![INLINE.into(), ENDPOINT.into()],
                call_id: Some(id),
                create_error: None,
                cancel_accepted: None,
            });
            self.input.calls.push(call);
            id
        }

        fn busy_call(&mut self, n: u64) -> Uuid {
            let id = Uuid::from_u128(0x2000 + u128::from(n));
            let call = CallRow {
                id,
                org_id: self.org(),
                n: Some(n as i64),
                status: "busy".into(),
                result_status: "failed".into(),
                result_error: Some("the call was not answered".into()),
                returns: Some(json!({"ok": "boolean"})),
                reservation_status: "released".into(),
                completed: true,
                started: true,
                ended: true,
                billing_amount_milli_cents: Some(0),
                hold_milli_cents: 5000,
                rate_per_minute_milli_cents: 5000,
                dial_attempts: 1,
                webhook_status: "none".into(),
                ..CallRow::default()
            };
            self.entry(id, "hold", 5000);
            self.entry(id, "hold_release", 5000);
            for (seq, event) in [(1, "call.queued"), (2, "call.ringing"), (3, "call.busy")] {
                self.receive(&call, ENDPOINT, event, seq);
            }
            self.input.planned.push(PlannedCall {
                n,
                org_id: self.org(),
                outcome: Outcome::Busy,
                returns: json!({"ok": "boolean"}),
                answers: json!({}),
                destinations: vec![ENDPOINT.into()],
                call_id: Some(id),
                create_error: None,
                cancel_accepted: None,
            });
            self.input.calls.push(call);
            id
        }

        fn clean() -> Self {
            let mut world = World::new();
            world.answered_call(0);
            world.busy_call(1);
            world.answered_call(2);
            world.input.queues.push(QueueDepth {
                queue: "ns.billing".into(),
                messages: 0,
                is_dead_letter_queue: false,
            });
            world
        }

        fn audit(&self) -> AuditReport {
            audit(&self.input)
        }
    }

    fn failing(report: &AuditReport) -> Vec<&'static str> {
        report
            .checks
            .iter()
            .filter(|c| !c.passed())
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_clean_run_passes_every_check() {
        let report = World::clean().audit();
        assert!(report.ok(), "{}", report.render(10));
        assert_eq!(report.status_counts["completed"], 2);
        assert!(report.check("events").unwrap().checked >= 5);
    }

    #[test]
    fn a_doubled_charge_fails_the_ledger_and_money_checks() {
        let mut world = World::clean();
        let call = world.input.calls[0].id;
        world.entry(call, "charge", 584);
        world.input.balances[0].available_milli_cents -= 584;
        let report = world.audit();
        assert!(!report.ok());
        let failed = failing(&report);
        assert!(failed.contains(&"ledger per call"), "{failed:?}");
        assert!(failed.contains(&"money"), "{failed:?}");
        let text = report.render(10);
        assert!(text.contains("charged 2 times"), "{text}");
    }

    #[test]
    fn a_charge_missing_from_the_balance_row_is_drift() {
        let mut world = World::clean();
        world.input.balances[0].available_milli_cents += 584;
        let report = world.audit();
        assert_eq!(failing(&report), ["money"], "{}", report.render(10));
    }

    #[test]
    fn a_missing_event_fails_the_events_check() {
        let mut world = World::clean();
        let position = world
            .input
            .received
            .iter()
            .position(|r| r.event_type == "call.answered" && r.destination == ENDPOINT)
            .unwrap();
        world.input.received.remove(position);
        let report = world.audit();
        assert!(
            failing(&report).contains(&"events"),
            "{}",
            report.render(10)
        );
        assert!(report.render(10).contains("call.answered never received"));
    }

    #[test]
    fn a_missing_terminal_event_fails_loudly() {
        let mut world = World::clean();
        world.input.received.retain(|r| r.event_type != "call.busy");
        let report = world.audit();
        assert!(report.render(10).contains("no terminal event received"));
        assert!(!report.ok());
    }

    #[test]
    fn a_call_stuck_in_progress_fails_the_terminal_check() {
        let mut world = World::clean();
        let call = &mut world.input.calls[2];
        call.status = "in_progress".into();
        call.completed = false;
        call.result_status = "pending".into();
        let report = world.audit();
        let failed = failing(&report);
        assert!(failed.contains(&"terminal"), "{failed:?}");
        assert!(report.render(10).contains("stuck in in_progress"));
    }

    #[test]
    fn a_doubled_terminal_event_fails_even_when_each_copy_is_signed() {
        let mut world = World::clean();
        let call = world.input.calls[1].clone();
        // A second, distinct delivery of call.busy (not a retry of the first).
        world.receive(&call, ENDPOINT, "call.busy", 4);
        let report = world.audit();
        assert!(
            failing(&report).contains(&"events"),
            "{}",
            report.render(10)
        );
        assert!(report.render(10).contains("terminal events received"));
    }

    #[test]
    fn a_retried_delivery_with_the_same_id_is_not_a_duplicate() {
        let mut world = World::clean();
        let mut again = world.input.received[3].clone();
        again.arrival = 1_000;
        world.input.received.push(again);
        let report = world.audit();
        assert!(report.ok(), "{}", report.render(10));
        assert_eq!(report.redelivered, 1);
    }

    #[test]
    fn a_wrong_typed_result_fails_the_results_check() {
        let mut world = World::clean();
        world.input.calls[0].result =
            Some(json!({"confirmed": "yes", "party_size": 3, "day": null}));
        let report = world.audit();
        assert!(
            failing(&report).contains(&"results"),
            "{}",
            report.render(10)
        );
        assert!(report.render(10).contains("is not a boolean"));
    }

    #[test]
    fn a_wrong_answer_is_reported() {
        let mut world = World::clean();
        world.input.calls[0].result =
            Some(json!({"confirmed": true, "party_size": 4, "day": "2026-05-14"}));
        let report = world.audit();
        assert!(report.render(10).contains("the callee said 3"));
    }

    #[test]
    fn events_out_of_order_fail_the_order_check() {
        let mut world = World::clean();
        let a = world
            .input
            .received
            .iter()
            .position(|r| r.event_type == "call.ringing")
            .unwrap();
        let b = world
            .input
            .received
            .iter()
            .position(|r| r.event_type == "call.answered")
            .unwrap();
        let (x, y) = (
            world.input.received[a].arrival,
            world.input.received[b].arrival,
        );
        world.input.received[a].arrival = y;
        world.input.received[b].arrival = x;
        assert_eq!(failing(&world.audit()), ["order"]);
    }

    #[test]
    fn a_bad_signature_fails() {
        let mut world = World::clean();
        world.input.received[5].standard_signature_ok = false;
        assert_eq!(failing(&world.audit()), ["signatures"]);
    }

    #[test]
    fn a_call_created_twice_or_lost_fails_the_created_check() {
        let mut world = World::clean();
        let mut twin = world.input.calls[1].clone();
        twin.id = Uuid::from_u128(0x9999);
        world.entry(twin.id, "hold", 5000);
        world.entry(twin.id, "hold_release", 5000);
        world.input.calls.push(twin);
        world.input.planned[0].create_error = Some("timed out".into());
        let report = world.audit();
        let text = report.render(10);
        assert!(text.contains("created 2 times"), "{text}");
        assert!(text.contains("never created"), "{text}");
    }

    #[test]
    fn a_call_dialled_twice_fails() {
        let mut world = World::clean();
        world.input.calls[0].dial_attempts = 2;
        assert_eq!(failing(&world.audit()), ["dialled once"]);
    }

    #[test]
    fn an_unsettled_hold_and_an_undelivered_webhook_fail() {
        let mut world = World::clean();
        world.input.deliveries[0].status = "exhausted".into();
        world.input.calls[1].reservation_status = "reserved".into();
        let failed = failing(&world.audit());
        assert!(failed.contains(&"deliveries"), "{failed:?}");
        assert!(failed.contains(&"billing"), "{failed:?}");
    }

    #[test]
    fn dead_letters_about_finished_calls_are_explained_others_fail() {
        let mut world = World::clean();
        let finished = world.input.calls[0].id;
        world.input.queues.push(QueueDepth {
            queue: "ns.billing.dlq".into(),
            messages: 1,
            is_dead_letter_queue: true,
        });
        world.input.dead_letters.push(DeadLetter {
            queue: "ns.billing.dlq".into(),
            call_id: Some(finished),
            reason: "delivery_limit".into(),
        });
        let report = world.audit();
        assert!(report.ok(), "{}", report.render(10));
        assert_eq!(report.dead_letters_explained, 1);

        world.input.dead_letters.push(DeadLetter {
            queue: "ns.billing.dlq".into(),
            call_id: None,
            reason: "rejected".into(),
        });
        world.input.queues.push(QueueDepth {
            queue: "ns.dialer".into(),
            messages: 3,
            is_dead_letter_queue: false,
        });
        let report = world.audit();
        assert_eq!(failing(&report), ["queues"]);
        assert_eq!(report.check("queues").unwrap().violations.len(), 2);
    }

    #[test]
    fn field_types_follow_the_api() {
        let ok = [
            (json!("string"), json!("x")),
            (json!("boolean"), json!(false)),
            (json!("integer"), json!(3)),
            (json!("number"), json!(4.5)),
            (json!("number"), json!(4)),
            (json!("date"), json!("2026-05-14")),
            (json!("datetime"), json!("2026-05-14T15:00:00Z")),
            (json!("enum:basic|pro"), json!("pro")),
            (json!("integer?"), json!(null)),
            (json!({"type": "integer"}), json!(2)),
            (json!({"type": "string", "enum": ["a", "b"]}), json!("a")),
            (
                json!({"type": ["string", "null"], "format": "date"}),
                json!("2026-01-31"),
            ),
        ];
        for (spec, value) in ok {
            assert_eq!(check_typed(&spec, &value), Ok(()), "{spec} / {value}");
        }
        let bad = [
            (json!("string"), json!(3)),
            (json!("boolean"), json!("true")),
            (json!("integer"), json!(3.5)),
            (json!("number"), json!("4")),
            (json!("date"), json!("2026-02-30")),
            (json!("date"), json!("14/05/2026")),
            (json!("datetime"), json!("2026-05-14 15:00")),
            (json!("enum:basic|pro"), json!("gold")),
            (json!({"type": "string", "enum": ["a", "b"]}), json!("c")),
        ];
        for (spec, value) in bad {
            assert!(check_typed(&spec, &value).is_err(), "{spec} / {value}");
        }
        assert!(check_result(&json!({"a": "integer"}), &json!({})).is_err());
        assert!(check_result(&json!({"a": "integer"}), &json!({"a": 1, "b": 2})).is_err());
    }
}
