//! Network isolation of real workspace containers with the host firewall installed.
//!
//! Two sessions are launched with the launcher's own specs and the busybox test image.
//! They get a session range, bridge prefix and chain suffix of their own: a /24 in
//! 10.234.0.0/16, picked at random and checked to be unused. So tests on the default
//! range, and other runs of this test, see none of these rules. The egress proxy
//! listens on both gateways. A network namespace plays the internet, with a bank and
//! a DNS server. Every packet goes to a listener, namespace or container this test
//! created; the firewall rules are removed at the end, also when an assertion fails.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestInstance, busybox, docker, docker_runtime, exec, launch_request};
use egress::host_setup::{self, FirewallConfig, Runner};
use egress::{DenyReason, EgressEvent, Outcome};
use ipnet::{IpNet, Ipv4Net};
use launcher::{LaunchedSession, Launcher};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Generous deadline for anything that is expected to happen.
const WAIT: Duration = Duration::from_secs(60);
/// Connect timeout (seconds) inside the container for probes the firewall drops.
const DROPPED_PROBE_SECONDS: &str = "3";
/// Connect timeout (seconds) inside the container for probes that must succeed.
const ALLOWED_PROBE_SECONDS: &str = "30";
const BANK_REPLY: &str = "bank-reply";

/// Runs `program args` and panics with its stderr when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {program} failed: {error}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The addresses and names of one test run, derived from one free third octet.
struct Plan {
    octet: u8,
    session_range: Ipv4Net,
    /// Link between the host and the internet namespace.
    host_link: Ipv4Addr,
    internet: Ipv4Addr,
    internet_net: Ipv4Net,
    bridge_prefix: String,
    chain_suffix: String,
    /// Exclusive lock on the octet, held for the whole run, so concurrent runs of this
    /// test never pick the same one.
    _claim: nix::fcntl::Flock<std::fs::File>,
}

impl Plan {
    /// Picks and locks a third octet whose ranges no interface and no chain on the host
    /// uses.
    fn pick() -> Self {
        let addresses = run("ip", &["-o", "-4", "addr", "show"]);
        let chains = run("iptables-save", &[]);
        for attempt in 0..64u32 {
            let seed = uuid::Uuid::new_v4().as_bytes()[0] as u32 + attempt;
            let octet = (seed % 250 + 2) as u8;
            let lock_path = std::env::temp_dir().join(format!("strongroom-isolation-{octet}.lock"));
            let file = std::fs::File::create(&lock_path).unwrap();
            let Ok(claim) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            else {
                continue;
            };
            let plan = Self::for_octet(octet, claim);
            let taken = addresses.contains(&format!(" 10.234.{octet}."))
                || addresses.contains(&format!(" 10.235.{octet}."))
                || chains.contains(&format!("-{}", plan.chain_suffix));
            if !taken {
                return plan;
            }
        }
        panic!("no free /24 in 10.234.0.0/16 after 64 attempts");
    }

    fn for_octet(octet: u8, claim: nix::fcntl::Flock<std::fs::File>) -> Self {
        Self {
            octet,
            session_range: format!("10.234.{octet}.0/24").parse().unwrap(),
            host_link: Ipv4Addr::new(10, 235, octet, 1),
            internet: Ipv4Addr::new(10, 235, octet, 2),
            internet_net: format!("10.235.{octet}.0/30").parse().unwrap(),
            bridge_prefix: format!("sx{octet:02x}-"),
            chain_suffix: format!("X{octet:02x}"),
            _claim: claim,
        }
    }
}

/// The internet namespace, linked to the host by a veth pair; deleted on drop, which
/// also deletes the pair.
struct Internet {
    name: String,
}

impl Internet {
    fn create(plan: &Plan) -> Self {
        let name = format!("srt-inet{:02x}-{}", plan.octet, std::process::id());
        run("ip", &["netns", "add", &name]);
        let internet = Self { name };
        let link = format!("sxi{:02x}", plan.octet);
        run(
            "ip",
            &[
                "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns",
                &internet.name,
            ],
        );
        run(
            "ip",
            &["addr", "add", &format!("{}/30", plan.host_link), "dev", &link],
        );
        run("ip", &["link", "set", &link, "up"]);
        let inside = |args: &[&str]| {
            let mut full = vec!["-n", internet.name.as_str()];
            full.extend_from_slice(args);
            run("ip", &full);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("{}/30", plan.internet), "dev", "eth0"]);
        inside(&["link", "set", "eth0", "up"]);
        internet
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("deleting network namespace {} failed", self.name);
        }
    }
}

/// Runs `f` on a thread inside the network namespace at `path`; sockets it creates
/// stay in that namespace.
fn in_netns<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("setns into the test namespace");
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

fn tcp_listener_in(path: String, address: SocketAddr) -> tokio::net::TcpListener {
    let listener = in_netns(path, move || {
        let listener = std::net::TcpListener::bind(address).unwrap();
        listener.set_nonblocking(true).unwrap();
        listener
    });
    tokio::net::TcpListener::from_std(listener).unwrap()
}

fn udp_socket_in(path: String, address: SocketAddr) -> tokio::net::UdpSocket {
    let socket = in_netns(path, move || {
        let socket = std::net::UdpSocket::bind(address).unwrap();
        socket.set_nonblocking(true).unwrap();
        socket
    });
    tokio::net::UdpSocket::from_std(socket).unwrap()
}

/// Host firewall rules for the test's range; removed on drop.
struct Firewall {
    config: FirewallConfig,
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let config = self.config.clone();
        // Drop may run inside a Tokio runtime, so the removal gets its own thread.
        let removal = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(host_setup::remove(&config, &Runner::host()))
        });
        match removal.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("removing the test firewall rules failed: {error}"),
            Err(_) => eprintln!("removing the test firewall rules panicked"),
        }
    }
}

/// Sum of the packet counters of the rules in `chain` (`iptables -S -v`), which only
/// this test's packets reach.
fn dropped_packets(table: &str, chain: &str) -> u64 {
    run("iptables", &["-w", "-t", table, "-S", chain, "-v"])
        .lines()
        .filter(|line| line.starts_with("-A ") && line.contains("-j DROP"))
        .filter_map(|line| {
            let counters = line.split(" -c ").nth(1)?;
            counters.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Waits until the drop counters of `chain` exceed `before`.
async fn wait_for_drop(table: &str, chain: &str, before: u64, what: &str) {
    let deadline = Instant::now() + WAIT;
    while dropped_packets(table, chain) <= before {
        assert!(
            Instant::now() < deadline,
            "{what}: no packet reached a DROP rule of {chain}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a busybox shell command in the workspace and returns (exit code, output).
async fn sh(container: &str, script: &str) -> (i64, String) {
    exec(container, &["/bin/busybox", "sh", "-c", script]).await
}

/// Opens a TCP connection from the workspace; returns whether it was established.
async fn tcp_probe(container: &str, target: SocketAddr, seconds: &str) -> bool {
    let script = format!(
        "/bin/busybox nc -w {seconds} {} {} </dev/null",
        target.ip(),
        target.port()
    );
    sh(container, &script).await.0 == 0
}

/// Sends DNS queries over UDP from the workspace (busybox nslookup, which retries
/// for a few seconds). `server` is None for the container's configured resolver.
async fn nslookup(container: &str, name: &str, server: Option<SocketAddr>) -> (i64, String) {
    let target = match server {
        Some(server) => format!("-port={} {name} {}", server.port(), server.ip()),
        None => name.to_owned(),
    };
    sh(
        container,
        &format!("/bin/busybox timeout 10 /bin/busybox nslookup {target}"),
    )
    .await
}

/// Sends CONNECT through the proxy at `proxy` and, after the request, a TLS
/// ClientHello naming the host. Returns the output: the proxy's response head, then
/// whatever the tunnel delivered.
async fn connect_through(container: &str, proxy: SocketAddr, host: &str, port: u16) -> String {
    use base64::Engine as _;
    let hello = base64::engine::general_purpose::STANDARD
        .encode(egress::client_hello_for_tests(Some(host), 300));
    let script = format!(
        "{{ /bin/busybox printf 'CONNECT {host}:{port} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\n\\r\\n'; \
         echo {hello} | /bin/busybox base64 -d; }} | /bin/busybox nc -w {ALLOWED_PROBE_SECONDS} {} {}",
        proxy.ip(),
        proxy.port()
    );
    sh(container, &script).await.1
}

/// Plays the bank: reads the first bytes of each tunnel, replies one line and closes.
/// Sends each peer address to `peers`.
async fn serve_bank(listener: tokio::net::TcpListener, peers: mpsc::UnboundedSender<IpAddr>) {
    while let Ok((mut stream, peer)) = listener.accept().await {
        let _ = peers.send(peer.ip());
        tokio::spawn(async move {
            let mut buffer = [0u8; 1024];
            if stream.read(&mut buffer).await.unwrap_or(0) > 0 {
                let _ = stream.write_all(format!("{BANK_REPLY}\n").as_bytes()).await;
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// Accepts and counts connections; sends each peer address to `peers`.
async fn serve_canary(listener: tokio::net::TcpListener, peers: mpsc::UnboundedSender<IpAddr>) {
    while let Ok((_stream, peer)) = listener.accept().await {
        let _ = peers.send(peer.ip());
    }
}

/// Replies to every A query with `address`, and sends each client address to `clients`.
async fn serve_dns(
    socket: tokio::net::UdpSocket,
    address: Ipv4Addr,
    clients: mpsc::UnboundedSender<IpAddr>,
) {
    let mut buffer = [0u8; 512];
    while let Ok((read, client)) = socket.recv_from(&mut buffer).await {
        let _ = clients.send(client.ip());
        if let Some(answer) = dns_answer(&buffer[..read], address) {
            let _ = socket.send_to(&answer, client).await;
        }
    }
}

/// Builds the answer to a one-question query: `address` for type A, no records for
/// other types.
fn dns_answer(query: &[u8], address: Ipv4Addr) -> Option<Vec<u8>> {
    let mut end = 12;
    loop {
        let len = *query.get(end)? as usize;
        end += 1 + len;
        if len == 0 {
            break;
        }
    }
    let question = query.get(12..end + 4)?;
    let is_a = question[question.len() - 4..question.len() - 2] == [0, 1];
    let mut answer = Vec::with_capacity(64);
    answer.extend_from_slice(&query[..2]);
    answer.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    answer.extend_from_slice(question);
    if is_a {
        answer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        answer.extend_from_slice(&address.octets());
    }
    Some(answer)
}

/// Collects proxy events.
struct Events(mpsc::UnboundedSender<EgressEvent>);

impl egress::EventSink for Events {
    fn record(&self, event: EgressEvent) {
        let _ = self.0.send(event);
    }
}

/// Returns the next allow or deny event for `host`, skipping others, within the deadline.
async fn next_event(events: &mut mpsc::UnboundedReceiver<EgressEvent>, host: &str) -> EgressEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("proxy stopped");
            let decision = !matches!(event.outcome, Outcome::Closed { .. });
            if decision && event.host.as_deref() == Some(host) {
                return event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no proxy event for {host}"))
}

/// Drains what a listener recorded so far and returns the addresses in `range`.
fn seen_from(peers: &mut mpsc::UnboundedReceiver<IpAddr>, range: Ipv4Net) -> Vec<IpAddr> {
    let mut seen = Vec::new();
    while let Ok(peer) = peers.try_recv() {
        if IpNet::V4(range).contains(&peer) {
            seen.push(peer);
        }
    }
    seen
}

/// Adds a default route via the session gateway inside the workspace's namespace, as a
/// workspace that found a way to route would have. The firewall alone must then stop
/// its packets.
async fn add_default_route(session: &LaunchedSession) {
    let inspected = docker()
        .inspect_container(&session.container_name, None)
        .await
        .unwrap();
    let pid = inspected.state.unwrap().pid.unwrap().to_string();
    run(
        "nsenter",
        &[
            "-t",
            &pid,
            "-n",
            "ip",
            "route",
            "replace",
            "default",
            "via",
            &session.gateway.to_string(),
        ],
    );
}

async fn workspace_netns_path(session: &LaunchedSession) -> String {
    let inspected = docker()
        .inspect_container(&session.container_name, None)
        .await
        .unwrap();
    format!("/proc/{}/ns/net", inspected.state.unwrap().pid.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_reaches_only_its_proxy() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test installs host firewall rules and network namespaces; run it as root"
    );
    let plan = Plan::pick();
    let mut instance = TestInstance::new().await;
    instance.config.subnet_range = plan.session_range;
    instance.config.bridge_prefix = plan.bridge_prefix.clone();
    let launcher = Launcher::new(instance.config.clone(), Arc::new(docker_runtime())).unwrap();

    let internet = Internet::create(&plan);
    let (bank_peers_tx, mut bank_peers) = mpsc::unbounded_channel();
    let bank = tcp_listener_in(internet.path(), SocketAddr::from((plan.internet, 0)));
    let bank_port = bank.local_addr().unwrap().port();
    let (dns_clients_tx, mut dns_clients) = mpsc::unbounded_channel();
    let dns = udp_socket_in(internet.path(), SocketAddr::from((plan.internet, 53)));
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let background = tokio_util::task::TaskTracker::new();
    background.spawn(stop.clone().run_until_cancelled_owned(serve_bank(bank, bank_peers_tx)));
    background.spawn(
        stop.clone()
            .run_until_cancelled_owned(serve_dns(dns, plan.internet, dns_clients_tx)),
    );

    let mut request_a = launch_request("isolation-a");
    request_a.allowed_hosts = vec!["bank.test".to_owned()];
    let mut request_b = launch_request("isolation-b");
    request_b.allowed_hosts = vec!["other.test".to_owned()];
    let a = launcher.launch(&request_a).await.expect("launch session A");
    let b = launcher.launch(&request_b).await.expect("launch session B");
    for session in [&a, &b] {
        assert!(plan.session_range.contains(&session.subnet), "{session:?}");
    }

    // The proxy, on both gateways with one port, as the broker runs it.
    let registry = Arc::new(egress::Registry::new());
    let site = |host: &str| {
        egress::SitePolicy::new([host])
            .unwrap()
            .with_ports([bank_port])
            .with_private_ranges([IpNet::V4(plan.internet_net)])
    };
    registry
        .register(request_a.session_id, IpNet::V4(a.subnet), site("bank.test"))
        .unwrap();
    registry
        .register(request_b.session_id, IpNet::V4(b.subnet), site("other.test"))
        .unwrap();
    let resolver = egress::StaticResolver::new()
        .with("bank.test", [IpAddr::V4(plan.internet)])
        .with("other.test", [IpAddr::V4(plan.internet)]);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let proxy = egress::Proxy::new(
        Arc::clone(&registry),
        Arc::new(Events(events_tx)),
        egress::ProxyConfig::default(),
    )
    .unwrap()
    .with_resolver(Arc::new(resolver));
    let listener_a = tokio::net::TcpListener::bind((a.gateway, 0)).await.unwrap();
    let proxy_port = listener_a.local_addr().unwrap().port();
    let listener_b = tokio::net::TcpListener::bind((b.gateway, proxy_port))
        .await
        .unwrap();
    let proxy_a = SocketAddr::from((a.gateway, proxy_port));
    let proxy_b = SocketAddr::from((b.gateway, proxy_port));
    {
        let proxy = proxy.clone();
        let stop = stop.clone();
        background.spawn(async move { proxy.serve(vec![listener_a, listener_b], stop).await });
    }

    // Canaries on the host, on every address.
    let (canary_peers_tx, mut canary_peers) = mpsc::unbounded_channel();
    let canary = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let canary_port = canary.local_addr().unwrap().port();
    background.spawn(stop.clone().run_until_cancelled_owned(serve_canary(canary, canary_peers_tx)));
    let (udp_clients_tx, mut udp_clients) = mpsc::unbounded_channel();
    let udp_canary = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let udp_canary_port = udp_canary.local_addr().unwrap().port();
    background.spawn(stop.clone().run_until_cancelled_owned(serve_dns(
        udp_canary,
        plan.host_link,
        udp_clients_tx,
    )));
    // A listener inside session B's workspace.
    let (neighbour_peers_tx, mut neighbour_peers) = mpsc::unbounded_channel();
    let neighbour = tcp_listener_in(
        workspace_netns_path(&b).await,
        SocketAddr::from(([0, 0, 0, 0], 0)),
    );
    let neighbour_target = SocketAddr::from((b.workspace_address, neighbour.local_addr().unwrap().port()));
    background.spawn(stop.clone().run_until_cancelled_owned(serve_canary(neighbour, neighbour_peers_tx)));

    add_default_route(&a).await;
    add_default_route(&b).await;
    let ws = a.container_name.as_str();
    let canary_target = SocketAddr::from((a.gateway, canary_port));
    let udp_canary_target = SocketAddr::from((a.gateway, udp_canary_port));
    let internet_dns = SocketAddr::from((plan.internet, 53));

    // Before the rules: the probes work where Docker lets them, so a failure later is
    // the firewall's. The internet's DNS server answers busybox nslookup from the host.
    let host_lookup = Command::new(busybox())
        .args(["nslookup", "bank.test", &plan.internet.to_string()])
        .output()
        .unwrap();
    let host_lookup = String::from_utf8_lossy(&host_lookup.stdout).into_owned();
    assert!(host_lookup.contains(&plan.internet.to_string()), "{host_lookup}");
    assert!(
        tcp_probe(ws, canary_target, ALLOWED_PROBE_SECONDS).await,
        "the workspace cannot reach the host canary before the firewall"
    );
    let _ = nslookup(ws, "canary.test", Some(udp_canary_target)).await;
    let udp_seen = seen_from(&mut udp_clients, a.subnet);
    assert!(!udp_seen.is_empty(), "the UDP canary got nothing before the firewall");
    // Another session's listener treats the connection as the connecting session.
    let output = connect_through(ws, proxy_b, "other.test", bank_port).await;
    assert!(output.starts_with("HTTP/1.1 403"), "{output}");
    let event = next_event(&mut events, "other.test").await;
    assert_eq!(event.session_id, Some(request_a.session_id));
    assert_eq!(
        event.outcome,
        Outcome::Denied {
            reason: DenyReason::HostNotAllowed {
                host: "other.test".to_owned()
            }
        }
    );
    let output = connect_through(ws, proxy_b, "bank.test", bank_port).await;
    assert!(output.starts_with("HTTP/1.1 200"), "{output}");
    assert!(output.contains(BANK_REPLY), "{output}");
    let event = next_event(&mut events, "bank.test").await;
    assert_eq!(event.session_id, Some(request_a.session_id));
    assert_eq!(event.outcome, Outcome::Allowed);
    let _ = seen_from(&mut canary_peers, a.subnet);

    // The rules, for this test's range, bridges and port only.
    let config = FirewallConfig {
        session_range: plan.session_range,
        proxy_port,
        bridge_prefix: plan.bridge_prefix.clone(),
        chain_suffix: plan.chain_suffix.clone(),
    };
    let firewall = Firewall { config };
    host_setup::apply(&firewall.config, &Runner::host()).await.unwrap();
    let problems = host_setup::check(&firewall.config, &Runner::host())
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let input_chain = firewall.config.chain_name(host_setup::INPUT_CHAIN);
    let forward_chain = firewall.config.chain_name(host_setup::FORWARD_CHAIN);

    // Direct TCP and UDP to the host.
    let before = dropped_packets("filter", &input_chain);
    assert!(
        !tcp_probe(ws, canary_target, DROPPED_PROBE_SECONDS).await,
        "the workspace reached a host port other than the proxy"
    );
    wait_for_drop("filter", &input_chain, before, "TCP to the host canary").await;
    let before = dropped_packets("filter", &input_chain);
    let (code, output) = nslookup(ws, "canary.test", Some(udp_canary_target)).await;
    assert_ne!(code, 0, "{output}");
    wait_for_drop("filter", &input_chain, before, "UDP to the host canary").await;
    assert_eq!(seen_from(&mut canary_peers, a.subnet), Vec::<IpAddr>::new());
    assert_eq!(seen_from(&mut udp_clients, a.subnet), Vec::<IpAddr>::new());

    // The other session's workspace, and its proxy listener.
    let before = dropped_packets("filter", &forward_chain);
    assert!(
        !tcp_probe(ws, neighbour_target, DROPPED_PROBE_SECONDS).await,
        "the workspace reached another session's workspace"
    );
    wait_for_drop("filter", &forward_chain, before, "TCP to session B").await;
    assert_eq!(seen_from(&mut neighbour_peers, a.subnet), Vec::<IpAddr>::new());
    let before = dropped_packets("filter", &input_chain);
    assert!(
        !tcp_probe(ws, proxy_b, DROPPED_PROBE_SECONDS).await,
        "the workspace reached another session's proxy listener"
    );
    wait_for_drop("filter", &input_chain, before, "TCP to session B's proxy").await;

    // The internet namespace, directly and through its DNS server; the container's
    // own resolver resolves nothing outside.
    let before = dropped_packets("filter", &forward_chain);
    assert!(
        !tcp_probe(ws, SocketAddr::from((plan.internet, bank_port)), DROPPED_PROBE_SECONDS).await,
        "the workspace reached the internet namespace directly"
    );
    wait_for_drop("filter", &forward_chain, before, "TCP to the internet").await;
    let before = dropped_packets("filter", &forward_chain);
    let (code, output) = nslookup(ws, "bank.test", Some(internet_dns)).await;
    assert_ne!(code, 0, "{output}");
    wait_for_drop("filter", &forward_chain, before, "DNS to the internet").await;
    let (code, output) = nslookup(ws, "bank.test", None).await;
    assert!(
        code != 0 && !output.contains(&plan.internet.to_string()),
        "the workspace resolved an outside name: {output}"
    );
    assert_eq!(seen_from(&mut bank_peers, a.subnet), Vec::<IpAddr>::new());
    assert_eq!(seen_from(&mut dns_clients, a.subnet), Vec::<IpAddr>::new());

    // The proxy: the allowed site, a site not on the list, and session B's own site.
    let output = connect_through(ws, proxy_a, "bank.test", bank_port).await;
    assert!(output.starts_with("HTTP/1.1 200"), "{output}");
    assert!(output.contains(BANK_REPLY), "{output}");
    let event = next_event(&mut events, "bank.test").await;
    assert_eq!(event.session_id, Some(request_a.session_id));
    assert_eq!(event.outcome, Outcome::Allowed);
    let output = connect_through(ws, proxy_a, "other.test", bank_port).await;
    assert!(output.starts_with("HTTP/1.1 403"), "{output}");
    let event = next_event(&mut events, "other.test").await;
    assert_eq!(event.session_id, Some(request_a.session_id));
    let output = connect_through(&b.container_name, proxy_b, "other.test", bank_port).await;
    assert!(output.starts_with("HTTP/1.1 200"), "{output}");
    assert!(output.contains(BANK_REPLY), "{output}");
    let bank_seen: Vec<IpAddr> = std::iter::from_fn(|| bank_peers.try_recv().ok()).collect();
    assert!(
        bank_seen.iter().all(|peer| *peer == IpAddr::V4(plan.host_link)),
        "the bank saw a peer other than the host: {bank_seen:?}"
    );

    // Removal deletes this test's chains.
    drop(firewall);
    let saved = run("iptables-save", &[]) + &run("ip6tables-save", &[]);
    assert!(!saved.contains(&plan.chain_suffix), "{saved}");

    stop.cancel();
    background.close();
    tokio::time::timeout(WAIT, background.wait()).await.expect("background tasks stopped");
    for session_id in [request_a.session_id, request_b.session_id] {
        launcher.end(session_id, "test_finished").await.unwrap();
    }
    drop(internet);
    instance.finish().await;
}
