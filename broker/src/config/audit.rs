//! The `[audit]` section: how long audit events are kept.

use serde::Deserialize;

use super::ConfigProblem;
use super::raw::{Lenient, take};

/// Days of audit events kept when `audit.retention_days` is not set.
pub const DEFAULT_RETENTION_DAYS: u32 = 90;
/// Longest audit retention accepted: ten years.
pub const MAX_RETENTION_DAYS: u32 = 3653;

/// Raw mirror of `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawAudit {
    /// `audit.retention_days`: days of events `strongroom audit prune` keeps when no
    /// `--before` or `--retention-days` is given. Default 90.
    pub retention_days: Option<Lenient<u32>>,
}

/// Validated `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention_days: DEFAULT_RETENTION_DAYS,
        }
    }
}

/// Validates `[audit]`, appending every problem found.
pub fn validate_audit(raw: &RawAudit, problems: &mut Vec<ConfigProblem>) -> Option<AuditConfig> {
    let key = "audit.retention_days";
    let Some(days) = take(&raw.retention_days, key, "a whole number of days", problems) else {
        return raw.retention_days.is_none().then(AuditConfig::default);
    };
    if !(1..=MAX_RETENTION_DAYS).contains(&days) {
        problems.push(ConfigProblem {
            key: key.to_owned(),
            message: format!("{days} is out of range; use 1 to {MAX_RETENTION_DAYS} days"),
        });
        return None;
    }
    Some(AuditConfig {
        retention_days: days,
    })
}
