//! Requests and responses on the launcher socket, and their framing.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. A request
//! names what to do, never how: the launcher builds every container and network spec
//! itself, so no request field can select an image, a mount, a capability or privileges.

use std::net::{Ipv4Addr, SocketAddrV4};

use chrono::{DateTime, Utc};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

/// A request from the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    LaunchSession(LaunchSession),
    EndSession {
        session_id: Uuid,
        reason: String,
    },
    ListSessions,
    /// Reports whether the engine responds and the workspace image is present.
    Health,
    /// Removes this instance's objects whose session is neither in `live_sessions` nor
    /// being launched, and reports live sessions whose workspace is dead.
    Reconcile {
        live_sessions: Vec<Uuid>,
    },
    /// Keeps the connection open and sends one [`Response::Exited`] for each of this
    /// instance's workspaces that stops, as the engine's event stream reports it. No
    /// further request is read on that connection.
    WatchExits,
}

/// Launch of one workspace for one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSession {
    pub session_id: Uuid,
    /// The person who owns the session (stored as a label).
    pub owner: String,
    /// Name of the site from the broker's site catalogue.
    pub site: String,
    /// The site's resolved limits; the launcher rejects any above its own maximums.
    pub limits: SiteLimits,
    /// The first page Chromium opens (http or https).
    pub start_url: String,
    /// Port of the egress proxy on the session network's gateway address.
    pub egress_proxy_port: u16,
    /// Hex SHA-256 of the per-session agent secret; the secret itself never reaches
    /// the launcher.
    pub agent_secret_sha256: String,
    /// Host names Chromium's policy allows, e.g. `bank.example` or `*.bank.example`.
    pub allowed_hosts: Vec<String>,
    /// PEM certificates Chromium trusts for this session only, beside the system
    /// roots (a bank behind a private CA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_ca_certs: Vec<String>,
    /// Set when the site delivers downloads to the person: the workspace then gets a
    /// download tmpfs and Chromium may save files into it. Without it every download
    /// is blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloads: Option<DownloadDelivery>,
}

/// Download delivery of one workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadDelivery {
    /// Largest file the agent sends, in bytes; it refuses larger ones. At most the
    /// launcher's `downloads_size_bytes`.
    pub max_file_bytes: u64,
}

/// Resource limits of one workspace container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteLimits {
    /// Memory limit in bytes; swap is disabled, so this is also the memory+swap limit.
    pub memory_bytes: u64,
    /// CPU quota in units of 10^-9 CPUs.
    pub nano_cpus: u64,
    /// Maximum number of processes and threads.
    pub pids: u32,
    /// Size of `/dev/shm` in bytes.
    pub shm_bytes: u64,
}

impl Default for SiteLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 2 << 30,
            nano_cpus: 1_000_000_000,
            pids: 512,
            shm_bytes: 1 << 30,
        }
    }
}

const MIN_MEMORY_BYTES: u64 = 64 << 20;
const MIN_SHM_BYTES: u64 = 64 << 20;
const MIN_NANO_CPUS: u64 = 10_000_000;
const MIN_PIDS: u32 = 16;

impl SiteLimits {
    /// Checks the floors below which no workspace can run.
    pub fn check_sane(&self) -> Result<(), String> {
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return Err(format!(
                "memory_bytes {} is below 64 MiB",
                self.memory_bytes
            ));
        }
        if self.shm_bytes < MIN_SHM_BYTES {
            return Err(format!("shm_bytes {} is below 64 MiB", self.shm_bytes));
        }
        if self.nano_cpus < MIN_NANO_CPUS {
            return Err(format!("nano_cpus {} is below 0.01 CPU", self.nano_cpus));
        }
        if self.pids < MIN_PIDS {
            return Err(format!("pids {} is below {MIN_PIDS}", self.pids));
        }
        Ok(())
    }

    /// Names every limit above `max`, with both values.
    pub fn exceeded(&self, max: &SiteLimits) -> Vec<String> {
        let mut over = Vec::new();
        if self.memory_bytes > max.memory_bytes {
            over.push(format!(
                "memory_bytes {} > {}",
                self.memory_bytes, max.memory_bytes
            ));
        }
        if self.nano_cpus > max.nano_cpus {
            over.push(format!("nano_cpus {} > {}", self.nano_cpus, max.nano_cpus));
        }
        if self.pids > max.pids {
            over.push(format!("pids {} > {}", self.pids, max.pids));
        }
        if self.shm_bytes > max.shm_bytes {
            over.push(format!("shm_bytes {} > {}", self.shm_bytes, max.shm_bytes));
        }
        over
    }
}

/// A response to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Launched(LaunchedSession),
    Ended(EndedSession),
    Sessions { sessions: Vec<SessionInfo> },
    Reconciled(ReconcileReport),
    Health(HealthReport),
    Exited(WorkspaceExit),
    Error(ErrorBody),
}

/// A workspace container that stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceExit {
    pub session_id: Uuid,
    /// A sentence for the session's end detail, such as "workspace exited with code 137".
    pub reason: String,
}

/// The launcher's view of its dependencies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Engine version when the engine responded.
    pub engine_version: Option<String>,
    /// Error from the engine, when it did not respond.
    pub engine_error: Option<String>,
    /// The configured workspace image tag.
    pub image: String,
    /// Whether that image is present; `None` when the engine did not answer.
    pub image_present: Option<bool>,
    /// When the image was created (RFC 3339), as the engine reports it. Absent from
    /// launchers that predate the field.
    #[serde(default)]
    pub image_created: Option<String>,
    pub sessions: usize,
    pub max_sessions: usize,
}

/// Addresses and names of a launched workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchedSession {
    pub session_id: Uuid,
    pub container_id: String,
    pub container_name: String,
    pub network_id: String,
    pub network_name: String,
    pub subnet: Ipv4Net,
    /// The host's address on the session bridge: the egress proxy listens here.
    pub gateway: Ipv4Addr,
    /// The workspace container's address: the broker dials the agent here.
    pub workspace_address: Ipv4Addr,
    /// The proxy address configured in the workspace (`gateway:egress_proxy_port`).
    pub proxy_address: SocketAddrV4,
}

/// Outcome of ending a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedSession {
    pub session_id: Uuid,
    /// False when the launcher had no object of that session (already ended).
    pub found: bool,
    /// True when a removal failed; the sweeper retries it.
    pub removal_pending: bool,
}

/// One session's workspace as the Docker engine reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub session_id: Uuid,
    pub owner: String,
    pub site: String,
    pub created: Option<DateTime<Utc>>,
    pub container_name: Option<String>,
    pub state: WorkloadState,
    pub subnet: Option<Ipv4Net>,
}

/// State of a workspace container, free of any runtime's own types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WorkloadState {
    Created,
    Running,
    Paused,
    Restarting,
    Exited {
        exit_code: i64,
        oom_killed: bool,
    },
    Dead,
    /// The session has a network but no container.
    Missing,
    Other {
        name: String,
    },
}

impl WorkloadState {
    /// True when the workspace can no longer serve its session.
    pub fn is_dead(&self) -> bool {
        matches!(self, Self::Exited { .. } | Self::Dead | Self::Missing)
    }
}

/// Outcome of a reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub removed_containers: Vec<String>,
    pub removed_networks: Vec<String>,
    /// Live sessions whose workspace is dead: the broker ends them with this reason.
    pub dead_sessions: Vec<DeadSession>,
    pub skipped_in_flight: Vec<Uuid>,
    /// Removals that failed; the sweeper retries them.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadSession {
    pub session_id: Uuid,
    pub state: WorkloadState,
    /// A sentence for the audit log and the person, e.g. "workspace exited with code 137".
    pub reason: String,
}

/// A rejected request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub message: String,
}

/// Reason a request was rejected, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A field failed validation.
    InvalidRequest,
    /// A site limit is above the launcher's maximum.
    LimitExceeded,
    /// The host already runs its maximum number of sessions.
    CapacityExhausted,
    /// A session with that id is running or being launched.
    AlreadyExists,
    /// The workspace image is not present in the engine.
    ImageMissing,
    /// No free subnet is left in the configured range.
    SubnetsExhausted,
    /// The container runtime failed.
    Runtime,
    /// The frame was larger than the maximum.
    FrameTooLarge,
    /// The frame was not a valid request.
    Malformed,
    /// The session is being launched; end it after the launch returns.
    LaunchInProgress,
}

/// A framing failure.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("socket I/O failed")]
    Io(#[from] std::io::Error),
}

/// Reads one frame. Returns `None` on a clean end of stream before a frame starts.
/// The body of an oversize frame is not read.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: u32,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        let read = reader.read(&mut header[filled..]).await?;
        if read == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += read;
    }

    let len = u32::from_be_bytes(header);
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }

    let mut body = vec![0u8; len as usize];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(error),
        })?;
    Ok(Some(body))
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: u32::MAX,
        max: u32::MAX,
    })?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(body).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trips() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, b"{\"type\":\"list_sessions\"}")
            .await
            .unwrap();
        let body = read_frame(&mut b, 1024).await.unwrap().unwrap();
        let request: Request = serde_json::from_slice(&body).unwrap();
        assert_eq!(request, Request::ListSessions);
    }

    #[tokio::test]
    async fn oversize_frame_is_rejected_before_its_body() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&1_000_000u32.to_be_bytes()).await.unwrap();
        let error = read_frame(&mut b, 1024).await.unwrap_err();
        assert!(
            matches!(
                error,
                FrameError::TooLarge {
                    len: 1_000_000,
                    max: 1024
                }
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn truncated_header_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 1024).await,
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn launch_request_rejects_unknown_fields() {
        let json = serde_json::json!({
            "type": "launch_session",
            "session_id": Uuid::nil(),
            "owner": "alice",
            "site": "bank",
            "limits": SiteLimits::default(),
            "start_url": "https://bank.example/",
            "egress_proxy_port": 3128,
            "agent_secret_sha256": "00",
            "allowed_hosts": [],
            "privileged": true,
        });
        let error = serde_json::from_value::<Request>(json).unwrap_err();
        assert!(error.to_string().contains("privileged"), "{error}");
    }

    #[test]
    fn limits_above_maximum_are_named() {
        let max = SiteLimits::default();
        let requested = SiteLimits {
            memory_bytes: max.memory_bytes + 1,
            pids: max.pids + 1,
            ..max
        };
        let over = requested.exceeded(&max);
        assert_eq!(over.len(), 2);
        assert!(over[0].starts_with("memory_bytes"));
        assert!(over[1].starts_with("pids"));
    }
}
