//! A tiny HTTP server on loopback that serves fixed pages to the browser under test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct PageServer {
    pub address: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl PageServer {
    /// Serves `pages` (path to HTML) on 127.0.0.1 with a port the system picks.
    pub async fn start(pages: HashMap<&'static str, String>) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind page server");
        let address = listener.local_addr().expect("page server address");
        let pages = Arc::new(pages);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let pages = pages.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 8192];
                    let Ok(read) = socket.read(&mut buffer).await else {
                        return;
                    };
                    let request = String::from_utf8_lossy(&buffer[..read]);
                    let target = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    log.lock().expect("request log lock").push(target.clone());
                    let path = target.split('?').next().unwrap_or("/");
                    let (status, body) = match pages.get(path) {
                        Some(body) => ("200 OK", body.clone()),
                        None => ("404 Not Found", "not found".to_owned()),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        PageServer {
            address,
            requests,
            task,
        }
    }

    /// Request targets (path and query) received so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("request log lock").clone()
    }

    /// Returns the server's origin, such as `http://127.0.0.1:40123`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTPS server on 127.0.0.1 whose certificate for one host name comes from a
/// generated CA, stopped on drop. Workspaces reach it through the egress proxy when
/// `egress.hosts` maps the name to 127.0.0.1 and the site trusts `ca_pem`.
pub struct TlsSite {
    pub host: String,
    pub address: SocketAddr,
    /// The generated CA certificate, for the site's `policy.extra_ca_certs`.
    pub ca_pem: String,
    handle: axum_server::Handle,
}

impl TlsSite {
    /// Serves `router` for `host` on a port the system picks.
    pub async fn start(host: &str, router: axum::Router) -> TlsSite {
        drop(rustls::crypto::ring::default_provider().install_default());
        let tls = strongroom_demo_bank::tls::generate(&[host.to_owned()], &[]).unwrap();
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            tls.chain_pem.into_bytes(),
            tls.key_pem.into_bytes(),
        )
        .await
        .unwrap();

        let handle = axum_server::Handle::new();
        let server = axum_server::bind_rustls("127.0.0.1:0".parse().unwrap(), config)
            .handle(handle.clone())
            .serve(router.into_make_service());
        tokio::spawn(server);
        let address = handle.listening().await.expect("HTTPS site listens");
        TlsSite {
            host: host.to_owned(),
            address,
            ca_pem: tls.ca_pem,
            handle,
        }
    }

    /// Returns the `egress.hosts` value that resolves the site's host name to 127.0.0.1.
    pub fn egress_hosts(&self) -> String {
        format!("{{ \"{}\" = [\"127.0.0.1\"] }}", self.host)
    }

    /// Writes the CA certificate to `{name}-ca.pem` in `dir`, the directory of the site
    /// file, and returns a `[[site]]` table named `name` that starts at `page` on this
    /// server and may reach nothing else. `policy` adds lines to `[site.policy]`.
    pub fn site_toml(
        &self,
        dir: &Path,
        name: &str,
        display_name: &str,
        page: &str,
        policy: &str,
    ) -> String {
        let ca_file = format!("{name}-ca.pem");
        std::fs::write(dir.join(&ca_file), &self.ca_pem).unwrap();
        let host = &self.host;
        let port = self.address.port();
        format!(
            r#"
[[site]]
name = "{name}"
display_name = "{display_name}"
start_url = "https://{host}:{port}{page}"
allowed_hosts = ["{host}"]
allowed_ports = [{port}]
allowed_private_ranges = ["127.0.0.1/32"]
recording_retention_days = 7
[site.policy]
extra_ca_certs = ["{ca_file}"]
{policy}"#
        )
    }
}

impl Drop for TlsSite {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}
