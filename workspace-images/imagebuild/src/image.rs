//! Importing a root file system tar into Docker and finding images built earlier.

use std::collections::HashMap;
use std::path::Path;

use bollard::Docker;
use bollard::query_parameters::{CreateImageOptionsBuilder, ListImagesOptionsBuilder};
use futures::TryStreamExt;
use tokio_util::io::ReaderStream;

use crate::Progress;
use crate::error::BuildError;
use crate::mmdebstrap::PackageVersions;
use crate::recipe::Recipe;
use crate::tag::{ImageTag, canonical_packages, parse_canonical_packages};

/// Recipe name.
pub const LABEL_RECIPE: &str = "org.strongroom.recipe";
/// SHA-256 of the recipe.
pub const LABEL_RECIPE_SHA256: &str = "org.strongroom.recipe.sha256";
/// SHA-256 of the host binary (the agent), or `none`.
pub const LABEL_HOST_BINARY_SHA256: &str = "org.strongroom.host-binary.sha256";
/// SHA-256 of the resolved package list that the tag was derived from.
pub const LABEL_RESOLUTION_SHA256: &str = "org.strongroom.resolution.sha256";
/// Packages dpkg reports as installed, as space-separated `name=version` pairs.
pub const LABEL_PACKAGES: &str = "org.strongroom.packages";
/// Debian suite.
pub const LABEL_SUITE: &str = "org.strongroom.suite";

/// An image of a recipe present in the local Docker engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// `repository:tag`, the reference to give to a container create call.
    pub reference: String,
    pub repository: String,
    pub tag: String,
    /// Image id (`sha256:…`).
    pub id: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
    pub recipe_sha256: String,
    pub host_binary_sha256: Option<String>,
    /// Packages installed in the image.
    pub packages: PackageVersions,
}

/// Finds the newest local image built from a recipe of this name and repository, with
/// no network access. Returns `None` when there is none.
pub async fn find_image(docker: &Docker, recipe: &Recipe) -> Result<Option<ImageInfo>, BuildError> {
    let filters = vec![format!("{LABEL_RECIPE}={}", recipe.name)];
    let mut images = list(docker, recipe, filters).await?;
    images.sort_by_key(|image| std::cmp::Reverse(image.created));
    Ok(images.into_iter().next())
}

/// Finds a local image of this recipe built from the same recipe hash and host binary.
pub(crate) async fn find_matching(
    docker: &Docker,
    recipe: &Recipe,
    recipe_sha256: &str,
    host_binary_sha256: Option<&str>,
) -> Result<Option<ImageInfo>, BuildError> {
    let filters = vec![
        format!("{LABEL_RECIPE}={}", recipe.name),
        format!("{LABEL_RECIPE_SHA256}={recipe_sha256}"),
        format!(
            "{LABEL_HOST_BINARY_SHA256}={}",
            host_binary_sha256.unwrap_or("none")
        ),
    ];
    let mut images = list(docker, recipe, filters).await?;
    images.sort_by_key(|image| std::cmp::Reverse(image.created));
    Ok(images.into_iter().next())
}

/// Returns the image tagged `repository:tag` if it exists.
pub(crate) async fn find_tagged(
    docker: &Docker,
    recipe: &Recipe,
    tag: &str,
) -> Result<Option<ImageInfo>, BuildError> {
    let images = list(
        docker,
        recipe,
        vec![format!("{LABEL_RECIPE}={}", recipe.name)],
    )
    .await?;
    Ok(images.into_iter().find(|image| image.tag == tag))
}

async fn list(
    docker: &Docker,
    recipe: &Recipe,
    labels: Vec<String>,
) -> Result<Vec<ImageInfo>, BuildError> {
    let filters = HashMap::from([
        ("label".to_string(), labels),
        ("reference".to_string(), vec![recipe.repository.clone()]),
    ]);
    let options = ListImagesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let summaries = docker
        .list_images(Some(options))
        .await
        .map_err(BuildError::docker("listing images"))?;

    let prefix = format!("{}:", recipe.repository);
    let mut images = Vec::new();
    for summary in summaries {
        let labels = &summary.labels;
        for reference in &summary.repo_tags {
            let Some(tag) = reference.strip_prefix(&prefix) else {
                continue;
            };
            images.push(ImageInfo {
                reference: reference.clone(),
                repository: recipe.repository.clone(),
                tag: tag.to_string(),
                id: summary.id.clone(),
                created: summary.created,
                recipe_sha256: labels.get(LABEL_RECIPE_SHA256).cloned().unwrap_or_default(),
                host_binary_sha256: labels
                    .get(LABEL_HOST_BINARY_SHA256)
                    .filter(|value| value.as_str() != "none")
                    .cloned(),
                packages: parse_canonical_packages(
                    labels.get(LABEL_PACKAGES).map_or("", String::as_str),
                ),
            });
        }
    }
    Ok(images)
}

/// Imports `tar` as `repository:tag` (`docker import`), with the recipe's container
/// configuration and labels naming the recipe hash, host binary hash and packages.
pub(crate) async fn import(
    docker: &Docker,
    tar: &Path,
    recipe: &Recipe,
    tag: &ImageTag,
    packages: &PackageVersions,
    progress: Progress<'_>,
) -> Result<ImageInfo, BuildError> {
    let file = tokio::fs::File::open(tar)
        .await
        .map_err(BuildError::io(tar))?;
    let body = bollard::body_try_stream(ReaderStream::with_capacity(file, 1 << 20));

    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(&recipe.repository)
        .tag(&tag.tag)
        .message(&format!("strongroom-imagebuild recipe {}", recipe.name))
        .changes(dockerfile_changes(recipe, tag, packages))
        .build();
    let mut stream = docker.create_image(Some(options), Some(body), None);
    while let Some(info) = stream
        .try_next()
        .await
        .map_err(BuildError::docker("importing the image"))?
    {
        if let Some(detail) = info.error_detail {
            return Err(BuildError::ImportRejected {
                message: detail.message.unwrap_or_default(),
            });
        }
        if let Some(status) = info.status {
            progress(&format!("docker import: {status}"));
        }
    }

    let reference = format!("{}:{}", recipe.repository, tag.tag);
    let inspect = docker
        .inspect_image(&reference)
        .await
        .map_err(BuildError::docker("inspecting the imported image"))?;
    let created = inspect
        .created
        .as_deref()
        .and_then(parse_rfc3339_seconds)
        .unwrap_or_default();
    Ok(ImageInfo {
        reference,
        repository: recipe.repository.clone(),
        tag: tag.tag.clone(),
        id: inspect.id.unwrap_or_default(),
        created,
        recipe_sha256: tag.recipe_sha256.clone(),
        host_binary_sha256: tag.host_binary_sha256.clone(),
        packages: packages.clone(),
    })
}

/// Dockerfile instructions applied by the import. Docker 20.10 accepts CMD, ENTRYPOINT,
/// ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME and WORKDIR here.
fn dockerfile_changes(recipe: &Recipe, tag: &ImageTag, packages: &PackageVersions) -> Vec<String> {
    let config = &recipe.config;
    let mut changes = vec![format!("USER {}", config.user)];
    if !config.entrypoint.is_empty() {
        changes.push(format!("ENTRYPOINT {}", json_array(&config.entrypoint)));
    }
    if !config.cmd.is_empty() {
        changes.push(format!("CMD {}", json_array(&config.cmd)));
    }
    for (key, value) in &config.env {
        changes.push(format!("ENV {key}=\"{value}\""));
    }
    if let Some(workdir) = &config.workdir {
        changes.push(format!("WORKDIR {workdir}"));
    }

    let labels = [
        (LABEL_RECIPE, recipe.name.clone()),
        (LABEL_RECIPE_SHA256, tag.recipe_sha256.clone()),
        (
            LABEL_HOST_BINARY_SHA256,
            tag.host_binary_sha256
                .clone()
                .unwrap_or_else(|| "none".into()),
        ),
        (LABEL_RESOLUTION_SHA256, tag.packages_sha256.clone()),
        (LABEL_PACKAGES, canonical_packages(packages)),
        (LABEL_SUITE, recipe.suite.clone()),
    ];
    for (key, value) in labels {
        changes.push(format!("LABEL \"{key}\"=\"{value}\""));
    }
    changes
}

fn json_array(values: &[String]) -> String {
    serde_json::to_string(values).expect("a string list always serialises to JSON")
}

/// Parses the seconds of an RFC 3339 time such as `2026-12-04T20:21:43.123Z`.
fn parse_rfc3339_seconds(text: &str) -> Option<i64> {
    let date = text.get(..10)?;
    let time = text.get(11..19)?;
    let mut date_parts = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (
        date_parts.next()??,
        date_parts.next()??,
        date_parts.next()??,
    );
    let mut time_parts = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (
        time_parts.next()??,
        time_parts.next()??,
        time_parts.next()??,
    );

    // Days from civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_seconds() {
        assert_eq!(parse_rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_seconds("2026-12-04T20:21:43.5Z"),
            Some(1_796_415_703)
        );
    }

    #[test]
    fn changes_quote_labels() {
        let recipe = Recipe::workspace();
        let packages: PackageVersions = [("bash".to_string(), "5.2.15-2+b13".to_string())].into();
        let tag = ImageTag::compute(&recipe, None, &packages);
        let changes = dockerfile_changes(&recipe, &tag, &packages);
        assert!(changes.contains(&"USER 1000:1000".to_string()));
        assert!(
            changes.contains(
                &"ENTRYPOINT [\"/usr/bin/tini\",\"--\",\"/usr/local/bin/strongroom-agent\"]"
                    .to_string()
            )
        );
        assert!(
            changes
                .contains(&"LABEL \"org.strongroom.packages\"=\"bash=5.2.15-2+b13\"".to_string())
        );
    }
}
