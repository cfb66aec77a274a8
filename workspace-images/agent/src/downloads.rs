//! Download delivery: files Chromium finished saving go to the broker in chunks.
//!
//! Chromium saves into the download tmpfs that its `DownloadDirectory` policy names,
//! under the name it derives from the response. It writes a partial file with the
//! `.crdownload` suffix and renames it when the download completes. Each
//! `Browser.downloadProgress` event whose state is `completed`, and a rescan every
//! second, make the agent send every regular file directly in the download directory,
//! skipping `.crdownload` partials and hidden files, and delete it once it was sent or
//! refused. A download that grows past the size cap is cancelled and reported as
//! refused.
//!
//! The name comes from the response's Content-Disposition or the link's `download`
//! attribute. Chromium runs with a UTF-8 `LC_CTYPE` (`processes::start_chromium`),
//! because under the "C" locale Chromium 156 saves a file whose name has a character
//! outside ASCII as `download`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use protocol::{AgentControl, DownloadChunk};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cdp::Cdp;
use crate::hub::{Hub, Outbound};

/// Free slots kept in the broker channel for video and control frames while a file is
/// sent, so a large download never starves the screen or fills the channel.
const RESERVED_SLOTS: usize = 32;
/// Interval of the rescan of the download directory, a backstop for missed events.
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Interval at which a sender waiting for channel room checks again.
const ROOM_POLL: Duration = Duration::from_millis(5);
/// Time a finished download waits for a broker connection before it is dropped.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// Download directory of Chromium and the largest file the agent sends.
#[derive(Debug, Clone)]
pub struct DownloadSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// A download Chromium finished.
#[derive(Debug)]
struct Finished {
    name: String,
    path: PathBuf,
}

/// Turns on CDP download events; the session policy lets Chromium save into
/// `settings.dir` without a dialog. Call [`run`] with a receiver subscribed before this call.
pub async fn enable(cdp: &Cdp, settings: &DownloadSettings) -> anyhow::Result<()> {
    cdp.call(
        "Browser.setDownloadBehavior",
        json!({
            "behavior": "default",
            "eventsEnabled": true,
        }),
        None,
    )
    .await
    .context("enabling downloads over CDP")?;
    tracing::info!(dir = %settings.dir.display(), max_bytes = settings.max_bytes, "Download delivery enabled");
    Ok(())
}

/// Follows download events until `stop` is cancelled, and sends every finished file to
/// the broker, one file at a time.
pub async fn run(
    cdp: Arc<Cdp>,
    mut events: tokio::sync::broadcast::Receiver<crate::cdp::Event>,
    hub: Arc<Hub>,
    settings: DownloadSettings,
    stop: CancellationToken,
) {
    let (finished_sender, finished_receiver) = mpsc::unbounded_channel();
    let sender = tokio::spawn(send_finished(
        hub.clone(),
        settings.clone(),
        finished_receiver,
        stop.clone(),
    ));
    // Suggested names by download GUID, from `Browser.downloadWillBegin`.
    let mut names: HashMap<String, String> = HashMap::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = events.recv() => match event {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "Missed CDP events; a download may go unreported");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        };
        if event.session_id.is_some() {
            continue;
        }
        match event.method.as_str() {
            "Browser.downloadWillBegin" => {
                let Some(guid) = event.params["guid"].as_str() else {
                    continue;
                };
                names.insert(guid.to_owned(), announced_name(&event.params));
            }
            "Browser.downloadProgress" => {
                let Some(guid) = event.params["guid"].as_str().map(str::to_owned) else {
                    continue;
                };
                match event.params["state"].as_str() {
                    Some("inProgress") => {
                        let size = progress_size(&event.params);
                        if size > settings.max_bytes
                            && let Some(name) = names.remove(&guid)
                        {
                            cancel_oversized(&cdp, &hub, &settings, &guid, name, size).await;
                        }
                    }
                    Some("completed") => {
                        tracing::debug!(download.guid = %guid, "Download completed");
                        names.remove(&guid);
                        let _ = finished_sender.send(());
                    }
                    Some("canceled") => {
                        names.remove(&guid);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    drop(finished_sender);
    if let Err(error) = sender.await {
        tracing::warn!(error = %error, "The download sender stopped abnormally");
    }
}

/// Returns the larger of the announced and the received size of a download in progress.
fn progress_size(params: &Value) -> u64 {
    let number = |key: &str| params[key].as_f64().unwrap_or(0.0).max(0.0) as u64;
    number("totalBytes").max(number("receivedBytes"))
}

/// Returns the name of a download as `Browser.downloadWillBegin` announces it: the
/// suggested file name, or the last segment of the URL's path when Chromium suggests
/// none yet (a link with an empty `download` attribute).
fn announced_name(params: &Value) -> String {
    let suggested = params["suggestedFilename"].as_str().unwrap_or_default();
    if !suggested.is_empty() {
        return suggested.to_owned();
    }
    let url = params["url"].as_str().unwrap_or_default();
    let path = url.split(['?', '#']).next().unwrap_or_default();
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

/// Lists the finished downloads in `dir`, by name: regular files that are neither
/// `.crdownload` partials nor hidden.
fn finished_files(dir: &Path) -> Vec<Finished> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<Finished> = entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let partial = name.ends_with(".crdownload") || name.starts_with('.');
            (!partial).then(|| Finished {
                name,
                path: entry.path(),
            })
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

async fn cancel_oversized(
    cdp: &Cdp,
    hub: &Hub,
    settings: &DownloadSettings,
    guid: &str,
    name: String,
    size: u64,
) {
    tracing::warn!(
        size,
        max_bytes = settings.max_bytes,
        "Cancelling a download above the size cap"
    );
    if let Err(error) = cdp
        .call("Browser.cancelDownload", json!({ "guid": guid }), None)
        .await
    {
        tracing::warn!(error = %error, "Cancelling the download failed");
    }
    hub.send_control(&AgentControl::DownloadRefused {
        name: truncate_name(&name),
        size: Some(size),
        reason: too_large(settings.max_bytes),
    });
    // Chromium removes a cancelled download's partial file itself. A file that was
    // complete before the cancel arrived is refused again by its size when it is sent.
}

fn too_large(max_bytes: u64) -> String {
    format!("the file is larger than the maximum of {max_bytes} bytes")
}

/// Sends the finished files in the download directory each time a download completes
/// and at every rescan.
async fn send_finished(
    hub: Arc<Hub>,
    settings: DownloadSettings,
    mut completed: mpsc::UnboundedReceiver<()>,
    stop: CancellationToken,
) {
    let mut next_id: u64 = 1;
    let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            event = completed.recv() => if event.is_none() { break },
            _ = rescan.tick() => {}
        }
        for file in finished_files(&settings.dir) {
            let download_id = next_id;
            next_id += 1;
            if let Err(error) = send_file(&hub, &settings, download_id, &file, &stop).await {
                tracing::warn!(error = %format!("{error:#}"), "A download was not delivered");
            }
            remove(&file.path);
        }
    }
}

/// Sends one file as `download_start`, chunks and `download_end` over one broker
/// connection, or a `download_refused` when it is above the cap.
async fn send_file(
    hub: &Hub,
    settings: &DownloadSettings,
    download_id: u64,
    file: &Finished,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let metadata = std::fs::symlink_metadata(&file.path)
        .with_context(|| format!("inspecting {}", file.path.display()))?;
    if !metadata.is_file() {
        bail!("{} is not a regular file", file.path.display());
    }
    let name = truncate_name(&file.name);
    let size = metadata.len();
    if size > settings.max_bytes {
        hub.send_control(&AgentControl::DownloadRefused {
            name,
            size: Some(size),
            reason: too_large(settings.max_bytes),
        });
        return Ok(());
    }

    let sink = wait_for_broker(hub, stop).await?;
    let mut reader = std::fs::File::open(&file.path)
        .with_context(|| format!("opening {}", file.path.display()))?;
    let start = AgentControl::DownloadStart {
        version: protocol::DOWNLOAD_PROTOCOL_VERSION,
        download_id,
        name,
        size,
    };
    push(&sink, protocol::encode_agent_control(&start), stop).await?;

    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    let mut buffer = vec![0u8; protocol::limits::MAX_DOWNLOAD_CHUNK_LEN];
    while offset < size {
        let read = reader.read(&mut buffer).context("reading the download")?;
        if read == 0 {
            bail!("the download shrank to {offset} bytes while it was sent");
        }
        // A file that grew after the size check is sent as announced; the rest is cut.
        let read = read.min((size - offset) as usize);
        hasher.update(&buffer[..read]);
        let chunk = DownloadChunk {
            download_id,
            offset,
            data: buffer[..read].to_vec(),
        };
        push(&sink, protocol::encode_download_chunk(&chunk), stop).await?;
        offset += read as u64;
    }
    let end = AgentControl::DownloadEnd {
        download_id,
        sha256: hex::encode(hasher.finalize()),
    };
    push(&sink, protocol::encode_agent_control(&end), stop).await?;
    tracing::info!(
        download.id = download_id,
        bytes = size,
        "Download sent to the broker"
    );
    Ok(())
}

async fn wait_for_broker(hub: &Hub, stop: &CancellationToken) -> anyhow::Result<Outbound> {
    let deadline = tokio::time::Instant::now() + ATTACH_TIMEOUT;
    loop {
        if let Some(sink) = hub.sink() {
            return Ok(sink);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no broker connection within {ATTACH_TIMEOUT:?}");
        }
        tokio::select! {
            _ = stop.cancelled() => bail!("the agent is stopping"),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Queues one frame once the channel has room beyond the reserved slots.
async fn push(sink: &Outbound, frame: Vec<u8>, stop: &CancellationToken) -> anyhow::Result<()> {
    while sink.capacity() <= RESERVED_SLOTS {
        if sink.is_closed() {
            bail!("the broker connection closed during the download");
        }
        tokio::select! {
            _ = stop.cancelled() => bail!("the agent is stopping"),
            _ = tokio::time::sleep(ROOM_POLL) => {}
        }
    }
    sink.try_send(frame)
        .map_err(|_| anyhow::anyhow!("the broker connection closed during the download"))
}

/// Cuts a name to the protocol's limit at a character boundary. An empty name becomes
/// `download`.
fn truncate_name(name: &str) -> String {
    let max = protocol::limits::MAX_FILE_NAME_LEN;
    let mut end = name.len().min(max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    match &name[..end] {
        "" => "download".to_owned(),
        cut => cut.to_owned(),
    }
}

fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(error = %error, path = %path.display(), "Removing a download failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_at_character_boundaries() {
        assert_eq!(truncate_name(""), "download");
        assert_eq!(truncate_name("a.pdf"), "a.pdf");
        let long = "€".repeat(200);
        let cut = truncate_name(&long);
        assert!(cut.len() <= protocol::limits::MAX_FILE_NAME_LEN);
        assert!(cut.chars().all(|c| c == '€'));
    }

    #[test]
    fn finished_files_skip_partials_and_links() {
        let dir = std::env::temp_dir().join(format!("strongroom-downloads-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in ["b.pdf", "a b.pdf", "Unconfirmed 1.crdownload", ".hidden"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        let names: Vec<String> = finished_files(&dir)
            .into_iter()
            .map(|file| file.name)
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["a b.pdf", "b.pdf"]);
    }

    #[test]
    fn announced_name_falls_back_to_the_url() {
        let suggested = json!({ "suggestedFilename": "a.pdf", "url": "https://b/c.bin" });
        assert_eq!(announced_name(&suggested), "a.pdf");
        let empty = json!({ "suggestedFilename": "", "url": "https://b/x/big.bin?y=1#z" });
        assert_eq!(announced_name(&empty), "big.bin");
        assert_eq!(announced_name(&json!({})), "");
    }

    #[test]
    fn progress_size_takes_the_larger_count() {
        let params = json!({ "totalBytes": 10.0, "receivedBytes": 25.0 });
        assert_eq!(progress_size(&params), 25);
        assert_eq!(progress_size(&json!({ "totalBytes": -1.0 })), 0);
    }
}
