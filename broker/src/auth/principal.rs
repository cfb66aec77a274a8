//! The authenticated person behind a request.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A role. A person with none of them has no access at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Launches sessions for granted sites, up to a quota; sees their own sessions and recordings.
    User,
    /// Reads every recording, audit event and session record; changes nothing.
    Auditor,
    /// Everything a user can, plus the catalogue, quotas, roles and any live session.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "user" => Some(Role::User),
            "auditor" => Some(Role::Auditor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A signed-in person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable user id (the database's id for the person).
    pub user_id: String,
    /// Name shown in the portal and the audit trail.
    pub display_name: String,
    pub roles: BTreeSet<Role>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// May launch and use banking sessions (users and admins).
    pub fn can_launch(&self) -> bool {
        self.has(Role::User) || self.has(Role::Admin)
    }

    /// May read every recording and audit event (auditors and admins).
    pub fn can_audit(&self) -> bool {
        self.has(Role::Auditor) || self.has(Role::Admin)
    }
}
