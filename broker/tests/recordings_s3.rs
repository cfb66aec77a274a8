//! The broker with `[sessions.recordings_s3]` set: its recording store is the bucket of
//! a moto server (an S3-compatible server from PyPI) that the test runs on loopback.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::server;
use bytes::Bytes;
use chrono::Utc;
use recorder::{NewRecording, Packet, RecorderConfig, RecordingWriter};
use uuid::Uuid;

/// A moto server on 127.0.0.1, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    fn start() -> Moto {
        // Another process may take the free port before moto binds it. A server that
        // exits early is therefore started again on a new port.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|listener| listener.local_addr())
                .expect("free port")
                .port();
            let child = Command::new("python3")
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start moto; install it with `python3 -m pip install 'moto[server]'`");
            let mut moto = Moto { child, port };
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = moto.child.try_wait() {
                    break;
                }
                if moto.request("GET", "/moto-api/").is_some() {
                    return moto;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(moto);
        }
        panic!("moto did not start; check `python3 -m moto.server --help`");
    }

    /// Sends one unsigned request, which moto accepts, and returns the status line.
    fn request(&self, method: &str, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.lines().next().map(str::to_owned)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_records_into_configured_bucket() {
    let moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let bucket = format!("broker-{}", Uuid::new_v4().simple());
    let status = moto
        .request("PUT", &format!("/{bucket}"))
        .expect("create bucket");
    assert!(status.contains(" 200"), "creating the bucket: {status}");

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("s3-access-key");
    let secret_file = dir.path().join("s3-secret");
    std::fs::write(&key_file, "testing\n").unwrap();
    std::fs::write(&secret_file, "testing\n").unwrap();
    let env = [
        ("STRONGROOM_DATA_DIR", dir.path().display().to_string()),
        ("STRONGROOM_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("STRONGROOM_LAUNCHER__MODE", "external".to_owned()),
        (
            "STRONGROOM_SESSIONS__RECORDINGS_S3__ENDPOINT",
            format!("http://127.0.0.1:{}", moto.port),
        ),
        ("STRONGROOM_SESSIONS__RECORDINGS_S3__BUCKET", bucket.clone()),
        (
            "STRONGROOM_SESSIONS__RECORDINGS_S3__PREFIX",
            "site-a".to_owned(),
        ),
        (
            "STRONGROOM_SESSIONS__RECORDINGS_S3__ACCESS_KEY_ID",
            format!("file:{}", key_file.display()),
        ),
        (
            "STRONGROOM_SESSIONS__RECORDINGS_S3__SECRET_ACCESS_KEY",
            format!("file:{}", secret_file.display()),
        ),
    ]
    .map(|(name, value)| (name.to_owned(), value));
    let config = broker::config::load(None, env).expect("test configuration is valid");
    assert!(config.sessions.recordings_s3.is_some());
    let broker = server::start(config.clone()).await.expect("broker starts");

    let settings = broker.state.portal.hub.recording_settings().clone();
    let id = Uuid::new_v4();
    let storage = settings.storage.clone();
    let keys = settings.keys.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let now = Utc::now();
        let new = NewRecording {
            id,
            created_at: now,
            expires_at: now + chrono::Duration::days(90),
            stream: None,
        };
        let mut writer = RecordingWriter::create(
            storage.clone(),
            keys.as_ref(),
            RecorderConfig::default(),
            new,
        )
        .unwrap();
        for index in 0..30u64 {
            let packet = Packet {
                pts_us: index * 100_000,
                keyframe: index % 10 == 0,
                data: Bytes::from(vec![index as u8; 500]),
            };
            writer.push_packet(packet).unwrap();
        }
        writer.seal().unwrap();
        let broker_view = storage.list(id).unwrap();

        // A second client built from the same configuration sees the same objects.
        let second = broker::recordings::open_storage(
            std::path::Path::new("/nonexistent"),
            config.sessions.recordings_s3.as_ref(),
        )
        .unwrap();
        assert_eq!(second.list(id).unwrap(), broker_view);
        broker_view
    })
    .await
    .unwrap();
    assert!(
        listed.iter().any(|object| object.name.starts_with("seg-")),
        "{listed:?}"
    );
    assert!(
        !dir.path().join("recordings").join(id.to_string()).exists(),
        "nothing is written to the local recordings directory"
    );

    broker.shutdown().await;
}
