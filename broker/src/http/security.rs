//! Security headers on every response and the request body limit, applied to the
//! whole router in one place so that no route can miss them.
//!
//! A header the handler already set wins: the viewer page, for example, sets a CSP
//! that allows its own script. Every other response gets the strictest values.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::limit::RequestBodyLimitLayer;

/// Largest request body accepted, in bytes. Forms and JSON requests of the portal are
/// a few hundred bytes; a larger body gets 413.
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024;

/// Allows nothing to load, no framing, and forms only to the portal.
pub const DEFAULT_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// One year, as HTTPS-only sites commonly set it; sent only over HTTPS.
const HSTS: &str = "max-age=31536000; includeSubDomains";

/// Adds the body limit and the security headers to every route of `router`. `https`
/// adds `Strict-Transport-Security`.
pub fn secure<S: Clone + Send + Sync + 'static>(router: Router<S>, https: bool) -> Router<S> {
    router
        .layer(middleware::from_fn_with_state(https, add_headers))
        .layer(RequestBodyLimitLayer::new(MAX_REQUEST_BODY_BYTES))
}

async fn add_headers(State(https): State<bool>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    set_default(headers, header::CONTENT_SECURITY_POLICY, DEFAULT_CSP);
    set_default(headers, header::X_FRAME_OPTIONS, "DENY");
    set_default(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Same-origin requests keep their Referer, which the CSRF check falls back to.
    set_default(headers, header::REFERRER_POLICY, "same-origin");
    // Responses carry personal data or session state; a route that may be cached
    // (a static script) sets its own Cache-Control.
    set_default(headers, header::CACHE_CONTROL, "no-store");
    if https {
        set_default(headers, header::STRICT_TRANSPORT_SECURITY, HSTS);
    }
    response
}

fn set_default(headers: &mut HeaderMap, name: HeaderName, value: &'static str) {
    if !headers.contains_key(&name) {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use axum::routing::{get, post};
    use tower::ServiceExt;

    use super::*;

    fn app(https: bool) -> Router {
        let router = Router::new()
            .route("/", get(|| async { "page" }))
            .route(
                "/own-csp",
                get(|| async {
                    (
                        [(header::CONTENT_SECURITY_POLICY, "script-src 'self'")],
                        "x",
                    )
                }),
            )
            .route(
                "/echo",
                post(|body: String| async move { body.len().to_string() }),
            );
        secure(router, https)
    }

    #[tokio::test]
    async fn headers_are_added_unless_set() {
        let response = app(true)
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let headers = response.headers();

        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], DEFAULT_CSP);
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::REFERRER_POLICY], "same-origin");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::STRICT_TRANSPORT_SECURITY], HSTS);

        let own = app(false)
            .oneshot(Request::get("/own-csp").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            own.headers()[header::CONTENT_SECURITY_POLICY],
            "script-src 'self'"
        );
        assert!(
            own.headers()
                .get(header::STRICT_TRANSPORT_SECURITY)
                .is_none()
        );
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_rejected() {
        let within = app(false)
            .oneshot(
                Request::post("/echo")
                    .body(Body::from(vec![b'a'; MAX_REQUEST_BODY_BYTES]))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(within.status(), StatusCode::OK);

        let over = app(false)
            .oneshot(
                Request::post("/echo")
                    .body(Body::from(vec![b'a'; MAX_REQUEST_BODY_BYTES + 1]))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
