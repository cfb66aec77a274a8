//! Starting Xvfb and Chromium.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// Chromium's character type locale: glibc's built-in UTF-8 locale, which Debian
/// bookworm's `libc-bin` ships, so it needs no generated locales.
const CHROMIUM_CTYPE: &str = "C.UTF-8";

/// Time Xvfb has to report its display number.
const XVFB_START_TIMEOUT: Duration = Duration::from_secs(20);

fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes `targets[i].0` available as fd `targets[i].1` in the child and sets the child
/// to be killed when the agent dies. Runs between fork and exec.
///
/// NOTE: the kernel sends the death signal when the thread that forked exits, not the
/// process. The agent spawns its children from the main thread, which lives until exit.
fn child_setup(targets: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    // SAFETY: only async-signal-safe calls (prctl, fcntl, dup2, close) follow.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Move every source above the targets first, so no dup2 overwrites a source.
        let mut moved = Vec::with_capacity(targets.len());
        for &(source, _) in targets {
            let high = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, 100);
            if high < 0 {
                return Err(std::io::Error::last_os_error());
            }
            moved.push(high);
        }
        for (&high, &(_, target)) in moved.iter().zip(targets) {
            // dup2 clears FD_CLOEXEC on the target, so it survives exec.
            if libc::dup2(high, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(high);
        }
    }
    Ok(())
}

pub struct Xvfb {
    pub child: Child,
    pub display: String,
}

/// Starts Xvfb on a free display (`-displayfd`) with a `width`x`height`x24 screen, the
/// largest size RandR can set later.
pub async fn start_xvfb(binary: &Path, width: u32, height: u32) -> anyhow::Result<Xvfb> {
    let (read_end, write_end) = pipe()?;
    let write_raw = write_end.as_raw_fd();
    let mut command = Command::new(binary);
    command
        .args(["-displayfd", "3", "-screen", "0"])
        .arg(format!("{width}x{height}x24"))
        .args([
            "-nolisten",
            "tcp",
            "+extension",
            "MIT-SHM",
            "+extension",
            "XTEST",
            "+extension",
            "RANDR",
            "-noreset",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // SAFETY: child_setup only makes async-signal-safe calls.
    unsafe { command.pre_exec(move || child_setup(&[(write_raw, 3)])) };
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    drop(write_end);

    let display = tokio::time::timeout(
        XVFB_START_TIMEOUT,
        tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let mut text = String::new();
            std::fs::File::from(read_end)
                .take(32)
                .read_to_string(&mut text)?;
            let number: u32 = text
                .trim()
                .parse()
                .with_context(|| format!("Xvfb reported display {text:?}"))?;
            Ok(format!(":{number}"))
        }),
    )
    .await
    .context("timed out waiting for Xvfb to start")???;
    Ok(Xvfb { child, display })
}

/// Chromium launch settings.
pub struct ChromiumOptions<'a> {
    pub binary: &'a Path,
    pub display: &'a str,
    pub start_url: &'a str,
    pub profile_dir: &'a Path,
    pub width: u32,
    pub height: u32,
    pub device_scale_factor: f32,
    pub proxy_server: Option<&'a str>,
    /// Host names the session's site allows (`bank.example`, `*.bank.example`).
    pub allowed_hosts: &'a [String],
    pub no_sandbox: bool,
    pub lang: Option<&'a str>,
}

pub struct Chromium {
    pub child: Child,
    pub to_browser: tokio::net::unix::pipe::Sender,
    pub from_browser: tokio::net::unix::pipe::Receiver,
}

/// Writes profile preferences that turn off the password manager and autofill, in
/// addition to the image's managed policies.
fn write_preferences(profile_dir: &Path) -> anyhow::Result<PathBuf> {
    let default_dir = profile_dir.join("Default");
    std::fs::create_dir_all(&default_dir)
        .with_context(|| format!("creating {}", default_dir.display()))?;
    let preferences = serde_json::json!({
        "credentials_enable_service": false,
        "credentials_enable_autosignin": false,
        "profile": { "password_manager_enabled": false },
        "autofill": { "profile_enabled": false, "credit_card_enabled": false },
        "translate": { "enabled": false },
    });
    let path = default_dir.join("Preferences");
    std::fs::write(&path, preferences.to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn chromium_args(options: &ChromiumOptions<'_>) -> Vec<String> {
    let mut args = vec![
        "--kiosk".to_owned(),
        "--no-first-run".to_owned(),
        "--no-default-browser-check".to_owned(),
        "--remote-debugging-pipe".to_owned(),
        format!("--user-data-dir={}", options.profile_dir.display()),
        format!("--window-size={},{}", options.width, options.height),
        "--window-position=0,0".to_owned(),
        format!("--force-device-scale-factor={}", options.device_scale_factor),
        "--password-store=basic".to_owned(),
        "--disable-breakpad".to_owned(),
        "--disable-crash-reporter".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-domain-reliability".to_owned(),
        "--disable-client-side-phishing-detection".to_owned(),
        "--disable-default-apps".to_owned(),
        "--disable-extensions".to_owned(),
        "--disable-features=Translate,PasswordManagerOnboarding,AutofillServerCommunication,MediaRouter,OptimizationHints".to_owned(),
        "--no-pings".to_owned(),
        "--noerrdialogs".to_owned(),
        "--deny-permission-prompts".to_owned(),
        "--ozone-platform=x11".to_owned(),
    ];
    let service_hosts = unallowed_service_hosts(options.allowed_hosts);
    if let Some(proxy) = options.proxy_server {
        args.push(format!("--proxy-server={proxy}"));
        args.push(proxy_bypass_list(&service_hosts));
    }
    if let Some(rules) = unresolvable_hosts(&service_hosts) {
        args.push(rules);
    }
    if let Some(lang) = options.lang {
        args.push(format!("--lang={lang}"));
    }
    if options.no_sandbox {
        args.push("--no-sandbox".to_owned());
    }
    args.push(options.start_url.to_owned());
    args
}

/// Hosts that Chromium 156 calls on its own despite the flags of [`chromium_args`] and
/// the image's managed policies. `accounts.google.com` gets the sign-in cookie check
/// (`ListAccounts`). `update.googleapis.com` and `clients2.google.com` get the
/// component updater's check for the on-device model manifest and its time fetch.
/// None of these turned them off: the policies `BrowserSignin` 0,
/// `ComponentUpdatesEnabled` false and `GenAILocalFoundationalModelSettings` 1, the
/// preference `signin.allowed` false, `--disable-account-consistency`, and disabling
/// the features `OptimizationGuideOnDeviceModel` and `OptimizationGuideModelsManifest`.
const BROWSER_SERVICE_HOSTS: [&str; 3] = [
    "accounts.google.com",
    "update.googleapis.com",
    "clients2.google.com",
];

/// Returns the hosts of [`BROWSER_SERVICE_HOSTS`] that the site does not allow.
fn unallowed_service_hosts(allowed_hosts: &[String]) -> Vec<&'static str> {
    BROWSER_SERVICE_HOSTS
        .into_iter()
        .filter(|host| {
            !allowed_hosts
                .iter()
                .any(|allowed| host_matches(allowed, host))
        })
        .collect()
}

/// Builds `--proxy-bypass-list`. Loopback goes through the proxy too, because nothing
/// in the container serves pages. The `service_hosts` bypass the proxy, so their calls
/// never reach the egress proxy as denials; [`unresolvable_hosts`] makes them fail
/// before any packet leaves Chromium.
fn proxy_bypass_list(service_hosts: &[&str]) -> String {
    let mut rules = vec!["<-loopback>"];
    rules.extend(service_hosts);
    format!("--proxy-bypass-list={}", rules.join(";"))
}

/// Builds `--host-resolver-rules` that make Chromium's own resolver return "not found"
/// for `service_hosts`. A call to them then fails at once, without a DNS query, both in
/// the workspace (where they bypass the proxy) and when the agent runs Chromium on a
/// host without a proxy.
fn unresolvable_hosts(service_hosts: &[&str]) -> Option<String> {
    if service_hosts.is_empty() {
        return None;
    }
    let rules: Vec<String> = service_hosts
        .iter()
        .map(|host| format!("MAP {host} ~NOTFOUND"))
        .collect();
    Some(format!("--host-resolver-rules={}", rules.join(", ")))
}

/// Returns whether the site's host entry `allowed` (`bank.example` or
/// `*.bank.example`, as the egress proxy reads them) matches `host`.
fn host_matches(allowed: &str, host: &str) -> bool {
    let allowed = allowed.trim().trim_end_matches('.').to_ascii_lowercase();
    match allowed.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|label| label.ends_with('.')),
        None => allowed == host,
    }
}

/// Starts Chromium with the CDP pipe on its fds 3 (commands) and 4 (responses).
pub fn start_chromium(options: &ChromiumOptions<'_>) -> anyhow::Result<Chromium> {
    write_preferences(options.profile_dir)?;
    let (commands_read, commands_write) = pipe()?;
    let (responses_read, responses_write) = pipe()?;
    let (commands_raw, responses_raw) = (commands_read.as_raw_fd(), responses_write.as_raw_fd());

    let mut command = Command::new(options.binary);
    command
        .args(chromium_args(options))
        .env_clear()
        .env("DISPLAY", options.display)
        .env(
            "HOME",
            std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()),
        )
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        // Chromium converts file names to the C library's multibyte encoding. Under the
        // default "C" locale a name with a character outside ASCII fails that
        // conversion, and Chromium saves the download as `download` instead.
        .env("LC_CTYPE", CHROMIUM_CTYPE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(lang) = options.lang {
        command.env("LANG", lang);
    }
    // SAFETY: child_setup only makes async-signal-safe calls.
    unsafe { command.pre_exec(move || child_setup(&[(commands_raw, 3), (responses_raw, 4)])) };
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", options.binary.display()))?;
    drop((commands_read, responses_write));

    let to_browser = tokio::net::unix::pipe::Sender::from_owned_fd(commands_write)
        .context("opening the CDP command pipe")?;
    let from_browser = tokio::net::unix::pipe::Receiver::from_owned_fd(responses_read)
        .context("opening the CDP response pipe")?;
    Ok(Chromium {
        child,
        to_browser,
        from_browser,
    })
}

/// Stops a child: SIGTERM, then SIGKILL after `grace`.
pub async fn stop_child(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

pub fn check_binary(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        bail!("{} not found; install it or pass its path", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn test_options() -> ChromiumOptions<'static> {
        ChromiumOptions {
            binary: Path::new("/usr/bin/chromium"),
            display: ":1",
            start_url: "https://bank.example/",
            profile_dir: Path::new("/tmp/profile"),
            width: 800,
            height: 600,
            device_scale_factor: 1.0,
            proxy_server: Some("http://10.0.0.1:3128"),
            allowed_hosts: &[],
            no_sandbox: false,
            lang: None,
        }
    }

    #[test]
    fn browser_service_hosts_bypass_the_proxy() {
        let service_hosts = unallowed_service_hosts(&hosts(&["bank.example"]));
        assert_eq!(
            proxy_bypass_list(&service_hosts),
            "--proxy-bypass-list=<-loopback>;accounts.google.com;update.googleapis.com;clients2.google.com"
        );
        assert_eq!(
            unresolvable_hosts(&service_hosts).as_deref(),
            Some(
                "--host-resolver-rules=MAP accounts.google.com ~NOTFOUND, MAP update.googleapis.com ~NOTFOUND, MAP clients2.google.com ~NOTFOUND"
            )
        );
    }

    #[test]
    fn allowed_service_hosts_stay_on_the_proxy() {
        let service_hosts =
            unallowed_service_hosts(&hosts(&["Accounts.Google.com", "*.googleapis.com"]));
        assert_eq!(
            proxy_bypass_list(&service_hosts),
            "--proxy-bypass-list=<-loopback>;clients2.google.com"
        );
        assert_eq!(
            unresolvable_hosts(&service_hosts).as_deref(),
            Some("--host-resolver-rules=MAP clients2.google.com ~NOTFOUND")
        );
        // A suffix pattern matches subdomains only, as in the egress proxy.
        assert_eq!(
            unallowed_service_hosts(&hosts(&["*.accounts.google.com", "google.com"])),
            BROWSER_SERVICE_HOSTS
        );
        let every_host = hosts(&[
            "accounts.google.com",
            "update.googleapis.com",
            "clients2.google.com",
        ]);
        assert_eq!(
            unresolvable_hosts(&unallowed_service_hosts(&every_host)),
            None
        );
    }

    #[test]
    fn service_hosts_fail_without_a_proxy() {
        let arguments = chromium_args(&ChromiumOptions {
            proxy_server: None,
            ..test_options()
        });
        assert!(
            !arguments
                .iter()
                .any(|argument| argument.starts_with("--proxy"))
        );
        assert!(
            arguments.iter().any(|argument| argument
                .starts_with("--host-resolver-rules=MAP accounts.google.com ~NOTFOUND")),
            "{arguments:?}"
        );
    }
}
