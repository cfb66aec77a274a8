//! Error policy.
//!
//! Library code returns `anyhow::Error` with short lowercase context, or a
//! `thiserror` enum where a caller branches on the cause. At the HTTP boundary every
//! failure becomes an [`ApiError`]: the person gets a status and a fixed public
//! message, never internal text; the full chain is logged once, here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

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
    /// Renders the error for a page request: the portal's error page when the request
    /// asks for HTML, as a browser does, and the JSON error body otherwise.
    pub fn into_page_response(self, headers: &axum::http::HeaderMap) -> Response {
        if !crate::auth::wants_html(headers) {
            return self.into_response();
        }
        self.log();
        let mut text = self.public.to_owned();
        if let Some(first) = text.get(..1) {
            text.replace_range(..1, &first.to_uppercase());
        }
        let body = format!(
            "<p id=\"error\" role=\"alert\">{}.</p><p><a href=\"/\">Back to the portal</a></p>",
            crate::auth::pages::escape(&text)
        );
        let title = self.status.canonical_reason().unwrap_or("Request failed");
        crate::auth::pages::page(self.status, title, &body, "")
    }

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
