//! Strongroom's launcher: the only process with access to the Docker socket.
//!
//! The broker sends typed requests over a Unix socket ([`LauncherClient`]); the launcher
//! validates them against its own configuration and builds every network and container
//! spec itself, so no request can ask for a privileged container, a host mount, an extra
//! capability or another image. The container runtime sits behind [`Runtime`];
//! [`DockerRuntime`] implements it over the Docker Engine API.

pub mod ca_certs;
pub mod client;
pub mod config;
pub mod docker;
pub mod labels;
pub mod launcher;
pub mod protocol;
pub mod reconcile;
pub mod runtime;
pub mod server;
pub mod spec;
pub mod subnet;

pub use client::{ClientError, LauncherClient};
pub use config::LauncherConfig;
pub use docker::DockerRuntime;
pub use launcher::{EndError, LaunchError, Launcher};
pub use protocol::{
    DeadSession, DownloadDelivery, EndedSession, ErrorKind, LaunchSession, LaunchedSession, ReconcileReport, Request,
    Response, SessionInfo, SiteLimits, WorkloadState, WorkspaceExit,
};
pub use runtime::Runtime;
pub use server::{bind_socket, serve};
