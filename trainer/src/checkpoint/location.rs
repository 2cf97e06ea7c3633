//! Opening a checkpoint location: a local path, `file://`, `s3://` (AWS
//! environment variables, custom endpoints for S3-compatible servers),
//! `gs://` or `az://`, with retries so a storage hiccup costs time, not the run.

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, RetryConfig};
use ride_contract::{CheckpointUri, Scheme};
use std::sync::Arc;
use std::time::Duration;

/// Errors opening or probing a checkpoint location.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// The URI is malformed or of an unsupported scheme.
    #[error("checkpoint location {uri}: {message}")]
    Invalid {
        /// The URI.
        uri: String,
        /// What is wrong.
        message: String,
    },
    /// The store rejected our credentials or permissions.
    #[error("checkpoint location {uri}: the server refused access ({source}); check {hint}")]
    Denied {
        /// The URI.
        uri: String,
        /// Which variables to check.
        hint: &'static str,
        /// The store's error.
        source: object_store::Error,
    },
    /// Any other storage error.
    #[error("checkpoint location {uri}: {source}")]
    Store {
        /// The URI.
        uri: String,
        /// The store's error.
        source: object_store::Error,
    },
}

/// How long requests are retried before an error surfaces
/// (`RIDE_STORAGE_RETRY_SECONDS`, default 180 s).
pub fn retry_config() -> RetryConfig {
    let secs = std::env::var("RIDE_STORAGE_RETRY_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(180.0);
    RetryConfig {
        // Refused connections fail fast, so a retry count would run out long
        // before a restarting server is back: let the time bound decide.
        max_retries: 10_000,
        retry_timeout: Duration::from_secs_f64(secs),
        ..Default::default()
    }
}

/// Open `uri` and return the store with the key prefix inside it.
pub fn open(uri: &str) -> Result<(Arc<dyn ObjectStore>, StorePath), LocationError> {
    let invalid = |message: String| LocationError::Invalid {
        uri: uri.to_string(),
        message,
    };
    let location = CheckpointUri::parse(uri).map_err(|e| invalid(e.to_string()))?;
    if let Some(path) = location.local_path() {
        std::fs::create_dir_all(path)
            .map_err(|e| invalid(format!("cannot create the directory: {e}")))?;
        let abs = std::fs::canonicalize(path).map_err(|e| invalid(e.to_string()))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(abs)
            .map_err(|e| invalid(e.to_string()))?;
        return Ok((Arc::new(fs), StorePath::default()));
    }
    let url = url::Url::parse(uri).map_err(|e| invalid(format!("not a URL: {e}")))?;
    let prefix = StorePath::from_url_path(url.path()).map_err(|e| invalid(e.to_string()))?;
    let store: Arc<dyn ObjectStore> = match location.scheme() {
        Scheme::File => unreachable!("local locations returned above"),
        Scheme::S3 => {
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_url(uri)
                .with_retry(retry_config());
            let endpoint = std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok();
            if plain_http(endpoint.as_deref()) {
                b = b.with_allow_http(true);
            }
            Arc::new(b.build().map_err(|e| invalid(e.to_string()))?)
        }
        Scheme::Gcs => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(uri)
                .with_retry(retry_config());
            if plain_http(gcs_base_url().as_deref()) {
                b = b.with_config(
                    object_store::gcp::GoogleConfigKey::Client(
                        object_store::ClientConfigKey::AllowHttp,
                    ),
                    "true",
                );
            }
            Arc::new(b.build().map_err(|e| invalid(e.to_string()))?)
        }
        Scheme::Azure => {
            let endpoint = std::env::var("AZURE_STORAGE_ENDPOINT").ok();
            let b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(uri)
                .with_retry(retry_config());
            let b = if plain_http(endpoint.as_deref()) {
                b.with_allow_http(true)
            } else {
                b
            };
            Arc::new(b.build().map_err(|e| invalid(e.to_string()))?)
        }
    };
    Ok((store, prefix))
}

/// Whether to allow plain HTTP: only where the endpoint the credentials
/// name is itself `http://` (a server on the cluster, an emulator), as for
/// `AWS_ENDPOINT_URL`; otherwise the stores' default, HTTPS only.
fn plain_http(endpoint: Option<&str>) -> bool {
    endpoint.is_some_and(|e| e.starts_with("http://"))
}

/// The endpoint a GCS service-account key names (`gcs_base_url`, set for
/// emulators and private endpoints), from `GOOGLE_SERVICE_ACCOUNT_KEY` or
/// the key file `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS`.
fn gcs_base_url() -> Option<String> {
    let key = std::env::var("GOOGLE_SERVICE_ACCOUNT_KEY")
        .ok()
        .or_else(|| {
            ["GOOGLE_SERVICE_ACCOUNT", "GOOGLE_APPLICATION_CREDENTIALS"]
                .iter()
                .find_map(|v| std::fs::read_to_string(std::env::var(v).ok()?).ok())
        })?;
    let json: serde_json::Value = serde_json::from_str(&key).ok()?;
    Some(json.get("gcs_base_url")?.as_str()?.to_string())
}

/// Classify a storage error: credentials/permission problems become [`LocationError::Denied`].
pub fn classify(uri: &str, e: object_store::Error) -> LocationError {
    let text = e.to_string();
    let denied = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || [
        "403",
        "401",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "Forbidden",
    ]
    .iter()
    .any(|m| text.contains(m));
    if denied {
        LocationError::Denied {
            uri: uri.to_string(),
            hint: CheckpointUri::parse(uri)
                .map_or(Scheme::File, |u| u.scheme())
                .credential_hint(),
            source: e,
        }
    } else {
        LocationError::Store {
            uri: uri.to_string(),
            source: e,
        }
    }
}
