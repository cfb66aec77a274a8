//! `strongroom secrets ...`: bank credentials in the local encrypted store, and the
//! failure locks of every credential.
//!
//! Values come from files or standard input, never from the command line, where other
//! users could read them in the process list.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use protocol::SecretString;
use zeroize::Zeroizing;

use super::{BankCredentials, CredentialKey, CredentialRef, LocalStore};
use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::cli::InputError;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::config::secrets::SecretsConfig;
use crate::db::Database;
use crate::terminal::read_hidden_line;

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Store or replace a site's credential. Values not given as files are read from
    /// standard input, one per line: username, password, then the TOTP seed (optional).
    /// A terminal prompts for each and does not echo the password and the seed.
    Set {
        /// Site name from the site catalogue.
        site: String,
        /// User id of the person the credential belongs to. Without it, the credential
        /// is the site's shared one.
        #[arg(long)]
        user: Option<String>,
        /// File whose content (one trailing newline removed) is the username.
        #[arg(long, value_name = "PATH")]
        username_file: Option<PathBuf>,
        /// File whose content (one trailing newline removed) is the password.
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
        /// File holding the TOTP seed, in base32 or as an otpauth:// URI.
        #[arg(long, value_name = "PATH")]
        totp_seed_file: Option<PathBuf>,
        /// Store no TOTP seed and read none from standard input.
        #[arg(long, conflicts_with = "totp_seed_file")]
        no_totp: bool,
    },
    /// Remove a site's credential.
    Delete {
        site: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// List stored credentials by site and user, without values.
    List,
    /// List credentials locked after failed auto-logins.
    Locked,
    /// Clear a credential's lock and failure count once its value or the bank account
    /// was checked.
    Unlock {
        site: String,
        #[arg(long)]
        user: Option<String>,
    },
}

/// Runs a credential command and returns the process exit code.
pub async fn run(config: &Config, db: &Database, command: CredentialCommand) -> i32 {
    let result = match db.migrate().await {
        Ok(()) => execute(config, db, command).await,
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

async fn execute(config: &Config, db: &Database, command: CredentialCommand) -> anyhow::Result<()> {
    match &command {
        CredentialCommand::Locked => return list_locked(db).await,
        CredentialCommand::Unlock { site, user } => {
            return unlock(db, site, user.as_deref()).await;
        }
        CredentialCommand::Set { site, .. } | CredentialCommand::Delete { site, .. } => {
            check_site_exists(db, site).await?;
        }
        CredentialCommand::List => {}
    }
    if let SecretsConfig::Infisical(_) = config.secrets {
        return Err(InputError(
            "secrets.source is \"infisical\": manage credentials in Infisical, not with `strongroom secrets`"
                .to_owned(),
        )
        .into());
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let key = CredentialKey::load_or_create(&config.data_dir)?;
    let store = LocalStore::new(db.clone(), Arc::new(key), clock.clone());
    let audit = AuditLog::new(db.clone(), clock);
    let actor = Actor::System("cli");

    match command {
        CredentialCommand::Set {
            site,
            user,
            username_file,
            password_file,
            totp_seed_file,
            no_totp,
        } => {
            let reference = reference(&site, user.as_deref())?;
            let mut input = Input {
                lines: std::io::stdin().lock(),
                terminal: std::io::stdin().is_terminal(),
            };
            let username = value(
                username_file.as_deref(),
                "Username",
                Echo::Shown,
                &mut input,
            )?;
            let password = value(
                password_file.as_deref(),
                "Password",
                Echo::Hidden,
                &mut input,
            )?;
            let totp_seed = match (totp_seed_file, no_totp) {
                (Some(path), _) => Some(value(Some(&path), "TOTP seed", Echo::Hidden, &mut input)?),
                (None, true) => None,
                (None, false) => optional_seed(&mut input)?,
            };
            let credentials = BankCredentials::new(&reference, username, password, totp_seed)
                .map_err(|error| InputError(error.to_string()))?;
            set(&store, &audit, actor, &reference, &credentials).await?;
            println!("stored {reference}");
            Ok(())
        }
        CredentialCommand::Delete { site, user } => {
            let reference = reference(&site, user.as_deref())?;
            if !store.delete(&reference).await? {
                return Err(InputError(format!(
                    "nothing is stored for {reference}; `strongroom secrets list` shows what is"
                ))
                .into());
            }
            let event = EventBuilder::new(actor, Action::SecretAccessed)
                .target(reference.audit_target())
                .detail("operation", "delete");
            audit.append(event.build()).await?;
            println!("deleted {reference}");
            Ok(())
        }
        CredentialCommand::Locked | CredentialCommand::Unlock { .. } => {
            unreachable!("handled before the store is opened")
        }
        CredentialCommand::List => {
            for entry in store.list().await? {
                let user = entry.reference.user_id().unwrap_or("(shared)");
                let updated = chrono::DateTime::from_timestamp_millis(entry.updated_at_ms)
                    .map(|time| time.to_rfc3339())
                    .unwrap_or_default();
                let second_factor = if entry.has_totp_seed { "totp" } else { "-" };
                println!(
                    "{}\t{user}\t{second_factor}\t{updated}\t{}",
                    entry.reference.site(),
                    entry.updated_by
                );
            }
            Ok(())
        }
    }
}

/// Rejects a site name that is not in the catalogue, listing the known ones.
async fn check_site_exists(db: &Database, site: &str) -> anyhow::Result<()> {
    if crate::sites::get(db, site).await?.is_some() {
        return Ok(());
    }
    let known: Vec<String> = crate::sites::list(db)
        .await?
        .into_iter()
        .map(|site| site.definition.name)
        .collect();
    let message = if known.is_empty() {
        format!(
            "no site named {site:?}; the catalogue is empty, import sites with `strongroom site import FILE`"
        )
    } else {
        format!("no site named {site:?}; known sites: {}", known.join(", "))
    };
    Err(InputError(message).into())
}

async fn list_locked(db: &Database) -> anyhow::Result<()> {
    let entries = super::usage::locked(db).await?;
    if entries.is_empty() {
        // Standard output stays empty for scripts that read the list.
        eprintln!("no credential is locked");
    }
    for entry in entries {
        let user = entry.reference.user_id().unwrap_or("(shared)");
        let locked = chrono::DateTime::from_timestamp_millis(entry.locked_at_ms)
            .map(|time| time.to_rfc3339())
            .unwrap_or_default();
        println!(
            "{}\t{user}\t{} failed\t{locked}",
            entry.reference.site(),
            entry.failed_logins
        );
    }
    Ok(())
}

/// Clears a lock and records `admin.secret.accessed` with the operation.
async fn unlock(db: &Database, site: &str, user: Option<&str>) -> anyhow::Result<()> {
    check_site_exists(db, site).await?;
    let reference = reference(site, user)?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    if !super::usage::unlock(db, &reference, now_ms).await? {
        return Err(InputError(format!(
            "{reference} is not locked; `strongroom secrets locked` lists the locked ones"
        ))
        .into());
    }
    let audit = AuditLog::new(db.clone(), Arc::new(SystemClock));
    let event = EventBuilder::new(Actor::System("cli"), Action::SecretAccessed)
        .target(reference.audit_target())
        .detail("operation", "unlock");
    audit.append(event.build()).await?;
    println!("unlocked {reference}");
    Ok(())
}

/// Stores a credential and records `admin.secret.accessed` with the operation.
pub async fn set(
    store: &LocalStore,
    audit: &AuditLog,
    actor: Actor,
    reference: &CredentialRef,
    credentials: &BankCredentials,
) -> anyhow::Result<()> {
    let updated_by = match &actor {
        Actor::Person(id) => format!("user:{id}"),
        Actor::System(component) => format!("system:{component}"),
        Actor::Anonymous => "anonymous".to_owned(),
    };
    store.save(reference, credentials, &updated_by).await?;
    let event = EventBuilder::new(actor, Action::SecretAccessed)
        .target(reference.audit_target())
        .detail("operation", "set")
        .detail("one_time_code", credentials.totp_seed.is_some());
    audit
        .append(event.build())
        .await
        .context("the credential was stored but its audit event was not")?;
    Ok(())
}

fn reference(site: &str, user: Option<&str>) -> anyhow::Result<CredentialRef> {
    let reference = match user {
        Some(user) => CredentialRef::personal(site, user),
        None => CredentialRef::shared(site),
    };
    reference.map_err(|error| InputError(error.to_string()).into())
}

/// Whether a terminal shows a value as it is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Echo {
    Shown,
    Hidden,
}

/// Standard input of `secrets set`: lines piped in, one value per line, or a person at
/// a terminal, who is prompted for each value.
struct Input<R> {
    lines: R,
    terminal: bool,
}

impl<R: BufRead> Input<R> {
    /// Reads the line of the `label` value without its line ending, or `None` at the end
    /// of input. On a terminal it prints `prompt` first and reads a hidden value with
    /// echo off.
    fn line(
        &mut self,
        label: &str,
        prompt: &str,
        echo: Echo,
    ) -> anyhow::Result<Option<Zeroizing<String>>> {
        if self.terminal && echo == Echo::Hidden {
            return read_hidden_line(prompt)
                .with_context(|| format!("cannot read the {label} from the terminal"));
        }
        if self.terminal {
            eprint!("{prompt}");
        }
        let mut text = Zeroizing::new(String::new());
        let read = self
            .lines
            .read_line(&mut text)
            .with_context(|| format!("cannot read the {label} from standard input"))?;
        if read == 0 {
            return Ok(None);
        }
        strip_one_newline(&mut text);
        Ok(Some(text))
    }
}

/// Reads a value from a file, or else one line of standard input.
fn value(
    file: Option<&Path>,
    label: &str,
    echo: Echo,
    input: &mut Input<impl BufRead>,
) -> anyhow::Result<SecretString> {
    let text = match file {
        Some(path) => {
            let mut text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the {label} file {}", path.display()))?,
            );
            strip_one_newline(&mut text);
            text
        }
        None => {
            let prompt = match echo {
                Echo::Shown => format!("{label}: "),
                Echo::Hidden => format!("{label} (not shown as you type): "),
            };
            let Some(text) = input.line(label, &prompt, echo)? else {
                return Err(InputError(format!(
                    "standard input ended before the {label}; give it on its own line or with a file option"
                ))
                .into());
            };
            text
        }
    };
    Ok(SecretString::new(text.to_string()))
}

/// Reads the optional TOTP seed line; end of input or an empty line means none.
fn optional_seed(input: &mut Input<impl BufRead>) -> anyhow::Result<Option<SecretString>> {
    let prompt =
        "TOTP seed (base32 or otpauth:// URI, not shown as you type; empty line for none): ";
    let text = input.line("TOTP seed", prompt, Echo::Hidden)?;
    let Some(text) = text.filter(|text| !text.is_empty()) else {
        return Ok(None);
    };
    // A person at a terminal is done after the seed; piped input must end here.
    if !input.terminal && input.line("TOTP seed", "", Echo::Shown)?.is_some() {
        return Err(InputError(
            "standard input has more than three lines; give username, password and TOTP seed one per line"
                .to_owned(),
        )
        .into());
    }
    Ok(Some(SecretString::new(text.to_string())))
}

/// Removes one trailing `\n` or `\r\n`, keeping any other whitespace.
fn strip_one_newline(text: &mut String) {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piped(text: &str) -> Input<std::io::Cursor<&str>> {
        Input {
            lines: std::io::Cursor::new(text),
            terminal: false,
        }
    }

    #[test]
    fn only_one_newline_is_stripped() {
        let mut text = "pass \n".to_owned();
        strip_one_newline(&mut text);
        assert_eq!(text, "pass ");

        let mut text = "first\nsecond\n".to_owned();
        strip_one_newline(&mut text);
        assert_eq!(text, "first\nsecond");
    }

    #[test]
    fn stdin_values_are_read_line_by_line() {
        let mut input = piped("alice\np ss \nJBSWY3DPEHPK3PXP\n");

        let username = value(None, "Username", Echo::Shown, &mut input).unwrap();
        let password = value(None, "Password", Echo::Hidden, &mut input).unwrap();
        let seed = optional_seed(&mut input).unwrap();

        assert_eq!(username.expose(), "alice");
        assert_eq!(password.expose(), "p ss ");
        assert_eq!(seed.unwrap().expose(), "JBSWY3DPEHPK3PXP");
    }

    #[test]
    fn missing_stdin_value_is_an_error() {
        let mut input = piped("alice\n");

        value(None, "Username", Echo::Shown, &mut input).unwrap();
        let error = value(None, "Password", Echo::Hidden, &mut input).unwrap_err();

        assert!(error.to_string().contains("before the Password"), "{error}");
    }
}
