//! References to secrets. The configuration never holds a secret value itself.

use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;

/// Where a secret value lives.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `env:NAME`: an environment variable of the broker process.
    Env(String),
    /// `file:PATH`: the whole content of a file, one trailing newline removed.
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretRefError {
    #[error("a secret must be a reference such as `env:NAME` or `file:/path`, not an inline value")]
    Inline,
    #[error("`{0}:` needs a name or path after the colon")]
    Empty(&'static str),
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("cannot read secret file {path}: {error}")]
    File { path: PathBuf, error: String },
}

impl SecretRef {
    /// Parses a reference. Anything without a known scheme is treated as an inline
    /// secret and refused; the error never repeats the value.
    pub fn parse(text: &str) -> Result<SecretRef, SecretRefError> {
        if let Some(name) = text.strip_prefix("env:") {
            if name.is_empty() {
                return Err(SecretRefError::Empty("env"));
            }
            return Ok(SecretRef::Env(name.to_owned()));
        }
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SecretRefError::Empty("file"));
            }
            return Ok(SecretRef::File(PathBuf::from(path)));
        }
        Err(SecretRefError::Inline)
    }

    /// Reads the secret value.
    pub fn resolve(&self) -> Result<SecretString, SecretRefError> {
        match self {
            SecretRef::Env(name) => std::env::var(name)
                .map(SecretString::from)
                .map_err(|_| SecretRefError::EnvMissing(name.clone())),
            SecretRef::File(path) => {
                let mut text =
                    std::fs::read_to_string(path).map_err(|error| SecretRefError::File {
                        path: path.clone(),
                        error: error.to_string(),
                    })?;
                if text.ends_with('\n') {
                    text.pop();
                }
                Ok(SecretString::from(text))
            }
        }
    }
}
