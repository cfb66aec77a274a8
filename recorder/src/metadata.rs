//! The recording's metadata object `recording.json`: dates, retention period and the
//! wrapped data keys.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{KeyError, RecorderError, StorageError};
use crate::keys::{KekId, KeyStore, SecretKey, WrappedKey};
use crate::storage::Storage;
use crate::types::StreamConfig;

/// Name of the object that contains a recording's metadata and wrapped data keys. The
/// writer stores it before any segment.
pub const METADATA_NAME: &str = "recording.json";
pub(crate) const METADATA_VERSION: u16 = 1;

/// Length of a retention period. All recordings that expire within one period share its
/// key-encryption key, which is destroyed once the period has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodLength {
    /// One UTC calendar day; key ids look like `period-2026-05-17`.
    Day,
    /// One UTC calendar month; key ids look like `period-2026-05`.
    #[default]
    Month,
}

/// A retention period: its key id and the instant it ends (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPeriod {
    /// The period's key-encryption key.
    pub kek_id: KekId,
    /// First instant after the period. Every recording of the period has expired then.
    pub ends_at: DateTime<Utc>,
    /// For a rotated key, the period's id without the rotation suffix.
    pub base: Option<KekId>,
}

impl PeriodLength {
    /// Returns the period that contains `expires_at`.
    pub fn period_for(self, expires_at: DateTime<Utc>) -> RetentionPeriod {
        let date = expires_at.date_naive();
        match self {
            PeriodLength::Day => {
                let next = date.succ_opt().expect("date within chrono's range");
                RetentionPeriod {
                    kek_id: KekId::new(format!("period-{}", date.format("%Y-%m-%d")))
                        .expect("valid id"),
                    ends_at: midnight(next),
                    base: None,
                }
            }
            PeriodLength::Month => {
                let (year, month) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                let next = NaiveDate::from_ymd_opt(year, month, 1).expect("first of month exists");
                RetentionPeriod {
                    kek_id: KekId::new(format!("period-{}", date.format("%Y-%m")))
                        .expect("valid id"),
                    ends_at: midnight(next),
                    base: None,
                }
            }
        }
    }
}

impl RetentionPeriod {
    /// Parses a period key id (`period-YYYY-MM-DD` or `period-YYYY-MM`) back into its
    /// period. Returns `None` for other keys, such as the hold key.
    pub fn from_kek_id(id: &KekId) -> Option<Self> {
        let rest = id.as_str().strip_prefix("period-")?;
        // A rotated key carries a generation suffix `-r<digits>`.
        let rest = match rest.rsplit_once("-r") {
            Some((base, generation))
                if !generation.is_empty() && generation.bytes().all(|b| b.is_ascii_digit()) =>
            {
                base
            }
            _ => rest,
        };
        let (length, start) = match rest.len() {
            10 => (
                PeriodLength::Day,
                NaiveDate::parse_from_str(rest, "%Y-%m-%d").ok()?,
            ),
            7 => (
                PeriodLength::Month,
                NaiveDate::parse_from_str(&format!("{rest}-01"), "%Y-%m-%d").ok()?,
            ),
            _ => return None,
        };
        let mut period = length.period_for(midnight(start));
        if !id.as_str().starts_with(period.kek_id.as_str()) {
            return None;
        }
        if period.kek_id != *id {
            period.base = Some(period.kek_id.clone());
            period.kek_id = id.clone();
        }
        Some(period)
    }

    /// Returns the period's id without a rotation suffix.
    pub fn base_id(&self) -> &KekId {
        self.base.as_ref().unwrap_or(&self.kek_id)
    }
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// What `recording.json` contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingMetadata {
    /// Metadata format version.
    pub format_version: u16,
    /// The recording.
    pub recording_id: Uuid,
    /// When the recording started.
    pub created_at: DateTime<Utc>,
    /// First instant at which the recording is no longer retained.
    pub expires_at: DateTime<Utc>,
    /// Key-encryption key of the retention period that contains `expires_at`.
    pub period_kek: KekId,
    /// End of that retention period.
    pub period_ends_at: DateTime<Utc>,
    /// Stream configuration known when the recording started.
    pub stream: Option<StreamConfig>,
    /// The data key, wrapped under the period key and, once held, under the hold key.
    pub wrapped_keys: Vec<WrappedKey>,
}

impl RecordingMetadata {
    /// Reports whether the recording has expired at `now`: `now >= expires_at`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }

    /// Reports whether the data key is wrapped under a hold key of any generation.
    pub fn has_hold_wrap(&self) -> bool {
        self.wrapped_keys.iter().any(|w| w.kek_id.is_hold())
    }

    /// Reads a recording's metadata object. It is not encrypted: it holds dates and
    /// wrapped keys only.
    pub fn read(storage: &dyn Storage, recording: Uuid) -> Result<Self, RecorderError> {
        read_metadata(storage, recording)
    }
}

/// Associated data for wrapping a recording's data key: binds the recording id, the
/// wrapping key and the expiry, so altered metadata makes the key unusable.
pub(crate) fn dek_aad(recording: Uuid, kek: &KekId, expires_at: DateTime<Utc>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(96);
    aad.extend_from_slice(b"strongroom/dek-wrap/v1\0");
    aad.extend_from_slice(recording.as_bytes());
    aad.extend_from_slice(kek.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(&expires_at.timestamp().to_be_bytes());
    aad.extend_from_slice(&expires_at.timestamp_subsec_nanos().to_be_bytes());
    aad
}

pub(crate) fn read_metadata(
    storage: &dyn Storage,
    recording: Uuid,
) -> Result<RecordingMetadata, RecorderError> {
    let bytes = match storage.get(recording, METADATA_NAME) {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => {
            return Err(if storage.exists(recording)? {
                RecorderError::InvalidMetadata {
                    recording,
                    reason: format!("{METADATA_NAME} is missing"),
                }
            } else {
                RecorderError::NotFound(recording)
            });
        }
        Err(error) => return Err(error.into()),
    };
    let metadata: RecordingMetadata =
        serde_json::from_slice(&bytes).map_err(|error| RecorderError::InvalidMetadata {
            recording,
            reason: error.to_string(),
        })?;
    if metadata.recording_id != recording {
        return Err(RecorderError::InvalidMetadata {
            recording,
            reason: format!("it names recording {}", metadata.recording_id),
        });
    }
    if metadata.format_version != METADATA_VERSION {
        return Err(RecorderError::InvalidMetadata {
            recording,
            reason: format!("unsupported format version {}", metadata.format_version),
        });
    }
    Ok(metadata)
}

pub(crate) fn write_metadata(
    storage: &dyn Storage,
    metadata: &RecordingMetadata,
) -> Result<(), RecorderError> {
    let json = serde_json::to_vec_pretty(metadata).expect("metadata serialises");
    storage.put(metadata.recording_id, METADATA_NAME, &json)?;
    Ok(())
}

/// Unwraps the data key with the first wrapping key that still exists.
pub(crate) fn unwrap_dek(
    keys: &dyn KeyStore,
    metadata: &RecordingMetadata,
) -> Result<SecretKey, KeyError> {
    let mut first_missing = None;
    for wrapped in &metadata.wrapped_keys {
        let aad = dek_aad(metadata.recording_id, &wrapped.kek_id, metadata.expires_at);
        match keys.unwrap(wrapped, &aad) {
            Ok(key) => return Ok(key),
            Err(KeyError::NotFound(id)) => {
                first_missing.get_or_insert(id);
            }
            Err(error) => return Err(error),
        }
    }
    Err(KeyError::NotFound(
        first_missing.unwrap_or_else(|| metadata.period_kek.clone()),
    ))
}

/// Maximum time ahead that a recording may expire; guards against a unit mistake
/// (seconds taken as milliseconds) in the caller's retention setting.
pub(crate) const MAX_RETENTION: Duration = Duration::days(366 * 100);
