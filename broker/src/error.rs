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

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> ApiError {
        ApiError::internal(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(error) = &self.internal {
            tracing::error!(
                error = format!("{error:#}"),
                status = self.status.as_u16(),
                "Request failed"
            );
        }
        (self.status, Json(ErrorBody { error: self.public })).into_response()
    }
}
