//! The download messages of one agent connection.
//!
//! The agent is hostile, so a file is accepted only when all of these hold:
//! - the session's site delivers downloads, as the broker's own database records;
//! - its announced size is within the cap;
//! - its chunks arrive in order, without gaps or excess;
//! - the SHA-256 the broker computed equals the agent's.
//!
//! Any other file is rejected: the rejection is audited and its written bytes removed.
//! The session continues.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use chrono::Utc;
use protocol::DownloadChunk;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::sealed::SealedWriter;
use super::store::{self, DownloadRecord};
use super::{Downloads, clean_name, remove_file};
use crate::audit::{Action, Actor, EventBuilder, Outcome};
use crate::sites::DownloadPolicy;

/// Transfers one connection may have open at once.
const MAX_OPEN_TRANSFERS: usize = 4;
/// Refused ids remembered so that their remaining chunks are dropped quietly.
const MAX_REFUSED_IDS: usize = 1024;

/// Days a file is kept when the session's site is gone from the database.
const FALLBACK_RETENTION_DAYS: i64 = 90;

/// Owner, site and download policy of a session, read once from the database.
#[derive(Debug, Clone)]
struct Owner {
    user_id: String,
    site: String,
    policy: DownloadPolicy,
    retention_days: i64,
}

struct Transfer {
    id: Uuid,
    name: String,
    size: u64,
    received: u64,
    hasher: Sha256,
    writer: Option<SealedWriter>,
}

/// Download state of one agent connection.
pub struct DownloadReceiver {
    downloads: Option<Downloads>,
    session_id: Uuid,
    owner: Option<Owner>,
    open: HashMap<u64, Transfer>,
    refused: HashSet<u64>,
}

/// Reason and outcome of a refused file, as audited and logged.
struct Refusal {
    name: String,
    size: Option<u64>,
    reason: String,
    outcome: Outcome,
}

impl DownloadReceiver {
    /// `downloads` is `None` where the broker has no download store; every file is then
    /// refused.
    pub fn new(downloads: Option<Downloads>, session_id: Uuid) -> DownloadReceiver {
        DownloadReceiver {
            downloads,
            session_id,
            owner: None,
            open: HashMap::new(),
            refused: HashSet::new(),
        }
    }

    /// Handles `download_start`.
    pub async fn start(&mut self, download_id: u64, name: &str, size: u64) {
        let name = clean_name(name);
        if self.open.contains_key(&download_id) || self.refused.contains(&download_id) {
            self.refuse(
                download_id,
                Refusal::failure(name, Some(size), "the agent reused a download id"),
            )
            .await;
            return;
        }
        let Some(downloads) = self.downloads.clone() else {
            self.refuse(
                download_id,
                Refusal::denied(name, Some(size), "this broker has no download store"),
            )
            .await;
            return;
        };
        let owner = match self.owner().await {
            Ok(owner) => owner,
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "Cannot read the session's download policy"
                );
                self.refuse(
                    download_id,
                    Refusal::failure(name, Some(size), "the session's site could not be read"),
                )
                .await;
                return;
            }
        };
        if owner.policy != DownloadPolicy::Deliver {
            self.refuse(
                download_id,
                Refusal::denied(name, Some(size), "the site's download policy is blocked"),
            )
            .await;
            return;
        }
        if size > downloads.max_file_bytes() {
            let reason = format!(
                "the file is larger than the maximum of {} bytes (sessions.download_max_file_bytes)",
                downloads.max_file_bytes()
            );
            self.refuse(download_id, Refusal::denied(name, Some(size), reason))
                .await;
            return;
        }
        if self.open.len() >= MAX_OPEN_TRANSFERS {
            let reason = format!("more than {MAX_OPEN_TRANSFERS} downloads were open at once");
            self.refuse(download_id, Refusal::failure(name, Some(size), reason))
                .await;
            return;
        }

        let id = Uuid::new_v4();
        let writer = match SealedWriter::create(&downloads.partial_path(id), id) {
            Ok(writer) => writer,
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "Cannot create a download file"
                );
                self.refuse(
                    download_id,
                    Refusal::failure(name, Some(size), "the broker could not store the file"),
                )
                .await;
                return;
            }
        };
        self.open.insert(
            download_id,
            Transfer {
                id,
                name,
                size,
                received: 0,
                hasher: Sha256::new(),
                writer: Some(writer),
            },
        );
    }

    /// Handles one chunk frame.
    pub async fn chunk(&mut self, chunk: DownloadChunk) {
        if self.refused.contains(&chunk.download_id) {
            return;
        }
        let Some(transfer) = self.open.get_mut(&chunk.download_id) else {
            tracing::warn!(
                download.id = chunk.download_id,
                "Dropped a chunk of an unknown download"
            );
            return;
        };
        let problem = if chunk.offset != transfer.received {
            Some(format!(
                "a chunk starts at byte {} where byte {} was expected",
                chunk.offset, transfer.received
            ))
        } else if transfer.received + chunk.data.len() as u64 > transfer.size {
            Some(format!(
                "the chunks exceed the announced size of {} bytes",
                transfer.size
            ))
        } else {
            None
        };
        if let Some(reason) = problem {
            self.fail_open(chunk.download_id, reason).await;
            return;
        }

        transfer.hasher.update(&chunk.data);
        transfer.received += chunk.data.len() as u64;
        let last = transfer.received == transfer.size;
        let key = self.downloads.as_ref().map(Downloads::key);
        let written = match (transfer.writer.as_mut(), key) {
            (Some(writer), Some(key)) => writer.append(key, &chunk.data, last),
            _ => Err(anyhow::anyhow!("the download file is closed")),
        };
        if let Err(error) = written {
            tracing::error!(
                error = format!("{error:#}"),
                "Cannot write a download chunk"
            );
            self.fail_open(
                chunk.download_id,
                "the broker could not store the file".to_owned(),
            )
            .await;
        }
    }

    /// Handles `download_end`: checks completeness and the hash, then stores the row
    /// and audits the delivery.
    pub async fn end(&mut self, download_id: u64, sha256: &str) {
        if self.refused.contains(&download_id) {
            return;
        }
        let Some(mut transfer) = self.open.remove(&download_id) else {
            tracing::warn!(
                download.id = download_id,
                "Dropped the end of an unknown download"
            );
            return;
        };
        let Some(downloads) = self.downloads.clone() else {
            return;
        };
        let partial = downloads.partial_path(transfer.id);
        if transfer.received != transfer.size {
            let reason = format!(
                "the agent sent {} of {} announced bytes",
                transfer.received, transfer.size
            );
            self.discard(download_id, transfer, Refusal::failure_owned(reason))
                .await;
            return;
        }
        let digest = hex::encode(std::mem::take(&mut transfer.hasher).finalize());
        if digest != sha256 {
            let reason = "the file's SHA-256 differs from the agent's".to_owned();
            self.discard(download_id, transfer, Refusal::failure_owned(reason))
                .await;
            return;
        }

        let Some(owner) = self.owner.clone() else {
            return;
        };
        let stored = async {
            let mut writer = transfer
                .writer
                .take()
                .context("the download file is closed")?;
            if transfer.size == 0 {
                writer.append(downloads.key(), &[], true)?;
            }
            let final_path = downloads.path(transfer.id);
            tokio::task::spawn_blocking(move || {
                writer.finish()?;
                std::fs::rename(&partial, &final_path)
                    .context("cannot move the finished download into place")
            })
            .await
            .context("the download store task failed")??;
            let now = Utc::now();
            let record = DownloadRecord {
                id: transfer.id,
                session_id: self.session_id,
                user_id: owner.user_id.clone(),
                site: owner.site.clone(),
                name: transfer.name.clone(),
                size: transfer.size,
                sha256: digest.clone(),
                created_at: now,
                expires_at: now + chrono::Duration::days(owner.retention_days),
            };
            store::insert(downloads.audit().database(), &record).await?;
            let event = EventBuilder::new(
                Actor::Person(owner.user_id.clone()),
                Action::DownloadDelivered,
            )
            .session(self.session_id)
            .target(format!("download:{}", record.id))
            .detail("site", owner.site.clone())
            .detail("name", record.name.clone())
            .detail("size", record.size)
            .detail("sha256", record.sha256.clone())
            .build();
            if let Err(error) = downloads.audit().append(event).await {
                // A file whose delivery is not in the audit trail is not offered.
                store::delete(downloads.audit().database(), record.id)
                    .await
                    .ok();
                return Err(error.context("cannot record the delivery in the audit trail"));
            }
            anyhow::Ok(record)
        }
        .await;
        match stored {
            Ok(record) => {
                tracing::info!(download.id = %record.id, bytes = record.size, "Delivered a download to the person");
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "Cannot store a finished download"
                );
                remove_file(&downloads.partial_path(transfer.id)).ok();
                remove_file(&downloads.path(transfer.id)).ok();
                let refusal = Refusal::failure(
                    transfer.name.clone(),
                    Some(transfer.size),
                    "the broker could not store the file",
                );
                self.refuse(download_id, refusal).await;
            }
        }
    }

    /// Handles `download_refused` from the agent.
    pub async fn refused_by_agent(&mut self, name: &str, size: Option<u64>, reason: &str) {
        let refusal = Refusal::denied(
            clean_name(name),
            size,
            format!("the workspace refused it: {reason}"),
        );
        self.audit_refusal(refusal).await;
    }

    /// Refuses every transfer still open, because the connection ended.
    pub async fn abort_open(&mut self) {
        let open: Vec<u64> = self.open.keys().copied().collect();
        for download_id in open {
            self.fail_open(
                download_id,
                "the session ended before the file was complete".to_owned(),
            )
            .await;
        }
    }

    async fn fail_open(&mut self, download_id: u64, reason: String) {
        if let Some(transfer) = self.open.remove(&download_id) {
            self.discard(download_id, transfer, Refusal::failure_owned(reason))
                .await;
        }
    }

    /// Removes a transfer's partial file and refuses it under its name and size.
    async fn discard(&mut self, download_id: u64, mut transfer: Transfer, mut refusal: Refusal) {
        drop(transfer.writer.take());
        if let Some(downloads) = &self.downloads
            && let Err(error) = remove_file(&downloads.partial_path(transfer.id))
        {
            tracing::warn!(
                error = format!("{error:#}"),
                "Cannot remove a refused download"
            );
        }
        refusal.name = transfer.name;
        refusal.size = Some(transfer.size);
        self.refuse(download_id, refusal).await;
    }

    async fn refuse(&mut self, download_id: u64, refusal: Refusal) {
        if self.refused.len() >= MAX_REFUSED_IDS {
            self.refused.clear();
        }
        self.refused.insert(download_id);
        self.audit_refusal(refusal).await;
    }

    async fn audit_refusal(&mut self, refusal: Refusal) {
        tracing::warn!(
            download.name = refusal.name.as_str(),
            download.size = refusal.size,
            reason = refusal.reason.as_str(),
            "Refused a download from the workspace"
        );
        let owner = self.owner().await.ok();
        let Some(downloads) = &self.downloads else {
            return;
        };
        let actor = match &owner {
            Some(owner) => Actor::Person(owner.user_id.clone()),
            None => Actor::System("agent"),
        };
        let mut event = EventBuilder::new(actor, Action::DownloadRefused)
            .session(self.session_id)
            .outcome(refusal.outcome)
            .detail("name", refusal.name)
            .detail("reason", refusal.reason);
        if let Some(size) = refusal.size {
            event = event.detail("size", size);
        }
        if let Some(owner) = &owner {
            event = event.detail("site", owner.site.clone());
        }
        if let Err(error) = downloads.audit().append(event.build()).await {
            tracing::error!(
                error = format!("{error:#}"),
                "Cannot record a refused download in the audit trail"
            );
        }
    }

    /// Reads the session's owner, site and the site's download policy once.
    async fn owner(&mut self) -> anyhow::Result<Owner> {
        if let Some(owner) = &self.owner {
            return Ok(owner.clone());
        }
        let downloads = self
            .downloads
            .as_ref()
            .context("this broker has no download store")?;
        let db = downloads.audit().database();
        let session = crate::sessions::store::get(db, self.session_id)
            .await?
            .with_context(|| format!("session {} is not in the database", self.session_id))?;
        let site = crate::sites::get(db, &session.site).await?;
        let owner = Owner {
            user_id: session.user_id,
            policy: site
                .as_ref()
                .map(|site| site.policy.downloads)
                .unwrap_or_default(),
            retention_days: site
                .as_ref()
                .map(|site| i64::from(site.recording_retention_days))
                .unwrap_or(FALLBACK_RETENTION_DAYS),
            site: session.site,
        };
        self.owner = Some(owner.clone());
        Ok(owner)
    }
}

impl Refusal {
    fn denied(name: String, size: Option<u64>, reason: impl Into<String>) -> Refusal {
        Refusal {
            name,
            size,
            reason: reason.into(),
            outcome: Outcome::Denied,
        }
    }

    fn failure(name: String, size: Option<u64>, reason: impl Into<String>) -> Refusal {
        Refusal {
            name,
            size,
            reason: reason.into(),
            outcome: Outcome::Failure,
        }
    }

    /// Builds a failure whose name and size [`DownloadReceiver::discard`] fills in.
    fn failure_owned(reason: String) -> Refusal {
        Refusal::failure(String::new(), None, reason)
    }
}
