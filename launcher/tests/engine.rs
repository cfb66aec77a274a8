//! Tests against the Docker engine installed on this machine (Debian docker.io 20.10,
//! API 1.41), with a busybox image imported by the tests themselves.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::query_parameters::KillContainerOptions;
use common::{TestInstance, WAIT, docker, docker_runtime, exec, launch_request};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use ipnet::Ipv4Net;
use launcher::runtime::{
    ExitEvent, NetworkSpec, ObjectRef, OwnedObjects, RuntimeError, WorkspaceSpec,
};
use launcher::{
    DockerRuntime, ErrorKind, LaunchError, Launcher, LauncherConfig, Runtime, SiteLimits,
    WorkloadState, labels,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use uuid::Uuid;

#[tokio::test]
async fn launch_creates_hardened_workspace() {
    let instance = TestInstance::new().await;
    let launcher = instance.launcher();
    let secret = format!("SECRET-MARKER-{}", Uuid::new_v4());
    let request = launch_request(&secret);

    let launched = launcher.launch(&request).await.expect("launch");
    let docker = docker();

    // The network: internal, no inter-container traffic, its own subnet, labelled.
    let network = docker
        .inspect_network(&launched.network_name, None)
        .await
        .unwrap();
    assert_eq!(
        launched.network_name,
        format!("strongroom-s-{}", request.session_id)
    );
    assert_eq!(network.internal, Some(true));
    assert_eq!(network.driver.as_deref(), Some("bridge"));
    let options = network.options.clone().unwrap_or_default();
    assert_eq!(
        options
            .get("com.docker.network.bridge.enable_icc")
            .map(String::as_str),
        Some("false")
    );
    let bridge = options
        .get("com.docker.network.bridge.name")
        .cloned()
        .unwrap_or_default();
    assert!(
        bridge.starts_with("srs-") && bridge.len() == 15,
        "{bridge:?}"
    );
    let ipam = &network.ipam.as_ref().unwrap().config.as_ref().unwrap()[0];
    assert_eq!(
        ipam.subnet.as_deref(),
        Some(launched.subnet.to_string().as_str())
    );
    assert_eq!(
        ipam.gateway.as_deref(),
        Some(launched.gateway.to_string().as_str())
    );
    assert_eq!(launched.subnet.prefix_len(), 28);
    assert!(
        "172.21.0.0/16"
            .parse::<Ipv4Net>()
            .unwrap()
            .contains(&launched.subnet)
    );
    let network_labels = network.labels.clone().unwrap_or_default();
    assert_eq!(
        network_labels.get(labels::SESSION),
        Some(&request.session_id.to_string())
    );
    assert_eq!(
        network_labels.get(labels::INSTANCE),
        Some(&instance.instance_id)
    );

    // The container: every hardening field as inspected.
    let container = docker
        .inspect_container(&launched.container_name, None)
        .await
        .unwrap();
    let host = container.host_config.clone().unwrap();
    let config = container.config.clone().unwrap();
    assert_eq!(container.state.as_ref().unwrap().running, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(host.cap_add.unwrap_or_default().is_empty());
    assert_eq!(host.privileged, Some(false));
    let security = host.security_opt.clone().unwrap();
    assert!(
        security.contains(&"no-new-privileges".to_owned()),
        "{security:?}"
    );
    let seccomp = security
        .iter()
        .find_map(|opt| opt.strip_prefix("seccomp="))
        .expect("seccomp security option");
    let seccomp: serde_json::Value = serde_json::from_str(seccomp).unwrap();
    assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ALLOW");
    assert_eq!(host.readonly_rootfs, Some(true));
    let tmpfs = host.tmpfs.clone().unwrap();
    assert!(tmpfs.contains_key("/tmp"), "{tmpfs:?}");
    assert!(tmpfs.contains_key("/home/strongroom"), "{tmpfs:?}");
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(host.shm_size, Some(1 << 30));
    assert_eq!(host.memory, Some(256 << 20));
    assert_eq!(host.memory_swap, Some(256 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.pids_limit, Some(64));
    let ulimits = host.ulimits.clone().unwrap();
    assert_eq!(ulimits.len(), 1);
    assert_eq!(ulimits[0].name.as_deref(), Some("core"));
    assert_eq!((ulimits[0].soft, ulimits[0].hard), (Some(0), Some(0)));
    assert_eq!(host.init, Some(true));
    assert_eq!(host.dns, Some(vec!["127.0.0.1".to_owned()]));
    assert!(host.port_bindings.unwrap_or_default().is_empty());
    assert_eq!(host.publish_all_ports, Some(false));
    assert!(host.binds.unwrap_or_default().is_empty());
    assert!(
        container.mounts.clone().unwrap_or_default().is_empty(),
        "{:?}",
        container.mounts
    );
    assert_eq!(
        host.network_mode.as_deref(),
        Some(launched.network_name.as_str())
    );
    let container_labels = config.labels.clone().unwrap();
    for key in [
        labels::SESSION,
        labels::OWNER,
        labels::CREATED,
        labels::INSTANCE,
        labels::SITE,
    ] {
        assert!(
            container_labels.contains_key(key),
            "label {key} missing: {container_labels:?}"
        );
    }
    assert_eq!(
        container_labels.get(labels::OWNER).map(String::as_str),
        Some("alice@example.org")
    );
    let endpoints = container
        .network_settings
        .as_ref()
        .unwrap()
        .networks
        .clone()
        .unwrap();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    let endpoint = &endpoints[&launched.network_name];
    assert_eq!(
        endpoint.ip_address.as_deref(),
        Some(launched.workspace_address.to_string().as_str())
    );

    // No secret in `docker inspect`, only its hash.
    let raw = serde_json::to_string(&container).unwrap();
    assert!(
        !raw.contains(&secret),
        "docker inspect contains the agent secret"
    );
    assert!(raw.contains(&request.agent_secret_sha256));
    let env = config.env.clone().unwrap();
    assert!(
        env.contains(&format!(
            "STRONGROOM_PROXY=http://{}:3128",
            launched.gateway
        )),
        "{env:?}"
    );

    // The settings hold inside the container.
    let (code, output) = exec(&launched.container_name, &["/bin/busybox", "id", "-u"]).await;
    assert_eq!((code, output.trim()), (0, "1000"));
    let (code, _) = exec(
        &launched.container_name,
        &["/bin/busybox", "touch", "/rootfs-file"],
    )
    .await;
    assert_ne!(code, 0, "root filesystem is writable");
    let (code, _) = exec(
        &launched.container_name,
        &["/bin/busybox", "touch", "/tmp/file"],
    )
    .await;
    assert_eq!(code, 0, "/tmp is not writable");
    let (code, output) = exec(
        &launched.container_name,
        &["/bin/busybox", "mkdir", "/tmp/dir"],
    )
    .await;
    assert_ne!(
        code, 0,
        "mkdir succeeded, so the seccomp profile is not applied: {output}"
    );
    let (_, status) = exec(
        &launched.container_name,
        &["/bin/busybox", "cat", "/proc/self/status"],
    )
    .await;
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");

    // Ending removes both objects.
    let ended = launcher
        .end(request.session_id, "test finished")
        .await
        .unwrap();
    assert!(ended.found);
    assert!(!ended.removal_pending);
    assert!(
        docker
            .inspect_container(&launched.container_name, None)
            .await
            .is_err()
    );
    assert!(
        docker
            .inspect_network(&launched.network_name, None)
            .await
            .is_err()
    );
    let again = launcher
        .end(request.session_id, "test finished")
        .await
        .unwrap();
    assert!(!again.found);

    instance.finish().await;
}

#[tokio::test]
async fn concurrent_launches_get_distinct_subnets() {
    let instance = TestInstance::new().await;
    let launcher = instance.launcher();

    let requests: Vec<_> = (0..10)
        .map(|i| launch_request(&format!("secret-{i}")))
        .collect();
    let launches = requests.iter().map(|request| launcher.launch(request));
    let results = futures::future::join_all(launches).await;

    let mut subnets = HashSet::new();
    for result in &results {
        let launched = result.as_ref().expect("launch");
        assert!(
            subnets.insert(launched.subnet),
            "subnet {} given twice",
            launched.subnet
        );
    }
    assert_eq!(subnets.len(), 10);

    let docker = docker();
    for result in &results {
        let launched = result.as_ref().unwrap();
        let network = docker
            .inspect_network(&launched.network_name, None)
            .await
            .unwrap();
        let subnet = network.ipam.unwrap().config.unwrap()[0]
            .subnet
            .clone()
            .unwrap();
        assert_eq!(subnet, launched.subnet.to_string());
    }
    for request in &requests {
        let ended = launcher
            .end(request.session_id, "test finished")
            .await
            .unwrap();
        assert!(!ended.removal_pending);
    }
    assert_eq!(launcher.session_count(), 0);

    instance.finish().await;
}

#[tokio::test]
async fn missing_image_fails_clearly_without_network() {
    let mut instance = TestInstance::new().await;
    let tag = format!(
        "strongroom-launcher-test/absent:{}",
        Uuid::new_v4().simple()
    );
    instance.config.image = tag.clone();
    let launcher = instance.launcher();

    let error = launcher.launch(&launch_request("s")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ImageMissing);
    let message = error.to_string();
    assert!(message.contains(&tag), "{message}");
    assert!(message.contains("strongroom image build"), "{message}");
    assert_eq!(
        common::count_instance_objects(&instance.instance_id).await,
        (0, 0)
    );
    assert_eq!(launcher.session_count(), 0);

    instance.finish().await;
}

/// Delegates to Docker but misreports one check, so that a later Docker call fails.
struct Misreporting {
    docker: DockerRuntime,
    /// Reports every image as present, so that container creation fails instead.
    all_images_present: bool,
    /// Reports no subnet in use, so that network creation meets an overlap.
    no_used_subnets: bool,
}

impl Misreporting {
    fn new(all_images_present: bool, no_used_subnets: bool) -> Self {
        Self {
            docker: docker_runtime(),
            all_images_present,
            no_used_subnets,
        }
    }
}

#[async_trait]
impl Runtime for Misreporting {
    async fn create_session_network(&self, spec: &NetworkSpec) -> Result<ObjectRef, RuntimeError> {
        self.docker.create_session_network(spec).await
    }
    async fn create_workspace(&self, spec: &WorkspaceSpec) -> Result<ObjectRef, RuntimeError> {
        self.docker.create_workspace(spec).await
    }
    async fn stop_workspace(&self, container: &str, timeout: Duration) -> Result<(), RuntimeError> {
        self.docker.stop_workspace(container, timeout).await
    }
    async fn remove_workspace(&self, container: &str) -> Result<(), RuntimeError> {
        self.docker.remove_workspace(container).await
    }
    async fn remove_network(&self, network: &str) -> Result<(), RuntimeError> {
        self.docker.remove_network(network).await
    }
    async fn list_owned(&self, instance_id: &str) -> Result<OwnedObjects, RuntimeError> {
        self.docker.list_owned(instance_id).await
    }
    async fn used_subnets(&self) -> Result<Vec<Ipv4Net>, RuntimeError> {
        if self.no_used_subnets {
            return Ok(Vec::new());
        }
        self.docker.used_subnets().await
    }
    async fn workspace_state(
        &self,
        container: &str,
    ) -> Result<Option<WorkloadState>, RuntimeError> {
        self.docker.workspace_state(container).await
    }
    fn watch_exits(
        &self,
        instance_id: &str,
        since: Option<std::time::SystemTime>,
    ) -> BoxStream<'static, Result<ExitEvent, RuntimeError>> {
        self.docker.watch_exits(instance_id, since)
    }
    async fn image_present(&self, tag: &str) -> Result<bool, RuntimeError> {
        if self.all_images_present {
            return Ok(true);
        }
        self.docker.image_present(tag).await
    }
    async fn engine_version(&self) -> Result<String, RuntimeError> {
        self.docker.engine_version().await
    }
}

#[tokio::test]
async fn failed_container_creation_removes_network() {
    let mut instance = TestInstance::new().await;
    let tag = format!(
        "strongroom-launcher-test/absent:{}",
        Uuid::new_v4().simple()
    );
    instance.config.image = tag.clone();
    let launcher = Launcher::new(
        instance.config.clone(),
        Arc::new(Misreporting::new(true, false)),
    )
    .unwrap();
    let request = launch_request("s");

    let error = launcher.launch(&request).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ImageMissing, "{error}");
    assert!(error.to_string().contains(&tag), "{error}");
    assert!(
        docker()
            .inspect_network(&format!("strongroom-s-{}", request.session_id), None)
            .await
            .is_err()
    );
    assert_eq!(
        common::count_instance_objects(&instance.instance_id).await,
        (0, 0)
    );
    assert!(launcher.pending_removals().is_empty());

    instance.finish().await;
}

#[tokio::test]
async fn reconcile_removes_only_own_orphans() {
    let mine = TestInstance::new().await;
    let theirs = TestInstance::new().await;
    let launcher = mine.launcher();
    let other = theirs.launcher();

    let live = launch_request("live");
    let orphan = launch_request("orphan");
    let foreign = launch_request("foreign");
    let live_launch = launcher.launch(&live).await.unwrap();
    let orphan_launch = launcher.launch(&orphan).await.unwrap();
    let foreign_launch = other.launch(&foreign).await.unwrap();

    let report = launcher
        .reconcile(&HashSet::from([live.session_id]))
        .await
        .unwrap();
    assert_eq!(
        report.removed_containers,
        vec![orphan_launch.container_name.clone()]
    );
    assert_eq!(
        report.removed_networks,
        vec![orphan_launch.network_name.clone()]
    );
    assert!(report.dead_sessions.is_empty(), "{report:?}");
    assert!(report.failures.is_empty(), "{report:?}");

    let docker = docker();
    assert!(
        docker
            .inspect_container(&orphan_launch.container_name, None)
            .await
            .is_err()
    );
    assert!(
        docker
            .inspect_network(&orphan_launch.network_name, None)
            .await
            .is_err()
    );
    assert!(
        docker
            .inspect_container(&live_launch.container_name, None)
            .await
            .is_ok()
    );
    assert!(
        docker
            .inspect_container(&foreign_launch.container_name, None)
            .await
            .is_ok()
    );
    assert!(
        docker
            .inspect_network(&foreign_launch.network_name, None)
            .await
            .is_ok()
    );
    assert_eq!(
        common::count_instance_objects(&theirs.instance_id).await,
        (1, 1)
    );
    assert_eq!(launcher.session_count(), 1);

    mine.finish().await;
    theirs.finish().await;
}

/// A container and network labelled the way launchers before the `strongroom.` prefix
/// labelled them.
struct LegacySession {
    session_id: Uuid,
    container: String,
    network: String,
}

/// Creates a session network and a running container that carry only the legacy
/// `io.strongroom.*` labels of `instance`.
async fn create_legacy_session(instance: &TestInstance) -> LegacySession {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::CreateContainerOptions;

    let session_id = Uuid::new_v4();
    let legacy_labels = std::collections::BTreeMap::from([
        (
            labels::LEGACY_INSTANCE.to_owned(),
            instance.instance_id.clone(),
        ),
        (labels::LEGACY_SESSION.to_owned(), session_id.to_string()),
        ("io.strongroom.owner".to_owned(), "alice@example.org".to_owned()),
        ("io.strongroom.role".to_owned(), "workspace".to_owned()),
    ]);

    // Another test may take the chosen subnet first; choose again then.
    let runtime = docker_runtime();
    let network_name = format!("strongroom-s-{session_id}");
    let mut network = None;
    for _ in 0..8 {
        let used = runtime.used_subnets().await.unwrap();
        let subnet =
            launcher::subnet::pick_free_subnet(instance.config.subnet_range, 28, &used)
                .expect("a free /28 in the test subnet range");
        let spec = NetworkSpec {
            name: network_name.clone(),
            bridge_name: launcher::spec::bridge_name("srs-", &network_name),
            subnet,
            gateway: launcher::docker::gateway_of(subnet),
            labels: legacy_labels.clone(),
        };
        match runtime.create_session_network(&spec).await {
            Ok(created) => {
                network = Some(created);
                break;
            }
            Err(RuntimeError::SubnetInUse { .. }) => continue,
            Err(error) => panic!("creating the legacy network failed: {error}"),
        }
    }
    let network = network.expect("a legacy network within 8 subnet choices");

    let container = format!("strongroom-w-{session_id}");
    let body = ContainerCreateBody {
        image: Some(instance.config.image.clone()),
        labels: Some(legacy_labels.into_iter().collect()),
        host_config: Some(HostConfig {
            network_mode: Some(network.name.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(container.clone()),
        platform: String::new(),
    };
    let docker = docker();
    docker.create_container(Some(options), body).await.unwrap();
    docker.start_container(&container, None).await.unwrap();

    LegacySession {
        session_id,
        container,
        network: network.name,
    }
}

#[tokio::test]
async fn reconcile_removes_own_objects_with_legacy_labels() {
    let mine = TestInstance::new().await;
    let theirs = TestInstance::new().await;
    let launcher = mine.launcher();
    let current = launch_request("current");
    let current_launch = launcher.launch(&current).await.unwrap();
    let own_legacy = create_legacy_session(&mine).await;
    let their_legacy = create_legacy_session(&theirs).await;

    let listed = launcher.list().await.unwrap();
    let listed_ids: HashSet<Uuid> = listed.iter().map(|session| session.session_id).collect();
    assert_eq!(
        listed_ids,
        HashSet::from([current.session_id, own_legacy.session_id]),
        "the listing has this instance's sessions in both label forms and no other"
    );

    let report = launcher
        .reconcile(&HashSet::from([current.session_id]))
        .await
        .unwrap();
    assert_eq!(report.removed_containers, vec![own_legacy.container.clone()]);
    assert_eq!(report.removed_networks, vec![own_legacy.network.clone()]);
    assert!(report.failures.is_empty(), "{report:?}");

    let docker = docker();
    assert!(
        docker
            .inspect_container(&own_legacy.container, None)
            .await
            .is_err(),
        "own legacy container removed"
    );
    assert!(
        docker
            .inspect_network(&own_legacy.network, None)
            .await
            .is_err(),
        "own legacy network removed"
    );
    assert!(
        docker
            .inspect_container(&current_launch.container_name, None)
            .await
            .is_ok(),
        "live session kept"
    );
    assert!(
        docker
            .inspect_container(&their_legacy.container, None)
            .await
            .is_ok(),
        "other instance's legacy container kept"
    );
    assert!(
        docker
            .inspect_network(&their_legacy.network, None)
            .await
            .is_ok(),
        "other instance's legacy network kept"
    );
    assert_eq!(common::count_instance_objects(&mine.instance_id).await, (1, 1));
    assert_eq!(
        common::count_instance_objects(&theirs.instance_id).await,
        (1, 1)
    );

    mine.finish().await;
    theirs.finish().await;
}

#[tokio::test]
async fn killed_workspace_is_reported_dead() {
    let instance = TestInstance::new().await;
    let launcher = instance.launcher();
    let runtime = docker_runtime();
    let request = launch_request("s");
    let launched = launcher.launch(&request).await.unwrap();

    // Subscribing with `since` replays the kill even if it happens before the engine
    // registered the subscription.
    let before_kill = std::time::SystemTime::now() - Duration::from_secs(1);
    let kill = KillContainerOptions {
        signal: "SIGKILL".to_owned(),
    };
    docker()
        .kill_container(&launched.container_name, Some(kill))
        .await
        .unwrap();
    let mut exits = runtime.watch_exits(&instance.instance_id, Some(before_kill));

    let exit = tokio::time::timeout(WAIT, exits.next())
        .await
        .expect("exit event in time")
        .expect("stream open")
        .unwrap();
    assert_eq!(exit.container_id, launched.container_id);
    assert_eq!(exit.exit_code, Some(137));
    assert_eq!(
        exit.labels.get(labels::SESSION),
        Some(&request.session_id.to_string())
    );

    let report = launcher
        .reconcile(&HashSet::from([request.session_id]))
        .await
        .unwrap();
    assert_eq!(report.dead_sessions.len(), 1, "{report:?}");
    assert_eq!(report.dead_sessions[0].session_id, request.session_id);
    assert_eq!(
        report.dead_sessions[0].state,
        WorkloadState::Exited {
            exit_code: 137,
            oom_killed: false
        }
    );
    assert_eq!(
        report.dead_sessions[0].reason,
        "workspace exited with code 137"
    );
    assert!(report.removed_containers.is_empty());

    let sessions = launcher.list().await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].state.is_dead(), "{:?}", sessions[0].state);

    launcher
        .end(request.session_id, "workspace died")
        .await
        .unwrap();
    instance.finish().await;
}

#[tokio::test]
async fn capacity_and_limits_are_enforced() {
    let mut instance = TestInstance::new().await;
    instance.config.max_sessions = 1;
    let launcher = instance.launcher();

    let over_limits = launch_request("s");
    let over_limits = launcher::LaunchSession {
        limits: SiteLimits {
            memory_bytes: 64 << 30,
            ..over_limits.limits
        },
        ..over_limits
    };
    let error = launcher.launch(&over_limits).await.unwrap_err();
    assert!(
        matches!(error, LaunchError::LimitExceeded { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("memory_bytes"), "{error}");

    let first = launch_request("first");
    launcher.launch(&first).await.unwrap();
    let error = launcher
        .launch(&launch_request("second"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::CapacityExhausted, "{error}");
    let error = launcher.launch(&first).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AlreadyExists, "{error}");

    // A restarted launcher adopts the running workspace and counts it.
    let restarted = instance.launcher();
    assert_eq!(restarted.adopt_existing().await.unwrap(), 1);
    let error = restarted
        .launch(&launch_request("third"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::CapacityExhausted, "{error}");

    restarted
        .end(first.session_id, "test finished")
        .await
        .unwrap();
    instance.finish().await;
}

/// Starts a launcher on a Unix socket of its own; returns the shutdown token and task.
fn serve_in_background(
    config: LauncherConfig,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { launcher::serve(config, token).await });
    (shutdown, task)
}

async fn wait_for_socket(path: &Path) {
    tokio::time::timeout(WAIT, async {
        while UnixStream::connect(path).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("launcher socket did not appear");
}

async fn read_response(stream: &mut UnixStream) -> launcher::Response {
    let body = launcher::protocol::read_frame(stream, 1 << 20)
        .await
        .unwrap()
        .expect("a response frame");
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn socket_serves_client_and_rejects_bad_frames() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    let mut instance = TestInstance::new().await;
    instance.config.socket_group = Some("daemon".to_owned());
    let socket = instance.config.socket_path.clone();
    let max_frame = instance.config.max_frame_bytes;
    let (shutdown, server) = serve_in_background(instance.config.clone());
    wait_for_socket(&socket).await;

    let metadata = std::fs::metadata(&socket).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o660);
    let daemon_gid = nix::unistd::Group::from_name("daemon")
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    assert_eq!(metadata.gid(), daemon_gid);

    // An oversize frame is rejected before its body is read, and the connection closes.
    let mut stream = UnixStream::connect(&socket).await.unwrap();
    stream
        .write_all(&(max_frame + 1).to_be_bytes())
        .await
        .unwrap();
    match read_response(&mut stream).await {
        launcher::Response::Error(body) => {
            assert_eq!(body.kind, ErrorKind::FrameTooLarge, "{}", body.message)
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    // Malformed JSON and a request with a field no request has are both rejected; the
    // connection stays usable.
    let mut stream = UnixStream::connect(&socket).await.unwrap();
    for body in [
        &b"{not json"[..],
        br#"{"type":"launch_session","image":"alpine","privileged":true}"#,
    ] {
        launcher::protocol::write_frame(&mut stream, body)
            .await
            .unwrap();
        match read_response(&mut stream).await {
            launcher::Response::Error(error) => {
                assert_eq!(error.kind, ErrorKind::Malformed, "{}", error.message)
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    launcher::protocol::write_frame(&mut stream, br#"{"type":"list_sessions"}"#)
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut stream).await,
        launcher::Response::Sessions { sessions: vec![] }
    );
    drop(stream);

    // The broker's client launches, lists and ends a session through the socket.
    let client = launcher::LauncherClient::new(&socket).with_timeout(WAIT);
    let request = launch_request("client");
    let launched = client.launch_session(request.clone()).await.unwrap();
    assert_eq!(launched.session_id, request.session_id);
    let sessions = client.list_sessions().await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].state, WorkloadState::Running);
    assert_eq!(sessions[0].subnet, Some(launched.subnet));
    let error = client.launch_session(request.clone()).await.unwrap_err();
    assert_eq!(
        error.rejection_kind(),
        Some(ErrorKind::AlreadyExists),
        "{error}"
    );
    let ended = client
        .end_session(request.session_id, "test finished")
        .await
        .unwrap();
    assert!(ended.found, "{ended:?}");
    assert!(!ended.removal_pending, "{ended:?}");
    let report = client.reconcile(vec![]).await.unwrap();
    assert!(report.removed_containers.is_empty(), "{report:?}");

    shutdown.cancel();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("launcher stopped in time")
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "socket left behind after shutdown");
    instance.finish().await;
}

#[tokio::test]
async fn client_times_out_on_silent_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let accept = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // Holds the connection open without responding.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    });

    let client = launcher::LauncherClient::new(&socket).with_timeout(Duration::from_millis(300));
    let error = client.list_sessions().await.unwrap_err();
    assert!(
        matches!(error, launcher::ClientError::TimedOut { .. }),
        "{error}"
    );
    accept.abort();
}

/// Forwards a Unix socket to the Docker socket and records every request line.
struct RecordingProxy {
    requests: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    fn start(path: &Path) -> Self {
        let listener = UnixListener::bind(path).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let captured = requests.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let upstream = UnixStream::connect(common::DOCKER_SOCKET).await.unwrap();
                let captured = captured.clone();
                connections.spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut upstream_read, mut upstream_write) = upstream.into_split();
                    let up = async {
                        let mut buffer = [0u8; 8192];
                        loop {
                            let read = client_read.read(&mut buffer).await.unwrap_or(0);
                            if read == 0 {
                                let _ = upstream_write.shutdown().await;
                                return;
                            }
                            captured.lock().unwrap().extend_from_slice(&buffer[..read]);
                            if upstream_write.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut upstream_read, &mut client_write);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self { requests, task }
    }

    /// Request lines seen so far, e.g. `GET /v1.41/networks HTTP/1.1`.
    fn request_lines(&self) -> Vec<String> {
        let bytes = self.requests.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .split("\r\n")
            .filter(|line| {
                ["GET ", "POST ", "DELETE ", "PUT ", "HEAD "]
                    .iter()
                    .any(|m| line.starts_with(m))
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn api_version_prefix_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let proxy_path = dir.path().join("docker.sock");
    let proxy = RecordingProxy::start(&proxy_path);

    let runtime = DockerRuntime::connect(&proxy_path, "1.41", Duration::from_secs(30)).unwrap();
    runtime.used_subnets().await.unwrap();
    assert!(
        !runtime
            .image_present("strongroom-launcher-test/absent:none")
            .await
            .unwrap()
    );
    runtime.list_owned("test-prefix").await.unwrap();

    // Subnets, the image, and the containers and networks under the current and the
    // legacy instance label.
    let lines = proxy.request_lines();
    assert_eq!(lines.len(), 6, "{lines:?}");
    for line in &lines {
        let path = line.split(' ').nth(1).unwrap();
        assert!(
            path.starts_with("/v1.41/"),
            "request sent without the version prefix: {line}"
        );
    }
    assert!(lines[0].starts_with("GET /v1.41/networks"), "{lines:?}");
}

#[tokio::test]
async fn engine_sees_configured_api_version() {
    // The engine rejects a version above its maximum only if the prefix arrives.
    let runtime = DockerRuntime::connect(
        Path::new(common::DOCKER_SOCKET),
        "1.99",
        Duration::from_secs(30),
    )
    .unwrap();
    let error = runtime.used_subnets().await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("1.99") && message.contains("too new"),
        "{message}"
    );

    let runtime = DockerRuntime::connect(
        Path::new(common::DOCKER_SOCKET),
        "1.41",
        Duration::from_secs(30),
    )
    .unwrap();
    runtime.used_subnets().await.unwrap();
}

#[tokio::test]
async fn failed_network_removal_is_retried_by_sweeper() {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};

    let instance = TestInstance::new().await;
    let launcher = instance.launcher();
    let request = launch_request("s");
    let launched = launcher.launch(&request).await.unwrap();

    // A second container on the session network makes its removal fail in the engine.
    let docker = docker();
    let blocker_name = format!("strongroom-test-blocker-{}", Uuid::new_v4().simple());
    let blocker = ContainerCreateBody {
        image: Some(instance.config.image.clone()),
        labels: Some([(labels::INSTANCE.to_owned(), instance.instance_id.clone())].into()),
        host_config: Some(HostConfig {
            network_mode: Some(launched.network_name.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(blocker_name.clone()),
        platform: String::new(),
    };
    docker
        .create_container(Some(options), blocker)
        .await
        .unwrap();
    docker.start_container(&blocker_name, None).await.unwrap();

    let ended = launcher
        .end(request.session_id, "test finished")
        .await
        .unwrap();
    assert!(ended.found);
    assert!(
        ended.removal_pending,
        "network removal should have failed: {ended:?}"
    );
    assert_eq!(
        launcher.pending_removals(),
        vec![launcher::launcher::PendingRemoval::Network {
            name: launched.network_name.clone(),
            session_id: Some(request.session_id),
        }]
    );
    assert!(
        docker
            .inspect_container(&launched.container_name, None)
            .await
            .is_err()
    );
    assert_eq!(
        launcher.sweep().await,
        1,
        "removal succeeded while the blocker is attached"
    );

    let remove = RemoveContainerOptions {
        force: true,
        v: true,
        link: false,
    };
    docker
        .remove_container(&blocker_name, Some(remove))
        .await
        .unwrap();
    assert_eq!(launcher.sweep().await, 0);
    assert!(launcher.pending_removals().is_empty());
    assert!(
        docker
            .inspect_network(&launched.network_name, None)
            .await
            .is_err()
    );

    instance.finish().await;
}

#[tokio::test]
async fn shipped_seccomp_profile_is_accepted() {
    let mut instance = TestInstance::new().await;
    instance.config.seccomp_profile =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../workspace-images/seccomp/workspace.json");
    let launcher = instance.launcher();
    let request = launch_request("s");
    let launched = launcher
        .launch(&request)
        .await
        .expect("launch with the shipped profile");

    let (_, status) = exec(
        &launched.container_name,
        &["/bin/busybox", "cat", "/proc/self/status"],
    )
    .await;
    assert!(status.contains("Seccomp:\t2"), "{status}");
    // The profile exists so that Chromium's sandbox can create a user namespace
    // without CAP_SYS_ADMIN.
    let (code, output) = exec(
        &launched.container_name,
        &["/bin/busybox", "unshare", "-U", "/bin/busybox", "true"],
    )
    .await;
    assert_eq!(
        code, 0,
        "user namespace creation failed under the shipped profile: {output}"
    );

    launcher
        .end(request.session_id, "test finished")
        .await
        .unwrap();
    instance.finish().await;
}

#[tokio::test]
async fn subnet_taken_concurrently_is_skipped() {
    use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};

    let mut instance = TestInstance::new().await;
    instance.config.subnet_range = "172.21.250.0/24".parse().unwrap();
    let launcher = Launcher::new(
        instance.config.clone(),
        Arc::new(Misreporting::new(false, true)),
    )
    .unwrap();

    // Another creator holds the first subnet of the range, and the runtime hides it.
    let taken: Ipv4Net = "172.21.250.0/28".parse().unwrap();
    let blocker = NetworkCreateRequest {
        name: format!("strongroom-test-taken-{}", Uuid::new_v4().simple()),
        internal: Some(true),
        ipam: Some(Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(taken.to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        labels: Some([(labels::INSTANCE.to_owned(), instance.instance_id.clone())].into()),
        ..Default::default()
    };
    docker().create_network(blocker).await.unwrap();

    let request = launch_request("s");
    let launched = launcher
        .launch(&request)
        .await
        .expect("launch after a subnet overlap");
    assert_eq!(
        launched.subnet,
        "172.21.250.16/28".parse::<Ipv4Net>().unwrap()
    );

    launcher
        .end(request.session_id, "test finished")
        .await
        .unwrap();
    instance.finish().await;
}

#[tokio::test]
async fn health_reports_engine_and_image() {
    let mut instance = TestInstance::new().await;
    let present = instance.launcher().health().await;
    let tag = format!(
        "strongroom-launcher-test/absent:{}",
        Uuid::new_v4().simple()
    );
    instance.config.image = tag.clone();
    let absent = instance.launcher().health().await;

    assert!(
        present
            .engine_version
            .as_deref()
            .unwrap_or_default()
            .contains("API"),
        "{present:?}"
    );
    assert_eq!(present.engine_error, None);
    assert_eq!(present.image_present, Some(true));
    let created = present
        .image_created
        .as_deref()
        .expect("creation time reported");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );
    assert_eq!(absent.image, tag);
    assert_eq!(absent.image_present, Some(false));
    assert_eq!(absent.image_created, None);

    instance.finish().await;
}
