//! `strongroom quota show|set`, `recording list|hold` and `user add` run as a process,
//! on SQLite and on PostgreSQL.

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

/// Inserts a recording of `user_id` that started at `started` (RFC 3339).
async fn insert_recording(
    database: &TestDatabase,
    user_id: &str,
    site: &str,
    started: &str,
) -> uuid::Uuid {
    let started_at = chrono::DateTime::parse_from_rfc3339(started)
        .unwrap()
        .with_timezone(&chrono::Utc);
    let entry = broker::recordings::catalogue::NewEntry {
        id: uuid::Uuid::new_v4(),
        session_id: uuid::Uuid::new_v4(),
        user_id: user_id.to_owned(),
        site: site.to_owned(),
        instance_id: "cli-test".to_owned(),
        started_at,
        expires_at: started_at + chrono::Duration::days(30),
    };
    broker::recordings::catalogue::insert(&database.db, &entry)
        .await
        .unwrap();
    entry.id
}

async fn recording_commands(backend: TestBackend) {
    let database = TestDatabase::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(dir.path(), &database);
    for name in ["alice", "bob"] {
        let added = cli.run(
            &["user", "add", name, "--role", "user"],
            "Recording-test-passphrase-7!\n",
        );
        assert!(added.status.success(), "{}", stderr(&added));
    }
    let alice = broker::auth::users::find_by_username(&database.db, "alice")
        .await
        .unwrap()
        .unwrap();
    let bob = broker::auth::users::find_by_username(&database.db, "bob")
        .await
        .unwrap()
        .unwrap();
    let alice_demo =
        insert_recording(&database, &alice.id, "demo-bank", "2026-12-01T10:00:00Z").await;
    let alice_other =
        insert_recording(&database, &alice.id, "other-bank", "2026-12-03T10:00:00Z").await;
    let bob_demo = insert_recording(&database, &bob.id, "demo-bank", "2026-12-02T10:00:00Z").await;

    let all = cli.run(&["recording", "list"], "");
    assert!(all.status.success(), "{}", stderr(&all));
    let lines: Vec<Vec<String>> = stdout(&all)
        .lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect();
    let ids: Vec<&str> = lines.iter().map(|fields| fields[0].as_str()).collect();
    let expected = [alice_other, bob_demo, alice_demo].map(|id| id.to_string());
    assert_eq!(ids, expected, "newest first: {lines:?}");
    assert_eq!(
        lines[1],
        [
            bob_demo.to_string().as_str(),
            "bob",
            "demo-bank",
            "2026-12-02T10:00:00+00:00",
            "-",
            "recording",
            "-"
        ],
        "{lines:?}"
    );

    let alice_only = stdout(&cli.run(&["recording", "list", "--person", "alice"], ""));
    assert_eq!(alice_only.lines().count(), 2, "{alice_only}");
    assert!(!alice_only.contains("\tbob\t"), "{alice_only}");
    let site_and_time = stdout(&cli.run(
        &[
            "recording",
            "list",
            "--site",
            "demo-bank",
            "--from",
            "2026-12-02",
        ],
        "",
    ));
    assert_eq!(
        site_and_time.lines().collect::<Vec<_>>().len(),
        1,
        "{site_and_time}"
    );
    assert!(
        site_and_time.starts_with(&bob_demo.to_string()),
        "{site_and_time}"
    );

    // `recording hold` needs the recording's files; the catalogue row is enough here.
    sqlx::query("UPDATE recordings SET legal_hold = 1 WHERE id = $1")
        .bind(alice_demo.to_string())
        .execute(database.db.pool())
        .await
        .unwrap();
    let listed = stdout(&cli.run(&["recording", "list", "--person", &alice.id], ""));
    let held_line = listed
        .lines()
        .find(|line| line.starts_with(&alice_demo.to_string()))
        .unwrap();
    assert!(held_line.ends_with("\theld"), "{held_line}");

    // A recording the catalogue knows but whose files are gone is an operational fault.
    let no_files = cli.run(&["recording", "hold", &alice_demo.to_string()], "");
    assert_eq!(no_files.status.code(), Some(1), "{}", stderr(&no_files));
    assert!(
        stderr(&no_files).contains(&format!(
            "the files of recording {alice_demo} are missing from the recording store"
        )),
        "{}",
        stderr(&no_files)
    );
    assert!(
        stderr(&no_files).contains("restore them from a backup"),
        "{}",
        stderr(&no_files)
    );

    let bad_time = cli.run(&["recording", "list", "--from", "yesterday"], "");
    assert_eq!(bad_time.status.code(), Some(2), "{}", stderr(&bad_time));
    assert!(
        stderr(&bad_time).contains("invalid --from \"yesterday\""),
        "{}",
        stderr(&bad_time)
    );
    let unknown = cli.run(
        &["recording", "hold", &uuid::Uuid::new_v4().to_string()],
        "",
    );
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains("strongroom recording list"),
        "{}",
        stderr(&unknown)
    );

    // A username that is taken is rejected input, like an invalid one.
    let duplicate = cli.run(
        &["user", "add", "alice", "--role", "user"],
        "Recording-test-passphrase-7!\n",
    );
    assert_eq!(duplicate.status.code(), Some(2), "{}", stderr(&duplicate));
    assert!(
        stderr(&duplicate).contains("\"alice\" is already taken"),
        "{}",
        stderr(&duplicate)
    );
}

#[tokio::test]
async fn recording_list_hold_and_user_add() {
    recording_commands(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn recording_list_hold_and_user_add_on_postgres() {
    recording_commands(TestBackend::Postgres).await;
}
