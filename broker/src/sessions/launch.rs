//! The launch path: reserve, recorder pre-flight, agent secret, launcher, egress, running.

use std::net::IpAddr;
use std::sync::Arc;

use tracing::Instrument;
use uuid::Uuid;

use super::end::EndMode;
use super::store::{self, Placement, Reservation, ReserveOutcome};
use super::{AgentSecret, EndReason, LaunchedSession, RecorderPreflight, SessionService};
use crate::audit::{Action, Actor, EventBuilder, Outcome};
use crate::auth::Principal;
use crate::secrets::CredentialRef;
use crate::secrets::usage::{self, ClaimRejected};
use crate::sites::{self, Site};

/// Why a launch did not produce a running session. Refusals (quota, limits, grants)
/// come back at once, before any Docker call.
/// Tells the person why a launch over their quota was refused and what to do.
fn quota_message(limit: u32) -> String {
    if limit == 0 {
        "your quota allows no live sessions; ask an administrator to raise it".to_owned()
    } else {
        format!("you already have {limit} live session(s), the most your quota allows; end one first")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("this account has no role that may launch sessions")]
    NotAllowed,
    /// The person reads the same sentence as for [`LaunchError::NotGranted`], so a
    /// refusal does not tell whether a site outside their grants exists. The audit
    /// event's `reason` code tells them apart.
    #[error("{}", not_available_message(site))]
    SiteNotFound { site: String },
    /// Reported only to people granted the site.
    #[error("site {site:?} is disabled by an administrator; try again later")]
    SiteDisabled { site: String },
    #[error("{}", not_available_message(site))]
    NotGranted { site: String },
    #[error("{}", quota_message(*limit))]
    QuotaReached { limit: u32 },
    #[error("site {site:?} already runs its maximum of {limit} session(s); try again later")]
    SiteLimitReached { site: String, limit: u32 },
    #[error("this host already runs its maximum of {limit} session(s); try again later")]
    HostCapacityReached { limit: u32 },
    #[error("recordings cannot be written, so no session may start: {reason}")]
    RecorderUnavailable { reason: String },
    #[error("{message}")]
    CredentialUnavailable { message: String },
    #[error("the browser workspace could not be started: {reason}")]
    WorkspaceFailed { reason: String },
    #[error("the session was ended while it was starting ({reason})")]
    EndedDuringLaunch { reason: String },
    #[error("the broker is shutting down; no new session may start")]
    ShuttingDown,
    #[error("session storage failed")]
    Storage(#[source] anyhow::Error),
}

fn not_available_message(site: &str) -> String {
    format!("site {site:?} is not available to this account; ask an administrator for access")
}

/// Message for the person who launched when the workspace failed to start. The cause
/// (a missing image, an engine error) is for the operator: the error log and the
/// `session.launch.failed` audit event carry it.
pub const WORKSPACE_FAILED_FOR_PERSON: &str = "The workspace cannot start right now. The administrator has been told; please try again later.";

/// Message for the person who launched when recordings cannot be written. The cause
/// (the recording store's paths, the file system's error) is for the operator: the
/// error log and the `session.launch.failed` audit event carry it.
pub const RECORDER_UNAVAILABLE_FOR_PERSON: &str = "No session can start right now because recordings cannot be written. The administrator has been told; please try again later.";

impl LaunchError {
    /// Returns the text for the person who launched: the error itself, except for a
    /// workspace failure and an unwritable recording store, whose operator detail it
    /// leaves out.
    pub fn person_message(&self) -> String {
        match self {
            LaunchError::WorkspaceFailed { .. } => WORKSPACE_FAILED_FOR_PERSON.to_owned(),
            LaunchError::RecorderUnavailable { .. } => RECORDER_UNAVAILABLE_FOR_PERSON.to_owned(),
            other => other.to_string(),
        }
    }

    /// A short code for metrics and API responses.
    pub fn code(&self) -> &'static str {
        match self {
            LaunchError::NotAllowed => "not_allowed",
            LaunchError::SiteNotFound { .. } => "site_not_found",
            LaunchError::SiteDisabled { .. } => "site_disabled",
            LaunchError::NotGranted { .. } => "not_granted",
            LaunchError::QuotaReached { .. } => "quota_reached",
            LaunchError::SiteLimitReached { .. } => "site_limit_reached",
            LaunchError::HostCapacityReached { .. } => "host_capacity_reached",
            LaunchError::RecorderUnavailable { .. } => "recorder_unavailable",
            LaunchError::CredentialUnavailable { .. } => "credential_unavailable",
            LaunchError::WorkspaceFailed { .. } => "workspace_failed",
            LaunchError::EndedDuringLaunch { .. } => "ended_during_launch",
            LaunchError::ShuttingDown => "shutting_down",
            LaunchError::Storage(_) => "storage",
        }
    }
}

impl SessionService {
    /// Launches a session of `site` for `principal`.
    ///
    /// The work runs in its own task, so a caller that goes away (a closed HTTP
    /// connection) never leaves a half-launched session: the task either finishes
    /// the launch or ends the session and frees its slot.
    pub async fn launch(
        &self,
        principal: &Principal,
        site: &str,
        client_addr: Option<IpAddr>,
    ) -> Result<LaunchedSession, LaunchError> {
        if self.inner.launches.is_closed() {
            return Err(LaunchError::ShuttingDown);
        }
        let service = self.clone();
        let principal = principal.clone();
        let site = site.to_owned();
        let session_id = Uuid::new_v4();
        let started = std::time::Instant::now();
        let span = tracing::info_span!("launch", session.id = %session_id, user.id = %principal.user_id, site = %site);
        self.inner
            .launching
            .lock()
            .expect("launching set lock")
            .insert(session_id);
        let task = self.inner.launches.spawn(
            async move {
                let result = service
                    .launch_inner(session_id, &principal, &site, client_addr)
                    .await;
                service
                    .inner
                    .launching
                    .lock()
                    .expect("launching set lock")
                    .remove(&session_id);
                result
            }
            .instrument(span),
        );
        let result = task.await.map_err(|error| {
            LaunchError::Storage(anyhow::anyhow!("launch task failed: {error}"))
        })?;
        crate::sessions::metrics::record_launch(&result, started.elapsed());
        if result.is_ok() {
            self.record_live_sessions().await;
        }
        result
    }

    async fn launch_inner(
        &self,
        session_id: Uuid,
        principal: &Principal,
        site_name: &str,
        client_addr: Option<IpAddr>,
    ) -> Result<LaunchedSession, LaunchError> {
        let actor = Actor::Person(principal.user_id.clone());
        let requested = EventBuilder::new(actor.clone(), Action::SessionLaunchRequested)
            .target(crate::sites::audit_target(site_name))
            .session(session_id)
            .client(client_addr)
            .build();
        self.deps()
            .audit
            .append(requested)
            .await
            .map_err(LaunchError::Storage)?;

        let site = match self.check_launch_allowed(principal, site_name).await {
            Ok(site) => site,
            Err(error) => {
                return Err(self
                    .refuse(session_id, &actor, site_name, client_addr, error)
                    .await);
            }
        };

        let outcome = self
            .reserve(session_id, principal, &site, client_addr)
            .await?;
        if let Some(error) = outcome {
            return Err(self
                .refuse(session_id, &actor, site_name, client_addr, error)
                .await);
        }
        tracing::debug!("Session slot reserved");

        // From here on, every failure must end the session to free its slot. Ending it
        // also releases the credential claim, which counts only for a session that has
        // not ended.
        if let Err(error) = self.claim_exclusive_credential(session_id, &site).await {
            self.fail_launch(
                session_id,
                EndReason::LaunchFailed {
                    detail: error.to_string(),
                },
                &actor,
                false,
            )
            .await;
            return Err(error);
        }
        if let Err(reason) = self.recorder_preflight().await {
            self.audit_recorder_unavailable(session_id, site_name, &reason)
                .await;
            self.fail_launch(
                session_id,
                EndReason::RecorderUnavailable {
                    detail: reason.clone(),
                },
                &actor,
                false,
            )
            .await;
            return Err(LaunchError::RecorderUnavailable { reason });
        }
        if !store::mark_starting(&self.deps().db, session_id)
            .await
            .map_err(LaunchError::Storage)?
        {
            return Err(self.ended_during_launch(session_id, false).await);
        }

        let secret = Arc::new(AgentSecret::generate());
        self.inner
            .secrets
            .lock()
            .expect("secret map lock")
            .insert(session_id, secret.clone());

        let launched = {
            let _gate = self.inner.launch_gate.read().await;
            self.start_workspace(session_id, principal, &site, &secret, &actor)
                .await?
        };

        let record = store::get(&self.deps().db, session_id)
            .await
            .map_err(LaunchError::Storage)?
            .ok_or_else(|| {
                LaunchError::Storage(anyhow::anyhow!(
                    "session {session_id} vanished after its launch"
                ))
            })?;
        let event = EventBuilder::new(actor, Action::SessionLaunched)
            .target(crate::sites::audit_target(site_name))
            .session(session_id)
            .client(client_addr)
            .detail("container", launched.container_name.clone())
            .detail("subnet", launched.subnet.to_string())
            .build();
        if let Err(error) = self.deps().audit.append(event).await {
            tracing::error!(
                error = format!("{error:#}"),
                "Cannot record the launch in the audit trail; ending the session"
            );
            self.fail_launch(
                session_id,
                EndReason::LaunchFailed {
                    detail: "the audit trail could not be written".to_owned(),
                },
                &Actor::System("sessions"),
                true,
            )
            .await;
            return Err(LaunchError::Storage(error));
        }
        tracing::info!(container.name = %launched.container_name, subnet = %launched.subnet, "Session running");

        Ok(LaunchedSession {
            session: record,
            agent_secret: secret,
            workspace_address: launched.workspace_address,
            proxy_address: launched.proxy_address,
        })
    }

    async fn check_launch_allowed(
        &self,
        principal: &Principal,
        site_name: &str,
    ) -> Result<Site, LaunchError> {
        if !principal.can_launch() {
            return Err(LaunchError::NotAllowed);
        }
        let db = &self.deps().db;
        let site = sites::get(db, site_name)
            .await
            .map_err(LaunchError::Storage)?
            .ok_or_else(|| LaunchError::SiteNotFound {
                site: site_name.to_owned(),
            })?;
        // The grant comes before the enabled flag, so that only people granted the
        // site learn that it is disabled.
        if !sites::is_granted(db, &principal.user_id, site_name)
            .await
            .map_err(LaunchError::Storage)?
        {
            return Err(LaunchError::NotGranted {
                site: site_name.to_owned(),
            });
        }
        if !site.enabled {
            return Err(LaunchError::SiteDisabled {
                site: site_name.to_owned(),
            });
        }
        Ok(site)
    }

    /// Reserves a slot. `Ok(Some(error))` is a refusal by a limit.
    async fn reserve(
        &self,
        session_id: Uuid,
        principal: &Principal,
        site: &Site,
        client_addr: Option<IpAddr>,
    ) -> Result<Option<LaunchError>, LaunchError> {
        let config = self.config();
        let reservation = Reservation {
            session_id,
            user_id: &principal.user_id,
            site: &site.name,
            instance_id: &self.deps().instance_id,
            client_addr: client_addr.map(|addr| addr.to_string()),
            now_ms: self.now_ms(),
            default_quota: config.default_quota,
            site_limit: site.max_sessions,
            host_limit: config.host_max_sessions,
        };
        let outcome = store::reserve(&self.deps().db, &reservation)
            .await
            .map_err(LaunchError::Storage)?;
        Ok(match outcome {
            ReserveOutcome::Reserved => None,
            ReserveOutcome::QuotaReached { limit } => Some(LaunchError::QuotaReached { limit }),
            ReserveOutcome::SiteLimitReached { limit } => Some(LaunchError::SiteLimitReached {
                site: site.name.clone(),
                limit,
            }),
            ReserveOutcome::HostCapacityReached { limit } => {
                Some(LaunchError::HostCapacityReached { limit })
            }
        })
    }

    /// Claims the site's exclusive shared credential for the session, so that of two
    /// launches racing for it only one creates a container. Auto-login claims it again
    /// for the same session, which succeeds.
    async fn claim_exclusive_credential(
        &self,
        session_id: Uuid,
        site: &Site,
    ) -> Result<(), LaunchError> {
        let login = &site.login;
        let exclusive = login.recipe.is_some()
            && login.exclusive_use
            && login.credential_source == sites::CredentialSourceKind::Shared;
        if !exclusive {
            return Ok(());
        }
        let reference = CredentialRef::shared(&site.name)
            .map_err(|error| LaunchError::Storage(anyhow::anyhow!("{error}")))?;
        let claimed = usage::claim(
            &self.deps().db,
            &reference,
            session_id,
            true,
            self.now_ms(),
        )
        .await
        .map_err(LaunchError::Storage)?;
        match claimed {
            Ok(()) => Ok(()),
            Err(ClaimRejected::InUse { .. }) => Err(LaunchError::CredentialUnavailable {
                message: "the bank login is in use by another session; try again when it has ended"
                    .to_owned(),
            }),
            Err(ClaimRejected::Locked { .. }) => Err(LaunchError::CredentialUnavailable {
                message: "auto-login for this bank is locked after failed attempts; ask an administrator"
                    .to_owned(),
            }),
        }
    }

    /// Audits a refusal made before any slot was taken and returns the error.
    async fn refuse(
        &self,
        session_id: Uuid,
        actor: &Actor,
        site_name: &str,
        client_addr: Option<IpAddr>,
        error: LaunchError,
    ) -> LaunchError {
        if let LaunchError::Storage(_) = error {
            return error;
        }
        tracing::info!(reason = error.code(), "Session launch refused");
        let event = EventBuilder::new(actor.clone(), Action::SessionLaunchFailed)
            .target(crate::sites::audit_target(site_name))
            .session(session_id)
            .client(client_addr)
            .outcome(Outcome::Denied)
            .detail("reason", error.code())
            .detail("message", error.to_string())
            .build();
        match self.deps().audit.append(event).await {
            Ok(_) => error,
            Err(audit_error) => LaunchError::Storage(audit_error),
        }
    }

    /// Checks on a blocking thread that recordings can be written. Returns the reason
    /// when they cannot.
    async fn recorder_preflight(&self) -> Result<(), String> {
        let preflight: RecorderPreflight = self.deps().recorder.clone();
        let lock = self.inner.preflight_lock.clone();
        let checked = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let _serialised = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let storage =
                crate::recordings::open_storage(&preflight.recordings_dir, preflight.s3.as_ref())
                    .map_err(|error| format!("{error:#}"))?;
            let keys: Arc<dyn recorder::KeyStore> = match preflight.shared_keys {
                Some(keys) => keys,
                None => Arc::new(recorder::LocalKeyStore::open(&preflight.keys_dir).map_err(
                    |error| {
                        format!(
                            "recording key directory {}: {error}",
                            preflight.keys_dir.display()
                        )
                    },
                )?),
            };
            recorder::check_writable(storage.as_ref(), keys.as_ref(), &preflight.config)
                .map_err(|error| error.to_string())
        })
        .await;
        match checked {
            Ok(result) => result,
            Err(error) => Err(format!("the pre-flight check failed to run: {error}")),
        }
    }

    async fn audit_recorder_unavailable(&self, session_id: Uuid, site_name: &str, reason: &str) {
        tracing::error!(reason = %reason, "Recorder pre-flight failed; refusing the launch");
        let event = EventBuilder::new(Actor::System("recorder"), Action::RecordingFailed)
            .target(crate::sites::audit_target(site_name))
            .session(session_id)
            .outcome(Outcome::Failure)
            .detail("stage", "preflight")
            .detail("reason", reason)
            .build();
        if let Err(error) = self.deps().audit.append(event).await {
            tracing::error!(
                error = format!("{error:#}"),
                "Cannot record the recorder failure in the audit trail"
            );
        }
    }

    /// Asks the launcher for the workspace and registers its subnet with the egress
    /// proxy, then marks the session running. Runs under the launch gate.
    async fn start_workspace(
        &self,
        session_id: Uuid,
        principal: &Principal,
        site: &Site,
        secret: &AgentSecret,
        actor: &Actor,
    ) -> Result<launcher::LaunchedSession, LaunchError> {
        let request = launcher::LaunchSession {
            session_id,
            owner: principal.user_id.clone(),
            site: site.name.clone(),
            limits: site.limits(),
            start_url: site.start_url.clone(),
            egress_proxy_port: self.config().egress_proxy_port,
            agent_secret_sha256: secret.sha256_hex(),
            allowed_hosts: site.allowed_hosts.clone(),
            extra_ca_certs: site.policy.extra_ca_certs.clone(),
            downloads: (site.policy.downloads == crate::sites::DownloadPolicy::Deliver).then(
                || launcher::DownloadDelivery {
                    max_file_bytes: self.config().download_max_file_bytes,
                },
            ),
        };
        let launched = match self.deps().launcher.launch_session(request).await {
            Ok(launched) => launched,
            Err(error) => {
                let detail = format!("{error}");
                tracing::error!(error = %detail, "Launcher could not start the workspace");
                self.fail_launch(
                    session_id,
                    EndReason::LaunchFailed {
                        detail: detail.clone(),
                    },
                    actor,
                    true,
                )
                .await;
                return Err(LaunchError::WorkspaceFailed { reason: detail });
            }
        };

        let placement = Placement {
            container_id: launched.container_id.clone(),
            container_name: launched.container_name.clone(),
            network_name: launched.network_name.clone(),
            subnet: launched.subnet.to_string(),
            gateway: launched.gateway.to_string(),
            workspace_address: launched.workspace_address.to_string(),
        };
        if let Err(error) = store::store_placement(&self.deps().db, session_id, &placement).await {
            tracing::error!(
                error = format!("{error:#}"),
                "Cannot store the workspace placement"
            );
        }

        let registered = site
            .egress_policy()
            .map_err(|error| error.to_string())
            .and_then(|policy| {
                self.deps()
                    .egress
                    .register(session_id, launched.subnet.into(), policy)
                    .map_err(|error| error.to_string())
            });
        if let Err(detail) = registered {
            tracing::error!(error = %detail, "Cannot register the session with the egress proxy");
            self.fail_launch(
                session_id,
                EndReason::LaunchFailed {
                    detail: format!("egress registration failed: {detail}"),
                },
                actor,
                true,
            )
            .await;
            return Err(LaunchError::WorkspaceFailed {
                reason: format!("egress registration failed: {detail}"),
            });
        }

        match store::mark_running(&self.deps().db, session_id, &placement, self.now_ms()).await {
            Ok(true) => Ok(launched),
            Ok(false) => Err(self.ended_during_launch(session_id, true).await),
            Err(error) => {
                self.fail_launch(
                    session_id,
                    EndReason::LaunchFailed {
                        detail: "the session state could not be stored".to_owned(),
                    },
                    actor,
                    true,
                )
                .await;
                Err(LaunchError::Storage(error))
            }
        }
    }

    /// Ends a session whose launch failed after its reservation, freeing the slot.
    async fn fail_launch(
        &self,
        session_id: Uuid,
        reason: EndReason,
        actor: &Actor,
        contact_launcher: bool,
    ) {
        let failed = EventBuilder::new(actor.clone(), Action::SessionLaunchFailed)
            .session(session_id)
            .outcome(Outcome::Failure)
            .detail("reason", reason.code())
            .detail("message", reason.detail().unwrap_or_default())
            .build();
        if let Err(error) = self.deps().audit.append(failed).await {
            tracing::error!(
                error = format!("{error:#}"),
                "Cannot record the failed launch in the audit trail"
            );
        }
        if let Err(error) = self
            .end_internal(
                session_id,
                reason,
                actor.clone(),
                EndMode::Owner { contact_launcher },
            )
            .await
        {
            tracing::error!(
                error = format!("{error:#}"),
                "Cannot end the session after its failed launch; the reconciler retries at the next start"
            );
        }
    }

    /// Finishes a session that another caller ended while it was launching.
    async fn ended_during_launch(&self, session_id: Uuid, contact_launcher: bool) -> LaunchError {
        if let Err(error) = self.complete_end(session_id, contact_launcher).await {
            return LaunchError::Storage(error);
        }
        let reason = match store::get(&self.deps().db, session_id).await {
            Ok(Some(record)) => record.end_reason.unwrap_or_default(),
            Ok(None) => String::new(),
            Err(error) => return LaunchError::Storage(error),
        };
        tracing::info!(reason = %reason, "Session ended while it was launching");
        LaunchError::EndedDuringLaunch { reason }
    }
}

#[cfg(test)]
mod quota_message_tests {
    use super::LaunchError;

    #[test]
    fn zero_quota_asks_for_an_administrator() {
        let message = LaunchError::QuotaReached { limit: 0 }.to_string();
        assert_eq!(
            message,
            "your quota allows no live sessions; ask an administrator to raise it"
        );
    }

    #[test]
    fn reached_quota_names_the_limit() {
        let message = LaunchError::QuotaReached { limit: 2 }.to_string();
        assert!(message.starts_with("you already have 2 live session(s)"), "{message}");
    }
}
