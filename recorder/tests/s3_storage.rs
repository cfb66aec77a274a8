//! The S3 backend against a real S3-compatible server: moto in server mode (from PyPI),
//! started by each test on a free loopback port and stopped when the test ends.
#![cfg(feature = "s3")]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as ChronoDuration;
use common::*;
use recorder::{
    LocalKeyStore, RecorderError, RecordingReader, RecordingWriter, RetentionPeriod, S3Config,
    S3Storage, SegmentFault, Storage, StorageError, sweep_retention, verify_recording,
};
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

    /// Sends one unsigned request and returns the status line. moto accepts unsigned
    /// requests, which is enough to create a bucket.
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

    fn storage(&self, prefix: &str) -> Arc<S3Storage> {
        self.storage_with_timeout(prefix, S3Config::DEFAULT_OPERATION_TIMEOUT)
    }

    fn storage_with_timeout(&self, prefix: &str, operation_timeout: Duration) -> Arc<S3Storage> {
        let bucket = format!("rec-{}", Uuid::new_v4().simple());
        let status = self
            .request("PUT", &format!("/{bucket}"))
            .expect("create bucket");
        assert!(status.contains(" 200"), "creating the bucket: {status}");
        let config = S3Config {
            endpoint: format!("http://127.0.0.1:{}", self.port),
            region: "us-east-1".into(),
            bucket,
            prefix: prefix.into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            allow_http: true,
            operation_timeout,
            max_retries: S3Config::DEFAULT_MAX_RETRIES,
        };
        Arc::new(S3Storage::open(&config).expect("S3 storage"))
    }
}

fn write_recording(
    storage: &Arc<S3Storage>,
    keys: &LocalKeyStore,
    expires_at: chrono::DateTime<chrono::Utc>,
) -> (Uuid, Vec<[u8; 32]>) {
    let mut writer = RecordingWriter::create(
        storage.clone(),
        keys,
        test_config(),
        new_recording(expires_at),
    )
    .expect("writer on S3");
    let mut stored = write_all(&mut writer, synthetic_packets(7, 10, 10));
    let sealed = writer.seal().expect("seal");
    stored.extend(sealed.final_segment);
    (writer.id(), hashes(&stored))
}

#[test]
fn s3_objects_put_list_get_and_delete() {
    let moto = Moto::start();
    let storage = moto.storage("recordings/site-a");
    storage
        .check_writable(1 << 30)
        .expect("bucket accepts writes");

    let id = Uuid::new_v4();
    storage.create_recording(id).unwrap();
    assert!(matches!(
        storage.create_recording(id),
        Err(StorageError::AlreadyExists(existing)) if existing == id
    ));
    assert!(storage.exists(id).unwrap());
    assert!(!storage.exists(Uuid::new_v4()).unwrap());

    storage.put(id, "seg-00000001.srs", b"second").unwrap();
    storage
        .put(id, "seg-00000000.srs", b"first object")
        .unwrap();
    let names: Vec<(String, u64)> = storage
        .list(id)
        .unwrap()
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    assert_eq!(
        names,
        vec![
            ("seg-00000000.srs".to_owned(), 12),
            ("seg-00000001.srs".to_owned(), 6)
        ],
        "the marker object is not listed"
    );
    assert_eq!(
        storage.get(id, "seg-00000000.srs").unwrap(),
        b"first object"
    );
    assert_eq!(
        storage.get_prefix(id, "seg-00000000.srs", 5).unwrap(),
        b"first"
    );
    assert_eq!(
        storage.get_prefix(id, "seg-00000001.srs", 100).unwrap(),
        b"second"
    );
    assert!(matches!(
        storage.get(id, "seg-00000009.srs"),
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        storage.put(id, "../escape", b"x"),
        Err(StorageError::InvalidName(_))
    ));
    assert_eq!(storage.list_recordings().unwrap(), vec![id]);

    storage.delete_recording(id).unwrap();
    assert!(!storage.exists(id).unwrap());
    assert!(storage.list(id).unwrap().is_empty());
    assert!(storage.list_recordings().unwrap().is_empty());
}

#[test]
fn s3_recording_replays_and_detects_a_changed_segment() {
    let moto = Moto::start();
    let storage = moto.storage("");
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = LocalKeyStore::open(keys_dir.path().join("keys")).unwrap();

    let (id, expected) = write_recording(&storage, &keys, default_expiry());
    assert!(expected.len() >= 3, "the stream spans several segments");
    let report = verify_recording(storage.as_ref(), id, &expected).unwrap();
    assert!(report.is_intact(), "{report:?}");

    let reader = RecordingReader::open(storage.clone(), &keys, id).expect("open from S3");
    let records = reader.records().collect::<Result<Vec<_>, _>>().unwrap();
    assert!(!records.is_empty());

    let mut segment = storage.get(id, "seg-00000001.srs").unwrap();
    let last = segment.len() - 1;
    segment[last] ^= 1;
    storage.put(id, "seg-00000001.srs", &segment).unwrap();
    let report = verify_recording(storage.as_ref(), id, &expected).unwrap();
    assert!(!report.is_intact(), "a flipped bit is detected");
    assert_eq!(report.problems.len(), 1, "{report:?}");
}

#[test]
fn s3_crash_keeps_the_open_segment_up_to_the_last_checkpoint() {
    let moto = Moto::start();
    let storage = moto.storage("recordings");
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = LocalKeyStore::open(keys_dir.path().join("keys")).unwrap();

    // Killed 2.5 s into segment 1, which starts at the keyframe at 6 s; its parts end
    // before the packets at 7 s and 7.967 s.
    let packets = agent_like_packets(8_500_000);
    let (id, stored) = write_and_crash(storage.clone(), &keys, &packets);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        part_names(storage.as_ref(), id),
        vec![part_name(1, 0), part_name(1, 1)]
    );
    let expected = &packets[..239];
    let report = seal_and_check_recovered(storage.clone(), &keys, id, &stored, expected);
    assert_eq!(report.assembled.map(|a| a.parts), Some(2));
    assert!(report.rejected_parts.is_empty());

    // A changed part on S3 is left out with the parts after it.
    let (id, stored) = write_and_crash(storage.clone(), &keys, &packets);
    let mut part = storage.get(id, &part_name(1, 0)).unwrap();
    let last = part.len() - 1;
    part[last] ^= 1;
    storage.put(id, &part_name(1, 0), &part).unwrap();
    let report = seal_and_check_recovered(storage.clone(), &keys, id, &stored, &packets[..6 * 30]);
    assert!(report.assembled.is_none());
    assert_eq!(
        report.rejected_parts,
        vec![
            (part_name(1, 0), SegmentFault::AuthenticationFailed),
            (part_name(1, 1), SegmentFault::AfterRejectedPart),
        ]
    );
}

#[test]
fn s3_retention_deletes_only_expired_recordings() {
    let moto = Moto::start();
    let storage = moto.storage("retention");
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = LocalKeyStore::open(keys_dir.path().join("keys")).unwrap();

    let expires = default_expiry();
    let (expired, _) = write_recording(&storage, &keys, expires);
    let (kept, _) = write_recording(&storage, &keys, expires + ChronoDuration::hours(1));
    let period =
        RetentionPeriod::from_kek_id(&test_config().period_length.period_for(expires).kek_id)
            .unwrap();
    let none: &dyn Fn(Uuid) -> bool = &|_| false;

    let report = sweep_retention(storage.as_ref(), &keys, expires, none).unwrap();
    assert_eq!(report.deleted, vec![expired]);
    assert!(!storage.exists(expired).unwrap());
    assert!(
        storage.list(expired).unwrap().is_empty(),
        "no segment is left"
    );
    assert_eq!(storage.list_recordings().unwrap(), vec![kept]);
    let reader = RecordingReader::open(storage.clone(), &keys, kept).unwrap();
    assert!(
        reader.records().all(|r| r.is_ok()),
        "the unexpired recording still plays"
    );

    let report = sweep_retention(storage.as_ref(), &keys, period.ends_at, none).unwrap();
    assert_eq!(report.deleted, vec![kept]);
    assert_eq!(report.destroyed_keys, vec![period.kek_id]);
    assert!(storage.list_recordings().unwrap().is_empty());
}

/// Sends `signal` (a `kill` signal name such as `STOP`) to the moto server.
fn signal(moto: &Moto, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(moto.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} failed");
}

#[test]
fn s3_write_fails_within_timeout_when_endpoint_stops() {
    let moto = Moto::start();
    let storage = moto.storage_with_timeout("", Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let keys = LocalKeyStore::open(dir.path().join("keys")).unwrap();
    let mut writer = RecordingWriter::create(
        storage.clone(),
        &keys,
        test_config(),
        new_recording(default_expiry()),
    )
    .unwrap();
    let mut packets = synthetic_packets(600, 10, 10);

    // Segments of two seconds reach the store while it answers.
    let mut stored = 0;
    for packet in packets.by_ref() {
        if writer.push_packet(packet).unwrap().is_some() {
            stored += 1;
            if stored == 2 {
                break;
            }
        }
    }

    // A stopped server accepts connections and never answers, like an endpoint behind
    // a dead link. The next segment write fails within the operation timeout plus one
    // segment of packets, not after object_store's 3-minute default.
    signal(&moto, "STOP");
    let stopped = Instant::now();
    let error = packets
        .find_map(|packet| writer.push_packet(packet).err())
        .expect("a segment write fails while the server is stopped");
    let elapsed = stopped.elapsed();
    signal(&moto, "CONT");

    assert!(
        elapsed < Duration::from_secs(20),
        "the write failed only after {elapsed:?}"
    );
    assert!(
        matches!(
            error,
            RecorderError::Storage(StorageError::Remote {
                operation: "put",
                ..
            })
        ),
        "{error:?}"
    );
    // Either the operation timeout or the HTTP client's request timeout, both set to
    // the same two seconds, ends the write.
    let description = format!("{error:?}").to_lowercase();
    assert!(
        description.contains("timed out") || description.contains("timeout"),
        "{error:?}"
    );
}
