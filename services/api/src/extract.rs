//! Request extractors that answer every malformed request with the JSON error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// The authenticated caller: the org its API key belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Auth {
    pub org_id: Uuid,
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::Unauthorized(
                "No API key provided. Send `Authorization: Bearer sk_…`.".to_owned(),
            )
        })?;
        let key = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|key| key.starts_with("sk_"))
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "Malformed Authorization header. Send `Authorization: Bearer sk_…`.".to_owned(),
                )
            })?;
        let mut conn = state.db.acquire().await?;
        let org_id = ringer::orgs::org_for_api_key(&mut conn, key)
            .await?
            .ok_or_else(|| {
                ApiError::Unauthorized("Invalid API key provided (unknown or revoked).".to_owned())
            })?;
        state.rate_limiter.check(org_id)?;
        Ok(Auth { org_id })
    }
}

/// A JSON body: `application/json`, valid UTF-8, within the size limit, parsed into `T`.
/// Keeps the raw bytes for idempotency fingerprints.
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !media_type.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::bad_request(
                "invalid_content_type",
                format!(
                    "Expected `Content-Type: application/json`, got {}.",
                    if content_type.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("`{content_type}`")
                    }
                ),
            ));
        }
        let limit = state.config.max_body_bytes;
        let raw = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::bad_request(
                        "body_unreadable",
                        format!("Could not read the request body: {rejection}."),
                    )
                }
            })?;
        if std::str::from_utf8(&raw).is_err() {
            return Err(ApiError::bad_request(
                "invalid_utf8",
                "The request body is not valid UTF-8.",
            ));
        }
        let value = serde_json::from_slice(&raw).map_err(|error| {
            ApiError::bad_request(
                "invalid_json",
                format!("The request body is not valid JSON for this endpoint: {error}."),
            )
        })?;
        Ok(JsonBody { value, raw })
    }
}

/// Query parameters; a malformed query is a 400 naming the problem.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded_from_str(query).map(Query)
    }
}

fn serde_urlencoded_from_str<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{query}").parse().map_err(|_| {
            ApiError::bad_request("invalid_query", "The query string is malformed.")
        })?,
    )
    .map(|axum::extract::Query(value)| value)
    .map_err(|rejection| {
        ApiError::bad_request(
            "invalid_query",
            format!("Invalid query parameters: {}.", rejection.body_text()),
        )
    })
}

/// A path id that must be a UUID; anything else is a 404 for `resource`.
pub fn parse_id(resource: &'static str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(resource, raw))
}
