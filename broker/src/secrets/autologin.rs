//! Auto-login at launch: fetches a site's credential and has the workspace agent type
//! it, following the site's recipe.
//!
//! The order protects the bank account. The credential is claimed first
//! ([`super::usage::claim`]), so a locked credential is never fetched and an exclusive
//! one is never used by two sessions. Then it is fetched through the
//! [`CredentialVault`], which audits the retrieval. The agent receives the values only
//! over its authenticated channel, together with the origins they may be typed into,
//! and the broker drops its copy once the message is queued. Every result updates the
//! failure count, and the failure that reaches the site's limit locks the credential.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::usage::{self, ClaimRejected};
use super::{CredentialRef, CredentialVault};
use crate::audit::{Action, Actor, AuditLog, EventBuilder, Outcome};
use crate::db::Database;
use crate::sessions::{EndReason, SessionService};
use crate::sites::{CredentialSourceKind, LoginSettings, Site};
use crate::stream::LiveStream;
use crate::tasks::TaskRegistry;

/// Time the agent gets on top of the recipe's step timeouts to connect and report.
const RESULT_MARGIN: Duration = Duration::from_secs(90);

/// Notice shown to the person while the login runs.
const RUNNING_NOTICE: &str =
    "Signing you in to the bank. The screen is hidden while credentials are typed.";

/// Result of an auto-login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoLoginOutcome {
    /// The site has no recipe.
    NotConfigured,
    Succeeded,
    /// The recipe ran up to its `hand_over` step; the person continues.
    HandedOver,
    /// The agent reported a failed step, or no result in time. The session goes on
    /// without auto-login.
    Failed {
        reason: String,
    },
    /// The site rejected the typed sign-in details: it showed its login form again.
    /// The session goes on without auto-login, and nothing is retried, because each
    /// attempt with the same details counts toward the bank's own lockout.
    SignInRejected {
        reason: String,
    },
    /// The credential could not be used: locked, in use, or not readable. The session
    /// must end; `person_message` explains why without internal detail.
    Rejected {
        person_message: String,
        detail: String,
    },
}

/// Runs auto-logins for launched sessions.
#[derive(Clone)]
pub struct AutoLoginService {
    db: Database,
    vault: CredentialVault,
    audit: AuditLog,
    tasks: TaskRegistry,
}

/// The session an auto-login runs for.
pub struct LoginTarget<'a> {
    pub session_id: Uuid,
    pub user_id: &'a str,
    pub site: &'a str,
    pub login: &'a LoginSettings,
}

impl AutoLoginService {
    pub fn new(
        db: Database,
        vault: CredentialVault,
        audit: AuditLog,
        tasks: TaskRegistry,
    ) -> AutoLoginService {
        AutoLoginService {
            db,
            vault,
            audit,
            tasks,
        }
    }

    /// Runs the auto-login of a just-started session in a tracked task. A rejected
    /// credential ends the session; a failed login leaves it to the person.
    pub fn spawn(
        &self,
        stream: Arc<LiveStream>,
        sessions: SessionService,
        user_id: String,
        site: Site,
    ) {
        if site.login.recipe.is_none() {
            return;
        }
        let service = self.clone();
        self.tasks.spawn("auto-login", async move {
            let target = LoginTarget {
                session_id: stream.session_id,
                user_id: &user_id,
                site: &site.name,
                login: &site.login,
            };
            let outcome = service.run(&stream, &target).await;
            if let Some(message) = person_message(&outcome) {
                stream.notify(message);
            }
            if let AutoLoginOutcome::Rejected { detail, .. } = outcome {
                let reason = EndReason::LaunchFailed {
                    detail: format!("auto-login rejected: {detail}"),
                };
                if let Err(error) = sessions
                    .end(stream.session_id, reason, Actor::System("auto-login"))
                    .await
                {
                    tracing::error!(session.id = %stream.session_id, error = %error, "Cannot end a session whose credential was rejected");
                }
            }
        });
    }

    /// Runs the site's login recipe in `stream`'s workspace and waits for the result.
    #[tracing::instrument(skip_all, fields(session.id = %target.session_id, site = target.site))]
    pub async fn run(
        &self,
        stream: &Arc<LiveStream>,
        target: &LoginTarget<'_>,
    ) -> AutoLoginOutcome {
        let Some(recipe) = &target.login.recipe else {
            return AutoLoginOutcome::NotConfigured;
        };
        let reference = match credential_reference(target) {
            Ok(reference) => reference,
            Err(detail) => {
                return rejected("auto-login is not set up correctly for this site", detail);
            }
        };

        let exclusive = target.login.exclusive_use
            && target.login.credential_source == CredentialSourceKind::Shared;
        match usage::claim(&self.db, &reference, target.session_id, exclusive, now_ms()).await {
            Ok(Ok(())) => {}
            Ok(Err(refusal)) => {
                let person_message = match refusal {
                    ClaimRejected::Locked { .. } => {
                        "auto-login for this bank is locked after failed attempts; ask an administrator"
                    }
                    ClaimRejected::InUse { .. } => {
                        "the bank login is in use by another session; try again when it has ended"
                    }
                };
                return rejected(person_message, refusal.to_string());
            }
            Err(error) => return rejected("auto-login is unavailable", format!("{error:#}")),
        }

        let actor = Actor::Person(target.user_id.to_owned());
        let credentials = match self
            .vault
            .fetch(&reference, actor, Some(target.session_id))
            .await
        {
            Ok(credentials) => credentials,
            // The vault logged and audited the precise error.
            Err(error) => {
                return rejected(
                    "the bank credentials could not be read; an administrator can see why in the audit trail",
                    error.to_string(),
                );
            }
        };
        if recipe.needs_totp() && credentials.totp_seed.is_none() {
            return rejected(
                "auto-login is not set up correctly for this site",
                format!(
                    "the recipe types a one-time code, but {reference} has no TOTP seed; store one"
                ),
            );
        }

        let login_id = rand::random::<u64>();
        let origins = target.login.credential_origins.clone();
        let unix_seconds = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let message = protocol::BrokerMessage::AutoLogin(protocol::AutoLogin {
            login_id,
            steps: recipe.agent_steps(),
            // NOTE: the one-time code is computed when the message is queued. An agent
            // that reaches the code step more than a TOTP period later types a stale code,
            // which the bank rejects and the failure count records.
            credentials: credentials.to_protocol(unix_seconds),
            allowed_origins: protocol::AllowedOrigins {
                username: origins.clone(),
                password: origins.clone(),
                totp: origins,
            },
        });
        drop(credentials);
        self.audit_attempt(target, &reference, login_id).await;
        stream.notify(RUNNING_NOTICE);
        if !stream.send_to_agent(message) {
            return self
                .record_failure(
                    target,
                    &reference,
                    "the workspace link is gone or busy".to_owned(),
                )
                .await;
        }

        let step_total_ms: u64 = recipe
            .agent_steps()
            .iter()
            .map(|step| u64::from(step.timeout_ms()))
            .sum();
        let deadline = Duration::from_millis(step_total_ms) + RESULT_MARGIN;
        let result = tokio::time::timeout(deadline, stream.login_finished(login_id)).await;
        match result {
            Ok(Some(result)) if result.success => {
                self.record_success(&reference, target).await;
                match recipe.hand_over_message() {
                    Some(message) => {
                        stream.notify(message);
                        AutoLoginOutcome::HandedOver
                    }
                    None => {
                        stream.notify("Signed in.");
                        AutoLoginOutcome::Succeeded
                    }
                }
            }
            Ok(Some(result)) => {
                let reason = result
                    .reason
                    .unwrap_or_else(|| "the agent gave no reason".to_owned());
                let outcome = self.record_failure(target, &reference, reason).await;
                match (result.failure, outcome) {
                    (
                        Some(protocol::LoginFailure::Rejected),
                        AutoLoginOutcome::Failed { reason },
                    ) => AutoLoginOutcome::SignInRejected { reason },
                    (_, outcome) => outcome,
                }
            }
            Ok(None) => AutoLoginOutcome::Failed {
                reason: "the session ended before the auto-login finished".to_owned(),
            },
            Err(_) => {
                self.record_failure(
                    target,
                    &reference,
                    format!(
                        "no result from the workspace within {} s",
                        deadline.as_secs()
                    ),
                )
                .await
            }
        }
    }

    async fn audit_attempt(
        &self,
        target: &LoginTarget<'_>,
        reference: &CredentialRef,
        login_id: u64,
    ) {
        let event = EventBuilder::new(Actor::System("auto-login"), Action::AutoLoginAttempted)
            .session(target.session_id)
            .target(reference.audit_target())
            .detail("login_id", login_id)
            .build();
        if let Err(error) = self.audit.append(event).await {
            tracing::error!(
                error = format!("{error:#}"),
                "Cannot record the auto-login attempt"
            );
        }
    }

    async fn record_success(&self, reference: &CredentialRef, target: &LoginTarget<'_>) {
        let recorded = usage::record_login(
            &self.db,
            reference,
            true,
            target.login.max_failed_logins,
            now_ms(),
        )
        .await;
        if let Err(error) = recorded {
            tracing::error!(
                error = format!("{error:#}"),
                "Cannot reset the failed login count"
            );
        }
    }

    /// Counts a failed auto-login and locks the credential at the site's limit. The
    /// failure is counted even when its cause is unclear, because the bank may have
    /// seen the attempt.
    async fn record_failure(
        &self,
        target: &LoginTarget<'_>,
        reference: &CredentialRef,
        reason: String,
    ) -> AutoLoginOutcome {
        tracing::warn!(reason = reason.as_str(), "Auto-login failed");
        let max_failed = target.login.max_failed_logins;
        match usage::record_login(&self.db, reference, false, max_failed, now_ms()).await {
            Ok(record) if record.locked_now => {
                let event =
                    EventBuilder::new(Actor::System("auto-login"), Action::CredentialLocked)
                        .session(target.session_id)
                        .target(reference.audit_target())
                        .outcome(Outcome::Failure)
                        .detail("failed_logins", record.failed_logins)
                        .detail("reason", reason.clone())
                        .build();
                if let Err(error) = self.audit.append(event).await {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "Cannot record the credential lock"
                    );
                }
                tracing::warn!(failed_logins = record.failed_logins, "Credential locked");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "Cannot count the failed login"
                );
            }
        }
        AutoLoginOutcome::Failed { reason }
    }
}

/// Returns the notice for the person after an auto-login that did not succeed.
pub fn person_message(outcome: &AutoLoginOutcome) -> Option<String> {
    match outcome {
        AutoLoginOutcome::Failed { .. } => Some(
            "Auto-login did not complete. Nothing more will be typed; sign in yourself or end the session."
                .to_owned(),
        ),
        AutoLoginOutcome::SignInRejected { .. } => Some(
            "Auto-login stopped: the bank rejected the stored sign-in details; an administrator must update them. Nothing more will be typed; sign in yourself or end the session."
                .to_owned(),
        ),
        AutoLoginOutcome::Rejected { person_message, .. } => Some(format!("Auto-login stopped: {person_message}.")),
        _ => None,
    }
}

fn credential_reference(target: &LoginTarget<'_>) -> Result<CredentialRef, String> {
    let reference = match target.login.credential_source {
        CredentialSourceKind::Shared => CredentialRef::shared(target.site),
        CredentialSourceKind::PerPerson => CredentialRef::personal(target.site, target.user_id),
    };
    reference.map_err(|error| error.to_string())
}

fn rejected(person_message: &str, detail: String) -> AutoLoginOutcome {
    tracing::warn!(detail = detail.as_str(), "Auto-login rejected");
    AutoLoginOutcome::Rejected {
        person_message: person_message.to_owned(),
        detail,
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
