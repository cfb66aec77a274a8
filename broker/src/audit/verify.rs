//! Offline verification of the audit chain.

use anyhow::Context;
use futures::TryStreamExt;
use serde::Serialize;

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
    pub problems: Vec<ChainProblem>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Walks the whole chain in sequence order and reports every problem found.
pub async fn verify(db: &Database) -> anyhow::Result<VerifyReport> {
    let query = format!("SELECT {SELECT_COLUMNS} FROM audit_events ORDER BY seq");
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(query)).fetch(db.pool());

    let mut report = VerifyReport {
        head_hash: GENESIS_HASH.to_owned(),
        ..VerifyReport::default()
    };
    let mut expected_seq = 1;

    while let Some(row) = rows.try_next().await.context("cannot read audit events")? {
        let event = StoredEvent::from_row(&row).context("cannot decode an audit event")?;

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
        if event.compute_hash() != event.hash {
            report.problems.push(ChainProblem {
                seq: event.seq,
                kind: ChainProblemKind::HashMismatch,
            });
        }

        expected_seq = event.seq + 1;
        report.head_seq = event.seq;
        report.head_hash = event.hash;
        report.events_checked += 1;
    }

    Ok(report)
}
