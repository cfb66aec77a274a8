//! Data and changes behind the admin API and pages, independent of the output format.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use super::problem::Problem;
use crate::audit::{Action, Actor, EventBuilder, Outcome};
use crate::auth::{Principal, Role, users};
use crate::config::secrets::SecretsConfig;
use crate::config::{Config, DatabaseTarget};
use crate::http::AppState;
use crate::sessions::{EndReason, SessionState};

/// Highest per-person session quota an admin may set, the same in the console, the API
/// and `strongroom quota set`.
pub use crate::sessions::quota::MAX_QUOTA;
/// Maximum length of a termination reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// How long one health check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// A refused or failed admin operation.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AdminError {
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the problem shown to the caller. An internal error is logged here and
    /// shown without its text.
    pub fn to_problem(&self) -> Problem {
        match self {
            AdminError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "Admin request failed");
                Problem::new(
                    self.status(),
                    "internal error; the details are in the broker's log",
                )
            }
            other => Problem::new(other.status(), other.to_string()),
        }
    }
}

impl axum::response::IntoResponse for AdminError {
    fn into_response(self) -> axum::response::Response {
        self.to_problem().into_response()
    }
}

/// A person with their roles, quota and granted sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PersonView {
    pub id: String,
    /// Sign-in name of a local account; absent for people from the identity provider.
    pub username: Option<String>,
    pub display_name: String,
    /// `local` or `oidc`.
    pub source: String,
    /// Role names: `user`, `auditor`, `admin`.
    pub roles: Vec<String>,
    /// Live sessions the person may have at once.
    pub quota: u32,
    /// Whether `quota` is `sessions.default_quota` rather than the person's own.
    pub quota_is_default: bool,
    pub granted_sites: Vec<String>,
    pub created_at_ms: i64,
}

pub async fn person(state: &AppState, user: &users::UserRecord) -> anyhow::Result<PersonView> {
    let own = crate::sessions::store::get_quota(&state.db, &user.id).await?;
    let default = state.portal.sessions.config().default_quota;
    Ok(PersonView {
        id: user.id.clone(),
        username: user.username.clone(),
        display_name: user.display_name.clone(),
        source: user.source.clone(),
        roles: user
            .roles
            .iter()
            .map(|role| role.as_str().to_owned())
            .collect(),
        quota: own.unwrap_or(default),
        quota_is_default: own.is_none(),
        granted_sites: crate::sites::grants_for(&state.db, &user.id).await?,
        created_at_ms: user.created_at_ms,
    })
}

pub async fn people(state: &AppState) -> anyhow::Result<Vec<PersonView>> {
    let mut views = Vec::new();
    for user in users::list(&state.db).await? {
        views.push(person(state, &user).await?);
    }
    Ok(views)
}

async fn find_person(state: &AppState, id: &str) -> Result<users::UserRecord, AdminError> {
    users::find_by_id(&state.db, id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no person with id {id:?}")))
}

/// New roles for a person.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RolesChange {
    /// Role names: `user`, `auditor`, `admin`. An empty list removes all access.
    pub roles: Vec<String>,
}

/// Replaces a local account's roles. People from the identity provider get their
/// roles from its groups at every sign-in, so their roles are not changed here. An
/// admin cannot remove their own admin role, so that the console keeps an admin.
pub async fn set_roles(
    state: &AppState,
    admin: &Principal,
    client: Option<IpAddr>,
    user_id: &str,
    change: &RolesChange,
) -> Result<PersonView, AdminError> {
    let mut roles = BTreeSet::new();
    for name in &change.roles {
        let role = Role::parse(name).ok_or_else(|| {
            AdminError::Invalid(format!(
                "invalid role {name:?}; use \"user\", \"auditor\" or \"admin\""
            ))
        })?;
        roles.insert(role);
    }
    let user = find_person(state, user_id).await?;
    if user.source != users::UserSource::Local.as_str() {
        return Err(AdminError::Conflict(format!(
            "the roles of {} come from the identity provider's groups; change the groups there",
            user.display_name
        )));
    }
    if user.id == admin.user_id && !roles.contains(&Role::Admin) {
        return Err(AdminError::Conflict(
            "you cannot remove your own admin role; ask another admin".to_owned(),
        ));
    }

    let now_ms = chrono::Utc::now().timestamp_millis();
    users::set_roles(&state.db, &user.id, &roles, now_ms).await?;
    let event = EventBuilder::new(Actor::Person(admin.user_id.clone()), Action::RoleChanged)
        .target(format!("user:{}", user.id))
        .client(client)
        .detail("previous", users::encode_roles(&user.roles))
        .detail("roles", users::encode_roles(&roles))
        .build();
    state.audit.append(event).await?;
    tracing::info!(user.id = %user.id, admin.id = %admin.user_id, roles = users::encode_roles(&roles), "Roles changed");

    let updated = find_person(state, user_id).await?;
    Ok(person(state, &updated).await?)
}

/// A person's new session quota.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct QuotaChange {
    /// Live sessions the person may have at once, 0 to 1000.
    pub max_sessions: u32,
}

/// Sets a person's quota; the session service audits the change with both values.
pub async fn set_quota(
    state: &AppState,
    admin: &Principal,
    user_id: &str,
    change: &QuotaChange,
) -> Result<PersonView, AdminError> {
    if change.max_sessions > MAX_QUOTA {
        return Err(AdminError::Invalid(format!(
            "invalid quota {}; use 0 to {MAX_QUOTA}",
            change.max_sessions
        )));
    }
    let user = find_person(state, user_id).await?;
    state
        .portal
        .sessions
        .set_quota(admin, &user.id, change.max_sessions)
        .await
        .map_err(|error| match error {
            crate::sessions::QuotaError::NotAllowed => {
                AdminError::Conflict("only admins may change session quotas".to_owned())
            }
            crate::sessions::QuotaError::Storage(error) => AdminError::Internal(error),
        })?;
    Ok(person(state, &user).await?)
}

/// A site of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SiteView {
    pub name: String,
    pub display_name: String,
    pub start_url: String,
    pub allowed_hosts: Vec<String>,
    pub allowed_private_ranges: Vec<String>,
    pub allowed_ports: Vec<u16>,
    /// Live sessions of this site at once, all people together; absent for no limit.
    pub max_sessions: Option<u32>,
    pub recording_retention_days: u32,
    pub enabled: bool,
    pub updated_at_ms: i64,
}

pub async fn sites(state: &AppState) -> anyhow::Result<Vec<SiteView>> {
    let sites = crate::sites::list(&state.db).await?;
    Ok(sites
        .into_iter()
        .map(|site| SiteView {
            name: site.name.clone(),
            display_name: site.display_name.clone(),
            start_url: site.start_url.clone(),
            allowed_hosts: site.allowed_hosts.clone(),
            allowed_private_ranges: site
                .allowed_private_ranges
                .iter()
                .map(ToString::to_string)
                .collect(),
            allowed_ports: site.allowed_ports.clone(),
            max_sessions: site.max_sessions,
            recording_retention_days: site.recording_retention_days,
            enabled: site.enabled,
            updated_at_ms: site.updated_at_ms,
        })
        .collect())
}

/// A banking session, without its workspace's network details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub id: Uuid,
    pub user_id: String,
    pub site: String,
    /// `reserved`, `starting`, `running`, `ending` or `ended`.
    pub state: String,
    pub client_addr: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    /// Last real person input; the idle timer counts from here.
    pub last_input_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub end_reason: Option<String>,
    pub ended_by: Option<String>,
}

impl From<crate::sessions::SessionRecord> for SessionView {
    fn from(record: crate::sessions::SessionRecord) -> SessionView {
        SessionView {
            id: record.id,
            user_id: record.user_id,
            site: record.site,
            state: record.state.as_str().to_owned(),
            client_addr: record.client_addr,
            created_at_ms: record.created_at_ms,
            started_at_ms: record.started_at_ms,
            last_input_at_ms: record.last_input_at_ms,
            ended_at_ms: record.ended_at_ms,
            end_reason: record.end_reason,
            ended_by: record.ended_by,
        }
    }
}

pub async fn live_sessions(state: &AppState) -> anyhow::Result<Vec<SessionView>> {
    let records = crate::sessions::store::list_live_all(&state.db).await?;
    Ok(records.into_iter().map(SessionView::from).collect())
}

/// The reason an admin gives for terminating a session.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Termination {
    /// Shown in the audit trail; 1 to 500 characters.
    pub reason: String,
}

/// Ends a live session on an admin's request. The reason is audited as
/// `admin.session.terminated` before the session ends with `terminated_by_admin`.
pub async fn terminate(
    state: &AppState,
    admin: &Principal,
    client: Option<IpAddr>,
    session_id: Uuid,
    termination: &Termination,
) -> Result<SessionView, AdminError> {
    let reason = termination.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(AdminError::Invalid(format!(
            "invalid reason: give 1 to {MAX_REASON_CHARS} characters saying why the session is terminated"
        )));
    }
    let record = state
        .portal
        .sessions
        .get(session_id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no session with id {session_id}")))?;
    if record.state == SessionState::Ended {
        return Err(AdminError::Conflict(format!(
            "session {session_id} already ended ({})",
            record.end_reason.as_deref().unwrap_or("no reason stored")
        )));
    }

    let actor = Actor::Person(admin.user_id.clone());
    let event = EventBuilder::new(actor.clone(), Action::SessionTerminated)
        .target(format!("user:{}", record.user_id))
        .session(session_id)
        .client(client)
        .detail("reason", reason)
        .build();
    state.audit.append(event).await?;
    tracing::info!(session.id = %session_id, admin.id = %admin.user_id, "Admin terminates a session");

    let outcome = state
        .portal
        .sessions
        .end(session_id, EndReason::AdminTerminated, actor)
        .await;
    match outcome {
        Ok(_) | Err(crate::sessions::EndError::NotFound(_)) => {}
        Err(error) => return Err(AdminError::Internal(anyhow::Error::new(error))),
    }
    let record = state
        .portal
        .sessions
        .get(session_id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no session with id {session_id}")))?;
    Ok(record.into())
}

/// A bank credential in the local encrypted store: where it applies, never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StoredCredentialView {
    pub site: String,
    /// The person it belongs to; absent for the site's shared credential.
    pub user_id: Option<String>,
    pub has_totp_seed: bool,
    pub updated_by: String,
    pub updated_at_ms: i64,
}

/// An account or client address locked out of sign-in after failed attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SignInLockView {
    /// The username or client address, as the throttle keys it.
    pub scope: String,
    pub failures: i64,
    pub locked_until_ms: i64,
}

/// Stored bank credentials and current sign-in lockouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CredentialsView {
    /// `local` or `infisical`.
    pub source: String,
    /// Credentials in the local store; empty when the source is Infisical, whose
    /// contents the broker does not list.
    pub stored: Vec<StoredCredentialView>,
    pub locked_sign_ins: Vec<SignInLockView>,
}

pub async fn credentials(state: &AppState, config: &Config) -> anyhow::Result<CredentialsView> {
    let source = match config.secrets {
        SecretsConfig::Local => "local",
        SecretsConfig::Infisical(_) => "infisical",
    };
    let rows = sqlx::query(
        "SELECT site, user_id, totp_seed IS NOT NULL AS has_totp, updated_by, updated_at_ms FROM credentials ORDER BY site, user_id",
    )
    .fetch_all(state.db.pool())
    .await
    .context("cannot list stored credentials")?;
    let mut stored = Vec::new();
    for row in &rows {
        let user_id: String = row.try_get("user_id")?;
        let has_totp: bool = match row.try_get::<bool, _>("has_totp") {
            Ok(value) => value,
            Err(_) => row.try_get::<i64, _>("has_totp")? != 0,
        };
        stored.push(StoredCredentialView {
            site: row.try_get("site")?,
            user_id: (!user_id.is_empty()).then_some(user_id),
            has_totp_seed: has_totp,
            updated_by: row.try_get("updated_by")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
        });
    }

    let now_ms = chrono::Utc::now().timestamp_millis();
    let rows = sqlx::query(
        "SELECT scope, failures, locked_until_ms FROM sign_in_throttle WHERE locked_until_ms > $1 ORDER BY scope",
    )
    .bind(now_ms)
    .fetch_all(state.db.pool())
    .await
    .context("cannot list sign-in lockouts")?;
    let locked_sign_ins = rows
        .iter()
        .map(|row| {
            Ok(SignInLockView {
                scope: row.try_get("scope")?,
                failures: row.try_get("failures")?,
                locked_until_ms: row.try_get("locked_until_ms")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("cannot decode a sign-in lockout")?;

    Ok(CredentialsView {
        source: source.to_owned(),
        stored,
        locked_sign_ins,
    })
}

/// Builds a view of the configuration in effect. Secrets appear only as references
/// (`env:NAME`, `file:PATH`), and a password inside the database URL is masked.
pub fn config_view(config: &Config) -> serde_json::Value {
    let database = match &config.database.target {
        DatabaseTarget::Sqlite { path } => serde_json::json!({
            "backend": "sqlite",
            "path": path.display().to_string(),
        }),
        DatabaseTarget::Postgres { url, password } => serde_json::json!({
            "backend": "postgres",
            "url": mask_url_password(url),
            "password": password.as_ref().map(ToString::to_string),
        }),
    };
    let oidc = config.auth.oidc.as_ref().map(|oidc| {
        serde_json::json!({
            "issuer": oidc.issuer,
            "client_id": oidc.client_id,
            "client_secret": oidc.client_secret.to_string(),
            "redirect_url": oidc.redirect_url,
            "scopes": oidc.scopes,
            "mfa_methods": oidc.mfa_methods,
            "max_auth_age_seconds": oidc.max_auth_age.as_secs(),
            "groups": {
                "admin": oidc.groups.admin,
                "auditor": oidc.groups.auditor,
                "user": oidc.groups.user,
            },
        })
    });
    let secrets = match &config.secrets {
        SecretsConfig::Local => serde_json::json!({ "source": "local" }),
        SecretsConfig::Infisical(infisical) => serde_json::json!({
            "source": "infisical",
            "url": infisical.url,
            "client_id": infisical.client_id,
            "client_secret": infisical.client_secret.to_string(),
            "project_id": infisical.project_id,
            "environment": infisical.environment,
            "secret_path_prefix": infisical.secret_path_prefix,
            "ca_cert": infisical.ca_cert.as_ref().map(|path| path.display().to_string()),
        }),
    };
    let sessions = &config.sessions;
    serde_json::json!({
        "data_dir": config.data_dir.display().to_string(),
        "server": {
            "listen": config.server.listen.to_string(),
            "public_url": config.server.public_url.as_ref().map(url::Url::as_str),
            "trusted_proxies": config.server.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "database": database,
        "auth": {
            "local": config.auth.local,
            "session_idle_seconds": config.auth.session_idle.as_secs(),
            "session_max_seconds": config.auth.session_max.as_secs(),
            "oidc": oidc,
        },
        "sessions": {
            "default_quota": sessions.default_quota,
            "host_max_sessions": sessions.host_max_sessions,
            "idle_timeout_seconds": sessions.idle_timeout.as_secs(),
            "max_lifetime_seconds": sessions.max_lifetime.as_secs(),
            "recordings_dir": sessions.recordings_dir.display().to_string(),
            "recording_keys_dir": sessions.recording_keys_dir.display().to_string(),
            "egress_proxy_port": sessions.egress_proxy_port,
        },
        "launcher": {
            "mode": format!("{:?}", config.launcher.mode).to_lowercase(),
            "image": config.launcher.config.image,
            "subnet_range": config.launcher.config.subnet_range.to_string(),
        },
        "secrets": secrets,
        "audit": { "retention_days": config.audit.retention_days },
    })
}

/// Replaces the password of `scheme://user:password@host/...` with `***`.
fn mask_url_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => match parsed.set_password(Some("***")) {
            Ok(()) => parsed.to_string(),
            Err(()) => "(a URL with a password, not shown)".to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// One health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
    /// The finding: the problem and its fix, or a short description.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HealthView {
    pub healthy: bool,
    pub checks: Vec<HealthCheck>,
}

/// Runs the readiness checks (database, Docker engine, workspace image, host firewall
/// rules) and the console's own: recording store, keys, identity provider and secret
/// store.
pub async fn health(state: &AppState, config: &Config) -> HealthView {
    let mut checks = Vec::new();
    for check in state.readiness.iter() {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("timed out after {} s", CHECK_TIMEOUT.as_secs())),
        };
        checks.push(HealthCheck {
            name: check.name().to_owned(),
            ok: outcome.is_ok(),
            detail: outcome.err().unwrap_or_else(|| "ok".to_owned()),
        });
    }
    checks.push(image_age(config).await);
    checks.push(recording_store(config).await);
    checks.push(keys(config, &state.admin.signing_key.public_key_hex()));
    checks.push(identity_provider(config));
    checks.push(secret_store(config));
    HealthView {
        healthy: checks.iter().all(|check| check.ok),
        checks,
    }
}

/// Age past which the workspace image counts as stale: Debian security updates reach
/// it only through `strongroom image build --refresh`.
pub const MAX_IMAGE_AGE_DAYS: i64 = 30;

async fn image_age(config: &Config) -> HealthCheck {
    let client = launcher::LauncherClient::new(config.sessions.launcher_socket.clone())
        .with_timeout(CHECK_TIMEOUT);
    let (ok, detail) = match client.health().await {
        Err(error) => (false, format!("launcher unreachable: {error}")),
        Ok(report) => match report
            .image_created
            .as_deref()
            .map(chrono::DateTime::parse_from_rfc3339)
        {
            Some(Ok(created)) => {
                let days = (chrono::Utc::now() - created.with_timezone(&chrono::Utc)).num_days();
                if days > MAX_IMAGE_AGE_DAYS {
                    (
                        false,
                        format!(
                            "workspace image {} was built {days} days ago ({created}); rebuild it with `strongroom image build --refresh`",
                            report.image
                        ),
                    )
                } else {
                    (
                        true,
                        format!(
                            "workspace image {} was built {days} days ago ({created})",
                            report.image
                        ),
                    )
                }
            }
            Some(Err(_)) | None => (
                false,
                format!(
                    "the engine reports no creation time for workspace image {}",
                    report.image
                ),
            ),
        },
    };
    HealthCheck {
        name: "workspace_image_age".to_owned(),
        ok,
        detail,
    }
}

async fn recording_store(config: &Config) -> HealthCheck {
    let recordings = config.sessions.recordings_dir.clone();
    let s3 = config.sessions.recordings_s3.clone();
    let config = config.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let storage = crate::recordings::open_storage(&recordings, s3.as_ref())
            .map_err(|error| format!("{error:#}"))?;
        let key_store =
            crate::recordings::open_key_store(&config).map_err(|error| format!("{error:#}"))?;
        recorder::check_writable(
            storage.as_ref(),
            key_store.as_ref(),
            &recorder::RecorderConfig::default(),
        )
        .map_err(|error| error.to_string())?;
        let location = match &s3 {
            Some(s3) => format!("bucket {} at {}", s3.bucket, s3.endpoint),
            None => recordings.display().to_string(),
        };
        Ok::<_, String>(format!("{location} is writable"))
    })
    .await
    .unwrap_or_else(|error| Err(format!("the check failed to run: {error}")));
    HealthCheck {
        name: "recording_store".to_owned(),
        ok: checked.is_ok(),
        detail: checked.unwrap_or_else(|error| error),
    }
}

/// Checks that each key file exists, is readable only by its owner and has 32 bytes.
fn keys(config: &Config, audit_public_key: &str) -> HealthCheck {
    let mut files = vec![crate::audit::checkpoint::key_path(&config.data_dir)];
    if config.auth.local {
        files.push(config.data_dir.join(crate::auth::secret_key::KEY_FILE_NAME));
    }
    if config.secrets == SecretsConfig::Local {
        files.push(config.data_dir.join(crate::secrets::KEY_FILE_NAME));
    }
    let problems: Vec<String> = files
        .iter()
        .filter_map(|path| key_file_problem(path))
        .collect();
    let keys_dir = &config.sessions.recording_keys_dir;
    let mut problems = problems;
    if !keys_dir.is_dir() {
        problems.push(format!(
            "the recording key directory {} is missing",
            keys_dir.display()
        ));
    }
    HealthCheck {
        name: "keys".to_owned(),
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("key files present with mode 0600; audit signing public key {audit_public_key}")
        } else {
            problems.join("; ")
        },
    }
}

fn key_file_problem(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "{} is missing; it is created at the first use of its key",
            path.display()
        )),
        Err(error) => Some(format!("cannot inspect {}: {error}", path.display())),
        Ok(metadata) if metadata.permissions().mode() & 0o077 != 0 => Some(format!(
            "{} is readable by other users; run `chmod 600` on it",
            path.display()
        )),
        Ok(metadata) if metadata.len() != crate::keyfile::KEY_LEN as u64 => Some(format!(
            "{} has {} bytes instead of {}; restore it from backup",
            path.display(),
            metadata.len(),
            crate::keyfile::KEY_LEN
        )),
        Ok(_) => None,
    }
}

fn identity_provider(config: &Config) -> HealthCheck {
    let detail = match (&config.auth.oidc, config.auth.local) {
        (Some(oidc), true) => format!(
            "OpenID provider {} and local accounts with TOTP",
            oidc.issuer
        ),
        (Some(oidc), false) => format!("OpenID provider {}", oidc.issuer),
        (None, true) => "local accounts with TOTP".to_owned(),
        (None, false) => {
            "no sign-in method is enabled; enable auth.local or configure auth.oidc".to_owned()
        }
    };
    HealthCheck {
        name: "identity_provider".to_owned(),
        ok: config.auth.oidc.is_some() || config.auth.local,
        detail,
    }
}

fn secret_store(config: &Config) -> HealthCheck {
    match &config.secrets {
        SecretsConfig::Local => {
            let path = config.data_dir.join(crate::secrets::KEY_FILE_NAME);
            let problem = key_file_problem(&path);
            HealthCheck {
                name: "secret_store".to_owned(),
                ok: problem.is_none(),
                detail: problem
                    .unwrap_or_else(|| format!("local encrypted store, key {}", path.display())),
            }
        }
        SecretsConfig::Infisical(infisical) => {
            let reference = infisical.client_secret.resolve();
            HealthCheck {
                name: "secret_store".to_owned(),
                ok: reference.is_ok(),
                detail: match reference {
                    Ok(_) => format!(
                        "Infisical at {}; the client secret reference {} resolves",
                        infisical.url, infisical.client_secret
                    ),
                    Err(error) => format!(
                        "cannot read the Infisical client secret from {}: {error}",
                        infisical.client_secret
                    ),
                },
            }
        }
    }
}

/// Records that an admin or auditor exported audit events.
pub async fn audit_export_event(
    state: &AppState,
    principal: &Principal,
    client: Option<IpAddr>,
    query: &crate::audit::AuditQuery,
    events: usize,
) -> anyhow::Result<()> {
    let event = EventBuilder::new(
        Actor::Person(principal.user_id.clone()),
        Action::AuditExported,
    )
    .client(client)
    .outcome(Outcome::Success)
    .detail("events", events)
    .detail("filter", serde_json::to_value(query_summary(query))?)
    .build();
    state.audit.append(event).await?;
    Ok(())
}

fn query_summary(query: &crate::audit::AuditQuery) -> serde_json::Value {
    serde_json::json!({
        "actor": query.actor,
        "action": query.action,
        "target": query.target,
        "session_id": query.session_id,
        "from_ms": query.from_ms,
        "to_ms": query.to_ms,
    })
}

impl From<AdminError> for Problem {
    fn from(error: AdminError) -> Problem {
        error.to_problem()
    }
}

impl From<anyhow::Error> for Problem {
    fn from(error: anyhow::Error) -> Problem {
        AdminError::Internal(error).to_problem()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_view_shows_secret_references_only() {
        let marker = "Mk-7f3a9c-client-secret";
        // SAFETY: no other thread of this test binary reads this variable.
        unsafe { std::env::set_var("STRONGROOM_VIEW_TEST_SECRET", marker) };
        let env = [
            ("STRONGROOM_DATA_DIR", "/tmp/strongroom-view-test"),
            ("STRONGROOM_SECRETS__SOURCE", "infisical"),
            (
                "STRONGROOM_SECRETS__INFISICAL__URL",
                "https://infisical.bank.example",
            ),
            ("STRONGROOM_SECRETS__INFISICAL__CLIENT_ID", "broker"),
            (
                "STRONGROOM_SECRETS__INFISICAL__CLIENT_SECRET",
                "env:STRONGROOM_VIEW_TEST_SECRET",
            ),
            ("STRONGROOM_SECRETS__INFISICAL__PROJECT_ID", "project"),
            ("STRONGROOM_SECRETS__INFISICAL__ENVIRONMENT", "prod"),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let config = crate::config::load(None, env).expect("test configuration is valid");

        let view = config_view(&config).to_string();

        assert!(view.contains("env:STRONGROOM_VIEW_TEST_SECRET"), "{view}");
        assert!(!view.contains(marker), "{view}");
    }

    #[test]
    fn url_password_is_masked() {
        assert_eq!(
            mask_url_password("postgres://app:Mk-secret@db/strongroom"),
            "postgres://app:***@db/strongroom"
        );
        assert_eq!(
            mask_url_password("postgres://app@db/strongroom"),
            "postgres://app@db/strongroom"
        );
    }
}
