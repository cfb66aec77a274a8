//! Relay throughput and latency: one workspace agent on loopback, read for the same
//! time directly (the baseline) and through the broker's stream hub, recorder and
//! viewer WebSocket.
//!
//! Latency: each frame's arrival time minus its presentation time is the agent's
//! capture-to-arrival delay plus a constant, because the agent counts presentation
//! times from one start for its whole life and the bench reads arrival times from one
//! clock. The difference of the two paths' medians is the delay the relay adds.
//!
//! Run with `cargo bench -p strongroom-tests --bench relay_throughput`. Needs Xvfb and
//! Chromium on the host, as the host-agent tests do. `STRONGROOM_BENCH_SECONDS` sets
//! the length of each measurement (default 20).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use broker::audit::AuditLog;
use broker::clock::SystemClock;
use broker::stream::viewer::{self, ViewerMode};
use broker::stream::{LiveStream, RecordingSettings, StreamHub, StreamSettings, StreamStart};
use broker::tasks::TaskRegistry;
use broker::testing::{TestBackend, TestDatabase};
use futures::{FutureExt, SinkExt, StreamExt};
use protocol::{AgentMessage, BrokerMessage, SessionSecret};
use recorder::{KeyStore, LocalDirStorage, LocalKeyStore, RecorderConfig, Storage};
use strongroom_tests::agent::HostAgent;
use strongroom_tests::pages::PageServer;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// A page that repaints every animation frame, so the agent encodes every frame.
const ANIMATED_PAGE: &str = "<html><body style='margin:0'><canvas id=c width=640 height=360></canvas><script>
const g = document.getElementById('c').getContext('2d');
function paint(t) {
  for (let i = 0; i < 40; i++) {
    g.fillStyle = 'hsl(' + ((t / 7 + i * 37) % 360) + ',80%,50%)';
    g.fillRect(Math.random() * 600, Math.random() * 330, 40, 30);
  }
  g.fillStyle = '#000'; g.font = '32px sans-serif'; g.fillText(String(t), 20, 40);
  requestAnimationFrame(paint);
}
requestAnimationFrame(paint);
</script></body></html>";

/// Frames and video bytes received during one measurement.
struct Measured {
    frames: u64,
    bytes: u64,
    elapsed: Duration,
    /// Per frame: microseconds since the bench started at arrival, minus the frame's
    /// presentation time.
    offsets_us: Vec<i64>,
}

/// One received video frame: its VP8 length and presentation time.
struct Frame {
    len: usize,
    pts_us: u64,
}

impl Measured {
    fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64()
    }

    fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64()
    }

    fn median_offset_ms(&self) -> f64 {
        let mut offsets = self.offsets_us.clone();
        offsets.sort_unstable();
        offsets[offsets.len() / 2] as f64 / 1000.0
    }
}

/// Counts video frames until `duration` has passed since the first one, and records
/// each frame's arrival against `epoch`.
async fn count_frames<F>(epoch: Instant, duration: Duration, mut next_frame: F) -> Measured
where
    F: AsyncFnMut() -> Frame,
{
    let offset = |frame: &Frame| epoch.elapsed().as_micros() as i64 - frame.pts_us as i64;
    let first = next_frame().await;
    let started = Instant::now();
    let mut measured = Measured {
        frames: 1,
        bytes: first.len as u64,
        elapsed: Duration::ZERO,
        offsets_us: vec![offset(&first)],
    };
    while started.elapsed() < duration {
        let frame = next_frame().await;
        measured.offsets_us.push(offset(&frame));
        measured.bytes += frame.len as u64;
        measured.frames += 1;
    }
    measured.elapsed = started.elapsed();
    measured
}

/// Reads the agent's WebSocket directly, as the broker's link does.
async fn direct(
    agent: &HostAgent,
    secret: &SessionSecret,
    epoch: Instant,
    duration: Duration,
) -> Measured {
    let url = format!("ws://{}/", agent.address);
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("agent accepts a connection");
    let auth = protocol::encode_broker_message(&BrokerMessage::Auth {
        secret: secret.clone(),
    });
    socket
        .send(Message::binary(auth.to_vec()))
        .await
        .expect("auth sent");
    let measured = count_frames(epoch, duration, async || {
        loop {
            let message = socket
                .next()
                .await
                .expect("agent connection open")
                .expect("agent connection healthy");
            if let Message::Binary(frame) = message {
                if let Ok(AgentMessage::Video(packet)) = protocol::decode_agent_message(&frame) {
                    return Frame {
                        len: packet.data.len(),
                        pts_us: packet.pts_us,
                    };
                }
            }
        }
    })
    .await;
    let _ = socket.close(None).await;
    measured
}

async fn upgrade(State(stream): State<Arc<LiveStream>>, upgrade: WebSocketUpgrade) -> Response {
    let authorised: viewer::Authorisation = Arc::new(|| async { true }.boxed());
    upgrade.on_upgrade(move |socket| {
        viewer::serve(
            socket,
            stream,
            ViewerMode::Control,
            None,
            authorised,
            Duration::from_secs(20),
        )
    })
}

/// Reads the same agent through the stream hub (every packet recorded first) and the
/// broker's viewer WebSocket.
async fn relayed(
    agent: &HostAgent,
    secret: &SessionSecret,
    epoch: Instant,
    duration: Duration,
) -> Measured {
    let database = TestDatabase::new(TestBackend::Sqlite).await;
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let storage: Arc<dyn Storage> =
        Arc::new(LocalDirStorage::open(database.dir.path().join("recordings")).unwrap());
    let keys: Arc<dyn KeyStore> =
        Arc::new(LocalKeyStore::open(database.dir.path().join("keys")).unwrap());
    let tasks = TaskRegistry::new();
    let recording = RecordingSettings {
        storage,
        keys,
        config: RecorderConfig::default(),
    };
    let hub = StreamHub::new(StreamSettings::default(), recording, audit, tasks.clone());
    let session_id = Uuid::new_v4();
    // The hub adds the recording's catalogue row from the session's row.
    strongroom_tests::reserve_session_row(&database.db, session_id, "bench").await;
    let stream = hub
        .start(StreamStart {
            session_id,
            owner: "bench".into(),
            agent_addr: agent.address,
            secret: secret.clone(),
            recording_id: Uuid::new_v4(),
            recording_expires_at: chrono::Utc::now() + chrono::Duration::days(1),
            clipboard: Default::default(),
        })
        .await
        .expect("stream starts");

    let app = axum::Router::new()
        .route("/live", axum::routing::get(upgrade))
        .with_state(stream);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/live"))
        .await
        .expect("viewer socket opens");
    let measured = count_frames(epoch, duration, async || {
        loop {
            let message = socket
                .next()
                .await
                .expect("viewer socket open")
                .expect("viewer socket healthy");
            // Binary messages are video: 0x01, flags, the presentation time as a
            // little-endian u64, then the VP8 frame.
            if let Message::Binary(frame) = message {
                let pts: [u8; 8] = frame[2..10].try_into().expect("video header");
                return Frame {
                    len: frame.len().saturating_sub(10),
                    pts_us: u64::from_le_bytes(pts),
                };
            }
        }
    })
    .await;
    let _ = socket.close(None).await;

    hub.stop(session_id, "benchmark finished");
    let unfinished = tasks.shutdown(Duration::from_secs(20)).await;
    assert!(unfinished.is_empty(), "tasks left running: {unfinished:?}");
    server.abort();
    measured
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::var("STRONGROOM_BENCH_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20);
    let duration = Duration::from_secs(seconds);
    let pages = PageServer::start(HashMap::from([("/", ANIMATED_PAGE.to_owned())])).await;
    let secret = SessionSecret::new(hex::encode(Uuid::new_v4().as_bytes().repeat(2)));
    let agent = HostAgent::start(&secret.sha256_hex(), &pages.url("/")).await;

    let epoch = Instant::now();
    let baseline = direct(&agent, &secret, epoch, duration).await;
    let relay = relayed(&agent, &secret, epoch, duration).await;

    println!("relay throughput, {seconds} s each, same agent and page");
    println!("| path | frames/s | MiB/s |");
    println!("| --- | --- | --- |");
    for (name, measured) in [
        ("direct to the agent (baseline)", &baseline),
        ("through hub, recorder and viewer WebSocket", &relay),
    ] {
        println!(
            "| {name} | {:.1} | {:.3} |",
            measured.frames_per_second(),
            measured.mib_per_second()
        );
    }
    println!(
        "| ratio (relay / direct) | {:.3} | {:.3} |",
        relay.frames_per_second() / baseline.frames_per_second(),
        relay.mib_per_second() / baseline.mib_per_second()
    );

    println!();
    println!("| path | median capture-to-arrival offset |");
    println!("| --- | --- |");
    println!(
        "| direct to the agent (baseline) | {:.2} ms |",
        baseline.median_offset_ms()
    );
    println!(
        "| through hub, recorder and viewer WebSocket | {:.2} ms |",
        relay.median_offset_ms()
    );
    println!(
        "| latency the relay adds per frame (difference) | {:.2} ms |",
        relay.median_offset_ms() - baseline.median_offset_ms()
    );
    // The offsets contain an unknown constant, so the added delay is set against the
    // direct path's frame interval rather than against an offset.
    println!(
        "| ratio (added latency / direct frame interval) | {:.3} |",
        (relay.median_offset_ms() - baseline.median_offset_ms())
            / (1000.0 / baseline.frames_per_second())
    );
}
