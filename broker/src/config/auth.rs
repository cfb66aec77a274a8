//! The `[auth]` section: sign-in methods, portal session lifetimes, throttling and
//! the OpenID Connect provider.

use std::time::Duration;

use serde::Deserialize;

use super::raw::{Lenient, take};
use super::{ConfigProblem, SecretRef};

const DEFAULT_SESSION_IDLE_MINUTES: u64 = 30;
const DEFAULT_SESSION_MAX_HOURS: u64 = 12;
const DEFAULT_MAX_FAILURES_PER_ACCOUNT: u32 = 5;
const DEFAULT_MAX_FAILURES_PER_ADDRESS: u32 = 20;
const DEFAULT_LOCKOUT_MINUTES: u64 = 15;
const DEFAULT_PASSWORD_MAX_AGE_DAYS: u32 = 90;
const DEFAULT_PASSWORD_HISTORY: u32 = 5;
const DEFAULT_MAX_PORTAL_SESSIONS: u32 = 5;
const DEFAULT_MAX_AUTH_AGE_SECONDS: u64 = 600;
const DEFAULT_CLOCK_LEEWAY_SECONDS: u64 = 60;
const DEFAULT_SCOPES: &[&str] = &["openid", "profile", "email"];
const DEFAULT_MFA_METHODS: &[&str] = &["mfa"];

/// Raw `[auth]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawAuth {
    /// `auth.local`: allow local accounts (username, password and TOTP). Default true.
    pub local: Option<Lenient<bool>>,
    /// `auth.session_idle_minutes`: a portal session ends after this long without a
    /// request. Default 30.
    pub session_idle_minutes: Option<Lenient<u64>>,
    /// `auth.session_max_hours`: a portal session ends this long after sign-in, busy or
    /// not. Default 12.
    pub session_max_hours: Option<Lenient<u64>>,
    /// `auth.max_failures_per_account`: failed sign-ins for one username within
    /// `auth.lockout_minutes` before that username is locked for `auth.lockout_minutes`.
    /// Default 5.
    pub max_failures_per_account: Option<Lenient<u32>>,
    /// `auth.max_failures_per_address`: the same limit for one client address. Default 20.
    pub max_failures_per_address: Option<Lenient<u32>>,
    /// `auth.lockout_minutes`: counting window and lockout duration. Default 15.
    pub lockout_minutes: Option<Lenient<u64>>,
    /// `auth.password_max_age_days`: a local account's password expires this many days
    /// after it was set, and the next sign-in asks for a new one. Default 90.
    pub password_max_age_days: Option<Lenient<u32>>,
    /// `auth.password_history`: a new password must differ from this many most recent
    /// passwords of the account, the current one included. Default 5.
    pub password_history: Option<Lenient<u32>>,
    /// `auth.max_portal_sessions`: open portal sessions per person; a sign-in beyond
    /// this ends the oldest. Default 5.
    pub max_portal_sessions: Option<Lenient<u32>>,
    /// `[auth.oidc]`: sign-in through an OpenID Connect provider. Absent means no SSO.
    pub oidc: Option<RawOidc>,
}

/// Raw `[auth.oidc]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawOidc {
    /// `auth.oidc.issuer`: the provider's issuer URL, exactly as its discovery document
    /// states it, such as `https://authentik.bank.example/application/o/strongroom/`.
    pub issuer: Option<Lenient<String>>,
    /// `auth.oidc.client_id`: the client id registered at the provider.
    pub client_id: Option<Lenient<String>>,
    /// `auth.oidc.client_secret`: a secret reference (`env:NAME` or `file:PATH`).
    pub client_secret: Option<Lenient<String>>,
    /// `auth.oidc.redirect_url`: the callback URL registered at the provider. Default
    /// the portal origin followed by `/auth/oidc/callback`.
    pub redirect_url: Option<Lenient<String>>,
    /// `auth.oidc.scopes`: scopes requested. Default `["openid", "profile", "email"]`;
    /// `openid` is always added.
    pub scopes: Option<Lenient<Vec<String>>>,
    /// `auth.oidc.mfa_methods`: `amr` values that prove a second factor; the ID token
    /// must contain at least one. Default `["mfa"]`.
    pub mfa_methods: Option<Lenient<Vec<String>>>,
    /// `auth.oidc.max_auth_age_seconds`: the provider's `auth_time` must be at most
    /// this old when the broker receives the ID token. Default 600.
    pub max_auth_age_seconds: Option<Lenient<u64>>,
    /// `auth.oidc.clock_leeway_seconds`: tolerated clock difference with the provider
    /// when checking `exp`, `iat` and `auth_time`. Default 60.
    pub clock_leeway_seconds: Option<Lenient<u64>>,
    /// `[auth.oidc.groups]`: provider group names granting each role.
    pub groups: RawGroups,
}

/// Raw `[auth.oidc.groups]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawGroups {
    /// `auth.oidc.groups.admin`: groups whose members are admins. Default none.
    pub admin: Option<Lenient<Vec<String>>>,
    /// `auth.oidc.groups.auditor`: groups whose members are auditors. Default none.
    pub auditor: Option<Lenient<Vec<String>>>,
    /// `auth.oidc.groups.user`: groups whose members are users. Default none.
    pub user: Option<Lenient<Vec<String>>>,
}

/// Validated `[auth]` section.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub local: bool,
    pub session_idle: Duration,
    pub session_max: Duration,
    pub max_failures_per_account: u32,
    pub max_failures_per_address: u32,
    pub lockout: Duration,
    pub password_max_age_days: u32,
    pub password_history: u32,
    pub max_portal_sessions: u32,
    pub oidc: Option<OidcConfig>,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            local: true,
            session_idle: Duration::from_secs(DEFAULT_SESSION_IDLE_MINUTES * 60),
            session_max: Duration::from_secs(DEFAULT_SESSION_MAX_HOURS * 3600),
            max_failures_per_account: DEFAULT_MAX_FAILURES_PER_ACCOUNT,
            max_failures_per_address: DEFAULT_MAX_FAILURES_PER_ADDRESS,
            lockout: Duration::from_secs(DEFAULT_LOCKOUT_MINUTES * 60),
            password_max_age_days: DEFAULT_PASSWORD_MAX_AGE_DAYS,
            password_history: DEFAULT_PASSWORD_HISTORY,
            max_portal_sessions: DEFAULT_MAX_PORTAL_SESSIONS,
            oidc: None,
        }
    }
}

/// Validated `[auth.oidc]` section.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    pub redirect_url: Option<String>,
    pub scopes: Vec<String>,
    pub mfa_methods: Vec<String>,
    pub max_auth_age: Duration,
    pub clock_leeway: Duration,
    pub groups: GroupMapping,
}

/// Provider group names that grant each role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupMapping {
    pub admin: Vec<String>,
    pub auditor: Vec<String>,
    pub user: Vec<String>,
}

fn problem(problems: &mut Vec<ConfigProblem>, key: &str, message: impl Into<String>) {
    problems.push(ConfigProblem {
        key: key.to_owned(),
        message: message.into(),
    });
}

fn positive<T: PartialEq + Default + Copy>(
    value: T,
    key: &str,
    problems: &mut Vec<ConfigProblem>,
) -> T {
    if value == T::default() {
        problem(problems, key, "must be at least 1");
    }
    value
}

/// Validates `[auth]`, appending every problem found.
pub fn validate_auth(raw: &RawAuth, problems: &mut Vec<ConfigProblem>) -> Option<AuthConfig> {
    let defaults = AuthConfig::default();
    let local = take(&raw.local, "auth.local", "a boolean", problems).unwrap_or(defaults.local);

    let idle_minutes = take(
        &raw.session_idle_minutes,
        "auth.session_idle_minutes",
        "a whole number of minutes",
        problems,
    )
    .unwrap_or(DEFAULT_SESSION_IDLE_MINUTES);
    let max_hours = take(
        &raw.session_max_hours,
        "auth.session_max_hours",
        "a whole number of hours",
        problems,
    )
    .unwrap_or(DEFAULT_SESSION_MAX_HOURS);
    let account = take(
        &raw.max_failures_per_account,
        "auth.max_failures_per_account",
        "a positive integer",
        problems,
    )
    .unwrap_or(DEFAULT_MAX_FAILURES_PER_ACCOUNT);
    let address = take(
        &raw.max_failures_per_address,
        "auth.max_failures_per_address",
        "a positive integer",
        problems,
    )
    .unwrap_or(DEFAULT_MAX_FAILURES_PER_ADDRESS);
    let lockout_minutes = take(
        &raw.lockout_minutes,
        "auth.lockout_minutes",
        "a whole number of minutes",
        problems,
    )
    .unwrap_or(DEFAULT_LOCKOUT_MINUTES);

    let password_max_age_days = take(
        &raw.password_max_age_days,
        "auth.password_max_age_days",
        "a whole number of days",
        problems,
    )
    .unwrap_or(DEFAULT_PASSWORD_MAX_AGE_DAYS);
    let password_history = take(
        &raw.password_history,
        "auth.password_history",
        "a positive integer",
        problems,
    )
    .unwrap_or(DEFAULT_PASSWORD_HISTORY);
    let max_portal_sessions = take(
        &raw.max_portal_sessions,
        "auth.max_portal_sessions",
        "a positive integer",
        problems,
    )
    .unwrap_or(DEFAULT_MAX_PORTAL_SESSIONS);

    positive(
        password_max_age_days,
        "auth.password_max_age_days",
        problems,
    );
    positive(password_history, "auth.password_history", problems);
    positive(max_portal_sessions, "auth.max_portal_sessions", problems);
    positive(idle_minutes, "auth.session_idle_minutes", problems);
    positive(max_hours, "auth.session_max_hours", problems);
    positive(account, "auth.max_failures_per_account", problems);
    positive(address, "auth.max_failures_per_address", problems);
    positive(lockout_minutes, "auth.lockout_minutes", problems);
    if idle_minutes > max_hours.saturating_mul(60) {
        problem(
            problems,
            "auth.session_idle_minutes",
            format!(
                "{idle_minutes} minutes is longer than auth.session_max_hours ({max_hours} h); lower it or raise auth.session_max_hours"
            ),
        );
    }

    let oidc = match &raw.oidc {
        None => None,
        Some(raw_oidc) => Some(validate_oidc(raw_oidc, problems)?),
    };
    if !local && oidc.is_none() {
        problem(
            problems,
            "auth.local",
            "local accounts are disabled and [auth.oidc] is absent, so nobody could sign in; set auth.local = true or configure [auth.oidc]",
        );
    }

    Some(AuthConfig {
        local,
        session_idle: Duration::from_secs(idle_minutes.max(1) * 60),
        session_max: Duration::from_secs(max_hours.max(1) * 3600),
        max_failures_per_account: account.max(1),
        max_failures_per_address: address.max(1),
        lockout: Duration::from_secs(lockout_minutes.max(1) * 60),
        password_max_age_days: password_max_age_days.max(1),
        password_history: password_history.max(1),
        max_portal_sessions: max_portal_sessions.max(1),
        oidc,
    })
}

fn is_http_url(text: &str) -> bool {
    match url::Url::parse(text) {
        Ok(url) => matches!(url.scheme(), "https" | "http") && url.host().is_some(),
        Err(_) => false,
    }
}

fn validate_oidc(raw: &RawOidc, problems: &mut Vec<ConfigProblem>) -> Option<OidcConfig> {
    let issuer = take(&raw.issuer, "auth.oidc.issuer", "a URL string", problems);
    match &issuer {
        None => problem(
            problems,
            "auth.oidc.issuer",
            "missing; set the provider's issuer URL, such as \"https://authentik.bank.example/application/o/strongroom/\"",
        ),
        Some(issuer) if !is_http_url(issuer) => problem(
            problems,
            "auth.oidc.issuer",
            format!(
                "invalid URL {issuer:?}; write the issuer exactly as the provider's discovery document states it"
            ),
        ),
        Some(_) => {}
    }

    let client_id = take(&raw.client_id, "auth.oidc.client_id", "a string", problems);
    if client_id.as_deref().is_none_or(str::is_empty) {
        problem(
            problems,
            "auth.oidc.client_id",
            "missing; set the client id registered at the provider",
        );
    }

    let secret_text = take(
        &raw.client_secret,
        "auth.oidc.client_secret",
        "a secret reference string",
        problems,
    );
    let client_secret = match secret_text.as_deref().map(SecretRef::parse) {
        None => {
            problem(
                problems,
                "auth.oidc.client_secret",
                "missing; set a reference such as \"env:STRONGROOM_OIDC_SECRET\" or \"file:/run/secrets/oidc\"",
            );
            None
        }
        Some(Ok(reference)) => Some(reference),
        Some(Err(error)) => {
            problem(problems, "auth.oidc.client_secret", error.to_string());
            None
        }
    };

    let redirect_url = take(
        &raw.redirect_url,
        "auth.oidc.redirect_url",
        "a URL string",
        problems,
    );
    if let Some(url) = &redirect_url
        && !is_http_url(url)
    {
        problem(
            problems,
            "auth.oidc.redirect_url",
            format!(
                "invalid URL {url:?}; write the callback registered at the provider, such as \"https://strongroom.bank.example/auth/oidc/callback\""
            ),
        );
    }

    let mut scopes = take(
        &raw.scopes,
        "auth.oidc.scopes",
        "an array of strings",
        problems,
    )
    .unwrap_or_else(|| {
        DEFAULT_SCOPES
            .iter()
            .map(|scope| (*scope).to_owned())
            .collect()
    });
    if !scopes.iter().any(|scope| scope == "openid") {
        scopes.insert(0, "openid".to_owned());
    }

    let mfa_methods = take(
        &raw.mfa_methods,
        "auth.oidc.mfa_methods",
        "an array of strings",
        problems,
    )
    .unwrap_or_else(|| {
        DEFAULT_MFA_METHODS
            .iter()
            .map(|method| (*method).to_owned())
            .collect()
    });
    if mfa_methods.is_empty() {
        problem(
            problems,
            "auth.oidc.mfa_methods",
            "empty; multi-factor sign-in is mandatory, so list at least one amr value such as \"mfa\"",
        );
    }

    let max_auth_age = take(
        &raw.max_auth_age_seconds,
        "auth.oidc.max_auth_age_seconds",
        "a whole number of seconds",
        problems,
    )
    .unwrap_or(DEFAULT_MAX_AUTH_AGE_SECONDS);
    positive(max_auth_age, "auth.oidc.max_auth_age_seconds", problems);
    let leeway = take(
        &raw.clock_leeway_seconds,
        "auth.oidc.clock_leeway_seconds",
        "a whole number of seconds",
        problems,
    )
    .unwrap_or(DEFAULT_CLOCK_LEEWAY_SECONDS);
    if leeway > 300 {
        problem(
            problems,
            "auth.oidc.clock_leeway_seconds",
            format!("{leeway} is out of range; use 0 to 300 seconds and keep the clocks in sync"),
        );
    }

    let groups = GroupMapping {
        admin: take(
            &raw.groups.admin,
            "auth.oidc.groups.admin",
            "an array of group names",
            problems,
        )
        .unwrap_or_default(),
        auditor: take(
            &raw.groups.auditor,
            "auth.oidc.groups.auditor",
            "an array of group names",
            problems,
        )
        .unwrap_or_default(),
        user: take(
            &raw.groups.user,
            "auth.oidc.groups.user",
            "an array of group names",
            problems,
        )
        .unwrap_or_default(),
    };
    if groups.admin.is_empty() && groups.auditor.is_empty() && groups.user.is_empty() {
        problem(
            problems,
            "auth.oidc.groups",
            "no group grants any role, so every SSO sign-in would be refused; list provider groups under auth.oidc.groups.admin, .auditor or .user",
        );
    }

    Some(OidcConfig {
        issuer: issuer?,
        client_id: client_id?,
        client_secret: client_secret?,
        redirect_url,
        scopes,
        mfa_methods,
        max_auth_age: Duration::from_secs(max_auth_age),
        clock_leeway: Duration::from_secs(leeway.min(300)),
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Option<AuthConfig>, Vec<ConfigProblem>) {
        #[derive(Deserialize)]
        struct Wrapper {
            auth: RawAuth,
        }
        let wrapper: Wrapper = toml::from_str(text).expect("test TOML parses");
        let mut problems = Vec::new();
        let config = validate_auth(&wrapper.auth, &mut problems);
        (config, problems)
    }

    #[test]
    fn defaults_allow_local_sign_in() {
        let (config, problems) = load("[auth]\n");

        let config = config.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(config.local);
        assert!(config.oidc.is_none());
        assert_eq!(config.session_idle, Duration::from_secs(1800));
    }

    #[test]
    fn inline_client_secret_is_rejected() {
        let (_, problems) = load(
            "[auth.oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\nclient_secret = \"hunter2\"\n[auth.oidc.groups]\nuser = [\"staff\"]\n",
        );

        let keys: Vec<_> = problems
            .iter()
            .map(|problem| problem.key.as_str())
            .collect();
        assert_eq!(keys, ["auth.oidc.client_secret"]);
        assert!(!problems[0].message.contains("hunter2"));
    }

    #[test]
    fn oidc_without_groups_or_mfa_is_rejected() {
        let (_, problems) = load(
            "[auth.oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\nclient_secret = \"env:X\"\nmfa_methods = []\n",
        );

        let keys: Vec<_> = problems
            .iter()
            .map(|problem| problem.key.as_str())
            .collect();
        assert!(keys.contains(&"auth.oidc.mfa_methods"), "{keys:?}");
        assert!(keys.contains(&"auth.oidc.groups"), "{keys:?}");
    }

    #[test]
    fn password_and_session_limits_are_read_and_checked() {
        let (config, problems) = load(
            "[auth]\npassword_max_age_days = 30\npassword_history = 8\nmax_portal_sessions = 2\n",
        );
        let config = config.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.password_max_age_days, 30);
        assert_eq!(config.password_history, 8);
        assert_eq!(config.max_portal_sessions, 2);

        let (_, problems) = load(
            "[auth]\npassword_max_age_days = 0\npassword_history = 0\nmax_portal_sessions = 0\n",
        );
        let keys: Vec<_> = problems
            .iter()
            .map(|problem| problem.key.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "auth.password_max_age_days",
                "auth.password_history",
                "auth.max_portal_sessions"
            ]
        );
    }

    #[test]
    fn no_sign_in_method_is_rejected() {
        let (_, problems) = load("[auth]\nlocal = false\n");

        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "auth.local");
    }

    #[test]
    fn openid_scope_is_always_requested() {
        let (config, problems) = load(
            "[auth.oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\nclient_secret = \"env:X\"\nscopes = [\"profile\"]\n[auth.oidc.groups]\nadmin = [\"ops\"]\n",
        );

        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.unwrap().oidc.unwrap().scopes, ["openid", "profile"]);
    }
}
