//! The local account password policy: length and character classes of a new
//! password, its expiry, and generated passwords.
//!
//! The reuse check against earlier passwords needs their hashes and lives with the
//! sign-in steps; the lockout after failed sign-ins is in [`super::throttle`].

use rand::Rng;
use rand::seq::SliceRandom;
use zeroize::Zeroizing;

use super::password::MIN_PASSWORD_LEN;

/// Symbols a generated password draws from. Policy checks accept any character that
/// is neither a letter nor a digit as a symbol.
const GENERATED_SYMBOLS: &[u8] = b"!#%+-.:=?@_~";
/// Length of a generated password.
const GENERATED_LEN: usize = 20;

/// Checks a new password: at least [`MIN_PASSWORD_LEN`] characters with a lowercase
/// letter, an uppercase letter, a digit and a symbol, and not containing the
/// username. The error lists everything that is missing.
pub fn check_new_password(password: &str, username: &str) -> Result<(), String> {
    let mut missing = Vec::new();
    if password.chars().count() < MIN_PASSWORD_LEN {
        missing.push(format!("at least {MIN_PASSWORD_LEN} characters"));
    }
    if !password.chars().any(char::is_lowercase) {
        missing.push("a lowercase letter".to_owned());
    }
    if !password.chars().any(char::is_uppercase) {
        missing.push("an uppercase letter".to_owned());
    }
    if !password.chars().any(|c| c.is_ascii_digit()) {
        missing.push("a digit".to_owned());
    }
    if !password
        .chars()
        .any(|c| !c.is_alphanumeric() && !c.is_whitespace())
    {
        missing.push("a symbol such as ! # % + - . : = ? @ _ ~".to_owned());
    }
    if !missing.is_empty() {
        return Err(format!("the password needs {}", missing.join(", ")));
    }
    if !username.is_empty() && password.to_lowercase().contains(&username.to_lowercase()) {
        return Err("the password must not contain the username".to_owned());
    }
    Ok(())
}

/// Whether a password set at `changed_at_ms` has passed `max_age_days`. A password
/// with no recorded change time counts as expired.
pub fn is_expired(changed_at_ms: Option<i64>, max_age_days: u32, now_ms: i64) -> bool {
    let max_age_ms = i64::from(max_age_days) * 24 * 3600 * 1000;
    match changed_at_ms {
        Some(changed) => now_ms.saturating_sub(changed) >= max_age_ms,
        None => true,
    }
}

/// Generates a random password that passes [`check_new_password`]: one character of
/// each class, the rest from all classes, shuffled.
pub fn generate_password() -> Zeroizing<String> {
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const DIGITS: &[u8] = b"23456789";
    let all: Vec<u8> = [LOWER, UPPER, DIGITS, GENERATED_SYMBOLS].concat();

    let mut rng = rand::rng();
    let mut bytes = Zeroizing::new(Vec::with_capacity(GENERATED_LEN));
    for class in [LOWER, UPPER, DIGITS, GENERATED_SYMBOLS] {
        bytes.push(class[rng.random_range(0..class.len())]);
    }
    while bytes.len() < GENERATED_LEN {
        bytes.push(all[rng.random_range(0..all.len())]);
    }
    bytes.shuffle(&mut rng);
    Zeroizing::new(bytes.iter().map(|&byte| char::from(byte)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_lists_every_missing_class() {
        let error = check_new_password("short", "alice").unwrap_err();

        assert!(error.contains("at least 12 characters"), "{error}");
        assert!(error.contains("an uppercase letter"), "{error}");
        assert!(error.contains("a digit"), "{error}");
        assert!(error.contains("a symbol"), "{error}");
        assert!(!error.contains("lowercase"), "{error}");
    }

    #[test]
    fn policy_accepts_four_classes_and_rejects_username() {
        assert!(check_new_password("Vault-door-42x", "alice").is_ok());
        assert!(check_new_password("vault-door-42x", "alice").is_err());
        assert!(check_new_password("Alice-vault-42x", "alice").is_err());
    }

    #[test]
    fn expiry_counts_whole_days() {
        let day_ms = 24 * 3600 * 1000;

        assert!(!is_expired(Some(0), 90, 89 * day_ms));
        assert!(is_expired(Some(0), 90, 90 * day_ms));
        assert!(is_expired(None, 90, 0));
    }

    #[test]
    fn generated_passwords_pass_the_policy() {
        for _ in 0..50 {
            let password = generate_password();
            assert_eq!(password.len(), GENERATED_LEN);
            check_new_password(&password, "someone").unwrap();
        }
    }
}
