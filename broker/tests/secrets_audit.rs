//! Credential fetches are audited, and no credential value reaches an audit event, a log
//! line or an error message. Every value used here carries a random `Mk-` marker that
//! the captured output is searched for.

mod infisical_fake;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use broker::audit::{Action, Actor, AuditLog};
use broker::both_backends;
use broker::clock::SystemClock;
use broker::config::SecretRef;
use broker::config::secrets::InfisicalConfig;
use broker::secrets::{
    self, BankCredentials, CredentialKey, CredentialRef, CredentialVault, InfisicalSource,
    LocalStore,
};
use broker::testing::TestDatabase;
use infisical_fake::{CLIENT_ID, ENVIRONMENT, FakeInfisical, PROJECT_ID};
use uuid::Uuid;

/// Everything every test in this binary logs, at every level.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer_logs = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer_logs.clone()))
            .init();
        logs
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn marker() -> String {
    format!("Mk-{}", Uuid::new_v4().simple())
}

both_backends!(
    local_values_stay_out_of_audit_logs_and_errors,
    local_values_body
);
async fn local_values_body(database: TestDatabase) {
    let logs = captured_logs();
    let marker = marker();
    let key = CredentialKey::load_or_create(database.dir.path()).unwrap();
    let store = LocalStore::new(database.db.clone(), Arc::new(key), Arc::new(SystemClock));
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let vault = CredentialVault::new(Arc::new(store.clone()), audit.clone());
    let reference = CredentialRef::personal("demo-bank", "alice-id").unwrap();
    let credentials = BankCredentials::new(
        &reference,
        format!("{marker}-user").as_str().into(),
        format!("{marker}-pass").as_str().into(),
        None,
    )
    .unwrap();
    let mut outputs = Vec::new();

    secrets::cli::set(
        &store,
        &audit,
        Actor::Person("admin-1".into()),
        &reference,
        &credentials,
    )
    .await
    .unwrap();
    let fetched = vault
        .fetch(
            &reference,
            Actor::Person("alice-id".into()),
            Some(Uuid::new_v4()),
        )
        .await
        .unwrap();
    outputs.push(format!("{fetched:?}"));
    let missing = vault
        .fetch(
            &CredentialRef::shared("other-bank").unwrap(),
            Actor::Person("alice-id".into()),
            None,
        )
        .await
        .unwrap_err();
    outputs.push(format!("{missing} {missing:?}"));
    let untypeable = BankCredentials::new(
        &reference,
        "alice".into(),
        format!("{marker}\nsecond").as_str().into(),
        None,
    )
    .unwrap_err();
    outputs.push(format!("{untypeable} {untypeable:?}"));
    sqlx::query("UPDATE credentials SET password = username")
        .execute(database.db.pool())
        .await
        .unwrap();
    let swapped = vault
        .fetch(&reference, Actor::Person("alice-id".into()), None)
        .await
        .unwrap_err();
    outputs.push(format!("{swapped} {swapped:?}"));

    assert_eq!(fetched.password.expose(), format!("{marker}-pass"));
    let events = audit.list(0, 1000).await.unwrap();
    let retrieved: Vec<_> = events
        .iter()
        .filter(|event| event.action == Action::CredentialRetrieved.as_str())
        .collect();
    assert_eq!(retrieved.len(), 3);
    assert_eq!(retrieved[0].outcome, "success");
    assert_eq!(
        retrieved[0].target.as_deref(),
        Some("credential:demo-bank/user:alice-id")
    );
    assert_eq!(retrieved[0].actor, "user:alice-id");
    assert!(retrieved[0].session_id.is_some());
    assert_eq!(retrieved[1].outcome, "failure");
    assert!(
        retrieved[1].details.contains("not_found"),
        "{}",
        retrieved[1].details
    );
    assert!(
        retrieved[2].details.contains("decrypt_failed"),
        "{}",
        retrieved[2].details
    );
    assert!(
        events
            .iter()
            .any(|event| event.action == Action::SecretAccessed.as_str()
                && event.actor == "user:admin-1")
    );
    assert_no_marker(&marker, &events, &outputs, &logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infisical_values_stay_out_of_audit_logs_and_errors() {
    let logs = captured_logs();
    let marker = marker();
    let database = TestDatabase::new(broker::testing::TestBackend::Sqlite).await;
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let fake = FakeInfisical::start(&format!("{marker}-client-secret")).await;
    fake.set_secret(
        "/strongroom/demo-bank",
        "USERNAME",
        &format!("{marker}-user"),
    );
    fake.set_secret(
        "/strongroom/demo-bank",
        "PASSWORD",
        &format!("{marker}-pass"),
    );
    fake.set_secret(
        "/strongroom/multi-line",
        "USERNAME",
        &format!("{marker}-user"),
    );
    fake.set_secret(
        "/strongroom/multi-line",
        "PASSWORD",
        &format!("{marker}\nsecond"),
    );
    let secret_file = database.dir.path().join("client-secret");
    let mut outputs = Vec::new();

    std::fs::write(&secret_file, format!("{marker}-client-secret")).unwrap();
    let config = InfisicalConfig::new(
        &fake.url,
        CLIENT_ID,
        SecretRef::File(secret_file.clone()),
        PROJECT_ID,
        ENVIRONMENT,
    );
    let source = InfisicalSource::new(&config).unwrap();
    outputs.push(format!("{source:?}"));
    let vault = CredentialVault::new(Arc::new(source), audit.clone());
    let fetched = vault
        .fetch(
            &CredentialRef::shared("demo-bank").unwrap(),
            Actor::System("test"),
            None,
        )
        .await
        .unwrap();
    outputs.push(format!("{fetched:?}"));
    let untypeable = vault
        .fetch(
            &CredentialRef::shared("multi-line").unwrap(),
            Actor::System("test"),
            None,
        )
        .await
        .unwrap_err();
    outputs.push(format!("{untypeable} {untypeable:?}"));
    fake.expire_tokens();
    fake.set_hide_values(true);
    let hidden = vault
        .fetch(
            &CredentialRef::shared("demo-bank").unwrap(),
            Actor::System("test"),
            None,
        )
        .await
        .unwrap_err();
    outputs.push(format!("{hidden} {hidden:?}"));
    std::fs::write(&secret_file, format!("{marker}-wrong")).unwrap();
    fake.expire_tokens();
    let login = vault
        .fetch(
            &CredentialRef::shared("demo-bank").unwrap(),
            Actor::System("test"),
            None,
        )
        .await
        .unwrap_err();
    outputs.push(format!("{login} {login:?}"));

    assert_eq!(fetched.username.expose(), format!("{marker}-user"));
    assert!(login.to_string().contains("UnauthorizedError"), "{login}");
    let events = audit.list(0, 1000).await.unwrap();
    assert_eq!(events.len(), 4);
    assert!(
        events
            .iter()
            .all(|event| event.action == Action::CredentialRetrieved.as_str())
    );
    assert!(
        events[0].details.contains("\"source\":\"infisical\""),
        "{}",
        events[0].details
    );
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        logged.contains("Logged in to Infisical"),
        "log capture is not working"
    );
    assert_no_marker(&marker, &events, &outputs, &logs);
}

fn assert_no_marker(
    marker: &str,
    events: &[broker::audit::StoredEvent],
    outputs: &[String],
    logs: &Mutex<Vec<u8>>,
) {
    for event in events {
        let json = serde_json::to_string(event).unwrap();
        assert!(
            !json.contains(marker),
            "audit event carries a credential value: {json}"
        );
    }
    for output in outputs {
        assert!(
            !output.contains(marker),
            "error or Debug output carries a credential value: {output}"
        );
    }
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(!logged.is_empty());
    assert!(
        !logged.contains(marker),
        "a log line carries a credential value"
    );
}
