//! Reading a training's progress from its checkpoint storage: the newest
//! `latest` manifest the trainer wrote under the checkpoint URI.
//!
//! The trainer writes `<uri>/<MODEL.NAME>/<TAG>/latest` (a copy of the newest
//! checkpoint's manifest, written last), so the operator does not need to
//! know the model name: it lists the prefix and takes the newest `latest`.

use crate::crd::{CheckpointStatus, EvalStatus};
use crate::observe::progress_from_manifest;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use std::collections::BTreeMap;

/// Why progress could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// The URI cannot be opened.
    #[error("checkpoint URI {uri}: {message}")]
    Invalid {
        /// The URI.
        uri: String,
        /// What is wrong.
        message: String,
    },
    /// Listing or reading failed.
    #[error("reading {uri}: {source}")]
    Storage {
        /// The URI.
        uri: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// The manifest is not JSON of the expected shape.
    #[error("{uri}: not a checkpoint manifest: {source}")]
    Manifest {
        /// The manifest's URI.
        uri: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// Open `uri` with credentials given as the trainer's environment variable
/// names (`AWS_ACCESS_KEY_ID`, ...), typically the referenced Secret's data.
pub fn open_store(
    uri: &str,
    credentials: &BTreeMap<String, String>,
) -> Result<(Box<dyn ObjectStore>, StorePath), ProgressError> {
    let invalid = |message: String| ProgressError::Invalid {
        uri: uri.to_string(),
        message,
    };
    let url = if uri.contains("://") {
        url::Url::parse(uri).map_err(|e| invalid(e.to_string()))?
    } else {
        let abs = std::path::absolute(uri).map_err(|e| invalid(e.to_string()))?;
        url::Url::from_directory_path(abs).map_err(|_| invalid("not a usable path".into()))?
    };
    // object_store's configuration keys are the variable names in lower case.
    let mut options: Vec<(String, String)> = credentials
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let endpoint = credentials
        .get("AWS_ENDPOINT_URL")
        .or_else(|| credentials.get("AWS_ENDPOINT"));
    if let Some(ep) = endpoint {
        options.push(("aws_endpoint".into(), ep.clone()));
        if ep.starts_with("http://") {
            options.push(("allow_http".into(), "true".into()));
        }
    }
    options.retain(|(k, _)| k != "aws_endpoint_url");
    object_store::parse_url_opts(&url, options).map_err(|e| invalid(e.to_string()))
}

/// The newest `latest` manifest under `uri`, as status fields; `None` when
/// nothing was saved yet.
pub async fn read_progress(
    uri: &str,
    credentials: &BTreeMap<String, String>,
) -> Result<Option<(CheckpointStatus, Option<EvalStatus>)>, ProgressError> {
    let (store, prefix) = open_store(uri, credentials)?;
    let storage = |source| ProgressError::Storage {
        uri: uri.to_string(),
        source,
    };
    let listed: Vec<_> = match store.list(Some(&prefix)).try_collect().await {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(storage(e)),
    };
    let Some(newest) = listed
        .into_iter()
        .filter(|m| m.location.filename() == Some("latest"))
        .max_by_key(|m| m.last_modified)
    else {
        return Ok(None);
    };
    let bytes = store
        .get(&newest.location)
        .await
        .map_err(storage)?
        .bytes()
        .await
        .map_err(storage)?;
    // The run directory relative to the URI: the manifest's parent.
    let relative: Vec<&str> = newest
        .location
        .as_ref()
        .strip_prefix(prefix.as_ref())
        .unwrap_or(newest.location.as_ref())
        .trim_start_matches('/')
        .split('/')
        .collect();
    let run_dir = relative[..relative.len().saturating_sub(1)].join("/");
    let base = uri.trim_end_matches('/');
    let dir_uri = if run_dir.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{run_dir}")
    };
    progress_from_manifest(&bytes, &dir_uri)
        .map(Some)
        .map_err(|source| ProgressError::Manifest {
            uri: format!("{dir_uri}/latest"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_the_newest_latest_under_the_uri() {
        let dir = tempfile::tempdir().unwrap();
        let none = read_progress(dir.path().to_str().unwrap(), &BTreeMap::new())
            .await
            .unwrap();
        assert!(none.is_none());
        let run = dir.path().join("tiny/default");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("latest"),
            br#"{"dir":"ckpt_epoch_3","epoch":3,"step":40,"saved_at":"2026-11-29T01:00:00Z",
                "eval":{"top1":61.5,"many":70.0,"medium":55.0,"few":40.0}}"#,
        )
        .unwrap();
        std::fs::write(run.join("not-latest"), b"{}").unwrap();
        let uri = format!("file://{}", dir.path().display());
        let (c, e) = read_progress(&uri, &BTreeMap::new())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.uri, format!("{uri}/tiny/default/ckpt_epoch_3"));
        assert_eq!((c.epoch, c.step), (3, 40));
        assert_eq!(e.unwrap().few, Some(40.0));
        std::fs::write(run.join("latest"), b"not json").unwrap();
        let err = read_progress(&uri, &BTreeMap::new()).await.unwrap_err();
        assert!(
            err.to_string().contains("not a checkpoint manifest"),
            "{err}"
        );
    }
}
