//! Offline verification of the audit chain and of the checkpoints left by pruning.

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use futures::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::checkpoint::{Checkpoint, list_checkpoints};
use super::{GENESIS_HASH, SELECT_COLUMNS, StoredEvent};
use crate::db::Database;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainProblemKind {
    /// The stored fields do not produce the stored hash: the event was edited.
    HashMismatch,
    /// `prev_hash` is not the hash of the event before: an event was removed,
    /// inserted or moved.
    BrokenLink,
    /// Sequence numbers skip: events were removed.
    SequenceGap,
    /// A checkpoint's signature does not match the audit public key: the checkpoint
    /// was forged or edited. `seq` is the checkpoint's last pruned event.
    CheckpointSignatureInvalid,
    /// The events kept at or before the newest checkpoint differ from the ones it
    /// names: a kept event was removed, added or moved. `seq` is the checkpoint's
    /// last pruned event.
    KeptEventsChanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainProblem {
    pub seq: i64,
    pub kind: ChainProblemKind,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub events_checked: u64,
    pub head_seq: i64,
    pub head_hash: String,
    /// Checkpoints whose signatures were checked.
    pub checkpoints_checked: u64,
    /// The newest checkpoint's last pruned event, where the chain starts; 0 without one.
    pub chain_starts_after: i64,
    pub problems: Vec<ChainProblem>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// Returns the first problem in chain order.
    pub fn first_problem(&self) -> Option<&ChainProblem> {
        self.problems.iter().min_by_key(|problem| problem.seq)
    }
}

/// Walks the whole chain, checking checkpoint signatures against the public key each
/// checkpoint names. Use [`verify_with_key`] with a pinned key to catch a checkpoint
/// signed by another key.
pub async fn verify(db: &Database) -> anyhow::Result<VerifyReport> {
    verify_with_key(db, None).await
}

/// Walks the whole chain in sequence order and reports every problem found.
///
/// With checkpoints, the chain starts after the newest one: the first later event
/// must have sequence number `last_seq + 1` and link to `last_hash`. Events kept at
/// or before it must each match their own hash, and together the checkpoint's
/// kept digest. `key`, when given, is the only key accepted for checkpoints.
pub async fn verify_with_key(
    db: &Database,
    key: Option<&VerifyingKey>,
) -> anyhow::Result<VerifyReport> {
    let checkpoints = list_checkpoints(db).await?;
    let mut report = VerifyReport {
        head_hash: GENESIS_HASH.to_owned(),
        ..VerifyReport::default()
    };
    for checkpoint in &checkpoints {
        if !checkpoint_signature_valid(checkpoint, key) {
            report.problems.push(ChainProblem {
                seq: checkpoint.last_seq,
                kind: ChainProblemKind::CheckpointSignatureInvalid,
            });
        }
        report.checkpoints_checked += 1;
    }
    let newest = checkpoints.last();
    let mut expected_seq = 1;
    if let Some(checkpoint) = newest {
        report.chain_starts_after = checkpoint.last_seq;
        report.head_seq = checkpoint.last_seq;
        report.head_hash = checkpoint.last_hash.clone();
        expected_seq = checkpoint.last_seq + 1;
    }

    let query = format!("SELECT {SELECT_COLUMNS} FROM audit_events ORDER BY seq");
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(query)).fetch(db.pool());
    let mut kept = Sha256::new();
    let mut kept_count = 0;

    while let Some(row) = rows.try_next().await.context("cannot read audit events")? {
        let event = StoredEvent::from_row(&row).context("cannot decode an audit event")?;
        report.events_checked += 1;

        if event.compute_hash() != event.hash {
            report.problems.push(ChainProblem {
                seq: event.seq,
                kind: ChainProblemKind::HashMismatch,
            });
        }
        if event.seq <= report.chain_starts_after {
            kept.update(format!("{}:{}\n", event.seq, event.hash).as_bytes());
            kept_count += 1;
            continue;
        }

        if event.seq != expected_seq {
            report.problems.push(ChainProblem {
                seq: event.seq,
                kind: ChainProblemKind::SequenceGap,
            });
        }
        if event.prev_hash != report.head_hash {
            report.problems.push(ChainProblem {
                seq: event.seq,
                kind: ChainProblemKind::BrokenLink,
            });
        }
        expected_seq = event.seq + 1;
        report.head_seq = event.seq;
        report.head_hash = event.hash;
    }

    if let Some(checkpoint) = newest {
        let digest = hex::encode(kept.finalize());
        if digest != checkpoint.kept_digest || kept_count != checkpoint.kept_count {
            report.problems.push(ChainProblem {
                seq: checkpoint.last_seq,
                kind: ChainProblemKind::KeptEventsChanged,
            });
        }
    }
    report.problems.sort_by_key(|problem| problem.seq);
    Ok(report)
}

fn checkpoint_signature_valid(checkpoint: &Checkpoint, key: Option<&VerifyingKey>) -> bool {
    match key {
        Some(key) => checkpoint.signature_valid(key),
        None => super::checkpoint::parse_public_key(&checkpoint.public_key)
            .is_ok_and(|own| checkpoint.signature_valid(&own)),
    }
}
