//! The `downloads` table: one row per delivered file.

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::Row;
use uuid::Uuid;

use crate::db::Database;

/// One delivered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadRecord {
    pub id: Uuid,
    pub session_id: Uuid,
    /// The owner of the session, the only person who may fetch the file.
    pub user_id: String,
    pub site: String,
    /// The cleaned file name.
    pub name: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the plaintext.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    /// Retention deadline: the file is deleted at or after this instant.
    pub expires_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, session_id, user_id, site, name, size, sha256, created_at_ms, expires_at_ms";

/// Maximum rows [`list_for_user`] returns.
const MAX_LIST: i64 = 500;

fn time_from(ms: i64) -> anyhow::Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .with_context(|| format!("invalid timestamp {ms} in the downloads table"))
}

fn from_row(row: &sqlx::any::AnyRow) -> anyhow::Result<DownloadRecord> {
    let id: String = row.try_get("id")?;
    let session_id: String = row.try_get("session_id")?;
    let size: i64 = row.try_get("size")?;
    Ok(DownloadRecord {
        id: Uuid::parse_str(&id).with_context(|| format!("invalid download id {id:?}"))?,
        session_id: Uuid::parse_str(&session_id)
            .with_context(|| format!("invalid session id {session_id:?} of download {id}"))?,
        user_id: row.try_get("user_id")?,
        site: row.try_get("site")?,
        name: row.try_get("name")?,
        size: u64::try_from(size).with_context(|| format!("negative size of download {id}"))?,
        sha256: row.try_get("sha256")?,
        created_at: time_from(row.try_get("created_at_ms")?)?,
        expires_at: time_from(row.try_get("expires_at_ms")?)?,
    })
}

pub async fn insert(db: &Database, record: &DownloadRecord) -> anyhow::Result<()> {
    let query =
        format!("INSERT INTO downloads ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
    sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(record.id.to_string())
        .bind(record.session_id.to_string())
        .bind(record.user_id.clone())
        .bind(record.site.clone())
        .bind(record.name.clone())
        .bind(i64::try_from(record.size).context("download size above i64")?)
        .bind(record.sha256.clone())
        .bind(record.created_at.timestamp_millis())
        .bind(record.expires_at.timestamp_millis())
        .execute(db.pool())
        .await
        .with_context(|| format!("cannot add download {} to the database", record.id))?;
    Ok(())
}

pub async fn get(db: &Database, id: Uuid) -> anyhow::Result<Option<DownloadRecord>> {
    let query = format!("SELECT {COLUMNS} FROM downloads WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(id.to_string())
        .fetch_optional(db.pool())
        .await
        .with_context(|| format!("cannot read download {id}"))?;
    row.as_ref().map(from_row).transpose()
}

/// Lists the files of one person, newest first, at most 500.
pub async fn list_for_user(db: &Database, user_id: &str) -> anyhow::Result<Vec<DownloadRecord>> {
    let query = format!(
        "SELECT {COLUMNS} FROM downloads WHERE user_id = $1 \
         ORDER BY created_at_ms DESC, id LIMIT {MAX_LIST}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(user_id)
        .fetch_all(db.pool())
        .await
        .with_context(|| format!("cannot list the downloads of {user_id}"))?;
    rows.iter().map(from_row).collect()
}

/// Files whose retention ended before `now`, oldest first, at most `limit`.
pub async fn list_expired(
    db: &Database,
    now: DateTime<Utc>,
    limit: i64,
) -> anyhow::Result<Vec<DownloadRecord>> {
    let query = format!(
        "SELECT {COLUMNS} FROM downloads WHERE expires_at_ms <= $1 \
         ORDER BY expires_at_ms, id LIMIT $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(now.timestamp_millis())
        .bind(limit)
        .fetch_all(db.pool())
        .await
        .context("cannot list expired downloads")?;
    rows.iter().map(from_row).collect()
}

pub async fn delete(db: &Database, id: Uuid) -> anyhow::Result<bool> {
    let result = sqlx::query("DELETE FROM downloads WHERE id = $1")
        .bind(id.to_string())
        .execute(db.pool())
        .await
        .with_context(|| format!("cannot delete download {id}"))?;
    Ok(result.rows_affected() > 0)
}
