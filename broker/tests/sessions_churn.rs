//! Many launch and end cycles against the real launcher and Docker engine (Debian
//! docker.io 20.10), with failed launches, restarts and blocked network removals mixed
//! in: the instance's containers and networks must return to none after every cycle.

mod sessions_support;

use std::sync::atomic::Ordering;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use broker::sessions::{EndOutcome, LaunchError, SessionService, SessionState};
use broker::testing::TestBackend;
use launcher::labels;
use sessions_support::{
    Harness, Options, SITE, count_instance_objects, docker, person, test_image, wait_until,
};
use uuid::Uuid;

const CYCLES: usize = 40;

/// What one cycle does besides a plain launch and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cycle {
    Plain,
    /// Docker fails the container create after the session network exists.
    UnknownImage,
    /// The broker is replaced by a new one while the session runs.
    Restart,
    /// Another container sits on the session network when the session ends, so the
    /// first network removal fails and the launcher's sweeper must retry it.
    NetworkStillAttached,
}

fn cycle_kind(index: usize) -> Cycle {
    match index % 10 {
        3 => Cycle::UnknownImage,
        6 => Cycle::Restart,
        9 => Cycle::NetworkStillAttached,
        _ => Cycle::Plain,
    }
}

/// Starts a container on `network`, labelled with the test instance so that cleanup
/// finds it, and returns its id.
async fn attach_container(instance_id: &str, network: &str) -> String {
    let labels =
        std::collections::HashMap::from([(labels::INSTANCE.to_owned(), instance_id.to_owned())]);
    let body = ContainerCreateBody {
        image: Some(test_image().await),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(format!(
            "strongroom-test-attached-{}",
            Uuid::new_v4().simple()
        )),
        ..Default::default()
    };
    let created = docker()
        .create_container(Some(options), body)
        .await
        .expect("create the attached container");
    docker()
        .start_container(&created.id, None)
        .await
        .expect("start the attached container");
    created.id
}

async fn run_cycle(harness: &Harness, service: &mut SessionService, index: usize) {
    let alice = person("alice");
    let kind = cycle_kind(index);

    if kind == Cycle::UnknownImage {
        let counts = &harness.launcher().counts;
        let networks_before = counts.networks_created.load(Ordering::SeqCst);
        counts.unknown_image_once.store(true, Ordering::SeqCst);
        let error = service
            .launch(&alice, SITE, None)
            .await
            .expect_err("a launch with an unknown image fails");
        let switch_left_on = counts.unknown_image_once.swap(false, Ordering::SeqCst);
        assert!(
            !switch_left_on,
            "cycle {index}: the launch reached container create"
        );
        assert!(
            matches!(error, LaunchError::WorkspaceFailed { .. }),
            "cycle {index}: {error}"
        );
        assert_eq!(
            counts.networks_created.load(Ordering::SeqCst),
            networks_before + 1,
            "cycle {index}: the launch failed after its network was created"
        );
        return;
    }

    let launched = service
        .launch(&alice, SITE, None)
        .await
        .unwrap_or_else(|error| panic!("cycle {index} ({kind:?}): launch failed: {error}"));
    let session_id = launched.session.id;
    assert_eq!(launched.session.state, SessionState::Running);

    match kind {
        Cycle::Plain => {
            let outcome = service.end_by(&alice, session_id).await.unwrap();
            assert_eq!(outcome, EndOutcome::Ended, "cycle {index}");
        }
        Cycle::Restart => {
            let (restarted, _egress) = harness.restarted_service();
            let report = restarted.recover().await.unwrap();
            assert_eq!(
                report.ended,
                [(session_id, "broker_restarted")],
                "cycle {index}"
            );
            *service = restarted;
        }
        Cycle::NetworkStillAttached => {
            let network = launched
                .session
                .network_name
                .clone()
                .expect("network name stored");
            let attached = attach_container(&harness.instance_id, &network).await;
            let outcome = service.end_by(&alice, session_id).await.unwrap();
            assert_eq!(outcome, EndOutcome::Ended, "cycle {index}");
            assert_eq!(
                count_instance_objects(&harness.instance_id).await,
                (1, 1),
                "cycle {index}: the network stays while a container is attached"
            );
            docker()
                .remove_container(
                    &attached,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await
                .unwrap();
            wait_until("the sweeper to remove the session network", || async {
                count_instance_objects(&harness.instance_id).await == (0, 0)
            })
            .await;
        }
        Cycle::UnknownImage => unreachable!("handled above"),
    }
}

async fn churn(backend: TestBackend) {
    let harness = Harness::new(Options {
        backend,
        default_quota: 1,
        ..Options::default()
    })
    .await;
    harness.grant("alice").await;
    let baseline = count_instance_objects(&harness.instance_id).await;
    assert_eq!(baseline, (0, 0));
    let mut service = harness.service.clone();

    for index in 0..CYCLES {
        run_cycle(&harness, &mut service, index).await;

        assert_eq!(
            count_instance_objects(&harness.instance_id).await,
            baseline,
            "cycle {index} ({:?}) left containers or networks",
            cycle_kind(index)
        );
        assert_eq!(
            harness.live_count("alice").await,
            0,
            "cycle {index} ({:?}) left a slot taken",
            cycle_kind(index)
        );
    }

    // Launch 41 works, with a quota of one: no earlier cycle holds the slot.
    let alice = person("alice");
    let last = service
        .launch(&alice, SITE, None)
        .await
        .expect("the launch after the cycles works");
    service.end_by(&alice, last.session.id).await.unwrap();
    assert_eq!(count_instance_objects(&harness.instance_id).await, baseline);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_networks() {
    churn(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_networks_on_postgres() {
    churn(TestBackend::Postgres).await;
}
