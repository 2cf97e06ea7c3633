//! Checkpoints on any `object_store` location.
//!
//! Layout under the run's output URI:
//!
//! ```text
//! ckpt_epoch_3/            end of epoch 3 (0-based)
//!   model.safetensors      weights and buffers
//!   optimizer.safetensors  AdamW moments and step
//!   meta.json              epoch, step, data position, schedule, scaler, config, eval
//!   manifest.json          SHA-256 and size of each file above; written after them
//! ckpt_epoch_4_iter_120/   mid-epoch (preemption), after 120 iterations of epoch 4
//! latest                   a copy of the newest manifest; written last
//! attempt                  the newest restart attempt that started (fencing)
//! ```
//!
//! Saves are fenced by restart attempt (`RIDE_RESTART_ATTEMPT`, set by the
//! operator and `ride-trainer launch`): rank 0 claims the location for its
//! attempt as it starts, and a process of an older attempt (a rank cut off
//! behind a partition, whose gang was replaced) writes nothing once a newer
//! one has claimed it or saved; `latest` is written conditionally on the
//! version read where the store supports it.
//!
//! A crash during a save leaves `latest` pointing at the previous checkpoint.
//! Resume verifies every file against its checksum and falls back to older
//! checkpoints when one is corrupt or incomplete.

pub mod location;
pub mod stream;
pub mod writer;

pub use location::LocationError;
pub use writer::{CheckpointWriter, Snapshot};

use object_store::{path::Path as StorePath, ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use tch::Tensor;

/// Tensors by name, as stored in a safetensors file.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Name of the pointer to the newest checkpoint.
pub const LATEST: &str = "latest";
/// Name of the claim of the newest attempt that started on a location.
pub const ATTEMPT: &str = "attempt";
/// Name of the per-checkpoint manifest.
pub const MANIFEST: &str = "manifest.json";
const MODEL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const META_FILE: &str = "meta.json";

/// What a checkpoint records besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// Epoch of the checkpoint (0-based).
    pub epoch: u64,
    /// Iterations done in `epoch` when saved mid-epoch (preemption);
    /// `None` when the epoch is complete.
    #[serde(default)]
    pub iterations_done: Option<u64>,
    /// Global sample positions of `epoch` consumed (all ranks together), for
    /// resuming mid-epoch at any world size.
    #[serde(default)]
    pub samples_done: u64,
    /// World size that wrote the checkpoint.
    #[serde(default = "one")]
    pub world_size: u64,
    /// Gradient accumulation steps it trained with (`None`: the config's,
    /// in checkpoints from before resizes kept the global batch).
    #[serde(default)]
    pub accumulation: Option<u64>,
    /// Optimiser steps taken.
    pub step: u64,
    /// Micro-batches processed since the start of training.
    pub micro_step: u64,
    /// LR the next optimiser step will use.
    pub next_lr: f64,
    /// Best top-1 so far.
    pub max_accuracy: f64,
    /// Loss scale and growth tracker of mixed precision, when used.
    #[serde(default)]
    pub scaler: Option<(f64, i64)>,
    /// Latest evaluation, if any.
    pub eval: Option<crate::eval::EvalReport>,
    /// The full config, as YAML.
    pub config: String,
    /// RFC 3339 time of the save.
    pub saved_at: String,
}

fn one() -> u64 {
    1
}

/// Checksum and size of one checkpoint file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// The summary of a checkpoint that `manifest.json` and `latest` hold; small,
/// so operators and dashboards can read progress without the tensors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Layout version.
    pub format: u32,
    /// Checkpoint directory name, relative to the output URI.
    pub dir: String,
    /// Epoch (0-based).
    pub epoch: u64,
    /// Iterations done in `epoch` for a mid-epoch checkpoint.
    pub iterations_done: Option<u64>,
    /// Optimiser steps.
    pub step: u64,
    /// World size that wrote it.
    pub world_size: u64,
    /// RFC 3339 time of the save.
    pub saved_at: String,
    /// Evaluation at this checkpoint (end-of-epoch checkpoints only).
    pub eval: Option<EvalSummary>,
    /// Every file of the checkpoint.
    pub files: BTreeMap<String, FileDigest>,
    /// The launcher's restart attempt that wrote it (`RIDE_RESTART_ATTEMPT`),
    /// which fences saves: none of an older attempt replaces `latest` once a
    /// newer one wrote it. Absent in checkpoints of runs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
}

/// Headline evaluation numbers, percent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalSummary {
    /// Top-1 overall.
    pub top1: f64,
    /// Top-5 overall.
    pub top5: f64,
    /// Many-shot split.
    pub many: Option<f64>,
    /// Medium-shot split.
    pub medium: Option<f64>,
    /// Few-shot split.
    pub few: Option<f64>,
}

impl From<&crate::eval::EvalReport> for EvalSummary {
    fn from(r: &crate::eval::EvalReport) -> Self {
        Self {
            top1: r.top1,
            top5: r.top5,
            many: r.many,
            medium: r.medium,
            few: r.few,
        }
    }
}

/// Errors reading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Opening or reaching the location.
    #[error(transparent)]
    Location(#[from] LocationError),
    /// A file does not match its manifest.
    #[error("checkpoint {dir}: {file} is corrupt or incomplete ({message})")]
    Corrupt {
        /// Checkpoint directory.
        dir: String,
        /// File name.
        file: String,
        /// What differs.
        message: String,
    },
    /// Tensor (de)serialisation.
    #[error("checkpoint tensors: {0}")]
    Tensor(#[from] tch::TchError),
    /// JSON (de)serialisation.
    #[error("checkpoint metadata: {0}")]
    Json(#[from] serde_json::Error),
    /// Local I/O.
    #[error("checkpoint I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A newer attempt of this run has started: this (older) one's save
    /// would land beside or over the newer gang's, so nothing is written. A rank that
    /// sees this was replaced (its node was cut off, say) and should stop.
    #[error("checkpoint not saved: attempt {newer} of this run started after attempt {mine} (this process), so this process was replaced (was its node cut off?) and its checkpoints must not become latest")]
    Fenced {
        /// This process's attempt.
        mine: u64,
        /// The attempt that wrote `latest`.
        newer: u64,
    },
}

/// A loaded, verified checkpoint.
pub struct LoadedCheckpoint {
    /// Directory name.
    pub dir: String,
    /// Metadata.
    pub meta: CheckpointMeta,
    /// Model tensors.
    pub model: NamedTensors,
    /// Optimiser tensors.
    pub optimizer: NamedTensors,
}

/// A checkpoint location.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    uri: String,
    /// The directory, when the location is on this machine.
    local_dir: Option<std::path::PathBuf>,
    rt: tokio::runtime::Runtime,
    /// This process's restart attempt, when a launcher gave one.
    attempt: Option<u64>,
}

/// Serialise tensors (moved to the CPU) as a safetensors file image, in
/// memory (the bytes a save streams).
pub fn tensors_to_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, CheckpointError> {
    stream::safetensors_bytes(tensors)
}

fn bytes_to_tensors(bytes: &[u8]) -> Result<NamedTensors, CheckpointError> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("t.safetensors");
    std::fs::write(&p, bytes)?;
    Ok(Tensor::read_safetensors(&p)?)
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of a digest, as manifests record it.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl CheckpointStore {
    /// Open `uri` (a plain path is a local directory, created if needed).
    pub fn open(uri: &str) -> Result<Self, CheckpointError> {
        // Workers of their own, so that a save's part uploads go on while
        // the calling thread makes and hashes the next part.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ride-ckpt-io")
            .enable_all()
            .build()?;
        let (store, prefix) = location::open(uri)?;
        let local_dir = ride_contract::CheckpointUri::parse(uri)
            .ok()
            .and_then(|u| u.local_path().map(std::path::Path::to_path_buf));
        Ok(Self {
            store,
            prefix,
            uri: uri.trim_end_matches('/').to_string(),
            local_dir,
            rt,
            attempt: None,
        })
    }

    /// Save as restart attempt `attempt` (fencing: see [`Manifest::attempt`]).
    pub fn with_attempt(mut self, attempt: Option<u64>) -> Self {
        self.attempt = attempt;
        self
    }

    /// The attempt from the launcher's `RIDE_RESTART_ATTEMPT`, if set and a number.
    pub fn attempt_from_env() -> Option<u64> {
        std::env::var(ride_contract::ENV_RESTART_ATTEMPT)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The newest attempt known to have started (the [`ATTEMPT`] claim) or
    /// saved (`latest`'s) on this location.
    fn newest_attempt(&self, latest: Option<&Manifest>) -> Result<Option<u64>, CheckpointError> {
        let claimed = self
            .read(&[ATTEMPT])?
            .and_then(|b| String::from_utf8(b).ok()?.trim().parse::<u64>().ok());
        Ok(claimed.max(latest.and_then(|m| m.attempt)))
    }

    /// Refuse to save when a newer attempt has started or saved.
    fn fence(&self, latest: Option<&Manifest>) -> Result<(), CheckpointError> {
        let Some(mine) = self.attempt else {
            return Ok(());
        };
        match self.newest_attempt(latest)? {
            Some(newer) if newer > mine => Err(CheckpointError::Fenced { mine, newer }),
            _ => Ok(()),
        }
    }

    /// Claim the location for this process's attempt as it starts (rank 0,
    /// before training): from then on no older attempt's save lands, even
    /// before this one's first. Refused when a newer attempt claimed it
    /// (this process is the stale one).
    pub fn claim_attempt(&self) -> Result<(), CheckpointError> {
        let Some(mine) = self.attempt else {
            return Ok(());
        };
        let latest = self.read_latest()?.map(|(m, _)| m);
        match self.newest_attempt(latest.as_ref())? {
            Some(newer) if newer > mine => Err(CheckpointError::Fenced { mine, newer }),
            Some(same) if same == mine => Ok(()),
            _ => self.put(&[ATTEMPT], mine.to_string().into_bytes()),
        }
    }

    /// `latest` as stored, with the version a conditional write needs.
    fn read_latest(
        &self,
    ) -> Result<Option<(Manifest, object_store::UpdateVersion)>, CheckpointError> {
        let key = self.key(&[LATEST]);
        let got = self.rt.block_on(async {
            let r = self.store.get(&key).await?;
            let version = object_store::UpdateVersion {
                e_tag: r.meta.e_tag.clone(),
                version: r.meta.version.clone(),
            };
            Ok::<_, object_store::Error>((r.bytes().await?, version))
        });
        match got {
            // A `latest` that does not parse fences nothing (and is replaced).
            Ok((b, v)) => Ok(serde_json::from_slice(&b).ok().map(|m| (m, v))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Point `latest` at `json` unless a newer attempt wrote it: a
    /// conditional write on the version read where the store has one (an
    /// object store configured for it), else a write right after the check.
    fn write_latest(&self, json: Vec<u8>) -> Result<(), CheckpointError> {
        use object_store::{PutMode, PutOptions};
        for _ in 0..5 {
            let current = self.read_latest()?;
            self.fence(current.as_ref().map(|(m, _)| m))?;
            let mode = match current {
                Some((_, v)) if v.e_tag.is_some() || v.version.is_some() => PutMode::Update(v),
                // The first save: nothing to fence against. (Not `Create`:
                // S3-compatible stores without If-None-Match refuse it.)
                _ => PutMode::Overwrite,
            };
            let key = self.key(&[LATEST]);
            let payload = PutPayload::from(json.clone());
            let opts = PutOptions::from(mode);
            match self.rt.block_on(self.store.put_opts(&key, payload, opts)) {
                Ok(_) => return Ok(()),
                // Someone wrote it between our read and our write: look again.
                Err(
                    object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. },
                ) => continue,
                Err(object_store::Error::NotImplemented) => {
                    return self.put(&[LATEST], json);
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        Err(CheckpointError::Io(std::io::Error::other(
            "latest kept changing under five conditional writes",
        )))
    }

    /// The location's URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The location's directory when it is on this machine (a path or
    /// `file://`); `None` for an object store.
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        self.local_dir.as_deref()
    }

    fn key(&self, parts: &[&str]) -> StorePath {
        let mut p = self.prefix.clone();
        for part in parts {
            p = p.child(*part);
        }
        p
    }

    fn err(&self, e: object_store::Error) -> CheckpointError {
        location::classify(&self.uri, e).into()
    }

    /// Check before training that the location can be read and (with
    /// `write`) written, so bad credentials fail fast with a clear message.
    pub fn probe(&self, write: bool) -> Result<(), CheckpointError> {
        use futures::TryStreamExt;
        self.rt.block_on(async {
            let _: Vec<_> = self
                .store
                .list(Some(&self.prefix))
                .try_collect()
                .await
                .map_err(|e| self.err(e))?;
            if write {
                let key = self.key(&[".ride-write-probe"]);
                self.store
                    .put(&key, PutPayload::from_static(b"ok"))
                    .await
                    .map_err(|e| self.err(e))?;
                self.store.delete(&key).await.map_err(|e| self.err(e))?;
            }
            Ok(())
        })
    }

    fn put(&self, parts: &[&str], bytes: Vec<u8>) -> Result<(), CheckpointError> {
        let key = self.key(parts);
        self.rt
            .block_on(self.store.put(&key, PutPayload::from(bytes)))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn read(&self, parts: &[&str]) -> Result<Option<Vec<u8>>, CheckpointError> {
        let key = self.key(parts);
        let got = self
            .rt
            .block_on(async { self.store.get(&key).await?.bytes().await });
        match got {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Write a checkpoint: the files, then its manifest, then `latest`.
    /// Each tensor file is streamed from the host copies straight into a
    /// multipart upload, hashed on the way ([`stream`]). Returns the
    /// checkpoint's URI and its manifest.
    pub fn save(
        &self,
        model: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
        meta: &CheckpointMeta,
    ) -> Result<(String, Manifest), CheckpointError> {
        let dir = self.fenced_dir(meta)?;
        let mut digests = BTreeMap::new();
        for (name, tensors) in [(MODEL_FILE, model), (OPTIMIZER_FILE, optimizer)] {
            let digest = self.put_tensors(&[&dir, name], tensors)?;
            digests.insert(name.to_string(), digest);
        }
        let meta_json = serde_json::to_vec_pretty(meta)?;
        digests.insert(
            META_FILE.to_string(),
            self.put_digested(&[&dir, META_FILE], meta_json)?,
        );
        self.finish_save(meta, dir, digests)
    }

    /// Write already-serialised checkpoint files, then the manifest, then `latest`.
    pub fn save_files(
        &self,
        meta: &CheckpointMeta,
        files: Vec<(&str, Vec<u8>)>,
    ) -> Result<(String, Manifest), CheckpointError> {
        let dir = self.fenced_dir(meta)?;
        let mut digests = BTreeMap::new();
        for (name, bytes) in files {
            digests.insert(name.to_string(), self.put_digested(&[&dir, name], bytes)?);
        }
        self.finish_save(meta, dir, digests)
    }

    /// The directory `meta`'s checkpoint goes to, once the fence allows it:
    /// before any file, an older attempt must not write into the
    /// directories a newer one saves to.
    fn fenced_dir(&self, meta: &CheckpointMeta) -> Result<String, CheckpointError> {
        self.fence(self.read_latest()?.as_ref().map(|(m, _)| m))?;
        Ok(checkpoint_dir_name(meta.epoch, meta.iterations_done))
    }

    fn put_digested(&self, parts: &[&str], bytes: Vec<u8>) -> Result<FileDigest, CheckpointError> {
        let digest = FileDigest {
            sha256: sha256_hex(&bytes),
            bytes: bytes.len() as u64,
        };
        self.put(parts, bytes)?;
        Ok(digest)
    }

    /// Stream `tensors` (host copies) as a safetensors file to `parts`.
    fn put_tensors(
        &self,
        parts: &[&str],
        tensors: &[(String, Tensor)],
    ) -> Result<FileDigest, CheckpointError> {
        let key = self.key(parts);
        let produce = |sink: &mut dyn FnMut(bytes::Bytes) -> Result<(), stream::StreamError>| {
            stream::safetensors_pieces(tensors, sink)
        };
        stream::put_streamed(&self.rt, self.store.as_ref(), &key, produce).map_err(|e| match e {
            stream::StreamError::Store(e) => self.err(e),
            stream::StreamError::Checkpoint(e) => e,
        })
    }

    /// The manifest (after every file), then `latest`.
    fn finish_save(
        &self,
        meta: &CheckpointMeta,
        dir: String,
        digests: BTreeMap<String, FileDigest>,
    ) -> Result<(String, Manifest), CheckpointError> {
        let manifest = Manifest {
            format: 1,
            dir: dir.clone(),
            epoch: meta.epoch,
            iterations_done: meta.iterations_done,
            step: meta.step,
            world_size: meta.world_size,
            saved_at: meta.saved_at.clone(),
            eval: meta
                .eval
                .as_ref()
                .filter(|_| meta.iterations_done.is_none())
                .map(EvalSummary::from),
            files: digests,
            attempt: self.attempt,
        };
        let json = serde_json::to_vec_pretty(&manifest)?;
        self.put(&[&dir, MANIFEST], json.clone())?;
        self.write_latest(json)?;
        Ok((format!("{}/{dir}", self.uri), manifest))
    }

    /// Complete checkpoints (directories with a manifest), newest first.
    pub fn list(&self) -> Result<Vec<String>, CheckpointError> {
        Ok(self
            .list_dirs()?
            .into_iter()
            .filter(|(_, complete)| *complete)
            .map(|(d, _)| d)
            .collect())
    }

    /// Every checkpoint directory (newest first) and whether it has a manifest.
    fn list_dirs(&self) -> Result<Vec<(String, bool)>, CheckpointError> {
        use futures::TryStreamExt;
        let entries: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(async { self.store.list(Some(&self.prefix)).try_collect().await })
            .map_err(|e| self.err(e))?;
        let depth = self.prefix.parts().count();
        let mut dirs: BTreeMap<(u64, u64), (String, bool)> = BTreeMap::new();
        for e in entries {
            let parts: Vec<String> = e.location.parts().map(|p| p.as_ref().to_string()).collect();
            if parts.len() != depth + 2 {
                continue;
            }
            let dir = &parts[depth];
            if let Some(key) = parse_checkpoint_dir_name(dir) {
                let entry = dirs.entry(key).or_insert_with(|| (dir.clone(), false));
                entry.1 |= parts[depth + 1] == MANIFEST;
            }
        }
        Ok(dirs.into_values().rev().collect())
    }

    /// The manifest `latest` points to, if any (for status displays).
    pub fn latest_manifest(&self) -> Result<Option<Manifest>, CheckpointError> {
        match self.read(&[LATEST])? {
            Some(b) => Ok(Some(serde_json::from_slice(&b)?)),
            None => Ok(None),
        }
    }

    /// Load checkpoint `dir`, verifying every file against its manifest.
    pub fn load(&self, dir: &str) -> Result<LoadedCheckpoint, CheckpointError> {
        let corrupt = |file: &str, message: String| CheckpointError::Corrupt {
            dir: dir.to_string(),
            file: file.to_string(),
            message,
        };
        let manifest: Manifest = match self.read(&[dir, MANIFEST])? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| corrupt(MANIFEST, e.to_string()))?,
            None => return Err(corrupt(MANIFEST, "missing".into())),
        };
        let mut contents = BTreeMap::new();
        for name in [MODEL_FILE, OPTIMIZER_FILE, META_FILE] {
            let digest = manifest
                .files
                .get(name)
                .ok_or_else(|| corrupt(name, "not listed in the manifest".into()))?;
            let bytes = self
                .read(&[dir, name])?
                .ok_or_else(|| corrupt(name, "missing".into()))?;
            if bytes.len() as u64 != digest.bytes {
                return Err(corrupt(
                    name,
                    format!("{} bytes, manifest says {}", bytes.len(), digest.bytes),
                ));
            }
            let sha = sha256_hex(&bytes);
            if sha != digest.sha256 {
                return Err(corrupt(
                    name,
                    format!("SHA-256 {sha}, manifest says {}", digest.sha256),
                ));
            }
            contents.insert(name, bytes);
        }
        Ok(LoadedCheckpoint {
            dir: dir.to_string(),
            meta: serde_json::from_slice(&contents[META_FILE])?,
            model: bytes_to_tensors(&contents[MODEL_FILE])?,
            optimizer: bytes_to_tensors(&contents[OPTIMIZER_FILE])?,
        })
    }

    /// The newest checkpoint that verifies: the one `latest` names, else the
    /// newest complete directory, skipping (and reporting) corrupt ones.
    pub fn load_newest_valid(
        &self,
        mut skipped: impl FnMut(&str, &CheckpointError),
    ) -> Result<Option<LoadedCheckpoint>, CheckpointError> {
        let mut candidates = self.list()?;
        if let Ok(Some(m)) = self.latest_manifest() {
            candidates.retain(|d| d != &m.dir);
            candidates.insert(0, m.dir);
        }
        for dir in candidates {
            match self.load(&dir) {
                Ok(c) => return Ok(Some(c)),
                Err(
                    e @ (CheckpointError::Corrupt { .. }
                    | CheckpointError::Tensor(_)
                    | CheckpointError::Json(_)),
                ) => skipped(&dir, &e),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Delete checkpoints older than `current` beyond the newest `keep_last`
    /// complete ones of each kind — end-of-epoch and mid-epoch (the clock's
    /// and preemption saves), so frequent time-based saves never push out
    /// the epoch checkpoints — sparing the best end-of-epoch checkpoint
    /// when `keep_best`.
    /// Incomplete directories older than `current` go too. `keep_last == 0`
    /// keeps everything. Returns the deleted directory names.
    pub fn apply_retention(
        &self,
        current: &str,
        keep_last: usize,
        keep_best: bool,
    ) -> Result<Vec<String>, CheckpointError> {
        if keep_last == 0 {
            return Ok(Vec::new());
        }
        let Some(current_key) = parse_checkpoint_dir_name(current) else {
            return Ok(Vec::new());
        };
        let dirs = self.list_dirs()?;
        let best = if keep_best {
            let mut best: Option<(f64, String)> = None;
            for (d, complete) in &dirs {
                if !complete {
                    continue;
                }
                if let Some(Ok(m)) = self
                    .read(&[d, MANIFEST])?
                    .map(|b| serde_json::from_slice::<Manifest>(&b))
                {
                    if let Some(e) = m.eval {
                        if best.as_ref().is_none_or(|(t, _)| e.top1 > *t) {
                            best = Some((e.top1, d.clone()));
                        }
                    }
                }
            }
            best.map(|(_, d)| d)
        } else {
            None
        };
        // Complete checkpoints kept so far: [end of epoch, mid-epoch].
        let mut kept_complete = [0usize; 2];
        let mut deleted = Vec::new();
        for (d, complete) in dirs {
            let Some(key) = parse_checkpoint_dir_name(&d) else {
                continue;
            };
            if key > current_key {
                continue; // newer than what we just wrote: not ours to judge
            }
            let kind = usize::from(key.1 != u64::MAX);
            if complete && kept_complete[kind] < keep_last {
                kept_complete[kind] += 1;
                continue;
            }
            if best.as_deref() == Some(d.as_str()) || d == current {
                continue;
            }
            self.delete_dir(&d)?;
            deleted.push(d);
        }
        Ok(deleted)
    }

    fn delete_dir(&self, dir: &str) -> Result<(), CheckpointError> {
        use futures::TryStreamExt;
        let prefix = self.key(&[dir]);
        self.rt
            .block_on(async {
                let objs: Vec<object_store::ObjectMeta> =
                    self.store.list(Some(&prefix)).try_collect().await?;
                // The manifest goes first so a half-deleted directory is never "complete".
                let mut keys: Vec<StorePath> = objs.into_iter().map(|o| o.location).collect();
                keys.sort_by_key(|k| k.filename() != Some(MANIFEST));
                for k in keys {
                    self.store.delete(&k).await?;
                }
                Ok::<_, object_store::Error>(())
            })
            .map_err(|e| self.err(e))?;
        if let Some(local) = &self.local_dir {
            let _ = std::fs::remove_dir(local.join(dir));
        }
        Ok(())
    }
}

/// `ckpt_epoch_{E}` for a complete epoch, `ckpt_epoch_{E}_iter_{I}` mid-epoch.
pub fn checkpoint_dir_name(epoch: u64, iterations_done: Option<u64>) -> String {
    match iterations_done {
        Some(i) => format!("ckpt_epoch_{epoch}_iter_{i}"),
        None => format!("ckpt_epoch_{epoch}"),
    }
}

/// Order key of a checkpoint directory: (epoch, iterations done), where a
/// complete epoch sorts after all of its mid-epoch checkpoints.
pub fn parse_checkpoint_dir_name(dir: &str) -> Option<(u64, u64)> {
    let rest = dir.strip_prefix("ckpt_epoch_")?;
    match rest.split_once("_iter_") {
        Some((e, i)) => Some((e.parse().ok()?, i.parse().ok()?)),
        None => Some((rest.parse().ok()?, u64::MAX)),
    }
}

#[cfg(test)]
mod tests;
