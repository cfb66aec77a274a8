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
