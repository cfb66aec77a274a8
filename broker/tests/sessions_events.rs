//! Workspace exits reported from the Docker engine's event stream (Debian docker.io
//! 20.10) end their session without waiting for the periodic reconciler.

mod sessions_support;

use std::time::Duration;

use bollard::query_parameters::KillContainerOptions;
use broker::sessions::{SessionNotice, SessionState};
use sessions_support::{Harness, Options, SITE, WAIT, count_instance_objects, docker, person};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workspace_ends_session_from_events() {
    let mut harness = Harness::new(Options::default()).await;
    // The reconciler's first pass runs at start, before the launch; the next one would
    // come after an hour, so only the event stream can end the session in time.
    harness.config.reconcile_interval = Duration::from_secs(3600);
    harness.config.reaper_interval = Duration::from_secs(3600);
    let (service, _egress) = harness.restarted_service();
    harness.grant("alice").await;
    let tasks = broker::tasks::TaskRegistry::new();
    service.spawn_tasks(&tasks);
    tokio::time::timeout(WAIT, service.wait_recovered())
        .await
        .expect("recovery at start finishes");
    let mut notices = service.subscribe();

    let launched = service.launch(&person("alice"), SITE, None).await.unwrap();
    let session_id = launched.session.id;
    let container = launched.session.container_name.clone().unwrap();
    docker()
        .kill_container(&container, None::<KillContainerOptions>)
        .await
        .unwrap();

    // The ended notice is what makes the stream hub stop the stream and seal the
    // recording.
    let notice = tokio::time::timeout(WAIT, async {
        loop {
            match notices.recv().await.unwrap() {
                SessionNotice::Ended {
                    session_id: ended,
                    reason,
                    ..
                } if ended == session_id => return reason,
                _ => continue,
            }
        }
    })
    .await
    .expect("the session ends after its workspace was killed");
    assert_eq!(notice, "workspace_exited");

    let record = service.get(session_id).await.unwrap().unwrap();
    assert_eq!(record.state, SessionState::Ended);
    assert_eq!(record.ended_by.as_deref(), Some("system:docker-events"));
    assert_eq!(
        record.end_detail.as_deref(),
        Some("workspace exited with code 137")
    );
    assert_eq!(harness.live_count("alice").await, 0);
    assert_eq!(count_instance_objects(&harness.instance_id).await, (0, 0));

    let stuck = tasks.shutdown(Duration::from_secs(10)).await;
    assert!(stuck.is_empty(), "tasks still running: {stuck:?}");
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_session_ignores_its_exit_event() {
    let mut harness = Harness::new(Options::default()).await;
    harness.config.reconcile_interval = Duration::from_secs(3600);
    let (service, _egress) = harness.restarted_service();
    harness.grant("alice").await;
    let tasks = broker::tasks::TaskRegistry::new();
    service.spawn_tasks(&tasks);

    // The launcher stops the container while the person ends the session, which the
    // event stream also reports; the ending keeps the person's reason.
    let alice = person("alice");
    let session_id = service.launch(&alice, SITE, None).await.unwrap().session.id;
    service.end_by(&alice, session_id).await.unwrap();
    let exit = launcher::WorkspaceExit {
        session_id,
        reason: "workspace exited with code 137".to_owned(),
    };
    service.end_exited(exit).await;

    let record = service.get(session_id).await.unwrap().unwrap();
    assert_eq!(record.end_reason.as_deref(), Some("ended_by_person"));
    assert_eq!(record.ended_by.as_deref(), Some("user:alice"));

    let stuck = tasks.shutdown(Duration::from_secs(10)).await;
    assert!(stuck.is_empty(), "tasks still running: {stuck:?}");
    harness.finish().await;
}
