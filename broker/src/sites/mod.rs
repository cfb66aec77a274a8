//! The site catalogue: which banks a session can open, what each may reach, and who
//! may open it.
//!
//! A site is loaded from a TOML file ([`import_file`]) and stored in the `sites` table;
//! [`SiteDefinition::egress_policy`] turns it into the egress proxy's policy and
//! [`SiteDefinition::limits`] into the launcher's resource limits. A person may launch a
//! site only with a grant in `site_grants`, admins included: an admin grants the site to
//! themself first, which the audit trail records.
//!
//! Start URLs must be `https`, because the egress proxy tunnels only `CONNECT` and
//! Chromium could not load a plain `http` page through it. An internal test bank
//! therefore needs a certificate, even when its address lies in an allowed private range.
//!
//! A site's auto-login recipe, credential origins and session policies are in
//! [`LoginSettings`] and [`SessionPolicy`]. Credential values never are: they live in
//! the configured secret store, keyed on the site name.

pub mod cli;
pub mod confirm;
pub mod dual_control;
mod import;
mod login;
pub mod logout;
mod store;
mod structure;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

pub use import::{
    ImportError, ImportOptions, ImportReport, RawSite, RawSiteLimits, import_file,
    import_file_audited, import_file_with, parse_sites,
};
pub use login::{
    ClipboardPolicy, CredentialSourceKind, DownloadPolicy, LoginRecipe, LoginSettings,
    RecipeStep, SessionPolicy,
};
pub use store::{get, grant, grants_for, is_granted, list, revoke, upsert};
pub use structure::FileProblem;

/// Maximum length of a site name; it ends up in container labels.
pub const MAX_NAME_LEN: usize = 64;
/// Maximum number of allowed host patterns per site (the launcher's own limit).
pub const MAX_ALLOWED_HOSTS: usize = 64;
/// Maximum start URL length in bytes (the launcher's own limit).
pub const MAX_URL_LEN: usize = 2048;
/// Maximum recording retention in days: ten years.
pub const MAX_RETENTION_DAYS: u32 = 3653;

/// A validated site.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SiteDefinition {
    /// Stable identifier: lowercase letters, digits and hyphens.
    pub name: String,
    pub display_name: String,
    /// The first page Chromium opens; always `https`.
    pub start_url: String,
    /// Host names the workspace may reach, `bank.example` or `*.bank.example`.
    pub allowed_hosts: Vec<String>,
    /// Non-public ranges an admin approved for this site (internal bank systems).
    pub allowed_private_ranges: Vec<IpNet>,
    /// Destination ports the workspace may reach through the proxy.
    pub allowed_ports: Vec<u16>,
    pub limits: launcher::SiteLimits,
    /// Live sessions of this site at once, all people together; `None` for no site limit.
    pub max_sessions: Option<u32>,
    /// Days a recording of this site is kept before its key is destroyed.
    pub recording_retention_days: u32,
    /// A disabled site stays in the catalogue but cannot be launched.
    pub enabled: bool,
    pub login: LoginSettings,
    pub policy: SessionPolicy,
}

/// A stored site.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub definition: SiteDefinition,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl std::ops::Deref for Site {
    type Target = SiteDefinition;

    fn deref(&self) -> &SiteDefinition {
        &self.definition
    }
}

/// One invalid field of a site, named by its path in the import file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteProblem {
    /// Such as `site[2].start_url` or `site[0].limits.memory_mib`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for SiteProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl SiteDefinition {
    /// Builds the egress proxy's policy for this site's sessions.
    pub fn egress_policy(&self) -> Result<egress::SitePolicy, egress::PolicyError> {
        Ok(egress::SitePolicy::new(&self.allowed_hosts)?
            .with_ports(self.allowed_ports.iter().copied())
            .with_private_ranges(self.allowed_private_ranges.iter().copied()))
    }

    /// Returns the launcher's resource limits for this site's workspaces.
    pub fn limits(&self) -> launcher::SiteLimits {
        self.limits
    }

    /// Checks every field, returning all problems, each prefixed with `path`.
    pub fn validate(&self, path: &str) -> Result<(), Vec<SiteProblem>> {
        let mut problems = Vec::new();
        let mut report = |field: &str, message: String| {
            problems.push(SiteProblem {
                field: format!("{path}.{field}"),
                message,
            });
        };

        if !is_valid_name(&self.name) {
            report(
                "name",
                format!(
                    "{:?} is not valid; use 1 to {MAX_NAME_LEN} lowercase letters, digits and hyphens, starting with a letter or digit",
                    self.name
                ),
            );
        }
        if self.display_name.trim().is_empty()
            || self.display_name.len() > 128
            || self.display_name.chars().any(char::is_control)
        {
            report(
                "display_name",
                "must be 1 to 128 bytes of text without control characters".to_owned(),
            );
        }

        let hosts_valid = self.validate_hosts(&mut report);
        self.validate_ports_and_ranges(&mut report);
        if hosts_valid && let Err(message) = self.check_start_url() {
            report("start_url", message);
        }

        if let Err(message) = self.limits.check_sane() {
            report("limits", message);
        }
        if self.max_sessions == Some(0) {
            report("max_sessions", "0 would make the site unusable; use at least 1, or remove the key for no site limit".to_owned());
        }
        if !(1..=MAX_RETENTION_DAYS).contains(&self.recording_retention_days) {
            report(
                "recording_retention_days",
                format!(
                    "{} is out of range; use 1 to {MAX_RETENTION_DAYS} days",
                    self.recording_retention_days
                ),
            );
        }

        let reachable = |host: &str, port: u16| hosts_valid && self.allows_host_port(host, port);
        self.login
            .validate(&format!("{path}.login"), &reachable, &mut problems);
        self.policy
            .validate(&format!("{path}.policy"), &mut problems);

        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Returns whether the site's own allowlist lets a session reach `host:port`.
    fn allows_host_port(&self, host: &str, port: u16) -> bool {
        let target = egress::TargetHost::Name(host.to_owned());
        self.allowed_ports.contains(&port)
            && self
                .allowed_hosts
                .iter()
                .filter_map(|pattern| egress::HostPattern::parse(pattern).ok())
                .any(|pattern| pattern.matches(&target))
    }

    /// Returns whether every host pattern is valid, reporting each bad one.
    fn validate_hosts(&self, report: &mut impl FnMut(&str, String)) -> bool {
        if self.allowed_hosts.is_empty() {
            report(
                "allowed_hosts",
                "is empty; list at least the start URL's host, such as \"www.bank.example\""
                    .to_owned(),
            );
            return false;
        }
        if self.allowed_hosts.len() > MAX_ALLOWED_HOSTS {
            report(
                "allowed_hosts",
                format!(
                    "has {} entries; the maximum is {MAX_ALLOWED_HOSTS}",
                    self.allowed_hosts.len()
                ),
            );
            return false;
        }
        let mut valid = true;
        for (index, host) in self.allowed_hosts.iter().enumerate() {
            let pattern = egress::HostPattern::parse(host);
            let dns_pattern = matches!(
                pattern,
                Ok(egress::HostPattern::Exact(_) | egress::HostPattern::Subdomains(_))
            );
            if !dns_pattern || !launcher::spec::is_valid_host_pattern(host) {
                report(
                    &format!("allowed_hosts[{index}]"),
                    format!(
                        "{host:?} is not a lowercase host name such as \"bank.example\" or a pattern such as \"*.bank.example\"; IP addresses are not accepted"
                    ),
                );
                valid = false;
            }
        }
        valid
    }

    fn validate_ports_and_ranges(&self, report: &mut impl FnMut(&str, String)) {
        if self.allowed_ports.is_empty() {
            report("allowed_ports", "is empty; list at least 443".to_owned());
        }
        if self.allowed_ports.contains(&0) {
            report(
                "allowed_ports",
                "contains 0, which no connection can use".to_owned(),
            );
        }
        for (index, range) in self.allowed_private_ranges.iter().enumerate() {
            if range.prefix_len() == 0 {
                report(
                    &format!("allowed_private_ranges[{index}]"),
                    format!("{range} covers every address; list the bank's internal range only"),
                );
            }
        }
    }

    /// Checks that the start URL is https, has no credentials, and that its host and
    /// port are allowed by the site itself.
    fn check_start_url(&self) -> Result<(), String> {
        let text = &self.start_url;
        if text.len() > MAX_URL_LEN || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "must be at most {MAX_URL_LEN} bytes without spaces or control characters"
            ));
        }
        let url = url::Url::parse(text)
            .map_err(|error| format!("{text:?} is not a valid URL ({error})"))?;
        if url.scheme() != "https" {
            return Err(format!(
                "{text:?} uses {}; only https is accepted because the egress proxy tunnels only CONNECT",
                url.scheme()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain a user name or password".to_owned());
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_owned(),
            Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => {
                return Err(format!(
                    "{text:?} names an IP address; use the bank's host name"
                ));
            }
            None => return Err(format!("{text:?} has no host")),
        };
        let target = egress::TargetHost::Name(host.clone());
        let allowed = self
            .allowed_hosts
            .iter()
            .filter_map(|pattern| egress::HostPattern::parse(pattern).ok())
            .any(|pattern| pattern.matches(&target));
        if !allowed {
            return Err(format!(
                "host {host:?} is not in allowed_hosts; add it there or correct the URL"
            ));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        if !self.allowed_ports.contains(&port) {
            return Err(format!(
                "port {port} is not in allowed_ports; add it there or correct the URL"
            ));
        }
        Ok(())
    }

    /// Returns whether an admin approved a non-public range containing `address`.
    pub fn allows_private(&self, address: IpAddr) -> bool {
        self.allowed_private_ranges
            .iter()
            .any(|range| range.contains(&address))
    }
}

/// Formats one line of `strongroom site list`: name, state, start URL, auto-login
/// steps and credential source, separated by tabs.
/// Returns the audit target of a site, `site:NAME`, which every event about a site or
/// one of its sessions uses. Older events name some sites bare (`demo-bank`), and
/// `crate::audit::search` finds both forms.
pub fn audit_target(name: &str) -> String {
    format!("site:{name}")
}

pub fn summary_line(site: &Site) -> String {
    let state = if site.enabled { "enabled" } else { "disabled" };
    let login = match &site.login.recipe {
        Some(recipe) => format!("auto-login {} steps", recipe.steps.len()),
        None => "no auto-login".to_owned(),
    };
    let source = match site.login.credential_source {
        CredentialSourceKind::Shared => "shared credential",
        CredentialSourceKind::PerPerson => "per-person credential",
    };
    format!(
        "{}\t{state}\t{}\t{login}\t{source}",
        site.name, site.start_url
    )
}

fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> SiteDefinition {
        SiteDefinition {
            name: "demo-bank".to_owned(),
            display_name: "Demo Bank".to_owned(),
            start_url: "https://www.demo-bank.example/login".to_owned(),
            allowed_hosts: vec![
                "www.demo-bank.example".to_owned(),
                "*.static.demo-bank.example".to_owned(),
            ],
            allowed_private_ranges: Vec::new(),
            allowed_ports: vec![443],
            limits: launcher::SiteLimits::default(),
            max_sessions: None,
            recording_retention_days: 365,
            enabled: true,
            login: LoginSettings::default(),
            policy: SessionPolicy::default(),
        }
    }

    fn fields(result: Result<(), Vec<SiteProblem>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|problem| problem.field)
            .collect()
    }

    #[test]
    fn valid_site_passes() {
        assert_eq!(site().validate("site[0]"), Ok(()));
    }

    #[test]
    fn http_start_url_is_rejected() {
        let definition = SiteDefinition {
            start_url: "http://www.demo-bank.example/".to_owned(),
            ..site()
        };

        assert_eq!(
            fields(definition.validate("site[0]")),
            ["site[0].start_url"]
        );
    }

    #[test]
    fn start_url_host_must_be_allowed() {
        let definition = SiteDefinition {
            start_url: "https://evil.example/".to_owned(),
            ..site()
        };

        let problems = definition.validate("site[0]").unwrap_err();
        assert_eq!(problems[0].field, "site[0].start_url");
        assert!(
            problems[0].message.contains("evil.example"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn suffix_pattern_allows_subdomain_start_url() {
        let definition = SiteDefinition {
            start_url: "https://a.static.demo-bank.example/".to_owned(),
            ..site()
        };

        assert_eq!(definition.validate("site[0]"), Ok(()));
    }

    #[test]
    fn start_url_port_must_be_allowed() {
        let definition = SiteDefinition {
            start_url: "https://www.demo-bank.example:8443/".to_owned(),
            ..site()
        };

        assert_eq!(
            fields(definition.validate("site[0]")),
            ["site[0].start_url"]
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let definition = SiteDefinition {
            name: "Demo Bank".to_owned(),
            allowed_hosts: vec![
                "www.demo-bank.example".to_owned(),
                "10.0.0.1".to_owned(),
                "Upper.example".to_owned(),
            ],
            allowed_ports: vec![0],
            allowed_private_ranges: vec!["0.0.0.0/0".parse().unwrap()],
            max_sessions: Some(0),
            recording_retention_days: 0,
            ..site()
        };

        assert_eq!(
            fields(definition.validate("site[3]")),
            [
                "site[3].name",
                "site[3].allowed_hosts[1]",
                "site[3].allowed_hosts[2]",
                "site[3].allowed_ports",
                "site[3].allowed_private_ranges[0]",
                "site[3].max_sessions",
                "site[3].recording_retention_days",
            ]
        );
    }

    #[test]
    fn egress_policy_carries_ports_and_ranges() {
        let definition = SiteDefinition {
            allowed_ports: vec![443, 8443],
            allowed_private_ranges: vec!["10.20.0.0/16".parse().unwrap()],
            ..site()
        };

        let policy = definition.egress_policy().unwrap();
        assert!(policy.allows_port(8443));
        assert!(!policy.allows_port(80));
        assert!(policy.allows_private("10.20.1.1".parse().unwrap()));
        assert!(policy.allows_host(&egress::TargetHost::Name(
            "x.static.demo-bank.example".to_owned()
        )));
    }
}
