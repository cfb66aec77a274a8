//! Recordings as the audit trail knows them: which segments were stored, with which
//! hashes, so that verification and export check the files against the chain.

pub mod catalogue;
pub mod evidence;
pub mod keys_check;
pub mod replay;
pub mod retention;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use uuid::Uuid;

use crate::audit::AuditLog;
use crate::config::Config;

/// Audit events read per page while collecting segment hashes.
const PAGE: i64 = 10_000;

/// The segment hashes of a recording, in index order, from `recording.segment.stored`
/// events. A missing index is an error: the chain must name every segment.
pub async fn segment_hashes(audit: &AuditLog, recording: Uuid) -> anyhow::Result<Vec<[u8; 32]>> {
    let target = format!("recording:{recording}");
    let mut indexed: Vec<(u64, [u8; 32])> = Vec::new();
    let mut after = 0;
    loop {
        let events = audit.list(after, PAGE).await?;
        let Some(last) = events.last() else { break };
        after = last.seq;
        for event in events.iter().filter(|event| {
            event.action == "recording.segment.stored" && event.target.as_deref() == Some(&target)
        }) {
            let details: serde_json::Value =
                serde_json::from_str(&event.details).context("invalid segment event details")?;
            let index = details["index"]
                .as_u64()
                .context("segment event without an index")?;
            let hash = details["sha256"]
                .as_str()
                .context("segment event without a hash")?;
            let hash: [u8; 32] = hex::decode(hash)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .with_context(|| {
                    format!("segment {index} has an invalid hash in event {}", event.seq)
                })?;
            indexed.push((index, hash));
        }
    }
    indexed.sort_by_key(|(index, _)| *index);
    for (position, (index, _)) in indexed.iter().enumerate() {
        anyhow::ensure!(
            *index == position as u64,
            "the audit trail has no hash for segment {position} of recording {recording}"
        );
    }
    Ok(indexed.into_iter().map(|(_, hash)| hash).collect())
}

/// Opens the configured recording store and key store.
pub fn stores(
    config: &Config,
) -> anyhow::Result<(Arc<dyn recorder::Storage>, Arc<dyn recorder::KeyStore>)> {
    let storage =
        recorder::LocalDirStorage::open(&config.sessions.recordings_dir).with_context(|| {
            format!(
                "cannot open the recordings directory {}",
                config.sessions.recordings_dir.display()
            )
        })?;
    let keys =
        recorder::LocalKeyStore::open(&config.sessions.recording_keys_dir).with_context(|| {
            format!(
                "cannot open the recording key directory {}",
                config.sessions.recording_keys_dir.display()
            )
        })?;
    Ok((Arc::new(storage), Arc::new(keys)))
}

/// Checks every segment file of a recording against the hashes in the audit chain.
pub async fn verify(
    config: &Config,
    audit: &AuditLog,
    recording: Uuid,
) -> anyhow::Result<recorder::VerifyReport> {
    let hashes = segment_hashes(audit, recording).await?;
    let (storage, _) = stores(config)?;
    recorder::verify_recording(storage.as_ref(), recording, &hashes)
        .context("cannot verify the recording")
}

/// Writes a WebM file of a recording whose segments all match the audit chain.
pub async fn export(
    config: &Config,
    audit: &AuditLog,
    recording: Uuid,
    output: &Path,
) -> anyhow::Result<recorder::ExportSummary> {
    let hashes = segment_hashes(audit, recording).await?;
    let (storage, keys) = stores(config)?;
    let output = output.to_owned();
    tokio::task::spawn_blocking(move || {
        recorder::export_webm(storage, keys.as_ref(), recording, Some(hashes), &output)
    })
    .await
    .context("export task failed")?
    .context("cannot export the recording")
}

/// Fails when a kept recording has lost every key that could decrypt it, and adds the
/// same check to `/readyz`.
pub async fn check_keys_at_start(
    config: &Config,
    db: &crate::db::Database,
    mut readiness: Vec<Arc<dyn crate::http::health::ReadinessCheck>>,
) -> anyhow::Result<Vec<Arc<dyn crate::http::health::ReadinessCheck>>> {
    let (storage, keys) = stores(config)?;
    let missing = keys_check::missing_keys(db, storage.clone(), keys.clone()).await?;
    anyhow::ensure!(missing.is_empty(), "{}", keys_check::describe(&missing));
    readiness.push(Arc::new(keys_check::RecordingKeysCheck {
        db: db.clone(),
        storage,
        keys,
    }));
    Ok(readiness)
}
