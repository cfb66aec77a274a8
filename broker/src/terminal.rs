//! Secrets typed at a terminal: passwords, one-time codes and TOTP seeds that a
//! command reads from standard input when standard input is a terminal.

use std::io::ErrorKind;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use zeroize::Zeroizing;

/// Prompts on standard error and reads one line from the terminal on standard input
/// with echo off, so the secret stays off the screen and out of its scrollback.
/// Returns the line without its line ending, or `None` when the person ends the input
/// with Ctrl-D on an empty line. Ctrl-C ends the process by SIGINT once the terminal's
/// settings are restored. The caller checks that standard input is a terminal.
pub fn read_hidden_line(prompt: &str) -> std::io::Result<Option<Zeroizing<String>>> {
    let terminal = rpassword::ConfigBuilder::new()
        .input_file_path("/dev/stdin")
        .output_writer(std::io::stderr())
        .password_feedback_hide()
        .build();

    // rpassword 7.5 raises SIGINT for Ctrl-C before it restores echo, so the signal
    // stays pending on this thread until the terminal is back as it was.
    let mut interrupt = SigSet::empty();
    interrupt.add(Signal::SIGINT);
    let mut previous = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&interrupt), Some(&mut previous))?;
    let result = rpassword::prompt_password_with_config(prompt, terminal);
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;

    match result {
        Ok(line) => Ok(Some(Zeroizing::new(line))),
        Err(error) if error.kind() == ErrorKind::UnexpectedEof => Ok(None),
        Err(error) => Err(error),
    }
}
