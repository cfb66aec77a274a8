//! Per-person session quotas as the `strongroom quota` command reads and sets them.
//! Each change is audited with the previous and the new value.

use anyhow::Context as _;

use super::store;
use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::auth::users;
use crate::db::Database;

/// Largest quota the command accepts; a higher number is almost certainly a typo, and
/// the host's own capacity (`sessions.host_max_sessions`) applies anyway.
pub const MAX_QUOTA: u32 = 1000;

/// The quota that applies to one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaView {
    pub user_id: String,
    /// The local account name; `None` for a person known only through OIDC.
    pub username: Option<String>,
    /// The person's own quota, if an admin set one.
    pub own: Option<u32>,
    /// `own`, or else `sessions.default_quota`.
    pub effective: u32,
    /// Live sessions of the person now.
    pub live: u32,
}

/// Reason a quota command failed.
#[derive(Debug, thiserror::Error)]
pub enum QuotaCommandError {
    #[error("no person named {0:?}; list them with `strongroom user list`")]
    UnknownPerson(String),
    #[error(
        "quota {value} is above the maximum of {MAX_QUOTA}; give a number from 0 to {MAX_QUOTA}"
    )]
    TooLarge { value: u32 },
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

/// Reads the quota of a person given by username or id.
pub async fn show(
    db: &Database,
    person: &str,
    default_quota: u32,
) -> Result<QuotaView, QuotaCommandError> {
    let user = users::find(db, person)
        .await?
        .ok_or_else(|| QuotaCommandError::UnknownPerson(person.to_owned()))?;
    let own = store::get_quota(db, &user.id).await?;
    let live = store::count_live_for_user(db, &user.id).await?;
    Ok(QuotaView {
        user_id: user.id,
        username: user.username,
        own,
        effective: own.unwrap_or(default_quota),
        live,
    })
}

/// Sets the quota of a person given by username or id, audits the change, and returns
/// the quota before and after. Sessions above a lowered quota keep running; the quota
/// applies to the next launch.
pub async fn set(
    db: &Database,
    audit: &AuditLog,
    actor: Actor,
    person: &str,
    max_sessions: u32,
    default_quota: u32,
) -> Result<(QuotaView, QuotaView), QuotaCommandError> {
    if max_sessions > MAX_QUOTA {
        return Err(QuotaCommandError::TooLarge {
            value: max_sessions,
        });
    }
    let before = show(db, person, default_quota).await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    store::set_quota(
        db,
        &before.user_id,
        max_sessions,
        &super::actor_text(&actor),
        now_ms,
    )
    .await
    .context("cannot store the quota")?;

    let event = EventBuilder::new(actor, Action::QuotaChanged)
        .target(before.user_id.clone())
        .detail("previous", before.effective)
        .detail("max_sessions", max_sessions)
        .build();
    audit
        .append(event)
        .await
        .context("cannot audit the quota change")?;

    let after = show(db, person, default_quota).await?;
    Ok((before, after))
}
