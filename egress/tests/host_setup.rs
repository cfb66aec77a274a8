//! Host firewall rules, applied inside network namespaces created by the tests.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{Netns, unique_name, veth};
use egress::host_setup::{self, Family, FirewallConfig, ProblemKind, Runner};

/// Connect timeout for probes that the firewall is expected to drop. A dropped SYN gets
/// no reply, so the probe can only end by timing out.
const DROPPED_PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Connect timeout for probes that are expected to succeed.
const ALLOWED_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

fn config(proxy_port: u16) -> FirewallConfig {
    FirewallConfig {
        session_range: "172.21.0.0/16".parse().unwrap(),
        proxy_port,
        bridge_prefix: "srs-".to_owned(),
        chain_suffix: String::new(),
    }
}

/// `iptables-save` and `ip6tables-save` output without comment lines, which carry times.
fn saved_rules(netns: &Netns) -> String {
    let mut saved = String::new();
    for program in ["iptables-save", "ip6tables-save"] {
        for line in netns
            .exec(program, &[])
            .lines()
            .filter(|line| !line.starts_with('#'))
        {
            saved.push_str(line);
            saved.push('\n');
        }
    }
    saved
}

#[tokio::test]
async fn apply_twice_is_idempotent() {
    let netns = Netns::create("fw");
    let runner = Runner::in_netns(&netns.name);
    let config = config(3128);

    let before = host_setup::check(&config, &runner).await.unwrap();
    assert!(
        !before.is_empty(),
        "check found nothing missing before apply"
    );

    host_setup::apply(&config, &runner).await.unwrap();
    let first = saved_rules(&netns);
    host_setup::apply(&config, &runner).await.unwrap();
    let second = saved_rules(&netns);

    assert_eq!(first, second);
    assert!(first.contains("-A INPUT -j STRONGROOM-INPUT"), "{first}");
    assert!(
        first.contains("-A DOCKER-USER -j STRONGROOM-FORWARD"),
        "{first}"
    );
    assert!(
        first.contains("-A PREROUTING -j STRONGROOM-PREROUTING"),
        "{first}"
    );
    let problems = host_setup::check(&config, &runner).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn check_names_deleted_rule() {
    let netns = Netns::create("fw");
    let runner = Runner::in_netns(&netns.name);
    let config = config(3128);
    host_setup::apply(&config, &runner).await.unwrap();

    netns.exec(
        "iptables",
        &[
            "-w",
            "-D",
            "STRONGROOM-INPUT",
            "-s",
            "172.21.0.0/16",
            "-j",
            "DROP",
        ],
    );
    let problems = host_setup::check(&config, &runner).await.unwrap();

    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].family, Family::Ipv4);
    assert_eq!(problems[0].chain, "STRONGROOM-INPUT");
    assert_eq!(
        problems[0].kind,
        ProblemKind::RuleMissing {
            rule: "-s 172.21.0.0/16 -j DROP".to_owned()
        }
    );
    assert!(
        problems[0]
            .to_string()
            .contains("-A STRONGROOM-INPUT -s 172.21.0.0/16 -j DROP")
    );
}

#[tokio::test]
async fn check_names_displaced_and_missing_jumps() {
    let netns = Netns::create("fw");
    let runner = Runner::in_netns(&netns.name);
    let config = config(3128);
    host_setup::apply(&config, &runner).await.unwrap();

    netns.exec(
        "ip6tables",
        &["-w", "-D", "DOCKER-USER", "-j", "STRONGROOM-FORWARD"],
    );
    netns.exec("iptables", &["-w", "-I", "INPUT", "1", "-j", "ACCEPT"]);
    netns.exec(
        "iptables",
        &["-w", "-A", "STRONGROOM-FORWARD", "-j", "ACCEPT"],
    );
    let problems = host_setup::check(&config, &runner).await.unwrap();

    let kinds: Vec<_> = problems
        .iter()
        .map(|problem| (problem.family, problem.chain.as_str(), problem.kind.clone()))
        .collect();
    assert_eq!(kinds.len(), 3, "{problems:?}");
    assert!(kinds.contains(&(
        Family::Ipv6,
        "STRONGROOM-FORWARD",
        ProblemKind::JumpMissing {
            hook: "DOCKER-USER"
        }
    )));
    assert!(kinds.contains(&(
        Family::Ipv4,
        "STRONGROOM-INPUT",
        ProblemKind::JumpNotFirst { hook: "INPUT" }
    )));
    assert!(kinds.contains(&(
        Family::Ipv4,
        "STRONGROOM-FORWARD",
        ProblemKind::UnexpectedRules {
            expected: 5,
            found: 6
        }
    )));

    host_setup::apply(&config, &runner).await.unwrap();
    let problems = host_setup::check(&config, &runner).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn remove_deletes_chains_and_jumps() {
    let netns = Netns::create("fw");
    let runner = Runner::in_netns(&netns.name);
    let config = config(3128);
    host_setup::apply(&config, &runner).await.unwrap();

    host_setup::remove(&config, &runner).await.unwrap();

    let saved = saved_rules(&netns);
    assert!(!saved.contains("STRONGROOM"), "{saved}");
    let problems = host_setup::check(&config, &runner).await.unwrap();
    assert!(
        problems
            .iter()
            .all(|problem| problem.kind == ProblemKind::ChainMissing),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 6);
}

#[tokio::test]
async fn suffixed_chains_are_removed_alone() {
    let netns = Netns::create("fw");
    let runner = Runner::in_netns(&netns.name);
    let plain = config(3128);
    let second = FirewallConfig {
        session_range: "10.234.16.0/20".parse().unwrap(),
        proxy_port: 3129,
        bridge_prefix: "srx-".to_owned(),
        chain_suffix: "T7".to_owned(),
    };
    host_setup::apply(&plain, &runner).await.unwrap();
    host_setup::apply(&second, &runner).await.unwrap();

    let saved = saved_rules(&netns);
    assert!(saved.contains("-A INPUT -j STRONGROOM-INPUT-T7"), "{saved}");
    assert!(
        saved.contains("-A STRONGROOM-INPUT-T7 -s 10.234.16.0/20 -j DROP"),
        "{saved}"
    );
    assert!(saved.contains("-A INPUT -j STRONGROOM-INPUT\n"), "{saved}");
    let second_problems = host_setup::check(&second, &runner).await.unwrap();
    assert!(second_problems.is_empty(), "{second_problems:?}");

    host_setup::remove(&second, &runner).await.unwrap();
    let saved = saved_rules(&netns);
    assert!(!saved.contains("-T7"), "{saved}");
    let problems = host_setup::check(&plain, &runner).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(saved.contains("-A STRONGROOM-INPUT -s 172.21.0.0/16 -j DROP"), "{saved}");
}

#[tokio::test]
async fn invalid_chain_suffix_is_rejected() {
    let mut config = config(3128);
    config.chain_suffix = "TOOLONG".to_owned();
    let error = host_setup::apply(&config, &Runner::in_netns("unused"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("\"TOOLONG\""), "{error}");
}

#[tokio::test]
async fn invalid_bridge_prefix_is_rejected() {
    let mut config = config(3128);
    config.bridge_prefix = "a-prefix-too-long".to_owned();
    let error = host_setup::apply(&config, &Runner::in_netns("unused"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("a-prefix-too-long"), "{error}");
}

/// Returns whether a TCP connection to `target` from inside `netns` is established in time.
fn can_connect(netns: &Netns, target: SocketAddr, timeout: Duration) -> bool {
    netns.enter(move || TcpStream::connect_timeout(&target, timeout).is_ok())
}

/// Binds a listener on `address` inside `netns`. Connections complete in the kernel's
/// backlog, so probes need no accept loop.
fn listen(netns: &Netns, address: &str) -> TcpListener {
    let address: SocketAddr = address.parse().unwrap();
    netns.enter(move || TcpListener::bind(address).expect("bind test listener"))
}

/// Two workspace namespaces on session subnets, each linked to a "host" namespace by a
/// veth pair whose host end carries a session bridge name.
struct Topology {
    host: Netns,
    workspace: Netns,
    neighbour: Netns,
}

fn topology() -> Topology {
    let host = Netns::create("host");
    let workspace = Netns::create("ws");
    let neighbour = Netns::create("nb");

    veth(
        &host,
        &unique_name("srs-a"),
        "172.21.7.1/28",
        &workspace,
        "172.21.7.2/28",
    );
    veth(
        &host,
        &unique_name("srs-b"),
        "172.21.8.1/28",
        &neighbour,
        "172.21.8.2/28",
    );
    workspace.ip(&["route", "add", "default", "via", "172.21.7.1"]);
    neighbour.ip(&["route", "add", "default", "via", "172.21.8.1"]);
    host.exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);

    // IPv6 on the first link; `nodad` makes the addresses usable at once.
    let host_link = host.ip(&["-o", "link", "show"]);
    let link = host_link
        .lines()
        .find_map(|line| {
            line.split(": ")
                .nth(1)
                .filter(|name| name.starts_with("srs-a"))
        })
        .map(|name| name.split('@').next().unwrap().to_owned())
        .expect("host end of the first veth pair");
    host.ip(&["addr", "add", "fd5e:1::1/64", "dev", &link, "nodad"]);
    workspace.ip(&["addr", "add", "fd5e:1::2/64", "dev", "eth0", "nodad"]);

    Topology {
        host,
        workspace,
        neighbour,
    }
}

#[tokio::test]
async fn workspace_reaches_only_proxy_port() {
    let net = topology();
    let proxy = listen(&net.host, "0.0.0.0:0");
    let proxy_port = proxy.local_addr().unwrap().port();
    let other = listen(&net.host, "0.0.0.0:0");
    let other_port = other.local_addr().unwrap().port();
    let other_v6 = listen(&net.host, "[::]:0");
    let other_v6_port = other_v6.local_addr().unwrap().port();
    let neighbour_service = listen(&net.neighbour, "0.0.0.0:0");
    let neighbour_port = neighbour_service.local_addr().unwrap().port();

    let gateway = |port| SocketAddr::from(([172, 21, 7, 1], port));
    let neighbour_gateway = SocketAddr::from(([172, 21, 8, 1], proxy_port));
    let neighbour_address = SocketAddr::from(([172, 21, 8, 2], neighbour_port));
    let gateway_v6: SocketAddr = format!("[fd5e:1::1]:{other_v6_port}").parse().unwrap();

    // Every path works before the rules exist, so a failure later is the firewall's.
    assert!(can_connect(
        &net.workspace,
        gateway(proxy_port),
        ALLOWED_PROBE_TIMEOUT
    ));
    assert!(can_connect(
        &net.workspace,
        gateway(other_port),
        ALLOWED_PROBE_TIMEOUT
    ));
    assert!(can_connect(
        &net.workspace,
        gateway_v6,
        ALLOWED_PROBE_TIMEOUT
    ));
    assert!(can_connect(
        &net.workspace,
        neighbour_gateway,
        ALLOWED_PROBE_TIMEOUT
    ));
    assert!(can_connect(
        &net.workspace,
        neighbour_address,
        ALLOWED_PROBE_TIMEOUT
    ));

    let runner = Runner::in_netns(&net.host.name);
    host_setup::apply(&config(proxy_port), &runner)
        .await
        .unwrap();

    assert!(
        can_connect(&net.workspace, gateway(proxy_port), ALLOWED_PROBE_TIMEOUT),
        "proxy port blocked"
    );
    assert!(
        !can_connect(&net.workspace, gateway(other_port), DROPPED_PROBE_TIMEOUT),
        "other host port reachable"
    );
    assert!(
        !can_connect(&net.workspace, gateway_v6, DROPPED_PROBE_TIMEOUT),
        "host reachable over IPv6"
    );
    assert!(
        !can_connect(&net.workspace, neighbour_gateway, DROPPED_PROBE_TIMEOUT),
        "proxy port reachable on another session's gateway"
    );
    assert!(
        !can_connect(&net.workspace, neighbour_address, DROPPED_PROBE_TIMEOUT),
        "other session reachable"
    );
    assert!(can_connect(
        &net.neighbour,
        SocketAddr::from(([172, 21, 8, 1], proxy_port)),
        ALLOWED_PROBE_TIMEOUT
    ));
}

/// Echo server on the host namespace's loopback, playing the bank.
async fn echo_bank() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn serve_echo(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = stream.read(&mut buffer).await {
                if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Collects events for the test.
struct Events(std::sync::mpsc::Sender<egress::EgressEvent>);

impl egress::EventSink for Events {
    fn record(&self, event: egress::EgressEvent) {
        let _ = self.0.send(event);
    }
}

#[tokio::test]
async fn workspace_tunnels_through_firewalled_proxy() {
    use std::io::{Read, Write};
    use std::sync::Arc;

    let net = topology();
    let registry = Arc::new(egress::Registry::new());
    let session_id = uuid::Uuid::new_v4();
    let neighbour_id = uuid::Uuid::new_v4();
    let shutdown = tokio_util::sync::CancellationToken::new();
    // Stops the proxy thread even when an assertion fails first.
    let _stop_on_drop = shutdown.clone().drop_guard();
    let (event_sender, events) = std::sync::mpsc::channel();

    // The proxy and the bank run on a runtime inside the host namespace, so the proxy
    // accepts from the veth links and connects to the bank on that namespace's loopback.
    let (ready_sender, ready) = std::sync::mpsc::channel();
    let proxy_registry = Arc::clone(&registry);
    let stop = shutdown.clone();
    let host_path = format!("/var/run/netns/{}", net.host.name);
    let proxy_thread = std::thread::spawn(move || {
        let file = std::fs::File::open(&host_path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let bank = echo_bank().await;
            let bank_port = bank.local_addr().unwrap().port();
            let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
            let proxy_port = listener.local_addr().unwrap().port();
            let resolver =
                egress::StaticResolver::new().with("bank.example", ["127.0.0.1".parse().unwrap()]);
            let proxy = egress::Proxy::new(
                proxy_registry,
                Arc::new(Events(event_sender)),
                egress::ProxyConfig::default(),
            )
            .unwrap()
            .with_resolver(Arc::new(resolver));
            ready_sender.send((proxy_port, bank_port)).unwrap();
            tokio::select! {
                () = proxy.serve(vec![listener], stop) => {}
                () = serve_echo(bank) => {}
            }
        });
    });
    let (proxy_port, bank_port) = ready
        .recv_timeout(ALLOWED_PROBE_TIMEOUT)
        .expect("proxy did not start");

    let policy = egress::SitePolicy::new(["bank.example"])
        .unwrap()
        .with_ports([bank_port])
        .with_private_ranges(["127.0.0.1/32".parse().unwrap()]);
    registry
        .register(session_id, "172.21.7.0/28".parse().unwrap(), policy.clone())
        .unwrap();
    registry
        .register(
            neighbour_id,
            "172.21.8.0/28".parse().unwrap(),
            policy.with_ports([443]),
        )
        .unwrap();
    host_setup::apply(&config(proxy_port), &Runner::in_netns(&net.host.name))
        .await
        .unwrap();

    // Sends CONNECT through the proxy on `gateway` and, when it returns 200, a
    // ClientHello that the bank echoes. Returns the response head and the echo.
    let exchange = move |netns: &Netns, gateway: [u8; 4]| {
        netns.enter(move || {
            let proxy = SocketAddr::from((gateway, proxy_port));
            let mut stream = TcpStream::connect_timeout(&proxy, ALLOWED_PROBE_TIMEOUT).unwrap();
            stream
                .set_read_timeout(Some(ALLOWED_PROBE_TIMEOUT))
                .unwrap();
            let target = format!("bank.example:{bank_port}");
            write!(
                stream,
                "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
            )
            .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            let status = String::from_utf8(head).unwrap();
            if !status.starts_with("HTTP/1.1 200") {
                return (status, Vec::new());
            }
            let hello = egress::client_hello_for_tests(Some("bank.example"), 512);
            stream.write_all(&hello).unwrap();
            let mut echoed = vec![0u8; hello.len()];
            stream.read_exact(&mut echoed).unwrap();
            (status, echoed)
        })
    };

    // The workspace's session allows the bank's port, so its tunnel works.
    let (status, echoed) = exchange(&net.workspace, [172, 21, 7, 1]);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(
        echoed,
        egress::client_hello_for_tests(Some("bank.example"), 512)
    );
    let allowed = events.recv_timeout(ALLOWED_PROBE_TIMEOUT).unwrap();
    assert_eq!(allowed.session_id, Some(session_id));
    assert_eq!(
        allowed.client.ip(),
        "172.21.7.2".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(allowed.outcome, egress::Outcome::Allowed);

    // The neighbour's session allows only 443, so the proxy identifies it by its source
    // address and refuses the same request.
    let (status, _) = exchange(&net.neighbour, [172, 21, 8, 1]);
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let denied = loop {
        let event = events.recv_timeout(ALLOWED_PROBE_TIMEOUT).unwrap();
        if event.session_id == Some(neighbour_id) {
            break event;
        }
    };
    assert_eq!(
        denied.outcome,
        egress::Outcome::Denied {
            reason: egress::DenyReason::PortNotAllowed { port: bank_port }
        }
    );

    shutdown.cancel();
    proxy_thread.join().expect("proxy thread panicked");
}
