//! Audit pruning with signed checkpoints, and verification across a pruning, on
//! SQLite and PostgreSQL: the chain still verifies, and every kind of tampering
//! after pruning is named.

use std::collections::HashSet;
use std::sync::Arc;

use broker::audit::{
    self, Action, Actor, AuditLog, AuditSigningKey, ChainProblemKind, EventBuilder,
};
use broker::both_backends;
use broker::clock::{Clock, ManualClock};
use broker::testing::{TestBackend, TestDatabase};
use chrono::{Duration, TimeZone, Utc};

const RECORDING: &str = "recording:4b1c6a52-8a8e-4a5c-9a43-0d3c1f1c2e01";

struct Pruned {
    log: AuditLog,
    key: AuditSigningKey,
    /// Sequence number of the checkpoint's last pruned event.
    last_pruned: i64,
    /// Sequence numbers of the old events kept for the stored recording.
    kept: Vec<i64>,
}

/// Appends 10 events 100 days ago (every third one about the stored recording) and
/// 3 events now, then prunes everything older than 30 days.
async fn prune_old_events(database: &TestDatabase) -> Pruned {
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let log = AuditLog::new(database.db.clone(), clock.clone() as Arc<dyn Clock>);
    let mut kept = Vec::new();
    for index in 0..10 {
        let builder = if index % 3 == 0 {
            EventBuilder::new(Actor::System("recorder"), Action::RecordingSegmentStored)
                .target(RECORDING)
                .detail("index", index)
        } else {
            EventBuilder::new(
                Actor::Person(format!("user-{index}")),
                Action::SignInSucceeded,
            )
            .target("portal")
        };
        let stored = log.append(builder.build()).await.unwrap();
        if index % 3 == 0 {
            kept.push(stored.seq);
        }
        clock.advance(Duration::minutes(1));
    }
    clock.advance(Duration::days(100));
    for index in 0..3 {
        let event =
            EventBuilder::new(Actor::Person(format!("late-{index}")), Action::SignOut).build();
        log.append(event).await.unwrap();
    }

    let key = AuditSigningKey::load_or_create(database.dir.path()).unwrap();
    let retained: HashSet<String> = [RECORDING.to_owned()].into();
    let before = clock.now() - Duration::days(30);
    let report = log
        .prune(
            before.timestamp_millis(),
            &retained,
            &key,
            Actor::System("cli"),
        )
        .await
        .unwrap();
    assert_eq!(report.pruned, 6);
    assert_eq!(report.kept, 4);
    let checkpoint = report.checkpoint.expect("a checkpoint is written");
    assert_eq!(checkpoint.last_seq, 10);
    assert!(checkpoint.signature_valid(&key.verifying_key()));
    Pruned {
        log,
        key,
        last_pruned: checkpoint.last_seq,
        kept,
    }
}

/// Runs a statement past the append-only triggers, as someone with direct database
/// access would.
async fn tamper(database: &TestDatabase, statement: &str) {
    let pool = database.db.pool();
    match database.backend {
        TestBackend::Sqlite => {
            for trigger in ["audit_events_no_update", "audit_events_no_delete"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP TRIGGER IF EXISTS {trigger}"
                )))
                .execute(pool)
                .await
                .unwrap();
            }
        }
        TestBackend::Postgres => {
            sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER USER")
                .execute(pool)
                .await
                .unwrap();
        }
    }
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(pool)
        .await
        .expect("tamper statement");
}

fn kinds(report: &audit::VerifyReport) -> Vec<(i64, ChainProblemKind)> {
    report
        .problems
        .iter()
        .map(|problem| (problem.seq, problem.kind))
        .collect()
}

both_backends!(chain_verifies_after_pruning, verifies_body);
async fn verifies_body(database: TestDatabase) {
    let pruned = prune_old_events(&database).await;

    let report = audit::verify_with_key(&database.db, Some(&pruned.key.verifying_key()))
        .await
        .unwrap();

    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.chain_starts_after, pruned.last_pruned);
    assert_eq!(report.checkpoints_checked, 1);
    // 4 kept, 3 recent, 1 for the pruning itself.
    assert_eq!(report.events_checked, 8);
    let events = pruned.log.list(0, 100).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|event| event.seq).collect();
    assert_eq!(&seqs[..4], pruned.kept.as_slice());
    let last = events.last().unwrap();
    assert_eq!(last.action, "system.audit.pruned");
    assert!(last.details.contains("\"pruned\":6"), "{}", last.details);
}

both_backends!(pruning_twice_keeps_chain_verifiable, twice_body);
async fn twice_body(database: TestDatabase) {
    let pruned = prune_old_events(&database).await;
    let far_future = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();

    let report = pruned
        .log
        .prune(
            far_future.timestamp_millis(),
            &[RECORDING.to_owned()].into(),
            &pruned.key,
            Actor::System("cli"),
        )
        .await
        .unwrap();
    let verified = audit::verify_with_key(&database.db, Some(&pruned.key.verifying_key()))
        .await
        .unwrap();

    assert_eq!(report.kept, 4);
    assert!(verified.is_intact(), "{:?}", verified.problems);
    assert_eq!(verified.checkpoints_checked, 2);
    // The 4 kept events and the second pruning's own event remain, and that event
    // continues the chain after the pruned head.
    assert_eq!(verified.events_checked, 5);
    assert_eq!(verified.head_seq, 15);
}

both_backends!(uncovered_events_cannot_be_deleted, uncovered_body);
async fn uncovered_body(database: TestDatabase) {
    let pruned = prune_old_events(&database).await;
    let pool = database.db.pool();

    let delete_recent = sqlx::query("DELETE FROM audit_events WHERE seq = $1")
        .bind(pruned.last_pruned + 1)
        .execute(pool)
        .await;
    let update_kept = sqlx::query("UPDATE audit_events SET outcome = 'denied' WHERE seq = $1")
        .bind(pruned.kept[0])
        .execute(pool)
        .await;
    let delete_checkpoint = sqlx::query("DELETE FROM audit_checkpoints")
        .execute(pool)
        .await;

    assert!(
        delete_recent
            .unwrap_err()
            .to_string()
            .contains("append-only")
    );
    assert!(update_kept.unwrap_err().to_string().contains("append-only"));
    assert!(
        delete_checkpoint
            .unwrap_err()
            .to_string()
            .contains("append-only")
    );
}

both_backends!(edit_after_pruning_is_found, edit_body);
async fn edit_body(database: TestDatabase) {
    let pruned = prune_old_events(&database).await;
    let recent = pruned.last_pruned + 2;

    tamper(
        &database,
        &format!("UPDATE audit_events SET actor = 'user:mallory' WHERE seq = {recent}"),
    )
    .await;
    let report = audit::verify_with_key(&database.db, Some(&pruned.key.verifying_key()))
        .await
        .unwrap();

    assert_eq!(
        kinds(&report),
        vec![(recent, ChainProblemKind::HashMismatch)]
    );
}

both_backends!(kept_event_edit_or_removal_is_found, kept_body);
async fn kept_body(database: TestDatabase) {
    let pruned = prune_old_events(&database).await;
    let key = pruned.key.verifying_key();

    tamper(
        &database,
        &format!(
            "UPDATE audit_events SET details = '{{}}' WHERE seq = {}",
            pruned.kept[1]
        ),
    )
    .await;
    let edited = audit::verify_with_key(&database.db, Some(&key))
        .await
        .unwrap();
    tamper(
        &database,
        &format!("DELETE FROM audit_events WHERE seq = {}", pruned.kept[2]),
    )
    .await;
    let removed = audit::verify_with_key(&database.db, Some(&key))
        .await
        .unwrap();

    assert_eq!(
        edited
            .first_problem()
            .map(|problem| (problem.seq, problem.kind)),
        Some((pruned.kept[1], ChainProblemKind::HashMismatch))
    );
    assert!(
        kinds(&removed).contains(&(pruned.last_pruned, ChainProblemKind::KeptEventsChanged)),
        "{:?}",
        removed.problems
    );
}

both_backends!(deletion_after_checkpoint_is_found, deletion_body);
async fn deletion_body(database: TestDatabase) {
    let pruned = prune_old_events(&database).await;
    let first_after = pruned.last_pruned + 1;

    tamper(
        &database,
        &format!("DELETE FROM audit_events WHERE seq = {first_after}"),
    )
    .await;
    let report = audit::verify_with_key(&database.db, Some(&pruned.key.verifying_key()))
        .await
        .unwrap();

    let found = kinds(&report);
    assert!(
        found.contains(&(first_after + 1, ChainProblemKind::SequenceGap)),
        "{found:?}"
    );
    assert!(
        found.contains(&(first_after + 1, ChainProblemKind::BrokenLink)),
        "{found:?}"
    );
}

both_backends!(forged_checkpoint_is_found, forged_body);
async fn forged_body(database: TestDatabase) {
    let pruned = prune_old_events(&database).await;
    let forger_dir = tempfile::tempdir().unwrap();
    let forger = AuditSigningKey::load_or_create(forger_dir.path()).unwrap();
    let head = pruned.log.list(0, 100).await.unwrap();
    let cut = head[head.len() - 2].clone();

    // Someone with the database but not the broker's key cuts more of the chain and
    // signs a checkpoint with their own key.
    let later = Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(later));
    let forged_log = AuditLog::new(database.db.clone(), clock as Arc<dyn Clock>);
    forged_log
        .prune(
            cut.occurred_at_ms + 1,
            &HashSet::new(),
            &forger,
            Actor::System("cli"),
        )
        .await
        .unwrap();
    let pinned = audit::verify_with_key(&database.db, Some(&pruned.key.verifying_key()))
        .await
        .unwrap();

    assert!(
        kinds(&pinned)
            .iter()
            .any(|(_, kind)| *kind == ChainProblemKind::CheckpointSignatureInvalid),
        "{:?}",
        pinned.problems
    );
}

/// Runs the `strongroom` binary on the test database with `dir` as data directory.
fn strongroom(
    database: &TestDatabase,
    dir: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    strongroom_with_env(database, dir, &[], args)
}

/// Runs the `strongroom` binary like [`strongroom`], with extra environment variables.
fn strongroom_with_env(
    database: &TestDatabase,
    dir: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"));
    command.envs(env.iter().copied());
    match &database.config.target {
        broker::config::DatabaseTarget::Sqlite { path } => {
            command.env(
                "STRONGROOM_DATABASE__URL",
                format!("sqlite://{}", path.display()),
            );
        }
        broker::config::DatabaseTarget::Postgres { url, .. } => {
            // The configuration takes the password only as a reference.
            let mut url = url::Url::parse(url).unwrap();
            let password = url.password().unwrap_or_default().to_owned();
            url.set_password(None).unwrap();
            command
                .env("STRONGROOM_DATABASE__URL", url.as_str())
                .env("STRONGROOM_TEST_DATABASE_PASSWORD", password)
                .env(
                    "STRONGROOM_DATABASE__PASSWORD",
                    "env:STRONGROOM_TEST_DATABASE_PASSWORD",
                );
        }
    }
    command
        .args(args)
        .env_remove("STRONGROOM_CONFIG")
        .env("STRONGROOM_DATA_DIR", dir)
        .env("STRONGROOM_LOG", "warn")
        .output()
        .expect("strongroom runs")
}

both_backends!(prune_and_verify_commands_work, commands_body);
async fn commands_body(database: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    // The events are ten days old, so a `--before` of two days ago covers them all.
    let clock = Arc::new(ManualClock::new(Utc::now() - Duration::days(10)));
    let log = AuditLog::new(database.db.clone(), clock as Arc<dyn Clock>);
    for index in 0..5 {
        let event = EventBuilder::new(
            Actor::Person(format!("user-{index}")),
            Action::SignInSucceeded,
        )
        .build();
        log.append(event).await.unwrap();
    }

    let invalid = strongroom(
        &database,
        dir.path(),
        &["audit", "prune", "--before", "yesterday"],
    );
    // A mistyped year or a zero retention would delete the whole trail.
    let future = strongroom(
        &database,
        dir.path(),
        &["audit", "prune", "--before", "2100-01-01"],
    );
    let zero_days = strongroom(
        &database,
        dir.path(),
        &["audit", "prune", "--retention-days", "0"],
    );
    let two_days_ago = (Utc::now() - Duration::days(2))
        .format("%Y-%m-%d")
        .to_string();
    let prune = strongroom(
        &database,
        dir.path(),
        &["audit", "prune", "--before", &two_days_ago],
    );
    let verify = strongroom(&database, dir.path(), &["audit", "verify"]);

    assert_eq!(invalid.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&invalid.stderr).contains("invalid --before \"yesterday\""),
        "{invalid:?}"
    );
    assert_eq!(future.status.code(), Some(2), "{future:?}");
    assert!(
        String::from_utf8_lossy(&future.stderr)
            .contains("--before 2100-01-01T00:00:00+00:00 is later than one day ago"),
        "{future:?}"
    );
    assert_eq!(zero_days.status.code(), Some(2), "{zero_days:?}");
    assert!(
        String::from_utf8_lossy(&zero_days.stderr)
            .contains("invalid value '0' for '--retention-days"),
        "{zero_days:?}"
    );
    assert!(prune.status.success(), "{prune:?}");
    assert!(
        String::from_utf8_lossy(&prune.stdout).contains("pruned 5 events"),
        "{prune:?}"
    );
    assert!(verify.status.success(), "{verify:?}");
    assert!(
        String::from_utf8_lossy(&verify.stdout)
            .contains("audit chain intact: 1 events, 1 checkpoints"),
        "{verify:?}"
    );

    // Another key's public half does not accept the checkpoint.
    let other = tempfile::tempdir().unwrap();
    let other_key = AuditSigningKey::load_or_create(other.path()).unwrap();
    let pinned = strongroom(
        &database,
        dir.path(),
        &[
            "audit",
            "verify",
            "--public-key",
            &other_key.public_key_hex(),
        ],
    );
    assert_eq!(pinned.status.code(), Some(1), "{pinned:?}");
    assert!(
        String::from_utf8_lossy(&pinned.stdout)
            .contains("first problem at event 5: CheckpointSignatureInvalid"),
        "{pinned:?}"
    );
}

both_backends!(
    prune_keeps_configured_retention_days,
    configured_retention_body
);
async fn configured_retention_body(database: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Utc::now() - Duration::days(100)));
    let log = AuditLog::new(database.db.clone(), clock.clone() as Arc<dyn Clock>);
    // Two events 100 days old, two 50 days old and one 5 days old.
    for (index, advance_days) in [0, 0, 50, 0, 45].into_iter().enumerate() {
        clock.advance(Duration::days(advance_days));
        let event = EventBuilder::new(
            Actor::Person(format!("user-{index}")),
            Action::SignInSucceeded,
        )
        .build();
        log.append(event).await.unwrap();
    }

    let default_days = strongroom(&database, dir.path(), &["audit", "prune"]);
    let configured = strongroom_with_env(
        &database,
        dir.path(),
        &[("STRONGROOM_AUDIT__RETENTION_DAYS", "30")],
        &["audit", "prune"],
    );
    let out_of_range = strongroom_with_env(
        &database,
        dir.path(),
        &[("STRONGROOM_AUDIT__RETENTION_DAYS", "0")],
        &["audit", "prune"],
    );
    let verify = strongroom(&database, dir.path(), &["audit", "verify"]);

    assert!(default_days.status.success(), "{default_days:?}");
    assert!(
        String::from_utf8_lossy(&default_days.stdout).contains("pruned 2 events"),
        "90 days by default: {default_days:?}"
    );
    assert!(configured.status.success(), "{configured:?}");
    assert!(
        String::from_utf8_lossy(&configured.stdout).contains("pruned 2 events"),
        "30 days from the configuration: {configured:?}"
    );
    assert!(!out_of_range.status.success(), "{out_of_range:?}");
    assert!(
        String::from_utf8_lossy(&out_of_range.stderr)
            .contains("audit.retention_days: 0 is out of range; use 1 to 3653 days"),
        "{out_of_range:?}"
    );
    assert!(verify.status.success(), "{verify:?}");
}

/// Creates a login role with the given grants and returns a pool connected as it.
async fn connect_as(database: &TestDatabase, role: &str, grants: &[&str]) -> broker::db::Database {
    let pool = database.db.pool();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'role'"
    )))
    .execute(pool)
    .await
    .unwrap();
    for grant in grants {
        sqlx::query(sqlx::AssertSqlSafe(format!("GRANT {grant} TO {role}")))
            .execute(pool)
            .await
            .unwrap();
    }
    let mut url = url::Url::parse(&database.postgres_url().unwrap()).unwrap();
    url.set_username(role).unwrap();
    url.set_password(Some("role")).unwrap();
    let config = broker::config::DatabaseConfig {
        target: broker::config::DatabaseTarget::Postgres {
            url: url.to_string(),
            password: None,
        },
        max_connections: 2,
        connect_timeout: std::time::Duration::from_secs(10),
    };
    broker::db::Database::connect(&config).await.unwrap()
}

async fn drop_role(database: &TestDatabase, role: &str) {
    let pool = database.db.pool();
    for statement in [
        format!("REVOKE ALL ON audit_events, audit_checkpoints FROM {role}"),
        format!("DROP ROLE {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pruning_needs_its_own_role() {
    let database = TestDatabase::new(TestBackend::Postgres).await;
    let owner = AuditLog::new(
        database.db.clone(),
        Arc::new(broker::clock::SystemClock) as Arc<dyn Clock>,
    );
    for index in 0..3 {
        let event = EventBuilder::new(
            Actor::Person(format!("user-{index}")),
            Action::SignInSucceeded,
        )
        .build();
        owner.append(event).await.unwrap();
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let app_role = format!("strongroom_app_{suffix}");
    let prune_role = format!("strongroom_prune_{suffix}");
    let app = connect_as(
        &database,
        &app_role,
        &[
            "SELECT, INSERT ON audit_events",
            "SELECT ON audit_checkpoints",
        ],
    )
    .await;
    let pruner = connect_as(
        &database,
        &prune_role,
        &[
            "SELECT, INSERT, DELETE ON audit_events",
            "SELECT, INSERT ON audit_checkpoints",
        ],
    )
    .await;
    let key = AuditSigningKey::load_or_create(database.dir.path()).unwrap();
    let clock = Arc::new(broker::clock::SystemClock) as Arc<dyn Clock>;
    let before = Utc::now().timestamp_millis() + 1;

    let as_app = AuditLog::new(app.clone(), clock.clone())
        .prune(before, &HashSet::new(), &key, Actor::System("cli"))
        .await;
    let as_pruner = AuditLog::new(pruner.clone(), clock)
        .prune(before, &HashSet::new(), &key, Actor::System("cli"))
        .await;
    let verified = audit::verify_with_key(&database.db, Some(&key.verifying_key()))
        .await
        .unwrap();
    app.close().await;
    pruner.close().await;
    drop_role(&database, &app_role).await;
    drop_role(&database, &prune_role).await;

    let refused = format!("{:#}", as_app.unwrap_err());
    assert!(refused.contains("permission denied"), "{refused}");
    assert_eq!(as_pruner.unwrap().pruned, 3);
    assert!(verified.is_intact(), "{:?}", verified.problems);
}

#[test]
fn prune_on_new_database_names_migrate() {
    let dir = tempfile::tempdir().unwrap();
    // An empty file is an SQLite database without tables. A missing file is refused
    // earlier, with a message about the database's path.
    std::fs::File::create(dir.path().join("strongroom.db")).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("STRONGROOM_")) {
        command.env_remove(name);
    }

    let output = command
        .args(["audit", "prune"])
        .env("STRONGROOM_DATA_DIR", dir.path())
        .env("STRONGROOM_LOG", "warn")
        .output()
        .expect("strongroom runs");

    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("run `strongroom migrate` first"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("audit-signing.key").exists(),
        "a failed prune leaves no signing key"
    );
}
