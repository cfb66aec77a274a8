//! Image recipes: what goes into an image, as data, so that one build machinery serves
//! every image Strongroom needs.

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::BuildError;

/// Package list of the workspace image, one Debian package per line, `#` comments.
const WORKSPACE_PACKAGES: &str = include_str!("../../workspace/packages.txt");
/// Finishing script of the workspace image, shared with its Dockerfile.
const WORKSPACE_SETUP: &str = include_str!("../../workspace/setup.sh");
/// dpkg `path-exclude` and `path-include` lines of the workspace image.
const WORKSPACE_DPKG_EXCLUDES: &str = include_str!("../../workspace/dpkg-excludes.cfg");
/// Chromium managed policy of the workspace image.
const WORKSPACE_POLICY: &str = include_str!("../../policies/strongroom.json");

/// Path of the agent binary inside the workspace image.
pub const AGENT_IMAGE_PATH: &str = "/usr/local/bin/strongroom-agent";
/// File the agent writes at start with the session's Chromium policy, for example
/// `{"URLAllowlist": ["bank.example"]}`. The image links
/// `/etc/chromium/policies/managed/session.json` to it; while it is missing, the
/// managed `URLBlocklist` of `*` blocks every page.
pub const SESSION_POLICY_PATH: &str = "/tmp/strongroom-policy/session.json";
/// User that runs the workspace container's processes.
pub const WORKSPACE_UID: u32 = 1000;

/// Everything that defines an image apart from the Debian archive's current state and
/// the host binary passed at build time. Every field enters the recipe hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipe {
    /// Short name, stored in the `org.strongroom.recipe` label, e.g. `workspace`.
    pub name: String,
    /// Docker repository the image is tagged into, e.g. `strongroom/workspace`.
    pub repository: String,
    /// Debian suite, e.g. `bookworm`; its `-updates` and `-security` suites are used too.
    pub suite: String,
    /// Packages installed on top of mmdebstrap's `apt` variant (Essential packages and apt).
    pub packages: Vec<String>,
    /// Files copied into the root file system before the setup script runs.
    pub files: Vec<RecipeFile>,
    /// Shell script run as root inside the root file system after the files are copied.
    pub setup_script: Option<String>,
    /// dpkg filter options in order, each `path-exclude=PATTERN` or `path-include=PATTERN`.
    /// dpkg applies the last matching one, so an include after an exclude re-includes.
    pub dpkg_path_filters: Vec<String>,
    /// Path in the image where the host binary given to the build goes, if the recipe
    /// takes one (the workspace image takes the agent).
    pub host_binary_path: Option<String>,
    /// Container configuration recorded in the image.
    pub config: ImageConfig,
}

/// A file placed into the image at `path` with permission bits `mode`, owned by root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipeFile {
    pub path: String,
    pub mode: u32,
    #[serde(serialize_with = "serialize_digest")]
    pub contents: Vec<u8>,
}

/// Container configuration given to `docker import` as Dockerfile instructions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageConfig {
    /// `USER`, as `uid` or `uid:gid`.
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
}

fn serialize_digest<S: Serializer>(contents: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(Sha256::digest(contents)))
}

impl Recipe {
    /// The workspace image: Chromium, Xvfb, fonts, the agent's runtime libraries and
    /// managed policies, run by uid 1000 under tini with the agent as main process.
    pub fn workspace() -> Self {
        Self {
            name: "workspace".into(),
            repository: "strongroom/workspace".into(),
            suite: "bookworm".into(),
            packages: parse_package_list(WORKSPACE_PACKAGES),
            files: vec![RecipeFile {
                path: "/etc/chromium/policies/managed/strongroom.json".into(),
                mode: 0o644,
                contents: WORKSPACE_POLICY.as_bytes().to_vec(),
            }],
            setup_script: Some(WORKSPACE_SETUP.into()),
            dpkg_path_filters: parse_package_list(WORKSPACE_DPKG_EXCLUDES),
            host_binary_path: Some(AGENT_IMAGE_PATH.into()),
            config: ImageConfig {
                user: format!("{WORKSPACE_UID}:{WORKSPACE_UID}"),
                entrypoint: vec!["/usr/bin/tini".into(), "--".into(), AGENT_IMAGE_PATH.into()],
                cmd: Vec::new(),
                env: vec![
                    ("HOME".into(), "/home/strongroom".into()),
                    ("LANG".into(), "C.UTF-8".into()),
                ],
                workdir: Some("/home/strongroom".into()),
            },
        }
    }

    /// SHA-256 of the recipe's canonical JSON form (file contents enter as their digest).
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a recipe always serialises to JSON");
        hex::encode(Sha256::digest(canonical))
    }

    /// Checks every value that reaches a command line, a hook or a Dockerfile instruction.
    pub fn validate(&self) -> Result<(), BuildError> {
        let invalid = |reason: String| BuildError::InvalidRecipe {
            recipe: self.name.clone(),
            reason,
        };

        if !is_name(&self.name, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        }) {
            return Err(invalid(format!(
                "name {:?} must be lowercase letters, digits and '-'",
                self.name
            )));
        }
        if !is_name(&self.repository, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || "-_./".contains(c)
        }) {
            return Err(invalid(format!(
                "repository {:?} is not a valid Docker repository name",
                self.repository
            )));
        }
        if !is_name(&self.suite, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        }) {
            return Err(invalid(format!(
                "suite {:?} is not a Debian suite name",
                self.suite
            )));
        }
        if self.packages.is_empty() {
            return Err(invalid("the package list is empty".into()));
        }
        for package in &self.packages {
            let valid = is_name(package, |c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c)
            });
            if !valid {
                return Err(invalid(format!("{package:?} is not a Debian package name")));
            }
        }

        let image_paths = self
            .files
            .iter()
            .map(|f| &f.path)
            .chain(&self.host_binary_path);
        for path in image_paths {
            if !is_image_path(path) {
                return Err(invalid(format!(
                    "file path {path:?} must be absolute, without '..', spaces or quotes"
                )));
            }
        }
        for filter in &self.dpkg_path_filters {
            let pattern = filter
                .strip_prefix("path-exclude=")
                .or_else(|| filter.strip_prefix("path-include="));
            let valid =
                pattern.is_some_and(|p| p.starts_with('/') && !p.contains(char::is_whitespace));
            if !valid {
                return Err(invalid(format!(
                    "dpkg filter {filter:?} must be path-exclude=/PATTERN or path-include=/PATTERN, without spaces"
                )));
            }
        }
        let config_values = self.config.entrypoint.iter().chain(&self.config.cmd);
        for value in config_values.chain(self.config.env.iter().flat_map(|(k, v)| [k, v])) {
            if value.contains(['"', '\\', '\n']) {
                return Err(invalid(format!(
                    "image config value {value:?} contains a quote, backslash or newline"
                )));
            }
        }
        Ok(())
    }
}

/// Parses a list file such as the package list: one entry per line, `#` starts a comment.
pub fn parse_package_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(String::from)
        .collect()
}

fn is_name(value: &str, allowed: impl Fn(char) -> bool) -> bool {
    !value.is_empty() && value.chars().all(allowed)
}

fn is_image_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && !path.split('/').any(|part| part == "..")
        && !path.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_recipe_is_valid() {
        let recipe = Recipe::workspace();
        recipe.validate().unwrap();
        assert!(recipe.packages.contains(&"chromium".to_string()));
        assert!(recipe.packages.contains(&"libavcodec59".to_string()));
        assert_eq!(recipe.dpkg_path_filters[0], "path-exclude=/usr/share/doc/*");
        assert_eq!(
            recipe.dpkg_path_filters[1],
            "path-include=/usr/share/doc/*/copyright"
        );
    }

    #[test]
    fn setup_links_session_policy() {
        let link =
            format!("ln -sf {SESSION_POLICY_PATH} /etc/chromium/policies/managed/session.json");
        assert!(
            WORKSPACE_SETUP.contains(&link),
            "setup.sh must create: {link}"
        );
    }

    #[test]
    fn package_list_skips_comments() {
        let parsed = parse_package_list("# head\nchromium  # browser\n\n xvfb\n");
        assert_eq!(parsed, vec!["chromium", "xvfb"]);
    }

    #[test]
    fn validate_rejects_bad_package() {
        let mut recipe = Recipe::workspace();
        recipe.packages.push("chromium;rm".into());
        let error = recipe.validate().unwrap_err().to_string();
        assert!(error.contains("chromium;rm"), "{error}");
    }

    #[test]
    fn validate_rejects_relative_file() {
        let mut recipe = Recipe::workspace();
        recipe.files[0].path = "etc/../x".into();
        assert!(recipe.validate().is_err());
    }
}
