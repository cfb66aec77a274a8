//! Every route of the portal against every role, through the real HTTP server.
//!
//! The table below names each route with its expected status per role. The test
//! reads the router's own path list and probes each path's methods, so a route added
//! without a row here fails the test.

use std::collections::{BTreeMap, BTreeSet};

use broker::auth::totp::TotpSecret;
use broker::auth::{Role, secret_key::TotpKey, users};
use broker::server::{self, RunningBroker};
use reqwest::redirect::Policy;
use reqwest::{Method, StatusCode};

const PASSWORD: &str = "Matrix-door-2026!";

/// Who sends the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    Anonymous,
    User,
    Auditor,
    Admin,
}

const CALLERS: [Caller; 4] = [
    Caller::Anonymous,
    Caller::User,
    Caller::Auditor,
    Caller::Admin,
];

/// Expected statuses, in the order of [`CALLERS`].
type Expected = [u16; 4];

/// One row: method, path pattern, expected statuses.
struct Row {
    method: Method,
    pattern: &'static str,
    expected: Expected,
}

fn row(method: Method, pattern: &'static str, expected: Expected) -> Row {
    Row {
        method,
        pattern,
        expected,
    }
}

/// Returns the matrix. Requests carry the portal's Origin and ask for JSON, so a missing
/// sign-in is 401 rather than a redirect. Rows that end the caller's portal session
/// (logout) come last.
fn matrix() -> Vec<Row> {
    let get = || Method::GET;
    let post = || Method::POST;
    let put = || Method::PUT;
    vec![
        row(get(), "/healthz", [200, 200, 200, 200]),
        // No launcher runs in this test, so readiness fails for everyone alike.
        row(get(), "/readyz", [503, 503, 503, 503]),
        row(get(), "/metrics", [200, 200, 200, 200]),
        row(get(), "/assets/viewer.js", [200, 200, 200, 200]),
        row(get(), "/assets/replay.js", [200, 200, 200, 200]),
        // A person lists their own recordings; the recording does not exist.
        row(get(), "/recordings", [401, 200, 200, 200]),
        row(get(), "/recordings/{id}", [401, 404, 404, 404]),
        row(get(), "/recordings/{id}/index", [401, 404, 404, 404]),
        row(get(), "/recordings/{id}/segments/{index}", [401, 404, 404, 404]),
        // Every role lists only the files of their own sessions; the file does not exist.
        row(get(), "/files", [401, 200, 200, 200]),
        row(get(), "/files/{id}", [401, 404, 404, 404]),
        row(get(), "/auth/login", [200, 200, 200, 200]),
        // An empty form is a wrong password for everyone.
        row(post(), "/auth/login", [401, 401, 401, 401]),
        row(get(), "/auth/me", [401, 200, 200, 200]),
        row(
            post(),
            "/auth/users/{user_id}/end-sessions",
            [401, 403, 403, 200],
        ),
        row(post(), "/auth/users/{user_id}/unlock", [401, 403, 403, 200]),
        // Without a pending sign-in the step pages send the browser to the login page.
        row(get(), "/auth/enrol-totp", [303, 303, 303, 303]),
        row(post(), "/auth/enrol-totp", [303, 303, 303, 303]),
        row(get(), "/auth/change-password", [303, 303, 303, 303]),
        row(post(), "/auth/change-password", [303, 303, 303, 303]),
        // Single sign-on is not configured here.
        row(get(), "/auth/oidc/login", [404, 404, 404, 404]),
        row(get(), "/auth/oidc/callback", [404, 404, 404, 404]),
        row(
            post(),
            "/auth/oidc/backchannel-logout",
            [404, 404, 404, 404],
        ),
        row(get(), "/", [401, 200, 200, 200]),
        // The site does not exist; an auditor may not launch at all.
        row(post(), "/sessions", [401, 404, 403, 404]),
        // The session does not exist; no role learns more than that.
        row(get(), "/sessions/{id}", [401, 404, 404, 404]),
        row(post(), "/sessions/{id}/end", [401, 404, 404, 404]),
        row(post(), "/sessions/{id}/ticket", [401, 404, 404, 404]),
        // The live view needs a one-time ticket, with or without a portal session.
        row(get(), "/sessions/{id}/live", [403, 403, 403, 403]),
        // The admin console: auditors read live sessions and the audit trail.
        row(get(), "/admin", [401, 403, 200, 200]),
        row(get(), "/admin/people", [401, 403, 403, 200]),
        row(post(), "/admin/people/{id}/roles", [401, 403, 403, 404]),
        // The probe posts a form without the fields these need.
        row(post(), "/admin/people/{id}/quota", [401, 403, 403, 422]),
        row(get(), "/admin/sessions", [401, 403, 200, 200]),
        row(post(), "/admin/sessions/{id}/terminate", [401, 403, 403, 422]),
        row(get(), "/admin/audit", [401, 403, 200, 200]),
        row(get(), "/admin/health", [401, 403, 403, 200]),
        row(get(), "/admin/site-changes", [401, 403, 403, 200]),
        row(post(), "/admin/site-changes/{id}/approve", [401, 403, 403, 404]),
        row(post(), "/admin/site-changes/{id}/reject", [401, 403, 403, 404]),
        row(get(), "/api/v1/openapi.json", [401, 403, 200, 200]),
        row(get(), "/api/v1/people", [401, 403, 403, 200]),
        row(put(), "/api/v1/people/{id}/roles", [401, 403, 403, 415]),
        row(put(), "/api/v1/people/{id}/quota", [401, 403, 403, 415]),
        row(get(), "/api/v1/sites", [401, 403, 403, 200]),
        // No change with the probe's id is pending.
        row(get(), "/api/v1/site-changes", [401, 403, 403, 200]),
        row(post(), "/api/v1/site-changes/{id}/approve", [401, 403, 403, 404]),
        row(post(), "/api/v1/site-changes/{id}/reject", [401, 403, 403, 404]),
        // No recording with the probe's id exists.
        row(get(), "/api/v1/recordings", [401, 403, 403, 200]),
        row(post(), "/api/v1/recordings/{id}/hold", [401, 403, 403, 404]),
        row(post(), "/api/v1/recordings/{id}/release", [401, 403, 403, 404]),
        row(get(), "/api/v1/sessions", [401, 403, 200, 200]),
        row(post(), "/api/v1/sessions/{id}/terminate", [401, 403, 403, 415]),
        row(get(), "/api/v1/credentials", [401, 403, 403, 200]),
        row(get(), "/api/v1/config", [401, 403, 403, 200]),
        row(get(), "/api/v1/health", [401, 403, 403, 200]),
        row(get(), "/api/v1/audit/events", [401, 403, 200, 200]),
        row(get(), "/api/v1/audit/checkpoints", [401, 403, 200, 200]),
        row(get(), "/api/v1/audit/export", [401, 403, 200, 200]),
        row(get(), "/auth/logout", [200, 200, 200, 200]),
        row(post(), "/auth/logout", [401, 303, 303, 303]),
    ]
}

/// Replaces path parameters with values that exist in the test or are well-formed.
fn concrete(pattern: &str, target_user: &str) -> String {
    pattern
        .replace("{user_id}", target_user)
        .replace("{id}", "00000000-0000-4000-8000-000000000000")
        .replace("{index}", "0")
}

struct Setup {
    broker: RunningBroker,
    base: String,
    _dir: tempfile::TempDir,
}

async fn add_user(
    setup: &Setup,
    dir: &std::path::Path,
    name: &str,
    roles: &[Role],
) -> (String, TotpSecret) {
    let key = TotpKey::load_or_create(dir).unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let secret = TotpSecret::generate();
    let sealed = key.seal(&id, secret.as_bytes()).unwrap();
    let hash = broker::auth::password::hash(PASSWORD).unwrap();
    let roles: BTreeSet<Role> = roles.iter().copied().collect();
    let new = users::NewLocalUser {
        id: &id,
        username: name,
        display_name: name,
        password_hash: &hash,
        sealed_totp: Some(&sealed),
        roles: &roles,
    };
    users::create_local(
        &setup.broker.state.db,
        new,
        chrono::Utc::now().timestamp_millis(),
    )
    .await
    .unwrap();
    (id, secret)
}

async fn signed_in(
    setup: &Setup,
    dir: &std::path::Path,
    name: &str,
    role: Role,
) -> reqwest::Client {
    let (_, secret) = add_user(setup, dir, name, &[role]).await;
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(Policy::none())
        .build()
        .unwrap();
    let code = secret.code_at(chrono::Utc::now().timestamp() as u64);
    let response = client
        .post(format!("{}/auth/login", setup.base))
        .header("origin", &setup.base)
        .form(&[("username", name), ("password", PASSWORD), ("code", &code)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "{name} signs in");
    client
}

async fn send(client: &reqwest::Client, base: &str, method: Method, path: &str) -> StatusCode {
    let mut request = client
        .request(method.clone(), format!("{base}{path}"))
        .header("origin", base)
        .header("accept", "application/json");
    if method == Method::POST {
        request = request.form(&[("site", "no-such-site")]);
    }
    if path.ends_with("/live") {
        request = request
            .query(&[("ticket", "not-a-ticket")])
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    request.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_route_matrix_covers_every_route() {
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
        // No launcher: readiness fails at once instead of waiting for one.
        (
            "STRONGROOM_LAUNCHER__MODE".to_owned(),
            "external".to_owned(),
        ),
    ];
    let mut config = broker::config::load(None, env).expect("test configuration is valid");
    // The empty sign-in forms of the matrix must not lock anything.
    config.auth.max_failures_per_account = 1000;
    config.auth.max_failures_per_address = 1000;
    let data_dir = config.data_dir.clone();
    let broker = server::start(config).await.expect("broker starts");
    let base = broker.base_url();
    let setup = Setup {
        broker,
        base: base.clone(),
        _dir: dir,
    };
    let (target_user, _) = add_user(&setup, &data_dir, "target", &[Role::User]).await;

    let anonymous = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let clients: BTreeMap<Caller, reqwest::Client> = BTreeMap::from([
        (Caller::Anonymous, anonymous.clone()),
        (
            Caller::User,
            signed_in(&setup, &data_dir, "matrix-user", Role::User).await,
        ),
        (
            Caller::Auditor,
            signed_in(&setup, &data_dir, "matrix-auditor", Role::Auditor).await,
        ),
        (
            Caller::Admin,
            signed_in(&setup, &data_dir, "matrix-admin", Role::Admin).await,
        ),
    ]);
    let table = matrix();

    // Every path of the router has rows, and every row names a path of the router.
    let router_paths: BTreeSet<String> = broker::http::route_paths(&broker::http::routes())
        .into_iter()
        .collect();
    assert!(
        !router_paths.is_empty(),
        "the router's paths could not be read"
    );
    let table_paths: BTreeSet<String> = table.iter().map(|row| row.pattern.to_owned()).collect();
    let missing: Vec<_> = router_paths.difference(&table_paths).collect();
    assert!(
        missing.is_empty(),
        "routes without a row in the matrix: {missing:?}"
    );
    let stale: Vec<_> = table_paths.difference(&router_paths).collect();
    assert!(
        stale.is_empty(),
        "rows for routes that do not exist: {stale:?}"
    );

    // Every method a path serves (any status but 405) has a row.
    let rows: BTreeSet<(String, &str)> = table
        .iter()
        .map(|row| (row.method.to_string(), row.pattern))
        .collect();
    for pattern in &table_paths {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let status = send(
                &anonymous,
                &base,
                method.clone(),
                &concrete(pattern, &target_user),
            )
            .await;
            if status != StatusCode::METHOD_NOT_ALLOWED {
                assert!(
                    rows.contains(&(method.to_string(), pattern.as_str())),
                    "{method} {pattern} answers {status} but has no row in the matrix"
                );
            }
        }
    }

    let mut failures = Vec::new();
    for row in &table {
        let path = concrete(row.pattern, &target_user);
        for (index, caller) in CALLERS.iter().enumerate() {
            let status = send(&clients[caller], &base, row.method.clone(), &path).await;
            if status.as_u16() != row.expected[index] {
                failures.push(format!(
                    "{} {} as {caller:?}: expected {}, got {status}",
                    row.method, row.pattern, row.expected[index]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    setup.broker.shutdown().await;
}
