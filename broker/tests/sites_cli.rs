//! `strongroom site import` run as a process, on SQLite and on PostgreSQL.

mod terminal_support;

use broker::sites;
use broker::testing::{TestBackend, TestDatabase};
use terminal_support::Cli;

/// Two sites with structural problems and one valid site, which must not be stored
/// either.
const SITE_FILE: &str = r#"[[site]]
name = "demo-bank"
display_name = "Demo Bank"
start_url = "https://www.demo-bank.example/"
allowed_hosts = ["www.demo-bank.example"]
recording_retention_days = 30
max_sesions = 4

[[site]]
name = "other-bank"
start_url = "https://www.other-bank.example/"
allowed_hosts = "www.other-bank.example"
recording_retention_days = 30

[[site]]
name = "valid-bank"
display_name = "Valid Bank"
start_url = "https://www.valid-bank.example/"
allowed_hosts = ["www.valid-bank.example"]
recording_retention_days = 30
"#;

async fn import_lists_every_problem(backend: TestBackend) {
    let database = TestDatabase::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(dir.path(), &database);
    let file = dir.path().join("sites.toml");
    std::fs::write(&file, SITE_FILE).unwrap();

    let output = cli.run(&["site", "import", file.to_str().unwrap()], "");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has 3 problem(s)"), "{stderr}");
    assert!(
        stderr.contains(
            "line 7, column 1: site[0].max_sesions (site \"demo-bank\"): unknown key `max_sesions`"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `max_sessions`?"), "{stderr}");
    assert!(
        stderr.contains("line 9, column 1: site[1].display_name (site \"other-bank\"): missing key `display_name`"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "line 12, column 17: site[1].allowed_hosts (site \"other-bank\"): invalid type: string"
        ),
        "{stderr}"
    );
    assert!(sites::list(&database.db).await.unwrap().is_empty());
}

#[tokio::test]
async fn import_lists_every_problem_on_sqlite() {
    import_lists_every_problem(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn import_lists_every_problem_on_postgres() {
    import_lists_every_problem(TestBackend::Postgres).await;
}

/// A failure to read the file or to store the sites is operational (exit 1); a file
/// whose content is rejected is input (exit 2).
async fn import_exit_code_tells_failure_from_rejection(backend: TestBackend) {
    let database = TestDatabase::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(dir.path(), &database);
    let valid = dir.path().join("valid.toml");
    std::fs::write(
        &valid,
        &SITE_FILE[SITE_FILE.find("[[site]]\nname = \"valid-bank\"").unwrap()..],
    )
    .unwrap();

    let missing = dir.path().join("missing.toml");
    let unreadable = cli.run(&["site", "import", missing.to_str().unwrap()], "");
    let stderr = String::from_utf8_lossy(&unreadable.stderr);
    assert_eq!(unreadable.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot read the site file"), "{stderr}");

    let unknown_admin = cli.run(
        &[
            "site",
            "import",
            valid.to_str().unwrap(),
            "--admin",
            "nobody",
        ],
        "",
    );
    let stderr = String::from_utf8_lossy(&unknown_admin.stderr);
    assert_eq!(unknown_admin.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no account named \"nobody\""), "{stderr}");

    // The migrations are applied, so the command cannot recreate the moved table and
    // storing the sites fails.
    sqlx::query("ALTER TABLE sites RENAME TO sites_moved_away")
        .execute(database.db.pool())
        .await
        .unwrap();
    let storage_failed = cli.run(&["site", "import", valid.to_str().unwrap()], "");
    let stderr = String::from_utf8_lossy(&storage_failed.stderr);
    assert_eq!(storage_failed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot store the imported sites"),
        "{stderr}"
    );
}

#[tokio::test]
async fn import_exit_code_tells_failure_from_rejection_on_sqlite() {
    import_exit_code_tells_failure_from_rejection(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn import_exit_code_tells_failure_from_rejection_on_postgres() {
    import_exit_code_tells_failure_from_rejection(TestBackend::Postgres).await;
}
