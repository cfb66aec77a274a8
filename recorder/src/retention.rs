//! Retention: deleting expired recordings, destroying the keys of ended periods, and
//! keeping held recordings readable under the hold key.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{KeyError, RecorderError};
use crate::keys::{KekId, KeyStore};
use crate::metadata::{self, RecordingMetadata, RetentionPeriod};
use crate::storage::Storage;

/// Wraps a recording's data key under the hold key as well, so that it stays readable
/// after its period's key is destroyed. Returns `false` if it was already wrapped so.
pub fn place_hold(
    storage: &dyn Storage,
    keys: &dyn KeyStore,
    recording: Uuid,
) -> Result<bool, RecorderError> {
    let mut metadata = metadata::read_metadata(storage, recording)?;
    if metadata.has_hold_wrap() {
        return Ok(false);
    }
    let hold = crate::keys::current_hold_key(keys)?;
    let dek = metadata::unwrap_dek(keys, &metadata)?;
    let aad = metadata::dek_aad(recording, &hold, metadata.expires_at);
    let wrapped = keys.wrap(&hold, &dek, &aad)?;
    metadata.wrapped_keys.push(wrapped);
    metadata::write_metadata(storage, &metadata)?;
    tracing::info!(recording.id = %recording, "Wrapped recording key under the hold key");
    Ok(true)
}

/// Summary of a retention sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Expired, unheld recordings whose files were deleted.
    pub deleted: Vec<Uuid>,
    /// Held recordings whose key was wrapped under the hold key during this sweep.
    pub wrapped_for_hold: Vec<Uuid>,
    /// Period keys destroyed.
    pub destroyed_keys: Vec<KekId>,
    /// Recordings whose metadata could not be read; they were left alone, and their
    /// periods' keys were kept.
    pub unreadable: Vec<(Uuid, String)>,
}

/// Applies retention at `now`:
///
/// - a recording that is not held and has expired (`now >= expires_at`) is deleted;
/// - a held recording (`is_held` returns true) is never deleted, and its key is wrapped
///   under the hold key before its period's key can be destroyed;
/// - a period key is destroyed once its period has ended (`now >= ends_at`, so every
///   recording of the period has expired) and no unheld recording still uses it.
///
/// The hold key is never destroyed here. Errors stop the sweep; what was done before
/// them stays done and a later sweep continues.
pub fn sweep_retention(
    storage: &dyn Storage,
    keys: &dyn KeyStore,
    now: DateTime<Utc>,
    is_held: &dyn Fn(Uuid) -> bool,
) -> Result<RetentionReport, RecorderError> {
    let mut report = RetentionReport::default();
    // Period key id -> whether a recording that still needs it remains.
    let mut periods: BTreeMap<KekId, bool> = BTreeMap::new();
    let mut blocked_by_unreadable = false;

    for recording in storage.list_recordings()? {
        let metadata = match metadata::read_metadata(storage, recording) {
            Ok(metadata) => metadata,
            Err(error @ (RecorderError::InvalidMetadata { .. } | RecorderError::NotFound(_))) => {
                tracing::warn!(recording.id = %recording, error = %error, "Skipping recording with unreadable metadata");
                report.unreadable.push((recording, error.to_string()));
                blocked_by_unreadable = true;
                continue;
            }
            Err(error) => return Err(error),
        };
        let needs_period_key = sweep_recording(
            storage,
            keys,
            now,
            is_held(recording),
            &metadata,
            &mut report,
        )?;
        let entry = periods.entry(metadata.period_kek.clone()).or_insert(false);
        *entry |= needs_period_key;
    }

    // Period keys without recordings are included, for sweeps that stopped between
    // deleting the recordings and destroying the key.
    for id in keys.list()? {
        if RetentionPeriod::from_kek_id(&id).is_some() {
            periods.entry(id).or_insert(false);
        }
    }

    for (id, in_use) in periods {
        let Some(period) = RetentionPeriod::from_kek_id(&id) else {
            continue;
        };
        if in_use || now < period.ends_at || blocked_by_unreadable {
            continue;
        }
        if keys.contains(&id)? {
            keys.destroy(&id)?;
            tracing::info!(kek.id = %id, period.ends_at = %period.ends_at, "Destroyed key of ended retention period");
            report.destroyed_keys.push(id);
        }
    }
    Ok(report)
}

/// Applies retention to one recording. Returns whether the recording still needs its
/// period key.
fn sweep_recording(
    storage: &dyn Storage,
    keys: &dyn KeyStore,
    now: DateTime<Utc>,
    held: bool,
    metadata: &RecordingMetadata,
    report: &mut RetentionReport,
) -> Result<bool, RecorderError> {
    let recording = metadata.recording_id;
    if held {
        if !metadata.has_hold_wrap() {
            match place_hold(storage, keys, recording) {
                Ok(_) => report.wrapped_for_hold.push(recording),
                // The period key is already gone: nothing can be re-wrapped, and keeping
                // the recording costs nothing.
                Err(RecorderError::Key(KeyError::NotFound(_))) => {
                    tracing::error!(recording.id = %recording, "Held recording has no remaining key; it is unreadable");
                }
                Err(error) => return Err(error),
            }
        }
        return Ok(false);
    }
    if metadata.is_expired(now) {
        storage.delete_recording(recording)?;
        tracing::info!(recording.id = %recording, expires_at = %metadata.expires_at, "Deleted expired recording");
        report.deleted.push(recording);
        return Ok(false);
    }
    Ok(true)
}

/// Lists the period keys that a sweep at `now` would consider ended.
pub fn ended_periods(keys: &dyn KeyStore, now: DateTime<Utc>) -> Result<BTreeSet<KekId>, KeyError> {
    Ok(keys
        .list()?
        .into_iter()
        .filter(|id| RetentionPeriod::from_kek_id(id).is_some_and(|p| now >= p.ends_at))
        .collect())
}
