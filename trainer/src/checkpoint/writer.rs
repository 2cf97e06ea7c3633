//! Background checkpoint writing: training blocks only for the copy of the
//! tensors to host memory; serialisation, checksums, upload, `latest` and
//! retention happen on a writer thread. One save is in flight at a time.

use super::{CheckpointError, CheckpointMeta, CheckpointStore, Manifest, NamedTensors};
use crate::metrics::Metrics;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tch::{Device, Tensor};

/// Host copies of everything a checkpoint holds.
pub struct Snapshot {
    /// Model tensors.
    pub model: NamedTensors,
    /// Optimiser tensors.
    pub optimizer: NamedTensors,
    /// Metadata.
    pub meta: CheckpointMeta,
}

fn host_copy(tensors: &[(String, Tensor)]) -> NamedTensors {
    tch::no_grad(|| {
        tensors
            .iter()
            .map(|(n, t)| {
                let t = t.detach();
                // On the CPU `to_device` would alias the live tensor, which training keeps updating.
                let host = if t.device() == Device::Cpu {
                    t.copy()
                } else {
                    t.to_device(Device::Cpu)
                };
                (n.clone(), host)
            })
            .collect()
    })
}

impl Snapshot {
    /// Copy `model` and `optimizer` tensors to host memory.
    pub fn capture(
        model: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
        meta: CheckpointMeta,
    ) -> Self {
        Self {
            model: host_copy(model),
            optimizer: host_copy(optimizer),
            meta,
        }
    }
}

/// Retention policy.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Complete checkpoints to keep (0 keeps all).
    pub keep_last: usize,
    /// Also keep the end-of-epoch checkpoint with the best top-1.
    pub keep_best: bool,
}

type SaveResult = Result<(String, Manifest), CheckpointError>;

/// Saves snapshots on a background thread.
pub struct CheckpointWriter {
    jobs: Option<Sender<Snapshot>>,
    results: Receiver<SaveResult>,
    in_flight: bool,
    worker: Option<JoinHandle<()>>,
    last: Option<String>,
}

impl CheckpointWriter {
    /// Start the writer thread for `store`.
    pub fn new(store: Arc<CheckpointStore>, retention: Retention, metrics: Metrics) -> Self {
        let (jobs, job_rx) = channel::<Snapshot>();
        let (result_tx, results) = channel::<SaveResult>();
        let worker = std::thread::Builder::new()
            .name("ride-ckpt-writer".into())
            .spawn(move || {
                for snap in job_rx {
                    let started = Instant::now();
                    let result = store.save(&snap.model, &snap.optimizer, &snap.meta);
                    match &result {
                        Ok((uri, manifest)) => {
                            let bytes: u64 = manifest.files.values().map(|f| f.bytes).sum();
                            let secs = started.elapsed().as_secs_f64();
                            metrics.checkpoint_save_seconds.set(secs);
                            metrics.checkpoint_bytes.set(bytes as i64);
                            metrics.checkpoint_epoch.set(manifest.epoch as i64);
                            metrics.record_checkpoint(uri, manifest);
                            tracing::info!(
                                checkpoint = %uri,
                                epoch = manifest.epoch,
                                bytes,
                                seconds = secs,
                                "checkpoint saved: {uri} ({:.1} MB in {secs:.2}s)",
                                bytes as f64 / 1e6
                            );
                            match store.apply_retention(&manifest.dir, retention.keep_last, retention.keep_best) {
                                Ok(deleted) if !deleted.is_empty() => {
                                    tracing::info!("checkpoint retention: removed {}", deleted.join(", "))
                                }
                                Ok(_) => {}
                                Err(e) => tracing::warn!("warning: checkpoint retention failed: {e}"),
                            }
                        }
                        Err(e) => {
                            metrics.checkpoint_failures.inc();
                            tracing::warn!(
                                "warning: checkpoint save failed: {e}; the previous checkpoint stays current"
                            );
                        }
                    }
                    if result_tx.send(result).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the checkpoint writer thread");
        Self {
            jobs: Some(jobs),
            results,
            in_flight: false,
            worker: Some(worker),
            last: None,
        }
    }

    /// Queue `snap` for saving, first waiting for the previous save. Returns
    /// the previous save's error, if it failed (the new save is still queued).
    pub fn submit(&mut self, snap: Snapshot) -> Result<(), CheckpointError> {
        let previous = self.collect();
        if let Some(jobs) = &self.jobs {
            if jobs.send(snap).is_ok() {
                self.in_flight = true;
            }
        }
        previous
    }

    fn collect(&mut self) -> Result<(), CheckpointError> {
        if !self.in_flight {
            return Ok(());
        }
        self.in_flight = false;
        match self.results.recv() {
            Ok(Ok((uri, _))) => {
                self.last = Some(uri);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CheckpointError::Io(std::io::Error::other(
                "the checkpoint writer thread stopped",
            ))),
        }
    }

    /// Wait for the save in flight; returns the URI of the last successful save.
    pub fn wait(&mut self) -> Result<Option<String>, CheckpointError> {
        self.collect()?;
        Ok(self.last.clone())
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        let _ = self.collect();
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
