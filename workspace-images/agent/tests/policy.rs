//! Chromium managed policies leave the CDP pipe working.
//!
//! The test runs the agent in a private mount namespace (`unshare --mount`, needs root)
//! where a copy of `/etc/chromium` with a managed policy file is bind-mounted over the
//! real one, so the host's Chromium configuration is not changed.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use protocol::{
    AgentControl, AgentMessage, AllowedOrigins, AutoLogin, BrokerMessage, CredentialField,
    Credentials, LoginStep,
};

const WAIT: Duration = Duration::from_secs(30);

const LOGIN_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"></head><body>
<form method="post" action="/login"><input id="user" name="user"><input id="pass" name="pass" type="password">
<button id="go" type="submit">Sign in</button></form>
<iframe src="/allowed"></iframe><iframe src="/blocked"></iframe></body></html>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devtools_policy_keeps_cdp_pipe_working() {
    let server = HttpServer::start(HashMap::from([
        ("/", LOGIN_PAGE.to_owned()),
        ("/allowed", "<p>allowed</p>".to_owned()),
        ("/blocked", "<p>blocked</p>".to_owned()),
        ("/home", "<h1 id=\"welcome\">Welcome</h1>".to_owned()),
    ]))
    .await;

    let root = TempDir::new("policy-test");
    let etc = root.0.join("etc-chromium");
    std::fs::create_dir_all(etc.join("policies/managed")).unwrap();
    for entry in std::fs::read_dir("/etc/chromium").unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), etc.join(entry.file_name())).unwrap();
        }
    }
    let policy = serde_json::json!({
        "DeveloperToolsAvailability": 1,
        "PasswordManagerEnabled": false,
        "URLBlocklist": ["devtools://*", "chrome-devtools://*", "view-source:*", format!("{}/blocked", server.address)],
    });
    std::fs::write(
        etc.join("policies/managed/strongroom.json"),
        policy.to_string(),
    )
    .unwrap();

    let script = format!(
        "mount --bind '{}' /etc/chromium && exec \"$0\" \"$@\"",
        etc.display()
    );
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script.as_str(),
    ];
    let agent = Agent::start_wrapped(&wrapper, &server.url("/"), 640, 480).await;
    let mut broker = BrokerClient::connect_authenticated(agent.address).await;

    let origin = server.origin();
    let login = AutoLogin {
        login_id: 1,
        steps: vec![
            LoginStep::Fill {
                selector: "#user".into(),
                field: CredentialField::Username,
                timeout_ms: 10_000,
            },
            LoginStep::Fill {
                selector: "#pass".into(),
                field: CredentialField::Password,
                timeout_ms: 5_000,
            },
            LoginStep::Click {
                selector: "#go".into(),
                timeout_ms: 5_000,
            },
            LoginStep::WaitForSuccess {
                url_prefix: Some(server.url("/home")),
                selector: None,
                timeout_ms: 10_000,
            },
        ],
        credentials: Credentials {
            username: "bob".into(),
            password: "pw".into(),
            totp: None,
        },
        allowed_origins: AllowedOrigins {
            username: vec![origin.clone()],
            password: vec![origin],
            totp: vec![],
        },
    };
    server.wait_for(WAIT, |r| r.path == "/allowed").await;
    broker.send(&BrokerMessage::AutoLogin(login)).await;
    let result = loop {
        match broker.next(WAIT).await.expect("connection closed") {
            AgentMessage::Control(AgentControl::LoginFinished {
                success, reason, ..
            }) => break (success, reason),
            _ => continue,
        }
    };

    assert_eq!(
        result,
        (true, None),
        "auto-login over the CDP pipe under DeveloperToolsAvailability 2"
    );
    let posts = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1);
    // The policy was in force: the blocked frame was never requested.
    assert!(
        !server.requests().iter().any(|r| r.path == "/blocked"),
        "URLBlocklist was not applied"
    );
}
