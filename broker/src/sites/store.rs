//! Storage of sites and grants.

use anyhow::Context;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Site, SiteDefinition};
use crate::db::Database;

const SITE_COLUMNS: &str = "name, display_name, start_url, allowed_hosts, allowed_private_ranges, allowed_ports, \
     memory_bytes, nano_cpus, pids, shm_bytes, max_sessions, recording_retention_days, enabled, login_settings, session_policy, created_at_ms, updated_at_ms";

const UPSERT: &str = "INSERT INTO sites (name, display_name, start_url, allowed_hosts, allowed_private_ranges, allowed_ports, \
     memory_bytes, nano_cpus, pids, shm_bytes, max_sessions, recording_retention_days, enabled, login_settings, session_policy, \
     created_at_ms, updated_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $15, $16, $14, $14) \
     ON CONFLICT (name) DO UPDATE SET display_name = excluded.display_name, start_url = excluded.start_url, \
     allowed_hosts = excluded.allowed_hosts, allowed_private_ranges = excluded.allowed_private_ranges, \
     allowed_ports = excluded.allowed_ports, memory_bytes = excluded.memory_bytes, nano_cpus = excluded.nano_cpus, \
     pids = excluded.pids, shm_bytes = excluded.shm_bytes, max_sessions = excluded.max_sessions, \
     recording_retention_days = excluded.recording_retention_days, enabled = excluded.enabled, \
     login_settings = excluded.login_settings, session_policy = excluded.session_policy, updated_at_ms = excluded.updated_at_ms";

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("lists of strings and numbers serialise")
}

fn from_row(row: &AnyRow) -> anyhow::Result<Site> {
    let hosts: String = row.try_get("allowed_hosts")?;
    let ranges: String = row.try_get("allowed_private_ranges")?;
    let ports: String = row.try_get("allowed_ports")?;
    let max_sessions: Option<i64> = row.try_get("max_sessions")?;
    let definition = SiteDefinition {
        name: row.try_get("name")?,
        display_name: row.try_get("display_name")?,
        start_url: row.try_get("start_url")?,
        allowed_hosts: serde_json::from_str(&hosts).context("allowed_hosts is not a JSON list")?,
        allowed_private_ranges: serde_json::from_str(&ranges)
            .context("allowed_private_ranges is not a JSON list")?,
        allowed_ports: serde_json::from_str(&ports).context("allowed_ports is not a JSON list")?,
        limits: launcher::SiteLimits {
            memory_bytes: row.try_get::<i64, _>("memory_bytes")? as u64,
            nano_cpus: row.try_get::<i64, _>("nano_cpus")? as u64,
            pids: row.try_get::<i64, _>("pids")? as u32,
            shm_bytes: row.try_get::<i64, _>("shm_bytes")? as u64,
        },
        max_sessions: max_sessions.map(|value| value as u32),
        recording_retention_days: row.try_get::<i64, _>("recording_retention_days")? as u32,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        login: serde_json::from_str(&row.try_get::<String, _>("login_settings")?)
            .context("login_settings is not valid JSON")?,
        policy: serde_json::from_str(&row.try_get::<String, _>("session_policy")?)
            .context("session_policy is not valid JSON")?,
    };
    Ok(Site {
        definition,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

/// Creates or replaces sites in one transaction. Returns, per site, whether it was new.
pub(super) async fn upsert_all(
    db: &Database,
    sites: &[SiteDefinition],
    now_ms: i64,
) -> anyhow::Result<Vec<bool>> {
    let mut transaction = db
        .begin_write()
        .await
        .context("cannot start the site import transaction")?;
    let created = upsert_in(&mut transaction, sites, now_ms).await?;
    transaction
        .commit()
        .await
        .context("cannot commit the site import")?;
    Ok(created)
}

/// Creates or replaces sites inside a caller's transaction. Returns, per site, whether
/// it was new.
pub(super) async fn upsert_in(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    sites: &[SiteDefinition],
    now_ms: i64,
) -> anyhow::Result<Vec<bool>> {
    let mut created = Vec::with_capacity(sites.len());
    for site in sites {
        let existing = sqlx::query("SELECT name FROM sites WHERE name = $1")
            .bind(&site.name)
            .fetch_optional(&mut **transaction)
            .await
            .context("cannot read a site")?;
        created.push(existing.is_none());
        bind_site(sqlx::query(UPSERT), site, now_ms)
            .execute(&mut **transaction)
            .await
            .with_context(|| format!("cannot store site {}", site.name))?;
    }
    Ok(created)
}

fn bind_site<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    site: &'q SiteDefinition,
    now_ms: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    query
        .bind(&site.name)
        .bind(&site.display_name)
        .bind(&site.start_url)
        .bind(to_json(&site.allowed_hosts))
        .bind(to_json(&site.allowed_private_ranges))
        .bind(to_json(&site.allowed_ports))
        .bind(site.limits.memory_bytes as i64)
        .bind(site.limits.nano_cpus as i64)
        .bind(i64::from(site.limits.pids))
        .bind(site.limits.shm_bytes as i64)
        .bind(site.max_sessions.map(i64::from))
        .bind(i64::from(site.recording_retention_days))
        .bind(i64::from(site.enabled))
        .bind(now_ms)
        .bind(to_json(&site.login))
        .bind(to_json(&site.policy))
}

/// Creates or replaces one validated site.
pub async fn upsert(db: &Database, site: &SiteDefinition, now_ms: i64) -> anyhow::Result<()> {
    if let Err(problems) = site.validate("site") {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::bail!("site {} is invalid: {}", site.name, text.join("; "));
    }
    upsert_all(db, std::slice::from_ref(site), now_ms)
        .await
        .map(drop)
}

pub async fn get(db: &Database, name: &str) -> anyhow::Result<Option<Site>> {
    let query = format!("SELECT {SITE_COLUMNS} FROM sites WHERE name = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(name)
        .fetch_optional(db.pool())
        .await
        .context("cannot read a site")?;
    row.as_ref().map(from_row).transpose()
}

/// Every site, enabled or not, by name.
pub async fn list(db: &Database) -> anyhow::Result<Vec<Site>> {
    let query = format!("SELECT {SITE_COLUMNS} FROM sites ORDER BY name");
    let rows = sqlx::query(sqlx::AssertSqlSafe(query))
        .fetch_all(db.pool())
        .await
        .context("cannot list sites")?;
    rows.iter().map(from_row).collect()
}

/// Grants `site` to a person. Granting twice is not an error.
pub async fn grant(
    db: &Database,
    user_id: &str,
    site: &str,
    granted_by: &str,
    now_ms: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO site_grants (user_id, site, granted_by, granted_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, site) DO NOTHING",
    )
    .bind(user_id)
    .bind(site)
    .bind(granted_by)
    .bind(now_ms)
    .execute(db.pool())
    .await
    .with_context(|| format!("cannot grant site {site}; check that the site exists"))?;
    Ok(())
}

/// Removes a grant. Returns whether there was one.
pub async fn revoke(db: &Database, user_id: &str, site: &str) -> anyhow::Result<bool> {
    let result = sqlx::query("DELETE FROM site_grants WHERE user_id = $1 AND site = $2")
        .bind(user_id)
        .bind(site)
        .execute(db.pool())
        .await
        .context("cannot revoke a site grant")?;
    Ok(result.rows_affected() > 0)
}

pub async fn is_granted(db: &Database, user_id: &str, site: &str) -> anyhow::Result<bool> {
    let row = sqlx::query("SELECT site FROM site_grants WHERE user_id = $1 AND site = $2")
        .bind(user_id)
        .bind(site)
        .fetch_optional(db.pool())
        .await
        .context("cannot read site grants")?;
    Ok(row.is_some())
}

/// Names of the sites granted to a person.
pub async fn grants_for(db: &Database, user_id: &str) -> anyhow::Result<Vec<String>> {
    let rows = sqlx::query("SELECT site FROM site_grants WHERE user_id = $1 ORDER BY site")
        .bind(user_id)
        .fetch_all(db.pool())
        .await
        .context("cannot read site grants")?;
    rows.iter()
        .map(|row| row.try_get::<String, _>("site").map_err(Into::into))
        .collect()
}
