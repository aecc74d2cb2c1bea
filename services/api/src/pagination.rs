//! Cursor pagination: `limit`, `starting_after`, `ending_before` → `{data, has_more}`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

pub const DEFAULT_LIMIT: i64 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    StartingAfter,
    EndingBefore,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Page size (default 20).
    #[param(minimum = 1)]
    pub limit: Option<String>,
    /// Return the items after this id (older ones, in newest-first order).
    pub starting_after: Option<String>,
    /// Return the items before this id (newer ones).
    pub ending_before: Option<String>,
}

impl PageParams {
    /// The page size, from 1 to `max`.
    pub fn limit(&self, max: i64) -> ApiResult<i64> {
        match &self.limit {
            None => Ok(DEFAULT_LIMIT.min(max)),
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|limit| (1..=max).contains(limit))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "limit",
                        format!("limit must be an integer from 1 to {max}; got {raw:?}."),
                    )
                }),
        }
    }

    /// The cursor as sent, for lists whose ids are not UUIDs.
    pub fn raw_cursor(&self) -> Option<(Direction, &'static str, &str)> {
        match (&self.starting_after, &self.ending_before) {
            (Some(raw), _) => Some((Direction::StartingAfter, "starting_after", raw)),
            (None, Some(raw)) => Some((Direction::EndingBefore, "ending_before", raw)),
            (None, None) => None,
        }
    }

    /// The cursor, its direction and the parameter it came from.
    pub fn cursor(&self) -> ApiResult<Option<(Direction, Uuid, &'static str)>> {
        let parse = |param: &'static str, raw: &str| {
            Uuid::parse_str(raw).map_err(|_| {
                ApiError::invalid(
                    param,
                    format!("{param} must be an id from a previous page; got {raw:?}."),
                )
            })
        };
        match (&self.starting_after, &self.ending_before) {
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "parameter_invalid",
                "Pass starting_after or ending_before, not both.",
            )),
            (Some(raw), None) => Ok(Some((
                Direction::StartingAfter,
                parse("starting_after", raw)?,
                "starting_after",
            ))),
            (None, Some(raw)) => Ok(Some((
                Direction::EndingBefore,
                parse("ending_before", raw)?,
                "ending_before",
            ))),
            (None, None) => Ok(None),
        }
    }
}

/// Where `cursor` points in a list sorted by time then id: the time of the
/// row it names, read by `anchor_sql` (the id bound as `$1`, the org as `$2`).
/// A cursor naming none of the org's rows is a 400 carrying `not_found`'s
/// message (given the parameter and the id).
pub async fn cursor_position(
    conn: &mut PgConnection,
    cursor: Option<(Direction, Uuid, &'static str)>,
    anchor_sql: &'static str,
    org_id: Uuid,
    not_found: impl FnOnce(&'static str, Uuid) -> String,
) -> ApiResult<Option<(DateTime<Utc>, Uuid)>> {
    let Some((_, id, param)) = cursor else {
        return Ok(None);
    };
    let row: Option<(DateTime<Utc>,)> = sqlx::query_as(anchor_sql)
        .bind(id)
        .bind(org_id)
        .fetch_optional(conn)
        .await?;
    let (at,) = row.ok_or_else(|| ApiError::invalid(param, not_found(param, id)))?;
    Ok(Some((at, id)))
}

/// A page of a list, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// True when more items lie beyond this page in the direction walked.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows. Rows fetched walking
    /// backwards (ascending) are flipped to newest first.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, backwards: bool) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        if backwards {
            rows.reverse();
        }
        Page {
            data: rows,
            has_more,
        }
    }
}
