//! Pruning of old audit events, with Ed25519-signed checkpoints.
//!
//! Pruning deletes events that occurred before a cut-off, except those whose target
//! is a recording that is still stored (retained or held). Before deleting, it stores
//! a checkpoint that names the last pruned event's sequence number and hash and a
//! digest of the older events it kept, signed with the audit signing key. The
//! verifier then starts the chain at the checkpoint and checks every kept event
//! against the digest, so the chain still proves that nothing after the checkpoint
//! was edited, removed or reordered.
//!
//! The database triggers allow deleting an event only when a checkpoint covers its
//! sequence number. A forged checkpoint needs the signing key, and `audit verify`
//! rejects every checkpoint whose signature does not match the pinned public key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{
    Action, Actor, AuditLog, EventBuilder, POSTGRES_APPEND_LOCK, SELECT_COLUMNS, StoredEvent,
};
use crate::db::Backend;

/// File name of the audit signing key (an Ed25519 seed) in the data directory.
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";

/// The broker's audit signing key. Its `Debug` output shows only the public key.
pub struct AuditSigningKey(SigningKey);

impl std::fmt::Debug for AuditSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditSigningKey(public {})", self.public_key_hex())
    }
}

impl AuditSigningKey {
    /// Reads `DATA_DIR/audit-signing.key`, creating it (mode 0600) when missing.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<AuditSigningKey> {
        let seed = crate::keyfile::load_or_create(
            &key_path(data_dir),
            "audit signing",
            crate::keyfile::KeyKind::Signing,
        )?;
        Ok(AuditSigningKey(SigningKey::from_bytes(&seed)))
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// Returns the public key as lowercase hex, the form auditors pin.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.verifying_key().to_bytes())
    }
}

pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SIGNING_KEY_FILE)
}

/// Parses a public key given as 64 hex digits.
pub fn parse_public_key(text: &str) -> anyhow::Result<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| {
            format!("invalid audit public key {text:?}; expected 64 hexadecimal digits")
        })?;
    VerifyingKey::from_bytes(&bytes)
        .with_context(|| format!("invalid audit public key {text:?}: not an Ed25519 point"))
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Checkpoint {
    pub id: i64,
    pub created_at_ms: i64,
    /// Sequence number of the last pruned event.
    pub last_seq: i64,
    /// Hash of the last pruned event; the next event's `prev_hash` must equal it.
    pub last_hash: String,
    /// Events that occurred before this time were pruned (Unix milliseconds).
    pub pruned_before_ms: i64,
    pub pruned_count: i64,
    /// Events at or before `last_seq` that were kept because a stored recording
    /// refers to them.
    pub kept_count: i64,
    /// SHA-256 over `SEQ:HASH\n` of every kept event in sequence order, hex.
    pub kept_digest: String,
    /// Ed25519 public key that signed the checkpoint, hex.
    pub public_key: String,
    /// Ed25519 signature over [`Checkpoint::signed_message`], hex.
    pub signature: String,
}

/// The fields covered by a checkpoint's signature, in a fixed order.
#[derive(Serialize)]
struct SignedFields<'a> {
    kind: &'static str,
    id: i64,
    created_at_ms: i64,
    last_seq: i64,
    last_hash: &'a str,
    pruned_before_ms: i64,
    pruned_count: i64,
    kept_count: i64,
    kept_digest: &'a str,
    public_key: &'a str,
}

impl Checkpoint {
    /// Returns the canonical JSON bytes that the signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        let fields = SignedFields {
            kind: "strongroom.audit.checkpoint.v1",
            id: self.id,
            created_at_ms: self.created_at_ms,
            last_seq: self.last_seq,
            last_hash: &self.last_hash,
            pruned_before_ms: self.pruned_before_ms,
            pruned_count: self.pruned_count,
            kept_count: self.kept_count,
            kept_digest: &self.kept_digest,
            public_key: &self.public_key,
        };
        serde_json::to_vec(&fields).expect("checkpoint fields serialise")
    }

    /// Checks the signature against `key`, which must also be the stored public key.
    pub fn signature_valid(&self, key: &VerifyingKey) -> bool {
        if self.public_key != hex::encode(key.to_bytes()) {
            return false;
        }
        let Some(bytes) = hex::decode(&self.signature)
            .ok()
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        else {
            return false;
        };
        key.verify(&self.signed_message(), &Signature::from_bytes(&bytes))
            .is_ok()
    }

    fn from_row(row: &sqlx::any::AnyRow) -> Result<Checkpoint, sqlx::Error> {
        Ok(Checkpoint {
            id: row.try_get("id")?,
            created_at_ms: row.try_get("created_at_ms")?,
            last_seq: row.try_get("last_seq")?,
            last_hash: row.try_get("last_hash")?,
            pruned_before_ms: row.try_get("pruned_before_ms")?,
            pruned_count: row.try_get("pruned_count")?,
            kept_count: row.try_get("kept_count")?,
            kept_digest: row.try_get("kept_digest")?,
            public_key: row.try_get("public_key")?,
            signature: row.try_get("signature")?,
        })
    }
}

/// SHA-256 over `SEQ:HASH\n` of `events` in the given order, hex.
pub fn kept_digest<'a>(events: impl IntoIterator<Item = &'a StoredEvent>) -> String {
    let mut hasher = Sha256::new();
    for event in events {
        hasher.update(format!("{}:{}\n", event.seq, event.hash).as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Reads every checkpoint, oldest first.
pub async fn list_checkpoints(db: &crate::db::Database) -> anyhow::Result<Vec<Checkpoint>> {
    let rows = sqlx::query(
        "SELECT id, created_at_ms, last_seq, last_hash, pruned_before_ms, pruned_count, kept_count, kept_digest, public_key, signature \
         FROM audit_checkpoints ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .context("cannot read audit checkpoints")?;
    rows.iter()
        .map(Checkpoint::from_row)
        .collect::<Result<_, _>>()
        .context("cannot decode an audit checkpoint")
}

/// Result of one pruning run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// The checkpoint written, or `None` when no event was old enough.
    pub checkpoint: Option<Checkpoint>,
    pub pruned: i64,
    pub kept: i64,
}

impl AuditLog {
    /// Deletes events that occurred before `before_ms`, keeping those whose target is
    /// one of `retained_targets` (such as `recording:ID` for each stored recording),
    /// and leaves a signed checkpoint. The run itself is audited as
    /// `system.audit.pruned`, after the deletion.
    ///
    /// Only events before the oldest event that must stay in the chain are pruned:
    /// pruning stops at the first event at or after `before_ms`.
    pub async fn prune(
        &self,
        before_ms: i64,
        retained_targets: &HashSet<String>,
        key: &AuditSigningKey,
        actor: Actor,
    ) -> anyhow::Result<PruneReport> {
        let mut transaction = self
            .db
            .begin_write()
            .await
            .context("cannot start the pruning transaction")?;
        let report = self
            .prune_locked(&mut transaction, before_ms, retained_targets, key)
            .await?;
        transaction
            .commit()
            .await
            .context("cannot commit the pruning")?;

        let event = EventBuilder::new(actor, Action::AuditPruned)
            .detail("before_ms", before_ms)
            .detail("pruned", report.pruned)
            .detail("kept", report.kept)
            .detail(
                "checkpoint_last_seq",
                report
                    .checkpoint
                    .as_ref()
                    .map(|checkpoint| checkpoint.last_seq),
            )
            .build();
        self.append(event).await?;
        Ok(report)
    }

    async fn prune_locked(
        &self,
        connection: &mut sqlx::AnyConnection,
        before_ms: i64,
        retained_targets: &HashSet<String>,
        key: &AuditSigningKey,
    ) -> anyhow::Result<PruneReport> {
        // The append lock keeps events from being appended while the chain is cut.
        if self.db.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(POSTGRES_APPEND_LOCK)
                .execute(&mut *connection)
                .await
                .context("cannot take the audit append lock")?;
        }

        // The cut-off is the first event at or after `before_ms`, so that the chain
        // after the checkpoint has no hole even if clocks of two brokers disagreed.
        let boundary: Option<i64> =
            sqlx::query("SELECT MIN(seq) AS seq FROM audit_events WHERE occurred_at_ms >= $1")
                .bind(before_ms)
                .fetch_one(&mut *connection)
                .await
                .context("cannot find the pruning boundary")?
                .try_get("seq")?;
        let query =
            format!("SELECT {SELECT_COLUMNS} FROM audit_events WHERE seq < $1 ORDER BY seq");
        let rows = sqlx::query(sqlx::AssertSqlSafe(query))
            .bind(boundary.unwrap_or(i64::MAX))
            .fetch_all(&mut *connection)
            .await
            .context("cannot read the events to prune")?;
        let old: Vec<StoredEvent> = rows
            .iter()
            .map(StoredEvent::from_row)
            .collect::<Result<_, _>>()
            .context("cannot decode an audit event")?;

        let Some(last) = old.last() else {
            return Ok(PruneReport {
                checkpoint: None,
                pruned: 0,
                kept: 0,
            });
        };
        let (kept, pruned): (Vec<&StoredEvent>, Vec<&StoredEvent>) =
            old.iter().partition(|event| {
                event
                    .target
                    .as_ref()
                    .is_some_and(|target| retained_targets.contains(target))
            });
        if pruned.is_empty() {
            return Ok(PruneReport {
                checkpoint: None,
                pruned: 0,
                kept: kept.len() as i64,
            });
        }

        let previous_id: i64 =
            sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM audit_checkpoints")
                .fetch_one(&mut *connection)
                .await
                .context("cannot read the newest checkpoint")?
                .try_get("id")?;
        let mut checkpoint = Checkpoint {
            id: previous_id + 1,
            created_at_ms: self.clock.now().timestamp_millis(),
            last_seq: last.seq,
            last_hash: last.hash.clone(),
            pruned_before_ms: before_ms,
            pruned_count: pruned.len() as i64,
            kept_count: kept.len() as i64,
            kept_digest: kept_digest(kept.iter().copied()),
            public_key: key.public_key_hex(),
            signature: String::new(),
        };
        checkpoint.signature = hex::encode(key.0.sign(&checkpoint.signed_message()).to_bytes());

        sqlx::query(
            "INSERT INTO audit_checkpoints (id, created_at_ms, last_seq, last_hash, pruned_before_ms, pruned_count, kept_count, kept_digest, public_key, signature) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(checkpoint.id)
        .bind(checkpoint.created_at_ms)
        .bind(checkpoint.last_seq)
        .bind(&checkpoint.last_hash)
        .bind(checkpoint.pruned_before_ms)
        .bind(checkpoint.pruned_count)
        .bind(checkpoint.kept_count)
        .bind(&checkpoint.kept_digest)
        .bind(&checkpoint.public_key)
        .bind(&checkpoint.signature)
        .execute(&mut *connection)
        .await
        .context("cannot store the audit checkpoint")?;

        for event in &pruned {
            sqlx::query("DELETE FROM audit_events WHERE seq = $1")
                .bind(event.seq)
                .execute(&mut *connection)
                .await
                .with_context(|| format!("cannot delete audit event {}", event.seq))?;
        }

        Ok(PruneReport {
            pruned: checkpoint.pruned_count,
            kept: checkpoint.kept_count,
            checkpoint: Some(checkpoint),
        })
    }
}
