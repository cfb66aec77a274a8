//! Delivered downloads on SQLite and on PostgreSQL: the receiver's checks on what the
//! agent sends, the encrypted store, the `downloads` rows, the audit events and
//! retention.

use std::sync::Arc;

use broker::audit::AuditLog;
use broker::both_backends;
use broker::downloads::{DownloadReceiver, Downloads, store};
use broker::sessions::store::{Reservation, ReserveOutcome, reserve};
use broker::testing::TestDatabase;
use protocol::DownloadChunk;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const OWNER: &str = "alice-id";
/// The cap of these tests.
const MAX_FILE_BYTES: u64 = 1000;

/// Imports the sites `deliver` and `blocked`, reserves a session of `site` for
/// [`OWNER`] and opens the download store.
async fn setup(database: &TestDatabase, site: &str) -> (Downloads, Uuid) {
    let path = database.dir.path().join("sites.toml");
    std::fs::write(
        &path,
        r#"
[[site]]
name = "deliver"
display_name = "Delivering bank"
start_url = "https://bank.example/"
allowed_hosts = ["bank.example"]
recording_retention_days = 3
[site.policy]
downloads = "deliver"

[[site]]
name = "blocked"
display_name = "Blocking bank"
start_url = "https://bank.example/"
allowed_hosts = ["bank.example"]
recording_retention_days = 3
"#,
    )
    .unwrap();
    broker::sites::import_file(&database.db, &path)
        .await
        .unwrap();

    let session_id = Uuid::new_v4();
    let outcome = reserve(
        &database.db,
        &Reservation {
            session_id,
            user_id: OWNER,
            site,
            instance_id: "downloads-test",
            client_addr: None,
            now_ms: chrono::Utc::now().timestamp_millis(),
            default_quota: 10,
            site_limit: None,
            host_limit: 10,
        },
    )
    .await
    .unwrap();
    assert_eq!(outcome, ReserveOutcome::Reserved);

    let audit = AuditLog::new(database.db.clone(), Arc::new(broker::clock::SystemClock));
    let downloads = Downloads::open(database.dir.path(), audit, MAX_FILE_BYTES).unwrap();
    (downloads, session_id)
}

/// Sends `bytes` as `download_id` in chunks of `chunk_len` bytes, then its end.
async fn send(
    receiver: &mut DownloadReceiver,
    download_id: u64,
    name: &str,
    bytes: &[u8],
    chunk_len: usize,
) {
    receiver.start(download_id, name, bytes.len() as u64).await;
    for (index, piece) in bytes.chunks(chunk_len).enumerate() {
        receiver
            .chunk(DownloadChunk {
                download_id,
                offset: (index * chunk_len) as u64,
                data: piece.to_vec(),
            })
            .await;
    }
    receiver
        .end(download_id, &hex::encode(Sha256::digest(bytes)))
        .await;
}

async fn events(downloads: &Downloads, action: &str) -> Vec<serde_json::Value> {
    let audit = AuditLog::new(
        downloads_db(downloads),
        Arc::new(broker::clock::SystemClock),
    );
    audit
        .list(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == action)
        .map(|event| {
            let mut details: serde_json::Value = serde_json::from_str(&event.details).unwrap();
            details["outcome"] = event.outcome.into();
            details["actor"] = event.actor.into();
            details
        })
        .collect()
}

fn downloads_db(downloads: &Downloads) -> broker::db::Database {
    downloads.audit().database().clone()
}

/// Files in the download directory, with `.part` files.
fn stored_files(database: &TestDatabase) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(database.dir.path().join("downloads"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

both_backends!(delivered_file_round_trips, delivered_body);
async fn delivered_body(database: TestDatabase) {
    let (downloads, session_id) = setup(&database, "deliver").await;
    let mut receiver = DownloadReceiver::new(Some(downloads.clone()), session_id);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(700).collect();

    send(
        &mut receiver,
        1,
        "../statements/Konto\u{0}auszug\n.pdf",
        &bytes,
        256,
    )
    .await;

    let rows = store::list_for_user(&database.db, OWNER).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.name, "Kontoauszug.pdf");
    assert_eq!(row.size, 700);
    assert_eq!(row.site, "deliver");
    assert_eq!(row.session_id, session_id);
    assert_eq!(row.sha256, hex::encode(Sha256::digest(&bytes)));
    let kept = row.expires_at - row.created_at;
    assert_eq!(kept.num_days(), 3, "the site's retention applies");
    assert_eq!(
        store::get(&database.db, row.id).await.unwrap().as_ref(),
        Some(row)
    );
    assert!(
        store::list_for_user(&database.db, "bob")
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(downloads.read(row).await.unwrap(), bytes);
    assert_eq!(stored_files(&database), [row.id.to_string()]);
    let raw = std::fs::read(
        database
            .dir
            .path()
            .join("downloads")
            .join(row.id.to_string()),
    )
    .unwrap();
    assert!(
        !raw.windows(32).any(|window| window == &bytes[..32]),
        "plaintext on disk"
    );

    let delivered = events(&downloads, "download.delivered").await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["name"], "Kontoauszug.pdf");
    assert_eq!(delivered[0]["size"], 700);
    assert_eq!(delivered[0]["sha256"], row.sha256.as_str());
    assert_eq!(delivered[0]["site"], "deliver");
    assert_eq!(delivered[0]["actor"], format!("user:{OWNER}"));

    // An empty file is a file too.
    send(&mut receiver, 2, "empty.txt", &[], 256).await;
    let empty = store::list_for_user(&database.db, OWNER).await.unwrap();
    let empty = empty
        .iter()
        .find(|row| row.name == "empty.txt")
        .expect("empty file stored");
    assert_eq!(downloads.read(empty).await.unwrap(), Vec::<u8>::new());
}

both_backends!(hostile_transfers_are_refused, hostile_body);
async fn hostile_body(database: TestDatabase) {
    let (downloads, session_id) = setup(&database, "deliver").await;
    let mut receiver = DownloadReceiver::new(Some(downloads.clone()), session_id);
    let bytes = vec![7u8; 600];

    // Larger than the cap: refused before anything is written.
    receiver.start(1, "big.bin", MAX_FILE_BYTES + 1).await;
    receiver
        .chunk(DownloadChunk {
            download_id: 1,
            offset: 0,
            data: vec![1; 10],
        })
        .await;
    // A gap between chunks.
    receiver.start(2, "gap.bin", 600).await;
    receiver
        .chunk(DownloadChunk {
            download_id: 2,
            offset: 0,
            data: bytes[..100].to_vec(),
        })
        .await;
    receiver
        .chunk(DownloadChunk {
            download_id: 2,
            offset: 200,
            data: bytes[200..300].to_vec(),
        })
        .await;
    // More bytes than announced.
    receiver.start(3, "long.bin", 10).await;
    receiver
        .chunk(DownloadChunk {
            download_id: 3,
            offset: 0,
            data: vec![0; 11],
        })
        .await;
    // A hash that does not match.
    receiver.start(4, "hash.bin", 600).await;
    receiver
        .chunk(DownloadChunk {
            download_id: 4,
            offset: 0,
            data: bytes.clone(),
        })
        .await;
    receiver.end(4, &"0".repeat(64)).await;
    // An end before every byte arrived.
    receiver.start(5, "short.bin", 600).await;
    receiver
        .chunk(DownloadChunk {
            download_id: 5,
            offset: 0,
            data: bytes[..10].to_vec(),
        })
        .await;
    receiver.end(5, &hex::encode(Sha256::digest(&bytes))).await;
    // A connection that ends during a transfer.
    receiver.start(6, "cut.bin", 600).await;
    receiver
        .chunk(DownloadChunk {
            download_id: 6,
            offset: 0,
            data: bytes[..10].to_vec(),
        })
        .await;
    receiver.abort_open().await;
    // The agent's own refusal.
    receiver
        .refused_by_agent(
            "huge.iso",
            Some(1 << 30),
            "the file is larger than the maximum of 1000 bytes",
        )
        .await;

    assert!(
        store::list_for_user(&database.db, OWNER)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        stored_files(&database).is_empty(),
        "{:?}",
        stored_files(&database)
    );
    let refused = events(&downloads, "download.refused").await;
    let reasons: Vec<(String, String)> = refused
        .iter()
        .map(|event| {
            (
                event["name"].as_str().unwrap().to_owned(),
                event["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("big.bin", "larger than the maximum of 1000 bytes"),
        ("gap.bin", "starts at byte 200 where byte 100 was expected"),
        ("long.bin", "exceed the announced size of 10 bytes"),
        ("hash.bin", "SHA-256 differs"),
        ("short.bin", "sent 10 of 600 announced bytes"),
        ("cut.bin", "session ended before the file was complete"),
        ("huge.iso", "the workspace refused it"),
    ];
    assert_eq!(reasons.len(), expected.len(), "{reasons:?}");
    for ((name, reason), (expected_name, expected_reason)) in reasons.iter().zip(expected) {
        assert_eq!(name, expected_name);
        assert!(reason.contains(expected_reason), "{name}: {reason}");
    }
    assert!(refused.iter().all(|event| event["site"] == "deliver"));
    assert!(events(&downloads, "download.delivered").await.is_empty());
}

both_backends!(blocked_site_refuses_every_file, blocked_body);
async fn blocked_body(database: TestDatabase) {
    let (downloads, session_id) = setup(&database, "blocked").await;
    let mut receiver = DownloadReceiver::new(Some(downloads.clone()), session_id);

    send(&mut receiver, 1, "statement.pdf", b"%PDF-1.7", 256).await;

    assert!(
        store::list_for_user(&database.db, OWNER)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(stored_files(&database).is_empty());
    let refused = events(&downloads, "download.refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["outcome"], "denied");
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("download policy is blocked"),
        "{refused:?}"
    );
}

both_backends!(retention_deletes_file_and_row, retention_body);
async fn retention_body(database: TestDatabase) {
    let (downloads, session_id) = setup(&database, "deliver").await;
    let mut receiver = DownloadReceiver::new(Some(downloads.clone()), session_id);
    send(&mut receiver, 1, "old.pdf", b"old statement", 256).await;
    send(&mut receiver, 2, "new.pdf", b"new statement", 256).await;
    let rows = store::list_for_user(&database.db, OWNER).await.unwrap();
    let old = rows
        .iter()
        .find(|row| row.name == "old.pdf")
        .unwrap()
        .clone();
    let new = rows
        .iter()
        .find(|row| row.name == "new.pdf")
        .unwrap()
        .clone();

    assert_eq!(
        downloads.delete_expired().await.unwrap(),
        0,
        "nothing expired yet"
    );
    sqlx::query("UPDATE downloads SET expires_at_ms = $1 WHERE id = $2")
        .bind(chrono::Utc::now().timestamp_millis() - 1)
        .bind(old.id.to_string())
        .execute(database.db.pool())
        .await
        .unwrap();

    assert_eq!(downloads.delete_expired().await.unwrap(), 1);
    assert_eq!(store::get(&database.db, old.id).await.unwrap(), None);
    assert_eq!(stored_files(&database), [new.id.to_string()]);
    assert_eq!(downloads.read(&new).await.unwrap(), b"new statement");
    let deleted = events(&downloads, "download.deleted").await;
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["name"], "old.pdf");
}
