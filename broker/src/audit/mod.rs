//! Append-only, hash-chained audit trail.
//!
//! Every event stores the SHA-256 of the event before it, computed over a canonical
//! JSON form of all its fields. Appends are serialised across every broker sharing the
//! database: PostgreSQL through a transaction-scoped advisory lock, SQLite through the
//! write lock that [`Database::begin_write`] takes at `BEGIN IMMEDIATE`. Sequence
//! numbers are assigned under that lock without gaps, so [`verify`] finds any edited,
//! deleted, inserted or reordered event.
//!
//! Pruning ([`checkpoint`]) deletes old events and leaves an Ed25519-signed checkpoint
//! from which [`verify`] continues the chain.
//!
//! NOTE: the chain alone cannot show that the newest events were removed from the end;
//! a checkpoint covers only the pruned start of the chain.
//!
//! Details must never carry a secret: keys that name one are refused by
//! [`EventBuilder::detail`].

mod action;
pub mod checkpoint;
pub mod cli;
pub mod search;
mod verify;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use sqlx::Row;
use uuid::Uuid;

use crate::clock::Clock;
use crate::db::{Backend, Database};

pub use action::Action;
pub use checkpoint::{AuditSigningKey, Checkpoint, PruneReport};
pub use search::AuditQuery;
pub use verify::{ChainProblem, ChainProblemKind, VerifyReport, verify, verify_with_key};

/// Version of the event layout and of the hash input. Stored with every event.
pub const SCHEMA_VERSION: i64 = 1;

/// `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Key of the PostgreSQL advisory lock that serialises appends ("SRAUDIT1" in ASCII).
pub(crate) const POSTGRES_APPEND_LOCK: i64 = 0x5352_4155_4449_5431;

/// Substrings of detail keys that are refused because they name a secret.
const SECRET_KEY_WORDS: &[&str] = &[
    "password",
    "secret",
    "token",
    "totp",
    "credential_value",
    "private_key",
];

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A person, by their stable user id.
    Person(String),
    /// The broker itself, naming the component (`reconciler`, `retention`, ...).
    System(&'static str),
    /// Someone not yet identified, such as a failed sign-in.
    Anonymous,
}

impl Actor {
    fn as_text(&self) -> String {
        match self {
            Actor::Person(id) => format!("user:{id}"),
            Actor::System(component) => format!("system:{component}"),
            Actor::Anonymous => "anonymous".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// An event about to be appended. Build it with [`EventBuilder`].
#[derive(Debug, Clone)]
pub struct NewEvent {
    actor: Actor,
    action: Action,
    target: Option<String>,
    outcome: Outcome,
    client_addr: Option<IpAddr>,
    session_id: Option<Uuid>,
    details: BTreeMap<String, serde_json::Value>,
}

pub struct EventBuilder(NewEvent);

impl EventBuilder {
    pub fn new(actor: Actor, action: Action) -> EventBuilder {
        EventBuilder(NewEvent {
            actor,
            action,
            target: None,
            outcome: Outcome::Success,
            client_addr: None,
            session_id: None,
            details: BTreeMap::new(),
        })
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.0.target = Some(target.into());
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.0.outcome = outcome;
        self
    }

    pub fn client(mut self, client_addr: Option<IpAddr>) -> Self {
        self.0.client_addr = client_addr;
        self
    }

    pub fn session(mut self, session_id: Uuid) -> Self {
        self.0.session_id = Some(session_id);
        self
    }

    /// Adds a detail. A key naming a secret is dropped and logged as a bug, so that a
    /// mistaken caller cannot put a secret in the trail.
    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        let lower = key.to_ascii_lowercase();
        if SECRET_KEY_WORDS.iter().any(|word| lower.contains(word)) {
            tracing::error!(
                audit.detail_key = key,
                "Audit detail refused because its key names a secret"
            );
            debug_assert!(false, "audit detail key {key} names a secret");
            return self;
        }
        self.0.details.insert(key.to_owned(), value.into());
        self
    }

    pub fn build(self) -> NewEvent {
        self.0
    }
}

/// A stored event as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StoredEvent {
    pub seq: i64,
    pub event_id: String,
    pub schema_version: i64,
    pub occurred_at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub client_addr: Option<String>,
    pub session_id: Option<String>,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The fields covered by an event's hash, in a fixed order.
#[derive(Serialize)]
struct HashInput<'a> {
    schema_version: i64,
    seq: i64,
    event_id: &'a str,
    occurred_at_ms: i64,
    actor: &'a str,
    action: &'a str,
    target: Option<&'a str>,
    outcome: &'a str,
    client_addr: Option<&'a str>,
    session_id: Option<&'a str>,
    details: &'a str,
    prev_hash: &'a str,
}

impl StoredEvent {
    /// Recomputes the hash from the stored fields.
    pub fn compute_hash(&self) -> String {
        let input = HashInput {
            schema_version: self.schema_version,
            seq: self.seq,
            event_id: &self.event_id,
            occurred_at_ms: self.occurred_at_ms,
            actor: &self.actor,
            action: &self.action,
            target: self.target.as_deref(),
            outcome: &self.outcome,
            client_addr: self.client_addr.as_deref(),
            session_id: self.session_id.as_deref(),
            details: &self.details,
            prev_hash: &self.prev_hash,
        };
        let canonical = serde_json::to_vec(&input).expect("hash input serialises");
        hex::encode(Sha256::digest(canonical))
    }

    pub(crate) fn from_row(row: &sqlx::any::AnyRow) -> Result<StoredEvent, sqlx::Error> {
        Ok(StoredEvent {
            seq: row.try_get("seq")?,
            event_id: row.try_get("event_id")?,
            schema_version: row.try_get("schema_version")?,
            occurred_at_ms: row.try_get("occurred_at_ms")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            target: row.try_get("target")?,
            outcome: row.try_get("outcome")?,
            client_addr: row.try_get("client_addr")?,
            session_id: row.try_get("session_id")?,
            details: row.try_get("details")?,
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
        })
    }
}

pub(crate) const SELECT_COLUMNS: &str = "seq, event_id, schema_version, occurred_at_ms, actor, action, target, outcome, client_addr, session_id, details, prev_hash, hash";

/// Writer and reader of the audit trail.
#[derive(Clone)]
pub struct AuditLog {
    db: Database,
    clock: Arc<dyn Clock>,
}

impl AuditLog {
    pub fn new(db: Database, clock: Arc<dyn Clock>) -> AuditLog {
        AuditLog { db, clock }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Appends one event and returns it as stored.
    #[tracing::instrument(skip_all, fields(audit.action = event.action.as_str()))]
    pub async fn append(&self, event: NewEvent) -> anyhow::Result<StoredEvent> {
        let mut transaction = self
            .db
            .begin_write()
            .await
            .context("cannot start the audit transaction")?;
        let stored = self.append_locked(&mut transaction, &event).await?;
        transaction
            .commit()
            .await
            .context("cannot commit the audit event")?;
        metrics::counter!("strongroom_audit_events_total", "action" => event.action.as_str())
            .increment(1);
        Ok(stored)
    }

    async fn append_locked(
        &self,
        connection: &mut AnyConnection,
        event: &NewEvent,
    ) -> anyhow::Result<StoredEvent> {
        if self.db.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(POSTGRES_APPEND_LOCK)
                .execute(&mut *connection)
                .await
                .context("cannot take the audit append lock")?;
        }

        let head = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *connection)
            .await
            .context("cannot read the audit chain head")?;
        let (mut prev_seq, mut prev_hash) = match head {
            Some(row) => (
                row.try_get::<i64, _>("seq")?,
                row.try_get::<String, _>("hash")?,
            ),
            None => (0, GENESIS_HASH.to_owned()),
        };
        // Pruning may have removed the head itself; the chain then continues from the
        // newest checkpoint, never reusing a pruned sequence number.
        let checkpoint = sqlx::query(
            "SELECT last_seq, last_hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&mut *connection)
        .await
        .context("cannot read the newest audit checkpoint")?;
        if let Some(row) = checkpoint {
            let last_seq: i64 = row.try_get("last_seq")?;
            if last_seq > prev_seq {
                prev_seq = last_seq;
                prev_hash = row.try_get("last_hash")?;
            }
        }

        let mut stored = StoredEvent {
            seq: prev_seq + 1,
            event_id: Uuid::new_v4().to_string(),
            schema_version: SCHEMA_VERSION,
            occurred_at_ms: self.clock.now().timestamp_millis(),
            actor: event.actor.as_text(),
            action: event.action.as_str().to_owned(),
            target: event.target.clone(),
            outcome: event.outcome.as_str().to_owned(),
            client_addr: event.client_addr.map(|addr| addr.to_string()),
            session_id: event.session_id.map(|id| id.to_string()),
            details: serde_json::to_string(&event.details)
                .context("cannot serialise audit details")?,
            prev_hash,
            hash: String::new(),
        };
        stored.hash = stored.compute_hash();

        sqlx::query(
            "INSERT INTO audit_events (seq, event_id, schema_version, occurred_at_ms, actor, action, target, outcome, client_addr, session_id, details, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(stored.seq)
        .bind(&stored.event_id)
        .bind(stored.schema_version)
        .bind(stored.occurred_at_ms)
        .bind(&stored.actor)
        .bind(&stored.action)
        .bind(&stored.target)
        .bind(&stored.outcome)
        .bind(&stored.client_addr)
        .bind(&stored.session_id)
        .bind(&stored.details)
        .bind(&stored.prev_hash)
        .bind(&stored.hash)
        .execute(&mut *connection)
        .await
        .context("cannot insert the audit event")?;

        Ok(stored)
    }

    /// Reads every event with `action` on `target`, in chain order, through the
    /// `audit_events_target` index.
    pub async fn list_for_target(
        &self,
        target: &str,
        action: Action,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        let query = format!(
            "SELECT {SELECT_COLUMNS} FROM audit_events WHERE target = $1 AND action = $2 ORDER BY seq"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(query))
            .bind(target.to_owned())
            .bind(action.as_str())
            .fetch_all(self.db.pool())
            .await
            .with_context(|| format!("cannot read the audit events of {target}"))?;
        rows.iter()
            .map(StoredEvent::from_row)
            .collect::<Result<_, _>>()
            .context("cannot decode an audit event")
    }

    /// Reads events in chain order, `limit` at a time from `after_seq`.
    pub async fn list(&self, after_seq: i64, limit: i64) -> anyhow::Result<Vec<StoredEvent>> {
        let query = format!(
            "SELECT {SELECT_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(query))
            .bind(after_seq)
            .bind(limit)
            .fetch_all(self.db.pool())
            .await
            .context("cannot read audit events")?;
        rows.iter()
            .map(StoredEvent::from_row)
            .collect::<Result<_, _>>()
            .context("cannot decode an audit event")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "names a secret")]
    fn secret_detail_key_is_refused() {
        let _ = EventBuilder::new(Actor::Anonymous, Action::SignInFailed).detail("password", "x");
    }

    #[test]
    fn hash_covers_every_field() {
        let event = StoredEvent {
            seq: 1,
            event_id: "e".into(),
            schema_version: 1,
            occurred_at_ms: 5,
            actor: "user:a".into(),
            action: "auth.sign_in.succeeded".into(),
            target: None,
            outcome: "success".into(),
            client_addr: None,
            session_id: None,
            details: "{}".into(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        let original = event.compute_hash();

        let mut changed = event.clone();
        changed.target = Some("x".into());
        assert_ne!(changed.compute_hash(), original);

        let mut changed = event.clone();
        changed.occurred_at_ms = 6;
        assert_ne!(changed.compute_hash(), original);

        let mut changed = event;
        changed.outcome = "failure".into();
        assert_ne!(changed.compute_hash(), original);
    }
}
