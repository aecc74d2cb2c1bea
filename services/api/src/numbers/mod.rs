//! `/v1/numbers`: the org's numbers, and searching, buying and releasing
//! them at the configured carrier ([`inventory::NumberInventory`]: the
//! simulated carrier's stock, or Twilio's).
//!
//! A purchase is recorded only after the carrier sold the number. When the
//! record then cannot be written (or committed), the number is released at the
//! carrier again, so that nothing is paid for that ringer does not know of; if
//! that release fails too, the number's SID is logged at error level for an
//! operator (and, at Twilio, a retried purchase by the same org adopts it).
//! A release asks the carrier first and marks the number released only once
//! the carrier let it go (a number it no longer has counts as let go).

pub mod inventory;
pub mod simulated;
pub mod twilio;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ringer::orgs::{NewNumber, PhoneNumber, is_e164};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody, Query, parse_id};
use crate::idempotency::{Started, WriteTx};
use crate::pagination::{Direction, Page, PageParams};

use self::inventory::{NumberSearch, NumberType};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/numbers", get(list_numbers))
        .route("/v1/numbers/available", get(available_numbers))
        .route("/v1/numbers/purchase", post(purchase_number))
        .route("/v1/numbers/{id}", delete(release_number))
}

/// A number the carrier offers.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AvailableNumber {
    pub phone_number: String,
    pub country_code: String,
    /// `local` or `toll_free`.
    pub number_type: String,
    pub state: Option<String>,
    pub locality: Option<String>,
    pub monthly_cost_cents: i32,
    pub upfront_cost_cents: i32,
    pub currency: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AvailableQuery {
    /// ISO country (`US`, `CA`); default `US`.
    country_code: Option<String>,
    /// Three-digit area code.
    area_code: Option<String>,
    /// `local` (default) or `toll_free`.
    number_type: Option<String>,
    /// At most this many numbers (1–100, default 20).
    limit: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/numbers/available", tag = "numbers",
    params(AvailableQuery),
    responses((status = 200, body = Vec<AvailableNumber>), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 502, description = "The carrier failed or refused", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn available_numbers(
    State(state): State<AppState>,
    _auth: Auth,
    Query(query): Query<AvailableQuery>,
) -> ApiResult<Json<Vec<AvailableNumber>>> {
    let countries = state.numbers.countries();
    let country = query
        .country_code
        .as_deref()
        .unwrap_or("US")
        .to_ascii_uppercase();
    if !countries.contains(&country.as_str()) {
        return Err(ApiError::invalid(
            "country_code",
            format!(
                "country_code must be one of {}; got {country:?}.",
                countries.join(", ")
            ),
        ));
    }
    let number_type = NumberType::parse(query.number_type.as_deref().unwrap_or("local"))
        .ok_or_else(|| {
            ApiError::invalid("number_type", "number_type must be local or toll_free.")
        })?;
    if let Some(area) = &query.area_code
        && (area.len() != 3 || !area.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ApiError::invalid(
            "area_code",
            "area_code must be three digits.",
        ));
    }
    let limit = match &query.limit {
        None => 20,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", "limit must be an integer from 1 to 100."))?,
    };
    let search = NumberSearch {
        country,
        area_code: query.area_code.clone(),
        number_type,
        limit,
    };
    let candidates = state.numbers.search(&search).await?;
    let wanted: Vec<String> = candidates.iter().map(|n| n.phone_number.clone()).collect();
    let taken: Vec<(String,)> =
        sqlx::query_as("SELECT e164 FROM phone_numbers WHERE status = 'active' AND e164 = ANY($1)")
            .bind(&wanted)
            .fetch_all(&state.db)
            .await?;
    let taken: std::collections::HashSet<String> = taken.into_iter().map(|(e164,)| e164).collect();
    let free = candidates
        .into_iter()
        .filter(|n| !taken.contains(&n.phone_number))
        .take(limit as usize)
        .collect();
    Ok(Json(free))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRequest {
    /// An E.164 number from `GET /v1/numbers/available`.
    phone_number: String,
}

#[utoipa::path(
    post, path = "/v1/numbers/purchase", tag = "numbers",
    request_body = PurchaseRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for 24 h")),
    responses((status = 201, body = PhoneNumber), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 409, description = "The number is taken, or the Idempotency-Key was used with another request", body = crate::error::ErrorBody), (status = 502, description = "The carrier failed or refused; nothing was bought", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn purchase_number(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: JsonBody<Value>,
) -> ApiResult<Response> {
    let request: PurchaseRequest = serde_json::from_value(body.value.clone()).map_err(|error| {
        ApiError::bad_request(
            "parameter_invalid",
            format!("Invalid purchase request: {error}."),
        )
    })?;
    let e164 = request.phone_number.trim();
    if !is_e164(e164) {
        return Err(ApiError::invalid(
            "phone_number",
            "phone_number must be in E.164 format, like +14155550123.",
        ));
    }
    let mut write = match WriteTx::start(
        &state.db,
        auth.org_id,
        &headers,
        "POST",
        "/v1/numbers/purchase",
        &body.value,
    )
    .await?
    {
        Started::Replay(response) => return Ok(response),
        Started::Run(write) => write,
    };
    // Checked before the carrier is paid; the unique index below still
    // decides a race between two orgs.
    if let Some(holder) = active_holder(&mut write.tx, e164).await? {
        let message = if holder == auth.org_id {
            format!("{e164} is already one of your numbers.")
        } else {
            format!("{e164} is no longer available; pick another from GET /v1/numbers/available.")
        };
        return Err(ApiError::Conflict {
            code: "number_unavailable",
            message,
        });
    }
    // The transaction (and with it the Idempotency-Key) stays open while the
    // carrier sells, so that a concurrent retry with the same key waits for
    // this outcome instead of buying a second time.
    let purchase = state.numbers.buy(e164, auth.org_id).await?;
    let new = NewNumber {
        e164,
        country_code: &purchase.number.country_code,
        number_type: &purchase.number.number_type,
        monthly_cost_cents: purchase.number.monthly_cost_cents,
        carrier: Some(state.numbers.carrier()),
        carrier_sid: purchase.carrier_sid.as_deref(),
    };
    let recorded = match ringer::orgs::add_purchased_number(&mut write.tx, auth.org_id, &new).await
    {
        Ok(number) => write.commit(StatusCode::CREATED, &number).await,
        Err(error) if ringer::db::is_constraint_violation(&error, "phone_numbers_active_e164") => {
            Err(ApiError::Conflict {
                code: "number_unavailable",
                message: format!(
                    "{e164} is no longer available; pick another from GET /v1/numbers/available."
                ),
            })
        }
        Err(error) => Err(error.into()),
    };
    if recorded.is_err()
        && let Some(sid) = &purchase.carrier_sid
    {
        give_back(&state, e164, sid).await;
    }
    recorded
}

/// The org holding `e164` as an active number, if any.
async fn active_holder(conn: &mut PgConnection, e164: &str) -> sqlx::Result<Option<Uuid>> {
    let row: Option<(Uuid,)> =
        sqlx::query_as("SELECT org_id FROM phone_numbers WHERE e164 = $1 AND status = 'active'")
            .bind(e164)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(org_id,)| org_id))
}

/// Releases a number the carrier sold us but ringer could not record.
async fn give_back(state: &AppState, e164: &str, sid: &str) {
    match state.numbers.release(sid).await {
        Ok(()) => tracing::warn!(
            e164,
            sid,
            "released a bought number that could not be recorded"
        ),
        Err(error) => tracing::error!(
            e164,
            sid,
            carrier = state.numbers.carrier(),
            %error,
            "a bought number could not be recorded nor released: release it at the carrier by hand"
        ),
    }
}

#[derive(sqlx::FromRow)]
struct NumberRow {
    #[sqlx(flatten)]
    number: PhoneNumber,
}

#[utoipa::path(
    get, path = "/v1/numbers", tag = "numbers",
    params(PageParams),
    responses((status = 200, body = Page<PhoneNumber>), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_numbers(
    State(state): State<AppState>,
    auth: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<PhoneNumber>>> {
    let limit = page.limit(100)?;
    let cursor = page.cursor()?;
    let mut conn = state.db.acquire().await?;
    let position = crate::pagination::cursor_position(
        &mut conn,
        cursor,
        "SELECT purchased_at FROM phone_numbers WHERE id = $1 AND org_id = $2",
        auth.org_id,
        |param, _| format!("{param} must be the id of one of your numbers."),
    )
    .await?;
    let backwards = matches!(cursor, Some((Direction::EndingBefore, _, _)));
    let sql = if backwards {
        "SELECT id, e164, friendly_name, country_code, number_type, status, monthly_cost_cents, purchased_at \
         FROM phone_numbers WHERE org_id = $1 AND ($2::timestamptz IS NULL OR (purchased_at, id) > ($2, $3)) \
         ORDER BY purchased_at ASC, id ASC LIMIT $4"
    } else {
        "SELECT id, e164, friendly_name, country_code, number_type, status, monthly_cost_cents, purchased_at \
         FROM phone_numbers WHERE org_id = $1 AND ($2::timestamptz IS NULL OR (purchased_at, id) < ($2, $3)) \
         ORDER BY purchased_at DESC, id DESC LIMIT $4"
    };
    let rows: Vec<NumberRow> = sqlx::query_as(sql)
        .bind(auth.org_id)
        .bind(position.map(|(at, _)| at))
        .bind(position.map(|(_, id)| id))
        .bind(limit + 1)
        .fetch_all(&mut *conn)
        .await?;
    Ok(Json(Page::from_rows(
        rows.into_iter().map(|r| r.number).collect(),
        limit,
        backwards,
    )))
}

#[utoipa::path(
    delete, path = "/v1/numbers/{id}", tag = "numbers",
    params(("id" = String, Path, description = "Phone number id")),
    responses((status = 200, body = PhoneNumber), (status = 404, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 409, description = "Bought from another carrier than the configured one", body = crate::error::ErrorBody), (status = 502, description = "The carrier failed or refused; the number stays active", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn release_number(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<PhoneNumber>> {
    let number_id = parse_id("phone number", &id)?;
    let held: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT status, carrier, carrier_sid FROM phone_numbers WHERE id = $1 AND org_id = $2",
    )
    .bind(number_id)
    .bind(auth.org_id)
    .fetch_optional(&state.db)
    .await?;
    let (status, carrier, carrier_sid) =
        held.ok_or_else(|| ApiError::not_found("phone number", &id))?;
    if status == "active"
        && let (Some(carrier), Some(sid)) = (carrier, carrier_sid)
    {
        if carrier != state.numbers.carrier() {
            return Err(ApiError::Conflict {
                code: "number_carrier_mismatch",
                message: format!(
                    "This number was bought from the {carrier} carrier, but ringer now uses {}; it can be released only with {carrier} configured.",
                    state.numbers.carrier()
                ),
            });
        }
        // No connection is held while the carrier answers.
        state.numbers.release(&sid).await?;
    }
    let number: Option<PhoneNumber> = sqlx::query_as(
        "UPDATE phone_numbers SET status = 'released', released_at = COALESCE(released_at, now()) \
         WHERE id = $1 AND org_id = $2 \
         RETURNING id, e164, friendly_name, country_code, number_type, status, monthly_cost_cents, purchased_at",
    )
    .bind(number_id)
    .bind(auth.org_id)
    .fetch_optional(&state.db)
    .await?;
    number
        .map(Json)
        .ok_or_else(|| ApiError::not_found("phone number", id))
}
