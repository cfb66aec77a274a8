//! Test support: runs `strongroom` as a process. [`Cli`] runs it against a test
//! database with standard input on a pipe; [`run_at_terminal`] runs it with standard
//! input on a pseudo-terminal, types each line once the command prompts for it, and
//! returns what the terminal displayed.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::termios::{LocalFlags, tcgetattr};

/// Time the whole exchange with the command may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Time a command may take to turn the terminal's echo off after its prompt appeared.
const ECHO_OFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Variable that passes the PostgreSQL password, because the configuration rejects a
/// password inside `database.url`.
const PASSWORD_VARIABLE: &str = "STRONGROOM_TEST_DATABASE_PASSWORD";

/// Builds a command for the `strongroom` binary under test without the test process's
/// `STRONGROOM_*` variables, because variables such as STRONGROOM_TEST_POSTGRES_URL
/// would read as configuration keys.
pub fn strongroom_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strongroom"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("STRONGROOM_")) {
        command.env_remove(name);
    }
    command
}

/// A configuration file that points at a test database, and the password it reads from
/// [`PASSWORD_VARIABLE`].
pub struct Cli {
    pub config: PathBuf,
    password: Option<String>,
}

impl Cli {
    /// Writes a configuration file that points at `database`.
    pub fn new(dir: &Path, database: &broker::testing::TestDatabase) -> Cli {
        let (url, password) = match database.postgres_url() {
            Some(url) => broker::testing::split_password(&url),
            None => (
                format!("sqlite://{}", database.dir.path().join("test.db").display()),
                None,
            ),
        };
        let mut text = format!(
            "data_dir = {:?}\n[database]\nurl = {url:?}\n",
            dir.join("data")
        );
        if password.is_some() {
            text.push_str(&format!("password = \"env:{PASSWORD_VARIABLE}\"\n"));
        }
        let config = dir.join("strongroom.toml");
        std::fs::write(&config, text).unwrap();
        Cli { config, password }
    }

    /// Runs `strongroom --config CONFIG ARGS` with `stdin` on standard input.
    pub fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut command = strongroom_command();
        if let Some(password) = &self.password {
            command.env(PASSWORD_VARIABLE, password);
        }
        run_command(command, &self.config, args, stdin)
    }
}

/// Runs `strongroom --config CONFIG ARGS` with `stdin` on standard input.
pub fn run_piped(config: &Path, args: &[&str], stdin: &str) -> Output {
    run_command(strongroom_command(), config, args, stdin)
}

fn run_command(mut command: Command, config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = command
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strongroom");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("wait for strongroom")
}

/// One line typed at the terminal.
pub struct Typed<'a> {
    /// Part of the prompt on standard error after which the line is typed.
    pub prompt: &'a str,
    pub line: &'a str,
    /// The command must have turned the terminal's echo off before the line is typed.
    pub hidden: bool,
}

/// A finished run of the command.
pub struct TerminalRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Everything the terminal displayed: the echo of what was typed.
    pub shown: String,
    /// Prompts that did not appear on standard error.
    pub missing_prompts: Vec<String>,
    /// Prompts of hidden lines that were typed while the terminal's echo was on.
    pub echoed_prompts: Vec<String>,
    /// The terminal echoes and edits lines again after the command exited.
    pub restored: bool,
}

impl TerminalRun {
    /// Checks that every prompt appeared and stated that the line is not shown, that echo
    /// was off before each hidden line was typed, and that the command succeeded.
    pub fn assert_succeeded_without_echo(&self) {
        assert!(self.missing_prompts.is_empty(), "{}", self.stderr);
        assert!(
            self.stderr.contains("not shown as you type"),
            "{}",
            self.stderr
        );
        assert!(
            self.echoed_prompts.is_empty(),
            "echo stayed on: {:?}",
            self.echoed_prompts
        );
        assert_eq!(self.status.code(), Some(0), "{}", self.stderr);
    }
}

/// Output of a child's pipe or terminal, collected by a reader thread.
#[derive(Clone, Default)]
struct Collected(Arc<(Mutex<Vec<u8>>, Condvar)>);

impl Collected {
    fn start(mut source: impl Read + Send + 'static) -> (Collected, std::thread::JoinHandle<()>) {
        let collected = Collected::default();
        let writer = collected.clone();
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // A pseudo-terminal's master side returns EIO once every slave is closed.
            while let Ok(read) = source.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                let (bytes, changed) = &*writer.0;
                bytes.lock().unwrap().extend_from_slice(&buffer[..read]);
                changed.notify_all();
            }
        });
        (collected, thread)
    }

    /// Waits until `text` appears at or after byte `from`, and returns the byte after it.
    fn wait_for(&self, text: &str, from: usize, deadline: Instant) -> Option<usize> {
        let (bytes, changed) = &*self.0;
        let mut bytes = bytes.lock().unwrap();
        loop {
            let tail = String::from_utf8_lossy(&bytes[from.min(bytes.len())..]).into_owned();
            if let Some(at) = tail.find(text) {
                return Some(from + at + text.len());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            bytes = changed.wait_timeout(bytes, left).unwrap().0;
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.0.lock().unwrap()).into_owned()
    }
}

/// Waits until the terminal's echo is off, which is when a hidden line may be typed.
fn wait_for_echo_off(terminal: &OwnedFd, child: &mut Child, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        let flags = tcgetattr(terminal)
            .expect("read terminal attributes")
            .local_flags;
        if !flags.contains(LocalFlags::ECHO) {
            return true;
        }
        if child.try_wait().expect("check strongroom").is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits for the command to exit, and kills it at the deadline.
fn wait_or_kill(child: &mut Child, deadline: Instant) -> ExitStatus {
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("check strongroom") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill strongroom");
    child.wait().expect("wait for strongroom")
}

/// Runs `strongroom --config CONFIG ARGS` with standard input on a new
/// pseudo-terminal and types `lines` in order, each after its prompt appeared. A
/// command still running after the exchange's timeout is killed.
pub fn run_at_terminal(config: &Path, args: &[&str], lines: &[Typed]) -> TerminalRun {
    let terminal = nix::pty::openpty(None, None).expect("open a pseudo-terminal");
    let mut command = strongroom_command();
    let mut child = command
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::from(terminal.slave.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strongroom");
    // The command keeps a descriptor of the terminal's slave side open until dropped.
    drop(command);
    let (stdout, stdout_thread) = Collected::start(child.stdout.take().unwrap());
    let (stderr, stderr_thread) = Collected::start(child.stderr.take().unwrap());
    let master = std::fs::File::from(terminal.master);
    let mut typing = master.try_clone().unwrap();
    let (shown, shown_thread) = Collected::start(master);

    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    let mut missing_prompts = Vec::new();
    let mut echoed_prompts = Vec::new();
    let mut prompted_up_to = 0;
    for typed in lines {
        match stderr.wait_for(typed.prompt, prompted_up_to, deadline) {
            Some(end) => prompted_up_to = end,
            None => missing_prompts.push(typed.prompt.to_owned()),
        }
        let echo_deadline = deadline.min(Instant::now() + ECHO_OFF_TIMEOUT);
        if typed.hidden && !wait_for_echo_off(&terminal.slave, &mut child, echo_deadline) {
            echoed_prompts.push(typed.prompt.to_owned());
        }
        // Typing after the command exited still shows whether the terminal echoes.
        typing
            .write_all(format!("{}\n", typed.line).as_bytes())
            .unwrap();
    }
    let status = wait_or_kill(&mut child, deadline);
    let flags = tcgetattr(&terminal.slave)
        .expect("read terminal attributes")
        .local_flags;
    let restored = flags.contains(LocalFlags::ECHO | LocalFlags::ICANON);

    // Text written to the slave side reaches the master after every earlier echo, so
    // once the marker is read, everything the terminal displayed has been collected.
    let marker = "[end of terminal output]";
    let mut slave = std::fs::File::from(terminal.slave);
    slave.write_all(marker.as_bytes()).unwrap();
    let shown_end = shown.wait_for(marker, 0, Instant::now() + EXCHANGE_TIMEOUT);
    assert!(
        shown_end.is_some(),
        "the terminal never displayed the marker"
    );
    drop(slave);
    for thread in [stdout_thread, stderr_thread, shown_thread] {
        thread.join().unwrap();
    }
    let mut shown = shown.text();
    shown.truncate(shown.find(marker).unwrap());

    TerminalRun {
        status,
        stdout: stdout.text(),
        stderr: stderr.text(),
        shown,
        missing_prompts,
        echoed_prompts,
        restored,
    }
}
