//! The dual-control parts of `strongroom site`: import options, `pending`, `approve`
//! and `reject`.

use anyhow::bail;
use uuid::Uuid;

use super::ImportOptions;
use super::dual_control::{self, DecisionError};
use crate::audit::AuditLog;
use crate::auth::Role;
use crate::config::Config;
use crate::db::Database;

/// Returns the user id of `name`, which must be an admin account.
pub async fn admin_id(db: &Database, name: &str) -> anyhow::Result<String> {
    let Some(person) = crate::auth::users::find(db, name).await? else {
        bail!("no account named {name:?}; list them with `strongroom user list`");
    };
    if !person.roles.contains(&Role::Admin) {
        bail!("{name:?} is not an admin; only admins request or approve site changes");
    }
    Ok(person.id)
}

/// Builds the import options: under dual control the importing admin is required.
pub async fn import_options(
    config: &Config,
    db: &Database,
    admin: Option<&str>,
) -> anyhow::Result<ImportOptions> {
    let hold = dual_control::is_required(db, config.sites.dual_control).await?;
    let requested_by = match admin {
        Some(name) => admin_id(db, name).await?,
        None if hold => bail!(
            "dual control is on (sites.dual_control, or at least two admins): name the requesting admin with --admin NAME"
        ),
        None => "system:cli".to_owned(),
    };
    Ok(ImportOptions {
        hold_controlled_changes: hold,
        requested_by,
    })
}

/// Prints pending changes: id, site, fields, requester and time, separated by tabs.
pub async fn pending(db: &Database) -> i32 {
    match dual_control::pending(db).await {
        Ok(changes) => {
            for change in changes {
                let requested = chrono::DateTime::from_timestamp_millis(change.requested_at_ms)
                    .map(|time| time.to_rfc3339())
                    .unwrap_or_default();
                println!(
                    "{}\t{}\t{}\t{}\t{requested}",
                    change.id,
                    change.definition.name,
                    change.changed_fields.join(","),
                    change.requested_by
                );
            }
            0
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}

/// Approves or rejects a pending change as `admin`.
pub async fn decide(db: &Database, audit: &AuditLog, id: Uuid, admin: &str, approve: bool) -> i32 {
    let admin_id = match admin_id(db, admin).await {
        Ok(id) => id,
        Err(error) => {
            eprintln!("error: {error:#}");
            return 2;
        }
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let result = if approve {
        dual_control::approve(db, audit, id, &admin_id, now_ms)
            .await
            .map(|site| format!("approved; site {} is updated", site.name))
    } else {
        dual_control::reject(db, audit, id, &admin_id, now_ms)
            .await
            .map(|change| format!("rejected the change of site {}", change.definition.name))
    };
    match result {
        Ok(message) => {
            println!("{message}");
            0
        }
        Err(error @ (DecisionError::NotPending(_) | DecisionError::SameAdmin { .. })) => {
            eprintln!("error: {error}");
            2
        }
        Err(DecisionError::Storage(error)) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}
