//! Error policy.
//!
//! Library code returns `anyhow::Error` with short lowercase context, or a
//! `thiserror` enum where a caller branches on the cause. At the HTTP boundary every
//! failure becomes an [`ApiError`]: the person gets a status and a fixed public
//! message, never internal text; the full chain is logged once, here.
//!
//! A handler's error is a JSON body. [`html_error_pages`] rewrites every error
//! response outside the JSON API into the portal's error page when the request accepts
//! HTML, as a browser that opens the address does, so that no route shows a
//! browser raw JSON.

use axum::Json;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Largest error body read back when rendering it as a page.
const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    public: &'static str,
    internal: Option<anyhow::Error>,
}

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
}

#[derive(Deserialize)]
struct ReadErrorBody {
    error: String,
}

impl ApiError {
    /// An expected refusal whose message is safe to show.
    pub fn new(status: StatusCode, public: &'static str) -> ApiError {
        ApiError {
            status,
            public,
            internal: None,
        }
    }

    /// An unexpected failure: logged in full, shown as a generic message.
    pub fn internal(error: anyhow::Error) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            public: "internal error; the details are in the broker's log",
            internal: Some(error),
        }
    }
}

impl ApiError {
    /// Logs an internal failure's chain once; expected refusals are not logged.
    fn log(&self) {
        if let Some(error) = &self.internal {
            tracing::error!(
                error = format!("{error:#}"),
                status = self.status.as_u16(),
                "Request failed"
            );
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> ApiError {
        ApiError::internal(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        (self.status, Json(ErrorBody { error: self.public })).into_response()
    }
}

/// Rewrites an error response into the portal's error page when the request accepts
/// HTML and the response is not a page already. The JSON API under `/api/` keeps its
/// problem documents, and clients that do not accept HTML keep the JSON body.
pub async fn html_error_pages(request: Request, next: Next) -> Response {
    let html =
        crate::auth::wants_html(request.headers()) && !request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    let status = response.status();
    if !html || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_page = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/html"));
    if is_page {
        return response;
    }

    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    // Only an `ApiError`'s public message is shown; other bodies, such as axum's
    // rejection texts, are replaced by the status's reason phrase.
    let text = match serde_json::from_slice::<ReadErrorBody>(&bytes) {
        Ok(body) => body.error,
        Err(_) => status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_lowercase(),
    };
    let mut page = error_page(status, &text);
    // Keep headers such as `Allow` (405) and `Retry-After`, but not the old body's
    // type and length.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE
            && name != header::CONTENT_LENGTH
            && !page.headers().contains_key(name)
        {
            page.headers_mut().insert(name.clone(), value.clone());
        }
    }
    page
}

/// Renders the portal's error page: the status's reason phrase as heading, `text` as a
/// sentence, and a link back to the portal.
fn error_page(status: StatusCode, text: &str) -> Response {
    let mut text = text.to_owned();
    if let Some(first) = text.get(..1) {
        text.replace_range(..1, &first.to_uppercase());
    }
    if !text.ends_with('.') {
        text.push('.');
    }
    let body = format!(
        "<p id=\"error\" role=\"alert\">{}</p><p><a href=\"/\">Back to the portal</a></p>",
        crate::auth::pages::escape(&text)
    );
    let title = status.canonical_reason().unwrap_or("Request failed");
    crate::auth::pages::page(status, title, &body, "")
}
