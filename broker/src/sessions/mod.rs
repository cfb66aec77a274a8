//! Banking sessions: launch, quotas, ending, idle and lifetime limits, reconciliation.
//!
//! [`SessionService`] owns a session's whole life:
//!
//! 1. **reserve**: a slot is taken in the database before any Docker call, atomically
//!    against the person's quota, the site limit and the host limit ([`store::reserve`]);
//! 2. **recorder pre-flight**: [`recorder::check_writable`] on the local recording
//!    store; a failure refuses the launch and no container is created;
//! 3. **agent secret**: 32 random bytes kept in broker memory; the launcher receives
//!    only their SHA-256;
//! 4. **launch** through the launcher socket;
//! 5. **egress**: the session's subnet is registered with the site's policy;
//! 6. **running**: the idle timer starts.
//!
//! Any failure after step 1 ends the session with a reason, unregisters it from the
//! egress proxy, asks the launcher to remove its container and network, and frees the
//! slot. Every ending path ([`EndReason`]) goes through the same steps and appends one
//! `session.ended` audit event.
//!
//! Background work ([`SessionService::spawn_tasks`]): the reaper ends idle and
//! over-age sessions on the [`Clock`](crate::clock::Clock); the reconciler recovers
//! after a restart and then asks the launcher, on a timer, which workspaces died.

mod background;
mod end;
mod end_text;
mod exits;
mod hooks;
mod launch;
mod metrics;
pub mod quota;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{RwLock, broadcast};
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::audit::{Actor, AuditLog};
use crate::clock::Clock;
use crate::config::SessionsConfig;
use crate::db::Database;

pub use background::{ReapReport, RecoveryReport};
pub use end::{EndError, EndOutcome};
pub use end_text::EndReasonTexts;
pub use hooks::StreamHooks;
pub use launch::LaunchError;
pub use store::{SessionRecord, SessionState};

/// Per-session secret with which the broker authenticates to the in-container agent.
/// Its `Debug` output is redacted and its bytes are zeroed on drop.
pub struct AgentSecret(Zeroizing<[u8; 32]>);

impl AgentSecret {
    fn generate() -> AgentSecret {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::fill(&mut bytes[..]);
        AgentSecret(bytes)
    }

    /// The secret bytes, for the agent handshake only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The secret in the form the agent checks: its lowercase hex text.
    pub fn session_secret(&self) -> protocol::SessionSecret {
        protocol::SessionSecret::new(hex::encode(&self.0[..]))
    }

    /// Lowercase hex SHA-256 of the secret's hex text: what the launcher and the agent
    /// receive, equal to [`protocol::SessionSecret::sha256_hex`] of
    /// [`AgentSecret::session_secret`].
    pub fn sha256_hex(&self) -> String {
        self.session_secret().sha256_hex()
    }
}

impl fmt::Debug for AgentSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentSecret(<redacted>)")
    }
}

/// Why a session ended. [`EndReason::code`] is stored and audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The person signed out of the portal.
    Logout,
    /// The person ended the session.
    PersonEnded,
    /// An admin terminated it.
    AdminTerminated,
    /// No person input for the idle timeout.
    IdleTimeout,
    /// The session reached its maximum lifetime.
    MaxLifetime,
    /// The launcher reported the workspace dead; the detail is its sentence.
    WorkspaceExited {
        detail: String,
    },
    /// The recorder could not write; the session must not go on unrecorded.
    RecorderFailed {
        detail: String,
    },
    /// The recorder pre-flight failed, so the launch was refused.
    RecorderUnavailable {
        detail: String,
    },
    /// A launch step failed.
    LaunchFailed {
        detail: String,
    },
    /// The live stream failed for a reason other than the recording, such as an
    /// unreachable agent; the detail is the stream hub's sentence.
    StreamFailed {
        detail: String,
    },
    /// After a broker restart the launcher no longer knew the workspace.
    LostAfterRestart,
    /// After a broker restart the workspace still ran, but the live stream, the
    /// recording and the agent secret had lived in the previous broker process, so the
    /// session could be neither watched nor recorded any more.
    BrokerRestarted,
    /// The broker was stopped (SIGTERM or SIGINT) while the session was live.
    BrokerStopped,
    /// The broker stopped while the session was being launched or ended.
    InterruptedByRestart,
}

impl EndReason {
    pub fn code(&self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::PersonEnded => "ended_by_person",
            EndReason::AdminTerminated => "terminated_by_admin",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::MaxLifetime => "max_lifetime",
            EndReason::WorkspaceExited { .. } => "workspace_exited",
            EndReason::RecorderFailed { .. } => "recorder_failed",
            EndReason::RecorderUnavailable { .. } => "recorder_unavailable",
            EndReason::LaunchFailed { .. } => "launch_failed",
            EndReason::StreamFailed { .. } => "stream_failed",
            EndReason::LostAfterRestart => "lost_after_restart",
            EndReason::InterruptedByRestart => "interrupted_by_restart",
            EndReason::BrokerRestarted => "broker_restarted",
            EndReason::BrokerStopped => "broker_stopped",
        }
    }

    pub fn detail(&self) -> Option<&str> {
        match self {
            EndReason::WorkspaceExited { detail }
            | EndReason::RecorderFailed { detail }
            | EndReason::RecorderUnavailable { detail }
            | EndReason::LaunchFailed { detail }
            | EndReason::StreamFailed { detail } => Some(detail),
            _ => None,
        }
    }
}

/// Where the recorder pre-flight checks that recordings can be written.
#[derive(Debug, Clone)]
pub struct RecorderPreflight {
    pub recordings_dir: PathBuf,
    pub keys_dir: PathBuf,
    pub config: recorder::RecorderConfig,
    /// Set when recordings go to an S3-compatible bucket in place of `recordings_dir`.
    pub s3: Option<crate::config::recordings_s3::RecordingsS3Config>,
    /// A key store kept open across checks, such as Infisical KMS whose client keeps
    /// its access token. `None` opens the local key directory `keys_dir` on each check.
    pub shared_keys: Option<Arc<dyn recorder::KeyStore>>,
}

impl RecorderPreflight {
    /// The local directories from `[sessions]` with the recorder's default settings.
    pub fn from_config(config: &SessionsConfig) -> RecorderPreflight {
        RecorderPreflight {
            recordings_dir: config.recordings_dir.clone(),
            keys_dir: config.recording_keys_dir.clone(),
            config: recorder::RecorderConfig::default(),
            s3: config.recordings_s3.clone(),
            shared_keys: None,
        }
    }
}

/// Something the stream hub tells the people watching a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionNotice {
    /// No input for a while: the session ends at `ends_at_ms` unless the person acts.
    IdleWarning { session_id: Uuid, ends_at_ms: i64 },
    /// The session ended; `reason` is an [`EndReason::code`].
    Ended { session_id: Uuid, reason: String },
}

/// A session that is running, with what the stream hub needs to reach its agent.
#[derive(Debug)]
pub struct LaunchedSession {
    pub session: SessionRecord,
    /// The secret the broker presents to the agent; never logged or stored.
    pub agent_secret: Arc<AgentSecret>,
    /// Address of the workspace container, where the agent listens.
    pub workspace_address: Ipv4Addr,
    /// Egress proxy address configured in the workspace.
    pub proxy_address: SocketAddrV4,
}

/// What the service is built from.
pub struct SessionDeps {
    pub db: Database,
    pub audit: AuditLog,
    pub clock: Arc<dyn Clock>,
    pub launcher: launcher::LauncherClient,
    pub egress: Arc<egress::Registry>,
    pub recorder: RecorderPreflight,
    pub config: SessionsConfig,
    /// The broker's persistent instance id; the launcher labels objects with it too.
    pub instance_id: String,
}

/// The banking-session service. Cheap to clone.
#[derive(Clone)]
pub struct SessionService {
    inner: Arc<Inner>,
}

struct Inner {
    deps: SessionDeps,
    /// Agent secrets of this broker's sessions, by session id.
    secrets: Mutex<HashMap<Uuid, Arc<AgentSecret>>>,
    /// Launches hold it shared from the launcher call until the session is marked
    /// running; reconciliation holds it exclusively, so it never sees a workspace
    /// whose launch finished but whose session is not yet `running` (it would remove
    /// that workspace as an orphan).
    launch_gate: RwLock<()>,
    notices: broadcast::Sender<SessionNotice>,
    /// Launches in progress and stream-hook work; each runs to completion even if its
    /// caller goes away, and shutdown waits for them.
    launches: TaskTracker,
    /// Sessions this process is launching, which recovery must leave alone.
    launching: Mutex<HashSet<Uuid>>,
    /// True once the recovery at start has finished.
    recovered: tokio::sync::watch::Sender<bool>,
    /// Serialises recorder pre-flight checks, which write a probe and read the free
    /// space of the same directory.
    preflight_lock: Arc<Mutex<()>>,
    /// Live streams, stopped with the end reason before a workspace is removed.
    streams: std::sync::OnceLock<crate::stream::StreamHub>,
}

impl SessionService {
    pub fn new(deps: SessionDeps) -> SessionService {
        let (notices, _) = broadcast::channel(256);
        SessionService {
            inner: Arc::new(Inner {
                deps,
                secrets: Mutex::new(HashMap::new()),
                launch_gate: RwLock::new(()),
                notices,
                launches: TaskTracker::new(),
                launching: Mutex::new(HashSet::new()),
                recovered: tokio::sync::watch::Sender::new(false),
                preflight_lock: Arc::new(Mutex::new(())),
                streams: std::sync::OnceLock::new(),
            }),
        }
    }

    fn deps(&self) -> &SessionDeps {
        &self.inner.deps
    }

    fn now_ms(&self) -> i64 {
        self.deps().clock.now().timestamp_millis()
    }

    pub fn config(&self) -> &SessionsConfig {
        &self.deps().config
    }

    /// Returns the sentences that pages and the viewer show for end reasons.
    pub fn end_texts(&self) -> EndReasonTexts {
        EndReasonTexts::new(self.config())
    }

    /// Notices for the stream hub: idle warnings and ends.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionNotice> {
        self.inner.notices.subscribe()
    }

    fn notify(&self, notice: SessionNotice) {
        // Without a subscribed viewer there is no receiver, and the notice is dropped.
        drop(self.inner.notices.send(notice));
    }

    /// Returns the agent secret of a session launched by this broker process.
    ///
    /// Secrets live only in memory, so recovery after a broker restart ends every
    /// session that outlived the previous process.
    pub fn agent_secret(&self, session_id: Uuid) -> Option<Arc<AgentSecret>> {
        self.inner
            .secrets
            .lock()
            .expect("secret map lock")
            .get(&session_id)
            .cloned()
    }

    pub async fn get(&self, session_id: Uuid) -> anyhow::Result<Option<SessionRecord>> {
        store::get(&self.deps().db, session_id).await
    }

    /// Returns a session if `principal` may see it: its owner, an auditor or an admin.
    pub async fn get_for(
        &self,
        principal: &crate::auth::Principal,
        session_id: Uuid,
    ) -> anyhow::Result<Option<SessionRecord>> {
        let record = self.get(session_id).await?;
        Ok(record.filter(|record| record.user_id == principal.user_id || principal.can_audit()))
    }

    /// Lists the principal's own sessions, live and ended, newest first (at most 100).
    pub async fn list_for(
        &self,
        principal: &crate::auth::Principal,
    ) -> anyhow::Result<Vec<SessionRecord>> {
        store::list_for_user(&self.deps().db, &principal.user_id, 100).await
    }

    /// Lists every live session on every broker for auditors and admins, and returns
    /// `None` for anyone else.
    pub async fn list_live_all(
        &self,
        principal: &crate::auth::Principal,
    ) -> anyhow::Result<Option<Vec<SessionRecord>>> {
        if !principal.can_audit() {
            return Ok(None);
        }
        store::list_live_all(&self.deps().db).await.map(Some)
    }

    /// Resets the idle timer. Call it only for real keyboard, mouse or wheel input from
    /// a viewer, never for pings, frames or reconnects. Returns false when the session
    /// is not running.
    pub async fn record_input(&self, session_id: Uuid) -> anyhow::Result<bool> {
        store::record_input(&self.deps().db, session_id, self.now_ms()).await
    }

    /// Returns the quota that applies to a person: their own, or `sessions.default_quota`.
    pub async fn quota_for(&self, user_id: &str) -> anyhow::Result<u32> {
        let own = store::get_quota(&self.deps().db, user_id).await?;
        Ok(own.unwrap_or(self.config().default_quota))
    }

    /// Sets a person's quota. Only admins may; the change is audited with both values.
    pub async fn set_quota(
        &self,
        admin: &crate::auth::Principal,
        user_id: &str,
        max_sessions: u32,
    ) -> Result<(), QuotaError> {
        use crate::audit::{Action, EventBuilder, Outcome};
        use crate::auth::Role;

        if !admin.has(Role::Admin) {
            let event =
                EventBuilder::new(Actor::Person(admin.user_id.clone()), Action::QuotaChanged)
                    .target(user_id)
                    .outcome(Outcome::Denied)
                    .detail("max_sessions", max_sessions)
                    .build();
            self.deps()
                .audit
                .append(event)
                .await
                .map_err(QuotaError::Storage)?;
            return Err(QuotaError::NotAllowed);
        }

        let previous = self.quota_for(user_id).await.map_err(QuotaError::Storage)?;
        store::set_quota(
            &self.deps().db,
            user_id,
            max_sessions,
            &actor_text(&Actor::Person(admin.user_id.clone())),
            self.now_ms(),
        )
        .await
        .map_err(QuotaError::Storage)?;
        let event = EventBuilder::new(Actor::Person(admin.user_id.clone()), Action::QuotaChanged)
            .target(user_id)
            .detail("previous", previous)
            .detail("max_sessions", max_sessions)
            .build();
        self.deps()
            .audit
            .append(event)
            .await
            .map_err(QuotaError::Storage)?;
        tracing::info!(user.id = %user_id, previous, max_sessions, admin.id = %admin.user_id, "Session quota changed");
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("only admins may change session quotas")]
    NotAllowed,
    #[error("cannot store the session quota")]
    Storage(#[source] anyhow::Error),
}

/// The stored form of an actor, as in the audit trail.
fn actor_text(actor: &Actor) -> String {
    match actor {
        Actor::Person(id) => format!("user:{id}"),
        Actor::System(component) => format!("system:{component}"),
        Actor::Anonymous => "anonymous".to_owned(),
    }
}

/// Components that end sessions, so that a stored `system:NAME` maps back to an actor.
const SYSTEM_COMPONENTS: &[&str] = &[
    "sessions",
    "reaper",
    "reconciler",
    "recorder",
    "launcher",
    "recovery",
    "auth",
];

fn actor_from_text(text: &str) -> Actor {
    if let Some(id) = text.strip_prefix("user:") {
        return Actor::Person(id.to_owned());
    }
    if let Some(name) = text.strip_prefix("system:") {
        let component = SYSTEM_COMPONENTS
            .iter()
            .find(|known| **known == name)
            .copied()
            .unwrap_or("sessions");
        return Actor::System(component);
    }
    Actor::Anonymous
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_secret_debug_is_redacted() {
        let secret = AgentSecret::generate();
        let shown = format!("{secret:?}");

        assert_eq!(shown, "AgentSecret(<redacted>)");
        assert!(!shown.contains(&hex::encode(secret.expose())));
    }

    #[test]
    fn agent_secret_hash_is_sha256_hex() {
        let secret = AgentSecret::generate();
        let hash = secret.sha256_hex();

        assert_eq!(hash.len(), 64);
        assert_ne!(hash, hex::encode(secret.expose()));
        assert_eq!(hash, secret.session_secret().sha256_hex());
        let expected = protocol::parse_sha256_hex(&hash).unwrap();
        assert!(secret.session_secret().matches_sha256(&expected));
    }

    #[test]
    fn actor_text_round_trips() {
        for actor in [
            Actor::Person("alice".to_owned()),
            Actor::System("reaper"),
            Actor::System("reconciler"),
        ] {
            assert_eq!(actor_from_text(&actor_text(&actor)), actor);
        }
    }
}
