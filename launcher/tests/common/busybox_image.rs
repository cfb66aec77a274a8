//! A busybox image imported through the Docker API, shared by the launcher's and the
//! broker's tests (the broker's include this file by path).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptions;
use futures::StreamExt as _;
use launcher::DockerRuntime;
use sha2::{Digest as _, Sha256};

pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

static BUSYBOX: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Returns a statically linked busybox: `$STRONGROOM_TEST_BUSYBOX`, or one extracted
/// from Debian's `busybox-static` package (`apt-get download`, then `dpkg-deb -x`).
pub fn busybox() -> PathBuf {
    let mut cached = BUSYBOX.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = cached.as_ref() {
        return path.clone();
    }
    if let Some(path) = std::env::var_os("STRONGROOM_TEST_BUSYBOX") {
        *cached = Some(PathBuf::from(path));
        return cached.clone().unwrap();
    }

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("launcher-busybox-static");
    let binary = dir.join("busybox");
    if !binary.exists() {
        // Test processes run at once, so each works in its own scratch directory and
        // renames the binary into place, which replaces the file atomically.
        let scratch = dir.join(format!("scratch-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        let download = Command::new("apt-get")
            .args(["download", "busybox-static"])
            .current_dir(&scratch)
            .output()
            .unwrap();
        assert!(
            download.status.success(),
            "apt-get download busybox-static failed (run apt-get update first): {}",
            String::from_utf8_lossy(&download.stderr)
        );
        let deb = std::fs::read_dir(&scratch)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
            .expect("apt-get download left a .deb file");
        let extract = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(scratch.join("root"))
            .output()
            .unwrap();
        assert!(
            extract.status.success(),
            "dpkg-deb -x failed: {}",
            String::from_utf8_lossy(&extract.stderr)
        );
        std::fs::rename(scratch.join("root/bin/busybox"), &binary).unwrap();
        std::fs::remove_dir_all(&scratch).unwrap();
    }
    *cached = Some(binary.clone());
    binary
}

pub fn docker_runtime() -> DockerRuntime {
    DockerRuntime::connect(Path::new(DOCKER_SOCKET), "1.41", Duration::from_secs(60)).unwrap()
}

pub fn docker() -> Docker {
    docker_runtime().client().clone()
}

/// Imports a one-binary busybox image through the Docker API (`docker import`) and
/// returns its tag. Its command is `busybox sleep`, so containers keep running.
pub async fn test_image() -> String {
    let busybox = std::fs::read(busybox()).unwrap();
    let digest = hex::encode(Sha256::digest(&busybox));
    let repo = "strongroom-launcher-test/busybox";
    let tag = format!("{repo}:{}", &digest[..12]);

    let docker = docker();
    if docker.inspect_image(&tag).await.is_ok() {
        return tag;
    }

    let mut archive = tar::Builder::new(Vec::new());
    for dir in [
        "bin",
        "tmp",
        "home",
        "home/strongroom",
        "etc",
        "proc",
        "sys",
        "dev",
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        header.set_size(0);
        archive
            .append_data(&mut header, format!("{dir}/"), std::io::empty())
            .unwrap();
    }
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(busybox.len() as u64);
    archive
        .append_data(&mut header, "bin/busybox", busybox.as_slice())
        .unwrap();
    let archive = archive.into_inner().unwrap();

    let options = CreateImageOptions {
        from_src: Some("-".to_owned()),
        repo: Some(repo.to_owned()),
        tag: Some(digest[..12].to_owned()),
        changes: vec![r#"CMD ["/bin/busybox", "sleep", "86400"]"#.to_owned()],
        ..Default::default()
    };
    let mut progress = docker.create_image(
        Some(options),
        Some(bollard::body_full(archive.into())),
        None,
    );
    while let Some(step) = progress.next().await {
        step.expect("importing the test image failed");
    }
    tag
}
