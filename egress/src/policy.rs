//! Site policies: which host names, ports and private ranges a session may reach.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The port a site allows when its policy names none.
pub const DEFAULT_PORT: u16 = 443;

/// Maximum length of a DNS name in text form, without the trailing dot (RFC 1035).
const MAX_NAME_LEN: usize = 253;

/// Maximum length of one DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// A host name, suffix pattern or IP literal that a site allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HostPattern {
    /// Matches exactly this name (lowercase, no trailing dot).
    Exact(String),
    /// Written `*.bank.example`: matches any name ending in `.bank.example`, such as
    /// `www.bank.example` or `a.b.bank.example`, but neither `bank.example` itself nor
    /// `evilbank.example`.
    Subdomains(String),
    /// Matches a CONNECT target written as this IP literal. IP-literal targets are
    /// rejected unless a pattern of this kind names them.
    Ip(IpAddr),
}

/// An invalid host pattern or site policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "invalid host pattern {pattern:?}: {reason}; expected a DNS name such as \
         `bank.example`, a suffix pattern such as `*.bank.example`, or an IP literal"
    )]
    InvalidHostPattern {
        pattern: String,
        reason: &'static str,
    },
    #[error("site policy allows no host names; add at least one host pattern")]
    NoHosts,
    #[error("site policy allows port 0, which no connection can use; use 443 or another port")]
    ZeroPort,
    #[error(
        "allowed private range {range} contains the unspecified, multicast or broadcast \
         address space, which the proxy never connects to; list a narrower range"
    )]
    RangeTooWide { range: IpNet },
}

impl HostPattern {
    /// Parses `bank.example`, `*.bank.example` or an IP literal (IPv6 with or without
    /// brackets). Names are lowercased and a trailing dot is removed.
    pub fn parse(pattern: &str) -> Result<Self, PolicyError> {
        let invalid = |reason| PolicyError::InvalidHostPattern {
            pattern: pattern.to_owned(),
            reason,
        };

        let trimmed = pattern.trim();
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Self::Ip(ip.to_canonical()));
        }

        if let Some(suffix) = trimmed.strip_prefix("*.") {
            let suffix = normalize_name(suffix).map_err(invalid)?;
            if !suffix.contains('.') {
                return Err(invalid("a suffix pattern needs at least two labels"));
            }
            return Ok(Self::Subdomains(suffix));
        }

        if trimmed.contains('*') {
            return Err(invalid(
                "`*` is allowed only as the whole first label (`*.`)",
            ));
        }
        Ok(Self::Exact(normalize_name(trimmed).map_err(invalid)?))
    }

    /// Returns whether `host` (a normalized CONNECT target) matches this pattern.
    pub fn matches(&self, host: &TargetHost) -> bool {
        match (self, host) {
            (Self::Exact(name), TargetHost::Name(target)) => name == target,
            (Self::Subdomains(suffix), TargetHost::Name(target)) => target
                .strip_suffix(suffix.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
            (Self::Ip(ip), TargetHost::Ip(target)) => ip == target,
            _ => false,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => formatter.write_str(name),
            Self::Subdomains(suffix) => write!(formatter, "*.{suffix}"),
            Self::Ip(ip) => write!(formatter, "{ip}"),
        }
    }
}

impl TryFrom<String> for HostPattern {
    type Error = PolicyError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<HostPattern> for String {
    fn from(pattern: HostPattern) -> Self {
        pattern.to_string()
    }
}

/// The host part of a CONNECT target after normalization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetHost {
    /// A DNS name, lowercase, without a trailing dot.
    Name(String),
    /// An IP literal, with IPv4-mapped IPv6 addresses turned into IPv4.
    Ip(IpAddr),
}

impl fmt::Display for TargetHost {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => formatter.write_str(name),
            Self::Ip(ip) => write!(formatter, "{ip}"),
        }
    }
}

/// Parses a CONNECT request target (`host:port` or `[v6]:port`). Returns `None` for
/// anything else, including names with characters outside letters, digits, `-` and `.`.
pub fn parse_target(authority: &str) -> Option<(TargetHost, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    if port.is_empty() || port.starts_with('+') {
        return None;
    }
    let port: u16 = port.parse().ok()?;

    if let Some(inner) = host.strip_prefix('[') {
        let ip: std::net::Ipv6Addr = inner.strip_suffix(']')?.parse().ok()?;
        return Some((TargetHost::Ip(IpAddr::V6(ip).to_canonical()), port));
    }
    if host.contains(':') {
        return None;
    }
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        return Some((TargetHost::Ip(IpAddr::V4(ip)), port));
    }
    let name = normalize_name(host).ok()?;
    // A name made only of digits and dots (`127.1`, `2130706433`) is an IPv4 literal to
    // some resolvers, so it is rejected rather than resolved.
    if name
        .split('.')
        .next_back()
        .is_some_and(|label| label.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some((TargetHost::Name(name), port))
}

/// Lowercases a DNS name, removes one trailing dot and checks its syntax.
fn normalize_name(name: &str) -> Result<String, &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("the name is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("the name has an empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only letters, digits, `-` and `.` are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with `-`");
        }
    }
    Ok(name)
}

/// Site policy: the hosts, ports and private ranges a session may reach through the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SitePolicy {
    /// Host names the session may CONNECT to.
    pub hosts: Vec<HostPattern>,
    /// Destination ports the session may CONNECT to; 443 when empty.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Non-public address ranges an admin approved for this site. A resolved address in
    /// one of these ranges is allowed although it is private, loopback or link-local.
    /// NOTE: approving loopback or the host's own addresses exposes services on the
    /// proxy's host (the broker included) to the workspace, because the proxy connects
    /// from the host. Session subnets stay rejected whatever this list contains.
    #[serde(default)]
    pub allowed_private_ranges: Vec<IpNet>,
}

impl SitePolicy {
    /// Builds a policy allowing `hosts` on port 443 with no private ranges.
    pub fn new<I, S>(hosts: I) -> Result<Self, PolicyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let hosts = hosts
            .into_iter()
            .map(|host| HostPattern::parse(host.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let policy = Self {
            hosts,
            ports: vec![DEFAULT_PORT],
            allowed_private_ranges: Vec::new(),
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Replaces the allowed ports.
    pub fn with_ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.ports = ports.into_iter().collect();
        self
    }

    /// Replaces the admin-approved private ranges.
    pub fn with_private_ranges(mut self, ranges: impl IntoIterator<Item = IpNet>) -> Self {
        self.allowed_private_ranges = ranges.into_iter().collect();
        self
    }

    /// Checks the policy. The registry calls this on every registration.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.hosts.is_empty() {
            return Err(PolicyError::NoHosts);
        }
        if self.ports.contains(&0) {
            return Err(PolicyError::ZeroPort);
        }
        for range in &self.allowed_private_ranges {
            if range.prefix_len() == 0 {
                return Err(PolicyError::RangeTooWide { range: *range });
            }
        }
        Ok(())
    }

    /// Returns whether the site allows `host`.
    pub fn allows_host(&self, host: &TargetHost) -> bool {
        self.hosts.iter().any(|pattern| pattern.matches(host))
    }

    /// Returns whether the site allows `port`.
    pub fn allows_port(&self, port: u16) -> bool {
        if self.ports.is_empty() {
            port == DEFAULT_PORT
        } else {
            self.ports.contains(&port)
        }
    }

    /// Returns whether an admin approved the non-public address `ip` for this site.
    pub fn allows_private(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allowed_private_ranges
            .iter()
            .any(|range| range.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(host: &str) -> TargetHost {
        TargetHost::Name(host.to_owned())
    }

    #[test]
    fn exact_pattern_matches_only_that_name() {
        let pattern = HostPattern::parse("Bank.Example.").unwrap();
        assert!(pattern.matches(&name("bank.example")));
        assert!(!pattern.matches(&name("evilbank.example")));
        assert!(!pattern.matches(&name("www.bank.example")));
        assert!(!pattern.matches(&name("bank.example.evil")));
    }

    #[test]
    fn suffix_pattern_matches_at_dot_boundary() {
        let pattern = HostPattern::parse("*.bank.example").unwrap();
        assert!(pattern.matches(&name("www.bank.example")));
        assert!(pattern.matches(&name("a.b.bank.example")));
        assert!(!pattern.matches(&name("bank.example")));
        assert!(!pattern.matches(&name("evilbank.example")));
        assert!(!pattern.matches(&name(".bank.example")));
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for pattern in [
            "",
            "*",
            "*.example",
            "a*.bank.example",
            "bank..example",
            "ba nk.example",
            "-a.example",
        ] {
            assert!(HostPattern::parse(pattern).is_err(), "{pattern:?} parsed");
        }
    }

    #[test]
    fn ip_pattern_matches_only_ip_target() {
        let pattern = HostPattern::parse("[2001:db8::1]").unwrap();
        assert!(pattern.matches(&TargetHost::Ip("2001:db8::1".parse().unwrap())));
        assert!(!pattern.matches(&name("2001-db8--1.example")));
    }

    #[test]
    fn parse_target_normalizes_and_rejects() {
        assert_eq!(
            parse_target("Bank.Example.:443"),
            Some((name("bank.example"), 443))
        );
        assert_eq!(
            parse_target("[::ffff:127.0.0.1]:443"),
            Some((TargetHost::Ip("127.0.0.1".parse().unwrap()), 443))
        );
        for target in [
            "bank.example",
            "bank.example:",
            "bank.example:70000",
            "::1:443",
            "127.1:443",
            "bank.example:+443",
            "ba_nk.example:443",
        ] {
            assert_eq!(parse_target(target), None, "{target:?} parsed");
        }
    }

    #[test]
    fn policy_defaults_to_port_443() {
        let policy = SitePolicy::new(["bank.example"]).unwrap();
        assert!(policy.allows_port(443));
        assert!(!policy.allows_port(80));
        assert!(policy.clone().with_ports([]).allows_port(443));
    }

    #[test]
    fn policy_rejects_catch_all_private_range() {
        let policy = SitePolicy::new(["bank.example"])
            .unwrap()
            .with_private_ranges(["0.0.0.0/0".parse().unwrap()]);
        assert!(matches!(
            policy.validate(),
            Err(PolicyError::RangeTooWide { .. })
        ));
    }
}
