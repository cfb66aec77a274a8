//! Search of the audit trail by actor, action, target, session and time range.

use anyhow::Context;
use serde::Deserialize;

use super::{AuditLog, SELECT_COLUMNS, StoredEvent};

/// Largest page one search returns.
pub const MAX_LIMIT: i64 = 1000;
/// Page size when the query names none.
pub const DEFAULT_LIMIT: i64 = 100;

/// Filters of an audit search. Every given filter must match; results come in chain
/// order, after `after_seq`, at most `limit` at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Exact actor, such as `user:ID`, `system:cli` or `anonymous`.
    pub actor: Option<String>,
    /// Exact action name, or a prefix ending in `*` such as `auth.*`.
    pub action: Option<String>,
    /// Exact target, such as `site:demo-bank` or `recording:ID`. A site, with or
    /// without `site:`, also matches older events that name it bare (`demo-bank`).
    pub target: Option<String>,
    /// Banking session id.
    pub session_id: Option<String>,
    /// Earliest occurrence, Unix milliseconds, inclusive.
    pub from_ms: Option<i64>,
    /// Latest occurrence, Unix milliseconds, exclusive.
    pub to_ms: Option<i64>,
    /// Return events after this sequence number (for paging).
    pub after_seq: Option<i64>,
    /// Page size, 1 to 1000; 100 when absent.
    pub limit: Option<i64>,
}

/// A value bound to a search placeholder.
enum Bind {
    Text(String),
    Integer(i64),
}

/// A search that cannot run, with the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("invalid limit {0}; use 1 to {MAX_LIMIT}")]
    Limit(i64),
    #[error("invalid time range: from_ms {from} is after to_ms {to}")]
    Range { from: i64, to: i64 },
    #[error("invalid action filter {0:?}; use a full action name or a prefix ending in '*'")]
    Action(String),
}

impl AuditQuery {
    /// Checks the filters and returns the page size to use.
    pub fn validate(&self) -> Result<i64, QueryError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(QueryError::Limit(limit));
        }
        if let (Some(from), Some(to)) = (self.from_ms, self.to_ms)
            && from > to
        {
            return Err(QueryError::Range { from, to });
        }
        if let Some(action) = &self.action {
            let prefix = action.strip_suffix('*').unwrap_or(action);
            if prefix.contains('*') || action.is_empty() {
                return Err(QueryError::Action(action.clone()));
            }
        }
        Ok(limit)
    }

    fn where_clause(&self) -> (String, Vec<Bind>) {
        let mut clauses = Vec::new();
        let mut binds = Vec::new();
        // Each `?` in a clause becomes the next numbered placeholder.
        let mut push = |clause: &str, values: Vec<Bind>| {
            let mut text = String::new();
            let mut values = values.into_iter();
            for (index, part) in clause.split('?').enumerate() {
                if index > 0 {
                    binds.push(values.next().expect("one value per placeholder"));
                    text.push_str(&format!("${}", binds.len()));
                }
                text.push_str(part);
            }
            clauses.push(text);
        };

        if let Some(actor) = &self.actor {
            push("actor = ?", vec![Bind::Text(actor.clone())]);
        }
        if let Some(action) = &self.action {
            match action.strip_suffix('*') {
                Some(prefix) => push(
                    "substr(action, 1, CAST(? AS INTEGER)) = ?",
                    vec![
                        Bind::Integer(prefix.chars().count() as i64),
                        Bind::Text(prefix.to_owned()),
                    ],
                ),
                None => push("action = ?", vec![Bind::Text(action.clone())]),
            }
        }
        if let Some(target) = &self.target {
            match site_target_forms(target) {
                Some((prefixed, bare)) => push(
                    "target IN (?, ?)",
                    vec![Bind::Text(prefixed), Bind::Text(bare)],
                ),
                None => push("target = ?", vec![Bind::Text(target.clone())]),
            }
        }
        if let Some(session_id) = &self.session_id {
            push("session_id = ?", vec![Bind::Text(session_id.clone())]);
        }
        if let Some(from) = self.from_ms {
            push("occurred_at_ms >= ?", vec![Bind::Integer(from)]);
        }
        if let Some(to) = self.to_ms {
            push("occurred_at_ms < ?", vec![Bind::Integer(to)]);
        }
        push("seq > ?", vec![Bind::Integer(self.after_seq.unwrap_or(0))]);

        (clauses.join(" AND "), binds)
    }
}

/// Returns both forms of a site target, `site:NAME` and the bare `NAME` that older
/// events of some actions stored, for a filter in either form. Other targets, which
/// contain a `:` after a kind (`recording:ID`, `user:ID`), return `None`.
fn site_target_forms(target: &str) -> Option<(String, String)> {
    let name = match target.strip_prefix("site:") {
        Some(name) => name,
        None if !target.contains(':') => target,
        None => return None,
    };
    Some((crate::sites::audit_target(name), name.to_owned()))
}

impl AuditLog {
    /// Returns the events matching `query`, in chain order.
    pub async fn search(&self, query: &AuditQuery) -> anyhow::Result<Vec<StoredEvent>> {
        let limit = query.validate()?;
        let (clause, binds) = query.where_clause();
        let sql = format!(
            "SELECT {SELECT_COLUMNS} FROM audit_events WHERE {clause} ORDER BY seq LIMIT ${}",
            binds.len() + 1
        );
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            statement = match bind {
                Bind::Text(text) => statement.bind(text),
                Bind::Integer(value) => statement.bind(value),
            };
        }
        let rows = statement
            .bind(limit)
            .fetch_all(self.db.pool())
            .await
            .context("cannot search audit events")?;
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
    fn filters_become_numbered_placeholders() {
        let query = AuditQuery {
            actor: Some("user:a".into()),
            action: Some("auth.*".into()),
            from_ms: Some(5),
            ..AuditQuery::default()
        };

        let (clause, binds) = query.where_clause();

        assert_eq!(
            clause,
            "actor = $1 AND substr(action, 1, CAST($2 AS INTEGER)) = $3 AND occurred_at_ms >= $4 AND seq > $5"
        );
        assert_eq!(binds.len(), 5);
    }

    #[test]
    fn invalid_filters_are_rejected() {
        let limit = AuditQuery {
            limit: Some(0),
            ..AuditQuery::default()
        };
        let range = AuditQuery {
            from_ms: Some(10),
            to_ms: Some(5),
            ..AuditQuery::default()
        };
        let action = AuditQuery {
            action: Some("a*b".into()),
            ..AuditQuery::default()
        };

        assert_eq!(limit.validate(), Err(QueryError::Limit(0)));
        assert_eq!(range.validate(), Err(QueryError::Range { from: 10, to: 5 }));
        assert_eq!(action.validate(), Err(QueryError::Action("a*b".into())));
    }
}
