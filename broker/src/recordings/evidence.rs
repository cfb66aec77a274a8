//! Evidence export: a WebM file of a verified recording plus a manifest of its segment
//! hashes, signed with the broker's Ed25519 export key, and the offline check of such
//! an export against a pinned public key.
//!
//! An export directory contains `recording.webm`, `manifest.json` and `manifest.sig`
//! (the hex-encoded Ed25519 signature of the exact bytes of `manifest.json`). The
//! manifest names the WebM file's SHA-256, so the signature covers the video too.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::catalogue;
use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::config::Config;

pub const VIDEO_FILE: &str = "recording.webm";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// The signing key's file under the data directory: 32 secret bytes, mode 0600.
pub const SIGNING_KEY_FILE: &str = "export-signing.key";
const MANIFEST_FORMAT: &str = "strongroom-evidence-v1";

/// The signed statement of an export: the recording, its segment hashes and the video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub recording_id: Uuid,
    pub session_id: Option<Uuid>,
    pub person: Option<String>,
    pub site: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub exported_at: DateTime<Utc>,
    pub video_file: String,
    /// SHA-256 of the WebM file, hex-encoded.
    pub video_sha256: String,
    pub video_bytes: u64,
    pub duration_ms: u64,
    /// The stored segments' SHA-256 hashes in index order, as the audit trail has them.
    pub segment_sha256: Vec<String>,
    /// The Ed25519 public key that signed, hex-encoded, so a reader can tell which key
    /// to pin; verification never trusts it.
    pub public_key: String,
}

/// Loads the export signing key, creating it on first use.
pub fn signing_key(config: &Config) -> anyhow::Result<SigningKey> {
    let path = config.data_dir.join(SIGNING_KEY_FILE);
    let secret =
        crate::keyfile::load_or_create(&path, "export signing", crate::keyfile::KeyKind::Signing)?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes the export signing key's public half to `output`, hex-encoded on one line.
pub fn write_public_key(config: &Config, output: &Path) -> anyhow::Result<String> {
    let public = hex::encode(signing_key(config)?.verifying_key().to_bytes());
    std::fs::write(output, format!("{public}\n"))
        .with_context(|| format!("cannot write the public key to {}", output.display()))?;
    Ok(public)
}

/// Exports recording `id` into `dir`, which must not exist or be empty. Only a recording
/// whose every segment matches the audit trail is exported.
///
/// A failed export removes the files it wrote and the directory if it created it, so
/// nothing is left that looks like an export, and is audited as
/// `recording.export.failed` with the reason.
pub async fn export(
    config: &Config,
    audit: &AuditLog,
    id: Uuid,
    dir: &Path,
) -> anyhow::Result<Manifest> {
    let created = prepare_dir(dir)?;
    let result = export_into(config, audit, id, dir).await;
    let Err(error) = result else {
        return result;
    };

    remove_partial_export(dir, created);
    let event = EventBuilder::new(Actor::System("cli"), Action::RecordingExportFailed)
        .target(format!("recording:{id}"))
        .outcome(crate::audit::Outcome::Failure)
        .detail("directory", dir.display().to_string())
        .detail("reason", format!("{error:#}"))
        .build();
    if let Err(audit_error) = audit.append(event).await {
        tracing::error!(recording.id = %id, error = %audit_error, "Cannot audit a failed export");
    }
    Err(error)
}

/// Removes what a failed export wrote into `dir`, and `dir` itself when `created`.
fn remove_partial_export(dir: &Path, created: bool) {
    for name in [VIDEO_FILE, MANIFEST_FILE, SIGNATURE_FILE] {
        let path = dir.join(name);
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %error, "Cannot remove a file of a failed export");
        }
    }
    if created && let Err(error) = std::fs::remove_dir(dir) {
        tracing::warn!(path = %dir.display(), error = %error, "Cannot remove the directory of a failed export");
    }
}

async fn export_into(
    config: &Config,
    audit: &AuditLog,
    id: Uuid,
    dir: &Path,
) -> anyhow::Result<Manifest> {
    let key = signing_key(config)?;
    let video = dir.join(VIDEO_FILE);
    let summary = super::export(config, audit, id, &video).await?;
    std::fs::set_permissions(&video, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict access to {}", video.display()))?;
    let hashes = super::segment_hashes(audit, id).await?;
    let entry = catalogue::get(audit.database(), id).await?;

    let bytes = std::fs::read(&video)
        .with_context(|| format!("cannot read the exported video {}", video.display()))?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_owned(),
        recording_id: id,
        session_id: entry.as_ref().map(|e| e.session_id),
        person: entry.as_ref().map(|e| e.user_id.clone()),
        site: entry.as_ref().map(|e| e.site.clone()),
        started_at: entry.as_ref().map(|e| e.started_at),
        exported_at: Utc::now(),
        video_file: VIDEO_FILE.to_owned(),
        video_sha256: hex::encode(Sha256::digest(&bytes)),
        video_bytes: bytes.len() as u64,
        duration_ms: summary.duration.as_millis() as u64,
        segment_sha256: hashes.iter().map(hex::encode).collect(),
        public_key: hex::encode(key.verifying_key().to_bytes()),
    };
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).context("cannot encode the manifest")?;
    let signature = key.sign(&manifest_bytes);
    write_file(&dir.join(MANIFEST_FILE), &manifest_bytes)?;
    write_file(
        &dir.join(SIGNATURE_FILE),
        format!("{}\n", hex::encode(signature.to_bytes())).as_bytes(),
    )?;

    let mut event = EventBuilder::new(Actor::System("cli"), Action::RecordingExported)
        .target(format!("recording:{id}"))
        .detail("video_sha256", manifest.video_sha256.clone())
        .detail(
            "manifest_sha256",
            hex::encode(Sha256::digest(&manifest_bytes)),
        )
        .detail("directory", dir.display().to_string());
    if let Some(entry) = &entry {
        event = event.session(entry.session_id);
    }
    audit.append(event.build()).await?;
    Ok(manifest)
}

/// Checks that `dir` is empty or creates it. Returns whether it was created.
fn prepare_dir(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            ensure!(
                entries.next().is_none(),
                "export directory {} is not empty; choose a new or empty directory",
                dir.display()
            );
            Ok(false)
        }
        // The evidence shows a banking session, so only its owner may read it.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create the export directory {}", dir.display()))?;
            Ok(true)
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// Writes a new file that only its owner may read.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a public key file: 64 hex digits, surrounding whitespace allowed.
pub fn read_public_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the public key file {}", path.display()))?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| {
            format!(
                "{} is not an Ed25519 public key; expected 64 hex digits as written by `strongroom recording public-key`",
                path.display()
            )
        })?;
    VerifyingKey::from_bytes(&bytes)
        .with_context(|| format!("{} is not a valid Ed25519 public key", path.display()))
}

/// Checks an export directory offline: the manifest's signature against `public_key`,
/// then the video file against the manifest's hash and size.
pub fn verify(dir: &Path, public_key: &VerifyingKey) -> anyhow::Result<Manifest> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest_bytes = std::fs::read(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let signature_path = dir.join(SIGNATURE_FILE);
    let signature_text = std::fs::read_to_string(&signature_path)
        .with_context(|| format!("cannot read {}", signature_path.display()))?;
    let signature: [u8; 64] = hex::decode(signature_text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| {
            format!(
                "{} does not hold a hex-encoded Ed25519 signature",
                signature_path.display()
            )
        })?;
    if public_key
        .verify_strict(&manifest_bytes, &Signature::from_bytes(&signature))
        .is_err()
    {
        bail!(
            "the signature in {} does not match {} under the given public key; the manifest was changed or signed by another key",
            signature_path.display(),
            manifest_path.display()
        );
    }

    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("{} is not a Strongroom manifest", manifest_path.display()))?;
    ensure!(
        manifest.format == MANIFEST_FORMAT,
        "unsupported manifest format {:?}",
        manifest.format
    );
    ensure!(
        Path::new(&manifest.video_file).file_name() == Some(manifest.video_file.as_ref()),
        "the manifest names an invalid video file {:?}",
        manifest.video_file
    );
    let video: PathBuf = dir.join(&manifest.video_file);
    let bytes =
        std::fs::read(&video).with_context(|| format!("cannot read {}", video.display()))?;
    let hash = hex::encode(Sha256::digest(&bytes));
    ensure!(
        hash == manifest.video_sha256 && bytes.len() as u64 == manifest.video_bytes,
        "{} does not match the signed manifest: SHA-256 {hash}, {} bytes; the manifest has {}, {} bytes",
        video.display(),
        bytes.len(),
        manifest.video_sha256,
        manifest.video_bytes
    );
    Ok(manifest)
}
