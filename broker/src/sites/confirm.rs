//! Confirmation of the admin named on `strongroom site import|approve|reject --admin`.
//!
//! Anyone who can run `strongroom` as the service user can type any admin's name, so a
//! name alone cannot stand for a second person. The command therefore reads the named
//! admin's password and current TOTP code, one per line, from standard input or from
//! `--confirm-file`; a terminal does not echo them. It checks them as the portal's
//! sign-in does: the password hash, a TOTP code whose time step is consumed so it
//! cannot be replayed, and the account's failed sign-in count and lockout. Every check
//! is audited with the operating-system user that ran the command. Admins without a
//! local password and TOTP (single sign-on accounts) decide in the admin console
//! (`/admin/site-changes`) instead.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use crate::audit::{Action, Actor, AuditLog, EventBuilder, Outcome};
use crate::auth::secret_key::TotpKey;
use crate::auth::totp::TotpSecret;
use crate::auth::{Role, password, throttle, users};
use crate::cli::InputError;
use crate::config::Config;
use crate::db::Database;
use crate::terminal::read_hidden_line;

/// The password and TOTP code the admin gave.
struct Confirmation {
    password: Zeroizing<String>,
    code: Zeroizing<String>,
}

/// Checks that the person running the command is the admin `name`, and returns the
/// admin's user id. `confirm_file` contains the password and the code on two lines;
/// without it they are read from standard input.
pub async fn confirm_admin(
    config: &Config,
    db: &Database,
    audit: &AuditLog,
    name: &str,
    confirm_file: Option<&Path>,
) -> anyhow::Result<String> {
    let Some(admin) = users::find(db, name).await? else {
        bail!(InputError(format!(
            "no account named {name:?}; list them with `strongroom user list`"
        )));
    };
    if !admin.roles.contains(&Role::Admin) {
        bail!(InputError(format!(
            "{name:?} is not an admin; only admins request or decide site changes"
        )));
    }
    let (Some(username), Some(password_hash), Some(sealed_totp)) = (
        admin.username.as_deref(),
        admin.password_hash.clone(),
        admin.totp_secret.as_deref(),
    ) else {
        bail!(InputError(format!(
            "{name:?} has no local password and TOTP to confirm on the command line; \
             decide site changes in the admin console at /admin/site-changes"
        )));
    };

    let scope = throttle::account_scope(username);
    let now_ms = chrono::Utc::now().timestamp_millis();
    if let Some(remaining) = throttle::locked_for(db, &[&scope], now_ms).await? {
        bail!(InputError(format!(
            "{name:?} is locked after failed sign-ins for another {} s; wait, or unlock with `strongroom user unlock {name}`",
            remaining.as_secs().max(1)
        )));
    }
    let confirmation = read_confirmation(name, confirm_file)?;

    let password_ok =
        password::verify_blocking(confirmation.password.clone(), Some(password_hash)).await;
    let verdict = if password_ok {
        check_code(
            config,
            db,
            &admin.id,
            sealed_totp,
            &confirmation.code,
            now_ms,
        )
        .await?
    } else {
        Err("wrong_password")
    };
    drop(confirmation);

    let (os_uid, os_user) = os_user();
    let mut event = EventBuilder::new(Actor::Person(admin.id.clone()), Action::MfaChallenge)
        .detail("factor", "password+totp")
        .detail("channel", "cli")
        .detail("os_uid", os_uid)
        .detail("os_user", os_user);
    if let Err(reason) = verdict {
        event = event.outcome(Outcome::Failure).detail("reason", reason);
    }
    audit.append(event.build()).await?;

    if verdict.is_ok() {
        throttle::clear(db, &scope, now_ms).await?;
        return Ok(admin.id);
    }
    let locked = throttle::record_failure(
        db,
        &scope,
        config.auth.max_failures_per_account,
        config.auth.lockout,
        now_ms,
    )
    .await?;
    if locked {
        let event = EventBuilder::new(Actor::Person(admin.id.clone()), Action::AccountLocked)
            .outcome(Outcome::Failure)
            .detail("scope", "account")
            .detail("channel", "cli")
            .build();
        audit.append(event).await?;
    }
    bail!(InputError(format!(
        "the password or the one-time code of {name:?} is wrong; nothing was changed"
    )))
}

/// Checks the TOTP code and consumes its time step. Returns the refusal reason for the
/// audit trail when the code is wrong or was used before.
async fn check_code(
    config: &Config,
    db: &Database,
    user_id: &str,
    sealed: &[u8],
    code: &str,
    now_ms: i64,
) -> anyhow::Result<Result<(), &'static str>> {
    let key = TotpKey::load_or_create(&config.data_dir)
        .context("cannot load the TOTP key of the data directory")?;
    let secret = TotpSecret::from_bytes(key.open(user_id, sealed)?);
    let now_seconds = (now_ms / 1000).max(0) as u64;
    Ok(match secret.matching_step(code.trim(), now_seconds) {
        None => Err("wrong_code"),
        Some(step) => match users::consume_totp_step(db, user_id, step).await? {
            true => Ok(()),
            false => Err("replayed_code"),
        },
    })
}

fn read_confirmation(name: &str, file: Option<&Path>) -> anyhow::Result<Confirmation> {
    match file {
        Some(path) => {
            check_file_mode(path)?;
            let text = Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
                format!("cannot read the confirmation file {}", path.display())
            })?);
            parse_confirmation(&mut text.as_bytes())
                .with_context(|| format!("in the confirmation file {}", path.display()))
        }
        None if std::io::stdin().is_terminal() => read_confirmation_from_terminal(name),
        None => parse_confirmation(&mut std::io::stdin().lock())
            .context("reading the admin's confirmation from standard input"),
    }
}

/// Prompts for the password and the code, and reads each with the terminal's echo off.
fn read_confirmation_from_terminal(name: &str) -> anyhow::Result<Confirmation> {
    let password = read_hidden_line(&format!("Password of {name} (not shown as you type): "))
        .context("cannot read the admin's password from the terminal")?
        .context("the password is missing; type it, then the one-time code")?;
    let code = read_hidden_line(&format!(
        "Current one-time code of {name} (not shown as you type): "
    ))
    .context("cannot read the one-time code from the terminal")?
    .context("the one-time code is missing; type it after the password")?;
    Ok(Confirmation { password, code })
}

/// Reads the password line and the code line.
fn parse_confirmation(input: &mut impl BufRead) -> anyhow::Result<Confirmation> {
    let mut password = Zeroizing::new(String::new());
    let mut code = Zeroizing::new(String::new());
    if input.read_line(&mut password)? == 0 {
        bail!(InputError(
            "the password line is missing; give the password, then the one-time code, one per line"
                .to_owned()
        ));
    }
    if input.read_line(&mut code)? == 0 {
        bail!(InputError(
            "the one-time code line is missing; give it on the line after the password".to_owned()
        ));
    }
    for line in [&mut password, &mut code] {
        while line.ends_with('\n') || line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(Confirmation { password, code })
}

/// Rejects a confirmation file that other users could read.
fn check_file_mode(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read the confirmation file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(InputError(format!(
            "the confirmation file {} is readable by other users (mode {:o}); run `chmod 600` on it",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// Returns the real user id running the command and its name, or "" when the
/// system has no name for it.
fn os_user() -> (u32, String) {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_default();
    (uid.as_raw(), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmation_lines_are_read_exactly() {
        let confirmation = parse_confirmation(&mut "pass word \r\n123456\n".as_bytes()).unwrap();

        assert_eq!(confirmation.password.as_str(), "pass word ");
        assert_eq!(confirmation.code.as_str(), "123456");
    }

    #[test]
    fn missing_code_line_is_an_error() {
        let error = parse_confirmation(&mut "only a password\n".as_bytes())
            .err()
            .unwrap()
            .to_string();

        assert!(error.contains("one-time code line is missing"), "{error}");
    }
}
