//! The API's one error type and its JSON shape:
//! `{"error": {"type", "code", "message", "param"?}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or a field is invalid.
    #[error("{message}")]
    InvalidRequest {
        code: &'static str,
        message: String,
        param: Option<String>,
    },
    /// 401: no key, an unknown key or a revoked one.
    #[error("{0}")]
    Unauthorized(String),
    /// 402: the balance does not cover the call's hold.
    #[error("{0}")]
    InsufficientFunds(String),
    /// 404: no such resource in the caller's org.
    #[error("No such {resource}: '{id}'")]
    NotFound { resource: &'static str, id: String },
    /// 409: idempotency conflict, or an action the resource's state forbids.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 413: the body exceeds the limit.
    #[error("The request body is larger than the {limit} bytes allowed.")]
    PayloadTooLarge { limit: usize },
    /// 429: too many requests.
    #[error("Too many requests; retry after {retry_after_seconds} seconds.")]
    RateLimited { retry_after_seconds: u64 },
    /// 405: the path exists but not with this method.
    #[error("{method} is not allowed on this path; see /v1/openapi.json.")]
    MethodNotAllowed { method: String },
    /// 503: the service is overloaded (database pool exhausted); retry shortly.
    #[error("The service is busy; retry after {retry_after_seconds} seconds.")]
    Unavailable { retry_after_seconds: u64 },
    /// 502: the carrier failed or refused; `code` says how.
    #[error("{message}")]
    Carrier { code: &'static str, message: String },
    /// 500: our fault; the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            code: "parameter_invalid",
            message: message.into(),
            param: Some(param.into()),
        }
    }

    pub fn missing(param: &str) -> Self {
        ApiError::InvalidRequest {
            code: "parameter_missing",
            message: format!("Missing required parameter: {param}."),
            param: Some(param.to_owned()),
        }
    }

    pub fn unknown_parameter(param: &str) -> Self {
        ApiError::InvalidRequest {
            code: "parameter_unknown",
            message: format!("Received unknown parameter: {param}."),
            param: Some(param.to_owned()),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            code,
            message: message.into(),
            param: None,
        }
    }

    pub fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        ApiError::NotFound {
            resource,
            id: id.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str, Option<&str>) {
        match self {
            ApiError::InvalidRequest { code, param, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                code,
                param.as_deref(),
            ),
            ApiError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                None,
            ),
            ApiError::InsufficientFunds(_) => (
                StatusCode::PAYMENT_REQUIRED,
                "billing_error",
                "insufficient_funds",
                None,
            ),
            ApiError::NotFound { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "resource_missing",
                None,
            ),
            ApiError::Conflict { code, .. } => {
                (StatusCode::CONFLICT, "invalid_request_error", code, None)
            }
            ApiError::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body_too_large",
                None,
            ),
            ApiError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
                None,
            ),
            ApiError::Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "service_unavailable",
                None,
            ),
            ApiError::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limited",
                None,
            ),
            ApiError::Carrier { code, .. } => {
                (StatusCode::BAD_GATEWAY, "carrier_error", code, None)
            }
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "internal_error",
                None,
            ),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        // Every connection busy, or the database restarting: the client did
        // nothing wrong and may retry; nothing was changed.
        if database_unavailable(&error) {
            return ApiError::Unavailable {
                retry_after_seconds: 1,
            };
        }
        ApiError::Internal(error.into())
    }
}

/// Errors that mean "the database cannot be reached just now": pool
/// exhausted, connection lost, or Postgres shutting down or starting up
/// (SQLSTATE class 08, connection exception, and 57P01–57P03).
fn database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
    /// A sentence a person can act on.
    pub message: String,
    /// The field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let (status, kind, code, param) = self.parts();
        let body = ErrorBody {
            error: ErrorDetail {
                kind: kind.to_owned(),
                code: code.to_owned(),
                message: match &self {
                    ApiError::Internal(_) => {
                        "Something went wrong on our side; please retry.".to_owned()
                    }
                    other => other.to_string(),
                },
                param: param.map(str::to_owned),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::RateLimited {
            retry_after_seconds,
        }
        | ApiError::Unavailable {
            retry_after_seconds,
        } = self
            && let Ok(value) = HeaderValue::from_str(&retry_after_seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
