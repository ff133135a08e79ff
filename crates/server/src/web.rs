//! The web page served at `/`: plain HTML, CSS and JavaScript built into the binary, served with
//! a strict content security policy (no inline scripts or styles, nothing from other origins).

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// The page's content security policy: everything from this origin only, images also from
/// object URLs (local thumbnails of files being uploaded) and data URLs (the favicon).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; \
     script-src 'self'; style-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The page's routes: `/`, `/app.js` and `/style.css`.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
}

pub(crate) fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 7] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, body).into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        routes()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header_of<'a>(resp: &'a Response, name: &str) -> &'a str {
        resp.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    async fn body_text(resp: Response) -> String {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_page_is_html_with_a_strict_policy() {
        let resp = get("/").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(header_of(&resp, "content-type").starts_with("text/html"));
        let csp = header_of(&resp, "content-security-policy");
        assert_eq!(csp, CONTENT_SECURITY_POLICY);
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{directive} missing from {csp}");
        }
        assert!(!csp.contains("unsafe"));
        assert_eq!(header_of(&resp, "x-content-type-options"), "nosniff");
        assert_eq!(header_of(&resp, "referrer-policy"), "no-referrer");
        assert_eq!(header_of(&resp, "x-frame-options"), "DENY");
        assert_eq!(header_of(&resp, "cache-control"), "no-cache");
        let html = body_text(resp).await;
        assert!(html.contains("<script src=\"/app.js\""));
        // The policy forbids inline scripts and styles: the page has none.
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<style"));
        assert!(!html.contains("style=\""));
    }

    #[tokio::test]
    async fn the_script_and_the_style_sheet_have_their_types() {
        let resp = get("/app.js").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(header_of(&resp, "content-type").starts_with("text/javascript"));
        assert_eq!(header_of(&resp, "x-content-type-options"), "nosniff");
        let js = body_text(resp).await;
        assert!(js.contains("EventSource"));
        assert!(
            !js.contains("innerHTML"),
            "the page builds its DOM without innerHTML"
        );

        let resp = get("/style.css").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(header_of(&resp, "content-type").starts_with("text/css"));
    }

    #[tokio::test]
    async fn other_paths_are_not_the_page() {
        let resp = get("/nope.js").await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
