//! Bank credentials for auto-login and the sources they come from.
//!
//! A [`CredentialRef`] names either a site's shared credential or one person's
//! credential for a site. A [`CredentialSource`] turns it into [`BankCredentials`]:
//! [`LocalStore`] reads the broker's own encrypted table, [`InfisicalSource`] reads an
//! Infisical project. [`CredentialVault`] wraps a source and writes one
//! `credential.retrieved` audit event per fetch.
//!
//! Values travel only inside `protocol::SecretString`s, which are zeroized on drop and
//! redacted in `Debug`. Errors, log lines and audit events name the site, the person,
//! the field and, for Infisical, the secret name and path, never a value. A TOTP seed is
//! kept as a seed; the code is computed when the login form is filled
//! ([`BankCredentials::to_protocol`]).

pub mod autologin;
pub mod cli;
mod infisical;
mod local;
mod totp;
pub mod usage;

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use protocol::SecretString;
use uuid::Uuid;

use crate::audit::{Action, Actor, AuditLog, EventBuilder, Outcome};
use crate::clock::Clock;
use crate::config::Config;
use crate::config::secrets::SecretsConfig;
use crate::db::Database;

pub use infisical::{
    ApiFailure, InfisicalClient, InfisicalError, InfisicalSource, SecretLocation, rate_limit_wait,
};
pub use local::{CredentialEntry, CredentialKey, KEY_FILE_NAME, LocalStore};
pub use totp::TotpSeed;

/// Maximum length of a user id in a credential reference.
pub const MAX_USER_ID_LEN: usize = 128;

/// Reference to a credential: a site's shared one, or one person's for a site.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CredentialRef {
    Shared { site: String },
    Personal { site: String, user_id: String },
}

impl CredentialRef {
    /// Builds a reference to the shared credential of a site. Site names follow the site catalogue: 1 to 64
    /// characters from `a-z`, `0-9` and `-`, not starting with `-`.
    pub fn shared(site: &str) -> Result<CredentialRef, CredentialError> {
        check_site(site)?;
        Ok(CredentialRef::Shared {
            site: site.to_owned(),
        })
    }

    /// Builds a reference to one person's credential for a site. User ids are 1 to 128 characters from
    /// `A-Z`, `a-z`, `0-9`, `-` and `_`, which keeps them usable as an Infisical folder
    /// name.
    pub fn personal(site: &str, user_id: &str) -> Result<CredentialRef, CredentialError> {
        check_site(site)?;
        let valid = (1..=MAX_USER_ID_LEN).contains(&user_id.len())
            && user_id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !valid {
            return Err(CredentialError::InvalidReference(format!(
                "invalid user id {user_id:?}; use the person's user id (1 to {MAX_USER_ID_LEN} characters from A-Z, a-z, 0-9, '-' and '_')"
            )));
        }
        Ok(CredentialRef::Personal {
            site: site.to_owned(),
            user_id: user_id.to_owned(),
        })
    }

    pub fn site(&self) -> &str {
        match self {
            CredentialRef::Shared { site } | CredentialRef::Personal { site, .. } => site,
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        match self {
            CredentialRef::Shared { .. } => None,
            CredentialRef::Personal { user_id, .. } => Some(user_id),
        }
    }

    /// Returns the audit event target: `credential:SITE` or `credential:SITE/user:ID`.
    pub fn audit_target(&self) -> String {
        match self {
            CredentialRef::Shared { site } => format!("credential:{site}"),
            CredentialRef::Personal { site, user_id } => {
                format!("credential:{site}/user:{user_id}")
            }
        }
    }
}

impl fmt::Display for CredentialRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialRef::Shared { site } => write!(f, "the shared credential of site {site}"),
            CredentialRef::Personal { site, user_id } => {
                write!(f, "the credential of user {user_id} for site {site}")
            }
        }
    }
}

fn check_site(site: &str) -> Result<(), CredentialError> {
    let valid = (1..=crate::sites::MAX_NAME_LEN).contains(&site.len())
        && site
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !site.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(CredentialError::InvalidReference(format!(
            "invalid site name {site:?}; site names are 1 to {} characters from a-z, 0-9 and '-'",
            crate::sites::MAX_NAME_LEN
        )))
    }
}

/// One field of a bank credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialField {
    Username,
    Password,
    TotpSeed,
}

impl CredentialField {
    pub const ALL: [CredentialField; 3] = [
        CredentialField::Username,
        CredentialField::Password,
        CredentialField::TotpSeed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CredentialField::Username => "username",
            CredentialField::Password => "password",
            CredentialField::TotpSeed => "totp_seed",
        }
    }
}

/// A bank login: username, password and an optional TOTP seed. `Debug` is redacted.
#[derive(Debug, Clone)]
pub struct BankCredentials {
    pub username: SecretString,
    pub password: SecretString,
    pub totp_seed: Option<TotpSeed>,
}

impl BankCredentials {
    /// Checks every value and parses the seed. A value that cannot be typed (a line
    /// break or another control character) is rejected, never altered.
    pub fn new(
        reference: &CredentialRef,
        username: SecretString,
        password: SecretString,
        totp_seed: Option<SecretString>,
    ) -> Result<BankCredentials, CredentialError> {
        for (field, value) in [
            (CredentialField::Username, &username),
            (CredentialField::Password, &password),
        ] {
            if value.is_empty() {
                return Err(CredentialError::Invalid {
                    reference: reference.to_string(),
                    field,
                    reason: "is empty".to_owned(),
                });
            }
            protocol::check_credential_typeable(value).map_err(|reason| {
                CredentialError::Invalid {
                    reference: reference.to_string(),
                    field,
                    reason: reason.to_owned(),
                }
            })?;
        }
        let totp_seed = match totp_seed {
            None => None,
            Some(text) => {
                Some(
                    TotpSeed::parse(text).map_err(|reason| CredentialError::Invalid {
                        reference: reference.to_string(),
                        field: CredentialField::TotpSeed,
                        reason: reason.to_owned(),
                    })?,
                )
            }
        };
        Ok(BankCredentials {
            username,
            password,
            totp_seed,
        })
    }

    /// Returns the values to type, with the one-time code for `unix_seconds` computed now.
    pub fn to_protocol(&self, unix_seconds: u64) -> protocol::Credentials {
        protocol::Credentials {
            username: self.username.clone(),
            password: self.password.clone(),
            totp: self
                .totp_seed
                .as_ref()
                .map(|seed| seed.code_at(unix_seconds)),
        }
    }
}

/// Error fetching or saving a credential. Messages never carry a value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{0}")]
    InvalidReference(String),
    /// Nothing is stored for the reference. `detail` names where the source looked.
    #[error("no credential found for {reference}: {detail}")]
    NotFound { reference: String, detail: String },
    #[error("the {} of {reference} {reason}; correct the value where it is stored (it is never changed on the way)", .field.as_str())]
    Invalid {
        reference: String,
        field: CredentialField,
        reason: String,
    },
    #[error("cannot decrypt the {} of {reference}: the row was edited or moved, or the key file {key_file} was replaced; store the credential again", .field.as_str())]
    Decrypt {
        reference: String,
        field: CredentialField,
        key_file: String,
    },
    #[error(transparent)]
    Infisical(#[from] InfisicalError),
    #[error("credential storage failed: {0:#}")]
    Storage(anyhow::Error),
}

impl CredentialError {
    /// Returns a short, stable name for metrics and audit details.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialError::InvalidReference(_) => "invalid_reference",
            CredentialError::NotFound { .. } => "not_found",
            CredentialError::Invalid { .. } => "invalid_value",
            CredentialError::Decrypt { .. } => "decrypt_failed",
            CredentialError::Infisical(error) => error.kind(),
            CredentialError::Storage(_) => "storage",
        }
    }
}

/// A place bank credentials are read from.
pub trait CredentialSource: Send + Sync + 'static {
    /// Short name for logs and audit details, such as `local` or `infisical`.
    fn name(&self) -> &'static str;

    /// Reads and checks one credential.
    fn fetch<'a>(
        &'a self,
        reference: &'a CredentialRef,
    ) -> BoxFuture<'a, Result<BankCredentials, CredentialError>>;
}

/// A credential source whose every fetch is recorded in the audit trail.
#[derive(Clone)]
pub struct CredentialVault {
    source: Arc<dyn CredentialSource>,
    audit: AuditLog,
}

impl fmt::Debug for CredentialVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialVault")
            .field("source", &self.source.name())
            .finish_non_exhaustive()
    }
}

impl CredentialVault {
    pub fn new(source: Arc<dyn CredentialSource>, audit: AuditLog) -> CredentialVault {
        CredentialVault { source, audit }
    }

    /// Builds the source named by `[secrets]`: the local encrypted store (creating its
    /// key file on first use) or an Infisical client.
    pub fn from_config(
        config: &Config,
        db: &Database,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<CredentialVault> {
        let source = source_from_config(config, db, clock.clone())?;
        Ok(CredentialVault::new(
            source,
            AuditLog::new(db.clone(), clock),
        ))
    }

    pub fn source(&self) -> &Arc<dyn CredentialSource> {
        &self.source
    }

    /// Fetches a credential for `actor` and records a `credential.retrieved` event with
    /// the outcome. A fetch whose audit event cannot be written fails, so that no
    /// credential leaves the broker unrecorded.
    #[tracing::instrument(skip_all, fields(credential.site = reference.site(), credential.user_id = reference.user_id(), credential.source = self.source.name()))]
    pub async fn fetch(
        &self,
        reference: &CredentialRef,
        actor: Actor,
        session_id: Option<Uuid>,
    ) -> Result<BankCredentials, CredentialError> {
        let result = self.source.fetch(reference).await;

        let mut event = EventBuilder::new(actor, Action::CredentialRetrieved)
            .target(reference.audit_target())
            .detail("source", self.source.name());
        if let Some(session_id) = session_id {
            event = event.session(session_id);
        }
        event = match &result {
            Ok(credentials) => event.detail("one_time_code", credentials.totp_seed.is_some()),
            Err(error) => event
                .outcome(Outcome::Failure)
                .detail("error_kind", error.kind())
                .detail("error", error.to_string()),
        };
        if let Err(error) = &result {
            tracing::warn!(error = %error, error.kind = error.kind(), "Credential fetch failed");
        }

        self.audit.append(event.build()).await.map_err(|error| {
            CredentialError::Storage(
                error.context("cannot record the credential fetch in the audit trail"),
            )
        })?;
        result
    }
}

/// Builds the configured credential source.
pub fn source_from_config(
    config: &Config,
    db: &Database,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn CredentialSource>> {
    match &config.secrets {
        SecretsConfig::Local => {
            let key = CredentialKey::load_or_create(&config.data_dir)?;
            Ok(Arc::new(LocalStore::new(db.clone(), Arc::new(key), clock)))
        }
        SecretsConfig::Infisical(infisical) => Ok(Arc::new(InfisicalSource::new(infisical)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> CredentialRef {
        CredentialRef::shared("demo-bank").unwrap()
    }

    #[test]
    fn references_are_checked() {
        assert!(CredentialRef::shared("demo-bank").is_ok());
        assert!(CredentialRef::shared("Demo").is_err());
        assert!(CredentialRef::shared("../x").is_err());
        assert!(CredentialRef::personal("demo-bank", "0b5a-7c_1").is_ok());
        assert!(CredentialRef::personal("demo-bank", "a/b").is_err());
        assert!(CredentialRef::personal("demo-bank", "").is_err());
    }

    #[test]
    fn typeable_values_are_kept_exactly() {
        for password in ["<p&ss>'\"$", "`$(id)`%20", "pässwörd€", "trailing space "] {
            let credentials =
                BankCredentials::new(&reference(), "alice".into(), password.into(), None).unwrap();

            assert_eq!(credentials.password.expose(), password);
        }
    }

    #[test]
    fn untypeable_values_are_rejected_without_the_value() {
        for password in [
            "Mk-first\nsecond",
            "Mk-first\r",
            "Mk-tab\tinside",
            "Mk-bell\u{7}",
        ] {
            let error = BankCredentials::new(&reference(), "alice".into(), password.into(), None)
                .unwrap_err();

            assert!(
                matches!(
                    error,
                    CredentialError::Invalid {
                        field: CredentialField::Password,
                        ..
                    }
                ),
                "{error:?}"
            );
            assert!(!error.to_string().contains("Mk-"), "{error}");
        }
        let error = BankCredentials::new(&reference(), "".into(), "x".into(), None).unwrap_err();
        assert!(error.to_string().contains("username"), "{error}");
    }

    #[test]
    fn debug_output_is_redacted() {
        let credentials = BankCredentials::new(
            &reference(),
            "Mk-user".into(),
            "Mk-pass".into(),
            Some("JBSWY3DPEHPK3PXP".into()),
        )
        .unwrap();

        let debug = format!("{credentials:?}");

        assert!(!debug.contains("Mk-"), "{debug}");
        assert!(!debug.contains("JBSWY3DPEHPK3PXP"), "{debug}");
    }

    #[test]
    fn totp_code_is_computed_at_fill_time() {
        // RFC 6238 appendix B secret "12345678901234567890" in base32.
        let credentials = BankCredentials::new(
            &reference(),
            "alice".into(),
            "pw".into(),
            Some("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into()),
        )
        .unwrap();

        assert_eq!(credentials.to_protocol(59).totp.unwrap().expose(), "287082");
        assert_eq!(
            credentials
                .to_protocol(1_111_111_109)
                .totp
                .unwrap()
                .expose(),
            "081804"
        );
    }
}
