//! Sessions the proxy serves, found by the subnet of each session's network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::num::NonZeroU64;
use std::sync::{Arc, OnceLock, RwLock};

use ipnet::IpNet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bandwidth::Bandwidth;
use crate::events::DenialLog;
use crate::policy::{PolicyError, SitePolicy};

/// A rejected registration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("session {session_id} is already registered; unregister it first")]
    AlreadyRegistered { session_id: Uuid },
    #[error(
        "subnet {subnet} of session {session_id} overlaps subnet {existing} of session \
         {existing_session}; give each session network its own subnet"
    )]
    SubnetOverlap {
        session_id: Uuid,
        subnet: IpNet,
        existing: IpNet,
        existing_session: Uuid,
    },
    #[error("invalid site policy for session {session_id}: {source}")]
    InvalidPolicy {
        session_id: Uuid,
        source: PolicyError,
    },
}

/// One registered session.
#[derive(Debug)]
pub struct SessionEntry {
    pub session_id: Uuid,
    pub subnet: IpNet,
    pub policy: SitePolicy,
    open_connections: AtomicUsize,
    /// Cancelled on unregistration, which closes the session's open tunnels.
    ended: CancellationToken,
    /// The bucket all of the session's tunnels draw from, made by the first tunnel.
    bandwidth: OnceLock<Bandwidth>,
    /// Limit on the session's "Egress denied" log lines.
    pub(crate) denial_log: DenialLog,
}

impl SessionEntry {
    /// Number of open client connections of this session.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Acquire)
    }

    pub(crate) fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    /// The session's bandwidth bucket for `limit` bytes per second, or `None` when
    /// unlimited.
    pub(crate) fn bandwidth(&self, limit: Option<NonZeroU64>) -> Option<&Bandwidth> {
        limit.map(|rate| self.bandwidth.get_or_init(|| Bandwidth::new(rate)))
    }

    /// Counts one more open connection unless `limit` are already open.
    pub(crate) fn try_open(self: &Arc<Self>, limit: usize) -> Option<ConnectionSlot> {
        self.open_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()?;
        Some(ConnectionSlot {
            entry: Arc::clone(self),
        })
    }
}

/// One counted connection of a session; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    entry: Arc<SessionEntry>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.entry.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Registered sessions. Share one instance through an `Arc` between the proxy and the
/// code that starts and ends sessions.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: RwLock<HashMap<Uuid, Arc<SessionEntry>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a session whose workspace connects from addresses in `subnet`.
    pub fn register(
        &self,
        session_id: Uuid,
        subnet: IpNet,
        policy: SitePolicy,
    ) -> Result<(), RegistryError> {
        policy
            .validate()
            .map_err(|source| RegistryError::InvalidPolicy { session_id, source })?;
        let subnet = subnet.trunc();

        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if sessions.contains_key(&session_id) {
            return Err(RegistryError::AlreadyRegistered { session_id });
        }
        if let Some(existing) = sessions
            .values()
            .find(|entry| overlaps(entry.subnet, subnet))
        {
            return Err(RegistryError::SubnetOverlap {
                session_id,
                subnet,
                existing: existing.subnet,
                existing_session: existing.session_id,
            });
        }

        let entry = SessionEntry {
            session_id,
            subnet,
            policy,
            open_connections: AtomicUsize::new(0),
            ended: CancellationToken::new(),
            bandwidth: OnceLock::new(),
            denial_log: DenialLog::new(),
        };
        sessions.insert(session_id, Arc::new(entry));
        tracing::info!(session.id = %session_id, subnet = %subnet, "Egress session registered");
        Ok(())
    }

    /// Removes a session and closes its open tunnels. Returns whether it was registered.
    pub fn unregister(&self, session_id: Uuid) -> bool {
        let removed = self
            .sessions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&session_id);
        match removed {
            Some(entry) => {
                entry.ended.cancel();
                tracing::info!(session.id = %session_id, subnet = %entry.subnet, "Egress session unregistered");
                true
            }
            None => false,
        }
    }

    /// Returns the session whose subnet contains `source`. IPv4-mapped IPv6 sources, as a
    /// dual-stack listener reports them, are looked up as IPv4.
    pub fn lookup(&self, source: IpAddr) -> Option<Arc<SessionEntry>> {
        let source = source.to_canonical();
        self.sessions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .find(|entry| entry.subnet.contains(&source))
            .cloned()
    }

    /// Returns the registered session, if any.
    pub fn get(&self, session_id: Uuid) -> Option<Arc<SessionEntry>> {
        self.sessions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&session_id)
            .cloned()
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SitePolicy {
        SitePolicy::new(["bank.example"]).unwrap()
    }

    #[test]
    fn lookup_finds_session_by_source() {
        let registry = Registry::new();
        let session = Uuid::new_v4();
        registry
            .register(session, "172.21.0.16/28".parse().unwrap(), policy())
            .unwrap();

        let found = registry.lookup("172.21.0.18".parse().unwrap()).unwrap();
        assert_eq!(found.session_id, session);
        let mapped = registry
            .lookup("::ffff:172.21.0.18".parse().unwrap())
            .unwrap();
        assert_eq!(mapped.session_id, session);
        assert!(registry.lookup("172.21.0.32".parse().unwrap()).is_none());
    }

    #[test]
    fn overlapping_subnet_is_rejected() {
        let registry = Registry::new();
        registry
            .register(Uuid::new_v4(), "172.21.0.0/28".parse().unwrap(), policy())
            .unwrap();
        let error = registry
            .register(Uuid::new_v4(), "172.21.0.0/24".parse().unwrap(), policy())
            .unwrap_err();
        assert!(matches!(error, RegistryError::SubnetOverlap { .. }));
    }

    #[test]
    fn duplicate_session_is_rejected() {
        let registry = Registry::new();
        let session = Uuid::new_v4();
        registry
            .register(session, "172.21.0.0/28".parse().unwrap(), policy())
            .unwrap();
        let error = registry
            .register(session, "172.21.1.0/28".parse().unwrap(), policy())
            .unwrap_err();
        assert_eq!(
            error,
            RegistryError::AlreadyRegistered {
                session_id: session
            }
        );
    }

    #[test]
    fn unregister_cancels_session_token() {
        let registry = Registry::new();
        let session = Uuid::new_v4();
        registry
            .register(session, "172.21.0.0/28".parse().unwrap(), policy())
            .unwrap();
        let entry = registry.get(session).unwrap();

        assert!(registry.unregister(session));
        assert!(entry.ended().is_cancelled());
        assert!(registry.lookup("172.21.0.2".parse().unwrap()).is_none());
        assert!(!registry.unregister(session));
    }

    #[test]
    fn connection_slots_respect_limit() {
        let registry = Registry::new();
        let session = Uuid::new_v4();
        registry
            .register(session, "172.21.0.0/28".parse().unwrap(), policy())
            .unwrap();
        let entry = registry.get(session).unwrap();

        let first = entry.try_open(2).unwrap();
        let _second = entry.try_open(2).unwrap();
        assert!(entry.try_open(2).is_none());
        drop(first);
        assert!(entry.try_open(2).is_some());
    }
}
