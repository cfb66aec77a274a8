//! DNS resolution for CONNECT targets, replaceable so tests never query real DNS.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;

/// The future a [`Resolver`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Resolves a host name to addresses. The proxy checks every address it gets and
/// connects only to an address it checked, so a resolver needs no filtering of its own.
pub trait Resolver: Send + Sync + 'static {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a>;
}

/// Resolves through the host's `getaddrinfo` (`/etc/hosts`, then the configured DNS
/// servers), on tokio's blocking thread pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host, 0)).await?;
            Ok(addresses.map(|address| address.ip()).collect())
        })
    }
}

/// Resolves from a fixed map and fails for every other name. Intended for tests and for
/// deployments that pin each bank's addresses.
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    entries: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `host` (matched case-insensitively, without a trailing dot) to `addresses`.
    pub fn with(mut self, host: &str, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        self.entries.insert(host, addresses.into_iter().collect());
        self
    }
}

impl Resolver for StaticResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        let result = self
            .entries
            .get(&host.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no static address for {host}"),
                )
            });
        Box::pin(std::future::ready(result))
    }
}
