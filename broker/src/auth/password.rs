//! Password hashing with Argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes,
//! 1 lane, as OWASP recommends).

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

/// Shortest password accepted when an account is created.
pub const MIN_PASSWORD_LEN: usize = 12;

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// Hashes a password into a PHC string (`$argon2id$v=19$...`).
pub fn hash(password: &str) -> anyhow::Result<String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|error| anyhow::anyhow!("cannot encode the password salt: {error}"))?;
    let hashed = hasher()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| anyhow::anyhow!("cannot hash the password: {error}"))?;
    Ok(hashed.to_string())
}

/// Checks a password against a stored hash. A hash that does not parse never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(error) => {
            tracing::error!(error = %error, "Stored password hash does not parse");
            false
        }
    }
}

/// Runs one verification against a fixed hash, so that a sign-in for an unknown
/// username takes as long as one for a known username.
pub fn verify_dummy(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let stored = DUMMY.get_or_init(|| hash("strongroom-dummy-password").expect("dummy hash"));
    let _ = verify(password, stored);
}

/// Verifies on a blocking thread, because one verification takes tens of milliseconds.
pub async fn verify_blocking(password: Zeroizing<String>, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || match stored {
        Some(stored) => verify(&password, &stored),
        None => {
            verify_dummy(&password);
            false
        }
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_same_password() {
        let stored = hash("correct horse battery").unwrap();

        assert!(stored.starts_with("$argon2id$v=19$"));
        assert!(verify("correct horse battery", &stored));
        assert!(!verify("correct horse batterY", &stored));
        assert!(!verify("correct horse battery", "not a hash"));
    }
}
