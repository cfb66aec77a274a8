//! A real `strongroom serve` process killed with SIGKILL and started again, against the
//! real Docker engine (Debian docker.io 20.10) and its embedded launcher child.
//!
//! Most sessions are launched by a session service in the test process that shares the
//! broker's database, launcher socket and instance id, because the portal would need a
//! signed-in person for each launch. The broker process alone runs recovery. The
//! recording test signs a person in over HTTP and launches through the portal, so that
//! the broker's own stream hub records the session.

mod sessions_support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptions;
use broker::audit::AuditLog;
use broker::auth::secret_key::TotpKey;
use broker::auth::totp::TotpSecret;
use broker::auth::{Role, users};
use broker::clock::{Clock, SystemClock};
use broker::config::Config;
use broker::recordings::catalogue;
use broker::sessions::store::{self, Reservation, SessionState};
use broker::sessions::{RecorderPreflight, SessionDeps, SessionService};
use broker::testing::{TestBackend, TestDatabase};
use launcher::labels;
use sessions_support::{
    InstanceCleanup, SITE, WAIT, count_instance_objects, docker, import_demo_site, person,
    running_containers, test_image, wait_until,
};
use uuid::Uuid;

/// Session subnets of this test, apart from the other Docker tests' ranges.
const SUBNET_RANGE: &str = "172.26.0.0/16";

/// One `strongroom serve` process; killed with SIGKILL when dropped.
struct ServeProcess {
    child: Child,
    log: PathBuf,
}

impl ServeProcess {
    fn start(env: &[(String, String)], log: PathBuf) -> ServeProcess {
        Self::spawn(env, log, false)
    }

    /// Starts the broker as the leader of its own process group, as a shell starts a
    /// terminal job.
    fn start_as_job(env: &[(String, String)], log: PathBuf) -> ServeProcess {
        Self::spawn(env, log, true)
    }

    fn spawn(env: &[(String, String)], log: PathBuf, own_group: bool) -> ServeProcess {
        use std::os::unix::process::CommandExt;
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_strongroom"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output);
        if own_group {
            command.process_group(0);
        }
        let child = command.spawn().expect("start strongroom serve");
        ServeProcess { child, log }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Kills the broker with SIGKILL, so that none of its shutdown code runs.
    fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL the broker");
        self.child.wait().expect("reap the broker");
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends SIGKILL to processes still alive when dropped, so that a failed test leaves no
/// launcher behind.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if process_alive(pid) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Process ids whose parent is `parent`, read from `/proc/*/stat`.
fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name in brackets may contain spaces; the fields after it do not.
        let after_name = &stat[stat.rfind(')').map_or(0, |end| end + 1)..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        if fields.get(1).and_then(|ppid| ppid.parse::<i32>().ok()) == Some(parent) {
            children.push(pid);
        }
    }
    children
}

/// True while `pid` exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let after_name = &stat[stat.rfind(')').map_or(0, |end| end + 1)..];
            after_name.split_whitespace().next() != Some("Z")
        }
        Err(_) => false,
    }
}

/// Name of the variable that passes the PostgreSQL password to the broker, because the
/// configuration rejects a password inside `database.url`.
const PASSWORD_VARIABLE: &str = "STRONGROOM_TEST_DATABASE_PASSWORD";

fn serve_env(data_dir: &Path, database_url: &str, image: &str) -> Vec<(String, String)> {
    let (database_url, password) = broker::testing::split_password(database_url);
    let mut env: Vec<(String, String)> = [
        ("STRONGROOM_DATA_DIR", data_dir.display().to_string()),
        ("STRONGROOM_DATABASE__URL", format!("\"{database_url}\"")),
        ("STRONGROOM_SERVER__LISTEN", "\"127.0.0.1:0\"".to_owned()),
        ("STRONGROOM_LAUNCHER__IMAGE", format!("\"{image}\"")),
        (
            "STRONGROOM_LAUNCHER__SUBNET_RANGE",
            format!("\"{SUBNET_RANGE}\""),
        ),
        ("STRONGROOM_SESSIONS__DEFAULT_QUOTA", "2".to_owned()),
        // Only the recovery at start reconciles: the test's own session service shares
        // the instance id, and a periodic pass could remove a workspace whose launch has
        // returned but whose session is not marked running yet.
        (
            "STRONGROOM_SESSIONS__RECONCILE_INTERVAL_SECONDS",
            "3600".to_owned(),
        ),
        ("STRONGROOM_LOG", "info".to_owned()),
    ]
    .map(|(name, value)| (name.to_owned(), value))
    .to_vec();
    if let Some(password) = password {
        env.push((
            "STRONGROOM_DATABASE__PASSWORD".to_owned(),
            format!("\"env:{PASSWORD_VARIABLE}\""),
        ));
        env.push((PASSWORD_VARIABLE.to_owned(), password));
    }
    env
}

/// The session service of the test process, sharing the broker's database, launcher
/// socket and instance id.
fn session_service(
    config: &Config,
    database: &TestDatabase,
    instance_id: Uuid,
) -> (SessionService, AuditLog) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let audit = AuditLog::new(database.db.clone(), clock.clone());
    let service = SessionService::new(SessionDeps {
        db: database.db.clone(),
        audit: audit.clone(),
        clock,
        launcher: launcher::LauncherClient::new(config.sessions.launcher_socket.clone())
            .with_timeout(WAIT),
        egress: Arc::new(egress::Registry::new()),
        recorder: RecorderPreflight::from_config(&config.sessions),
        config: config.sessions.clone(),
        instance_id: instance_id.to_string(),
    });
    (service, audit)
}

/// Stores a reservation that a launch never got past, as a broker killed mid-launch
/// leaves it.
async fn reserve_interrupted(database: &TestDatabase, user_id: &str, instance_id: Uuid) -> Uuid {
    let session_id = Uuid::new_v4();
    let reservation = Reservation {
        session_id,
        user_id,
        site: SITE,
        instance_id: &instance_id.to_string(),
        client_addr: None,
        now_ms: chrono::Utc::now().timestamp_millis(),
        default_quota: 2,
        site_limit: None,
        host_limit: 8,
    };
    let outcome = store::reserve(&database.db, &reservation).await.unwrap();
    assert_eq!(outcome, store::ReserveOutcome::Reserved);
    session_id
}

async fn end_reason(database: &TestDatabase, session_id: Uuid) -> Option<String> {
    let record = store::get(&database.db, session_id)
        .await
        .unwrap()
        .expect("session row");
    (record.state == SessionState::Ended).then(|| record.end_reason.unwrap_or_default())
}

/// Waits, up to [`WAIT`], until `probe` returns a value, and returns it; on timeout the
/// failure names `what` and shows the broker's output.
async fn wait_for_broker<T, F, Fut>(serve: &ServeProcess, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; broker output:\n{}",
            serve.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the broker's recovery has ended `session_id`, and returns the reason.
async fn wait_for_end(database: &TestDatabase, session_id: Uuid, serve: &ServeProcess) -> String {
    let what = format!("the broker to end session {session_id}");
    wait_for_broker(serve, &what, || end_reason(database, session_id)).await
}

/// Creates, without starting, a labelled workspace container of `session_id`, as a
/// launcher killed between create and start leaves it.
async fn create_unstarted_workspace(instance_id: Uuid, session_id: Uuid, owner: &str, image: &str) {
    let labels = HashMap::from([
        (labels::INSTANCE.to_owned(), instance_id.to_string()),
        (labels::SESSION.to_owned(), session_id.to_string()),
        (labels::OWNER.to_owned(), owner.to_owned()),
        (labels::SITE.to_owned(), SITE.to_owned()),
        (labels::ROLE.to_owned(), "workspace".to_owned()),
        (labels::CREATED.to_owned(), chrono::Utc::now().to_rfc3339()),
    ]);
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        labels: Some(labels),
        network_disabled: Some(true),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(format!("strongroom-w-{session_id}")),
        ..Default::default()
    };
    docker()
        .create_container(Some(options), body)
        .await
        .expect("create the unstarted workspace");
}

async fn killed_broker_restart(backend: TestBackend) {
    let database = TestDatabase::new(backend).await;
    let data_dir = tempfile::tempdir().unwrap();
    let instance_id = broker::instance::load_or_create(data_dir.path()).unwrap();
    let _cleanup = InstanceCleanup(instance_id.to_string());
    let image = test_image().await;
    let database_url = database
        .postgres_url()
        .unwrap_or_else(|| format!("sqlite://{}", database.dir.path().join("test.db").display()));
    let env = serve_env(data_dir.path(), &database_url, &image);
    let config = broker::config::load(None, env.clone()).expect("test configuration is valid");

    import_demo_site(&database, None).await;
    for user in ["alice", "bob"] {
        broker::sites::grant(&database.db, user, SITE, "user:test-admin", 0)
            .await
            .unwrap();
    }
    let (service, _audit) = session_service(&config, &database, instance_id);

    // A reservation from "before" the first start tells when the broker's recovery ran:
    // recovery ends it, and a launch made earlier could be ended by that recovery too.
    let first_marker = reserve_interrupted(&database, "carol", instance_id).await;
    let log = data_dir.path().join("serve.log");
    let mut serve = ServeProcess::start(&env, log.clone());
    assert_eq!(
        wait_for_end(&database, first_marker, &serve).await,
        "interrupted_by_restart"
    );

    let alice = person("alice");
    let bob = person("bob");
    let mut launched = Vec::new();
    for who in [&alice, &alice, &bob] {
        let session = service
            .launch(who, SITE, None)
            .await
            .unwrap_or_else(|error| {
                panic!("launch failed: {error}; broker output:\n{}", serve.output())
            });
        launched.push(session.session.id);
    }
    assert_eq!(running_containers(&instance_id.to_string()).await.len(), 3);
    let launchers = children_of(serve.pid());
    let _launchers_guard = KillOnDrop(launchers.clone());
    assert_eq!(
        launchers.len(),
        1,
        "serve runs one launcher child: {launchers:?}"
    );

    // SIGKILL: no shutdown code of the broker runs.
    serve.kill_hard();
    let launcher_pid = launchers[0];
    wait_until(
        "the launcher child to exit with its broker",
        || async move { !process_alive(launcher_pid) },
    )
    .await;
    assert_eq!(
        running_containers(&instance_id.to_string()).await.len(),
        3,
        "the workspaces outlive the killed broker"
    );

    // A launch of bob's that the broker died in between container create and start.
    let interrupted = reserve_interrupted(&database, "bob", instance_id).await;
    create_unstarted_workspace(instance_id, interrupted, "bob", &image).await;

    let serve = ServeProcess::start(&env, log);
    for session_id in &launched {
        assert_eq!(
            wait_for_end(&database, *session_id, &serve).await,
            "broker_restarted",
            "session {session_id}"
        );
    }
    assert_eq!(
        wait_for_end(&database, interrupted, &serve).await,
        "interrupted_by_restart"
    );
    wait_until("the broker to remove every leftover object", || async {
        count_instance_objects(&instance_id.to_string()).await == (0, 0)
    })
    .await;
    for user in ["alice", "bob"] {
        assert_eq!(
            store::count_live_for_user(&database.db, user)
                .await
                .unwrap(),
            0,
            "{user} holds no slot"
        );
    }

    // Bob launches again: names are per session, so no leftover name collides. The
    // service is new, as the restarted broker's would be: the old one's egress registry
    // stands for the killed process's memory.
    let (service, _audit) = session_service(&config, &database, instance_id);
    let again = service
        .launch(&bob, SITE, None)
        .await
        .unwrap_or_else(|error| panic!("launch after restart failed: {error}"));
    assert_eq!(again.session.state, SessionState::Running);
    assert_eq!(running_containers(&instance_id.to_string()).await.len(), 1);
    service
        .end_by(&bob, again.session.id)
        .await
        .expect("end the new session");
    assert_eq!(
        count_instance_objects(&instance_id.to_string()).await,
        (0, 0)
    );
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_restart_removes_its_workspaces() {
    killed_broker_restart(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_restart_removes_its_workspaces_on_postgres() {
    killed_broker_restart(TestBackend::Postgres).await;
}

/// A `strongroom serve` started as a terminal job on SQLite, after its start-up
/// recovery ran, with a session service of the test process.
struct JobBroker {
    serve: ServeProcess,
    _cleanup: InstanceCleanup,
    instance_id: Uuid,
    service: SessionService,
    _audit: AuditLog,
    database: TestDatabase,
    _data_dir: tempfile::TempDir,
}

impl JobBroker {
    /// Starts the broker with the demo site granted to `people`.
    async fn start(people: &[&str]) -> JobBroker {
        let database = TestDatabase::new(TestBackend::Sqlite).await;
        let data_dir = tempfile::tempdir().unwrap();
        let instance_id = broker::instance::load_or_create(data_dir.path()).unwrap();
        let cleanup = InstanceCleanup(instance_id.to_string());
        let image = test_image().await;
        let database_url = format!("sqlite://{}", database.dir.path().join("test.db").display());
        let env = serve_env(data_dir.path(), &database_url, &image);
        let config = broker::config::load(None, env.clone()).expect("test configuration is valid");
        import_demo_site(&database, None).await;
        for who in people {
            broker::sites::grant(&database.db, who, SITE, "user:test-admin", 0)
                .await
                .unwrap();
        }
        let (service, audit) = session_service(&config, &database, instance_id);

        // The broker's start-up recovery ends this marker session, which shows that it ran.
        let marker = reserve_interrupted(&database, "carol", instance_id).await;
        let serve = ServeProcess::start_as_job(&env, data_dir.path().join("serve.log"));
        assert_eq!(
            wait_for_end(&database, marker, &serve).await,
            "interrupted_by_restart"
        );
        JobBroker {
            serve,
            _cleanup: cleanup,
            instance_id,
            service,
            _audit: audit,
            database,
            _data_dir: data_dir,
        }
    }
}

/// A Ctrl-C in the terminal sends SIGINT to the whole foreground process group. The
/// broker then ends its live sessions through its launcher child, which must still be
/// running for that, and stops with nothing left on the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_to_process_group_ends_every_session() {
    let mut broker = JobBroker::start(&["alice"]).await;
    let (instance_id, database, service) = (broker.instance_id, &broker.database, &broker.service);
    let serve = &mut broker.serve;
    let group = serve.pid();

    let alice = person("alice");
    let session = service
        .launch(&alice, SITE, None)
        .await
        .unwrap_or_else(|error| panic!("launch failed: {error}; broker output:\n{}", serve.output()));
    assert_eq!(running_containers(&instance_id.to_string()).await.len(), 1);
    let launchers = children_of(group);
    let _launchers_guard = KillOnDrop(launchers.clone());

    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(group),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker did not stop within {WAIT:?} of SIGINT; output:\n{}",
            serve.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "broker exit {status}; output:\n{}", serve.output());

    assert_eq!(
        count_instance_objects(&instance_id.to_string()).await,
        (0, 0),
        "objects left after Ctrl-C; broker output:\n{}",
        serve.output()
    );
    let reason = end_reason(database, session.session.id).await;
    assert!(reason.is_some(), "session still live after Ctrl-C");
    for pid in launchers {
        assert!(!process_alive(pid), "launcher {pid} outlived the broker");
    }
}

/// Waits until the broker's log contains `text`.
async fn wait_for_log(serve: &ServeProcess, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !serve.output().contains(text) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {text:?} in the broker output:\n{}",
            serve.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A second Ctrl-C skips the graceful end of each session but still removes every
/// container and network of this broker before it exits, within a bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_removes_workspaces_at_once() {
    let mut broker = JobBroker::start(&["alice", "bob"]).await;
    let (instance_id, service) = (broker.instance_id, &broker.service);
    let serve = &mut broker.serve;
    let group = serve.pid();
    // Two sessions: the graceful shutdown ends them one after the other, so an exit
    // without cleanup leaves at least the second one's workspace behind.
    for who in ["alice", "bob"] {
        service
            .launch(&person(who), SITE, None)
            .await
            .unwrap_or_else(|error| panic!("launch failed: {error}; broker output:\n{}", serve.output()));
    }
    assert_eq!(running_containers(&instance_id.to_string()).await.len(), 2);
    let launchers = children_of(group);
    let _launchers_guard = KillOnDrop(launchers.clone());

    let interrupt = || {
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(group),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap()
    };
    interrupt();
    wait_for_log(serve, "Shutdown requested").await;
    interrupt();
    // The forced removal is bounded; the process exits soon after it.
    let bound = broker::signals::FORCED_CLEANUP_TIMEOUT + Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + bound;
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker did not exit within {bound:?} of the second SIGINT; output:\n{}",
            serve.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    assert_eq!(status.code(), Some(130), "output:\n{}", serve.output());
    assert!(serve.output().contains("Second stop signal"), "{}", serve.output());
    assert_eq!(
        count_instance_objects(&instance_id.to_string()).await,
        (0, 0),
        "objects left after two Ctrl-C; broker output:\n{}",
        serve.output()
    );
    let output = serve.output();
    assert!(
        output.contains("Removed this broker's workspaces after the second stop signal"),
        "{output}"
    );
    for pid in launchers {
        wait_until("the launcher child to exit with its broker", || async move {
            !process_alive(pid)
        })
        .await;
    }
}

/// The password of the account that [`killed_broker_keeps_recording`] signs in.
const PASSWORD: &str = "a long test passphrase";

/// A site whose bank does not exist: the browser shows its error page, which the
/// workspace streams like any other. The site has the default workspace limits, under
/// which Chromium runs.
const UNREACHABLE_SITE: &str = "unreachable-bank";
const UNREACHABLE_SITE_FILE: &str = r#"
[[site]]
name = "unreachable-bank"
display_name = "Unreachable Bank"
start_url = "https://bank.invalid/login"
allowed_hosts = ["bank.invalid"]
recording_retention_days = 30
"#;

/// Returns the workspace image that `scripts/test.sh` builds and names in
/// `STRONGROOM_TEST_WORKSPACE_IMAGE`: a recording needs the real agent and Chromium.
fn workspace_image() -> String {
    match std::env::var("STRONGROOM_TEST_WORKSPACE_IMAGE") {
        Ok(image) if !image.is_empty() => image,
        _ => panic!(
            "STRONGROOM_TEST_WORKSPACE_IMAGE is not set: run `strongroom image build` and set \
             it to the image it prints, or run scripts/test.sh"
        ),
    }
}

/// Creates a local account with [`PASSWORD`] and an authenticator whose key the broker
/// of `data_dir` reads; returns its id and authenticator secret.
async fn add_local_user(
    database: &TestDatabase,
    data_dir: &Path,
    username: &str,
) -> (String, TotpSecret) {
    let key = TotpKey::load_or_create(data_dir).unwrap();
    let id = Uuid::new_v4().to_string();
    let secret = TotpSecret::generate();
    let sealed = key.seal(&id, secret.as_bytes()).unwrap();
    let hash = broker::auth::password::hash(PASSWORD).unwrap();
    let roles: BTreeSet<Role> = [Role::User].into_iter().collect();
    let user = users::NewLocalUser {
        id: &id,
        username,
        display_name: username,
        password_hash: &hash,
        sealed_totp: Some(&sealed),
        roles: &roles,
    };
    users::create_local(&database.db, user, chrono::Utc::now().timestamp_millis())
        .await
        .unwrap();
    (id, secret)
}

/// Waits until the broker has printed its portal address and returns it.
async fn wait_for_base_url(serve: &ServeProcess) -> String {
    const PREFIX: &str = "Strongroom is listening on ";
    wait_for_log(serve, PREFIX).await;
    let output = serve.output();
    let line = output.lines().find(|line| line.contains(PREFIX)).unwrap();
    line[line.find(PREFIX).unwrap() + PREFIX.len()..]
        .trim()
        .to_owned()
}

/// Signs `username` in through the portal's form; returns a client that keeps the
/// portal cookie and does not follow redirects.
async fn sign_in(base: &str, username: &str, totp: &TotpSecret) -> reqwest::Client {
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let code = totp.code_at(chrono::Utc::now().timestamp() as u64);
    let signed_in = client
        .post(format!("{base}/auth/login"))
        .header("origin", base)
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
    client
}

/// Launches `site` from the portal form and returns the session id.
async fn launch_from_portal(client: &reqwest::Client, base: &str, site: &str) -> Uuid {
    let launched = client
        .post(format!("{base}/sessions"))
        .header("origin", base)
        .form(&[("site", site)])
        .send()
        .await
        .unwrap();
    let status = launched.status();
    let location = launched
        .headers()
        .get("location")
        .map(|value| value.to_str().unwrap().to_owned());
    let Some(location) = location.filter(|_| status == reqwest::StatusCode::SEE_OTHER) else {
        panic!(
            "launch answered {status}: {}",
            launched.text().await.unwrap()
        );
    };
    location.trim_start_matches("/sessions/").parse().unwrap()
}

/// Waits until the session's recording has a catalogue row and returns it.
async fn wait_for_recording(
    database: &TestDatabase,
    session_id: Uuid,
    serve: &ServeProcess,
) -> catalogue::CatalogueEntry {
    let what = format!("a recording of session {session_id}");
    wait_for_broker(serve, &what, || async {
        let entries = catalogue::list(&database.db, &catalogue::Filter::default())
            .await
            .unwrap();
        entries.into_iter().find(|e| e.session_id == session_id)
    })
    .await
}

async fn killed_broker_keeps_recording(backend: TestBackend) {
    let database = TestDatabase::new(backend).await;
    let data_dir = tempfile::tempdir().unwrap();
    let instance_id = broker::instance::load_or_create(data_dir.path()).unwrap();
    let _cleanup = InstanceCleanup(instance_id.to_string());
    let image = workspace_image();
    let database_url = database
        .postgres_url()
        .unwrap_or_else(|| format!("sqlite://{}", database.dir.path().join("test.db").display()));
    let mut env = serve_env(data_dir.path(), &database_url, &image);
    // Bridges of their own: the rules that `strongroom host-setup` installs for a broker
    // on this machine match the default `srs-` bridges and drop packets from outside
    // that broker's range, which would cut the broker off from the workspace's agent.
    env.push((
        "STRONGROOM_LAUNCHER__BRIDGE_PREFIX".to_owned(),
        "\"srt-\"".to_owned(),
    ));

    let sites = database.dir.path().join("sites.toml");
    std::fs::write(&sites, UNREACHABLE_SITE_FILE).unwrap();
    broker::sites::import_file(&database.db, &sites)
        .await
        .unwrap();
    let (user_id, totp) = add_local_user(&database, data_dir.path(), "dana").await;
    broker::sites::grant(
        &database.db,
        &user_id,
        UNREACHABLE_SITE,
        "user:test-admin",
        0,
    )
    .await
    .unwrap();

    let log = data_dir.path().join("serve.log");
    let mut serve = ServeProcess::start(&env, log.clone());
    let base = wait_for_base_url(&serve).await;
    let client = sign_in(&base, "dana", &totp).await;
    let session_id = launch_from_portal(&client, &base, UNREACHABLE_SITE).await;
    let recording = wait_for_recording(&database, session_id, &serve).await.id;
    // Frames flow once the stream hub is connected to the agent. A few seconds of them
    // span several checkpoint intervals and usually no segment cut: the agent sends a
    // keyframe every 3 s and a segment is cut at the first keyframe after 4 s.
    wait_for_log(&serve, "Connected to the workspace agent").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let launchers = children_of(serve.pid());
    let _launchers_guard = KillOnDrop(launchers.clone());
    let before = catalogue::get(&database.db, recording)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.state, catalogue::RecordingState::Recording);

    serve.kill_hard();
    for pid in launchers {
        wait_until(
            "the launcher child to exit with its broker",
            || async move { !process_alive(pid) },
        )
        .await;
    }

    let serve = ServeProcess::start(&env, log);
    let what = format!("the restarted broker to seal recording {recording}");
    let sealed = wait_for_broker(&serve, &what, || async {
        let entry = catalogue::get(&database.db, recording)
            .await
            .unwrap()
            .unwrap();
        (entry.state != catalogue::RecordingState::Recording).then_some(entry)
    })
    .await;
    assert_eq!(
        sealed.state,
        catalogue::RecordingState::Sealed,
        "{sealed:?}"
    );
    assert!(
        sealed.segment_count > before.segment_count,
        "the open segment of the killed broker's recording was lost: {} segments before the kill, sealed {sealed:?}",
        before.segment_count
    );

    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let target = format!("recording:{recording}");
    let stored: Vec<serde_json::Value> = audit
        .list(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| {
            event.action == "recording.segment.stored" && event.target.as_deref() == Some(&target)
        })
        .map(|event| serde_json::from_str(&event.details).unwrap())
        .collect();
    assert_eq!(stored.len() as u64, sealed.segment_count, "{stored:?}");
    // The last segment is the open one, recovered from its checkpoint parts.
    let recovered = stored.last().unwrap();
    assert_eq!(recovered["recovered"], true, "{recovered}");
    assert!(
        recovered["checkpoint_parts"].as_u64() >= Some(1),
        "{recovered}"
    );

    let export_dir = data_dir.path().join("export");
    let exported = Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .args(["recording", "export", &recording.to_string()])
        .arg(&export_dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("run strongroom recording export");
    assert!(
        exported.status.success(),
        "export of recording {recording} failed: {}{}",
        String::from_utf8_lossy(&exported.stdout),
        String::from_utf8_lossy(&exported.stderr)
    );
    assert!(export_dir.join("recording.webm").metadata().unwrap().len() > 0);

    // The restart ended the session and removed its workspace.
    assert_eq!(
        wait_for_end(&database, session_id, &serve).await,
        "broker_restarted"
    );
    wait_until(
        "the broker to remove the killed session's workspace",
        || async { count_instance_objects(&instance_id.to_string()).await == (0, 0) },
    )
    .await;
    drop(serve);
}

/// `kill -9` of `strongroom serve` in the middle of a signed-in person's first
/// recording segment: the checkpoint parts survive, and the restarted broker seals the
/// recording with them as a recovered segment that exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_keeps_the_open_segment() {
    killed_broker_keeps_recording(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_keeps_the_open_segment_on_postgres() {
    killed_broker_keeps_recording(TestBackend::Postgres).await;
}
