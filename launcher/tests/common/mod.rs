//! Test support: a busybox image imported through the Docker API, a launcher per test
//! instance id, and a guard that removes everything labelled with that id.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, RemoveContainerOptions,
};
use futures::StreamExt as _;
use launcher::labels;
use launcher::{LaunchSession, Launcher, LauncherConfig, SiteLimits};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

mod busybox_image;
pub use busybox_image::*;

pub const WAIT: Duration = Duration::from_secs(60);

/// A seccomp profile that allows everything except mkdir, so a test can prove the
/// profile reached the container.
pub const TEST_SECCOMP_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    { "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO" }
  ]
}"#;

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
