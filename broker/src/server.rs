//! Start-up and shutdown of `strongroom serve`.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use uuid::Uuid;

use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ListenAddress, TlsMode};
use crate::db::Database;
use crate::http::health::DatabaseCheck;
use crate::http::{self, AppState, ReadinessCheck, TrustedProxies};
use crate::instance;
use crate::tasks::TaskRegistry;

/// A start-up failure, with the exit code the command returns.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration or the environment it names is unusable (exit code 2).
    #[error("{0:#}")]
    Config(anyhow::Error),
    /// Anything else (exit code 1).
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl StartupError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartupError::Config(_) => 2,
            StartupError::Other(_) => 1,
        }
    }
}

/// A broker that is accepting connections.
pub struct RunningBroker {
    pub local_addr: SocketAddr,
    pub instance_id: Uuid,
    pub scheme: &'static str,
    pub state: AppState,
    tasks: TaskRegistry,
    handle: Handle,
    config: Arc<Config>,
}

/// Opens everything the broker needs, in an order that leaves nothing half-made when
/// a step fails: the data directory and the listening socket come first, then the
/// database and its migrations, then the instance id and TLS material.
pub async fn start(config: Config) -> Result<RunningBroker, StartupError> {
    let config = Arc::new(config);

    instance::prepare_data_dir(&config.data_dir).map_err(StartupError::Config)?;

    let listeners = bind_all(&config.server.listen).map_err(StartupError::Config)?;
    let local_addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| StartupError::Other(error.into()))?;
    let local_addr = local_addrs[0];

    let db = Database::connect(&config.database)
        .await
        .map_err(|error| StartupError::Config(error.into()))?;
    db.migrate().await.map_err(StartupError::Other)?;

    let instance_id = instance::load_or_create(&config.data_dir).map_err(StartupError::Other)?;
    let tls = tls_config(&config, local_addr)
        .await
        .map_err(StartupError::Config)?;
    let signing_key = crate::audit::AuditSigningKey::load_or_create(&config.data_dir)
        .map_err(StartupError::Config)?;

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let audit = AuditLog::new(db.clone(), clock.clone());
    let auth = crate::auth::AuthService::new(
        &config,
        db.clone(),
        audit.clone(),
        clock.clone(),
        tls.is_some(),
        &local_addrs,
    )
    .map_err(StartupError::Config)?;
    let mut readiness: Vec<Arc<dyn ReadinessCheck>> = vec![Arc::new(DatabaseCheck(db.clone()))];
    readiness.extend(crate::launcher_process::readiness_checks(
        launcher::LauncherClient::new(config.sessions.launcher_socket.clone()),
        config.launcher.image_source.clone(),
    ));
    readiness.push(Arc::new(crate::launcher_process::FirewallCheck(
        crate::launcher_process::firewall_config(&config),
    )));
    // Before any task starts, so that a refusal leaves nothing running.
    let readiness = crate::recordings::check_keys_at_start(&config, &db, readiness)
        .await
        .map_err(StartupError::Config)?;
    let tasks = TaskRegistry::new();
    let portal = start_sessions(&config, &db, &audit, &clock, &auth, instance_id, &tasks)
        .map_err(StartupError::Other)?;
    crate::recordings::catalogue::spawn_recovery(&config, &audit, &instance_id.to_string(), &tasks)
        .await
        .map_err(StartupError::Other)?;
    crate::recordings::retention::spawn_from_config(&config, &audit, &clock, &tasks)
        .map_err(StartupError::Other)?;
    let state = AppState {
        db: db.clone(),
        audit: audit.clone(),
        trusted_proxies: TrustedProxies(Arc::new(config.server.trusted_proxies.clone())),
        readiness: Arc::new(readiness),
        metrics: http::metrics_handle(),
        auth: auth.clone(),
        portal,
        admin: crate::admin::AdminContext {
            config: config.clone(),
            signing_key: Arc::new(signing_key),
        },
    };

    audit
        .append(
            EventBuilder::new(Actor::System("broker"), Action::BrokerStarted)
                .detail("instance_id", instance_id.to_string())
                .detail("version", env!("CARGO_PKG_VERSION"))
                .build(),
        )
        .await
        .map_err(StartupError::Other)?;

    tasks.spawn(
        "portal-session-reaper",
        auth.clone().run_reaper(tasks.token()),
    );
    let handle = Handle::new();
    let app = http::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let scheme = if tls.is_some() { "https" } else { "http" };

    for listener in listeners {
        serve_listener(listener, tls.clone(), app.clone(), handle.clone(), &tasks);
    }

    let listen = local_addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(listen, scheme, instance.id = %instance_id, database = db.backend_name(), "Broker started");
    Ok(RunningBroker {
        local_addr,
        instance_id,
        scheme,
        state,
        tasks,
        handle,
        config,
    })
}

/// Builds the session service, the stream hub and the egress proxy, and connects them.
fn start_sessions(
    config: &Config,
    db: &Database,
    audit: &AuditLog,
    clock: &Arc<dyn Clock>,
    auth: &crate::auth::AuthService,
    instance_id: Uuid,
    tasks: &TaskRegistry,
) -> anyhow::Result<crate::portal::Portal> {
    use crate::sessions::{RecorderPreflight, SessionDeps, SessionService};

    let registry = Arc::new(egress::Registry::new());
    let proxy =
        crate::lifecycle::egress_proxy(registry.clone(), audit.clone(), &config.sessions, tasks)?
            .with_resolver(Arc::new(crate::egress_hosts::HostMapResolver::new(
                config.egress.hosts.clone(),
            )));
    let listeners = crate::lifecycle::EgressListeners::new(proxy, tasks.clone());

    let keys = crate::recordings::open_key_store(config)?;
    let mut preflight = RecorderPreflight::from_config(&config.sessions);
    if !matches!(
        config.sessions.recording_keys,
        crate::config::sessions::RecordingKeysBackend::Local
    ) {
        preflight.shared_keys = Some(keys.clone());
    }
    let sessions = SessionService::new(SessionDeps {
        db: db.clone(),
        audit: audit.clone(),
        clock: clock.clone(),
        launcher: launcher::LauncherClient::new(config.sessions.launcher_socket.clone()),
        egress: registry,
        recorder: preflight,
        config: config.sessions.clone(),
        instance_id: instance_id.to_string(),
    });

    let storage = crate::recordings::open_storage(
        &config.sessions.recordings_dir,
        config.sessions.recordings_s3.as_ref(),
    )?;
    let recording = crate::stream::RecordingSettings {
        storage,
        keys,
        config: recorder::RecorderConfig::default(),
    };
    let hub = crate::stream::StreamHub::new(
        crate::stream::StreamSettings::default(),
        recording,
        audit.clone(),
        tasks.clone(),
    );

    let downloads = crate::downloads::Downloads::open(
        &config.data_dir,
        audit.clone(),
        config.sessions.download_max_file_bytes,
    )?;
    hub.set_downloads(downloads.clone());
    crate::downloads::spawn_retention(downloads.clone(), tasks);

    crate::lifecycle::connect(&sessions, &hub, &listeners, auth, tasks);
    sessions.spawn_tasks(tasks);
    let vault = crate::secrets::CredentialVault::from_config(config, db, clock.clone())?;
    let auto_login = crate::secrets::autologin::AutoLoginService::new(
        db.clone(),
        vault,
        audit.clone(),
        tasks.clone(),
    );
    Ok(crate::portal::Portal {
        sessions,
        hub,
        tickets: Default::default(),
        egress: listeners,
        default_retention_days: 90,
        auto_login,
        downloads: Some(downloads),
    })
}

/// Serves the portal on one listener until the shared handle shuts it down.
fn serve_listener(
    listener: TcpListener,
    tls: Option<RustlsConfig>,
    app: IntoMakeServiceWithConnectInfo<axum::Router, SocketAddr>,
    handle: Handle,
    tasks: &TaskRegistry,
) {
    match tls {
        Some(tls) => tasks.spawn("http", async move {
            let server = axum_server::from_tcp_rustls(listener, tls).handle(handle);
            if let Err(error) = server.serve(app).await {
                tracing::error!(error = %error, "HTTPS server failed");
            }
        }),
        None => tasks.spawn("http", async move {
            let server = axum_server::from_tcp(listener).handle(handle);
            if let Err(error) = server.serve(app).await {
                tracing::error!(error = %error, "HTTP server failed");
            }
        }),
    }
}

/// Binds every address of `server.listen`. The addresses of a host name share one
/// port, the first one's when the port is 0. An address of a host name that this
/// machine lacks, such as `::1` with IPv6 off, is skipped with a warning as long as
/// another one binds.
fn bind_all(listen: &ListenAddress) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners: Vec<TcpListener> = Vec::new();
    let mut port = None;
    for address in &listen.addresses {
        let mut address = *address;
        if let Some(port) = port {
            address.set_port(port);
        }
        match bind(address) {
            Ok(listener) => {
                port = Some(
                    listener
                        .local_addr()
                        .context("cannot read the listener's address")?
                        .port(),
                );
                listeners.push(listener);
            }
            Err(BindError::Unavailable(error)) if listen.addresses.len() > 1 => {
                tracing::warn!(listen = %listen, address = %address, error = %error, "Listen address not available on this machine; skipped");
            }
            Err(error) => return Err(error.into_anyhow(address)),
        }
    }
    if listeners.is_empty() {
        anyhow::bail!(
            "server.listen: none of the addresses of {listen} belongs to this machine; use one of its addresses"
        );
    }
    Ok(listeners)
}

enum BindError {
    /// The address does not belong to this machine, or its family is off.
    Unavailable(std::io::Error),
    Other(std::io::Error),
}

impl BindError {
    fn into_anyhow(self, addr: SocketAddr) -> anyhow::Error {
        let error = match self {
            BindError::Unavailable(error) | BindError::Other(error) => error,
        };
        match error.kind() {
            std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
                "server.listen: address {addr} is already in use; stop the other program or choose another port"
            ),
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                "server.listen: no permission to listen on {addr}; use a port above 1023 or grant CAP_NET_BIND_SERVICE"
            ),
            std::io::ErrorKind::AddrNotAvailable => anyhow::anyhow!(
                "server.listen: address {addr} does not belong to this machine; use one of its addresses"
            ),
            _ => anyhow::anyhow!("server.listen: cannot listen on {addr}: {error}"),
        }
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let listener = TcpListener::bind(addr).map_err(|error| {
        let unavailable = error.kind() == std::io::ErrorKind::AddrNotAvailable
            || error.raw_os_error() == Some(libc::EAFNOSUPPORT);
        match unavailable {
            true => BindError::Unavailable(error),
            false => BindError::Other(error),
        }
    })?;
    listener.set_nonblocking(true).map_err(BindError::Other)?;
    Ok(listener)
}

async fn tls_config(
    config: &Config,
    local_addr: SocketAddr,
) -> anyhow::Result<Option<RustlsConfig>> {
    // Only one provider is compiled in; installing it twice is harmless.
    drop(rustls::crypto::ring::default_provider().install_default());

    match &config.server.tls {
        TlsMode::PlainLoopback => {
            tracing::warn!(listen = %local_addr, "Serving plain HTTP because the listener is on loopback only");
            Ok(None)
        }
        TlsMode::Files { cert, key } => {
            let tls = RustlsConfig::from_pem_file(cert, key).await.with_context(|| {
                format!("server.tls_cert/server.tls_key: cannot load {} and {}; check that both are PEM files readable by the broker", cert.display(), key.display())
            })?;
            tracing::info!(cert = %cert.display(), "Serving HTTPS with the configured certificate");
            Ok(Some(tls))
        }
        TlsMode::Generated => {
            let mut names = vec!["localhost".to_owned()];
            if let Some(host) = config.server.public_url.as_ref().and_then(url_host) {
                names.push(host);
            }
            let addresses: Vec<_> = [local_addr.ip()]
                .into_iter()
                .filter(|ip| !ip.is_unspecified())
                .collect();
            let generated = http::tls::ensure_generated(&config.data_dir, &names, &addresses)?;
            tracing::warn!(
                ca = %generated.ca_cert.display(),
                created = generated.created,
                "Serving HTTPS with a generated local certificate because none is configured; import the CA into browsers or set server.tls_cert and server.tls_key"
            );
            let tls = RustlsConfig::from_pem_file(&generated.cert, &generated.key)
                .await
                .context("cannot load the generated certificate")?;
            Ok(Some(tls))
        }
    }
}

/// Returns the host of a URL as a certificate names it: an IPv6 address without brackets.
fn url_host(url: &url::Url) -> Option<String> {
    match url.host()? {
        url::Host::Domain(name) => Some(name.to_owned()),
        url::Host::Ipv4(address) => Some(address.to_string()),
        url::Host::Ipv6(address) => Some(address.to_string()),
    }
}

impl RunningBroker {
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.local_addr)
    }

    /// Stops accepting connections, stops every background task within the grace
    /// period and closes the database.
    pub async fn shutdown(self) {
        tracing::info!("Broker stopping");
        self.handle
            .graceful_shutdown(Some(self.config.shutdown.grace));
        // Sessions end before the background tasks stop, while the launcher still
        // answers, so that their containers and networks are removed now.
        match tokio::time::timeout(
            self.config.shutdown.grace,
            self.state.portal.sessions.end_all_on_shutdown(),
        )
        .await
        {
            Ok(Ok(ended)) if !ended.is_empty() => {
                tracing::info!(sessions = ended.len(), "Live sessions ended for shutdown")
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(error = %error, "Cannot end every live session at shutdown; the next start reconciles them")
            }
            Err(_) => tracing::error!(
                "Ending live sessions at shutdown timed out; the next start reconciles them"
            ),
        }
        let event = EventBuilder::new(Actor::System("broker"), Action::BrokerStopped)
            .detail("instance_id", self.instance_id.to_string())
            .build();
        if let Err(error) = self.state.audit.append(event).await {
            tracing::error!(
                error = format!("{error:#}"),
                "Cannot record the broker stop in the audit trail"
            );
        }
        let stuck = self.tasks.shutdown(self.config.shutdown.grace).await;
        if !stuck.is_empty() {
            tracing::warn!(tasks = ?stuck, "Background tasks still running at the end of the grace period");
        }
        self.state.db.close().await;
        tracing::info!("Broker stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::url_host;

    #[test]
    fn url_host_handles_ports_and_brackets() {
        let host = |text: &str| url_host(&url::Url::parse(text).unwrap());

        assert_eq!(
            host("https://portal.bank.example:8443/x").as_deref(),
            Some("portal.bank.example")
        );
        assert_eq!(
            host("https://[2001:db8::1]:8443").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(host("data:text/plain,x"), None);
    }
}
