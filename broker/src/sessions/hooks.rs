//! The stream hub's callbacks into the session lifecycle.

use std::sync::Arc;

use uuid::Uuid;

use super::{EndReason, SessionService};
use crate::audit::Actor;

/// Prefix of the stream hub's reason when the recording failed; the hub has audited
/// that failure already.
const RECORDING_FAILED_PREFIX: &str = "recording failed";

/// Implements [`crate::stream::SessionHooks`] over a [`SessionService`]. The hooks are
/// synchronous, so each call runs as a tracked task that shutdown waits for.
pub struct StreamHooks {
    service: SessionService,
}

impl SessionService {
    /// Hooks for `StreamHub::set_hooks`: person input resets the idle timer, and a
    /// failed stream ends its session.
    pub fn stream_hooks(&self) -> Arc<StreamHooks> {
        Arc::new(StreamHooks {
            service: self.clone(),
        })
    }
}

impl SessionService {
    /// Lets ending sessions stop their live stream with the end reason before the
    /// workspace is removed, so that viewers see that reason rather than a dropped
    /// agent connection. Set once at start-up.
    pub fn attach_streams(&self, hub: crate::stream::StreamHub) {
        let _ = self.inner.streams.set(hub);
    }

    /// Stops a session's live stream, if this broker runs one, and sends viewers the
    /// end reason code. The viewer script shows the code's sentence from
    /// [`super::EndReasonTexts`].
    pub(super) fn stop_stream(&self, session_id: Uuid, reason: &str) {
        if let Some(hub) = self.inner.streams.get() {
            hub.stop(session_id, reason);
        }
    }
}

impl crate::stream::SessionHooks for StreamHooks {
    fn end_session(&self, session_id: Uuid, reason: String) {
        let service = self.service.clone();
        self.service.inner.launches.spawn(async move {
            let (reason, actor) = if reason.starts_with(RECORDING_FAILED_PREFIX) {
                (EndReason::RecorderFailed { detail: reason }, Actor::System("recorder"))
            } else {
                (EndReason::StreamFailed { detail: reason }, Actor::System("sessions"))
            };
            if let Err(error) = service.end(session_id, reason, actor).await {
                tracing::error!(session.id = %session_id, error = %error, "Cannot end the session after its stream failed");
            }
        });
    }

    fn person_input(&self, session_id: Uuid) {
        let service = self.service.clone();
        self.service.inner.launches.spawn(async move {
            if let Err(error) = service.record_input(session_id).await {
                tracing::warn!(session.id = %session_id, error = format!("{error:#}"), "Cannot record person input");
            }
        });
    }
}
