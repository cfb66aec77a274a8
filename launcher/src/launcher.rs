//! The launcher's core: launching, ending, listing and reconciling sessions over a
//! [`Runtime`], with the host capacity limit and subnet bookkeeping.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use ipnet::Ipv4Net;
use tracing::{Instrument as _, info_span};
use uuid::Uuid;

use crate::config::LauncherConfig;
use crate::labels;
use crate::protocol::{
    DeadSession, EndedSession, ErrorKind, HealthReport, LaunchSession, LaunchedSession,
    ReconcileReport, SessionInfo, WorkloadState,
};
use crate::reconcile::{self, Action};
use crate::runtime::{OwnedObjects, Runtime, RuntimeError};
use crate::spec::{self, InvalidLaunch, SessionAddresses};
use crate::subnet::pick_free_subnet;

/// Attempts at creating a session network when another process takes the chosen
/// subnet between the listing and the creation.
const SUBNET_ATTEMPTS: usize = 8;

/// Reason a launch failed. [`LaunchError::kind`] maps it to the wire [`ErrorKind`].
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Invalid(#[from] InvalidLaunch),
    #[error("site limits exceed the launcher's maximums: {}", over.join(", "))]
    LimitExceeded { over: Vec<String> },
    #[error(
        "the host runs its maximum of {max} sessions; end a session or raise launcher.max_sessions"
    )]
    CapacityExhausted { max: usize },
    #[error("session {session_id} is already running or being launched")]
    AlreadyExists { session_id: Uuid },
    #[error(
        "workspace image `{tag}` is not present in the Docker engine (images are never pulled); \
         remove launcher.image so that the newest image `strongroom image build` made is used, \
         or give a built image this name with `docker tag`"
    )]
    ImageMissing { tag: String },
    #[error("no free /{prefix_len} subnet is left in {range}; widen launcher.subnet_range")]
    SubnetsExhausted { range: Ipv4Net, prefix_len: u8 },
    #[error("container runtime failed: {0}")]
    Runtime(#[from] RuntimeError),
}

impl LaunchError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::InvalidRequest,
            Self::LimitExceeded { .. } => ErrorKind::LimitExceeded,
            Self::CapacityExhausted { .. } => ErrorKind::CapacityExhausted,
            Self::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Self::ImageMissing { .. } | Self::Runtime(RuntimeError::ImageMissing { .. }) => {
                ErrorKind::ImageMissing
            }
            Self::SubnetsExhausted { .. } => ErrorKind::SubnetsExhausted,
            Self::Runtime(_) => ErrorKind::Runtime,
        }
    }
}

/// Reason ending a session failed.
#[derive(Debug, thiserror::Error)]
pub enum EndError {
    #[error("session {session_id} is being launched; end it after the launch returns")]
    LaunchInProgress { session_id: Uuid },
    #[error("container runtime failed: {0}")]
    Runtime(#[from] RuntimeError),
}

impl EndError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::LaunchInProgress { .. } => ErrorKind::LaunchInProgress,
            Self::Runtime(_) => ErrorKind::Runtime,
        }
    }
}

/// A removal that failed and waits for the sweeper. Containers sort before networks,
/// because a network with endpoints cannot be removed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PendingRemoval {
    Container {
        name: String,
    },
    Network {
        name: String,
        session_id: Option<Uuid>,
    },
}

#[derive(Debug, Default)]
struct State {
    /// Sessions launched (or adopted at start) and not ended.
    sessions: HashSet<Uuid>,
    in_flight: HashSet<Uuid>,
    /// Subnets of launched and launching sessions, released when the network is removed.
    reserved_subnets: HashMap<Uuid, Ipv4Net>,
    pending: BTreeSet<PendingRemoval>,
}

struct Inner {
    config: LauncherConfig,
    runtime: Arc<dyn Runtime>,
    seccomp_profile: Arc<str>,
    state: Mutex<State>,
    /// Serialises "list used subnets, choose one, reserve it" across launches.
    allocation: tokio::sync::Mutex<()>,
    /// Workspace exits from the engine's event stream, for `WatchExits` connections.
    exits: tokio::sync::broadcast::Sender<crate::protocol::WorkspaceExit>,
}

/// Exits buffered per watching connection before the slowest one loses the oldest.
const EXIT_BUFFER: usize = 256;

/// The launcher. Cloning is cheap and shares the state.
#[derive(Clone)]
pub struct Launcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher")
            .field("instance_id", &self.inner.config.instance_id)
            .finish_non_exhaustive()
    }
}

/// Removes a session from the in-flight set when its launch ends, and releases its
/// subnet unless the launch was committed.
struct InFlightGuard<'a> {
    launcher: &'a Launcher,
    session_id: Uuid,
    committed: bool,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.launcher.state();
        state.in_flight.remove(&self.session_id);
        if !self.committed {
            state.reserved_subnets.remove(&self.session_id);
        }
    }
}

impl Launcher {
    /// Validates the configuration and reads the seccomp profile.
    pub fn new(config: LauncherConfig, runtime: Arc<dyn Runtime>) -> anyhow::Result<Self> {
        if let Err(problems) = config.validate() {
            let text: Vec<_> = problems.iter().map(ToString::to_string).collect();
            anyhow::bail!("{}", text.join("\n"));
        }
        let seccomp_profile = load_seccomp_profile(&config.seccomp_profile)?;

        Ok(Self {
            inner: Arc::new(Inner {
                config,
                runtime,
                seccomp_profile,
                state: Mutex::new(State::default()),
                allocation: tokio::sync::Mutex::new(()),
                exits: tokio::sync::broadcast::channel(EXIT_BUFFER).0,
            }),
        })
    }

    /// Sends a workspace exit to every `WatchExits` connection.
    pub fn publish_exit(&self, exit: crate::protocol::WorkspaceExit) {
        // Without a watching broker there is no receiver, and the exit is dropped: the
        // broker's periodic reconciliation still finds the dead workspace.
        drop(self.inner.exits.send(exit));
    }

    /// Subscribes to the workspace exits published from now on.
    pub fn subscribe_exits(
        &self,
    ) -> tokio::sync::broadcast::Receiver<crate::protocol::WorkspaceExit> {
        self.inner.exits.subscribe()
    }

    pub fn config(&self) -> &LauncherConfig {
        &self.inner.config
    }

    pub(crate) fn runtime(&self) -> &dyn Runtime {
        self.inner.runtime.as_ref()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only plain collections behind, which
        // stay consistent enough to keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of sessions launched or being launched, as counted against `max_sessions`.
    /// Checks the engine and the workspace image.
    pub async fn health(&self) -> HealthReport {
        let image = self.inner.config.image.clone();
        let sessions = self.session_count();
        let max_sessions = self.inner.config.max_sessions;
        match self.inner.runtime.engine_version().await {
            Ok(version) => {
                let image_present = self.inner.runtime.image_present(&image).await.ok();
                let image_created = match image_present {
                    Some(true) => self
                        .inner
                        .runtime
                        .image_created(&image)
                        .await
                        .ok()
                        .flatten(),
                    _ => None,
                };
                HealthReport {
                    engine_version: Some(version),
                    engine_error: None,
                    image,
                    image_present,
                    image_created,
                    sessions,
                    max_sessions,
                }
            }
            Err(error) => HealthReport {
                engine_version: None,
                engine_error: Some(error.to_string()),
                image,
                image_present: None,
                image_created: None,
                sessions,
                max_sessions,
            },
        }
    }

    pub fn session_count(&self) -> usize {
        let state = self.state();
        state.sessions.len() + state.in_flight.len()
    }

    /// Removals waiting for the sweeper.
    pub fn pending_removals(&self) -> Vec<PendingRemoval> {
        self.state().pending.iter().cloned().collect()
    }

    /// Takes over this instance's objects that exist at start, so that they count
    /// against capacity and keep their subnets reserved.
    pub async fn adopt_existing(&self) -> Result<usize, RuntimeError> {
        let objects = self
            .runtime()
            .list_owned(&self.inner.config.instance_id)
            .await?;
        let subnets: HashMap<Uuid, Ipv4Net> = objects
            .networks
            .iter()
            .filter_map(|network| Some((session_label(&network.labels)?, network.subnet?)))
            .collect();

        let mut state = self.state();
        for container in &objects.containers {
            if let Some(session_id) = session_label(&container.labels) {
                state.sessions.insert(session_id);
            }
        }
        state.reserved_subnets.extend(subnets);
        let adopted = state.sessions.len();
        drop(state);

        tracing::info!(instance.id = %self.inner.config.instance_id, sessions = adopted, "Adopted existing workspaces");
        Ok(adopted)
    }

    /// Launches a workspace for one session: its network, then its hardened container.
    pub async fn launch(&self, request: &LaunchSession) -> Result<LaunchedSession, LaunchError> {
        let span = info_span!("launch", session.id = %request.session_id, site = %request.site);
        self.launch_inner(request).instrument(span).await
    }

    async fn launch_inner(&self, request: &LaunchSession) -> Result<LaunchedSession, LaunchError> {
        spec::validate_fields(request)?;
        let mut over = request.limits.exceeded(&self.inner.config.max_limits);
        if let Some(downloads) = request.downloads {
            let room = self.inner.config.downloads_size_bytes;
            if downloads.max_file_bytes > room {
                over.push(format!(
                    "downloads.max_file_bytes {} > downloads_size_bytes {room}",
                    downloads.max_file_bytes
                ));
            }
        }
        if !over.is_empty() {
            return Err(LaunchError::LimitExceeded { over });
        }

        let mut guard = self.reserve_slot(request.session_id)?;

        let image = &self.inner.config.image;
        if !self.runtime().image_present(image).await? {
            return Err(LaunchError::ImageMissing { tag: image.clone() });
        }
        self.remove_stale_objects(request.session_id).await?;

        let created = Utc::now();
        let labels = spec::session_labels(&self.inner.config, request, created);
        let (addresses, network) = self.create_network(request.session_id, &labels).await?;

        let workspace = spec::workspace_spec(
            &self.inner.config,
            self.inner.seccomp_profile.clone(),
            request,
            addresses,
            labels,
        );
        let container = match self.runtime().create_workspace(&workspace).await {
            Ok(container) => container,
            Err(error) => {
                tracing::warn!(error = %error, network.name = %network.name, "Workspace creation failed; removing its network");
                self.remove_network_or_queue(&network.name, Some(request.session_id))
                    .await;
                return Err(match error {
                    RuntimeError::ImageMissing { tag } => LaunchError::ImageMissing { tag },
                    other => LaunchError::Runtime(other),
                });
            }
        };

        self.state().sessions.insert(request.session_id);
        guard.committed = true;
        tracing::info!(
            container.id = %container.id,
            network.name = %network.name,
            subnet = %addresses.subnet,
            "Launched workspace"
        );

        Ok(LaunchedSession {
            session_id: request.session_id,
            container_id: container.id,
            container_name: container.name,
            network_id: network.id,
            network_name: network.name,
            subnet: addresses.subnet,
            gateway: addresses.gateway,
            workspace_address: addresses.workspace,
            proxy_address: SocketAddrV4::new(addresses.gateway, request.egress_proxy_port),
        })
    }

    fn reserve_slot(&self, session_id: Uuid) -> Result<InFlightGuard<'_>, LaunchError> {
        let mut state = self.state();
        if state.sessions.contains(&session_id) || state.in_flight.contains(&session_id) {
            return Err(LaunchError::AlreadyExists { session_id });
        }
        let max = self.inner.config.max_sessions;
        if state.sessions.len() + state.in_flight.len() >= max {
            return Err(LaunchError::CapacityExhausted { max });
        }
        state.in_flight.insert(session_id);
        Ok(InFlightGuard {
            launcher: self,
            session_id,
            committed: false,
        })
    }

    /// Removes objects left by an earlier attempt at the same session (for instance
    /// when the launcher crashed mid-launch), so the fixed names do not conflict.
    async fn remove_stale_objects(&self, session_id: Uuid) -> Result<(), RuntimeError> {
        let objects = self
            .runtime()
            .list_owned(&self.inner.config.instance_id)
            .await?;
        let of_session =
            |labels: &BTreeMap<String, String>| session_label(labels) == Some(session_id);

        for container in objects.containers.iter().filter(|c| of_session(&c.labels)) {
            tracing::warn!(container.name = %container.name, "Removing a stale workspace of the same session");
            self.runtime().remove_workspace(&container.id).await?;
        }
        for network in objects.networks.iter().filter(|n| of_session(&n.labels)) {
            tracing::warn!(network.name = %network.name, "Removing a stale network of the same session");
            self.runtime().remove_network(&network.id).await?;
        }
        Ok(())
    }

    /// Chooses a free subnet and creates the session network on it, retrying with
    /// another subnet when a concurrent creator took the first one.
    async fn create_network(
        &self,
        session_id: Uuid,
        labels: &BTreeMap<String, String>,
    ) -> Result<(SessionAddresses, crate::runtime::ObjectRef), LaunchError> {
        let config = &self.inner.config;
        let mut rejected: Vec<Ipv4Net> = Vec::new();

        for _ in 0..SUBNET_ATTEMPTS {
            let subnet = {
                let _allocation = self.inner.allocation.lock().await;
                let mut used = self.runtime().used_subnets().await?;
                let mut state = self.state();
                used.extend(state.reserved_subnets.values().copied());
                used.extend(rejected.iter().copied());
                let subnet = pick_free_subnet(config.subnet_range, config.subnet_prefix_len, &used)
                    .ok_or(LaunchError::SubnetsExhausted {
                        range: config.subnet_range,
                        prefix_len: config.subnet_prefix_len,
                    })?;
                state.reserved_subnets.insert(session_id, subnet);
                subnet
            };

            let addresses = SessionAddresses::for_subnet(subnet);
            let network_spec = spec::network_spec(config, addresses, session_id, labels.clone());
            match self.runtime().create_session_network(&network_spec).await {
                Ok(network) => return Ok((addresses, network)),
                Err(RuntimeError::SubnetInUse { subnet, message }) => {
                    tracing::warn!(%subnet, message = %message, "Subnet was taken concurrently; choosing another");
                    self.state().reserved_subnets.remove(&session_id);
                    rejected.push(subnet);
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(LaunchError::SubnetsExhausted {
            range: config.subnet_range,
            prefix_len: config.subnet_prefix_len,
        })
    }

    /// Ends a session: stops and removes its container, then removes its network. A
    /// failed removal is queued for the sweeper and reported as `removal_pending`.
    pub async fn end(&self, session_id: Uuid, reason: &str) -> Result<EndedSession, EndError> {
        let span = info_span!("end", session.id = %session_id);
        async {
            if self.state().in_flight.contains(&session_id) {
                return Err(EndError::LaunchInProgress { session_id });
            }
            let container = spec::container_name(session_id);
            let network = spec::network_name(session_id);
            let recorded = self.state().sessions.remove(&session_id);
            let exists = self.runtime().workspace_state(&container).await?.is_some();

            if let Err(error) = self.runtime().stop_workspace(&container, self.stop_timeout()).await {
                tracing::warn!(error = %error, "Stopping the workspace failed; removing it by force");
            }
            let mut removal_pending = !self.remove_container_or_queue(&container).await;
            if removal_pending {
                self.queue(PendingRemoval::Network { name: network, session_id: Some(session_id) });
            } else {
                removal_pending = !self.remove_network_or_queue(&network, Some(session_id)).await;
            }

            tracing::info!(reason = %reason, removal_pending, "Ended session");
            Ok(EndedSession { session_id, found: recorded || exists, removal_pending })
        }
        .instrument(span)
        .await
    }

    fn stop_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.inner.config.stop_timeout_secs))
    }

    /// Lists every session of this instance as the runtime reports it.
    pub async fn list(&self) -> Result<Vec<SessionInfo>, RuntimeError> {
        let objects = self
            .runtime()
            .list_owned(&self.inner.config.instance_id)
            .await?;
        Ok(sessions_from_objects(&objects))
    }

    /// Removes this instance's objects whose session is neither live nor being launched,
    /// and reports live sessions whose workspace is dead.
    pub async fn reconcile(&self, live: &HashSet<Uuid>) -> Result<ReconcileReport, RuntimeError> {
        let instance_id = &self.inner.config.instance_id;
        let objects = self.runtime().list_owned(instance_id).await?;
        let in_flight = self.state().in_flight.clone();
        let plan = reconcile::plan(&objects, instance_id, live, &in_flight);

        let mut report = ReconcileReport {
            skipped_in_flight: plan.skipped_in_flight,
            ..Default::default()
        };
        for action in plan.actions {
            self.execute(action, &mut report).await;
        }
        if !report.removed_containers.is_empty()
            || !report.removed_networks.is_empty()
            || !report.dead_sessions.is_empty()
        {
            tracing::info!(
                removed_containers = report.removed_containers.len(),
                removed_networks = report.removed_networks.len(),
                dead_sessions = report.dead_sessions.len(),
                failures = report.failures.len(),
                "Reconciled workspaces"
            );
        }
        Ok(report)
    }

    async fn execute(&self, action: Action, report: &mut ReconcileReport) {
        match action {
            Action::RemoveContainer {
                session_id,
                id,
                name,
            } => {
                tracing::warn!(container.name = %name, session.id = session_id.map(|id| id.to_string()), "Removing an orphan workspace");
                if let Some(session_id) = session_id {
                    self.state().sessions.remove(&session_id);
                }
                if self.remove_container_or_queue(&id).await {
                    report.removed_containers.push(name);
                } else {
                    report.failures.push(format!("container {name}"));
                }
            }
            Action::RemoveNetwork {
                session_id,
                id,
                name,
            } => {
                tracing::warn!(network.name = %name, session.id = session_id.map(|id| id.to_string()), "Removing an orphan network");
                if self.remove_network_or_queue(&id, session_id).await {
                    report.removed_networks.push(name);
                } else {
                    report.failures.push(format!("network {name}"));
                }
            }
            Action::ReportDead { session_id, state } => {
                let reason = reconcile::dead_reason(&state);
                tracing::warn!(session.id = %session_id, reason = %reason, "Live session has a dead workspace");
                report.dead_sessions.push(DeadSession {
                    session_id,
                    state,
                    reason,
                });
            }
        }
    }

    /// Retries every queued removal once; returns how many are still pending.
    pub async fn sweep(&self) -> usize {
        let pending: Vec<_> = std::mem::take(&mut self.state().pending)
            .into_iter()
            .collect();
        for removal in pending {
            match removal {
                PendingRemoval::Container { name } => {
                    self.remove_container_or_queue(&name).await;
                }
                PendingRemoval::Network { name, session_id } => {
                    self.remove_network_or_queue(&name, session_id).await;
                }
            }
        }
        self.state().pending.len()
    }

    fn queue(&self, removal: PendingRemoval) {
        self.state().pending.insert(removal);
    }

    /// Returns true when the container is gone; otherwise logs and queues the removal.
    async fn remove_container_or_queue(&self, container: &str) -> bool {
        match self.runtime().remove_workspace(container).await {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(container.name = %container, error = %error, "Removing a workspace failed; the sweeper will retry");
                self.queue(PendingRemoval::Container {
                    name: container.to_owned(),
                });
                false
            }
        }
    }

    /// Returns true when the network is gone (and releases its subnet); otherwise logs
    /// and queues the removal.
    async fn remove_network_or_queue(&self, network: &str, session_id: Option<Uuid>) -> bool {
        match self.runtime().remove_network(network).await {
            Ok(()) => {
                if let Some(session_id) = session_id {
                    self.state().reserved_subnets.remove(&session_id);
                }
                true
            }
            Err(error) => {
                tracing::error!(network.name = %network, error = %error, "Removing a network failed; the sweeper will retry");
                self.queue(PendingRemoval::Network {
                    name: network.to_owned(),
                    session_id,
                });
                false
            }
        }
    }
}

fn session_label(labels: &BTreeMap<String, String>) -> Option<Uuid> {
    labels::session_of(labels)
}

/// Groups a listing into one entry per session; sessions with only a network are
/// reported as [`WorkloadState::Missing`].
pub fn sessions_from_objects(objects: &OwnedObjects) -> Vec<SessionInfo> {
    let mut sessions: BTreeMap<Uuid, SessionInfo> = BTreeMap::new();
    let info = |labels: &BTreeMap<String, String>, session_id: Uuid| SessionInfo {
        session_id,
        owner: labels.get(labels::OWNER).cloned().unwrap_or_default(),
        site: labels.get(labels::SITE).cloned().unwrap_or_default(),
        created: labels
            .get(labels::CREATED)
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|time| time.with_timezone(&Utc)),
        container_name: None,
        state: WorkloadState::Missing,
        subnet: None,
    };

    for container in &objects.containers {
        let Some(session_id) = session_label(&container.labels) else {
            continue;
        };
        let entry = sessions
            .entry(session_id)
            .or_insert_with(|| info(&container.labels, session_id));
        entry.container_name = Some(container.name.clone());
        entry.state = container.state.clone();
    }
    for network in &objects.networks {
        let Some(session_id) = session_label(&network.labels) else {
            continue;
        };
        let entry = sessions
            .entry(session_id)
            .or_insert_with(|| info(&network.labels, session_id));
        entry.subnet = network.subnet;
    }
    sessions.into_values().collect()
}

/// Reads the seccomp profile and checks that it is a JSON object with a `defaultAction`.
pub fn load_seccomp_profile(path: &std::path::Path) -> anyhow::Result<Arc<str>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "failed to read the seccomp profile {} (launcher.seccomp_profile)",
            path.display()
        )
    })?;
    let profile: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("seccomp profile {} is not valid JSON", path.display()))?;
    if profile
        .get("defaultAction")
        .and_then(serde_json::Value::as_str)
        .is_none()
    {
        anyhow::bail!(
            "seccomp profile {} has no `defaultAction`; it is not a Docker seccomp profile",
            path.display()
        );
    }
    // Docker receives the profile inline; compact JSON keeps `docker inspect` readable.
    Ok(Arc::from(profile.to_string()))
}
