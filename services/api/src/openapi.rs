//! `GET /v1/openapi.json`: the OpenAPI 3.1 document, generated from the handlers.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "ringer API", version = "2026-04", description = "AI phone calls; wire-compatible with the CallingBox v1 API."),
    paths(
        crate::calls::create_call,
        crate::calls::list_calls,
        crate::calls::get_call,
        crate::calls::cancel_call,
        crate::calls::get_transcript,
        crate::numbers::list_numbers,
        crate::numbers::available_numbers,
        crate::numbers::purchase_number,
        crate::numbers::release_number,
        crate::balance::get_balance,
        crate::balance::list_ledger,
    ),
    components(schemas(crate::error::ErrorBody, ringer::call::Call)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sk_…")
                    .build(),
            ),
        );
    }
}

/// The whole document, with the webhook routes merged in.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::webhooks::WebhooksApi::openapi());
    doc
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
