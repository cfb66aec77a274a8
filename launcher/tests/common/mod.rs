//! Test support: a busybox image imported through the Docker API, a launcher per test
//! instance id, and a guard that removes everything labelled with that id.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    CreateImageOptions, ListContainersOptions, ListNetworksOptions, RemoveContainerOptions,
};
use futures::StreamExt as _;
use launcher::labels;
use launcher::{DockerRuntime, LaunchSession, Launcher, LauncherConfig, SiteLimits};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
pub const WAIT: Duration = Duration::from_secs(60);

/// A seccomp profile that allows everything except mkdir, so a test can prove the
/// profile reached the container.
pub const TEST_SECCOMP_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    { "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO" }
  ]
}"#;

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

/// Everything labelled with one test instance id; removed on drop.
pub struct TestInstance {
    pub instance_id: String,
    pub dir: tempfile::TempDir,
    pub config: LauncherConfig,
}

impl TestInstance {
    pub async fn new() -> Self {
        let image = test_image().await;
        let dir = tempfile::tempdir().unwrap();
        let seccomp = dir.path().join("seccomp.json");
        std::fs::write(&seccomp, TEST_SECCOMP_PROFILE).unwrap();
        let instance_id = format!("test-{}", Uuid::new_v4().simple());

        let config = LauncherConfig {
            instance_id: instance_id.clone(),
            image,
            seccomp_profile: seccomp,
            socket_path: dir.path().join("launcher.sock"),
            max_sessions: 12,
            sweep_interval_secs: 1,
            ..LauncherConfig::default()
        };
        Self {
            instance_id,
            dir,
            config,
        }
    }

    pub fn launcher(&self) -> Launcher {
        Launcher::new(self.config.clone(), Arc::new(docker_runtime())).unwrap()
    }

    /// Removes every object of this instance and fails if any remains.
    pub async fn finish(self) {
        remove_instance_objects(&self.instance_id).await;
        let (containers, networks) = count_instance_objects(&self.instance_id).await;
        assert_eq!(
            (containers, networks),
            (0, 0),
            "objects of {} remain after cleanup",
            self.instance_id
        );
    }
}

impl Drop for TestInstance {
    fn drop(&mut self) {
        let instance_id = self.instance_id.clone();
        // Drop may run inside a Tokio runtime, so the cleanup gets its own thread.
        let cleanup = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(remove_instance_objects(&instance_id));
        });
        if cleanup.join().is_err() {
            eprintln!("cleanup of test instance {} panicked", self.instance_id);
        }
    }
}

fn label_filter(label: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![label.to_owned()])])
}

/// Lists the ids of the instance's containers and networks in both label forms.
async fn instance_object_ids(instance_id: &str) -> (Vec<String>, Vec<String>) {
    let docker = docker();
    let mut containers = Vec::new();
    let mut networks = Vec::new();
    for filter in labels::instance_filters(instance_id) {
        let listed = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filter(&filter)),
                ..Default::default()
            }))
            .await
            .unwrap();
        containers.extend(listed.into_iter().filter_map(|container| container.id));
        let listed = docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(label_filter(&filter)),
            }))
            .await
            .unwrap();
        networks.extend(listed.into_iter().filter_map(|network| network.id));
    }
    containers.sort();
    containers.dedup();
    networks.sort();
    networks.dedup();
    (containers, networks)
}

/// Removes every container and network labelled with `instance_id`, in either label form.
pub async fn remove_instance_objects(instance_id: &str) {
    let docker = docker();
    let (containers, networks) = instance_object_ids(instance_id).await;
    for id in containers {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        if let Err(error) = docker.remove_container(&id, Some(options)).await {
            eprintln!("cleanup: removing container {id} failed: {error}");
        }
    }
    for id in networks {
        if let Err(error) = docker.remove_network(&id).await {
            eprintln!("cleanup: removing network {id} failed: {error}");
        }
    }
}

/// Counts the containers and networks labelled with `instance_id`, in either label form.
pub async fn count_instance_objects(instance_id: &str) -> (usize, usize) {
    let (containers, networks) = instance_object_ids(instance_id).await;
    (containers.len(), networks.len())
}

/// A launch request whose agent secret is `secret` (only its hash is sent).
pub fn launch_request(secret: &str) -> LaunchSession {
    LaunchSession {
        session_id: Uuid::new_v4(),
        owner: "alice@example.org".to_owned(),
        site: "demo-bank".to_owned(),
        limits: SiteLimits {
            memory_bytes: 256 << 20,
            nano_cpus: 500_000_000,
            pids: 64,
            shm_bytes: 1 << 30,
        },
        start_url: "https://bank.example/login".to_owned(),
        egress_proxy_port: 3128,
        agent_secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        allowed_hosts: vec![
            "bank.example".to_owned(),
            "*.static.bank.example".to_owned(),
        ],
        extra_ca_certs: Vec::new(),
        downloads: None,
    }
}

/// Runs a command in a container and returns (exit code, output).
pub async fn exec(container: &str, cmd: &[&str]) -> (i64, String) {
    use bollard::exec::{CreateExecOptions, StartExecResults};

    let docker = docker();
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut output = String::new();
    if let StartExecResults::Attached {
        output: mut stream, ..
    } = docker.start_exec(&created.id, None).await.unwrap()
    {
        while let Some(chunk) = stream.next().await {
            output.push_str(&chunk.unwrap().to_string());
        }
    }
    let inspected = docker.inspect_exec(&created.id).await.unwrap();
    (inspected.exit_code.unwrap_or(-1), output)
}
