//! Every ending path: the reason is stored first, then the workspace is removed, the
//! egress registration dropped, the slot freed and one `session.ended` event appended.

use anyhow::Context;
use uuid::Uuid;

use super::store::{self, BeginEnding, SessionState};
use super::{EndReason, SessionNotice, SessionService, actor_from_text, actor_text};
use crate::audit::{Action, Actor, EventBuilder, Outcome};
use crate::auth::{Principal, Role};

/// What an end request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOutcome {
    /// The session ended and its slot is free.
    Ended,
    /// The session was launching; its launch task removes what it created and frees
    /// the slot within the launcher timeout.
    Ending,
    /// The session had already ended or was being ended for another reason.
    AlreadyEnded,
}

/// Who is ending a session, which decides who removes its workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EndMode {
    /// Anyone but the session's launch: a launch in progress finishes the end itself.
    External,
    /// The launch task, or recovery of a launch the broker lost: finishes the end now.
    Owner { contact_launcher: bool },
}

impl EndMode {
    fn contact_launcher(self) -> bool {
        match self {
            EndMode::External => true,
            EndMode::Owner { contact_launcher } => contact_launcher,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndError {
    #[error("session {0} does not exist")]
    NotFound(Uuid),
    #[error("only the session's owner or an admin may end it")]
    NotAllowed,
    #[error("session storage failed")]
    Storage(#[source] anyhow::Error),
}

impl SessionService {
    /// Ends a session for `reason`, on behalf of `actor`.
    pub async fn end(
        &self,
        session_id: Uuid,
        reason: EndReason,
        actor: Actor,
    ) -> Result<EndOutcome, EndError> {
        self.end_internal(session_id, reason, actor, EndMode::External)
            .await
    }

    /// Ends a session on a person's request: the owner ends their own, an admin
    /// terminates anyone's. Anyone else is refused, and the refusal is audited.
    pub async fn end_by(
        &self,
        principal: &Principal,
        session_id: Uuid,
    ) -> Result<EndOutcome, EndError> {
        let record = store::get(&self.deps().db, session_id)
            .await
            .map_err(EndError::Storage)?
            .ok_or(EndError::NotFound(session_id))?;
        let actor = Actor::Person(principal.user_id.clone());
        let reason = if record.user_id == principal.user_id && principal.can_launch() {
            EndReason::PersonEnded
        } else if principal.has(Role::Admin) {
            EndReason::AdminTerminated
        } else {
            let event = EventBuilder::new(actor, Action::SessionEnded)
                .session(session_id)
                .target(crate::sites::audit_target(&record.site))
                .outcome(Outcome::Denied)
                .build();
            self.deps()
                .audit
                .append(event)
                .await
                .map_err(EndError::Storage)?;
            return Err(EndError::NotAllowed);
        };
        self.end(session_id, reason, actor).await
    }

    /// Ends every live session of a person, as on sign-out. Returns the sessions asked
    /// to end.
    pub async fn end_all_for(
        &self,
        user_id: &str,
        reason: EndReason,
    ) -> Result<Vec<Uuid>, EndError> {
        let live = store::list_live_for_user(&self.deps().db, user_id)
            .await
            .map_err(EndError::Storage)?;
        let actor = match reason {
            EndReason::Logout | EndReason::PersonEnded => Actor::Person(user_id.to_owned()),
            _ => Actor::System("sessions"),
        };
        let mut ended = Vec::with_capacity(live.len());
        for record in live {
            self.end(record.id, reason.clone(), actor.clone()).await?;
            ended.push(record.id);
        }
        Ok(ended)
    }

    /// Ends every live session of this broker instance, as the broker stops, so that no
    /// container, network or quota slot outlives it. Returns the sessions ended.
    pub async fn end_all_on_shutdown(&self) -> Result<Vec<Uuid>, EndError> {
        let live = store::list_live(&self.deps().db, &self.deps().instance_id)
            .await
            .map_err(EndError::Storage)?;
        let mut ended = Vec::with_capacity(live.len());
        for record in live {
            self.end(record.id, EndReason::BrokerStopped, Actor::System("broker"))
                .await?;
            ended.push(record.id);
        }
        Ok(ended)
    }

    /// Ends a session because its recording failed. The failure is audited first.
    pub async fn end_for_recorder_failure(
        &self,
        session_id: Uuid,
        detail: &str,
    ) -> Result<EndOutcome, EndError> {
        let event = EventBuilder::new(Actor::System("recorder"), Action::RecordingFailed)
            .session(session_id)
            .outcome(Outcome::Failure)
            .detail("stage", "recording")
            .detail("reason", detail)
            .build();
        self.deps()
            .audit
            .append(event)
            .await
            .map_err(EndError::Storage)?;
        self.end(
            session_id,
            EndReason::RecorderFailed {
                detail: detail.to_owned(),
            },
            Actor::System("recorder"),
        )
        .await
    }

    pub(super) async fn end_internal(
        &self,
        session_id: Uuid,
        reason: EndReason,
        actor: Actor,
        mode: EndMode,
    ) -> Result<EndOutcome, EndError> {
        let began = store::begin_ending(
            &self.deps().db,
            session_id,
            reason.code(),
            reason.detail(),
            &actor_text(&actor),
        )
        .await
        .map_err(EndError::Storage)?;
        let complete = |outcome| async move {
            self.complete_end(session_id, mode.contact_launcher())
                .await
                .map_err(EndError::Storage)?;
            Ok(outcome)
        };
        match (began, mode) {
            (BeginEnding::NotFound, _) => Err(EndError::NotFound(session_id)),
            // A launch in progress owns the session; it sees the new state at its next
            // step and finishes the end itself.
            (
                BeginEnding::Began {
                    from: SessionState::Starting,
                },
                EndMode::External,
            ) => Ok(EndOutcome::Ending),
            (BeginEnding::AlreadyEnding, EndMode::External) => Ok(EndOutcome::AlreadyEnded),
            (BeginEnding::AlreadyEnding, EndMode::Owner { .. }) => {
                complete(EndOutcome::AlreadyEnded).await
            }
            (BeginEnding::Began { .. }, _) => complete(EndOutcome::Ended).await,
        }
    }

    /// Runs the site's logout recipe in the session's workspace while its stream is
    /// still live, for at most [`crate::sites::logout::MAX_LOGOUT_WAIT`]. A failed or
    /// slow logout is logged and the end goes on.
    async fn run_logout(&self, session_id: Uuid, site: &str) {
        let Some(stream) = self.inner.streams.get().and_then(|hub| hub.get(session_id)) else {
            return;
        };
        let recipe = match crate::sites::get(&self.deps().db, site).await {
            Ok(Some(site)) => site.definition.login.logout_recipe.clone(),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(session.id = %session_id, error = format!("{error:#}"), "Cannot read the site's logout recipe; ending without it");
                None
            }
        };
        let Some(recipe) = recipe else {
            return;
        };
        let limit = crate::sites::logout::MAX_LOGOUT_WAIT;
        match crate::sites::logout::run(&stream, &recipe, limit).await {
            Ok(()) => tracing::info!(session.id = %session_id, "Site logout recipe finished"),
            Err(reason) => {
                tracing::warn!(session.id = %session_id, reason = reason.as_str(), "Site logout recipe did not finish; ending anyway")
            }
        }
    }

    /// Removes an ending session's workspace and frees its slot. The launcher is asked
    /// to end it only when it may have created something.
    pub(super) async fn complete_end(
        &self,
        session_id: Uuid,
        contact_launcher: bool,
    ) -> anyhow::Result<()> {
        let db = &self.deps().db;
        let record = store::get(db, session_id)
            .await?
            .with_context(|| format!("session {session_id} vanished while ending"))?;
        if record.state != SessionState::Ending {
            return Ok(());
        }
        let reason = record
            .end_reason
            .clone()
            .unwrap_or_else(|| "unknown".to_owned());

        self.run_logout(session_id, &record.site).await;
        self.stop_stream(session_id, &reason);
        self.deps().egress.unregister(session_id);
        if contact_launcher {
            match self
                .deps()
                .launcher
                .end_session(session_id, reason.clone())
                .await
            {
                Ok(ended) if ended.removal_pending => {
                    tracing::warn!(session.id = %session_id, "Workspace removal is pending; the launcher retries it");
                }
                Ok(_) => {}
                // The session no longer counts as live once ended, so the next
                // reconciliation removes whatever the launcher still has of it.
                Err(error) => {
                    tracing::warn!(session.id = %session_id, error = %error, "Launcher could not end the workspace; reconciliation removes it later")
                }
            }
        }

        if !store::finish_ending(db, session_id, self.now_ms()).await? {
            // Another caller finished this end first and audited it.
            return Ok(());
        }
        self.inner
            .secrets
            .lock()
            .expect("secret map lock")
            .remove(&session_id);

        let actor = record
            .ended_by
            .as_deref()
            .map_or(Actor::System("sessions"), actor_from_text);
        let mut event = EventBuilder::new(actor, Action::SessionEnded)
            .session(session_id)
            .target(crate::sites::audit_target(&record.site))
            .detail("reason", reason.clone())
            .detail("owner", record.user_id.clone());
        if let Some(detail) = &record.end_detail {
            event = event.detail("detail", detail.clone());
        }
        if let Some(started) = record.started_at_ms {
            event = event.detail("duration_ms", self.now_ms() - started);
        }
        self.deps().audit.append(event.build()).await?;

        self.notify(SessionNotice::Ended {
            session_id,
            reason: reason.clone(),
        });
        super::metrics::record_end(&reason);
        self.record_live_sessions().await;
        tracing::info!(session.id = %session_id, user.id = %record.user_id, site = %record.site, reason = %reason, "Session ended");
        Ok(())
    }
}
