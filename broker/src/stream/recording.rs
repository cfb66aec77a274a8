//! The recorder of one live session, on its own thread.
//!
//! Recorder calls block on file I/O (a segment is fsynced when it is cut, a checkpoint
//! part once per checkpoint interval), so each recording gets a dedicated thread that
//! owns the [`RecordingWriter`]. The stream task sends every record and waits for the
//! result before it shows the packet to anyone, so a packet the recorder did not accept
//! is never shown. When no record arrives for a checkpoint interval, the thread stores a
//! checkpoint of what came before the pause.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use recorder::{
    KeyStore, Marker, NewRecording, Packet, RecorderConfig, RecorderError, RecordingWriter,
    SegmentStored, Storage, StreamConfig,
};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::recordings::catalogue;

/// Request to the recorder thread.
enum Command {
    Config(StreamConfig, oneshot::Sender<Result<(), RecorderError>>),
    Packet(
        Packet,
        oneshot::Sender<Result<Option<SegmentStored>, RecorderError>>,
    ),
    Marker(Marker, oneshot::Sender<Result<(), RecorderError>>),
    Seal(oneshot::Sender<Result<SealSummary, RecorderError>>),
}

/// Result of sealing a recording.
#[derive(Debug, Clone)]
pub struct SealSummary {
    pub segment_count: u64,
    pub final_segment: Option<SegmentStored>,
    pub seal_sha256: [u8; 32],
    /// Bytes of all stored segment files.
    pub stored_bytes: u64,
}

/// Recording store, key store and segment settings.
#[derive(Clone)]
pub struct RecordingSettings {
    pub storage: Arc<dyn Storage>,
    pub keys: Arc<dyn KeyStore>,
    pub config: RecorderConfig,
}

/// Adds a recording's catalogue row, then creates the recording in the store and starts
/// its thread. In this order a crash at any point leaves either nothing or a catalogue
/// row in state `recording`, which start-up recovery seals (when the recording's
/// metadata was stored) or removes with whatever the store contains of it
/// ([`catalogue::seal_interrupted`]). When creating the recording fails, the row and any
/// stored objects are removed at once.
pub async fn start_catalogued(
    settings: &RecordingSettings,
    db: &crate::db::Database,
    session_id: Uuid,
    recording_id: Uuid,
    expires_at: DateTime<Utc>,
) -> anyhow::Result<RecordingHandle> {
    let session = crate::sessions::store::get(db, session_id)
        .await?
        .with_context(|| format!("session {session_id} is not in the database"))?;
    let started_at = Utc::now();
    catalogue::insert(
        db,
        &catalogue::NewEntry {
            id: recording_id,
            session_id,
            user_id: session.user_id,
            site: session.site,
            instance_id: session.instance_id,
            started_at,
            expires_at,
        },
    )
    .await?;

    let blocking_settings = settings.clone();
    let created = tokio::task::spawn_blocking(move || {
        RecordingHandle::start(&blocking_settings, recording_id, started_at, expires_at)
    })
    .await
    .context("recording start task failed")
    .and_then(|result| result);
    match created {
        Ok(handle) => Ok(handle),
        Err(error) => {
            let storage = settings.storage.clone();
            if let Err(cleanup) = catalogue::discard_unstarted(db, storage, recording_id).await {
                tracing::error!(recording.id = %recording_id, error = format!("{cleanup:#}"), "Cannot remove a recording that failed to start; start-up recovery removes it");
            }
            Err(error)
        }
    }
}

/// Handle to a recording thread. Dropping it without sealing lets the thread exit and
/// leaves the recording for crash recovery.
pub struct RecordingHandle {
    id: Uuid,
    commands: std_mpsc::SyncSender<Command>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingFailure {
    #[error("recorder rejected the write: {0}")]
    Recorder(#[from] RecorderError),
    #[error("recorder thread is gone")]
    ThreadGone,
}

impl RecordingHandle {
    /// Creates the recording and starts its thread.
    pub fn start(
        settings: &RecordingSettings,
        id: Uuid,
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> anyhow::Result<RecordingHandle> {
        let new = NewRecording {
            id,
            created_at,
            expires_at,
            stream: None,
        };
        let writer = RecordingWriter::create(
            settings.storage.clone(),
            settings.keys.as_ref(),
            settings.config.clone(),
            new,
        )
        .context("cannot create the recording")?;

        let checkpoint_interval = settings.config.checkpoint_interval;
        // A small queue is enough because the stream task waits for each result.
        let (commands, receiver) = std_mpsc::sync_channel(4);
        std::thread::Builder::new()
            .name(format!("recorder-{}", &id.simple().to_string()[..8]))
            .spawn(move || run(writer, receiver, checkpoint_interval))
            .context("cannot start the recorder thread")?;
        Ok(RecordingHandle { id, commands })
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    pub async fn push_config(&self, config: StreamConfig) -> Result<(), RecordingFailure> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Config(config, reply))?;
        Ok(answer.await.map_err(|_| RecordingFailure::ThreadGone)??)
    }

    pub async fn push_packet(
        &self,
        packet: Packet,
    ) -> Result<Option<SegmentStored>, RecordingFailure> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Packet(packet, reply))?;
        Ok(answer.await.map_err(|_| RecordingFailure::ThreadGone)??)
    }

    pub async fn push_marker(&self, marker: Marker) -> Result<(), RecordingFailure> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Marker(marker, reply))?;
        Ok(answer.await.map_err(|_| RecordingFailure::ThreadGone)??)
    }

    /// Stores the open segment and the seal. The thread exits afterwards, and later
    /// calls fail with [`RecordingFailure::ThreadGone`].
    pub async fn seal(&self) -> Result<SealSummary, RecordingFailure> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Seal(reply))?;
        Ok(answer.await.map_err(|_| RecordingFailure::ThreadGone)??)
    }

    fn send(&self, command: Command) -> Result<(), RecordingFailure> {
        self.commands
            .send(command)
            .map_err(|_| RecordingFailure::ThreadGone)
    }
}

fn run(
    mut writer: RecordingWriter,
    commands: std_mpsc::Receiver<Command>,
    checkpoint_interval: Duration,
) {
    // A dropped reply channel only means the stream task went away; the loop goes on
    // until the handle is dropped or the recording is sealed.
    loop {
        let command = match receive(&commands, checkpoint_interval) {
            Received::Command(command) => command,
            Received::Idle => {
                // The stream paused for a checkpoint interval: store what it sent
                // before the pause. A failure fails the writer, so the next packet's
                // write fails and freezes the stream.
                if let Err(error) = writer.checkpoint()
                    && !matches!(error, RecorderError::WriterFailed(_))
                {
                    tracing::error!(recording.id = %writer.id(), error = %error, "Storing a checkpoint of a paused stream failed");
                }
                continue;
            }
            Received::Closed => break,
        };
        match command {
            Command::Config(config, reply) => {
                let _ = reply.send(writer.push_config(config));
            }
            Command::Packet(packet, reply) => {
                let _ = reply.send(writer.push_packet(packet));
            }
            Command::Marker(marker, reply) => {
                let _ = reply.send(writer.push_marker(marker));
            }
            Command::Seal(reply) => {
                let result = writer.seal();
                let stored_bytes = writer.stored_bytes();
                let result = result.map(|sealed| SealSummary {
                    segment_count: sealed.manifest.segment_count,
                    final_segment: sealed.final_segment,
                    seal_sha256: sealed.seal_sha256,
                    stored_bytes,
                });
                let _ = reply.send(result);
                return;
            }
        }
    }
    tracing::warn!(recording.id = %writer.id(), "Recorder handle dropped without sealing; the recording is left for crash recovery");
}

enum Received {
    Command(Command),
    /// No command arrived for a checkpoint interval.
    Idle,
    /// The handle was dropped.
    Closed,
}

fn receive(commands: &std_mpsc::Receiver<Command>, checkpoint_interval: Duration) -> Received {
    if checkpoint_interval.is_zero() {
        return commands.recv().map_or(Received::Closed, Received::Command);
    }
    match commands.recv_timeout(checkpoint_interval) {
        Ok(command) => Received::Command(command),
        Err(std_mpsc::RecvTimeoutError::Timeout) => Received::Idle,
        Err(std_mpsc::RecvTimeoutError::Disconnected) => Received::Closed,
    }
}
