//! Downloads delivered from a workspace to the person through the portal.
//!
//! Where a site's `policy.downloads` is `deliver`, the workspace's Chromium saves files
//! into a tmpfs and the agent sends each finished file over the agent connection
//! ([`receive`]). The broker treats every byte and name from the agent as hostile. It
//! reads the site's policy from its own database and cleans the name. It checks sizes
//! and chunk order against the announcement, and compares its own SHA-256 with the
//! agent's. A file that passes is stored encrypted ([`sealed`]) under
//! `DATA_DIR/downloads` with a row in the `downloads` table, and audited as
//! `download.delivered`. Any other outcome is audited as `download.refused`.
//!
//! Only the session's owner lists and fetches the file ([`portal`]); each fetch is
//! audited as `download.fetched`. A file is kept for the site's
//! `recording_retention_days` and then deleted by [`spawn_retention`]
//! (`download.deleted`).

pub mod portal;
pub mod receive;
pub mod sealed;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use uuid::Uuid;

use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::tasks::TaskRegistry;
pub use receive::DownloadReceiver;
pub use sealed::DownloadKey;
pub use store::DownloadRecord;

/// Interval of the retention sweep.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// Rows the retention sweep deletes per batch.
const RETENTION_BATCH: i64 = 200;

/// The download store: the encrypted files, their rows and the size cap.
#[derive(Clone)]
pub struct Downloads {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    key: DownloadKey,
    audit: AuditLog,
    max_file_bytes: u64,
}

impl Downloads {
    /// Opens the store under `data_dir/downloads`, creating the directory (mode 0700)
    /// and the key file when missing, and removes files left incomplete by a crash.
    pub fn open(
        data_dir: &Path,
        audit: AuditLog,
        max_file_bytes: u64,
    ) -> anyhow::Result<Downloads> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = data_dir.join("downloads");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| {
                format!(
                    "cannot create the download directory {}; check that the data directory is writable",
                    dir.display()
                )
            })?;
        let key = DownloadKey::load_or_create(data_dir)?;
        remove_partial_files(&dir);
        Ok(Downloads {
            inner: Arc::new(Inner {
                dir,
                key,
                audit,
                max_file_bytes,
            }),
        })
    }

    /// Largest file accepted, in bytes.
    pub fn max_file_bytes(&self) -> u64 {
        self.inner.max_file_bytes
    }

    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    pub(crate) fn key(&self) -> &DownloadKey {
        &self.inner.key
    }

    fn path(&self, id: Uuid) -> PathBuf {
        self.inner.dir.join(id.to_string())
    }

    fn partial_path(&self, id: Uuid) -> PathBuf {
        self.inner.dir.join(format!("{id}.part"))
    }

    /// Decrypts a stored file and checks it against its row's size and SHA-256.
    pub async fn read(&self, record: &DownloadRecord) -> anyhow::Result<Vec<u8>> {
        let this = self.clone();
        let record = record.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = sealed::open(this.key(), &this.path(record.id), record.id, record.size)?;
            use sha2::Digest;
            let digest = hex::encode(sha2::Sha256::digest(&bytes));
            anyhow::ensure!(
                bytes.len() as u64 == record.size && digest == record.sha256,
                "download {} does not match its recorded size and SHA-256",
                record.id
            );
            Ok(bytes)
        })
        .await
        .context("the download read task failed")?
    }

    /// Deletes every file whose retention ended, with its row, and audits each one.
    /// Returns how many were deleted.
    pub async fn delete_expired(&self) -> anyhow::Result<usize> {
        let db = self.inner.audit.database();
        let mut deleted = 0;
        loop {
            let expired = store::list_expired(db, Utc::now(), RETENTION_BATCH).await?;
            if expired.is_empty() {
                return Ok(deleted);
            }
            for record in expired {
                remove_file(&self.path(record.id))?;
                store::delete(db, record.id).await?;
                let event = EventBuilder::new(Actor::System("retention"), Action::DownloadDeleted)
                    .session(record.session_id)
                    .target(format!("download:{}", record.id))
                    .detail("owner", record.user_id.clone())
                    .detail("site", record.site.clone())
                    .detail("name", record.name.clone())
                    .detail("sha256", record.sha256.clone())
                    .build();
                self.inner.audit.append(event).await?;
                deleted += 1;
            }
        }
    }
}

/// Runs [`Downloads::delete_expired`] at start and then every hour until shutdown.
pub fn spawn_retention(downloads: Downloads, tasks: &TaskRegistry) {
    let stop = tasks.token();
    tasks.spawn("download-retention", async move {
        loop {
            match downloads.delete_expired().await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "Deleted downloads past their retention"),
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "Download retention failed")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(RETENTION_INTERVAL) => {}
            }
        }
    });
}

fn remove_file(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot delete {}", path.display())),
    }
}

/// Removes `*.part` files: transfers that a stopped broker never finished.
fn remove_partial_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path
            .extension()
            .is_some_and(|extension| extension == "part")
            && let Err(error) = std::fs::remove_file(&path)
        {
            tracing::warn!(error = %error, path = %path.display(), "Cannot remove an incomplete download");
        }
    }
}

/// Cleans a file name from the workspace. It keeps the part after the last `/` or `\`,
/// drops control and bidirectional formatting characters, and trims spaces and dots at
/// both ends. Then it cuts the name to 255 bytes at a character boundary. An empty
/// result becomes `download`.
pub fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let visible: String = base
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .collect();
    let trimmed = visible.trim_matches(|c: char| c.is_whitespace() || c == '.');
    let mut end = trimmed.len().min(protocol::limits::MAX_FILE_NAME_LEN);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    match trimmed[..end].trim_end() {
        "" => "download".to_owned(),
        cleaned => cleaned.to_owned(),
    }
}

/// Characters that reorder the display of text, so that `invoice`, U+202E and
/// `fdp.exe` would read as `invoiceexe.pdf`.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::clean_name;

    #[test]
    fn names_lose_paths_and_control_characters() {
        let cases = [
            ("statement.pdf", "statement.pdf"),
            ("../../etc/passwd", "passwd"),
            ("C:\\Users\\x\\evil.exe", "evil.exe"),
            ("a\u{0}b\nc\r\u{1b}[31m.txt", "abc[31m.txt"),
            ("invoice\u{202e}fdp.exe", "invoicefdp.exe"),
            ("  ..hidden.  ", "hidden"),
            ("..", "download"),
            ("/", "download"),
            ("", "download"),
            ("Kontoauszug März €.pdf", "Kontoauszug März €.pdf"),
        ];
        for (input, expected) in cases {
            assert_eq!(clean_name(input), expected, "{input:?}");
        }
    }

    #[test]
    fn long_name_is_cut_at_character_boundary() {
        let cleaned = clean_name(&"ä".repeat(300));
        assert!(cleaned.len() <= 255);
        assert!(cleaned.chars().all(|c| c == 'ä'));
    }
}
