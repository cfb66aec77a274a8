//! Running the launcher: `strongroom launcher` itself, and the embedded mode in which
//! `strongroom serve` keeps one as a child process.
//!
//! Even embedded, the launcher is a separate process: the broker process never opens
//! the Docker socket, so a compromised portal still has to get through the launcher's
//! typed requests to start anything.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use launcher::{LauncherClient, LauncherConfig};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::launcher::BUILTIN_SECCOMP_PROFILE;
use crate::http::ReadinessCheck;

/// Time the launcher child gets to stop after SIGTERM.
const CHILD_STOP_GRACE: Duration = Duration::from_secs(15);
/// Shortest and longest wait before a crashed launcher child is started again.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// Returns the launcher's configuration with the broker's instance id filled in, and
/// writes out the built-in seccomp profile when none is configured.
pub fn resolved_config(config: &Config, instance_id: uuid::Uuid) -> anyhow::Result<LauncherConfig> {
    let mut launcher = config.launcher.config.clone();
    launcher.instance_id = instance_id.to_string();
    if config.launcher.builtin_seccomp {
        write_if_changed(
            &launcher.seccomp_profile,
            BUILTIN_SECCOMP_PROFILE.as_bytes(),
        )?;
    }
    launcher.validate().map_err(|errors| {
        let problems: Vec<String> = errors
            .iter()
            .map(|error| format!("launcher.{}: {}", error.key, error.problem))
            .collect();
        anyhow::anyhow!("invalid launcher configuration: {}", problems.join("; "))
    })?;
    Ok(launcher)
}

fn write_if_changed(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let temporary = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&temporary, content)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot rename {} into place", temporary.display()))
}

/// Tag used when no workspace image has been built: launches then fail with a message
/// that names `strongroom image build`.
const UNBUILT_IMAGE: &str = "strongroom/workspace:not-built";

/// Runs `strongroom launcher` until SIGTERM or SIGINT. `image_source` names where
/// `launcher.image` was set, or is `None` to use the newest built image.
pub async fn run_standalone(
    mut config: LauncherConfig,
    image_source: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match &image_source {
        None => {
            config.image = newest_built_image()
                .await?
                .unwrap_or_else(|| UNBUILT_IMAGE.to_owned())
        }
        Some(source) => report_missing_image(&config, source).await,
    }
    tracing::info!(
        image = config.image.as_str(),
        "Launcher uses this workspace image"
    );
    launcher::serve(config, shutdown).await
}

/// Finds the newest workspace image made by `strongroom image build` by its labels.
async fn newest_built_image() -> anyhow::Result<Option<String>> {
    let docker = imagebuild::connect_docker().context("cannot connect to the Docker engine")?;
    let found = imagebuild::find_image(&docker, &imagebuild::Recipe::workspace())
        .await
        .context("cannot list workspace images")?;
    if found.is_none() {
        tracing::warn!("No workspace image is built yet; run `strongroom image build`");
    }
    Ok(found.map(|image| image.reference))
}

/// Logs an error when the image that `launcher.image` names is not in the engine, with
/// the fixes that work. Nothing is pulled. When the engine does not respond, `/readyz`
/// and the first launch report that instead.
async fn report_missing_image(config: &LauncherConfig, source: &str) {
    use launcher::Runtime;

    let image = config.image.as_str();
    let runtime = match launcher::DockerRuntime::connect(
        &config.docker_socket,
        &config.docker_api_version,
        config.docker_timeout(),
    ) {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::warn!(image, error = %error, "Cannot check the configured workspace image");
            return;
        }
    };
    match runtime.image_present(image).await {
        Ok(true) => return,
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(image, error = %error, "Cannot check the configured workspace image");
            return;
        }
    }
    let newest = newest_built_image().await;
    let built = match &newest {
        Ok(Some(reference)) => BuiltImage::Newest(reference),
        Ok(None) => BuiltImage::NoneBuilt,
        Err(_) => BuiltImage::Unknown,
    };
    tracing::error!(
        image,
        source,
        "{}",
        missing_image_advice(image, source, built)
    );
}

/// Knowledge of the images `strongroom image build` made.
#[derive(Debug, Clone, Copy)]
pub enum BuiltImage<'a> {
    /// The newest one, such as `strongroom/workspace:373aacbfecf1f6a36726`.
    Newest(&'a str),
    NoneBuilt,
    /// Not known, as in the broker process, which has no Docker access.
    Unknown,
}

/// Explains that the image `launcher.image` names is missing and how to fix it.
/// `strongroom image build` tags its images by their content, so building never creates
/// a configured name. The fixes are to drop the key or to tag a built image.
pub fn missing_image_advice(image: &str, source: &str, built: BuiltImage<'_>) -> String {
    let tag_command = match built {
        BuiltImage::Newest(newest) => format!("docker tag {newest} {image}"),
        BuiltImage::NoneBuilt | BuiltImage::Unknown => format!(
            "docker tag $(docker images --filter label={}=workspace --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | head -n 1) {image}",
            imagebuild::LABEL_RECIPE
        ),
    };
    let build_first = match built {
        BuiltImage::NoneBuilt => {
            "no workspace image is built yet, so run `strongroom image build` first; then "
        }
        BuiltImage::Newest(_) | BuiltImage::Unknown => "",
    };
    format!(
        "workspace image {image} (launcher.image, set by {source}) does not exist in the Docker engine, \
and images are never pulled. `strongroom image build` names its images by their content, so it \
does not create {image}: {build_first}remove launcher.image from {source} so that the launcher \
uses the newest image `strongroom image build` made, or give a built image that name with `{tag_command}`"
    )
}

/// Builds the workspace image from Debian packages and imports it; prints progress.
pub async fn build_workspace_image(agent: PathBuf, refresh: bool) -> anyhow::Result<String> {
    if !agent.is_file() {
        anyhow::bail!(
            "agent binary {} not found; build it with `cargo build --release -p strongroom-agent` or pass --agent PATH",
            agent.display()
        );
    }
    let docker = imagebuild::connect_docker().context("cannot connect to the Docker engine")?;
    let mut options = imagebuild::BuildOptions::new(imagebuild::Recipe::workspace(), Some(agent));
    options.refresh = refresh;
    let progress = |line: &str| println!("{line}");
    let built = imagebuild::build(&docker, &options, &progress).await?;
    Ok(built.image.reference)
}

/// Keeps a `strongroom launcher` child running until `shutdown`, restarting it with
/// backoff when it exits on its own.
pub async fn supervise_child(config_path: Option<PathBuf>, shutdown: CancellationToken) {
    let mut backoff = RESTART_BACKOFF.0;
    loop {
        let mut command = match std::env::current_exe() {
            Ok(exe) => Command::new(exe),
            Err(error) => {
                tracing::error!(error = %error, "Cannot find the strongroom binary to start the launcher");
                return;
            }
        };
        if let Some(path) = &config_path {
            command.arg("--config").arg(path);
        }
        // In its own process group, a Ctrl-C in the terminal reaches only the broker,
        // which ends the live sessions through the launcher before it stops the launcher.
        command
            .arg("launcher")
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        stop_with_parent(&mut command);

        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                tracing::error!(error = %error, "Cannot start the launcher process");
                return;
            }
        };
        tracing::info!(pid = child.id(), "Launcher process started");
        let started = tokio::time::Instant::now();

        tokio::select! {
            status = child.wait() => {
                tracing::error!(status = %exit_status(&status), "Launcher process exited; starting it again");
                if started.elapsed() > RESTART_BACKOFF.1 {
                    backoff = RESTART_BACKOFF.0;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(RESTART_BACKOFF.1);
            }
            _ = shutdown.cancelled() => {
                stop_child(&mut child).await;
                return;
            }
        }
    }
}

/// Makes the child receive SIGTERM when the broker dies, even by SIGKILL, where
/// `kill_on_drop` never runs. Otherwise the old launcher would keep serving beside the
/// one the restarted broker starts.
///
/// NOTE: Linux delivers the signal when the thread that forked the child exits. The
/// child is spawned from a Tokio worker thread, which lives as long as the runtime.
fn stop_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and calls only prctl, getppid and
    // _exit, which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // The broker may have died before prctl took effect.
            if nix::unistd::getppid() != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Describes a child's exit for a log field, such as "exit status: 1".
fn exit_status(status: &std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("unknown ({error})"),
    }
}

async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        if let Err(error) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            tracing::warn!(error = %error, "Cannot signal the launcher process");
        }
    }
    match tokio::time::timeout(CHILD_STOP_GRACE, child.wait()).await {
        Ok(status) => tracing::info!(status = %exit_status(&status), "Launcher process stopped"),
        Err(_) => {
            tracing::warn!("Launcher process did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}

/// Builds the `/readyz` checks that the launcher reports: the Docker engine and the
/// workspace image. `image_source` names where `launcher.image` was set, if it was.
pub fn readiness_checks(
    client: LauncherClient,
    image_source: Option<String>,
) -> Vec<Arc<dyn ReadinessCheck>> {
    let client = Arc::new(client.with_timeout(Duration::from_secs(3)));
    vec![
        Arc::new(EngineCheck(client.clone())),
        Arc::new(ImageCheck {
            client,
            image_source,
        }),
    ]
}

struct EngineCheck(Arc<LauncherClient>);

impl ReadinessCheck for EngineCheck {
    fn name(&self) -> &'static str {
        "docker_engine"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let report = self
                .0
                .health()
                .await
                .map_err(|error| format!("launcher unreachable: {error}"))?;
            match report.engine_error {
                None => Ok(()),
                Some(error) => Err(error),
            }
        })
    }
}

struct ImageCheck {
    client: Arc<LauncherClient>,
    image_source: Option<String>,
}

impl ReadinessCheck for ImageCheck {
    fn name(&self) -> &'static str {
        "workspace_image"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let report = self
                .client
                .health()
                .await
                .map_err(|error| format!("launcher unreachable: {error}"))?;
            match (report.image_present, &self.image_source) {
                (Some(true), _) => Ok(()),
                // The broker has no Docker access, so the advice names the newest
                // built image through a `docker images` query.
                (Some(false), Some(source)) => Err(missing_image_advice(
                    &report.image,
                    source,
                    BuiltImage::Unknown,
                )),
                (Some(false), None) => Err(format!(
                    "no workspace image is built yet ({} is missing); run `strongroom image build`",
                    report.image
                )),
                (None, _) => Err("the Docker engine does not answer".to_owned()),
            }
        })
    }
}

/// Returns the host firewall that `strongroom host-setup` installs for this configuration.
pub fn firewall_config(config: &Config) -> egress::host_setup::FirewallConfig {
    egress::host_setup::FirewallConfig {
        session_range: config.launcher.config.subnet_range,
        proxy_port: config.sessions.egress_proxy_port,
        bridge_prefix: config.launcher.config.bridge_prefix.clone(),
        ..egress::host_setup::FirewallConfig::default()
    }
}

/// `/readyz` check that the host firewall rules are installed. Reading them needs
/// CAP_NET_ADMIN; without it the check fails with a message naming that capability.
pub struct FirewallCheck(pub egress::host_setup::FirewallConfig);

impl ReadinessCheck for FirewallCheck {
    fn name(&self) -> &'static str {
        "host_firewall"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let problems = egress::host_setup::check(&self.0, &egress::host_setup::Runner::host())
                .await
                .map_err(|error| {
                    format!(
                        "cannot read the firewall rules ({error}); the check needs CAP_NET_ADMIN"
                    )
                })?;
            match problems.first() {
                None => Ok(()),
                Some(first) => Err(format!(
                    "{} rule problem(s), first: {first}; run `strongroom host-setup` as root",
                    problems.len()
                )),
            }
        })
    }
}
