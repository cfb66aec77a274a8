//! Time-based one-time passwords (RFC 6238): SHA-1, 6 digits, 30-second steps, and
//! one step of tolerance either way.
//!
//! A code is accepted once: verification returns the time step it matched, and the
//! caller stores it as the user's last used step, refusing any step not after it.

use std::fmt;

use totp_rs::{Algorithm, TOTP};
use zeroize::Zeroizing;

/// Issuer shown by authenticator apps.
pub const ISSUER: &str = "Strongroom";
/// Length of a code.
pub const DIGITS: usize = 6;
/// Seconds per step.
pub const STEP_SECONDS: u64 = 30;
/// Steps accepted before and after the current one, to absorb clock drift.
pub const SKEW_STEPS: i64 = 1;
/// Secret length in bytes (160 bits, as RFC 4226 recommends).
const SECRET_LEN: usize = 20;

/// A TOTP shared secret. Zeroized on drop; `Debug` is redacted.
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret([redacted])")
    }
}

impl TotpSecret {
    /// Generates a random secret.
    pub fn generate() -> TotpSecret {
        TotpSecret(Zeroizing::new(rand::random::<[u8; SECRET_LEN]>().to_vec()))
    }

    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> TotpSecret {
        TotpSecret(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The secret in base32 without padding, for manual entry in an authenticator app.
    pub fn base32(&self) -> Zeroizing<String> {
        Zeroizing::new(self.totp("x").get_secret_base32())
    }

    /// The `otpauth://totp/...` URI that authenticator apps import.
    pub fn otpauth_uri(&self, username: &str) -> Zeroizing<String> {
        Zeroizing::new(self.totp(username).get_url())
    }

    /// The code for a Unix time in seconds.
    pub fn code_at(&self, unix_seconds: u64) -> String {
        self.totp("x").generate(unix_seconds)
    }

    /// Returns the time step that `code` matches at `unix_seconds`, trying the current
    /// step first and then one step either way.
    pub fn matching_step(&self, code: &str, unix_seconds: u64) -> Option<i64> {
        let code = code.trim();
        if code.len() != DIGITS || !code.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        let totp = self.totp("x");
        let current = (unix_seconds / STEP_SECONDS) as i64;
        let mut matched = None;
        // Every candidate is computed and compared, so the time taken does not depend
        // on which step matched.
        for offset in [0, -SKEW_STEPS, SKEW_STEPS] {
            let step = current + offset;
            if step < 0 {
                continue;
            }
            let expected = totp.generate(step as u64 * STEP_SECONDS);
            if constant_time_eq(expected.as_bytes(), code.as_bytes()) && matched.is_none() {
                matched = Some(step);
            }
        }
        matched
    }

    fn totp(&self, account: &str) -> TOTP {
        // INVARIANT: the secret is 20 bytes and the issuer has no colon, so `new` cannot fail.
        TOTP::new(
            Algorithm::SHA1,
            DIGITS,
            0,
            STEP_SECONDS,
            self.0.to_vec(),
            Some(ISSUER.to_owned()),
            account.to_owned(),
        )
        .expect("TOTP parameters are valid")
    }
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6238 appendix B, SHA-1 column: the secret is the ASCII "12345678901234567890"
    // and codes are the last six digits of the eight-digit values.
    #[test]
    fn rfc6238_vectors_match() {
        let secret = TotpSecret::from_bytes(Zeroizing::new(b"12345678901234567890".to_vec()));

        assert_eq!(secret.code_at(59), "287082");
        assert_eq!(secret.code_at(1_111_111_109), "081804");
        assert_eq!(secret.code_at(2_000_000_000), "279037");
    }

    #[test]
    fn adjacent_steps_are_accepted_and_others_not() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_000;
        let previous = secret.code_at(now - 30);
        let next = secret.code_at(now + 30);
        let stale = secret.code_at(now - 90);

        assert_eq!(
            secret.matching_step(&secret.code_at(now), now),
            Some((now / 30) as i64)
        );
        assert_eq!(
            secret.matching_step(&previous, now),
            Some((now / 30) as i64 - 1)
        );
        assert_eq!(
            secret.matching_step(&next, now),
            Some((now / 30) as i64 + 1)
        );
        assert_eq!(secret.matching_step(&stale, now), None);
        assert_eq!(secret.matching_step("12345", now), None);
    }

    #[test]
    fn uri_names_issuer_and_account() {
        let secret = TotpSecret::generate();

        let uri = secret.otpauth_uri("alice");

        assert!(
            uri.starts_with("otpauth://totp/Strongroom:alice?secret="),
            "{}",
            uri.as_str()
        );
        assert!(uri.contains(secret.base32().as_str()));
        assert_eq!(format!("{secret:?}"), "TotpSecret([redacted])");
    }
}
