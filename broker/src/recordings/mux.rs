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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

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
        })
    }
}

/// A running muxing process.
#[derive(Debug)]
pub struct MuxChild {
    child: Child,
    program: PathBuf,
    stderr: Option<JoinHandle<Vec<u8>>>,
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
            .stderr(Stdio::piped());
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
        Ok(MuxChild {
            child,
            program: settings.program.clone(),
            stderr: Some(stderr),
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
        let stderr = self
            .stderr
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
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

impl Drop for MuxChild {
    fn drop(&mut self) {
        // A child that is still running when the export gave up is not left behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
    // NOTE: there is no timeout: a child that stops reading blocks the export until
    // it is killed.
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
