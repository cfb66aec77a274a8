//! `strongroom quota show|set` run as a process, on SQLite and on PostgreSQL.

mod terminal_support;

use std::process::Output;
use std::sync::Arc;

use broker::audit::{Action, AuditLog};
use broker::clock::SystemClock;
use broker::testing::{TestBackend, TestDatabase};
use terminal_support::Cli;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn quota_commands(backend: TestBackend) {
    let database = TestDatabase::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(dir.path(), &database);

    let added = cli.run(
        &["user", "add", "alice", "--role", "user"],
        "Quota-test-passphrase-7!\n",
    );
    assert!(added.status.success(), "{}", stderr(&added));

    let shown = cli.run(&["quota", "show", "alice"], "");
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(
        stdout(&shown).contains("quota 5 (sessions.default_quota = 5), 0 live"),
        "{}",
        stdout(&shown)
    );

    let set = cli.run(&["quota", "set", "alice", "3"], "");
    assert!(set.status.success(), "{}", stderr(&set));
    assert!(stdout(&set).contains(": 5 -> 3"), "{}", stdout(&set));
    let shown = cli.run(&["quota", "show", "alice"], "");
    assert!(
        stdout(&shown).contains("quota 3 (set for this person), 0 live"),
        "{}",
        stdout(&shown)
    );

    let too_large = cli.run(&["quota", "set", "alice", "5000"], "");
    assert_eq!(too_large.status.code(), Some(2));
    assert!(
        stderr(&too_large).contains("from 0 to 1000"),
        "{}",
        stderr(&too_large)
    );
    let unknown = cli.run(&["quota", "set", "nobody", "2"], "");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("no person named \"nobody\""),
        "{}",
        stderr(&unknown)
    );

    // Only the accepted change is audited, with both values.
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let changes: Vec<_> = audit
        .list(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == Action::QuotaChanged.as_str())
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].actor, "system:cli");
    let details: serde_json::Value = serde_json::from_str(&changes[0].details).unwrap();
    assert_eq!(details["previous"], 5, "{details}");
    assert_eq!(details["max_sessions"], 3, "{details}");
}

#[tokio::test]
async fn quota_set_and_show() {
    quota_commands(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn quota_set_and_show_on_postgres() {
    quota_commands(TestBackend::Postgres).await;
}
