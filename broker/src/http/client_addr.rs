//! The client's address, believing `X-Forwarded-For` only from trusted proxies.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use ipnet::IpNet;

/// Trusted reverse proxies, as configured.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub std::sync::Arc<Vec<IpNet>>);

impl TrustedProxies {
    fn contains(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// Resolves the client address from the peer and the header values.
    ///
    /// The header is read from the right: each hop appends the address it saw, so the
    /// first address that is not a trusted proxy is the client. Anything unparsable
    /// stops the walk at the last trusted hop.
    pub fn resolve(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let hops = forwarded_for
            .iter()
            .flat_map(|value| value.split(','))
            .map(str::trim);
        let mut client = peer;
        for hop in hops.collect::<Vec<_>>().into_iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(addr) => {
                    client = addr;
                    if !self.contains(addr) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// Extractor for the client's address.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

impl<S> FromRequestParts<S> for ClientAddr
where
    S: Send + Sync,
    TrustedProxies: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let values: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        Ok(ClientAddr(
            TrustedProxies::from_ref(state).resolve(peer, &values),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies(std::sync::Arc::new(
            nets.iter().map(|net| net.parse().unwrap()).collect(),
        ))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn header_from_untrusted_peer_is_ignored() {
        let resolved = proxies(&["10.0.0.0/8"]).resolve(ip("203.0.113.9"), &["198.51.100.1"]);

        assert_eq!(resolved, ip("203.0.113.9"));
    }

    #[test]
    fn header_from_trusted_peer_names_client() {
        let resolved = proxies(&["10.0.0.0/8"]).resolve(ip("10.0.0.2"), &["198.51.100.1"]);

        assert_eq!(resolved, ip("198.51.100.1"));
    }

    #[test]
    fn spoofed_leftmost_entry_is_not_believed() {
        let resolved =
            proxies(&["10.0.0.0/8"]).resolve(ip("10.0.0.2"), &["1.2.3.4, 198.51.100.1, 10.0.0.3"]);

        assert_eq!(resolved, ip("198.51.100.1"));
    }

    #[test]
    fn garbage_header_stops_at_last_trusted_hop() {
        let resolved = proxies(&["10.0.0.0/8"]).resolve(ip("10.0.0.2"), &["not-an-ip"]);

        assert_eq!(resolved, ip("10.0.0.2"));
    }
}
