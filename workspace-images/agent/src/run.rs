//! Command-line arguments and the agent's lifecycle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use protocol::AgentControl;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::browser::Page;
use crate::cdp::Cdp;
use crate::hub::Hub;
use crate::input::InputCommand;
use crate::processes::{self, ChromiumOptions};
use crate::server::{self, Handlers};
use crate::stream::{self, StreamConfig};

/// Time children get to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Time the last messages get to reach the broker before exit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Exit status when Chromium exited on its own.
pub const EXIT_BROWSER_EXITED: u8 = 1;

/// Strongroom workspace agent. No argument carries a secret: the session secret is given
/// only as its SHA-256.
#[derive(Debug, clap::Parser)]
#[command(name = "strongroom-agent", version)]
pub struct Args {
    /// Address the broker connects to (WebSocket over TCP). Port 0 picks a free port.
    #[arg(long, env = "STRONGROOM_AGENT_LISTEN", default_value = "0.0.0.0:7000")]
    pub listen: SocketAddr,
    /// Lower-case hex SHA-256 of the per-session secret the broker authenticates with.
    #[arg(long, env = "STRONGROOM_AGENT_SECRET_SHA256")]
    pub secret_sha256: String,
    /// URL Chromium opens at start.
    #[arg(long, env = "STRONGROOM_START_URL")]
    pub start_url: String,
    /// Screen width in pixels (even, 64 to 4096).
    #[arg(long, default_value_t = 1280)]
    pub width: u32,
    /// Screen height in pixels (even, 64 to 4096).
    #[arg(long, default_value_t = 720)]
    pub height: u32,
    /// Width in pixels of the largest screen a viewer's resize can make (even, at
    /// least --width, at most 4096). Xvfb starts with a framebuffer of this size.
    #[arg(long, default_value_t = 3840)]
    pub max_width: u32,
    /// Height in pixels of the largest screen a viewer's resize can make (even, at
    /// least --height, at most 4096).
    #[arg(long, default_value_t = 2160)]
    pub max_height: u32,
    /// Chromium's device scale factor.
    #[arg(long, default_value_t = 1.0)]
    pub device_scale_factor: f32,
    /// Capture rate in frames per second (1 to 60).
    #[arg(long, default_value_t = 15)]
    pub fps: u32,
    /// Target video bitrate in bits per second.
    #[arg(long, default_value_t = 2_000_000)]
    pub bitrate: usize,
    /// Keyframe interval in seconds; an unchanged screen is re-sent this often.
    #[arg(long, default_value_t = 3)]
    pub keyframe_interval_secs: u64,
    /// Chromium's proxy (the session's egress proxy), for example `http://10.64.0.1:3128`.
    #[arg(long, env = "STRONGROOM_PROXY")]
    pub proxy_server: Option<String>,
    /// Chromium's UI language and `LANG`, for example `de-DE`.
    #[arg(long)]
    pub lang: Option<String>,
    /// Chromium binary.
    #[arg(long, default_value = "/usr/bin/chromium")]
    pub chromium: PathBuf,
    /// Xvfb binary.
    #[arg(long, default_value = "/usr/bin/Xvfb")]
    pub xvfb: PathBuf,
    /// Directory under which the throwaway Chromium profile is created (a tmpfs).
    #[arg(long, default_value = "/tmp")]
    pub profile_root: PathBuf,
    /// Host names the session's site allows (`bank.example`, `*.bank.example`),
    /// comma-separated. When given, the agent writes them as Chromium's `URLAllowlist`
    /// to `--session-policy` before starting Chromium; the image's managed policy
    /// blocks every other URL.
    #[arg(long, env = "STRONGROOM_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Extra CA certificates Chromium trusts in this session, each the standard base64
    /// of one certificate's DER bytes, comma-separated. The agent writes them as
    /// Chromium's `CACertificates` policy to `--session-policy`.
    #[arg(long, env = "STRONGROOM_CA_CERTIFICATES", value_delimiter = ',')]
    pub ca_certificates: Vec<String>,
    /// Directory Chromium saves downloads into (a size-limited tmpfs). When given, the
    /// session policy allows downloads without a save dialog and the agent sends each
    /// finished file to the broker; without it the policy blocks every download.
    #[arg(long, env = "STRONGROOM_DOWNLOAD_DIR", requires = "download_max_bytes")]
    pub download_dir: Option<PathBuf>,
    /// Largest download the agent sends, in bytes; a larger one is cancelled and
    /// reported to the broker as refused.
    #[arg(long, env = "STRONGROOM_DOWNLOAD_MAX_BYTES", requires = "download_dir")]
    pub download_max_bytes: Option<u64>,
    /// Where the per-session Chromium policy is written; the workspace image links its
    /// managed policy directory to this path.
    #[arg(long, default_value = "/tmp/strongroom-policy/session.json")]
    pub session_policy: PathBuf,
    /// Runs Chromium with `--no-sandbox`. Only for local tests as root outside a
    /// container; the workspace container never sets it.
    #[arg(long)]
    pub no_sandbox: bool,
}

impl Args {
    /// The download directory and cap when downloads are delivered.
    fn download_settings(&self) -> Option<crate::downloads::DownloadSettings> {
        Some(crate::downloads::DownloadSettings {
            dir: self.download_dir.clone()?,
            max_bytes: self.download_max_bytes?,
        })
    }

    fn validate(&self) -> anyhow::Result<[u8; 32]> {
        let hash =
            protocol::parse_sha256_hex(&self.secret_sha256).context("invalid --secret-sha256")?;
        for (name, value) in [("--width", self.width), ("--height", self.height)] {
            if !(protocol::limits::MIN_DIMENSION..=protocol::limits::MAX_DIMENSION).contains(&value)
                || value % 2 != 0
            {
                bail!("{name} {value} must be even and between 64 and 4096");
            }
        }
        for (name, value, screen) in [
            ("--max-width", self.max_width, ("--width", self.width)),
            ("--max-height", self.max_height, ("--height", self.height)),
        ] {
            if value > protocol::limits::MAX_DIMENSION || value % 2 != 0 || value < screen.1 {
                bail!(
                    "{name} {value} must be even, at most {} and at least {} {}",
                    protocol::limits::MAX_DIMENSION,
                    screen.0,
                    screen.1
                );
            }
        }
        if !(1..=60).contains(&self.fps) {
            bail!("--fps {} must be between 1 and 60", self.fps);
        }
        if !(0.5..=4.0).contains(&self.device_scale_factor) {
            bail!(
                "--device-scale-factor {} must be between 0.5 and 4",
                self.device_scale_factor
            );
        }
        if self.keyframe_interval_secs == 0 {
            bail!("--keyframe-interval-secs must be at least 1");
        }
        check_ca_certificates(&self.ca_certificates)?;
        if let Some(max) = self.download_max_bytes
            && !(1..=protocol::limits::MAX_DOWNLOAD_SIZE).contains(&max)
        {
            bail!(
                "--download-max-bytes {max} must be between 1 and {}",
                protocol::limits::MAX_DOWNLOAD_SIZE
            );
        }
        if let Some(dir) = &self.download_dir
            && !dir.is_absolute()
        {
            bail!("--download-dir {} must be an absolute path", dir.display());
        }
        processes::check_binary(&self.chromium)?;
        processes::check_binary(&self.xvfb)?;
        Ok(hash)
    }
}

/// Turns off core dumps and ptrace access by other processes of the same user, so the
/// credentials in memory cannot be read from a dump.
fn harden_process() -> anyhow::Result<()> {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_CORE, &no_core) != 0 {
            return Err(std::io::Error::last_os_error()).context("setting RLIMIT_CORE to 0");
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error()).context("clearing PR_SET_DUMPABLE");
        }
    }
    Ok(())
}

fn create_profile_dir(root: &std::path::Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut random = [0u8; 8];
    // SAFETY: getrandom writes at most `random.len()` bytes into the buffer.
    let read = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    if read != random.len() as isize {
        bail!("getrandom failed: {}", std::io::Error::last_os_error());
    }
    let dir = root.join(format!("strongroom-profile-{}", hex::encode(random)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Converts allowed host names to Chromium URL filter patterns: a bare name matches
/// only that host (a leading dot), `*.name` matches the name's subdomains.
pub fn url_allowlist(hosts: &[String]) -> Vec<String> {
    hosts
        .iter()
        .map(|host| host.trim().to_ascii_lowercase())
        .filter(|host| !host.is_empty())
        .map(|host| match host.strip_prefix("*.") {
            Some(domain) => domain.to_owned(),
            None => format!(".{host}"),
        })
        .collect()
}

/// Maximum number of extra CA certificates.
const MAX_CA_CERTIFICATES: usize = 8;
/// Maximum length of the base64 text of one certificate.
const MAX_CA_CERTIFICATE_LEN: usize = 16 * 1024;

/// Checks that each entry is non-empty standard base64 of bounded length.
fn check_ca_certificates(entries: &[String]) -> anyhow::Result<()> {
    if entries.len() > MAX_CA_CERTIFICATES {
        bail!(
            "--ca-certificates has {} entries; the maximum is {MAX_CA_CERTIFICATES}",
            entries.len()
        );
    }
    for (index, entry) in entries.iter().enumerate() {
        let base64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=';
        if entry.is_empty()
            || entry.len() > MAX_CA_CERTIFICATE_LEN
            || entry.len() % 4 != 0
            || !entry.bytes().all(base64)
        {
            bail!(
                "--ca-certificates entry {index} is not the base64 of one DER certificate \
                 (at most {MAX_CA_CERTIFICATE_LEN} characters, no PEM header)"
            );
        }
    }
    Ok(())
}

/// Chromium's `DownloadRestrictions` value that blocks every download.
const DOWNLOADS_BLOCKED: u32 = 3;
/// Chromium's `DownloadRestrictions` value that applies no special restriction.
const DOWNLOADS_ALLOWED: u32 = 0;

/// Writes the session's Chromium policy where the image's managed policy link points:
/// `URLAllowlist`, `CACertificates` and the download policies. Chromium reads the file
/// at start, so these apply to this session's browser only.
///
/// INVARIANT: the image's own policy file sets no download policy, because Chromium
/// gives the file that sorts last precedence and `strongroom.json` sorts after
/// `session.json`. The agent writes this file before every Chromium start, so
/// `DownloadRestrictions` is always set here: 3 (blocked) unless `downloads` is given.
fn write_session_policy(
    path: &std::path::Path,
    hosts: &[String],
    ca_certificates: &[String],
    downloads: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut policy = serde_json::Map::new();
    match downloads {
        Some(dir) => {
            policy.insert("DownloadRestrictions".into(), DOWNLOADS_ALLOWED.into());
            policy.insert("DownloadDirectory".into(), dir.display().to_string().into());
            policy.insert("PromptForDownloadLocation".into(), false.into());
        }
        None => {
            policy.insert("DownloadRestrictions".into(), DOWNLOADS_BLOCKED.into());
        }
    }
    if !hosts.is_empty() {
        policy.insert("URLAllowlist".into(), url_allowlist(hosts).into());
    }
    if !ca_certificates.is_empty() {
        policy.insert("CACertificates".into(), ca_certificates.into());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(&policy)?)
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(
        path = %path.display(),
        hosts = hosts.len(),
        ca_certificates = ca_certificates.len(),
        downloads = downloads.is_some(),
        "Session policy written"
    );
    Ok(())
}

/// Runs the agent until the broker ends the session, Chromium exits or a signal arrives,
/// and returns the exit status.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let secret_sha256 = args.validate()?;
    harden_process()?;

    write_session_policy(
        &args.session_policy,
        &args.allowed_hosts,
        &args.ca_certificates,
        args.download_dir.as_deref(),
    )?;
    let mut xvfb = processes::start_xvfb(&args.xvfb, args.max_width, args.max_height).await?;
    tracing::info!(display = %xvfb.display, "Xvfb started");
    if let Err(error) = crate::screen::set_initial_size(&xvfb.display, args.width, args.height) {
        processes::stop_child(&mut xvfb.child, STOP_GRACE).await;
        return Err(error.context("setting the initial screen size"));
    }
    let profile_dir = create_profile_dir(&args.profile_root)?;

    let outcome = run_session(&args, secret_sha256, &xvfb.display, &profile_dir).await;

    processes::stop_child(&mut xvfb.child, STOP_GRACE).await;
    if let Err(error) = std::fs::remove_dir_all(&profile_dir) {
        tracing::warn!(error = %error, path = %profile_dir.display(), "Removing the Chromium profile failed");
    }
    outcome
}

async fn run_session(
    args: &Args,
    secret_sha256: [u8; 32],
    display: &str,
    profile_dir: &std::path::Path,
) -> anyhow::Result<u8> {
    let hub = Arc::new(Hub::default());

    let (clipboard_sender, clipboard_receiver) = std::sync::mpsc::channel();
    let clipboard_thread = {
        let (hub, display) = (hub.clone(), display.to_owned());
        std::thread::Builder::new()
            .name("clipboard".into())
            .spawn(move || {
                if let Err(error) = crate::clipboard::run(&display, hub, clipboard_receiver) {
                    tracing::error!(error = %format!("{error:#}"), "The clipboard thread stopped");
                }
            })?
    };

    let (input_sender, input_receiver) = std::sync::mpsc::channel::<InputCommand>();
    let input_display = display.to_owned();
    let input_thread = std::thread::Builder::new()
        .name("input".into())
        .spawn(move || crate::input::run(&input_display, input_receiver, clipboard_sender))?;

    let stop_stream = Arc::new(AtomicBool::new(false));
    let (stream_failed_sender, mut stream_failed) =
        tokio::sync::oneshot::channel::<anyhow::Error>();
    let stream_thread = {
        let (hub, stop, display) = (hub.clone(), stop_stream.clone(), display.to_owned());
        let config = StreamConfig {
            fps: args.fps,
            bitrate: args.bitrate,
            keyframe_interval: Duration::from_secs(args.keyframe_interval_secs),
        };
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                if let Err(error) = stream::run(&display, config, hub, stop) {
                    let _ = stream_failed_sender.send(error);
                }
            })?
    };

    let mut chromium = processes::start_chromium(&ChromiumOptions {
        binary: &args.chromium,
        display,
        start_url: &args.start_url,
        profile_dir,
        width: args.width,
        height: args.height,
        device_scale_factor: args.device_scale_factor,
        proxy_server: args.proxy_server.as_deref(),
        allowed_hosts: &args.allowed_hosts,
        no_sandbox: args.no_sandbox,
        lang: args.lang.as_deref(),
    })?;
    tracing::info!(
        pid = chromium.child.id(),
        no_sandbox = args.no_sandbox,
        "Chromium started"
    );

    let (cdp, cdp_reader) = Cdp::start(chromium.to_browser, chromium.from_browser);
    let page = tokio::select! {
        page = Page::attach(cdp.clone()) => page?,
        status = chromium.child.wait() => bail!("Chromium exited during start: {status:?}"),
    };

    let frame_tracker = page.track_frames().await?;

    let tasks = tokio_util::task::TaskTracker::new();
    let stop_tasks = CancellationToken::new();
    tasks.spawn(frame_tracker.run(stop_tasks.clone()));
    let (device_scale_factor, scale_receiver) = tokio::sync::watch::channel(1.0);
    tasks.spawn(crate::scale::run(
        cdp.clone(),
        scale_receiver,
        stop_tasks.clone(),
    ));
    if let Some(settings) = args.download_settings() {
        // Subscribing first keeps the events of a download that starts at once.
        let events = cdp.subscribe();
        // Without the events the rescan still delivers files, but nothing cancels a
        // download that grows past the cap before it completes.
        if let Err(error) = crate::downloads::enable(&cdp, &settings).await {
            tracing::warn!(error = %format!("{error:#}"), "Download events are off");
        }
        tasks.spawn(crate::downloads::run(
            cdp.clone(),
            events,
            hub.clone(),
            settings,
            stop_tasks.clone(),
        ));
    }
    tasks.spawn(
        page.clone()
            .follow_navigations(hub.clone(), stop_tasks.clone()),
    );
    let (login_sender, mut login_receiver) = mpsc::channel::<protocol::AutoLogin>(1);
    {
        let (page, hub, input, stop) = (
            page.clone(),
            hub.clone(),
            input_sender.clone(),
            stop_tasks.clone(),
        );
        tasks.spawn(async move {
            loop {
                let login = tokio::select! {
                    _ = stop.cancelled() => break,
                    login = login_receiver.recv() => match login {
                        Some(login) => login,
                        None => break,
                    },
                };
                let input = input.clone();
                crate::login::run(page.clone(), hub.clone(), login, move || {
                    let _ = input.send(InputCommand::ReleaseAll);
                })
                .await;
            }
        });
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    let end = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let handlers = Arc::new(Handlers {
        hub: hub.clone(),
        secret_sha256,
        input: input_sender,
        login: login_sender,
        max_screen: crate::screen::MaxSize {
            width: args.max_width,
            height: args.max_height,
        },
        device_scale_factor,
        end: end.clone(),
    });
    tasks.spawn(server::serve(listener, handlers, stop_accepting.clone()));
    tracing::info!(%address, "Agent ready");
    // The readiness line on stdout: launchers and tests read the bound address from it.
    println!("LISTENING {address}");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let code = tokio::select! {
        status = chromium.child.wait() => {
            let status = status.context("waiting for Chromium")?;
            use std::os::unix::process::ExitStatusExt;
            tracing::error!(code = status.code(), signal = status.signal(), "Chromium exited");
            hub.send_control(&AgentControl::BrowserExited { code: status.code(), signal: status.signal() });
            EXIT_BROWSER_EXITED
        }
        _ = end.cancelled() => 0,
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM received");
            0
        }
        _ = tokio::signal::ctrl_c() => 0,
        Ok(error) = &mut stream_failed => {
            tracing::error!(error = %format!("{error:#}"), "Screen capture failed");
            hub.send_control(&AgentControl::Error { message: "screen capture failed".into() });
            2
        }
    };

    // Shut down: stop accepting, let the broker connection send what is queued, stop
    // the threads and Chromium.
    stop_accepting.cancel();
    stop_tasks.cancel();
    hub.close();
    tasks.close();
    processes::stop_child(&mut chromium.child, STOP_GRACE).await;
    cdp_reader.abort();
    if tokio::time::timeout(FLUSH_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("Tasks did not finish before exit");
    }
    stop_stream.store(true, Ordering::SeqCst);
    drop(page);
    drop(cdp);
    let _ = tokio::task::spawn_blocking(move || {
        let _ = stream_thread.join();
        let _ = input_thread.join();
        // The input thread held the clipboard channel's sender, so this one ends too.
        let _ = clipboard_thread.join();
    })
    .await;
    Ok(code)
}

#[cfg(test)]
mod policy_tests {
    use super::url_allowlist;

    #[test]
    fn allowlist_patterns_match_chromium_filter_format() {
        let hosts = vec![
            "Bank.Example".to_owned(),
            "*.cdn.bank.example".to_owned(),
            " ".to_owned(),
        ];

        assert_eq!(
            url_allowlist(&hosts),
            vec![".bank.example".to_owned(), "cdn.bank.example".to_owned()]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_policy_holds_allowlist_and_ca_certificates() {
        let dir = std::env::temp_dir().join(format!("strongroom-policy-{}", std::process::id()));
        let path = dir.join("session.json");
        let certificates = vec!["MIIBXzCCAQWgAwIBAgIU".to_owned()];
        write_session_policy(&path, &["bank.example".to_owned()], &certificates, None).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            written,
            serde_json::json!({
                "URLAllowlist": [".bank.example"],
                "CACertificates": ["MIIBXzCCAQWgAwIBAgIU"],
                "DownloadRestrictions": 3,
            })
        );
    }

    #[test]
    fn session_policy_allows_downloads_only_into_the_download_directory() {
        let dir = std::env::temp_dir().join(format!(
            "strongroom-policy-downloads-{}",
            std::process::id()
        ));
        let path = dir.join("session.json");
        write_session_policy(&path, &[], &[], Some(std::path::Path::new("/downloads"))).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            written,
            serde_json::json!({
                "DownloadRestrictions": 0,
                "DownloadDirectory": "/downloads",
                "PromptForDownloadLocation": false,
            })
        );
    }

    #[test]
    fn image_policy_leaves_downloads_to_the_session_policy() {
        let image: serde_json::Value =
            serde_json::from_str(include_str!("../../policies/strongroom.json")).unwrap();
        for key in [
            "DownloadRestrictions",
            "DownloadDirectory",
            "PromptForDownloadLocation",
        ] {
            assert!(
                image.get(key).is_none(),
                "{key} in strongroom.json would override the session policy"
            );
        }
    }

    #[test]
    fn ca_certificates_must_be_bounded_base64() {
        assert!(check_ca_certificates(&["MIIBXzCCAQWgAwIBAgIU".to_owned()]).is_ok());
        for bad in ["", "-----BEGIN CERTIFICATE-----", "abc", "ab c"] {
            let error = check_ca_certificates(&[bad.to_owned()]).unwrap_err();
            assert!(error.to_string().contains("entry 0"), "{bad:?}: {error}");
        }
        let long = "A".repeat(MAX_CA_CERTIFICATE_LEN + 4);
        assert!(check_ca_certificates(&[long]).is_err());
        let many = vec!["MIIB".to_owned(); MAX_CA_CERTIFICATES + 1];
        assert!(check_ca_certificates(&many).is_err());
    }
}
