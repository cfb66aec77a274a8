//! Sign-in and access control through the real HTTP server: local accounts with
//! password and TOTP, OIDC against `oidc-provider-mock` (PyPI) and against a
//! provider served here with its own RSA keys for crafted tokens, and back-channel
//! logout.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use broker::auth::totp::TotpSecret;
use broker::auth::{Role, secret_key::TotpKey, users};
use broker::config::auth::{GroupMapping, OidcConfig};
use broker::config::{Config, SecretRef};
use broker::server::{self, RunningBroker};
use jsonwebtoken::{EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

const PASSWORD: &str = "correct horse battery staple";

include!("auth_fixtures/keys.rs");

struct Harness {
    broker: Option<RunningBroker>,
    base: String,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn start(customize: impl FnOnce(&mut Config)) -> Harness {
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
        customize(&mut config);
        let broker = server::start(config).await.expect("broker starts");
        let base = broker.base_url();
        Harness {
            broker: Some(broker),
            base,
            dir,
        }
    }

    fn broker(&self) -> &RunningBroker {
        self.broker.as_ref().unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a local account and returns its id and TOTP secret.
    async fn add_user(&self, username: &str, roles: &[Role]) -> (String, TotpSecret) {
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
        (id, secret)
    }

    async fn login(
        &self,
        client: &reqwest::Client,
        username: &str,
        password: &str,
        code: &str,
    ) -> reqwest::Response {
        client
            .post(self.url("/auth/login"))
            .header("origin", &self.base)
            .form(&[
                ("username", username),
                ("password", password),
                ("code", code),
                ("next", "/auth/me"),
            ])
            .send()
            .await
            .unwrap()
    }

    async fn me(&self, client: &reqwest::Client) -> reqwest::Response {
        client.get(self.url("/auth/me")).send().await.unwrap()
    }

    async fn audit_actions(&self) -> Vec<(String, String, String)> {
        let events = self.broker().state.audit.list(0, 10_000).await.unwrap();
        events
            .into_iter()
            .map(|event| (event.action, event.outcome, event.details))
            .collect()
    }

    async fn stop(mut self) {
        self.broker.take().unwrap().shutdown().await;
    }
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(Policy::none())
        .build()
        .unwrap()
}

fn now_seconds() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

async fn body(response: reqwest::Response) -> String {
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_sign_in_with_password_and_totp() {
    let harness = Harness::start(|_| {}).await;
    let (id, secret) = harness.add_user("alice", &[Role::User]).await;
    let client = browser();

    let page = client.get(harness.url("/auth/login")).send().await.unwrap();
    let csp = page
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(body(page).await.contains("name=\"code\""));

    let anonymous = harness.me(&client).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let response = harness
        .login(&client, "alice", PASSWORD, &secret.code_at(now_seconds()))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/auth/me");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("strongroom_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );

    let me: serde_json::Value = harness.me(&client).await.json().await.unwrap();
    assert_eq!(me["user_id"], id.as_str());
    assert_eq!(me["roles"], json!(["user"]));

    let logout = client
        .post(harness.url("/auth/logout"))
        .header("origin", &harness.base)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);
    assert_eq!(harness.me(&client).await.status(), StatusCode::UNAUTHORIZED);

    let actions: Vec<String> = harness
        .audit_actions()
        .await
        .into_iter()
        .map(|(action, _, _)| action)
        .collect();
    for expected in [
        "auth.mfa.challenge",
        "auth.sign_in.succeeded",
        "auth.portal_session.created",
        "auth.sign_out",
        "auth.portal_session.ended",
    ] {
        assert!(
            actions.iter().any(|action| action == expected),
            "{expected} missing from {actions:?}"
        );
    }
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_totp_and_replay_are_refused() {
    let harness = Harness::start(|_| {}).await;
    let (_, secret) = harness.add_user("bob", &[Role::User]).await;
    let client = browser();
    let now = now_seconds();

    let wrong_password = harness
        .login(&client, "bob", "not the password", &secret.code_at(now))
        .await;
    assert_eq!(wrong_password.status(), StatusCode::UNAUTHORIZED);
    let wrong_password_page = body(wrong_password).await;

    let stale_code = harness
        .login(&client, "bob", PASSWORD, &secret.code_at(now - 300))
        .await;
    assert_eq!(stale_code.status(), StatusCode::UNAUTHORIZED);

    let unknown_user = harness
        .login(&client, "nobody", PASSWORD, &secret.code_at(now))
        .await;
    assert_eq!(unknown_user.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        body(unknown_user).await.replace("nobody", "bob"),
        wrong_password_page,
        "an unknown account must look like a wrong password"
    );

    let code = secret.code_at(now_seconds());
    let first = harness.login(&client, "bob", PASSWORD, &code).await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let replay = harness.login(&browser(), "bob", PASSWORD, &code).await;
    assert_eq!(
        replay.status(),
        StatusCode::UNAUTHORIZED,
        "a TOTP code must be accepted once"
    );

    let details: Vec<String> = harness
        .audit_actions()
        .await
        .into_iter()
        .filter(|(action, _, _)| action == "auth.sign_in.failed")
        .map(|(_, _, details)| details)
        .collect();
    for reason in [
        "wrong_password",
        "wrong_code",
        "unknown_user",
        "replayed_code",
    ] {
        assert!(
            details.iter().any(|detail| detail.contains(reason)),
            "{reason} missing from {details:?}"
        );
    }
    for detail in &details {
        assert!(
            !detail.contains(PASSWORD) && !detail.contains(&code),
            "secret in audit detail {detail}"
        );
    }
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_reused_codes_have_own_messages() {
    let harness = Harness::start(|_| {}).await;
    let (_, secret) = harness.add_user("carol", &[Role::User]).await;
    let missing_text = "Enter the 6-digit code from your authenticator app";
    let reused_text = "This code was already used; wait for the next one.";

    let missing = harness.login(&browser(), "carol", PASSWORD, "").await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let missing_page = body(missing).await;
    assert!(missing_page.contains(missing_text), "{missing_page}");
    // Without a code the page is the same whether the password was right.
    let missing_wrong = harness
        .login(&browser(), "carol", "not the password", "")
        .await;
    assert_eq!(body(missing_wrong).await, missing_page);

    let code = secret.code_at(now_seconds());
    let first = harness.login(&browser(), "carol", PASSWORD, &code).await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let reused = harness.login(&browser(), "carol", PASSWORD, &code).await;
    assert_eq!(reused.status(), StatusCode::UNAUTHORIZED);
    let reused_page = body(reused).await;
    assert!(reused_page.contains(reused_text), "{reused_page}");
    assert!(!reused_page.contains(missing_text), "{reused_page}");
    let reused_wrong = harness
        .login(&browser(), "carol", "not the password", &code)
        .await;
    assert_eq!(body(reused_wrong).await, reused_page);

    let failures = harness
        .audit_actions()
        .await
        .into_iter()
        .filter(|(action, _, _)| action == "auth.sign_in.failed")
        .count();
    assert_eq!(failures, 4);
    // Each refusal still counts toward the account's lockout (5 failures by default).
    // The successful sign-in reset the count, so 2 refusals since then are counted.
    for _ in 0..2 {
        let refused = harness.login(&browser(), "carol", PASSWORD, "").await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = harness.login(&browser(), "carol", PASSWORD, "").await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_the_account() {
    let harness = Harness::start(|config| config.auth.max_failures_per_account = 3).await;
    let (_, secret) = harness.add_user("carol", &[Role::User]).await;
    let client = browser();

    for _ in 0..2 {
        let response = harness
            .login(&client, "carol", "wrong password!", "000000")
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let third = harness
        .login(&client, "carol", "wrong password!", "000000")
        .await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);

    let correct = harness
        .login(&client, "carol", PASSWORD, &secret.code_at(now_seconds()))
        .await;
    assert_eq!(
        correct.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a locked account must refuse even correct credentials"
    );
    let locked_page = body(correct).await;
    assert!(
        locked_page.contains("Too many failed sign-in attempts"),
        "{locked_page}"
    );

    for _ in 0..3 {
        harness
            .login(&client, "ghost", "wrong password!", "000000")
            .await;
    }
    let ghost = body(
        harness
            .login(&client, "ghost", "wrong password!", "000000")
            .await,
    )
    .await;
    assert_eq!(
        ghost.replace("ghost", "carol"),
        locked_page,
        "the lockout of an unknown account must look the same"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_removal_applies_at_next_request() {
    let harness = Harness::start(|_| {}).await;
    let (admin_id, admin_secret) = harness.add_user("root", &[Role::Admin]).await;
    let (user_id, user_secret) = harness.add_user("dave", &[Role::User]).await;
    let admin = browser();
    let user = browser();
    let mut ended = harness.broker().state.auth.subscribe();

    assert_eq!(
        harness
            .login(
                &admin,
                "root",
                PASSWORD,
                &admin_secret.code_at(now_seconds())
            )
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        harness
            .login(&user, "dave", PASSWORD, &user_secret.code_at(now_seconds()))
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(harness.me(&user).await.status(), StatusCode::OK);

    let forbidden = user
        .post(harness.url(&format!("/auth/users/{admin_id}/end-sessions")))
        .header("origin", &harness.base)
        .send()
        .await
        .unwrap();
    assert_eq!(
        forbidden.status(),
        StatusCode::FORBIDDEN,
        "a user must not use an admin route"
    );

    users::set_roles(&harness.broker().state.db, &user_id, &BTreeSet::new(), 0)
        .await
        .unwrap();
    let refused = harness.me(&user).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let event = tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .expect("session-ended event")
        .unwrap();
    assert_eq!(event.user_id, user_id);
    assert_eq!(event.reason, broker::auth::EndReason::NoRole);

    let me: serde_json::Value = harness.me(&admin).await.json().await.unwrap();
    assert_eq!(me["roles"], json!(["admin"]));
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_without_role_cannot_sign_in() {
    let harness = Harness::start(|_| {}).await;
    let (_, secret) = harness.add_user("erin", &[]).await;
    let client = browser();

    let response = harness
        .login(&client, "erin", PASSWORD, &secret.code_at(now_seconds()))
        .await;

    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get("set-cookie").is_none());
    assert!(body(response).await.contains("no role"));
    assert_eq!(harness.me(&client).await.status(), StatusCode::UNAUTHORIZED);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_requests_are_refused() {
    let harness = Harness::start(|_| {}).await;
    let (_, secret) = harness.add_user("frank", &[Role::Admin]).await;
    let client = browser();

    let no_origin = client
        .post(harness.url("/auth/login"))
        .form(&[
            ("username", "frank"),
            ("password", PASSWORD),
            ("code", &secret.code_at(now_seconds())),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(no_origin.status(), StatusCode::FORBIDDEN);

    assert_eq!(
        harness
            .login(&client, "frank", PASSWORD, &secret.code_at(now_seconds()))
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    let admin_id = harness
        .me(&client)
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = harness.url(&format!("/auth/users/{admin_id}/end-sessions"));

    let without = client.post(&path).send().await.unwrap();
    assert_eq!(without.status(), StatusCode::FORBIDDEN);
    let foreign = client
        .post(&path)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        harness.me(&client).await.status(),
        StatusCode::OK,
        "refused requests must not have ended the session"
    );

    let same = client
        .post(&path)
        .header("origin", &harness.base)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), StatusCode::OK);
    assert_eq!(harness.me(&client).await.status(), StatusCode::UNAUTHORIZED);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_page_redirects_to_login() {
    let harness = Harness::start(|_| {}).await;

    let response = browser()
        .get(harness.url("/auth/me"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()["location"],
        "/auth/login?next=%2Fauth%2Fme"
    );
    harness.stop().await;
}

// ---------------------------------------------------------------------------------
// Password policy, TOTP enrolment, lockout and the portal-session limit.

/// A password that passes the policy: four character classes, 12+ characters.
const POLICY_PASSWORD: &str = "Vault-door-2026!";

impl Harness {
    /// Creates a local account without a TOTP secret, as `user add` does by default.
    async fn add_unenrolled_user(&self, username: &str, roles: &[Role]) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let hash = broker::auth::password::hash(POLICY_PASSWORD).unwrap();
        let roles: BTreeSet<Role> = roles.iter().copied().collect();
        let new = users::NewLocalUser {
            id: &id,
            username,
            display_name: username,
            password_hash: &hash,
            sealed_totp: None,
            roles: &roles,
        };
        users::create_local(
            &self.broker().state.db,
            new,
            chrono::Utc::now().timestamp_millis(),
        )
        .await
        .unwrap();
        id
    }

    /// Forgets the last used TOTP step, so that one test can sign in several times
    /// within one 30-second step.
    async fn forget_totp_step(&self, user_id: &str) {
        sqlx::query("UPDATE users SET totp_last_step = NULL WHERE id = $1")
            .bind(user_id)
            .execute(self.broker().state.db.pool())
            .await
            .unwrap();
    }

    async fn post_form(
        &self,
        client: &reqwest::Client,
        path: &str,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        client
            .post(self.url(path))
            .header("origin", &self.base)
            .form(form)
            .send()
            .await
            .unwrap()
    }

    async fn change_password(
        &self,
        client: &reqwest::Client,
        new: &str,
        confirm: &str,
    ) -> reqwest::Response {
        self.post_form(
            client,
            "/auth/change-password",
            &[("new_password", new), ("confirm_password", confirm)],
        )
        .await
    }

    async fn action_count(&self, action: &str) -> usize {
        self.audit_actions()
            .await
            .iter()
            .filter(|(name, _, _)| name == action)
            .count()
    }
}

fn secret_from_page(page: &str) -> TotpSecret {
    let start = page
        .find("<code id=\"secret\">")
        .expect("secret on the page")
        + 18;
    let end = start + page[start..].find('<').unwrap();
    let bytes = totp_rs::Secret::Encoded(page[start..end].to_owned())
        .to_bytes()
        .expect("base32 secret");
    TotpSecret::from_bytes(zeroize::Zeroizing::new(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sign_in_enrols_totp() {
    let harness = Harness::start(|_| {}).await;
    let id = harness.add_unenrolled_user("nina", &[Role::User]).await;
    let client = browser();

    let login = harness.login(&client, "nina", POLICY_PASSWORD, "").await;
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    assert_eq!(login.headers()["location"], "/auth/enrol-totp");
    assert_eq!(
        harness.me(&client).await.status(),
        StatusCode::UNAUTHORIZED,
        "no portal session before enrolment"
    );
    assert_eq!(
        browser()
            .get(harness.url("/auth/enrol-totp"))
            .send()
            .await
            .unwrap()
            .headers()["location"],
        "/auth/login",
        "the enrolment page needs the pending sign-in cookie"
    );

    let page = body(
        client
            .get(harness.url("/auth/enrol-totp"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(page.contains("<svg"), "QR code missing: {page}");
    assert!(!page.contains("<?xml"), "{page}");
    let secret = secret_from_page(&page);
    let again = body(
        client
            .get(harness.url("/auth/enrol-totp"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        secret_from_page(&again).base32().as_str(),
        secret.base32().as_str(),
        "reloading the page keeps the secret"
    );

    let wrong = harness
        .post_form(&client, "/auth/enrol-totp", &[("code", "000000")])
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let code = secret.code_at(now_seconds());
    let confirmed = harness
        .post_form(&client, "/auth/enrol-totp", &[("code", &code)])
        .await;
    assert_eq!(confirmed.status(), StatusCode::SEE_OTHER);
    assert_eq!(confirmed.headers()["location"], "/auth/me");
    let me: serde_json::Value = harness.me(&client).await.json().await.unwrap();
    assert_eq!(me["user_id"], id.as_str());

    let replay = harness
        .login(&browser(), "nina", POLICY_PASSWORD, &code)
        .await;
    assert_eq!(
        replay.status(),
        StatusCode::UNAUTHORIZED,
        "the enrolment code must not sign in again"
    );
    let no_code = harness.login(&browser(), "nina", POLICY_PASSWORD, "").await;
    assert_eq!(
        no_code.status(),
        StatusCode::UNAUTHORIZED,
        "an enrolled account needs its code"
    );
    assert_eq!(harness.action_count("auth.mfa.enrolled").await, 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_removed_during_enrolment_is_refused() {
    let harness = Harness::start(|_| {}).await;
    let id = harness.add_unenrolled_user("uma", &[Role::User]).await;
    let client = browser();
    let login = harness.login(&client, "uma", POLICY_PASSWORD, "").await;
    assert_eq!(login.headers()["location"], "/auth/enrol-totp");
    let page = body(
        client
            .get(harness.url("/auth/enrol-totp"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let secret = secret_from_page(&page);

    users::set_roles(&harness.broker().state.db, &id, &BTreeSet::new(), 0)
        .await
        .unwrap();
    let code = secret.code_at(now_seconds());
    let refused = harness
        .post_form(&client, "/auth/enrol-totp", &[("code", &code)])
        .await;

    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.headers().get("set-cookie").is_none());
    assert_eq!(harness.me(&client).await.status(), StatusCode::UNAUTHORIZED);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_password_must_change_without_reuse() {
    let harness = Harness::start(|config| config.auth.password_history = 2).await;
    let (id, secret) = harness.add_user("olga", &[Role::User]).await;
    let db = &harness.broker().state.db;
    let old_hash = broker::auth::password::hash(POLICY_PASSWORD).unwrap();
    let ninety_one_days_ago = chrono::Utc::now().timestamp_millis() - 91 * 24 * 3600 * 1000;
    users::set_password(db, &id, &old_hash, false, 2, ninety_one_days_ago)
        .await
        .unwrap();
    let client = browser();

    let login = harness
        .login(
            &client,
            "olga",
            POLICY_PASSWORD,
            &secret.code_at(now_seconds()),
        )
        .await;
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    assert_eq!(login.headers()["location"], "/auth/change-password");
    assert_eq!(harness.me(&client).await.status(), StatusCode::UNAUTHORIZED);
    let page = body(
        client
            .get(harness.url("/auth/change-password"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(page.contains("older than 90 days"), "{page}");

    let weak = harness
        .change_password(&client, "alllowercase", "alllowercase")
        .await;
    assert_eq!(weak.status(), StatusCode::BAD_REQUEST);
    let weak_page = body(weak).await;
    assert!(
        weak_page.contains("an uppercase letter") && weak_page.contains("a digit"),
        "{weak_page}"
    );
    let mismatch = harness
        .change_password(&client, "Another-door-77", "Another-door-78")
        .await;
    assert_eq!(mismatch.status(), StatusCode::BAD_REQUEST);
    let reused = harness
        .change_password(&client, POLICY_PASSWORD, POLICY_PASSWORD)
        .await;
    assert_eq!(reused.status(), StatusCode::BAD_REQUEST);
    assert!(body(reused).await.contains("last 2 passwords"));
    let previous = harness.change_password(&client, PASSWORD, PASSWORD).await;
    assert_eq!(
        previous.status(),
        StatusCode::BAD_REQUEST,
        "the password before the current one is in the history too"
    );

    let changed = harness
        .change_password(&client, "Another-door-77", "Another-door-77")
        .await;
    assert_eq!(changed.status(), StatusCode::SEE_OTHER);
    assert_eq!(changed.headers()["location"], "/auth/me");
    assert_eq!(harness.me(&client).await.status(), StatusCode::OK);

    harness.forget_totp_step(&id).await;
    let old = harness
        .login(
            &browser(),
            "olga",
            POLICY_PASSWORD,
            &secret.code_at(now_seconds()),
        )
        .await;
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    harness.forget_totp_step(&id).await;
    let new = harness
        .login(
            &browser(),
            "olga",
            "Another-door-77",
            &secret.code_at(now_seconds()),
        )
        .await;
    assert_eq!(new.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        new.headers()["location"],
        "/auth/me",
        "no further change asked"
    );
    assert_eq!(harness.action_count("auth.password.changed").await, 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_unlocks_a_locked_account() {
    let harness = Harness::start(|_| {}).await;
    let (admin_id, admin_secret) = harness.add_user("pat", &[Role::Admin]).await;
    let (user_id, user_secret) = harness.add_user("quinn", &[Role::User]).await;
    let user = browser();

    for attempt in 1..=5 {
        let response = harness
            .login(&user, "quinn", "wrong password!", "000000")
            .await;
        let expected = if attempt < 5 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(response.status(), expected, "attempt {attempt}");
    }
    let locked = harness
        .login(
            &user,
            "quinn",
            PASSWORD,
            &user_secret.code_at(now_seconds()),
        )
        .await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(harness.action_count("auth.account.locked").await, 1);

    let admin = browser();
    let signed_in = harness
        .login(
            &admin,
            "pat",
            PASSWORD,
            &admin_secret.code_at(now_seconds()),
        )
        .await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let unlock_path = format!("/auth/users/{user_id}/unlock");
    let by_user = harness.post_form(&user, &unlock_path, &[]).await;
    assert_eq!(by_user.status(), StatusCode::UNAUTHORIZED, "not signed in");
    let unlocked = harness.post_form(&admin, &unlock_path, &[]).await;
    assert_eq!(unlocked.status(), StatusCode::OK);
    let unlocked: serde_json::Value = unlocked.json().await.unwrap();
    assert_eq!(unlocked["was_locked"], true);
    let unknown = harness
        .post_form(&admin, "/auth/users/no-such-id/unlock", &[])
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    harness.forget_totp_step(&user_id).await;
    let after = harness
        .login(
            &user,
            "quinn",
            PASSWORD,
            &user_secret.code_at(now_seconds()),
        )
        .await;
    assert_eq!(after.status(), StatusCode::SEE_OTHER);
    let by_non_admin = harness
        .post_form(&user, &format!("/auth/users/{admin_id}/unlock"), &[])
        .await;
    assert_eq!(by_non_admin.status(), StatusCode::FORBIDDEN);
    assert_eq!(harness.action_count("auth.account.unlocked").await, 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_beyond_limit_ends_oldest_session() {
    let harness = Harness::start(|config| config.auth.max_portal_sessions = 2).await;
    let (id, secret) = harness.add_user("rosa", &[Role::User]).await;
    let clients = [browser(), browser(), browser()];
    let mut ended = harness.broker().state.auth.subscribe();

    for client in &clients {
        harness.forget_totp_step(&id).await;
        let response = harness
            .login(client, "rosa", PASSWORD, &secret.code_at(now_seconds()))
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            cookie.contains("SameSite=Lax") && cookie.contains("HttpOnly"),
            "{cookie}"
        );
    }

    assert_eq!(
        harness.me(&clients[0]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(harness.me(&clients[1]).await.status(), StatusCode::OK);
    assert_eq!(harness.me(&clients[2]).await.status(), StatusCode::OK);
    let event = tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .expect("session-ended event")
        .unwrap();
    assert_eq!(event.reason, broker::auth::EndReason::SessionLimit);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_cookie_is_host_prefixed_and_secure() {
    let harness =
        Harness::start(|config| config.server.tls = broker::config::TlsMode::Generated).await;
    assert!(harness.base.starts_with("https://"), "{}", harness.base);
    let (_, secret) = harness.add_user("sam", &[Role::User]).await;
    let ca = std::fs::read(harness.dir.path().join("tls").join("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .cookie_store(true)
        .redirect(Policy::none())
        .build()
        .unwrap();

    let response = harness
        .login(&client, "sam", PASSWORD, &secret.code_at(now_seconds()))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("__Host-strongroom_session="), "{cookie}");
    for attribute in ["; Path=/", "; HttpOnly", "; SameSite=Lax", "; Secure"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(!cookie.contains("Domain="), "{cookie}");
    assert_eq!(harness.me(&client).await.status(), StatusCode::OK);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_session_ends_when_idle_or_too_old() {
    let harness = Harness::start(|config| {
        config.auth.session_idle = Duration::from_secs(2);
        config.auth.session_max = Duration::from_secs(3600);
    })
    .await;
    let (_, secret) = harness.add_user("tess", &[Role::User]).await;
    let mut ended = harness.broker().state.auth.subscribe();

    let idle = browser();
    let signed_in = harness
        .login(&idle, "tess", PASSWORD, &secret.code_at(now_seconds()))
        .await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while harness.me(&idle).await.status() == StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle session still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let event = tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .expect("session-ended event")
        .unwrap();
    assert_eq!(event.reason, broker::auth::EndReason::IdleTimeout);
    harness.stop().await;

    // The absolute lifetime ends a session that is in use.
    let harness = Harness::start(|config| {
        config.auth.session_idle = Duration::from_secs(3600);
        config.auth.session_max = Duration::from_secs(5);
    })
    .await;
    let (_, secret) = harness.add_user("tess", &[Role::User]).await;
    let mut ended = harness.broker().state.auth.subscribe();
    let signed_in = harness
        .login(&browser(), "tess", PASSWORD, &secret.code_at(now_seconds()))
        .await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    // The cookie is sent by hand, because a cookie store drops it at its Max-Age,
    // which equals the lifetime; the server must end the session on its own.
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let busy = reqwest::Client::new();
    let me = || {
        busy.get(harness.url("/auth/me"))
            .header("cookie", &cookie)
            .send()
    };
    assert_eq!(me().await.unwrap().status(), StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while me().await.unwrap().status() == StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired session still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let event = tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .expect("session-ended event")
        .unwrap();
    assert_eq!(event.reason, broker::auth::EndReason::Expired);
    harness.stop().await;
}

// ---------------------------------------------------------------------------------
// OIDC against oidc-provider-mock.

/// `oidc-provider-mock` on 127.0.0.1 and a port the kernel chose; killed on drop.
struct MockProvider {
    issuer: String,
    _child: tokio::process::Child,
}

const MOCK_SCRIPT: &str = "import sys, threading, werkzeug.serving, oidc_provider_mock\n\
server = werkzeug.serving.make_server('127.0.0.1', 0, oidc_provider_mock.app(), threaded=True)\n\
threading.Thread(target=server.serve_forever, daemon=True).start()\n\
print(server.server_port, flush=True)\n\
sys.stdin.read()\n";

impl MockProvider {
    async fn start() -> MockProvider {
        let python =
            std::env::var("STRONGROOM_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let mut child = tokio::process::Command::new(&python)
            .args(["-c", MOCK_SCRIPT])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {python}: {error}; install Python 3 and `pip install oidc-provider-mock`"));
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("oidc-provider-mock reports its port within 30 s")
        .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("oidc-provider-mock did not start (output {line:?}); run `pip install oidc-provider-mock`"));
        MockProvider {
            issuer: format!("http://127.0.0.1:{port}"),
            _child: child,
        }
    }

    async fn set_claims(&self, sub: &str, claims: serde_json::Value) {
        let response = reqwest::Client::new()
            .put(format!("{}/users/{sub}", self.issuer))
            .json(&claims)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
}

fn oidc_config(issuer: &str, secret_file: &Path) -> OidcConfig {
    std::fs::write(secret_file, "test-client-secret\n").unwrap();
    OidcConfig {
        issuer: issuer.to_owned(),
        client_id: "strongroom-test".to_owned(),
        client_secret: SecretRef::File(secret_file.to_owned()),
        redirect_url: None,
        scopes: vec!["openid".into(), "profile".into()],
        mfa_methods: vec!["mfa".into()],
        max_auth_age: Duration::from_secs(600),
        clock_leeway: Duration::from_secs(30),
        groups: GroupMapping {
            admin: vec!["ops".into()],
            auditor: vec!["audit".into()],
            user: vec!["staff".into()],
        },
    }
}

async fn start_with_oidc(issuer: &str) -> Harness {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.keep().join("oidc-secret");
    Harness::start(|config| config.auth.oidc = Some(oidc_config(issuer, &secret_file))).await
}

/// Runs the browser side of a sign-in at the mock: start at the broker, approve as
/// `sub` at the provider, return to the callback. Returns the callback's response.
async fn mock_sign_in(harness: &Harness, client: &reqwest::Client, sub: &str) -> reqwest::Response {
    let start = client
        .get(harness.url("/auth/oidc/login?next=/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let authorize = start.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        authorize.contains("code_challenge_method=S256") && authorize.contains("nonce="),
        "{authorize}"
    );

    let approval = client
        .post(&authorize)
        .form(&[("sub", sub)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        approval.status(),
        StatusCode::FOUND,
        "{}",
        body(approval).await
    );
    let callback = approval.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&harness.url("/auth/oidc/callback")),
        "{callback}"
    );
    client.get(&callback).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_mock_sign_in_enforces_mfa_age_and_groups() {
    let provider = MockProvider::start().await;
    let harness = start_with_oidc(&provider.issuer).await;
    let now = chrono::Utc::now().timestamp();

    provider.set_claims("grace", json!({"preferred_username": "grace", "groups": ["staff", "ops"], "amr": ["pwd", "mfa"], "auth_time": now})).await;
    let client = browser();
    let page = harness.client_get_login(&client).await;
    assert!(page.contains("Sign in with SSO"), "{page}");
    let accepted = mock_sign_in(&harness, &client, "grace").await;
    assert_eq!(accepted.status(), StatusCode::OK);
    assert!(body(accepted).await.contains("url=/auth/me"));
    let me: serde_json::Value = harness.me(&client).await.json().await.unwrap();
    assert_eq!(me["display_name"], "grace");
    assert_eq!(me["roles"], json!(["user", "admin"]));

    provider
        .set_claims(
            "heidi",
            json!({"groups": ["staff"], "amr": ["pwd"], "auth_time": now}),
        )
        .await;
    let no_mfa = mock_sign_in(&harness, &browser(), "heidi").await;
    assert_eq!(no_mfa.status(), StatusCode::FORBIDDEN);
    assert!(body(no_mfa).await.contains("did not use a second factor"));

    provider
        .set_claims(
            "ivan",
            json!({"groups": ["staff"], "amr": ["mfa"], "auth_time": now - 3600}),
        )
        .await;
    let stale = mock_sign_in(&harness, &browser(), "ivan").await;
    assert_eq!(stale.status(), StatusCode::FORBIDDEN);
    assert!(body(stale).await.contains("too old"));

    provider
        .set_claims(
            "judy",
            json!({"groups": ["visitors"], "amr": ["mfa"], "auth_time": now}),
        )
        .await;
    let judy = browser();
    let no_group = mock_sign_in(&harness, &judy, "judy").await;
    assert_eq!(no_group.status(), StatusCode::FORBIDDEN);
    assert!(body(no_group).await.contains("not in any group"));
    assert_eq!(harness.me(&judy).await.status(), StatusCode::UNAUTHORIZED);

    let reasons: Vec<String> = harness
        .audit_actions()
        .await
        .into_iter()
        .filter(|(action, _, _)| action == "auth.sign_in.failed")
        .map(|(_, _, details)| details)
        .collect();
    for reason in ["mfa_missing", "auth_time_stale", "no_mapped_group"] {
        assert!(
            reasons.iter().any(|detail| detail.contains(reason)),
            "{reason} missing from {reasons:?}"
        );
    }

    // Roles are recomputed at the next sign-in.
    provider.set_claims("grace", json!({"preferred_username": "grace", "groups": ["audit"], "amr": ["mfa"], "auth_time": chrono::Utc::now().timestamp()})).await;
    assert_eq!(
        mock_sign_in(&harness, &client, "grace").await.status(),
        StatusCode::OK
    );
    let me: serde_json::Value = harness.me(&client).await.json().await.unwrap();
    assert_eq!(me["roles"], json!(["auditor"]));

    let logout = client
        .post(harness.url("/auth/logout"))
        .header("origin", &harness.base)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);
    let location = logout.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{}/oauth2/end_session", provider.issuer)),
        "{location}"
    );
    harness.stop().await;
}

impl Harness {
    async fn client_get_login(&self, client: &reqwest::Client) -> String {
        body(client.get(self.url("/auth/login")).send().await.unwrap()).await
    }
}

// ---------------------------------------------------------------------------------
// OIDC against a provider served here, for tokens the mock cannot produce.

/// What the next token response contains.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Craft {
    Valid,
    WrongSignature,
    WrongAudience,
    Expired,
    WrongNonce,
    WrongIssuer,
    AlgNone,
    UnknownKey,
    NoMfa,
    StaleAuthTime,
    NoGroups,
}

#[derive(Clone)]
struct FakeProvider {
    issuer: Arc<Mutex<String>>,
    nonce: Arc<Mutex<String>>,
    craft: Arc<Mutex<Craft>>,
}

fn sign(claims: &serde_json::Value, pem: &str) -> String {
    sign_with_kid(claims, pem, "key-a")
}

fn sign_with_kid(claims: &serde_json::Value, pem: &str, kid: &str) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Builds a JWT with `alg` `none` and an empty signature.
fn unsigned(claims: &serde_json::Value) -> String {
    use base64::Engine;
    let encode = |value: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    format!(
        "{}.{}.",
        encode(&json!({"alg": "none", "typ": "JWT"})),
        encode(claims)
    )
}

async fn fake_discovery(State(fake): State<FakeProvider>) -> Json<serde_json::Value> {
    let issuer = fake.issuer.lock().unwrap().clone();
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn fake_jwks() -> Json<serde_json::Value> {
    Json(
        json!({"keys": [{"kty": "RSA", "kid": "key-a", "use": "sig", "alg": "RS256", "n": KEY_A_N, "e": "AQAB"}]}),
    )
}

async fn fake_token(State(fake): State<FakeProvider>) -> Json<serde_json::Value> {
    let issuer = fake.issuer.lock().unwrap().clone();
    let craft = *fake.craft.lock().unwrap();
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": issuer, "sub": "kate", "aud": "strongroom-test", "iat": now, "exp": now + 300, "auth_time": now,
        "nonce": fake.nonce.lock().unwrap().clone(), "amr": ["pwd", "mfa"], "groups": ["staff"], "sid": "sid-kate",
    });
    match craft {
        Craft::WrongAudience => claims["aud"] = json!("someone-else"),
        Craft::Expired => claims["exp"] = json!(now - 600),
        Craft::WrongNonce => claims["nonce"] = json!("not-the-nonce"),
        Craft::WrongIssuer => claims["iss"] = json!("http://127.0.0.1:1/other-issuer"),
        Craft::NoMfa => claims["amr"] = json!(["pwd"]),
        Craft::StaleAuthTime => claims["auth_time"] = json!(now - 3600),
        Craft::NoGroups => {
            claims.as_object_mut().unwrap().remove("groups");
        }
        Craft::Valid | Craft::WrongSignature | Craft::AlgNone | Craft::UnknownKey => {}
    }
    let id_token = match craft {
        Craft::WrongSignature => sign(&claims, KEY_B_PEM),
        Craft::UnknownKey => sign_with_kid(&claims, KEY_B_PEM, "key-unknown"),
        Craft::AlgNone => unsigned(&claims),
        _ => sign(&claims, KEY_A_PEM),
    };
    Json(
        json!({"access_token": "opaque", "token_type": "Bearer", "expires_in": 300, "id_token": id_token}),
    )
}

async fn start_fake_provider() -> (FakeProvider, String, tokio::task::JoinHandle<()>) {
    let fake = FakeProvider {
        issuer: Arc::default(),
        nonce: Arc::default(),
        craft: Arc::new(Mutex::new(Craft::Valid)),
    };
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(fake_discovery))
        .route("/jwks", get(fake_jwks))
        .route("/token", post(fake_token))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    *fake.issuer.lock().unwrap() = issuer.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, issuer, server)
}

/// Starts a sign-in at the broker, records the nonce the broker chose, and calls the
/// callback as the provider's redirect would.
async fn fake_sign_in(
    harness: &Harness,
    fake: &FakeProvider,
    client: &reqwest::Client,
    craft: Craft,
) -> reqwest::Response {
    *fake.craft.lock().unwrap() = craft;
    let start = client
        .get(harness.url("/auth/oidc/login"))
        .send()
        .await
        .unwrap();
    let authorize = url::Url::parse(start.headers()["location"].to_str().unwrap()).unwrap();
    let query: std::collections::HashMap<String, String> =
        authorize.query_pairs().into_owned().collect();
    *fake.nonce.lock().unwrap() = query["nonce"].clone();
    let callback = format!(
        "{}?code=code-1&state={}",
        harness.url("/auth/oidc/callback"),
        query["state"]
    );
    client.get(callback).send().await.unwrap()
}

fn logout_token(issuer: &str, jti: &str, with_event: bool) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({"iss": issuer, "aud": "strongroom-test", "iat": now, "exp": now + 120, "jti": jti, "sub": "kate", "sid": "sid-kate"});
    if with_event {
        claims["events"] = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
    }
    sign(&claims, KEY_A_PEM)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_id_tokens_are_rejected() {
    let (fake, issuer, server) = start_fake_provider().await;
    let harness = start_with_oidc(&issuer).await;

    for craft in [
        Craft::WrongSignature,
        Craft::WrongAudience,
        Craft::Expired,
        Craft::WrongNonce,
        Craft::WrongIssuer,
        Craft::AlgNone,
        Craft::UnknownKey,
        Craft::NoMfa,
        Craft::StaleAuthTime,
        Craft::NoGroups,
    ] {
        let client = browser();
        let response = fake_sign_in(&harness, &fake, &client, craft).await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{craft:?} accepted"
        );
        assert_eq!(
            harness.me(&client).await.status(),
            StatusCode::UNAUTHORIZED,
            "{craft:?} signed in"
        );
    }

    let client = browser();
    assert_eq!(
        fake_sign_in(&harness, &fake, &client, Craft::Valid)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(harness.me(&client).await.status(), StatusCode::OK);

    let replayed_state = client
        .get(harness.url("/auth/oidc/callback?code=code-1&state=unknown"))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed_state.status(), StatusCode::BAD_REQUEST);

    let reasons: Vec<String> = harness
        .audit_actions()
        .await
        .into_iter()
        .filter(|(action, _, _)| action == "auth.sign_in.failed")
        .map(|(_, _, details)| details)
        .collect();
    let count = |reason: &str| {
        reasons
            .iter()
            .filter(|detail| detail.contains(&format!("\"{reason}\"")))
            .count()
    };
    assert_eq!(count("invalid_id_token"), 7, "{reasons:?}");
    assert_eq!(count("mfa_missing"), 1, "{reasons:?}");
    assert_eq!(count("auth_time_stale"), 1, "{reasons:?}");
    assert_eq!(count("no_mapped_group"), 1, "{reasons:?}");
    harness.stop().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_ends_sessions_once() {
    let (fake, issuer, server) = start_fake_provider().await;
    let harness = start_with_oidc(&issuer).await;
    let client = browser();
    assert_eq!(
        fake_sign_in(&harness, &fake, &client, Craft::Valid)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(harness.me(&client).await.status(), StatusCode::OK);
    let mut ended = harness.broker().state.auth.subscribe();
    let endpoint = harness.url("/auth/oidc/backchannel-logout");
    let provider_client = reqwest::Client::new();

    let no_event = provider_client
        .post(&endpoint)
        .form(&[("logout_token", logout_token(&issuer, "jti-0", false))])
        .send()
        .await
        .unwrap();
    assert_eq!(no_event.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        harness.me(&client).await.status(),
        StatusCode::OK,
        "an invalid token must not end the session"
    );

    let forged = sign(
        &json!({"iss": issuer, "aud": "strongroom-test", "iat": chrono::Utc::now().timestamp(), "jti": "jti-x", "sub": "kate", "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
        KEY_B_PEM,
    );
    let forged = provider_client
        .post(&endpoint)
        .form(&[("logout_token", forged)])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    let now = chrono::Utc::now().timestamp();
    let unsigned_token = unsigned(
        &json!({"iss": issuer, "aud": "strongroom-test", "iat": now, "jti": "jti-n", "sub": "kate", "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
    );
    let alg_none = provider_client
        .post(&endpoint)
        .form(&[("logout_token", unsigned_token)])
        .send()
        .await
        .unwrap();
    assert_eq!(alg_none.status(), StatusCode::BAD_REQUEST);
    assert_eq!(harness.me(&client).await.status(), StatusCode::OK);

    let token = logout_token(&issuer, "jti-1", true);
    let valid = provider_client
        .post(&endpoint)
        .form(&[("logout_token", token.clone())])
        .send()
        .await
        .unwrap();
    assert_eq!(valid.status(), StatusCode::OK);
    assert_eq!(harness.me(&client).await.status(), StatusCode::UNAUTHORIZED);
    let event = tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .expect("session-ended event")
        .unwrap();
    assert_eq!(event.reason, broker::auth::EndReason::BackChannelLogout);

    let replay = provider_client
        .post(&endpoint)
        .form(&[("logout_token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        replay.status(),
        StatusCode::BAD_REQUEST,
        "a replayed jti must be refused"
    );
    harness.stop().await;
    server.abort();
}
