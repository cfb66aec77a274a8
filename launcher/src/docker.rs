//! [`Runtime`] over the Docker Engine API through bollard.
//!
//! bollard 0.21.1 builds its URL with `Url::join`, which drops the `/vX.Y` prefix, so
//! the engine would treat every request as its own current API version. A request
//! modifier puts the configured prefix back on every request path.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, EndpointIpamConfig,
    EndpointSettings, HostConfig, Ipam, IpamConfig, NetworkCreateRequest, NetworkingConfig,
    ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, ListNetworksOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use ipnet::Ipv4Net;

use crate::labels;
use crate::protocol::WorkloadState;
use crate::runtime::{
    ExitEvent, NetworkSpec, ObjectRef, OwnedContainer, OwnedNetwork, OwnedObjects, Runtime,
    RuntimeError, WorkspaceSpec,
};

/// Docker's bridge driver option that blocks traffic between containers on a network.
const ENABLE_ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";

/// The only DNS server a workspace's embedded resolver forwards to: the container's own
/// loopback, where nothing listens.
pub const WORKSPACE_DNS_SERVER: &str = "127.0.0.1";

/// Docker's bridge driver option that names the host interface.
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// The Docker engine, reached over its Unix socket.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime").finish_non_exhaustive()
    }
}

impl DockerRuntime {
    /// Connects to the engine at `socket` and pins every request to `api_version`
    /// (e.g. `1.41`). Connecting is lazy: the first request reports an unreachable socket.
    pub fn connect(socket: &Path, api_version: &str, timeout: Duration) -> anyhow::Result<Self> {
        let socket = socket.to_str().ok_or_else(|| {
            anyhow::anyhow!("Docker socket path {} is not UTF-8", socket.display())
        })?;
        let prefix = format!("/v{api_version}");

        let docker =
            Docker::connect_with_unix(socket, timeout.as_secs(), bollard::API_DEFAULT_VERSION)?
                .with_request_modifier(move |request| with_version_prefix(request, &prefix));
        Ok(Self { docker })
    }

    /// The bollard client, with the version prefix in place.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Lists containers in any state that carry the `label` filter value `KEY=VALUE`.
    async fn list_containers(&self, label: &str) -> Result<Vec<OwnedContainer>, RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filter(label.to_owned())),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(failed("list containers"))?;
        Ok(summaries
            .into_iter()
            .map(|summary| OwnedContainer {
                id: summary.id.unwrap_or_default(),
                name: summary
                    .names
                    .and_then(|names| names.into_iter().next())
                    .map(|name| name.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                state: summary_state(summary.state, summary.status.as_deref()),
                labels: summary.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect())
    }

    /// Lists networks that carry the `label` filter value `KEY=VALUE`.
    async fn list_networks(&self, label: &str) -> Result<Vec<OwnedNetwork>, RuntimeError> {
        let options = ListNetworksOptions {
            filters: Some(label_filter(label.to_owned())),
        };
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(failed("list networks"))?;
        Ok(networks
            .into_iter()
            .map(|network| OwnedNetwork {
                subnet: network_subnets(network.ipam.as_ref()).into_iter().next(),
                id: network.id.unwrap_or_default(),
                name: network.name.unwrap_or_default(),
                labels: network.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect())
    }
}

/// Replaces any `/vX.Y` prefix of the request path with `prefix`, or adds it.
pub fn with_version_prefix(
    mut request: bollard::BollardRequest,
    prefix: &str,
) -> bollard::BollardRequest {
    let uri = request.uri().clone();
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let unversioned = strip_version_prefix(path_and_query);
    let rewritten = format!("{prefix}{unversioned}");

    let mut parts = uri.into_parts();
    match rewritten.parse() {
        Ok(path_and_query) => parts.path_and_query = Some(path_and_query),
        Err(error) => {
            tracing::error!(%error, path = %rewritten, "Docker request path is invalid after adding the API version");
            return request;
        }
    }
    match http::Uri::from_parts(parts) {
        Ok(uri) => *request.uri_mut() = uri,
        Err(error) => {
            tracing::error!(%error, "Docker request URI is invalid after adding the API version")
        }
    }
    request
}

fn strip_version_prefix(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let version_len = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..version_len];
    let is_version = version.split_once('.').is_some_and(|(major, minor)| {
        !major.is_empty()
            && !minor.is_empty()
            && major.bytes().all(|b| b.is_ascii_digit())
            && minor.bytes().all(|b| b.is_ascii_digit())
    });
    if is_version {
        &rest[version_len..]
    } else {
        path
    }
}

fn failed(operation: &'static str) -> impl FnOnce(BollardError) -> RuntimeError {
    move |error| match error {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound { what: message },
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => RuntimeError::Conflict { operation, message },
        other => RuntimeError::Failed {
            operation,
            message: other.to_string(),
        },
    }
}

fn is_not_found(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn to_hash_map(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn label_filter(label: String) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![label])])
}

/// Converts a byte count to the `i64` Docker expects, saturating.
fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Builds the Docker container body for a workspace: the spec plus the fixed hardening.
pub fn container_body(spec: &WorkspaceSpec) -> ContainerCreateBody {
    let tmpfs = spec
        .tmpfs
        .iter()
        .map(|(path, size)| {
            // The home and download directories must belong to the workspace user,
            // or Chromium cannot write its cache and the downloads there.
            let owner = if path == crate::spec::WORKSPACE_HOME
                || path == crate::spec::WORKSPACE_DOWNLOADS
            {
                ",uid=1000,gid=1000,mode=0700"
            } else {
                ""
            };
            (
                path.clone(),
                format!("rw,nosuid,nodev,noexec,size={size}{owner}"),
            )
        })
        .collect();

    let host_config = HostConfig {
        network_mode: Some(spec.network.clone()),
        cap_drop: Some(vec!["ALL".to_owned()]),
        cap_add: None,
        privileged: Some(false),
        security_opt: Some(vec![
            "no-new-privileges".to_owned(),
            format!("seccomp={}", spec.seccomp_profile),
        ]),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        shm_size: Some(as_i64(spec.limits.shm_bytes)),
        memory: Some(as_i64(spec.limits.memory_bytes)),
        memory_swap: Some(as_i64(spec.limits.memory_bytes)),
        memory_swappiness: Some(0),
        nano_cpus: Some(as_i64(spec.limits.nano_cpus)),
        pids_limit: Some(i64::from(spec.limits.pids)),
        ulimits: Some(vec![ResourcesUlimits {
            name: Some("core".to_owned()),
            soft: Some(0),
            hard: Some(0),
        }]),
        init: Some(true),
        // Docker's embedded resolver forwards names it does not know to these servers
        // from inside the container's network namespace, where nothing listens on
        // 127.0.0.1. Without this setting it forwards to the host's servers, and from the
        // host's own namespace when those are on loopback in Docker releases without the
        // fix for CVE-2024-29018, such as 20.10, so a workspace could resolve and leak
        // names. Chromium resolves nothing itself: every name goes to the egress proxy.
        dns: Some(vec![WORKSPACE_DNS_SERVER.to_owned()]),
        publish_all_ports: Some(false),
        port_bindings: None,
        binds: None,
        mounts: None,
        auto_remove: Some(false),
        ..HostConfig::default()
    };

    let endpoint = EndpointSettings {
        ipam_config: Some(EndpointIpamConfig {
            ipv4_address: Some(spec.address.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };

    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(spec.user.clone()),
        env: Some(spec.env.clone()),
        labels: Some(to_hash_map(&spec.labels)),
        hostname: Some("workspace".to_owned()),
        network_disabled: Some(false),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(spec.network.clone(), endpoint)])),
        }),
        ..Default::default()
    }
}

fn summary_state(state: Option<ContainerSummaryStateEnum>, status: Option<&str>) -> WorkloadState {
    match state {
        Some(ContainerSummaryStateEnum::CREATED) => WorkloadState::Created,
        Some(ContainerSummaryStateEnum::RUNNING) => WorkloadState::Running,
        Some(ContainerSummaryStateEnum::PAUSED) => WorkloadState::Paused,
        Some(ContainerSummaryStateEnum::RESTARTING) => WorkloadState::Restarting,
        Some(ContainerSummaryStateEnum::DEAD) => WorkloadState::Dead,
        // The list endpoint gives the exit code only inside its status text:
        // "Exited (137) 3 seconds ago".
        Some(ContainerSummaryStateEnum::EXITED) => WorkloadState::Exited {
            exit_code: status.and_then(exit_code_from_status).unwrap_or(-1),
            oom_killed: false,
        },
        other => WorkloadState::Other {
            name: format!("{other:?}").to_lowercase(),
        },
    }
}

fn exit_code_from_status(status: &str) -> Option<i64> {
    let start = status.find('(')? + 1;
    let end = start + status[start..].find(')')?;
    status[start..end].parse().ok()
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn create_session_network(&self, spec: &NetworkSpec) -> Result<ObjectRef, RuntimeError> {
        let request = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("bridge".to_owned()),
            internal: Some(true),
            attachable: Some(false),
            enable_ipv6: Some(false),
            ipam: Some(Ipam {
                driver: Some("default".to_owned()),
                config: Some(vec![IpamConfig {
                    subnet: Some(spec.subnet.to_string()),
                    gateway: Some(spec.gateway.to_string()),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: Some(HashMap::from([
                (ENABLE_ICC_OPTION.to_owned(), "false".to_owned()),
                (BRIDGE_NAME_OPTION.to_owned(), spec.bridge_name.clone()),
            ])),
            labels: Some(to_hash_map(&spec.labels)),
            ..Default::default()
        };

        match self.docker.create_network(request).await {
            Ok(created) => Ok(ObjectRef {
                id: created.id,
                name: spec.name.clone(),
            }),
            // Docker 20.10 rejects an overlapping pool with 403 "Pool overlaps with other
            // one on this address space".
            Err(BollardError::DockerResponseServerError { message, .. })
                if message.contains("overlaps") =>
            {
                Err(RuntimeError::SubnetInUse {
                    subnet: spec.subnet,
                    message,
                })
            }
            Err(error) => Err(failed("create network")(error)),
        }
    }

    async fn create_workspace(&self, spec: &WorkspaceSpec) -> Result<ObjectRef, RuntimeError> {
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            platform: String::new(),
        };
        let created = match self
            .docker
            .create_container(Some(options), container_body(spec))
            .await
        {
            Ok(created) => created,
            Err(error) if is_not_found(&error) => {
                return Err(RuntimeError::ImageMissing {
                    tag: spec.image.clone(),
                });
            }
            Err(error) => return Err(failed("create container")(error)),
        };
        for warning in &created.warnings {
            tracing::warn!(container.name = %spec.name, warning = %warning, "Docker warned while creating a workspace");
        }

        if let Err(error) = self.docker.start_container(&created.id, None).await {
            let error = failed("start container")(error);
            if let Err(remove_error) = self.remove_workspace(&created.id).await {
                tracing::error!(container.id = %created.id, error = %remove_error, "Failed to remove a workspace that did not start");
            }
            return Err(error);
        }
        Ok(ObjectRef {
            id: created.id,
            name: spec.name.clone(),
        })
    }

    async fn stop_workspace(&self, container: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptions {
            signal: None,
            t: Some(seconds),
        };
        match self.docker.stop_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(error) => Err(failed("stop container")(error)),
        }
    }

    async fn remove_workspace(&self, container: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            // "removal of container … is already in progress" is a success for the caller.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(error) => Err(failed("remove container")(error)),
        }
    }

    async fn remove_network(&self, network: &str) -> Result<(), RuntimeError> {
        match self.docker.remove_network(network).await {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(failed("remove network")(error)),
        }
    }

    async fn list_owned(&self, instance_id: &str) -> Result<OwnedObjects, RuntimeError> {
        let mut containers: Vec<OwnedContainer> = Vec::new();
        let mut networks: Vec<OwnedNetwork> = Vec::new();
        // One listing per label form; an object carrying both appears in both.
        for filter in labels::instance_filters(instance_id) {
            for container in self.list_containers(&filter).await? {
                if !containers.iter().any(|known| known.id == container.id) {
                    containers.push(container);
                }
            }
            for network in self.list_networks(&filter).await? {
                if !networks.iter().any(|known| known.id == network.id) {
                    networks.push(network);
                }
            }
        }
        Ok(OwnedObjects {
            containers,
            networks,
        })
    }

    async fn used_subnets(&self) -> Result<Vec<Ipv4Net>, RuntimeError> {
        let networks = self
            .docker
            .list_networks(None)
            .await
            .map_err(failed("list networks"))?;
        Ok(networks
            .iter()
            .flat_map(|network| network_subnets(network.ipam.as_ref()))
            .collect())
    }

    async fn workspace_state(
        &self,
        container: &str,
    ) -> Result<Option<WorkloadState>, RuntimeError> {
        let inspected = match self.docker.inspect_container(container, None).await {
            Ok(inspected) => inspected,
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => return Err(failed("inspect container")(error)),
        };
        let state = inspected.state.unwrap_or_default();
        let workload = match state.status {
            Some(ContainerStateStatusEnum::CREATED) => WorkloadState::Created,
            Some(ContainerStateStatusEnum::RUNNING) => WorkloadState::Running,
            Some(ContainerStateStatusEnum::PAUSED) => WorkloadState::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => WorkloadState::Restarting,
            Some(ContainerStateStatusEnum::DEAD) => WorkloadState::Dead,
            Some(ContainerStateStatusEnum::EXITED) => WorkloadState::Exited {
                exit_code: state.exit_code.unwrap_or(-1),
                oom_killed: state.oom_killed.unwrap_or(false),
            },
            other => WorkloadState::Other {
                name: format!("{other:?}").to_lowercase(),
            },
        };
        Ok(Some(workload))
    }

    fn watch_exits(
        &self,
        instance_id: &str,
        since: Option<SystemTime>,
    ) -> BoxStream<'static, Result<ExitEvent, RuntimeError>> {
        // Only the current label form: an upgrade's restart ends every session of the
        // previous process and removes the legacy-labelled workspaces.
        let mut filters = label_filter(format!("{}={instance_id}", labels::INSTANCE));
        filters.insert("type".to_owned(), vec!["container".to_owned()]);
        filters.insert("event".to_owned(), vec!["die".to_owned()]);
        // The engine takes Unix seconds with an optional fraction.
        let since = since
            .and_then(|time| time.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|elapsed| format!("{}.{:09}", elapsed.as_secs(), elapsed.subsec_nanos()));
        let options = EventsOptions {
            since,
            until: None,
            filters: Some(filters),
        };

        self.docker
            .events(Some(options))
            .map(|event| {
                let event = event.map_err(failed("watch events"))?;
                let actor = event.actor.unwrap_or_default();
                let attributes = actor.attributes.unwrap_or_default();
                // Docker puts the container's labels and `exitCode` into the attributes.
                let exit_code = attributes
                    .get("exitCode")
                    .and_then(|code| code.parse().ok());
                Ok(ExitEvent {
                    container_id: actor.id.unwrap_or_default(),
                    exit_code,
                    labels: attributes.into_iter().collect(),
                })
            })
            .boxed()
    }

    async fn engine_version(&self) -> Result<String, RuntimeError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(failed("read engine version"))?;
        Ok(format!(
            "{} (API {})",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        ))
    }

    async fn image_present(&self, tag: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(tag).await {
            Ok(_) => Ok(true),
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) => Err(failed("inspect image")(error)),
        }
    }

    async fn image_created(&self, tag: &str) -> Result<Option<String>, RuntimeError> {
        match self.docker.inspect_image(tag).await {
            Ok(image) => Ok(image.created),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(failed("inspect image")(error)),
        }
    }
}

fn network_subnets(ipam: Option<&Ipam>) -> Vec<Ipv4Net> {
    ipam.and_then(|ipam| ipam.config.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|config| config.subnet.as_deref())
        .filter_map(|subnet| subnet.parse::<Ipv4Net>().ok())
        .collect()
}

/// Returns the first host address of a subnet, used as its gateway.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefix_is_added_to_unversioned_path() {
        assert_eq!(
            strip_version_prefix("/containers/json?all=true"),
            "/containers/json?all=true"
        );
        let request = http::Request::builder()
            .uri("unix://2f7661722f72756e/containers/json?all=true")
            .body(bollard::body_full(bytes::Bytes::new()))
            .unwrap();
        let request = with_version_prefix(request, "/v1.41");
        assert_eq!(request.uri().path(), "/v1.41/containers/json");
        assert_eq!(request.uri().query(), Some("all=true"));
        assert_eq!(request.uri().host(), Some("2f7661722f72756e"));
    }

    #[test]
    fn version_prefix_replaces_existing_version() {
        assert_eq!(strip_version_prefix("/v1.53/networks"), "/networks");
        assert_eq!(strip_version_prefix("/volumes"), "/volumes");
        assert_eq!(strip_version_prefix("/v1.x/networks"), "/v1.x/networks");
    }

    #[test]
    fn exit_code_is_read_from_status_text() {
        assert_eq!(
            exit_code_from_status("Exited (137) 3 seconds ago"),
            Some(137)
        );
        assert_eq!(exit_code_from_status("Up 2 minutes"), None);
    }

    #[test]
    fn gateway_is_first_host() {
        assert_eq!(
            gateway_of("172.21.0.16/28".parse().unwrap()),
            Ipv4Addr::new(172, 21, 0, 17)
        );
    }
}

#[cfg(test)]
mod bridge_name_tests {
    use crate::spec::bridge_name;

    #[test]
    fn bridge_name_fits_interface_limit() {
        let network = "strongroom-s-0f8fad5b-d9cb-469f-a165-70867728950e";
        let name = bridge_name("srs-", network);
        assert_eq!(name, "srs-0867728950e");

        let longest = bridge_name("srt1a2-", network);
        assert_eq!(longest, "srt1a2-7728950e");
        assert_eq!(longest.len(), 15);
    }
}
