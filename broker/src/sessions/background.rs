//! The reaper (idle and lifetime limits), the reconciler (dead workspaces, orphans)
//! and recovery after a broker restart.

use std::collections::HashMap;

use uuid::Uuid;

use super::end::EndMode;
use super::store::{self, SessionState};
use super::{EndReason, SessionNotice, SessionService};
use crate::audit::{Action, Actor, EventBuilder};
use crate::tasks::TaskRegistry;

/// Wait between failed recovery attempts at start.
const RECOVERY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// Time after start during which a launcher that refuses connections is expected,
/// because the embedded launcher child is still starting, and recovery retries quietly.
const LAUNCHER_START_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Tells whether a recovery failure is the expected one of a start: within
/// [`LAUNCHER_START_GRACE`], the launcher does not accept connections yet.
fn launcher_still_starting(error: &anyhow::Error, elapsed: std::time::Duration) -> bool {
    elapsed < LAUNCHER_START_GRACE
        && matches!(
            error.downcast_ref::<launcher::ClientError>(),
            Some(launcher::ClientError::Connect { .. })
        )
}

/// What one reaper pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub idle_warned: Vec<Uuid>,
    /// Sessions ended, with their reason code.
    pub ended: Vec<(Uuid, &'static str)>,
}

/// What recovery after a restart did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Sessions ended, with their reason code.
    pub ended: Vec<(Uuid, &'static str)>,
}

impl SessionService {
    /// Spawns the reaper, the reconciler and the watch on workspace exits. The
    /// reconciler first recovers the sessions a previous run of this broker left behind. Shutdown (the registry's
    /// token) also waits for launches in progress.
    pub fn spawn_tasks(&self, tasks: &TaskRegistry) {
        let token = tasks.token();
        let service = self.clone();
        tasks.spawn("sessions-reaper", async move {
            let mut ticks = tokio::time::interval(service.config().reaper_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                if let Err(error) = service.reap_once().await {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "Session reaper pass failed; retrying at the next tick"
                    );
                }
            }
        });

        let token = tasks.token();
        let service = self.clone();
        tasks.spawn("sessions-reconciler", async move {
            // Recovery is retried sooner than the reconciliation interval, because the
            // embedded launcher child may still be starting.
            let started = std::time::Instant::now();
            loop {
                match service.recover().await {
                    Ok(report) => {
                        tracing::info!(ended = report.ended.len(), "Session recovery finished");
                        service.inner.recovered.send_replace(true);
                        break;
                    }
                    Err(error) if launcher_still_starting(&error, started.elapsed()) => {
                        tracing::debug!(
                            error = format!("{error:#}"),
                            retry_ms = millis(RECOVERY_RETRY),
                            "Session recovery waits for the launcher to listen"
                        );
                    }
                    Err(error) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            retry_ms = millis(RECOVERY_RETRY),
                            "Session recovery failed; retrying"
                        );
                    }
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(RECOVERY_RETRY) => {}
                }
            }

            // Recovery ended with a reconciliation, so the first tick is skipped.
            let period = service.config().reconcile_interval;
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                if let Err(error) = service.reconcile_once().await {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "Reconciliation with the launcher failed; retrying at the next tick"
                    );
                }
            }
        });

        self.spawn_exit_watch(tasks);

        let token = tasks.token();
        let launches = self.inner.launches.clone();
        tasks.spawn("sessions-launch-drain", async move {
            token.cancelled().await;
            launches.close();
            launches.wait().await;
        });
    }

    /// Waits until the recovery that [`SessionService::spawn_tasks`] starts has finished.
    pub async fn wait_recovered(&self) {
        let mut recovered = self.inner.recovered.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = recovered.wait_for(|done| *done).await;
    }

    /// Ends sessions past their maximum lifetime or idle timeout, and warns those
    /// close to the idle timeout. Times come from the service's clock.
    pub async fn reap_once(&self) -> anyhow::Result<ReapReport> {
        let config = self.config();
        let now = self.now_ms();
        let idle_ms = millis(config.idle_timeout);
        let warning_ms = millis(config.idle_warning);
        let lifetime_ms = millis(config.max_lifetime);

        let mut report = ReapReport::default();
        let running = store::list_running(&self.deps().db, &self.deps().instance_id).await?;
        metrics::gauge!("strongroom_sessions_live").set(running.len() as f64);
        for record in running {
            let started = record.started_at_ms.unwrap_or(record.created_at_ms);
            let idle_for = now - record.last_input_at_ms;
            let reason = if now - started >= lifetime_ms {
                Some(EndReason::MaxLifetime)
            } else if idle_for >= idle_ms {
                Some(EndReason::IdleTimeout)
            } else {
                None
            };

            if let Some(reason) = reason {
                let code = reason.code();
                match self.end(record.id, reason, Actor::System("reaper")).await {
                    Ok(_) => report.ended.push((record.id, code)),
                    Err(error) => {
                        tracing::error!(session.id = %record.id, error = %error, "Cannot end a session past its limit")
                    }
                }
                continue;
            }

            if warning_ms > 0
                && idle_for >= idle_ms - warning_ms
                && record.idle_warned_at_ms.is_none()
                && store::mark_idle_warned(&self.deps().db, record.id, now).await?
            {
                let ends_at_ms = record.last_input_at_ms + idle_ms;
                tracing::info!(session.id = %record.id, ends_at_ms, "Session idle; warning sent");
                let event = EventBuilder::new(Actor::System("reaper"), Action::SessionIdleWarned)
                    .session(record.id)
                    .detail("ends_at_ms", ends_at_ms)
                    .build();
                if let Err(error) = self.deps().audit.append(event).await {
                    tracing::error!(session.id = %record.id, error = format!("{error:#}"), "Cannot audit the idle warning");
                }
                self.notify(SessionNotice::IdleWarning {
                    session_id: record.id,
                    ends_at_ms,
                });
                report.idle_warned.push(record.id);
            }
        }
        Ok(report)
    }

    /// Asks the launcher to remove this instance's orphans and ends every running
    /// session whose workspace it reports dead. Returns the sessions ended.
    pub async fn reconcile_once(&self) -> anyhow::Result<Vec<Uuid>> {
        let report = {
            // Exclusive: no launch is between its launcher call and `running`.
            let _gate = self.inner.launch_gate.write().await;
            let running = store::list_running(&self.deps().db, &self.deps().instance_id).await?;
            let live: Vec<Uuid> = running.iter().map(|record| record.id).collect();
            self.deps().launcher.reconcile(live).await?
        };

        let mut ended = Vec::new();
        for dead in report.dead_sessions {
            tracing::warn!(session.id = %dead.session_id, reason = %dead.reason, "Workspace died; ending its session");
            let reason = EndReason::WorkspaceExited {
                detail: dead.reason,
            };
            match self
                .end(dead.session_id, reason, Actor::System("reconciler"))
                .await
            {
                Ok(_) => ended.push(dead.session_id),
                Err(error) => {
                    tracing::error!(session.id = %dead.session_id, error = %error, "Cannot end a session whose workspace died")
                }
            }
        }
        Ok(ended)
    }

    /// Ends every live session a previous run of this broker left in the database, and
    /// then reconciles once, which removes their containers and networks.
    ///
    /// No session is re-adopted, even when its workspace still runs: the agent secret,
    /// the live stream and the recording lived in the previous process, and a session is
    /// never left running unwatched and unrecorded.
    pub async fn recover(&self) -> anyhow::Result<RecoveryReport> {
        let workspaces: HashMap<Uuid, launcher::WorkloadState> = self
            .deps()
            .launcher
            .list_sessions()
            .await?
            .into_iter()
            .map(|info| (info.session_id, info.state))
            .collect();

        let mut report = RecoveryReport::default();
        for record in store::list_live(&self.deps().db, &self.deps().instance_id).await? {
            if self.launched_by_this_process(record.id) {
                continue;
            }
            let reason = match (record.state, workspaces.get(&record.id)) {
                (SessionState::Running, Some(state)) if state.is_dead() => {
                    Some(EndReason::WorkspaceExited {
                        detail: launcher::reconcile::dead_reason(state),
                    })
                }
                (SessionState::Running, Some(_)) => Some(EndReason::BrokerRestarted),
                (SessionState::Running, None) => Some(EndReason::LostAfterRestart),
                (SessionState::Ending, _) => {
                    self.complete_end(record.id, true).await?;
                    report.ended.push((record.id, "resumed_end"));
                    None
                }
                _ => Some(EndReason::InterruptedByRestart),
            };
            if let Some(reason) = reason {
                let code = reason.code();
                tracing::warn!(session.id = %record.id, reason = code, "Ending a session left by the previous broker run");
                self.end_internal(
                    record.id,
                    reason,
                    Actor::System("recovery"),
                    EndMode::Owner {
                        contact_launcher: true,
                    },
                )
                .await?;
                report.ended.push((record.id, code));
            }
        }

        self.reconcile_once().await?;
        Ok(report)
    }
}

impl SessionService {
    /// Returns whether this process launched the session (and so has its agent
    /// secret), as opposed to a session that a previous run left behind.
    fn launched_by_this_process(&self, session_id: Uuid) -> bool {
        let launching = self
            .inner
            .launching
            .lock()
            .expect("launching set lock")
            .contains(&session_id);
        launching
            || self
                .inner
                .secrets
                .lock()
                .expect("secret map lock")
                .contains_key(&session_id)
    }
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{LAUNCHER_START_GRACE, launcher_still_starting};

    /// Returns the error of a recovery against a launcher socket that nothing listens on.
    async fn launcher_not_listening() -> anyhow::Error {
        let dir = tempfile::tempdir().unwrap();
        let client = launcher::LauncherClient::new(dir.path().join("launcher.sock"));
        anyhow::Error::from(client.list_sessions().await.unwrap_err())
    }

    #[tokio::test]
    async fn unreachable_launcher_at_start_is_expected() {
        let error = launcher_not_listening().await;
        assert!(
            launcher_still_starting(&error, Duration::from_secs(2)),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn unreachable_launcher_after_grace_warns() {
        let error = launcher_not_listening().await;
        assert!(
            !launcher_still_starting(&error, LAUNCHER_START_GRACE),
            "{error:#}"
        );
    }

    #[test]
    fn other_failure_at_start_warns() {
        let error = anyhow::anyhow!("cannot list live sessions");
        assert!(!launcher_still_starting(&error, Duration::ZERO));
    }
}
