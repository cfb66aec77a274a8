//! Structured allow, deny and close events for the broker's audit trail.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::address::AddressClass;

/// One decision or tunnel end. Contains no request body, path, header value or
/// credential: only the CONNECT target and the addresses involved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressEvent {
    /// The session that owns the client address; `None` when no session does.
    pub session_id: Option<Uuid>,
    /// The workspace's address and port.
    pub client: SocketAddr,
    /// The requested host (name or IP literal), when the request named one.
    pub host: Option<String>,
    /// The requested port, when the request named one.
    pub port: Option<u16>,
    /// The address the proxy resolved and checked (and connected to, when allowed).
    pub resolved_ip: Option<IpAddr>,
    pub outcome: Outcome,
}

/// Decision of the proxy, or the end of a tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Outcome {
    /// The tunnel to `resolved_ip` is open.
    Allowed,
    /// The request was rejected.
    Denied { reason: DenyReason },
    /// An allowed tunnel ended.
    Closed {
        /// Bytes copied from the workspace to the upstream server.
        bytes_sent: u64,
        /// Bytes copied from the upstream server to the workspace.
        bytes_received: u64,
        #[serde(rename = "duration_ms", serialize_with = "serialize_millis")]
        duration: Duration,
        cause: CloseCause,
    },
}

fn serialize_millis<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// Reason a request was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DenyReason {
    /// The client address is in no registered session subnet.
    UnknownSource,
    /// The session already has the maximum number of open connections.
    SessionConnectionLimit { limit: usize },
    /// The proxy already has the maximum number of open connections.
    ProxyConnectionLimit { limit: usize },
    /// The request head exceeded the size limit.
    RequestHeadTooLarge,
    /// The request head did not arrive within its timeout.
    RequestHeadTimedOut,
    /// A method other than CONNECT, such as plain HTTP forwarding.
    MethodNotAllowed,
    /// The CONNECT target is not `host:port`, or the host is not a valid name.
    MalformedTarget,
    /// The site does not allow the host, whatever the port.
    HostNotAllowed { host: String },
    /// The site allows the host but not the port.
    PortNotAllowed { port: u16 },
    /// The target is an IP literal that the site does not list.
    IpLiteralNotAllowed,
    /// DNS resolution failed or returned no address.
    ResolutionFailed,
    /// Every resolved address is non-public and outside the site's allowed private
    /// ranges. The event's `resolved_ip` is the first of them.
    AddressNotAllowed { class: AddressClass },
    /// The resolved address is inside a registered session's subnet.
    AddressInSessionNetwork,
    /// Connecting to every allowed address failed.
    ConnectFailed,
    /// Resolving and connecting did not finish within the connect timeout.
    ConnectTimedOut,
    /// The TLS ClientHello named no server or another server than the CONNECT host.
    SniMismatch,
    /// The first bytes in the tunnel were not a TLS ClientHello.
    NotTls,
    /// The ClientHello did not arrive within its timeout.
    ClientHelloTimedOut,
}

impl DenyReason {
    /// A stable snake_case name of the reason, for metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownSource => "unknown_source",
            Self::SessionConnectionLimit { .. } => "session_connection_limit",
            Self::ProxyConnectionLimit { .. } => "proxy_connection_limit",
            Self::RequestHeadTooLarge => "request_head_too_large",
            Self::RequestHeadTimedOut => "request_head_timed_out",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::MalformedTarget => "malformed_target",
            Self::HostNotAllowed { .. } => "host_not_allowed",
            Self::PortNotAllowed { .. } => "port_not_allowed",
            Self::IpLiteralNotAllowed => "ip_literal_not_allowed",
            Self::ResolutionFailed => "resolution_failed",
            Self::AddressNotAllowed { .. } => "address_not_allowed",
            Self::AddressInSessionNetwork => "address_in_session_network",
            Self::ConnectFailed => "connect_failed",
            Self::ConnectTimedOut => "connect_timed_out",
            Self::SniMismatch => "sni_mismatch",
            Self::NotTls => "not_tls",
            Self::ClientHelloTimedOut => "client_hello_timed_out",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownSource => formatter.write_str("client address belongs to no session"),
            Self::SessionConnectionLimit { limit } => write!(
                formatter,
                "session has {limit} open connections, the maximum"
            ),
            Self::ProxyConnectionLimit { limit } => {
                write!(formatter, "proxy has {limit} open connections, the maximum")
            }
            Self::RequestHeadTooLarge => {
                formatter.write_str("request head is larger than the limit")
            }
            Self::RequestHeadTimedOut => formatter.write_str("request head did not arrive in time"),
            Self::MethodNotAllowed => formatter.write_str("method is not CONNECT"),
            Self::MalformedTarget => formatter.write_str("CONNECT target is not a valid host:port"),
            Self::HostNotAllowed { host } => {
                write!(formatter, "host {host} is not allowed for this site")
            }
            Self::PortNotAllowed { port } => {
                write!(formatter, "port {port} is not allowed for this site")
            }
            Self::IpLiteralNotAllowed => {
                formatter.write_str("IP-literal target is not allowed for this site")
            }
            Self::ResolutionFailed => formatter.write_str("DNS resolution failed"),
            Self::AddressNotAllowed { class } => write!(
                formatter,
                "resolved address is {class:?} and not allowed for this site"
            ),
            Self::AddressInSessionNetwork => {
                formatter.write_str("resolved address belongs to a session network")
            }
            Self::ConnectFailed => formatter.write_str("connecting to the upstream server failed"),
            Self::ConnectTimedOut => {
                formatter.write_str("connecting to the upstream server timed out")
            }
            Self::SniMismatch => {
                formatter.write_str("TLS server name differs from the CONNECT host")
            }
            Self::NotTls => formatter.write_str("tunnel did not start with a TLS ClientHello"),
            Self::ClientHelloTimedOut => {
                formatter.write_str("TLS ClientHello did not arrive in time")
            }
        }
    }
}

/// Reason an allowed tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseCause {
    /// Both sides closed their connection.
    Finished,
    /// Neither side sent a byte within the idle timeout.
    IdleTimeout,
    /// Reading or writing failed on one side.
    Error,
    /// The session was unregistered while the tunnel was open.
    SessionEnded,
    /// The proxy shut down.
    Shutdown,
}

/// Receives every egress event. The broker implements this to append audit events. The
/// proxy calls it on its own tasks, so it must not block: hand the event to a channel.
pub trait EventSink: Send + Sync + 'static {
    fn record(&self, event: EgressEvent);
}

/// Denial lines one session (or all unknown sources together) may log per window.
pub const DENIAL_LOG_LINES_PER_WINDOW: u32 = 20;
/// Length of one denial log window.
pub const DENIAL_LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Fixed-window limit on "Egress denied" log lines, so a page that opens thousands of
/// refused connections cannot flood the log. The sink still receives every event.
#[derive(Debug)]
pub(crate) struct DenialLog {
    window: std::sync::Mutex<DenialWindow>,
}

#[derive(Debug)]
struct DenialWindow {
    started: tokio::time::Instant,
    logged: u32,
    suppressed: u64,
}

impl DenialLog {
    pub(crate) fn new() -> Self {
        Self {
            window: std::sync::Mutex::new(DenialWindow {
                started: tokio::time::Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Returns `Some(suppressed in the previous window)` when a denial at `now` may be
    /// logged, `None` when it is only counted.
    fn admit(&self, now: tokio::time::Instant) -> Option<u64> {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let mut suppressed_before = 0;
        if now.saturating_duration_since(window.started) >= DENIAL_LOG_WINDOW {
            suppressed_before = window.suppressed;
            *window = DenialWindow {
                started: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if window.logged < DENIAL_LOG_LINES_PER_WINDOW {
            window.logged += 1;
            Some(suppressed_before)
        } else {
            window.suppressed += 1;
            None
        }
    }
}

/// Logs the event as one tracing line, denials within `denials`' limit only, then hands
/// it to the sink.
pub(crate) fn emit(sink: &dyn EventSink, denials: &DenialLog, event: EgressEvent) {
    let session_id = event.session_id.map(|id| id.to_string());
    let host = event.host.as_deref().unwrap_or("");
    let resolved_ip = event.resolved_ip.map(|ip| ip.to_string());
    match &event.outcome {
        Outcome::Allowed => tracing::info!(
            session.id = session_id, client = %event.client, host, port = event.port, resolved_ip,
            "Egress allowed"
        ),
        Outcome::Denied { reason } => {
            if let Some(suppressed_before) = denials.admit(tokio::time::Instant::now()) {
                tracing::warn!(
                    session.id = session_id, client = %event.client, host, port = event.port,
                    resolved_ip, reason = %reason, denials_not_logged_before = suppressed_before,
                    "Egress denied"
                );
            }
        }
        Outcome::Closed {
            bytes_sent,
            bytes_received,
            duration,
            cause,
        } => tracing::info!(
            session.id = session_id, client = %event.client, host, port = event.port, resolved_ip,
            bytes_sent, bytes_received, duration_ms = duration.as_millis() as u64, cause = ?cause,
            "Egress tunnel closed"
        ),
    }
    sink.record(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_lines_over_the_limit_are_counted() {
        let log = DenialLog::new();
        let start = log.window.lock().unwrap().started;
        for _ in 0..DENIAL_LOG_LINES_PER_WINDOW {
            assert_eq!(log.admit(start), Some(0));
        }
        assert_eq!(log.admit(start), None);
        assert_eq!(log.admit(start), None);

        let next_window = start + DENIAL_LOG_WINDOW;
        assert_eq!(log.admit(next_window), Some(2));
        assert_eq!(log.admit(next_window), Some(0));
    }
}
