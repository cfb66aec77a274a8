//! The launcher and broker services of the compose file, started with docker-compose
//! from the locally built broker image. An account created inside the broker container
//! signs in over HTTP and launches a session, and the session's workspace container
//! runs until the session is ended.
//!
//! Only the launcher and broker services run, with SQLite in the data volume. The
//! PostgreSQL and Traefik images come from a registry, which this machine lacks, and
//! `host-setup` would change the host's firewall, so this test starts neither.
//!
//! Needs the broker image (`strongroom image build --recipe broker`) and the workspace
//! image, which `scripts/test.sh` builds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use broker::auth::totp::TotpSecret;
use uuid::Uuid;
use zeroize::Zeroizing;

const PASSWORD: &str = "Compose-test-passphrase-7!";
/// Session subnets of this test, apart from the other tests' ranges.
const SUBNET_RANGE: &str = "172.26.0.0/16";

fn compose_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/docker-compose.yml")
}

fn newest_image(repository: &str) -> String {
    let output = Command::new("docker")
        .args(["images", repository, "--format", "{{.Tag}}"])
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_else(|| panic!("{repository} image missing: run `strongroom image build`"))
        .to_owned()
}

/// A compose project of the launcher and broker services; `down -v` on drop.
struct Project {
    name: String,
    dir: tempfile::TempDir,
    broker_tag: String,
    docker_gid: String,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        std::fs::write(
            dir.path().join("config/strongroom.toml"),
            format!(
                r#"data_dir = "/var/lib/strongroom"
[server]
listen = "127.0.0.1:0"
[launcher]
mode = "external"
subnet_range = "{SUBNET_RANGE}"
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("config/sites.toml"),
            r#"[[site]]
name = "demo"
display_name = "Demo Bank"
start_url = "https://bank.invalid/login"
allowed_hosts = ["bank.invalid"]
recording_retention_days = 30
"#,
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets/postgres-password"), "unused\n").unwrap();
        // The override mounts the site file into the broker container.
        std::fs::write(
            dir.path().join("override.yml"),
            r#"version: "2.4"
services:
  broker:
    volumes:
      - ./config/sites.toml:/etc/strongroom/sites.toml:ro
"#,
        )
        .unwrap();

        let gid = std::fs::metadata("/var/run/docker.sock")
            .map(|metadata| std::os::unix::fs::MetadataExt::gid(&metadata))
            .expect("the Docker socket exists");
        Project {
            name: format!(
                "strongroom-compose-{}",
                &Uuid::new_v4().simple().to_string()[..12]
            ),
            dir,
            broker_tag: newest_image("strongroom/broker"),
            docker_gid: gid.to_string(),
        }
    }

    fn compose(&self) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("STRONGROOM_BROKER_TAG", &self.broker_tag)
            .env("DOCKER_GID", &self.docker_gid)
            .env("STRONGROOM_HOST", "strongroom.test")
            .arg("--project-name")
            .arg(&self.name)
            .arg("--project-directory")
            .arg(self.dir.path())
            .arg("-f")
            .arg(compose_file())
            .arg("-f")
            .arg(self.dir.path().join("override.yml"));
        command
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = self.compose();
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if stdin.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().expect("docker-compose runs");
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "docker-compose {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Returns the broker's address once its log names it. The broker binds port 0 on
    /// the host's loopback, so that parallel tests never compete for a port.
    fn base(&self) -> Option<String> {
        let output = self
            .compose()
            .args(["logs", "--no-color", "broker"])
            .output()
            .ok()?;
        let logs = String::from_utf8_lossy(&output.stdout);
        let marker = "Strongroom is listening on ";
        logs.lines().find_map(|line| {
            line.split_once(marker)
                .map(|(_, url)| url.trim().to_owned())
        })
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self
            .compose()
            .args(["down", "--volumes", "--remove-orphans", "--timeout", "30"])
            .output();
    }
}

async fn wait_for<T, F, Fut>(timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn session_containers(session_id: &str) -> usize {
    let label = format!("label=strongroom.session={session_id}");
    let output = Command::new("docker")
        .args(["ps", "-q", "--filter", &label])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_broker_launches_a_session() {
    let project = Project::new();
    project.run(&["up", "--detach", "--no-deps", "launcher"], None);
    project.run(&["up", "--detach", "--no-deps", "broker"], None);

    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = wait_for(Duration::from_secs(60), || async { project.base() }).await;
    wait_for(Duration::from_secs(60), || async {
        let response = http.get(format!("{base}/healthz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    // The compose file sets the public URL from STRONGROOM_HOST; the portal accepts
    // form posts with that origin only.
    let origin = "https://strongroom.test";

    // Accounts and sites are managed with the same binary inside the broker container.
    let added = project.run(
        &[
            "exec",
            "-T",
            "broker",
            "strongroom",
            "user",
            "add",
            "person",
            "--role",
            "user",
            "--print-totp",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    let stdout = String::from_utf8_lossy(&added.stdout);
    let seed = stdout
        .lines()
        .find_map(|line| line.strip_prefix("secret (base32): "))
        .unwrap_or_else(|| panic!("no TOTP secret in: {stdout}"))
        .trim()
        .to_owned();
    let totp = TotpSecret::from_bytes(Zeroizing::new(
        totp_rs::Secret::Encoded(seed).to_bytes().unwrap(),
    ));
    project.run(
        &[
            "exec",
            "-T",
            "broker",
            "strongroom",
            "site",
            "import",
            "/etc/strongroom/sites.toml",
        ],
        None,
    );
    project.run(
        &[
            "exec",
            "-T",
            "broker",
            "strongroom",
            "site",
            "grant",
            "person",
            "demo",
        ],
        None,
    );

    let code = totp.code_at(chrono::Utc::now().timestamp() as u64);
    let signed_in = http
        .post(format!("{base}/auth/login"))
        .header("origin", origin)
        .form(&[
            ("username", "person"),
            ("password", PASSWORD),
            ("code", code.as_str()),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        signed_in.status().is_redirection(),
        "sign-in failed: {}",
        signed_in.status()
    );

    let launched = http
        .post(format!("{base}/sessions"))
        .header("origin", origin)
        .form(&[("site", "demo")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        launched.status(),
        reqwest::StatusCode::SEE_OTHER,
        "{}",
        launched.text().await.unwrap()
    );
    let location = launched.headers()["location"].to_str().unwrap().to_owned();
    let session_id = location.trim_start_matches("/sessions/").to_owned();
    assert_eq!(
        session_containers(&session_id),
        1,
        "no running workspace for {session_id}"
    );

    let ended = http
        .post(format!("{base}{location}/end"))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert!(
        ended.status().is_redirection(),
        "ending failed: {}",
        ended.status()
    );
    wait_for(Duration::from_secs(60), || async {
        (session_containers(&session_id) == 0).then_some(())
    })
    .await;

    project.run(&["down", "--volumes", "--timeout", "30"], None);
}

/// Runs `strongroom host-setup` from the broker image as the compose file's `host-setup`
/// service does (root, read-only, all capabilities dropped, `cap_add` given), but in
/// the container's own network namespace so that the host's firewall stays untouched.
fn run_host_setup(cap_add: &[&str]) -> Output {
    let name = format!(
        "strongroom-host-setup-{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let image = format!("strongroom/broker:{}", newest_image("strongroom/broker"));
    let mut command = Command::new("docker");
    command.args(["run", "--rm", "--name", &name, "--network", "none"]);
    command.args(["--user", "0:0", "--read-only", "--cap-drop", "ALL"]);
    command.args([
        "--security-opt",
        "no-new-privileges",
        "--tmpfs",
        "/run:size=1m",
    ]);
    command.args(["--tmpfs", "/tmp:size=16m"]);
    for capability in cap_add {
        command.args(["--cap-add", capability]);
    }
    command.args([image.as_str(), "host-setup"]);
    let output = command.output().expect("docker runs");
    // `--rm` removes the container; this covers a run that docker itself aborted.
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    output
}

#[test]
fn host_setup_needs_only_net_admin() {
    let with = run_host_setup(&["NET_ADMIN"]);
    assert!(
        with.status.success(),
        "host-setup failed with NET_ADMIN: {}",
        String::from_utf8_lossy(&with.stderr)
    );
    let stdout = String::from_utf8_lossy(&with.stdout);
    assert!(stdout.contains("host firewall rules installed"), "{stdout}");

    let without = run_host_setup(&[]);
    assert!(
        !without.status.success(),
        "host-setup succeeded without NET_ADMIN: {}",
        String::from_utf8_lossy(&without.stdout)
    );
}
