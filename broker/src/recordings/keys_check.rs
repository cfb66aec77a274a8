//! The check that every kept recording can still be decrypted: each one needs at least
//! one of the keys that wrap its data key in the key store. A missing key makes
//! `/readyz` fail and stops the broker from starting, because a lost key file or an
//! unmounted key directory would otherwise show only when someone replays.

use std::sync::Arc;

use anyhow::Context;
use futures::future::BoxFuture;
use uuid::Uuid;

use super::catalogue;
use crate::db::Database;
use crate::http::health::ReadinessCheck;

/// A kept recording whose data key cannot be unwrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingKey {
    pub recording: Uuid,
    /// The key ids that wrap its data key, none of which is in the key store.
    pub key_ids: Vec<String>,
}

/// Lists the kept recordings (every catalogue row that is not deleted) whose wrapping
/// keys are all missing from the key store.
///
/// NOTE: this reads every kept recording's metadata object, so its cost grows with the
/// number of recordings.
pub async fn missing_keys(
    db: &Database,
    storage: Arc<dyn recorder::Storage>,
    keys: Arc<dyn recorder::KeyStore>,
) -> anyhow::Result<Vec<MissingKey>> {
    let ids = catalogue::kept_ids(db).await?;

    tokio::task::spawn_blocking(move || {
        let mut missing = Vec::new();
        for id in ids {
            // A recording whose files never reached the store needs no key.
            let metadata = match recorder::RecordingMetadata::read(storage.as_ref(), id) {
                Ok(metadata) => metadata,
                Err(recorder::RecorderError::NotFound(_)) => continue,
                Err(recorder::RecorderError::Storage(recorder::StorageError::NotFound {
                    ..
                })) => continue,
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("cannot read the metadata of recording {id}"));
                }
            };
            let mut present = false;
            for wrapped in &metadata.wrapped_keys {
                if keys.contains(&wrapped.kek_id)? {
                    present = true;
                    break;
                }
            }
            if !present {
                missing.push(MissingKey {
                    recording: id,
                    key_ids: metadata
                        .wrapped_keys
                        .iter()
                        .map(|wrapped| wrapped.kek_id.to_string())
                        .collect(),
                });
            }
        }
        Ok(missing)
    })
    .await
    .context("key check task failed")?
}

/// Returns what an operator does when keys are missing from the configured key store.
pub fn restore_hint(config: &crate::config::Config) -> String {
    match &config.sessions.recording_keys {
        crate::config::sessions::RecordingKeysBackend::Local => format!(
            "restore the key files from backup or mount the key directory (sessions.recording_keys_dir = {})",
            config.sessions.recording_keys_dir.display()
        ),
        crate::config::sessions::RecordingKeysBackend::Infisical { project_id } => format!(
            "restore the KMS keys in Infisical project {project_id} (sessions.recording_keys_project_id) or point the broker at the project that holds them"
        ),
    }
}

/// Describes missing keys for people: the first few recordings and `fix`, what to do.
pub fn describe(missing: &[MissingKey], fix: &str) -> String {
    let shown: Vec<String> = missing
        .iter()
        .take(3)
        .map(|m| {
            format!(
                "recording {} needs key {}",
                m.recording,
                m.key_ids.join(" or ")
            )
        })
        .collect();
    let more = if missing.len() > 3 {
        format!(" and {} more", missing.len() - 3)
    } else {
        String::new()
    };
    format!(
        "{}{more}, missing from the recording key store; {fix}",
        shown.join("; ")
    )
}

/// `/readyz` check: every kept recording has a key to decrypt it.
pub struct RecordingKeysCheck {
    pub db: Database,
    pub storage: Arc<dyn recorder::Storage>,
    pub keys: Arc<dyn recorder::KeyStore>,
    /// What to do when keys are missing, from [`restore_hint`].
    pub fix: String,
}

impl ReadinessCheck for RecordingKeysCheck {
    fn name(&self) -> &'static str {
        "recording_keys"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match missing_keys(&self.db, self.storage.clone(), self.keys.clone()).await {
                Ok(missing) if missing.is_empty() => Ok(()),
                Ok(missing) => Err(describe(&missing, &self.fix)),
                Err(error) => Err(format!("{error:#}")),
            }
        })
    }
}
