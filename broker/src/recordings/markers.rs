//! Timeline markers of a recording, taken from the audit trail of its banking session:
//! launch, auto-login result, navigations, idle warnings and the end.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::search::{AuditQuery, MAX_LIMIT};
use crate::audit::{Action, AuditLog, StoredEvent};
use crate::sessions::EndReasonTexts;

/// Events looked up per recording. A session with more events shows markers for the
/// first ones only.
const MAX_EVENTS: usize = 10_000;

/// One marker on the seek bar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineMarker {
    /// `launch`, `auto-login`, `navigation`, `idle-warning` or `end`.
    pub kind: &'static str,
    /// Text shown on hover, for example `Auto-login failed`.
    pub label: String,
    /// Position in the recording's timestamps, between its first and last packet.
    pub pts_us: u64,
}

/// The position of a recording on the wall clock and in its own timestamps.
#[derive(Debug, Clone, Copy)]
pub struct RecordingSpan {
    /// Wall-clock start of the recording.
    pub started_at: DateTime<Utc>,
    /// Wall-clock end, `None` while it is still being written.
    pub ended_at: Option<DateTime<Utc>>,
    /// Timestamp of its first packet.
    pub first_pts_us: u64,
    pub duration_us: u64,
}

/// Maps one audit event to a marker kind and label, or `None` for events that are not
/// shown on the timeline.
fn classify(event: &StoredEvent, end_texts: &EndReasonTexts) -> Option<(&'static str, String)> {
    let action = Action::from_name(&event.action)?;
    match action {
        Action::SessionLaunched => Some(("launch", "Session launched".to_owned())),
        Action::AutoLoginFinished => {
            let label = if event.outcome == "success" {
                "Auto-login succeeded"
            } else {
                "Auto-login failed"
            };
            Some(("auto-login", label.to_owned()))
        }
        Action::SiteAccessed if event.outcome == "success" => {
            let host = event.target.as_deref().unwrap_or("-");
            let host = host.rsplit_once(':').map_or(host, |(host, _port)| host);
            Some(("navigation", format!("Opened {host}")))
        }
        Action::SessionIdleWarned => Some(("idle-warning", "Idle warning".to_owned())),
        Action::SessionEnded => Some(("end", end_label(event, end_texts))),
        _ => None,
    }
}

/// Labels the end marker: "Session ended" and the sentence for the audited reason.
fn end_label(event: &StoredEvent, end_texts: &EndReasonTexts) -> String {
    let details: serde_json::Value = serde_json::from_str(&event.details).unwrap_or_default();
    match details["reason"].as_str() {
        Some(code) => format!(
            "Session ended: {}",
            end_texts.describe(code, details["detail"].as_str())
        ),
        None => "Session ended".to_owned(),
    }
}

/// Builds markers from a session's events for a recording over `span`. An event's
/// position is its time since the recording's start, clamped to the recording.
/// Consecutive navigations to the same host become one marker.
pub fn markers_from_events(
    events: &[StoredEvent],
    span: &RecordingSpan,
    end_texts: &EndReasonTexts,
) -> Vec<TimelineMarker> {
    let RecordingSpan {
        started_at,
        first_pts_us,
        duration_us,
        ..
    } = *span;
    let start_ms = started_at.timestamp_millis();
    let mut markers: Vec<TimelineMarker> = Vec::new();
    let mut last_navigation: Option<String> = None;
    for event in events {
        let Some((kind, label)) = classify(event, end_texts) else {
            continue;
        };
        if kind == "navigation" {
            if last_navigation.as_deref() == Some(label.as_str()) {
                continue;
            }
            last_navigation = Some(label.clone());
        }
        let offset_us = (event.occurred_at_ms - start_ms).max(0) as u64 * 1000;
        markers.push(TimelineMarker {
            kind,
            label,
            pts_us: first_pts_us + offset_us.min(duration_us),
        });
    }
    markers
}

/// Reads the session's audit events from the recording's start to its end (or now,
/// for a recording still running) and returns its markers.
pub async fn timeline_markers(
    audit: &AuditLog,
    session_id: uuid::Uuid,
    span: &RecordingSpan,
    end_texts: &EndReasonTexts,
) -> anyhow::Result<Vec<TimelineMarker>> {
    // The launch is audited just before the first frame arrives, so the window opens
    // a minute early and the marker is clamped to the start.
    let from_ms = span.started_at.timestamp_millis() - 60_000;
    // The end is audited just after the recording is sealed.
    let to_ms = span.ended_at.map(|at| at.timestamp_millis() + 60_000);
    let mut events = Vec::new();
    let mut after_seq = 0;
    loop {
        let page = audit
            .search(&AuditQuery {
                session_id: Some(session_id.to_string()),
                from_ms: Some(from_ms),
                to_ms,
                after_seq: Some(after_seq),
                limit: Some(MAX_LIMIT),
                ..AuditQuery::default()
            })
            .await?;
        let full = page.len() as i64 == MAX_LIMIT;
        if let Some(last) = page.last() {
            after_seq = last.seq;
        }
        events.extend(page);
        if !full || events.len() >= MAX_EVENTS {
            break;
        }
    }
    Ok(markers_from_events(&events, span, end_texts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: Action, occurred_at_ms: i64) -> StoredEvent {
        StoredEvent {
            seq: 1,
            event_id: String::new(),
            schema_version: 1,
            occurred_at_ms,
            actor: "system:test".to_owned(),
            action: action.as_str().to_owned(),
            target: Some("bank.test:443".to_owned()),
            outcome: "success".to_owned(),
            client_addr: None,
            session_id: None,
            details: "{}".to_owned(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn markers_are_clamped_to_the_recording() {
        let started_at = DateTime::from_timestamp_millis(1_000_000).unwrap();
        let events = [
            event(Action::SessionLaunched, 999_000),
            event(Action::SiteAccessed, 1_002_500),
            event(Action::RecordingSegmentStored, 1_003_000),
            event(Action::SessionEnded, 1_090_000),
        ];
        let span = RecordingSpan {
            started_at,
            ended_at: None,
            first_pts_us: 5_000,
            duration_us: 60_000_000,
        };
        let end_texts = EndReasonTexts::new(&crate::config::SessionsConfig::defaults(
            std::path::Path::new("/nonexistent"),
        ));
        let markers = markers_from_events(&events, &span, &end_texts);
        let positions: Vec<(&str, u64)> = markers.iter().map(|m| (m.kind, m.pts_us)).collect();
        assert_eq!(
            positions,
            vec![
                ("launch", 5_000),
                ("navigation", 2_505_000),
                ("end", 60_005_000)
            ]
        );
    }

    #[test]
    fn end_marker_names_the_reason() {
        let end_texts = EndReasonTexts::new(&crate::config::SessionsConfig::defaults(
            std::path::Path::new("/nonexistent"),
        ));
        let mut ended = event(Action::SessionEnded, 1_000);
        ended.details = r#"{"reason":"ended_by_person","owner":"u1"}"#.to_owned();
        assert_eq!(
            classify(&ended, &end_texts),
            Some(("end", "Session ended: You ended the session".to_owned()))
        );
        ended.details = r#"{"reason":"stream_failed","detail":"the browser exited"}"#.to_owned();
        assert_eq!(
            classify(&ended, &end_texts).unwrap().1,
            "Session ended: The connection to the browser workspace failed: the browser exited"
        );
        ended.details = "{}".to_owned();
        assert_eq!(classify(&ended, &end_texts).unwrap().1, "Session ended");
    }
}
