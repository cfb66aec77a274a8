//! Portal pages.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::auth::Principal;
use crate::auth::pages::{escape, page};
use crate::sessions::{EndReasonTexts, SessionRecord};
use crate::sites::Site;
use crate::stream::viewer::ViewerMode;

/// The viewer page runs one script from the portal and opens one WebSocket to it.
const VIEWER_CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Sites the person may open, their sessions and, after a refused launch, the reason.
pub struct Home<'a> {
    pub sites: &'a [Site],
    pub sessions: &'a [SessionRecord],
    pub end_texts: &'a EndReasonTexts,
    pub error: Option<&'a str>,
}

pub fn home(principal: &Principal, view: &Home<'_>) -> Response {
    let Home {
        sites,
        sessions,
        end_texts,
        error,
    } = *view;
    let mut body = format!("<p>Signed in as {}.</p>\n", escape(&principal.display_name));
    if principal.can_audit() {
        body.push_str("<p><a id=\"console\" href=\"/admin\">Admin console</a></p>\n");
    }
    body.push_str("<p><a id=\"files\" href=\"/files\">Your files</a></p>\n");
    if let Some(error) = error {
        body.push_str(&format!(
            "<p id=\"error\" role=\"alert\">{}</p>\n",
            escape(error)
        ));
    }

    body.push_str("<h2>Banks</h2>\n");
    if !principal.can_launch() {
        body.push_str("<p>Your role does not open banking sessions. Open the <a href=\"/recordings\">recordings</a> or the <a href=\"/admin/audit\">audit trail</a>.</p>\n");
    } else if sites.is_empty() {
        body.push_str("<p>No bank is granted to you yet. Ask an administrator for access.</p>\n");
    }
    for site in sites {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/sessions\"><input type=\"hidden\" name=\"site\" value=\"{name}\"><button type=\"submit\" id=\"launch-{name}\">Open {display}</button></form>\n",
            name = escape(&site.name),
            display = escape(&site.display_name),
        ));
    }

    body.push_str("<h2>Your sessions</h2>\n<table><tr><th>Bank</th><th>State</th><th></th></tr>\n");
    for session in sessions {
        let action = if session.state.is_live() {
            format!(
                "<a href=\"/sessions/{id}\">View</a> <form method=\"post\" action=\"/sessions/{id}/end\"><button type=\"submit\">End</button></form>",
                id = session.id
            )
        } else {
            let reason = session
                .end_reason
                .as_deref()
                .map(|code| end_texts.describe(code, session.end_detail.as_deref()));
            escape(&reason.unwrap_or_default())
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{action}</td></tr>\n",
            escape(&session.site),
            session.state.as_str()
        ));
    }
    body.push_str("</table>\n<form method=\"post\" action=\"/auth/logout\"><button type=\"submit\">Sign out</button></form>\n");
    page(StatusCode::OK, "Portal", &body, "")
}

/// Path of the viewer WebSocket with its one-time ticket.
pub fn socket_path(session_id: uuid::Uuid, ticket: &str) -> String {
    format!("/sessions/{session_id}/live?ticket={ticket}")
}

/// Why a session is not running, for the person.
pub fn end_reason(record: &SessionRecord, end_texts: &EndReasonTexts) -> String {
    match record.end_reason.as_deref() {
        Some(code) => end_texts.describe(code, record.end_detail.as_deref()),
        None => "The session is not running".to_owned(),
    }
}

pub fn viewer(
    record: &SessionRecord,
    ticket: &str,
    mode: ViewerMode,
    end_texts: &EndReasonTexts,
) -> Response {
    let mode_name = match mode {
        ViewerMode::Control => "control",
        ViewerMode::Watch => "watch",
    };
    let notice = match mode {
        ViewerMode::Control => "",
        ViewerMode::Watch => "<p>You are watching read-only; the person is told.</p>",
    };
    let body = format!(
        "<div id=\"viewer\" data-socket=\"{socket}\" data-ticket-url=\"/sessions/{id}/ticket\" data-mode=\"{mode_name}\" data-end-reasons=\"{end_reasons}\">\n\
         <p><span id=\"recorded\" style=\"color:#b00\" hidden>&#9679; Recorded</span> {site}</p>{notice}\n\
         <p id=\"watched\" role=\"alert\" style=\"background:#fe3;padding:4px\" hidden></p>\n\
         <p id=\"connection\" role=\"status\" hidden></p>\n\
         <p id=\"status\" role=\"status\" hidden></p>\n\
         <p id=\"placeholder\" hidden>Signing you in to the bank. The screen is hidden while credentials are typed.</p>\n\
         <p id=\"ended\" role=\"alert\" hidden></p>\n\
         <div id=\"stage\" style=\"width:100%;height:75vh;min-height:240px\"><canvas id=\"screen\" width=\"1280\" height=\"720\" style=\"display:block;max-width:100%;max-height:100%;outline:1px solid #888\"></canvas></div>\n\
         <form method=\"post\" action=\"/sessions/{id}/end\"><button type=\"submit\">End session</button></form>\n\
         <p><a href=\"/\">Back to the portal</a></p>\n</div>\n\
         <script src=\"/assets/viewer.js\"></script>",
        id = record.id,
        socket = escape(&socket_path(record.id, ticket)),
        site = escape(&record.site),
        end_reasons = escape(&serde_json::json!(end_texts.table()).to_string()),
    );
    let mut response = page(StatusCode::OK, "Live session", &body, "");
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(VIEWER_CSP),
    );
    response
}

pub fn ended(record: &SessionRecord, end_texts: &EndReasonTexts) -> Response {
    let body = format!(
        "<p id=\"ended\">{}</p><p><a href=\"/\">Back to the portal</a></p>",
        escape(&end_reason(record, end_texts))
    );
    page(StatusCode::OK, "Session ended", &body, "")
}
