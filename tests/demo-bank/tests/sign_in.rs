//! The demo bank over real HTTPS with its generated CA: the login form, the TOTP step,
//! the account page, the PDF and the `/received` report.

use std::net::SocketAddr;

use axum_server::tls_rustls::RustlsConfig;
use sha2::{Digest, Sha256};
use strongroom_demo_bank::{Account, BankState, Received, bank_router, received_router, tls};

const TOKEN: &str = "received-token-for-tests";
const SEED: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
const PASSWORD: &str = "p&ss word€ '\"$";

struct Running {
    bank: SocketAddr,
    received: SocketAddr,
    ca_pem: String,
    account: Account,
    handle: axum_server::Handle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

async fn start() -> Running {
    drop(rustls::crypto::ring::default_provider().install_default());
    let generated = tls::generate(&["demo-bank.test".to_owned()], &[]).unwrap();
    let ca_pem = generated.ca_pem.clone();
    let config = RustlsConfig::from_pem(
        generated.chain_pem.into_bytes(),
        generated.key_pem.into_bytes(),
    )
    .await
    .unwrap();
    let account = Account::new("ada", PASSWORD, SEED, "Ada Lovelace").unwrap();
    let state = BankState::new(
        Account::new("ada", PASSWORD, SEED, "Ada Lovelace").unwrap(),
        TOKEN.to_owned(),
        Some(ca_pem.clone()),
    )
    .unwrap();

    let bank_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bank_listener.set_nonblocking(true).unwrap();
    let bank = bank_listener.local_addr().unwrap();
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(bank_listener, config)
        .handle(handle.clone())
        .serve(bank_router(state.clone()).into_make_service());
    tokio::spawn(server);

    let received_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let received = received_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(received_listener, received_router(state)).await });

    Running {
        bank,
        received,
        ca_pem,
        account,
        handle,
    }
}

/// Builds a client that trusts only the bank's generated CA and resolves its name to loopback.
fn client(running: &Running) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(running.ca_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve("demo-bank.test", running.bank)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .unwrap()
}

fn url(running: &Running, path: &str) -> String {
    format!("https://demo-bank.test:{}{path}", running.bank.port())
}

async fn received(running: &Running) -> Received {
    reqwest::Client::new()
        .get(format!("http://{}/received", running.received))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn login_totp_account_and_pdf() {
    let running = start().await;
    let client = client(&running);

    let login = client.get(url(&running, "/")).send().await.unwrap();
    assert_eq!(login.url().path(), "/login");
    assert!(login.text().await.unwrap().contains("id=\"password\""));

    let totp_page = client
        .post(url(&running, "/login"))
        .form(&[("username", "ada"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(totp_page.url().path(), "/totp");

    let account = client
        .post(url(&running, "/totp"))
        .form(&[("code", running.account.current_code())])
        .send()
        .await
        .unwrap();
    assert_eq!(account.url().path(), "/account");
    let page = account.text().await.unwrap();
    assert!(page.contains("Account overview"), "{page}");
    assert!(page.contains("Ada Lovelace"));

    let pdf = client
        .get(url(&running, "/statement.pdf"))
        .send()
        .await
        .unwrap();
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    let bytes = pdf.bytes().await.unwrap();
    assert!(bytes.starts_with(b"%PDF-"));

    let saved = client
        .post(url(&running, "/note"))
        .form(&[("note", "typed <text>")])
        .send()
        .await
        .unwrap();
    assert!(saved.text().await.unwrap().contains("typed &lt;text&gt;"));

    let report = received(&running).await;
    assert_eq!(report.logins.len(), 1);
    assert_eq!(report.logins[0].username, "ada");
    assert_eq!(
        report.logins[0].password_sha256,
        hex::encode(Sha256::digest(PASSWORD.as_bytes()))
    );
    assert!(report.logins[0].accepted);
    assert_eq!(report.totp, vec![true]);
    assert_eq!(report.notes, vec!["typed <text>".to_owned()]);
}

#[tokio::test]
async fn wrong_password_and_code_are_rejected() {
    let running = start().await;
    let client = client(&running);

    let rejected = client
        .post(url(&running, "/login"))
        .form(&[("username", "ada"), ("password", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), 401);

    let account = client.get(url(&running, "/account")).send().await.unwrap();
    assert_eq!(
        account.url().path(),
        "/login",
        "account reachable without login"
    );

    client
        .post(url(&running, "/login"))
        .form(&[("username", "ada"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let wrong_code = client
        .post(url(&running, "/totp"))
        .form(&[("code", "000000x")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_code.status(), 401);
    let account = client.get(url(&running, "/account")).send().await.unwrap();
    assert_eq!(
        account.url().path(),
        "/login",
        "account reachable without TOTP"
    );

    let report = received(&running).await;
    let accepted: Vec<bool> = report.logins.iter().map(|login| login.accepted).collect();
    assert_eq!(accepted, vec![false, true]);
    assert_eq!(report.totp, vec![false]);
}

#[tokio::test]
async fn received_requires_token() {
    let running = start().await;
    let plain = reqwest::Client::new();
    let base = format!("http://{}", running.received);

    let missing = plain.get(format!("{base}/received")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let wrong = plain
        .get(format!("{base}/received"))
        .bearer_auth("received-token-for-tesTS")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let ca = plain.get(format!("{base}/ca.pem")).send().await.unwrap();
    assert_eq!(ca.text().await.unwrap(), running.ca_pem);
}
