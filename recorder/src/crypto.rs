//! AES-256-GCM helpers shared by segments, seals and key wrapping.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::TryRngCore;
use rand::rngs::OsRng;

use crate::error::KeyError;

/// Length of an AES-GCM nonce in bytes.
pub(crate) const NONCE_LEN: usize = 12;
/// Length of an AES-GCM authentication tag in bytes.
pub(crate) const TAG_LEN: usize = 16;

/// Fills `buf` from the operating system's random number generator.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), KeyError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|error| KeyError::Random(error.to_string()))
}

/// Returns a fresh random nonce. Every key in Strongroom encrypts at most a few million
/// messages, far below the 2^32 limit for random 96-bit GCM nonces (NIST SP 800-38D 8.3).
pub(crate) fn random_nonce() -> Result<[u8; NONCE_LEN], KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    Ok(nonce)
}

pub(crate) fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(&(*key).into())
}

pub(crate) fn seal(cipher: &Aes256Gcm, nonce: &[u8; NONCE_LEN], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    // INVARIANT: encryption fails only when the message exceeds the GCM limit of about
    // 64 GiB. Segments are at most 4 GiB (`RecorderConfig::validate`) and the other
    // messages are keys and seals of a few kilobytes.
    cipher
        .encrypt(&Nonce::from(*nonce), Payload { msg, aad })
        .expect("AES-GCM message within size limits")
}

pub(crate) fn open(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Option<Vec<u8>> {
    cipher
        .decrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}
