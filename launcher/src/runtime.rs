//! The narrow container-runtime interface the launcher drives.
//!
//! Nothing here names Docker: a Kubernetes backend implements the same trait. Specs are
//! built by the launcher (see [`crate::spec`]); a runtime only translates them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::BoxStream;
use ipnet::Ipv4Net;

use crate::protocol::{SiteLimits, WorkloadState};

/// A per-session network with no route out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Ipv4Net,
    /// The host's address on the network.
    pub gateway: Ipv4Addr,
    /// Name of the bridge's host interface, which the host firewall matches by prefix.
    pub bridge_name: String,
    pub labels: BTreeMap<String, String>,
}

/// A hardened workspace container. The launcher sets every field. The runtime applies
/// them and adds the fixed hardening: no capabilities, no new privileges, read-only
/// root, no core dumps, no swap, init and no published ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceSpec {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// `NAME=value` pairs; never a secret.
    pub env: Vec<String>,
    /// Network to attach (the only one: API 1.41 attaches one network at create time).
    pub network: String,
    pub address: Ipv4Addr,
    pub limits: SiteLimits,
    /// `user:group`, numeric.
    pub user: String,
    /// Seccomp profile JSON text.
    pub seccomp_profile: Arc<str>,
    /// Mount point to tmpfs size in bytes.
    pub tmpfs: BTreeMap<String, u64>,
}

/// A created object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub id: String,
    pub name: String,
}

/// A container labelled with an instance id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedContainer {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub state: WorkloadState,
}

/// A network labelled with an instance id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedNetwork {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub subnet: Option<Ipv4Net>,
}

/// Every object of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedObjects {
    pub containers: Vec<OwnedContainer>,
    pub networks: Vec<OwnedNetwork>,
}

/// A container of the watched instance stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    pub container_id: String,
    pub labels: BTreeMap<String, String>,
    pub exit_code: Option<i64>,
}

/// A runtime failure, with the runtime's own message.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image `{tag}` is not present")]
    ImageMissing { tag: String },
    #[error("{what} was not found")]
    NotFound { what: String },
    #[error("subnet {subnet} overlaps a network that exists: {message}")]
    SubnetInUse { subnet: Ipv4Net, message: String },
    #[error("{operation} conflicts with an object that exists: {message}")]
    Conflict {
        operation: &'static str,
        message: String,
    },
    #[error("{operation} failed: {message}")]
    Failed {
        operation: &'static str,
        message: String,
    },
}

/// The operations the launcher needs from a container runtime.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Creates an internal network with no inter-container traffic.
    async fn create_session_network(&self, spec: &NetworkSpec) -> Result<ObjectRef, RuntimeError>;

    /// Creates and starts a workspace container. A container that was created but could
    /// not be started is removed before the error is returned.
    async fn create_workspace(&self, spec: &WorkspaceSpec) -> Result<ObjectRef, RuntimeError>;

    /// Stops a container: SIGTERM, then SIGKILL after `timeout`. A missing or stopped
    /// container is not an error.
    async fn stop_workspace(&self, container: &str, timeout: Duration) -> Result<(), RuntimeError>;

    /// Removes a container (forcibly). A missing container is not an error.
    async fn remove_workspace(&self, container: &str) -> Result<(), RuntimeError>;

    /// Removes a network. A missing network is not an error.
    async fn remove_network(&self, network: &str) -> Result<(), RuntimeError>;

    /// Lists containers (any state) and networks labelled with `instance_id`.
    async fn list_owned(&self, instance_id: &str) -> Result<OwnedObjects, RuntimeError>;

    /// Lists the subnets of every network in the runtime, including other owners' networks.
    async fn used_subnets(&self) -> Result<Vec<Ipv4Net>, RuntimeError>;

    /// Returns a container's state, or `None` when it does not exist.
    async fn workspace_state(&self, container: &str)
    -> Result<Option<WorkloadState>, RuntimeError>;

    /// Streams exits of containers labelled with `instance_id`, starting with exits
    /// recorded since `since` when given. The stream ends or yields an error when the
    /// runtime connection breaks; callers resubscribe with the time of the last event.
    fn watch_exits(
        &self,
        instance_id: &str,
        since: Option<SystemTime>,
    ) -> BoxStream<'static, Result<ExitEvent, RuntimeError>>;

    /// Returns whether an image with that tag is present (never pulls).
    async fn image_present(&self, tag: &str) -> Result<bool, RuntimeError>;

    /// Returns the creation time of the image with that tag as the engine reports it
    /// (RFC 3339), or `None` when the image is missing or the runtime cannot tell.
    async fn image_created(&self, tag: &str) -> Result<Option<String>, RuntimeError> {
        let _ = tag;
        Ok(None)
    }

    /// Returns the engine's version, proving that the engine answers.
    async fn engine_version(&self) -> Result<String, RuntimeError>;
}
