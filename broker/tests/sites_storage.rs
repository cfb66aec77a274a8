//! The site catalogue's login settings and credential state, on SQLite and on
//! PostgreSQL.

use broker::both_backends;
use broker::secrets::CredentialRef;
use broker::secrets::usage::{self, ClaimRejected};
use broker::sites::{self, CredentialSourceKind, RecipeStep};
use broker::testing::TestDatabase;
use uuid::Uuid;

const SITE_FILE: &str = r##"
[[site]]
name = "demo-bank"
display_name = "Demo Bank"
start_url = "https://www.demo-bank.example/login"
allowed_hosts = ["www.demo-bank.example", "login.demo-bank.example"]
recording_retention_days = 30

[site.login]
credential_source = "per_person"
credential_origins = ["https://login.demo-bank.example"]
max_failed_logins = 2

[[site.login.steps]]
action = "wait_for"
selector = "#user"
timeout_secs = 30

[[site.login.steps]]
action = "type_username"
selector = "#user"

[[site.login.steps]]
action = "type_password"
selector = "#pass"

[[site.login.steps]]
action = "click"
selector = "button[type=submit]"

[[site.login.steps]]
action = "wait_success"
url_prefix = "https://www.demo-bank.example/accounts"

[[site.login.logout_steps]]
action = "click"
selector = "#logout"

[site.policy]
downloads = "deliver"
clipboard = "paste_in"
"##;

async fn import(
    database: &TestDatabase,
    text: &str,
) -> Result<sites::ImportReport, sites::ImportError> {
    let path = database.dir.path().join("sites.toml");
    std::fs::write(&path, text).unwrap();
    sites::import_file(&database.db, &path).await
}

both_backends!(login_settings_round_trip, login_settings_body);
async fn login_settings_body(database: TestDatabase) {
    import(&database, SITE_FILE).await.unwrap();

    let site = sites::get(&database.db, "demo-bank")
        .await
        .unwrap()
        .unwrap();

    let recipe = site.login.recipe.as_ref().expect("recipe stored");
    assert_eq!(recipe.steps.len(), 5);
    assert_eq!(
        recipe.steps[0],
        RecipeStep::WaitFor {
            selector: "#user".into(),
            timeout_secs: Some(30)
        }
    );
    assert_eq!(site.login.logout_recipe.as_ref().unwrap().steps.len(), 1);
    assert_eq!(
        site.login.credential_source,
        CredentialSourceKind::PerPerson
    );
    assert_eq!(
        site.login.credential_origins,
        ["https://login.demo-bank.example"]
    );
    assert_eq!(site.login.max_failed_logins, 2);
    assert!(site.login.exclusive_use);
    assert_eq!(site.policy.downloads, sites::DownloadPolicy::Deliver);
    assert_eq!(site.policy.clipboard, sites::ClipboardPolicy::PasteIn);
}

both_backends!(invalid_login_names_every_field, invalid_login_body);
async fn invalid_login_body(database: TestDatabase) {
    let text = SITE_FILE
        .replace(
            "credential_origins = [\"https://login.demo-bank.example\"]",
            "credential_origins = [\"https://evil.example\"]",
        )
        .replace("timeout_secs = 30", "timeout_secs = 0")
        .replace("max_failed_logins = 2", "max_failed_logins = 50");

    let error = import(&database, &text).await.unwrap_err();

    let sites::ImportError::Invalid { problems, .. } = error else {
        panic!("expected invalid fields, got {error}");
    };
    let fields: Vec<&str> = problems
        .iter()
        .map(|problem| problem.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "site[0].login.steps[0].timeout_secs",
            "site[0].login.credential_origins[0]",
            "site[0].login.max_failed_logins",
        ]
    );
    assert!(
        sites::get(&database.db, "demo-bank")
            .await
            .unwrap()
            .is_none()
    );
}

/// Three sites: the first has structural problems of every kind, the second has
/// structural problems in two login steps and a port, the third only an invalid value.
const BROKEN_SITE_FILE: &str = r##"[[site]]
name = "demo-bank"
dispaly_name = "Demo Bank"
start_url = "https://www.demo-bank.example/login"
allowed_hosts = ["www.demo-bank.example"]
recording_retention_days = "thirty"
privileged = true

[site.limits]
cpus = "two"

[[site]]
name = "other-bank"
display_name = "Other Bank"
start_url = "https://www.other-bank.example/"
allowed_hosts = ["www.other-bank.example"]
allowed_ports = [443, "8443"]
recording_retention_days = 30

[[site.login.steps]]
action = "wait_for"

[[site.login.steps]]
action = "click"
selector = "#go"

[[site.login.steps]]
action = "clik"
selector = "#next"

[[site]]
name = "third-bank"
display_name = "Third Bank"
start_url = "http://www.third-bank.example/"
allowed_hosts = ["www.third-bank.example"]
recording_retention_days = 30
"##;

both_backends!(
    structural_problems_listed_together,
    structural_problems_body
);
async fn structural_problems_body(database: TestDatabase) {
    let error = import(&database, BROKEN_SITE_FILE).await.unwrap_err();

    let sites::ImportError::Invalid { problems, .. } = &error else {
        panic!("expected invalid fields, got {error}");
    };
    let places: Vec<(&str, Option<&str>, usize, usize)> = problems
        .iter()
        .map(|problem| {
            (
                problem.field.as_str(),
                problem.site.as_deref(),
                problem.line,
                problem.column,
            )
        })
        .collect();
    assert_eq!(
        places,
        [
            ("site[0].display_name", Some("demo-bank"), 1, 1),
            ("site[0].dispaly_name", Some("demo-bank"), 3, 1),
            ("site[0].recording_retention_days", Some("demo-bank"), 6, 28),
            ("site[0].privileged", Some("demo-bank"), 7, 1),
            ("site[0].limits.cpus", Some("demo-bank"), 10, 8),
            ("site[1].allowed_ports[1]", Some("other-bank"), 17, 23),
            ("site[1].login.steps[0].selector", Some("other-bank"), 20, 1),
            ("site[1].login.steps[2].action", Some("other-bank"), 28, 10),
            ("site[2].start_url", Some("third-bank"), 34, 13),
        ],
        "{error}"
    );

    let message = |field: &str| {
        problems
            .iter()
            .find(|problem| problem.field == field)
            .map(|problem| problem.message.clone())
            .unwrap()
    };
    assert!(message("site[0].display_name").contains("missing key `display_name`"));
    assert!(message("site[0].dispaly_name").contains("valid keys here: name, display_name"));
    assert!(message("site[0].dispaly_name").contains("did you mean `display_name`?"));
    assert!(!message("site[0].privileged").contains("did you mean"));
    assert!(message("site[0].recording_retention_days").contains("expected u32"));
    assert!(message("site[0].limits.cpus").contains("expected f64"));
    assert!(message("site[1].login.steps[0].selector").contains("missing key `selector`"));
    assert!(message("site[1].login.steps[2].action").contains("did you mean `click`?"));
    assert!(message("site[2].start_url").contains("https"));
    assert!(
        error
            .to_string()
            .contains("line 6, column 28: site[0].recording_retention_days (site \"demo-bank\"): "),
        "{error}"
    );
    assert!(sites::list(&database.db).await.unwrap().is_empty());
}

both_backends!(
    exclusive_credential_has_one_holder,
    exclusive_credential_body
);
async fn exclusive_credential_body(database: TestDatabase) {
    let reference = CredentialRef::shared("demo-bank").unwrap();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());

    let first_claim = usage::claim(&database.db, &reference, first, true, 1)
        .await
        .unwrap();
    let second_claim = usage::claim(&database.db, &reference, second, true, 2)
        .await
        .unwrap();
    let shared_claim = usage::claim(&database.db, &reference, second, false, 3)
        .await
        .unwrap();

    insert_session(&database, first, "ended").await;
    let after_end = usage::claim(&database.db, &reference, second, true, 4)
        .await
        .unwrap();

    assert_eq!(first_claim, Ok(()));
    assert!(
        matches!(second_claim, Err(ClaimRejected::InUse { .. })),
        "{second_claim:?}"
    );
    assert_eq!(shared_claim, Ok(()));
    assert_eq!(after_end, Ok(()));
}

async fn insert_session(database: &TestDatabase, id: Uuid, state: &str) {
    sqlx::query(
        "INSERT INTO sessions (id, user_id, site, instance_id, state, created_at_ms, last_input_at_ms) \
         VALUES ($1, 'alice', 'demo-bank', 'test', $2, 0, 0)",
    )
    .bind(id.to_string())
    .bind(state)
    .execute(database.db.pool())
    .await
    .unwrap();
}

both_backends!(failures_in_a_row_lock_credential, failure_lock_body);
async fn failure_lock_body(database: TestDatabase) {
    let reference = CredentialRef::personal("demo-bank", "alice").unwrap();
    let db = &database.db;

    let first = usage::record_login(db, &reference, false, 2, 10)
        .await
        .unwrap();
    let reset = usage::record_login(db, &reference, true, 2, 11)
        .await
        .unwrap();
    let second = usage::record_login(db, &reference, false, 2, 12)
        .await
        .unwrap();
    let third = usage::record_login(db, &reference, false, 2, 13)
        .await
        .unwrap();
    let refused = usage::claim(db, &reference, Uuid::new_v4(), false, 14)
        .await
        .unwrap();
    let listed = usage::locked(db).await.unwrap();
    let unlocked = usage::unlock(db, &reference, 15).await.unwrap();
    let after = usage::claim(db, &reference, Uuid::new_v4(), false, 16)
        .await
        .unwrap();

    assert_eq!(first.failed_logins, 1);
    assert_eq!(reset.failed_logins, 0);
    assert!(!second.locked_now);
    assert!(third.locked_now);
    assert!(
        matches!(
            refused,
            Err(ClaimRejected::Locked {
                failed_logins: 2,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reference, reference);
    assert!(unlocked);
    assert_eq!(after, Ok(()));
}

fn held_by(admin: &str) -> sites::ImportOptions {
    sites::ImportOptions {
        hold_controlled_changes: true,
        requested_by: admin.to_owned(),
    }
}

async fn import_held(
    database: &TestDatabase,
    audit: &broker::audit::AuditLog,
    text: &str,
) -> sites::ImportReport {
    let path = database.dir.path().join("held.toml");
    std::fs::write(&path, text).unwrap();
    sites::import_file_audited(
        &database.db,
        audit,
        broker::audit::Actor::Person("admin-a".to_owned()),
        &path,
        &held_by("admin-a"),
    )
    .await
    .unwrap()
}

both_backends!(dual_control_holds_until_second_admin, dual_control_body);
async fn dual_control_body(database: TestDatabase) {
    use sites::dual_control::{self, DecisionError};
    let audit = broker::audit::AuditLog::new(
        database.db.clone(),
        std::sync::Arc::new(broker::clock::SystemClock),
    );

    let report = import_held(&database, &audit, SITE_FILE).await;

    assert_eq!(report.pending.len(), 1);
    let (name, id, fields) = report.pending[0].clone();
    assert_eq!(name, "demo-bank");
    assert_eq!(fields, ["new site"]);
    assert!(
        sites::get(&database.db, "demo-bank")
            .await
            .unwrap()
            .is_none()
    );

    let same = dual_control::approve(&database.db, &audit, id, "admin-a", 5).await;
    assert!(
        matches!(same, Err(DecisionError::SameAdmin { .. })),
        "{same:?}"
    );
    let approved = dual_control::approve(&database.db, &audit, id, "admin-b", 6)
        .await
        .unwrap();
    assert_eq!(approved.login.max_failed_logins, 2);
    let twice = dual_control::approve(&database.db, &audit, id, "admin-c", 7).await;
    assert!(
        matches!(twice, Err(DecisionError::NotPending(_))),
        "{twice:?}"
    );

    // A display name change applies at once; an allowlist change waits.
    let renamed = import_held(
        &database,
        &audit,
        &SITE_FILE.replace(
            "display_name = \"Demo Bank\"",
            "display_name = \"Demo Bank Ltd\"",
        ),
    )
    .await;
    assert!(renamed.pending.is_empty(), "{:?}", renamed.pending);
    assert_eq!(renamed.updated, ["demo-bank"]);
    let widened = import_held(
        &database,
        &audit,
        &SITE_FILE.replace(
            "\"login.demo-bank.example\"]",
            "\"login.demo-bank.example\", \"cdn.example\"]",
        ),
    )
    .await;
    assert_eq!(widened.pending.len(), 1);
    assert_eq!(widened.pending[0].2, ["allowed_hosts"]);
    let rejected = dual_control::reject(&database.db, &audit, widened.pending[0].1, "admin-b", 8)
        .await
        .unwrap();
    assert_eq!(rejected.definition.name, "demo-bank");
    let site = sites::get(&database.db, "demo-bank")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(site.display_name, "Demo Bank Ltd");
    assert_eq!(site.allowed_hosts.len(), 2);
    assert!(
        dual_control::pending(&database.db)
            .await
            .unwrap()
            .is_empty()
    );

    let decisions: Vec<String> = audit
        .list(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == "admin.site.changed")
        .map(|event| {
            let details: serde_json::Value = serde_json::from_str(&event.details).unwrap();
            format!("{} {}", event.actor, details["change"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        decisions,
        [
            "user:admin-a requested",
            "user:admin-b approved",
            "user:admin-a updated",
            "user:admin-a requested",
            "user:admin-b rejected",
        ]
    );
}

both_backends!(example_site_file_imports, example_site_file_body);
async fn example_site_file_body(database: TestDatabase) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/sites.example.toml");

    let report = sites::import_file(&database.db, &path).await.unwrap();

    assert_eq!(report.created, ["example-bank"]);
    let site = sites::get(&database.db, "example-bank")
        .await
        .unwrap()
        .unwrap();
    assert!(site.login.recipe.as_ref().unwrap().needs_totp());
}

/// Time the import gets to start waiting for the write lock.
const LOCK_WAIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// Returns whether a connection to this database waits for a lock. On PostgreSQL that
/// is a backend in `pg_stat_activity`. On SQLite it is a worker thread of sqlx asleep in
/// SQLite's busy handler, which sleeps between attempts to take the write lock; idle
/// workers wait on a futex instead.
async fn lock_waiter_exists(database: &TestDatabase) -> bool {
    match database.postgres_url() {
        Some(url) => {
            use sqlx::Connection as _;
            let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut connection)
            .await
            .unwrap();
            connection.close().await.ok();
            waiting > 0
        }
        None => {
            let threads = std::fs::read_dir("/proc/self/task").unwrap();
            threads.flatten().any(|thread| {
                let read = |file: &str| std::fs::read_to_string(thread.path().join(file));
                // The kernel keeps 15 bytes of a thread name: "sqlx-sqlite-wor".
                let is_worker = read("comm").is_ok_and(|name| name.starts_with("sqlx-sqlite-wor"));
                is_worker && read("wchan").is_ok_and(|wchan| wchan.contains("nanosleep"))
            })
        }
    }
}

// A site import reads before it writes. While another connection holds the write lock
// and then commits, the import must wait for it rather than fail with "database is
// locked". The writer commits only once the import is seen waiting for the lock.
both_backends!(import_waits_for_a_concurrent_writer, concurrent_writer_body);
async fn concurrent_writer_body(database: TestDatabase) {
    import(&database, SITE_FILE).await.unwrap();
    for round in 0..5 {
        let mut writer = database.db.begin_write().await.unwrap();
        sqlx::query("UPDATE sites SET updated_at_ms = $1 WHERE name = 'demo-bank'")
            .bind(round as i64)
            .execute(&mut *writer)
            .await
            .unwrap();
        let importing = import(&database, SITE_FILE);
        let committing = async {
            let deadline = tokio::time::Instant::now() + LOCK_WAIT_TIMEOUT;
            while !lock_waiter_exists(&database).await {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "round {round}: the import did not wait for the write lock"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            writer.commit().await.unwrap();
        };
        let (imported, ()) = tokio::join!(importing, committing);
        imported.unwrap_or_else(|error| panic!("round {round}: {error:?}"));
    }
}
