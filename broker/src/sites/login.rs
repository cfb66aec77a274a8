//! Per-site auto-login settings and session policies: the login recipe, the origins a
//! credential may be typed into, where the credential comes from, and what a session
//! may do with downloads, the clipboard and extra CA certificates.
//!
//! The recipe is stored as written by the admin and turned into the agent's
//! [`protocol::LoginStep`]s at launch ([`LoginRecipe::agent_steps`]).

use serde::{Deserialize, Serialize};

use super::SiteProblem;

/// Timeout of a step that names none, in seconds.
pub const DEFAULT_STEP_TIMEOUT_SECS: u32 = 15;
/// Maximum timeout of one step in seconds: the agent's own limit.
pub const MAX_STEP_TIMEOUT_SECS: u32 = protocol::limits::MAX_STEP_TIMEOUT_MS / 1000;
/// Default number of failed auto-logins in a row after which a credential is locked.
pub const DEFAULT_MAX_FAILED_LOGINS: u32 = 3;
/// Maximum of `max_failed_logins`; banks usually lock an account after 3 to 5 failures.
pub const MAX_FAILED_LOGINS: u32 = 10;
/// Maximum number of extra CA certificates per site.
pub const MAX_EXTRA_CA_CERTS: usize = launcher::ca_certs::MAX_CA_CERTS;

/// One step of a login recipe, as an admin writes it in the site file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum RecipeStep {
    /// Wait until `selector` matches an element.
    WaitFor {
        selector: String,
        timeout_secs: Option<u32>,
    },
    /// Type the username into the element matching `selector`.
    TypeUsername {
        selector: String,
        timeout_secs: Option<u32>,
    },
    /// Type the password into the element matching `selector`.
    TypePassword {
        selector: String,
        timeout_secs: Option<u32>,
    },
    /// Type the current one-time code, computed from the stored TOTP seed.
    TypeTotp {
        selector: String,
        timeout_secs: Option<u32>,
    },
    /// Click the element matching `selector`.
    Click {
        selector: String,
        timeout_secs: Option<u32>,
    },
    /// Stop auto-login and let the person finish, for example a code sent by SMS.
    /// Only allowed as the last step.
    HandOver { message: Option<String> },
    /// Wait until the page URL starts with `url_prefix` or `selector` matches.
    WaitSuccess {
        url_prefix: Option<String>,
        selector: Option<String>,
        timeout_secs: Option<u32>,
    },
}

impl RecipeStep {
    fn name(&self) -> &'static str {
        match self {
            RecipeStep::WaitFor { .. } => "wait_for",
            RecipeStep::TypeUsername { .. } => "type_username",
            RecipeStep::TypePassword { .. } => "type_password",
            RecipeStep::TypeTotp { .. } => "type_totp",
            RecipeStep::Click { .. } => "click",
            RecipeStep::HandOver { .. } => "hand_over",
            RecipeStep::WaitSuccess { .. } => "wait_success",
        }
    }

    fn timeout_secs(&self) -> Option<u32> {
        match self {
            RecipeStep::WaitFor { timeout_secs, .. }
            | RecipeStep::TypeUsername { timeout_secs, .. }
            | RecipeStep::TypePassword { timeout_secs, .. }
            | RecipeStep::TypeTotp { timeout_secs, .. }
            | RecipeStep::Click { timeout_secs, .. }
            | RecipeStep::WaitSuccess { timeout_secs, .. } => *timeout_secs,
            RecipeStep::HandOver { .. } => None,
        }
    }

    fn selector(&self) -> Option<&str> {
        match self {
            RecipeStep::WaitFor { selector, .. }
            | RecipeStep::TypeUsername { selector, .. }
            | RecipeStep::TypePassword { selector, .. }
            | RecipeStep::TypeTotp { selector, .. }
            | RecipeStep::Click { selector, .. } => Some(selector),
            RecipeStep::WaitSuccess { selector, .. } => selector.as_deref(),
            RecipeStep::HandOver { .. } => None,
        }
    }

    fn credential_field(&self) -> Option<protocol::CredentialField> {
        match self {
            RecipeStep::TypeUsername { .. } => Some(protocol::CredentialField::Username),
            RecipeStep::TypePassword { .. } => Some(protocol::CredentialField::Password),
            RecipeStep::TypeTotp { .. } => Some(protocol::CredentialField::Totp),
            _ => None,
        }
    }
}

/// An ordered list of steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRecipe {
    pub steps: Vec<RecipeStep>,
}

impl LoginRecipe {
    /// Returns whether any step types the one-time code.
    pub fn needs_totp(&self) -> bool {
        self.steps
            .iter()
            .any(|step| matches!(step, RecipeStep::TypeTotp { .. }))
    }

    /// Returns the message for the person when the recipe ends with `hand_over`.
    pub fn hand_over_message(&self) -> Option<&str> {
        match self.steps.last() {
            Some(RecipeStep::HandOver { message }) => {
                Some(message.as_deref().unwrap_or("Complete the login yourself."))
            }
            _ => None,
        }
    }

    /// Converts the steps the agent runs. A final `hand_over` is not sent, because the
    /// person continues by hand once the agent finished the steps before it.
    pub fn agent_steps(&self) -> Vec<protocol::LoginStep> {
        self.steps
            .iter()
            .filter_map(|step| {
                let timeout_ms = step.timeout_secs().unwrap_or(DEFAULT_STEP_TIMEOUT_SECS) * 1000;
                let selector = step.selector().map(str::to_owned);
                Some(match step {
                    RecipeStep::WaitFor { selector, .. } => protocol::LoginStep::WaitForSelector {
                        selector: selector.clone(),
                        timeout_ms,
                    },
                    RecipeStep::TypeUsername { selector, .. }
                    | RecipeStep::TypePassword { selector, .. }
                    | RecipeStep::TypeTotp { selector, .. } => protocol::LoginStep::Fill {
                        selector: selector.clone(),
                        field: step.credential_field().expect("a type step names a field"),
                        timeout_ms,
                    },
                    RecipeStep::Click { selector, .. } => protocol::LoginStep::Click {
                        selector: selector.clone(),
                        timeout_ms,
                    },
                    RecipeStep::WaitSuccess { url_prefix, .. } => {
                        protocol::LoginStep::WaitForSuccess {
                            url_prefix: url_prefix.clone(),
                            selector,
                            timeout_ms,
                        }
                    }
                    RecipeStep::HandOver { .. } => return None,
                })
            })
            .collect()
    }

    /// Checks the steps. `path` is the recipe's field path, such as `site[0].login.steps`.
    fn validate(&self, path: &str, typing_allowed: bool, problems: &mut Vec<SiteProblem>) {
        let mut report = |field: String, message: String| {
            problems.push(SiteProblem { field, message });
        };
        if self.steps.is_empty() {
            report(
                path.to_owned(),
                "is empty; list at least one step".to_owned(),
            );
        }
        if self.steps.len() > protocol::limits::MAX_LOGIN_STEPS {
            report(
                path.to_owned(),
                format!(
                    "has {} steps; the maximum is {}",
                    self.steps.len(),
                    protocol::limits::MAX_LOGIN_STEPS
                ),
            );
        }
        let last = self.steps.len().saturating_sub(1);
        for (index, step) in self.steps.iter().enumerate() {
            let field = format!("{path}[{index}]");
            if let Some(timeout) = step.timeout_secs()
                && !(1..=MAX_STEP_TIMEOUT_SECS).contains(&timeout)
            {
                report(
                    format!("{field}.timeout_secs"),
                    format!("{timeout} is out of range; use 1 to {MAX_STEP_TIMEOUT_SECS} seconds"),
                );
            }
            if let Some(selector) = step.selector()
                && (selector.trim().is_empty()
                    || selector.len() > protocol::limits::MAX_STRING_LEN
                    || selector.chars().any(char::is_control))
            {
                report(
                    format!("{field}.selector"),
                    format!(
                        "must be a CSS selector of 1 to {} bytes without control characters",
                        protocol::limits::MAX_STRING_LEN
                    ),
                );
            }
            match step {
                RecipeStep::WaitSuccess {
                    url_prefix: None,
                    selector: None,
                    ..
                } => report(
                    field.clone(),
                    "wait_success needs url_prefix, selector or both".to_owned(),
                ),
                RecipeStep::WaitSuccess {
                    url_prefix: Some(prefix),
                    ..
                } if !prefix.starts_with("https://") || prefix.len() > super::MAX_URL_LEN => {
                    report(
                        format!("{field}.url_prefix"),
                        format!(
                            "{prefix:?} must start with https:// and be at most {} bytes",
                            super::MAX_URL_LEN
                        ),
                    )
                }
                RecipeStep::HandOver { .. } if index != last => report(
                    field.clone(),
                    "hand_over must be the last step; the person finishes the login from there"
                        .to_owned(),
                ),
                RecipeStep::HandOver {
                    message: Some(message),
                } if message.len() > 500 || message.chars().any(char::is_control) => report(
                    format!("{field}.message"),
                    "must be at most 500 bytes without control characters".to_owned(),
                ),
                _ => {}
            }
            if step.credential_field().is_some() && !typing_allowed {
                report(
                    field.clone(),
                    format!("{} is not allowed in a logout recipe", step.name()),
                );
            }
        }
    }
}

/// Whose credential a session of the site uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSourceKind {
    /// One credential for the site, shared by everyone granted it.
    #[default]
    Shared,
    /// Each person has their own credential for the site.
    PerPerson,
}

/// Auto-login settings of a site. A site without a recipe has no auto-login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginSettings {
    pub recipe: Option<LoginRecipe>,
    /// Steps to run when the person ends the session, before the container is removed.
    /// NOTE: stored and validated, but the broker does not run them yet.
    pub logout_recipe: Option<LoginRecipe>,
    /// Exact origins (`https://login.bank.example`) whose frames a credential may be
    /// typed into.
    pub credential_origins: Vec<String>,
    pub credential_source: CredentialSourceKind,
    /// Whether a shared credential may be used by only one live session at a time.
    pub exclusive_use: bool,
    /// Failed auto-logins in a row after which the credential is locked.
    pub max_failed_logins: u32,
}

impl Default for LoginSettings {
    fn default() -> Self {
        LoginSettings {
            recipe: None,
            logout_recipe: None,
            credential_origins: Vec::new(),
            credential_source: CredentialSourceKind::Shared,
            exclusive_use: true,
            max_failed_logins: DEFAULT_MAX_FAILED_LOGINS,
        }
    }
}

/// Download policy of a site's sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadPolicy {
    #[default]
    Blocked,
    /// Files are delivered to the person through the portal, and each one is audited.
    Deliver,
}

/// Direction in which text may cross between the person's clipboard and the workspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipboardPolicy {
    #[default]
    Blocked,
    PasteIn,
    CopyOut,
    Both,
}

impl ClipboardPolicy {
    /// Returns whether the person may paste text into the workspace.
    pub fn allows_paste_in(self) -> bool {
        matches!(self, ClipboardPolicy::PasteIn | ClipboardPolicy::Both)
    }

    /// Returns whether text copied in the workspace may reach the person's clipboard.
    pub fn allows_copy_out(self) -> bool {
        matches!(self, ClipboardPolicy::CopyOut | ClipboardPolicy::Both)
    }
}

/// Session policies of a site.
///
/// `downloads` decides whether the workspace gets a download tmpfs and Chromium may
/// save files; the broker reads it again for every file the agent sends
/// (`crate::downloads`). The stream hub enforces the clipboard policy on the live
/// view's paste and copy messages. Extra CA certificates reach the session's Chromium
/// as its `CACertificates` policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPolicy {
    pub downloads: DownloadPolicy,
    pub clipboard: ClipboardPolicy,
    /// PEM certificates the workspace trusts in addition to the system roots, for a
    /// bank behind a private CA.
    pub extra_ca_certs: Vec<String>,
}

impl LoginSettings {
    /// Checks the settings against the site's allowed hosts.
    pub(super) fn validate(
        &self,
        path: &str,
        allowed: &dyn Fn(&str, u16) -> bool,
        problems: &mut Vec<SiteProblem>,
    ) {
        if let Some(recipe) = &self.recipe {
            recipe.validate(&format!("{path}.steps"), true, problems);
        }
        if let Some(recipe) = &self.logout_recipe {
            recipe.validate(&format!("{path}.logout_steps"), false, problems);
        }

        let types_credentials = self.recipe.as_ref().is_some_and(|recipe| {
            recipe
                .steps
                .iter()
                .any(|step| step.credential_field().is_some())
        });
        if types_credentials && self.credential_origins.is_empty() {
            problems.push(SiteProblem {
                field: format!("{path}.credential_origins"),
                message: "is empty, but the recipe types credentials; list the exact origins of the login form, such as \"https://login.bank.example\"".to_owned(),
            });
        }
        if self.credential_origins.len() > protocol::limits::MAX_ORIGINS {
            problems.push(SiteProblem {
                field: format!("{path}.credential_origins"),
                message: format!(
                    "has {} entries; the maximum is {}",
                    self.credential_origins.len(),
                    protocol::limits::MAX_ORIGINS
                ),
            });
        }
        for (index, origin) in self.credential_origins.iter().enumerate() {
            if let Err(message) = check_origin(origin, allowed) {
                problems.push(SiteProblem {
                    field: format!("{path}.credential_origins[{index}]"),
                    message,
                });
            }
        }

        if !(1..=MAX_FAILED_LOGINS).contains(&self.max_failed_logins) {
            problems.push(SiteProblem {
                field: format!("{path}.max_failed_logins"),
                message: format!(
                    "{} is out of range; use 1 to {MAX_FAILED_LOGINS}, below the bank's own lockout",
                    self.max_failed_logins
                ),
            });
        }
    }
}

impl SessionPolicy {
    pub(super) fn validate(&self, path: &str, problems: &mut Vec<SiteProblem>) {
        if self.extra_ca_certs.len() > MAX_EXTRA_CA_CERTS {
            problems.push(SiteProblem {
                field: format!("{path}.extra_ca_certs"),
                message: format!(
                    "has {} entries; the maximum is {MAX_EXTRA_CA_CERTS}",
                    self.extra_ca_certs.len()
                ),
            });
        }
        // The launcher applies the same check before it starts a workspace.
        for (index, pem) in self.extra_ca_certs.iter().enumerate() {
            if let Err(message) = launcher::ca_certs::policy_entry(pem) {
                problems.push(SiteProblem {
                    field: format!("{path}.extra_ca_certs[{index}]"),
                    message,
                });
            }
        }
    }
}

/// Checks that `text` is an exact `https` origin whose host and port the site allows.
fn check_origin(text: &str, allowed: &dyn Fn(&str, u16) -> bool) -> Result<(), String> {
    let url = url::Url::parse(text)
        .map_err(|error| format!("{text:?} is not a valid origin ({error})"))?;
    let origin = url.origin().ascii_serialization();
    if url.scheme() != "https" || origin != text {
        return Err(format!(
            "{text:?} is not an exact https origin; write scheme, host and port only, such as \"https://login.bank.example\""
        ));
    }
    let Some(url::Host::Domain(host)) = url.host() else {
        return Err(format!(
            "{text:?} names an IP address; use the bank's host name"
        ));
    };
    let port = url.port_or_known_default().unwrap_or(443);
    if !allowed(host, port) {
        return Err(format!(
            "{text:?} is not reachable with the site's allowed_hosts and allowed_ports; add it there or correct the origin"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow_bank(host: &str, port: u16) -> bool {
        host.ends_with("bank.example") && port == 443
    }

    fn fields(settings: &LoginSettings) -> Vec<String> {
        let mut problems = Vec::new();
        settings.validate("login", &allow_bank, &mut problems);
        problems.into_iter().map(|problem| problem.field).collect()
    }

    fn recipe() -> LoginRecipe {
        LoginRecipe {
            steps: vec![
                RecipeStep::WaitFor {
                    selector: "#user".into(),
                    timeout_secs: Some(30),
                },
                RecipeStep::TypeUsername {
                    selector: "#user".into(),
                    timeout_secs: None,
                },
                RecipeStep::TypePassword {
                    selector: "#pass".into(),
                    timeout_secs: None,
                },
                RecipeStep::Click {
                    selector: "#go".into(),
                    timeout_secs: None,
                },
                RecipeStep::WaitSuccess {
                    url_prefix: Some("https://www.bank.example/home".into()),
                    selector: None,
                    timeout_secs: Some(20),
                },
            ],
        }
    }

    #[test]
    fn valid_recipe_passes() {
        let settings = LoginSettings {
            recipe: Some(recipe()),
            credential_origins: vec!["https://www.bank.example".into()],
            ..LoginSettings::default()
        };

        assert_eq!(fields(&settings), Vec::<String>::new());
    }

    #[test]
    fn recipe_converts_to_agent_steps() {
        let steps = recipe().agent_steps();

        assert_eq!(steps.len(), 5);
        assert_eq!(
            steps[0],
            protocol::LoginStep::WaitForSelector {
                selector: "#user".into(),
                timeout_ms: 30_000
            }
        );
        assert_eq!(
            steps[2],
            protocol::LoginStep::Fill {
                selector: "#pass".into(),
                field: protocol::CredentialField::Password,
                timeout_ms: DEFAULT_STEP_TIMEOUT_SECS * 1000
            }
        );
    }

    #[test]
    fn hand_over_is_only_allowed_last() {
        let mut steps = recipe().steps;
        steps.insert(1, RecipeStep::HandOver { message: None });
        let settings = LoginSettings {
            recipe: Some(LoginRecipe { steps }),
            credential_origins: vec!["https://www.bank.example".into()],
            ..LoginSettings::default()
        };

        assert_eq!(fields(&settings), ["login.steps[1]"]);
    }

    #[test]
    fn every_bad_field_is_named() {
        let settings = LoginSettings {
            recipe: Some(LoginRecipe {
                steps: vec![
                    RecipeStep::TypePassword {
                        selector: " ".into(),
                        timeout_secs: Some(0),
                    },
                    RecipeStep::WaitSuccess {
                        url_prefix: None,
                        selector: None,
                        timeout_secs: None,
                    },
                ],
            }),
            logout_recipe: Some(LoginRecipe {
                steps: vec![RecipeStep::TypeUsername {
                    selector: "#u".into(),
                    timeout_secs: None,
                }],
            }),
            credential_origins: vec![
                "https://www.bank.example/login".into(),
                "http://www.bank.example".into(),
                "https://evil.example".into(),
            ],
            max_failed_logins: 0,
            ..LoginSettings::default()
        };

        assert_eq!(
            fields(&settings),
            [
                "login.steps[0].timeout_secs",
                "login.steps[0].selector",
                "login.steps[1]",
                "login.logout_steps[0]",
                "login.credential_origins[0]",
                "login.credential_origins[1]",
                "login.credential_origins[2]",
                "login.max_failed_logins",
            ]
        );
    }

    #[test]
    fn typing_recipe_needs_origins() {
        let settings = LoginSettings {
            recipe: Some(recipe()),
            ..LoginSettings::default()
        };

        assert_eq!(fields(&settings), ["login.credential_origins"]);
    }

    #[test]
    fn extra_ca_cert_must_be_one_pem_certificate() {
        let policy = SessionPolicy {
            extra_ca_certs: vec!["not a certificate".into()],
            ..SessionPolicy::default()
        };
        let mut problems = Vec::new();

        policy.validate("policy", &mut problems);

        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "policy.extra_ca_certs[0]");
    }
}

#[cfg(test)]
mod clipboard_policy_tests {
    use super::ClipboardPolicy;

    #[test]
    fn clipboard_policy_directions() {
        let cases = [
            (ClipboardPolicy::Blocked, false, false),
            (ClipboardPolicy::PasteIn, true, false),
            (ClipboardPolicy::CopyOut, false, true),
            (ClipboardPolicy::Both, true, true),
        ];
        for (policy, paste_in, copy_out) in cases {
            assert_eq!(policy.allows_paste_in(), paste_in, "{policy:?} paste in");
            assert_eq!(policy.allows_copy_out(), copy_out, "{policy:?} copy out");
        }
    }
}
