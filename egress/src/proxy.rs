//! The CONNECT proxy: identifies the session by source address, applies its site policy,
//! resolves and checks the destination, and relays the tunnel.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONNECTION, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::address::classify;
use crate::events::{CloseCause, DenialLog, DenyReason, EgressEvent, EventSink, Outcome, emit};
use crate::policy::{TargetHost, parse_target};
use crate::registry::{ConnectionSlot, Registry, SessionEntry};
use crate::resolver::{Resolver, SystemResolver};
use crate::sni::{self, ClientHello};
use crate::tunnel::{Traffic, pump};

/// The smallest read buffer hyper accepts, which also bounds the request head.
const MIN_HEADER_BYTES: usize = 8192;

/// Upstream addresses tried per request when a name resolves to several.
const MAX_CONNECT_ATTEMPTS: usize = 4;

/// Limits and timeouts of the proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Maximum client connections one session keeps open at once, tunnels included.
    /// Chromium limits itself to 32 connections per proxy unless its
    /// `MaxConnectionsPerProxy` policy sets another value.
    pub max_connections_per_session: usize,
    /// Maximum client connections open at once over all sessions.
    pub max_connections: usize,
    /// Maximum time for resolving the target and connecting to it, together.
    pub connect_timeout: Duration,
    /// A tunnel in which neither side sends a byte for this long is closed.
    pub idle_timeout: Duration,
    /// Maximum time for a client to send its complete request head.
    pub header_read_timeout: Duration,
    /// Maximum size of a request head, in bytes; at least 8192.
    pub max_header_bytes: usize,
    /// Whether a tunnel to a host name must start with a TLS ClientHello whose server
    /// name (SNI) equals that host. This stops a workspace from using an allowed name to
    /// reach another site behind the same CDN address (domain fronting through SNI). It
    /// cannot see the HTTP Host header inside TLS.
    pub require_sni_match: bool,
    /// Maximum time between the `200` response and a complete ClientHello.
    pub client_hello_timeout: Duration,
    /// Bytes per second one session's tunnels may move together, both directions
    /// counted, or `None` for no limit. A session may send a quarter second's worth (at
    /// least 16 KiB) at once before the rate applies.
    pub session_bytes_per_second: Option<NonZeroU64>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            max_connections_per_session: 64,
            max_connections: 4096,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: MIN_HEADER_BYTES,
            require_sni_match: true,
            client_hello_timeout: Duration::from_secs(10),
            session_bytes_per_second: None,
        }
    }
}

/// An invalid [`ProxyConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("proxy max_header_bytes is {0}, below hyper's minimum of 8192; raise it")]
    HeaderLimitTooSmall(usize),
    #[error("proxy {0} is zero; set it to at least 1")]
    ZeroLimit(&'static str),
    #[error("proxy {0} is zero; set a positive duration")]
    ZeroTimeout(&'static str),
}

impl ProxyConfig {
    /// Checks the configuration, reporting the first invalid value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError::HeaderLimitTooSmall(self.max_header_bytes));
        }
        if self.max_connections_per_session == 0 {
            return Err(ConfigError::ZeroLimit("max_connections_per_session"));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::ZeroLimit("max_connections"));
        }
        let timeouts = [
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("client_hello_timeout", self.client_hello_timeout),
        ];
        for (name, value) in timeouts {
            if value.is_zero() {
                return Err(ConfigError::ZeroTimeout(name));
            }
        }
        Ok(())
    }
}

/// The allowlisting CONNECT proxy.
///
/// It serves HTTP/1.1 on the listeners it is given and accepts only `CONNECT host:port`
/// from a source address inside a registered session's subnet, for a host and port that
/// session's site allows. It resolves the host itself, rejects non-public addresses
/// unless the site allows their range, and connects to exactly the address it checked.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Arc<Registry>,
    resolver: Arc<dyn Resolver>,
    events: Arc<dyn EventSink>,
    config: ProxyConfig,
    open_connections: AtomicUsize,
    /// Limit on "Egress denied" log lines of sources outside every session.
    unknown_source_log: DenialLog,
}

impl Proxy {
    /// Creates a proxy that resolves names with [`SystemResolver`].
    pub fn new(
        registry: Arc<Registry>,
        events: Arc<dyn EventSink>,
        config: ProxyConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let shared = Shared {
            registry,
            resolver: Arc::new(SystemResolver),
            events,
            config,
            open_connections: AtomicUsize::new(0),
            unknown_source_log: DenialLog::new(),
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// Replaces the resolver. Call before [`Proxy::serve`].
    pub fn with_resolver(self, resolver: Arc<dyn Resolver>) -> Self {
        let shared = Shared {
            registry: Arc::clone(&self.shared.registry),
            resolver,
            events: Arc::clone(&self.shared.events),
            config: self.shared.config.clone(),
            open_connections: AtomicUsize::new(0),
            unknown_source_log: DenialLog::new(),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Serves `listeners` until `shutdown` is cancelled, then closes every open
    /// connection and tunnel and returns once all of them have ended.
    ///
    /// Bind the listeners on the session bridges' gateway addresses, or on a wildcard
    /// address that the host firewall restricts to the session range (see
    /// [`crate::host_setup`]). Sources outside every registered subnet are rejected either
    /// way. Several calls may run at once, for example one per session gateway with its
    /// own token. They share the registry and the connection limits, and each call closes
    /// only the connections it accepted.
    pub async fn serve(&self, listeners: Vec<TcpListener>, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        for listener in listeners {
            match listener.local_addr() {
                Ok(address) => tracing::info!(listen = %address, "Egress proxy listening"),
                Err(error) => {
                    tracing::warn!(error = %error, "Egress proxy listener has no local address")
                }
            }
            let proxy = self.clone();
            let connections = tasks.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move { proxy.accept_loop(listener, connections, stop).await });
        }

        shutdown.cancelled().await;
        tasks.close();
        tasks.wait().await;
        tracing::info!("Egress proxy stopped");
    }

    async fn accept_loop(
        self,
        listener: TcpListener,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, client)) => {
                    let proxy = self.clone();
                    let tunnels = tasks.clone();
                    let stop = shutdown.clone();
                    tasks.spawn(async move {
                        proxy.serve_connection(stream, client, tunnels, stop).await
                    });
                }
                Err(error) => {
                    // Running out of file descriptors makes accept fail at once, so wait
                    // briefly rather than spin.
                    tracing::warn!(error = %error, "Egress proxy accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }

    async fn serve_connection(
        self,
        stream: TcpStream,
        client: SocketAddr,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let shared = &self.shared;
        let Some(session) = shared.registry.lookup(client.ip()) else {
            let event = EgressEvent {
                session_id: None,
                client,
                host: None,
                port: None,
                resolved_ip: None,
                outcome: Outcome::Denied {
                    reason: DenyReason::UnknownSource,
                },
            };
            emit(shared.events.as_ref(), &shared.unknown_source_log, event);
            return;
        };

        let global_slot = GlobalSlot::try_open(&self.shared);
        let session_slot = session.try_open(shared.config.max_connections_per_session);
        let limit_reached = match (&global_slot, &session_slot) {
            (None, _) => Some(DenyReason::ProxyConnectionLimit {
                limit: shared.config.max_connections,
            }),
            (_, None) => Some(DenyReason::SessionConnectionLimit {
                limit: shared.config.max_connections_per_session,
            }),
            _ => None,
        };
        let connection = Arc::new(Connection {
            proxy: self.clone(),
            session: Arc::clone(&session),
            client,
            limit_reached,
            tasks,
            shutdown: shutdown.clone(),
            _global_slot: global_slot,
            _session_slot: session_slot,
        });

        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(error = %error, "Setting TCP_NODELAY on client connection failed");
        }
        let service = service_fn(move |request| Arc::clone(&connection).handle(request));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(shared.config.header_read_timeout)
            .max_buf_size(shared.config.max_header_bytes)
            .keep_alive(false);
        let serving = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();

        tokio::select! {
            result = serving => {
                if let Err(error) = result {
                    report_connection_error(&error, &session, client, &shared.events);
                }
            }
            () = shutdown.cancelled() => {}
            () = session.ended().cancelled() => {}
        }
    }
}

/// Records a denial when hyper rejected the request head, and logs other errors.
fn report_connection_error(
    error: &hyper::Error,
    session: &SessionEntry,
    client: SocketAddr,
    events: &Arc<dyn EventSink>,
) {
    let reason = if error.is_parse_too_large() {
        DenyReason::RequestHeadTooLarge
    } else if error.is_timeout() {
        DenyReason::RequestHeadTimedOut
    } else {
        tracing::debug!(session.id = %session.session_id, client = %client, error = %error, "Client connection ended with an error");
        return;
    };
    let event = EgressEvent {
        session_id: Some(session.session_id),
        client,
        host: None,
        port: None,
        resolved_ip: None,
        outcome: Outcome::Denied { reason },
    };
    emit(events.as_ref(), &session.denial_log, event);
}

/// One counted connection against [`ProxyConfig::max_connections`].
struct GlobalSlot {
    shared: Arc<Shared>,
}

impl GlobalSlot {
    fn try_open(shared: &Arc<Shared>) -> Option<Self> {
        let limit = shared.config.max_connections;
        shared
            .open_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()?;
        Some(Self {
            shared: Arc::clone(shared),
        })
    }
}

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// State of one client connection, shared by its request handler and its tunnel. The
/// connection slots are released when both have finished.
struct Connection {
    proxy: Proxy,
    session: Arc<SessionEntry>,
    client: SocketAddr,
    limit_reached: Option<DenyReason>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    _global_slot: Option<GlobalSlot>,
    _session_slot: Option<ConnectionSlot>,
}

/// A rejected request: the event's reason and the status the client gets.
struct Denial {
    reason: DenyReason,
    status: StatusCode,
    resolved_ip: Option<IpAddr>,
}

impl Denial {
    fn new(reason: DenyReason, status: StatusCode) -> Self {
        Self {
            reason,
            status,
            resolved_ip: None,
        }
    }
}

impl Connection {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        if request.method() != Method::CONNECT {
            let host = request.uri().host().map(str::to_owned);
            let port = request.uri().port_u16();
            self.deny(host, port, DenyReason::MethodNotAllowed, None);
            let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED);
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("CONNECT"));
            return Ok(response);
        }

        let authority = request
            .uri()
            .authority()
            .map(|authority| authority.as_str().to_owned());
        let Some((host, port)) = authority.as_deref().and_then(parse_target) else {
            self.deny(None, None, DenyReason::MalformedTarget, None);
            return Ok(error_response(StatusCode::BAD_REQUEST));
        };

        if let Some(reason) = self.limit_reached.clone() {
            self.deny(Some(host.to_string()), Some(port), reason, None);
            return Ok(error_response(StatusCode::TOO_MANY_REQUESTS));
        }

        match self.open_upstream(&host, port).await {
            Ok((upstream, ip)) => {
                let connection = Arc::clone(&self);
                self.tasks.spawn(async move {
                    connection
                        .run_tunnel(request, upstream, host, port, ip)
                        .await
                });
                Ok(Response::new(Full::default()))
            }
            Err(denial) => {
                self.deny(
                    Some(host.to_string()),
                    Some(port),
                    denial.reason,
                    denial.resolved_ip,
                );
                Ok(error_response(denial.status))
            }
        }
    }

    /// Applies the site policy, resolves and checks the target, and connects to it.
    async fn open_upstream(
        &self,
        host: &TargetHost,
        port: u16,
    ) -> Result<(TcpStream, IpAddr), Denial> {
        let policy = &self.session.policy;
        let config = &self.proxy.shared.config;
        let deadline = Instant::now() + config.connect_timeout;

        // The host is checked before the port, so that a denial of a host the site
        // does not list names the host whatever port was requested.
        if !policy.allows_host(host) {
            let reason = match host {
                TargetHost::Ip(_) => DenyReason::IpLiteralNotAllowed,
                TargetHost::Name(name) => DenyReason::HostNotAllowed { host: name.clone() },
            };
            return Err(Denial::new(reason, StatusCode::FORBIDDEN));
        }
        if !policy.allows_port(port) {
            return Err(Denial::new(
                DenyReason::PortNotAllowed { port },
                StatusCode::FORBIDDEN,
            ));
        }
        let resolved = match host {
            TargetHost::Ip(ip) => vec![*ip],
            TargetHost::Name(name) => self.resolve(name, deadline).await?,
        };

        let candidates = self.check_addresses(&resolved)?;
        self.connect(&candidates, port, deadline).await
    }

    async fn resolve(&self, name: &str, deadline: Instant) -> Result<Vec<IpAddr>, Denial> {
        let resolver = &self.proxy.shared.resolver;
        match timeout_at(deadline, resolver.resolve(name)).await {
            Ok(Ok(addresses)) if !addresses.is_empty() => Ok(addresses),
            Ok(Ok(_)) => Err(Denial::new(
                DenyReason::ResolutionFailed,
                StatusCode::BAD_GATEWAY,
            )),
            Ok(Err(error)) => {
                tracing::debug!(session.id = %self.session.session_id, host = name, error = %error, "Resolving CONNECT host failed");
                Err(Denial::new(
                    DenyReason::ResolutionFailed,
                    StatusCode::BAD_GATEWAY,
                ))
            }
            Err(_) => Err(Denial::new(
                DenyReason::ConnectTimedOut,
                StatusCode::GATEWAY_TIMEOUT,
            )),
        }
    }

    /// Keeps the addresses that are public or inside the site's allowed private ranges,
    /// and never an address inside a registered session's subnet, which would let one
    /// workspace reach another through the proxy.
    fn check_addresses(&self, resolved: &[IpAddr]) -> Result<Vec<IpAddr>, Denial> {
        let policy = &self.session.policy;
        let registry = &self.proxy.shared.registry;
        let mut allowed = Vec::new();
        let mut first_rejected = None;

        for ip in resolved.iter().map(|ip| ip.to_canonical()) {
            let rejection = match classify(ip) {
                _ if registry.lookup(ip).is_some() => Some(DenyReason::AddressInSessionNetwork),
                None => None,
                Some(class) if !class.is_never_allowed() && policy.allows_private(ip) => None,
                Some(class) => Some(DenyReason::AddressNotAllowed { class }),
            };
            match rejection {
                None => allowed.push(ip),
                Some(reason) => {
                    first_rejected.get_or_insert((ip, reason));
                }
            }
        }

        if allowed.is_empty() {
            let (ip, reason) = first_rejected.expect("resolved addresses are never empty here");
            return Err(Denial {
                reason,
                status: StatusCode::FORBIDDEN,
                resolved_ip: Some(ip),
            });
        }
        Ok(allowed)
    }

    async fn connect(
        &self,
        candidates: &[IpAddr],
        port: u16,
        deadline: Instant,
    ) -> Result<(TcpStream, IpAddr), Denial> {
        let mut last_ip = None;
        for &ip in candidates.iter().take(MAX_CONNECT_ATTEMPTS) {
            last_ip = Some(ip);
            match timeout_at(deadline, TcpStream::connect((ip, port))).await {
                Ok(Ok(stream)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(error = %error, "Setting TCP_NODELAY on upstream connection failed");
                    }
                    return Ok((stream, ip));
                }
                Ok(Err(error)) => {
                    tracing::debug!(session.id = %self.session.session_id, ip = %ip, port, error = %error, "Connecting upstream failed");
                }
                Err(_) => {
                    return Err(Denial {
                        reason: DenyReason::ConnectTimedOut,
                        status: StatusCode::GATEWAY_TIMEOUT,
                        resolved_ip: Some(ip),
                    });
                }
            }
        }
        Err(Denial {
            reason: DenyReason::ConnectFailed,
            status: StatusCode::BAD_GATEWAY,
            resolved_ip: last_ip,
        })
    }

    /// Waits for the client's side of the upgrade, checks the ClientHello when required,
    /// and relays bytes until the tunnel ends.
    async fn run_tunnel(
        self: Arc<Self>,
        request: Request<Incoming>,
        mut upstream: TcpStream,
        host: TargetHost,
        port: u16,
        ip: IpAddr,
    ) {
        let mut client = match hyper::upgrade::on(request).await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(error) => {
                tracing::debug!(session.id = %self.session.session_id, error = %error, "CONNECT upgrade failed");
                return;
            }
        };

        let Some(first_bytes) = self
            .inspect_client_hello(&mut client, &host, port, ip)
            .await
        else {
            return;
        };
        self.record(
            Some(host.to_string()),
            Some(port),
            Some(ip),
            Outcome::Allowed,
        );

        let idle_timeout = self.proxy.shared.config.idle_timeout;
        let bandwidth = self
            .session
            .bandwidth(self.proxy.shared.config.session_bytes_per_second);
        let traffic = Traffic::new();
        let relay = async {
            if let Some(bandwidth) = bandwidth {
                bandwidth.consume(first_bytes.len()).await;
            }
            if let Err(error) = upstream.write_all(&first_bytes).await {
                tracing::debug!(session.id = %self.session.session_id, error = %error, "Forwarding ClientHello upstream failed");
                return CloseCause::Error;
            }
            traffic
                .sent
                .fetch_add(first_bytes.len() as u64, Ordering::Relaxed);
            pump(client, upstream, idle_timeout, &traffic, bandwidth).await
        };
        let cause = tokio::select! {
            cause = relay => cause,
            () = self.shutdown.cancelled() => CloseCause::Shutdown,
            () = self.session.ended().cancelled() => CloseCause::SessionEnded,
        };
        let outcome = Outcome::Closed {
            bytes_sent: traffic.sent.load(Ordering::Relaxed),
            bytes_received: traffic.received.load(Ordering::Relaxed),
            duration: traffic.elapsed(),
            cause,
        };
        self.record(Some(host.to_string()), Some(port), Some(ip), outcome);
    }

    /// Reads and checks the ClientHello when the configuration requires a matching server
    /// name for this target. Returns the bytes read, or `None` after recording a denial or
    /// on shutdown.
    async fn inspect_client_hello<S>(
        &self,
        client: &mut S,
        host: &TargetHost,
        port: u16,
        ip: IpAddr,
    ) -> Option<Vec<u8>>
    where
        S: tokio::io::AsyncRead + Unpin,
    {
        let config = &self.proxy.shared.config;
        let TargetHost::Name(name) = host else {
            return Some(Vec::new());
        };
        if !config.require_sni_match {
            return Some(Vec::new());
        }

        let hello = tokio::select! {
            hello = read_client_hello(client, name, config.client_hello_timeout) => hello,
            () = self.shutdown.cancelled() => return None,
            () = self.session.ended().cancelled() => return None,
        };
        match hello {
            Ok(first_bytes) => Some(first_bytes),
            Err(reason) => {
                self.deny(Some(host.to_string()), Some(port), reason, Some(ip));
                None
            }
        }
    }

    fn deny(
        &self,
        host: Option<String>,
        port: Option<u16>,
        reason: DenyReason,
        resolved_ip: Option<IpAddr>,
    ) {
        self.record(host, port, resolved_ip, Outcome::Denied { reason });
    }

    fn record(
        &self,
        host: Option<String>,
        port: Option<u16>,
        resolved_ip: Option<IpAddr>,
        outcome: Outcome,
    ) {
        let event = EgressEvent {
            session_id: Some(self.session.session_id),
            client: self.client,
            host,
            port,
            resolved_ip,
            outcome,
        };
        emit(
            self.proxy.shared.events.as_ref(),
            &self.session.denial_log,
            event,
        );
    }
}

/// Reads the complete ClientHello and checks that its server name equals `host`.
/// Returns the bytes read, which the caller forwards upstream.
async fn read_client_hello<S>(
    client: &mut S,
    host: &str,
    limit: Duration,
) -> Result<Vec<u8>, DenyReason>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let deadline = Instant::now() + limit;
    let mut buffer = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];

    loop {
        let read = match timeout_at(deadline, client.read(&mut chunk)).await {
            Ok(Ok(read)) => read,
            Ok(Err(_)) => return Err(DenyReason::NotTls),
            Err(_) => return Err(DenyReason::ClientHelloTimedOut),
        };
        if read == 0 {
            return Err(DenyReason::NotTls);
        }
        buffer.extend_from_slice(&chunk[..read]);

        match sni::parse(&buffer) {
            ClientHello::Incomplete if buffer.len() <= sni::MAX_CLIENT_HELLO + 1024 => continue,
            ClientHello::Incomplete | ClientHello::Invalid => return Err(DenyReason::NotTls),
            ClientHello::Parsed { server_name } => {
                return match server_name {
                    Some(name) if name.strip_suffix('.').unwrap_or(&name) == host => Ok(buffer),
                    _ => Err(DenyReason::SniMismatch),
                };
            }
        }
    }
}

fn error_response(status: StatusCode) -> Response<Full<Bytes>> {
    let body = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Binds one listener per address, for callers that do not bind their own.
pub async fn bind(addresses: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addresses.len());
    for address in addresses {
        let listener = TcpListener::bind(address).await.map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("binding egress proxy on {address} failed: {error}"),
            )
        })?;
        listeners.push(listener);
    }
    Ok(listeners)
}
