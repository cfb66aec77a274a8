//! `strongroom image build --recipe NAME`: builds one of Strongroom's images from Debian
//! packages with the binary it needs from the host.

use std::path::PathBuf;

use anyhow::Context;

/// The images `strongroom image build` can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageRecipe {
    /// The session container: Chromium, Xvfb and `strongroom-agent`.
    Workspace,
    /// The demo bank site: `strongroom-demo-bank`.
    DemoBank,
    /// The broker, launcher and host-setup image for the compose stack: `strongroom`.
    Broker,
}

impl ImageRecipe {
    fn recipe(self) -> imagebuild::Recipe {
        match self {
            Self::Workspace => imagebuild::Recipe::workspace(),
            Self::DemoBank => imagebuild::Recipe::demo_bank(),
            Self::Broker => imagebuild::Recipe::broker(),
        }
    }

    /// File name of the binary the image takes, looked up beside this executable.
    fn binary_name(self) -> &'static str {
        match self {
            Self::Workspace => "strongroom-agent",
            Self::DemoBank => "strongroom-demo-bank",
            Self::Broker => "strongroom",
        }
    }

    fn cargo_package(self) -> &'static str {
        match self {
            Self::Workspace => "strongroom-agent",
            Self::DemoBank => "strongroom-demo-bank",
            Self::Broker => "broker",
        }
    }
}

/// Builds `recipe`'s image with `binary`, or with the binary of the recipe's name
/// beside the running executable, and returns the image reference.
pub async fn build(
    recipe: ImageRecipe,
    binary: Option<PathBuf>,
    refresh: bool,
) -> anyhow::Result<String> {
    let binary = match binary {
        Some(path) => path,
        None => {
            let exe = std::env::current_exe().context("cannot locate the strongroom binary")?;
            exe.with_file_name(recipe.binary_name())
        }
    };
    if recipe == ImageRecipe::Workspace {
        return crate::launcher_process::build_workspace_image(binary, refresh).await;
    }
    if !binary.is_file() {
        anyhow::bail!(
            "binary {} not found; build it with `cargo build --release -p {}` or pass --binary PATH",
            binary.display(),
            recipe.cargo_package()
        );
    }

    let docker = imagebuild::connect_docker().context("cannot connect to the Docker engine")?;
    let mut options = imagebuild::BuildOptions::new(recipe.recipe(), Some(binary));
    options.refresh = refresh;
    let progress = |line: &str| println!("{line}");
    let built = imagebuild::build(&docker, &options, &progress).await?;
    Ok(built.image.reference)
}
