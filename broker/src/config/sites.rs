//! The `[sites]` section: how changes to the site catalogue are approved.

use serde::Deserialize;

use super::ConfigProblem;
use super::raw::{Lenient, take};

/// Raw mirror of `[sites]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawSites {
    /// `sites.dual_control`: `true`, `false` or `"auto"` (the default). Whether a
    /// change to a site's allowlist, credential origins, recipes or credential source
    /// waits for a second admin's approval. `"auto"` requires it once at least two
    /// accounts hold the admin role.
    pub dual_control: Option<Lenient<toml::Value>>,
}

/// When site changes need a second admin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DualControl {
    #[default]
    Auto,
    On,
    Off,
}

/// Validated `[sites]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SitesConfig {
    pub dual_control: DualControl,
}

/// Validates `[sites]`, appending every problem found.
pub fn validate_sites(raw: &RawSites, problems: &mut Vec<ConfigProblem>) -> Option<SitesConfig> {
    let expected = "true, false or \"auto\"";
    let value = take(&raw.dual_control, "sites.dual_control", expected, problems);
    let dual_control = match value {
        None => DualControl::Auto,
        Some(toml::Value::Boolean(true)) => DualControl::On,
        Some(toml::Value::Boolean(false)) => DualControl::Off,
        Some(toml::Value::String(word)) if word == "auto" => DualControl::Auto,
        Some(other) => {
            problems.push(ConfigProblem {
                key: "sites.dual_control".to_owned(),
                message: format!("expected {expected}, found {other}"),
            });
            return None;
        }
    };
    Some(SitesConfig { dual_control })
}
