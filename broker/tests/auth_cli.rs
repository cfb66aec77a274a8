//! `strongroom user ...` run as a process against a SQLite data directory.

mod terminal_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use broker::auth::users;
use broker::config::{DatabaseConfig, DatabaseTarget};
use broker::db::Database;
use terminal_support::{Typed, run_piped as strongroom};


fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("strongroom.toml");
    std::fs::write(&path, format!("data_dir = {:?}\n", dir.join("data"))).unwrap();
    path
}

async fn open(dir: &Path) -> Database {
    let config = DatabaseConfig {
        target: DatabaseTarget::Sqlite {
            path: dir.join("data").join("strongroom.db"),
        },
        max_connections: 2,
        connect_timeout: std::time::Duration::from_secs(5),
    };
    Database::connect(&config).await.unwrap()
}

#[tokio::test]
async fn user_commands_manage_local_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());

    let weak = strongroom(
        &config,
        &["user", "add", "weak", "--role", "user"],
        "alllowercase\n",
    );
    assert_eq!(weak.status.code(), Some(2));
    assert!(
        stderr(&weak).contains("password rejected"),
        "{}",
        stderr(&weak)
    );
    let spaced = strongroom(
        &config,
        &["user", "add", "a b", "--role", "user"],
        "Correct-Horse-42\n",
    );
    assert_eq!(spaced.status.code(), Some(2), "{}", stderr(&spaced));
    assert!(
        stderr(&spaced).contains("invalid username \"a b\""),
        "{}",
        stderr(&spaced)
    );
    assert!(
        stderr(&weak).contains("--generate-password"),
        "{}",
        stderr(&weak)
    );

    let generated = strongroom(
        &config,
        &[
            "user",
            "add",
            "alice",
            "--role",
            "user",
            "--generate-password",
        ],
        "",
    );
    assert!(generated.status.success(), "{}", stderr(&generated));
    let text = stdout(&generated);
    let password_line = text
        .lines()
        .find_map(|line| line.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no password printed: {text}"));
    broker::auth::policy::check_new_password(password_line, "alice").unwrap();
    assert!(!text.contains("secret (base32)"), "{text}");
    // The first sign-in is explained once, in one line.
    assert_eq!(text.matches("first sign-in").count(), 1, "{text}");
    assert!(text.contains("asks for a new password"), "{text}");
    assert!(text.contains("authenticator app"), "{text}");

    let enrolled = strongroom(
        &config,
        &["user", "add", "bob", "--role", "admin", "--print-totp"],
        "Vault-door-2026!\n",
    );
    assert!(enrolled.status.success(), "{}", stderr(&enrolled));
    let text = stdout(&enrolled);
    let secret = text
        .lines()
        .find_map(|line| line.strip_prefix("secret (base32): "))
        .unwrap_or_else(|| panic!("no secret printed: {text}"));
    assert!(
        totp_rs::Secret::Encoded(secret.to_owned())
            .to_bytes()
            .is_ok()
    );
    assert!(!text.contains("password: "), "{text}");

    let db = open(dir.path()).await;
    let alice = users::find_by_username(&db, "alice")
        .await
        .unwrap()
        .unwrap();
    assert!(alice.password_change_required);
    assert!(alice.totp_secret.is_none());
    let bob = users::find_by_username(&db, "bob").await.unwrap().unwrap();
    assert!(!bob.password_change_required);
    assert!(bob.totp_secret.is_some());

    let listed = stdout(&strongroom(&config, &["user", "list"], ""));
    let alice_line = listed.lines().find(|line| line.contains("alice")).unwrap();
    let bob_line = listed.lines().find(|line| line.contains("bob")).unwrap();
    assert!(alice_line.contains(" no "), "{alice_line}");
    assert!(bob_line.contains(" yes "), "{bob_line}");

    let set_role = strongroom(
        &config,
        &["user", "set-role", "alice", "--role", "auditor"],
        "",
    );
    assert!(set_role.status.success(), "{}", stderr(&set_role));
    let reset = strongroom(&config, &["user", "reset-mfa", "bob"], "");
    assert!(reset.status.success(), "{}", stderr(&reset));
    let unlock = strongroom(&config, &["user", "unlock", "alice"], "");
    assert!(unlock.status.success(), "{}", stderr(&unlock));
    assert!(
        stdout(&unlock).contains("was not locked"),
        "{}",
        stdout(&unlock)
    );
    let unknown = strongroom(&config, &["user", "unlock", "nobody"], "");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("user list"),
        "{}",
        stderr(&unknown)
    );

    let alice = users::find_by_username(&db, "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.roles, [broker::auth::Role::Auditor].into());
    let bob = users::find_by_username(&db, "bob").await.unwrap().unwrap();
    assert!(bob.totp_secret.is_none(), "reset-mfa removes the secret");
}

#[test]
fn terminal_password_prompt_does_not_echo() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());

    let run = terminal_support::run_at_terminal(
        &config,
        &["user", "add", "tty-admin", "--role", "admin"],
        &[Typed {
            prompt: "Password",
            line: "Correct-Horse-42",
            hidden: true,
        }],
    );

    assert!(
        !run.shown.contains("Correct-Horse-42"),
        "the terminal showed {:?}",
        run.shown
    );
    run.assert_succeeded_without_echo();
    assert!(run.stdout.contains("tty-admin"), "{}", run.stdout);
}

#[test]
fn terminal_interrupt_restores_echo() {
    use std::os::unix::process::ExitStatusExt;

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());

    let run = terminal_support::run_at_terminal(
        &config,
        &["user", "add", "tty-admin", "--role", "admin"],
        &[Typed {
            prompt: "Password",
            line: "Correct-\u{3}",
            hidden: true,
        }],
    );

    assert_eq!(
        run.status.signal(),
        Some(nix::libc::SIGINT),
        "{}",
        run.stderr
    );
    assert!(run.restored, "the terminal's echo stayed off after Ctrl-C");
    assert!(!run.shown.contains("Correct-"), "{:?}", run.shown);
}
