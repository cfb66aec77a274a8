//! Dual control of site changes that widen what a session may reach or where a
//! credential may go.
//!
//! When dual control applies ([`is_required`]), an import that creates a site or
//! changes its allowlist, credential origins, login or logout recipe or credential
//! source does not touch the `sites` row. It stores the whole new definition in
//! `site_changes` as pending. A second admin, not the requester, approves it, which
//! applies it, or rejects it. Both steps are audited as `admin.site.changed`.
//!
//! On the command line (`--admin NAME`) the named admin confirms with their password
//! and TOTP code ([`super::confirm`]); in the admin console the signed-in admin decides.
//! NOTE: anyone who runs `strongroom` as the service user can still edit the database
//! directly; the audit chain then shows the change without its events.

use anyhow::Context;
use sqlx::Row;
use uuid::Uuid;

use super::{Site, SiteDefinition};
use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::auth::Role;
use crate::config::sites::DualControl;
use crate::db::Database;

/// A stored change request.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingChange {
    pub id: Uuid,
    pub definition: SiteDefinition,
    /// Controlled fields that differ from the stored site, or `new site`.
    pub changed_fields: Vec<String>,
    pub requested_by: String,
    pub requested_at_ms: i64,
    pub status: String,
}

/// Error of an approval or rejection that was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("no pending site change {0}; `strongroom site pending` lists them")]
    NotPending(Uuid),
    #[error("change {id} was requested by {admin}; a second admin must approve or reject it")]
    SameAdmin { id: Uuid, admin: String },
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

/// Returns the controlled fields in which `new` differs from `old`. A new site lists
/// `new site`.
pub fn controlled_changes(old: Option<&SiteDefinition>, new: &SiteDefinition) -> Vec<String> {
    let Some(old) = old else {
        return vec!["new site".to_owned()];
    };
    let checks = [
        ("allowed_hosts", old.allowed_hosts != new.allowed_hosts),
        (
            "allowed_private_ranges",
            old.allowed_private_ranges != new.allowed_private_ranges,
        ),
        ("allowed_ports", old.allowed_ports != new.allowed_ports),
        (
            "login.credential_origins",
            old.login.credential_origins != new.login.credential_origins,
        ),
        ("login.steps", old.login.recipe != new.login.recipe),
        (
            "login.logout_steps",
            old.login.logout_recipe != new.login.logout_recipe,
        ),
        (
            "login.credential_source",
            old.login.credential_source != new.login.credential_source,
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(field, _)| field.to_owned())
        .collect()
}

/// Returns whether site changes need a second admin: always, never, or (the default)
/// when at least two accounts hold the admin role.
pub async fn is_required(db: &Database, setting: DualControl) -> anyhow::Result<bool> {
    match setting {
        DualControl::On => Ok(true),
        DualControl::Off => Ok(false),
        DualControl::Auto => {
            let admins = crate::auth::users::list(db)
                .await?
                .iter()
                .filter(|user| user.roles.contains(&Role::Admin))
                .count();
            Ok(admins >= 2)
        }
    }
}

/// Stores a change request inside the import's transaction.
pub(super) async fn submit_in(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    definition: &SiteDefinition,
    changed_fields: &[String],
    requested_by: &str,
    now_ms: i64,
) -> anyhow::Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO site_changes (id, site, definition, changed_fields, requested_by, requested_at_ms, status) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending')",
    )
    .bind(id.to_string())
    .bind(&definition.name)
    .bind(serde_json::to_string(definition).context("cannot encode the site definition")?)
    .bind(serde_json::to_string(changed_fields).context("cannot encode the changed fields")?)
    .bind(requested_by)
    .bind(now_ms)
    .execute(&mut **transaction)
    .await
    .with_context(|| format!("cannot store the pending change of site {}", definition.name))?;
    Ok(id)
}

fn from_row(row: &sqlx::any::AnyRow) -> anyhow::Result<PendingChange> {
    let id: String = row.try_get("id")?;
    Ok(PendingChange {
        id: id.parse().context("site change id is not a UUID")?,
        definition: serde_json::from_str(&row.try_get::<String, _>("definition")?)
            .context("stored site definition is not valid")?,
        changed_fields: serde_json::from_str(&row.try_get::<String, _>("changed_fields")?)
            .context("stored changed fields are not a JSON list")?,
        requested_by: row.try_get("requested_by")?,
        requested_at_ms: row.try_get("requested_at_ms")?,
        status: row.try_get("status")?,
    })
}

/// Lists every pending change, oldest first.
pub async fn pending(db: &Database) -> anyhow::Result<Vec<PendingChange>> {
    let rows = sqlx::query(
        "SELECT id, definition, changed_fields, requested_by, requested_at_ms, status FROM site_changes \
         WHERE status = 'pending' ORDER BY requested_at_ms, id",
    )
    .fetch_all(db.pool())
    .await
    .context("cannot list pending site changes")?;
    rows.iter().map(from_row).collect()
}

/// Approves a pending change and applies it, in one transaction, then audits the
/// approval. `admin` is the approving admin's user id and must differ from the
/// requester.
pub async fn approve(
    db: &Database,
    audit: &AuditLog,
    id: Uuid,
    admin: &str,
    now_ms: i64,
) -> Result<Site, DecisionError> {
    let change = decide(db, id, admin, "approved", now_ms).await?;
    let site = super::get(db, &change.definition.name)
        .await?
        .context("the approved site is missing after the change")?;
    audit_decision(audit, &change, admin, "approved").await?;
    Ok(site)
}

/// Rejects a pending change and audits the rejection.
pub async fn reject(
    db: &Database,
    audit: &AuditLog,
    id: Uuid,
    admin: &str,
    now_ms: i64,
) -> Result<PendingChange, DecisionError> {
    let change = decide(db, id, admin, "rejected", now_ms).await?;
    audit_decision(audit, &change, admin, "rejected").await?;
    Ok(change)
}

async fn decide(
    db: &Database,
    id: Uuid,
    admin: &str,
    status: &str,
    now_ms: i64,
) -> Result<PendingChange, DecisionError> {
    let mut transaction = db
        .begin_write()
        .await
        .context("cannot start the site change transaction")?;
    let row = sqlx::query(
        "SELECT id, definition, changed_fields, requested_by, requested_at_ms, status FROM site_changes \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *transaction)
    .await
    .context("cannot read the site change")?;
    let Some(row) = row else {
        return Err(DecisionError::NotPending(id));
    };
    let change = from_row(&row)?;
    if change.requested_by == admin {
        return Err(DecisionError::SameAdmin {
            id,
            admin: admin.to_owned(),
        });
    }

    // The status condition makes a second, concurrent decision update nothing.
    let updated = sqlx::query(
        "UPDATE site_changes SET status = $2, decided_by = $3, decided_at_ms = $4 \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id.to_string())
    .bind(status)
    .bind(admin)
    .bind(now_ms)
    .execute(&mut *transaction)
    .await
    .context("cannot record the decision")?;
    if updated.rows_affected() != 1 {
        return Err(DecisionError::NotPending(id));
    }
    if status == "approved" {
        // NOTE: the stored definition replaces the site as it is now, so a change
        // approved after a later one reverts the later one's fields.
        super::store::upsert_in(
            &mut transaction,
            std::slice::from_ref(&change.definition),
            now_ms,
        )
        .await?;
    }
    transaction
        .commit()
        .await
        .context("cannot commit the site change decision")?;
    Ok(change)
}

async fn audit_decision(
    audit: &AuditLog,
    change: &PendingChange,
    admin: &str,
    decision: &str,
) -> anyhow::Result<()> {
    let event = EventBuilder::new(Actor::Person(admin.to_owned()), Action::SiteChanged)
        .target(super::audit_target(&change.definition.name))
        .detail("change", decision)
        .detail("change_id", change.id.to_string())
        .detail("requested_by", change.requested_by.clone())
        .detail("fields", change.changed_fields.clone())
        .build();
    audit
        .append(event)
        .await
        .context("the decision was stored but its audit event was not")?;
    Ok(())
}
