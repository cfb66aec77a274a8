//! Storing and removing the checkpoint parts of the open segment on a thread of their
//! own. The writer waits for a part's fsync only when `QUEUE` parts are already waiting.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use uuid::Uuid;

use crate::error::{RecorderError, StorageError};
use crate::format;
use crate::storage::Storage;

/// Parts waiting to be stored before `queue` blocks the writer. Each is about one
/// checkpoint interval of video, so this many seconds of stalled storage are absorbed.
const QUEUE: usize = 4;

enum Job {
    Put {
        index: u64,
        part: u32,
        file: Vec<u8>,
    },
    /// Removes parts `0..parts` of a segment that is stored whole.
    Remove { index: u64, parts: u32 },
}

/// Handle to the part thread of one recording. Jobs run in the order they were queued,
/// so the parts that survive a crash are always the leading ones, and the removal of a
/// stored segment's parts comes after the last of them was stored.
pub(crate) struct PartThread {
    jobs: Option<mpsc::SyncSender<Job>>,
    failure: Arc<Mutex<Option<StorageError>>>,
    thread: Option<JoinHandle<()>>,
}

impl PartThread {
    pub fn start(storage: Arc<dyn Storage>, recording: Uuid) -> Result<Self, RecorderError> {
        let (jobs, receiver) = mpsc::sync_channel(QUEUE);
        let failure = Arc::new(Mutex::new(None));
        let reported = failure.clone();
        let thread = std::thread::Builder::new()
            .name(format!("parts-{}", &recording.simple().to_string()[..8]))
            .spawn(move || run(storage.as_ref(), recording, receiver, &reported))
            .map_err(|source| StorageError::Io {
                operation: "start the checkpoint part thread",
                path: std::path::PathBuf::new(),
                source,
            })?;
        Ok(PartThread {
            jobs: Some(jobs),
            failure,
            thread: Some(thread),
        })
    }

    /// Queues a part for storing. Blocks only while `QUEUE` parts are already waiting.
    pub fn put(&self, index: u64, part: u32, file: Vec<u8>) {
        self.send(Job::Put { index, part, file });
    }

    /// Queues the removal of parts `0..parts` of segment `index`.
    pub fn remove(&self, index: u64, parts: u32) {
        if parts > 0 {
            self.send(Job::Remove { index, parts });
        }
    }

    fn send(&self, job: Job) {
        // INVARIANT: the thread only ends when `jobs` is dropped, in `finish`.
        if let Some(jobs) = &self.jobs {
            jobs.send(job).expect("checkpoint part thread runs");
        }
    }

    /// The first part write that failed since the last call, if any.
    pub fn take_failure(&self) -> Option<StorageError> {
        self.failure.lock().expect("part failure lock").take()
    }

    /// Waits until every queued job has run, then stops the thread.
    pub fn finish(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("Checkpoint part thread panicked");
        }
    }
}

impl Drop for PartThread {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run(
    storage: &dyn Storage,
    recording: Uuid,
    jobs: mpsc::Receiver<Job>,
    failure: &Mutex<Option<StorageError>>,
) {
    let mut failed = false;
    while let Ok(job) = jobs.recv() {
        match job {
            // After a failure the writer is failed too; later parts could not follow
            // the missing one anyway.
            Job::Put { .. } if failed => {}
            Job::Put { index, part, file } => {
                let name = format::part_name(index, part);
                if let Err(error) = storage.put(recording, &name, &file) {
                    tracing::error!(recording.id = %recording, segment.index = index, part, error = %error, "Storing checkpoint part failed");
                    failed = true;
                    *failure.lock().expect("part failure lock") = Some(error);
                } else {
                    tracing::trace!(recording.id = %recording, segment.index = index, part, bytes = file.len(), "Stored checkpoint part");
                }
            }
            Job::Remove { index, parts } => {
                for part in 0..parts {
                    let name = format::part_name(index, part);
                    if let Err(error) = storage.delete(recording, &name) {
                        tracing::warn!(recording.id = %recording, segment.index = index, part, error = %error, "Cannot remove a checkpoint part of a stored segment; recovery removes it");
                    }
                }
            }
        }
    }
}
