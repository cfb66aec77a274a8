//! Server-rendered admin pages under `/admin`. Forms post to the portal itself, and
//! the role extractors reject a post without the portal's exact `Origin` (or
//! `Referer`), as for every portal form.

use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use uuid::Uuid;

use super::views::{self, AdminError, QuotaChange, RolesChange, Termination};
use crate::audit::AuditQuery;
use crate::auth::pages::{escape, page};
use crate::auth::users::{self, ShownNames};
use crate::auth::{Principal, RequireAdmin, RequireAuditor, Role};
use crate::http::{AppState, ClientAddr};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(overview))
        .route("/admin/people", get(people))
        .route("/admin/people/{id}/roles", post(set_roles))
        .route("/admin/people/{id}/quota", post(set_quota))
        .route("/admin/sessions", get(sessions))
        .route("/admin/sessions/{id}/terminate", post(terminate))
        .route("/admin/audit", get(audit))
        .route("/admin/health", get(health))
        .route("/admin/site-changes", get(site_changes))
        .route(
            "/admin/site-changes/{id}/approve",
            post(approve_site_change),
        )
        .route("/admin/site-changes/{id}/reject", post(reject_site_change))
}

fn nav(principal: &Principal) -> String {
    let mut links = vec![("/admin", "Overview")];
    if principal.has(Role::Admin) {
        links.push(("/admin/people", "People and quotas"));
        links.push(("/admin/site-changes", "Pending site changes"));
    }
    links.push(("/admin/sessions", "Live sessions"));
    links.push(("/recordings", "Recordings"));
    links.push(("/admin/audit", "Audit trail"));
    if principal.has(Role::Admin) {
        links.push(("/admin/health", "Health"));
    }
    let items: Vec<String> = links
        .iter()
        .map(|(href, label)| format!("<a href=\"{href}\">{label}</a>"))
        .collect();
    format!(
        "<nav>{} | <a href=\"/\">Portal</a></nav>\n",
        items.join(" | ")
    )
}

fn error_page(error: AdminError) -> Response {
    let problem = error.to_problem();
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    page(
        status,
        "Request refused",
        &format!(
            "<p id=\"error\" role=\"alert\">{}</p><p><a href=\"/admin\">Back to the console</a></p>",
            escape(&problem.detail)
        ),
        "",
    )
}

/// Reads the shown names of `ids`, for a page that lists people.
async fn shown_names<'a>(
    state: &AppState,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<ShownNames, Response> {
    ShownNames::load(&state.db, ids)
        .await
        .map_err(|error| error_page(AdminError::Internal(error)))
}

/// Renders an audit actor or target. A `user:ID` shows as `user:NAME` with the stored
/// value as its title, and other values show as stored.
fn audit_party(value: &str, names: &ShownNames) -> String {
    match value.strip_prefix("user:") {
        Some(id) => format!(
            "<span title=\"{}\">user:{}</span>",
            escape(value),
            escape(names.get(id))
        ),
        None => escape(value),
    }
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|time| time.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

async fn overview(
    State(state): State<AppState>,
    RequireAuditor(principal): RequireAuditor,
) -> Result<Response, Response> {
    let sessions = views::live_sessions(&state)
        .await
        .map_err(|error| error_page(error.into()))?;
    let mut body = nav(&principal);
    body.push_str(&format!(
        "<p>Signed in as {}. Live sessions: {}.</p>\n",
        escape(&principal.display_name),
        sessions.len()
    ));
    Ok(page(StatusCode::OK, "Admin console", &body, ""))
}

async fn people(
    State(state): State<AppState>,
    RequireAdmin(principal): RequireAdmin,
) -> Result<Response, Response> {
    let people = views::people(&state)
        .await
        .map_err(|error| error_page(error.into()))?;
    let mut body = nav(&principal);
    body.push_str("<table><tr><th>Person</th><th>Source</th><th>Roles</th><th>Quota</th><th>Sites</th></tr>\n");
    for person in &people {
        let id = escape(&person.id);
        let role_boxes: String = ["user", "auditor", "admin"]
            .iter()
            .map(|role| {
                let checked = if person.roles.iter().any(|held| held == role) {
                    " checked"
                } else {
                    ""
                };
                format!("<label><input type=\"checkbox\" name=\"role\" value=\"{role}\"{checked}> {role}</label> ")
            })
            .collect();
        let roles = if person.source == "local" {
            format!(
                "<form method=\"post\" action=\"/admin/people/{id}/roles\">{role_boxes}<button type=\"submit\">Save roles</button></form>"
            )
        } else {
            format!(
                "{} (from the identity provider)",
                escape(&person.roles.join(", "))
            )
        };
        let default_note = if person.quota_is_default {
            " (default)"
        } else {
            ""
        };
        body.push_str(&format!(
            "<tr id=\"person-{id}\"><td>{name}</td><td>{source}</td><td>{roles}</td>\
             <td><form method=\"post\" action=\"/admin/people/{id}/quota\"><input type=\"number\" name=\"max_sessions\" min=\"0\" max=\"{max}\" value=\"{quota}\">{default_note} <button type=\"submit\">Set quota</button></form></td>\
             <td>{sites}</td></tr>\n",
            name = escape(person.username.as_deref().unwrap_or(&person.display_name)),
            source = escape(&person.source),
            max = views::MAX_QUOTA,
            quota = person.quota,
            sites = escape(&person.granted_sites.join(", ")),
        ));
    }
    body.push_str("</table>\n");
    Ok(page(StatusCode::OK, "People and quotas", &body, ""))
}

async fn set_roles(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    body: String,
) -> Response {
    // Checkboxes repeat the `role` field, which `Form` cannot collect into a list.
    let roles = url::form_urlencoded::parse(body.as_bytes())
        .filter(|(key, _)| key == "role")
        .map(|(_, value)| value.into_owned())
        .collect();
    match views::set_roles(&state, &admin, Some(client), &id, &RolesChange { roles }).await {
        Ok(_) => Redirect::to("/admin/people").into_response(),
        Err(error) => error_page(error),
    }
}

#[derive(Deserialize)]
struct QuotaForm {
    max_sessions: String,
}

async fn set_quota(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Path(id): Path<String>,
    Form(form): Form<QuotaForm>,
) -> Response {
    let Ok(max_sessions) = form.max_sessions.trim().parse::<u32>() else {
        return error_page(AdminError::Invalid(format!(
            "invalid quota {:?}; use a whole number from 0 to {}",
            form.max_sessions,
            views::MAX_QUOTA
        )));
    };
    match views::set_quota(&state, &admin, &id, &QuotaChange { max_sessions }).await {
        Ok(_) => Redirect::to("/admin/people").into_response(),
        Err(error) => error_page(error),
    }
}

async fn sessions(
    State(state): State<AppState>,
    RequireAuditor(principal): RequireAuditor,
) -> Result<Response, Response> {
    let sessions = views::live_sessions(&state)
        .await
        .map_err(|error| error_page(error.into()))?;
    let names = shown_names(
        &state,
        sessions.iter().map(|session| session.user_id.as_str()),
    )
    .await?;
    let admin = principal.has(Role::Admin);
    let mut body = nav(&principal);
    if sessions.is_empty() {
        body.push_str("<p>No live session.</p>\n");
    }
    body.push_str("<table><tr><th>Session</th><th>Person</th><th>Site</th><th>State</th><th>Started</th><th></th></tr>\n");
    for session in &sessions {
        let actions = if admin {
            format!(
                "<a href=\"/sessions/{id}\">Watch</a> <form method=\"post\" action=\"/admin/sessions/{id}/terminate\"><input name=\"reason\" required maxlength=\"{max}\" placeholder=\"Reason\"> <button type=\"submit\">Terminate</button></form>",
                id = session.id,
                max = views::MAX_REASON_CHARS
            )
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr id=\"session-{id}\"><td>{id}</td><td>{user}</td><td>{site}</td><td>{state}</td><td>{started}</td><td>{actions}</td></tr>\n",
            id = session.id,
            user = escape(names.get(&session.user_id)),
            site = escape(&session.site),
            state = escape(&session.state),
            started = time(session.started_at_ms.unwrap_or(session.created_at_ms)),
        ));
    }
    body.push_str("</table>\n");
    Ok(page(StatusCode::OK, "Live sessions", &body, ""))
}

#[derive(Deserialize)]
struct TerminateForm {
    reason: String,
}

async fn terminate(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    ClientAddr(client): ClientAddr,
    Path(id): Path<Uuid>,
    Form(form): Form<TerminateForm>,
) -> Response {
    let termination = Termination {
        reason: form.reason,
    };
    match views::terminate(&state, &admin, Some(client), id, &termination).await {
        Ok(_) => Redirect::to("/admin/sessions").into_response(),
        Err(error) => error_page(error),
    }
}

/// The audit search form. Times are given as `YYYY-MM-DD` or RFC 3339 and read as
/// UTC.
#[derive(Deserialize, Default)]
struct AuditForm {
    actor: Option<String>,
    action: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after_seq: Option<i64>,
}

fn parse_time(field: &str, text: &str) -> Result<i64, AdminError> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|time| time.and_utc().timestamp_millis())
        .ok_or_else(|| {
            AdminError::Invalid(format!(
                "invalid {field} time {text:?}; use YYYY-MM-DD or an RFC 3339 time such as 2026-12-01T08:00:00Z"
            ))
        })
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

async fn audit(
    State(state): State<AppState>,
    RequireAuditor(principal): RequireAuditor,
    Query(form): Query<AuditForm>,
) -> Response {
    let mut query = match audit_query(&form) {
        Ok(query) => query,
        Err(error) => return error_page(error),
    };
    // The page shows people as `user:NAME`, so a search may name them that way too.
    if let Some(person) = query
        .actor
        .as_deref()
        .and_then(|actor| actor.strip_prefix("user:"))
    {
        match users::id_for_filter(&state.db, person).await {
            Ok(id) => query.actor = Some(format!("user:{id}")),
            Err(error) => return error_page(AdminError::Internal(error)),
        }
    }
    let events = match state.audit.search(&query).await {
        Ok(events) => events,
        Err(error) => return error_page(AdminError::Internal(error)),
    };
    let mut people = Vec::new();
    for event in &events {
        for party in [Some(event.actor.as_str()), event.target.as_deref()] {
            people.extend(party.and_then(|party| party.strip_prefix("user:")));
        }
    }
    let names = match shown_names(&state, people).await {
        Ok(names) => names,
        Err(page) => return page,
    };

    let value = |field: &Option<String>| escape(field.as_deref().unwrap_or(""));
    let mut body = nav(&principal);
    body.push_str(&format!(
        "<form method=\"get\" action=\"/admin/audit\">\
         <label>Actor <input name=\"actor\" value=\"{actor}\" placeholder=\"user:NAME\"></label> \
         <label>Action <input name=\"action\" value=\"{action}\" placeholder=\"auth.*\"></label> \
         <label>From <input name=\"from\" value=\"{from}\" placeholder=\"YYYY-MM-DD\"></label> \
         <label>To <input name=\"to\" value=\"{to}\" placeholder=\"YYYY-MM-DD\"></label> \
         <button type=\"submit\">Search</button></form>\n",
        actor = value(&form.actor),
        action = value(&form.action),
        from = value(&form.from),
        to = value(&form.to),
    ));
    body.push_str("<p>Export as JSON lines with the signed checkpoints: <code>GET /api/v1/audit/export</code> with the same filters (<code>from_ms</code>, <code>to_ms</code> in Unix milliseconds).</p>\n");
    body.push_str("<table><tr><th>#</th><th>Time</th><th>Actor</th><th>Action</th><th>Target</th><th>Outcome</th><th>Details</th></tr>\n");
    for event in &events {
        body.push_str(&format!(
            "<tr><td>{seq}</td><td>{time}</td><td>{actor}</td><td>{action}</td><td>{target}</td><td>{outcome}</td><td><code>{details}</code></td></tr>\n",
            seq = event.seq,
            time = time(event.occurred_at_ms),
            actor = audit_party(&event.actor, &names),
            action = escape(&event.action),
            target = audit_party(event.target.as_deref().unwrap_or(""), &names),
            outcome = escape(&event.outcome),
            details = escape(&event.details),
        ));
    }
    body.push_str("</table>\n");
    if let Some(last) = events.last()
        && events.len() as i64 == crate::audit::search::DEFAULT_LIMIT
    {
        let mut next = url::form_urlencoded::Serializer::new(String::new());
        for (key, field) in [
            ("actor", &form.actor),
            ("action", &form.action),
            ("from", &form.from),
            ("to", &form.to),
        ] {
            if let Some(value) = non_empty(field) {
                next.append_pair(key, &value);
            }
        }
        next.append_pair("after_seq", &last.seq.to_string());
        body.push_str(&format!(
            "<p><a href=\"/admin/audit?{}\">Next page</a></p>\n",
            escape(&next.finish())
        ));
    }
    page(StatusCode::OK, "Audit trail", &body, "")
}

fn audit_query(form: &AuditForm) -> Result<AuditQuery, AdminError> {
    let query = AuditQuery {
        actor: non_empty(&form.actor),
        action: non_empty(&form.action),
        from_ms: non_empty(&form.from)
            .map(|text| parse_time("from", &text))
            .transpose()?,
        to_ms: non_empty(&form.to)
            .map(|text| parse_time("to", &text))
            .transpose()?,
        after_seq: form.after_seq,
        ..AuditQuery::default()
    };
    query
        .validate()
        .map_err(|error| AdminError::Invalid(error.to_string()))?;
    Ok(query)
}

async fn health(State(state): State<AppState>, RequireAdmin(principal): RequireAdmin) -> Response {
    let config = state.admin.config.clone();
    let health = views::health(&state, &config).await;
    let mut body = nav(&principal);
    body.push_str(&format!(
        "<p id=\"overall\">{}</p>\n<table><tr><th>Check</th><th>State</th><th>Detail</th></tr>\n",
        if health.healthy {
            "Every check passes."
        } else {
            "Some checks fail."
        }
    ));
    for check in &health.checks {
        body.push_str(&format!(
            "<tr id=\"check-{name}\"><td>{name}</td><td>{state}</td><td>{detail}</td></tr>\n",
            name = escape(&check.name),
            state = if check.ok { "ok" } else { "FAILING" },
            detail = escape(&check.detail),
        ));
    }
    body.push_str("</table>\n");
    page(StatusCode::OK, "Health", &body, "")
}

async fn site_changes(
    State(state): State<AppState>,
    RequireAdmin(principal): RequireAdmin,
) -> Result<Response, Response> {
    let changes = crate::sites::dual_control::pending(&state.db)
        .await
        .map_err(|error| error_page(error.into()))?;
    let mut body = nav(&principal);
    if changes.is_empty() {
        body.push_str("<p id=\"no-changes\">No site change waits for approval.</p>\n");
        return Ok(page(StatusCode::OK, "Pending site changes", &body, ""));
    }
    let names = shown_names(
        &state,
        changes.iter().map(|change| change.requested_by.as_str()),
    )
    .await?;
    body.push_str(
        "<table><tr><th>Site</th><th>Changed fields</th><th>Requested by</th><th>Requested at</th><th>Decision</th></tr>\n",
    );
    for change in &changes {
        let id = change.id;
        // The requester can view the change but not approve or reject it.
        let decision = if change.requested_by == principal.user_id {
            "Waiting for a second admin".to_owned()
        } else {
            format!(
                "<form method=\"post\" action=\"/admin/site-changes/{id}/approve\"><button type=\"submit\">Approve</button></form>\
                 <form method=\"post\" action=\"/admin/site-changes/{id}/reject\"><button type=\"submit\">Reject</button></form>"
            )
        };
        body.push_str(&format!(
            "<tr id=\"change-{id}\"><td>{site}</td><td>{fields}</td><td>{requester}</td><td>{at}</td><td>{decision}</td></tr>\n",
            site = escape(&change.definition.name),
            fields = escape(&change.changed_fields.join(", ")),
            requester = escape(names.get(&change.requested_by)),
            at = time(change.requested_at_ms),
        ));
    }
    body.push_str("</table>\n");
    Ok(page(StatusCode::OK, "Pending site changes", &body, ""))
}

async fn approve_site_change(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Path(id): Path<Uuid>,
) -> Response {
    let now_ms = chrono::Utc::now().timestamp_millis();
    match crate::sites::dual_control::approve(&state.db, &state.audit, id, &admin.user_id, now_ms)
        .await
    {
        Ok(_) => Redirect::to("/admin/site-changes").into_response(),
        Err(error) => error_page(super::site_changes::decision_error(error)),
    }
}

async fn reject_site_change(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Path(id): Path<Uuid>,
) -> Response {
    let now_ms = chrono::Utc::now().timestamp_millis();
    match crate::sites::dual_control::reject(&state.db, &state.audit, id, &admin.user_id, now_ms)
        .await
    {
        Ok(_) => Redirect::to("/admin/site-changes").into_response(),
        Err(error) => error_page(super::site_changes::decision_error(error)),
    }
}
