//! The launcher's Unix socket server and its background tasks.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::LauncherConfig;
use crate::docker::DockerRuntime;
use crate::labels;
use crate::launcher::Launcher;
use crate::protocol::{
    ErrorBody, ErrorKind, FrameError, Request, Response, WorkspaceExit, read_frame, write_frame,
};

/// Wait before resubscribing to runtime events after the stream broke.
const EVENTS_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Runs the launcher until `shutdown` is cancelled: connects to Docker, adopts this
/// instance's existing workspaces, binds the socket and serves requests. On shutdown
/// it stops accepting, lets requests in progress finish, and returns.
pub async fn serve(config: LauncherConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let runtime = DockerRuntime::connect(
        &config.docker_socket,
        &config.docker_api_version,
        config.docker_timeout(),
    )?;
    let launcher = Launcher::new(config, Arc::new(runtime))?;
    let listener = bind_socket(launcher.config())?;
    let result = launcher.run(listener, shutdown).await;

    let path = &launcher.config().socket_path;
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(error = %error, socket = %path.display(), "Removing the launcher socket failed");
    }
    result
}

/// Binds the launcher socket with mode 0660 and the configured group. The socket is
/// bound under a temporary name and renamed into place, so it is never reachable with
/// looser permissions. A stale socket at the path is replaced; any other file is not.
pub fn bind_socket(config: &LauncherConfig) -> anyhow::Result<UnixListener> {
    let path = &config.socket_path;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            std::fs::remove_file(path)
                .with_context(|| format!("failed to remove stale socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; remove it or change launcher.socket_path",
            path.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("failed to inspect {}", path.display()));
        }
    }

    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)
        .with_context(|| format!("failed to bind {}", temporary.display()))?;
    let secured = secure_socket(&temporary, config.socket_group.as_deref()).and_then(|()| {
        std::fs::rename(&temporary, path)
            .with_context(|| format!("failed to move the socket to {}", path.display()))
    });
    if let Err(error) = secured {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    Ok(listener)
}

fn secure_socket(path: &Path, group: Option<&str>) -> anyhow::Result<()> {
    if let Some(group) = group {
        let gid = nix::unistd::Group::from_name(group)
            .with_context(|| format!("failed to look up group `{group}`"))?
            .ok_or_else(|| {
                anyhow::anyhow!("group `{group}` (launcher.socket_group) does not exist")
            })?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("failed to give {} to group `{group}`", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("failed to set mode 0660 on {}", path.display()))
}

impl Launcher {
    /// Serves `listener` until `shutdown` is cancelled, with the sweeper and the exit
    /// watcher running beside it. Adopts existing workspaces first.
    pub async fn run(
        &self,
        listener: UnixListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        self.adopt_existing()
            .await
            .context("failed to list this instance's workspaces at start")?;

        let tasks = TaskTracker::new();
        tasks.spawn(run_sweeper(self.clone(), shutdown.clone()));
        tasks.spawn(watch_exits(self.clone(), shutdown.clone()));
        tracing::info!(instance.id = %self.config().instance_id, socket = %self.config().socket_path.display(), "Launcher is serving");

        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tasks.spawn(handle_connection(self.clone(), stream, shutdown.clone()));
                    }
                    Err(error) => tracing::error!(error = %error, "Accepting a launcher connection failed"),
                },
            }
        }

        tasks.close();
        tasks.wait().await;
        tracing::info!("Launcher stopped");
        Ok(())
    }

    /// Executes one request.
    pub async fn dispatch(&self, request: Request) -> Response {
        match request {
            Request::LaunchSession(launch) => match self.launch(&launch).await {
                Ok(launched) => Response::Launched(launched),
                Err(error) => {
                    tracing::warn!(session.id = %launch.session_id, error = %error, "Launch rejected");
                    error_response(error.kind(), error.to_string())
                }
            },
            Request::EndSession { session_id, reason } => match self.end(session_id, &reason).await
            {
                Ok(ended) => Response::Ended(ended),
                Err(error) => error_response(error.kind(), error.to_string()),
            },
            Request::Health => Response::Health(self.health().await),
            Request::ListSessions => match self.list().await {
                Ok(sessions) => Response::Sessions { sessions },
                Err(error) => error_response(ErrorKind::Runtime, error.to_string()),
            },
            Request::Reconcile { live_sessions } => {
                let live: HashSet<_> = live_sessions.into_iter().collect();
                match self.reconcile(&live).await {
                    Ok(report) => Response::Reconciled(report),
                    Err(error) => error_response(ErrorKind::Runtime, error.to_string()),
                }
            }
            Request::WatchExits => error_response(
                ErrorKind::InvalidRequest,
                "watch_exits streams on its own connection and has no single response".to_owned(),
            ),
        }
    }
}

fn error_response(kind: ErrorKind, message: String) -> Response {
    Response::Error(ErrorBody { kind, message })
}

/// Serves one connection: any number of request frames, one response each. Closes on
/// an oversize or truncated frame, an idle read timeout, or shutdown between requests.
async fn handle_connection(
    launcher: Launcher,
    mut stream: UnixStream,
    shutdown: CancellationToken,
) {
    let max = launcher.config().max_frame_bytes;
    let read_timeout = launcher.config().request_read_timeout();

    loop {
        let frame = tokio::select! {
            () = shutdown.cancelled() => return,
            read = tokio::time::timeout(read_timeout, read_frame(&mut stream, max)) => read,
        };
        let body = match frame {
            Err(_elapsed) => return,
            Ok(Ok(None)) => return,
            Ok(Ok(Some(body))) => body,
            Ok(Err(FrameError::TooLarge { len, max })) => {
                tracing::warn!(
                    frame.len = len,
                    frame.max = max,
                    "Rejected an oversize request frame"
                );
                let message =
                    format!("request frame of {len} bytes exceeds the maximum of {max} bytes");
                send(
                    &mut stream,
                    &error_response(ErrorKind::FrameTooLarge, message),
                )
                .await;
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "Reading a request frame failed");
                return;
            }
        };

        let response = match serde_json::from_slice::<Request>(&body) {
            Ok(Request::WatchExits) => {
                stream_exits(&launcher, &mut stream, &shutdown).await;
                return;
            }
            Ok(request) => launcher.dispatch(request).await,
            Err(error) => {
                tracing::warn!(error = %error, "Rejected a malformed request");
                error_response(
                    ErrorKind::Malformed,
                    format!("request is not valid: {error}"),
                )
            }
        };
        if !send(&mut stream, &response).await {
            return;
        }
    }
}

/// Sends every published workspace exit on `stream` until the peer goes away or the
/// launcher stops.
async fn stream_exits(launcher: &Launcher, stream: &mut UnixStream, shutdown: &CancellationToken) {
    let mut exits = launcher.subscribe_exits();
    loop {
        let exit = tokio::select! {
            () = shutdown.cancelled() => return,
            exit = exits.recv() => exit,
        };
        match exit {
            Ok(exit) => {
                if !send(stream, &Response::Exited(exit)).await {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                // The broker's periodic reconciliation finds the exits this skipped.
                tracing::warn!(
                    missed,
                    "A watching broker fell behind; workspace exits were dropped"
                );
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn send(stream: &mut UnixStream, response: &Response) -> bool {
    let body = match serde_json::to_vec(response) {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(error = %error, "Serialising a launcher response failed");
            return false;
        }
    };
    match write_frame(stream, &body).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(error = %error, "Sending a launcher response failed");
            false
        }
    }
}

/// Retries failed removals every `sweep_interval_secs`.
async fn run_sweeper(launcher: Launcher, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(launcher.config().sweep_interval());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if launcher.pending_removals().is_empty() {
            continue;
        }
        let still_pending = launcher.sweep().await;
        if still_pending > 0 {
            tracing::warn!(
                pending = still_pending,
                "Removals still failing after a sweep"
            );
        }
    }
}

/// Logs every exit of this instance's workspaces as it happens and publishes it to the
/// `WatchExits` connections. `Reconcile` remains the backstop for exits missed while
/// the event stream was down.
async fn watch_exits(launcher: Launcher, shutdown: CancellationToken) {
    let instance_id = launcher.config().instance_id.clone();
    let mut since = None;
    loop {
        let mut exits = launcher.runtime().watch_exits(&instance_id, since);
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = exits.next() => next,
            };
            match next {
                Some(Ok(exit)) => {
                    let session = exit.labels.get(labels::SESSION).map_or("", String::as_str);
                    tracing::warn!(session.id = %session, container.id = %exit.container_id, exit_code = exit.exit_code, "Workspace exited");
                    if let Ok(session_id) = uuid::Uuid::parse_str(session) {
                        let reason = match exit.exit_code {
                            Some(code) => format!("workspace exited with code {code}"),
                            None => "workspace exited".to_owned(),
                        };
                        launcher.publish_exit(WorkspaceExit { session_id, reason });
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "Watching workspace exits failed; resubscribing");
                    break;
                }
                None => break,
            }
        }
        // Exits during the pause are replayed by the next subscription.
        since = Some(std::time::SystemTime::now());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVENTS_RETRY_DELAY) => {}
        }
    }
}
