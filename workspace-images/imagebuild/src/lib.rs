//! Builds Strongroom's container images from Debian packages, with no container registry.
//!
//! A [`Recipe`] (package list, files, setup script, container configuration) becomes a
//! root file system through `mmdebstrap --mode=root --variant=apt` from the host's own
//! apt sources, and then an image through the Docker API's import (`docker import`).
//! The image tag is derived from the recipe, the host binary placed into the image (the
//! agent) and the resolved package versions. An unchanged input set is therefore never
//! rebuilt, and a Debian security update yields a new tag once [`BuildOptions::refresh`]
//! re-resolves.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let docker = imagebuild::connect_docker()?;
//! let options = imagebuild::BuildOptions::new(
//!     imagebuild::Recipe::workspace(),
//!     Some("target/debug/strongroom-agent".into()),
//! );
//! let built = imagebuild::build(&docker, &options, &|line: &str| println!("{line}")).await?;
//! println!("{}", built.image.reference);
//! # Ok(()) }
//! ```

mod docker;
mod error;
mod image;
mod mmdebstrap;
mod recipe;
mod recipes;
pub mod seccomp;
mod sources;
mod tag;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use tracing::info;

pub use docker::{DOCKER_API_VERSION, connect_docker};
pub use error::BuildError;
pub use image::{
    ImageInfo, LABEL_HOST_BINARY_SHA256, LABEL_PACKAGES, LABEL_RECIPE, LABEL_RECIPE_SHA256,
    LABEL_RESOLUTION_SHA256, LABEL_SUITE, find_image,
};
pub use mmdebstrap::PackageVersions;
pub use recipe::{
    AGENT_IMAGE_PATH, ImageConfig, Recipe, RecipeFile, SESSION_POLICY_PATH, WORKSPACE_UID,
    parse_package_list,
};
pub use recipes::{
    BROKER_IMAGE_PATH, BROKER_UID, DEMO_BANK_IMAGE_PATH, DEMO_BANK_SECRETS_DIR, DEMO_BANK_UID,
};
pub use sources::AptSourcesSpec;
pub use tag::{ImageTag, file_sha256};

/// Receives one human-readable progress line at a time (mmdebstrap output, import status).
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Options of one [`build`] or [`current_tag`] call.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub recipe: Recipe,
    /// Host file placed at [`Recipe::host_binary_path`]; required when the recipe has one.
    pub host_binary: Option<PathBuf>,
    /// Re-resolve package versions against the mirror even when a local image already
    /// matches the recipe and host binary. Without it such an image is reused as is.
    pub refresh: bool,
    /// Directory for the temporary root file system tar (about 1 GB for the workspace).
    /// Defaults to the system temporary directory.
    pub work_dir: Option<PathBuf>,
    pub apt_sources: AptSourcesSpec,
}

impl BuildOptions {
    pub fn new(recipe: Recipe, host_binary: Option<PathBuf>) -> Self {
        Self {
            recipe,
            host_binary,
            refresh: false,
            work_dir: None,
            apt_sources: AptSourcesSpec::Host,
        }
    }
}

/// Whether [`build`] produced a new image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildOutcome {
    /// mmdebstrap ran and the image was imported.
    Built,
    /// An image with the same inputs already existed; nothing was built.
    AlreadyPresent,
}

/// Result of [`build`].
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub image: ImageInfo,
    pub outcome: BuildOutcome,
    pub elapsed: Duration,
}

/// Builds the recipe's image unless an image with the same tag exists, and returns it.
///
/// Steps: hash the recipe and host binary. Without `refresh`, reuse a local image built
/// from both. Otherwise resolve package versions with `mmdebstrap --simulate`, derive the
/// tag and reuse an image with that tag. Otherwise build the root file system, import it
/// and tag it `repository:tag`. The tag comes from the resolution; the image's
/// [`LABEL_PACKAGES`] label lists what dpkg reports as installed, which lacks the
/// transitional packages apt removes again (bookworm's `lsb-base`). No registry is
/// contacted; the Debian mirror is.
pub async fn build(
    docker: &Docker,
    options: &BuildOptions,
    progress: Progress<'_>,
) -> Result<BuiltImage, BuildError> {
    let started = Instant::now();
    let recipe = &options.recipe;
    recipe.validate()?;

    let work = temp_work_dir(options)?;
    let host_binary = stage_host_binary(options, work.path()).await?;
    let host_binary_sha256 = match &host_binary {
        Some(path) => Some(file_sha256(path).await.map_err(BuildError::io(path))?),
        None => None,
    };
    let recipe_sha256 = recipe.hash();

    if !options.refresh {
        let existing = image::find_matching(
            docker,
            recipe,
            &recipe_sha256,
            host_binary_sha256.as_deref(),
        )
        .await?;
        if let Some(image) = existing {
            progress(&format!(
                "{} is up to date with the recipe and agent; run `strongroom image build --refresh` to check Debian for updates",
                image.reference
            ));
            return Ok(already_present(image, started));
        }
    }

    let sources = write_sources(options, work.path())?;
    progress(&format!(
        "resolving packages of recipe {} from the Debian archive",
        recipe.name
    ));
    let resolved = mmdebstrap::resolve(recipe, &sources, work.path(), progress).await?;
    let tag = ImageTag::compute(recipe, host_binary_sha256.as_deref(), &resolved);
    progress(&format!(
        "resolved {} packages; image tag {}",
        resolved.len(),
        tag.tag
    ));
    if let Some(image) = image::find_tagged(docker, recipe, &tag.tag).await? {
        progress(&format!(
            "{} already exists; nothing to build",
            image.reference
        ));
        return Ok(already_present(image, started));
    }

    let staging = mmdebstrap::Staging {
        recipe,
        sources: &sources,
        host_binary: host_binary.as_deref(),
        work_dir: work.path(),
    };
    let (tar, installed) = mmdebstrap::build_rootfs(&staging, progress).await?;
    progress(&installed_summary(&resolved, &installed));
    if let Some(change) = archive_change(&resolved, &installed) {
        progress(&format!(
            "the Debian archive changed during the build ({change}); the image keeps tag {}, and the next refresh builds a new one",
            tag.tag
        ));
    }

    progress(&format!("importing {} into Docker", tar.display()));
    let image = image::import(docker, &tar, recipe, &tag, &installed, progress).await?;
    info!(image.reference = %image.reference, image.id = %image.id, packages = installed.len(), elapsed_s = started.elapsed().as_secs(), "Built image");
    Ok(BuiltImage {
        image,
        outcome: BuildOutcome::Built,
        elapsed: started.elapsed(),
    })
}

/// Resolves today's package versions and returns the tag [`build`] would give the image,
/// without building anything. Needs the Debian mirror; takes about 10 seconds.
pub async fn current_tag(
    options: &BuildOptions,
    progress: Progress<'_>,
) -> Result<ImageTag, BuildError> {
    options.recipe.validate()?;
    let work = temp_work_dir(options)?;
    let host_binary = stage_host_binary(options, work.path()).await?;
    let host_binary_sha256 = match &host_binary {
        Some(path) => Some(file_sha256(path).await.map_err(BuildError::io(path))?),
        None => None,
    };

    let sources = write_sources(options, work.path())?;
    let resolved = mmdebstrap::resolve(&options.recipe, &sources, work.path(), progress).await?;
    Ok(ImageTag::compute(
        &options.recipe,
        host_binary_sha256.as_deref(),
        &resolved,
    ))
}

/// Describes an installed package that the resolution did not predict: a version that
/// differs or a package that was not resolved. Resolved packages missing from the
/// installed set are expected (apt removes transitional packages again).
fn archive_change(resolved: &PackageVersions, installed: &PackageVersions) -> Option<String> {
    installed
        .iter()
        .find_map(|(name, version)| match resolved.get(name) {
            Some(expected) if expected == version => None,
            Some(expected) => Some(format!("{name} {version} installed, {expected} resolved")),
            None => Some(format!("{name} {version} installed but not resolved")),
        })
}

/// Describes how many packages the image holds, and names the resolved packages that
/// apt removed again, so that the count matches the earlier "resolved N packages" line.
fn installed_summary(resolved: &PackageVersions, installed: &PackageVersions) -> String {
    let removed: Vec<&str> = resolved
        .keys()
        .filter(|name| !installed.contains_key(*name))
        .map(String::as_str)
        .collect();
    if removed.is_empty() {
        return format!("installed {} packages", installed.len());
    }
    format!(
        "installed {} packages: {} resolved, minus {} that apt removed again as transitional ({})",
        installed.len(),
        resolved.len(),
        removed.len(),
        removed.join(", ")
    )
}

fn already_present(image: ImageInfo, started: Instant) -> BuiltImage {
    BuiltImage {
        image,
        outcome: BuildOutcome::AlreadyPresent,
        elapsed: started.elapsed(),
    }
}

fn temp_work_dir(options: &BuildOptions) -> Result<tempfile::TempDir, BuildError> {
    let parent = options.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("strongroom-imagebuild-")
        .tempdir_in(&parent)
        .map_err(BuildError::io(parent))
}

/// Copies the host binary into the work directory, so that the hashed file is the one
/// that goes into the image even if the original changes during the build.
async fn stage_host_binary(
    options: &BuildOptions,
    work_dir: &Path,
) -> Result<Option<PathBuf>, BuildError> {
    let recipe = &options.recipe;
    match (&options.host_binary, &recipe.host_binary_path) {
        (Some(source), Some(_)) => {
            let staged = work_dir.join("host-binary");
            tokio::fs::copy(source, &staged)
                .await
                .map_err(|error| BuildError::AgentBinary {
                    path: source.clone(),
                    source: error,
                })?;
            Ok(Some(staged))
        }
        (None, Some(path)) => Err(BuildError::InvalidRecipe {
            recipe: recipe.name.clone(),
            reason: format!("the recipe places a host binary at {path}; pass its path on the host"),
        }),
        (Some(source), None) => Err(BuildError::InvalidRecipe {
            recipe: recipe.name.clone(),
            reason: format!(
                "the recipe takes no host binary, but {} was given",
                source.display()
            ),
        }),
        (None, None) => Ok(None),
    }
}

fn write_sources(options: &BuildOptions, work_dir: &Path) -> Result<PathBuf, BuildError> {
    let sources = sources::load(&options.apt_sources, &options.recipe.suite)?;
    let path = work_dir.join("apt.sources");
    std::fs::write(&path, sources::render_deb822(&sources)).map_err(BuildError::io(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_agent_names_path() {
        let options = BuildOptions::new(
            Recipe::workspace(),
            Some("/nonexistent/strongroom-agent".into()),
        );
        let error = current_tag(&options, &|_: &str| {}).await.unwrap_err();
        assert!(matches!(error, BuildError::AgentBinary { .. }), "{error:?}");
        assert!(
            error.to_string().contains("/nonexistent/strongroom-agent"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn workspace_requires_agent() {
        let options = BuildOptions::new(Recipe::workspace(), None);
        let error = current_tag(&options, &|_: &str| {}).await.unwrap_err();
        assert!(error.to_string().contains(AGENT_IMAGE_PATH), "{error}");
    }

    #[test]
    fn installed_summary_names_removed_packages() {
        let resolved: PackageVersions = [("lsb-base", "11.6"), ("tini", "0.19.0-1+b3")]
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .into();
        let installed: PackageVersions = [("tini".to_string(), "0.19.0-1+b3".to_string())].into();

        let summary = installed_summary(&resolved, &installed);

        assert!(
            summary.starts_with("installed 1 packages: 2 resolved"),
            "{summary}"
        );
        assert!(summary.contains("minus 1 that apt removed"), "{summary}");
        assert!(summary.contains("(lsb-base)"), "{summary}");
        assert_eq!(
            installed_summary(&installed, &installed),
            "installed 1 packages"
        );
    }

    #[test]
    fn archive_change_ignores_removed_packages() {
        let resolved: PackageVersions = [("lsb-base", "11.6"), ("tini", "0.19.0-1+b3")]
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .into();
        let installed: PackageVersions = [("tini".to_string(), "0.19.0-1+b3".to_string())].into();
        assert_eq!(archive_change(&resolved, &installed), None);

        let updated: PackageVersions = [("tini".to_string(), "0.19.0-1+b4".to_string())].into();
        let change = archive_change(&resolved, &updated).unwrap();
        assert!(change.contains("0.19.0-1+b4"), "{change}");
    }
}
