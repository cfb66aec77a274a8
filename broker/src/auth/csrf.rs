//! Cross-site request forgery defence: a state-changing request must carry an
//! `Origin` header (or, when a browser omits it, a `Referer`) naming the portal's own
//! origin exactly. The portal cookie is also `SameSite=Lax`, so browsers leave it off
//! cross-site subrequests and POSTs.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AuthService;

/// Whether the request's `Origin` (or `Referer`) is one of `origins`.
pub fn origin_allowed(headers: &HeaderMap, origins: &[String]) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin
            .to_str()
            .is_ok_and(|origin| origins.iter().any(|allowed| allowed == origin));
    }
    let Some(referer) = headers
        .get(header::REFERER)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    match url::Url::parse(referer) {
        Ok(url) => {
            let origin = url.origin().ascii_serialization();
            origins.contains(&origin)
        }
        Err(_) => false,
    }
}

pub(crate) fn is_safe_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Middleware rejecting state-changing requests from another origin with 403. Layer it
/// on routers whose handlers change state without the [`super::CurrentUser`] family of
/// extractors, which check the origin themselves.
pub async fn require_same_origin(
    State(auth): State<AuthService>,
    request: Request,
    next: Next,
) -> Response {
    if !is_safe_method(request.method()) && !origin_allowed(request.headers(), &auth.0.origins) {
        return super::extract::AuthRejection::CrossOrigin.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_the_exact_origin_passes() {
        let origins = vec!["https://sr.bank.example".to_owned()];

        assert!(origin_allowed(
            &headers(&[("origin", "https://sr.bank.example")]),
            &origins
        ));
        assert!(!origin_allowed(
            &headers(&[("origin", "https://sr.bank.example.evil")]),
            &origins
        ));
        assert!(!origin_allowed(
            &headers(&[("origin", "http://sr.bank.example")]),
            &origins
        ));
        assert!(!origin_allowed(&headers(&[("origin", "null")]), &origins));
        assert!(!origin_allowed(&headers(&[]), &origins));
    }

    #[test]
    fn referer_is_used_only_without_origin() {
        let origins = vec!["https://sr.bank.example".to_owned()];

        assert!(origin_allowed(
            &headers(&[("referer", "https://sr.bank.example/auth/login")]),
            &origins
        ));
        assert!(!origin_allowed(
            &headers(&[("referer", "https://evil.example/https://sr.bank.example")]),
            &origins
        ));
        assert!(!origin_allowed(
            &headers(&[
                ("origin", "https://evil.example"),
                ("referer", "https://sr.bank.example/")
            ]),
            &origins
        ));
    }
}
