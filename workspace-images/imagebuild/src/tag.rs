//! Content-derived image tags.

use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::mmdebstrap::PackageVersions;
use crate::recipe::Recipe;

/// Hex digits of the combined SHA-256 used as the image tag (80 bits).
const TAG_HEX_LEN: usize = 20;

/// The inputs that identify an image and the tag derived from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTag {
    /// SHA-256 of the recipe (see [`Recipe::hash`]).
    pub recipe_sha256: String,
    /// SHA-256 of the host binary placed into the image, if the recipe takes one.
    pub host_binary_sha256: Option<String>,
    /// SHA-256 of the sorted `name=version` list of resolved packages.
    pub packages_sha256: String,
    /// Docker tag: the first 20 hex digits of the SHA-256 over the three hashes above.
    pub tag: String,
}

impl ImageTag {
    /// Derives the tag from the recipe, the host binary's hash and the package versions.
    /// Any change in one of them gives a different tag; the same inputs give the same tag.
    pub fn compute(
        recipe: &Recipe,
        host_binary_sha256: Option<&str>,
        packages: &PackageVersions,
    ) -> Self {
        let recipe_sha256 = recipe.hash();
        let packages_sha256 = hex::encode(Sha256::digest(canonical_packages(packages)));

        let mut combined = Sha256::new();
        combined.update(b"strongroom-imagebuild tag v1\n");
        combined.update(format!("recipe {recipe_sha256}\n"));
        combined.update(format!(
            "host-binary {}\n",
            host_binary_sha256.unwrap_or("none")
        ));
        combined.update(format!("packages {packages_sha256}\n"));
        let tag = hex::encode(combined.finalize())[..TAG_HEX_LEN].to_string();

        Self {
            recipe_sha256,
            host_binary_sha256: host_binary_sha256.map(String::from),
            packages_sha256,
            tag,
        }
    }
}

/// Sorted `name=version` pairs separated by spaces; also the form stored in image labels.
pub fn canonical_packages(packages: &PackageVersions) -> String {
    packages
        .iter()
        .map(|(name, version)| format!("{name}={version}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses the form written by [`canonical_packages`].
pub fn parse_canonical_packages(text: &str) -> PackageVersions {
    text.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, version)| (name.to_string(), version.to_string()))
        .collect()
}

/// SHA-256 of a file's contents, read in 1 MiB blocks.
pub async fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_packages_round_trip() {
        let packages: PackageVersions = [("bash", "5.2.15-2+b13"), ("tzdata", "2025b-0+deb12u1")]
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let text = canonical_packages(&packages);
        assert_eq!(text, "bash=5.2.15-2+b13 tzdata=2025b-0+deb12u1");
        assert_eq!(parse_canonical_packages(&text), packages);
    }
}
