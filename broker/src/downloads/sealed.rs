//! Delivered files encrypted at rest.
//!
//! The key is 32 random bytes in `DATA_DIR/downloads.key` (mode 0600, created on first
//! use, like the credential and TOTP keys). A file is the header `SRDL` and a version
//! byte, then one record per chunk: the ciphertext length (`u32` big-endian), a fresh
//! 96-bit nonce and the AES-256-GCM ciphertext with its tag. Each record's associated
//! data names the file id, the record index and whether it is the last record. So a
//! record moved to another file or position, a dropped record, or a cut file fails to
//! open instead of yielding other bytes.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context, bail};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::keyfile::KEY_LEN;

/// File name of the key under the data directory.
pub const KEY_FILE_NAME: &str = "downloads.key";

const MAGIC: &[u8; 4] = b"SRDL";
const FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const AAD_PREFIX: &[u8] = b"strongroom download v1";
/// Largest plaintext of one record: one protocol chunk.
const MAX_RECORD_PLAINTEXT: usize = protocol::limits::MAX_DOWNLOAD_CHUNK_LEN;

/// The download encryption key. Zeroized on drop; `Debug` shows only the file.
pub struct DownloadKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    path: PathBuf,
}

impl fmt::Debug for DownloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownloadKey")
            .field("path", &self.path)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl DownloadKey {
    /// Reads the key file under `data_dir`, creating it when it does not exist.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<DownloadKey> {
        let path = data_dir.join(KEY_FILE_NAME);
        let key =
            crate::keyfile::load_or_create(&path, "download", crate::keyfile::KeyKind::Encryption)?;
        Ok(DownloadKey { key, path })
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&(*self.key).into())
    }
}

fn associated_data(file_id: Uuid, index: u64, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + 1 + 16 + 8 + 1);
    aad.extend_from_slice(AAD_PREFIX);
    aad.push(0);
    aad.extend_from_slice(file_id.as_bytes());
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

/// Writes one sealed file, record by record.
pub struct SealedWriter {
    file: std::fs::File,
    file_id: Uuid,
    next_index: u64,
}

impl SealedWriter {
    /// Creates `path` (mode 0600; it must not exist) and writes the header.
    pub fn create(path: &Path, file_id: Uuid) -> anyhow::Result<SealedWriter> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(MAGIC)?;
        file.write_all(&[FORMAT_VERSION])?;
        Ok(SealedWriter {
            file,
            file_id,
            next_index: 0,
        })
    }

    /// Encrypts and appends one record of at most one protocol chunk.
    pub fn append(
        &mut self,
        key: &DownloadKey,
        plaintext: &[u8],
        last: bool,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            plaintext.len() <= MAX_RECORD_PLAINTEXT,
            "a record of {} bytes exceeds {MAX_RECORD_PLAINTEXT}",
            plaintext.len()
        );
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = associated_data(self.file_id, self.next_index, last);
        let ciphertext = key
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("download encryption failed"))?;
        let length = u32::try_from(ciphertext.len()).expect("a record is below 4 GiB");
        self.file.write_all(&length.to_be_bytes())?;
        self.file.write_all(&nonce)?;
        self.file.write_all(&ciphertext)?;
        self.next_index += 1;
        Ok(())
    }

    /// Flushes the file to disk.
    pub fn finish(self) -> anyhow::Result<()> {
        self.file
            .sync_all()
            .context("cannot flush the download file")
    }
}

/// Reads and decrypts a whole sealed file. Fails on another key or file id, a changed,
/// reordered or missing record, or bytes after the last record.
pub fn open(
    key: &DownloadKey,
    path: &Path,
    file_id: Uuid,
    max_len: u64,
) -> anyhow::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the download file {}", path.display()))?;
    let mut header = [0u8; 5];
    file.read_exact(&mut header)
        .context("the download file has no header")?;
    if &header[..4] != MAGIC || header[4] != FORMAT_VERSION {
        bail!(
            "{} is not a version {FORMAT_VERSION} download file",
            path.display()
        );
    }

    let cipher = key.cipher();
    let mut plaintext = Vec::new();
    let mut index = 0u64;
    loop {
        let mut length = [0u8; 4];
        match file.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                bail!("download file {file_id} ends before its last record")
            }
            Err(error) => return Err(error).context("cannot read the download file"),
        }
        let length = u32::from_be_bytes(length) as usize;
        if !(TAG_LEN..=MAX_RECORD_PLAINTEXT + TAG_LEN).contains(&length) {
            bail!("download file {file_id} has a record of invalid length {length}");
        }
        let mut nonce = [0u8; NONCE_LEN];
        let mut ciphertext = vec![0u8; length];
        file.read_exact(&mut nonce)
            .and_then(|()| file.read_exact(&mut ciphertext))
            .with_context(|| format!("download file {file_id} is cut inside record {index}"))?;

        let mut last = false;
        let mut opened = None;
        for candidate in [false, true] {
            let aad = associated_data(file_id, index, candidate);
            if let Ok(bytes) = cipher.decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            ) {
                last = candidate;
                opened = Some(bytes);
                break;
            }
        }
        let Some(bytes) = opened else {
            bail!("record {index} of download file {file_id} fails authentication");
        };
        if plaintext.len() as u64 + bytes.len() as u64 > max_len {
            bail!("download file {file_id} contains more than the {max_len} bytes recorded; the file is damaged or was replaced");
        }
        plaintext.extend_from_slice(&bytes);
        index += 1;
        if last {
            break;
        }
    }
    let mut rest = [0u8; 1];
    if file.read(&mut rest)? != 0 {
        bail!("download file {file_id} has bytes after its last record");
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, key: &DownloadKey, id: Uuid, records: &[(&[u8], bool)]) -> PathBuf {
        let path = dir.join(id.to_string());
        let mut writer = SealedWriter::create(&path, id).unwrap();
        for (bytes, last) in records {
            writer.append(key, bytes, *last).unwrap();
        }
        writer.finish().unwrap();
        path
    }

    #[test]
    fn sealed_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let key = DownloadKey::load_or_create(dir.path()).unwrap();
        let id = Uuid::new_v4();
        let path = write(
            dir.path(),
            &key,
            id,
            &[(b"hello ", false), (b"world", true)],
        );
        assert_eq!(open(&key, &path, id, 11).unwrap(), b"hello world");
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(5).any(|window| window == b"hello"));
    }

    #[test]
    fn empty_file_has_one_empty_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let key = DownloadKey::load_or_create(dir.path()).unwrap();
        let id = Uuid::new_v4();
        let path = write(dir.path(), &key, id, &[(b"", true)]);
        assert_eq!(open(&key, &path, id, 0).unwrap(), b"");
    }

    #[test]
    fn tampering_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let key = DownloadKey::load_or_create(dir.path()).unwrap();
        let id = Uuid::new_v4();
        let path = write(dir.path(), &key, id, &[(b"abc", false), (b"def", true)]);

        assert!(
            open(&key, &path, Uuid::new_v4(), 6).is_err(),
            "other file id"
        );
        assert!(open(&key, &path, id, 5).is_err(), "more than recorded");

        let raw = std::fs::read(&path).unwrap();
        let mut flipped = raw.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(open(&key, &path, id, 6).is_err(), "changed byte");

        let first_record = 5 + 4 + NONCE_LEN + 3 + TAG_LEN;
        std::fs::write(&path, &raw[..first_record]).unwrap();
        assert!(open(&key, &path, id, 6).is_err(), "cut after a record");

        let mut extended = raw.clone();
        extended.push(0);
        std::fs::write(&path, &extended).unwrap();
        assert!(open(&key, &path, id, 6).is_err(), "trailing bytes");

        let mut plain = b"SRDL\x01".to_vec();
        plain.extend_from_slice(b"abcdef");
        std::fs::write(&path, &plain).unwrap();
        assert!(open(&key, &path, id, 6).is_err(), "unencrypted data");
    }
}
