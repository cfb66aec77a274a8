//! Egress proxy cost against a direct connection, both measured in this run on
//! loopback: bulk throughput through one tunnel, and the time from connecting to the
//! first echoed byte.
//!
//! ```sh
//! cargo bench -p egress --bench proxy
//! ```
//!
//! The "bank" is a loopback server that counts what it reads, or echoes. The proxy
//! serves one session registered for source 127.0.0.2, resolves `bank.example` to
//! 127.0.0.1 through a `StaticResolver`, and checks the ClientHello that each tunnel
//! starts with, as in production. The direct path sends the same ClientHello.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egress::{
    EgressEvent, EventSink, Proxy, ProxyConfig, Registry, SitePolicy, StaticResolver,
    client_hello_for_tests,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bytes sent through each path in the throughput run.
const BULK_BYTES: u64 = 1 << 30;
/// Connections opened on each path in the latency run.
const CONNECTS: usize = 400;
const WORKSPACE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

struct Discard;

impl EventSink for Discard {
    fn record(&self, _event: EgressEvent) {}
}

/// Reads each connection to its end and answers with the byte count (8 bytes, big
/// endian); a connection whose first byte after the ClientHello is `e` is echoed
/// instead.
async fn serve_bank(listener: TcpListener, hello_len: usize) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut hello = vec![0u8; hello_len];
            if stream.read_exact(&mut hello).await.is_err() {
                return;
            }
            let mut buffer = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) if total == 0 && buffer[0] == b'e' => {
                        if stream.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                    Ok(read) => total += read as u64,
                }
            }
            let _ = stream.write_all(&total.to_be_bytes()).await;
        });
    }
}

async fn connect_from_workspace(target: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((WORKSPACE, 0))).unwrap();
    let stream = socket.connect(target).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Opens a stream to the bank, directly or through the proxy, and sends the
/// ClientHello.
async fn open(bank: SocketAddr, proxy: Option<SocketAddr>, hello: &[u8]) -> TcpStream {
    let mut stream = match proxy {
        None => connect_from_workspace(bank).await,
        Some(proxy) => {
            let mut stream = connect_from_workspace(proxy).await;
            let target = format!("bank.example:{}", bank.port());
            stream
                .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
            stream
        }
    };
    stream.write_all(hello).await.unwrap();
    stream
}

/// Sends `BULK_BYTES` and waits for the bank's count; returns MiB per second.
async fn throughput(bank: SocketAddr, proxy: Option<SocketAddr>, hello: &[u8]) -> f64 {
    let start = Instant::now();
    let stream = open(bank, proxy, hello).await;
    let (mut reader, mut writer) = stream.into_split();
    let chunk = vec![0x5a; 64 * 1024];
    let mut left = BULK_BYTES;
    while left > 0 {
        let size = left.min(chunk.len() as u64) as usize;
        writer.write_all(&chunk[..size]).await.unwrap();
        left -= size as u64;
    }
    writer.shutdown().await.unwrap();
    let mut count = [0u8; 8];
    reader.read_exact(&mut count).await.unwrap();
    assert_eq!(u64::from_be_bytes(count), BULK_BYTES);
    BULK_BYTES as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

/// Time from connecting to the first echoed byte, for `CONNECTS` connections.
async fn first_byte_times(bank: SocketAddr, proxy: Option<SocketAddr>, hello: &[u8]) -> Vec<Duration> {
    let mut times = Vec::with_capacity(CONNECTS);
    for _ in 0..CONNECTS {
        let start = Instant::now();
        let mut stream = open(bank, proxy, hello).await;
        stream.write_all(b"e").await.unwrap();
        let mut echoed = [0u8; 1];
        stream.read_exact(&mut echoed).await.unwrap();
        times.push(start.elapsed());
    }
    times.sort();
    times
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let hello = client_hello_for_tests(Some("bank.example"), 512);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bank = listener.local_addr().unwrap();
        tokio::spawn(serve_bank(listener, hello.len()));

        let registry = Arc::new(Registry::new());
        let policy = SitePolicy::new(["bank.example"])
            .unwrap()
            .with_ports([bank.port()])
            .with_private_ranges(["127.0.0.1/32".parse().unwrap()]);
        registry
            .register(uuid::Uuid::new_v4(), "127.0.0.2/32".parse().unwrap(), policy)
            .unwrap();
        let resolver = StaticResolver::new().with("bank.example", [bank.ip()]);
        let proxy = Proxy::new(registry, Arc::new(Discard), ProxyConfig::default())
            .unwrap()
            .with_resolver(Arc::new(resolver));
        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_address = proxy_listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let serving = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { proxy.serve(vec![proxy_listener], shutdown).await })
        };

        // Warm up both paths, then alternate them so background load hits both alike.
        throughput(bank, None, &hello).await;
        throughput(bank, Some(proxy_address), &hello).await;
        let mut direct = Vec::new();
        let mut proxied = Vec::new();
        for _ in 0..3 {
            direct.push(throughput(bank, None, &hello).await);
            proxied.push(throughput(bank, Some(proxy_address), &hello).await);
        }
        let best = |runs: &[f64]| runs.iter().copied().fold(0.0, f64::max);
        let (direct_mib, proxied_mib) = (best(&direct), best(&proxied));

        let direct_times = first_byte_times(bank, None, &hello).await;
        let proxied_times = first_byte_times(bank, Some(proxy_address), &hello).await;
        let (direct_median, proxied_median) =
            (percentile(&direct_times, 0.5), percentile(&proxied_times, 0.5));
        let (direct_p99, proxied_p99) =
            (percentile(&direct_times, 0.99), percentile(&proxied_times, 0.99));

        println!("bulk transfer, {} MiB per run, best of 3:", BULK_BYTES >> 20);
        println!("  direct            {direct_mib:10.1} MiB/s");
        println!("  through proxy     {proxied_mib:10.1} MiB/s");
        println!("  throughput ratio (proxy / direct) {:.3}", proxied_mib / direct_mib);
        println!("connect to first echoed byte, {CONNECTS} connections each:");
        println!(
            "  direct            median {:8.1} us   p99 {:8.1} us",
            micros(direct_median),
            micros(direct_p99)
        );
        println!(
            "  through proxy     median {:8.1} us   p99 {:8.1} us",
            micros(proxied_median),
            micros(proxied_p99)
        );
        println!(
            "  added by the proxy: median {:.1} us; latency ratio (proxy / direct) {:.2}",
            micros(proxied_median) - micros(direct_median),
            micros(proxied_median) / micros(direct_median)
        );

        shutdown.cancel();
        serving.await.unwrap();
    });
}
