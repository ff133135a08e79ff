//! The HTTP API: the routers that put the handlers together, each route registered with its
//! OpenAPI description, and the access layer on the routes it guards.

mod events;
mod extract;
mod idempotency;
mod jobs;
mod models;
mod openapi;
mod params;
mod search;
mod service;
mod submit;
mod submit_fields;
pub mod upload;
pub mod views;
mod wait;
mod webhook_doc;

pub use openapi::openapi;

use crate::auth::{self, Access};
use crate::AppState;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The API's routes that the access rules guard, each registered together with its OpenAPI
/// description (so the document cannot leave a route out).
fn guarded_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit::create_jobs, jobs::list_jobs))
        .routes(routes!(jobs::retry_failed))
        .routes(routes!(search::export_jobs))
        .routes(routes!(search::cancel_queued))
        .routes(routes!(search::delete_finished))
        .routes(routes!(service::stats))
        .routes(routes!(models::list_models))
        .routes(routes!(models::reload_models))
        .routes(routes!(jobs::get_job, jobs::delete_job))
        .routes(routes!(jobs::job_image))
        .routes(routes!(jobs::retry_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::job_deliveries))
        .routes(routes!(events::stream))
}

/// Routes open to anyone: liveness and the API's description.
fn public_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(service::healthz))
        .routes(routes!(openapi::document))
        .routes(routes!(openapi::docs_page))
}

pub fn routes(state: AppState, access: Access) -> Router {
    let body_limit = state.upload.request_limit();
    let (guarded, _) = guarded_router().split_for_parts();
    let (public, _) = public_router().split_for_parts();
    guarded
        .route_layer(axum::middleware::from_fn_with_state(access, auth::require))
        .merge(public)
        .merge(openapi::asset_routes())
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
