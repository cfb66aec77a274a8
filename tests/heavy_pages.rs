//! Heavy pages in real workspaces. Sessions run through the portal, the launcher, the
//! Docker engine and the workspace image with the production container settings. Each
//! opens a page with a large canvas chart and embedded copies of the demo bank's PDF
//! statement, and the person scrolls through it with wheel input over the viewer
//! socket. Chromium builds may keep rendering buffers in `/dev/shm`, where Docker's
//! default of 64 MiB is known to crash tabs.
//!
//! The page comes from an HTTPS server that the test starts on 127.0.0.1 with a
//! generated CA, reached through the egress proxy by `egress.hosts`. Every half second
//! the page reports its own random id and scroll position to `/alive`. A crashed
//! renderer stops reporting, and a reloaded tab reports under a new id, so "every page
//! still reports after the scrolling, and no other page ever did" means no tab
//! crashed.
//!
//! `crashed_renderer_stops_page_reports` kills the tab's renderer and checks that the
//! reports stop, so the heavy-page check can see a crash.
//!
//! NOTE: with the Chromium of the Debian bookworm workspace image, `/dev/shm` stayed at
//! 0 bytes used while these pages scrolled, and the same test passed with a 64 MiB
//! `/dev/shm`: this Chromium allocates its shared memory elsewhere (for example with
//! `memfd_create`). The test therefore shows that heavy pages keep their tabs with the
//! production settings and checks the configured size, but it does not reproduce a
//! crash caused by a small `/dev/shm`.
//!
//! `STRONGROOM_TEST_SCROLL_SECONDS` sets how long each round scrolls (default 30; 120
//! for the full run). The workspace image is `STRONGROOM_TEST_WORKSPACE_IMAGE` when set,
//! otherwise the launcher's default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use broker::auth::Role;
use futures::{SinkExt, StreamExt};
use reqwest::cookie::CookieStore;
use strongroom_tests::stack::{Person, Stack, wait_for};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

const HOST: &str = "heavy-pages.test";
/// Session subnets of this test, apart from the other tests' ranges.
const SUBNET_RANGE: &str = "172.24.0.0/16";
/// `/dev/shm` of a site that sets no `limits.shm_mib` (the site catalogue's default).
const DEFAULT_SHM_BYTES: u64 = 1024 << 20;
/// Sessions of the second round, started at once.
const PARALLEL_SESSIONS: usize = 5;
/// Time for a workspace to start and load the page on a busy two-core machine.
const LOAD_TIMEOUT: Duration = Duration::from_secs(240);
/// Time a live page gets to send its next report (it reports every 500 ms).
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Seconds of scrolling per round.
fn scroll_duration() -> Duration {
    let seconds = std::env::var("STRONGROOM_TEST_SCROLL_SECONDS")
        .ok()
        .map(|text| {
            text.parse::<u64>().unwrap_or_else(|_| {
                panic!("STRONGROOM_TEST_SCROLL_SECONDS={text:?} is not a number of seconds")
            })
        })
        .unwrap_or(30);
    Duration::from_secs(seconds)
}

/// The heavy page: a 2000 x 20000 pixel canvas chart with 200 000 line segments, six
/// embedded copies of the statement PDF, and the report to `/alive`.
const HEAVY_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Heavy page</title></head>
<body style="margin:0;font-family:sans-serif">
<h1 id="title">Portfolio chart and statements</h1>
<canvas id="chart" width="2000" height="20000"></canvas>
<div id="statements"></div>
<script>
const page = crypto.randomUUID();
const canvas = document.getElementById("chart");
const context = canvas.getContext("2d");
for (let band = 0; band < 40; band++) {
  context.fillStyle = `hsl(${band * 9}, 60%, ${band % 2 ? 92 : 85}%)`;
  context.fillRect(0, band * 500, canvas.width, 500);
}
let seed = 7;
const random = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
for (let series = 0; series < 20; series++) {
  context.strokeStyle = `hsl(${series * 18}, 70%, 40%)`;
  context.beginPath();
  let y = random() * canvas.height;
  context.moveTo(0, y);
  for (let step = 1; step <= 10000; step++) {
    y = Math.min(canvas.height, Math.max(0, y + (random() - 0.5) * 80));
    context.lineTo(step * canvas.width / 10000, y);
  }
  context.stroke();
}
const statements = document.getElementById("statements");
for (let copy = 0; copy < 6; copy++) {
  const embed = document.createElement("embed");
  embed.src = `/statement.pdf?copy=${copy}`;
  embed.type = "application/pdf";
  embed.width = "1200";
  embed.height = "1600";
  statements.appendChild(embed);
}
function report() {
  fetch(`/alive?page=${page}&y=${Math.round(window.scrollY)}`, { cache: "no-store" })
    .catch(() => {});
}
report();
setInterval(report, 500);
</script>
</body></html>
"#;

/// What one page (one tab load) reported.
#[derive(Debug, Clone)]
struct PageReport {
    last: Instant,
    max_scroll_y: i64,
}

#[derive(Clone, Default)]
struct Reports(Arc<Mutex<HashMap<String, PageReport>>>);

impl Reports {
    fn snapshot(&self) -> HashMap<String, PageReport> {
        self.0.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

#[derive(serde::Deserialize)]
struct Alive {
    page: String,
    y: i64,
}

async fn alive(State(reports): State<Reports>, Query(alive): Query<Alive>) -> impl IntoResponse {
    let mut reports = reports.0.lock().unwrap();
    let entry = reports.entry(alive.page).or_insert(PageReport {
        last: Instant::now(),
        max_scroll_y: 0,
    });
    entry.last = Instant::now();
    entry.max_scroll_y = entry.max_scroll_y.max(alive.y);
    axum::http::StatusCode::NO_CONTENT
}

/// The HTTPS server of the heavy page on 127.0.0.1, stopped on drop.
struct HeavySite {
    address: SocketAddr,
    ca_pem: String,
    reports: Reports,
    handle: axum_server::Handle,
}

impl HeavySite {
    async fn start() -> HeavySite {
        drop(rustls::crypto::ring::default_provider().install_default());
        let tls = strongroom_demo_bank::tls::generate(&[HOST.to_owned()], &[]).unwrap();
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            tls.chain_pem.into_bytes(),
            tls.key_pem.into_bytes(),
        )
        .await
        .unwrap();

        let pdf = strongroom_demo_bank::statement::pdf("Heavy Pages Test");
        let reports = Reports::default();
        let router = axum::Router::new()
            .route("/heavy", get(|| async { Html(HEAVY_PAGE) }))
            .route(
                "/statement.pdf",
                get(move || {
                    let pdf = pdf.clone();
                    async move { ([("content-type", "application/pdf")], pdf) }
                }),
            )
            .route("/alive", get(alive))
            .with_state(reports.clone());

        let handle = axum_server::Handle::new();
        let server = axum_server::bind_rustls("127.0.0.1:0".parse().unwrap(), config)
            .handle(handle.clone())
            .serve(router.into_make_service());
        tokio::spawn(server);
        let address = handle.listening().await.expect("heavy page server listens");
        HeavySite {
            address,
            ca_pem: tls.ca_pem,
            reports,
            handle,
        }
    }
}

impl Drop for HeavySite {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Starts a stack whose egress proxy resolves the heavy site's name to loopback and
/// whose people may each run `PARALLEL_SESSIONS` sessions.
async fn start_stack() -> Stack {
    Stack::builder(SUBNET_RANGE)
        .env(
            "STRONGROOM_EGRESS__HOSTS",
            format!("{{ \"{HOST}\" = [\"127.0.0.1\"] }}"),
        )
        .env(
            "STRONGROOM_SESSIONS__DEFAULT_QUOTA",
            PARALLEL_SESSIONS.to_string(),
        )
        .workspace_image_from_env()
        .start()
        .await
}

/// Runs `docker` with `args` and returns its standard output, or panics with its error.
async fn docker(args: &[&str]) -> String {
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
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The workspace container of a session.
async fn container_of(session_id: Uuid) -> String {
    let label = format!("label=strongroom.session={session_id}");
    let name = docker(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]).await;
    assert_eq!(
        name.lines().count(),
        1,
        "one container of {session_id}: {name:?}"
    );
    name
}

/// Imports the heavy site with its CA, then creates alice, grants her the site and
/// signs her in.
async fn sign_in(stack: &Stack, site: &HeavySite) -> Person {
    std::fs::write(stack.dir.path().join("heavy-ca.pem"), &site.ca_pem).unwrap();
    let port = site.address.port();
    let sites = format!(
        r#"
[[site]]
name = "heavy"
display_name = "Heavy pages"
start_url = "https://{HOST}:{port}/heavy"
allowed_hosts = ["{HOST}"]
allowed_ports = [{port}]
allowed_private_ranges = ["127.0.0.1/32"]
recording_retention_days = 30
[site.policy]
extra_ca_certs = ["heavy-ca.pem"]
"#
    );
    stack.import_sites("sites.toml", &sites).await;
    stack.person("alice", &[Role::User], &["heavy"]).await
}

/// Launches the heavy site from the portal form; returns the session id.
async fn launch(person: &Person) -> Uuid {
    person.launch("heavy").await.0
}

type ViewerSink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// The person's viewer socket of one session. A task reads every message and keeps the
/// reason of an `ended` status.
struct Viewer {
    sink: ViewerSink,
    ended: Arc<Mutex<Option<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Viewer {
    async fn open(stack: &Stack, person: &Person, session_id: Uuid) -> Viewer {
        let page = person
            .client
            .get(format!("{}/sessions/{session_id}", stack.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let socket_path = page
            .split("data-socket=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("viewer page has a socket path");
        let socket_url = format!(
            "{}{}",
            stack.base.replacen("http", "ws", 1),
            socket_path.replace("&amp;", "&")
        );
        let mut request = socket_url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", stack.base.parse().unwrap());
        let cookies = person.jar.cookies(&stack.base.parse().unwrap()).unwrap();
        request.headers_mut().insert("cookie", cookies);
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("viewer socket opens");

        let (sink, mut stream) = socket.split();
        let ended = Arc::new(Mutex::new(None));
        let ended_by_reader = ended.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message {
                    let status: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if status["type"] == "ended" {
                        let reason = status["reason"].as_str().unwrap_or_default().to_owned();
                        *ended_by_reader.lock().unwrap() = Some(reason);
                    }
                }
            }
        });
        Viewer {
            sink,
            ended,
            reader,
        }
    }

    fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap().clone()
    }

    async fn wheel(&mut self, delta_y: f32) {
        let message = serde_json::json!({
            "type": "wheel", "x": 640, "y": 360, "delta_x": 0.0, "delta_y": delta_y,
        });
        self.sink
            .send(Message::text(message.to_string()))
            .await
            .expect("viewer socket accepts input");
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Checks the `/dev/shm` size in the container's spec and in its mount table.
async fn assert_shm_size(session_id: Uuid) {
    let container = container_of(session_id).await;
    let spec = docker(&["inspect", "--format", "{{.HostConfig.ShmSize}}", &container]).await;
    assert_eq!(
        spec,
        DEFAULT_SHM_BYTES.to_string(),
        "ShmSize of {container}"
    );
    let mounts = docker(&["exec", &container, "cat", "/proc/mounts"]).await;
    let shm = mounts
        .lines()
        .find(|line| line.split_whitespace().nth(1) == Some("/dev/shm"))
        .unwrap_or_else(|| panic!("no /dev/shm mount in {container}: {mounts}"));
    let expected = format!("size={}k", DEFAULT_SHM_BYTES / 1024);
    assert!(shm.contains(&expected), "{container}: {shm}");
}

/// Returns whether every page that reported so far reports again after `since`, within
/// [`REPORT_TIMEOUT`].
async fn every_page_reports_after(site: &HeavySite, since: Instant) -> bool {
    let deadline = Instant::now() + REPORT_TIMEOUT;
    loop {
        let reports = site.reports.snapshot();
        if reports.values().all(|report| report.last > since) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Launches `count` sessions at once, waits until each page reports, scrolls all of
/// them for [`scroll_duration`], checks that every tab survived, and ends them.
async fn heavy_round(stack: &Stack, person: &Person, site: &HeavySite, count: usize) {
    site.reports.clear();
    let launches = (0..count).map(|_| launch(person));
    let sessions: Vec<Uuid> = futures::future::join_all(launches).await;
    for session_id in &sessions {
        assert_shm_size(*session_id).await;
    }
    let mut viewers = Vec::new();
    for session_id in &sessions {
        viewers.push(Viewer::open(stack, person, *session_id).await);
    }
    wait_for(
        &format!("{count} heavy pages to report"),
        LOAD_TIMEOUT,
        || async { (site.reports.snapshot().len() >= count).then_some(()) },
    )
    .await;

    // Wheel input through the viewer sockets, alternating direction every five seconds.
    let duration = scroll_duration();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    while started.elapsed() < duration {
        ticks.tick().await;
        let down = (started.elapsed().as_secs() / 5).is_multiple_of(2);
        let delta_y = if down { 600.0 } else { -600.0 };
        for viewer in &mut viewers {
            viewer.wheel(delta_y).await;
        }
    }
    let scrolled = Instant::now();

    // Every page reports again after the scrolling, and no reload added a page.
    assert!(
        every_page_reports_after(site, scrolled).await,
        "a page stopped reporting after the scrolling: {:?}",
        site.reports.snapshot()
    );
    let reports = site.reports.snapshot();
    assert_eq!(
        reports.len(),
        count,
        "a tab crashed and was reloaded, or stopped reporting: {reports:?}"
    );
    for (page, report) in &reports {
        assert!(
            report.max_scroll_y > 0,
            "page {page} never scrolled: {report:?}"
        );
    }
    for (session_id, viewer) in sessions.iter().zip(&viewers) {
        assert_eq!(viewer.ended(), None, "session {session_id} ended");
    }

    for session_id in &sessions {
        person.end(*session_id).await;
    }
    stack
        .wait_until_cleaned("the round's workspaces to be removed")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_pages_keep_tabs_alive() {
    let site = HeavySite::start().await;
    let stack = start_stack().await;
    let person = sign_in(&stack, &site).await;

    heavy_round(&stack, &person, &site, 1).await;
    heavy_round(&stack, &person, &site, PARALLEL_SESSIONS).await;

    stack.stop().await;
}

/// Returns the host PID of the first process in `container` named `name` whose parent
/// has another name: for Chromium, the browser process rather than its helpers.
async fn main_process_pid(container: &str, name: &str) -> i32 {
    let table = docker(&["top", container, "-eo", "pid,ppid,comm"]).await;
    let processes: Vec<(i32, i32, String)> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let pid = fields.next()?.parse().ok()?;
            let ppid = fields.next()?.parse().ok()?;
            Some((pid, ppid, fields.next()?.to_owned()))
        })
        .collect();
    let named: Vec<i32> = processes
        .iter()
        .filter(|(_, _, comm)| comm == name)
        .map(|(pid, _, _)| *pid)
        .collect();
    processes
        .iter()
        .find(|(pid, ppid, _)| named.contains(pid) && !named.contains(ppid))
        .map(|(pid, _, _)| *pid)
        .unwrap_or_else(|| panic!("no {name} process in {container}: {table}"))
}

/// Returns the host PIDs of the workspace's Chromium renderer processes.
async fn renderer_pids(container: &str) -> Vec<i32> {
    let table = docker(&["top", container, "-eo", "pid,args"]).await;
    table
        .lines()
        .skip(1)
        .filter(|line| line.contains("--type=renderer"))
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_renderer_stops_page_reports() {
    let site = HeavySite::start().await;
    let stack = start_stack().await;
    let person = sign_in(&stack, &site).await;
    let session_id = launch(&person).await;
    wait_for("the page to report", LOAD_TIMEOUT, || async {
        (!site.reports.snapshot().is_empty()).then_some(())
    })
    .await;
    let container = container_of(session_id).await;

    let renderers = renderer_pids(&container).await;
    assert!(!renderers.is_empty(), "no renderer process in {container}");
    for pid in renderers {
        // A renderer may exit on its own once another one is gone.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let killed = Instant::now();

    assert!(
        !every_page_reports_after(&site, killed).await,
        "the page kept reporting after its renderer was killed, so the heavy-page check could not see a tab crash"
    );

    person.end(session_id).await;
    stack
        .wait_until_cleaned("the workspace to be removed")
        .await;
    stack.stop().await;
}

/// Kills the workspace process named `process` with SIGKILL once the page reports, and
/// checks that the session ends at once with a reason for the person, frees its quota
/// slot and leaves no container or network. Returns the end detail.
async fn killed_process_ends_session(process: &str) -> String {
    let site = HeavySite::start().await;
    let stack = start_stack().await;
    let person = sign_in(&stack, &site).await;
    let session_id = launch(&person).await;
    let viewer = Viewer::open(&stack, &person, session_id).await;
    wait_for("the page to report", LOAD_TIMEOUT, || async {
        (!site.reports.snapshot().is_empty()).then_some(())
    })
    .await;
    let container = container_of(session_id).await;

    let pid = main_process_pid(&container, process).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();

    // The person's viewer is told, with a reason.
    let reason = wait_for("the viewer to be told", Duration::from_secs(60), || async {
        viewer.ended()
    })
    .await;
    assert!(!reason.is_empty(), "the viewer got an empty end reason");
    eprintln!(
        "session ended {:?} after {process} was killed: {reason}",
        killed.elapsed()
    );

    // The session state and a reconnecting viewer carry the reason.
    let sessions = &stack.broker().state.portal.sessions;
    let record = wait_for("the session to end", Duration::from_secs(60), || async {
        let record = sessions.get(session_id).await.unwrap().unwrap();
        (record.state == broker::sessions::SessionState::Ended).then_some(record)
    })
    .await;
    assert_ne!(
        record.ended_by.as_deref(),
        Some("system:reconciler"),
        "the stream or the exit watch ended the session, not the periodic reconciler"
    );
    let detail = record.end_detail.clone().unwrap_or_default();
    assert!(!detail.is_empty(), "{record:?}");
    let ticket = person
        .client
        .post(format!("{}/sessions/{session_id}/ticket", stack.base))
        .header("origin", &stack.base)
        .send()
        .await
        .unwrap();
    assert_eq!(ticket.status(), reqwest::StatusCode::GONE);
    let gone: serde_json::Value = ticket.json().await.unwrap();
    // The response body is the end reason's sentence followed by the detail.
    let ended = gone["ended"].as_str().unwrap_or_default();
    assert!(ended.ends_with(&format!(": {detail}")), "{gone}");

    // The quota slot is free and nothing is left behind.
    let live =
        broker::sessions::store::count_live_for_user(&stack.broker().state.db, &person.user_id)
            .await
            .unwrap();
    assert_eq!(live, 0, "the quota slot is free");
    stack
        .wait_until_cleaned("the workspace to be removed")
        .await;

    drop(viewer);
    stack.stop().await;
    detail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_chromium_ends_session_with_reason() {
    let detail = killed_process_ends_session("chromium").await;

    assert!(
        detail.contains("browser exited"),
        "the end detail names the browser: {detail:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_ends_session_with_reason() {
    // `comm` holds the first 15 bytes of the executable's name.
    let detail = killed_process_ends_session("strongroom-agen").await;

    assert!(
        detail.contains("agent") || detail.contains("workspace exited"),
        "the end detail names the agent or the workspace: {detail:?}"
    );
}
