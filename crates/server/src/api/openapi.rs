//! The API's OpenAPI 3.1 document (generated from the handlers' annotations, served at
//! `/api/openapi.json`) and the reference page that renders it (`/api/docs`): plain HTML and
//! JavaScript built into the binary, under the same strict content security policy as the page.

use crate::web::asset;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::BTreeSet;
use std::sync::OnceLock;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, ResponseBuilder, Schema,
};
use utoipa::OpenApi as _;

/// What the document says besides the routes (which [`openapi`] takes from the routers).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "imgclass",
        description = "Asynchronous image classification. Upload images; each becomes a job in a \
durable queue; workers classify it and the result (the top labels with their probabilities) \
appears on the job.\n\nEvery error is `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`: \
branch on `code`, which never changes; `message` is for people.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    // The document is served by the server it describes: paths are relative to its origin.
    servers((url = "/", description = "The server that serves this document.")),
    // The `data` of each server-sent event (the stream's schema frames it as text and names
    // this schema as its `contentSchema`).
    components(schemas(super::views::EventView)),
    tags(
        (name = "jobs", description = "Submitting images and following their jobs."),
        (name = "events", description = "Job changes as they happen."),
        (name = "service", description = "Health, figures and this description."),
    )
)]
struct ApiDoc;

/// The OpenAPI document of the API, as served at `/api/openapi.json`: the descriptions the
/// routers registered with their handlers, and what the access layer adds to the guarded ones.
pub fn openapi() -> OpenApi {
    let guarded = super::guarded_router().into_openapi();
    let guarded_paths = guarded.paths.paths.keys().cloned().collect();
    let mut doc = ApiDoc::openapi();
    doc.merge(guarded);
    doc.merge(super::public_router().into_openapi());
    doc.merge(crate::ops::openapi());
    add_access_responses(&mut doc, &guarded_paths);
    mark_public(&mut doc, &guarded_paths);
    describe_event_data(&mut doc);
    add_webhooks(&mut doc);
    doc
}

/// The operations of a path (the methods the API uses).
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.patch,
        &mut item.delete,
    ]
    .into_iter()
    .flatten()
}

/// The operations of every path that the access layer does not guard: `security: []`, open to
/// anyone even on a server with API tokens.
fn mark_public(doc: &mut OpenApi, guarded: &BTreeSet<String>) {
    for (path, item) in doc.paths.paths.iter_mut() {
        if guarded.contains(path) {
            continue;
        }
        for op in operations(item) {
            op.security = Some(Vec::new());
        }
    }
}

/// The `data` of a server-sent event is an `EventView` as JSON text: its `contentSchema`.
fn describe_event_data(doc: &mut OpenApi) {
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let Some(RefOr::T(Schema::Object(event))) = components.schemas.get_mut("StreamEvent") else {
        return;
    };
    if let Some(RefOr::T(Schema::Object(data))) = event.properties.get_mut("data") {
        data.content_schema = Some(Box::new(RefOr::Ref(Ref::from_schema_name("EventView"))));
    }
}

/// The webhook calls (OpenAPI 3.1's `webhooks`): what the server sends to a job's webhook URL,
/// and how it reads the receiver's answer. Their schemas join the document's.
fn add_webhooks(doc: &mut OpenApi) {
    let mut hooks = super::webhook_doc::WebhookDoc::openapi();
    doc.webhooks = Some(std::mem::take(&mut hooks.paths));
    if let (Some(theirs), Some(ours)) = (hooks.components, doc.components.as_mut()) {
        for (name, schema) in theirs.schemas {
            ours.schemas.entry(name).or_insert(schema);
        }
    }
}

/// A response header: its name and what it says.
type HeaderDoc = (&'static str, &'static str);

/// What the access layer (`auth::require`, which runs before the handler of every guarded route)
/// can answer: status, code, description, and the header that goes with it.
const ACCESS_ERRORS: [(&str, &str, &str, Option<HeaderDoc>); 5] = [
    (
        "401",
        "unauthorized",
        "`unauthorized`: this server has API tokens and the request has none, or one that is \
         unknown, expired or revoked.",
        Some(("WWW-Authenticate", "`Bearer realm=\"imgclass\"`")),
    ),
    (
        "403",
        "forbidden",
        "`forbidden`: the token lacks the scope this route needs.",
        None,
    ),
    (
        "429",
        "rate_limited",
        "`rate_limited`: the caller's request quota is used up; try again after `Retry-After` \
         seconds.",
        Some((
            "Retry-After",
            "Seconds until the quota allows a request again.",
        )),
    ),
    (
        "503",
        "unavailable",
        "`unavailable`: the database cannot be reached; try again.",
        None,
    ),
    (
        "507",
        "insufficient_storage",
        "`insufficient_storage`: the database's disk is full.",
        None,
    ),
];

/// Adds to every operation of `guarded` paths what the access layer may answer, and the optional
/// bearer token: a server without tokens is open, one with tokens needs one.
fn add_access_responses(doc: &mut OpenApi, guarded: &BTreeSet<String>) {
    for (path, item) in doc.paths.paths.iter_mut() {
        if !guarded.contains(path) {
            continue;
        }
        for op in operations(item) {
            op.security = Some(vec![
                SecurityRequirement::default(),
                SecurityRequirement::new("bearer", Vec::<String>::new()),
            ]);
            for (status, code, text, header) in ACCESS_ERRORS {
                match op.responses.responses.get_mut(status) {
                    Some(RefOr::T(r)) => {
                        if !r.description.contains(&format!("`{code}`")) {
                            r.description.push(' ');
                            r.description.push_str(text);
                        }
                    }
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        let mut r = ResponseBuilder::new().description(text).content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        );
                        if let Some((name, about)) = header {
                            r = r.header(
                                name,
                                HeaderBuilder::new().description(Some(about)).build(),
                            );
                        }
                        op.responses
                            .responses
                            .insert(status.to_string(), RefOr::T(r.build()));
                    }
                }
            }
        }
    }
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`imgclass token create`). Needed once the server has \
                         any token; before that the API is open.",
                    ))
                    .build(),
            ),
        );
}

const DOCS_HTML: &str = include_str!("../../assets/docs.html");
const DOCS_JS: &str = include_str!("../../assets/docs.js");
const DOCS_CSS: &str = include_str!("../../assets/docs.css");

/// The document as JSON, built once.
fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/api/openapi.json", tag = "service", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document.", body = serde_json::Value)))]
pub(super) async fn document() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        document_json(),
    )
        .into_response()
}

/// The API reference: a page that renders `/api/openapi.json`.
#[utoipa::path(get, path = "/api/docs", tag = "service", operation_id = "docs",
    responses((status = 200, description = "The reference page (HTML).", content_type = "text/html", body = String)))]
pub(super) async fn docs_page() -> Response {
    asset("text/html; charset=utf-8", DOCS_HTML)
}

/// The reference page's script and style sheet.
pub(super) fn asset_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/api/docs/docs.js",
            get(|| async { asset("text/javascript; charset=utf-8", DOCS_JS) }),
        )
        .route(
            "/api/docs/docs.css",
            get(|| async { asset("text/css; charset=utf-8", DOCS_CSS) }),
        )
}
