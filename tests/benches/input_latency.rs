//! Input-to-picture latency: a key press sent at the broker's viewer WebSocket until
//! the first video frame that shows its effect arrives there, against the same key
//! sent straight to the agent's WebSocket (the baseline).
//!
//! The page is black and turns to another colour on every keydown. An unchanged screen
//! yields no delta frames, only a keyframe every few seconds, so the first delta frame
//! after a key press carries the change.
//!
//! Run with `cargo test -p strongroom-tests --bench input_latency` (debug build) or
//! `cargo bench`. Needs Xvfb and Chromium on the host. `STRONGROOM_BENCH_PRESSES` sets
//! the number of presses per path (default 30).

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
use protocol::{AgentMessage, BrokerMessage, KeyEvent, SessionSecret};
use recorder::{KeyStore, LocalDirStorage, LocalKeyStore, RecorderConfig, Storage};
use strongroom_tests::agent::HostAgent;
use strongroom_tests::pages::PageServer;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// A page that changes its background colour on every keydown.
const FLIP_PAGE: &str = "<html><body style='margin:0;background:#000'><script>
let n = 0;
addEventListener('keydown', () => { n++; document.body.style.background = 'hsl(' + (n * 47 % 360) + ',80%,50%)'; });
</script></body></html>";

/// Time the screen must stay without delta frames before a press is timed.
const QUIET: Duration = Duration::from_millis(600);

fn key(pressed: bool) -> KeyEvent {
    KeyEvent {
        code: "KeyA".into(),
        key: "a".into(),
        pressed,
    }
}

/// Median of the times, in milliseconds.
fn median_ms(times: &mut [Duration]) -> f64 {
    times.sort_unstable();
    times[times.len() / 2].as_secs_f64() * 1000.0
}

/// Times `presses` key presses: `send` sends one press (down and up), `next_delta`
/// returns once the next delta frame arrives.
async fn time_presses<S, N>(presses: usize, mut send: S, mut next_delta: N) -> Vec<Duration>
where
    S: AsyncFnMut(),
    N: AsyncFnMut(Duration) -> bool,
{
    let mut times = Vec::with_capacity(presses);
    while times.len() < presses {
        // Wait until the screen is still, so the next delta frame is the key's effect.
        while next_delta(QUIET).await {}
        let sent = Instant::now();
        send().await;
        if next_delta(Duration::from_secs(10)).await {
            times.push(sent.elapsed());
        }
    }
    times
}

async fn direct(agent: &HostAgent, secret: &SessionSecret, presses: usize) -> Vec<Duration> {
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/", agent.address))
        .await
        .expect("agent accepts a connection");
    let (mut sink, mut source) = socket.split();
    let auth = protocol::encode_broker_message(&BrokerMessage::Auth {
        secret: secret.clone(),
    });
    sink.send(Message::binary(auth.to_vec())).await.unwrap();
    let source = tokio::sync::Mutex::new(&mut source);
    let sink = tokio::sync::Mutex::new(&mut sink);
    time_presses(
        presses,
        async || {
            for pressed in [true, false] {
                let frame = protocol::encode_broker_message(&BrokerMessage::Key(key(pressed)));
                sink.lock().await.send(Message::binary(frame.to_vec())).await.unwrap();
            }
        },
        async |within| {
            let mut source = source.lock().await;
            let deadline = tokio::time::Instant::now() + within;
            while let Ok(message) = tokio::time::timeout_at(deadline, source.next()).await {
                if let Message::Binary(frame) = message.unwrap().unwrap()
                    && let Ok(AgentMessage::Video(packet)) = protocol::decode_agent_message(&frame)
                    && !packet.keyframe
                {
                    return true;
                }
            }
            false
        },
    )
    .await
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

async fn relayed(agent: &HostAgent, secret: &SessionSecret, presses: usize) -> Vec<Duration> {
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

    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/live"))
        .await
        .expect("viewer socket opens");
    let (mut sink, mut source) = socket.split();
    let source = tokio::sync::Mutex::new(&mut source);
    let sink = tokio::sync::Mutex::new(&mut sink);
    let times = time_presses(
        presses,
        async || {
            for pressed in [true, false] {
                let input = serde_json::json!({ "type": "key", "code": "KeyA", "key": "a", "pressed": pressed });
                sink.lock().await.send(Message::text(input.to_string())).await.unwrap();
            }
        },
        async |within| {
            let mut source = source.lock().await;
            let deadline = tokio::time::Instant::now() + within;
            while let Ok(message) = tokio::time::timeout_at(deadline, source.next()).await {
                // Video: 0x01, flags with bit 0 set for a keyframe, then the rest.
                if let Message::Binary(frame) = message.unwrap().unwrap()
                    && frame.len() > 10
                    && frame[1] & 1 == 0
                {
                    return true;
                }
            }
            false
        },
    )
    .await;

    hub.stop(session_id, "benchmark finished");
    let unfinished = tasks.shutdown(Duration::from_secs(20)).await;
    assert!(unfinished.is_empty(), "tasks left running: {unfinished:?}");
    server.abort();
    times
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let presses: usize = std::env::var("STRONGROOM_BENCH_PRESSES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(30);
    let pages = PageServer::start(HashMap::from([("/", FLIP_PAGE.to_owned())])).await;
    let secret = SessionSecret::new(hex::encode(Uuid::new_v4().as_bytes().repeat(2)));
    let agent = HostAgent::start(&secret.sha256_hex(), &pages.url("/")).await;

    let mut baseline = direct(&agent, &secret, presses).await;
    let mut relay = relayed(&agent, &secret, presses).await;
    let (baseline_ms, relay_ms) = (median_ms(&mut baseline), median_ms(&mut relay));

    println!("input-to-picture latency, {presses} presses per path, median");
    println!("| path | key press to first changed frame |");
    println!("| --- | --- |");
    println!("| straight to the agent (baseline) | {baseline_ms:.1} ms |");
    println!("| through the viewer WebSocket, hub and recorder | {relay_ms:.1} ms |");
    println!("| ratio (relay / direct) | {:.3} |", relay_ms / baseline_ms);
}
