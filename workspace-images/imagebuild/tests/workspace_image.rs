//! Builds the workspace image for real (mmdebstrap from the host's Debian mirror, import
//! through the Docker API) and runs Chromium in a hardened container from it.
//!
//! Needs root, mmdebstrap, a Docker engine on /var/run/docker.sock and the Debian mirror,
//! and takes 3 to 7 minutes on two shared cores, most of it in mmdebstrap. The image is
//! tagged into `strongroom-test/workspace` and removed at the end, with every container
//! the test created.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
};
use futures::{FutureExt, StreamExt};
use imagebuild::seccomp::{DOCKER_DEFAULT_PROFILE, workspace_security_opts};
use imagebuild::{BuildOptions, BuildOutcome, Recipe, connect_docker, current_tag, find_image};

const TEST_REPOSITORY: &str = "strongroom-test/workspace";
const TEST_LABEL: &str = "org.strongroom.test";
const GIB: i64 = 1 << 30;
/// Upper bound of one Chromium command inside the container.
const CHROMIUM_TIMEOUT_S: u32 = 90;

/// Placeholder for strongroom-agent: keeps the container running so the test can exec.
const PLACEHOLDER_AGENT: &str =
    "#!/bin/sh\n# strongroom-agent placeholder for imagebuild tests\nexec sleep 900\n";

const TEST_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>Strongroom test page</title></head>
<body style="margin:40px;font-size:42px;background:#fff;color:#000">
<p>Strongroom test page: Latin</p><p>Кириллица: Привет, мир</p><p>CJK: 你好，世界 こんにちは 안녕하세요</p>
</body></html>"#;

fn progress(line: &str) {
    eprintln!("[build] {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_image_builds_and_sandboxes_chromium() {
    let docker = connect_docker().expect("Docker socket at /var/run/docker.sock");
    let run_id = format!("imagebuild-{}-{}", std::process::id(), rand_suffix());
    let work = tempfile::tempdir().unwrap();

    remove_test_images(&docker).await;
    let result = AssertUnwindSafe(build_and_check(&docker, &run_id, work.path()))
        .catch_unwind()
        .await;
    remove_test_containers(&docker, &run_id).await;
    remove_test_images(&docker).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn build_and_check(docker: &Docker, run_id: &str, work: &Path) {
    let agent = work.join("strongroom-agent");
    std::fs::write(&agent, PLACEHOLDER_AGENT).unwrap();
    let mut recipe = Recipe::workspace();
    recipe.repository = TEST_REPOSITORY.into();
    let mut options = BuildOptions::new(recipe.clone(), Some(agent.clone()));
    options.work_dir = Some(work.to_path_buf());

    // First build: mmdebstrap runs and the tar is imported.
    let built = imagebuild::build(docker, &options, &progress)
        .await
        .unwrap();
    eprintln!(
        "built {} in {:.0} s",
        built.image.reference,
        built.elapsed.as_secs_f64()
    );
    assert_eq!(built.outcome, BuildOutcome::Built);
    let image = built.image.clone();
    let agent_sha256 = imagebuild::file_sha256(&agent).await.unwrap();
    assert_eq!(
        image.host_binary_sha256.as_deref(),
        Some(agent_sha256.as_str())
    );
    for package in [
        "chromium",
        "xvfb",
        "xauth",
        "tini",
        "libavcodec59",
        "libvpx7",
        "fonts-wqy-zenhei",
    ] {
        assert!(
            image.packages.contains_key(package),
            "{package} is installed"
        );
    }

    // The same inputs are not rebuilt, with or without re-resolving the packages.
    let again = imagebuild::build(docker, &options, &progress)
        .await
        .unwrap();
    assert_eq!(again.outcome, BuildOutcome::AlreadyPresent);
    assert_eq!(again.image.reference, image.reference);
    // NOTE: fails if the Debian archive publishes an update for one of the installed
    // packages during this test, because the re-resolved set then differs.
    let resolved = current_tag(&options, &progress).await.unwrap();
    assert_eq!(resolved.tag, image.tag);
    assert_eq!(resolved.recipe_sha256, recipe.hash());
    assert_eq!(
        resolved.host_binary_sha256.as_deref(),
        Some(agent_sha256.as_str())
    );
    options.refresh = true;
    let refreshed = imagebuild::build(docker, &options, &progress)
        .await
        .unwrap();
    assert_eq!(refreshed.outcome, BuildOutcome::AlreadyPresent);
    assert_eq!(refreshed.image.tag, image.tag);

    let found = find_image(docker, &recipe)
        .await
        .unwrap()
        .expect("the built image is found");
    assert_eq!(found.reference, image.reference);
    assert_eq!(found.id, image.id);
    assert_eq!(found.packages, image.packages);

    check_image_config(docker, &image.reference).await;
    check_hardened_container(docker, run_id, &image.reference, work).await;
    check_default_profile_breaks_sandbox(docker, run_id, &image.reference).await;
}

async fn check_image_config(docker: &Docker, reference: &str) {
    let inspect = docker.inspect_image(reference).await.unwrap();
    let config = inspect.config.unwrap();
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(
        config.entrypoint.unwrap(),
        ["/usr/bin/tini", "--", "/usr/local/bin/strongroom-agent"]
    );
    assert_eq!(config.working_dir.as_deref(), Some("/home/strongroom"));
    let labels = config.labels.unwrap();
    assert_eq!(labels[imagebuild::LABEL_RECIPE], "workspace");
    assert!(labels[imagebuild::LABEL_PACKAGES].contains("chromium=156."));
}

/// Builds the `HostConfig` the launcher uses for a workspace, with `network_mode: none`
/// in place of the session network.
fn hardened_host_config(security_opt: Vec<String>) -> HostConfig {
    HostConfig {
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(security_opt),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([
            ("/tmp".into(), "rw,nosuid,nodev,noexec,size=512m".into()),
            (
                "/home/strongroom".into(),
                "rw,nosuid,nodev,noexec,size=256m,uid=1000,gid=1000,mode=0700".into(),
            ),
        ])),
        shm_size: Some(GIB),
        memory: Some(2 * GIB),
        memory_swap: Some(2 * GIB),
        pids_limit: Some(512),
        ulimits: Some(vec![ResourcesUlimits {
            name: Some("core".into()),
            soft: Some(0),
            hard: Some(0),
        }]),
        network_mode: Some("none".into()),
        ..Default::default()
    }
}

async fn start_container(
    docker: &Docker,
    run_id: &str,
    image: &str,
    security_opt: Vec<String>,
) -> String {
    let body = ContainerCreateBody {
        image: Some(image.into()),
        user: Some("1000:1000".into()),
        labels: Some(HashMap::from([(
            TEST_LABEL.to_string(),
            run_id.to_string(),
        )])),
        host_config: Some(hardened_host_config(security_opt)),
        ..Default::default()
    };
    let name = format!("{run_id}-{}", rand_suffix());
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    let created = docker.create_container(Some(options), body).await.unwrap();
    docker.start_container(&created.id, None).await.unwrap();
    created.id
}

fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{nanos:x}")
}

struct ExecOutput {
    code: i64,
    stdout: String,
    stderr: String,
}

/// Runs `sh -c script` in the container as its user and waits for it to end.
async fn exec(docker: &Docker, container: &str, script: &str) -> ExecOutput {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(vec!["/bin/sh", "-c", script]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let started = docker.start_exec(&created.id, None).await.unwrap();
    let StartExecResults::Attached { mut output, .. } = started else {
        panic!("exec started detached");
    };
    let limit = Duration::from_secs(u64::from(CHROMIUM_TIMEOUT_S) + 30);
    tokio::time::timeout(limit, async {
        while let Some(chunk) = output.next().await {
            match chunk.unwrap() {
                bollard::container::LogOutput::StdOut { message } => {
                    stdout.extend_from_slice(&message)
                }
                bollard::container::LogOutput::StdErr { message } => {
                    stderr.extend_from_slice(&message)
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("exec of {script:?} did not end within {limit:?}"));

    let inspect = docker.inspect_exec(&created.id).await.unwrap();
    ExecOutput {
        code: inspect.exit_code.unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn headless(args: &str) -> String {
    format!(
        "timeout {CHROMIUM_TIMEOUT_S} chromium --headless --no-first-run --user-data-dir=$(mktemp -d) {args}"
    )
}

async fn check_hardened_container(docker: &Docker, run_id: &str, image: &str, work: &Path) {
    let container = start_container(docker, run_id, image, workspace_security_opts()).await;

    // The agent's process is unprivileged, confined and cannot gain privileges.
    let status = exec(
        docker,
        &container,
        "id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/1/status",
    )
    .await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status.stdout.starts_with("1000\n"), "{}", status.stdout);
    assert!(
        status.stdout.contains("CapEff:\t0000000000000000"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("NoNewPrivs:\t1"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("Seccomp:\t2"), "{}", status.stdout);

    let image_files = exec(
        docker,
        &container,
        "find /usr/share/doc -type f ! -name copyright | wc -l; ls /usr/share/man 2>/dev/null | wc -l; \
         find / -xdev -type f -perm /6000 | wc -l; touch /etc/x 2>/dev/null && echo writable || echo read-only",
    )
    .await;
    assert_eq!(
        image_files.stdout, "0\n0\n0\nread-only\n",
        "docs, man pages, setuid files, rootfs"
    );

    let write_page = format!(
        "cat > /tmp/page.html <<'EOF'\n{TEST_PAGE}\nEOF\ncp /tmp/page.html /tmp/other.html"
    );
    assert_eq!(exec(docker, &container, &write_page).await.code, 0);

    // Without the session policy file only URLBlocklist ["*"] applies: nothing loads.
    let blocked = exec(
        docker,
        &container,
        &headless("--dump-dom file:///tmp/page.html"),
    )
    .await;
    assert_blocked(&blocked, "page without a session allowlist");

    let policy = "mkdir -p /tmp/strongroom-policy && echo '{\"URLAllowlist\": [\"file:///tmp/page.html\"]}' > /tmp/strongroom-policy/session.json";
    assert_eq!(exec(docker, &container, policy).await.code, 0);

    // Headless --dump-dom drives the page over DevTools internally, so this also shows
    // that the managed policies leave the DevTools protocol usable.
    let allowed = exec(
        docker,
        &container,
        &headless("--dump-dom file:///tmp/page.html"),
    )
    .await;
    assert!(
        allowed.stdout.contains("Strongroom test page: Latin"),
        "allowlisted page not rendered: {}\n{}",
        allowed.stdout,
        allowed.stderr
    );
    assert!(
        !allowed.stderr.contains("--no-sandbox"),
        "{}",
        allowed.stderr
    );

    let other = exec(
        docker,
        &container,
        &headless("--dump-dom file:///tmp/other.html"),
    )
    .await;
    assert_blocked(&other, "page missing from the allowlist");
    let devtools = exec(
        docker,
        &container,
        &headless("--dump-dom devtools://devtools/bundled/inspector.html"),
    )
    .await;
    assert_blocked(&devtools, "DevTools front end");

    let screenshot = exec(
        docker,
        &container,
        &format!(
            "{} >/dev/null 2>&1; base64 -w0 /tmp/shot.png",
            headless("--window-size=1000,400 --screenshot=/tmp/shot.png file:///tmp/page.html")
        ),
    )
    .await;
    assert_eq!(
        screenshot.code, 0,
        "screenshot failed: {}",
        screenshot.stderr
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(screenshot.stdout.trim())
        .unwrap();
    let path = save_screenshot(&png, work);
    let dark = count_dark_pixels(&png);
    eprintln!("screenshot {} has {dark} dark pixels", path.display());
    assert!(
        dark > 5_000,
        "the page's text is visible in the screenshot ({dark} dark pixels)"
    );

    check_renderers_sandboxed(docker, &container).await;
}

/// Headless Chromium reports a page the policy blocks on stderr and dumps no DOM.
fn assert_blocked(output: &ExecOutput, what: &str) {
    assert!(
        output.stderr.contains("net::ERR_BLOCKED_BY_ADMINISTRATOR"),
        "{what} was not blocked by policy: {}",
        output
            .stderr
            .lines()
            .filter(|l| !l.contains("dbus"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !output.stdout.contains("Strongroom test page"),
        "{what}: {}",
        output.stdout
    );
}

/// Starts Xvfb and a visible Chromium as the agent does, then checks that every renderer
/// runs in a user namespace of its own under Chromium's seccomp-bpf filter.
async fn check_renderers_sandboxed(docker: &Docker, container: &str) {
    let start = "(Xvfb :99 -screen 0 1280x800x24 -nolisten tcp >/tmp/xvfb.log 2>&1 &) ; \
                 for i in $(seq 100); do [ -e /tmp/.X11-unix/X99 ] && break; sleep 0.1; done; \
                 (DISPLAY=:99 chromium --no-first-run --user-data-dir=/tmp/headful file:///tmp/page.html >/tmp/chromium.log 2>&1 &)";
    assert_eq!(exec(docker, container, start).await.code, 0);

    let list = r#"browser=$(pgrep -o -x chromium)
        echo "browser $(readlink /proc/$browser/ns/user) $(grep '^Seccomp_filters:' /proc/$browser/status | cut -f2)"
        for p in $(pgrep -f -- '--type=(zygote|renderer)'); do
          t=$(tr '\0' ' ' < /proc/$p/cmdline | grep -o -- '--type=[a-z-]*' | head -1)
          echo "$t $(readlink /proc/$p/ns/user) $(grep '^Seccomp_filters:' /proc/$p/status | cut -f2)"
        done"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let output = exec(docker, container, list).await.stdout;
        if output
            .lines()
            .any(|line| line.starts_with("--type=renderer"))
        {
            break output;
        }
        assert!(
            Instant::now() < deadline,
            "no renderer process within 60 s: {output}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("{report}");

    let browser: Vec<&str> = report
        .lines()
        .find_map(|line| line.strip_prefix("browser "))
        .expect("browser process found")
        .split_whitespace()
        .collect();
    let (browser_ns, browser_filters) = (browser[0], browser[1].parse::<u32>().unwrap());
    let renderers: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("--type=renderer"))
        .collect();
    assert!(!renderers.is_empty());
    for renderer in renderers {
        let fields: Vec<&str> = renderer.split_whitespace().collect();
        assert_ne!(
            fields[1], browser_ns,
            "renderer in the browser's user namespace: {renderer}"
        );
        // Every process carries Docker's filter; Chromium's seccomp-bpf sandbox adds its own.
        let filters: u32 = fields[2].parse().unwrap();
        assert!(
            filters > browser_filters,
            "renderer without Chromium's seccomp filter: {renderer}"
        );
    }
}

/// Under Docker's default profile the same container cannot start Chromium's sandbox,
/// which shows that the workspace profile is what makes it work.
async fn check_default_profile_breaks_sandbox(docker: &Docker, run_id: &str, image: &str) {
    let default_profile: serde_json::Value = serde_json::from_str(DOCKER_DEFAULT_PROFILE).unwrap();
    let security_opt = vec![
        "no-new-privileges:true".to_string(),
        format!("seccomp={default_profile}"),
    ];
    let container = start_container(docker, run_id, image, security_opt).await;
    let output = exec(docker, &container, &headless("--dump-dom about:blank")).await;
    assert_ne!(
        output.code, 0,
        "Chromium started under Docker's default profile: {}",
        output.stdout
    );
    assert!(
        output.stderr.contains("No usable sandbox!"),
        "expected Chromium to find no usable sandbox: {}",
        output.stderr
    );
}

fn save_screenshot(png: &[u8], work: &Path) -> PathBuf {
    let dir = option_env!("CARGO_TARGET_TMPDIR").map_or_else(|| work.to_path_buf(), PathBuf::from);
    let path = dir.join("workspace-screenshot.png");
    std::fs::write(&path, png).unwrap();
    path
}

fn count_dark_pixels(png_bytes: &[u8]) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buffer).unwrap();
    let channels = info.color_type.samples();
    buffer[..info.buffer_size()]
        .chunks(channels)
        .filter(|pixel| pixel.iter().take(3).map(|&v| u32::from(v)).sum::<u32>() < 3 * 96)
        .count()
}

async fn remove_test_containers(docker: &Docker, run_id: &str) {
    let filters = HashMap::from([("label".to_string(), vec![format!("{TEST_LABEL}={run_id}")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default();
    for container in containers {
        let id = container.id.unwrap_or_default();
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(error) = docker.remove_container(&id, Some(remove)).await {
            eprintln!("removing test container {id} failed: {error}");
        }
    }
}

async fn remove_test_images(docker: &Docker) {
    let filters = HashMap::from([("reference".to_string(), vec![TEST_REPOSITORY.to_string()])]);
    let options = ListImagesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let images = docker.list_images(Some(options)).await.unwrap_or_default();
    for image in images {
        let remove = RemoveImageOptionsBuilder::default().force(true).build();
        if let Err(error) = docker.remove_image(&image.id, Some(remove), None).await {
            eprintln!("removing test image {} failed: {error}", image.id);
        }
    }
}
