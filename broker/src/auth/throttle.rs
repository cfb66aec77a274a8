//! Sign-in throttling: failure counters per username and per client address, in the
//! database so that every broker sharing it enforces the same limits.
//!
//! A scope that reaches its limit within the window is locked for the lockout period.
//! The username scope is keyed by the name typed, whether or not such an account
//! exists, so a lockout reveals nothing about which accounts exist.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;

use crate::db::Database;

/// Limits from `[auth]`.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleLimits {
    pub per_account: u32,
    pub per_address: u32,
    /// Counting window and lockout duration.
    pub lockout: Duration,
}

pub fn account_scope(username: &str) -> String {
    format!("account:{}", super::users::normalize_username(username))
}

pub fn address_scope(addr: IpAddr) -> String {
    format!("address:{addr}")
}

/// Returns how long the longest lock among `scopes` still lasts, if any is locked.
pub async fn locked_for(
    db: &Database,
    scopes: &[&str],
    now_ms: i64,
) -> anyhow::Result<Option<Duration>> {
    let mut longest: Option<i64> = None;
    for scope in scopes {
        let row = sqlx::query("SELECT locked_until_ms FROM sign_in_throttle WHERE scope = $1")
            .bind(*scope)
            .fetch_optional(db.pool())
            .await
            .context("cannot read the sign-in throttle")?;
        if let Some(row) = row {
            let until: i64 = row.try_get("locked_until_ms")?;
            if until > now_ms {
                longest = Some(longest.map_or(until, |current| current.max(until)));
            }
        }
    }
    Ok(longest.map(|until| Duration::from_millis((until - now_ms) as u64)))
}

/// Counts one failure in `scope`; locks the scope when it reaches `limit` within the
/// window. Returns true when this failure locked it.
pub async fn record_failure(
    db: &Database,
    scope: &str,
    limit: u32,
    lockout: Duration,
    now_ms: i64,
) -> anyhow::Result<bool> {
    let window_ms = lockout.as_millis() as i64;
    let row = sqlx::query(
        "INSERT INTO sign_in_throttle (scope, failures, window_started_ms, locked_until_ms) VALUES ($1, 1, $2, 0) \
         ON CONFLICT (scope) DO UPDATE SET \
           failures = CASE WHEN sign_in_throttle.window_started_ms + $3 <= $2 THEN 1 ELSE sign_in_throttle.failures + 1 END, \
           window_started_ms = CASE WHEN sign_in_throttle.window_started_ms + $3 <= $2 THEN $2 ELSE sign_in_throttle.window_started_ms END \
         RETURNING failures",
    )
    .bind(scope)
    .bind(now_ms)
    .bind(window_ms)
    .fetch_one(db.pool())
    .await
    .context("cannot count the failed sign-in")?;
    let failures: i64 = row.try_get("failures")?;

    if failures < i64::from(limit) {
        return Ok(false);
    }
    sqlx::query("UPDATE sign_in_throttle SET locked_until_ms = $1, failures = 0, window_started_ms = $2 WHERE scope = $3")
        .bind(now_ms + window_ms)
        .bind(now_ms)
        .bind(scope)
        .execute(db.pool())
        .await
        .context("cannot lock the sign-in scope")?;
    Ok(true)
}

/// Forgets the failures of a scope after a successful sign-in.
pub async fn clear(db: &Database, scope: &str, now_ms: i64) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM sign_in_throttle WHERE scope = $1 AND locked_until_ms <= $2")
        .bind(scope)
        .bind(now_ms)
        .execute(db.pool())
        .await
        .context("cannot clear the sign-in throttle")?;
    Ok(())
}

/// Lifts the lock and forgets the failures of a scope. Returns true when the scope had
/// a lock still in force at `now_ms`.
pub async fn unlock(db: &Database, scope: &str, now_ms: i64) -> anyhow::Result<bool> {
    let locked = locked_for(db, &[scope], now_ms).await?.is_some();
    sqlx::query("DELETE FROM sign_in_throttle WHERE scope = $1")
        .bind(scope)
        .execute(db.pool())
        .await
        .context("cannot unlock the sign-in scope")?;
    Ok(locked)
}
