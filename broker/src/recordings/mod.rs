//! Recordings as recorded in the audit trail: which segments were stored, with which
//! hashes, so that verification and export check the files against the chain.

pub mod catalogue;
pub mod evidence;
pub mod keys_check;
pub mod kms;
pub mod list_cli;
pub mod markers;
pub mod mux;
pub mod replay;
pub mod retention;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use uuid::Uuid;

use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::config::Config;

/// The segment hashes of a recording, in index order, from `recording.segment.stored`
/// events. A missing index is an error: the chain must name every segment.
pub async fn segment_hashes(audit: &AuditLog, recording: Uuid) -> anyhow::Result<Vec<[u8; 32]>> {
    let target = format!("recording:{recording}");
    let events = audit
        .list_for_target(&target, crate::audit::Action::RecordingSegmentStored)
        .await?;
    let mut indexed: Vec<(u64, [u8; 32])> = Vec::new();
    for event in &events {
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
            .with_context(|| format!("segment {index} has an invalid hash in event {}", event.seq))?;
        indexed.push((index, hash));
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

/// Opens the recording store: the S3-compatible bucket when `s3` is set, otherwise the
/// local directory. Call it on a blocking thread, because the S3 client owns a runtime.
pub fn open_storage(
    dir: &Path,
    s3: Option<&crate::config::recordings_s3::RecordingsS3Config>,
) -> anyhow::Result<Arc<dyn recorder::Storage>> {
    match s3 {
        Some(s3) => {
            let settings = s3.resolve()?;
            let storage = recorder::S3Storage::open(&settings).with_context(|| {
                format!(
                    "cannot open the recordings bucket {} at {}",
                    s3.bucket, s3.endpoint
                )
            })?;
            Ok(Arc::new(storage))
        }
        None => {
            let storage = recorder::LocalDirStorage::open(dir).with_context(|| {
                format!("cannot open the recordings directory {}", dir.display())
            })?;
            Ok(Arc::new(storage))
        }
    }
}

/// Opens the configured recording store and key store.
pub fn stores(
    config: &Config,
) -> anyhow::Result<(Arc<dyn recorder::Storage>, Arc<dyn recorder::KeyStore>)> {
    let storage = open_storage(
        &config.sessions.recordings_dir,
        config.sessions.recordings_s3.as_ref(),
    )?;
    Ok((storage, open_key_store(config)?))
}

/// Opens the configured store of recording key-encryption keys: the local key
/// directory, or the Infisical KMS project reached through `[secrets.infisical]`.
pub fn open_key_store(config: &Config) -> anyhow::Result<Arc<dyn recorder::KeyStore>> {
    use crate::config::secrets::SecretsConfig;
    use crate::config::sessions::RecordingKeysBackend;

    match (&config.sessions.recording_keys, &config.secrets) {
        (RecordingKeysBackend::Local, _) => {
            let dir = &config.sessions.recording_keys_dir;
            let keys = recorder::LocalKeyStore::open(dir).with_context(|| {
                format!("cannot open the recording key directory {}", dir.display())
            })?;
            Ok(Arc::new(keys))
        }
        (RecordingKeysBackend::Infisical { project_id }, SecretsConfig::Infisical(infisical)) => {
            let client = crate::secrets::InfisicalClient::new(infisical)
                .context("cannot build the Infisical client for recording keys")?;
            let keys = kms::InfisicalKeyStore::new(client, project_id)?;
            Ok(Arc::new(keys))
        }
        // INVARIANT: configuration validation rejects Infisical keys without
        // `[secrets.infisical]`.
        (RecordingKeysBackend::Infisical { .. }, SecretsConfig::Local) => {
            anyhow::bail!(
                "sessions.recording_keys is \"infisical\" but secrets.source is not; set secrets.source = \"infisical\""
            )
        }
    }
}

/// Checks every segment file of a recording against the hashes in the audit chain.
pub async fn verify(
    config: &Config,
    audit: &AuditLog,
    recording: Uuid,
) -> anyhow::Result<recorder::VerifyReport> {
    let hashes = segment_hashes(audit, recording).await?;
    let (storage, _) = stores(config)?;
    let report = recorder::verify_recording(storage.as_ref(), recording, &hashes)
        .context("cannot verify the recording")?;
    if !report.is_intact() {
        let problems = report
            .problems
            .iter()
            .map(|problem| format!("segment {}: {:?}", problem.index, problem.kind))
            .collect::<Vec<_>>();
        let event = EventBuilder::new(Actor::System("cli"), Action::RecordingVerificationFailed)
            .target(format!("recording:{recording}"))
            .outcome(crate::audit::Outcome::Failure)
            .detail("checked_by", "recording verify")
            .detail("problems", problems.join("; "))
            .build();
        audit
            .append(event)
            .await
            .context("cannot audit the damaged recording")?;
    }
    Ok(report)
}

/// Writes a WebM file of a recording whose segments all match the audit chain. This
/// process decrypts and authenticates the segments; an unprivileged child process
/// without keys muxes the packets ([`mux`]). A recording without segments holds no
/// video and fails before any file is written.
pub async fn export(
    config: &Config,
    audit: &AuditLog,
    recording: Uuid,
    output: &Path,
) -> anyhow::Result<recorder::ExportSummary> {
    let hashes = segment_hashes(audit, recording).await?;
    let (storage, keys) = stores(config)?;
    let settings = mux::MuxSettings::from_config(config)?;
    let output = output.to_owned();
    let no_video = match catalogue::get(audit.database(), recording).await? {
        Some(entry) => replay::no_video_message(&entry),
        None => format!("Recording {recording} holds no video: it has no stored segment."),
    };
    let summary = tokio::task::spawn_blocking(move || {
        let mut reader = recorder::RecordingReader::open(storage, keys.as_ref(), recording)
            .context("cannot open the recording")?;
        anyhow::ensure!(!reader.segments().is_empty(), "{no_video}");
        reader
            .require_hashes(hashes)
            .context("the recording does not match the audit chain")?;
        mux::export_to_file(&reader, &settings, &output)
    })
    .await
    .context("export task failed")??;
    tracing::info!(
        recording.id = %recording,
        packets = summary.packets,
        duration_ms = summary.duration.as_millis() as u64,
        "Exported recording to WebM"
    );
    Ok(summary)
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
    let fix = keys_check::restore_hint(config);
    anyhow::ensure!(
        missing.is_empty(),
        "{}",
        keys_check::describe(&missing, &fix)
    );
    readiness.push(Arc::new(keys_check::RecordingKeysCheck {
        db: db.clone(),
        storage,
        keys,
        fix,
    }));
    Ok(readiness)
}

/// `strongroom keys rotate`: re-wraps every data key under a new period key and every
/// hold wrap under a new hold key, destroys the old keys and audits the rotation.
/// Returns the exit code.
pub async fn rotate_keys_command(config: &Config, db: &crate::db::Database) -> i32 {
    let audit = AuditLog::new(db.clone(), Arc::new(crate::clock::SystemClock));
    let result = async {
        let (storage, keys) = stores(config)?;
        let report = tokio::task::spawn_blocking(move || {
            recorder::rotate_keys(storage.as_ref(), keys.as_ref(), chrono::Utc::now())
        })
        .await
        .context("key rotation task failed")?
        .context("key rotation failed")?;
        let event = crate::audit::EventBuilder::new(
            crate::audit::Actor::System("cli"),
            crate::audit::Action::KeyRotated,
        )
        .target("recording-keys")
        .detail("rewrapped", report.rewrapped.len())
        .detail("hold_rewrapped", report.hold_rewrapped.len())
        .detail(
            "new_keys",
            report
                .new_keys
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>(),
        )
        .detail(
            "destroyed_keys",
            report
                .destroyed_keys
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>(),
        )
        .build();
        audit.append(event).await?;
        anyhow::Ok(report)
    }
    .await;
    match result {
        Ok(report) => {
            println!(
                "re-wrapped {} recordings under new period keys and {} held recordings under a new hold key; created {} keys, destroyed {} old keys",
                report.rewrapped.len(),
                report.hold_rewrapped.len(),
                report.new_keys.len(),
                report.destroyed_keys.len()
            );
            for (id, reason) in &report.unreadable {
                println!("kept the old key because recording {id} is unreadable: {reason}");
            }
            0
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}
