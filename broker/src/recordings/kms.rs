//! Recording key-encryption keys kept in Infisical KMS (`sessions.recording_keys =
//! "infisical"`). A key never leaves Infisical: wrapping a data key is an encrypt call
//! and unwrapping it a decrypt call, under the KMS key whose name is the [`KekId`]
//! (`period-2026-05`, `hold-r1733390000000`). Each wrap records Infisical's key id
//! next to the name, so a key that was deleted and created again under the same name
//! does not decrypt older wraps.
//!
//! Routes (Infisical API v1, KMS keys):
//! - create: `POST /api/v1/kms/keys` with `{projectId, name, description, keyUsage,
//!   encryptionAlgorithm}`, returning `{key: {id, name, ...}}`;
//! - look up: `GET /api/v1/kms/keys/key-name/{name}?projectId=`, returning `{key}`;
//! - list: `GET /api/v1/kms/keys?projectId=&offset=&limit=`, returning `{keys,
//!   totalCount}`;
//! - encrypt: `POST /api/v1/kms/keys/{id}/encrypt` with `{plaintext}` (base64),
//!   returning `{ciphertext}`;
//! - decrypt: `POST /api/v1/kms/keys/{id}/decrypt` with `{ciphertext}`, returning
//!   `{plaintext}` (base64);
//! - delete: `DELETE /api/v1/kms/keys/{id}`, returning `{key}`.
//!
//! Infisical's encrypt call takes no associated data, so the plaintext is the SHA-256
//! of the associated data followed by the data key. Unwrapping fails unless the
//! decrypted digest matches the recording's associated data. That binds a wrap to its
//! recording, key id and expiry, as the local key store's AES-GCM tag does.
//!
//! Login, token renewal, the retry after a rejected token and the retries after 429
//! come from [`InfisicalClient`].
//!
//! A 5xx response is retried with backoff, up to `secrets.infisical.rate_limit_retries`
//! times, as for bank credentials. An unreachable server fails the operation at once.
//! The recorder pre-flight then rejects the launch, and a replay or export fails with
//! the error.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use recorder::{KekId, KeyError, KeyStore, SecretKey, WrappedKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::secrets::{ApiFailure, InfisicalClient, InfisicalError};

const KEYS_PATH: &str = "/api/v1/kms/keys";
/// Keys listed per request; Infisical accepts at most 100.
const LIST_PAGE: usize = 100;
/// Infisical key names are slugs of at most 32 characters.
const MAX_KEY_NAME_LEN: usize = 32;
const DIGEST_LEN: usize = 32;

#[derive(Deserialize)]
struct KeyResponse {
    key: KmsKey,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyListResponse {
    keys: Vec<KmsKey>,
    total_count: usize,
}

#[derive(Deserialize)]
struct KmsKey {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct CiphertextResponse {
    ciphertext: String,
}

#[derive(Deserialize)]
struct PlaintextResponse {
    plaintext: String,
}

/// Key store backed by an Infisical KMS project.
pub struct InfisicalKeyStore {
    inner: Arc<Inner>,
    // The store's own runtime runs the HTTP requests, so that the blocking
    // [`KeyStore`] methods work from any thread. Taken out in `drop`.
    runtime: Option<tokio::runtime::Runtime>,
}

struct Inner {
    client: InfisicalClient,
    project_id: String,
    /// Key name to Infisical key id, for the keys this process looked up or created.
    ids: Mutex<HashMap<KekId, String>>,
}

impl fmt::Debug for InfisicalKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfisicalKeyStore")
            .field("url", &self.inner.client.config().url)
            .field("project_id", &self.inner.project_id)
            .finish_non_exhaustive()
    }
}

impl InfisicalKeyStore {
    /// Builds the store for KMS project `project_id` on the connection `client`.
    pub fn new(client: InfisicalClient, project_id: &str) -> Result<Self, KeyError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("infisical-kms")
            .enable_all()
            .build()
            .map_err(|error| {
                service_error(
                    "start",
                    "(all)",
                    format!("cannot start the runtime: {error}"),
                )
            })?;
        Ok(InfisicalKeyStore {
            inner: Arc::new(Inner {
                client,
                project_id: project_id.to_owned(),
                ids: Mutex::new(HashMap::new()),
            }),
            runtime: Some(runtime),
        })
    }

    /// Runs `task` on the store's runtime and waits for it. This works on any thread,
    /// including a runtime worker, because the calling thread only waits on a channel.
    fn block<T: Send + 'static>(
        &self,
        task: impl FnOnce(Arc<Inner>) -> std::pin::Pin<Box<dyn Future<Output = T> + Send>>,
    ) -> T {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let future = task(self.inner.clone());
        self.runtime
            .as_ref()
            .expect("runtime present until drop")
            .spawn(async move {
                // The receiver waits below, so the send fails only if the caller is gone.
                let _ = sender.send(future.await);
            });
        receiver
            .recv()
            .expect("the KMS task sends its result unless it panicked")
    }
}

impl Drop for InfisicalKeyStore {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime panics; this does not wait.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn service_error(operation: &'static str, key: &str, message: String) -> KeyError {
    KeyError::Service {
        operation,
        key: key.to_owned(),
        message,
    }
}

impl Inner {
    fn keys_url(&self) -> String {
        format!("{}{KEYS_PATH}", self.client.config().url)
    }

    fn failure_error(&self, operation: &'static str, key: &str, failure: ApiFailure) -> KeyError {
        let hint = match failure.status {
            401 | 403 => format!(
                "; give the machine identity of secrets.infisical.client_id the Cryptographic Operator role (or one that may create and delete keys) in KMS project {}",
                self.project_id
            ),
            400 | 422 => format!(
                "; check sessions.recording_keys_project_id ({}) and that the key is enabled",
                self.project_id
            ),
            _ => String::new(),
        };
        service_error(
            operation,
            key,
            format!("Infisical returned {failure}{hint}"),
        )
    }

    fn client_error(operation: &'static str, key: &str, error: InfisicalError) -> KeyError {
        service_error(operation, key, error.to_string())
    }

    fn decode<T: serde::de::DeserializeOwned>(
        operation: &'static str,
        key: &str,
        body: &[u8],
    ) -> Result<T, KeyError> {
        serde_json::from_slice(body).map_err(|error| {
            service_error(
                operation,
                key,
                format!("unexpected response from Infisical: {error}"),
            )
        })
    }

    fn cached_id(&self, name: &KekId) -> Option<String> {
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(name)
            .cloned()
    }

    fn remember(&self, name: &KekId, id: Option<String>) {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match id {
            Some(id) => ids.insert(name.clone(), id),
            None => ids.remove(name),
        };
    }

    /// Looks up a key's Infisical id by name. Returns `None` when the project has no
    /// key of that name.
    async fn find(&self, name: &KekId) -> Result<Option<String>, KeyError> {
        let url = format!("{}/key-name/{name}", self.keys_url());
        let what = format!("KMS key {name}");
        let query = [("projectId", self.project_id.as_str())];
        let reply = self
            .client
            .send(&url, &what, |http, token| {
                http.get(&url).query(&query).bearer_auth(token)
            })
            .await
            .map_err(|error| Self::client_error("look up", name.as_str(), error))?;
        match reply {
            Ok(body) => {
                let response: KeyResponse = Self::decode("look up", name.as_str(), &body)?;
                self.remember(name, Some(response.key.id.clone()));
                Ok(Some(response.key.id))
            }
            Err(failure) if failure.status == 404 => {
                self.remember(name, None);
                Ok(None)
            }
            Err(failure) => Err(self.failure_error("look up", name.as_str(), failure)),
        }
    }

    /// Returns the key's Infisical id, from the cache when this process saw it.
    async fn id_of(&self, name: &KekId) -> Result<Option<String>, KeyError> {
        match self.cached_id(name) {
            Some(id) => Ok(Some(id)),
            None => self.find(name).await,
        }
    }

    async fn create_if_missing(&self, name: KekId) -> Result<bool, KeyError> {
        if self.find(&name).await?.is_some() {
            return Ok(false);
        }
        if name.as_str().len() > MAX_KEY_NAME_LEN {
            return Err(service_error(
                "create",
                name.as_str(),
                format!("Infisical key names have at most {MAX_KEY_NAME_LEN} characters"),
            ));
        }
        let url = self.keys_url();
        let what = format!("creating KMS key {name}");
        let body = serde_json::json!({
            "projectId": self.project_id,
            "name": name.as_str(),
            "description": "Strongroom recording key-encryption key",
            "keyUsage": "encrypt-decrypt",
            "encryptionAlgorithm": "aes-256-gcm",
        });
        let reply = self
            .client
            .send(&url, &what, |http, token| {
                http.post(&url).json(&body).bearer_auth(token)
            })
            .await
            .map_err(|error| Self::client_error("create", name.as_str(), error))?;
        match reply {
            Ok(body) => {
                let response: KeyResponse = Self::decode("create", name.as_str(), &body)?;
                tracing::info!(kek.id = %name, kms.key_id = %response.key.id, "Created key-encryption key in Infisical KMS");
                self.remember(&name, Some(response.key.id));
                Ok(true)
            }
            // Another process created the key between the look-up and this request.
            Err(failure) if self.find(&name).await?.is_some() => {
                tracing::debug!(kek.id = %name, status = failure.status, "Key-encryption key was created concurrently");
                Ok(false)
            }
            Err(failure) => Err(self.failure_error("create", name.as_str(), failure)),
        }
    }

    async fn list(&self) -> Result<Vec<KekId>, KeyError> {
        let url = self.keys_url();
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let query = [
                ("projectId", self.project_id.clone()),
                ("offset", offset.to_string()),
                ("limit", LIST_PAGE.to_string()),
            ];
            let reply = self
                .client
                .send(&url, "listing KMS keys", |http, token| {
                    http.get(&url).query(&query).bearer_auth(token)
                })
                .await
                .map_err(|error| Self::client_error("list", "(all)", error))?;
            let body = reply.map_err(|failure| self.failure_error("list", "(all)", failure))?;
            let page: KeyListResponse = Self::decode("list", "(all)", &body)?;
            let count = page.keys.len();
            for key in page.keys {
                // Keys of other applications in the project are not Strongroom's.
                if let Ok(name) = KekId::new(key.name) {
                    self.remember(&name, Some(key.id));
                    names.push(name);
                }
            }
            offset += count;
            if count == 0 || offset >= page.total_count {
                break;
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn wrap(
        &self,
        name: KekId,
        plaintext: Zeroizing<String>,
    ) -> Result<WrappedKey, KeyError> {
        let Some(key_id) = self.id_of(&name).await? else {
            return Err(KeyError::NotFound(name));
        };
        let url = format!("{}/{key_id}/encrypt", self.keys_url());
        let what = format!("encrypting under KMS key {name}");
        let reply = self
            .client
            .send(&url, &what, |http, token| {
                http.post(&url)
                    .json(&serde_json::json!({ "plaintext": plaintext.as_str() }))
                    .bearer_auth(token)
            })
            .await
            .map_err(|error| Self::client_error("wrap under", name.as_str(), error))?;
        match reply {
            Ok(body) => {
                let response: CiphertextResponse =
                    Self::decode("wrap under", name.as_str(), &body)?;
                Ok(WrappedKey {
                    kek_id: name,
                    nonce: [0; 12],
                    ciphertext: response.ciphertext.into_bytes(),
                    service_key_id: Some(key_id),
                })
            }
            Err(failure) if failure.status == 404 => {
                self.remember(&name, None);
                Err(KeyError::NotFound(name))
            }
            Err(failure) => Err(self.failure_error("wrap under", name.as_str(), failure)),
        }
    }

    async fn unwrap(&self, wrapped: WrappedKey, key_id: String) -> Result<Vec<u8>, KeyError> {
        let name = wrapped.kek_id;
        let ciphertext = String::from_utf8(wrapped.ciphertext)
            .map_err(|_| KeyError::UnwrapFailed(name.clone()))?;
        let url = format!("{}/{key_id}/decrypt", self.keys_url());
        let what = format!("decrypting under KMS key {name}");
        let reply = self
            .client
            .send(&url, &what, |http, token| {
                http.post(&url)
                    .json(&serde_json::json!({ "ciphertext": ciphertext }))
                    .bearer_auth(token)
            })
            .await
            .map_err(|error| Self::client_error("unwrap under", name.as_str(), error))?;
        match reply {
            Ok(body) => {
                // NOTE: the response body with the data key stays in reqwest's buffers,
                // which are not zeroized.
                let response: PlaintextResponse =
                    Self::decode("unwrap under", name.as_str(), &body)?;
                let plaintext = Zeroizing::new(response.plaintext);
                BASE64
                    .decode(plaintext.as_bytes())
                    .map_err(|_| KeyError::UnwrapFailed(name))
            }
            Err(failure) if failure.status == 404 => Err(KeyError::NotFound(name)),
            Err(failure) => Err(self.failure_error("unwrap under", name.as_str(), failure)),
        }
    }

    async fn destroy(&self, name: KekId) -> Result<(), KeyError> {
        // A fresh look-up: a cached id may belong to a key deleted meanwhile.
        let Some(key_id) = self.find(&name).await? else {
            return Ok(());
        };
        let url = format!("{}/{key_id}", self.keys_url());
        let what = format!("deleting KMS key {name}");
        let reply = self
            .client
            .send(&url, &what, |http, token| {
                http.delete(&url).bearer_auth(token)
            })
            .await
            .map_err(|error| Self::client_error("destroy", name.as_str(), error))?;
        match reply {
            Ok(_) => {}
            Err(failure) if failure.status == 404 => {}
            Err(failure) => return Err(self.failure_error("destroy", name.as_str(), failure)),
        }
        self.remember(&name, None);
        tracing::info!(kek.id = %name, kms.key_id = %key_id, "Destroyed key-encryption key in Infisical KMS");
        Ok(())
    }
}

/// Returns the plaintext sent to Infisical: SHA-256 of `aad`, then the data key.
fn wrap_plaintext(dek: &SecretKey, aad: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut plaintext = Zeroizing::new(Vec::with_capacity(DIGEST_LEN + 32));
    plaintext.extend_from_slice(&Sha256::digest(aad));
    plaintext.extend_from_slice(dek.expose_secret());
    plaintext
}

/// Checks the digest in front of a decrypted plaintext and returns the data key.
fn open_plaintext(name: &KekId, plaintext: &[u8], aad: &[u8]) -> Result<SecretKey, KeyError> {
    if plaintext.len() != DIGEST_LEN + 32 {
        return Err(KeyError::UnwrapFailed(name.clone()));
    }
    let (digest, key) = plaintext.split_at(DIGEST_LEN);
    let expected: [u8; DIGEST_LEN] = Sha256::digest(aad).into();
    if !bool::from(digest.ct_eq(&expected)) {
        return Err(KeyError::UnwrapFailed(name.clone()));
    }
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| KeyError::UnwrapFailed(name.clone()))?;
    Ok(SecretKey::from_bytes(key))
}

impl KeyStore for InfisicalKeyStore {
    fn create_if_missing(&self, id: &KekId) -> Result<bool, KeyError> {
        let id = id.clone();
        self.block(move |inner| Box::pin(async move { inner.create_if_missing(id).await }))
    }

    fn contains(&self, id: &KekId) -> Result<bool, KeyError> {
        let id = id.clone();
        self.block(move |inner| Box::pin(async move { Ok(inner.find(&id).await?.is_some()) }))
    }

    fn list(&self) -> Result<Vec<KekId>, KeyError> {
        self.block(|inner| Box::pin(async move { inner.list().await }))
    }

    fn wrap(&self, id: &KekId, dek: &SecretKey, aad: &[u8]) -> Result<WrappedKey, KeyError> {
        let plaintext = Zeroizing::new(BASE64.encode(wrap_plaintext(dek, aad).as_slice()));
        let id = id.clone();
        self.block(move |inner| Box::pin(async move { inner.wrap(id, plaintext).await }))
    }

    fn unwrap(&self, wrapped: &WrappedKey, aad: &[u8]) -> Result<SecretKey, KeyError> {
        let Some(key_id) = wrapped.service_key_id.clone() else {
            return Err(KeyError::WrongStore {
                kek_id: wrapped.kek_id.clone(),
                wrapped_by: "the local key directory".to_owned(),
                configured: "Infisical KMS",
            });
        };
        let name = wrapped.kek_id.clone();
        let owned = wrapped.clone();
        let plaintext = Zeroizing::new(
            self.block(move |inner| Box::pin(async move { inner.unwrap(owned, key_id).await }))?,
        );
        open_plaintext(&name, &plaintext, aad)
    }

    fn destroy(&self, id: &KekId) -> Result<(), KeyError> {
        let id = id.clone();
        self.block(move |inner| Box::pin(async move { inner.destroy(id).await }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_opens_only_with_its_associated_data() {
        let name = KekId::new("period-2026-05").unwrap();
        let dek = SecretKey::from_bytes([7; 32]);
        let plaintext = wrap_plaintext(&dek, b"recording-1");

        let opened = open_plaintext(&name, &plaintext, b"recording-1").unwrap();

        assert_eq!(opened.expose_secret(), &[7; 32]);
        assert!(matches!(
            open_plaintext(&name, &plaintext, b"recording-2"),
            Err(KeyError::UnwrapFailed(_))
        ));
        assert!(matches!(
            open_plaintext(&name, &plaintext[..40], b"recording-1"),
            Err(KeyError::UnwrapFailed(_))
        ));
    }
}
