//! The `[egress]` section: a static host map for the egress proxy.
//!
//! ```toml
//! [egress.hosts]
//! "demo-bank.test" = ["172.22.0.2"]
//! ```
//!
//! A name in the map resolves only to its listed addresses; every other name goes
//! through the host's resolver. The map decides only where a name points: the site's
//! allowlist still decides whether a session may reach it, and a private address still
//! needs the site's `allowed_private_ranges`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use super::ConfigProblem;
use super::raw::{Lenient, take};

/// Raw mirror of `[egress]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawEgress {
    /// `egress.hosts`: host name to a list of IP addresses, like `/etc/hosts`. Default
    /// empty.
    pub hosts: Option<Lenient<BTreeMap<String, Vec<String>>>>,
}

/// Validated `[egress]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressConfig {
    /// Lowercase host names, without a trailing dot, and their addresses.
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
}

pub fn validate_egress(raw: &RawEgress, problems: &mut Vec<ConfigProblem>) -> Option<EgressConfig> {
    let entries = take(
        &raw.hosts,
        "egress.hosts",
        "a table of host names to arrays of IP addresses",
        problems,
    )
    .unwrap_or_default();

    let mut hosts = BTreeMap::new();
    let mut valid = true;
    for (name, addresses) in entries {
        let key = format!("egress.hosts.\"{name}\"");
        let normalized = name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase();
        if !is_host_name(&normalized) {
            problems.push(ConfigProblem {
                key,
                message: format!(
                    "{name:?} is not a host name; use letters, digits, '-' and '.', such as \"demo-bank.test\""
                ),
            });
            valid = false;
            continue;
        }
        if addresses.is_empty() {
            problems.push(ConfigProblem {
                key,
                message: "the address list is empty; give at least one IP address".to_owned(),
            });
            valid = false;
            continue;
        }
        let mut parsed = Vec::new();
        for address in &addresses {
            match address.parse::<IpAddr>() {
                Ok(ip) => parsed.push(ip),
                Err(_) => {
                    problems.push(ConfigProblem {
                        key: key.clone(),
                        message: format!(
                            "{address:?} is not an IP address, such as \"172.22.0.2\""
                        ),
                    });
                    valid = false;
                }
            }
        }
        hosts.insert(normalized, parsed);
    }
    valid.then_some(EgressConfig { hosts })
}

/// Returns whether `name` is a DNS name of letters, digits and inner `-`, with a
/// last label that is not all digits (that would be an IPv4 literal).
fn is_host_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    let valid_labels = labels.iter().all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    let numeric_last = labels
        .last()
        .is_some_and(|label| label.chars().all(|c| c.is_ascii_digit()));
    name.len() <= 253 && valid_labels && !numeric_last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> (Option<EgressConfig>, Vec<ConfigProblem>) {
        let raw: RawEgress = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        (validate_egress(&raw, &mut problems), problems)
    }

    #[test]
    fn host_map_is_parsed_and_lowercased() {
        let (config, problems) =
            validate("[hosts]\n\"Demo-Bank.test.\" = [\"172.22.0.2\", \"::1\"]\n");
        assert!(problems.is_empty(), "{problems:?}");
        let hosts = config.unwrap().hosts;
        assert_eq!(
            hosts["demo-bank.test"],
            vec![
                "172.22.0.2".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn bad_address_and_name_are_named() {
        let (config, problems) = validate(
            "[hosts]\n\"bank.test\" = [\"172.22.0.300\"]\n\"bad name\" = [\"10.0.0.1\"]\n\"empty.test\" = []\n",
        );
        assert!(config.is_none());
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text.iter().any(|t| t.contains("172.22.0.300")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("bad name")), "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.contains("empty.test") && t.contains("empty")),
            "{text:?}"
        );
    }
}
