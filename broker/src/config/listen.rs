//! `server.listen`: an IP address and port, or a host name of this machine's loopback
//! and a port.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// The portal's listen address as written, with the socket addresses to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddress {
    /// The value as written, such as `localhost:8080` or `0.0.0.0:8443`.
    pub text: String,
    /// The addresses to bind: the one address of an IP literal, or every address a
    /// host name resolved to at start-up, in resolver order and without duplicates.
    pub addresses: Vec<SocketAddr>,
}

impl ListenAddress {
    /// Parses an IP address and port, or resolves `HOST:PORT`. A host name is accepted
    /// only when every address it resolves to is a loopback address, because a name
    /// whose addresses change would move the listener, and plain HTTP is served only
    /// on loopback.
    pub fn parse(text: &str) -> Result<ListenAddress, String> {
        const EXPECTED: &str = "write an IP address and port such as \"127.0.0.1:8080\" or \"[::]:8443\", or \"localhost:8080\"";

        if let Ok(address) = text.parse::<SocketAddr>() {
            return Ok(ListenAddress {
                text: text.to_owned(),
                addresses: vec![address],
            });
        }

        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!(
                "invalid listen address {text:?}: the port is missing; {EXPECTED}"
            ));
        };
        let Ok(port) = port.parse::<u16>() else {
            return Err(format!("invalid port {port:?} in {text:?}; {EXPECTED}"));
        };
        if host.is_empty() || host.contains([':', '[', ']', '/']) {
            return Err(format!("invalid listen address {text:?}; {EXPECTED}"));
        }

        let resolved = (host, port).to_socket_addrs().map_err(|error| {
            format!("cannot resolve the host name {host:?} in {text:?} ({error}); {EXPECTED}")
        })?;
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for address in resolved {
            if !address.ip().is_loopback() {
                return Err(format!(
                    "the host name {host:?} in {text:?} resolves to {}, which is not a loopback address; a host name is accepted only when all its addresses are loopback, so write the IP address to listen on, such as \"0.0.0.0:{port}\"",
                    address.ip()
                ));
            }
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
        if addresses.is_empty() {
            return Err(format!(
                "the host name {host:?} in {text:?} resolves to no address; {EXPECTED}"
            ));
        }
        Ok(ListenAddress {
            text: text.to_owned(),
            addresses,
        })
    }

    /// Returns whether every address is a loopback address, so that plain HTTP may be
    /// served.
    pub fn is_loopback(&self) -> bool {
        self.addresses
            .iter()
            .all(|address| address.ip().is_loopback())
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literal_is_one_address() {
        let listen = ListenAddress::parse("[::1]:8443").unwrap();

        assert_eq!(listen.addresses, vec!["[::1]:8443".parse().unwrap()]);
        assert!(listen.is_loopback());
    }

    #[test]
    fn localhost_resolves_to_loopback() {
        let listen = ListenAddress::parse("localhost:8080").unwrap();

        assert!(!listen.addresses.is_empty());
        assert!(listen.is_loopback(), "{listen:?}");
        assert!(
            listen
                .addresses
                .iter()
                .all(|address| address.port() == 8080)
        );
        assert_eq!(listen.to_string(), "localhost:8080");
    }

    // NOTE: names that need DNS (an unknown name, a name of another host) are not
    // tested, because tests may not send queries to the host's resolver.
    #[test]
    fn malformed_listen_address_is_named() {
        for (bad, expected) in [
            ("localhost", "the port is missing"),
            ("localhost:http", "invalid port \"http\""),
            ("localhost:70000", "invalid port \"70000\""),
            (":8080", "invalid listen address \":8080\""),
        ] {
            let message = ListenAddress::parse(bad).unwrap_err();
            assert!(message.contains(expected), "{bad}: {message}");
            assert!(message.contains("\"localhost:8080\""), "{bad}: {message}");
        }
    }
}
