//! Site catalogue and session-slot storage, each test on SQLite and on PostgreSQL.

use std::sync::Arc;

use broker::both_backends;
use broker::sessions::store::{self, BeginEnding, Reservation, ReserveOutcome};
use broker::sites;
use broker::testing::TestDatabase;
use uuid::Uuid;

const SITE_FILE: &str = r#"
[[site]]
name = "demo-bank"
display_name = "Demo Bank"
start_url = "https://www.demo-bank.example/login"
allowed_hosts = ["www.demo-bank.example", "*.static.demo-bank.example"]
allowed_private_ranges = ["10.20.0.0/16"]
allowed_ports = [443, 8443]
recording_retention_days = 365
max_sessions = 3

[site.limits]
memory_mib = 1024
cpus = 0.5
pids = 256
shm_mib = 512

[[site]]
name = "other-bank"
display_name = "Other Bank"
start_url = "https://other-bank.example/"
allowed_hosts = ["other-bank.example"]
recording_retention_days = 90
enabled = false
"#;

async fn import(
    database: &TestDatabase,
    text: &str,
) -> Result<sites::ImportReport, sites::ImportError> {
    let path = database
        .dir
        .path()
        .join(format!("sites-{}.toml", Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    sites::import_file(&database.db, &path).await
}

both_backends!(site_import_round_trips, site_import_round_trips_body);
async fn site_import_round_trips_body(database: TestDatabase) {
    let report = import(&database, SITE_FILE).await.expect("import");

    assert_eq!(report.created, ["demo-bank", "other-bank"]);
    assert_eq!(report.with_private_ranges, ["demo-bank"]);
    let site = sites::get(&database.db, "demo-bank")
        .await
        .unwrap()
        .expect("stored site");
    assert_eq!(site.display_name, "Demo Bank");
    assert_eq!(
        site.allowed_hosts,
        ["www.demo-bank.example", "*.static.demo-bank.example"]
    );
    assert_eq!(site.allowed_ports, [443, 8443]);
    assert_eq!(
        site.allowed_private_ranges,
        ["10.20.0.0/16".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(site.limits.memory_bytes, 1024 << 20);
    assert_eq!(site.limits.nano_cpus, 500_000_000);
    assert_eq!(site.limits.pids, 256);
    assert_eq!(site.max_sessions, Some(3));
    assert_eq!(site.recording_retention_days, 365);
    assert!(site.enabled);
    let other = sites::get(&database.db, "other-bank")
        .await
        .unwrap()
        .expect("stored site");
    assert!(!other.enabled);
    assert_eq!(other.allowed_ports, [443]);
    assert_eq!(other.max_sessions, None);

    let again = import(&database, SITE_FILE).await.expect("second import");
    assert_eq!(again.updated, ["demo-bank", "other-bank"]);
    assert!(again.created.is_empty());
    assert_eq!(sites::list(&database.db).await.unwrap().len(), 2);
}

both_backends!(invalid_site_file_stores_nothing, invalid_site_file_body);
async fn invalid_site_file_body(database: TestDatabase) {
    let text = SITE_FILE.replace("https://other-bank.example/", "http://other-bank.example/");

    let error = import(&database, &text)
        .await
        .expect_err("an http start URL is rejected");

    match &error {
        sites::ImportError::Invalid { problems, .. } => {
            let fields: Vec<&str> = problems
                .iter()
                .map(|problem| problem.field.as_str())
                .collect();
            assert_eq!(fields, ["site[1].start_url"]);
        }
        other => panic!("expected Invalid, got {other}"),
    }
    assert!(error.to_string().contains("site[1].start_url"), "{error}");
    assert!(
        sites::list(&database.db).await.unwrap().is_empty(),
        "a rejected file stores no site"
    );
}

both_backends!(unknown_site_key_is_rejected, unknown_site_key_body);
async fn unknown_site_key_body(database: TestDatabase) {
    let text = SITE_FILE.replace("enabled = false", "enabled = false\nprivileged = true");

    let error = import(&database, &text).await.expect_err("unknown key");

    let sites::ImportError::Invalid { problems, .. } = &error else {
        panic!("expected Invalid, got {error}");
    };
    assert_eq!(problems.len(), 1, "{error}");
    assert_eq!(problems[0].field, "site[1].privileged");
    assert!(problems[0].message.contains("unknown key"), "{error}");
    assert!(
        sites::list(&database.db).await.unwrap().is_empty(),
        "a rejected file stores no site"
    );
}

both_backends!(grants_are_per_person_and_site, grants_body);
async fn grants_body(database: TestDatabase) {
    import(&database, SITE_FILE).await.unwrap();

    sites::grant(&database.db, "alice", "demo-bank", "user:admin", 1)
        .await
        .unwrap();
    sites::grant(&database.db, "alice", "demo-bank", "user:admin", 2)
        .await
        .expect("granting twice is harmless");

    assert!(
        sites::is_granted(&database.db, "alice", "demo-bank")
            .await
            .unwrap()
    );
    assert!(
        !sites::is_granted(&database.db, "alice", "other-bank")
            .await
            .unwrap()
    );
    assert!(
        !sites::is_granted(&database.db, "bob", "demo-bank")
            .await
            .unwrap()
    );
    assert_eq!(
        sites::grants_for(&database.db, "alice").await.unwrap(),
        ["demo-bank"]
    );
    assert!(
        sites::grant(&database.db, "alice", "no-such-bank", "user:admin", 3)
            .await
            .is_err(),
        "a grant needs an existing site"
    );
    assert!(
        sites::revoke(&database.db, "alice", "demo-bank")
            .await
            .unwrap()
    );
    assert!(
        !sites::is_granted(&database.db, "alice", "demo-bank")
            .await
            .unwrap()
    );
}

fn reservation<'a>(user_id: &'a str, site: &'a str, instance_id: &'a str) -> Reservation<'a> {
    Reservation {
        session_id: Uuid::new_v4(),
        user_id,
        site,
        instance_id,
        client_addr: Some("192.0.2.1".to_owned()),
        now_ms: 1_000,
        default_quota: 2,
        site_limit: None,
        host_limit: 100,
    }
}

/// Runs `count` reservations at once, each on its own task, and returns the outcomes.
async fn reserve_concurrently(
    db: &broker::db::Database,
    count: usize,
    make: impl Fn(usize) -> (String, String),
) -> Vec<ReserveOutcome> {
    let barrier = Arc::new(tokio::sync::Barrier::new(count));
    let mut tasks = Vec::new();
    for index in 0..count {
        let db = db.clone();
        let barrier = barrier.clone();
        let (user, site) = make(index);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store::reserve(&db, &reservation(&user, &site, "broker-a"))
                .await
                .expect("reservation runs")
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

both_backends!(quota_holds_under_concurrent_reservations, quota_race_body);
async fn quota_race_body(database: TestDatabase) {
    for round in 0..5 {
        let user = format!("alice-{round}");
        let outcomes =
            reserve_concurrently(&database.db, 10, |_| (user.clone(), "demo-bank".to_owned()))
                .await;

        let reserved = outcomes
            .iter()
            .filter(|outcome| **outcome == ReserveOutcome::Reserved)
            .count();
        let refused = outcomes
            .iter()
            .filter(|outcome| **outcome == ReserveOutcome::QuotaReached { limit: 2 })
            .count();
        assert_eq!(reserved, 2, "round {round}: {outcomes:?}");
        assert_eq!(refused, 8, "round {round}: {outcomes:?}");
        assert_eq!(
            store::count_live_for_user(&database.db, &user)
                .await
                .unwrap(),
            2
        );
    }
}

both_backends!(site_and_host_limits_hold_across_people, limits_body);
async fn limits_body(database: TestDatabase) {
    // Ten people, one session each, on a site limited to three.
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let mut tasks = Vec::new();
    for index in 0..10 {
        let db = database.db.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("person-{index}");
            let mut request = reservation(&user, "limited-bank", "broker-a");
            request.site_limit = Some(3);
            barrier.wait().await;
            store::reserve(&db, &request).await.unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|outcome| **outcome == ReserveOutcome::Reserved)
            .count(),
        3,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|outcome| **outcome == ReserveOutcome::SiteLimitReached { limit: 3 })
            .count(),
        7
    );

    // The host limit counts this instance's sessions only.
    let mut host = reservation("host-person", "other-bank", "broker-a");
    host.host_limit = 3;
    assert_eq!(
        store::reserve(&database.db, &host).await.unwrap(),
        ReserveOutcome::HostCapacityReached { limit: 3 }
    );
    let mut other_instance = reservation("host-person", "other-bank", "broker-b");
    other_instance.host_limit = 3;
    assert_eq!(
        store::reserve(&database.db, &other_instance).await.unwrap(),
        ReserveOutcome::Reserved
    );
}

both_backends!(ending_frees_the_slot, ending_frees_body);
async fn ending_frees_body(database: TestDatabase) {
    let db = &database.db;
    let first = reservation("carol", "demo-bank", "broker-a");
    let second = reservation("carol", "demo-bank", "broker-a");
    assert_eq!(
        store::reserve(db, &first).await.unwrap(),
        ReserveOutcome::Reserved
    );
    assert_eq!(
        store::reserve(db, &second).await.unwrap(),
        ReserveOutcome::Reserved
    );
    assert_eq!(
        store::reserve(db, &reservation("carol", "demo-bank", "broker-a"))
            .await
            .unwrap(),
        ReserveOutcome::QuotaReached { limit: 2 }
    );

    let began = store::begin_ending(db, first.session_id, "ended_by_person", None, "user:carol")
        .await
        .unwrap();
    assert_eq!(
        began,
        BeginEnding::Began {
            from: store::SessionState::Reserved
        }
    );
    assert_eq!(
        store::count_live_for_user(db, "carol").await.unwrap(),
        2,
        "an ending session still holds its slot"
    );
    let again = store::begin_ending(db, first.session_id, "idle_timeout", None, "system:reaper")
        .await
        .unwrap();
    assert_eq!(again, BeginEnding::AlreadyEnding, "the first reason wins");
    assert!(
        store::finish_ending(db, first.session_id, 2_000)
            .await
            .unwrap()
    );
    assert!(
        !store::finish_ending(db, first.session_id, 2_001)
            .await
            .unwrap(),
        "a session ends once"
    );

    let record = store::get(db, first.session_id).await.unwrap().unwrap();
    assert_eq!(record.state, store::SessionState::Ended);
    assert_eq!(record.end_reason.as_deref(), Some("ended_by_person"));
    assert_eq!(record.ended_by.as_deref(), Some("user:carol"));
    assert_eq!(record.ended_at_ms, Some(2_000));
    assert_eq!(store::count_live_for_user(db, "carol").await.unwrap(), 1);
    assert_eq!(
        store::reserve(db, &reservation("carol", "demo-bank", "broker-a"))
            .await
            .unwrap(),
        ReserveOutcome::Reserved
    );
}

both_backends!(per_person_quota_overrides_default, quota_override_body);
async fn quota_override_body(database: TestDatabase) {
    let db = &database.db;
    assert_eq!(store::get_quota(db, "dave").await.unwrap(), None);

    store::set_quota(db, "dave", 1, "user:admin", 5)
        .await
        .unwrap();
    assert_eq!(store::get_quota(db, "dave").await.unwrap(), Some(1));
    assert_eq!(
        store::reserve(db, &reservation("dave", "demo-bank", "broker-a"))
            .await
            .unwrap(),
        ReserveOutcome::Reserved
    );
    assert_eq!(
        store::reserve(db, &reservation("dave", "demo-bank", "broker-a"))
            .await
            .unwrap(),
        ReserveOutcome::QuotaReached { limit: 1 }
    );

    store::set_quota(db, "dave", 0, "user:admin", 6)
        .await
        .unwrap();
    assert_eq!(store::get_quota(db, "dave").await.unwrap(), Some(0));
}

both_backends!(idle_input_and_warning_are_stored, idle_storage_body);
async fn idle_storage_body(database: TestDatabase) {
    let db = &database.db;
    let request = reservation("erin", "demo-bank", "broker-a");
    store::reserve(db, &request).await.unwrap();
    let id = request.session_id;

    assert!(
        !store::record_input(db, id, 5_000).await.unwrap(),
        "input to a session that is not running is ignored"
    );
    assert!(store::mark_starting(db, id).await.unwrap());
    let placement = store::Placement {
        container_id: "c".into(),
        container_name: "strongroom-w-x".into(),
        network_name: "strongroom-s-x".into(),
        subnet: "172.28.0.0/28".into(),
        gateway: "172.28.0.1".into(),
        workspace_address: "172.28.0.2".into(),
    };
    assert!(
        store::mark_running(db, id, &placement, 10_000)
            .await
            .unwrap()
    );
    assert!(
        !store::mark_running(db, id, &placement, 10_001)
            .await
            .unwrap(),
        "only a starting session becomes running"
    );
    assert!(store::mark_idle_warned(db, id, 11_000).await.unwrap());
    assert!(
        !store::mark_idle_warned(db, id, 11_500).await.unwrap(),
        "the warning goes out once"
    );
    assert!(store::record_input(db, id, 12_000).await.unwrap());

    let record = store::get(db, id).await.unwrap().unwrap();
    assert_eq!(record.state, store::SessionState::Running);
    assert_eq!(record.started_at_ms, Some(10_000));
    assert_eq!(record.last_input_at_ms, 12_000);
    assert_eq!(record.idle_warned_at_ms, None, "input clears the warning");
    assert_eq!(record.subnet.as_deref(), Some("172.28.0.0/28"));
    assert_eq!(store::list_running(db, "broker-a").await.unwrap().len(), 1);
    assert!(
        store::list_running(db, "broker-b")
            .await
            .unwrap()
            .is_empty()
    );
}

both_backends!(audited_import_records_each_site, audited_import_body);
async fn audited_import_body(database: TestDatabase) {
    let audit =
        broker::audit::AuditLog::new(database.db.clone(), Arc::new(broker::clock::SystemClock));
    let path = database.dir.path().join("sites.toml");
    std::fs::write(&path, SITE_FILE).unwrap();

    sites::import_file_audited(
        &database.db,
        &audit,
        broker::audit::Actor::Person("root".to_owned()),
        &path,
        &sites::ImportOptions::default(),
    )
    .await
    .unwrap();

    let events = audit.list(0, 100).await.unwrap();
    let changed: Vec<_> = events
        .iter()
        .filter(|event| event.action == "admin.site.changed")
        .collect();
    assert_eq!(changed.len(), 2);
    assert_eq!(changed[0].target.as_deref(), Some("site:demo-bank"));
    assert!(
        changed[0].details.contains("10.20.0.0/16"),
        "{}",
        changed[0].details
    );
    assert_eq!(changed[0].actor, "user:root");
    assert!(
        changed[1].details.contains("\"allowed_private_ranges\":[]"),
        "{}",
        changed[1].details
    );
}
