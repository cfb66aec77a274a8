//! Runs mmdebstrap: once with `--simulate` to resolve the package set, once for real to
//! write the root file system tar.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::Progress;
use crate::error::BuildError;
use crate::recipe::Recipe;

/// Installed Debian packages: name to version.
pub type PackageVersions = BTreeMap<String, String>;

const PROGRAM: &str = "mmdebstrap";
/// Output lines kept for an error message when mmdebstrap fails.
const TAIL_LINES: usize = 30;
/// File the customize hook writes the installed package list into, in the work directory.
const INSTALLED_LIST: &str = "installed-packages.tsv";
/// Path of the setup script inside the root file system while it runs.
const SETUP_IN_IMAGE: &str = "/tmp/strongroom-setup.sh";

/// Inputs of one mmdebstrap run, staged in `work_dir`.
pub(crate) struct Staging<'a> {
    pub recipe: &'a Recipe,
    /// deb822 sources file.
    pub sources: &'a Path,
    /// Copy of the host binary the recipe places, if any.
    pub host_binary: Option<&'a Path>,
    pub work_dir: &'a Path,
}

/// Resolves the full package set the recipe would install today, Essential packages
/// included, with `mmdebstrap --simulate`. Needs the mirror but downloads no packages.
pub(crate) async fn resolve(
    recipe: &Recipe,
    sources: &Path,
    work_dir: &Path,
    progress: Progress<'_>,
) -> Result<PackageVersions, BuildError> {
    let mut command = base_command(recipe);
    command
        .arg("--verbose")
        .arg("--simulate")
        .arg(&recipe.suite)
        .arg("/dev/null")
        .arg(sources)
        .current_dir(work_dir);

    let lines = run(command, progress, |line| !is_apt_action(line)).await?;
    let packages = parse_simulated_installs(&lines);
    if packages.is_empty() {
        return Err(BuildError::EmptyResolution {
            recipe: recipe.name.clone(),
        });
    }
    Ok(packages)
}

/// Builds the root file system into `<work_dir>/rootfs.tar` and returns the tar's path
/// with the packages dpkg reports as installed in it.
pub(crate) async fn build_rootfs(
    staging: &Staging<'_>,
    progress: Progress<'_>,
) -> Result<(PathBuf, PackageVersions), BuildError> {
    let recipe = staging.recipe;
    let files_dir = staging.work_dir.join("files");
    tokio::fs::create_dir_all(&files_dir)
        .await
        .map_err(BuildError::io(&files_dir))?;

    let mut command = base_command(recipe);
    for filter in &recipe.dpkg_path_filters {
        command.arg(format!("--dpkgopt={filter}"));
    }

    // Hooks run on the host with the root file system as "$1" and the work directory
    // as their working directory. Recipe paths are validated to contain no quotes.
    for (index, file) in recipe.files.iter().enumerate() {
        let staged = files_dir.join(index.to_string());
        tokio::fs::write(&staged, &file.contents)
            .await
            .map_err(BuildError::io(&staged))?;
        command.arg(install_hook(
            &format!("files/{index}"),
            file.mode,
            &file.path,
        ));
    }
    if let (Some(binary), Some(path)) = (staging.host_binary, &recipe.host_binary_path) {
        let relative = binary.strip_prefix(staging.work_dir).unwrap_or(binary);
        command.arg(install_hook(&relative.to_string_lossy(), 0o755, path));
    }
    if let Some(script) = &recipe.setup_script {
        let staged = files_dir.join("setup.sh");
        tokio::fs::write(&staged, script)
            .await
            .map_err(BuildError::io(&staged))?;
        command.arg(install_hook("files/setup.sh", 0o700, SETUP_IN_IMAGE));
        command.arg(format!(
            "--customize-hook=chroot \"$1\" /bin/sh {SETUP_IN_IMAGE}"
        ));
        command.arg(format!("--customize-hook=rm -f \"$1{SETUP_IN_IMAGE}\""));
    }
    command.arg(format!(
        "--customize-hook=chroot \"$1\" dpkg-query --show --showformat='${{Package}}\\t${{Version}}\\n' > {INSTALLED_LIST}"
    ));

    let tar = staging.work_dir.join("rootfs.tar");
    command
        .arg(&recipe.suite)
        .arg(&tar)
        .arg(staging.sources)
        .current_dir(staging.work_dir);
    run(command, progress, |_| true).await?;

    let list_path = staging.work_dir.join(INSTALLED_LIST);
    let list = tokio::fs::read_to_string(&list_path)
        .await
        .map_err(BuildError::io(&list_path))?;
    Ok((tar, parse_installed_list(&list)))
}

fn base_command(recipe: &Recipe) -> Command {
    let mut command = Command::new(PROGRAM);
    command
        .arg("--mode=root")
        .arg("--variant=apt")
        .arg(format!("--include={}", recipe.packages.join(",")))
        .arg("--aptopt=Acquire::Languages \"none\"")
        .env("LC_ALL", "C.UTF-8")
        .kill_on_drop(true);
    command
}

fn install_hook(outside: &str, mode: u32, inside: &str) -> String {
    format!("--customize-hook=install -D -o 0 -g 0 -m {mode:04o} '{outside}' \"$1{inside}\"")
}

/// Runs the command, forwards the output lines `forward` accepts to `progress`, and
/// returns all output lines (stdout and stderr, each in order).
async fn run(
    mut command: Command,
    progress: Progress<'_>,
    forward: impl Fn(&str) -> bool,
) -> Result<Vec<String>, BuildError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| BuildError::ToolMissing {
        program: PROGRAM,
        package: PROGRAM,
        source,
    })?;

    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (out_lines, err_lines) = tokio::join!(
        read_lines(stdout, progress, &forward),
        read_lines(stderr, progress, &forward)
    );
    let status = child.wait().await.map_err(BuildError::io(PROGRAM))?;

    let mut lines = out_lines;
    lines.extend(err_lines);
    if !status.success() {
        let tail: VecDeque<&str> = lines
            .iter()
            .map(String::as_str)
            .skip(lines.len().saturating_sub(TAIL_LINES))
            .collect();
        return Err(BuildError::ToolFailed {
            program: PROGRAM,
            status,
            tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(lines)
}

async fn read_lines(
    stream: impl AsyncRead + Unpin,
    progress: Progress<'_>,
    forward: &impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut reader = BufReader::new(stream).lines();
    let mut lines = Vec::new();
    // A read error ends the stream; the exit status then reports the failure.
    while let Ok(Some(line)) = reader.next_line().await {
        if forward(&line) {
            progress(&line);
        }
        lines.push(line);
    }
    lines
}

fn is_apt_action(line: &str) -> bool {
    ["Inst ", "Conf ", "Remv "]
        .iter()
        .any(|p| line.starts_with(p))
}

/// Parses apt's simulation lines such as
/// `Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []`.
pub(crate) fn parse_simulated_installs(lines: &[String]) -> PackageVersions {
    let mut packages = PackageVersions::new();
    for line in lines {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        // An upgrade prints the old version in brackets first: `Inst pkg [old] (new ...)`.
        let version = if version.starts_with('[') {
            words.next().unwrap_or("")
        } else {
            version
        };
        if let Some(version) = version.strip_prefix('(') {
            packages.insert(name.to_string(), version.to_string());
        }
    }
    packages
}

/// Parses `dpkg-query --show` output with a `name<TAB>version` format.
pub(crate) fn parse_installed_list(text: &str) -> PackageVersions {
    text.lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, version)| (name.to_string(), version.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_installs_parsed() {
        let lines = [
            "I: simulate installing remaining packages inside the chroot...",
            "Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []",
            "Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])",
            "Inst apt [2.6.0] (2.6.1 Debian-Security:12/oldstable-security [amd64])",
            "Inst chromium (156.0.8078.114-1~deb12u1 Debian-Security:12/oldstable-security [amd64])",
        ]
        .map(String::from);
        let packages = parse_simulated_installs(&lines);
        assert_eq!(packages.len(), 3);
        assert_eq!(packages["libc6"], "2.36-9+deb12u14");
        assert_eq!(packages["apt"], "2.6.1");
        assert_eq!(packages["chromium"], "156.0.8078.114-1~deb12u1");
    }

    #[test]
    fn installed_list_parsed() {
        let packages = parse_installed_list("bash\t5.2.15-2+b13\ntini\t0.19.0-1+b3\n");
        assert_eq!(packages["bash"], "5.2.15-2+b13");
        assert_eq!(packages.len(), 2);
    }
}
