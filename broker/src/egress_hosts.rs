//! The egress proxy's resolver with the static host map of `egress.hosts`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use egress::{ResolveFuture, Resolver, SystemResolver};

/// Resolves names in the map to their listed addresses only, and every other name
/// through the host's resolver.
pub struct HostMapResolver {
    hosts: BTreeMap<String, Vec<IpAddr>>,
    fallback: SystemResolver,
}

impl HostMapResolver {
    /// `hosts` keys are lowercase names without a trailing dot, as `config::egress`
    /// stores them.
    pub fn new(hosts: BTreeMap<String, Vec<IpAddr>>) -> Self {
        Self {
            hosts,
            fallback: SystemResolver,
        }
    }
}

impl Resolver for HostMapResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        match self.hosts.get(&name) {
            Some(addresses) => Box::pin(std::future::ready(Ok(addresses.clone()))),
            None => self.fallback.resolve(host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mapped_name_skips_the_system_resolver() {
        let address: IpAddr = "172.22.0.2".parse().unwrap();
        let resolver = HostMapResolver::new(BTreeMap::from([(
            "demo-bank.test".to_owned(),
            vec![address],
        )]));
        assert_eq!(
            resolver.resolve("Demo-Bank.TEST.").await.unwrap(),
            vec![address]
        );
        let localhost = resolver.resolve("localhost").await.unwrap();
        assert!(localhost.iter().all(|ip| ip.is_loopback()), "{localhost:?}");
    }
}
