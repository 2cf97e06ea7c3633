//! The training and evaluation driver: builds data, model, optimiser and
//! criterion from a [`Config`], runs epochs with the reference's semantics,
//! checkpoints, evaluates and reports.
//!
//! One run is a [`Trainer`](setup::Trainer): `setup` joins the job, builds
//! the model and optimiser and resumes; `fit` runs the epochs, each a loop of
//! `step::train_step` calls followed by `end_epoch` (evaluation and
//! checkpoint); `report` keeps the progress report and builds the summary.

mod evaluate;
mod fit;
mod meter;
mod precision;
mod report;
mod setup;
mod step;

use crate::config::Config;
use crate::dist::WorldInfo;
use crate::eval::EvalReport;
use anyhow::Result;
use std::path::PathBuf;
use tch::Device;

pub use crate::data::select::{build_datasets, Datasets};
pub use evaluate::{evaluate, throughput};
pub use report::{
    update_progress, write_eval_artifacts, write_termination_log, SharedProgress,
    ROUTING_CURVE_FILE,
};
pub use ride_contract::PREEMPTED_EXIT_CODE;
pub use setup::{build_criterion, output_location};

/// Training stopped on request (SIGTERM/SIGUSR1) after saving a checkpoint;
/// the process should exit with [`PREEMPTED_EXIT_CODE`] and be restarted.
#[derive(Debug, thiserror::Error)]
#[error("preempted: checkpoint saved to {checkpoint}; run the same command again to resume")]
pub struct Preempted {
    /// Where the checkpoint went.
    pub checkpoint: String,
}

/// Process-level options that are not part of the reference config.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Device to train on.
    pub device: Device,
    /// Prometheus address, or `None` for no endpoint.
    pub metrics_addr: Option<String>,
    /// Show progress bars.
    pub progress: bool,
    /// Set (e.g. by a signal handler) to stop at the next optimiser step with a checkpoint.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Save a mid-epoch checkpoint when this long has passed since the last
    /// save (rank 0's clock; all ranks agree at the next optimiser step);
    /// `None`: only the epoch rules (`SAVE_FREQ`) save.
    pub checkpoint_every: Option<std::time::Duration>,
    /// This process's place in the job (a single process by default).
    pub world: WorldInfo,
    /// The progress report this run keeps current (served at `/progress`
    /// on the metrics address; the caller writes it out when the run ends).
    pub report: SharedProgress,
}

/// What a finished run reports.
#[derive(Debug)]
pub struct RunSummary {
    /// Final evaluation.
    pub eval: Option<EvalReport>,
    /// Training samples skipped because they could not be read or decoded (this rank).
    pub skipped_samples: u64,
    /// Epochs trained in this process.
    pub epochs_run: u64,
    /// Optimiser steps in total.
    pub steps: u64,
    /// Wall time of training, seconds.
    pub train_seconds: f64,
    /// Mean training throughput, or the forward-only throughput with `--throughput`.
    pub images_per_second: f64,
    /// Seconds the training loop waited for the data loader (this rank);
    /// a large share of `train_seconds` means loading does not keep up.
    pub data_wait_seconds: f64,
    /// Last checkpoint written or resumed from.
    pub checkpoint: Option<String>,
    /// Output location.
    pub output: String,
    /// Trainable parameters.
    pub parameters: i64,
    /// Local directory holding `eval.json` and the per-class plot, when written.
    pub artifacts: Option<PathBuf>,
}

/// Train (or, with `EVAL_MODE`, only evaluate; with `THROUGHPUT_MODE`, only
/// time the forward pass) as configured. With a world of several ranks (see
/// [`WorldInfo`]) this process trains its share of every batch and averages
/// gradients with its peers.
pub fn run(cfg: &Config, options: &RunOptions) -> Result<RunSummary> {
    // The router stage trains on its own schedule (TRAIN.ROUTER.*).
    let staged = cfg.for_stage();
    let cfg = &staged;
    let trainer = setup::Trainer::new(cfg, options)?;
    if cfg.eval_mode {
        trainer.evaluate_only()
    } else if cfg.throughput_mode {
        trainer.throughput_only()
    } else {
        trainer.fit()
    }
}
