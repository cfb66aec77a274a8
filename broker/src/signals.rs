//! Stop signals of `strongroom serve`: the first SIGINT or SIGTERM starts the graceful
//! shutdown, the second skips its waits but still removes this broker's workspaces,
//! and the third exits at once.

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Time the second signal gives the launcher to force-remove this instance's containers
/// and networks before the broker exits anyway.
pub const FORCED_CLEANUP_TIMEOUT: Duration = Duration::from_secs(8);

/// Exit code after a second or third signal, as a shell reports a process that SIGINT
/// ended.
const INTERRUPTED_EXIT_CODE: i32 = 130;

/// SIGTERM and SIGINT listeners, installed once so that no signal between two waits is
/// lost.
pub struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the next SIGTERM or SIGINT and returns its name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// Waits for the second and third signals after the graceful shutdown has begun. The
/// second asks the launcher at `launcher_socket` to remove every container and network
/// of this instance, logs what it removed, and exits; the third exits without cleanup.
pub async fn force_after_second_signal(mut signals: StopSignals, launcher_socket: PathBuf) {
    let name = signals.next().await;
    tracing::warn!(
        signal = name,
        timeout_s = FORCED_CLEANUP_TIMEOUT.as_secs(),
        "Second stop signal: skipping the graceful waits and removing this broker's workspace containers and networks now; a third signal exits without cleanup"
    );
    eprintln!(
        "second signal received; removing this broker's workspaces (up to {} s), then exiting; a third signal exits at once",
        FORCED_CLEANUP_TIMEOUT.as_secs()
    );
    tokio::select! {
        () = remove_instance_workspaces(launcher_socket) => {}
        name = signals.next() => {
            tracing::warn!(signal = name, "Third stop signal: exiting without cleanup; the next start removes the workspaces left");
            eprintln!("third signal received; exiting without cleanup");
        }
    }
    std::process::exit(INTERRUPTED_EXIT_CODE);
}

/// Asks the launcher to remove every container and network of this instance, with no
/// session counted as live, and logs the outcome. Launches still in progress are
/// skipped by the launcher; the next start removes them.
async fn remove_instance_workspaces(launcher_socket: PathBuf) {
    let client =
        launcher::LauncherClient::new(launcher_socket).with_timeout(FORCED_CLEANUP_TIMEOUT);
    match client.reconcile(Vec::new()).await {
        Ok(report) => {
            tracing::warn!(
                containers = ?report.removed_containers,
                networks = ?report.removed_networks,
                failures = ?report.failures,
                launches_in_progress = report.skipped_in_flight.len(),
                "Removed this broker's workspaces after the second stop signal"
            );
        }
        Err(error) => {
            tracing::error!(
                error = %error,
                "Cannot remove this broker's workspaces after the second stop signal; the next start removes them"
            );
        }
    }
}
