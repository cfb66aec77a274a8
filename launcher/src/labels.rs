//! Labels on every container and network the launcher creates.
//!
//! Launchers before the `strongroom.` prefix labelled their objects `io.strongroom.*`,
//! with the instance id under `io.strongroom.instance`. Listing and reconciliation read
//! both forms, so the first reconciliation after an upgrade removes the old objects.

use std::collections::BTreeMap;

use uuid::Uuid;

/// Session id (UUID).
pub const SESSION: &str = "strongroom.session";
/// Owner of the session.
pub const OWNER: &str = "strongroom.owner";
/// Site name from the broker's catalogue.
pub const SITE: &str = "strongroom.site";
/// Creation time, RFC 3339 in UTC.
pub const CREATED: &str = "strongroom.created";
/// The broker's persistent instance id; reconciliation touches only its own.
pub const INSTANCE: &str = "strongroom.broker";
/// `workspace` or `network`.
pub const ROLE: &str = "strongroom.role";

/// Session id label of objects created before the `strongroom.` prefix.
pub const LEGACY_SESSION: &str = "io.strongroom.session";
/// Instance id label of objects created before the `strongroom.` prefix.
pub const LEGACY_INSTANCE: &str = "io.strongroom.instance";

/// Returns the instance id an object is labelled with, in the current or the legacy form.
pub fn instance_of(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels
        .get(INSTANCE)
        .or_else(|| labels.get(LEGACY_INSTANCE))
        .map(String::as_str)
}

/// Returns the session id an object is labelled with, in the current or the legacy
/// form, or `None` when it is missing or not a UUID.
pub fn session_of(labels: &BTreeMap<String, String>) -> Option<Uuid> {
    labels
        .get(SESSION)
        .or_else(|| labels.get(LEGACY_SESSION))
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// Docker `label` filters that select one instance's objects: one per label form,
/// because the engine combines the values of one filter with AND.
pub fn instance_filters(instance_id: &str) -> [String; 2] {
    [
        format!("{INSTANCE}={instance_id}"),
        format!("{LEGACY_INSTANCE}={instance_id}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_labels_are_read() {
        let session = Uuid::new_v4();
        let legacy = BTreeMap::from([
            (LEGACY_INSTANCE.to_owned(), "broker-a".to_owned()),
            (LEGACY_SESSION.to_owned(), session.to_string()),
        ]);

        assert_eq!(instance_of(&legacy), Some("broker-a"));
        assert_eq!(session_of(&legacy), Some(session));
    }

    #[test]
    fn current_labels_take_precedence() {
        let current = Uuid::new_v4();
        let labels = BTreeMap::from([
            (INSTANCE.to_owned(), "broker-a".to_owned()),
            (LEGACY_INSTANCE.to_owned(), "broker-b".to_owned()),
            (SESSION.to_owned(), current.to_string()),
            (LEGACY_SESSION.to_owned(), Uuid::new_v4().to_string()),
        ]);

        assert_eq!(instance_of(&labels), Some("broker-a"));
        assert_eq!(session_of(&labels), Some(current));
    }

    #[test]
    fn invalid_session_label_is_none() {
        let labels = BTreeMap::from([(SESSION.to_owned(), "not-a-uuid".to_owned())]);

        assert_eq!(session_of(&labels), None);
    }
}
