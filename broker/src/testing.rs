//! Throw-away databases for tests, on SQLite and on a real PostgreSQL.
//!
//! PostgreSQL tests read the server's URL from `STRONGROOM_TEST_POSTGRES_URL` (a role
//! allowed to create databases) and fail, rather than skip, when it is not set:
//! `scripts/start-postgres.sh` starts a local server and prints the value.

use std::time::Duration;

use sqlx::Connection;
use uuid::Uuid;

use crate::config::{DatabaseConfig, DatabaseTarget};
use crate::db::Database;

pub const POSTGRES_URL_ENV: &str = "STRONGROOM_TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

/// A migrated database that is removed when dropped.
pub struct TestDatabase {
    pub db: Database,
    pub config: DatabaseConfig,
    pub backend: TestBackend,
    /// Directory of the SQLite file; also a scratch data directory for the test.
    pub dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

/// The PostgreSQL server URL for tests, or a panic that says how to get one.
pub fn postgres_admin_url() -> String {
    std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| {
        panic!("{POSTGRES_URL_ENV} is not set; run `eval \"$(sudo scripts/start-postgres.sh)\"` or use scripts/test.sh")
    })
}

/// Replaces the database name at the end of a PostgreSQL URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..path_start])
}

impl TestDatabase {
    /// Creates and migrates a fresh database.
    pub async fn new(backend: TestBackend) -> TestDatabase {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (target, postgres) = match backend {
            TestBackend::Sqlite => (
                DatabaseTarget::Sqlite {
                    path: dir.path().join("test.db"),
                },
                None,
            ),
            TestBackend::Postgres => {
                let admin = postgres_admin_url();
                let name = format!("strongroom_test_{}", Uuid::new_v4().simple());
                let mut connection = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to the test PostgreSQL server");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut connection)
                    .await
                    .expect("create the test database");
                connection.close().await.ok();
                let url = with_database(&admin, &name);
                (
                    DatabaseTarget::Postgres {
                        url,
                        password: None,
                    },
                    Some((admin, name)),
                )
            }
        };
        let config = DatabaseConfig {
            target,
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
        };
        let db = Database::connect(&config)
            .await
            .expect("connect to the test database");
        db.migrate().await.expect("migrate the test database");
        TestDatabase {
            db,
            config,
            backend,
            dir,
            postgres,
        }
    }

    /// Opens a second, independent pool on the same database, as a second broker would.
    pub async fn second_pool(&self) -> Database {
        Database::connect(&self.config)
            .await
            .expect("connect a second pool")
    }

    /// The PostgreSQL URL of this database, if it is one.
    pub fn postgres_url(&self) -> Option<String> {
        self.postgres
            .as_ref()
            .map(|(admin, name)| with_database(admin, name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else {
            return;
        };
        // Drop may run on a runtime that this thread blocks, so the removal gets its own
        // thread and runtime, and it does not wait for the pool: `WITH (FORCE)` ends the
        // pool's connections instead.
        let result = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut connection = sqlx::PgConnection::connect(&admin)
                    .await
                    .map_err(std::io::Error::other)?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut connection)
                .await
                .map_err(std::io::Error::other)?;
                Ok::<(), std::io::Error>(())
            })
        })
        .join();
        if !matches!(result, Ok(Ok(()))) {
            eprintln!("warning: could not drop a test database: {result:?}");
        }
    }
}

/// Defines one test per backend: `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let database =
                    $crate::testing::TestDatabase::new($crate::testing::TestBackend::Sqlite).await;
                ($body)(database).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let database =
                    $crate::testing::TestDatabase::new($crate::testing::TestBackend::Postgres)
                        .await;
                ($body)(database).await;
            }
        }
    };
}

/// Moves the password out of a `postgres://user:password@host/db` URL, for a `strongroom`
/// process whose configuration rejects a password inside `database.url`. Returns the URL
/// without the password, and the password.
pub fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let Some((credentials, host)) = rest.split_once('@') else {
        return (url.to_owned(), None);
    };
    match credentials.split_once(':') {
        Some((user, password)) => (
            format!("{scheme}://{user}@{host}"),
            Some(password.to_owned()),
        ),
        None => (url.to_owned(), None),
    }
}
