//! Webhook endpoints and deliveries (`/v1/webhook_endpoints`, `/v1/webhook_deliveries`).
//!
//! The webhook-dispatcher sends; this module manages what it sends to and
//! shows what it did. A redeliver puts the delivery back to `pending` with no
//! job (`enqueued_at` NULL) and notifies the dispatcher's sweeper, which
//! publishes the job.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ringer::events::EventType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::AppState;
use crate::calls::validate_webhook_url;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody, Query, parse_id};
use crate::idempotency::{Started, WriteTx};
use crate::pagination::{Direction, Page, PageParams};

/// Overlap of a rotation that does not say: the old secret stays valid 24 h.
pub const DEFAULT_ROTATION_OVERLAP_SECONDS: i64 = 24 * 3600;
/// The longest overlap a rotation may ask for (7 days).
pub const MAX_ROTATION_OVERLAP_SECONDS: i64 = 7 * 24 * 3600;
/// Endpoints one organisation may have.
pub const MAX_ENDPOINTS_PER_ORG: i64 = 16;
const MAX_DESCRIPTION_CHARS: usize = 5000;
/// The dispatcher's sweeper listens here; a redeliver wakes it.
const REDELIVER_CHANNEL: &str = "ringer_webhook_deliveries";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/webhook_endpoints",
            post(create_endpoint).get(list_endpoints),
        )
        .route(
            "/v1/webhook_endpoints/{id}",
            get(get_endpoint)
                .patch(update_endpoint)
                .delete(delete_endpoint),
        )
        .route(
            "/v1/webhook_endpoints/{id}/rotate_secret",
            post(rotate_secret),
        )
        .route("/v1/webhook_deliveries", get(list_deliveries))
        .route("/v1/webhook_deliveries/{id}", get(get_delivery))
        .route("/v1/webhook_deliveries/{id}/redeliver", post(redeliver))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        create_endpoint,
        list_endpoints,
        get_endpoint,
        update_endpoint,
        delete_endpoint,
        rotate_secret,
        list_deliveries,
        get_delivery,
        redeliver,
    ),
    components(schemas(
        WebhookEndpoint,
        WebhookEndpointWithSecret,
        EndpointList,
        DeletedEndpoint,
        CreateEndpointRequest,
        UpdateEndpointRequest,
        RotateSecretRequest,
        WebhookDelivery,
        WebhookDeliveryWithAttempts,
        WebhookAttempt,
    ))
)]
pub struct WebhooksApi;

/// A URL that receives the org's events.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub org_id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// Event types sent here; `["*"]` = all.
    pub enabled_events: Vec<String>,
    /// `enabled` or `disabled`.
    pub status: String,
    /// `too_many_failures` when ten deliveries in a row were exhausted.
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// Exhausted deliveries in a row; any 2xx resets it.
    pub consecutive_failures: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An endpoint with its signing secret: only on creation and rotation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookEndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_…`: verifies `CallingBox-Signature` and `webhook-signature`. Shown only now.
    pub signing_secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    pub data: Vec<WebhookEndpoint>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeletedEndpoint {
    pub id: Uuid,
    pub deleted: bool,
}

/// Body of `POST /v1/webhook_endpoints` (documentation; validated field by field).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreateEndpointRequest {
    /// https URL (http and private addresses only in dev mode).
    url: String,
    description: Option<String>,
    /// Event types, or `["*"]` (the default) for all.
    enabled_events: Option<Vec<String>>,
}

/// Body of `PATCH /v1/webhook_endpoints/{id}`; every field optional.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UpdateEndpointRequest {
    url: Option<String>,
    description: Option<String>,
    enabled_events: Option<Vec<String>>,
    /// `enabled` (zeroes `consecutive_failures`) or `disabled`.
    status: Option<String>,
}

/// Optional body of `POST /v1/webhook_endpoints/{id}/rotate_secret`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RotateSecretRequest {
    /// How long the old secret keeps signing (default 86400; 0 = cut over at once).
    overlap_seconds: Option<i64>,
}

/// One (event, destination) delivery.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WebhookDelivery {
    /// Also `webhook-id` and `CallingBox-Event-Id` of every attempt.
    pub id: Uuid,
    pub org_id: Uuid,
    /// None: the call's inline `webhook_url`.
    pub endpoint_id: Option<Uuid>,
    pub call_id: Uuid,
    pub event_type: String,
    pub url: String,
    /// `pending`, `delivered` or `exhausted`.
    pub status: String,
    pub attempt_count: i32,
    pub manual_retry_count: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_response_status: Option<i32>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WebhookAttempt {
    pub number: i32,
    pub started_at: DateTime<Utc>,
    pub response_status: Option<i32>,
    /// The first KiB of the response body.
    pub response_body_excerpt: Option<String>,
    pub duration_ms: i32,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookDeliveryWithAttempts {
    #[serde(flatten)]
    pub delivery: WebhookDelivery,
    pub attempts: Vec<WebhookAttempt>,
}

macro_rules! delivery_columns {
    () => {
        "id, org_id, endpoint_id, call_id, event_type, url, status, attempt_count, \
         manual_retry_count, next_attempt_at, last_error, last_response_status, delivered_at, \
         created_at, updated_at"
    };
}

// ---------------------------------------------------------------- validation

fn body_object<'a>(value: &'a Value, allowed: &[&str]) -> ApiResult<&'a Map<String, Value>> {
    let Value::Object(body) = value else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "The request body must be a JSON object.",
        ));
    };
    if let Some(unknown) = body.keys().find(|key| !allowed.contains(&key.as_str())) {
        return Err(ApiError::unknown_parameter(unknown));
    }
    Ok(body)
}

/// A webhook URL: https (http in dev mode) and, outside dev mode, a host that
/// is and resolves only to public addresses.
async fn validate_endpoint_url(state: &AppState, value: &Value) -> ApiResult<String> {
    let Value::String(raw) = value else {
        return Err(ApiError::invalid("url", "url must be a string."));
    };
    let dev_mode = state.config.common.dev_mode;
    validate_webhook_url("url", raw, dev_mode)?;
    if !dev_mode {
        let parsed = url::Url::parse(raw)
            .map_err(|_| ApiError::invalid("url", "url must be an absolute https URL."))?;
        let host = parsed.host_str().unwrap_or_default();
        let port = parsed.port_or_known_default().unwrap_or(443);
        ringer::url_guard::check_host(host, port)
            .await
            .map_err(|refused| ApiError::invalid("url", format!("url is refused: {refused}.")))?;
    }
    Ok(raw.clone())
}

fn validate_description(value: &Value) -> ApiResult<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if text.chars().count() <= MAX_DESCRIPTION_CHARS => {
            Ok(Some(text.clone()))
        }
        Value::String(_) => Err(ApiError::invalid(
            "description",
            format!("description must be at most {MAX_DESCRIPTION_CHARS} characters."),
        )),
        _ => Err(ApiError::invalid(
            "description",
            "description must be a string.",
        )),
    }
}

/// A non-empty list of public event types, or `*`; `*` alone stands for all.
fn validate_enabled_events(value: &Value) -> ApiResult<Vec<String>> {
    let known = || {
        EventType::PUBLIC
            .iter()
            .map(|event| event.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Value::Array(items) = value else {
        return Err(ApiError::invalid(
            "enabled_events",
            "enabled_events must be an array of event types, like [\"call.completed\"], or [\"*\"].",
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            "enabled_events",
            "enabled_events must name at least one event type, or [\"*\"] for all.",
        ));
    }
    let mut events: Vec<String> = Vec::new();
    for item in items {
        let name = item.as_str().ok_or_else(|| {
            ApiError::invalid("enabled_events", "enabled_events must contain strings.")
        })?;
        let public = EventType::PUBLIC.iter().any(|event| event.as_str() == name);
        if name != "*" && !public {
            return Err(ApiError::invalid(
                "enabled_events",
                format!(
                    "Unknown event type {name:?}; expected \"*\" or one of {}.",
                    known()
                ),
            ));
        }
        if !events.iter().any(|seen| seen == name) {
            events.push(name.to_owned());
        }
    }
    if events.iter().any(|name| name == "*") {
        return Ok(vec!["*".to_owned()]);
    }
    Ok(events)
}

async fn find_endpoint(
    conn: &mut PgConnection,
    org_id: Uuid,
    raw_id: &str,
    lock: bool,
) -> ApiResult<WebhookEndpoint> {
    let id = parse_id("webhook endpoint", raw_id)?;
    let sql = if lock {
        "SELECT id, org_id, url, description, enabled_events, status, disabled_reason, disabled_at, \
         consecutive_failures, created_at, updated_at FROM webhook_endpoints \
         WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL FOR UPDATE"
    } else {
        "SELECT id, org_id, url, description, enabled_events, status, disabled_reason, disabled_at, \
         consecutive_failures, created_at, updated_at FROM webhook_endpoints \
         WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL"
    };
    sqlx::query_as::<_, WebhookEndpoint>(sql)
        .bind(id)
        .bind(org_id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint", raw_id))
}

async fn insert_secret(conn: &mut PgConnection, endpoint_id: Uuid) -> sqlx::Result<String> {
    let secret = ringer::orgs::generate_webhook_secret();
    sqlx::query("INSERT INTO webhook_endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)")
        .bind(endpoint_id)
        .bind(&secret)
        .execute(conn)
        .await?;
    Ok(secret)
}

// ---------------------------------------------------------------- endpoints

#[utoipa::path(
    post, path = "/v1/webhook_endpoints", tag = "webhooks",
    request_body = CreateEndpointRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for 24 h")),
    responses(
        (status = 201, description = "The endpoint and its signing secret (shown only here and on rotation)", body = WebhookEndpointWithSecret),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: JsonBody<Value>,
) -> ApiResult<Response> {
    let fields = body_object(&body.value, &["url", "description", "enabled_events"])?;
    let url = match fields.get("url").filter(|value| !value.is_null()) {
        Some(value) => validate_endpoint_url(&state, value).await?,
        None => return Err(ApiError::missing("url")),
    };
    let description = validate_description(fields.get("description").unwrap_or(&Value::Null))?;
    let enabled_events = match fields
        .get("enabled_events")
        .filter(|value| !value.is_null())
    {
        Some(value) => validate_enabled_events(value)?,
        None => vec!["*".to_owned()],
    };
    let mut write = match WriteTx::start(
        &state.db,
        auth.org_id,
        &headers,
        "POST",
        "/v1/webhook_endpoints",
        &body.value,
    )
    .await?
    {
        Started::Replay(response) => return Ok(response),
        Started::Run(write) => write,
    };
    // Serialises creations per org so that the limit holds under concurrency.
    sqlx::query("SELECT id FROM orgs WHERE id = $1 FOR UPDATE")
        .bind(auth.org_id)
        .execute(&mut *write.tx)
        .await?;
    let (count,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM webhook_endpoints WHERE org_id = $1 AND deleted_at IS NULL",
    )
    .bind(auth.org_id)
    .fetch_one(&mut *write.tx)
    .await?;
    if count >= MAX_ENDPOINTS_PER_ORG {
        return Err(ApiError::bad_request(
            "too_many_endpoints",
            format!(
                "An organisation may have at most {MAX_ENDPOINTS_PER_ORG} webhook endpoints; delete one first."
            ),
        ));
    }
    let endpoint = sqlx::query_as::<_, WebhookEndpoint>(
        "INSERT INTO webhook_endpoints (id, org_id, url, description, enabled_events) \
         VALUES ($1, $2, $3, $4, $5) \
         RETURNING id, org_id, url, description, enabled_events, status, disabled_reason, disabled_at, \
           consecutive_failures, created_at, updated_at",
    )
    .bind(Uuid::now_v7())
    .bind(auth.org_id)
    .bind(&url)
    .bind(&description)
    .bind(&enabled_events)
    .fetch_one(&mut *write.tx)
    .await?;
    let signing_secret = insert_secret(&mut write.tx, endpoint.id).await?;
    metrics::counter!("ringer_webhook_endpoints_created_total").increment(1);
    write
        .commit(
            StatusCode::CREATED,
            &WebhookEndpointWithSecret {
                endpoint,
                signing_secret,
            },
        )
        .await
}

#[utoipa::path(
    get, path = "/v1/webhook_endpoints", tag = "webhooks",
    responses((status = 200, body = EndpointList), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_endpoints(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<EndpointList>> {
    let data = sqlx::query_as::<_, WebhookEndpoint>(
        "SELECT id, org_id, url, description, enabled_events, status, disabled_reason, disabled_at, \
           consecutive_failures, created_at, updated_at \
         FROM webhook_endpoints WHERE org_id = $1 AND deleted_at IS NULL \
         ORDER BY created_at DESC, id DESC",
    )
    .bind(auth.org_id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(EndpointList { data }))
}

#[utoipa::path(
    get, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook endpoint id")),
    responses((status = 200, body = WebhookEndpoint), (status = 404, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookEndpoint>> {
    let mut conn = state.db.acquire().await?;
    Ok(Json(
        find_endpoint(&mut conn, auth.org_id, &id, false).await?,
    ))
}

#[utoipa::path(
    patch, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook endpoint id")),
    request_body = UpdateEndpointRequest,
    responses((status = 200, body = WebhookEndpoint), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn update_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody<Value>,
) -> ApiResult<Json<WebhookEndpoint>> {
    let fields = body_object(
        &body.value,
        &["url", "description", "enabled_events", "status"],
    )?;
    let url = match fields.get("url").filter(|value| !value.is_null()) {
        Some(value) => Some(validate_endpoint_url(&state, value).await?),
        None => None,
    };
    let description = fields
        .get("description")
        .map(validate_description)
        .transpose()?;
    let enabled_events = match fields
        .get("enabled_events")
        .filter(|value| !value.is_null())
    {
        Some(value) => Some(validate_enabled_events(value)?),
        None => None,
    };
    let status = match fields.get("status").filter(|value| !value.is_null()) {
        None => None,
        Some(Value::String(status)) if status == "enabled" || status == "disabled" => {
            Some(status.clone())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "status",
                "status must be \"enabled\" or \"disabled\".",
            ));
        }
    };
    let mut tx = state.db.begin().await?;
    let current = find_endpoint(&mut tx, auth.org_id, &id, true).await?;
    let updated = sqlx::query_as::<_, WebhookEndpoint>(
        "UPDATE webhook_endpoints SET \
           url = COALESCE($2, url), \
           description = CASE WHEN $3 THEN $4 ELSE description END, \
           enabled_events = COALESCE($5, enabled_events), \
           status = COALESCE($6, status), \
           consecutive_failures = CASE WHEN $6 = 'enabled' THEN 0 ELSE consecutive_failures END, \
           disabled_reason = CASE WHEN $6 = 'enabled' THEN NULL ELSE disabled_reason END, \
           disabled_at = CASE WHEN $6 = 'enabled' THEN NULL \
                              WHEN $6 = 'disabled' AND status = 'enabled' THEN now() \
                              ELSE disabled_at END, \
           updated_at = now() \
         WHERE id = $1 \
         RETURNING id, org_id, url, description, enabled_events, status, disabled_reason, disabled_at, \
           consecutive_failures, created_at, updated_at",
    )
    .bind(current.id)
    .bind(&url)
    .bind(description.is_some())
    .bind(description.flatten())
    .bind(&enabled_events)
    .bind(&status)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(updated))
}

#[utoipa::path(
    delete, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook endpoint id")),
    responses((status = 200, body = DeletedEndpoint), (status = 404, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<DeletedEndpoint>> {
    let endpoint_id = parse_id("webhook endpoint", &id)?;
    // Kept, hidden: its deliveries still name it. Its pending deliveries stop.
    let deleted: Option<(Uuid,)> = sqlx::query_as(
        "UPDATE webhook_endpoints SET deleted_at = now(), updated_at = now() \
         WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL RETURNING id",
    )
    .bind(endpoint_id)
    .bind(auth.org_id)
    .fetch_optional(&state.db)
    .await?;
    let (id,) = deleted.ok_or_else(|| ApiError::not_found("webhook endpoint", id))?;
    Ok(Json(DeletedEndpoint { id, deleted: true }))
}

/// The overlap of a rotation: the body may be empty or `{"overlap_seconds": n}`.
fn rotation_overlap(raw: &Bytes) -> ApiResult<(i64, Value)> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok((DEFAULT_ROTATION_OVERLAP_SECONDS, Value::Null));
    }
    let value: Value = serde_json::from_slice(raw).map_err(|error| {
        ApiError::bad_request(
            "invalid_json",
            format!("The request body is not valid JSON for this endpoint: {error}."),
        )
    })?;
    let fields = body_object(&value, &["overlap_seconds"])?;
    let overlap = match fields.get("overlap_seconds").filter(|value| !value.is_null()) {
        None => DEFAULT_ROTATION_OVERLAP_SECONDS,
        Some(seconds) => seconds
            .as_i64()
            .filter(|seconds| (0..=MAX_ROTATION_OVERLAP_SECONDS).contains(seconds))
            .ok_or_else(|| {
                ApiError::invalid(
                    "overlap_seconds",
                    format!(
                        "overlap_seconds must be a whole number of seconds from 0 to {MAX_ROTATION_OVERLAP_SECONDS}."
                    ),
                )
            })?,
    };
    Ok((overlap, value))
}

#[utoipa::path(
    post, path = "/v1/webhook_endpoints/{id}/rotate_secret", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook endpoint id"), ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for 24 h")),
    request_body(content = Option<RotateSecretRequest>),
    responses((status = 200, description = "The endpoint with its new signing secret", body = WebhookEndpointWithSecret), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, description = "Idempotency-Key reused with another request", body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult<Response> {
    let (overlap_seconds, request) = rotation_overlap(&raw)?;
    let path = format!("/v1/webhook_endpoints/{id}/rotate_secret");
    let mut write =
        match WriteTx::start(&state.db, auth.org_id, &headers, "POST", &path, &request).await? {
            Started::Replay(response) => return Ok(response),
            Started::Run(write) => write,
        };
    let endpoint = find_endpoint(&mut write.tx, auth.org_id, &id, true).await?;
    // The old secrets keep signing until the overlap ends (never longer than they already would).
    sqlx::query(
        "UPDATE webhook_endpoint_secrets \
         SET expires_at = LEAST(COALESCE(expires_at, 'infinity'), now() + make_interval(secs => $2)) \
         WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(endpoint.id)
    .bind(overlap_seconds as f64)
    .execute(&mut *write.tx)
    .await?;
    let signing_secret = insert_secret(&mut write.tx, endpoint.id).await?;
    let endpoint = sqlx::query_as::<_, WebhookEndpoint>(
        "UPDATE webhook_endpoints SET updated_at = now() WHERE id = $1 \
         RETURNING id, org_id, url, description, enabled_events, status, disabled_reason, disabled_at, \
           consecutive_failures, created_at, updated_at",
    )
    .bind(endpoint.id)
    .fetch_one(&mut *write.tx)
    .await?;
    write
        .commit(
            StatusCode::OK,
            &WebhookEndpointWithSecret {
                endpoint,
                signing_secret,
            },
        )
        .await
}

// ---------------------------------------------------------------- deliveries

/// Query of `GET /v1/webhook_deliveries`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListDeliveriesQuery {
    /// Page size, 1–200 (default 20).
    limit: Option<String>,
    /// A delivery id: return the deliveries after it (older).
    starting_after: Option<String>,
    /// A delivery id: return the deliveries before it (newer).
    ending_before: Option<String>,
    /// Only deliveries to this endpoint.
    endpoint_id: Option<String>,
    /// Only deliveries of this call.
    call_id: Option<String>,
    /// `pending`, `delivered` or `exhausted`.
    status: Option<String>,
}

fn parse_filter_id(param: &str, raw: Option<&str>) -> ApiResult<Option<Uuid>> {
    raw.map(|raw| {
        Uuid::parse_str(raw)
            .map_err(|_| ApiError::invalid(param, format!("{param} must be an id; got {raw:?}.")))
    })
    .transpose()
}

#[utoipa::path(
    get, path = "/v1/webhook_deliveries", tag = "webhooks",
    params(ListDeliveriesQuery),
    responses((status = 200, body = Page<WebhookDelivery>), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<ListDeliveriesQuery>,
) -> ApiResult<Json<Page<WebhookDelivery>>> {
    let page = PageParams {
        limit: query.limit.clone(),
        starting_after: query.starting_after.clone(),
        ending_before: query.ending_before.clone(),
    };
    let limit = page.limit(200)?;
    let endpoint_id = parse_filter_id("endpoint_id", query.endpoint_id.as_deref())?;
    let call_id = parse_filter_id("call_id", query.call_id.as_deref())?;
    if let Some(status) = &query.status
        && !["pending", "delivered", "exhausted"].contains(&status.as_str())
    {
        return Err(ApiError::invalid(
            "status",
            format!("status must be pending, delivered or exhausted; got {status:?}."),
        ));
    }
    let cursor = page.cursor()?;
    let mut conn = state.db.acquire().await?;
    let cursor_position = crate::pagination::cursor_position(
        &mut conn,
        cursor,
        "SELECT created_at FROM webhook_deliveries WHERE id = $1 AND org_id = $2",
        auth.org_id,
        |param, id| format!("{param} must be the id of one of your deliveries; no delivery {id}."),
    )
    .await?;
    let backwards = matches!(cursor, Some((Direction::EndingBefore, _, _)));
    // Newest first; `ending_before` walks towards newer ones, so it scans ascending and flips.
    let sql = if backwards {
        concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM webhook_deliveries WHERE org_id = $1 \
             AND ($2::uuid IS NULL OR endpoint_id = $2) AND ($3::uuid IS NULL OR call_id = $3) \
             AND ($4::text IS NULL OR status = $4) \
             AND ($5::timestamptz IS NULL OR (created_at, id) > ($5, $6)) \
             ORDER BY created_at ASC, id ASC LIMIT $7"
        )
    } else {
        concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM webhook_deliveries WHERE org_id = $1 \
             AND ($2::uuid IS NULL OR endpoint_id = $2) AND ($3::uuid IS NULL OR call_id = $3) \
             AND ($4::text IS NULL OR status = $4) \
             AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6)) \
             ORDER BY created_at DESC, id DESC LIMIT $7"
        )
    };
    let rows: Vec<WebhookDelivery> = sqlx::query_as(sql)
        .bind(auth.org_id)
        .bind(endpoint_id)
        .bind(call_id)
        .bind(query.status.as_deref())
        .bind(cursor_position.map(|(created_at, _)| created_at))
        .bind(cursor_position.map(|(_, id)| id))
        .bind(limit + 1)
        .fetch_all(&mut *conn)
        .await?;
    Ok(Json(Page::from_rows(rows, limit, backwards)))
}

async fn find_delivery(
    conn: &mut PgConnection,
    org_id: Uuid,
    raw_id: &str,
) -> ApiResult<WebhookDelivery> {
    let id = parse_id("webhook delivery", raw_id)?;
    sqlx::query_as::<_, WebhookDelivery>(concat!(
        "SELECT ",
        delivery_columns!(),
        " FROM webhook_deliveries WHERE id = $1 AND org_id = $2"
    ))
    .bind(id)
    .bind(org_id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::not_found("webhook delivery", raw_id))
}

#[utoipa::path(
    get, path = "/v1/webhook_deliveries/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook delivery id")),
    responses((status = 200, body = WebhookDeliveryWithAttempts), (status = 404, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_delivery(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookDeliveryWithAttempts>> {
    let mut conn = state.db.acquire().await?;
    let delivery = find_delivery(&mut conn, auth.org_id, &id).await?;
    let attempts = sqlx::query_as::<_, WebhookAttempt>(
        "SELECT number, started_at, response_status, response_body_excerpt, duration_ms, error \
         FROM webhook_attempts WHERE delivery_id = $1 ORDER BY number",
    )
    .bind(delivery.id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Json(WebhookDeliveryWithAttempts { delivery, attempts }))
}

#[utoipa::path(
    post, path = "/v1/webhook_deliveries/{id}/redeliver", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook delivery id"), ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for 24 h")),
    responses((status = 200, description = "The delivery, back to pending with the same id", body = WebhookDelivery), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn redeliver(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let path = format!("/v1/webhook_deliveries/{id}/redeliver");
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
    let delivery = find_delivery(&mut write.tx, auth.org_id, &id).await?;
    if let Some(endpoint_id) = delivery.endpoint_id {
        let (status, deleted): (String, bool) = sqlx::query_as(
            "SELECT status, deleted_at IS NOT NULL FROM webhook_endpoints WHERE id = $1",
        )
        .bind(endpoint_id)
        .fetch_one(&mut *write.tx)
        .await?;
        if deleted {
            return Err(ApiError::Conflict {
                code: "endpoint_deleted",
                message: format!(
                    "Endpoint {endpoint_id} was deleted; its deliveries cannot be sent again."
                ),
            });
        }
        if status != "enabled" {
            return Err(ApiError::Conflict {
                code: "endpoint_disabled",
                message: format!(
                    "Endpoint {endpoint_id} is disabled; enable it with PATCH /v1/webhook_endpoints/{endpoint_id} {{\"status\": \"enabled\"}} first."
                ),
            });
        }
    }
    // A finished delivery gets one more attempt; a pending one is attempted now
    // and keeps the rest of its schedule. No job is published here: the
    // dispatcher's sweeper publishes one for `enqueued_at IS NULL` when notified.
    let delivery = sqlx::query_as::<_, WebhookDelivery>(concat!(
        "UPDATE webhook_deliveries SET \
           max_attempts = CASE WHEN status = 'pending' THEN max_attempts ELSE attempt_count + 1 END, \
           status = 'pending', manual_retry_count = manual_retry_count + 1, \
           next_attempt_at = now(), enqueued_at = NULL, updated_at = now() \
         WHERE id = $1 RETURNING ",
        delivery_columns!()
    ))
    .bind(delivery.id)
    .fetch_one(&mut *write.tx)
    .await?;
    if delivery.endpoint_id.is_none() {
        let sequence: (i64,) =
            sqlx::query_as("SELECT sequence FROM webhook_deliveries WHERE id = $1")
                .bind(delivery.id)
                .fetch_one(&mut *write.tx)
                .await?;
        // The call's inline fields follow its latest inline delivery.
        sqlx::query(
            "UPDATE calls SET webhook_status = 'pending', webhook_error = NULL \
             WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
               WHERE d.call_id = $1 AND d.endpoint_id IS NULL AND d.sequence > $2)",
        )
        .bind(delivery.call_id)
        .bind(sequence.0)
        .execute(&mut *write.tx)
        .await?;
    }
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(REDELIVER_CHANNEL)
        .execute(&mut *write.tx)
        .await?;
    metrics::counter!("ringer_webhook_redeliveries_total").increment(1);
    write.commit(StatusCode::OK, &delivery).await
}
