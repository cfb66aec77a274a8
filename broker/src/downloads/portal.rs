//! The person's files in the portal: `GET /files` lists them, `GET /files/{id}`
//! downloads one.
//!
//! Every role sees only the files of their own sessions. A file of another person
//! returns 404, the same as a file that does not exist, so ids cannot be probed.
//! Auditors read the delivery's name, size and SHA-256 in the audit trail, not the
//! file. Each fetch is audited as `download.fetched`.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use uuid::Uuid;

use super::store::{self, DownloadRecord};
use crate::audit::{Action, Actor, EventBuilder};
use crate::auth::CurrentSession;
use crate::auth::pages::{escape, page};
use crate::error::ApiError;
use crate::http::{AppState, ClientAddr};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/files", get(list_page))
        .route("/files/{id}", get(fetch))
}

async fn list_page(
    State(state): State<AppState>,
    CurrentSession { principal, .. }: CurrentSession,
) -> Result<Response, ApiError> {
    let files = store::list_for_user(&state.db, &principal.user_id).await?;
    Ok(list_html(&files))
}

fn list_html(files: &[DownloadRecord]) -> Response {
    let mut body = String::from(
        "<p>Files downloaded in your banking sessions. Each download is recorded in the audit trail.</p>\n\
         <table id=\"files\"><tr><th>Name</th><th>Bank</th><th>Size (bytes)</th><th>Received (UTC)</th><th>Kept until</th><th>SHA-256</th></tr>\n",
    );
    for file in files {
        body.push_str(&format!(
            "<tr><td><a class=\"file-link\" data-file=\"{id}\" href=\"/files/{id}\">{name}</a></td><td>{site}</td><td>{size}</td><td>{created}</td><td>{expires}</td><td><code>{sha256}</code></td></tr>\n",
            id = file.id,
            name = escape(&file.name),
            site = escape(&file.site),
            size = file.size,
            created = file.created_at.format("%Y-%m-%d %H:%M:%S"),
            expires = file.expires_at.format("%Y-%m-%d"),
            sha256 = escape(&file.sha256),
        ));
    }
    body.push_str("</table>\n");
    if files.is_empty() {
        body.push_str("<p id=\"empty\">No files yet.</p>\n");
    }
    body.push_str("<p><a href=\"/\">Back to the portal</a></p>\n");
    page(StatusCode::OK, "Files", &body, "")
}

async fn fetch(
    State(state): State<AppState>,
    CurrentSession { principal, .. }: CurrentSession,
    ClientAddr(client): ClientAddr,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "file not found");
    let Some(record) = store::get(&state.db, id).await? else {
        return Err(not_found());
    };
    if record.user_id != principal.user_id {
        return Err(not_found());
    }
    let Some(downloads) = state.portal.downloads.as_ref() else {
        return Err(not_found());
    };
    let bytes = downloads.read(&record).await?;

    let event = EventBuilder::new(
        Actor::Person(principal.user_id.clone()),
        Action::DownloadFetched,
    )
    .session(record.session_id)
    .target(format!("download:{}", record.id))
    .client(Some(client))
    .detail("site", record.site.clone())
    .detail("name", record.name.clone())
    .detail("size", record.size)
    .detail("sha256", record.sha256.clone())
    .build();
    state.audit.append(event).await?;

    let disposition = HeaderValue::from_str(&content_disposition(&record.name))
        .map_err(|error| ApiError::internal(anyhow::Error::new(error)))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// Builds the `Content-Disposition` value of a file: `attachment` with an ASCII
/// `filename`, where other characters, quotes and backslashes become `_`, and the exact
/// name as RFC 5987 `filename*`.
pub fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        utf8_percent_encode(name, NON_ALPHANUMERIC)
    )
}

#[cfg(test)]
mod tests {
    use super::content_disposition;

    #[test]
    fn content_disposition_is_a_safe_attachment() {
        assert_eq!(
            content_disposition("a.pdf"),
            "attachment; filename=\"a.pdf\"; filename*=UTF-8''a%2Epdf"
        );
        let header = content_disposition("Konto \"März\"\\.pdf");
        assert!(
            header.starts_with("attachment; filename=\"Konto _M_rz__.pdf\"; "),
            "{header}"
        );
        assert!(header.ends_with("filename*=UTF-8''Konto%20%22M%C3%A4rz%22%5C%2Epdf"));
        assert!(axum::http::HeaderValue::from_str(&header).is_ok());
    }
}
