//! `strongroom audit verify` and `strongroom audit prune`.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;

use super::{Actor, AuditLog, AuditSigningKey, checkpoint};
use crate::config::Config;
use crate::config::audit::MAX_RETENTION_DAYS;
use crate::db::Database;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole hash chain and the signed checkpoints, and report every edited,
    /// deleted or reordered event.
    Verify {
        /// The audit signing public key (64 hex digits) that checkpoints must carry.
        /// Default: the key in the data directory, when it exists.
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
    },
    /// Delete audit events older than a date, keeping those that stored recordings
    /// refer to, and leave a signed checkpoint so that the chain still verifies.
    Prune {
        /// Delete events before this UTC date (`YYYY-MM-DD`) or RFC 3339 time.
        #[arg(long, value_name = "DATE", conflicts_with = "retention_days")]
        before: Option<String>,
        /// Keep this many days of events, 1 to 3653. Default: `audit.retention_days`
        /// of the configuration (90 unless set).
        #[arg(
            long,
            value_name = "DAYS",
            value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_RETENTION_DAYS))
        )]
        retention_days: Option<u32>,
    },
}

/// Rejects a `--before` later than one day before `now`. Pruning keeps at least the
/// last day of events, as the smallest `audit.retention_days` does, so a mistyped
/// year cannot delete the whole trail.
pub fn check_before(before: DateTime<Utc>, now: DateTime<Utc>) -> anyhow::Result<()> {
    let latest = now - chrono::Duration::days(1);
    if before > latest {
        anyhow::bail!(
            "--before {} is later than one day ago ({}); pruning keeps at least the last day of events, so give an earlier date",
            before.to_rfc3339(),
            latest.to_rfc3339()
        );
    }
    Ok(())
}

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time.
pub fn parse_before(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|time| time.and_utc())
        .with_context(|| {
            format!("invalid --before {text:?}; use YYYY-MM-DD or an RFC 3339 time such as 2026-09-01T00:00:00Z")
        })
}

pub async fn run(config: &Config, db: &Database, command: AuditCommand) -> i32 {
    let result = match command {
        AuditCommand::Verify { public_key } => verify(config, db, public_key.as_deref()).await,
        AuditCommand::Prune {
            before,
            retention_days,
        } => {
            let days = retention_days.unwrap_or(config.audit.retention_days);
            prune(config, db, before.as_deref(), days).await
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            2
        }
    }
}

async fn verify(config: &Config, db: &Database, public_key: Option<&str>) -> anyhow::Result<i32> {
    let key = match public_key {
        Some(text) => Some(checkpoint::parse_public_key(text)?),
        None => {
            let path = checkpoint::key_path(&config.data_dir);
            if path.exists() {
                Some(AuditSigningKey::load_or_create(&config.data_dir)?.verifying_key())
            } else {
                None
            }
        }
    };
    if key.is_none() {
        eprintln!(
            "warning: no audit public key given and none in the data directory; checkpoints are checked only against the key they name"
        );
    }
    let report = super::verify_with_key(db, key.as_ref()).await?;
    if report.is_intact() {
        println!(
            "audit chain intact: {} events, {} checkpoints, head {} {}",
            report.events_checked, report.checkpoints_checked, report.head_seq, report.head_hash
        );
        return Ok(0);
    }
    println!(
        "audit chain BROKEN: {} events checked",
        report.events_checked
    );
    if let Some(first) = report.first_problem() {
        println!("first problem at event {}: {:?}", first.seq, first.kind);
    }
    for problem in &report.problems {
        println!("  event {}: {:?}", problem.seq, problem.kind);
    }
    Ok(1)
}

async fn prune(
    config: &Config,
    db: &Database,
    before: Option<&str>,
    retention_days: u32,
) -> anyhow::Result<i32> {
    let now = Utc::now();
    let before = match before {
        Some(text) => parse_before(text)?,
        None => now - chrono::Duration::days(i64::from(retention_days)),
    };
    check_before(before, now)?;
    sqlx::query("SELECT 1 FROM audit_events WHERE 1 = 0")
        .execute(db.pool())
        .await
        .context(
            "cannot read the audit trail; if this database is new, start the broker or run `strongroom migrate` first",
        )?;
    // No migration here: pruning may run under a role that may delete audit events
    // but not change the schema.
    let key = AuditSigningKey::load_or_create(&config.data_dir)?;
    let retained = retained_recordings(config)?;
    let audit = AuditLog::new(db.clone(), Arc::new(crate::clock::SystemClock));
    let report = audit
        .prune(
            before.timestamp_millis(),
            &retained,
            &key,
            Actor::System("cli"),
        )
        .await?;
    match &report.checkpoint {
        Some(checkpoint) => println!(
            "pruned {} {} before {}; kept {} that stored recordings refer to; checkpoint at event {} signed by {}",
            report.pruned,
            if report.pruned == 1 {
                "event"
            } else {
                "events"
            },
            before.to_rfc3339(),
            report.kept,
            checkpoint.last_seq,
            checkpoint.public_key
        ),
        None => println!(
            "no audit event before {} to prune ({} kept for stored recordings)",
            before.to_rfc3339(),
            report.kept
        ),
    }
    Ok(0)
}

/// Targets (`recording:ID`) of every recording still in the store: retained or held.
fn retained_recordings(config: &Config) -> anyhow::Result<HashSet<String>> {
    let (storage, _) = crate::recordings::stores(config)?;
    let recordings = storage
        .list_recordings()
        .context("cannot list stored recordings")?;
    Ok(recordings
        .into_iter()
        .map(|id| format!("recording:{id}"))
        .collect())
}
