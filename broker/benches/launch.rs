//! Launch latency through the broker against `docker run` of the same image, measured
//! in one run on the local Docker engine.
//!
//! Both paths use the busybox image of the session tests, so the figure is the cost of
//! the broker's own steps: quota reservation, recorder pre-flight, subnet allocation,
//! the session network, the hardened container spec and the egress registration. The
//! baseline creates and starts a container on Docker's default bridge network. Neither
//! path waits for an agent, because the busybox image has none.
//!
//! Run as root: `cargo bench -p broker --bench launch`.

#[path = "../tests/sessions_support/mod.rs"]
mod sessions_support;

use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use sessions_support::{Harness, Options, SITE, docker, person, test_image};

const ROUNDS: usize = 15;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Creates and starts a container of `image` on the default network, as `docker run -d`
/// does, removes it, and returns the time until the engine reported it started.
async fn docker_run(image: &str) -> Duration {
    let docker = docker();
    let name = format!("strongroom-bench-{}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(image.to_owned()),
                ..Default::default()
            },
        )
        .await
        .expect("create the baseline container");
    let start = docker.start_container(&name, None).await;
    let took = started.elapsed();
    let removed = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    start.expect("start the baseline container");
    removed.expect("remove the baseline container");
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let image = test_image().await;
    let harness = Harness::new(Options::default()).await;
    harness.grant("alice").await;
    let alice = person("alice");

    // One of each first, so that neither path pays for a cold cache.
    docker_run(&image).await;
    let warm = harness.service.launch(&alice, SITE, None).await.unwrap();
    harness
        .service
        .end_by(&alice, warm.session.id)
        .await
        .unwrap();

    let mut baseline = Vec::new();
    let mut broker = Vec::new();
    for _ in 0..ROUNDS {
        baseline.push(docker_run(&image).await);

        let started = Instant::now();
        let launched = harness
            .service
            .launch(&alice, SITE, None)
            .await
            .expect("launch through the broker");
        broker.push(started.elapsed());
        harness
            .service
            .end_by(&alice, launched.session.id)
            .await
            .unwrap();
    }

    let baseline = median(baseline);
    let broker = median(broker);
    println!("| path | median of {ROUNDS} |");
    println!("| --- | --- |");
    println!(
        "| `docker run -d` (create + start, default network) | {:.0} ms |",
        baseline.as_secs_f64() * 1000.0
    );
    println!(
        "| broker launch to running | {:.0} ms |",
        broker.as_secs_f64() * 1000.0
    );
    println!(
        "| ratio (broker / docker run) | {:.2} |",
        broker.as_secs_f64() / baseline.as_secs_f64()
    );
    harness.finish().await;
}
