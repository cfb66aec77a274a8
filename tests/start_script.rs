//! `scripts/start.sh` refuses to start a second demo while one runs, checks
//! `DEMO_BANK_SUBNET` and, through the binary, the configuration, and finds the Rust
//! toolchain of the user who ran `sudo`. The
//! script runs from a copy in a temporary directory, so it finds neither the helper
//! scripts nor the sources. A run that passes a check fails on the next step instead,
//! or on a stand-in that a test puts there. The script checks for root first, so these
//! tests run as root (scripts/test.sh does). `scripts/install-deps.sh` installs the
//! test suite's packages only when asked.

use std::path::Path;
use std::process::Command;

/// Copies `scripts/start.sh` into `dir/scripts/` and returns the copy's path.
fn copy_start_script(dir: &Path) -> std::path::PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/start.sh");
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let copy = dir.join("scripts/start.sh");
    std::fs::copy(&source, &copy).unwrap();
    copy
}

/// Puts a `scripts/install-deps.sh` that installs nothing beside the copy.
fn stub_install_deps(dir: &Path) {
    write_executable(&dir.join("scripts/install-deps.sh"), "#!/bin/sh\nexit 0\n");
}

/// Writes a shell script with mode 0755.
fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;

    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A `cargo` that prints its toolchain variables and fails, so that a run stops at
/// the build.
const FAKE_CARGO: &str = "#!/bin/sh\necho \"fake cargo RUSTUP_HOME=$RUSTUP_HOME CARGO_HOME=${CARGO_HOME:-unset}\"\nexit 3\n";

/// Runs the copied script with a PATH of `path_dirs` followed by the system's
/// directories, and without any STRONGROOM_ or DEMO_BANK_ variable but `env`.
fn run_script(script: &Path, path_dirs: &[&Path], env: &[(&str, &str)]) -> std::process::Output {
    let mut path: Vec<String> = path_dirs
        .iter()
        .map(|dir| dir.display().to_string())
        .collect();
    path.push(SYSTEM_PATH.to_owned());
    isolated_command("bash")
        .arg(script)
        .env("PATH", path.join(":"))
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Returns a command without the variables that steer the script or its toolchain.
fn isolated_command(program: &str) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars()
        .filter(|(name, _)| name.starts_with("STRONGROOM_") || name.starts_with("DEMO_BANK_"))
    {
        command.env_remove(name);
    }
    command
        .env_remove("SUDO_USER")
        .env_remove("RUSTUP_HOME")
        .env_remove("CARGO_HOME");
    command
}

/// A `docker` that finds no container, as on a host where no demo runs, so that a demo
/// running on the test machine does not stop the script before what a test checks.
const FAKE_DOCKER: &str = "#!/bin/sh\necho \"Error: No such object\" >&2\nexit 1\n";

/// Copies the script into `dir` beside a stand-in `install-deps.sh`, and returns the
/// copy and a `bin` directory with [`FAKE_CARGO`] and [`FAKE_DOCKER`].
fn copy_with_fake_cargo(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let script = copy_start_script(dir);
    stub_install_deps(dir);
    let bin = dir.join("bin");
    write_executable(&bin.join("cargo"), FAKE_CARGO);
    write_executable(&bin.join("docker"), FAKE_DOCKER);
    (script, bin)
}

/// Directories of the system's programs, without any user's `~/.cargo/bin`.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[test]
fn invalid_demo_bank_subnet_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (script, bin) = copy_with_fake_cargo(dir.path());

    for (subnet, launcher_range, expected) in [
        (
            "foo.bar/24",
            None,
            "DEMO_BANK_SUBNET=foo.bar/24 is not an IPv4 range",
        ),
        (
            "10.0.0.0/33",
            None,
            "DEMO_BANK_SUBNET=10.0.0.0/33 is not an IPv4 range",
        ),
        ("172.31.254.7/24", None, "has host bits set"),
        ("172.31.254.0/29", None, "smaller than a /28"),
        (
            "172.21.7.0/24",
            None,
            "overlaps launcher.subnet_range 172.21.0.0/16",
        ),
        (
            "172.16.0.0/12",
            None,
            "overlaps launcher.subnet_range 172.21.0.0/16",
        ),
        (
            "10.9.1.0/24",
            Some("\"10.9.0.0/16\""),
            "overlaps launcher.subnet_range 10.9.0.0/16",
        ),
        (
            "10.9.1.0/24",
            Some("10.9.0.0/99"),
            "STRONGROOM_LAUNCHER__SUBNET_RANGE=10.9.0.0/99",
        ),
    ] {
        let mut env = vec![("DEMO_BANK_SUBNET", subnet)];
        if let Some(range) = launcher_range {
            env.push(("STRONGROOM_LAUNCHER__SUBNET_RANGE", range));
        }

        let output = run_script(&script, &[&bin], &env);

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{subnet}: {stderr}");
        assert!(stderr.contains(expected), "{subnet}: {stderr}");
        assert!(!stderr.contains("fake cargo"), "{subnet}: {stderr}");
    }
}

#[test]
fn valid_demo_bank_subnet_reaches_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let (script, bin) = copy_with_fake_cargo(dir.path());

    for subnet in ["172.31.254.0/24", "10.213.7.0/28"] {
        let output = run_script(&script, &[&bin], &[("DEMO_BANK_SUBNET", subnet)]);

        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{subnet}: {stderr}");
        assert!(stdout.contains("fake cargo"), "{subnet}: {stdout}{stderr}");
        assert!(!stderr.contains("DEMO_BANK_SUBNET"), "{subnet}: {stderr}");
    }
}

/// Runs the copied script as if `sudo` had been run by `rustfan`, whose home is
/// `home`: a private mount namespace gets a passwd file with that account.
fn run_script_under_sudo(dir: &Path, script: &Path, home: &Path) -> std::process::Output {
    let passwd = dir.join("passwd");
    let mut accounts = std::fs::read_to_string("/etc/passwd").unwrap();
    accounts.push_str(&format!(
        "rustfan:x:4242:4242::{}:/bin/sh\n",
        home.display()
    ));
    std::fs::write(&passwd, accounts).unwrap();
    let inner = format!(
        "mount --bind {} /etc/passwd && exec bash {}",
        passwd.display(),
        script.display()
    );
    let bin = dir.join("bin");
    write_executable(&bin.join("docker"), FAKE_DOCKER);
    isolated_command("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c", &inner])
        .env("PATH", format!("{}:{SYSTEM_PATH}", bin.display()))
        .env("SUDO_USER", "rustfan")
        .output()
        .unwrap()
}

#[test]
fn sudo_user_toolchain_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let script = copy_start_script(dir.path());
    stub_install_deps(dir.path());
    let home = dir.path().join("home");
    write_executable(&home.join(".cargo/bin/cargo"), FAKE_CARGO);

    let output = run_script_under_sudo(dir.path(), &script, &home);

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("Using the Rust toolchain of rustfan"),
        "{stdout}"
    );
    let rustup_home = format!("RUSTUP_HOME={}", home.join(".rustup").display());
    assert!(stdout.contains(&rustup_home), "{stdout}");
    assert!(stdout.contains("CARGO_HOME=unset"), "{stdout}");
}

#[test]
fn missing_cargo_names_the_command_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let script = copy_start_script(dir.path());
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    let output = run_script_under_sudo(dir.path(), &script, &home);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nor in ~rustfan/.cargo/bin"), "{stderr}");
    assert!(
        stderr.contains(
            "sudo env \"PATH=$HOME/.cargo/bin:$PATH\" RUSTUP_HOME=$HOME/.rustup scripts/start.sh"
        ),
        "{stderr}"
    );
}

#[test]
fn second_start_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let script = copy_start_script(dir.path());
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    // The first demo's script holds this lock while it and its broker run.
    let lock = std::fs::File::create(dir.path().join("data/start.lock")).unwrap();
    lock.try_lock().unwrap();

    let output = Command::new("bash").arg(&script).output().unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a Strongroom demo is already running"),
        "{stderr}"
    );
    assert!(stderr.contains("Ctrl-C"), "{stderr}");
    assert!(!stderr.contains("install-deps"), "{stderr}");
}

#[test]
fn start_after_first_demo_stopped_passes_lock() {
    let dir = tempfile::tempdir().unwrap();
    let script = copy_start_script(dir.path());
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    // A lock file left by a finished demo holds no lock.
    std::fs::File::create(dir.path().join("data/start.lock")).unwrap();

    let output = Command::new("bash").arg(&script).output().unwrap();

    // The copy has no scripts/install-deps.sh, so the run stops right after the lock.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("already running"), "{stderr}");
    assert!(stderr.contains("install-deps.sh"), "{stderr}");
}

/// Runs `scripts/install-deps.sh ARGS` with stand-ins that report every package as
/// missing and record the `apt-get` command lines, and returns the exit code and
/// the packages that `apt-get install` was given.
fn install_deps_with(args: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let log = dir.path().join("apt-get.log");
    write_executable(&bin.join("dpkg-query"), "#!/bin/sh\nexit 1\n");
    write_executable(&bin.join("docker"), "#!/bin/sh\nexit 0\n");
    write_executable(
        &bin.join("apt-get"),
        &format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display()),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-deps.sh");

    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .env("PATH", format!("{}:{SYSTEM_PATH}", bin.display()))
        .output()
        .unwrap();

    let commands = std::fs::read_to_string(&log).unwrap_or_default();
    let installed = commands
        .lines()
        .filter(|line| line.starts_with("install"))
        .flat_map(|line| line.split_whitespace())
        .filter(|word| !word.starts_with('-') && *word != "install")
        .map(str::to_owned)
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), installed, stderr)
}

#[test]
fn install_deps_splits_run_and_test_packages() {
    let (code, run, stderr) = install_deps_with(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    for package in ["libclang-dev", "mmdebstrap", "iptables", "curl", "python3"] {
        assert!(
            run.iter().any(|p| p == package),
            "{package} missing from {run:?}"
        );
    }
    for package in [
        "postgresql",
        "chromium",
        "chromium-driver",
        "ffmpeg",
        "docker-compose",
    ] {
        assert!(!run.iter().any(|p| p == package), "{package} in {run:?}");
    }

    let (code, deploy, stderr) = install_deps_with(&["--deploy"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(deploy.iter().any(|p| p == "docker-compose"), "{deploy:?}");
    assert!(!deploy.iter().any(|p| p == "postgresql"), "{deploy:?}");

    let (code, test, stderr) = install_deps_with(&["--test"]);
    assert_eq!(code, Some(0), "{stderr}");
    for package in run.iter().map(String::as_str).chain([
        "postgresql",
        "chromium",
        "chromium-driver",
        "xvfb",
        "ffmpeg",
        "dpkg-dev",
        "docker-compose",
    ]) {
        assert!(
            test.iter().any(|p| p == package),
            "{package} missing from {test:?}"
        );
    }

    let (code, installed, stderr) = install_deps_with(&["--tests"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown option '--tests'"), "{stderr}");
    assert!(installed.is_empty(), "{installed:?}");
}

#[test]
fn test_script_installs_test_packages() {
    let test_script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test.sh"))
            .unwrap();

    assert!(
        test_script
            .lines()
            .any(|line| line.trim() == "scripts/install-deps.sh --test"),
        "scripts/test.sh does not run scripts/install-deps.sh --test"
    );
}

/// A `strongroom` stand-in whose `check-config` rejects the configuration as the real
/// binary does: the problem on standard error and exit code 2.
const REJECTING_STRONGROOM: &str = "#!/bin/sh\n[ \"$1\" = check-config ] || exit 9\necho 'error: invalid configuration (built-in defaults): 1 problem' >&2\necho '  - server.listen: stand-in problem' >&2\nexit 2\n";

#[test]
fn configuration_is_checked_before_build() {
    let dir = tempfile::tempdir().unwrap();
    let (script, bin) = copy_with_fake_cargo(dir.path());
    write_executable(
        &dir.path().join("target/release/strongroom"),
        REJECTING_STRONGROOM,
    );

    let output = run_script(&script, &[&bin], &[]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("server.listen: stand-in problem"),
        "{stderr}"
    );
    assert!(stderr.contains("the configuration is invalid"), "{stderr}");
    assert!(!stdout.contains("fake cargo"), "{stdout}");
}

#[test]
fn configuration_is_checked_right_after_first_build() {
    let dir = tempfile::tempdir().unwrap();
    let script = copy_start_script(dir.path());
    stub_install_deps(dir.path());
    let bin = dir.path().join("bin");
    // The first build creates the binary; the check then runs before the image builds.
    let binary = dir.path().join("target/release/strongroom");
    let cargo = format!(
        "#!/bin/sh\nmkdir -p {}\ncat > {} <<'STANDIN'\n{REJECTING_STRONGROOM}STANDIN\nchmod 755 {}\nexit 0\n",
        binary.parent().unwrap().display(),
        binary.display(),
        binary.display()
    );
    write_executable(&bin.join("cargo"), &cargo);
    write_executable(&bin.join("docker"), FAKE_DOCKER);

    let output = run_script(&script, &[&bin], &[]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("Building strongroom"), "{stdout}");
    assert!(
        stderr.contains("server.listen: stand-in problem"),
        "{stderr}"
    );
    assert!(!stdout.contains("Building the workspace"), "{stdout}");
}

#[test]
fn portal_address_comes_from_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (script, bin) = copy_with_fake_cargo(dir.path());
    // What `strongroom check-config` prints for a file that sets server.listen.
    write_executable(
        &dir.path().join("target/release/strongroom"),
        "#!/bin/sh\n[ \"$1\" = check-config ] || exit 9\necho 'configuration is valid (listen 0.0.0.0:9443, database sqlite, data directory data)'\necho 'portal: https://0.0.0.0:9443'\necho 'tls: generated'\necho 'data_dir: data'\n",
    );

    let output = run_script(
        &script,
        &[&bin],
        &[("STRONGROOM_SERVER__LISTEN", "127.0.0.1:8080")],
    );

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("the portal will serve https://0.0.0.0:9443"),
        "{stdout}"
    );
    assert!(!stdout.contains("8080"), "{stdout}");
}
