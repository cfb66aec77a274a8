//! Chromium's own background traffic in a real workspace. Chromium calls Google hosts
//! for updates, sign-in, Safe Browsing, translation and metrics. In a workspace the
//! egress proxy denies each such call, and every denial is an audit event and a
//! warning in the log. The agent turns these calls off with launch flags and managed
//! policies, and sends the few that no switch stops around the proxy, where they fail
//! inside the container. So a session that loaded its site and sat on the page causes
//! no denial of a host outside the site's allowlist.
//!
//! The page comes from an HTTPS server that the test starts on 127.0.0.1 with a
//! generated CA, reached through the egress proxy by `egress.hosts`. The workspace
//! image is `STRONGROOM_TEST_WORKSPACE_IMAGE` when set, otherwise the launcher's
//! default; it must contain an agent built from this tree.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use broker::auth::Role;
use strongroom_tests::pages::TlsSite;
use strongroom_tests::stack::{Stack, wait_for};
use uuid::Uuid;

const HOST: &str = "quiet.test";
/// Session subnets of this test, apart from the other tests' ranges.
const SUBNET_RANGE: &str = "172.23.0.0/16";
/// Time for a workspace to start and load the page on a busy two-core machine.
const LOAD_TIMEOUT: Duration = Duration::from_secs(240);
/// Time the session sits on the loaded page while the test watches the proxy. Without
/// the bypass, Chromium 156 called `accounts.google.com`, `update.googleapis.com` and
/// `clients2.google.com` within 2 seconds of its start, and again after 5, 13 and 37 s.
const QUIET_WINDOW: Duration = Duration::from_secs(45);

/// A plain page that reports that it loaded.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Account overview</title></head>
<body><h1>Account overview</h1><script>fetch('/loaded');</script></body></html>"#;

/// Starts the page's HTTPS server. The returned flag turns true once the page
/// reported that it loaded.
async fn start_site() -> (TlsSite, Arc<AtomicBool>) {
    let loaded = Arc::new(AtomicBool::new(false));
    let seen = loaded.clone();
    let router = axum::Router::new()
        .route("/page", get(|| async { Html(PAGE) }))
        .route(
            "/loaded",
            get(move || {
                seen.store(true, Ordering::SeqCst);
                async { "" }
            }),
        );
    (TlsSite::start(HOST, router).await, loaded)
}

/// Egress decisions of a session, from its `session.site.accessed` audit events: the
/// CONNECT target (`host:port`) and whether the proxy allowed it.
async fn egress_decisions(stack: &Stack, session_id: Uuid) -> Vec<(String, bool)> {
    let events = stack.broker().state.audit.list(0, 100_000).await.unwrap();
    events
        .into_iter()
        .filter(|event| {
            event.action == "session.site.accessed"
                && event.actor == "system:egress"
                && event.session_id.as_deref() == Some(&session_id.to_string())
        })
        .map(|event| {
            let allowed = event.outcome == "success";
            (event.target.unwrap_or_default(), allowed)
        })
        .collect()
}

/// Returns the denied targets whose host is not the site's.
fn denied_elsewhere(decisions: &[(String, bool)]) -> Vec<String> {
    decisions
        .iter()
        .filter(|(target, allowed)| !allowed && target.split(':').next() != Some(HOST))
        .map(|(target, _)| target.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_calls_no_other_host() {
    let (site, loaded) = start_site().await;
    let stack = Stack::builder(SUBNET_RANGE)
        .env("STRONGROOM_EGRESS__HOSTS", site.egress_hosts())
        .workspace_image_from_env()
        .start()
        .await;
    let sites = site.site_toml(stack.dir.path(), "quiet", "Quiet bank", "/page", "");
    stack.import_sites("sites.toml", &sites).await;
    let alice = stack.person("alice", &[Role::User], &["quiet"]).await;
    let (session_id, _) = alice.launch("quiet").await;

    wait_for("the page to load", LOAD_TIMEOUT, || async {
        loaded.load(Ordering::SeqCst).then_some(())
    })
    .await;
    // The watch fails at the first denial of another host. A quiet browser gives
    // nothing to wait for, so it runs for the whole window.
    let window_end = tokio::time::Instant::now() + QUIET_WINDOW;
    while tokio::time::Instant::now() < window_end {
        let decisions = egress_decisions(&stack, session_id).await;
        let denied = denied_elsewhere(&decisions);
        assert!(
            denied.is_empty(),
            "the proxy denied calls to hosts outside the allowlist: {denied:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The audit trail records the proxy's decisions at all: the page's own tunnel is
    // there, allowed.
    let decisions = egress_decisions(&stack, session_id).await;
    let site_target = format!("{HOST}:{}", site.address.port());
    assert!(
        decisions
            .iter()
            .any(|(target, allowed)| *allowed && *target == site_target),
        "no allowed tunnel to {site_target}: {decisions:?}"
    );
    assert!(
        denied_elsewhere(&decisions).is_empty(),
        "the proxy denied calls to hosts outside the allowlist: {decisions:?}"
    );

    stack.stop().await;
}
