//! The admin API and pages through the real HTTP server, on SQLite and PostgreSQL:
//! who may use which route, people, roles and quotas, audit search and export,
//! configuration, health, and the OpenAPI document.

use std::collections::BTreeSet;

use broker::auth::totp::TotpSecret;
use broker::auth::{Role, secret_key::TotpKey, users};
use broker::server::{self, RunningBroker};
use broker::testing::TestDatabase;
use reqwest::redirect::Policy;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const PROBLEM: &str = "application/problem+json";

struct Harness {
    broker: Option<RunningBroker>,
    base: String,
    dir: tempfile::TempDir,
    // Dropped after the broker, whose pool is connected to it.
    _database: TestDatabase,
}

impl Harness {
    async fn start(database: TestDatabase) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let env = [
            (
                "STRONGROOM_DATA_DIR".to_owned(),
                dir.path().display().to_string(),
            ),
            (
                "STRONGROOM_SERVER__LISTEN".to_owned(),
                "127.0.0.1:0".to_owned(),
            ),
        ];
        let mut config = broker::config::load(None, env).expect("test configuration is valid");
        config.database = database.config.clone();
        let broker = server::start(config).await.expect("broker starts");
        let base = broker.base_url();
        Harness {
            broker: Some(broker),
            base,
            dir,
            _database: database,
        }
    }

    fn broker(&self) -> &RunningBroker {
        self.broker.as_ref().unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a local account, signs it in and returns its id and a client that
    /// carries its portal cookie.
    async fn signed_in(&self, username: &str, roles: &[Role]) -> (String, reqwest::Client) {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(Policy::none())
            .build()
            .unwrap();
        let (id, _) = self.sign_in(&client, username, roles).await;
        (id, client)
    }

    /// Creates a local account, signs it in with `client` and returns its id and the
    /// `name=value` of its portal cookie.
    async fn sign_in(
        &self,
        client: &reqwest::Client,
        username: &str,
        roles: &[Role],
    ) -> (String, String) {
        let key = TotpKey::load_or_create(self.dir.path()).unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let secret = TotpSecret::generate();
        let sealed = key.seal(&id, secret.as_bytes()).unwrap();
        let hash = broker::auth::password::hash(PASSWORD).unwrap();
        let roles: BTreeSet<Role> = roles.iter().copied().collect();
        let new = users::NewLocalUser {
            id: &id,
            username,
            display_name: username,
            password_hash: &hash,
            sealed_totp: Some(&sealed),
            roles: &roles,
        };
        users::create_local(
            &self.broker().state.db,
            new,
            chrono::Utc::now().timestamp_millis(),
        )
        .await
        .unwrap();

        let code = secret.code_at(chrono::Utc::now().timestamp() as u64);
        let response = client
            .post(self.url("/auth/login"))
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
            response.status(),
            StatusCode::SEE_OTHER,
            "{username} signs in"
        );
        let cookie = response.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        (id, cookie)
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = client
            .request(method, self.url(path))
            .header("origin", &self.base);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn get(&self, client: &reqwest::Client, path: &str) -> reqwest::Response {
        self.send(client, Method::GET, path, None).await
    }

    async fn put(&self, client: &reqwest::Client, path: &str, body: Value) -> reqwest::Response {
        self.send(client, Method::PUT, path, Some(body)).await
    }

    async fn post(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: impl Into<Option<Value>>,
    ) -> reqwest::Response {
        self.send(client, Method::POST, path, body.into()).await
    }

    /// GETs `path` with `client` and parses the JSON response.
    async fn get_json(&self, client: &reqwest::Client, path: &str) -> Value {
        self.get(client, path).await.json().await.unwrap()
    }

    /// GETs the page at `path` with `client` and returns its text.
    async fn page(&self, client: &reqwest::Client, path: &str) -> String {
        client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn actions(&self) -> Vec<broker::audit::StoredEvent> {
        self.broker().state.audit.list(0, 10_000).await.unwrap()
    }

    async fn stop(mut self) {
        self.broker.take().unwrap().shutdown().await;
    }
}

/// Asserts that `response` is 200 OK and parses its JSON body.
async fn ok_json(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Asserts that `response` is a problem document with this status.
fn assert_problem(response: &reqwest::Response, status: StatusCode) {
    assert_eq!(response.status(), status);
    assert_eq!(content_type(response), PROBLEM);
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Every admin route, with a body for the ones that change state, and whether an
/// auditor may use it.
fn routes() -> Vec<(Method, String, Option<Value>, bool)> {
    let person = uuid::Uuid::new_v4();
    let session = uuid::Uuid::new_v4();
    vec![
        (Method::GET, "/api/v1/openapi.json".into(), None, true),
        (Method::GET, "/api/v1/people".into(), None, false),
        (
            Method::PUT,
            format!("/api/v1/people/{person}/roles"),
            Some(json!({"roles": ["user"]})),
            false,
        ),
        (
            Method::PUT,
            format!("/api/v1/people/{person}/quota"),
            Some(json!({"max_sessions": 2})),
            false,
        ),
        (Method::GET, "/api/v1/sites".into(), None, false),
        (Method::GET, "/api/v1/site-changes".into(), None, false),
        (Method::GET, "/api/v1/recordings".into(), None, false),
        (
            Method::POST,
            format!("/api/v1/recordings/{session}/hold"),
            None,
            false,
        ),
        (
            Method::POST,
            format!("/api/v1/recordings/{session}/release"),
            None,
            false,
        ),
        (
            Method::POST,
            format!("/api/v1/site-changes/{person}/approve"),
            None,
            false,
        ),
        (
            Method::POST,
            format!("/api/v1/site-changes/{person}/reject"),
            None,
            false,
        ),
        (Method::GET, "/api/v1/sessions".into(), None, true),
        (
            Method::POST,
            format!("/api/v1/sessions/{session}/terminate"),
            Some(json!({"reason": "test"})),
            false,
        ),
        (Method::GET, "/api/v1/credentials".into(), None, false),
        (Method::GET, "/api/v1/config".into(), None, false),
        (Method::GET, "/api/v1/health".into(), None, false),
        (Method::GET, "/api/v1/audit/events".into(), None, true),
        (Method::GET, "/api/v1/audit/checkpoints".into(), None, true),
        (Method::GET, "/api/v1/audit/export".into(), None, true),
        (Method::GET, "/admin".into(), None, true),
        (Method::GET, "/admin/people".into(), None, false),
        (
            Method::POST,
            format!("/admin/people/{person}/roles"),
            None,
            false,
        ),
        (
            Method::POST,
            format!("/admin/people/{person}/quota"),
            None,
            false,
        ),
        (Method::GET, "/admin/sessions".into(), None, true),
        (
            Method::POST,
            format!("/admin/sessions/{session}/terminate"),
            None,
            false,
        ),
        (Method::GET, "/admin/audit".into(), None, true),
        (Method::GET, "/admin/health".into(), None, false),
        (Method::GET, "/admin/site-changes".into(), None, false),
        (
            Method::POST,
            format!("/admin/site-changes/{person}/approve"),
            None,
            false,
        ),
        (
            Method::POST,
            format!("/admin/site-changes/{person}/reject"),
            None,
            false,
        ),
    ]
}

/// Every operation in the OpenAPI document is in [`routes`], so a new API route
/// cannot skip the role checks below.
#[test]
fn role_checks_cover_every_documented_operation() {
    let document: Value = serde_json::from_str(&broker::admin::api::openapi_json()).unwrap();
    let checked: Vec<(String, String)> = routes()
        .into_iter()
        .map(|(method, path, _, _)| (method.as_str().to_lowercase(), path))
        .collect();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let pattern = path.split('{').next().unwrap();
            let suffix = path.rsplit('}').next().unwrap();
            assert!(
                checked.iter().any(|(checked_method, checked_path)| {
                    checked_method == method
                        && checked_path.starts_with(pattern)
                        && checked_path.ends_with(suffix)
                        && (path.contains('{') || checked_path == path)
                }),
                "{method} {path} is missing from the role checks"
            );
        }
    }
}

broker::both_backends!(admin_routes_refuse_users_and_anonymous, route_roles);
async fn route_roles(database: TestDatabase) {
    let harness = Harness::start(database).await;
    let anonymous = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let (_, user) = harness.signed_in("ursula", &[Role::User]).await;
    let (_, auditor) = harness.signed_in("audrey", &[Role::Auditor]).await;

    for (method, path, body, auditor_allowed) in routes() {
        let response = harness
            .send(&anonymous, method.clone(), &path, body.clone())
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "anonymous {method} {path}"
        );
        if path.starts_with("/api/") {
            assert_eq!(
                content_type(&response),
                PROBLEM,
                "anonymous {method} {path}"
            );
        }

        let response = harness
            .send(&user, method.clone(), &path, body.clone())
            .await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "user {method} {path}"
        );
        if path.starts_with("/api/") {
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["status"], 403, "user {method} {path}");
        }

        let response = harness
            .send(&auditor, method.clone(), &path, body.clone())
            .await;
        if auditor_allowed {
            assert!(
                response.status().is_success(),
                "auditor {method} {path}: {}",
                response.status()
            );
        } else {
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "auditor {method} {path}"
            );
        }
    }

    // The portal links to the console for auditors and admins only.
    let home = |client: &reqwest::Client| {
        let request = client.get(harness.url("/"));
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    assert!(home(&auditor).await.contains("href=\"/admin\""));
    assert!(!home(&user).await.contains("href=\"/admin\""));

    // A browser without a session is sent to the sign-in page instead.
    let page = anonymous
        .get(harness.url("/admin/people"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert!(
        page.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/auth/login")
    );
    harness.stop().await;
}

broker::both_backends!(people_roles_and_quotas_are_audited, people_body);
async fn people_body(database: TestDatabase) {
    let harness = Harness::start(database).await;
    let (admin_id, admin) = harness.signed_in("ada", &[Role::Admin]).await;
    let (user_id, _) = harness.signed_in("ursula", &[Role::User]).await;

    let people: Value = harness.get_json(&admin, "/api/v1/people").await;
    let ursula = people
        .as_array()
        .unwrap()
        .iter()
        .find(|person| person["id"] == user_id.as_str())
        .expect("ursula is listed");
    assert_eq!(ursula["roles"], json!(["user"]));
    assert_eq!(ursula["quota_is_default"], true);

    let quota = harness
        .put(
            &admin,
            &format!("/api/v1/people/{user_id}/quota"),
            json!({"max_sessions": 3}),
        )
        .await;
    let quota = ok_json(quota).await;
    assert_eq!(quota["quota"], 3);
    assert_eq!(quota["quota_is_default"], false);

    let roles = harness
        .put(
            &admin,
            &format!("/api/v1/people/{user_id}/roles"),
            json!({"roles": ["user", "auditor"]}),
        )
        .await;
    let roles = ok_json(roles).await;
    assert_eq!(roles["roles"], json!(["user", "auditor"]));

    let events = harness.actions().await;
    let quota_event = events
        .iter()
        .find(|event| event.action == "admin.quota.changed")
        .expect("quota change audited");
    assert_eq!(quota_event.actor, format!("user:{admin_id}"));
    assert!(
        quota_event.details.contains("\"max_sessions\":3"),
        "{}",
        quota_event.details
    );
    let role_event = events
        .iter()
        .find(|event| event.action == "admin.role.changed")
        .expect("role change audited");
    assert_eq!(
        role_event.target.as_deref(),
        Some(format!("user:{user_id}").as_str())
    );
    assert!(
        role_event.details.contains("\"previous\":\"user\""),
        "{}",
        role_event.details
    );
    assert!(
        role_event.details.contains("\"roles\":\"user,auditor\""),
        "{}",
        role_event.details
    );

    // Refusals are problem documents that name the bad value.
    let invalid = harness
        .put(
            &admin,
            &format!("/api/v1/people/{user_id}/roles"),
            json!({"roles": ["root"]}),
        )
        .await;
    assert_problem(&invalid, StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = invalid.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("\"root\""),
        "{problem}"
    );

    let too_big = harness
        .put(
            &admin,
            &format!("/api/v1/people/{user_id}/quota"),
            json!({"max_sessions": broker::admin::views::MAX_QUOTA + 1}),
        )
        .await;
    assert_eq!(too_big.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let unknown = harness
        .put(
            &admin,
            "/api/v1/people/nobody/quota",
            json!({"max_sessions": 1}),
        )
        .await;
    assert_problem(&unknown, StatusCode::NOT_FOUND);

    let own = harness
        .put(
            &admin,
            &format!("/api/v1/people/{admin_id}/roles"),
            json!({"roles": ["user"]}),
        )
        .await;
    assert_eq!(own.status(), StatusCode::CONFLICT);

    let malformed = admin
        .put(harness.url(&format!("/api/v1/people/{user_id}/quota")))
        .header("origin", &harness.base)
        .header("content-type", "application/json")
        .body("{\"max_sessions\": -1}")
        .send()
        .await
        .unwrap();
    assert_problem(&malformed, StatusCode::UNPROCESSABLE_ENTITY);

    let cross_origin = admin
        .put(harness.url(&format!("/api/v1/people/{user_id}/quota")))
        .header("origin", "https://evil.example")
        .json(&json!({"max_sessions": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross_origin.status(), StatusCode::FORBIDDEN);

    // The page form changes the quota the same way, and needs the portal's origin.
    let form = admin
        .post(harness.url(&format!("/admin/people/{user_id}/quota")))
        .header("origin", &harness.base)
        .form(&[("max_sessions", "4")])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::SEE_OTHER);
    let forged = admin
        .post(harness.url(&format!("/admin/people/{user_id}/quota")))
        .form(&[("max_sessions", "9")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let page = harness.page(&admin, "/admin/people").await;
    assert!(page.contains("value=\"4\""), "{page}");
    assert!(!page.contains("value=\"9\""), "{page}");

    harness.stop().await;
}

broker::both_backends!(audit_search_and_export_filter_events, audit_body);
async fn audit_body(database: TestDatabase) {
    let harness = Harness::start(database).await;
    let (admin_id, admin) = harness.signed_in("ada", &[Role::Admin]).await;
    let (_, auditor) = harness.signed_in("audrey", &[Role::Auditor]).await;
    let before_change = chrono::Utc::now().timestamp_millis();
    harness
        .put(
            &admin,
            &format!("/api/v1/people/{admin_id}/quota"),
            json!({"max_sessions": 2}),
        )
        .await;

    let page: Value = harness
        .get_json(&auditor, "/api/v1/audit/events?action=auth.*")
        .await;
    let actions: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["action"].as_str().unwrap())
        .collect();
    assert!(!actions.is_empty());
    assert!(
        actions.iter().all(|action| action.starts_with("auth.")),
        "{actions:?}"
    );

    let by_actor: Value = harness.get_json(&auditor, &format!("/api/v1/audit/events?actor=user:{admin_id}&action=admin.quota.changed&from_ms={before_change}")).await;
    assert_eq!(
        by_actor["events"].as_array().unwrap().len(),
        1,
        "{by_actor}"
    );

    let future: Value = harness
        .get_json(
            &auditor,
            &format!("/api/v1/audit/events?from_ms={}", before_change + 3_600_000),
        )
        .await;
    assert_eq!(future["events"], json!([]));

    let paged: Value = harness
        .get_json(&auditor, "/api/v1/audit/events?limit=1")
        .await;
    assert_eq!(paged["events"].as_array().unwrap().len(), 1);
    assert_eq!(paged["next_after_seq"], paged["events"][0]["seq"]);

    let invalid = harness.get(&auditor, "/api/v1/audit/events?limit=0").await;
    assert_problem(&invalid, StatusCode::BAD_REQUEST);
    let not_a_number = harness
        .get(&auditor, "/api/v1/audit/events?from_ms=yesterday")
        .await;
    assert_problem(&not_a_number, StatusCode::BAD_REQUEST);

    let export = harness
        .get(&auditor, "/api/v1/audit/export?action=admin.*")
        .await;
    assert_eq!(export.status(), StatusCode::OK);
    assert_eq!(content_type(&export), "application/x-ndjson");
    let text = export.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "header");
    assert_eq!(lines[0]["public_key"].as_str().unwrap().len(), 64);
    let events: Vec<&Value> = lines
        .iter()
        .filter(|line| line["type"] == "event")
        .collect();
    assert_eq!(events.len(), 1, "{text}");
    assert_eq!(events[0]["action"], "admin.quota.changed");
    assert!(events[0]["hash"].as_str().unwrap().len() == 64);

    let exported = harness
        .actions()
        .await
        .into_iter()
        .find(|event| event.action == "audit.exported")
        .expect("export audited");
    assert!(
        exported.details.contains("\"events\":1"),
        "{}",
        exported.details
    );

    let html = harness.page(&auditor, "/admin/audit?action=admin.*").await;
    assert!(html.contains("admin.quota.changed"), "{html}");
    assert!(!html.contains("auth.sign_in.succeeded"), "{html}");
    harness.stop().await;
}

broker::both_backends!(config_health_and_openapi_are_served, served_body);
async fn served_body(database: TestDatabase) {
    let harness = Harness::start(database).await;
    let (_, admin) = harness.signed_in("ada", &[Role::Admin]).await;

    let config: Value = harness.get_json(&admin, "/api/v1/config").await;
    assert_eq!(config["secrets"]["source"], "local");
    assert_eq!(
        config["database"]["backend"],
        harness.broker().state.db.backend_name()
    );
    let text = config.to_string();
    let totp_key = std::fs::read(harness.dir.path().join("auth-totp.key")).unwrap();
    assert!(!text.contains(&hex::encode(&totp_key)));

    let health: Value = harness.get_json(&admin, "/api/v1/health").await;
    let names: Vec<&str> = health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|check| check["name"].as_str().unwrap())
        .collect();
    for expected in [
        "database",
        "docker_engine",
        "workspace_image",
        "workspace_image_age",
        "host_firewall",
        "recording_store",
        "keys",
        "identity_provider",
        "secret_store",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let check = |name: &str| {
        health["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(check("database")["ok"], true);
    assert_eq!(check("recording_store")["ok"], true, "{health}");
    // No launcher runs in this test, so the engine check fails with the reason.
    assert_eq!(check("docker_engine")["ok"], false);
    assert_eq!(health["healthy"], false);

    let served = harness
        .get(&admin, "/api/v1/openapi.json")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(served, broker::admin::api::openapi_json());

    let missing = harness.get(&admin, "/api/v1/no-such-route").await;
    assert_problem(&missing, StatusCode::NOT_FOUND);

    let terminate = harness
        .post(
            &admin,
            &format!("/api/v1/sessions/{}/terminate", uuid::Uuid::new_v4()),
            json!({"reason": "suspicious activity"}),
        )
        .await;
    assert_eq!(terminate.status(), StatusCode::NOT_FOUND);
    let no_reason = harness
        .post(
            &admin,
            &format!("/api/v1/sessions/{}/terminate", uuid::Uuid::new_v4()),
            json!({"reason": "  "}),
        )
        .await;
    assert_eq!(no_reason.status(), StatusCode::UNPROCESSABLE_ENTITY);
    harness.stop().await;
}

const HELD_SITE: &str = r##"
[[site]]
name = "held-bank"
display_name = "Held Bank"
start_url = "https://www.held-bank.example/login"
allowed_hosts = ["www.held-bank.example"]
recording_retention_days = 30
"##;

/// Stores `text` as a site change that waits for a second admin, requested by
/// `requester`, and returns the change id.
async fn hold_site_change(harness: &Harness, requester: &str, text: &str) -> uuid::Uuid {
    let path = harness.dir.path().join("held-site.toml");
    std::fs::write(&path, text).unwrap();
    let report = broker::sites::import_file_audited(
        &harness.broker().state.db,
        &harness.broker().state.audit,
        broker::audit::Actor::Person(requester.to_owned()),
        &path,
        &broker::sites::ImportOptions {
            hold_controlled_changes: true,
            requested_by: requester.to_owned(),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.pending.len(), 1, "{report:?}");
    report.pending[0].1
}

broker::both_backends!(
    site_changes_need_a_second_admin_in_the_api,
    site_changes_body
);
async fn site_changes_body(database: TestDatabase) {
    let harness = Harness::start(database).await;
    let (ada_id, ada) = harness.signed_in("ada", &[Role::Admin]).await;
    let (bob_id, bob) = harness.signed_in("bob", &[Role::Admin]).await;
    let created = hold_site_change(&harness, &ada_id, HELD_SITE).await;

    let listed: Value = harness.get_json(&bob, "/api/v1/site-changes").await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], created.to_string());
    assert_eq!(listed[0]["site"], "held-bank");
    assert_eq!(listed[0]["changed_fields"], json!(["new site"]));
    assert_eq!(listed[0]["requested_by"], ada_id);
    assert_eq!(listed[0]["definition"]["name"], "held-bank");

    // The requester may not decide their own change, either way.
    for decision in ["approve", "reject"] {
        let own = harness
            .post(
                &ada,
                &format!("/api/v1/site-changes/{created}/{decision}"),
                None,
            )
            .await;
        assert_eq!(own.status(), StatusCode::CONFLICT, "{decision}");
        assert_eq!(content_type(&own), PROBLEM);
        let problem: Value = own.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("second admin"),
            "{problem}"
        );
    }
    assert!(
        broker::sites::get(&harness.broker().state.db, "held-bank")
            .await
            .unwrap()
            .is_none()
    );

    // The console page offers the decision to the second admin only.
    let page = |client: &reqwest::Client| {
        let request = client.get(harness.url("/admin/site-changes"));
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let approve_form = format!("action=\"/admin/site-changes/{created}/approve\"");
    assert!(page(&bob).await.contains(&approve_form));
    assert!(!page(&ada).await.contains(&approve_form));
    assert!(page(&ada).await.contains("Waiting for a second admin"));
    let own_page = harness
        .post(
            &ada,
            &format!("/admin/site-changes/{created}/approve"),
            None,
        )
        .await;
    assert_eq!(own_page.status(), StatusCode::CONFLICT);

    let approved = harness
        .post(
            &bob,
            &format!("/api/v1/site-changes/{created}/approve"),
            None,
        )
        .await;
    let approved = ok_json(approved).await;
    assert_eq!(approved["decision"], "approved");
    assert_eq!(approved["decided_by"], bob_id);
    assert!(
        broker::sites::get(&harness.broker().state.db, "held-bank")
            .await
            .unwrap()
            .is_some()
    );
    let again = harness
        .post(
            &bob,
            &format!("/api/v1/site-changes/{created}/approve"),
            None,
        )
        .await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);

    // A widened allowlist waits, and a rejection leaves the site as it was.
    let widened = hold_site_change(
        &harness,
        &ada_id,
        &HELD_SITE.replace(
            "[\"www.held-bank.example\"]",
            "[\"www.held-bank.example\", \"cdn.example\"]",
        ),
    )
    .await;
    let rejected = harness
        .post(&bob, &format!("/admin/site-changes/{widened}/reject"), None)
        .await;
    assert_eq!(rejected.status(), StatusCode::SEE_OTHER);
    assert!(
        page(&bob)
            .await
            .contains("No site change waits for approval.")
    );
    let site = broker::sites::get(&harness.broker().state.db, "held-bank")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(site.allowed_hosts, ["www.held-bank.example"]);
    let listed: Value = harness.get_json(&bob, "/api/v1/site-changes").await;
    assert_eq!(listed, json!([]));

    let decisions: Vec<(String, String, String)> = harness
        .actions()
        .await
        .into_iter()
        .filter(|event| event.action == "admin.site.changed")
        .filter_map(|event| {
            let details: Value = serde_json::from_str(&event.details).unwrap();
            let change = details["change"].as_str()?.to_owned();
            let id = details["change_id"].as_str()?.to_owned();
            (change == "approved" || change == "rejected").then_some((event.actor, change, id))
        })
        .collect();
    assert_eq!(
        decisions,
        [
            (
                format!("user:{bob_id}"),
                "approved".to_owned(),
                created.to_string()
            ),
            (
                format!("user:{bob_id}"),
                "rejected".to_owned(),
                widened.to_string()
            ),
        ]
    );
    harness.stop().await;
}

/// Writes and seals a short recording in the broker's recording store and adds its
/// catalogue row.
async fn stored_recording(
    harness: &Harness,
    user_id: &str,
    site: &str,
    started_at: chrono::DateTime<chrono::Utc>,
) -> uuid::Uuid {
    use broker::recordings::catalogue;
    use recorder::{NewRecording, Packet, RecorderConfig, RecordingWriter, StreamConfig};

    let state = &harness.broker().state;
    let config = &state.admin.config;
    let (storage, keys) = broker::recordings::stores(config).unwrap();
    let id = uuid::Uuid::new_v4();
    let expires_at = started_at + chrono::Duration::days(30);
    catalogue::insert(
        &state.db,
        &catalogue::NewEntry {
            id,
            session_id: uuid::Uuid::new_v4(),
            user_id: user_id.to_owned(),
            site: site.to_owned(),
            instance_id: "admin-test".to_owned(),
            started_at,
            expires_at,
        },
    )
    .await
    .unwrap();
    let new = NewRecording {
        id,
        created_at: started_at,
        expires_at,
        stream: Some(StreamConfig {
            codec: "vp8".into(),
            width: 64,
            height: 48,
        }),
    };
    let mut writer =
        RecordingWriter::create(storage, keys.as_ref(), RecorderConfig::default(), new).unwrap();
    let mut segments = Vec::new();
    for frame in 0..5u64 {
        segments.extend(
            writer
                .push_packet(Packet {
                    pts_us: frame * 100_000,
                    keyframe: frame == 0,
                    data: bytes::Bytes::from(vec![frame as u8; 100]),
                })
                .unwrap(),
        );
    }
    let sealed = writer.seal().unwrap();
    segments.extend(sealed.final_segment.clone());
    // The player serves only segments whose hashes the audit trail holds.
    for segment in &segments {
        let event = broker::audit::EventBuilder::new(
            broker::audit::Actor::System("recorder"),
            broker::audit::Action::RecordingSegmentStored,
        )
        .target(format!("recording:{id}"))
        .detail("index", segment.index)
        .detail("sha256", hex::encode(segment.sha256))
        .build();
        state.audit.append(event).await.unwrap();
    }
    catalogue::mark_sealed(
        &state.db,
        id,
        &catalogue::SealedEntry {
            ended_at: started_at,
            segment_count: sealed.manifest.segment_count,
            bytes: writer.stored_bytes(),
            seal_sha256: sealed.seal_sha256,
            detail: None,
        },
    )
    .await
    .unwrap();
    id
}

broker::both_backends!(recordings_are_listed_and_held_in_the_api, recordings_body);
async fn recordings_body(database: TestDatabase) {
    use chrono::TimeZone;
    let harness = Harness::start(database).await;
    let (admin_id, admin) = harness.signed_in("ada", &[Role::Admin]).await;
    let day = |day: u32| {
        chrono::Utc
            .with_ymd_and_hms(2030, 1, day, 12, 0, 0)
            .unwrap()
    };
    let early = stored_recording(&harness, "alice", "demo-bank", day(1)).await;
    let late = stored_recording(&harness, "alice", "demo-bank", day(3)).await;
    let other_site = stored_recording(&harness, "alice", "other-bank", day(2)).await;
    let other_person = stored_recording(&harness, "bruno", "demo-bank", day(2)).await;

    let list = |query: String| {
        let request = admin.get(harness.url(&format!("/api/v1/recordings{query}")));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{query}");
            let body: Value = response.json().await.unwrap();
            body.as_array()
                .unwrap()
                .iter()
                .map(|row| row["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(String::new()).await,
        {
            let mut middle = [other_site, other_person];
            middle.sort();
            [vec![late], middle.to_vec(), vec![early]].concat()
        },
        "newest first"
    );
    assert_eq!(
        list("?user_id=alice&site=demo-bank".to_owned()).await,
        [late, early]
    );
    assert_eq!(list("?user_id=bruno".to_owned()).await, [other_person]);
    assert_eq!(
        list(format!(
            "?started_from_ms={}&started_before_ms={}",
            day(2).timestamp_millis(),
            day(3).timestamp_millis()
        ))
        .await
        .len(),
        2
    );
    assert_eq!(list("?limit=1".to_owned()).await, [late]);
    let invalid = harness.get(&admin, "/api/v1/recordings?limit=0").await;
    assert_problem(&invalid, StatusCode::BAD_REQUEST);
    let nul = harness.get(&admin, "/api/v1/recordings?site=a%00b").await;
    assert_eq!(nul.status(), StatusCode::BAD_REQUEST);

    let held = harness
        .post(&admin, &format!("/api/v1/recordings/{early}/hold"), None)
        .await;
    let held = ok_json(held).await;
    assert_eq!(held["legal_hold"], true);
    let released = harness
        .post(&admin, &format!("/api/v1/recordings/{early}/release"), None)
        .await;
    let released = ok_json(released).await;
    assert_eq!(released["legal_hold"], false);
    let missing = harness
        .post(
            &admin,
            &format!("/api/v1/recordings/{}/hold", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let holds: Vec<(String, Option<String>, String)> = harness
        .actions()
        .await
        .into_iter()
        .filter(|event| event.action == "recording.hold.changed")
        .map(|event| (event.actor, event.target, event.details))
        .collect();
    assert_eq!(holds.len(), 2, "{holds:?}");
    for ((actor, target, details), hold) in holds.iter().zip([true, false]) {
        assert_eq!(actor, &format!("user:{admin_id}"));
        assert_eq!(
            target.as_deref(),
            Some(format!("recording:{early}").as_str())
        );
        assert!(
            details.contains(&format!("\"legal_hold\":{hold}")),
            "{details}"
        );
    }
    harness.stop().await;
}

broker::both_backends!(console_flows_emit_their_audit_events, event_types_body);
async fn event_types_body(database: TestDatabase) {
    use chrono::TimeZone;
    let harness = Harness::start(database).await;
    let (_, admin) = harness.signed_in("ada", &[Role::Admin]).await;
    let (user_id, _) = harness.signed_in("ursula", &[Role::User]).await;

    // A failed sign-in with a marker password, which no event may contain.
    let marker = format!("Mk-{}", uuid::Uuid::new_v4().simple());
    let anonymous = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let failed = anonymous
        .post(harness.url("/auth/login"))
        .header("origin", &harness.base)
        .form(&[
            ("username", "ursula"),
            ("password", marker.as_str()),
            ("code", "000000"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);

    let quota = harness
        .put(
            &admin,
            &format!("/api/v1/people/{user_id}/quota"),
            json!({"max_sessions": 3}),
        )
        .await;
    assert_eq!(quota.status(), StatusCode::OK);
    let roles = harness
        .put(
            &admin,
            &format!("/api/v1/people/{user_id}/roles"),
            json!({"roles": ["user", "auditor"]}),
        )
        .await;
    assert_eq!(roles.status(), StatusCode::OK);

    let started = chrono::Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap();
    let recording = stored_recording(&harness, &user_id, "demo-bank", started).await;
    let hold = harness
        .post(
            &admin,
            &format!("/api/v1/recordings/{recording}/hold"),
            None,
        )
        .await;
    assert_eq!(hold.status(), StatusCode::OK);
    let replay = harness
        .get(&admin, &format!("/recordings/{recording}"))
        .await;
    assert_eq!(replay.status(), StatusCode::OK);
    let export = harness.get(&admin, "/api/v1/audit/export").await;
    assert_eq!(export.status(), StatusCode::OK);
    let logout = harness.post(&admin, "/auth/logout", None).await;
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);

    let events = harness.actions().await;
    let actions: BTreeSet<&str> = events.iter().map(|event| event.action.as_str()).collect();
    for expected in [
        "auth.sign_in.succeeded",
        "auth.sign_in.failed",
        "auth.portal_session.created",
        "admin.quota.changed",
        "admin.role.changed",
        "recording.hold.changed",
        "recording.replayed",
        "audit.exported",
        "auth.sign_out",
        "auth.portal_session.ended",
    ] {
        assert!(
            actions.contains(expected),
            "{expected} missing from {actions:?}"
        );
    }
    for event in &events {
        let text = serde_json::to_string(event).unwrap();
        assert!(!text.contains(&marker), "{text}");
        assert!(!text.contains(PASSWORD), "{text}");
    }
    harness.stop().await;
}

/// The checked-in OpenAPI document must match the code. Regenerate it with
/// `STRONGROOM_UPDATE_OPENAPI=1 cargo nextest run -p broker --test admin -E 'test(openapi_document_matches)'`.
#[test]
fn openapi_document_matches_checked_in_file() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let generated = broker::admin::api::openapi_json();
    if std::env::var_os("STRONGROOM_UPDATE_OPENAPI").is_some_and(|value| value == "1") {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json differs from the API in the code; regenerate it with \
         STRONGROOM_UPDATE_OPENAPI=1 cargo nextest run -p broker --test admin -E 'test(openapi_document_matches)'"
    );
}

// Fuzzes every API operation from the OpenAPI document with schemathesis (PyPI),
// signed in as an admin, and fails on any 5xx response.
broker::both_backends!(api_fuzzing_finds_no_server_error, fuzz_body);
async fn fuzz_body(database: TestDatabase) {
    let harness = Harness::start(database).await;
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let (_, cookie) = harness.sign_in(&client, "ada", &[Role::Admin]).await;
    let schema = harness.dir.path().join("openapi.json");
    std::fs::write(&schema, broker::admin::api::openapi_json()).unwrap();

    let program =
        std::env::var("STRONGROOM_TEST_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".to_owned());
    let run = tokio::process::Command::new(&program)
        .arg("run")
        .arg(&schema)
        .args(["--url", &harness.base])
        .args(["--header", &format!("Cookie: {cookie}")])
        .args(["--header", &format!("Origin: {}", harness.base)])
        .args(["--checks", "not_a_server_error"])
        .args([
            "--max-examples",
            "25",
            "--seed",
            "7",
            "--generation-deterministic",
        ])
        .args(["--request-timeout", "20"])
        // Hypothesis and schemathesis write their caches to the working directory.
        .current_dir(harness.dir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(600), run)
        .await
        .expect("schemathesis finishes within 10 minutes")
        .unwrap_or_else(|error| {
            panic!("cannot run {program}: {error}; install it with `pip install schemathesis`")
        });

    assert!(
        output.status.success(),
        "schemathesis found server errors:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    harness.stop().await;
}

broker::both_backends!(replay_page_errors_are_portal_pages, replay_errors_body);
async fn replay_errors_body(database: TestDatabase) {
    let harness = Harness::start(database).await;
    let (_, person) = harness.signed_in("pia", &[Role::User]).await;
    let page = |path: String| {
        let request = person
            .get(harness.url(&path))
            .header("accept", "text/html,application/xhtml+xml");
        async move { request.send().await.unwrap() }
    };

    for path in [
        "/recordings/not-a-uuid".to_owned(),
        format!("/recordings/{}", uuid::Uuid::new_v4()),
    ] {
        let response = page(path.clone()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(content_type(&response).starts_with("text/html"), "{path}");
        let body = response.text().await.unwrap();
        assert!(
            body.contains("<p id=\"error\" role=\"alert\">No such recording"),
            "{path}: {body}"
        );
        assert!(body.contains("href=\"/\""), "{path}: {body}");
        assert!(!body.to_lowercase().contains("uuid"), "{path}: {body}");
    }

    let filter = page("/recordings?from=yesterday".to_owned()).await;
    assert_eq!(filter.status(), StatusCode::BAD_REQUEST);
    assert!(content_type(&filter).starts_with("text/html"));
    assert!(filter.text().await.unwrap().contains("id=\"error\""));

    // A client that does not ask for HTML keeps the JSON error body.
    let api = harness
        .send(
            &person,
            Method::GET,
            &format!("/recordings/{}", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
    let body: Value = api.json().await.unwrap();
    assert_eq!(body["error"], "no such recording");
    harness.stop().await;
}

broker::both_backends!(recordings_list_and_player_agree, list_length_body);
async fn list_length_body(database: TestDatabase) {
    use broker::recordings::catalogue;
    use chrono::TimeZone;
    let harness = Harness::start(database).await;
    let (admin_id, admin) = harness.signed_in("ada", &[Role::Admin]).await;
    let started = chrono::Utc.with_ymd_and_hms(2030, 2, 1, 12, 0, 0).unwrap();
    let recording = stored_recording(&harness, &admin_id, "demo-bank", started).await;
    // The session ran 90 s; its five frames span 0.4 s.
    let db = &harness.broker().state.db;
    let entry = catalogue::get(db, recording).await.unwrap().unwrap();
    let seal_sha256: [u8; 32] = hex::decode(entry.seal_sha256.unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let sealed = catalogue::SealedEntry {
        ended_at: started + chrono::Duration::seconds(90),
        segment_count: entry.segment_count,
        bytes: entry.bytes,
        seal_sha256,
        detail: None,
    };
    catalogue::mark_sealed(db, recording, &sealed)
        .await
        .unwrap();
    let empty = stored_recording(&harness, &admin_id, "demo-bank", started).await;
    let nothing = catalogue::SealedEntry {
        segment_count: 0,
        detail: Some(catalogue::NOTHING_RECORDED.to_owned()),
        ..sealed
    };
    catalogue::mark_sealed(db, empty, &nothing).await.unwrap();

    let list = harness
        .send(&admin, Method::GET, "/recordings", None)
        .await
        .text()
        .await
        .unwrap();
    let row = |id: uuid::Uuid| {
        let start = list
            .find(&format!("data-recording=\"{id}\""))
            .map(|at| list[..at].rfind("<tr>").unwrap());
        start.map(|start| list[start..].split("</tr>").next().unwrap().to_owned())
    };
    let played = row(recording).expect("the recording is listed with a Play link");
    assert!(played.contains("<td>0:01:30</td>"), "{played}");
    assert!(list.contains("id=\"length-note\""), "{list}");
    assert!(
        row(empty).is_none(),
        "an empty recording has no Play link: {list}"
    );
    let empty_row = list
        .split("</tr>")
        .find(|row| row.contains("nothing recorded"))
        .expect("the empty recording is listed as nothing recorded");
    assert!(!empty_row.contains("sealed"), "{empty_row}");

    let index: Value = harness
        .send(
            &admin,
            Method::GET,
            &format!("/recordings/{recording}/index"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(index["duration_us"], 90_000_000, "{index}");
    assert_eq!(index["frames_duration_us"], 400_000, "{index}");
    harness.stop().await;
}

broker::both_backends!(
    recording_without_video_shows_no_player,
    recording_without_video_shows_no_player_body
);
async fn recording_without_video_shows_no_player_body(database: TestDatabase) {
    use broker::recordings::catalogue;
    use chrono::TimeZone;
    let harness = Harness::start(database).await;
    let (admin_id, admin) = harness.signed_in("ada", &[Role::Admin]).await;
    let started = chrono::Utc.with_ymd_and_hms(2030, 2, 1, 12, 0, 0).unwrap();
    let empty = stored_recording(&harness, &admin_id, "demo-bank", started).await;
    let db = &harness.broker().state.db;
    let entry = catalogue::get(db, empty).await.unwrap().unwrap();
    let sealed = catalogue::SealedEntry {
        ended_at: started + chrono::Duration::seconds(8),
        segment_count: 0,
        bytes: 0,
        seal_sha256: [0; 32],
        detail: Some(catalogue::SEALED_AFTER_INTERRUPTION.to_owned()),
    };
    assert_eq!(entry.state, catalogue::RecordingState::Sealed);
    catalogue::mark_sealed(db, empty, &sealed).await.unwrap();

    let response = harness
        .send(&admin, Method::GET, &format!("/recordings/{empty}"), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    assert!(
        page.contains(&format!("Recording {empty} holds no video"))
            && page.contains("the broker stopped before the first keyframe"),
        "{page}"
    );
    for control in ["id=\"play\"", "id=\"seek\"", "replay.js", "<canvas"] {
        assert!(!page.contains(control), "{control} on the page: {page}");
    }
    harness.stop().await;
}

/// Splits a page into its table rows, one string per `<tr>`.
fn table_rows(page: &str) -> Vec<String> {
    page.split("<tr>").skip(1).map(str::to_owned).collect()
}

broker::both_backends!(pages_show_people_by_name, shown_names_body);
async fn shown_names_body(database: TestDatabase) {
    use chrono::TimeZone;
    let harness = Harness::start(database).await;
    let db = harness.broker().state.db.clone();
    let (ada_id, admin) = harness.signed_in("ada", &[Role::Admin]).await;
    let (pia_id, pia) = harness.signed_in("pia", &[Role::User]).await;
    let roles: BTreeSet<Role> = [Role::User].into();
    let olga = users::upsert_oidc(
        &db,
        "https://idp.test",
        "subject-olga",
        "Olga Okafor",
        &roles,
        chrono::Utc::now().timestamp_millis(),
    )
    .await
    .unwrap();
    // A person whose account was deleted keeps their recordings under their id.
    let gone_id = uuid::Uuid::new_v4().to_string();
    let started = chrono::Utc.with_ymd_and_hms(2030, 3, 1, 12, 0, 0).unwrap();
    let pia_recording = stored_recording(&harness, &pia_id, "demo-bank", started).await;
    let olga_recording = stored_recording(&harness, &olga.id, "demo-bank", started).await;
    let gone_recording = stored_recording(&harness, &gone_id, "demo-bank", started).await;

    let list = harness.page(&admin, "/recordings").await;
    let row_of = |page: &str, id: uuid::Uuid| {
        table_rows(page)
            .into_iter()
            .find(|row| row.contains(&format!("data-recording=\"{id}\"")))
    };
    let pia_row = row_of(&list, pia_recording).expect("Pia's recording is listed");
    assert!(pia_row.contains("<td>pia</td>"), "{pia_row}");
    assert!(!pia_row.contains(&pia_id), "{pia_row}");
    let olga_row = row_of(&list, olga_recording).expect("Olga's recording is listed");
    assert!(olga_row.contains("<td>Olga Okafor</td>"), "{olga_row}");
    let gone_row = row_of(&list, gone_recording).expect("the deleted person's recording");
    assert!(
        gone_row.contains(&format!("<td>{gone_id}</td>")),
        "{gone_row}"
    );

    // The person filter takes a username, in any case, or an id.
    for person in ["pia", "PIA", pia_id.as_str()] {
        let filtered = harness
            .page(&admin, &format!("/recordings?person={person}"))
            .await;
        assert!(
            row_of(&filtered, pia_recording).is_some(),
            "{person}: {filtered}"
        );
        assert!(
            row_of(&filtered, olga_recording).is_none(),
            "{person}: {filtered}"
        );
        assert!(
            row_of(&filtered, gone_recording).is_none(),
            "{person}: {filtered}"
        );
    }
    let filtered = harness
        .page(&admin, &format!("/recordings?person={gone_id}"))
        .await;
    assert!(row_of(&filtered, gone_recording).is_some(), "{filtered}");
    assert!(row_of(&filtered, pia_recording).is_none(), "{filtered}");
    let nobody = harness.page(&admin, "/recordings?person=nobody").await;
    assert!(nobody.contains("id=\"empty\""), "{nobody}");

    // The API's user_id filter takes a username too.
    let listed: Value = harness
        .get_json(&admin, "/api/v1/recordings?user_id=pia")
        .await;
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [pia_recording.to_string()]);
    assert_eq!(listed[0]["user_id"], pia_id, "the API keeps the id");

    // The player shows the person's name, also when people view their own recording.
    for (client, recording, name) in [
        (&admin, pia_recording, "pia"),
        (&admin, olga_recording, "Olga Okafor"),
        (&admin, gone_recording, gone_id.as_str()),
        (&pia, pia_recording, "pia"),
    ] {
        let player = harness
            .page(client, &format!("/recordings/{recording}"))
            .await;
        assert!(
            player.contains(&format!(", {name}, started")),
            "{name}: {player}"
        );
        assert!(!player.contains(&pia_id), "{name}: {player}");
    }

    // The audit view shows actors and targets by name and keeps the stored value as
    // its title; a search may name the person too.
    let audit = harness.page(&admin, "/admin/audit").await;
    assert!(
        audit.contains(&format!("<span title=\"user:{ada_id}\">user:ada</span>")),
        "{audit}"
    );
    assert!(
        audit.contains(&format!("<span title=\"user:{pia_id}\">user:pia</span>")),
        "{audit}"
    );
    assert!(!audit.contains(&format!(">user:{ada_id}<")), "{audit}");
    let by_name = harness
        .page(
            &admin,
            "/admin/audit?actor=user:pia&action=recording.replayed",
        )
        .await;
    assert_eq!(
        table_rows(&by_name).len(),
        2,
        "the header and Pia's one replay: {by_name}"
    );
    // The stored events keep ids: the export is unchanged.
    let export = harness
        .get(&admin, "/api/v1/audit/export")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        export.contains(&format!("\"actor\":\"user:{pia_id}\"")),
        "{export}"
    );
    assert!(!export.contains("user:pia\""), "{export}");

    // A pending site change names its requester.
    hold_site_change(&harness, &pia_id, HELD_SITE).await;
    let changes = harness.page(&admin, "/admin/site-changes").await;
    assert!(changes.contains("<td>pia</td>"), "{changes}");
    assert!(!changes.contains(&pia_id), "{changes}");
    harness.stop().await;
}

const PORTAL_SITES: &str = r##"
[[site]]
name = "open-bank"
display_name = "Open Bank"
start_url = "https://www.open-bank.example/login"
allowed_hosts = ["www.open-bank.example"]
recording_retention_days = 30

[[site]]
name = "closed-bank"
display_name = "Closed Bank"
start_url = "https://www.closed-bank.example/login"
allowed_hosts = ["www.closed-bank.example"]
recording_retention_days = 30
enabled = false

[[site]]
name = "secret-bank"
display_name = "Secret Bank"
start_url = "https://www.secret-bank.example/login"
allowed_hosts = ["www.secret-bank.example"]
recording_retention_days = 30

[[site]]
name = "shut-bank"
display_name = "Shut Bank"
start_url = "https://www.shut-bank.example/login"
allowed_hosts = ["www.shut-bank.example"]
recording_retention_days = 30
enabled = false

[[site]]
name = "other-bank"
display_name = "Other Bank"
start_url = "https://www.other-bank.example/login"
allowed_hosts = ["www.other-bank.example"]
recording_retention_days = 30
"##;

broker::both_backends!(refused_launch_shows_only_granted_sites, refused_launch_body);
async fn refused_launch_body(database: TestDatabase) {
    let harness = Harness::start(database).await;
    let db = harness.broker().state.db.clone();
    let path = harness.dir.path().join("portal-sites.toml");
    std::fs::write(&path, PORTAL_SITES).unwrap();
    broker::sites::import_file(&db, &path).await.unwrap();
    let (pia_id, pia) = harness.signed_in("pia", &[Role::User]).await;
    let (_, admin) = harness.signed_in("ada", &[Role::Admin]).await;
    let now_ms = chrono::Utc::now().timestamp_millis();
    for site in ["open-bank", "closed-bank"] {
        broker::sites::grant(&db, &pia_id, site, "test", now_ms)
            .await
            .unwrap();
    }

    let launch = |client: &reqwest::Client, site: &str| {
        client
            .post(harness.url("/sessions"))
            .header("origin", &harness.base)
            .form(&[("site", site)])
            .send()
    };
    // Only the disabled site that pia was granted answers differently: the others
    // read alike, so pia cannot tell which of them exist.
    let mut unavailable_messages = Vec::new();
    for (site, status) in [
        ("secret-bank", StatusCode::NOT_FOUND),
        ("shut-bank", StatusCode::NOT_FOUND),
        ("closed-bank", StatusCode::SERVICE_UNAVAILABLE),
        ("no-such-bank", StatusCode::NOT_FOUND),
    ] {
        let refused = launch(&pia, site).await.unwrap();
        assert_eq!(refused.status(), status, "{site}");
        let page = refused.text().await.unwrap();
        assert!(page.contains("id=\"error\""), "{site}: {page}");
        let message = error_text(&page).replace(site, "SITE");
        if status == StatusCode::NOT_FOUND {
            unavailable_messages.push(message);
        } else {
            assert!(message.contains("disabled"), "{site}: {message}");
        }
        assert!(page.contains("id=\"launch-open-bank\""), "{site}: {page}");
        for hidden in [
            "launch-closed-bank",
            "launch-secret-bank",
            "Secret Bank",
            "Shut Bank",
            "other-bank",
        ] {
            assert!(!page.contains(hidden), "{site} shows {hidden}: {page}");
        }
    }
    assert!(
        unavailable_messages.iter().all(|message| *message == unavailable_messages[0]),
        "{unavailable_messages:#?}"
    );
    assert!(
        unavailable_messages[0].contains("not available to this account"),
        "{}",
        unavailable_messages[0]
    );
    let home = harness.page(&pia, "/").await;
    assert!(home.contains("id=\"launch-open-bank\""), "{home}");
    assert!(!home.contains("Secret Bank"), "{home}");

    // An admin launches only granted sites too, so no other site is offered.
    let admin_home = harness.page(&admin, "/").await;
    assert!(!admin_home.contains("id=\"launch-"), "{admin_home}");
    let refused = launch(&admin, "open-bank").await.unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    let page = refused.text().await.unwrap();
    assert!(!page.contains("id=\"launch-"), "{page}");
    harness.stop().await;
}

/// Returns the text of the element with id `error` in a portal page.
fn error_text(page: &str) -> String {
    let start = page.find("id=\"error\"").expect("page has an error element");
    let after_tag = start + page[start..].find('>').expect("error element ends its tag") + 1;
    let end = after_tag + page[after_tag..].find('<').expect("error text ends");
    page[after_tag..end].to_owned()
}

/// Stores an ended session of `user_id` with this reason code and detail.
async fn ended_session(
    harness: &Harness,
    user_id: &str,
    reason: &str,
    detail: Option<&str>,
) -> uuid::Uuid {
    use broker::sessions::store;
    let db = &harness.broker().state.db;
    let session_id = uuid::Uuid::new_v4();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let reservation = store::Reservation {
        session_id,
        user_id,
        site: "demo-bank",
        instance_id: "admin-test",
        client_addr: None,
        now_ms,
        default_quota: 100,
        site_limit: None,
        host_limit: 100,
    };
    let outcome = store::reserve(db, &reservation).await.unwrap();
    assert_eq!(outcome, store::ReserveOutcome::Reserved);
    let began = store::begin_ending(db, session_id, reason, detail, "system:test")
        .await
        .unwrap();
    assert!(
        matches!(began, store::BeginEnding::Began { .. }),
        "{began:?}"
    );
    assert!(store::finish_ending(db, session_id, now_ms).await.unwrap());
    session_id
}

broker::both_backends!(portal_words_end_reasons, end_reasons_body);
async fn end_reasons_body(database: TestDatabase) {
    let harness = Harness::start(database).await;
    let (pia_id, pia) = harness.signed_in("pia", &[Role::User]).await;
    let ended_by_person = ended_session(&harness, &pia_id, "ended_by_person", None).await;
    let idle = ended_session(&harness, &pia_id, "idle_timeout", None).await;
    let browser_exit = "the browser exited: it was killed by signal 9";
    let failed = ended_session(&harness, &pia_id, "stream_failed", Some(browser_exit)).await;
    let unknown = ended_session(&harness, &pia_id, "moved_to_mars", None).await;

    // The sessions list: a sentence per reason, the default idle timeout filled in.
    let home = harness.page(&pia, "/").await;
    let idle_text = "Ended after 15 minutes without input";
    let failed_text = format!("The connection to the browser workspace failed: {browser_exit}");
    for text in [
        "You ended the session",
        idle_text,
        &failed_text,
        "moved_to_mars",
    ] {
        assert!(home.contains(&format!("<td>{text}</td>")), "{text}: {home}");
    }
    for code in ["ended_by_person", "idle_timeout", "stream_failed"] {
        assert!(!home.contains(code), "{code} shows raw: {home}");
    }

    // The viewer page of an ended session, and the ticket a reconnecting viewer asks for.
    for (session, text) in [
        (ended_by_person, "You ended the session"),
        (idle, idle_text),
        (failed, failed_text.as_str()),
        (unknown, "moved_to_mars"),
    ] {
        let page = harness.page(&pia, &format!("/sessions/{session}")).await;
        assert!(
            page.contains(&format!("<p id=\"ended\">{text}</p>")),
            "{page}"
        );
        let ticket = harness
            .post(&pia, &format!("/sessions/{session}/ticket"), None)
            .await;
        assert_eq!(ticket.status(), StatusCode::GONE);
        let body: Value = ticket.json().await.unwrap();
        assert_eq!(body["ended"], text, "{body}");
    }
    harness.stop().await;
}

broker::both_backends!(page_titles_name_the_product_once, page_titles_body);
async fn page_titles_body(database: TestDatabase) {
    let harness = Harness::start(database).await;
    let (_, admin) = harness.signed_in("ada", &[Role::Admin]).await;
    let (pia_id, pia) = harness.signed_in("pia", &[Role::User]).await;
    let recording = stored_recording(&harness, &pia_id, "demo-bank", chrono::Utc::now()).await;
    let ended = ended_session(&harness, &pia_id, "ended_by_person", None).await;
    let anonymous = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();

    let mut pages = vec![(&anonymous, "/auth/login".to_owned())];
    for path in [
        "/",
        "/files",
        "/recordings",
        "/admin",
        "/admin/people",
        "/admin/sessions",
        "/admin/audit",
        "/admin/health",
        "/admin/site-changes",
    ] {
        pages.push((&admin, path.to_owned()));
    }
    pages.push((&pia, "/".to_owned()));
    pages.push((&pia, format!("/recordings/{recording}")));
    pages.push((&pia, format!("/sessions/{ended}")));
    for (client, path) in pages {
        let page = harness.page(client, &path).await;
        let title = page
            .split("<title>")
            .nth(1)
            .and_then(|rest| rest.split("</title>").next())
            .unwrap_or_else(|| panic!("{path} has no title: {page}"));
        assert!(title.ends_with(" - Strongroom"), "{path}: {title}");
        assert_eq!(title.matches("Strongroom").count(), 1, "{path}: {title}");
        let heading = title.trim_end_matches(" - Strongroom");
        assert!(
            page.contains(&format!("<h1>{heading}</h1>")),
            "{path}: the heading is not {heading:?}"
        );
    }
    harness.stop().await;
}

broker::both_backends!(auditor_home_explains_role, auditor_home_body);
async fn auditor_home_body(database: TestDatabase) {
    let harness = Harness::start(database).await;
    let (_, auditor) = harness.signed_in("aud", &[Role::Auditor]).await;
    let (_, user) = harness.signed_in("pia", &[Role::User]).await;

    let auditor_home = harness.page(&auditor, "/").await;
    let user_home = harness.page(&user, "/").await;

    assert!(
        auditor_home.contains("Your role does not open banking sessions"),
        "{auditor_home}"
    );
    assert!(
        !auditor_home.contains("No bank is granted"),
        "{auditor_home}"
    );
    assert!(
        auditor_home.contains("href=\"/recordings\""),
        "{auditor_home}"
    );
    assert!(user_home.contains("No bank is granted"), "{user_home}");
    // The console links to the recordings, which auditors replay.
    let console = harness.page(&auditor, "/admin").await;
    assert!(console.contains("href=\"/recordings\""), "{console}");
    harness.stop().await;
}
