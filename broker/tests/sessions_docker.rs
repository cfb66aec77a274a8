//! Session lifecycle against the real launcher and Docker engine (Debian docker.io
//! 20.10, API 1.41). SQLite throughout, plus the launch race on PostgreSQL.

mod sessions_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bollard::query_parameters::KillContainerOptions;
use broker::audit::{Action, StoredEvent};
use broker::sessions::{EndOutcome, EndReason, LaunchError, SessionNotice, SessionState};
use broker::testing::TestBackend;
use chrono::Duration;
use sessions_support::{
    Harness, Options, SITE, admin, count_instance_objects, docker, person, running_containers,
    wait_until,
};
use uuid::Uuid;

async fn events(harness: &Harness, action: Action, session_id: Uuid) -> Vec<StoredEvent> {
    let all = harness.audit.list(0, 10_000).await.unwrap();
    let id = session_id.to_string();
    all.into_iter()
        .filter(|event| {
            event.action == action.as_str() && event.session_id.as_deref() == Some(id.as_str())
        })
        .collect()
}

async fn ended_reason(harness: &Harness, session_id: Uuid) -> (SessionState, Option<String>) {
    let record = harness
        .service
        .get(session_id)
        .await
        .unwrap()
        .expect("session exists");
    (record.state, record.end_reason)
}

/// Ten simultaneous launches by one person with quota 2, `rounds` times over.
async fn launch_race(backend: TestBackend, rounds: usize) {
    let harness = Harness::new(Options {
        backend,
        default_quota: 2,
        host_max_sessions: 8,
        ..Options::default()
    })
    .await;
    harness.grant("alice").await;
    let alice = person("alice");

    for round in 0..rounds {
        let created_before = harness
            .launcher()
            .counts
            .workspaces_created
            .load(Ordering::SeqCst);
        let removed_before = harness
            .launcher()
            .counts
            .workspaces_removed
            .load(Ordering::SeqCst);

        let barrier = Arc::new(tokio::sync::Barrier::new(10));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let service = harness.service.clone();
            let alice = alice.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                service
                    .launch(&alice, SITE, Some("192.0.2.10".parse().unwrap()))
                    .await
            }));
        }
        let mut launched = Vec::new();
        let mut refused = 0;
        for task in tasks {
            let result = tokio::time::timeout(sessions_support::WAIT, task)
                .await
                .expect("no launch hangs")
                .unwrap();
            match result {
                Ok(session) => launched.push(session),
                Err(LaunchError::QuotaReached { limit: 2 }) => refused += 1,
                Err(other) => panic!("round {round}: unexpected launch error: {other}"),
            }
        }

        assert_eq!(launched.len(), 2, "round {round}");
        assert_eq!(refused, 8, "round {round}");
        assert_eq!(harness.live_count("alice").await, 2, "round {round}");
        assert_eq!(
            running_containers(&harness.instance_id).await.len(),
            2,
            "round {round}"
        );
        let counts = &harness.launcher().counts;
        assert_eq!(
            counts.workspaces_created.load(Ordering::SeqCst) - created_before,
            2,
            "round {round}: only granted launches reach Docker"
        );
        assert_eq!(
            counts.workspaces_removed.load(Ordering::SeqCst) - removed_before,
            0,
            "round {round}: no container is created and dropped"
        );
        for session in &launched {
            assert_eq!(session.session.state, SessionState::Running);
            assert!(
                harness.egress.get(session.session.id).is_some(),
                "the egress proxy knows the session"
            );
            assert_eq!(session.agent_secret.sha256_hex().len(), 64);
        }

        for session in launched {
            let outcome = harness
                .service
                .end_by(&alice, session.session.id)
                .await
                .unwrap();
            assert_eq!(outcome, EndOutcome::Ended);
        }
        assert_eq!(harness.live_count("alice").await, 0, "round {round}");
        assert_eq!(
            count_instance_objects(&harness.instance_id).await,
            (0, 0),
            "round {round}: ending removes containers and networks"
        );
    }

    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_holds_under_simultaneous_launches() {
    launch_race(TestBackend::Sqlite, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_holds_under_simultaneous_launches_on_postgres() {
    launch_race(TestBackend::Postgres, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ending_path_frees_the_slot() {
    let harness = Harness::new(Options {
        default_quota: 1,
        ..Options::default()
    })
    .await;
    harness.grant("alice").await;
    let alice = &person("alice");
    let root = &admin("root");
    let service = &harness.service;

    type Ender<'a> = Box<dyn Fn(Uuid) -> futures::future::BoxFuture<'a, ()> + 'a>;
    let paths: Vec<(&str, Ender)> = vec![
        (
            "logout",
            Box::new(|_id| {
                Box::pin(async {
                    service
                        .end_all_for("alice", EndReason::Logout)
                        .await
                        .map(drop)
                        .unwrap()
                })
            }),
        ),
        (
            "ended_by_person",
            Box::new(|id| {
                Box::pin(async move { service.end_by(alice, id).await.map(drop).unwrap() })
            }),
        ),
        (
            "terminated_by_admin",
            Box::new(|id| {
                Box::pin(async move { service.end_by(root, id).await.map(drop).unwrap() })
            }),
        ),
        (
            "recorder_failed",
            Box::new(|id| {
                Box::pin(async move {
                    service
                        .end_for_recorder_failure(id, "disk full")
                        .await
                        .map(drop)
                        .unwrap()
                })
            }),
        ),
        (
            "idle_timeout",
            Box::new(|_id| {
                Box::pin(async {
                    harness.clock.advance(Duration::minutes(16));
                    service.reap_once().await.unwrap();
                })
            }),
        ),
        (
            "workspace_exited",
            Box::new(|_id| {
                Box::pin(async {
                    for container in running_containers(&harness.instance_id).await {
                        docker()
                            .kill_container(&container, None::<KillContainerOptions>)
                            .await
                            .unwrap();
                    }
                    wait_until("the workspace to stop", || async {
                        running_containers(&harness.instance_id).await.is_empty()
                    })
                    .await;
                    service.reconcile_once().await.unwrap();
                })
            }),
        ),
    ];

    for (expected, end) in paths {
        let launched = service
            .launch(alice, SITE, None)
            .await
            .unwrap_or_else(|error| panic!("launch before {expected}: {error}"));
        let id = launched.session.id;
        assert!(
            matches!(
                service.launch(alice, SITE, None).await,
                Err(LaunchError::QuotaReached { limit: 1 })
            ),
            "{expected}: quota 1 is full"
        );

        end(id).await;

        assert_eq!(
            ended_reason(&harness, id).await,
            (SessionState::Ended, Some(expected.to_owned())),
            "{expected}"
        );
        assert_eq!(
            harness.live_count("alice").await,
            0,
            "{expected}: the slot is free"
        );
        assert!(
            harness.egress.get(id).is_none(),
            "{expected}: unregistered from the egress proxy"
        );
        assert!(
            service.agent_secret(id).is_none(),
            "{expected}: the agent secret is dropped"
        );
        assert_eq!(
            count_instance_objects(&harness.instance_id).await,
            (0, 0),
            "{expected}: container and network removed"
        );
        let ended = events(&harness, Action::SessionEnded, id).await;
        assert_eq!(ended.len(), 1, "{expected}: one session.ended event");
        assert!(
            ended[0]
                .details
                .contains(&format!("\"reason\":\"{expected}\"")),
            "{expected}: {}",
            ended[0].details
        );
    }

    let mallory = person("mallory");
    let launched = service.launch(alice, SITE, None).await.unwrap();
    assert!(matches!(
        service.end_by(&mallory, launched.session.id).await,
        Err(broker::sessions::EndError::NotAllowed)
    ));
    assert_eq!(
        harness.live_count("alice").await,
        1,
        "a refused end changes nothing"
    );

    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timer_counts_only_person_input() {
    let harness = Harness::new(Options::default()).await;
    harness.grant("alice").await;
    let service = &harness.service;
    let mut notices = service.subscribe();
    let launched = service.launch(&person("alice"), SITE, None).await.unwrap();
    let id = launched.session.id;

    // Ten quiet minutes, then real input: the timer restarts.
    harness.clock.advance(Duration::minutes(10));
    assert!(service.reap_once().await.unwrap().ended.is_empty());
    assert!(service.record_input(id).await.unwrap());

    // Fourteen minutes after the input, with reaper, reconciler and reads in between:
    // none of them count as input, and the warning goes out once.
    harness.clock.advance(Duration::minutes(13));
    let report = service.reap_once().await.unwrap();
    assert_eq!(report.idle_warned, [id]);
    assert!(report.ended.is_empty());
    let expected_end = harness.clock_ms() + Duration::minutes(2).num_milliseconds();
    assert_eq!(
        notices.recv().await.unwrap(),
        SessionNotice::IdleWarning {
            session_id: id,
            ends_at_ms: expected_end
        }
    );
    harness.clock.advance(Duration::minutes(1));
    service.reconcile_once().await.unwrap();
    service.get(id).await.unwrap();
    service.list_for(&person("alice")).await.unwrap();
    let report = service.reap_once().await.unwrap();
    assert!(report.idle_warned.is_empty(), "the warning is sent once");
    assert_eq!(
        events(&harness, Action::SessionIdleWarned, id).await.len(),
        1,
        "the warning is audited once"
    );
    assert!(
        report.ended.is_empty(),
        "fourteen minutes is below the timeout"
    );

    harness.clock.advance(Duration::minutes(1));
    let report = service.reap_once().await.unwrap();
    assert_eq!(report.ended, [(id, "idle_timeout")]);
    assert_eq!(
        ended_reason(&harness, id).await,
        (SessionState::Ended, Some("idle_timeout".to_owned()))
    );
    assert!(
        matches!(notices.recv().await.unwrap(), SessionNotice::Ended { session_id, ref reason, .. } if session_id == id && reason == "idle_timeout")
    );
    assert!(
        !service.record_input(id).await.unwrap(),
        "input after the end is ignored"
    );
    assert_eq!(count_instance_objects(&harness.instance_id).await, (0, 0));

    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_ends_busy_session() {
    let harness = Harness::new(Options::default()).await;
    harness.grant("alice").await;
    let service = &harness.service;
    let id = service
        .launch(&person("alice"), SITE, None)
        .await
        .unwrap()
        .session
        .id;

    // Input every ten minutes keeps it from idling, but not past four hours.
    for _ in 0..23 {
        harness.clock.advance(Duration::minutes(10));
        assert!(service.record_input(id).await.unwrap());
        assert!(service.reap_once().await.unwrap().ended.is_empty());
    }
    harness.clock.advance(Duration::minutes(10));
    let report = service.reap_once().await.unwrap();

    assert_eq!(report.ended, [(id, "max_lifetime")]);
    assert_eq!(harness.live_count("alice").await, 0);
    assert_eq!(count_instance_objects(&harness.instance_id).await, (0, 0));
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workspace_ends_session() {
    let harness = Harness::new(Options::default()).await;
    harness.grant("alice").await;
    let service = &harness.service;
    let id = service
        .launch(&person("alice"), SITE, None)
        .await
        .unwrap()
        .session
        .id;
    let container = harness
        .service
        .get(id)
        .await
        .unwrap()
        .unwrap()
        .container_name
        .expect("container name stored");

    docker()
        .kill_container(&container, None::<KillContainerOptions>)
        .await
        .unwrap();
    wait_until("the workspace to stop", || async {
        running_containers(&harness.instance_id).await.is_empty()
    })
    .await;
    let ended = service.reconcile_once().await.unwrap();

    assert_eq!(ended, [id]);
    let record = service.get(id).await.unwrap().unwrap();
    assert_eq!(record.state, SessionState::Ended);
    assert_eq!(record.end_reason.as_deref(), Some("workspace_exited"));
    assert!(
        record
            .end_detail
            .as_deref()
            .unwrap_or_default()
            .starts_with("workspace exited"),
        "{:?}",
        record.end_detail
    );
    assert_eq!(record.ended_by.as_deref(), Some("system:reconciler"));
    assert_eq!(harness.live_count("alice").await, 0);
    assert_eq!(count_instance_objects(&harness.instance_id).await, (0, 0));
    harness.finish().await;
}

/// A read-only tmpfs mounted for one test and unmounted on drop.
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    fn new(path: std::path::PathBuf) -> ReadOnlyMount {
        std::fs::create_dir_all(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a read-only tmpfs needs root");
        ReadOnlyMount(path)
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let status = std::process::Command::new("umount").arg(&self.0).status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("cleanup: unmounting {} failed", self.0.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_recorder_refuses_launch() {
    unwritable_recorder_refuses(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_recorder_refuses_launch_on_postgres() {
    unwritable_recorder_refuses(TestBackend::Postgres).await;
}

async fn unwritable_recorder_refuses(backend: TestBackend) {
    let scratch = tempfile::tempdir().unwrap();
    let mount = ReadOnlyMount::new(scratch.path().join("recordings"));
    let harness = Harness::new(Options {
        backend,
        recordings_dir: Some(mount.0.clone()),
        ..Options::default()
    })
    .await;
    harness.grant("alice").await;

    let error = harness
        .service
        .launch(&person("alice"), SITE, None)
        .await
        .expect_err("launch refused");

    let LaunchError::RecorderUnavailable { reason } = &error else {
        panic!("expected RecorderUnavailable, got {error}")
    };
    assert!(
        reason.contains("Read-only") || reason.contains("read-only"),
        "{reason}"
    );
    // The person reads a plain sentence; the paths and the file system's error go
    // only to the log and the audit trail.
    let for_person = error.person_message();
    assert!(
        for_person.contains("recordings cannot be written"),
        "{for_person}"
    );
    let recordings_dir = mount.0.to_str().unwrap();
    assert!(!for_person.contains(recordings_dir), "{for_person}");
    assert!(!for_person.contains(reason.as_str()), "{for_person}");
    assert_eq!(
        harness
            .launcher()
            .counts
            .workspaces_created
            .load(Ordering::SeqCst),
        0,
        "no container was created"
    );
    assert_eq!(
        harness
            .launcher()
            .counts
            .networks_created
            .load(Ordering::SeqCst),
        0,
        "no network was created"
    );
    assert_eq!(count_instance_objects(&harness.instance_id).await, (0, 0));
    assert_eq!(harness.live_count("alice").await, 0, "the slot is free");
    let all = harness.audit.list(0, 1000).await.unwrap();
    assert!(
        all.iter()
            .any(|event| event.action == Action::RecordingFailed.as_str()
                && event.details.contains("preflight"))
    );
    let ended = all
        .iter()
        .find(|event| event.action == Action::SessionEnded.as_str())
        .expect("session.ended event");
    assert!(
        ended.details.contains("recorder_unavailable"),
        "{}",
        ended.details
    );
    let failed = all
        .iter()
        .find(|event| event.action == Action::SessionLaunchFailed.as_str())
        .expect("session.launch.failed event");
    assert!(
        failed.details.contains(recordings_dir),
        "{}",
        failed.details
    );

    harness.finish().await;
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_ends_every_session_of_previous_run() {
    let harness = Harness::new(Options {
        default_quota: 3,
        ..Options::default()
    })
    .await;
    harness.grant("alice").await;
    let alice = person("alice");
    let lost = harness
        .service
        .launch(&alice, SITE, None)
        .await
        .unwrap()
        .session;
    let survivor = harness
        .service
        .launch(&alice, SITE, None)
        .await
        .unwrap()
        .session;

    // While the broker is down, one workspace disappears with its network, and one
    // launch never finished.
    docker()
        .remove_container(
            lost.container_name.as_deref().unwrap(),
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            }),
        )
        .await
        .unwrap();
    docker()
        .remove_network(lost.network_name.as_deref().unwrap())
        .await
        .unwrap();
    let interrupted = Uuid::new_v4();
    let reservation = broker::sessions::store::Reservation {
        session_id: interrupted,
        user_id: "alice",
        site: SITE,
        instance_id: &harness.instance_id,
        client_addr: None,
        now_ms: harness.clock_ms(),
        default_quota: 3,
        site_limit: None,
        host_limit: 8,
    };
    broker::sessions::store::reserve(&harness.database.db, &reservation)
        .await
        .unwrap();
    assert_eq!(harness.live_count("alice").await, 3);

    let (restarted, egress) = harness.restarted_service();
    let report = restarted.recover().await.unwrap();

    assert!(
        report.ended.contains(&(survivor.id, "broker_restarted")),
        "{report:?}"
    );
    assert!(
        report.ended.contains(&(lost.id, "lost_after_restart")),
        "{report:?}"
    );
    assert!(
        report
            .ended
            .contains(&(interrupted, "interrupted_by_restart")),
        "{report:?}"
    );
    assert_eq!(
        ended_reason(&harness, lost.id).await,
        (SessionState::Ended, Some("lost_after_restart".to_owned()))
    );
    assert_eq!(
        ended_reason(&harness, interrupted).await,
        (
            SessionState::Ended,
            Some("interrupted_by_restart".to_owned())
        )
    );
    assert_eq!(
        ended_reason(&harness, survivor.id).await,
        (SessionState::Ended, Some("broker_restarted".to_owned()))
    );
    assert_eq!(
        harness.live_count("alice").await,
        0,
        "no session holds a slot"
    );
    assert!(
        egress.get(survivor.id).is_none(),
        "the egress proxy does not know the ended session"
    );
    let ended = events(&harness, Action::SessionEnded, lost.id).await;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].actor, "system:recovery");
    assert_eq!(
        count_instance_objects(&harness.instance_id).await,
        (0, 0),
        "the workspace that outlived the broker is removed with its network"
    );
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_before_any_docker_call() {
    let harness = Harness::new(Options::default()).await;
    let alice = person("alice");

    let not_granted = harness
        .service
        .launch(&alice, SITE, None)
        .await
        .expect_err("no grant");
    assert!(
        matches!(not_granted, LaunchError::NotGranted { .. }),
        "{not_granted}"
    );
    let missing = harness
        .service
        .launch(&alice, "no-such-bank", None)
        .await
        .expect_err("no site");
    assert!(
        matches!(missing, LaunchError::SiteNotFound { .. }),
        "{missing}"
    );
    let auditor = broker::auth::Principal {
        roles: [broker::auth::Role::Auditor].into_iter().collect(),
        ..person("audrey")
    };
    let refused = harness
        .service
        .launch(&auditor, SITE, None)
        .await
        .expect_err("auditors do not launch");
    assert!(matches!(refused, LaunchError::NotAllowed), "{refused}");

    assert_eq!(
        harness
            .launcher()
            .counts
            .networks_created
            .load(Ordering::SeqCst),
        0
    );
    let all = harness.audit.list(0, 1000).await.unwrap();
    assert_eq!(
        all.iter()
            .filter(|event| event.action == Action::SessionLaunchFailed.as_str()
                && event.outcome == "denied")
            .count(),
        3
    );
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_end_dead_sessions_and_stop() {
    let mut harness = Harness::new(Options::default()).await;
    harness.config.reconcile_interval = std::time::Duration::from_millis(200);
    harness.config.reaper_interval = std::time::Duration::from_millis(200);
    let (service, _egress) = harness.restarted_service();
    harness.grant("alice").await;
    let tasks = broker::tasks::TaskRegistry::new();
    service.spawn_tasks(&tasks);
    let id = service
        .launch(&person("alice"), SITE, None)
        .await
        .unwrap()
        .session
        .id;

    let container = service
        .get(id)
        .await
        .unwrap()
        .unwrap()
        .container_name
        .unwrap();
    docker()
        .kill_container(&container, None::<KillContainerOptions>)
        .await
        .unwrap();
    wait_until("the reconciler to end the session", || async {
        service
            .get(id)
            .await
            .unwrap()
            .is_some_and(|record| record.state == SessionState::Ended)
    })
    .await;
    assert_eq!(
        ended_reason(&harness, id).await.1.as_deref(),
        Some("workspace_exited")
    );

    let stuck = tasks.shutdown(std::time::Duration::from_secs(10)).await;
    assert!(stuck.is_empty(), "tasks still running: {stuck:?}");
    assert!(matches!(
        service.launch(&person("alice"), SITE, None).await,
        Err(LaunchError::ShuttingDown)
    ));
    assert_eq!(count_instance_objects(&harness.instance_id).await, (0, 0));
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_launch_frees_the_slot() {
    let mut harness = Harness::new(Options {
        default_quota: 1,
        ..Options::default()
    })
    .await;
    let alice = person("alice");
    let mut huge = broker::sites::get(&harness.database.db, SITE)
        .await
        .unwrap()
        .unwrap()
        .definition;
    huge.name = "huge-bank".to_owned();
    huge.limits.memory_bytes = 64 << 30;
    broker::sites::upsert(&harness.database.db, &huge, 0)
        .await
        .unwrap();
    broker::sites::grant(
        &harness.database.db,
        "alice",
        "huge-bank",
        "user:test-admin",
        0,
    )
    .await
    .unwrap();
    harness.grant("alice").await;

    // The launcher rejects limits above its own maximum.
    let error = harness
        .service
        .launch(&alice, "huge-bank", None)
        .await
        .expect_err("limits above the launcher maximum");
    assert!(
        matches!(&error, LaunchError::WorkspaceFailed { reason } if reason.contains("memory_bytes")),
        "{error}"
    );
    assert_eq!(
        harness.live_count("alice").await,
        0,
        "the slot is free after a rejected launch"
    );

    // The launcher is down.
    harness.launcher.take().unwrap().stop().await;
    let error = harness
        .service
        .launch(&alice, SITE, None)
        .await
        .expect_err("launcher down");
    assert!(
        matches!(error, LaunchError::WorkspaceFailed { .. }),
        "{error}"
    );
    assert_eq!(
        harness.live_count("alice").await,
        0,
        "the slot is free after an unreachable launcher"
    );

    let all = harness.audit.list(0, 1000).await.unwrap();
    let failed: Vec<_> = all
        .iter()
        .filter(|event| event.action == Action::SessionEnded.as_str())
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .all(|event| event.details.contains("launch_failed"))
    );
    assert_eq!(count_instance_objects(&harness.instance_id).await, (0, 0));
    harness.finish().await;
}

/// Gives the demo site a login recipe with one shared credential that only one live
/// session may use at a time.
async fn make_credential_exclusive(harness: &Harness) {
    use broker::sites::{CredentialSourceKind, LoginRecipe, RecipeStep};

    let mut site = broker::sites::get(&harness.database.db, SITE)
        .await
        .unwrap()
        .unwrap()
        .definition;
    site.login.recipe = Some(LoginRecipe {
        steps: vec![RecipeStep::WaitFor {
            selector: "#user".to_owned(),
            timeout_secs: Some(5),
        }],
    });
    site.login.credential_source = CredentialSourceKind::Shared;
    site.login.exclusive_use = true;
    broker::sites::upsert(&harness.database.db, &site, 0)
        .await
        .unwrap();
}

async fn exclusive_credential_race(backend: TestBackend) {
    let harness = Harness::new(Options {
        backend,
        ..Options::default()
    })
    .await;
    harness.grant("alice").await;
    harness.grant("bob").await;
    make_credential_exclusive(&harness).await;
    let service = &harness.service;
    let counts = &harness.launcher().counts;
    let (alice, bob) = (person("alice"), person("bob"));

    let (first, second) = tokio::join!(
        service.launch(&alice, SITE, None),
        service.launch(&bob, SITE, None)
    );

    let (winner, winner_id, loser) = match (first, second) {
        (Ok(launched), Err(error)) => (alice.clone(), launched.session.id, (bob.clone(), error)),
        (Err(error), Ok(launched)) => (bob.clone(), launched.session.id, (alice.clone(), error)),
        (first, second) => panic!(
            "exactly one launch must win: {:?} / {:?}",
            first.map(|launched| launched.session.id),
            second.map(|launched| launched.session.id)
        ),
    };
    let (loser, error) = loser;
    assert!(
        matches!(&error, LaunchError::CredentialUnavailable { message } if message.contains("in use")),
        "{error}"
    );
    assert_eq!(counts.workspaces_created.load(Ordering::SeqCst), 1);
    assert_eq!(counts.networks_created.load(Ordering::SeqCst), 1);
    assert_eq!(count_instance_objects(&harness.instance_id).await, (1, 1));
    assert_eq!(
        harness.live_count(&loser.user_id).await,
        0,
        "the refused launch frees its slot"
    );

    // Ending the holder releases the credential; a launch that fails after its claim
    // releases it too.
    service.end_by(&winner, winner_id).await.unwrap();
    counts.unknown_image_once.store(true, Ordering::SeqCst);
    let error = service
        .launch(&loser, SITE, None)
        .await
        .expect_err("the workspace image is missing");
    assert!(
        matches!(error, LaunchError::WorkspaceFailed { .. }),
        "{error}"
    );
    assert_eq!(harness.live_count(&loser.user_id).await, 0);

    let launched = service
        .launch(&winner, SITE, None)
        .await
        .expect("the credential is free after the failed launch");
    assert_eq!(counts.workspaces_created.load(Ordering::SeqCst), 3);
    service.end_by(&winner, launched.session.id).await.unwrap();
    assert_eq!(count_instance_objects(&harness.instance_id).await, (0, 0));
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exclusive_credential_admits_one_launch() {
    exclusive_credential_race(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exclusive_credential_admits_one_launch_on_postgres() {
    exclusive_credential_race(TestBackend::Postgres).await;
}
