//! Registry of background tasks, so that shutdown stops every one of them.
//!
//! Each task gets a name and the shared cancellation token. On shutdown the token is
//! cancelled and the registry waits up to the grace period, naming the tasks that
//! are still running when it gives up.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct TaskRegistry {
    tracker: TaskTracker,
    token: CancellationToken,
    running: Arc<Mutex<BTreeMap<u64, &'static str>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl TaskRegistry {
    pub fn new() -> TaskRegistry {
        TaskRegistry::default()
    }

    /// The token every task watches; cancelled when shutdown starts.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns a named task. The task must return soon after the token is cancelled.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.running
            .lock()
            .expect("task registry lock")
            .insert(id, name);
        let running = self.running.clone();
        self.tracker.spawn(async move {
            task.await;
            running.lock().expect("task registry lock").remove(&id);
            tracing::debug!(task = name, "Background task finished");
        });
    }

    /// Names of the tasks still running.
    pub fn running(&self) -> Vec<&'static str> {
        self.running
            .lock()
            .expect("task registry lock")
            .values()
            .copied()
            .collect()
    }

    /// Cancels every task and waits up to `grace`. Returns the names of the tasks that
    /// did not finish in time.
    pub async fn shutdown(&self, grace: Duration) -> Vec<&'static str> {
        self.token.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => Vec::new(),
            Err(_) => self.running(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_cooperative_tasks() {
        let registry = TaskRegistry::new();
        let token = registry.token();
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = finished.clone();
        registry.spawn("cooperative", async move {
            token.cancelled().await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });

        let stuck = registry.shutdown(Duration::from_secs(5)).await;

        assert!(stuck.is_empty());
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn shutdown_names_tasks_that_ignore_cancellation() {
        let registry = TaskRegistry::new();
        registry.spawn("stubborn", std::future::pending());

        let stuck = registry.shutdown(Duration::from_millis(50)).await;

        assert_eq!(stuck, vec!["stubborn"]);
    }
}
