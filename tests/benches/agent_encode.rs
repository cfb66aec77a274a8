//! The workspace agent's output and CPU in a real workspace container, for a page that
//! stays still and the same page scrolling without pause.
//!
//! The bench starts the broker, the launcher and the egress proxy in-process with
//! `Stack::builder`, as the heavy-page test does, and launches each page as a session
//! from the portal. Each session runs the workspace image with the production
//! container settings: the site catalogue's default limits of one CPU and 2 GiB, the
//! shipped seccomp profile and the session network. Chromium reaches an HTTPS server
//! of the bench on 127.0.0.1 through the egress proxy. The agent runs with its
//! defaults: 1280x720, 15 frames a second, 2 Mbit/s, a keyframe every 3 seconds.
//!
//! After the page reports that it has loaded, the bench waits for the next keyframe and
//! measures a fixed window from it:
//!
//! - the agent's packets, read from the broker's live stream (every packet the broker
//!   receives from the agent), for frames per second and bits per second;
//! - the container's CPU time from its cgroup (Docker's stats API), and the CPU time of
//!   the agent, Xvfb and Chromium processes from `/proc` of the host;
//! - bytes per recorded hour: the window's packets written through `RecordingWriter`
//!   with the default settings (encrypted segments, metadata, seal), scaled to an
//!   hour, against the raw packet bytes.
//!
//! The static page is the baseline of the scrolling one, measured in the same run.
//!
//! Run as root: `cargo bench -p strongroom-tests --bench agent_encode`.
//! `STRONGROOM_BENCH_SECONDS` sets the window (default 30). The workspace image is
//! `STRONGROOM_TEST_WORKSPACE_IMAGE` when set, otherwise the launcher's default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, StatsOptions};
use broker::auth::Role;
use broker::stream::ViewerEvent;
use chrono::{TimeZone, Utc};
use futures::StreamExt;
use recorder::{
    LocalDirStorage, LocalKeyStore, NewRecording, Packet, RecorderConfig, RecordingWriter, Storage,
};
use strongroom_tests::stack::{Person, Stack, wait_for};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

const HOST: &str = "agent-bench.test";
/// Session subnets of this bench, apart from the tests' ranges.
const SUBNET_RANGE: &str = "172.29.0.0/16";
/// Time for a workspace to start and load the page on a busy two-core machine.
const LOAD_TIMEOUT: Duration = Duration::from_secs(240);
/// Time between the page's load report and the start of the window, so that the
/// first paint and Chromium's start-up work are over.
const SETTLE: Duration = Duration::from_secs(3);
/// Maximum wait for a keyframe. The agent sends one every 3 s by default.
const KEYFRAME_WAIT: Duration = Duration::from_secs(10);

/// A long statement page. [`page`] replaces `PAGE_NAME` with the name the page reports
/// its load under, and `SCROLL` with `true` for the scrolling page. That page scrolls
/// by 240 CSS pixels a second and starts again at the top at the end.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Statement</title>
<style>
body { margin: 0; font: 15px sans-serif; color: #222; }
h1 { margin: 0; padding: 16px 24px; background: #1d3b5a; color: #fff; }
table { border-collapse: collapse; width: 100%; }
td { padding: 8px 24px; border-bottom: 1px solid #ddd; }
tr:nth-child(even) { background: #f3f6f9; }
td.amount { text-align: right; font-family: monospace; }
</style></head>
<body><h1>Account statement</h1><table id="rows"></table>
<script>
const rows = document.getElementById("rows");
let seed = 11;
const random = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
const payees = ["Grocery store", "Rent", "Salary", "Electricity", "Insurance",
  "Pharmacy", "Railway", "Bookshop", "Restaurant", "Transfer to savings"];
for (let i = 0; i < 600; i++) {
  const row = rows.insertRow();
  const day = 1 + (i % 28);
  row.insertCell().textContent = `2026-${String(1 + (i % 12)).padStart(2, "0")}-${String(day).padStart(2, "0")}`;
  row.insertCell().textContent = payees[Math.floor(random() * payees.length)] + ` ref ${100000 + i * 7919 % 900000}`;
  const amount = row.insertCell();
  amount.className = "amount";
  amount.textContent = ((random() - 0.6) * 2000).toFixed(2) + " EUR";
}
if (SCROLL) {
  const start = performance.now();
  const step = (now) => {
    const end = document.documentElement.scrollHeight - window.innerHeight;
    window.scrollTo(0, ((now - start) * 0.24) % end);
    requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
}
addEventListener("load", () => fetch(`/ready?page=PAGE_NAME`, { cache: "no-store" }));
</script>
</body></html>
"#;

fn page(name: &str, scroll: bool) -> String {
    PAGE.replace("SCROLL", if scroll { "true" } else { "false" })
        .replace("PAGE_NAME", name)
}

#[derive(serde::Deserialize)]
struct Ready {
    page: String,
}

/// Load reports per page name.
#[derive(Clone, Default)]
struct Loads(Arc<Mutex<HashMap<String, usize>>>);

impl Loads {
    fn count(&self, page: &str) -> usize {
        self.0.lock().unwrap().get(page).copied().unwrap_or(0)
    }
}

async fn ready(State(loads): State<Loads>, Query(ready): Query<Ready>) -> axum::http::StatusCode {
    *loads.0.lock().unwrap().entry(ready.page).or_default() += 1;
    axum::http::StatusCode::NO_CONTENT
}

/// The bench's HTTPS server on 127.0.0.1, stopped on drop.
struct PageSite {
    address: SocketAddr,
    ca_pem: String,
    loads: Loads,
    handle: axum_server::Handle,
}

impl PageSite {
    async fn start() -> PageSite {
        drop(rustls::crypto::ring::default_provider().install_default());
        let tls = strongroom_demo_bank::tls::generate(&[HOST.to_owned()], &[]).unwrap();
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            tls.chain_pem.into_bytes(),
            tls.key_pem.into_bytes(),
        )
        .await
        .unwrap();
        let still = page("static", false);
        let scrolling = page("scrolling", true);
        let loads = Loads::default();
        let router = axum::Router::new()
            .route("/static", get(move || async move { Html(still) }))
            .route("/scrolling", get(move || async move { Html(scrolling) }))
            .route("/ready", get(ready))
            .with_state(loads.clone());
        let handle = axum_server::Handle::new();
        let server = axum_server::bind_rustls("127.0.0.1:0".parse().unwrap(), config)
            .handle(handle.clone())
            .serve(router.into_make_service());
        tokio::spawn(server);
        let address = handle.listening().await.expect("page server listens");
        PageSite {
            address,
            ca_pem: tls.ca_pem,
            loads,
            handle,
        }
    }
}

impl Drop for PageSite {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Starts the broker stack, with `agent-bench.test` resolving to the page server on
/// 127.0.0.1, and imports the two page sites.
async fn start_stack(site: &PageSite) -> Stack {
    let stack = Stack::builder(SUBNET_RANGE)
        .workspace_image_from_env()
        .env(
            "STRONGROOM_EGRESS__HOSTS",
            format!("{{ \"{HOST}\" = [\"127.0.0.1\"] }}"),
        )
        .start()
        .await;
    std::fs::write(stack.data_dir().join("bench-ca.pem"), &site.ca_pem).unwrap();
    let port = site.address.port();
    let sites: String = ["static", "scrolling"]
        .iter()
        .map(|name| {
            format!(
                r#"
[[site]]
name = "{name}"
display_name = "{name} page"
start_url = "https://{HOST}:{port}/{name}"
allowed_hosts = ["{HOST}"]
allowed_ports = [{port}]
allowed_private_ranges = ["127.0.0.1/32"]
recording_retention_days = 30
[site.policy]
extra_ca_certs = ["bench-ca.pem"]
"#
            )
        })
        .collect();
    stack.import_sites("sites.toml", &sites).await;
    stack
}

fn docker() -> Docker {
    Docker::connect_with_socket_defaults().expect("Docker socket")
}

/// Ids of the containers with the label `name=value`.
async fn containers_labelled(name: &str, value: &str) -> Vec<String> {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{name}={value}")])]);
    docker()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list containers")
        .into_iter()
        .filter_map(|container| container.id)
        .collect()
}

/// CPU time of a container's cgroup, and the time its CPU limit held it back.
#[derive(Debug, Clone, Copy)]
struct CgroupCpu {
    usage_ns: u64,
    throttled_ns: u64,
}

async fn cgroup_cpu(container: &str) -> CgroupCpu {
    let stats = docker()
        .stats(
            container,
            Some(StatsOptions {
                stream: false,
                one_shot: true,
            }),
        )
        .next()
        .await
        .expect("one stats response")
        .expect("container stats");
    let cpu = stats.cpu_stats.expect("CPU stats");
    CgroupCpu {
        usage_ns: cpu
            .cpu_usage
            .and_then(|usage| usage.total_usage)
            .expect("CPU usage"),
        throttled_ns: cpu
            .throttling_data
            .and_then(|throttling| throttling.throttled_time)
            .unwrap_or(0),
    }
}

/// The groups the container's processes are counted in.
const GROUPS: [&str; 4] = ["agent", "Xvfb", "Chromium", "other"];

fn group_of(command: &str) -> &'static str {
    if command.contains("strongroom-agent") {
        "agent"
    } else if command.contains("Xvfb") {
        "Xvfb"
    } else if command.contains("chromium") {
        "Chromium"
    } else {
        "other"
    }
}

/// CPU time in clock ticks of each process of a container, with its group, by host PID.
type ProcessTicks = HashMap<u32, (&'static str, u64)>;

/// Reads [`ProcessTicks`] of `container` from `/proc` of the host.
async fn process_ticks(container: &str) -> ProcessTicks {
    let top = docker()
        .top_processes(container, None)
        .await
        .expect("container processes");
    let titles = top.titles.unwrap_or_default();
    let column = |name: &str| {
        titles
            .iter()
            .position(|title| title == name)
            .unwrap_or_else(|| panic!("no {name} column in {titles:?}"))
    };
    let (pid_column, command_column) = (column("PID"), column("CMD"));
    let mut ticks = HashMap::new();
    for process in top.processes.unwrap_or_default() {
        let pid: u32 = process[pid_column].parse().expect("numeric PID");
        // A process may exit between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the command name (which ends at the last ')'): utime and
        // stime are the 12th and 13th.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let used = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks.insert(pid, (group_of(&process[command_column]), used));
    }
    ticks
}

/// CPU seconds per group between two readings. A process that started in between
/// counts from zero.
fn group_seconds(
    before: &ProcessTicks,
    after: &ProcessTicks,
    ticks_per_second: f64,
) -> HashMap<&'static str, f64> {
    let mut seconds = HashMap::new();
    for (pid, (group, used)) in after {
        let earlier = before.get(pid).map_or(0, |(_, used)| *used);
        *seconds.entry(*group).or_default() +=
            used.saturating_sub(earlier) as f64 / ticks_per_second;
    }
    seconds
}

fn ticks_per_second() -> f64 {
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf runs");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK is a number")
}

/// Measurements of one page's window.
struct Window {
    elapsed: Duration,
    packets: Vec<Packet>,
    container_cpu_s: f64,
    throttled_s: f64,
    groups: HashMap<&'static str, f64>,
    stored_bytes: u64,
}

impl Window {
    fn video_bytes(&self) -> u64 {
        self.packets
            .iter()
            .map(|packet| packet.data.len() as u64)
            .sum()
    }

    fn seconds(&self) -> f64 {
        self.elapsed.as_secs_f64()
    }

    fn frames_per_second(&self) -> f64 {
        self.packets.len() as f64 / self.seconds()
    }

    fn kilobits_per_second(&self) -> f64 {
        self.video_bytes() as f64 * 8.0 / 1000.0 / self.seconds()
    }

    /// CPU time per wall time, in percent of one core.
    fn percent(&self, cpu_seconds: f64) -> f64 {
        cpu_seconds / self.seconds() * 100.0
    }

    fn per_hour(&self, bytes: u64) -> f64 {
        bytes as f64 * 3600.0 / self.seconds() / f64::from(1 << 20)
    }
}

/// Launches the site `name`, waits for its page to load and measures one window.
async fn measure(
    stack: &Stack,
    person: &Person,
    site: &PageSite,
    name: &str,
    window: Duration,
) -> Window {
    let loads_before = site.loads.count(name);
    let (session_id, _) = person.launch(name).await;
    let stream = stack
        .broker()
        .state
        .portal
        .hub
        .get(session_id)
        .expect("the launch started the live stream");
    let (_, mut events) = stream.subscribe();
    let container = containers_labelled("strongroom.session", &session_id.to_string())
        .await
        .pop()
        .expect("the session's container");

    wait_for(
        &format!("the {name} page to load"),
        LOAD_TIMEOUT,
        || async { (site.loads.count(name) > loads_before).then_some(()) },
    )
    .await;
    let settled = Instant::now() + SETTLE;
    let ticks_per_second = ticks_per_second();

    // The window starts at a keyframe, so that its packets form a recording of their own.
    let mut packets = Vec::new();
    let mut lagged = 0;
    let mut started: Option<(Instant, CgroupCpu, ProcessTicks)> = None;
    loop {
        let event = match started {
            None => tokio::time::timeout(KEYFRAME_WAIT + SETTLE, events.recv())
                .await
                .expect("a keyframe after the page loaded"),
            Some((at, ..)) => {
                let remaining = window.saturating_sub(Instant::elapsed(&at));
                match tokio::time::timeout(remaining, events.recv()).await {
                    Ok(event) => event,
                    Err(_) => break,
                }
            }
        };
        let (keyframe, pts_us, data) = match event {
            Ok(ViewerEvent::Video {
                keyframe,
                pts_us,
                data,
            }) => (keyframe, pts_us, data),
            Ok(_) => continue,
            Err(RecvError::Lagged(skipped)) => {
                lagged += skipped;
                continue;
            }
            Err(RecvError::Closed) => panic!("the {name} session's stream ended"),
        };
        if started.is_none() {
            if !keyframe || Instant::now() < settled {
                continue;
            }
            let at = Instant::now();
            let cpu = cgroup_cpu(&container).await;
            let processes = process_ticks(&container).await;
            started = Some((at, cpu, processes));
            lagged = 0;
        }
        packets.push(Packet {
            pts_us,
            keyframe,
            data,
        });
    }
    let (at, cpu_before, processes_before) = started.unwrap();
    let elapsed = at.elapsed();
    let cpu = cgroup_cpu(&container).await;
    let processes = process_ticks(&container).await;
    assert_eq!(lagged, 0, "the bench fell behind the {name} stream");
    person.end(session_id).await;

    let stored_bytes = record(packets.clone());
    Window {
        elapsed,
        packets,
        container_cpu_s: (cpu.usage_ns - cpu_before.usage_ns) as f64 / 1e9,
        throttled_s: (cpu.throttled_ns - cpu_before.throttled_ns) as f64 / 1e9,
        groups: group_seconds(&processes_before, &processes, ticks_per_second),
        stored_bytes,
    }
}

/// Writes `packets` as one recording with the default settings and returns the bytes
/// of all its stored objects.
fn record(packets: Vec<Packet>) -> u64 {
    let root = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalDirStorage::open(root.path().join("recordings")).unwrap());
    let keys = LocalKeyStore::open(root.path().join("keys")).unwrap();
    let created_at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let id = Uuid::new_v4();
    let new = NewRecording {
        id,
        created_at,
        expires_at: created_at + chrono::Duration::days(90),
        stream: Some(recorder::StreamConfig {
            codec: "vp8".into(),
            width: 1280,
            height: 720,
        }),
    };
    let mut writer =
        RecordingWriter::create(storage.clone(), &keys, RecorderConfig::default(), new).unwrap();
    for packet in packets {
        writer.push_packet(packet).unwrap();
    }
    writer.seal().unwrap();
    storage
        .list(id)
        .unwrap()
        .iter()
        .map(|object| object.size)
        .sum()
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::var("STRONGROOM_BENCH_SECONDS")
        .ok()
        .map(|text| {
            text.parse().unwrap_or_else(|_| {
                panic!("STRONGROOM_BENCH_SECONDS={text:?} is not a number of seconds")
            })
        })
        .unwrap_or(30);
    let window = Duration::from_secs(seconds);
    let site = PageSite::start().await;
    let stack = start_stack(&site).await;
    let alice = stack
        .person("alice", &[Role::User], &["static", "scrolling"])
        .await;

    println!("load average before: {}", uptime());
    let still = measure(&stack, &alice, &site, "static", window).await;
    println!("load average after the static page: {}", uptime());
    let scrolling = measure(&stack, &alice, &site, "scrolling", window).await;
    println!("load average after the scrolling page: {}", uptime());
    stack.stop().await;

    println!("\nagent output at 1280x720, 15 frames/s target, {seconds} s window each:\n");
    println!(
        "| page | frames/s | kbit/s | container CPU | agent | Xvfb | Chromium | other | CPU limit throttled |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, measured) in [("static (baseline)", &still), ("scrolling", &scrolling)] {
        let group = |group: &str| {
            format!(
                "{:.1} %",
                measured.percent(measured.groups.get(group).copied().unwrap_or(0.0))
            )
        };
        println!(
            "| {name} | {:.1} | {:.0} | {:.1} % | {} | {} | {} | {} | {:.2} s |",
            measured.frames_per_second(),
            measured.kilobits_per_second(),
            measured.percent(measured.container_cpu_s),
            group(GROUPS[0]),
            group(GROUPS[1]),
            group(GROUPS[2]),
            group(GROUPS[3]),
            measured.throttled_s,
        );
    }
    println!(
        "| ratio (scrolling / static) | {:.2} | {:.2} | {:.2} | {:.2} | | | | |",
        scrolling.frames_per_second() / still.frames_per_second(),
        scrolling.kilobits_per_second() / still.kilobits_per_second(),
        scrolling.container_cpu_s / scrolling.seconds() / (still.container_cpu_s / still.seconds()),
        scrolling.groups.get("agent").copied().unwrap_or(0.0)
            / scrolling.seconds()
            / (still.groups.get("agent").copied().unwrap_or(0.0) / still.seconds()),
    );
    println!("(CPU in percent of one core; the container's limit is one core)");

    println!("\nbytes per recorded hour, extrapolated from the window:\n");
    println!(
        "| page | agent packets | stored (encrypted segments, metadata, seal) | ratio (stored / packets) |"
    );
    println!("| --- | --- | --- | --- |");
    for (name, measured) in [("static", &still), ("scrolling", &scrolling)] {
        println!(
            "| {name} | {:.1} MiB/h | {:.1} MiB/h | {:.4} |",
            measured.per_hour(measured.video_bytes()),
            measured.per_hour(measured.stored_bytes),
            measured.stored_bytes as f64 / measured.video_bytes() as f64,
        );
    }
    println!(
        "| ratio (scrolling / static) | {:.2} | {:.2} | |",
        scrolling.video_bytes() as f64
            / scrolling.seconds()
            / (still.video_bytes() as f64 / still.seconds()),
        scrolling.stored_bytes as f64
            / scrolling.seconds()
            / (still.stored_bytes as f64 / still.seconds()),
    );
}
