//! The unprivileged WebM muxing process of an export.
//!
//! The exporting process decrypts and authenticates a recording, then starts
//! `strongroom recording mux` and writes only the stream configuration and the encoded
//! packets to its stdin ([`recorder::MuxWriter`]). The child writes the WebM file to its
//! stdout, which is the export's temporary file opened by the parent, so the child needs
//! no path, no key, no database and no environment. When the parent is root, the child
//! runs as `sessions.export_mux_uid`/`export_mux_gid` with no supplementary groups.
//! In every case it gets `PR_SET_NO_NEW_PRIVS`, an empty environment, `/` as working
//! directory and no file descriptors besides stdin, stdout and stderr.
//!
//! The child leads its own process group. A watchdog kills that group when the child
//! runs longer than `sessions.export_mux_timeout_seconds`, so a hung child, or one that
//! stopped reading its stdin while the parent writes to it, cannot hold the export.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Config;

/// Bytes of the child's stderr kept for the error message: the end, where the error is.
const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// How to start the muxing process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxSettings {
    /// The `strongroom` binary.
    pub program: PathBuf,
    /// User and group the child runs as when the parent is root.
    pub uid: u32,
    pub gid: u32,
    /// The child's process group is killed when it runs longer than this.
    pub timeout: Duration,
}

impl MuxSettings {
    /// Reads the settings from `config`. Without `sessions.export_mux_program`, the
    /// program is the running binary.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let program = match &config.sessions.export_mux_program {
            Some(program) => program.clone(),
            None => std::env::current_exe()
                .context("cannot find the running binary to start the mux process; set sessions.export_mux_program")?,
        };
        Ok(MuxSettings {
            program,
            uid: config.sessions.export_mux_uid,
            gid: config.sessions.export_mux_gid,
            timeout: config.sessions.export_mux_timeout,
        })
    }
}

/// A running muxing process.
#[derive(Debug)]
pub struct MuxChild {
    child: Child,
    program: PathBuf,
    stderr: Option<JoinHandle<Vec<u8>>>,
    timeout: Duration,
    /// Dropping the sender stops the watchdog before it kills anything.
    watchdog: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    timed_out: Arc<AtomicBool>,
}

impl MuxChild {
    /// Starts the muxing process with `output` as its stdout.
    pub fn spawn(settings: &MuxSettings, output: File) -> anyhow::Result<Self> {
        let mut command = Command::new(&settings.program);
        command
            .args(["recording", "mux"])
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::from(output))
            .stderr(Stdio::piped())
            // Its own process group, so that the watchdog also kills what it started.
            .process_group(0);
        if nix::unistd::geteuid().is_root() {
            // Std calls setgroups(0, NULL) before setuid when the parent is root.
            command.uid(settings.uid).gid(settings.gid);
        }
        // SAFETY: the closure runs between fork and exec and makes only the prctl and
        // close_range system calls, which are async-signal-safe, with no allocation.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)?;
                close_inherited_descriptors()
            });
        }
        let mut child = command.spawn().with_context(|| {
            format!(
                "cannot start the mux process {}; it must exist and be executable by uid {}, or set sessions.export_mux_program",
                settings.program.display(),
                settings.uid
            )
        })?;

        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::Builder::new()
            .name("mux-stderr".to_owned())
            .spawn(move || read_tail(&mut stderr))
            .context("cannot start the thread that reads the mux process's errors")?;
        let timed_out = Arc::new(AtomicBool::new(false));
        let watchdog = start_watchdog(child.id(), settings.timeout, timed_out.clone());
        let watchdog = match watchdog {
            Ok(watchdog) => watchdog,
            Err(error) => {
                kill_group(child.id());
                let _ = child.wait();
                return Err(error);
            }
        };
        Ok(MuxChild {
            child,
            program: settings.program.clone(),
            stderr: Some(stderr),
            timeout: settings.timeout,
            watchdog: Some(watchdog),
            timed_out,
        })
    }

    /// Returns the child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Takes the child's stdin, the packet stream's destination.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin is taken once")
    }

    /// Waits for the child to exit and fails unless it exited with status 0, naming
    /// its status and the end of what it wrote to stderr.
    pub fn wait(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let status = self
            .child
            .wait()
            .context("cannot wait for the mux process")?;
        self.stop_watchdog();
        let stderr = self
            .stderr
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
        if self.timed_out.load(Ordering::SeqCst) {
            bail!(
                "the mux process {} did not finish within {} s and was killed with its process group; raise sessions.export_mux_timeout_seconds if the recording is very long, or check the program",
                self.program.display(),
                self.timeout.as_secs()
            );
        }
        if status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&stderr);
        bail!(
            "the mux process {} {}: {}",
            self.program.display(),
            describe_status(status),
            match stderr.trim() {
                "" => "it wrote no error message",
                text => text,
            }
        )
    }
}

impl MuxChild {
    /// Ends the watchdog thread and waits for it, so that it cannot signal a process
    /// group id that the system reuses later.
    fn stop_watchdog(&mut self) {
        if let Some((stop, thread)) = self.watchdog.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl Drop for MuxChild {
    fn drop(&mut self) {
        // A child that is still running when the export gave up is not left behind,
        // nor is anything it started.
        if let Ok(None) = self.child.try_wait() {
            kill_group(self.child.id());
            let _ = self.child.wait();
        }
        self.stop_watchdog();
    }
}

/// Starts the thread that kills the child's process group `pid` after `timeout`,
/// unless the returned sender is dropped first.
fn start_watchdog(
    pid: u32,
    timeout: Duration,
    timed_out: Arc<AtomicBool>,
) -> anyhow::Result<(mpsc::Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("mux-watchdog".to_owned())
        .spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(timeout) {
                timed_out.store(true, Ordering::SeqCst);
                tracing::error!(
                    mux.pid = pid,
                    timeout_s = timeout.as_secs(),
                    "The mux process did not finish in time; killing its process group"
                );
                kill_group(pid);
            }
        })
        .context("cannot start the mux process's watchdog thread")?;
    Ok((stop, thread))
}

/// Sends SIGKILL to the process group led by `pid`. The group exists until the child
/// is reaped, because the leader's id keeps the group id in use.
fn kill_group(pid: u32) {
    let group = nix::unistd::Pid::from_raw(pid as i32);
    if let Err(error) = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL)
        && error != nix::errno::Errno::ESRCH
    {
        tracing::warn!(mux.pid = pid, error = %error, "Cannot kill the mux process group");
    }
}

/// Marks every descriptor above stderr close-on-exec, so exec closes them while std's
/// own exec-error pipe keeps working until then.
fn close_inherited_descriptors() -> io::Result<()> {
    // SAFETY: close_range takes plain integers and touches no memory.
    let result =
        unsafe { libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn read_tail(stderr: &mut impl Read) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stderr.read(&mut buffer) {
            Ok(0) | Err(_) => return tail,
            Ok(read) => {
                tail.extend_from_slice(&buffer[..read]);
                if tail.len() > STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// Exports an opened, verified recording to the WebM file `output` through a muxing
/// process. The file is written under a temporary name beside `output` and renamed
/// when the child succeeded, so a failure on either side leaves no file at `output`
/// and no temporary file.
pub fn export_to_file(
    reader: &recorder::RecordingReader,
    settings: &MuxSettings,
    output: &Path,
) -> anyhow::Result<recorder::ExportSummary> {
    let temporary = temporary_path(output);
    let result = mux_into(reader, settings, &temporary);
    match result {
        Ok(summary) => {
            fs::rename(&temporary, output)
                .with_context(|| format!("cannot move the export to {}", output.display()))?;
            Ok(summary)
        }
        Err(error) => {
            if let Err(remove) = fs::remove_file(&temporary)
                && remove.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %temporary.display(), error = %remove, "Cannot remove a failed export's temporary file");
            }
            Err(error)
        }
    }
}

fn mux_into(
    reader: &recorder::RecordingReader,
    settings: &MuxSettings,
    temporary: &Path,
) -> anyhow::Result<recorder::ExportSummary> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    let mut child = None;
    let sent = recorder::send_recording(reader, || {
        let child_output = file.try_clone().map_err(recorder::ExportError::Output)?;
        let mut started = MuxChild::spawn(settings, child_output)
            .map_err(|error| recorder::ExportError::Send(io::Error::other(format!("{error:#}"))))?;
        let stdin = started.take_stdin();
        child = Some(started);
        Ok(stdin)
    });
    let Some(child) = child else {
        // Nothing was started: the recording failed before its first packet.
        return Err(sent.expect_err("a successful send started the child"))
            .context("cannot export the recording");
    };
    // A child that stops reading blocks `send_recording` until the watchdog kills it;
    // the write then fails and `wait` reports the timeout.
    match sent {
        Ok(summary) => {
            child.wait()?;
            file.sync_all()
                .with_context(|| format!("cannot write {}", temporary.display()))?;
            anyhow::ensure!(
                file.metadata().map(|m| m.len()).unwrap_or(0) > 0,
                "the mux process {} exited successfully but wrote nothing; set sessions.export_mux_program to the strongroom binary",
                settings.program.display()
            );
            Ok(summary)
        }
        // A failed send usually means the child stopped; its status explains why.
        Err(recorder::ExportError::Send(send)) => match child.wait() {
            Err(child_error) => Err(child_error.context(format!("sending packets failed: {send}"))),
            Ok(()) => Err(anyhow::anyhow!(
                "sending packets to the mux process failed: {send}"
            )),
        },
        Err(error) => {
            // The recording failed mid-way. The child is killed before it reads the
            // truncated input, and no trailer is written.
            drop(child);
            Err(error).context("cannot export the recording")
        }
    }
}

fn temporary_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.partial"))
}

/// `strongroom recording mux`: the child side. Reads the packet stream from stdin and
/// writes the WebM file to stdout, which must be a seekable file. Returns the exit
/// code. When started as root it first switches to `uid`/`gid`.
pub fn run_child(uid: u32, gid: u32) -> i32 {
    match run_child_inner(uid, gid) {
        Ok(_) => 0,
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}

fn run_child_inner(uid: u32, gid: u32) -> anyhow::Result<recorder::ExportSummary> {
    drop_privileges(uid, gid)?;

    // SAFETY: this process never writes through `std::io::stdout`, so the returned
    // `File` is the only owner of descriptor 1.
    let output = unsafe { File::from_raw_fd(1) };
    let file_type = output
        .metadata()
        .context("cannot inspect stdout")?
        .file_type();
    anyhow::ensure!(
        file_type.is_file(),
        "stdout is not a regular file; redirect it to the output file, because WebM needs a seekable output"
    );
    recorder::mux_webm(io::stdin().lock(), output).context("cannot mux the recording")
}

/// Switches a root process to `uid`/`gid` with no supplementary groups, sets
/// `PR_SET_NO_NEW_PRIVS` and closes every inherited descriptor above stderr.
fn drop_privileges(uid: u32, gid: u32) -> anyhow::Result<()> {
    use nix::unistd::{Gid, Uid};

    anyhow::ensure!(
        uid != 0 && gid != 0,
        "refusing to mux as uid {uid} gid {gid}; use unprivileged ids"
    );
    if nix::unistd::geteuid().is_root() || nix::unistd::getuid().is_root() {
        nix::unistd::setgroups(&[]).context("cannot clear supplementary groups")?;
        nix::unistd::setgid(Gid::from_raw(gid))
            .with_context(|| format!("cannot switch to gid {gid}"))?;
        nix::unistd::setuid(Uid::from_raw(uid))
            .with_context(|| format!("cannot switch to uid {uid}"))?;
    }
    anyhow::ensure!(
        !nix::unistd::geteuid().is_root() && !nix::unistd::getuid().is_root(),
        "still running as root after switching to uid {uid}"
    );
    nix::sys::prctl::set_no_new_privs().context("cannot set PR_SET_NO_NEW_PRIVS")?;
    // SAFETY: nothing in this process has opened a descriptor above stderr yet.
    let closed = unsafe { libc::close_range(3, libc::c_uint::MAX, 0) };
    if closed != 0 {
        return Err(io::Error::last_os_error()).context("cannot close inherited descriptors");
    }
    Ok(())
}
