//! `strongroom user ...`: local accounts from the command line. A new account enrols
//! its TOTP secret at its first sign-in, unless `user add --print-totp` enrols it here
//! and prints the secret once.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::password;
use super::secret_key::TotpKey;
use super::totp::TotpSecret;
use super::{Role, policy, users};
use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::cli::InputError;
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
    /// Create a local account. The password is read from --password-file, or else
    /// from the first line of standard input (a terminal does not echo it), unless
    /// --generate-password is given.
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
        #[arg(long, value_name = "PATH", conflicts_with = "generate_password")]
        password_file: Option<PathBuf>,
        /// Generate a random password, print it once, and make the person choose their
        /// own at the first sign-in.
        #[arg(long)]
        generate_password: bool,
        /// Enrol the TOTP secret now and print it once, instead of at the first sign-in.
        #[arg(long)]
        print_totp: bool,
    },
    /// Replace a person's roles. Without --role, the person keeps no role and loses
    /// access at their next request.
    #[command(visible_alias = "set-roles")]
    SetRole {
        /// Username or user id.
        name: String,
        #[arg(long = "role", value_enum)]
        roles: Vec<RoleArg>,
    },
    /// Lift the sign-in lock of a local account after repeated failures.
    Unlock {
        /// Username or user id.
        name: String,
    },
    /// Remove a local account's TOTP secret; the person enrols a new one at the next
    /// sign-in.
    #[command(visible_alias = "reset-totp")]
    ResetMfa {
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
            crate::cli::exit_code_of(&error)
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
            generate_password,
            print_totp,
        } => {
            let username = users::normalize_username(&name);
            let password = match generate_password {
                true => policy::generate_password(),
                false => read_password(password_file.as_deref(), &username)?,
            };
            let options = AddOptions {
                display_name: display_name.as_deref(),
                generated_password: generate_password,
                print_totp,
            };
            add(config, db, audit, now_ms, &name, &roles, options, password).await
        }
        UserCommand::SetRole { name, roles } => set_roles(db, audit, now_ms, &name, &roles).await,
        UserCommand::Unlock { name } => unlock(db, audit, now_ms, &name).await,
        UserCommand::ResetMfa { name } => reset_mfa(db, audit, now_ms, &name).await,
        UserCommand::List => list(db).await,
    }
}

fn read_password(file: Option<&Path>, username: &str) -> anyhow::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    match file {
        Some(path) => {
            *text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the password file {}", path.display()))?;
        }
        None => {
            if std::io::stdin().is_terminal() {
                let prompt = "Password (one line, not shown as you type): ";
                if let Some(line) = crate::terminal::read_hidden_line(prompt)
                    .context("cannot read the password from the terminal")?
                {
                    text = line;
                }
            } else {
                std::io::stdin()
                    .lock()
                    .read_line(&mut text)
                    .context("cannot read the password from standard input")?;
            }
        }
    }
    while text.ends_with('\n') || text.ends_with('\r') {
        text.pop();
    }
    if let Err(problem) = policy::check_new_password(&text, username) {
        return Err(InputError(format!(
            "password rejected: {problem}; choose another or use --generate-password"
        ))
        .into());
    }
    Ok(text)
}

fn role_set(roles: &[RoleArg]) -> BTreeSet<Role> {
    roles.iter().map(|role| Role::from(*role)).collect()
}

fn role_names(roles: &BTreeSet<Role>) -> Vec<&'static str> {
    roles.iter().map(|role| role.as_str()).collect()
}

/// Settings of `user add` besides the account's name and roles.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddOptions<'a> {
    /// Name shown in the portal; default the username.
    pub display_name: Option<&'a str>,
    /// The password was generated: print it and require a change at first sign-in.
    pub generated_password: bool,
    /// Enrol the TOTP secret now and print it, instead of at the first sign-in.
    pub print_totp: bool,
}

/// Creates a local account with an argon2id hash of the password. With
/// `print_totp`, the TOTP secret is sealed and stored now and printed once.
#[allow(clippy::too_many_arguments)]
pub async fn add(
    config: &Config,
    db: &Database,
    audit: &AuditLog,
    now_ms: i64,
    name: &str,
    roles: &[RoleArg],
    options: AddOptions<'_>,
    password: Zeroizing<String>,
) -> anyhow::Result<()> {
    let username = users::normalize_username(name);
    users::validate_username(&username).map_err(InputError)?;
    let roles = role_set(roles);

    let id = Uuid::new_v4().to_string();
    let to_hash = password.clone();
    let hash = tokio::task::spawn_blocking(move || password::hash(&to_hash))
        .await
        .context("password hashing task failed")??;
    let secret = options.print_totp.then(TotpSecret::generate);
    let sealed = match &secret {
        Some(secret) => {
            Some(TotpKey::load_or_create(&config.data_dir)?.seal(&id, secret.as_bytes())?)
        }
        None => None,
    };
    let new = users::NewLocalUser {
        id: &id,
        username: &username,
        display_name: options.display_name.unwrap_or(&username),
        password_hash: &hash,
        sealed_totp: sealed.as_deref(),
        roles: &roles,
    };
    users::create_local(db, new, now_ms)
        .await
        .map_err(|error| -> anyhow::Error {
            match error {
                users::CreateUserError::UsernameTaken(name) => InputError(format!(
                    "the username {name:?} is already taken; choose another name (`strongroom user list` shows every person)"
                ))
                .into(),
                users::CreateUserError::Other(error) => error,
            }
        })?;
    if options.generated_password {
        users::require_password_change(db, &id, true, now_ms).await?;
    }

    audit
        .append(
            EventBuilder::new(Actor::System("cli"), Action::PersonChanged)
                .target(format!("user:{id}"))
                .detail("change", "created")
                .detail("username", username.clone())
                .detail("roles", role_names(&roles))
                .detail("mfa_enrolled", secret.is_some())
                .build(),
        )
        .await?;
    println!(
        "created user {username} (id {id}) with roles: {}",
        role_names(&roles).join(", ")
    );
    if options.generated_password {
        println!("password: {}", password.as_str());
    }
    // One line says what the first sign-in asks for.
    match (&secret, options.generated_password) {
        (Some(secret), true) => {
            println!("The password is not shown again; the first sign-in asks for a new one.");
            print_enrolment(secret, &username);
        }
        (Some(secret), false) => print_enrolment(secret, &username),
        (None, true) => println!(
            "The password is not shown again. The first sign-in shows a QR code to set up an authenticator app, then asks for a new password."
        ),
        (None, false) => {
            println!("The first sign-in shows a QR code to set up an authenticator app.")
        }
    }
    Ok(())
}

fn print_enrolment(secret: &TotpSecret, username: &str) {
    println!("Add this account to an authenticator app now; the secret is not shown again.");
    println!("otpauth URI: {}", secret.otpauth_uri(username).as_str());
    println!("secret (base32): {}", secret.base32().as_str());
}

async fn find(db: &Database, name: &str) -> anyhow::Result<users::UserRecord> {
    users::find(db, name).await?.ok_or_else(|| {
        InputError(format!(
            "no user named {name:?}; `strongroom user list` shows every person"
        ))
        .into()
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

async fn unlock(db: &Database, audit: &AuditLog, now_ms: i64, name: &str) -> anyhow::Result<()> {
    let user = find(db, name).await?;
    let Some(username) = user.username.clone().filter(|_| user.source == "local") else {
        return Err(InputError(format!(
            "{name:?} signs in through OIDC; the identity provider handles their lockout"
        ))
        .into());
    };
    let was_locked =
        super::unlock_local_account(db, audit, &username, &user.id, Actor::System("cli"), now_ms)
            .await?;
    match was_locked {
        true => println!("unlocked {username}"),
        false => println!("{username} was not locked; its failure count is reset"),
    }
    Ok(())
}

async fn reset_mfa(db: &Database, audit: &AuditLog, now_ms: i64, name: &str) -> anyhow::Result<()> {
    let user = find(db, name).await?;
    let Some(username) = user.username.clone().filter(|_| user.source == "local") else {
        return Err(InputError(format!(
            "{name:?} signs in through OIDC; their second factor is managed at the identity provider"
        ))
        .into());
    };
    users::clear_totp(db, &user.id, now_ms).await?;
    audit
        .append(
            EventBuilder::new(Actor::System("cli"), Action::PersonChanged)
                .target(format!("user:{}", user.id))
                .detail("change", "mfa_reset")
                .build(),
        )
        .await?;
    println!("removed the TOTP secret of {username}; the next sign-in sets up a new authenticator");
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
        "{:<36}  {:<24}  {:<6}  {:<24}  {:<4}  ROLES",
        "ID", "USERNAME", "SOURCE", "DISPLAY NAME", "TOTP"
    );
    for user in users::list(db).await? {
        let totp = match (user.source.as_str(), user.totp_secret.is_some()) {
            ("local", true) => "yes",
            ("local", false) => "no",
            _ => "-",
        };
        println!(
            "{:<36}  {:<24}  {:<6}  {:<24}  {:<4}  {}",
            user.id,
            user.username.as_deref().unwrap_or("-"),
            user.source,
            user.display_name,
            totp,
            display_roles(&user.roles)
        );
    }
    Ok(())
}
