//! Replay in the portal: the recordings list, the player page, and the decrypted
//! segments the player script decodes with WebCodecs.
//!
//! Decryption stays in the broker and the data key never reaches the browser. Every
//! segment served is checked against the hashes in the audit trail first. A segment
//! that fails gets a `409 Conflict` response naming its index and is never sent.
//! Auditors and admins see every recording, a person sees their own.

use std::sync::Arc;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::catalogue::{self, CatalogueEntry, RecordingState};
use crate::audit::{Action, Actor, EventBuilder};
use crate::auth::pages::{escape, page};
use crate::auth::users::{self, ShownNames};
use crate::auth::{CurrentSession, Principal};
use crate::error::ApiError;
use crate::http::AppState;

/// The player page runs one script from the portal and fetches from the portal only.
const PLAYER_CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Record kinds in the segment body served to the player.
const KIND_PACKET: u8 = 0;
const KIND_PLACEHOLDER_STARTED: u8 = 1;
const KIND_PLACEHOLDER_ENDED: u8 = 2;
/// A stream configuration, its data `{"codec", "width", "height"}` as JSON. Every
/// segment starts with one, and a resize of the workspace display adds one before
/// the keyframe of the new size.
const KIND_CONFIG: u8 = 3;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/recordings", get(list_page))
        .route("/recordings/{id}", get(player_page))
        .route("/recordings/{id}/index", get(index))
        .route("/recordings/{id}/segments/{index}", get(segment))
        .route("/assets/replay.js", get(player_script))
}

#[derive(Deserialize, Default)]
struct ListQuery {
    /// A username or a user id.
    person: Option<String>,
    site: Option<String>,
    /// Start of the time range: a date (`2026-12-05`) or an RFC 3339 time.
    from: Option<String>,
    /// End of the time range, exclusive; a date means the end of that day.
    to: Option<String>,
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Parses a date or an RFC 3339 time; a date is midnight UTC, or the next midnight
/// when `end_of_day` is set.
pub(crate) fn parse_time(text: &str, end_of_day: bool) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let date = if end_of_day { date.succ_opt()? } else { date };
    Some(date.and_hms_opt(0, 0, 0)?.and_utc())
}

async fn list_page(
    State(state): State<AppState>,
    CurrentSession { principal, .. }: CurrentSession,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    list(&state, &principal, &query).await
}

async fn list(
    state: &AppState,
    principal: &Principal,
    query: &ListQuery,
) -> Result<Response, ApiError> {
    let person = match non_empty(&query.person) {
        Some(person) => Some(users::id_for_filter(&state.db, person).await?),
        None => None,
    };
    let mut filter = catalogue::Filter {
        user_id: person,
        site: non_empty(&query.site).map(str::to_owned),
        limit: Some(500),
        ..Default::default()
    };
    if !principal.can_audit() {
        filter.user_id = Some(principal.user_id.clone());
    }
    for (value, end_of_day, slot) in [
        (non_empty(&query.from), false, &mut filter.started_from),
        (non_empty(&query.to), true, &mut filter.started_before),
    ] {
        if let Some(text) = value {
            let Some(time) = parse_time(text, end_of_day) else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid time in the filter; use a date such as 2026-12-05 or an RFC 3339 time",
                ));
            };
            *slot = Some(time);
        }
    }
    let entries = catalogue::list(&state.db, &filter).await?;
    let names = ShownNames::load(
        &state.db,
        entries.iter().map(|entry| entry.user_id.as_str()),
    )
    .await?;
    Ok(list_html(principal, query, &entries, &names))
}

fn list_html(
    principal: &Principal,
    query: &ListQuery,
    entries: &[CatalogueEntry],
    names: &ShownNames,
) -> Response {
    let value = |field: &Option<String>| escape(non_empty(field).unwrap_or(""));
    let mut body = String::new();
    body.push_str("<form method=\"get\" action=\"/recordings\" id=\"filter\">");
    if principal.can_audit() {
        body.push_str(&format!(
            "<label>Person <input name=\"person\" value=\"{}\" placeholder=\"username or id\"></label> ",
            value(&query.person)
        ));
    }
    body.push_str(&format!(
        "<label>Site <input name=\"site\" value=\"{}\"></label> \
         <label>From <input name=\"from\" value=\"{}\" placeholder=\"2026-12-05\"></label> \
         <label>To <input name=\"to\" value=\"{}\"></label> \
         <button type=\"submit\">Filter</button></form>\n",
        value(&query.site),
        value(&query.from),
        value(&query.to),
    ));
    body.push_str(
        "<table id=\"recordings\"><tr><th>Started (UTC)</th><th>Person</th><th>Site</th>\
         <th>Length</th><th>Segments</th><th>State</th><th>Kept until</th><th></th></tr>\n",
    );
    for entry in entries {
        let length = recording_length_us(entry)
            .map(|length_us| format_duration((length_us / 1_000_000) as i64))
            .unwrap_or_default();
        let nothing_recorded = entry.state == RecordingState::Sealed && entry.segment_count == 0;
        let mut state = if nothing_recorded {
            "nothing recorded".to_owned()
        } else {
            entry.state.as_str().to_owned()
        };
        if entry.legal_hold {
            state.push_str(", legal hold");
        }
        let link = if entry.state == RecordingState::Deleted || nothing_recorded {
            String::new()
        } else {
            format!(
                "<a class=\"recording-link\" data-recording=\"{id}\" href=\"/recordings/{id}\">Play</a>",
                id = entry.id
            )
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{length}</td><td>{}</td><td>{}</td><td>{}</td><td>{link}</td></tr>\n",
            entry.started_at.format("%Y-%m-%d %H:%M:%S"),
            escape(names.get(&entry.user_id)),
            escape(&entry.site),
            entry.segment_count,
            escape(&state),
            entry.expires_at.format("%Y-%m-%d"),
        ));
    }
    body.push_str("</table>\n");
    body.push_str(
        "<p id=\"length-note\">Length is the time from the start of the recording, when its session launched, to its end; the player shows the same length.</p>\n",
    );
    if entries.is_empty() {
        body.push_str("<p id=\"empty\">No recording matches.</p>\n");
    }
    body.push_str("<p><a href=\"/\">Back to the portal</a></p>\n");
    page(StatusCode::OK, "Recordings", &body, "")
}

/// The recording's length in microseconds: from its start, when its session launched,
/// to its end. `None` while it is still being written. The screen sends no frame while
/// it does not change, so this is longer than the span of the frames.
fn recording_length_us(entry: &CatalogueEntry) -> Option<u64> {
    let end = entry.ended_at?;
    let length = (end - entry.started_at)
        .num_microseconds()
        .unwrap_or(i64::MAX);
    Some(length.max(0) as u64)
}

fn format_duration(seconds: i64) -> String {
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        (seconds / 60) % 60,
        seconds % 60
    )
}

/// Loads a catalogue row that `principal` may replay.
async fn replayable(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<CatalogueEntry, ApiError> {
    let Some(entry) = catalogue::get(&state.db, id).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such recording"));
    };
    if !(principal.can_audit() || entry.user_id == principal.user_id) {
        // The same response as for a missing recording, so ids cannot be probed.
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such recording"));
    }
    Ok(entry)
}

fn deleted_message(entry: &CatalogueEntry) -> String {
    let when = entry
        .deleted_at
        .map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "an unknown time".to_owned());
    format!(
        "Recording {} was deleted by retention at {when}; its data key is destroyed and it can no longer be played.",
        entry.id
    )
}

/// Explains a sealed recording without segments: it holds no video, and the seal's
/// detail says why when it is known.
pub(crate) fn no_video_message(entry: &CatalogueEntry) -> String {
    let reason = match entry.detail.as_deref() {
        Some(catalogue::NOTHING_RECORDED) => {
            "its session ended before its screen reached the recorder".to_owned()
        }
        Some(detail) if detail.starts_with(catalogue::SEALED_AFTER_INTERRUPTION) => format!(
            "the broker stopped before the first keyframe of its screen was stored, and the \
             next start {detail}"
        ),
        Some(detail) => format!("it was sealed without segments ({detail})"),
        None => "it was sealed without segments".to_owned(),
    };
    format!(
        "Recording {} holds no video: {reason}. There is nothing to play or export.",
        entry.id
    )
}

/// The player page. Its errors, an id that is not a UUID included, become the portal's
/// error page for a browser (`crate::error::html_error_pages`).
async fn player_page(
    State(state): State<AppState>,
    CurrentSession { principal, .. }: CurrentSession,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    match id {
        Ok(Path(id)) => player(&state, &principal, id).await,
        Err(_) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such recording; the address does not end in a recording id, so open it from the recordings list",
        )),
    }
}

async fn player(state: &AppState, principal: &Principal, id: Uuid) -> Result<Response, ApiError> {
    let entry = replayable(state, principal, id).await?;
    if entry.state == RecordingState::Deleted {
        let body = format!(
            "<p id=\"error\" role=\"alert\">{}</p><p><a href=\"/recordings\">Back to the recordings</a></p>",
            escape(&deleted_message(&entry))
        );
        return Ok(page(StatusCode::GONE, "Recording deleted", &body, ""));
    }
    if entry.state == RecordingState::Sealed && entry.segment_count == 0 {
        let body = format!(
            "<p id=\"no-video\" role=\"status\">{}</p><p><a href=\"/recordings\">Back to the recordings</a></p>",
            escape(&no_video_message(&entry))
        );
        return Ok(page(StatusCode::OK, "Recording without video", &body, ""));
    }

    let event = EventBuilder::new(
        Actor::Person(principal.user_id.clone()),
        Action::RecordingReplayed,
    )
    .session(entry.session_id)
    .target(format!("recording:{id}"))
    .build();
    state.audit.append(event).await?;

    let names = ShownNames::load(&state.db, [entry.user_id.as_str()]).await?;
    let body = format!(
        "<div id=\"player\" data-recording=\"{id}\">\n\
         <p>{site}, {person}, started {started} UTC</p>\n\
         <p id=\"status\" role=\"status\">Loading</p>\n\
         <p id=\"error\" role=\"alert\" hidden></p>\n\
         <p id=\"placeholder\" hidden>The screen was hidden here while credentials were typed.</p>\n\
         <canvas id=\"screen\" width=\"1280\" height=\"720\" data-position-us=\"\" style=\"width:100%;max-width:1280px;border:1px solid #888;background:#000\"></canvas>\n\
         <div><button type=\"button\" id=\"play\" disabled>Play</button> \
         <span style=\"position:relative;display:inline-block;width:60%\">\
         <input type=\"range\" id=\"seek\" min=\"0\" max=\"0\" step=\"any\" value=\"0\" style=\"width:100%\" disabled>\
         <span id=\"markers\" style=\"position:absolute;left:0;right:0;top:-10px;height:10px\"></span></span> \
         <span id=\"time\">0:00:00</span> / <span id=\"duration\" title=\"From the start of the recording to its end, as in the recordings list\">0:00:00</span> \
         <label>Speed <select id=\"speed\"><option value=\"0.5\">0.5×</option><option value=\"1\" selected>1×</option>\
         <option value=\"2\">2×</option><option value=\"4\">4×</option><option value=\"8\">8×</option></select></label></div>\n\
         <p><a href=\"/recordings\">Back to the recordings</a></p>\n</div>\n\
         <script src=\"/assets/replay.js\"></script>",
        site = escape(&entry.site),
        person = escape(names.get(&entry.user_id)),
        started = entry.started_at.format("%Y-%m-%d %H:%M:%S"),
    );
    let mut response = page(StatusCode::OK, "Recording", &body, "");
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PLAYER_CSP),
    );
    Ok(response)
}

#[derive(Serialize)]
struct IndexBody {
    codec: String,
    width: u32,
    height: u32,
    first_pts_us: u64,
    /// The recording's length, as the recordings list shows it: from its start to its
    /// end, or the span of its frames when that is longer or it has not ended.
    duration_us: u64,
    /// Time from the first frame to the last, which is the length of an export.
    frames_duration_us: u64,
    sealed: bool,
    segments: Vec<SegmentBody>,
    markers: Vec<super::markers::TimelineMarker>,
}

#[derive(Serialize)]
struct SegmentBody {
    index: u64,
    start_pts_us: u64,
    end_pts_us: u64,
}

#[derive(Serialize)]
struct ReplayErrorBody {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment: Option<u64>,
}

/// Builds a JSON error response whose message names the recording or segment.
fn replay_error(status: StatusCode, error: String, segment: Option<u64>) -> Response {
    (status, Json(ReplayErrorBody { error, segment })).into_response()
}

/// Converts a recorder error into the player's response: a segment that fails verification
/// is a `409` naming its index and is audited as `recording.verification.failed`, a
/// destroyed key a `410`.
async fn recorder_failure(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    error: recorder::RecorderError,
) -> Response {
    match error {
        recorder::RecorderError::InvalidSegment { index, fault, .. } => {
            tracing::error!(recording.id = %id, segment = index, fault = %fault, "Segment failed verification during replay");
            let event = EventBuilder::new(
                Actor::Person(principal.user_id.clone()),
                Action::RecordingVerificationFailed,
            )
            .target(format!("recording:{id}"))
            .outcome(crate::audit::Outcome::Failure)
            .detail("checked_by", "replay")
            .detail("problems", format!("segment {index}: {fault}"))
            .build();
            if let Err(audit_error) = state.audit.append(event).await {
                tracing::error!(recording.id = %id, error = %audit_error, "Cannot audit a segment that failed verification");
            }
            replay_error(
                StatusCode::CONFLICT,
                format!("segment {index} failed verification ({fault}); it is not played"),
                Some(index),
            )
        }
        recorder::RecorderError::Key(error) => {
            tracing::error!(recording.id = %id, error = %error, "Recording key unavailable during replay");
            replay_error(
                StatusCode::GONE,
                format!(
                    "the key of recording {id} is not available ({error}); it cannot be played"
                ),
                None,
            )
        }
        other => ApiError::internal(anyhow::Error::new(other)).into_response(),
    }
}

/// Opens a recording for replay, requiring the hashes from the audit trail.
async fn open_reader(
    state: &AppState,
    principal: &Principal,
    entry: &CatalogueEntry,
) -> Result<Arc<recorder::RecordingReader>, Response> {
    if entry.state == RecordingState::Deleted {
        return Err(replay_error(StatusCode::GONE, deleted_message(entry), None));
    }
    let id = entry.id;
    let hashes = super::segment_hashes(&state.audit, id)
        .await
        .map_err(|error| {
            replay_error(
                StatusCode::CONFLICT,
                format!("the audit trail does not vouch for recording {id}: {error:#}"),
                None,
            )
        })?;
    let settings = state.portal.hub.recording_settings().clone();
    let opened = tokio::task::spawn_blocking(move || {
        let mut reader =
            recorder::RecordingReader::open(settings.storage.clone(), settings.keys.as_ref(), id)?;
        reader.require_hashes(hashes)?;
        Ok::<_, recorder::RecorderError>(reader)
    })
    .await
    .context("replay task failed")
    .map_err(|error| ApiError::internal(error).into_response())?;
    match opened {
        Ok(reader) => Ok(Arc::new(reader)),
        Err(error) => Err(recorder_failure(state, principal, id, error).await),
    }
}

async fn index(
    State(state): State<AppState>,
    CurrentSession { principal, .. }: CurrentSession,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let entry = replayable(&state, &principal, id).await?;
    let reader = match open_reader(&state, &principal, &entry).await {
        Ok(reader) => reader,
        Err(response) => return Ok(response),
    };
    let Some(stream) = reader.metadata().stream.clone().or_else(|| {
        // The configuration may have arrived after the recording started; every
        // segment repeats it, so the first one has it.
        reader.read_segment(0).ok().and_then(|records| {
            records.into_iter().find_map(|record| match record {
                recorder::Record::Config(config) => Some(config),
                _ => None,
            })
        })
    }) else {
        return Ok(replay_error(
            StatusCode::CONFLICT,
            format!("recording {id} has no stream configuration and cannot be played"),
            None,
        ));
    };
    let first_pts_us = reader.first_pts_us().unwrap_or(0);
    let frames_duration_us = reader.duration().as_micros() as u64;
    let duration_us = recording_length_us(&entry).map_or(frames_duration_us, |length_us| {
        length_us.max(frames_duration_us)
    });
    let span = super::markers::RecordingSpan {
        started_at: entry.started_at,
        ended_at: entry.ended_at,
        first_pts_us,
        duration_us,
    };
    let end_texts = state.portal.sessions.end_texts();
    let markers =
        super::markers::timeline_markers(&state.audit, entry.session_id, &span, &end_texts).await?;
    let body = IndexBody {
        codec: stream.codec,
        width: stream.width,
        height: stream.height,
        first_pts_us,
        duration_us,
        frames_duration_us,
        sealed: reader.is_sealed(),
        segments: reader
            .segments()
            .iter()
            .enumerate()
            .map(|(index, segment)| SegmentBody {
                index: index as u64,
                start_pts_us: segment.start_pts_us,
                end_pts_us: segment.end_pts_us,
            })
            .collect(),
        markers,
    };
    Ok(Json(body).into_response())
}

/// Serves one decrypted segment: for each record a kind byte, the pts (u64), a keyframe
/// flag byte, the data length (u32) and the data, all big-endian. A configuration
/// record has no pts of its own, so it carries the pts of the packet after it (or of
/// the packet before it at the end of a segment).
async fn segment(
    State(state): State<AppState>,
    CurrentSession { principal, .. }: CurrentSession,
    Path((id, index)): Path<(Uuid, u64)>,
) -> Result<Response, ApiError> {
    let entry = replayable(&state, &principal, id).await?;
    let reader = match open_reader(&state, &principal, &entry).await {
        Ok(reader) => reader,
        Err(response) => return Ok(response),
    };
    let records = tokio::task::spawn_blocking(move || reader.read_segment(index))
        .await
        .context("replay task failed")?;
    let records = match records {
        Ok(records) => records,
        Err(error) => return Ok(recorder_failure(&state, &principal, id, error).await),
    };

    let mut body = Vec::new();
    let packet_pts: Vec<Option<u64>> = records
        .iter()
        .map(|record| match record {
            recorder::Record::Packet(packet) => Some(packet.pts_us),
            _ => None,
        })
        .collect();
    for (position, record) in records.into_iter().enumerate() {
        let (kind, pts_us, keyframe, data) = match record {
            recorder::Record::Packet(packet) => {
                (KIND_PACKET, packet.pts_us, packet.keyframe, packet.data)
            }
            recorder::Record::Marker(recorder::Marker::PlaceholderStarted { pts_us }) => {
                (KIND_PLACEHOLDER_STARTED, pts_us, false, Default::default())
            }
            recorder::Record::Marker(recorder::Marker::PlaceholderEnded { pts_us }) => {
                (KIND_PLACEHOLDER_ENDED, pts_us, false, Default::default())
            }
            recorder::Record::Config(config) => {
                let pts_us = packet_pts[position..]
                    .iter()
                    .chain(packet_pts[..position].iter().rev())
                    .find_map(|pts| *pts)
                    .unwrap_or(0);
                let data = serde_json::to_vec(&serde_json::json!({
                    "codec": config.codec,
                    "width": config.width,
                    "height": config.height,
                }))
                .context("cannot encode a stream configuration")?;
                (KIND_CONFIG, pts_us, false, data.into())
            }
        };
        body.push(kind);
        body.extend_from_slice(&pts_us.to_be_bytes());
        body.push(u8::from(keyframe));
        body.extend_from_slice(&(data.len() as u32).to_be_bytes());
        body.extend_from_slice(&data);
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

async fn player_script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../assets/replay.js"),
    )
}
