//! Portal sessions: the signed-in state behind the portal cookie.
//!
//! The cookie holds 32 random bytes (base64url); the table stores only their SHA-256,
//! so a copy of the database cannot be replayed as a cookie. A session ends at its
//! absolute expiry, after the idle timeout, at logout, through back-channel logout, or
//! when an admin or the session lifecycle ends it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::Role;
use super::users::encode_roles;
use crate::db::Database;

/// How often `last_seen_ms` is written at most, so that a busy page does not write
/// on every request. The idle timeout is therefore exact to within this many ms.
const TOUCH_INTERVAL_MS: i64 = 15_000;

/// Why a portal session ended. Stored in `end_reason` and sent to subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    Logout,
    IdleTimeout,
    Expired,
    BackChannelLogout,
    /// An admin or the broker ended the person's sessions.
    Revoked,
    /// The person lost every role.
    NoRole,
    /// The person signed in again while at the limit of open portal sessions, and this
    /// was the oldest.
    SessionLimit,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::Expired => "expired",
            EndReason::BackChannelLogout => "backchannel_logout",
            EndReason::Revoked => "revoked",
            EndReason::NoRole => "no_role",
            EndReason::SessionLimit => "session_limit",
        }
    }
}

/// Sent on the portal-session-ended channel for every session that ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalSessionEnded {
    pub user_id: String,
    pub session_id: String,
    pub reason: EndReason,
}

/// A usable portal session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalSession {
    pub id: String,
    pub user_id: String,
    pub method: String,
    pub oidc_sid: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// The cookie value: shown to the browser once, never stored. Zeroized on drop.
pub struct SessionToken(Zeroizing<String>);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken([redacted])")
    }
}

impl SessionToken {
    pub(crate) fn generate() -> SessionToken {
        let bytes = Zeroizing::new(rand::random::<[u8; 32]>());
        SessionToken(Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_slice())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Values for a new session.
pub struct NewSession<'a> {
    pub user_id: &'a str,
    pub roles: &'a BTreeSet<Role>,
    pub method: &'a str,
    pub oidc_sid: Option<&'a str>,
    pub client_addr: Option<IpAddr>,
    pub idle_ms: i64,
    pub max_ms: i64,
}

/// Inserts a session and returns its id and the cookie value.
pub async fn create(
    db: &Database,
    new: NewSession<'_>,
    now_ms: i64,
) -> anyhow::Result<(String, SessionToken)> {
    let id = Uuid::new_v4().to_string();
    let token = SessionToken::generate();
    sqlx::query(
        "INSERT INTO portal_sessions (id, token_hash, user_id, roles, method, oidc_sid, client_addr, created_at_ms, last_seen_ms, expires_at_ms, idle_expires_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10)",
    )
    .bind(&id)
    .bind(token_hash(token.as_str()))
    .bind(new.user_id)
    .bind(encode_roles(new.roles))
    .bind(new.method)
    .bind(new.oidc_sid)
    .bind(new.client_addr.map(|addr| addr.to_string()))
    .bind(now_ms)
    .bind(now_ms + new.max_ms)
    .bind(now_ms + new.idle_ms.min(new.max_ms))
    .execute(db.pool())
    .await
    .context("cannot create the portal session")?;
    Ok((id, token))
}

/// Result of looking up a cookie.
#[derive(Debug)]
pub enum Lookup {
    Active(PortalSession),
    /// The session existed but has now ended for this reason; the caller reports it.
    JustEnded(PortalSessionEnded),
    Unknown,
}

/// Finds the open session for a cookie value, extends its idle expiry, and ends it
/// when it has timed out.
pub async fn lookup(
    db: &Database,
    token: &str,
    idle_ms: i64,
    now_ms: i64,
) -> anyhow::Result<Lookup> {
    let row = sqlx::query(
        "SELECT id, user_id, method, oidc_sid, created_at_ms, last_seen_ms, expires_at_ms, idle_expires_at_ms FROM portal_sessions \
         WHERE token_hash = $1 AND ended_at_ms IS NULL",
    )
    .bind(token_hash(token))
    .fetch_optional(db.pool())
    .await
    .context("cannot read the portal session")?;
    let Some(row) = row else {
        return Ok(Lookup::Unknown);
    };

    let session = PortalSession {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        method: row.try_get("method")?,
        oidc_sid: row.try_get("oidc_sid")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
    };
    let last_seen: i64 = row.try_get("last_seen_ms")?;
    let idle_expires: i64 = row.try_get("idle_expires_at_ms")?;

    let expired = if now_ms >= session.expires_at_ms {
        Some(EndReason::Expired)
    } else if now_ms >= idle_expires {
        Some(EndReason::IdleTimeout)
    } else {
        None
    };
    if let Some(reason) = expired {
        return Ok(match end(db, &session.id, reason, now_ms).await? {
            Some(ended) => Lookup::JustEnded(ended),
            None => Lookup::Unknown,
        });
    }

    if now_ms - last_seen >= TOUCH_INTERVAL_MS {
        sqlx::query("UPDATE portal_sessions SET last_seen_ms = $1, idle_expires_at_ms = $2 WHERE id = $3 AND ended_at_ms IS NULL")
            .bind(now_ms)
            .bind((now_ms + idle_ms).min(session.expires_at_ms))
            .bind(&session.id)
            .execute(db.pool())
            .await
            .context("cannot extend the portal session")?;
    }
    Ok(Lookup::Active(session))
}

/// Ends one session. Returns the event when this call ended it, `None` when it had
/// already ended or does not exist.
pub async fn end(
    db: &Database,
    session_id: &str,
    reason: EndReason,
    now_ms: i64,
) -> anyhow::Result<Option<PortalSessionEnded>> {
    let row = sqlx::query("UPDATE portal_sessions SET ended_at_ms = $1, end_reason = $2 WHERE id = $3 AND ended_at_ms IS NULL RETURNING user_id")
        .bind(now_ms)
        .bind(reason.as_str())
        .bind(session_id)
        .fetch_optional(db.pool())
        .await
        .context("cannot end the portal session")?;
    match row {
        Some(row) => Ok(Some(PortalSessionEnded {
            user_id: row.try_get("user_id")?,
            session_id: session_id.to_owned(),
            reason,
        })),
        None => Ok(None),
    }
}

/// Ends every open session of a person, or only those with the given OIDC `sid`.
pub async fn end_for_user(
    db: &Database,
    user_id: &str,
    sid: Option<&str>,
    reason: EndReason,
    now_ms: i64,
) -> anyhow::Result<Vec<PortalSessionEnded>> {
    let rows = match sid {
        None => {
            sqlx::query("UPDATE portal_sessions SET ended_at_ms = $1, end_reason = $2 WHERE user_id = $3 AND ended_at_ms IS NULL RETURNING id")
                .bind(now_ms)
                .bind(reason.as_str())
                .bind(user_id)
                .fetch_all(db.pool())
                .await
        }
        Some(sid) => {
            sqlx::query("UPDATE portal_sessions SET ended_at_ms = $1, end_reason = $2 WHERE user_id = $3 AND oidc_sid = $4 AND ended_at_ms IS NULL RETURNING id")
                .bind(now_ms)
                .bind(reason.as_str())
                .bind(user_id)
                .bind(sid)
                .fetch_all(db.pool())
                .await
        }
    }
    .context("cannot end the person's portal sessions")?;

    rows.iter()
        .map(|row| {
            Ok(PortalSessionEnded {
                user_id: user_id.to_owned(),
                session_id: row.try_get("id")?,
                reason,
            })
        })
        .collect()
}

/// Ends every session whose absolute or idle expiry has passed.
pub async fn end_expired(db: &Database, now_ms: i64) -> anyhow::Result<Vec<PortalSessionEnded>> {
    let mut ended = Vec::new();
    for (reason, condition) in [
        (EndReason::Expired, "expires_at_ms <= $3"),
        (EndReason::IdleTimeout, "idle_expires_at_ms <= $3"),
    ] {
        let statement = format!(
            "UPDATE portal_sessions SET ended_at_ms = $1, end_reason = $2 WHERE ended_at_ms IS NULL AND {condition} RETURNING id, user_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(now_ms)
            .bind(reason.as_str())
            .bind(now_ms)
            .fetch_all(db.pool())
            .await
            .context("cannot end expired portal sessions")?;
        for row in rows {
            ended.push(PortalSessionEnded {
                user_id: row.try_get("user_id")?,
                session_id: row.try_get("id")?,
                reason,
            });
        }
    }
    Ok(ended)
}

/// Ids of a person's open sessions.
pub async fn open_sessions(db: &Database, user_id: &str) -> anyhow::Result<Vec<String>> {
    let rows = sqlx::query("SELECT id FROM portal_sessions WHERE user_id = $1 AND ended_at_ms IS NULL ORDER BY created_at_ms")
        .bind(user_id)
        .fetch_all(db.pool())
        .await
        .context("cannot list portal sessions")?;
    rows.iter()
        .map(|row| {
            row.try_get("id")
                .context("cannot decode a portal session id")
        })
        .collect()
}
