//! Image tags depend on every input and on nothing else.

use imagebuild::{ImageTag, PackageVersions, Recipe, file_sha256};

fn packages(pairs: &[(&str, &str)]) -> PackageVersions {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn bookworm_packages() -> PackageVersions {
    packages(&[
        ("chromium", "156.0.8078.114-1~deb12u1"),
        ("libc6", "2.36-9+deb12u14"),
        ("tini", "0.19.0-1+b3"),
    ])
}

async fn agent_hash(contents: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strongroom-agent");
    std::fs::write(&path, contents).unwrap();
    file_sha256(&path).await.unwrap()
}

#[tokio::test]
async fn same_inputs_same_tag() {
    let agent = agent_hash(b"agent build 1").await;
    let first = ImageTag::compute(&Recipe::workspace(), Some(&agent), &bookworm_packages());

    let agent_again = agent_hash(b"agent build 1").await;
    let second = ImageTag::compute(
        &Recipe::workspace(),
        Some(&agent_again),
        &bookworm_packages(),
    );

    assert_eq!(first, second);
    assert_eq!(first.tag.len(), 20);
    assert!(first.tag.chars().all(|c| c.is_ascii_hexdigit()));
}

#[tokio::test]
async fn changed_recipe_new_tag() {
    let agent = agent_hash(b"agent build 1").await;
    let base = ImageTag::compute(&Recipe::workspace(), Some(&agent), &bookworm_packages());

    let mut more_packages = Recipe::workspace();
    more_packages.packages.push("fonts-noto-cjk".into());
    let tag = ImageTag::compute(&more_packages, Some(&agent), &bookworm_packages());
    assert_ne!(tag.tag, base.tag, "adding a package to the recipe");

    let mut changed_policy = Recipe::workspace();
    changed_policy.files[0].contents.extend_from_slice(b" ");
    let tag = ImageTag::compute(&changed_policy, Some(&agent), &bookworm_packages());
    assert_ne!(tag.tag, base.tag, "changing a policy file by one byte");

    let mut changed_setup = Recipe::workspace();
    changed_setup.setup_script = Some("true\n".into());
    let tag = ImageTag::compute(&changed_setup, Some(&agent), &bookworm_packages());
    assert_ne!(tag.tag, base.tag, "changing the setup script");

    let mut changed_user = Recipe::workspace();
    changed_user.config.user = "1001:1001".into();
    let tag = ImageTag::compute(&changed_user, Some(&agent), &bookworm_packages());
    assert_ne!(tag.tag, base.tag, "changing the image user");
}

#[tokio::test]
async fn changed_agent_new_tag() {
    let recipe = Recipe::workspace();
    let first = ImageTag::compute(
        &recipe,
        Some(&agent_hash(b"agent build 1").await),
        &bookworm_packages(),
    );
    let second = ImageTag::compute(
        &recipe,
        Some(&agent_hash(b"agent build 2").await),
        &bookworm_packages(),
    );
    assert_ne!(first.tag, second.tag);
    assert_eq!(first.packages_sha256, second.packages_sha256);
}

#[tokio::test]
async fn security_update_new_tag() {
    let recipe = Recipe::workspace();
    let agent = agent_hash(b"agent build 1").await;
    let before = ImageTag::compute(&recipe, Some(&agent), &bookworm_packages());

    let mut updated = bookworm_packages();
    updated.insert("libc6".into(), "2.36-9+deb12u15".into());
    let after = ImageTag::compute(&recipe, Some(&agent), &updated);

    assert_ne!(before.tag, after.tag);
    assert_eq!(before.recipe_sha256, after.recipe_sha256);
}
