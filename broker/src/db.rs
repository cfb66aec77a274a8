//! Storage: one connection pool over SQLite or PostgreSQL.
//!
//! Queries are written once with `$1` placeholders, which both drivers accept, and run
//! through sqlx's `Any` driver. Values are limited to what `Any` carries: integers,
//! text and blobs, so times are stored as Unix milliseconds and ids as text. Where the
//! dialects differ (locking), [`Backend`] tells which one is in use.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

use crate::config::{DatabaseConfig, DatabaseTarget};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The broker's database handle.
#[derive(Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    /// For SQLite, the file whose sibling lock file serialises migrations.
    sqlite_path: Option<PathBuf>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Failure to open the database, with what the operator should check.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot read the database password from {reference}: {error}")]
    Password { reference: String, error: String },
    #[error(
        "cannot create the SQLite directory {path}: {error}; check that the data directory is writable"
    )]
    SqliteDirectory {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "cannot create the SQLite database file {path}: {error}; check that the data directory is writable"
    )]
    SqliteFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "cannot connect to the {backend} database at {target}: {error}; check that the server is running and database.url is right"
    )]
    Connect {
        backend: &'static str,
        target: String,
        error: sqlx::Error,
    },
}

impl Database {
    /// Opens the pool. Nothing is written to the database here.
    pub async fn connect(config: &DatabaseConfig) -> Result<Database, OpenError> {
        install_default_drivers();

        let (url, backend, sqlite_path, shown) = match &config.target {
            DatabaseTarget::Sqlite { path } => {
                if let Some(parent) = path
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(parent).map_err(|error| {
                        OpenError::SqliteDirectory {
                            path: parent.to_owned(),
                            error,
                        }
                    })?;
                }
                create_private_file(path).map_err(|error| OpenError::SqliteFile {
                    path: path.clone(),
                    error,
                })?;
                let url = format!("sqlite://{}?mode=rwc", path.display());
                (
                    url,
                    Backend::Sqlite,
                    Some(path.clone()),
                    path.display().to_string(),
                )
            }
            DatabaseTarget::Postgres { url, password } => {
                let full = match password {
                    Some(reference) => {
                        let secret = reference.resolve().map_err(|error| OpenError::Password {
                            reference: reference.to_string(),
                            error: error.to_string(),
                        })?;
                        with_password(url, secret.expose_secret())
                    }
                    None => url.clone(),
                };
                (full, Backend::Postgres, None, url.clone())
            }
        };

        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            .after_connect(move |connection, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        connection
                            .execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|error| OpenError::Connect { backend: config.target.backend_name(), target: shown, error })?;

        Ok(Database {
            pool,
            backend,
            sqlite_path,
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a transaction that writes. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), waiting up to the busy timeout for another writer: a
    /// deferred transaction that reads first fails with "database is locked", without
    /// waiting, when it later tries to write while another connection writes. Dropping
    /// the transaction without a commit rolls it back.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Applies pending migrations under a lock, so that brokers starting at once apply
    /// each migration exactly once: PostgreSQL through sqlx's advisory lock, SQLite
    /// through an exclusive lock on a file beside the database.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self.backend {
            Backend::Postgres => POSTGRES_MIGRATIONS
                .run(&self.pool)
                .await
                .context("failed to apply PostgreSQL migrations"),
            Backend::Sqlite => {
                let path = self
                    .sqlite_path
                    .as_deref()
                    .expect("SQLite database has a path");
                let lock = lock_file(path).await?;
                let result = SQLITE_MIGRATIONS
                    .run(&self.pool)
                    .await
                    .context("failed to apply SQLite migrations");
                drop(lock);
                result
            }
        }
    }

    /// Runs a trivial query; used by `/readyz`.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Takes an exclusive lock on `PATH.migrate-lock`, waiting for another holder.
async fn lock_file(database: &Path) -> anyhow::Result<File> {
    let mut name = database.as_os_str().to_owned();
    name.push(".migrate-lock");
    let path = PathBuf::from(name);

    tokio::task::spawn_blocking(move || {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open migration lock file {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock migration lock file {}", path.display()))?;
        Ok(file)
    })
    .await
    .context("migration lock task failed")?
}

/// Inserts a percent-encoded password into `scheme://user@host/...`.
fn with_password(url: &str, password: &str) -> String {
    let encoded: String = password
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect();

    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user, host)) => format!("{scheme}://{user}:{encoded}@{host}{tail}"),
        None => url.to_owned(),
    }
}

/// Creates an empty database file readable by its owner only, unless it exists. The
/// database contains password hashes and the audit trail. SQLite gives its `-wal` and
/// `-shm` files the mode of the database file. An existing file keeps its mode.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;

    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::{Database, with_password};
    use crate::config::{DatabaseConfig, DatabaseTarget};

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn new_sqlite_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("strongroom.db");
        let config = DatabaseConfig {
            target: DatabaseTarget::Sqlite { path: path.clone() },
            max_connections: 1,
            connect_timeout: Duration::from_secs(10),
        };

        let database = Database::connect(&config).await.unwrap();
        sqlx::query("CREATE TABLE probe (id INTEGER)")
            .execute(database.pool())
            .await
            .unwrap();

        assert_eq!(mode(&path), 0o600);
        let wal = dir.path().join("data").join("strongroom.db-wal");
        assert_eq!(mode(&wal), 0o600);
        database.pool().close().await;
    }

    #[tokio::test]
    async fn existing_sqlite_file_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strongroom.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let config = DatabaseConfig {
            target: DatabaseTarget::Sqlite { path: path.clone() },
            max_connections: 1,
            connect_timeout: Duration::from_secs(10),
        };

        let database = Database::connect(&config).await.unwrap();
        database.pool().close().await;

        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn password_is_inserted_and_encoded() {
        let url = with_password(
            "postgres://app@db:5432/strongroom?sslmode=require",
            "p@ss/w:rd",
        );

        assert_eq!(
            url,
            "postgres://app:p%40ss%2Fw%3Ard@db:5432/strongroom?sslmode=require"
        );
    }

    #[test]
    fn url_without_user_is_unchanged() {
        assert_eq!(
            with_password("postgres://db/strongroom", "x"),
            "postgres://db/strongroom"
        );
    }
}
