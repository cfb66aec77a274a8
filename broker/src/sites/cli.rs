//! The dual-control parts of `strongroom site`: import options, `pending`, `approve`
//! and `reject`.

use std::path::Path;

use uuid::Uuid;

use super::ImportOptions;
use super::confirm::confirm_admin;
use super::dual_control::{self, DecisionError};
use crate::audit::AuditLog;
use crate::cli::InputError;
use crate::config::Config;
use crate::db::Database;

/// Builds the import options: under dual control the importing admin is required, and
/// a named admin confirms with their password and TOTP code.
pub async fn import_options(
    config: &Config,
    db: &Database,
    audit: &AuditLog,
    admin: Option<&str>,
    confirm_file: Option<&Path>,
) -> anyhow::Result<ImportOptions> {
    let hold = dual_control::is_required(db, config.sites.dual_control).await?;
    let requested_by = match admin {
        Some(name) => confirm_admin(config, db, audit, name, confirm_file).await?,
        None if hold => return Err(InputError(
            "dual control is on (sites.dual_control, or at least two admins): name the requesting admin with --admin NAME".to_owned()
        ).into()),
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

/// A site change decision: the change, the deciding admin's name and the file with
/// their confirmation (standard input when `None`).
pub struct DecisionRequest<'a> {
    pub id: Uuid,
    pub admin: &'a str,
    pub confirm_file: Option<&'a Path>,
    pub approve: bool,
}

/// Approves or rejects a pending change as the admin, once they confirmed with their
/// password and TOTP code.
pub async fn decide(
    config: &Config,
    db: &Database,
    audit: &AuditLog,
    request: DecisionRequest<'_>,
) -> i32 {
    let DecisionRequest {
        id,
        admin,
        confirm_file,
        approve,
    } = request;
    let admin_id = match confirm_admin(config, db, audit, admin, confirm_file).await {
        Ok(id) => id,
        Err(error) => {
            eprintln!("error: {error:#}");
            return crate::cli::exit_code_of(&error);
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
