//! Rotation of key-encryption keys: every data key is re-wrapped under a new key of
//! the same period, and every data key held under a hold key under a new hold key, then
//! the old keys are destroyed. The video is not touched.
//!
//! A rotated key's id is the period's id with a generation suffix, `period-2026-05-r<ms>`
//! ([`RetentionPeriod::from_kek_id`] reads both forms); a rotated hold key is
//! `hold-r<ms>`. A crash during rotation leaves each recording wrapped under either the
//! old or the new key, and an old key is destroyed only after every recording it wraps
//! was re-wrapped, so nothing becomes unreadable.
//!
//! NOTE: rotation and [`crate::place_hold`] both rewrite `recording.json`; running them
//! at the same time on the same recording can lose one of the two changes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::RecorderError;
use crate::keys::{KekId, KeyStore};
use crate::metadata::{self, RecordingMetadata, RetentionPeriod};
use crate::storage::Storage;

/// Result of [`rotate_keys`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Recordings whose data key was re-wrapped under a new period key.
    pub rewrapped: Vec<Uuid>,
    /// Held recordings whose data key was re-wrapped under the new hold key.
    pub hold_rewrapped: Vec<Uuid>,
    /// New keys, one per rotated period key.
    pub new_keys: Vec<KekId>,
    /// Old keys destroyed after their recordings were re-wrapped.
    pub destroyed_keys: Vec<KekId>,
    /// Recordings whose metadata could not be read; every old key was kept.
    pub unreadable: Vec<(Uuid, String)>,
}

/// Re-wraps every data key under a new key of its retention period and every hold wrap
/// under a new hold key, then destroys the old period and hold keys.
pub fn rotate_keys(
    storage: &dyn Storage,
    keys: &dyn KeyStore,
    now: DateTime<Utc>,
) -> Result<RotationReport, RecorderError> {
    let mut report = RotationReport::default();
    let mut by_key: BTreeMap<KekId, Vec<RecordingMetadata>> = BTreeMap::new();
    let mut blocked = false;
    for recording in storage.list_recordings()? {
        match metadata::read_metadata(storage, recording) {
            Ok(metadata) => by_key
                .entry(metadata.period_kek.clone())
                .or_default()
                .push(metadata),
            Err(error @ (RecorderError::InvalidMetadata { .. } | RecorderError::NotFound(_))) => {
                report.unreadable.push((recording, error.to_string()));
                blocked = true;
            }
            Err(error) => return Err(error),
        }
    }

    for old in keys.list()? {
        let Some(period) = RetentionPeriod::from_kek_id(&old) else {
            continue;
        };
        let new = KekId::new(format!("{}-r{}", period.base_id(), now.timestamp_millis()))?;
        if new == old {
            continue;
        }
        keys.create_if_missing(&new)?;
        report.new_keys.push(new.clone());

        for mut metadata in by_key.remove(&old).unwrap_or_default() {
            let dek = metadata::unwrap_dek(keys, &metadata)?;
            let aad = metadata::dek_aad(metadata.recording_id, &new, metadata.expires_at);
            let wrapped = keys.wrap(&new, &dek, &aad)?;
            metadata.wrapped_keys.retain(|w| w.kek_id != old);
            metadata.wrapped_keys.push(wrapped);
            metadata.period_kek = new.clone();
            metadata::write_metadata(storage, &metadata)?;
            report.rewrapped.push(metadata.recording_id);
        }

        if !blocked {
            keys.destroy(&old)?;
            tracing::info!(kek.old = %old, kek.new = %new, "Rotated a retention period key");
            report.destroyed_keys.push(old);
        }
    }

    rotate_hold_keys(storage, keys, now, blocked, &mut report)?;
    Ok(report)
}

/// Re-wraps every hold wrap under a new hold key, then destroys the old hold keys unless
/// a recording's metadata could not be read.
fn rotate_hold_keys(
    storage: &dyn Storage,
    keys: &dyn KeyStore,
    now: DateTime<Utc>,
    mut blocked: bool,
    report: &mut RotationReport,
) -> Result<(), RecorderError> {
    let new = KekId::hold_generation(now.timestamp_millis());
    let old_keys: Vec<KekId> = keys
        .list()?
        .into_iter()
        .filter(|id| id.is_hold() && *id != new)
        .collect();
    if old_keys.is_empty() {
        return Ok(());
    }
    keys.create_if_missing(&new)?;
    report.new_keys.push(new.clone());

    // The period pass above rewrote metadata, so each recording is read again.
    for recording in storage.list_recordings()? {
        let mut metadata = match metadata::read_metadata(storage, recording) {
            Ok(metadata) => metadata,
            Err(RecorderError::InvalidMetadata { .. } | RecorderError::NotFound(_)) => {
                blocked = true;
                continue;
            }
            Err(error) => return Err(error),
        };
        if !metadata
            .wrapped_keys
            .iter()
            .any(|w| w.kek_id.is_hold() && w.kek_id != new)
        {
            continue;
        }
        let dek = metadata::unwrap_dek(keys, &metadata)?;
        let aad = metadata::dek_aad(recording, &new, metadata.expires_at);
        let wrapped = keys.wrap(&new, &dek, &aad)?;
        metadata.wrapped_keys.retain(|w| !w.kek_id.is_hold());
        metadata.wrapped_keys.push(wrapped);
        metadata::write_metadata(storage, &metadata)?;
        report.hold_rewrapped.push(recording);
    }

    if !blocked {
        for old in old_keys {
            keys.destroy(&old)?;
            tracing::info!(kek.old = %old, kek.new = %new, "Rotated a hold key");
            report.destroyed_keys.push(old);
        }
    }
    Ok(())
}
