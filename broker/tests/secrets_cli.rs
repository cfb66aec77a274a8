//! `strongroom secrets ...` run as a process against a SQLite data directory.

mod terminal_support;

use std::path::Path;
use std::sync::Arc;

use broker::clock::SystemClock;
use broker::config::{DatabaseConfig, DatabaseTarget};
use broker::db::Database;
use broker::secrets::{CredentialKey, CredentialRef, CredentialSource, LocalStore};
use terminal_support::{Typed, run_piped as strongroom};


fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("strongroom.toml");
    std::fs::write(&path, format!("data_dir = {:?}\n{extra}", dir.join("data"))).unwrap();
    path
}

/// Writes a site file that defines `demo-bank`, and returns its path.
fn write_sites_file(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("sites.toml");
    std::fs::write(
        &file,
        "[[site]]\nname = \"demo-bank\"\ndisplay_name = \"Demo Bank\"\nstart_url = \"https://www.demo-bank.example/\"\nallowed_hosts = [\"www.demo-bank.example\"]\nrecording_retention_days = 30\n",
    )
    .unwrap();
    file
}

/// Imports the site `demo-bank`, which the credential commands require.
fn import_demo_bank(dir: &Path, config: &Path) {
    let file = write_sites_file(dir);
    let import = strongroom(config, &["site", "import", file.to_str().unwrap()], "");
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
}

async fn open_database(dir: &Path) -> Database {
    let config = DatabaseConfig {
        target: DatabaseTarget::Sqlite {
            path: dir.join("data").join("strongroom.db"),
        },
        max_connections: 2,
        connect_timeout: std::time::Duration::from_secs(5),
    };
    Database::connect(&config).await.unwrap()
}

async fn stored(dir: &Path, reference: &CredentialRef) -> broker::secrets::BankCredentials {
    let config = DatabaseConfig {
        target: DatabaseTarget::Sqlite {
            path: dir.join("data").join("strongroom.db"),
        },
        max_connections: 2,
        connect_timeout: std::time::Duration::from_secs(5),
    };
    let db = Database::connect(&config).await.unwrap();
    let key = CredentialKey::load_or_create(&dir.join("data")).unwrap();
    LocalStore::new(db, Arc::new(key), Arc::new(SystemClock))
        .fetch(reference)
        .await
        .unwrap()
}

#[tokio::test]
async fn set_from_stdin_then_list_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    import_demo_bank(dir.path(), &config);

    let set = strongroom(
        &config,
        &["secrets", "set", "demo-bank", "--user", "alice-id"],
        "alice\n`$(id)`%20 \nJBSWY3DPEHPK3PXP\n",
    );
    let list = strongroom(&config, &["secrets", "list"], "");

    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("demo-bank\talice-id\ttotp\t"), "{listed}");
    assert!(
        !listed.contains("alice\t") && !listed.contains("$(id)"),
        "{listed}"
    );
    let credentials = stored(
        dir.path(),
        &CredentialRef::personal("demo-bank", "alice-id").unwrap(),
    )
    .await;
    assert_eq!(credentials.username.expose(), "alice");
    assert_eq!(credentials.password.expose(), "`$(id)`%20 ");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("data/credentials.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn terminal_set_hides_password_and_seed() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    import_demo_bank(dir.path(), &config);

    let run = terminal_support::run_at_terminal(
        &config,
        &["secrets", "set", "demo-bank"],
        &[
            Typed {
                prompt: "Username",
                line: "alice-at-terminal",
                hidden: false,
            },
            Typed {
                prompt: "Password",
                line: "Bank-Pass-Typed-7",
                hidden: true,
            },
            Typed {
                prompt: "TOTP seed",
                line: "JBSWY3DPEHPK3PXP",
                hidden: true,
            },
        ],
    );

    // The username stays visible, which also shows that the terminal echoes.
    assert!(run.shown.contains("alice-at-terminal"), "{:?}", run.shown);
    assert!(!run.shown.contains("Bank-Pass-Typed-7"), "{:?}", run.shown);
    assert!(!run.shown.contains("JBSWY3DPEHPK3PXP"), "{:?}", run.shown);
    run.assert_succeeded_without_echo();
    let credentials = stored(dir.path(), &CredentialRef::shared("demo-bank").unwrap()).await;
    assert_eq!(credentials.username.expose(), "alice-at-terminal");
    assert_eq!(credentials.password.expose(), "Bank-Pass-Typed-7");
    assert_eq!(
        credentials.totp_seed.unwrap().as_text().expose(),
        "JBSWY3DPEHPK3PXP"
    );
}

#[tokio::test]
async fn set_from_files_keeps_the_value_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    import_demo_bank(dir.path(), &config);
    std::fs::write(dir.path().join("user"), "team\n").unwrap();
    std::fs::write(dir.path().join("pass"), "pässwörd€ \n").unwrap();

    let user_file = dir.path().join("user");
    let pass_file = dir.path().join("pass");
    let set = strongroom(
        &config,
        &[
            "secrets",
            "set",
            "demo-bank",
            "--no-totp",
            "--username-file",
            user_file.to_str().unwrap(),
            "--password-file",
            pass_file.to_str().unwrap(),
        ],
        "",
    );

    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let credentials = stored(dir.path(), &CredentialRef::shared("demo-bank").unwrap()).await;
    assert_eq!(credentials.password.expose(), "pässwörd€ ");
    assert!(credentials.totp_seed.is_none());
}

#[tokio::test]
async fn two_line_password_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    import_demo_bank(dir.path(), &config);
    let pass_file = dir.path().join("pass");
    std::fs::write(&pass_file, "Mk-first\nsecond\n").unwrap();

    let set = strongroom(
        &config,
        &[
            "secrets",
            "set",
            "demo-bank",
            "--no-totp",
            "--password-file",
            pass_file.to_str().unwrap(),
        ],
        "alice\n",
    );
    let list = strongroom(&config, &["secrets", "list"], "");

    assert_eq!(set.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&set.stderr);
    assert!(
        stderr.contains("password") && stderr.contains("contains a line break"),
        "{stderr}"
    );
    assert!(!stderr.contains("Mk-"), "{stderr}");
    assert!(String::from_utf8_lossy(&list.stdout).trim().is_empty());
}

#[tokio::test]
async fn infisical_source_refuses_local_commands() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[secrets]\nsource = \"infisical\"\n[secrets.infisical]\nurl = \"https://infisical.bank.example\"\nclient_id = \"id\"\nclient_secret = \"env:INFISICAL_CLIENT_SECRET\"\nproject_id = \"p\"\nenvironment = \"prod\"\n",
    );
    assert!(strongroom(&config, &["migrate"], "").status.success());

    let list = strongroom(&config, &["secrets", "list"], "");

    assert_eq!(list.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&list.stderr).contains("manage credentials in Infisical"),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
}

#[tokio::test]
async fn unknown_site_is_rejected_with_known_sites() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    import_demo_bank(dir.path(), &config);

    let set = strongroom(
        &config,
        &["secrets", "set", "demo-bnak", "--no-totp"],
        "alice\npass\n",
    );

    assert_eq!(set.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&set.stderr);
    assert!(stderr.contains("no site named \"demo-bnak\""), "{stderr}");
    assert!(stderr.contains("known sites: demo-bank"), "{stderr}");
}

#[tokio::test]
async fn locked_credential_is_listed_and_unlocked() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    import_demo_bank(dir.path(), &config);
    let reference = CredentialRef::shared("demo-bank").unwrap();
    let db = open_database(dir.path()).await;
    for _ in 0..2 {
        broker::secrets::usage::record_login(&db, &reference, false, 2, 1_000)
            .await
            .unwrap();
    }

    let locked = strongroom(&config, &["secrets", "locked"], "");
    let unlock = strongroom(&config, &["secrets", "unlock", "demo-bank"], "");
    let after = strongroom(&config, &["secrets", "locked"], "");
    let again = strongroom(&config, &["secrets", "unlock", "demo-bank"], "");

    assert!(
        String::from_utf8_lossy(&locked.stdout).contains("demo-bank\t(shared)\t2 failed"),
        "{}",
        String::from_utf8_lossy(&locked.stdout)
    );
    assert!(
        unlock.status.success(),
        "{}",
        String::from_utf8_lossy(&unlock.stderr)
    );
    assert!(String::from_utf8_lossy(&after.stdout).trim().is_empty());
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("no credential is locked"),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not locked"));
}

#[tokio::test]
async fn site_list_shows_auto_login() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    import_demo_bank(dir.path(), &config);

    let list = strongroom(&config, &["site", "list"], "");

    assert!(list.status.success());
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        "demo-bank\tenabled\thttps://www.demo-bank.example/\tno auto-login\tshared credential\n"
    );
}

#[tokio::test]
async fn dual_control_import_needs_admin() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[sites]\ndual_control = true\n");
    let file = write_sites_file(dir.path());

    let import = strongroom(&config, &["site", "import", file.to_str().unwrap()], "");
    let list = strongroom(&config, &["site", "list"], "");

    assert_eq!(import.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&import.stderr).contains("--admin NAME"),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).is_empty());
}

const ADMIN_PASSWORD: &str = "a long admin passphrase";

/// Creates the admin `username` with a password and an enrolled TOTP secret, and
/// returns the secret.
async fn add_admin(dir: &Path, db: &Database, username: &str) -> broker::auth::totp::TotpSecret {
    use broker::auth::{Role, secret_key::TotpKey, totp::TotpSecret, users};

    let key = TotpKey::load_or_create(&dir.join("data")).unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let secret = TotpSecret::generate();
    let sealed = key.seal(&id, secret.as_bytes()).unwrap();
    let hash = broker::auth::password::hash(ADMIN_PASSWORD).unwrap();
    let roles = std::collections::BTreeSet::from([Role::Admin]);
    let user = users::NewLocalUser {
        id: &id,
        username,
        display_name: username,
        password_hash: &hash,
        sealed_totp: Some(&sealed),
        roles: &roles,
    };
    users::create_local(db, user, chrono::Utc::now().timestamp_millis())
        .await
        .unwrap();
    secret
}

fn current_code(secret: &broker::auth::totp::TotpSecret) -> String {
    secret.code_at(chrono::Utc::now().timestamp() as u64)
}

/// Returns the `auth.mfa.challenge` events of the command line, as outcome and details.
async fn cli_challenges(db: &Database) -> Vec<(String, String)> {
    let audit = broker::audit::AuditLog::new(db.clone(), Arc::new(SystemClock));
    audit
        .list(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == "auth.mfa.challenge" && event.details.contains("\"cli\""))
        .map(|event| (event.outcome, event.details))
        .collect()
}

#[tokio::test]
async fn site_change_needs_confirmed_admins() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[sites]\ndual_control = true\n");
    assert!(strongroom(&config, &["migrate"], "").status.success());
    let db = open_database(dir.path()).await;
    let alice = add_admin(dir.path(), &db, "alice").await;
    let bob = add_admin(dir.path(), &db, "bob").await;
    let file = write_sites_file(dir.path());
    let file = file.to_str().unwrap();

    // A name without the admin's password and code changes nothing.
    let unconfirmed = strongroom(&config, &["site", "import", file, "--admin", "alice"], "");
    assert_eq!(unconfirmed.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unconfirmed.stderr).contains("password line is missing"),
        "{}",
        String::from_utf8_lossy(&unconfirmed.stderr)
    );
    let wrong_password = strongroom(
        &config,
        &["site", "import", file, "--admin", "alice"],
        &format!("not the password\n{}\n", current_code(&alice)),
    );
    assert_eq!(wrong_password.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&wrong_password.stderr).contains("is wrong; nothing was changed"),
        "{}",
        String::from_utf8_lossy(&wrong_password.stderr)
    );
    let pending = strongroom(&config, &["site", "pending"], "");
    assert!(String::from_utf8_lossy(&pending.stdout).is_empty());

    // Alice requests the change with her password and code on standard input.
    let import = strongroom(
        &config,
        &["site", "import", file, "--admin", "alice"],
        &format!("{ADMIN_PASSWORD}\n{}\n", current_code(&alice)),
    );
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let pending = strongroom(&config, &["site", "pending"], "");
    let pending = String::from_utf8_lossy(&pending.stdout);
    let change_id = pending.split('\t').next().unwrap().trim().to_owned();
    assert!(pending.contains("demo-bank"), "{pending}");

    // Bob's wrong code is refused; a confirmation file others can read is refused.
    let wrong_code = strongroom(
        &config,
        &["site", "approve", &change_id, "--admin", "bob"],
        &format!("{ADMIN_PASSWORD}\n000000\n"),
    );
    assert_eq!(wrong_code.status.code(), Some(2));
    let confirm_file = dir.path().join("bob-confirm");
    std::fs::write(
        &confirm_file,
        format!("{ADMIN_PASSWORD}\n{}\n", current_code(&bob)),
    )
    .unwrap();
    std::fs::set_permissions(
        &confirm_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let confirm = confirm_file.to_str().unwrap();
    let readable = strongroom(
        &config,
        &[
            "site",
            "approve",
            &change_id,
            "--admin",
            "bob",
            "--confirm-file",
            confirm,
        ],
        "",
    );
    assert_eq!(readable.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&readable.stderr).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&readable.stderr)
    );
    let list = strongroom(&config, &["site", "list"], "");
    assert!(String::from_utf8_lossy(&list.stdout).is_empty());

    // Bob approves with his confirmation file.
    std::fs::set_permissions(
        &confirm_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let approve = strongroom(
        &config,
        &[
            "site",
            "approve",
            &change_id,
            "--admin",
            "bob",
            "--confirm-file",
            confirm,
        ],
        "",
    );
    assert!(
        approve.status.success(),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );
    let list = strongroom(&config, &["site", "list"], "");
    assert!(String::from_utf8_lossy(&list.stdout).contains("demo-bank"));

    // The same code cannot confirm a second time.
    let replayed = strongroom(
        &config,
        &[
            "site",
            "reject",
            &change_id,
            "--admin",
            "bob",
            "--confirm-file",
            confirm,
        ],
        "",
    );
    assert_eq!(replayed.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&replayed.stderr).contains("is wrong"),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );

    let challenges = cli_challenges(&db).await;
    let outcomes: Vec<&str> = challenges
        .iter()
        .map(|(outcome, _)| outcome.as_str())
        .collect();
    assert_eq!(
        outcomes,
        ["failure", "success", "failure", "success", "failure"],
        "{challenges:?}"
    );
    for (reason, (_, details)) in ["wrong_password", "", "wrong_code", "", "replayed_code"]
        .iter()
        .zip(&challenges)
    {
        assert!(details.contains(reason), "{details}");
        assert!(details.contains("\"os_uid\""), "{details}");
    }
    std::fs::remove_file(&confirm_file).unwrap();
}

#[tokio::test]
async fn terminal_approve_hides_password_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[sites]\ndual_control = true\n");
    assert!(strongroom(&config, &["migrate"], "").status.success());
    let db = open_database(dir.path()).await;
    let alice = add_admin(dir.path(), &db, "alice").await;
    let bob = add_admin(dir.path(), &db, "bob").await;
    let file = write_sites_file(dir.path());
    let import = strongroom(
        &config,
        &["site", "import", file.to_str().unwrap(), "--admin", "alice"],
        &format!("{ADMIN_PASSWORD}\n{}\n", current_code(&alice)),
    );
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let pending = strongroom(&config, &["site", "pending"], "");
    let pending = String::from_utf8_lossy(&pending.stdout);
    let change_id = pending.split('\t').next().unwrap().trim().to_owned();

    let code = current_code(&bob);
    let run = terminal_support::run_at_terminal(
        &config,
        &["site", "approve", &change_id, "--admin", "bob"],
        &[
            Typed {
                prompt: "Password of bob",
                line: ADMIN_PASSWORD,
                hidden: true,
            },
            Typed {
                prompt: "one-time code",
                line: &code,
                hidden: true,
            },
        ],
    );

    assert!(!run.shown.contains(ADMIN_PASSWORD), "{:?}", run.shown);
    assert!(!run.shown.contains(&code), "{:?}", run.shown);
    run.assert_succeeded_without_echo();
    let list = strongroom(&config, &["site", "list"], "");
    assert!(String::from_utf8_lossy(&list.stdout).contains("demo-bank"));
}
