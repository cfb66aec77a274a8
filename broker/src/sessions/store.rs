//! Storage of sessions and quotas, and the atomic slot reservation.
//!
//! A session holds a slot from its reservation until it reaches `ended`. Reservation
//! counts live sessions and inserts the new one inside one serialised transaction:
//! PostgreSQL through a transaction-scoped advisory lock, SQLite through the write
//! lock that [`Database::begin_write`] takes at `BEGIN IMMEDIATE`. So however many
//! launches arrive at once, the person's quota, the site limit and the host limit are
//! never exceeded.

use anyhow::Context;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::db::{Backend, Database};

/// Key of the PostgreSQL advisory lock that serialises reservations ("SRSESSN1" in ASCII).
///
/// NOTE: one key for every reservation, not one per person, because the site and host
/// limits span people: two people launching the same site must also be serialised.
/// The locked transaction runs three counts and one insert, so the lock is short.
const POSTGRES_RESERVE_LOCK: i64 = 0x5352_5345_5353_4E31;

/// The states that hold a slot, as an SQL list.
const LIVE_STATES: &str = "('reserved', 'starting', 'running', 'ending')";

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// A slot is held; no Docker call has been made yet.
    Reserved,
    /// The launcher is creating the workspace.
    Starting,
    /// The workspace runs and the egress proxy serves it.
    Running,
    /// Ending has begun; the slot is still held until the workspace is gone.
    Ending,
    /// The slot is free.
    Ended,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Reserved => "reserved",
            SessionState::Starting => "starting",
            SessionState::Running => "running",
            SessionState::Ending => "ending",
            SessionState::Ended => "ended",
        }
    }

    pub fn parse(text: &str) -> Option<SessionState> {
        match text {
            "reserved" => Some(SessionState::Reserved),
            "starting" => Some(SessionState::Starting),
            "running" => Some(SessionState::Running),
            "ending" => Some(SessionState::Ending),
            "ended" => Some(SessionState::Ended),
            _ => None,
        }
    }

    /// Whether the session holds a slot.
    pub fn is_live(self) -> bool {
        self != SessionState::Ended
    }
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionRecord {
    pub id: Uuid,
    pub user_id: String,
    pub site: String,
    /// The broker instance whose launcher runs the workspace.
    pub instance_id: String,
    pub state: SessionState,
    pub client_addr: Option<String>,
    pub created_at_ms: i64,
    /// When the workspace started running.
    pub started_at_ms: Option<i64>,
    /// Last real person input (or the start); the idle timer counts from here.
    pub last_input_at_ms: i64,
    pub idle_warned_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    /// Reason code, such as `idle_timeout` or `workspace_exited`.
    pub end_reason: Option<String>,
    /// A sentence with more detail, such as the launcher's "workspace exited with code 137".
    pub end_detail: Option<String>,
    /// Who ended it, as `user:ID` or `system:COMPONENT`.
    pub ended_by: Option<String>,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub network_name: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub workspace_address: Option<String>,
}

const COLUMNS: &str = "id, user_id, site, instance_id, state, client_addr, created_at_ms, started_at_ms, last_input_at_ms, \
     idle_warned_at_ms, ended_at_ms, end_reason, end_detail, ended_by, container_id, container_name, network_name, subnet, \
     gateway, workspace_address";

fn from_row(row: &AnyRow) -> anyhow::Result<SessionRecord> {
    let id: String = row.try_get("id")?;
    let state: String = row.try_get("state")?;
    Ok(SessionRecord {
        id: Uuid::parse_str(&id).with_context(|| format!("session id {id:?} is not a UUID"))?,
        user_id: row.try_get("user_id")?,
        site: row.try_get("site")?,
        instance_id: row.try_get("instance_id")?,
        state: SessionState::parse(&state)
            .with_context(|| format!("unknown session state {state:?}"))?,
        client_addr: row.try_get("client_addr")?,
        created_at_ms: row.try_get("created_at_ms")?,
        started_at_ms: row.try_get("started_at_ms")?,
        last_input_at_ms: row.try_get("last_input_at_ms")?,
        idle_warned_at_ms: row.try_get("idle_warned_at_ms")?,
        ended_at_ms: row.try_get("ended_at_ms")?,
        end_reason: row.try_get("end_reason")?,
        end_detail: row.try_get("end_detail")?,
        ended_by: row.try_get("ended_by")?,
        container_id: row.try_get("container_id")?,
        container_name: row.try_get("container_name")?,
        network_name: row.try_get("network_name")?,
        subnet: row.try_get("subnet")?,
        gateway: row.try_get("gateway")?,
        workspace_address: row.try_get("workspace_address")?,
    })
}

/// A slot to reserve, with the limits that apply to it.
#[derive(Debug, Clone)]
pub struct Reservation<'a> {
    pub session_id: Uuid,
    pub user_id: &'a str,
    pub site: &'a str,
    pub instance_id: &'a str,
    pub client_addr: Option<String>,
    pub now_ms: i64,
    /// Quota of a person with no row in `session_quotas`.
    pub default_quota: u32,
    /// Live sessions of the site at once, all people and brokers together.
    pub site_limit: Option<u32>,
    /// Live sessions of this broker instance at once.
    pub host_limit: u32,
}

/// Result of a reservation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved,
    QuotaReached { limit: u32 },
    SiteLimitReached { limit: u32 },
    HostCapacityReached { limit: u32 },
}

/// Reserves a slot atomically, or reports which limit refused it.
pub async fn reserve(
    db: &Database,
    reservation: &Reservation<'_>,
) -> anyhow::Result<ReserveOutcome> {
    let mut transaction = db
        .begin_write()
        .await
        .context("cannot start the reservation transaction")?;
    let outcome = reserve_locked(db.backend(), &mut transaction, reservation).await?;
    let finished = if outcome == ReserveOutcome::Reserved {
        transaction.commit().await
    } else {
        transaction.rollback().await
    };
    finished.context("cannot finish the reservation transaction")?;
    Ok(outcome)
}

async fn count(connection: &mut AnyConnection, column: &str, value: &str) -> anyhow::Result<u32> {
    let query =
        format!("SELECT COUNT(*) FROM sessions WHERE {column} = $1 AND state IN {LIVE_STATES}");
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .bind(value)
        .fetch_one(&mut *connection)
        .await
        .with_context(|| format!("cannot count live sessions by {column}"))?;
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

async fn reserve_locked(
    backend: Backend,
    connection: &mut AnyConnection,
    reservation: &Reservation<'_>,
) -> anyhow::Result<ReserveOutcome> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(POSTGRES_RESERVE_LOCK)
            .execute(&mut *connection)
            .await
            .context("cannot take the session reservation lock")?;
    }

    let quota: Option<i64> =
        sqlx::query_scalar("SELECT max_sessions FROM session_quotas WHERE user_id = $1")
            .bind(reservation.user_id)
            .fetch_optional(&mut *connection)
            .await
            .context("cannot read the session quota")?;
    let quota = quota.map_or(reservation.default_quota, |value| {
        u32::try_from(value).unwrap_or(0)
    });

    if count(connection, "user_id", reservation.user_id).await? >= quota {
        return Ok(ReserveOutcome::QuotaReached { limit: quota });
    }
    if let Some(limit) = reservation.site_limit
        && count(connection, "site", reservation.site).await? >= limit
    {
        return Ok(ReserveOutcome::SiteLimitReached { limit });
    }
    if count(connection, "instance_id", reservation.instance_id).await? >= reservation.host_limit {
        return Ok(ReserveOutcome::HostCapacityReached {
            limit: reservation.host_limit,
        });
    }

    sqlx::query(
        "INSERT INTO sessions (id, user_id, site, instance_id, state, client_addr, created_at_ms, last_input_at_ms) \
         VALUES ($1, $2, $3, $4, 'reserved', $5, $6, $6)",
    )
    .bind(reservation.session_id.to_string())
    .bind(reservation.user_id)
    .bind(reservation.site)
    .bind(reservation.instance_id)
    .bind(reservation.client_addr.clone())
    .bind(reservation.now_ms)
    .execute(&mut *connection)
    .await
    .context("cannot insert the session reservation")?;
    Ok(ReserveOutcome::Reserved)
}

pub async fn get(db: &Database, session_id: Uuid) -> anyhow::Result<Option<SessionRecord>> {
    let query = format!("SELECT {COLUMNS} FROM sessions WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(session_id.to_string())
        .fetch_optional(db.pool())
        .await
        .context("cannot read a session")?;
    row.as_ref().map(from_row).transpose()
}

async fn select(
    db: &Database,
    condition: &str,
    binds: &[&str],
    limit: i64,
) -> anyhow::Result<Vec<SessionRecord>> {
    let query = format!(
        "SELECT {COLUMNS} FROM sessions WHERE {condition} ORDER BY created_at_ms DESC, id LIMIT {limit}"
    );
    let mut statement = sqlx::query(sqlx::AssertSqlSafe(query));
    for value in binds {
        statement = statement.bind(*value);
    }
    let rows = statement
        .fetch_all(db.pool())
        .await
        .context("cannot list sessions")?;
    rows.iter().map(from_row).collect()
}

/// A person's sessions, live and ended, newest first.
pub async fn list_for_user(
    db: &Database,
    user_id: &str,
    limit: i64,
) -> anyhow::Result<Vec<SessionRecord>> {
    select(db, "user_id = $1", &[user_id], limit).await
}

/// Live sessions of a person, on any broker.
pub async fn list_live_for_user(
    db: &Database,
    user_id: &str,
) -> anyhow::Result<Vec<SessionRecord>> {
    select(
        db,
        &format!("user_id = $1 AND state IN {LIVE_STATES}"),
        &[user_id],
        i64::MAX,
    )
    .await
}

/// Live sessions of one broker instance.
pub async fn list_live(db: &Database, instance_id: &str) -> anyhow::Result<Vec<SessionRecord>> {
    select(
        db,
        &format!("instance_id = $1 AND state IN {LIVE_STATES}"),
        &[instance_id],
        i64::MAX,
    )
    .await
}

/// Live sessions of every broker.
pub async fn list_live_all(db: &Database) -> anyhow::Result<Vec<SessionRecord>> {
    select(db, &format!("state IN {LIVE_STATES}"), &[], i64::MAX).await
}

/// Sessions of one broker instance whose launch completed.
pub async fn list_running(db: &Database, instance_id: &str) -> anyhow::Result<Vec<SessionRecord>> {
    select(
        db,
        "instance_id = $1 AND state = 'running'",
        &[instance_id],
        i64::MAX,
    )
    .await
}

/// Number of live sessions of a person.
pub async fn count_live_for_user(db: &Database, user_id: &str) -> anyhow::Result<u32> {
    let query =
        format!("SELECT COUNT(*) FROM sessions WHERE user_id = $1 AND state IN {LIVE_STATES}");
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .bind(user_id)
        .fetch_one(db.pool())
        .await
        .context("cannot count live sessions")?;
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

/// Moves a reserved session to `starting`. False when it is no longer reserved.
pub async fn mark_starting(db: &Database, session_id: Uuid) -> anyhow::Result<bool> {
    let result =
        sqlx::query("UPDATE sessions SET state = 'starting' WHERE id = $1 AND state = 'reserved'")
            .bind(session_id.to_string())
            .execute(db.pool())
            .await
            .context("cannot mark a session as starting")?;
    Ok(result.rows_affected() == 1)
}

/// Where the launcher put a workspace.
#[derive(Debug, Clone)]
pub struct Placement {
    pub container_id: String,
    pub container_name: String,
    pub network_name: String,
    pub subnet: String,
    pub gateway: String,
    pub workspace_address: String,
}

/// Moves a starting session to `running` and starts its idle timer. False when it is
/// no longer starting (it was ended during the launch).
pub async fn mark_running(
    db: &Database,
    session_id: Uuid,
    placement: &Placement,
    now_ms: i64,
) -> anyhow::Result<bool> {
    let result = sqlx::query(
        "UPDATE sessions SET state = 'running', started_at_ms = $2, last_input_at_ms = $2, container_id = $3, \
         container_name = $4, network_name = $5, subnet = $6, gateway = $7, workspace_address = $8 \
         WHERE id = $1 AND state = 'starting'",
    )
    .bind(session_id.to_string())
    .bind(now_ms)
    .bind(&placement.container_id)
    .bind(&placement.container_name)
    .bind(&placement.network_name)
    .bind(&placement.subnet)
    .bind(&placement.gateway)
    .bind(&placement.workspace_address)
    .execute(db.pool())
    .await
    .context("cannot mark a session as running")?;
    Ok(result.rows_affected() == 1)
}

/// Stores where a workspace was placed without changing the state, so that a session
/// ended during its launch still names its container.
pub async fn store_placement(
    db: &Database,
    session_id: Uuid,
    placement: &Placement,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE sessions SET container_id = $2, container_name = $3, network_name = $4, subnet = $5, gateway = $6, \
         workspace_address = $7 WHERE id = $1",
    )
    .bind(session_id.to_string())
    .bind(&placement.container_id)
    .bind(&placement.container_name)
    .bind(&placement.network_name)
    .bind(&placement.subnet)
    .bind(&placement.gateway)
    .bind(&placement.workspace_address)
    .execute(db.pool())
    .await
    .context("cannot store a session's placement")?;
    Ok(())
}

/// Result of asking a session to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginEnding {
    /// The session moved to `ending` from this state.
    Began {
        from: SessionState,
    },
    /// The session was already ending or ended, so its first reason is kept.
    AlreadyEnding,
    NotFound,
}

/// Moves a live session to `ending` with its reason. The first reason wins: a session
/// already ending keeps the reason it has.
pub async fn begin_ending(
    db: &Database,
    session_id: Uuid,
    reason: &str,
    detail: Option<&str>,
    ended_by: &str,
) -> anyhow::Result<BeginEnding> {
    // Other writers may change the state between the read and the conditional update.
    // A lost race updates zero rows, so the loop retries with the new state.
    for _ in 0..8 {
        let Some(record) = get(db, session_id).await? else {
            return Ok(BeginEnding::NotFound);
        };
        if matches!(record.state, SessionState::Ending | SessionState::Ended) {
            return Ok(BeginEnding::AlreadyEnding);
        }
        let result = sqlx::query(
            "UPDATE sessions SET state = 'ending', end_reason = $3, end_detail = $4, ended_by = $5 WHERE id = $1 AND state = $2",
        )
        .bind(session_id.to_string())
        .bind(record.state.as_str())
        .bind(reason)
        .bind(detail)
        .bind(ended_by)
        .execute(db.pool())
        .await
        .context("cannot mark a session as ending")?;
        if result.rows_affected() == 1 {
            return Ok(BeginEnding::Began { from: record.state });
        }
    }
    anyhow::bail!("session {session_id} changed state too often while being ended")
}

/// Moves an ending session to `ended`, which frees its slot. False when it was not ending.
pub async fn finish_ending(db: &Database, session_id: Uuid, now_ms: i64) -> anyhow::Result<bool> {
    let result = sqlx::query(
        "UPDATE sessions SET state = 'ended', ended_at_ms = $2 WHERE id = $1 AND state = 'ending'",
    )
    .bind(session_id.to_string())
    .bind(now_ms)
    .execute(db.pool())
    .await
    .context("cannot mark a session as ended")?;
    Ok(result.rows_affected() == 1)
}

/// Resets the idle timer of a running session. False when it is not running.
pub async fn record_input(db: &Database, session_id: Uuid, now_ms: i64) -> anyhow::Result<bool> {
    let result = sqlx::query(
        "UPDATE sessions SET last_input_at_ms = $2, idle_warned_at_ms = NULL WHERE id = $1 AND state = 'running'",
    )
    .bind(session_id.to_string())
    .bind(now_ms)
    .execute(db.pool())
    .await
    .context("cannot record session input")?;
    Ok(result.rows_affected() == 1)
}

/// Marks that the idle warning went out. False when it already had or the session is not running.
pub async fn mark_idle_warned(
    db: &Database,
    session_id: Uuid,
    now_ms: i64,
) -> anyhow::Result<bool> {
    let result = sqlx::query(
        "UPDATE sessions SET idle_warned_at_ms = $2 WHERE id = $1 AND state = 'running' AND idle_warned_at_ms IS NULL",
    )
    .bind(session_id.to_string())
    .bind(now_ms)
    .execute(db.pool())
    .await
    .context("cannot mark the idle warning")?;
    Ok(result.rows_affected() == 1)
}

/// A person's own quota, if one is set.
pub async fn get_quota(db: &Database, user_id: &str) -> anyhow::Result<Option<u32>> {
    let value: Option<i64> =
        sqlx::query_scalar("SELECT max_sessions FROM session_quotas WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(db.pool())
            .await
            .context("cannot read a session quota")?;
    Ok(value.map(|value| u32::try_from(value).unwrap_or(0)))
}

pub async fn set_quota(
    db: &Database,
    user_id: &str,
    max_sessions: u32,
    updated_by: &str,
    now_ms: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO session_quotas (user_id, max_sessions, updated_by, updated_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id) DO UPDATE SET max_sessions = excluded.max_sessions, updated_by = excluded.updated_by, \
         updated_at_ms = excluded.updated_at_ms",
    )
    .bind(user_id)
    .bind(i64::from(max_sessions))
    .bind(updated_by)
    .bind(now_ms)
    .execute(db.pool())
    .await
    .context("cannot store a session quota")?;
    Ok(())
}
