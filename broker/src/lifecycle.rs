//! Connects the parts of a banking session at start-up: the session service, the
//! stream hub, the egress proxy and the portal sessions.
//!
//! - A launched session gets an egress proxy listener on its bridge's gateway address,
//!   which is the proxy address its Chromium is configured with.
//! - A session that ends, on any path, stops its stream (sealing the recording) and
//!   its proxy listener.
//! - A person who logs out, is logged out by the provider, is revoked or loses every
//!   role loses their banking sessions too.
//! - Every egress decision is written to the audit trail, except denials beyond
//!   `egress_audit_limit::DENIALS_PER_WINDOW` per session and minute, which are counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit::{Action, Actor, AuditLog, EventBuilder, Outcome};
use crate::auth::AuthService;
use crate::egress_audit_limit::{DenialLimiter, Verdict};
use crate::sessions::{EndReason, SessionNotice, SessionService};
use crate::stream::StreamHub;
use crate::tasks::TaskRegistry;

/// Egress decisions waiting for the audit writer; beyond this they are counted and
/// dropped rather than held without bound.
const EGRESS_EVENT_QUEUE: usize = 4096;

/// One proxy listener per live session, on that session's gateway address.
#[derive(Clone)]
pub struct EgressListeners {
    proxy: egress::Proxy,
    tasks: TaskRegistry,
    listeners: Arc<Mutex<HashMap<Uuid, CancellationToken>>>,
}

impl EgressListeners {
    pub fn new(proxy: egress::Proxy, tasks: TaskRegistry) -> EgressListeners {
        EgressListeners {
            proxy,
            tasks,
            listeners: Arc::default(),
        }
    }

    /// Listens on `address` for `session_id` until [`EgressListeners::close`].
    pub fn open(&self, session_id: Uuid, address: SocketAddr) -> anyhow::Result<()> {
        let listener = std::net::TcpListener::bind(address)
            .with_context(|| format!("cannot listen for the egress proxy on {address}"))?;
        listener
            .set_nonblocking(true)
            .context("cannot make the proxy listener non-blocking")?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .context("cannot register the proxy listener")?;

        let stop = self.tasks.token().child_token();
        self.listeners
            .lock()
            .expect("listeners lock")
            .insert(session_id, stop.clone());
        let proxy = self.proxy.clone();
        self.tasks.spawn("egress-proxy", async move {
            proxy.serve(vec![listener], stop).await
        });
        tracing::info!(session.id = %session_id, proxy = %address, "Egress proxy listening for the session");
        Ok(())
    }

    pub fn close(&self, session_id: Uuid) {
        if let Some(stop) = self
            .listeners
            .lock()
            .expect("listeners lock")
            .remove(&session_id)
        {
            stop.cancel();
        }
    }
}

/// Hands egress decisions to the audit writer without blocking the proxy.
struct EgressAudit {
    events: mpsc::Sender<egress::EgressEvent>,
}

impl egress::EventSink for EgressAudit {
    fn record(&self, event: egress::EgressEvent) {
        if let egress::Outcome::Denied { reason } = &event.outcome {
            metrics::counter!("strongroom_egress_denials_total", "reason" => reason.code())
                .increment(1);
        }
        if self.events.try_send(event).is_err() {
            metrics::counter!("strongroom_egress_audit_dropped_total").increment(1);
        }
    }
}

/// Builds the egress proxy whose decisions go to the audit trail.
pub fn egress_proxy(
    registry: Arc<egress::Registry>,
    audit: AuditLog,
    sessions: &crate::config::SessionsConfig,
    tasks: &TaskRegistry,
) -> anyhow::Result<egress::Proxy> {
    let (sender, mut receiver) = mpsc::channel::<egress::EgressEvent>(EGRESS_EVENT_QUEUE);
    let proxy = egress::Proxy::new(
        registry,
        Arc::new(EgressAudit { events: sender }),
        egress::ProxyConfig {
            max_connections_per_session: sessions.egress_max_connections as usize,
            idle_timeout: sessions.egress_idle_timeout,
            session_bytes_per_second: sessions.egress_bytes_per_second,
            ..egress::ProxyConfig::default()
        },
    )
    .context("invalid egress proxy configuration")?;

    let token = tasks.token();
    tasks.spawn("egress-audit", async move {
        let mut limiter = DenialLimiter::default();
        loop {
            let event = tokio::select! {
                event = receiver.recv() => match event { Some(event) => event, None => return },
                _ = token.cancelled() => return,
            };
            let suppressed_before = match (&event.outcome, event.session_id) {
                (egress::Outcome::Denied { .. }, Some(session_id)) => {
                    match limiter.check(session_id, std::time::Instant::now()) {
                        Verdict::Audit { suppressed_before } => suppressed_before,
                        Verdict::Suppress => {
                            metrics::counter!("strongroom_egress_denials_unaudited_total")
                                .increment(1);
                            continue;
                        }
                    }
                }
                _ => 0,
            };
            if let Some(audit_event) = egress_audit_event(&event, suppressed_before)
                && let Err(error) = audit.append(audit_event).await
            {
                tracing::error!(
                    error = format!("{error:#}"),
                    "Cannot record an egress decision in the audit trail"
                );
            }
        }
    });
    Ok(proxy)
}

/// Builds the audit event of one egress decision. `suppressed_before` is the number of
/// the session's denials that the rate limit left unaudited in the previous window.
fn egress_audit_event(
    event: &egress::EgressEvent,
    suppressed_before: u64,
) -> Option<crate::audit::NewEvent> {
    let (outcome, reason) = match &event.outcome {
        egress::Outcome::Allowed => (Outcome::Success, None),
        egress::Outcome::Denied { reason } => (Outcome::Denied, Some(reason.to_string())),
        // The opening was audited; the close is only logged.
        egress::Outcome::Closed { .. } => return None,
    };
    let target = format!(
        "{}:{}",
        event.host.as_deref().unwrap_or("-"),
        event.port.unwrap_or(0)
    );
    let mut builder = EventBuilder::new(Actor::System("egress"), Action::SiteAccessed)
        .target(target)
        .outcome(outcome);
    if let Some(session_id) = event.session_id {
        builder = builder.session(session_id);
    }
    if let Some(ip) = event.resolved_ip {
        builder = builder.detail("resolved_ip", ip.to_string());
    }
    if let Some(reason) = reason {
        builder = builder.detail("reason", reason);
    }
    if suppressed_before > 0 {
        builder = builder.detail("denials_not_audited_before", suppressed_before);
    }
    Some(builder.client(Some(event.client.ip())).build())
}

/// Starts the tasks that tie session endings to streams, proxy listeners and portal
/// sign-outs.
pub fn connect(
    sessions: &SessionService,
    hub: &StreamHub,
    listeners: &EgressListeners,
    auth: &AuthService,
    tasks: &TaskRegistry,
) {
    hub.set_hooks(sessions.stream_hooks());
    sessions.attach_streams(hub.clone());

    let mut notices = sessions.subscribe();
    let (hub, stopping, token) = (hub.clone(), listeners.clone(), tasks.token());
    tasks.spawn("session-endings", async move {
        loop {
            let notice = tokio::select! {
                notice = notices.recv() => notice,
                _ = token.cancelled() => return,
            };
            match notice {
                Ok(SessionNotice::Ended { session_id, reason }) => {
                    hub.stop(session_id, &reason);
                    stopping.close(session_id);
                }
                Ok(SessionNotice::IdleWarning {
                    session_id,
                    ends_at_ms,
                }) => {
                    let left_ms = ends_at_ms - chrono::Utc::now().timestamp_millis();
                    hub.warn_idle(session_id, u64::try_from(left_ms / 1000).unwrap_or(0));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // The reconciler and the link's own end still stop what this missed.
                    tracing::error!(missed, "Session end notices were missed");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });

    let mut portal_endings = auth.subscribe();
    let (sessions, token) = (sessions.clone(), tasks.token());
    tasks.spawn("portal-sign-outs", async move {
        loop {
            let ended = tokio::select! {
                ended = portal_endings.recv() => ended,
                _ = token.cancelled() => return,
            };
            let ended = match ended {
                Ok(ended) => ended,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::error!(missed, "Portal sign-out notices were missed");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            use crate::auth::EndReason as PortalEnd;
            if matches!(ended.reason, PortalEnd::Logout | PortalEnd::BackChannelLogout | PortalEnd::Revoked | PortalEnd::NoRole)
                && let Err(error) = sessions.end_all_for(&ended.user_id, EndReason::Logout).await
            {
                tracing::error!(user.id = ended.user_id.as_str(), error = %error, "Cannot end the banking sessions of a signed-out person");
            }
        }
    });
}
