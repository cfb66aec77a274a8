//! `strongroom secrets ...` run as a process against a SQLite data directory.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use broker::clock::SystemClock;
use broker::config::{DatabaseConfig, DatabaseTarget};
use broker::db::Database;
use broker::secrets::{CredentialKey, CredentialRef, CredentialSource, LocalStore};

fn strongroom(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strongroom"));
    // Variables such as STRONGROOM_TEST_POSTGRES_URL would read as configuration keys.
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("STRONGROOM_")) {
        command.env_remove(name);
    }
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

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("strongroom.toml");
    std::fs::write(&path, format!("data_dir = {:?}\n{extra}", dir.join("data"))).unwrap();
    path
}

/// Imports the site `demo-bank`, which the credential commands require.
fn import_demo_bank(dir: &Path, config: &Path) {
    let file = dir.join("sites.toml");
    std::fs::write(
        &file,
        "[[site]]\nname = \"demo-bank\"\ndisplay_name = \"Demo Bank\"\nstart_url = \"https://www.demo-bank.example/\"\nallowed_hosts = [\"www.demo-bank.example\"]\nrecording_retention_days = 30\n",
    )
    .unwrap();
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

    assert_eq!(set.status.code(), Some(1));
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

    let list = strongroom(&config, &["secrets", "list"], "");

    assert_eq!(list.status.code(), Some(1));
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

    assert_eq!(set.status.code(), Some(1));
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
    assert_eq!(again.status.code(), Some(1));
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
    let file = dir.path().join("sites.toml");
    std::fs::write(
        &file,
        "[[site]]\nname = \"demo-bank\"\ndisplay_name = \"Demo Bank\"\nstart_url = \"https://www.demo-bank.example/\"\nallowed_hosts = [\"www.demo-bank.example\"]\nrecording_retention_days = 30\n",
    )
    .unwrap();

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
