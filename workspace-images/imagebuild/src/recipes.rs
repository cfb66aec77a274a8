//! Recipes of the images beside the workspace image: the demo bank and the broker.

use crate::recipe::{ImageConfig, Recipe, parse_package_list};

const DPKG_EXCLUDES: &str = include_str!("../../workspace/dpkg-excludes.cfg");
const DEMO_BANK_PACKAGES: &str = include_str!("../../demo-bank/packages.txt");
const BROKER_PACKAGES: &str = include_str!("../../broker/packages.txt");
const BROKER_SETUP: &str = include_str!("../../broker/setup.sh");

/// Path of the demo bank binary inside its image.
pub const DEMO_BANK_IMAGE_PATH: &str = "/usr/local/bin/strongroom-demo-bank";
/// Path of the `strongroom` binary inside the broker image.
pub const BROKER_IMAGE_PATH: &str = "/usr/local/bin/strongroom";
/// User that runs the broker image's processes unless compose overrides it.
pub const BROKER_UID: u32 = 10001;
/// User and group id that the demo bank image runs as. Debian policy leaves 65000 to
/// 65533 unallocated (neither normal accounts, 1000 to 59999, nor package accounts use
/// them), so the files `scripts/start.sh` gives this id belong to no person on the host.
pub const DEMO_BANK_UID: u32 = 65100;
/// Directory where the demo bank image expects its account files and token.
pub const DEMO_BANK_SECRETS_DIR: &str = "/run/demo-bank";

impl Recipe {
    /// Returns the demo bank recipe: its binary under tini, run by [`DEMO_BANK_UID`], HTTPS on
    /// 8443 and the `/received` report on 8081. Account files and the token are mounted at
    /// [`DEMO_BANK_SECRETS_DIR`].
    pub fn demo_bank() -> Self {
        Self {
            name: "demo-bank".into(),
            repository: "strongroom/demo-bank".into(),
            suite: "bookworm".into(),
            packages: parse_package_list(DEMO_BANK_PACKAGES),
            files: Vec::new(),
            setup_script: None,
            dpkg_path_filters: parse_package_list(DPKG_EXCLUDES),
            host_binary_path: Some(DEMO_BANK_IMAGE_PATH.into()),
            config: ImageConfig {
                user: format!("{DEMO_BANK_UID}:{DEMO_BANK_UID}"),
                entrypoint: vec![
                    "/usr/bin/tini".into(),
                    "--".into(),
                    DEMO_BANK_IMAGE_PATH.into(),
                ],
                cmd: vec![
                    "--account-dir".into(),
                    format!("{DEMO_BANK_SECRETS_DIR}/account"),
                    "--received-token-file".into(),
                    format!("{DEMO_BANK_SECRETS_DIR}/received-token"),
                ],
                env: vec![("LANG".into(), "C.UTF-8".into())],
                workdir: None,
            },
        }
    }

    /// Returns the broker recipe: `strongroom` under tini with FFmpeg's libraries for export and
    /// iptables for `host-setup`, run by uid [`BROKER_UID`] with its data directory at
    /// `/var/lib/strongroom`.
    pub fn broker() -> Self {
        Self {
            name: "broker".into(),
            repository: "strongroom/broker".into(),
            suite: "bookworm".into(),
            packages: parse_package_list(BROKER_PACKAGES),
            files: Vec::new(),
            setup_script: Some(BROKER_SETUP.into()),
            dpkg_path_filters: parse_package_list(DPKG_EXCLUDES),
            host_binary_path: Some(BROKER_IMAGE_PATH.into()),
            config: ImageConfig {
                user: format!("{BROKER_UID}:{BROKER_UID}"),
                entrypoint: vec![
                    "/usr/bin/tini".into(),
                    "--".into(),
                    BROKER_IMAGE_PATH.into(),
                ],
                cmd: vec!["serve".into()],
                env: vec![
                    ("STRONGROOM_DATA_DIR".into(), "/var/lib/strongroom".into()),
                    ("LANG".into(), "C.UTF-8".into()),
                ],
                workdir: Some("/var/lib/strongroom".into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_recipes_are_valid() {
        for recipe in [Recipe::demo_bank(), Recipe::broker()] {
            recipe.validate().unwrap();
            assert_ne!(recipe.hash(), Recipe::workspace().hash());
        }
    }

    #[test]
    fn demo_bank_runs_as_unallocated_uid() {
        let user = Recipe::demo_bank().config.user;

        assert_eq!(user, format!("{DEMO_BANK_UID}:{DEMO_BANK_UID}"));
        assert!(
            (65000..=65533).contains(&DEMO_BANK_UID),
            "{DEMO_BANK_UID} is in a range Debian allocates to accounts"
        );
    }

    #[test]
    fn broker_recipe_has_iptables_and_ffmpeg() {
        let packages = Recipe::broker().packages;
        for package in ["iptables", "libavformat59", "tini"] {
            assert!(packages.iter().any(|p| p == package), "{package} missing");
        }
    }

    #[test]
    fn broker_setup_owns_data_dir() {
        assert!(BROKER_SETUP.contains(&format!(
            "-o {BROKER_UID} -g {BROKER_UID} /var/lib/strongroom"
        )));
    }
}
