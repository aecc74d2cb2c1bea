//! `/v1/calls`: create, list, get, cancel, transcript.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ringer::call::{Call, CallStatus, Language, NewCall, VoicemailAction};
use ringer::call_columns;
use ringer::events::EventType;
use ringer::ledger::{self, HoldError};
use ringer::money::{format_dollars, format_dollars_down, hold_for};
use ringer::orgs::is_e164;
use ringer::returns::ReturnsSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody, Query, parse_id};
use crate::idempotency::{Started, WriteTx};
use crate::pagination::{Page, PageParams};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/calls", post(create_call).get(list_calls))
        .route("/v1/calls/{id}", get(get_call))
        .route("/v1/calls/{id}/cancel", post(cancel_call))
        .route("/v1/calls/{id}/transcript", get(get_transcript))
}

/// Body of `POST /v1/calls` (documentation; the handler validates field by field).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreateCallRequest {
    /// E.164 destination.
    to: String,
    /// What the agent should accomplish.
    prompt: String,
    /// Facts the agent may use.
    #[schema(value_type = Option<Object>)]
    context: Option<Value>,
    /// Field name → type (`string`, `boolean`, `integer`, `number`, `date`, `datetime`,
    /// `enum:a|b`, any ending in `?`) or a JSON-Schema object.
    #[schema(value_type = Option<Object>)]
    returns: Option<Value>,
    /// `en` (default) or `es`.
    language: Option<Language>,
    /// An active number of the org; default: its oldest active number.
    from_number: Option<String>,
    /// https URL receiving every event of this call.
    webhook_url: Option<String>,
    voicemail_action: Option<VoicemailAction>,
    #[schema(minimum = 1)]
    max_duration_seconds: Option<i64>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Value>,
}

const CREATE_FIELDS: [&str; 11] = [
    "to",
    "prompt",
    "context",
    "returns",
    "language",
    "from_number",
    "webhook_url",
    "voicemail_action",
    "max_duration_seconds",
    "metadata",
    "tools",
];
const MAX_PROMPT_CHARS: usize = 20_000;
const MAX_METADATA_KEYS: usize = 50;
const MAX_TOOLS: usize = 20;

/// A create request that passed validation, before the database checks.
struct ValidCreate {
    to_number: String,
    prompt: String,
    context: Value,
    returns: Option<Value>,
    language: Language,
    from_number: Option<String>,
    webhook_url: Option<String>,
    voicemail_action: VoicemailAction,
    max_duration_seconds: i32,
    metadata: Option<Value>,
    tools: Option<Value>,
}

fn optional<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|value| !value.is_null())
}

fn required_string(body: &Map<String, Value>, field: &str) -> ApiResult<String> {
    match optional(body, field) {
        None => Err(ApiError::missing(field)),
        Some(Value::String(text)) if text.trim().is_empty() => Err(ApiError::invalid(
            field,
            format!("{field} must not be empty."),
        )),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("{field} must be a string."),
        )),
    }
}

fn optional_string(body: &Map<String, Value>, field: &str) -> ApiResult<Option<String>> {
    match optional(body, field) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("{field} must be a string."),
        )),
    }
}

fn optional_object(body: &Map<String, Value>, field: &str) -> ApiResult<Option<Value>> {
    match optional(body, field) {
        None => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(value.clone())),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("{field} must be a JSON object."),
        )),
    }
}

fn parse_enum<T: std::str::FromStr<Err = String>>(
    body: &Map<String, Value>,
    field: &str,
) -> ApiResult<Option<T>> {
    optional_string(body, field)?
        .map(|text| {
            text.parse::<T>()
                .map_err(|message| ApiError::invalid(field, format!("{field}: {message}.")))
        })
        .transpose()
}

fn validate_e164(field: &str, number: &str) -> ApiResult<()> {
    if is_e164(number) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!(
                "{field} must be a phone number in E.164 format, like +14155550123; got {number:?}."
            ),
        ))
    }
}

/// An https URL (http too in dev mode) with a host, at most 2048 characters.
pub fn validate_webhook_url(field: &str, raw: &str, dev_mode: bool) -> ApiResult<()> {
    let invalid = |why: &str| ApiError::invalid(field, format!("{field} {why}; got {raw:?}."));
    if raw.len() > 2048 {
        return Err(invalid("must be at most 2048 characters"));
    }
    let url = url::Url::parse(raw).map_err(|_| invalid("must be an absolute https URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if dev_mode => {}
        "http" => return Err(invalid("must use https (http is allowed only in dev mode)")),
        _ => return Err(invalid("must be an absolute https URL")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("must have a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    // Outside dev mode, a host that is plainly internal is refused at once (the
    // dispatcher checks what a name resolves to again at send time).
    if !dev_mode {
        let host = url.host_str().unwrap_or_default();
        let host_name = host.trim_end_matches('.').to_ascii_lowercase();
        if host_name == "localhost" || host_name.ends_with(".localhost") {
            return Err(invalid(
                "must not point at localhost (a loopback address); webhooks go only to public addresses",
            ));
        }
        if let Some(Err(refused)) = ringer::url_guard::check_literal(host) {
            return Err(invalid(&format!("is refused: {refused}")));
        }
    }
    Ok(())
}

fn validate_tools(value: &Value, dev_mode: bool) -> ApiResult<()> {
    let Value::Array(tools) = value else {
        return Err(ApiError::invalid(
            "tools",
            "tools must be an array of tool objects.",
        ));
    };
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::invalid(
            "tools",
            format!("At most {MAX_TOOLS} tools are allowed."),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (index, tool) in tools.iter().enumerate() {
        let param = |field: &str| format!("tools[{index}].{field}");
        let Value::Object(tool) = tool else {
            return Err(ApiError::invalid(
                format!("tools[{index}]"),
                "Each tool must be an object.",
            ));
        };
        for key in tool.keys() {
            if ![
                "type",
                "name",
                "description",
                "url",
                "parameters",
                "policy",
                "headers",
                "timeout_ms",
            ]
            .contains(&key.as_str())
            {
                return Err(ApiError::unknown_parameter(&param(key)));
            }
        }
        if tool.get("type").and_then(Value::as_str) != Some("http") {
            return Err(ApiError::invalid(
                param("type"),
                "Tool type must be \"http\".",
            ));
        }
        let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
        let valid_name = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(ApiError::invalid(
                param("name"),
                "Tool name must be 1–64 letters, digits, '_' or '-'.",
            ));
        }
        if !names.insert(name.to_owned()) {
            return Err(ApiError::invalid(
                param("name"),
                format!("Tool name {name:?} is used twice."),
            ));
        }
        if !tool.get("description").is_some_and(Value::is_string) {
            return Err(ApiError::invalid(
                param("description"),
                "Tool description must be a string.",
            ));
        }
        let url = tool
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(param("url"), "Tool url must be a string."))?;
        validate_webhook_url(&param("url"), url, dev_mode)?;
        if !tool.get("parameters").is_some_and(Value::is_object) {
            return Err(ApiError::invalid(
                param("parameters"),
                "Tool parameters must be a JSON Schema object.",
            ));
        }
        match tool.get("policy").and_then(Value::as_str) {
            Some("read" | "confirm_first_write") => {}
            _ => {
                return Err(ApiError::invalid(
                    param("policy"),
                    "Tool policy must be \"read\" or \"confirm_first_write\".",
                ));
            }
        }
        if let Some(headers) = tool.get("headers").filter(|h| !h.is_null()) {
            let all_strings = headers
                .as_object()
                .is_some_and(|h| h.values().all(Value::is_string));
            if !all_strings {
                return Err(ApiError::invalid(
                    param("headers"),
                    "Tool headers must be an object of strings.",
                ));
            }
        }
        if let Some(timeout) = tool.get("timeout_ms").filter(|t| !t.is_null())
            && !timeout
                .as_u64()
                .is_some_and(|ms| (1..=30_000).contains(&ms))
        {
            return Err(ApiError::invalid(
                param("timeout_ms"),
                "Tool timeout_ms must be an integer from 1 to 30000.",
            ));
        }
    }
    Ok(())
}

fn validate_create(body: &Value, state: &AppState) -> ApiResult<ValidCreate> {
    let Value::Object(body) = body else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "The request body must be a JSON object.",
        ));
    };
    if let Some(unknown) = body
        .keys()
        .find(|key| !CREATE_FIELDS.contains(&key.as_str()))
    {
        return Err(ApiError::unknown_parameter(unknown));
    }
    let config = &state.config;
    let to_number = required_string(body, "to")?;
    validate_e164("to", &to_number)?;
    let prompt = required_string(body, "prompt")?;
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            "prompt",
            format!("prompt must be at most {MAX_PROMPT_CHARS} characters."),
        ));
    }
    let context = optional_object(body, "context")?.unwrap_or_else(|| Value::Object(Map::new()));
    let returns = optional_object(body, "returns")?;
    if let Some(returns) = &returns {
        ReturnsSchema::parse(returns)
            .map_err(|error| ApiError::invalid(error.param(), error.to_string()))?;
    }
    let language = parse_enum::<Language>(body, "language")?.unwrap_or(Language::En);
    let from_number = optional_string(body, "from_number")?;
    if let Some(from) = &from_number {
        validate_e164("from_number", from)?;
    }
    let webhook_url = optional_string(body, "webhook_url")?;
    if let Some(url) = &webhook_url {
        validate_webhook_url("webhook_url", url, config.common.dev_mode)?;
    }
    let voicemail_action =
        parse_enum::<VoicemailAction>(body, "voicemail_action")?.unwrap_or(VoicemailAction::Hangup);
    let ceiling = config.max_duration_ceiling_seconds;
    let max_duration_seconds = match optional(body, "max_duration_seconds") {
        None => config.default_max_duration_seconds.min(ceiling),
        Some(value) => value
            .as_i64()
            .filter(|seconds| (1..=i64::from(ceiling)).contains(seconds))
            .and_then(|seconds| i32::try_from(seconds).ok())
            .ok_or_else(|| {
                ApiError::invalid(
                    "max_duration_seconds",
                    format!("max_duration_seconds must be a whole number of seconds from 1 to {ceiling}."),
                )
            })?,
    };
    let metadata = optional_object(body, "metadata")?;
    if metadata
        .as_ref()
        .and_then(Value::as_object)
        .is_some_and(|m| m.len() > MAX_METADATA_KEYS)
    {
        return Err(ApiError::invalid(
            "metadata",
            format!("metadata may have at most {MAX_METADATA_KEYS} keys."),
        ));
    }
    let tools = optional(body, "tools").cloned();
    if let Some(tools) = &tools {
        validate_tools(tools, config.common.dev_mode)?;
    }
    Ok(ValidCreate {
        to_number,
        prompt,
        context,
        returns,
        language,
        from_number,
        webhook_url,
        voicemail_action,
        max_duration_seconds,
        metadata,
        tools,
    })
}

/// The caller ID: the requested number if the org owns it and it is active,
/// else the org's oldest active number.
async fn pick_from_number(
    conn: &mut PgConnection,
    org_id: Uuid,
    requested: Option<&str>,
) -> ApiResult<String> {
    let found: Option<(String,)> = match requested {
        Some(number) => sqlx::query_as(
            "SELECT e164 FROM phone_numbers WHERE org_id = $1 AND e164 = $2 AND status = 'active'",
        )
        .bind(org_id)
        .bind(number)
        .fetch_optional(&mut *conn)
        .await?,
        None => {
            sqlx::query_as(
                "SELECT e164 FROM phone_numbers WHERE org_id = $1 AND status = 'active' \
                 ORDER BY purchased_at, id LIMIT 1",
            )
            .bind(org_id)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    match (found, requested) {
        (Some((number,)), _) => Ok(number),
        (None, Some(number)) => Err(ApiError::invalid(
            "from_number",
            format!(
                "from_number {number} is not an active number of your organisation; list yours with GET /v1/numbers."
            ),
        )),
        (None, None) => Err(ApiError::bad_request(
            "no_active_number",
            "Your organisation has no active phone number to call from; buy one with POST /v1/numbers/purchase.",
        )),
    }
}

async fn org_rate(conn: &mut PgConnection, org_id: Uuid, default_rate: i64) -> sqlx::Result<i64> {
    let (rate,): (Option<i64>,) =
        sqlx::query_as("SELECT rate_per_minute_milli_cents FROM orgs WHERE id = $1")
            .bind(org_id)
            .fetch_one(conn)
            .await?;
    Ok(rate.unwrap_or(default_rate))
}

/// The 402 sentence: the balance, the hold, and what to add.
pub fn insufficient_funds_message(available: i64, hold: i64) -> String {
    format!(
        "Calls paused. Your balance is {} but each call requires a {} hold (it is released if no one answers). \
         Add {} or more in credits to keep calling.",
        format_dollars_down(available.max(0)),
        format_dollars(hold),
        format_dollars(hold - available.max(0)),
    )
}

#[utoipa::path(
    post, path = "/v1/calls", tag = "calls",
    request_body = CreateCallRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for 24 h")),
    responses(
        (status = 201, description = "The queued call", body = Call),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 402, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody),
        (status = 413, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_call(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: JsonBody<Value>,
) -> ApiResult<Response> {
    let valid = validate_create(&body.value, &state)?;
    let mut write = match WriteTx::start(
        &state.db,
        auth.org_id,
        &headers,
        "POST",
        "/v1/calls",
        &body.value,
    )
    .await?
    {
        Started::Replay(response) => return Ok(response),
        Started::Run(write) => write,
    };
    let from_number =
        pick_from_number(&mut write.tx, auth.org_id, valid.from_number.as_deref()).await?;
    let rate = org_rate(
        &mut write.tx,
        auth.org_id,
        state.config.rate_per_minute_milli_cents,
    )
    .await?;
    let hold = hold_for(valid.max_duration_seconds, rate);
    let call_id = Uuid::now_v7();
    match ledger::reserve_hold(&mut write.tx, auth.org_id, call_id, hold).await {
        Ok(()) => {}
        Err(HoldError::InsufficientFunds { available, hold }) => {
            return Err(ApiError::InsufficientFunds(insufficient_funds_message(
                available, hold,
            )));
        }
        Err(HoldError::Database(error)) => return Err(error.into()),
    }
    let new = NewCall {
        id: call_id,
        org_id: auth.org_id,
        to_number: valid.to_number,
        from_number,
        prompt: valid.prompt,
        context: valid.context,
        returns: valid.returns,
        language: valid.language,
        webhook_url: valid.webhook_url,
        voicemail_action: valid.voicemail_action,
        max_duration_seconds: valid.max_duration_seconds,
        metadata: valid.metadata,
        tools: valid.tools,
        rate_per_minute_milli_cents: rate,
        hold_milli_cents: hold,
    };
    let call = ringer::call::insert_queued_call(&mut write.tx, &new).await?;
    metrics::counter!("ringer_calls_created_total").increment(1);
    write.commit(StatusCode::CREATED, &call).await
}

/// Query of `GET /v1/calls`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListCallsQuery {
    /// Page size, 1–100 (default 20).
    limit: Option<String>,
    /// A call id: return the calls after it (older).
    starting_after: Option<String>,
    /// A call id: return the calls before it (newer).
    ending_before: Option<String>,
    /// Only calls in this status.
    status: Option<String>,
    /// Only calls to this E.164 number.
    to: Option<String>,
    /// Only calls created at or after this time (RFC 3339 or unix seconds).
    created_after: Option<String>,
    /// Only calls created before this time (RFC 3339 or unix seconds).
    created_before: Option<String>,
}

fn parse_time(param: &str, raw: &str) -> ApiResult<DateTime<Utc>> {
    if let Ok(seconds) = raw.parse::<i64>() {
        return DateTime::from_timestamp(seconds, 0)
            .ok_or_else(|| ApiError::invalid(param, format!("{param} is out of range.")));
    }
    DateTime::parse_from_rfc3339(raw)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::invalid(
                param,
                format!("{param} must be an RFC 3339 time or unix seconds; got {raw:?}."),
            )
        })
}

#[derive(sqlx::FromRow)]
struct CallRow {
    #[sqlx(flatten)]
    call: Call,
}

#[utoipa::path(
    get, path = "/v1/calls", tag = "calls",
    params(ListCallsQuery),
    responses((status = 200, body = Page<Call>), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_calls(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<ListCallsQuery>,
) -> ApiResult<Json<Page<Call>>> {
    let page = PageParams {
        limit: query.limit.clone(),
        starting_after: query.starting_after.clone(),
        ending_before: query.ending_before.clone(),
    };
    let limit = page.limit(100)?;
    let status = query
        .status
        .as_deref()
        .map(|raw| {
            raw.parse::<CallStatus>()
                .map_err(|message| ApiError::invalid("status", format!("status: {message}.")))
        })
        .transpose()?;
    if let Some(to) = &query.to {
        validate_e164("to", to)?;
    }
    let created_after = query
        .created_after
        .as_deref()
        .map(|raw| parse_time("created_after", raw))
        .transpose()?;
    let created_before = query
        .created_before
        .as_deref()
        .map(|raw| parse_time("created_before", raw))
        .transpose()?;
    let cursor = page.cursor()?;
    let mut conn = state.db.acquire().await?;
    let cursor_position = crate::pagination::cursor_position(
        &mut conn,
        cursor,
        "SELECT created_at FROM calls WHERE id = $1 AND org_id = $2",
        auth.org_id,
        |param, id| format!("{param} must be the id of one of your calls; no call {id}."),
    )
    .await?;
    let backwards = matches!(
        cursor,
        Some((crate::pagination::Direction::EndingBefore, _, _))
    );
    // Newest first; `ending_before` walks towards newer calls, so it scans ascending and flips.
    let sql = if backwards {
        concat!(
            "SELECT ",
            call_columns!(),
            " FROM calls WHERE org_id = $1 \
             AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR to_number = $3) \
             AND ($4::timestamptz IS NULL OR created_at >= $4) AND ($5::timestamptz IS NULL OR created_at < $5) \
             AND ($6::timestamptz IS NULL OR (created_at, id) > ($6, $7)) \
             ORDER BY created_at ASC, id ASC LIMIT $8"
        )
    } else {
        concat!(
            "SELECT ",
            call_columns!(),
            " FROM calls WHERE org_id = $1 \
             AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR to_number = $3) \
             AND ($4::timestamptz IS NULL OR created_at >= $4) AND ($5::timestamptz IS NULL OR created_at < $5) \
             AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7)) \
             ORDER BY created_at DESC, id DESC LIMIT $8"
        )
    };
    let rows: Vec<CallRow> = sqlx::query_as(sql)
        .bind(auth.org_id)
        .bind(status.map(CallStatus::as_str))
        .bind(query.to.as_deref())
        .bind(created_after)
        .bind(created_before)
        .bind(cursor_position.map(|(created_at, _)| created_at))
        .bind(cursor_position.map(|(_, id)| id))
        .bind(limit + 1)
        .fetch_all(&mut *conn)
        .await?;
    let calls = rows.into_iter().map(|row| row.call).collect();
    Ok(Json(Page::from_rows(calls, limit, backwards)))
}

async fn find_org_call(conn: &mut PgConnection, org_id: Uuid, raw_id: &str) -> ApiResult<Call> {
    let id = parse_id("call", raw_id)?;
    sqlx::query_as::<_, Call>(concat!(
        "SELECT ",
        call_columns!(),
        " FROM calls WHERE id = $1 AND org_id = $2"
    ))
    .bind(id)
    .bind(org_id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::not_found("call", raw_id))
}

#[utoipa::path(
    get, path = "/v1/calls/{id}", tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    responses((status = 200, body = Call), (status = 404, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_call(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Call>> {
    let mut conn = state.db.acquire().await?;
    Ok(Json(find_org_call(&mut conn, auth.org_id, &id).await?))
}

#[utoipa::path(
    post, path = "/v1/calls/{id}/cancel", tag = "calls",
    params(("id" = String, Path, description = "Call id"), ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for 24 h")),
    responses((status = 200, body = Call), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn cancel_call(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let path = format!("/v1/calls/{id}/cancel");
    let mut write = match WriteTx::start(
        &state.db,
        auth.org_id,
        &headers,
        "POST",
        &path,
        &Value::Null,
    )
    .await?
    {
        Started::Replay(response) => return Ok(response),
        Started::Run(write) => write,
    };
    let call_id = parse_id("call", &id)?;
    let status: Option<(CallStatus,)> =
        sqlx::query_as("SELECT status FROM calls WHERE id = $1 AND org_id = $2 FOR UPDATE")
            .bind(call_id)
            .bind(auth.org_id)
            .fetch_optional(&mut *write.tx)
            .await?;
    let Some((status,)) = status else {
        return Err(ApiError::not_found("call", id));
    };
    let call = match status {
        // Nobody dials it yet: end it here. Billing releases the hold and the
        // completion join emits `call.canceled`.
        CallStatus::Queued => {
            let call = sqlx::query_as::<_, Call>(concat!(
                "UPDATE calls SET status = 'canceled', hangup_cause = 'canceled', ended_at = now(), \
                 cancel_requested_at = now(), updated_at = now() WHERE id = $1 AND status = 'queued' RETURNING ",
                call_columns!()
            ))
            .bind(call_id)
            .fetch_one(&mut *write.tx)
            .await?;
            ringer::outbox::emit(&mut write.tx, auth.org_id, EventType::CallEnded, &call).await?;
            call
        }
        // The dialer owns it: ask it to hang up.
        CallStatus::Initiated | CallStatus::Ringing => {
            let call = sqlx::query_as::<_, Call>(concat!(
                "UPDATE calls SET cancel_requested_at = COALESCE(cancel_requested_at, now()), updated_at = now() \
                 WHERE id = $1 RETURNING ",
                call_columns!()
            ))
            .bind(call_id)
            .fetch_one(&mut *write.tx)
            .await?;
            ringer::outbox::emit(
                &mut write.tx,
                auth.org_id,
                EventType::CancelRequested,
                &call,
            )
            .await?;
            call
        }
        CallStatus::InProgress => {
            return Err(ApiError::Conflict {
                code: "call_already_answered",
                message: format!(
                    "Call {call_id} was already answered; a call can only be canceled before it is answered."
                ),
            });
        }
        finished => {
            return Err(ApiError::Conflict {
                code: "call_already_ended",
                message: format!(
                    "Call {call_id} already ended with status {finished}; there is nothing to cancel."
                ),
            });
        }
    };
    write.commit(StatusCode::OK, &call).await
}

/// One turn of the conversation.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TranscriptSegment {
    pub sequence_no: i32,
    /// `agent` or `callee`.
    pub role: String,
    pub text: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub source: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Transcript {
    pub segments: Vec<TranscriptSegment>,
}

#[utoipa::path(
    get, path = "/v1/calls/{id}/transcript", tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    responses((status = 200, body = Transcript), (status = 404, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_transcript(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Transcript>> {
    let mut conn = state.db.acquire().await?;
    let call = find_org_call(&mut conn, auth.org_id, &id).await?;
    let segments = sqlx::query_as(
        "SELECT sequence_no, role, text, started_at, ended_at, duration_ms, source \
         FROM call_transcripts WHERE call_id = $1 ORDER BY sequence_no",
    )
    .bind(call.id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Json(Transcript { segments }))
}

#[cfg(test)]
mod tests {
    use super::validate_webhook_url;

    #[test]
    fn outside_dev_mode_internal_webhook_hosts_are_refused_naming_the_rule() {
        for (url, rule) in [
            ("https://127.0.0.1/hook", "loopback"),
            ("https://[::1]:8443/hook", "loopback"),
            ("https://10.1.2.3/hook", "private"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://localhost/hook", "localhost"),
            ("https://api.localhost./hook", "localhost"),
            ("http://example.com/hook", "https"),
        ] {
            let error = validate_webhook_url("webhook_url", url, false).expect_err(url);
            let message = error.to_string();
            assert!(message.contains(rule), "{url}: {message}");
            assert!(message.starts_with("webhook_url "), "{message}");
        }
        validate_webhook_url("webhook_url", "https://hooks.example.com/ringer", false)
            .expect("a public https URL passes");
    }

    #[test]
    fn dev_mode_allows_http_and_loopback() {
        for url in ["http://127.0.0.1:9000/hook", "http://localhost/hook"] {
            validate_webhook_url("webhook_url", url, true).expect(url);
        }
    }
}
