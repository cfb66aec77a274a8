//! Launch latency through the broker against `docker run` of the same image, measured
//! in one run on the local Docker engine.
//!
//! Both paths use the busybox image of the session tests, so the figure is the cost of
//! the broker's own steps: quota reservation, recorder pre-flight, subnet allocation,
//! the session network, the hardened container spec and the egress registration. The
//! baseline creates and starts a container on Docker's default bridge network. Neither
//! path waits for an agent, because the busybox image has none.
//!
//! With `STRONGROOM_TEST_WORKSPACE_IMAGE` set, a second part runs the real workspace
//! image with the site catalogue's default limits and compares, in the same run:
//!
//! - launch through the broker until the agent accepts a WebSocket, against a container
//!   of the same image created and started like `docker run -d` until its agent
//!   accepts a WebSocket. The baseline has the same user, environment, `/dev/shm`
//!   size, seccomp profile and tmpfs mounts, on the default bridge;
//! - the time from the start of the launch to the first video keyframe on both paths.
//!
//! Run as root: `cargo bench -p broker --bench launch`.

#[path = "../tests/sessions_support/mod.rs"]
mod sessions_support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use futures::{SinkExt as _, StreamExt as _};
use sessions_support::{Harness, Options, SITE, docker, person, test_image};
use tokio_tungstenite::tungstenite::Message;

const ROUNDS: usize = 15;
/// Rounds of the workspace-image part; each starts Chromium twice.
const WORKSPACE_ROUNDS: usize = 5;
/// The agent's port in the workspace image.
const AGENT_PORT: u16 = 7000;
/// Time a workspace gets to reach each readiness step on a busy host.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

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
    busybox_launch().await;
    match std::env::var("STRONGROOM_TEST_WORKSPACE_IMAGE") {
        Ok(image) if !image.is_empty() => workspace_launch(&image).await,
        _ => println!(
            "\nSet STRONGROOM_TEST_WORKSPACE_IMAGE to also measure agent readiness and the first frame."
        ),
    }
}

/// Broker launch to running against `docker run -d`, with the busybox image.
async fn busybox_launch() {
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

type AgentSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Dials the agent at `address` until it accepts a WebSocket.
async fn dial_agent(address: Ipv4Addr) -> AgentSocket {
    let url = format!("ws://{address}:{AGENT_PORT}/");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let attempt = tokio_tungstenite::connect_async(url.as_str());
        if let Ok(Ok((socket, _))) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
            return socket;
        }
        assert!(Instant::now() < deadline, "the agent at {url} did not answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Authenticates with `secret` and waits for the first video keyframe.
async fn first_keyframe(socket: &mut AgentSocket, secret: protocol::SessionSecret) {
    let auth = protocol::encode_broker_message(&protocol::BrokerMessage::Auth { secret });
    socket
        .send(Message::binary(auth.to_vec()))
        .await
        .expect("send the agent secret");
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("no keyframe from the agent in time")
            .expect("the agent closed the connection")
            .expect("the agent connection failed");
        let Message::Binary(frame) = message else {
            continue;
        };
        if let Ok(protocol::AgentMessage::Video(packet)) = protocol::decode_agent_message(&frame)
            && packet.keyframe
        {
            return;
        }
    }
}

/// Times to agent readiness and to the first keyframe, from the start of a launch.
struct Readiness {
    agent: Duration,
    first_frame: Duration,
}

/// Creates and starts a container of the workspace image as `docker run -d` with the
/// options the image needs, waits for its agent and its first keyframe, and removes it.
async fn docker_run_workspace(image: &str, seccomp_profile: &str) -> Readiness {
    let docker = docker();
    let name = format!("strongroom-bench-{}", uuid::Uuid::new_v4().simple());
    let secret = protocol::SessionSecret::new(hex::encode(rand::random::<[u8; 32]>()));
    let env = vec![
        format!("STRONGROOM_SESSION_ID={}", uuid::Uuid::new_v4()),
        format!("STRONGROOM_SITE={SITE}"),
        "STRONGROOM_START_URL=https://www.demo-bank.example/login".to_owned(),
        "STRONGROOM_PROXY=http://192.0.2.1:3128".to_owned(),
        "STRONGROOM_ALLOWED_HOSTS=www.demo-bank.example".to_owned(),
        format!("STRONGROOM_AGENT_SECRET_SHA256={}", secret.sha256_hex()),
        "HOME=/home/strongroom".to_owned(),
    ];
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        user: Some("1000:1000".to_owned()),
        env: Some(env),
        host_config: Some(HostConfig {
            shm_size: Some(1 << 30),
            security_opt: Some(vec![format!("seccomp={seccomp_profile}")]),
            tmpfs: Some(
                [
                    ("/tmp".to_owned(), "rw,size=256m".to_owned()),
                    (
                        "/home/strongroom".to_owned(),
                        "rw,size=512m,uid=1000,gid=1000,mode=0700".to_owned(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };

    let started = Instant::now();
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .expect("create the baseline workspace");
    let start = docker.start_container(&name, None).await;
    let address = match start {
        Ok(()) => docker
            .inspect_container(&name, None)
            .await
            .ok()
            .and_then(|inspected| {
                inspected
                    .network_settings?
                    .networks?
                    .get("bridge")?
                    .ip_address
                    .clone()
            })
            .and_then(|address| address.parse::<Ipv4Addr>().ok()),
        Err(_) => None,
    };
    let readiness = match address {
        Some(address) => {
            let mut socket = dial_agent(address).await;
            let agent = started.elapsed();
            first_keyframe(&mut socket, secret).await;
            Some(Readiness {
                agent,
                first_frame: started.elapsed(),
            })
        }
        None => None,
    };
    docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .expect("remove the baseline workspace");
    readiness.expect("the baseline workspace started and has an address")
}

/// Launches through the broker, waits for the agent and its first keyframe, and ends
/// the session.
async fn broker_workspace(harness: &Harness) -> Readiness {
    let alice = person("alice");
    let started = Instant::now();
    let launched = harness
        .service
        .launch(&alice, SITE, None)
        .await
        .expect("launch through the broker");
    let mut socket = dial_agent(launched.workspace_address).await;
    let agent = started.elapsed();
    first_keyframe(&mut socket, launched.agent_secret.session_secret()).await;
    let first_frame = started.elapsed();
    drop(socket);
    harness
        .service
        .end_by(&alice, launched.session.id)
        .await
        .unwrap();
    Readiness { agent, first_frame }
}

fn milliseconds(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}

/// Launch to agent-ready and to the first keyframe with the real workspace image.
async fn workspace_launch(image: &str) {
    let harness = Harness::new(Options {
        workspace_image: Some(image.to_owned()),
        ..Options::default()
    })
    .await;
    harness.grant("alice").await;
    let mut site = broker::sites::get(&harness.database.db, SITE)
        .await
        .unwrap()
        .unwrap()
        .definition;
    // The site catalogue's defaults: 2 GiB memory, 1 CPU, 512 processes, 1 GiB /dev/shm.
    site.limits = launcher::SiteLimits {
        memory_bytes: 2 << 30,
        nano_cpus: 1_000_000_000,
        pids: 512,
        shm_bytes: 1 << 30,
    };
    broker::sites::upsert(&harness.database.db, &site, 0)
        .await
        .unwrap();
    let seccomp_profile = launcher::launcher::load_seccomp_profile(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../workspace-images/seccomp/workspace.json"),
    )
    .unwrap();

    // One of each first, so that neither path pays for a cold cache.
    docker_run_workspace(image, &seccomp_profile).await;
    broker_workspace(&harness).await;

    let mut baseline = Vec::new();
    let mut broker = Vec::new();
    for _ in 0..WORKSPACE_ROUNDS {
        baseline.push(docker_run_workspace(image, &seccomp_profile).await);
        broker.push(broker_workspace(&harness).await);
    }

    let agent_baseline = median(baseline.iter().map(|ready| ready.agent).collect());
    let agent_broker = median(broker.iter().map(|ready| ready.agent).collect());
    let frame_baseline = median(baseline.iter().map(|ready| ready.first_frame).collect());
    let frame_broker = median(broker.iter().map(|ready| ready.first_frame).collect());
    println!("\nWorkspace image {image}, median of {WORKSPACE_ROUNDS}:\n");
    println!("| path | agent accepts a WebSocket | first keyframe |");
    println!("| --- | --- | --- |");
    println!(
        "| `docker run -d` of the image | {} | {} |",
        milliseconds(agent_baseline),
        milliseconds(frame_baseline)
    );
    println!(
        "| broker launch | {} | {} |",
        milliseconds(agent_broker),
        milliseconds(frame_broker)
    );
    println!(
        "| ratio (broker / docker run) | {:.2} | {:.2} |",
        agent_broker.as_secs_f64() / agent_baseline.as_secs_f64(),
        frame_broker.as_secs_f64() / frame_baseline.as_secs_f64()
    );
    harness.finish().await;
}
