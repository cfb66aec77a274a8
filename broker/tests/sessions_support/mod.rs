//! Test support for the session tests: the real launcher served in-process on a Unix
//! socket against the local Docker engine, a one-binary busybox image imported through
//! the Docker API, a demo site, and cleanup of every object labelled with the test's
//! instance id, even when the test fails.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, RemoveContainerOptions,
};
use broker::audit::AuditLog;
use broker::auth::{Principal, Role};
use broker::clock::{Clock, ManualClock};
use broker::config::SessionsConfig;
use broker::sessions::{RecorderPreflight, SessionDeps, SessionService};
use broker::testing::{TestBackend, TestDatabase};
use futures::stream::BoxStream;
use ipnet::Ipv4Net;
use launcher::runtime::{
    ExitEvent, NetworkSpec, ObjectRef, OwnedObjects, RuntimeError, WorkspaceSpec,
};
use launcher::{DockerRuntime, Launcher, LauncherConfig, Runtime, WorkloadState, labels};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[path = "../../../launcher/tests/common/busybox_image.rs"]
mod busybox_image;
pub use busybox_image::*;

/// Bound for every wait on Docker or the launcher.
pub const WAIT: Duration = Duration::from_secs(60);
pub const SITE: &str = "demo-bank";

/// Session subnets of these tests, apart from the launcher's own tests' default range.
const SUBNET_RANGE: &str = "172.28.0.0/16";

const SECCOMP_PROFILE: &str = r#"{ "defaultAction": "SCMP_ACT_ALLOW" }"#;

/// Calls the launcher made on the Docker engine.
#[derive(Debug, Default)]
pub struct Counts {
    pub workspaces_created: AtomicUsize,
    pub workspaces_removed: AtomicUsize,
    /// Networks Docker created. A create that Docker refused, for example because a
    /// test running at the same time took the subnet and the launcher chose another,
    /// does not count.
    pub networks_created: AtomicUsize,
    /// When set, the next workspace is created from an image tag that does not exist,
    /// so Docker fails the create after the session network exists.
    pub unknown_image_once: std::sync::atomic::AtomicBool,
}

/// The real Docker runtime with a count of create and remove calls.
pub struct CountingRuntime {
    inner: DockerRuntime,
    counts: Arc<Counts>,
}

#[async_trait]
impl Runtime for CountingRuntime {
    async fn create_session_network(&self, spec: &NetworkSpec) -> Result<ObjectRef, RuntimeError> {
        let network = self.inner.create_session_network(spec).await?;
        self.counts.networks_created.fetch_add(1, Ordering::SeqCst);
        Ok(network)
    }

    async fn create_workspace(&self, spec: &WorkspaceSpec) -> Result<ObjectRef, RuntimeError> {
        self.counts
            .workspaces_created
            .fetch_add(1, Ordering::SeqCst);
        if self.counts.unknown_image_once.swap(false, Ordering::SeqCst) {
            let spec = WorkspaceSpec {
                image: format!("strongroom-broker-test/absent:{}", Uuid::new_v4().simple()),
                ..spec.clone()
            };
            return self.inner.create_workspace(&spec).await;
        }
        self.inner.create_workspace(spec).await
    }

    async fn stop_workspace(&self, container: &str, timeout: Duration) -> Result<(), RuntimeError> {
        self.inner.stop_workspace(container, timeout).await
    }

    async fn remove_workspace(&self, container: &str) -> Result<(), RuntimeError> {
        self.counts
            .workspaces_removed
            .fetch_add(1, Ordering::SeqCst);
        self.inner.remove_workspace(container).await
    }

    async fn remove_network(&self, network: &str) -> Result<(), RuntimeError> {
        self.inner.remove_network(network).await
    }

    async fn list_owned(&self, instance_id: &str) -> Result<OwnedObjects, RuntimeError> {
        self.inner.list_owned(instance_id).await
    }

    async fn used_subnets(&self) -> Result<Vec<Ipv4Net>, RuntimeError> {
        self.inner.used_subnets().await
    }

    async fn workspace_state(
        &self,
        container: &str,
    ) -> Result<Option<WorkloadState>, RuntimeError> {
        self.inner.workspace_state(container).await
    }

    fn watch_exits(
        &self,
        instance_id: &str,
        since: Option<SystemTime>,
    ) -> BoxStream<'static, Result<ExitEvent, RuntimeError>> {
        self.inner.watch_exits(instance_id, since)
    }

    async fn image_present(&self, tag: &str) -> Result<bool, RuntimeError> {
        self.inner.image_present(tag).await
    }

    async fn engine_version(&self) -> Result<String, RuntimeError> {
        self.inner.engine_version().await
    }
}

/// Settings of one harness.
#[derive(Debug, Clone)]
pub struct Options {
    pub backend: TestBackend,
    pub default_quota: u32,
    pub host_max_sessions: u32,
    pub site_max_sessions: Option<u32>,
    /// Replaces the recordings directory (for an unwritable one).
    pub recordings_dir: Option<PathBuf>,
    /// Runs this image with the shipped seccomp profile instead of the busybox image.
    pub workspace_image: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: TestBackend::Sqlite,
            default_quota: 2,
            host_max_sessions: 8,
            site_max_sessions: None,
            recordings_dir: None,
            workspace_image: None,
        }
    }
}

/// A served launcher.
pub struct ServedLauncher {
    pub config: LauncherConfig,
    pub counts: Arc<Counts>,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl ServedLauncher {
    pub async fn start(instance_id: &str, dir: &Path) -> ServedLauncher {
        ServedLauncher::start_with_image(instance_id, dir, None).await
    }

    /// Starts a launcher of `workspace_image` with the shipped seccomp profile, or of
    /// the busybox test image when `None`.
    pub async fn start_with_image(
        instance_id: &str,
        dir: &Path,
        workspace_image: Option<&str>,
    ) -> ServedLauncher {
        let (image, seccomp) = match workspace_image {
            Some(image) => (
                image.to_owned(),
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../workspace-images/seccomp/workspace.json"),
            ),
            None => {
                let seccomp = dir.join("seccomp.json");
                std::fs::write(&seccomp, SECCOMP_PROFILE).unwrap();
                (test_image().await, seccomp)
            }
        };
        let config = LauncherConfig {
            instance_id: instance_id.to_owned(),
            image,
            seccomp_profile: seccomp,
            socket_path: dir.join("launcher.sock"),
            subnet_range: SUBNET_RANGE.parse().unwrap(),
            // Not the default `srs-`, which the firewall rules of a broker installed on
            // this machine match.
            bridge_prefix: "srt-".to_owned(),
            max_sessions: 12,
            stop_timeout_secs: 1,
            sweep_interval_secs: 1,
            ..LauncherConfig::default()
        };
        let counts = Arc::new(Counts::default());
        let runtime = CountingRuntime {
            inner: docker_runtime(),
            counts: counts.clone(),
        };
        let launcher =
            Launcher::new(config.clone(), Arc::new(runtime)).expect("launcher configuration");
        let listener = launcher::bind_socket(&config).expect("bind the launcher socket");
        let token = CancellationToken::new();
        let serve_token = token.clone();
        let task = tokio::spawn(async move { launcher.run(listener, serve_token).await });
        ServedLauncher {
            config,
            counts,
            token,
            task: Some(task),
        }
    }

    pub fn client(&self) -> launcher::LauncherClient {
        launcher::LauncherClient::new(&self.config.socket_path).with_timeout(WAIT)
    }

    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("launcher stops")
                .expect("launcher task")
                .expect("launcher run");
        }
    }
}

impl Drop for ServedLauncher {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A session service over a real launcher, a real database and a manual clock.
pub struct Harness {
    pub database: TestDatabase,
    pub dir: tempfile::TempDir,
    pub instance_id: String,
    pub launcher: Option<ServedLauncher>,
    pub clock: Arc<ManualClock>,
    pub egress: Arc<egress::Registry>,
    pub audit: AuditLog,
    pub config: SessionsConfig,
    pub recorder: RecorderPreflight,
    pub service: SessionService,
    cleanup: InstanceCleanup,
}

/// Removes every container and network of an instance when dropped.
pub struct InstanceCleanup(pub String);

impl Drop for InstanceCleanup {
    fn drop(&mut self) {
        let instance_id = self.0.clone();
        // Drop may run inside a Tokio runtime, so the cleanup gets its own thread.
        let cleanup = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(remove_instance_objects(&instance_id));
        });
        if cleanup.join().is_err() {
            eprintln!("cleanup of test instance {} panicked", self.0);
        }
    }
}

pub fn person(user_id: &str) -> Principal {
    Principal {
        user_id: user_id.to_owned(),
        display_name: user_id.to_owned(),
        roles: [Role::User].into_iter().collect(),
    }
}

pub fn admin(user_id: &str) -> Principal {
    Principal {
        user_id: user_id.to_owned(),
        display_name: user_id.to_owned(),
        roles: [Role::Admin].into_iter().collect(),
    }
}

/// Writes the demo site file and imports it through `sites::import_file`.
pub async fn import_demo_site(database: &TestDatabase, max_sessions: Option<u32>) {
    let limit = max_sessions
        .map(|limit| format!("max_sessions = {limit}\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
[[site]]
name = "{SITE}"
display_name = "Demo Bank"
start_url = "https://www.demo-bank.example/login"
allowed_hosts = ["www.demo-bank.example", "*.static.demo-bank.example"]
recording_retention_days = 365
{limit}
[site.limits]
memory_mib = 128
cpus = 0.5
pids = 64
shm_mib = 64
"#
    );
    let path = database.dir.path().join("sites.toml");
    std::fs::write(&path, text).unwrap();
    broker::sites::import_file(&database.db, &path)
        .await
        .expect("import the demo site");
}

impl Harness {
    pub async fn new(options: Options) -> Harness {
        let database = TestDatabase::new(options.backend).await;
        let dir = tempfile::tempdir().unwrap();
        let instance_id = format!("test-{}", Uuid::new_v4().simple());
        let cleanup = InstanceCleanup(instance_id.clone());
        let launcher = ServedLauncher::start_with_image(
            &instance_id,
            dir.path(),
            options.workspace_image.as_deref(),
        )
        .await;

        import_demo_site(&database, options.site_max_sessions).await;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let audit = AuditLog::new(database.db.clone(), clock.clone() as Arc<dyn Clock>);
        let mut config = SessionsConfig::defaults(dir.path());
        config.default_quota = options.default_quota;
        config.host_max_sessions = options.host_max_sessions;
        config.idle_timeout = Duration::from_secs(15 * 60);
        config.idle_warning = Duration::from_secs(2 * 60);
        config.max_lifetime = Duration::from_secs(4 * 60 * 60);
        if let Some(recordings_dir) = &options.recordings_dir {
            config.recordings_dir = recordings_dir.clone();
        }
        let recorder = RecorderPreflight {
            recordings_dir: config.recordings_dir.clone(),
            keys_dir: config.recording_keys_dir.clone(),
            // A small budget so that the free-space check does not depend on the disk.
            config: recorder::RecorderConfig {
                recording_byte_budget: 64 << 20,
                ..recorder::RecorderConfig::default()
            },
            s3: None,
            shared_keys: None,
        };
        let egress = Arc::new(egress::Registry::new());
        let service = build_service(
            &database,
            &audit,
            &clock,
            &launcher,
            &egress,
            &recorder,
            &config,
            &instance_id,
        );

        Harness {
            database,
            dir,
            instance_id,
            launcher: Some(launcher),
            clock,
            egress,
            audit,
            config,
            recorder,
            service,
            cleanup,
        }
    }

    pub fn launcher(&self) -> &ServedLauncher {
        self.launcher.as_ref().expect("launcher is running")
    }

    /// A second service on the same database, launcher and instance, as a restarted broker.
    pub fn restarted_service(&self) -> (SessionService, Arc<egress::Registry>) {
        let egress = Arc::new(egress::Registry::new());
        let service = build_service(
            &self.database,
            &self.audit,
            &self.clock,
            self.launcher(),
            &egress,
            &self.recorder,
            &self.config,
            &self.instance_id,
        );
        (service, egress)
    }

    /// The manual clock's time in Unix milliseconds.
    pub fn clock_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    pub async fn grant(&self, user_id: &str) {
        broker::sites::grant(&self.database.db, user_id, SITE, "user:test-admin", 0)
            .await
            .expect("grant the demo site");
    }

    pub async fn live_count(&self, user_id: &str) -> u32 {
        broker::sessions::store::count_live_for_user(&self.database.db, user_id)
            .await
            .unwrap()
    }

    /// Removes this instance's objects and fails when any remains.
    pub async fn finish(mut self) {
        if let Some(launcher) = self.launcher.take() {
            launcher.stop().await;
        }
        remove_instance_objects(&self.instance_id).await;
        assert_eq!(
            count_instance_objects(&self.instance_id).await,
            (0, 0),
            "objects of {} remain after cleanup",
            self.instance_id
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn build_service(
    database: &TestDatabase,
    audit: &AuditLog,
    clock: &Arc<ManualClock>,
    launcher: &ServedLauncher,
    egress: &Arc<egress::Registry>,
    recorder: &RecorderPreflight,
    config: &SessionsConfig,
    instance_id: &str,
) -> SessionService {
    SessionService::new(SessionDeps {
        db: database.db.clone(),
        audit: audit.clone(),
        clock: clock.clone(),
        launcher: launcher.client(),
        egress: egress.clone(),
        recorder: recorder.clone(),
        config: config.clone(),
        instance_id: instance_id.to_owned(),
    })
}

fn label_filter(instance_id: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![format!("{}={instance_id}", labels::INSTANCE)],
    )])
}

pub async fn remove_instance_objects(instance_id: &str) {
    let docker = docker();
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(label_filter(instance_id)),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    for container in containers {
        let id = container.id.unwrap_or_default();
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        if let Err(error) = docker.remove_container(&id, Some(options)).await {
            eprintln!("cleanup: removing container {id} failed: {error}");
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(label_filter(instance_id)),
        }))
        .await
        .unwrap_or_default();
    for network in networks {
        let id = network.id.unwrap_or_default();
        if let Err(error) = docker.remove_network(&id).await {
            eprintln!("cleanup: removing network {id} failed: {error}");
        }
    }
}

/// Containers (any state) and networks labelled with the instance id.
pub async fn count_instance_objects(instance_id: &str) -> (usize, usize) {
    let docker = docker();
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(label_filter(instance_id)),
            ..Default::default()
        }))
        .await
        .unwrap();
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(label_filter(instance_id)),
        }))
        .await
        .unwrap();
    (containers.len(), networks.len())
}

/// Running containers labelled with the instance id.
pub async fn running_containers(instance_id: &str) -> Vec<String> {
    let mut filters = label_filter(instance_id);
    filters.insert("status".to_owned(), vec!["running".to_owned()]);
    docker()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|container| container.id)
        .collect()
}

/// Waits, up to [`WAIT`], until `check` returns true.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
