//! Checkpoints through `object_store`: one directory per checkpoint
//! (`ckpt_epoch_{N}/` at the end of epoch N, `ckpt_epoch_{N}_iter_{I}/` when
//! stopped after I iterations of epoch N) holding `model.safetensors`, `optimizer.safetensors`
//! and `meta.json`. `meta.json` is written last, so a directory without it
//! (an interrupted save) is never picked for resume.

use object_store::{path::Path as StorePath, ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::Tensor;

/// Tensors by name, as stored in a safetensors file.
pub type NamedTensors = Vec<(String, Tensor)>;

/// What a checkpoint records besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// Epoch of the checkpoint (0-based).
    pub epoch: u64,
    /// Iterations done in `epoch` when saved mid-epoch (preemption);
    /// `None` when the epoch is complete.
    #[serde(default)]
    pub iterations_done: Option<u64>,
    /// Optimiser steps taken.
    pub step: u64,
    /// Micro-batches processed since the start of training.
    pub micro_step: u64,
    /// LR the next optimiser step will use.
    pub next_lr: f64,
    /// Best top-1 so far.
    pub max_accuracy: f64,
    /// Latest evaluation, if any.
    pub eval: Option<crate::eval::EvalReport>,
    /// The full config, as YAML.
    pub config: String,
    /// RFC 3339 time of the save.
    pub saved_at: String,
}

/// A checkpoint location (local path, `file://`, or any `object_store` URI).
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    uri: String,
    rt: tokio::runtime::Runtime,
}

fn tensors_to_bytes(tensors: &[(String, Tensor)]) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("t.safetensors");
    let refs: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu)))
        .collect();
    Tensor::write_safetensors(&refs, &p)?;
    Ok(std::fs::read(&p)?)
}

fn bytes_to_tensors(bytes: &[u8]) -> anyhow::Result<Vec<(String, Tensor)>> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("t.safetensors");
    std::fs::write(&p, bytes)?;
    Ok(Tensor::read_safetensors(&p)?)
}

impl CheckpointStore {
    /// Open `uri`; a plain path is a local directory (created if needed).
    pub fn open(uri: &str) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (store, prefix): (Arc<dyn ObjectStore>, StorePath) = if uri.contains("://") {
            let url = url_parse(uri)?;
            let (s, p) = object_store::parse_url(&url).map_err(|e| {
                anyhow::anyhow!(
                    "checkpoint URI {uri}: {e} (supported here: file://, or a plain path)"
                )
            })?;
            (Arc::from(s), p)
        } else {
            std::fs::create_dir_all(uri)
                .map_err(|e| anyhow::anyhow!("cannot create output directory {uri}: {e}"))?;
            let abs = std::fs::canonicalize(uri)?;
            (
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(abs)?),
                StorePath::default(),
            )
        };
        Ok(Self {
            store,
            prefix,
            uri: uri.to_string(),
            rt,
        })
    }

    fn key(&self, parts: &[&str]) -> StorePath {
        let mut p = self.prefix.clone();
        for part in parts {
            p = p.child(*part);
        }
        p
    }

    /// Save a checkpoint for `meta.epoch`; returns its location.
    pub fn save(
        &self,
        model: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
        meta: &CheckpointMeta,
    ) -> anyhow::Result<String> {
        let dir = checkpoint_dir_name(meta.epoch, meta.iterations_done);
        let model_bytes = tensors_to_bytes(model)?;
        let opt_bytes = tensors_to_bytes(optimizer)?;
        let meta_bytes = serde_json::to_vec_pretty(meta)?;
        self.rt.block_on(async {
            self.store
                .put(
                    &self.key(&[&dir, "model.safetensors"]),
                    PutPayload::from(model_bytes),
                )
                .await?;
            self.store
                .put(
                    &self.key(&[&dir, "optimizer.safetensors"]),
                    PutPayload::from(opt_bytes),
                )
                .await?;
            self.store
                .put(
                    &self.key(&[&dir, "meta.json"]),
                    PutPayload::from(meta_bytes),
                )
                .await?;
            Ok::<_, object_store::Error>(())
        })?;
        Ok(format!("{}/{dir}", self.uri.trim_end_matches('/')))
    }

    /// The newest complete checkpoint (highest epoch with a `meta.json`).
    pub fn latest(&self) -> anyhow::Result<Option<(String, CheckpointMeta)>> {
        use futures::TryStreamExt;
        let entries: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(async { self.store.list(Some(&self.prefix)).try_collect().await })?;
        let mut best: Option<((u64, u64), String)> = None;
        for e in entries {
            let parts: Vec<String> = e.location.parts().map(|p| p.as_ref().to_string()).collect();
            if parts.last().map(String::as_str) != Some("meta.json") || parts.len() < 2 {
                continue;
            }
            let dir = &parts[parts.len() - 2];
            if let Some(key) = parse_checkpoint_dir_name(dir) {
                if best.as_ref().is_none_or(|(b, _)| key > *b) {
                    best = Some((key, dir.clone()));
                }
            }
        }
        let Some((_, dir)) = best else {
            return Ok(None);
        };
        let bytes = self.read(&dir, "meta.json")?;
        let meta: CheckpointMeta = serde_json::from_slice(&bytes)?;
        Ok(Some((dir, meta)))
    }

    fn read(&self, dir: &str, name: &str) -> anyhow::Result<Vec<u8>> {
        let key = self.key(&[dir, name]);
        let bytes = self
            .rt
            .block_on(async { self.store.get(&key).await?.bytes().await })?;
        Ok(bytes.to_vec())
    }

    /// Read the model and optimizer tensors of checkpoint `dir`.
    pub fn load_tensors(&self, dir: &str) -> anyhow::Result<(NamedTensors, NamedTensors)> {
        Ok((
            bytes_to_tensors(&self.read(dir, "model.safetensors")?)?,
            bytes_to_tensors(&self.read(dir, "optimizer.safetensors")?)?,
        ))
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
fn parse_checkpoint_dir_name(dir: &str) -> Option<(u64, u64)> {
    let rest = dir.strip_prefix("ckpt_epoch_")?;
    match rest.split_once("_iter_") {
        Some((e, i)) => Some((e.parse().ok()?, i.parse().ok()?)),
        None => Some((rest.parse().ok()?, u64::MAX)),
    }
}

fn url_parse(uri: &str) -> anyhow::Result<url::Url> {
    url::Url::parse(uri).map_err(|e| anyhow::anyhow!("invalid checkpoint URI {uri}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(epoch: u64) -> CheckpointMeta {
        CheckpointMeta {
            epoch,
            iterations_done: None,
            step: 3,
            micro_step: 3,
            next_lr: 0.1,
            max_accuracy: 0.0,
            eval: None,
            config: String::new(),
            saved_at: String::new(),
        }
    }

    #[test]
    fn latest_complete_checkpoint_wins_and_partial_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let s = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        assert!(s.latest().unwrap().is_none());
        let model = vec![("w".to_string(), Tensor::from_slice(&[1f32, 2.0]))];
        s.save(&model, &[], &meta(0)).unwrap();
        s.save(&model, &[], &meta(2)).unwrap();
        // An interrupted save of epoch 5: tensors written, meta.json never.
        std::fs::create_dir_all(dir.path().join("ckpt_epoch_5")).unwrap();
        std::fs::write(
            dir.path().join("ckpt_epoch_5/model.safetensors"),
            b"garbage",
        )
        .unwrap();
        let (d, m) = s.latest().unwrap().unwrap();
        assert_eq!((d.as_str(), m.epoch), ("ckpt_epoch_2", 2));
        let (t, _) = s.load_tensors(&d).unwrap();
        assert!(t[0].1.equal(&model[0].1));
    }

    #[test]
    fn mid_epoch_checkpoints_order_before_the_epoch_end() {
        assert!(
            parse_checkpoint_dir_name("ckpt_epoch_1_iter_5")
                < parse_checkpoint_dir_name("ckpt_epoch_1")
        );
        assert!(
            parse_checkpoint_dir_name("ckpt_epoch_1")
                < parse_checkpoint_dir_name("ckpt_epoch_2_iter_0")
        );
        assert!(
            parse_checkpoint_dir_name("ckpt_epoch_1_iter_5")
                < parse_checkpoint_dir_name("ckpt_epoch_1_iter_12")
        );
        assert_eq!(parse_checkpoint_dir_name("notes"), None);
        let dir = tempfile::tempdir().unwrap();
        let s = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        s.save(&[], &[], &meta(1)).unwrap();
        s.save(
            &[],
            &[],
            &CheckpointMeta {
                iterations_done: Some(3),
                ..meta(2)
            },
        )
        .unwrap();
        let (d, m) = s.latest().unwrap().unwrap();
        assert_eq!(
            (d.as_str(), m.iterations_done),
            ("ckpt_epoch_2_iter_3", Some(3))
        );
    }

    #[test]
    fn file_uri_works() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().display());
        let s = CheckpointStore::open(&uri).unwrap();
        s.save(&[("w".into(), Tensor::from_slice(&[3f32]))], &[], &meta(1))
            .unwrap();
        assert!(dir.path().join("ckpt_epoch_1/meta.json").exists());
        assert_eq!(s.latest().unwrap().unwrap().1.epoch, 1);
    }
}
