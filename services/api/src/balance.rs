//! `GET /v1/balance` and `GET /v1/ledger`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Query};
use crate::pagination::{Direction, Page, PageParams};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/balance", get(get_balance))
        .route("/v1/ledger", get(list_ledger))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BalanceBody {
    /// Spendable now, in milli-cents (1/1000 of a cent).
    pub available_milli_cents: i64,
    /// Held for calls in flight.
    pub reserved_milli_cents: i64,
    pub currency: String,
}

#[utoipa::path(
    get, path = "/v1/balance", tag = "billing",
    responses((status = 200, body = BalanceBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_balance(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<BalanceBody>> {
    let mut conn = state.db.acquire().await?;
    let balance = ringer::ledger::balance(&mut conn, auth.org_id).await?;
    Ok(Json(BalanceBody {
        available_milli_cents: balance.available_milli_cents,
        reserved_milli_cents: balance.reserved_milli_cents,
        currency: "usd".to_owned(),
    }))
}

/// One ledger entry: `amount_milli_cents` moved from one account to another.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LedgerEntry {
    /// Entry id (also the cursor).
    pub id: String,
    /// `credit`, `hold`, `hold_release` or `charge`.
    pub kind: String,
    pub from_account: String,
    pub to_account: String,
    pub amount_milli_cents: i64,
    pub call_id: Option<Uuid>,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

#[utoipa::path(
    get, path = "/v1/ledger", tag = "billing",
    params(PageParams),
    responses((status = 200, body = Page<LedgerEntry>), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_ledger(
    State(state): State<AppState>,
    auth: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<LedgerEntry>>> {
    let limit = page.limit(100)?;
    let (backwards, cursor) = match page.raw_cursor() {
        None => (false, None),
        Some((direction, param, raw)) => {
            let id = raw
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| {
                    ApiError::invalid(
                        param,
                        format!("{param} must be a ledger entry id; got {raw:?}."),
                    )
                })?;
            (direction == Direction::EndingBefore, Some(id))
        }
    };
    let sql = if backwards {
        "SELECT id::text AS id, kind, from_account, to_account, amount_milli_cents, call_id, description, created_at \
         FROM ledger_entries WHERE org_id = $1 AND ($2::bigint IS NULL OR id > $2) ORDER BY id ASC LIMIT $3"
    } else {
        "SELECT id::text AS id, kind, from_account, to_account, amount_milli_cents, call_id, description, created_at \
         FROM ledger_entries WHERE org_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    };
    let rows: Vec<LedgerEntry> = sqlx::query_as(sql)
        .bind(auth.org_id)
        .bind(cursor)
        .bind(limit + 1)
        .fetch_all(&state.db)
        .await?;
    Ok(Json(Page::from_rows(rows, limit, backwards)))
}
