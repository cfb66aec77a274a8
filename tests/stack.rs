//! A broker stack for the session tests: the broker and its launcher in this process, on
//! a fresh data directory with its SQLite database, the real Docker engine and the
//! workspace image. People are local accounts with a password and an authenticator.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker::auth::Role;
use broker::auth::secret_key::TotpKey;
use broker::auth::totp::TotpSecret;
use broker::auth::users;
use broker::db::Database;
use broker::server::{self, RunningBroker};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::browser::Browser;

/// The password of every account a stack creates.
pub const PASSWORD: &str = "a long test passphrase";

/// A site whose bank does not exist: the workspace's page load goes through the egress
/// proxy, which refuses or fails it, and the browser shows its error page. That is
/// enough for tests about streams, viewers and session ends.
pub const UNREACHABLE_DEMO_SITE: &str = r#"
[[site]]
name = "demo"
display_name = "Demo Bank"
start_url = "https://bank.invalid/login"
allowed_hosts = ["bank.invalid"]
recording_retention_days = 30
"#;

/// A check that a test runs on the loaded configuration.
type ConfigCheck = Box<dyn FnOnce(&broker::config::Config) + Send>;

/// The options in which the test files' stacks differ.
pub struct StackBuilder {
    subnet_range: String,
    env: Vec<(String, String)>,
    image_check_only_when_built: bool,
    config_check: Option<ConfigCheck>,
}

impl StackBuilder {
    /// Adds a configuration override, as `STRONGROOM_*` environment variables give them.
    /// A later override of the same name wins.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> StackBuilder {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Adds each of `overrides` as with [`StackBuilder::env`].
    pub fn envs<V: AsRef<str>>(mut self, overrides: &[(&str, V)]) -> StackBuilder {
        for (name, value) in overrides {
            self = self.env(name, value.as_ref());
        }
        self
    }

    /// Runs sessions in `STRONGROOM_TEST_WORKSPACE_IMAGE` when it is set and not empty;
    /// otherwise the launcher picks the image built from this checkout.
    pub fn workspace_image_from_env(self) -> StackBuilder {
        match std::env::var("STRONGROOM_TEST_WORKSPACE_IMAGE") {
            Ok(image) if !image.is_empty() => {
                self.env("STRONGROOM_LAUNCHER__IMAGE", format!("\"{image}\""))
            }
            _ => self,
        }
    }

    /// Checks that the workspace image is present only when the launcher uses the image
    /// built from this checkout, so that a test can name an image that does not exist.
    pub fn image_check_only_when_built(mut self) -> StackBuilder {
        self.image_check_only_when_built = true;
        self
    }

    /// Runs `check` on the loaded configuration before anything starts, so that a test
    /// can assert that its overrides took effect.
    pub fn check_config(
        mut self,
        check: impl FnOnce(&broker::config::Config) + Send + 'static,
    ) -> StackBuilder {
        self.config_check = Some(Box::new(check));
        self
    }

    /// Starts the launcher, waits for it to answer, checks the workspace image and
    /// starts the broker.
    pub async fn start(self) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let instance_id = broker::instance::load_or_create(dir.path()).unwrap();
        let env = [
            ("STRONGROOM_DATA_DIR", dir.path().display().to_string()),
            ("STRONGROOM_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
            ("STRONGROOM_LAUNCHER__MODE", "external".to_owned()),
            (
                "STRONGROOM_LAUNCHER__SUBNET_RANGE",
                format!("\"{}\"", self.subnet_range),
            ),
            // Bridges of their own: the rules that `strongroom host-setup` installs for a
            // broker on this machine match the default `srs-` bridges and drop packets from
            // outside that broker's range, which would cut the test's workspaces off.
            (
                "STRONGROOM_LAUNCHER__BRIDGE_PREFIX",
                "\"srt-\"".to_owned(),
            ),
        ]
        .map(|(name, value)| (name.to_owned(), value))
        .into_iter()
        .chain(self.env);
        let config = broker::config::load(None, env).expect("test configuration is valid");
        if let Some(check) = self.config_check {
            check(&config);
        }
        let image_from_build = config.launcher.image_from_build;

        // The launcher runs in this process here; `strongroom serve` runs it as a child.
        let launcher_config =
            broker::launcher_process::resolved_config(&config, instance_id).unwrap();
        let launcher_stop = CancellationToken::new();
        let launcher = tokio::spawn(broker::launcher_process::run_standalone(
            launcher_config,
            config.launcher.image_source.clone(),
            launcher_stop.clone(),
        ));
        let client = launcher::LauncherClient::new(config.sessions.launcher_socket.clone());
        let health = wait_for(
            "the launcher to answer",
            Duration::from_secs(30),
            || async { client.health().await.ok() },
        )
        .await;
        if image_from_build || !self.image_check_only_when_built {
            assert_eq!(
                health.image_present,
                Some(true),
                "workspace image missing: run `strongroom image build` ({health:?})"
            );
        }

        let broker = server::start(config).await.expect("broker starts");
        let base = broker.base_url();
        Stack {
            broker: Some(broker),
            launcher_stop,
            launcher: Some(launcher),
            instance_id,
            dir,
            base,
        }
    }
}

/// A running broker and launcher. Dropping it removes the instance's containers and
/// networks, so that a test failing before [`Stack::stop`] leaves nothing behind.
pub struct Stack {
    broker: Option<RunningBroker>,
    launcher_stop: CancellationToken,
    launcher: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub instance_id: Uuid,
    pub dir: tempfile::TempDir,
    /// The portal's base URL, such as `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Stack {
    /// A stack whose sessions take their subnets from `subnet_range`. Each test file
    /// names its own range, apart from those of the other test files.
    pub fn builder(subnet_range: &str) -> StackBuilder {
        StackBuilder {
            subnet_range: subnet_range.to_owned(),
            env: Vec::new(),
            image_check_only_when_built: false,
            config_check: None,
        }
    }

    pub fn broker(&self) -> &RunningBroker {
        self.broker.as_ref().unwrap()
    }

    pub fn db(&self) -> Database {
        self.broker().state.db.clone()
    }

    /// Creates a local account with [`PASSWORD`], an authenticator and these roles;
    /// returns its id and authenticator secret.
    pub async fn add_user(&self, username: &str, roles: &[Role]) -> (String, TotpSecret) {
        let key = TotpKey::load_or_create(self.dir.path()).unwrap();
        let id = Uuid::new_v4().to_string();
        let secret = TotpSecret::generate();
        let sealed = key.seal(&id, secret.as_bytes()).unwrap();
        let hash = broker::auth::password::hash(PASSWORD).unwrap();
        let roles: BTreeSet<Role> = roles.iter().copied().collect();
        let user = users::NewLocalUser {
            id: &id,
            username,
            display_name: username,
            password_hash: &hash,
            sealed_totp: Some(&sealed),
            roles: &roles,
        };
        users::create_local(&self.db(), user, chrono::Utc::now().timestamp_millis())
            .await
            .unwrap();
        (id, secret)
    }

    /// Grants the account `user_id` the site `site`.
    pub async fn grant(&self, user_id: &str, site: &str) {
        let now = chrono::Utc::now().timestamp_millis();
        broker::sites::grant(&self.db(), user_id, site, "system:test", now)
            .await
            .unwrap();
    }

    /// Writes `toml` to `file_name` in the data directory and imports its sites.
    pub async fn import_sites(&self, file_name: &str, toml: &str) -> PathBuf {
        let path = self.dir.path().join(file_name);
        std::fs::write(&path, toml).unwrap();
        broker::sites::import_file(&self.db(), &path).await.unwrap();
        path
    }

    /// Signs an existing account in through the portal's form and returns a client that
    /// carries its portal cookie and does not follow redirects.
    pub async fn sign_in(&self, username: &str, totp: &TotpSecret) -> Person {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let code = totp.code_at(chrono::Utc::now().timestamp() as u64);
        let signed_in = client
            .post(format!("{}/auth/login", self.base))
            .header("origin", &self.base)
            .form(&[
                ("username", username),
                ("password", PASSWORD),
                ("code", code.as_str()),
                ("next", "/"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(
            signed_in.status(),
            reqwest::StatusCode::SEE_OTHER,
            "{username} cannot sign in"
        );
        Person {
            user_id: String::new(),
            client,
            jar,
            base: self.base.clone(),
        }
    }

    /// Creates an account with these roles, grants it `sites` and signs it in.
    pub async fn person(&self, username: &str, roles: &[Role], sites: &[&str]) -> Person {
        let (user_id, totp) = self.add_user(username, roles).await;
        for site in sites {
            self.grant(&user_id, site).await;
        }
        Person {
            user_id,
            ..self.sign_in(username, &totp).await
        }
    }

    /// Signs an existing account in through the portal's form in `browser`; returns once
    /// the form is sent.
    pub async fn sign_in_browser(&self, browser: &Browser, username: &str, totp: &TotpSecret) {
        sign_in_browser_at(browser, &self.base, username, totp).await;
    }

    /// Stops the broker, which ends its live sessions, then the launcher.
    pub async fn shut_down(&mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await;
        }
        self.launcher_stop.cancel();
        if let Some(launcher) = self.launcher.take() {
            launcher.await.unwrap().unwrap();
        }
    }

    /// Stops the broker and the launcher, checks that no container or network of the
    /// instance is left, and returns the data directory for inspection.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shut_down().await;
        assert_eq!(
            instance_objects(self.instance_id).await,
            (0, 0),
            "containers or networks left behind"
        );
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Waits up to a minute until no container or network of the instance is left;
    /// `what` names the objects in the failure message.
    pub async fn wait_until_cleaned(&self, what: &str) {
        let instance_id = self.instance_id;
        wait_for(what, Duration::from_secs(60), || async {
            (instance_objects(instance_id).await == (0, 0)).then_some(())
        })
        .await;
    }

    /// Returns the path of the data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        remove_instance_objects(self.instance_id);
    }
}

/// Removes the containers and networks labelled with this broker instance, ignoring
/// failures, for a test that ends before its own clean-up.
pub fn remove_instance_objects(instance_id: Uuid) {
    let label = format!("label=strongroom.broker={}", instance_id);
    for (list, remove) in [
        (vec!["ps", "-aq", "--filter", &label], vec!["rm", "-f"]),
        (
            vec!["network", "ls", "-q", "--filter", &label],
            vec!["network", "rm"],
        ),
    ] {
        let Ok(output) = std::process::Command::new("docker").args(&list).output() else {
            continue;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(&remove)
                .args(&ids)
                .output();
        }
    }
}

/// A person's portal client: it carries the portal cookie and does not follow
/// redirects.
pub struct Person {
    /// The account's id; empty for a client made by [`Stack::sign_in`].
    pub user_id: String,
    pub client: reqwest::Client,
    pub jar: Arc<reqwest::cookie::Jar>,
    pub base: String,
}

impl Person {
    /// Launches `site` from the portal form; returns the session id and the viewer
    /// page's path.
    pub async fn launch(&self, site: &str) -> (Uuid, String) {
        let launched = self
            .client
            .post(format!("{}/sessions", self.base))
            .header("origin", &self.base)
            .form(&[("site", site)])
            .send()
            .await
            .unwrap();
        assert_eq!(
            launched.status(),
            reqwest::StatusCode::SEE_OTHER,
            "{}",
            launched.text().await.unwrap()
        );
        let location = launched.headers()["location"].to_str().unwrap().to_owned();
        (
            location.trim_start_matches("/sessions/").parse().unwrap(),
            location,
        )
    }

    /// Ends a session through the portal form (`POST /sessions/{id}/end`).
    pub async fn end(&self, session_id: Uuid) {
        let ended = self
            .client
            .post(format!("{}/sessions/{session_id}/end", self.base))
            .header("origin", &self.base)
            .send()
            .await
            .unwrap();
        assert!(
            ended.status().is_redirection(),
            "ending session {session_id} failed: {}",
            ended.status()
        );
    }
}

/// Signs an existing account in through the sign-in form of the portal at `portal` (a
/// base URL such as `http://127.0.0.1:PORT`) in `browser`; returns once the form is sent.
pub async fn sign_in_browser_at(
    browser: &Browser,
    portal: &str,
    username: &str,
    totp: &TotpSecret,
) {
    browser.open(&format!("{portal}/")).await;
    browser.type_into("input[name=username]", username).await;
    browser.type_into("input[name=password]", PASSWORD).await;
    browser
        .type_into(
            "input[name=code]",
            &totp.code_at(chrono::Utc::now().timestamp() as u64),
        )
        .await;
    browser.click("button[type=submit]").await;
}

/// Polls `probe` every 200 ms until it returns a value; fails the test after `timeout`,
/// naming `what` it waited for.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Counts the containers and networks labelled with this broker instance.
pub async fn instance_objects(instance_id: Uuid) -> (usize, usize) {
    let label = format!("label=strongroom.broker={instance_id}");
    let mut counts = [0; 2];
    for (count, args) in counts.iter_mut().zip([
        ["ps", "-aq", "--filter", &label].as_slice(),
        ["network", "ls", "-q", "--filter", &label].as_slice(),
    ]) {
        let output = tokio::process::Command::new("docker")
            .args(args)
            .output()
            .await
            .expect("docker runs");
        assert!(
            output.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        *count = String::from_utf8_lossy(&output.stdout).lines().count();
    }
    (counts[0], counts[1])
}
