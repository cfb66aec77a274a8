//! The `users` table: local accounts and people known through OIDC.

use std::collections::BTreeSet;

use anyhow::Context;
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Principal, Role};
use crate::db::Database;

/// How a person signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSource {
    Local,
    Oidc,
}

impl UserSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UserSource::Local => "local",
            UserSource::Oidc => "oidc",
        }
    }
}

/// One row of `users`, without the TOTP secret's plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub username: Option<String>,
    pub display_name: String,
    pub source: String,
    pub oidc_issuer: Option<String>,
    pub oidc_subject: Option<String>,
    pub password_hash: Option<String>,
    pub totp_secret: Option<Vec<u8>>,
    pub totp_last_step: Option<i64>,
    pub roles: BTreeSet<Role>,
    pub created_at_ms: i64,
    /// When the current password was set; `None` for OIDC people.
    pub password_changed_at_ms: Option<i64>,
    /// The person must choose a new password at the next sign-in.
    pub password_change_required: bool,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("display_name", &self.display_name)
            .field("source", &self.source)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl UserRecord {
    /// Returns the name that pages show for this person: the username of a local
    /// account, the display name of an OIDC person.
    pub fn shown_name(&self) -> &str {
        self.username.as_deref().unwrap_or(&self.display_name)
    }

    pub fn principal(&self) -> Principal {
        Principal {
            user_id: self.id.clone(),
            display_name: self.display_name.clone(),
            roles: self.roles.clone(),
        }
    }
}

/// Failure to create a local account.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("the username {0:?} is already taken")]
    UsernameTaken(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Encodes roles as stored: sorted names joined by commas.
pub fn encode_roles(roles: &BTreeSet<Role>) -> String {
    roles
        .iter()
        .map(|role| role.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Decodes stored roles. An unknown name is skipped and logged, so a row written by a
/// newer broker grants no more than this one understands.
pub fn decode_roles(text: &str) -> BTreeSet<Role> {
    text.split(',')
        .filter(|name| !name.is_empty())
        .filter_map(|name| {
            let role = Role::parse(name);
            if role.is_none() {
                tracing::warn!(role = name, "Unknown role name in the database ignored");
            }
            role
        })
        .collect()
}

const COLUMNS: &str = "id, username, display_name, source, oidc_issuer, oidc_subject, password_hash, totp_secret, totp_last_step, roles, created_at_ms, password_changed_at_ms, password_change_required";

fn from_row(row: &AnyRow) -> Result<UserRecord, sqlx::Error> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        display_name: row.try_get("display_name")?,
        source: row.try_get("source")?,
        oidc_issuer: row.try_get("oidc_issuer")?,
        oidc_subject: row.try_get("oidc_subject")?,
        password_hash: row.try_get("password_hash")?,
        totp_secret: row.try_get("totp_secret")?,
        totp_last_step: row.try_get("totp_last_step")?,
        roles: decode_roles(&row.try_get::<String, _>("roles")?),
        created_at_ms: row.try_get("created_at_ms")?,
        password_changed_at_ms: row.try_get("password_changed_at_ms")?,
        password_change_required: row.try_get::<i64, _>("password_change_required")? != 0,
    })
}

/// Normalises a username for storage and lookup: trimmed and lowercased.
pub fn normalize_username(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Checks a username for `user add`: 1 to 64 characters from `a-z 0-9 . _ @ -`.
pub fn validate_username(name: &str) -> Result<(), String> {
    let valid_chars = name.chars().all(|c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '@')
    });
    if name.is_empty() || name.len() > 64 || !valid_chars {
        return Err(format!(
            "invalid username {name:?}; use 1 to 64 characters from a-z, 0-9, '.', '_', '-' and '@'"
        ));
    }
    Ok(())
}

/// New local account, with its secrets already hashed and sealed.
pub struct NewLocalUser<'a> {
    pub id: &'a str,
    pub username: &'a str,
    pub display_name: &'a str,
    pub password_hash: &'a str,
    /// Sealed TOTP secret; `None` makes the person enrol at their first sign-in.
    pub sealed_totp: Option<&'a [u8]>,
    pub roles: &'a BTreeSet<Role>,
}

/// Inserts a local account and records its password in the password history.
pub async fn create_local(
    db: &Database,
    user: NewLocalUser<'_>,
    now_ms: i64,
) -> Result<(), CreateUserError> {
    let mut transaction = db
        .begin_write()
        .await
        .context("cannot start a transaction")?;
    let result = sqlx::query(
        "INSERT INTO users (id, username, display_name, source, password_hash, totp_secret, roles, created_at_ms, updated_at_ms, password_changed_at_ms) \
         VALUES ($1, $2, $3, 'local', $4, $5, $6, $7, $7, $7)",
    )
    .bind(user.id)
    .bind(user.username)
    .bind(user.display_name)
    .bind(user.password_hash)
    .bind(user.sealed_totp.map(<[u8]>::to_vec))
    .bind(encode_roles(user.roles))
    .bind(now_ms)
    .execute(&mut *transaction)
    .await;

    match result {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            return Err(CreateUserError::UsernameTaken(user.username.to_owned()));
        }
        Err(error) => {
            return Err(anyhow::Error::new(error)
                .context("cannot insert the user")
                .into());
        }
    }
    sqlx::query(
        "INSERT INTO password_history (user_id, password_hash, created_at_ms) VALUES ($1, $2, $3)",
    )
    .bind(user.id)
    .bind(user.password_hash)
    .bind(now_ms)
    .execute(&mut *transaction)
    .await
    .context("cannot record the password history")?;
    transaction
        .commit()
        .await
        .context("cannot commit the new user")?;
    Ok(())
}

/// Hashes of the account's `count` most recent passwords, newest first.
pub async fn recent_password_hashes(
    db: &Database,
    id: &str,
    count: u32,
) -> anyhow::Result<Vec<String>> {
    let rows = sqlx::query("SELECT password_hash FROM password_history WHERE user_id = $1 ORDER BY created_at_ms DESC LIMIT $2")
        .bind(id)
        .bind(i64::from(count))
        .fetch_all(db.pool())
        .await
        .context("cannot read the password history")?;
    rows.iter()
        .map(|row| {
            row.try_get("password_hash")
                .context("cannot decode a password hash")
        })
        .collect()
}

/// Replaces a local account's password, records it in the history and keeps only the
/// `keep` most recent entries there. `change_required` makes the person choose
/// another one at the next sign-in (for a generated or reset password).
pub async fn set_password(
    db: &Database,
    id: &str,
    password_hash: &str,
    change_required: bool,
    keep: u32,
    now_ms: i64,
) -> anyhow::Result<bool> {
    let mut transaction = db
        .begin_write()
        .await
        .context("cannot start a transaction")?;
    let updated = sqlx::query("UPDATE users SET password_hash = $1, password_changed_at_ms = $2, password_change_required = $3, updated_at_ms = $2 WHERE id = $4 AND source = 'local'")
        .bind(password_hash)
        .bind(now_ms)
        .bind(i64::from(change_required))
        .bind(id)
        .execute(&mut *transaction)
        .await
        .context("cannot update the password")?;
    if updated.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO password_history (user_id, password_hash, created_at_ms) VALUES ($1, $2, $3)",
    )
    .bind(id)
    .bind(password_hash)
    .bind(now_ms)
    .execute(&mut *transaction)
    .await
    .context("cannot record the password history")?;
    sqlx::query(
        "DELETE FROM password_history WHERE user_id = $1 AND created_at_ms < \
         (SELECT MIN(created_at_ms) FROM (SELECT created_at_ms FROM password_history WHERE user_id = $1 ORDER BY created_at_ms DESC LIMIT $2) AS recent)",
    )
    .bind(id)
    .bind(i64::from(keep))
    .execute(&mut *transaction)
    .await
    .context("cannot trim the password history")?;
    transaction
        .commit()
        .await
        .context("cannot commit the password change")?;
    Ok(true)
}

/// Sets or clears the flag that forces a password change at the next sign-in.
pub async fn require_password_change(
    db: &Database,
    id: &str,
    required: bool,
    now_ms: i64,
) -> anyhow::Result<bool> {
    let result = sqlx::query("UPDATE users SET password_change_required = $1, updated_at_ms = $2 WHERE id = $3 AND source = 'local'")
        .bind(i64::from(required))
        .bind(now_ms)
        .bind(id)
        .execute(db.pool())
        .await
        .context("cannot update the password flag")?;
    Ok(result.rows_affected() == 1)
}

/// Removes a local account's TOTP secret, so that the person enrols a new one at the
/// next sign-in.
pub async fn clear_totp(db: &Database, id: &str, now_ms: i64) -> anyhow::Result<bool> {
    let result = sqlx::query("UPDATE users SET totp_secret = NULL, totp_last_step = NULL, updated_at_ms = $1 WHERE id = $2 AND source = 'local'")
        .bind(now_ms)
        .bind(id)
        .execute(db.pool())
        .await
        .context("cannot remove the TOTP secret")?;
    Ok(result.rows_affected() == 1)
}

pub async fn find_by_username(db: &Database, username: &str) -> anyhow::Result<Option<UserRecord>> {
    let query = format!("SELECT {COLUMNS} FROM users WHERE username = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(normalize_username(username))
        .fetch_optional(db.pool())
        .await
        .context("cannot read the user")?;
    row.as_ref()
        .map(from_row)
        .transpose()
        .context("cannot decode the user")
}

pub async fn find_by_id(db: &Database, id: &str) -> anyhow::Result<Option<UserRecord>> {
    let query = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(id)
        .fetch_optional(db.pool())
        .await
        .context("cannot read the user")?;
    row.as_ref()
        .map(from_row)
        .transpose()
        .context("cannot decode the user")
}

/// The names pages show for a set of user ids ([`UserRecord::shown_name`]). An id
/// without a row, such as a deleted person's, shows as the id itself.
#[derive(Debug, Clone, Default)]
pub struct ShownNames(std::collections::HashMap<String, String>);

impl ShownNames {
    /// Reads the names of `ids` in one query.
    pub async fn load<'a>(
        db: &Database,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> anyhow::Result<ShownNames> {
        let ids: BTreeSet<&str> = ids.into_iter().collect();
        if ids.is_empty() {
            return Ok(ShownNames::default());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let query = format!(
            "SELECT id, username, display_name FROM users WHERE id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(query));
        for id in &ids {
            query = query.bind(*id);
        }
        let rows = query
            .fetch_all(db.pool())
            .await
            .context("cannot read the names of people")?;
        let mut names = std::collections::HashMap::new();
        for row in &rows {
            let id: String = row.try_get("id")?;
            let username: Option<String> = row.try_get("username")?;
            let display_name: String = row.try_get("display_name")?;
            names.insert(id, username.unwrap_or(display_name));
        }
        Ok(ShownNames(names))
    }

    /// Returns the shown name of `id`, or `id` when no person has it.
    pub fn get<'a>(&'a self, id: &'a str) -> &'a str {
        self.0.get(id).map_or(id, String::as_str)
    }
}

/// Resolves a filter's person to a user id: the id of the person with this username
/// or id, or the text itself when no person matches, so that a deleted person's id
/// still finds their recordings.
pub async fn id_for_filter(db: &Database, name_or_id: &str) -> anyhow::Result<String> {
    Ok(find(db, name_or_id)
        .await?
        .map_or_else(|| name_or_id.to_owned(), |user| user.id))
}

/// Finds a person by username or, failing that, by id.
pub async fn find(db: &Database, name_or_id: &str) -> anyhow::Result<Option<UserRecord>> {
    match find_by_username(db, name_or_id).await? {
        Some(user) => Ok(Some(user)),
        None => find_by_id(db, name_or_id).await,
    }
}

pub async fn list(db: &Database) -> anyhow::Result<Vec<UserRecord>> {
    let query = format!("SELECT {COLUMNS} FROM users ORDER BY created_at_ms, id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(query))
        .fetch_all(db.pool())
        .await
        .context("cannot list users")?;
    rows.iter()
        .map(from_row)
        .collect::<Result<_, _>>()
        .context("cannot decode a user")
}

/// Replaces a person's roles. Returns false when no such person exists.
pub async fn set_roles(
    db: &Database,
    id: &str,
    roles: &BTreeSet<Role>,
    now_ms: i64,
) -> anyhow::Result<bool> {
    let result = sqlx::query("UPDATE users SET roles = $1, updated_at_ms = $2 WHERE id = $3")
        .bind(encode_roles(roles))
        .bind(now_ms)
        .bind(id)
        .execute(db.pool())
        .await
        .context("cannot update roles")?;
    Ok(result.rows_affected() == 1)
}

/// Replaces a local account's sealed TOTP secret and forgets its last used step.
pub async fn set_totp(db: &Database, id: &str, sealed: &[u8], now_ms: i64) -> anyhow::Result<bool> {
    let result = sqlx::query("UPDATE users SET totp_secret = $1, totp_last_step = NULL, updated_at_ms = $2 WHERE id = $3 AND source = 'local'")
        .bind(sealed.to_vec())
        .bind(now_ms)
        .bind(id)
        .execute(db.pool())
        .await
        .context("cannot update the TOTP secret")?;
    Ok(result.rows_affected() == 1)
}

/// Records `step` as the last used TOTP step, only if it is after the stored one.
/// Returns false when the step (or a later one) was already used: a replay. The check
/// and the write are one statement, so two brokers cannot both accept one code.
pub async fn consume_totp_step(db: &Database, id: &str, step: i64) -> anyhow::Result<bool> {
    let result = sqlx::query("UPDATE users SET totp_last_step = $1 WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)")
        .bind(step)
        .bind(id)
        .execute(db.pool())
        .await
        .context("cannot record the TOTP step")?;
    Ok(result.rows_affected() == 1)
}

/// Creates or updates the person behind an OIDC identity and returns their record.
/// The roles come from the provider's groups at every sign-in.
pub async fn upsert_oidc(
    db: &Database,
    issuer: &str,
    subject: &str,
    display_name: &str,
    roles: &BTreeSet<Role>,
    now_ms: i64,
) -> anyhow::Result<UserRecord> {
    let new_id = Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO users (id, display_name, source, oidc_issuer, oidc_subject, roles, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, 'oidc', $3, $4, $5, $6, $6) \
         ON CONFLICT (oidc_issuer, oidc_subject) DO UPDATE SET display_name = excluded.display_name, roles = excluded.roles, updated_at_ms = excluded.updated_at_ms",
    )
    .bind(&new_id)
    .bind(display_name)
    .bind(issuer)
    .bind(subject)
    .bind(encode_roles(roles))
    .bind(now_ms)
    .execute(db.pool())
    .await
    .context("cannot store the OIDC user")?;

    let query = format!("SELECT {COLUMNS} FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(issuer)
        .bind(subject)
        .fetch_one(db.pool())
        .await
        .context("cannot read back the OIDC user")?;
    from_row(&row).context("cannot decode the OIDC user")
}

/// Finds the person behind an OIDC identity.
pub async fn find_oidc(
    db: &Database,
    issuer: &str,
    subject: &str,
) -> anyhow::Result<Option<UserRecord>> {
    let query = format!("SELECT {COLUMNS} FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(issuer)
        .bind(subject)
        .fetch_optional(db.pool())
        .await
        .context("cannot read the OIDC user")?;
    row.as_ref()
        .map(from_row)
        .transpose()
        .context("cannot decode the OIDC user")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_skip_unknown_names() {
        let roles: BTreeSet<Role> = [Role::Admin, Role::User].into();

        assert_eq!(encode_roles(&roles), "user,admin");
        assert_eq!(decode_roles("user,admin"), roles);
        assert_eq!(decode_roles("user,superuser"), [Role::User].into());
        assert!(decode_roles("").is_empty());
    }

    #[test]
    fn usernames_are_checked() {
        assert!(validate_username("alice.smith@bank").is_ok());
        assert!(validate_username("Alice").is_err());
        assert!(validate_username("").is_err());
        assert!(validate_username("a b").is_err());
    }
}
