//! Use and failure state of bank credentials, in the `credential_state` table.
//!
//! A site's shared credential with `exclusive_use` is held by at most one live session:
//! [`claim`] takes it in a single conditional `UPDATE`, so two launches racing for it
//! cannot both win. A holder whose session has ended no longer counts, so a broker
//! crash never leaves a credential held once the reconciler ended its session.
//!
//! Every failed auto-login adds one to the credential's failure count and a success
//! resets it. Once the count reaches the site's `max_failed_logins` the credential is
//! locked: no session uses it until an admin unlocks it, so Strongroom stops before the
//! bank's own lockout.

use anyhow::Context;
use sqlx::Row;
use uuid::Uuid;

use super::CredentialRef;
use crate::db::Database;

/// Reason a credential cannot be used now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimRejected {
    #[error(
        "{reference} is locked after {failed_logins} failed auto-logins in a row; an administrator must check it and run `strongroom secrets unlock`"
    )]
    Locked {
        reference: String,
        failed_logins: u32,
    },
    #[error("{reference} is in use by another live session; try again when that session has ended")]
    InUse { reference: String },
}

/// A locked credential, as `strongroom secrets locked` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedCredential {
    pub reference: CredentialRef,
    pub failed_logins: u32,
    pub locked_at_ms: i64,
}

/// Result of recording one auto-login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRecord {
    pub failed_logins: u32,
    /// True when this failure locked the credential.
    pub locked_now: bool,
}

fn key(reference: &CredentialRef) -> (&str, &str) {
    (reference.site(), reference.user_id().unwrap_or(""))
}

async fn ensure_row(db: &Database, reference: &CredentialRef, now_ms: i64) -> anyhow::Result<()> {
    let (site, user_id) = key(reference);
    sqlx::query(
        "INSERT INTO credential_state (site, user_id, failed_logins, updated_at_ms) VALUES ($1, $2, 0, $3) \
         ON CONFLICT (site, user_id) DO NOTHING",
    )
    .bind(site)
    .bind(user_id)
    .bind(now_ms)
    .execute(db.pool())
    .await
    .context("cannot create the credential state")?;
    Ok(())
}

/// Checks that the credential is not locked and, when `exclusive`, takes it for
/// `session_id`. Claiming again for the same session succeeds.
pub async fn claim(
    db: &Database,
    reference: &CredentialRef,
    session_id: Uuid,
    exclusive: bool,
    now_ms: i64,
) -> anyhow::Result<Result<(), ClaimRejected>> {
    ensure_row(db, reference, now_ms).await?;
    let (site, user_id) = key(reference);

    if exclusive {
        let claimed = sqlx::query(
            "UPDATE credential_state SET in_use_session = $3, updated_at_ms = $4 \
             WHERE site = $1 AND user_id = $2 AND locked_at_ms IS NULL AND (in_use_session IS NULL \
             OR in_use_session = $3 OR EXISTS (SELECT 1 FROM sessions \
             WHERE sessions.id = credential_state.in_use_session AND sessions.state = 'ended'))",
        )
        .bind(site)
        .bind(user_id)
        .bind(session_id.to_string())
        .bind(now_ms)
        .execute(db.pool())
        .await
        .context("cannot claim the credential")?;
        if claimed.rows_affected() == 1 {
            return Ok(Ok(()));
        }
    }

    let row = sqlx::query(
        "SELECT failed_logins, locked_at_ms FROM credential_state WHERE site = $1 AND user_id = $2",
    )
    .bind(site)
    .bind(user_id)
    .fetch_one(db.pool())
    .await
    .context("cannot read the credential state")?;
    let locked_at_ms: Option<i64> = row.try_get("locked_at_ms")?;
    if locked_at_ms.is_some() {
        return Ok(Err(ClaimRejected::Locked {
            reference: reference.to_string(),
            failed_logins: row.try_get::<i64, _>("failed_logins")? as u32,
        }));
    }
    if exclusive {
        return Ok(Err(ClaimRejected::InUse {
            reference: reference.to_string(),
        }));
    }
    Ok(Ok(()))
}

/// Records an auto-login result. A failure that brings the count to `max_failed`
/// locks the credential.
pub async fn record_login(
    db: &Database,
    reference: &CredentialRef,
    success: bool,
    max_failed: u32,
    now_ms: i64,
) -> anyhow::Result<LoginRecord> {
    ensure_row(db, reference, now_ms).await?;
    let (site, user_id) = key(reference);

    if success {
        sqlx::query(
            "UPDATE credential_state SET failed_logins = 0, updated_at_ms = $3 WHERE site = $1 AND user_id = $2",
        )
        .bind(site)
        .bind(user_id)
        .bind(now_ms)
        .execute(db.pool())
        .await
        .context("cannot reset the failed login count")?;
        return Ok(LoginRecord {
            failed_logins: 0,
            locked_now: false,
        });
    }

    // One statement counts the failure and sets the lock, so two failures at once
    // cannot both miss the limit.
    let row = sqlx::query(
        "UPDATE credential_state SET failed_logins = failed_logins + 1, updated_at_ms = $3, \
         locked_at_ms = CASE WHEN locked_at_ms IS NULL AND failed_logins + 1 >= $4 THEN $3 ELSE locked_at_ms END \
         WHERE site = $1 AND user_id = $2 RETURNING failed_logins, locked_at_ms",
    )
    .bind(site)
    .bind(user_id)
    .bind(now_ms)
    .bind(i64::from(max_failed))
    .fetch_one(db.pool())
    .await
    .context("cannot count the failed login")?;
    let failed_logins = row.try_get::<i64, _>("failed_logins")? as u32;
    let locked_at_ms: Option<i64> = row.try_get("locked_at_ms")?;
    Ok(LoginRecord {
        failed_logins,
        locked_now: locked_at_ms == Some(now_ms) && failed_logins >= max_failed,
    })
}

/// Lists every locked credential, by site and user.
pub async fn locked(db: &Database) -> anyhow::Result<Vec<LockedCredential>> {
    let rows = sqlx::query(
        "SELECT site, user_id, failed_logins, locked_at_ms FROM credential_state \
         WHERE locked_at_ms IS NOT NULL ORDER BY site, user_id",
    )
    .fetch_all(db.pool())
    .await
    .context("cannot list locked credentials")?;
    rows.iter()
        .map(|row| {
            let site: String = row.try_get("site")?;
            let user_id: String = row.try_get("user_id")?;
            let reference = if user_id.is_empty() {
                CredentialRef::shared(&site)?
            } else {
                CredentialRef::personal(&site, &user_id)?
            };
            Ok(LockedCredential {
                reference,
                failed_logins: row.try_get::<i64, _>("failed_logins")? as u32,
                locked_at_ms: row.try_get("locked_at_ms")?,
            })
        })
        .collect()
}

/// Clears a credential's lock and failure count. Returns whether it was locked.
pub async fn unlock(db: &Database, reference: &CredentialRef, now_ms: i64) -> anyhow::Result<bool> {
    let (site, user_id) = key(reference);
    let result = sqlx::query(
        "UPDATE credential_state SET failed_logins = 0, locked_at_ms = NULL, updated_at_ms = $3 \
         WHERE site = $1 AND user_id = $2 AND locked_at_ms IS NOT NULL",
    )
    .bind(site)
    .bind(user_id)
    .bind(now_ms)
    .execute(db.pool())
    .await
    .context("cannot unlock the credential")?;
    Ok(result.rows_affected() > 0)
}
