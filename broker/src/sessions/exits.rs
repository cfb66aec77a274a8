//! Ends sessions as soon as the launcher reports, from the Docker engine's event stream,
//! that their workspace stopped. The periodic reconciler stays as the backstop for
//! exits missed while this watch was disconnected.

use std::time::Duration;

use futures::StreamExt as _;

use super::store::SessionState;
use super::{EndReason, SessionService};
use crate::audit::Actor;
use crate::tasks::TaskRegistry;

/// Wait before watching again after the launcher connection failed or closed.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

impl SessionService {
    /// Spawns the task that ends a running session whose workspace stopped.
    pub(super) fn spawn_exit_watch(&self, tasks: &TaskRegistry) {
        let token = tasks.token();
        let service = self.clone();
        tasks.spawn("sessions-exit-watch", async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = service.watch_exits_once() => {}
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(REWATCH_DELAY) => {}
                }
            }
        });
    }

    /// Watches one launcher connection until it fails or closes.
    async fn watch_exits_once(&self) {
        let mut exits = match self.deps().launcher.watch_exits().await {
            Ok(exits) => exits,
            Err(error) => {
                tracing::debug!(error = %error, "Cannot watch workspace exits yet; retrying");
                return;
            }
        };
        while let Some(exit) = exits.next().await {
            match exit {
                Ok(exit) => self.end_exited(exit).await,
                Err(error) => {
                    tracing::warn!(error = %error, "Watching workspace exits failed; watching again");
                    return;
                }
            }
        }
    }

    /// Ends the session of a stopped workspace if it is running. A workspace stopped
    /// by an ending already in progress finds its session ending or ended, and is left
    /// to that ending.
    pub async fn end_exited(&self, exit: launcher::WorkspaceExit) {
        let record = match self.get(exit.session_id).await {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(session.id = %exit.session_id, error = format!("{error:#}"), "Cannot read the session of a stopped workspace; the reconciler ends it later");
                return;
            }
        };
        if record.state != SessionState::Running || record.instance_id != self.deps().instance_id {
            return;
        }

        tracing::warn!(session.id = %exit.session_id, reason = %exit.reason, "Workspace stopped; ending its session");
        let reason = EndReason::WorkspaceExited {
            detail: exit.reason,
        };
        if let Err(error) = self
            .end(exit.session_id, reason, Actor::System("docker-events"))
            .await
        {
            tracing::error!(session.id = %exit.session_id, error = %error, "Cannot end a session whose workspace stopped; the reconciler retries");
        }
    }
}
