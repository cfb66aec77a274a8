//! Import of sites from a TOML file.
//!
//! ```toml
//! [[site]]
//! name = "demo-bank"
//! display_name = "Demo Bank"
//! start_url = "https://www.demo-bank.example/login"
//! allowed_hosts = ["www.demo-bank.example", "*.static.demo-bank.example"]
//! allowed_ports = [443]                 # default [443]
//! allowed_private_ranges = []           # default none; each entry is audited
//! recording_retention_days = 365        # required
//! max_sessions = 4                      # optional site limit
//! enabled = true                        # default true
//! [site.limits]                         # each key optional
//! memory_mib = 2048
//! cpus = 1.0
//! pids = 512
//! shm_mib = 1024
//! [site.login]                          # optional: auto-login
//! credential_source = "shared"          # or "per_person"
//! credential_origins = ["https://www.demo-bank.example"]
//! exclusive_use = true                  # default true: one live session per shared credential
//! max_failed_logins = 3                 # default 3: failures in a row before the lock
//! [[site.login.steps]]                  # each step: timeout_secs, default 15, max 120
//! action = "wait_for"
//! selector = "#username"
//! timeout_secs = 30
//! [[site.login.steps]]
//! action = "type_username"              # also type_password, type_totp
//! selector = "#username"
//! [[site.login.steps]]
//! action = "click"
//! selector = "button[type=submit]"
//! [[site.login.steps]]
//! action = "wait_success"               # url_prefix, selector or both
//! url_prefix = "https://www.demo-bank.example/accounts"
//! [[site.login.logout_steps]]           # optional, same actions without type_*
//! action = "click"
//! selector = "#logout"
//! [site.policy]
//! downloads = "blocked"                 # or "deliver"
//! clipboard = "blocked"                 # or "paste_in", "copy_out", "both"
//! extra_ca_certs = ["bank-ca.pem"]      # PEM files, relative to this file
//! ```
//!
//! The whole file is validated before anything is written, and every site is written
//! in one transaction: an import either applies completely or not at all. One check
//! reports every problem in the file, each with its line and column: unknown keys (with
//! the valid keys), missing keys, values of the wrong type and invalid values. Only a
//! TOML syntax error is reported alone, because the parse stops there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::structure::{FileProblem, SiteFile};
use super::{
    ClipboardPolicy, CredentialSourceKind, DownloadPolicy, LoginRecipe, LoginSettings,
    RecipeStep, SessionPolicy, SiteDefinition, SiteProblem,
};
use crate::db::Database;

const DEFAULT_MEMORY_MIB: u64 = 2048;
const DEFAULT_CPUS: f64 = 1.0;
const DEFAULT_PIDS: u32 = 512;
const DEFAULT_SHM_MIB: u64 = 1024;

/// One `[[site]]` table. The file itself is an array of these, checked key by key in
/// [`super::structure`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub name: String,
    pub display_name: String,
    pub start_url: String,
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub allowed_private_ranges: Vec<String>,
    #[serde(default = "default_ports")]
    pub allowed_ports: Vec<u16>,
    pub recording_retention_days: u32,
    pub max_sessions: Option<u32>,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default)]
    pub limits: RawSiteLimits,
    pub login: Option<RawLogin>,
    #[serde(default)]
    pub policy: RawPolicy,
}

/// `[site.login]`: the auto-login recipe and where its credential may go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogin {
    #[serde(default)]
    pub steps: Vec<RecipeStep>,
    pub logout_steps: Option<Vec<RecipeStep>>,
    #[serde(default)]
    pub credential_origins: Vec<String>,
    #[serde(default)]
    pub credential_source: CredentialSourceKind,
    pub exclusive_use: Option<bool>,
    pub max_failed_logins: Option<u32>,
}

/// `[site.policy]`: downloads, clipboard and extra CA certificates.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub downloads: DownloadPolicy,
    #[serde(default)]
    pub clipboard: ClipboardPolicy,
    /// PEM files, relative to the site file.
    #[serde(default)]
    pub extra_ca_certs: Vec<PathBuf>,
}

/// `[site.limits]`: resource limits of each workspace container.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSiteLimits {
    /// Memory in MiB, swap excluded. Default 2048.
    pub memory_mib: Option<u64>,
    /// CPUs, fractions allowed. Default 1.0.
    pub cpus: Option<f64>,
    /// Processes and threads. Default 512.
    pub pids: Option<u32>,
    /// `/dev/shm` in MiB; Chromium tabs crash with 64. Default 1024.
    pub shm_mib: Option<u64>,
}

fn default_ports() -> Vec<u16> {
    vec![443]
}

fn default_enabled() -> bool {
    true
}

/// What an import changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    /// Sites whose changes wait for a second admin, with the change id and the
    /// controlled fields that changed.
    pub pending: Vec<(String, uuid::Uuid, Vec<String>)>,
    /// Sites that list allowed private ranges; the caller audits each approval.
    pub with_private_ranges: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read the site file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the site file {path} is not valid TOML; fix this and import again: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the site file {path} has {} problem(s), so nothing was imported:\n  - {}", problems.len(), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<FileProblem>,
    },
    #[error("cannot store the imported sites")]
    Storage(#[source] anyhow::Error),
}

impl ImportError {
    /// The exit code of `strongroom site import`: 2 when the file's content is rejected,
    /// 1 when reading the file or storing the sites failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Parse { .. } | Self::Invalid { .. } => 2,
            Self::Read { .. } | Self::Storage(_) => 1,
        }
    }
}

/// Parses and validates a site file's text. Problems name the field, as in
/// `site[1].start_url`, and its line and column. Relative certificate paths are resolved
/// against `base_dir`. The error is the list of problems, or the TOML syntax error.
pub fn parse_sites(
    text: &str,
    base_dir: &Path,
) -> Result<Vec<SiteDefinition>, Result<Vec<FileProblem>, String>> {
    let file = SiteFile::parse(text).map_err(|error| Err(error.to_string()))?;
    let (mut problems, outcomes) = file.read_sites();

    let mut seen = BTreeSet::new();
    let names = file.site_names();
    let mut sites = Vec::new();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let path = format!("site[{index}]");
        let mut semantic = Vec::new();
        if let Some(Some(name)) = names.get(index)
            && !seen.insert(name.clone())
        {
            semantic.push(SiteProblem {
                field: format!("{path}.name"),
                message: format!("{name:?} appears more than once in the file"),
            });
        }
        match outcome {
            Err(mut found) => problems.append(&mut found),
            Ok(raw) => match convert(raw, &path, base_dir) {
                Ok(definition) => match definition.validate(&path) {
                    Ok(()) => sites.push(definition),
                    Err(mut found) => semantic.append(&mut found),
                },
                Err(mut found) => semantic.append(&mut found),
            },
        }
        problems.extend(semantic.into_iter().map(|problem| file.locate(problem)));
    }

    if problems.is_empty() {
        Ok(sites)
    } else {
        Err(Ok(problems))
    }
}

fn convert(raw: RawSite, path: &str, base_dir: &Path) -> Result<SiteDefinition, Vec<SiteProblem>> {
    let mut problems = Vec::new();

    let mut extra_ca_certs = Vec::new();
    for (index, file) in raw.policy.extra_ca_certs.iter().enumerate() {
        let full = base_dir.join(file);
        match std::fs::read_to_string(&full) {
            Ok(pem) => extra_ca_certs.push(pem),
            Err(error) => problems.push(SiteProblem {
                field: format!("{path}.policy.extra_ca_certs[{index}]"),
                message: format!("cannot read {}: {error}", full.display()),
            }),
        }
    }
    let login = match raw.login {
        None => LoginSettings::default(),
        Some(login) => {
            let defaults = LoginSettings::default();
            LoginSettings {
                recipe: Some(LoginRecipe { steps: login.steps }),
                logout_recipe: login.logout_steps.map(|steps| LoginRecipe { steps }),
                credential_origins: login.credential_origins,
                credential_source: login.credential_source,
                exclusive_use: login.exclusive_use.unwrap_or(defaults.exclusive_use),
                max_failed_logins: login.max_failed_logins.unwrap_or(defaults.max_failed_logins),
            }
        }
    };

    let mut ranges = Vec::new();
    for (index, text) in raw.allowed_private_ranges.iter().enumerate() {
        match text.parse::<ipnet::IpNet>() {
            Ok(range) => ranges.push(range.trunc()),
            Err(_) => problems.push(SiteProblem {
                field: format!("{path}.allowed_private_ranges[{index}]"),
                message: format!("{text:?} is not a CIDR range such as \"10.20.0.0/16\""),
            }),
        }
    }

    let limits = &raw.limits;
    let cpus = limits.cpus.unwrap_or(DEFAULT_CPUS);
    if !(cpus.is_finite() && cpus > 0.0 && cpus <= 256.0) {
        problems.push(SiteProblem {
            field: format!("{path}.limits.cpus"),
            message: format!("{cpus} is out of range; use a number of CPUs such as 0.5 or 2"),
        });
    }
    let memory_mib = limits.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
    let shm_mib = limits.shm_mib.unwrap_or(DEFAULT_SHM_MIB);
    for (field, value) in [("memory_mib", memory_mib), ("shm_mib", shm_mib)] {
        if value > 1 << 20 {
            problems.push(SiteProblem {
                field: format!("{path}.limits.{field}"),
                message: format!("{value} MiB is out of range; use at most 1048576"),
            });
        }
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(SiteDefinition {
        name: raw.name,
        display_name: raw.display_name,
        start_url: raw.start_url,
        allowed_hosts: raw.allowed_hosts,
        allowed_private_ranges: ranges,
        allowed_ports: raw.allowed_ports,
        limits: launcher::SiteLimits {
            memory_bytes: memory_mib << 20,
            nano_cpus: (cpus * 1e9).round() as u64,
            pids: limits.pids.unwrap_or(DEFAULT_PIDS),
            shm_bytes: shm_mib << 20,
        },
        max_sessions: raw.max_sessions,
        recording_retention_days: raw.recording_retention_days,
        enabled: raw.enabled,
        login,
        policy: SessionPolicy {
            downloads: raw.policy.downloads,
            clipboard: raw.policy.clipboard,
            extra_ca_certs,
        },
    })
}

/// Import settings: the requesting admin, and whether changes under dual control wait
/// for a second admin.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub hold_controlled_changes: bool,
    /// The importing admin's user id, or `system:cli`.
    pub requested_by: String,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            hold_controlled_changes: false,
            requested_by: "system:cli".to_owned(),
        }
    }
}

/// Imports a site file like [`import_file_with`] and appends one `admin.site.changed`
/// event per site: for an applied site naming the allowed private ranges, for a
/// pending one the change id and the fields waiting for approval.
pub async fn import_file_audited(
    db: &Database,
    audit: &crate::audit::AuditLog,
    actor: crate::audit::Actor,
    path: &Path,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    use crate::audit::{Action, EventBuilder};

    let report = import_file_with(db, path, options).await?;
    for (name, id, fields) in &report.pending {
        let event = EventBuilder::new(actor.clone(), Action::SiteChanged)
            .target(super::audit_target(name))
            .detail("change", "requested")
            .detail("change_id", id.to_string())
            .detail("fields", fields.clone())
            .detail("source", path.display().to_string())
            .build();
        audit.append(event).await.map_err(ImportError::Storage)?;
    }
    for (name, change) in report
        .created
        .iter()
        .map(|name| (name, "created"))
        .chain(report.updated.iter().map(|name| (name, "updated")))
    {
        let site = super::get(db, name).await.map_err(ImportError::Storage)?;
        let ranges: Vec<String> = site
            .map(|site| {
                site.allowed_private_ranges
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let event = EventBuilder::new(actor.clone(), Action::SiteChanged)
            .target(super::audit_target(name))
            .detail("change", change)
            .detail("source", path.display().to_string())
            .detail("allowed_private_ranges", ranges)
            .build();
        audit.append(event).await.map_err(ImportError::Storage)?;
    }
    Ok(report)
}

/// Reads, validates and stores every site in `path`, creating new sites and replacing
/// existing ones with the same name. Nothing is stored when any site is invalid.
pub async fn import_file(db: &Database, path: &Path) -> Result<ImportReport, ImportError> {
    import_file_with(db, path, &ImportOptions::default()).await
}

/// Imports like [`import_file`]. With `hold_controlled_changes`, a new site or a change
/// to a controlled field is stored as a pending change instead of being applied.
pub async fn import_file_with(
    db: &Database,
    path: &Path,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| ImportError::Read {
            path: path.to_owned(),
            source,
        })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let sites = parse_sites(&text, base_dir).map_err(|error| match error {
        Ok(problems) => ImportError::Invalid {
            path: path.to_owned(),
            problems,
        },
        Err(message) => ImportError::Parse {
            path: path.to_owned(),
            message,
        },
    })?;

    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut applied = Vec::new();
    let mut pending = Vec::new();
    for site in sites {
        let existing = super::get(db, &site.name).await.map_err(ImportError::Storage)?;
        let fields = super::dual_control::controlled_changes(
            existing.as_ref().map(|site| &site.definition),
            &site,
        );
        if options.hold_controlled_changes && !fields.is_empty() {
            pending.push((site, fields));
        } else {
            applied.push(site);
        }
    }

    let mut report = ImportReport::default();
    let stored: anyhow::Result<Vec<bool>> = async {
        let mut transaction = db.begin_write().await?;
        let created = super::store::upsert_in(&mut transaction, &applied, now_ms).await?;
        for (site, fields) in &pending {
            let id = super::dual_control::submit_in(
                &mut transaction,
                site,
                fields,
                &options.requested_by,
                now_ms,
            )
            .await?;
            report.pending.push((site.name.clone(), id, fields.clone()));
        }
        transaction.commit().await?;
        Ok(created)
    }
    .await;
    let created = stored.map_err(ImportError::Storage)?;

    let sites = applied;
    for (site, was_created) in sites.iter().zip(created) {
        if was_created {
            report.created.push(site.name.clone());
        } else {
            report.updated.push(site.name.clone());
        }
        if !site.allowed_private_ranges.is_empty() {
            report.with_private_ranges.push(site.name.clone());
        }
    }
    tracing::info!(created = report.created.len(), updated = report.updated.len(), pending = report.pending.len(), file = %path.display(), "Imported sites");
    Ok(report)
}
