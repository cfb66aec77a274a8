//! Storage and audit-chain tests, each run on SQLite and on PostgreSQL.

use std::sync::Arc;

use broker::audit::{self, Action, Actor, AuditLog, ChainProblemKind, EventBuilder, Outcome};
use broker::both_backends;
use broker::clock::SystemClock;
use broker::db::Database;
use broker::testing::{TestBackend, TestDatabase};
use uuid::Uuid;

fn audit_log(db: &Database) -> AuditLog {
    AuditLog::new(db.clone(), Arc::new(SystemClock))
}

async fn append_events(log: &AuditLog, count: usize) {
    for index in 0..count {
        let event = EventBuilder::new(
            Actor::Person(format!("user-{index}")),
            Action::SignInSucceeded,
        )
        .target("portal")
        .client(Some("192.0.2.7".parse().unwrap()))
        .session(Uuid::new_v4())
        .detail("method", "local")
        .build();
        log.append(event).await.expect("append audit event");
    }
}

/// Runs a statement that bypasses the append-only guard, as an attacker with direct
/// database access would: SQLite triggers dropped, PostgreSQL triggers disabled.
async fn tamper(database: &TestDatabase, statement: &str) {
    let pool = database.db.pool();
    match database.backend {
        TestBackend::Sqlite => {
            sqlx::query("DROP TRIGGER IF EXISTS audit_events_no_update")
                .execute(pool)
                .await
                .unwrap();
            sqlx::query("DROP TRIGGER IF EXISTS audit_events_no_delete")
                .execute(pool)
                .await
                .unwrap();
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

both_backends!(migrations_are_idempotent, migrations_are_idempotent_body);
async fn migrations_are_idempotent_body(database: TestDatabase) {
    database.db.migrate().await.expect("second migration run");

    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
        .fetch_one(database.db.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
}

both_backends!(
    concurrent_migrations_do_not_conflict,
    concurrent_migrations_body
);
async fn concurrent_migrations_body(database: TestDatabase) {
    // A fresh database on the same server or file, migrated by four brokers at once.
    let fresh = match database.backend {
        TestBackend::Sqlite => {
            let path = database.dir.path().join("fresh.db");
            broker::config::DatabaseConfig {
                target: broker::config::DatabaseTarget::Sqlite { path },
                ..database.config.clone()
            }
        }
        TestBackend::Postgres => {
            let name = format!("strongroom_test_{}", Uuid::new_v4().simple());
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(database.db.pool())
                .await
                .unwrap();
            let url = broker::testing::with_database(&database.postgres_url().unwrap(), &name);
            broker::config::DatabaseConfig {
                target: broker::config::DatabaseTarget::Postgres {
                    url,
                    password: None,
                },
                ..database.config.clone()
            }
        }
    };

    let mut brokers = Vec::new();
    for _ in 0..4 {
        brokers.push(Database::connect(&fresh).await.expect("connect"));
    }
    let results = futures::future::join_all(brokers.iter().map(|db| db.migrate())).await;
    for result in &results {
        assert!(result.is_ok(), "migration failed: {result:?}");
    }
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(brokers[0].pool())
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite"))
            .unwrap()
            .count()
    );

    for db in brokers {
        db.close().await;
    }
    if let broker::config::DatabaseTarget::Postgres { url, .. } = &fresh.target {
        let name = url.rsplit('/').next().unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(database.db.pool())
        .await
        .unwrap();
    }
}

both_backends!(audit_chain_is_intact_after_appends, chain_intact_body);
async fn chain_intact_body(database: TestDatabase) {
    let log = audit_log(&database.db);
    append_events(&log, 5).await;

    let report = audit::verify(&database.db).await.unwrap();

    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.events_checked, 5);
    assert_eq!(report.head_seq, 5);
}

both_backends!(audit_event_fields_round_trip, round_trip_body);
async fn round_trip_body(database: TestDatabase) {
    let log = audit_log(&database.db);
    let session = Uuid::new_v4();
    let event = EventBuilder::new(Actor::Person("alice".into()), Action::SessionEnded)
        .target("site:demo-bank")
        .outcome(Outcome::Failure)
        .client(Some("2001:db8::5".parse().unwrap()))
        .session(session)
        .detail("reason", "idle")
        .build();

    let stored = log.append(event).await.unwrap();
    let listed = log.list(0, 10).await.unwrap();

    assert_eq!(listed, vec![stored.clone()]);
    assert_eq!(stored.actor, "user:alice");
    assert_eq!(stored.action, "session.ended");
    assert_eq!(stored.outcome, "failure");
    assert_eq!(stored.client_addr.as_deref(), Some("2001:db8::5"));
    assert_eq!(stored.session_id, Some(session.to_string()));
    assert_eq!(stored.details, r#"{"reason":"idle"}"#);
}

both_backends!(
    audit_search_by_site_finds_both_target_forms,
    site_target_search_body
);
async fn site_target_search_body(database: TestDatabase) {
    let log = audit_log(&database.db);
    // An event stored before every site event used `site:NAME`, a current one, and
    // events of another site and of a recording.
    for target in [
        "demo-bank",
        "site:demo-bank",
        "site:other-bank",
        "recording:demo-bank",
    ] {
        let event = EventBuilder::new(Actor::Person("alice".into()), Action::SessionEnded)
            .target(target)
            .build();
        log.append(event).await.unwrap();
    }

    for filter in ["site:demo-bank", "demo-bank"] {
        let query = audit::AuditQuery {
            target: Some(filter.to_owned()),
            ..Default::default()
        };
        let found: Vec<Option<String>> = log
            .search(&query)
            .await
            .unwrap()
            .into_iter()
            .map(|event| event.target)
            .collect();
        assert_eq!(
            found,
            [
                Some("demo-bank".to_owned()),
                Some("site:demo-bank".to_owned())
            ],
            "filter {filter}"
        );
    }
    let query = audit::AuditQuery {
        target: Some("recording:demo-bank".to_owned()),
        ..Default::default()
    };
    assert_eq!(log.search(&query).await.unwrap().len(), 1);
}

both_backends!(edited_audit_event_is_found, edited_body);
async fn edited_body(database: TestDatabase) {
    append_events(&audit_log(&database.db), 4).await;

    tamper(
        &database,
        "UPDATE audit_events SET outcome = 'denied' WHERE seq = 2",
    )
    .await;
    let report = audit::verify(&database.db).await.unwrap();

    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].seq, 2);
    assert_eq!(report.problems[0].kind, ChainProblemKind::HashMismatch);
}

both_backends!(deleted_audit_event_is_found, deleted_body);
async fn deleted_body(database: TestDatabase) {
    append_events(&audit_log(&database.db), 4).await;

    tamper(&database, "DELETE FROM audit_events WHERE seq = 3").await;
    let report = audit::verify(&database.db).await.unwrap();

    let kinds: Vec<_> = report
        .problems
        .iter()
        .map(|problem| (problem.seq, problem.kind))
        .collect();
    assert!(
        kinds.contains(&(4, ChainProblemKind::SequenceGap)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(4, ChainProblemKind::BrokenLink)),
        "{kinds:?}"
    );
}

both_backends!(reordered_audit_events_are_found, reordered_body);
async fn reordered_body(database: TestDatabase) {
    append_events(&audit_log(&database.db), 4).await;

    // Swap the positions of events 2 and 3, keeping each event's own fields and hash.
    tamper(&database, "UPDATE audit_events SET seq = 100 WHERE seq = 2").await;
    tamper(&database, "UPDATE audit_events SET seq = 2 WHERE seq = 3").await;
    tamper(&database, "UPDATE audit_events SET seq = 3 WHERE seq = 100").await;
    let report = audit::verify(&database.db).await.unwrap();

    assert!(!report.is_intact());
    assert!(
        report
            .problems
            .iter()
            .any(|problem| problem.seq == 2 && problem.kind == ChainProblemKind::BrokenLink)
    );
}

both_backends!(audit_events_reject_update_and_delete, append_only_body);
async fn append_only_body(database: TestDatabase) {
    append_events(&audit_log(&database.db), 2).await;
    let pool = database.db.pool();

    let update = sqlx::query("UPDATE audit_events SET outcome = 'denied' WHERE seq = 1")
        .execute(pool)
        .await;
    let delete = sqlx::query("DELETE FROM audit_events WHERE seq = 2")
        .execute(pool)
        .await;

    assert!(update.unwrap_err().to_string().contains("append-only"));
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    if database.backend == TestBackend::Postgres {
        let truncate = sqlx::query("TRUNCATE audit_events").execute(pool).await;
        assert!(truncate.unwrap_err().to_string().contains("append-only"));
    }
    assert!(audit::verify(&database.db).await.unwrap().is_intact());
}

both_backends!(
    concurrent_appends_from_two_brokers_keep_chain,
    concurrent_appends_body
);
async fn concurrent_appends_body(database: TestDatabase) {
    let first = audit_log(&database.db);
    let second = audit_log(&database.second_pool().await);

    let writers = [first, second].into_iter().flat_map(|log| {
        (0..4).map(move |_| {
            let log = log.clone();
            tokio::spawn(async move { append_events(&log, 10).await })
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.expect("writer task");
    }
    let report = audit::verify(&database.db).await.unwrap();

    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.events_checked, 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_application_role_cannot_change_events() {
    let database = TestDatabase::new(TestBackend::Postgres).await;
    append_events(&audit_log(&database.db), 1).await;
    let role = format!("strongroom_app_{}", Uuid::new_v4().simple());
    let pool = database.db.pool();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'app'"
    )))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "GRANT SELECT, INSERT ON audit_events TO {role}"
    )))
    .execute(pool)
    .await
    .unwrap();

    let url = database.postgres_url().unwrap().replacen(
        "strongroom_test:strongroom_test",
        &format!("{role}:app"),
        1,
    );
    let app = sqlx::PgPool::connect(&url).await.unwrap();
    let update = sqlx::query("UPDATE audit_events SET outcome = 'denied'")
        .execute(&app)
        .await;
    let delete = sqlx::query("DELETE FROM audit_events").execute(&app).await;
    let truncate = sqlx::query("TRUNCATE audit_events").execute(&app).await;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
        .fetch_one(&app)
        .await
        .unwrap();
    app.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "REVOKE ALL ON audit_events FROM {role}"
    )))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(pool)
        .await
        .unwrap();

    assert!(
        update
            .unwrap_err()
            .to_string()
            .contains("permission denied")
    );
    assert!(
        delete
            .unwrap_err()
            .to_string()
            .contains("permission denied")
    );
    assert!(
        truncate
            .unwrap_err()
            .to_string()
            .contains("permission denied")
    );
    assert_eq!(count, 1);
}
