//! Recordings in an S3-compatible bucket, through the `object_store` crate.
//!
//! A recording is the object prefix `<prefix>/<recording id>/`; a marker object
//! `.recording` under it records that the recording exists, because S3 has no
//! directories. A single PUT is atomic in S3, so an object is either complete or absent
//! and a crash leaves no partial object behind.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use uuid::Uuid;

use crate::error::StorageError;
use crate::storage::{ObjectInfo, Storage, validate_name};

const MARKER_NAME: &str = ".recording";
const PROBE_NAME: &str = ".write-probe";

/// Connection settings for the bucket. The credentials are resolved secret values, which
/// the caller reads from its secret store.
#[derive(Clone)]
pub struct S3Config {
    /// Endpoint URL, for example `https://s3.eu-central-1.amazonaws.com` or a MinIO URL.
    pub endpoint: String,
    /// Region that requests are signed for.
    pub region: String,
    /// Bucket name. The bucket must exist.
    pub bucket: String,
    /// Key prefix under which recordings are stored, without leading or trailing `/`.
    /// Empty stores them at the bucket root.
    pub prefix: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Allows a plain `http://` endpoint, for a store on loopback.
    pub allow_http: bool,
    /// Maximum time of one storage operation, retries included. A write that does not
    /// finish in time fails, and the live session freezes.
    pub operation_timeout: Duration,
    /// Retries of a failed request within `operation_timeout`.
    pub max_retries: usize,
}

impl S3Config {
    /// Default of [`S3Config::operation_timeout`].
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default of [`S3Config::max_retries`].
    pub const DEFAULT_MAX_RETRIES: usize = 3;
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("allow_http", &self.allow_http)
            .field("operation_timeout", &self.operation_timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

/// Recordings in an S3-compatible bucket. Every method blocks on its own Tokio runtime,
/// so call them from a plain thread or a blocking task, never from inside an async task.
pub struct S3Storage {
    store: Arc<AmazonS3>,
    runtime: Option<tokio::runtime::Runtime>,
    bucket: String,
    prefix: String,
    operation_timeout: Duration,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl S3Storage {
    /// Builds the client without making a request. [`Storage::check_writable`] checks that
    /// the bucket accepts writes. Every operation, retries included, fails after
    /// `config.operation_timeout`; object_store's own default would retry for up to
    /// 3 minutes (object_store 0.14 `RetryConfig::default`).
    pub fn open(config: &S3Config) -> Result<Self, StorageError> {
        let prefix = config.prefix.trim_matches('/').to_owned();
        let location = format!("s3://{}/{}", config.bucket, prefix);
        if config.operation_timeout.is_zero() {
            return Err(remote(
                "configure",
                &location,
                std::io::Error::other("the operation timeout is zero; use at least one second"),
            ));
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: (config.operation_timeout / 4).max(Duration::from_millis(100)),
                base: 2.0,
            },
            max_retries: config.max_retries,
            retry_timeout: config.operation_timeout,
        };
        let client = ClientOptions::new()
            .with_timeout(config.operation_timeout)
            .with_connect_timeout(config.operation_timeout.min(Duration::from_secs(5)));
        let store = AmazonS3Builder::new()
            .with_retry(retry)
            .with_client_options(client)
            .with_endpoint(&config.endpoint)
            .with_region(&config.region)
            .with_bucket_name(&config.bucket)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_allow_http(config.allow_http)
            .build()
            .map_err(|error| remote("configure", &location, error))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("recorder-s3")
            .enable_all()
            .build()
            .map_err(|error| remote("start runtime", &location, error))?;
        Ok(S3Storage {
            store: Arc::new(store),
            runtime: Some(runtime),
            bucket: config.bucket.clone(),
            prefix,
            operation_timeout: config.operation_timeout,
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime is only taken when the storage is dropped")
    }

    /// Runs one storage operation on the runtime, failing it after the operation timeout
    /// even when a request is still in flight.
    fn run<T>(
        &self,
        operation: impl Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, object_store::Error> {
        let timeout = self.operation_timeout;
        self.runtime()
            .block_on(async { tokio::time::timeout(timeout, operation).await })
            .unwrap_or_else(|_| {
                Err(object_store::Error::Generic {
                    store: "S3",
                    source: format!(
                        "timed out after {} s; the endpoint is unreachable or too slow",
                        timeout.as_secs_f64()
                    )
                    .into(),
                })
            })
    }

    fn recording_path(&self, recording: Uuid) -> Path {
        let id = recording.to_string();
        if self.prefix.is_empty() {
            Path::from(id.as_str())
        } else {
            Path::from(format!("{}/{id}", self.prefix).as_str())
        }
    }

    fn root_path(&self) -> Option<Path> {
        (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()))
    }

    fn object_path(&self, recording: Uuid, name: &str) -> Result<Path, StorageError> {
        validate_name(name)?;
        Ok(self.recording_path(recording).join(name))
    }

    fn describe(&self, path: &Path) -> String {
        format!("s3://{}/{path}", self.bucket)
    }

    fn put_object(&self, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
        let payload = PutPayload::from(bytes.to_vec());
        self.run(self.store.put(path, payload))
            .map(|_| ())
            .map_err(|error| remote("put", &self.describe(path), error))
    }

    fn head_exists(&self, path: &Path) -> Result<bool, StorageError> {
        match self.run(self.store.head(path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(remote("head", &self.describe(path), error)),
        }
    }

    fn map_read_error(
        &self,
        recording: Uuid,
        name: &str,
        path: &Path,
        error: object_store::Error,
    ) -> StorageError {
        match error {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                recording,
                name: name.to_owned(),
            },
            error => remote("get", &self.describe(path), error),
        }
    }

    fn list_paths(&self, recording: Uuid) -> Result<Vec<object_store::ObjectMeta>, StorageError> {
        let prefix = self.recording_path(recording);
        self.run(self.store.list_with_delimiter(Some(&prefix)))
            .map(|listing| listing.objects)
            .map_err(|error| remote("list", &self.describe(&prefix), error))
    }
}

impl Drop for S3Storage {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics on an async thread; the last owner may
        // be one.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn remote(
    operation: &'static str,
    location: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> StorageError {
    StorageError::Remote {
        operation,
        location: location.to_owned(),
        source: Box::new(error),
    }
}

impl Storage for S3Storage {
    fn create_recording(&self, recording: Uuid) -> Result<(), StorageError> {
        let marker = self.recording_path(recording).join(MARKER_NAME);
        if self.head_exists(&marker)? {
            return Err(StorageError::AlreadyExists(recording));
        }
        self.put_object(&marker, recording.to_string().as_bytes())
    }

    fn put(&self, recording: Uuid, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let path = self.object_path(recording, name)?;
        self.put_object(&path, bytes)
    }

    fn get(&self, recording: Uuid, name: &str) -> Result<Vec<u8>, StorageError> {
        let path = self.object_path(recording, name)?;
        self.run(async { self.store.get(&path).await?.bytes().await })
            .map(|bytes| bytes.to_vec())
            .map_err(|error| self.map_read_error(recording, name, &path, error))
    }

    fn get_prefix(&self, recording: Uuid, name: &str, len: usize) -> Result<Vec<u8>, StorageError> {
        let path = self.object_path(recording, name)?;
        self.run(async {
            let size = self.store.head(&path).await?.size;
            let end = size.min(len as u64);
            if end == 0 {
                return Ok(bytes::Bytes::new());
            }
            self.store.get_range(&path, 0..end).await
        })
        .map(|bytes| bytes.to_vec())
        .map_err(|error| self.map_read_error(recording, name, &path, error))
    }

    fn delete(&self, recording: Uuid, name: &str) -> Result<(), StorageError> {
        let path = self.object_path(recording, name)?;
        match self.run(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(remote("delete", &self.describe(&path), error)),
        }
    }

    fn list(&self, recording: Uuid) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut objects: Vec<ObjectInfo> = self
            .list_paths(recording)?
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_owned();
                validate_name(&name).ok()?;
                Some(ObjectInfo {
                    name,
                    size: meta.size,
                })
            })
            .collect();
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    fn remove_partial(&self, _recording: Uuid) -> Result<usize, StorageError> {
        // Objects are written with one PUT each, which S3 applies atomically.
        Ok(0)
    }

    fn list_recordings(&self) -> Result<Vec<Uuid>, StorageError> {
        let root = self.root_path();
        let listing = self
            .run(self.store.list_with_delimiter(root.as_ref()))
            .map_err(|error| {
                let location = format!("s3://{}/{}", self.bucket, self.prefix);
                remote("list", &location, error)
            })?;
        let mut ids: Vec<Uuid> = listing
            .common_prefixes
            .iter()
            .filter_map(|prefix| prefix.filename())
            .filter_map(|name| Uuid::parse_str(name).ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn exists(&self, recording: Uuid) -> Result<bool, StorageError> {
        self.head_exists(&self.recording_path(recording).join(MARKER_NAME))
    }

    fn delete_recording(&self, recording: Uuid) -> Result<(), StorageError> {
        let marker = self.recording_path(recording).join(MARKER_NAME);
        // The marker goes last, so an interrupted deletion still lists the recording and
        // the next sweep finishes it.
        for meta in self.list_paths(recording)? {
            if meta.location == marker {
                continue;
            }
            self.run(self.store.delete(&meta.location))
                .map_err(|error| remote("delete", &self.describe(&meta.location), error))?;
        }
        match self.run(self.store.delete(&marker)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(remote("delete", &self.describe(&marker), error)),
        }
    }

    fn check_writable(&self, _min_free_bytes: u64) -> Result<(), StorageError> {
        // An object store reports no free space; quotas surface as failed writes, which
        // the writer turns into a frozen session.
        let name = format!("{PROBE_NAME}-{}", Uuid::new_v4().simple());
        let probe = match self.root_path() {
            Some(root) => root.join(name.as_str()),
            None => Path::from(name.as_str()),
        };
        self.put_object(&probe, b"strongroom write probe\n")?;
        self.run(self.store.delete(&probe))
            .map_err(|error| remote("delete", &self.describe(&probe), error))
    }
}
