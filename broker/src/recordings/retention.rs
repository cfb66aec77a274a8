//! Retention: deleting expired recordings and destroying the keys of ended retention
//! periods, and legal hold, which exempts a recording.
//!
//! Each recording's retention deadline is fixed when it starts, from its site's
//! `recording_retention_days` (90 days when the site sets none). A sweep deletes every
//! expired recording that is not on legal hold, then destroys each retention period's
//! key once the period has ended and no kept recording needs it. After that, no backup
//! of the database or the store can decrypt the period's recordings. Held recordings
//! are first wrapped under the hold key so that they stay readable.
//!
//! Time comes from a [`Clock`], so tests run years of retention in a moment.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::catalogue::{self, CatalogueEntry};
use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::clock::Clock;
use crate::db::Database;

/// Interval of the background sweep.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// A recording a sweep deletes or would delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub id: Uuid,
    pub expires_at: DateTime<Utc>,
    /// The catalogue row, absent for a recording that is in the store but not in the catalogue.
    pub entry: Option<CatalogueEntry>,
}

/// Result of a sweep, or with `dry_run`, of what a sweep would do.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    pub dry_run: bool,
    pub deleted: Vec<Expired>,
    /// Held recordings whose deadline has passed; they are kept.
    pub held: Vec<Uuid>,
    /// Retention period keys destroyed (or, in a dry run, whose period has ended).
    pub destroyed_keys: Vec<String>,
    /// Recordings whose metadata could not be read, with the reason; the sweep left
    /// them and kept every period key.
    pub unreadable: Vec<(Uuid, String)>,
}

/// Recording store, key store, audit trail and clock of the retention sweep.
#[derive(Clone)]
pub struct Retention {
    pub audit: AuditLog,
    pub storage: Arc<dyn recorder::Storage>,
    pub keys: Arc<dyn recorder::KeyStore>,
    pub clock: Arc<dyn Clock>,
}

impl Retention {
    fn db(&self) -> &Database {
        self.audit.database()
    }

    /// Applies retention once at the clock's time. With `dry_run`, changes nothing and
    /// reports what would go.
    pub async fn sweep(&self, dry_run: bool) -> anyhow::Result<SweepReport> {
        let now = self.clock.now();
        let entries: HashMap<Uuid, CatalogueEntry> = all_entries(self.db())
            .await?
            .into_iter()
            .map(|entry| (entry.id, entry))
            .collect();
        let held: BTreeSet<Uuid> = entries
            .values()
            .filter(|entry| entry.legal_hold)
            .map(|entry| entry.id)
            .collect();

        let storage = self.storage.clone();
        let keys = self.keys.clone();
        let held_for_sweep = held.clone();
        let swept = tokio::task::spawn_blocking(move || {
            // Deadlines from the store's metadata, which is what the sweep itself reads.
            let mut expired = Vec::new();
            for id in storage.list_recordings()? {
                if let Ok(metadata) = recorder::RecordingMetadata::read(storage.as_ref(), id)
                    && metadata.is_expired(now)
                {
                    expired.push((id, metadata.expires_at));
                }
            }
            // The sweep runs first, so that in a real run only periods it left are listed.
            let swept = if dry_run {
                recorder::RetentionReport::default()
            } else {
                let is_held = |id: Uuid| held_for_sweep.contains(&id);
                recorder::sweep_retention(storage.as_ref(), keys.as_ref(), now, &is_held)?
            };
            let ended = recorder::ended_periods(keys.as_ref(), now)?;
            Ok::<_, recorder::RecorderError>((expired, swept, ended))
        })
        .await
        .context("retention task failed")?
        .context("retention sweep failed")?;
        let (expired, recorder_report, ended_periods) = swept;

        let mut report = SweepReport {
            dry_run,
            ..Default::default()
        };
        for (id, expires_at) in expired {
            if held.contains(&id) {
                report.held.push(id);
                continue;
            }
            report.deleted.push(Expired {
                id,
                expires_at,
                entry: entries.get(&id).cloned(),
            });
        }
        if dry_run {
            report.destroyed_keys = ended_periods.iter().map(|id| id.to_string()).collect();
            return Ok(report);
        }

        let deleted: BTreeSet<Uuid> = recorder_report.deleted.iter().copied().collect();
        report
            .deleted
            .retain(|expired| deleted.contains(&expired.id));
        report.unreadable = recorder_report.unreadable.clone();
        report.destroyed_keys = recorder_report
            .destroyed_keys
            .iter()
            .map(|id| id.to_string())
            .collect();

        for expired in &report.deleted {
            self.record_deletion(expired, now).await?;
        }
        for key in &report.destroyed_keys {
            let event = EventBuilder::new(Actor::System("retention"), Action::RecordingDeleted)
                .target(format!("key:{key}"))
                .detail(
                    "rule",
                    "retention period ended; no kept recording uses its key",
                )
                .detail("destroyed_key", key.clone())
                .build();
            self.audit.append(event).await?;
            tracing::info!(
                kek.id = key.as_str(),
                "Destroyed the key of an ended retention period"
            );
        }
        Ok(report)
    }

    async fn record_deletion(&self, expired: &Expired, now: DateTime<Utc>) -> anyhow::Result<()> {
        let rule = match &expired.entry {
            Some(entry) => format!(
                "retention of site {} reached at {}",
                entry.site,
                expired.expires_at.to_rfc3339()
            ),
            None => format!("retention reached at {}", expired.expires_at.to_rfc3339()),
        };
        let mut event = EventBuilder::new(Actor::System("retention"), Action::RecordingDeleted)
            .target(format!("recording:{}", expired.id))
            .detail("rule", rule)
            .detail("expires_at", expired.expires_at.to_rfc3339());
        if let Some(entry) = &expired.entry {
            event = event
                .session(entry.session_id)
                .detail("site", entry.site.clone());
        }
        self.audit.append(event.build()).await?;
        mark_deleted(self.db(), expired.id, now).await?;
        tracing::info!(recording.id = %expired.id, expires_at = %expired.expires_at, "Deleted an expired recording");
        Ok(())
    }

    /// Places or lifts legal hold. A held recording is wrapped under the hold key at once,
    /// so it stays readable after its period's key is destroyed.
    pub async fn set_hold(&self, id: Uuid, hold: bool, actor: Actor) -> anyhow::Result<()> {
        let entry = catalogue::get(self.db(), id).await?.ok_or_else(|| {
            crate::cli::InputError(format!(
                "recording {id} is not in the catalogue; `strongroom recording list` shows the ids"
            ))
        })?;
        if entry.state == catalogue::RecordingState::Deleted {
            return Err(crate::cli::InputError(format!(
                "recording {id} was deleted by retention; a hold cannot bring it back"
            ))
            .into());
        }
        if hold {
            let storage = self.storage.clone();
            let keys = self.keys.clone();
            tokio::task::spawn_blocking(move || {
                recorder::place_hold(storage.as_ref(), keys.as_ref(), id)
            })
            .await
            .context("hold task failed")?
            .map_err(|error| hold_failure(id, error))?;
        }
        sqlx::query("UPDATE recordings SET legal_hold = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(i64::from(hold))
            .execute(self.db().pool())
            .await
            .with_context(|| format!("cannot change the legal hold of recording {id}"))?;
        let event = EventBuilder::new(actor, Action::RecordingHoldChanged)
            .session(entry.session_id)
            .target(format!("recording:{id}"))
            .detail("legal_hold", hold)
            .build();
        self.audit.append(event).await?;
        Ok(())
    }

    /// Runs the sweep every [`SWEEP_INTERVAL`] until the registry stops.
    pub fn spawn(self, tasks: &crate::tasks::TaskRegistry) {
        let token = tasks.token();
        tasks.spawn("recordings-retention", async move {
            let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                match self.sweep(false).await {
                    Ok(report)
                        if !report.deleted.is_empty() || !report.destroyed_keys.is_empty() =>
                    {
                        tracing::info!(
                            deleted = report.deleted.len(),
                            destroyed_keys = report.destroyed_keys.len(),
                            "Retention sweep finished"
                        );
                    }
                    Ok(_) => {}
                    Err(error) => tracing::error!(
                        error = format!("{error:#}"),
                        "Retention sweep failed; retrying at the next tick"
                    ),
                }
            }
        });
    }
}

/// Explains why the hold could not wrap the recording's key. Missing files are an
/// operational fault (exit code 1), not rejected input: the catalogue knows the
/// recording, but the store does not hold it.
fn hold_failure(id: Uuid, error: recorder::RecorderError) -> anyhow::Error {
    match error {
        recorder::RecorderError::NotFound(_) => anyhow::anyhow!(
            "the files of recording {id} are missing from the recording store \
             (sessions.recordings_dir, or [sessions.recordings_s3] when set); restore them from \
             a backup, or point the configuration at the store that holds them, then place \
             the hold again"
        ),
        other => anyhow::Error::new(other)
            .context(format!("cannot wrap recording {id} under the hold key")),
    }
}

async fn all_entries(db: &Database) -> anyhow::Result<Vec<CatalogueEntry>> {
    let mut entries = Vec::new();
    for id in catalogue::kept_ids(db).await? {
        if let Some(entry) = catalogue::get(db, id).await? {
            entries.push(entry);
        }
    }
    Ok(entries)
}

async fn mark_deleted(db: &Database, id: Uuid, now: DateTime<Utc>) -> anyhow::Result<()> {
    sqlx::query("UPDATE recordings SET state = 'deleted', deleted_at_ms = $2 WHERE id = $1")
        .bind(id.to_string())
        .bind(now.timestamp_millis())
        .execute(db.pool())
        .await
        .with_context(|| format!("cannot mark recording {id} deleted"))?;
    Ok(())
}

pub(crate) fn from_config(
    config: &crate::config::Config,
    audit: &AuditLog,
) -> anyhow::Result<Retention> {
    let (storage, keys) = super::stores(config)?;
    Ok(Retention {
        audit: audit.clone(),
        storage,
        keys,
        clock: Arc::new(crate::clock::SystemClock),
    })
}

/// `strongroom recording retention [--dry-run]`. Returns the exit code.
pub async fn run_sweep_command(
    config: &crate::config::Config,
    audit: &AuditLog,
    dry_run: bool,
) -> i32 {
    let result = match from_config(config, audit) {
        Ok(retention) => retention.sweep(dry_run).await,
        Err(error) => Err(error),
    };
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error:#}");
            return 1;
        }
    };
    let verb = if dry_run { "would delete" } else { "deleted" };
    for expired in &report.deleted {
        let site = expired
            .entry
            .as_ref()
            .map(|e| e.site.as_str())
            .unwrap_or("unknown site");
        println!(
            "{verb} recording {} ({site}, expired {})",
            expired.id,
            expired.expires_at.to_rfc3339()
        );
    }
    for id in &report.held {
        println!("kept recording {id}: legal hold");
    }
    let verb = if dry_run {
        "period ended, key would be destroyed unless a kept recording needs it"
    } else {
        "destroyed key"
    };
    for key in &report.destroyed_keys {
        println!("{verb}: {key}");
    }
    for (id, reason) in &report.unreadable {
        println!("skipped recording {id}: {reason}");
    }
    println!(
        "{} recordings {}, {} held, {} keys",
        report.deleted.len(),
        if dry_run { "to delete" } else { "deleted" },
        report.held.len(),
        report.destroyed_keys.len()
    );
    0
}

/// `strongroom recording hold|release ID`. Returns the exit code.
pub async fn run_hold_command(
    config: &crate::config::Config,
    audit: &AuditLog,
    id: Uuid,
    hold: bool,
) -> i32 {
    let result = match from_config(config, audit) {
        Ok(retention) => retention.set_hold(id, hold, Actor::System("cli")).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => {
            println!(
                "recording {id} {}",
                if hold {
                    "is on legal hold"
                } else {
                    "is released from legal hold"
                }
            );
            0
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            crate::cli::exit_code_of(&error)
        }
    }
}

/// Starts the hourly retention sweep of the configured stores.
pub fn spawn_from_config(
    config: &crate::config::Config,
    audit: &AuditLog,
    clock: &Arc<dyn Clock>,
    tasks: &crate::tasks::TaskRegistry,
) -> anyhow::Result<()> {
    let mut retention = from_config(config, audit)?;
    retention.clock = clock.clone();
    retention.spawn(tasks);
    Ok(())
}
