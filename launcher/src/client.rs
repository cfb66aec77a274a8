//! The broker's client for the launcher socket.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::net::UnixStream;
use uuid::Uuid;

use crate::protocol::{
    EndedSession, ErrorKind, FrameError, HealthReport, LaunchSession, LaunchedSession,
    ReconcileReport, Request, Response, SessionInfo, WorkspaceExit, read_frame, write_frame,
};

/// Maximum size of a response frame the client accepts, in bytes.
pub const DEFAULT_MAX_RESPONSE_BYTES: u32 = 16 << 20;

/// Reason a launcher call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to connect to the launcher at {path}; is `strongroom launcher` running?")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("launcher request timed out after {after:?}")]
    TimedOut { after: Duration },
    #[error("launcher connection failed")]
    Frame(#[from] FrameError),
    #[error("launcher closed the connection without a response")]
    Closed,
    #[error("launcher response is not valid: {0}")]
    InvalidResponse(#[from] serde_json::Error),
    #[error("launcher rejected the request ({kind:?}): {message}")]
    Rejected { kind: ErrorKind, message: String },
    #[error("launcher sent a `{got}` response to a `{request}` request")]
    Unexpected {
        request: &'static str,
        got: &'static str,
    },
}

impl ClientError {
    /// Returns the launcher's reason for rejecting the request, if it rejected it.
    pub fn rejection_kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Rejected { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// A client of the launcher socket. Each call opens its own connection, so a client is
/// cheap to clone and share.
#[derive(Debug, Clone)]
pub struct LauncherClient {
    socket_path: PathBuf,
    timeout: Duration,
    max_response_bytes: u32,
}

impl LauncherClient {
    /// Creates a client with a 60-second timeout per call (connect, send and response). A launch
    /// creates a network and starts a container, which takes seconds on a busy host.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            timeout: Duration::from_secs(60),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one request and returns the response, `Error` responses included.
    pub async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .map_err(|_| ClientError::TimedOut {
                after: self.timeout,
            })?
    }

    async fn exchange(&self, request: &Request) -> Result<Response, ClientError> {
        let mut stream = UnixStream::connect(&self.socket_path)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket_path.clone(),
                source,
            })?;
        write_frame(&mut stream, &serde_json::to_vec(request)?).await?;
        let body = read_frame(&mut stream, self.max_response_bytes)
            .await?
            .ok_or(ClientError::Closed)?;
        Ok(serde_json::from_slice(&body)?)
    }

    pub async fn launch_session(
        &self,
        launch: LaunchSession,
    ) -> Result<LaunchedSession, ClientError> {
        match self.request(&Request::LaunchSession(launch)).await? {
            Response::Launched(launched) => Ok(launched),
            other => Err(unexpected("launch_session", other)),
        }
    }

    pub async fn end_session(
        &self,
        session_id: Uuid,
        reason: impl Into<String>,
    ) -> Result<EndedSession, ClientError> {
        match self
            .request(&Request::EndSession {
                session_id,
                reason: reason.into(),
            })
            .await?
        {
            Response::Ended(ended) => Ok(ended),
            other => Err(unexpected("end_session", other)),
        }
    }

    pub async fn health(&self) -> Result<HealthReport, ClientError> {
        match self.request(&Request::Health).await? {
            Response::Health(report) => Ok(report),
            other => Err(unexpected("health", other)),
        }
    }

    pub async fn list_sessions(&self) -> Result<Vec<SessionInfo>, ClientError> {
        match self.request(&Request::ListSessions).await? {
            Response::Sessions { sessions } => Ok(sessions),
            other => Err(unexpected("list_sessions", other)),
        }
    }

    /// Asks the launcher to remove objects of sessions not in `live_sessions` and to
    /// report live sessions whose workspace is dead. Pass only sessions whose launch
    /// has completed: a listed session without a container is reported dead.
    pub async fn reconcile(
        &self,
        live_sessions: Vec<Uuid>,
    ) -> Result<ReconcileReport, ClientError> {
        match self.request(&Request::Reconcile { live_sessions }).await? {
            Response::Reconciled(report) => Ok(report),
            other => Err(unexpected("reconcile", other)),
        }
    }
}

impl LauncherClient {
    /// Opens a connection that receives this instance's workspace exits as they happen.
    /// The client's timeout bounds the connect and the request. The stream then waits
    /// for exits without a limit, and it ends when the launcher closes the connection.
    pub async fn watch_exits(
        &self,
    ) -> Result<BoxStream<'static, Result<WorkspaceExit, ClientError>>, ClientError> {
        let connect = async {
            let mut stream = UnixStream::connect(&self.socket_path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket_path.clone(),
                    source,
                })?;
            write_frame(&mut stream, &serde_json::to_vec(&Request::WatchExits)?).await?;
            Ok::<_, ClientError>(stream)
        };
        let stream = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| ClientError::TimedOut {
                after: self.timeout,
            })??;

        let max = self.max_response_bytes;
        let exits = futures::stream::unfold(Some(stream), move |stream| async move {
            let mut stream = stream?;
            let next = match read_frame(&mut stream, max).await {
                Ok(Some(body)) => match serde_json::from_slice::<Response>(&body) {
                    Ok(Response::Exited(exit)) => Ok(exit),
                    Ok(other) => Err(unexpected("watch_exits", other)),
                    Err(error) => Err(ClientError::from(error)),
                },
                Ok(None) => return None,
                Err(error) => Err(ClientError::from(error)),
            };
            // After an error the stream ends; the caller reconnects.
            let keep = next.is_ok().then_some(stream);
            Some((next, keep))
        });
        Ok(exits.boxed())
    }
}

fn unexpected(request: &'static str, response: Response) -> ClientError {
    let got = match response {
        Response::Error(body) => {
            return ClientError::Rejected {
                kind: body.kind,
                message: body.message,
            };
        }
        Response::Launched(_) => "launched",
        Response::Ended(_) => "ended",
        Response::Sessions { .. } => "sessions",
        Response::Reconciled(_) => "reconciled",
        Response::Health(_) => "health",
        Response::Exited(_) => "exited",
    };
    ClientError::Unexpected { request, got }
}
