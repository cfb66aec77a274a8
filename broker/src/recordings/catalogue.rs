//! The recordings catalogue: one database row per recording, so that auditors can find
//! a recording by person, site and time without opening the recording store, and so
//! that recovery and retention know which recordings exist.
//!
//! The row is inserted before the recording is created in the store. The stream task
//! adds each stored segment to the counts and marks the row sealed or failed at the
//! end. A row that a crashed broker left in `recording` is sealed by
//! [`seal_interrupted`] at the next start of the same instance, or removed when the
//! crash came before the recording's metadata was stored.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::audit::{Action, Actor, AuditLog, EventBuilder, Outcome};
use crate::db::Database;

/// Lifecycle state of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingState {
    /// The stream task is writing it, or a crash interrupted it.
    Recording,
    /// Sealed: the seal lists every segment.
    Sealed,
    /// The seal could not be written; recovery seals it at the next start.
    Failed,
    /// Deleted by retention; only this row and the audit trail remain.
    Deleted,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Recording => "recording",
            RecordingState::Sealed => "sealed",
            RecordingState::Failed => "failed",
            RecordingState::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<RecordingState> {
        match text {
            "recording" => Some(RecordingState::Recording),
            "sealed" => Some(RecordingState::Sealed),
            "failed" => Some(RecordingState::Failed),
            "deleted" => Some(RecordingState::Deleted),
            _ => None,
        }
    }
}

/// One catalogue row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub id: Uuid,
    pub session_id: Uuid,
    pub user_id: String,
    pub site: String,
    pub instance_id: String,
    pub state: RecordingState,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub segment_count: u64,
    /// Bytes of stored segment files.
    pub bytes: u64,
    pub legal_hold: bool,
    /// Retention deadline: the first instant at which the recording is no longer kept.
    pub expires_at: DateTime<Utc>,
    /// SHA-256 of the seal object, hex-encoded, once sealed.
    pub seal_sha256: Option<String>,
    /// Failure reason or seal summary, shown in the recordings list.
    pub detail: Option<String>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A recording about to store its first segment.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub id: Uuid,
    pub session_id: Uuid,
    pub user_id: String,
    pub site: String,
    pub instance_id: String,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Conditions of [`list`]; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub user_id: Option<String>,
    pub site: Option<String>,
    /// Recordings that started at or after this instant.
    pub started_from: Option<DateTime<Utc>>,
    /// Recordings that started before this instant.
    pub started_before: Option<DateTime<Utc>>,
    /// Maximum rows returned; at most 1000.
    pub limit: Option<u32>,
}

const COLUMNS: &str = "id, session_id, user_id, site, instance_id, state, started_at_ms, ended_at_ms, \
     segment_count, bytes, legal_hold, expires_at_ms, seal_sha256, detail, deleted_at_ms";

const MAX_LIST: u32 = 1000;

fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

fn time_from(ms: i64) -> anyhow::Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .with_context(|| format!("invalid timestamp {ms} in the recordings table"))
}

fn from_row(row: &sqlx::any::AnyRow) -> anyhow::Result<CatalogueEntry> {
    let id: String = row.try_get("id")?;
    let session_id: String = row.try_get("session_id")?;
    let state: String = row.try_get("state")?;
    let optional_time = |column: &str| -> anyhow::Result<Option<DateTime<Utc>>> {
        row.try_get::<Option<i64>, _>(column)?
            .map(time_from)
            .transpose()
    };
    Ok(CatalogueEntry {
        id: Uuid::parse_str(&id).with_context(|| format!("invalid recording id {id:?}"))?,
        session_id: Uuid::parse_str(&session_id)
            .with_context(|| format!("invalid session id {session_id:?} of recording {id}"))?,
        user_id: row.try_get("user_id")?,
        site: row.try_get("site")?,
        instance_id: row.try_get("instance_id")?,
        state: RecordingState::parse(&state)
            .with_context(|| format!("unknown state {state:?} of recording {id}"))?,
        started_at: time_from(row.try_get("started_at_ms")?)?,
        ended_at: optional_time("ended_at_ms")?,
        segment_count: row.try_get::<i64, _>("segment_count")?.max(0) as u64,
        bytes: row.try_get::<i64, _>("bytes")?.max(0) as u64,
        legal_hold: row.try_get::<i64, _>("legal_hold")? != 0,
        expires_at: time_from(row.try_get("expires_at_ms")?)?,
        seal_sha256: row.try_get("seal_sha256")?,
        detail: row.try_get("detail")?,
        deleted_at: optional_time("deleted_at_ms")?,
    })
}

/// Inserts the row of a recording that is starting.
pub async fn insert(db: &Database, entry: &NewEntry) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO recordings (id, session_id, user_id, site, instance_id, state, started_at_ms, \
         segment_count, bytes, legal_hold, expires_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, 0, $8)",
    )
    .bind(entry.id.to_string())
    .bind(entry.session_id.to_string())
    .bind(entry.user_id.clone())
    .bind(entry.site.clone())
    .bind(entry.instance_id.clone())
    .bind(RecordingState::Recording.as_str())
    .bind(millis(entry.started_at))
    .bind(millis(entry.expires_at))
    .execute(db.pool())
    .await
    .with_context(|| format!("cannot add recording {} to the catalogue", entry.id))?;
    Ok(())
}

/// Counts one more stored segment of `bytes` bytes.
pub async fn add_segment(db: &Database, id: Uuid, index: u64, bytes: u64) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE recordings SET segment_count = $2, bytes = bytes + $3 WHERE id = $1 AND state = 'recording'",
    )
    .bind(id.to_string())
    .bind((index + 1) as i64)
    .bind(bytes as i64)
    .execute(db.pool())
    .await
    .with_context(|| format!("cannot count a segment of recording {id} in the catalogue"))?;
    Ok(())
}

/// Detail of a sealed recording without a single frame: its session ended, or its launch
/// failed, before the screen reached the recorder.
pub const NOTHING_RECORDED: &str =
    "nothing recorded: the session ended before its screen reached the recorder";

/// Start of the detail of a recording that start-up recovery sealed.
pub const SEALED_AFTER_INTERRUPTION: &str = "sealed after an interruption";

/// Outcome of sealing a recording.
#[derive(Debug, Clone)]
pub struct SealedEntry {
    pub ended_at: DateTime<Utc>,
    pub segment_count: u64,
    pub bytes: u64,
    pub seal_sha256: [u8; 32],
    pub detail: Option<String>,
}

/// Marks a recording sealed with its final counts.
pub async fn mark_sealed(db: &Database, id: Uuid, sealed: &SealedEntry) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE recordings SET state = 'sealed', ended_at_ms = $2, segment_count = $3, bytes = $4, \
         seal_sha256 = $5, detail = $6 WHERE id = $1",
    )
    .bind(id.to_string())
    .bind(millis(sealed.ended_at))
    .bind(sealed.segment_count as i64)
    .bind(sealed.bytes as i64)
    .bind(hex::encode(sealed.seal_sha256))
    .bind(sealed.detail.clone())
    .execute(db.pool())
    .await
    .with_context(|| format!("cannot mark recording {id} sealed in the catalogue"))?;
    Ok(())
}

/// Marks a recording whose seal could not be written.
pub async fn mark_failed(
    db: &Database,
    id: Uuid,
    ended_at: DateTime<Utc>,
    detail: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE recordings SET state = 'failed', ended_at_ms = $2, detail = $3 WHERE id = $1 AND state = 'recording'",
    )
    .bind(id.to_string())
    .bind(millis(ended_at))
    .bind(detail.to_owned())
    .execute(db.pool())
    .await
    .with_context(|| format!("cannot mark recording {id} failed in the catalogue"))?;
    Ok(())
}

/// Reads one row.
pub async fn get(db: &Database, id: Uuid) -> anyhow::Result<Option<CatalogueEntry>> {
    let query = format!("SELECT {COLUMNS} FROM recordings WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(id.to_string())
        .fetch_optional(db.pool())
        .await
        .with_context(|| format!("cannot read recording {id} from the catalogue"))?;
    row.as_ref().map(from_row).transpose()
}

/// Lists recordings matching `filter`, newest first.
pub async fn list(db: &Database, filter: &Filter) -> anyhow::Result<Vec<CatalogueEntry>> {
    let mut conditions = Vec::new();
    let mut texts = Vec::new();
    let mut times = Vec::new();
    // Text values come first in the bind order, then times.
    if let Some(user) = &filter.user_id {
        texts.push(user.clone());
        conditions.push(format!("user_id = ${}", texts.len()));
    }
    if let Some(site) = &filter.site {
        texts.push(site.clone());
        conditions.push(format!("site = ${}", texts.len()));
    }
    if let Some(from) = filter.started_from {
        times.push(millis(from));
        conditions.push(format!("started_at_ms >= ${}", texts.len() + times.len()));
    }
    if let Some(before) = filter.started_before {
        times.push(millis(before));
        conditions.push(format!("started_at_ms < ${}", texts.len() + times.len()));
    }
    let condition = if conditions.is_empty() {
        "1 = 1".to_owned()
    } else {
        conditions.join(" AND ")
    };
    let limit = filter.limit.unwrap_or(MAX_LIST).clamp(1, MAX_LIST);
    let query = format!(
        "SELECT {COLUMNS} FROM recordings WHERE {condition} ORDER BY started_at_ms DESC, id LIMIT {limit}"
    );
    let mut statement = sqlx::query(sqlx::AssertSqlSafe(query));
    for text in texts {
        statement = statement.bind(text);
    }
    for time in times {
        statement = statement.bind(time);
    }
    let rows = statement
        .fetch_all(db.pool())
        .await
        .context("cannot list recordings")?;
    rows.iter().map(from_row).collect()
}

/// Returns the ids of every recording that is not deleted.
pub async fn kept_ids(db: &Database) -> anyhow::Result<Vec<Uuid>> {
    let rows = sqlx::query("SELECT id FROM recordings WHERE state <> 'deleted' ORDER BY id")
        .fetch_all(db.pool())
        .await
        .context("cannot list kept recordings")?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            Uuid::parse_str(&id).with_context(|| format!("invalid recording id {id:?}"))
        })
        .collect()
}

/// Returns the recordings of `instance_id` that have no seal yet. Call it at start-up
/// before any stream starts: every recording it returns was then interrupted.
pub async fn unsealed(db: &Database, instance_id: &str) -> anyhow::Result<Vec<Uuid>> {
    let rows = sqlx::query(
        "SELECT id FROM recordings WHERE instance_id = $1 AND state IN ('recording', 'failed') \
         AND seal_sha256 IS NULL ORDER BY started_at_ms",
    )
    .bind(instance_id.to_owned())
    .fetch_all(db.pool())
    .await
    .context("cannot list unsealed recordings")?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            Uuid::parse_str(&id).with_context(|| format!("invalid recording id {id:?}"))
        })
        .collect()
}

/// Result of [`seal_interrupted`] for one recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// Sealed with this many intact segments from index 0.
    Sealed { segment_count: u64 },
    /// Recovery failed; the row is marked failed with this reason.
    Failed(String),
    /// The start was interrupted before the recording's metadata was stored, so nothing
    /// in it was readable: its objects and its row were removed.
    Removed,
}

/// Seals recordings that a crash interrupted. It removes partial files, rebuilds the
/// segment that was open from its checkpoint parts and authenticates every segment. It
/// then enters the hashes of intact segments that the audit trail lacks, writes the
/// seal with the intact segments from index 0 and updates the catalogue. Segments after a damaged or missing
/// one, and checkpoint parts from a damaged one on, are left out of the seal and named
/// in the audit event.
pub async fn seal_interrupted(
    audit: &AuditLog,
    storage: Arc<dyn recorder::Storage>,
    keys: Arc<dyn recorder::KeyStore>,
    recordings: &[Uuid],
) -> Vec<(Uuid, Recovered)> {
    let mut results = Vec::new();
    for &id in recordings {
        let result = match seal_one(audit, storage.clone(), keys.clone(), id).await {
            Ok(recovered) => recovered,
            Err(error) => {
                let reason = format!("{error:#}");
                tracing::error!(recording.id = %id, error = reason.as_str(), "Cannot seal an interrupted recording");
                let now = Utc::now();
                if let Err(error) = mark_failed(audit.database(), id, now, &reason).await {
                    tracing::error!(recording.id = %id, error = format!("{error:#}"), "Cannot mark the recording failed");
                }
                let event = EventBuilder::new(Actor::System("reconciler"), Action::RecordingFailed)
                    .target(format!("recording:{id}"))
                    .outcome(Outcome::Failure)
                    .detail("reason", reason.clone())
                    .build();
                if let Err(error) = audit.append(event).await {
                    tracing::error!(recording.id = %id, error = format!("{error:#}"), "Cannot audit a failed recovery");
                }
                Recovered::Failed(reason)
            }
        };
        results.push((id, result));
    }
    results
}

async fn seal_one(
    audit: &AuditLog,
    storage: Arc<dyn recorder::Storage>,
    keys: Arc<dyn recorder::KeyStore>,
    id: Uuid,
) -> anyhow::Result<Recovered> {
    let entry = get(audit.database(), id)
        .await?
        .with_context(|| format!("recording {id} is not in the catalogue"))?;

    if !metadata_stored(storage.clone(), id).await? {
        discard_unstarted(audit.database(), storage, id).await?;
        let event = EventBuilder::new(Actor::System("reconciler"), Action::RecordingFailed)
            .session(entry.session_id)
            .target(format!("recording:{id}"))
            .outcome(Outcome::Failure)
            .detail(
                "reason",
                "the broker stopped before the recording's metadata was stored; its catalogue row and objects were removed",
            )
            .build();
        audit.append(event).await?;
        tracing::warn!(recording.id = %id, "Removed a recording whose start was interrupted");
        return Ok(Recovered::Removed);
    }

    let sealed = tokio::task::spawn_blocking(move || {
        let report = recorder::recover_recording(storage.as_ref(), keys.as_ref(), id)?;
        if report.sealed {
            // A crash after the seal was stored and before the catalogue was updated.
            let seal = storage.get(id, recorder::SEAL_NAME)?;
            return Ok::<_, recorder::RecorderError>((report, Sha256::digest(&seal).into()));
        }
        let sealed =
            recorder::seal_recovered(storage.as_ref(), keys.as_ref(), id, report.contiguous)?;
        Ok((report, sealed.seal_sha256))
    })
    .await
    .context("recovery task failed")?
    .with_context(|| format!("cannot recover recording {id}"))?;
    let (report, seal_sha256): (_, [u8; 32]) = sealed;
    let intact = &report.intact[..report.contiguous as usize];

    let audited = audited_segments(audit, id).await?;
    for segment in intact.iter().filter(|s| !audited.contains(&s.index)) {
        let parts = report
            .assembled
            .as_ref()
            .filter(|assembled| assembled.segment.index == segment.index)
            .map_or(0, |assembled| assembled.parts);
        let event = EventBuilder::new(Actor::System("reconciler"), Action::RecordingSegmentStored)
            .session(entry.session_id)
            .target(format!("recording:{id}"))
            .detail("index", segment.index)
            .detail("sha256", hex::encode(segment.sha256))
            .detail("bytes", segment.bytes)
            .detail("start_pts_us", segment.start_pts_us)
            .detail("end_pts_us", segment.end_pts_us)
            .detail("recovered", true)
            .detail("checkpoint_parts", parts)
            .build();
        audit.append(event).await?;
    }

    let mut damaged: Vec<String> = report
        .damaged
        .iter()
        .map(|(index, fault)| format!("segment {index}: {fault}"))
        .collect();
    damaged.extend(
        report
            .rejected_parts
            .iter()
            .map(|(name, fault)| format!("checkpoint part {name}: {fault}")),
    );
    let segment_count = report.contiguous;
    let bytes = intact.iter().map(|s| s.bytes).sum();
    let ended_at = Utc::now();
    let detail = if damaged.is_empty() {
        SEALED_AFTER_INTERRUPTION.to_owned()
    } else {
        format!(
            "{SEALED_AFTER_INTERRUPTION}; left out: {}",
            damaged.join(", ")
        )
    };
    mark_sealed(
        audit.database(),
        id,
        &SealedEntry {
            ended_at,
            segment_count,
            bytes,
            seal_sha256,
            detail: Some(detail.clone()),
        },
    )
    .await?;

    let event = EventBuilder::new(Actor::System("reconciler"), Action::RecordingSealed)
        .session(entry.session_id)
        .target(format!("recording:{id}"))
        .detail("segment_count", segment_count)
        .detail("seal_sha256", hex::encode(seal_sha256))
        .detail("recovered", true)
        .detail("damaged", damaged)
        .build();
    audit.append(event).await?;
    tracing::info!(recording.id = %id, segments = segment_count, "Sealed an interrupted recording");
    Ok(Recovered::Sealed { segment_count })
}

/// Reports whether the store has the recording's metadata object, which the writer
/// stores before any segment.
async fn metadata_stored(storage: Arc<dyn recorder::Storage>, id: Uuid) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        if !storage.exists(id)? {
            return Ok(false);
        }
        match storage.get(id, recorder::METADATA_NAME) {
            Ok(_) => Ok(true),
            Err(recorder::StorageError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    })
    .await
    .context("storage task failed")?
    .with_context(|| format!("cannot read the metadata of recording {id}"))
}

/// Removes a recording whose start did not store its metadata: whatever the store has
/// of it, then its catalogue row while that is still unsealed. Without the metadata its
/// data key is lost, so none of its objects is readable.
pub async fn discard_unstarted(
    db: &Database,
    storage: Arc<dyn recorder::Storage>,
    id: Uuid,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        if storage.exists(id)? {
            storage.delete_recording(id)?;
        }
        Ok::<_, recorder::StorageError>(())
    })
    .await
    .context("storage task failed")?
    .with_context(|| format!("cannot delete the objects of recording {id}"))?;
    sqlx::query(
        "DELETE FROM recordings WHERE id = $1 AND state IN ('recording', 'failed') \
         AND seal_sha256 IS NULL",
    )
    .bind(id.to_string())
    .execute(db.pool())
    .await
    .with_context(|| format!("cannot remove recording {id} from the catalogue"))?;
    Ok(())
}

/// Indexes of the recording's segments whose hashes the audit trail contains.
async fn audited_segments(audit: &AuditLog, id: Uuid) -> anyhow::Result<BTreeSet<u64>> {
    let events = audit
        .list_for_target(&format!("recording:{id}"), Action::RecordingSegmentStored)
        .await?;
    let mut indexes = BTreeSet::new();
    for event in &events {
        let details: serde_json::Value =
            serde_json::from_str(&event.details).context("invalid segment event details")?;
        if let Some(index) = details["index"].as_u64() {
            indexes.insert(index);
        }
    }
    Ok(indexes)
}

/// Lists this instance's unsealed recordings now, then seals them on a background task.
/// Call it at start-up before the portal accepts launches, so that no recording of this
/// run is taken for an interrupted one.
pub async fn spawn_recovery(
    config: &crate::config::Config,
    audit: &AuditLog,
    instance_id: &str,
    tasks: &crate::tasks::TaskRegistry,
) -> anyhow::Result<()> {
    let recordings = unsealed(audit.database(), instance_id).await?;
    if recordings.is_empty() {
        return Ok(());
    }
    let (storage, keys) = super::stores(config)?;
    let audit = audit.clone();
    tracing::warn!(
        recordings = recordings.len(),
        "Sealing recordings that the previous broker run left unsealed"
    );
    tasks.spawn("recordings-recovery", async move {
        seal_interrupted(&audit, storage, keys, &recordings).await;
    });
    Ok(())
}
