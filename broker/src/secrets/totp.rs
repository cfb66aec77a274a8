//! TOTP seeds of bank logins and the codes computed from them at fill time.

use std::fmt;

use protocol::SecretString;
use totp_rs::{Algorithm, Secret, TOTP};
use zeroize::Zeroizing;

/// Shortest accepted seed: 80 bits, the size many authenticator enrolments use.
const MIN_SEED_BYTES: usize = 10;

/// A TOTP seed as given (base32 or an `otpauth://` URI), with its parsed parameters.
/// Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct TotpSeed {
    text: SecretString,
    secret: Zeroizing<Vec<u8>>,
    algorithm: Algorithm,
    digits: usize,
    step: u64,
}

impl fmt::Debug for TotpSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpSeed")
            .field("algorithm", &self.algorithm)
            .field("digits", &self.digits)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl TotpSeed {
    /// Parses a base32 seed (spaces, dashes, padding and letter case ignored; SHA-1, six
    /// digits, 30-second steps) or an `otpauth://totp/...` URI, which carries its own
    /// algorithm, digits and period. The reason returned never repeats the value.
    pub fn parse(text: SecretString) -> Result<TotpSeed, &'static str> {
        let trimmed = text.expose().trim();
        let (secret, algorithm, digits, step) = if trimmed.starts_with("otpauth://") {
            let totp =
                TOTP::from_url_unchecked(trimmed).map_err(|_| "is not a valid otpauth:// URI")?;
            (
                Zeroizing::new(totp.secret.clone()),
                totp.algorithm,
                totp.digits,
                totp.step,
            )
        } else {
            let normalised: Zeroizing<String> = Zeroizing::new(
                trimmed
                    .chars()
                    .filter(|c| !matches!(c, ' ' | '-' | '='))
                    .map(|c| c.to_ascii_uppercase())
                    .collect(),
            );
            let bytes = Secret::Encoded(normalised.to_string())
                .to_bytes()
                .map_err(|_| "is not base32 (letters A-Z and digits 2-7) or an otpauth:// URI")?;
            (Zeroizing::new(bytes), Algorithm::SHA1, 6, 30)
        };

        if secret.len() < MIN_SEED_BYTES {
            return Err("is shorter than 80 bits (16 base32 characters)");
        }
        if !(6..=8).contains(&digits) {
            return Err("asks for a code length other than 6 to 8 digits");
        }
        if !(1..=300).contains(&step) {
            return Err("asks for a period other than 1 to 300 seconds");
        }
        Ok(TotpSeed {
            text,
            secret,
            algorithm,
            digits,
            step,
        })
    }

    /// Returns the seed as it was given, for storage.
    pub fn as_text(&self) -> &SecretString {
        &self.text
    }

    /// Computes the code for a Unix time in seconds.
    pub fn code_at(&self, unix_seconds: u64) -> SecretString {
        // NOTE: totp-rs keeps its own copy of the seed in this short-lived value, and
        // the broker does not enable totp-rs's zeroize feature, so that copy is freed
        // without being cleared.
        let totp = TOTP::new_unchecked(
            self.algorithm,
            self.digits,
            0,
            self.step,
            self.secret.to_vec(),
            None,
            String::new(),
        );
        SecretString::new(totp.generate(unix_seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_forms_are_equivalent() {
        let plain = TotpSeed::parse("JBSWY3DPEHPK3PXP".into()).unwrap();
        let spaced = TotpSeed::parse("jbsw y3dp ehpk 3pxp".into()).unwrap();

        assert_eq!(
            plain.code_at(1_700_000_000).expose(),
            spaced.code_at(1_700_000_000).expose()
        );
    }

    #[test]
    fn otpauth_uri_parameters_are_used() {
        let seed = TotpSeed::parse(
            "otpauth://totp/Bank:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&digits=8&period=30&algorithm=SHA1&issuer=Bank".into(),
        )
        .unwrap();

        // RFC 6238 appendix B, SHA-1, T = 59.
        assert_eq!(seed.code_at(59).expose(), "94287082");
    }

    #[test]
    fn bad_seeds_are_rejected() {
        assert!(TotpSeed::parse("not base32 at all!".into()).is_err());
        assert!(TotpSeed::parse("JBSWY3DP".into()).is_err());
        assert!(TotpSeed::parse("otpauth://hotp/x?secret=JBSWY3DPEHPK3PXP".into()).is_err());
    }
}
