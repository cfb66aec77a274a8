//! `strongroom user ...`: local accounts from the command line. Enrolment happens
//! here: `user add` and `user reset-totp` print the TOTP secret once.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::password::{self, MIN_PASSWORD_LEN};
use super::secret_key::TotpKey;
use super::totp::TotpSecret;
use super::{Role, users};
use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::db::Database;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Admin,
    Auditor,
    User,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Admin => Role::Admin,
            RoleArg::Auditor => Role::Auditor,
            RoleArg::User => Role::User,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a local account and print its TOTP enrolment URI once. The password is
    /// read from --password-file, or else from the first line of standard input.
    Add {
        /// Sign-in name: 1 to 64 characters from a-z, 0-9, '.', '_', '-' and '@'.
        name: String,
        /// Role to grant; repeat for several.
        #[arg(long = "role", value_enum, required = true)]
        roles: Vec<RoleArg>,
        /// Name shown in the portal and the audit trail. Default: the username.
        #[arg(long)]
        display_name: Option<String>,
        /// File whose content (one trailing newline removed) is the password.
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
    },
    /// Replace a person's roles. Without --role, the person keeps no role and loses
    /// access at their next request.
    SetRoles {
        /// Username or user id.
        name: String,
        #[arg(long = "role", value_enum)]
        roles: Vec<RoleArg>,
    },
    /// Give a local account a new TOTP secret and print its enrolment URI once.
    ResetTotp {
        /// Username or user id.
        name: String,
    },
    /// List every person with their roles.
    List,
}

/// Runs a user command against the configured database and returns the exit code.
pub async fn run(config: &Config, db: &Database, command: UserCommand) -> i32 {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let audit = AuditLog::new(db.clone(), clock.clone());
    let result = match db.migrate().await {
        Ok(()) => execute(config, db, &audit, clock.now().timestamp_millis(), command).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}

async fn execute(
    config: &Config,
    db: &Database,
    audit: &AuditLog,
    now_ms: i64,
    command: UserCommand,
) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name,
            roles,
            display_name,
            password_file,
        } => {
            let password = read_password(password_file.as_deref())?;
            add(
                config,
                db,
                audit,
                now_ms,
                &name,
                &roles,
                display_name.as_deref(),
                password,
            )
            .await
        }
        UserCommand::SetRoles { name, roles } => set_roles(db, audit, now_ms, &name, &roles).await,
        UserCommand::ResetTotp { name } => reset_totp(config, db, audit, now_ms, &name).await,
        UserCommand::List => list(db).await,
    }
}

fn read_password(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    match file {
        Some(path) => {
            *text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the password file {}", path.display()))?;
        }
        None => {
            if std::io::stdin().is_terminal() {
                // NOTE: the terminal echoes what is typed; pipe the password in or use
                // --password-file to keep it off the screen.
                eprintln!("Password (one line; the terminal shows what you type):");
            }
            std::io::stdin()
                .lock()
                .read_line(&mut text)
                .context("cannot read the password from standard input")?;
        }
    }
    while text.ends_with('\n') || text.ends_with('\r') {
        text.pop();
    }
    if text.chars().count() < MIN_PASSWORD_LEN {
        bail!("the password is shorter than {MIN_PASSWORD_LEN} characters; choose a longer one");
    }
    Ok(text)
}

fn role_set(roles: &[RoleArg]) -> BTreeSet<Role> {
    roles.iter().map(|role| Role::from(*role)).collect()
}

fn role_names(roles: &BTreeSet<Role>) -> Vec<&'static str> {
    roles.iter().map(|role| role.as_str()).collect()
}

/// Creates a local account: the argon2id hash and the sealed TOTP secret are stored,
/// and the enrolment URI is printed once.
#[allow(clippy::too_many_arguments)]
pub async fn add(
    config: &Config,
    db: &Database,
    audit: &AuditLog,
    now_ms: i64,
    name: &str,
    roles: &[RoleArg],
    display_name: Option<&str>,
    password: Zeroizing<String>,
) -> anyhow::Result<()> {
    let username = users::normalize_username(name);
    users::validate_username(&username).map_err(anyhow::Error::msg)?;
    let roles = role_set(roles);
    let key = TotpKey::load_or_create(&config.data_dir)?;

    let id = Uuid::new_v4().to_string();
    let hash = tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .context("password hashing task failed")??;
    let secret = TotpSecret::generate();
    let sealed = key.seal(&id, secret.as_bytes())?;
    let new = users::NewLocalUser {
        id: &id,
        username: &username,
        display_name: display_name.unwrap_or(&username),
        password_hash: &hash,
        sealed_totp: Some(&sealed),
        roles: &roles,
    };
    users::create_local(db, new, now_ms).await?;

    audit
        .append(
            EventBuilder::new(Actor::System("cli"), Action::PersonChanged)
                .target(format!("user:{id}"))
                .detail("change", "created")
                .detail("username", username.clone())
                .detail("roles", role_names(&roles))
                .build(),
        )
        .await?;
    println!(
        "created user {username} (id {id}) with roles: {}",
        role_names(&roles).join(", ")
    );
    print_enrolment(&secret, &username);
    Ok(())
}

fn print_enrolment(secret: &TotpSecret, username: &str) {
    println!("Add this account to an authenticator app now; the secret is not shown again.");
    println!("otpauth URI: {}", secret.otpauth_uri(username).as_str());
    println!("secret (base32): {}", secret.base32().as_str());
}

async fn find(db: &Database, name: &str) -> anyhow::Result<users::UserRecord> {
    users::find(db, name).await?.with_context(|| {
        format!("no user named {name:?}; `strongroom user list` shows every person")
    })
}

async fn set_roles(
    db: &Database,
    audit: &AuditLog,
    now_ms: i64,
    name: &str,
    roles: &[RoleArg],
) -> anyhow::Result<()> {
    let user = find(db, name).await?;
    let roles = role_set(roles);
    users::set_roles(db, &user.id, &roles, now_ms).await?;
    audit
        .append(
            EventBuilder::new(Actor::System("cli"), Action::RoleChanged)
                .target(format!("user:{}", user.id))
                .detail("from", role_names(&user.roles))
                .detail("to", role_names(&roles))
                .build(),
        )
        .await?;
    if user.source == "oidc" {
        eprintln!(
            "note: this person signs in through OIDC; their next sign-in replaces these roles with those of their groups"
        );
    }
    println!(
        "roles of {} are now: {}",
        user.username.as_deref().unwrap_or(&user.display_name),
        display_roles(&roles)
    );
    Ok(())
}

async fn reset_totp(
    config: &Config,
    db: &Database,
    audit: &AuditLog,
    now_ms: i64,
    name: &str,
) -> anyhow::Result<()> {
    let user = find(db, name).await?;
    let Some(username) = user.username.clone().filter(|_| user.source == "local") else {
        bail!(
            "{name:?} signs in through OIDC; their second factor is managed at the identity provider"
        );
    };
    let key = TotpKey::load_or_create(&config.data_dir)?;
    let secret = TotpSecret::generate();
    let sealed = key.seal(&user.id, secret.as_bytes())?;
    users::set_totp(db, &user.id, &sealed, now_ms).await?;
    audit
        .append(
            EventBuilder::new(Actor::System("cli"), Action::PersonChanged)
                .target(format!("user:{}", user.id))
                .detail("change", "totp_reset")
                .build(),
        )
        .await?;
    println!("new TOTP secret for {username}");
    print_enrolment(&secret, &username);
    Ok(())
}

fn display_roles(roles: &BTreeSet<Role>) -> String {
    if roles.is_empty() {
        "(none: no access)".to_owned()
    } else {
        role_names(roles).join(",")
    }
}

async fn list(db: &Database) -> anyhow::Result<()> {
    println!(
        "{:<36}  {:<24}  {:<6}  {:<24}  ROLES",
        "ID", "USERNAME", "SOURCE", "DISPLAY NAME"
    );
    for user in users::list(db).await? {
        println!(
            "{:<36}  {:<24}  {:<6}  {:<24}  {}",
            user.id,
            user.username.as_deref().unwrap_or("-"),
            user.source,
            user.display_name,
            display_roles(&user.roles)
        );
    }
    Ok(())
}
