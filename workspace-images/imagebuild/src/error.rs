//! Errors of image building. Callers branch on the variant: a missing tool or bad input
//! needs a person, a failed Debian resolution may be a mirror outage worth retrying.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "agent binary {path} is missing or unreadable ({source}); build strongroom-agent first or pass its path"
    )]
    AgentBinary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no enabled Debian apt source for suites {suites:?} in {searched}; add them to /etc/apt/sources.list.d/ or pass an apt sources file"
    )]
    NoAptSources {
        suites: Vec<String>,
        searched: String,
    },

    #[error("invalid recipe {recipe}: {reason}")]
    InvalidRecipe { recipe: String, reason: String },

    #[error("cannot start {program}: {source}; install it with `apt-get install {package}`")]
    ToolMissing {
        program: &'static str,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{program} failed with {status}; last output lines:\n{tail}")]
    ToolFailed {
        program: &'static str,
        status: std::process::ExitStatus,
        tail: String,
    },

    #[error(
        "package resolution for recipe {recipe} listed no packages; check the apt sources and the suite name"
    )]
    EmptyResolution { recipe: String },

    #[error("Docker API request failed while {action}: {source}")]
    Docker {
        action: &'static str,
        #[source]
        source: bollard::errors::Error,
    },

    #[error("Docker rejected the image import: {message}")]
    ImportRejected { message: String },
}

impl BuildError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn docker(action: &'static str) -> impl FnOnce(bollard::errors::Error) -> Self {
        move |source| Self::Docker { action, source }
    }
}
