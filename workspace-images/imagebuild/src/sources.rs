//! The host's Debian apt sources, filtered to one suite and rendered for mmdebstrap.

use std::path::{Path, PathBuf};

use crate::error::BuildError;

/// One apt source entry with the fields mmdebstrap needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<String>,
}

/// Origin of a build's apt sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AptSourcesSpec {
    /// `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.{list,sources}` of this host.
    #[default]
    Host,
    /// A deb822 `.sources` or one-line `.list` file.
    File(PathBuf),
}

const APT_DIR: &str = "/etc/apt";

/// Reads the configured sources and keeps the `deb` entries for `suite`, `suite-updates`
/// and `suite-security`, with other suites removed from each entry.
pub fn load(spec: &AptSourcesSpec, suite: &str) -> Result<Vec<AptSource>, BuildError> {
    let files = match spec {
        AptSourcesSpec::Host => host_source_files(Path::new(APT_DIR))?,
        AptSourcesSpec::File(path) => vec![path.clone()],
    };

    let wanted = [
        suite.to_string(),
        format!("{suite}-updates"),
        format!("{suite}-security"),
    ];
    let mut sources = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(BuildError::io(file))?;
        let parsed = if file.extension().is_some_and(|e| e == "sources") {
            parse_deb822(&text)
        } else {
            parse_one_line(&text)
        };
        for mut source in parsed {
            source.suites.retain(|s| wanted.contains(s));
            if !source.suites.is_empty() {
                sources.push(source);
            }
        }
    }

    if sources.is_empty() {
        let searched = files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(BuildError::NoAptSources {
            suites: wanted.to_vec(),
            searched,
        });
    }
    Ok(sources)
}

/// Renders sources in deb822 form, the format mmdebstrap reads from a `.sources` file.
pub fn render_deb822(sources: &[AptSource]) -> String {
    let mut out = String::new();
    for source in sources {
        out.push_str("Types: deb\n");
        out.push_str(&format!("URIs: {}\n", source.uris.join(" ")));
        out.push_str(&format!("Suites: {}\n", source.suites.join(" ")));
        out.push_str(&format!("Components: {}\n", source.components.join(" ")));
        if let Some(signed_by) = &source.signed_by {
            out.push_str(&format!("Signed-By: {signed_by}\n"));
        }
        out.push('\n');
    }
    out
}

fn host_source_files(apt_dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let mut files = Vec::new();
    let list = apt_dir.join("sources.list");
    if list.is_file() {
        files.push(list);
    }

    let dir = apt_dir.join("sources.list.d");
    if dir.is_dir() {
        let entries = std::fs::read_dir(&dir).map_err(BuildError::io(&dir))?;
        let mut parts = Vec::new();
        for entry in entries {
            let path = entry.map_err(BuildError::io(&dir))?.path();
            // apt itself reads only these two extensions; `.disabled` and backups are ignored.
            if path
                .extension()
                .is_some_and(|e| e == "list" || e == "sources")
            {
                parts.push(path);
            }
        }
        parts.sort();
        files.extend(parts);
    }
    Ok(files)
}

/// Parses deb822 stanzas. Comment lines are dropped; `Enabled: no` stanzas and
/// stanzas without the `deb` type are skipped.
fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = fields.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                continue;
            }
            if let Some((key, value)) = line.split_once(':') {
                fields.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }

        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let words = |name: &str| -> Vec<String> {
            field(name)
                .unwrap_or("")
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        let enabled = field("enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        if !enabled || !words("types").iter().any(|t| t == "deb") {
            continue;
        }
        let source = AptSource {
            uris: words("uris"),
            suites: words("suites"),
            components: words("components"),
            signed_by: field("signed-by").map(String::from),
        };
        if !source.uris.is_empty() && !source.suites.is_empty() {
            sources.push(source);
        }
    }
    sources
}

/// Parses one-line `deb [options] uri suite component...` entries.
fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };

        let mut signed_by = None;
        let mut rest = rest.trim_start();
        if let Some(options) = rest.strip_prefix('[') {
            let Some((options, after)) = options.split_once(']') else {
                continue;
            };
            for option in options.split_whitespace() {
                if let Some(value) = option.strip_prefix("signed-by=") {
                    signed_by = Some(value.to_string());
                }
            }
            rest = after.trim_start();
        }

        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        sources.push(AptSource {
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components: words.map(String::from).collect(),
            signed_by,
        });
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\nTypes: deb\nEnabled: no\nURIs: http://example.invalid/\nSuites: bookworm\nComponents: main\n";

    #[test]
    fn deb822_keeps_enabled_binary_sources() {
        let sources = parse_deb822(DEB822);
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].suites, vec!["bookworm", "bookworm-updates"]);
        assert_eq!(
            sources[0].signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
    }

    #[test]
    fn one_line_reads_signed_by() {
        let sources = parse_one_line(
            "deb [arch=amd64 signed-by=/k.gpg] http://deb.debian.org/debian-security bookworm-security main contrib\n# deb http://x/ y main\ndeb-src http://x/ bookworm main\n",
        );
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(sources[0].components, vec!["main", "contrib"]);
    }

    #[test]
    fn load_filters_other_suites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixed.list");
        std::fs::write(
            &path,
            "deb http://a/ bookworm main\ndeb http://b/ nodistro main\n",
        )
        .unwrap();

        let sources = load(&AptSourcesSpec::File(path.clone()), "bookworm").unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].uris, vec!["http://a/"]);

        let error = load(&AptSourcesSpec::File(path), "trixie")
            .unwrap_err()
            .to_string();
        assert!(error.contains("trixie-security"), "{error}");
    }
}
