//! Everything before the first step: data, storage, the distributed job,
//! model, optimiser, precision, and resuming from the newest checkpoint.

use super::precision::Precision;
use super::report::{record_eval_progress, update_progress};
use super::RunOptions;
use crate::checkpoint::{CheckpointStore, LoadedCheckpoint};
use crate::config::Config;
use crate::data::select::{build_datasets, Datasets};
use crate::dist::ddp::broadcast_from_rank0;
use crate::dist::Collective;
use crate::eval::EvalReport;
use crate::loss::{Criterion, LdamDrwLoss, RideLoss, RideLossOptions};
use crate::metrics::Metrics;
use crate::model::ride_swin::parameter_count;
use crate::model::router::{Router, ROUTER_PREFIX};
use crate::model::Network;
use crate::optim::schedule::scale_lr;
use crate::optim::sgd::Sgd;
use crate::optim::{AdamW, Optimizer};
use crate::watchdog::{StallTimeout, Watchdog};
use anyhow::{Context, Result};
use std::sync::Arc;
use tch::{nn, Device, Tensor};

/// Where training stands: set by a resume, advanced by the loop, written
/// into every checkpoint.
#[derive(Debug, Default)]
pub(super) struct TrainState {
    /// First epoch this process trains.
    pub start_epoch: u64,
    /// Global samples of `start_epoch` already consumed (a mid-epoch resume).
    pub start_samples: u64,
    /// Micro-batches processed since the start of training.
    pub micro_step: u64,
    /// LR the next optimiser step uses.
    pub next_lr: f64,
    /// Best top-1 so far.
    pub max_accuracy: f64,
    /// Optimiser steps skipped for inf/NaN gradients (fp16).
    pub overflow_steps: u64,
    /// Last checkpoint written or resumed from.
    pub last_checkpoint: Option<String>,
    /// Latest evaluation.
    pub last_eval: Option<EvalReport>,
    /// Gradient accumulation steps: `TRAIN.ACCUMULATION_STEPS`, changed by
    /// an elastic resume to keep the global batch.
    pub accumulation: usize,
    /// When the last checkpoint was saved (or training started): the
    /// clock `RunOptions::checkpoint_every` runs from.
    pub last_save: Option<std::time::Instant>,
}

/// LRs after scaling by the global batch, as the reference does.
#[derive(Clone, Copy, Debug)]
pub(super) struct ScaledLrs {
    pub base: f64,
    pub warmup: f64,
    pub min: f64,
}

/// One process's run, set up and ready to train or evaluate.
pub(crate) struct Trainer<'a> {
    pub cfg: &'a Config,
    pub options: &'a RunOptions,
    pub data: Datasets,
    pub train_counts: Vec<usize>,
    pub device: Device,
    pub output: String,
    pub store: Arc<CheckpointStore>,
    pub comm: Box<dyn Collective>,
    /// Ends the process when training steps stop for too long.
    pub watchdog: Watchdog,
    pub vs: nn::VarStore,
    pub model: Network,
    /// The expert assignment module (router stage only); the experts are
    /// frozen then and only the router trains.
    pub router: Option<Router>,
    /// Parameters this run trains.
    pub parameters: i64,
    pub metrics: Metrics,
    pub precision: Precision,
    pub opt: Optimizer,
    /// The optimiser's parameters, in its order (gradient buckets follow it).
    pub params: Vec<Tensor>,
    pub lrs: ScaledLrs,
    pub state: TrainState,
}

impl<'a> Trainer<'a> {
    /// Open storage, join the job, build model and optimiser, resume, and
    /// give every rank rank 0's parameters.
    pub fn new(cfg: &'a Config, options: &'a RunOptions) -> Result<Self> {
        let data = build_datasets(cfg)?;
        let train_counts = data.train.class_counts();
        let world = &options.world;
        let gpus = if options.device.is_cuda() {
            tch::Cuda::device_count().max(0) as usize
        } else {
            0
        };
        let device = crate::dist::env::rank_device(options.device, world, gpus)?;
        let output = output_location(cfg);
        // Storage first: bad credentials must fail before anything expensive.
        let store = Arc::new(
            CheckpointStore::open(&output)
                .with_context(|| format!("opening output {output}"))?
                .with_attempt(CheckpointStore::attempt_from_env()),
        );
        store.probe(world.rank == 0)?;
        if world.rank == 0 {
            // From here on no save of an older attempt of this run lands.
            store.claim_attempt()?;
        }
        let watchdog = Watchdog::start(
            StallTimeout::from_env()?,
            super::report::exit_on_stall(options.report.clone()),
        );
        let comm = watchdog.watch_collective(
            crate::dist::init_for(world, device).context("joining the distributed job")?,
        );
        let (rank, world_size) = (comm.rank(), comm.world_size());
        if world_size > 1 {
            tracing::info!(
                "rank {rank}/{world_size} (local {}/{}) on {device:?}, {} backend",
                world.local_rank,
                world.local_world_size,
                comm.backend()
            );
        }
        tch::manual_seed(cfg.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = Network::new(&vs.root(), cfg)
            .map_err(|m| anyhow::anyhow!("invalid model config: {m}"))?;
        let router = cfg.router_spec().map(|spec| {
            let r = Router::new(
                &vs.root(),
                model.num_features(),
                cfg.model.num_experts,
                &spec,
            );
            // The experts stay as trained: only the router gets gradients
            // (and optimiser slots).
            for (name, t) in vs.variables() {
                if !name.starts_with(ROUTER_PREFIX) {
                    let _ = t.set_requires_grad(false);
                }
            }
            r
        });
        let parameters = parameter_count(&vs);
        let metrics = Metrics::with_progress(options.report.clone());
        metrics.world_size.set(world_size as i64);
        if let Device::Cuda(index) = device {
            metrics.watch_cuda_memory(index);
        }
        update_progress(&options.report, |p| {
            p.rank = rank as u32;
            p.world_size = world_size as u32;
            p.epochs = cfg.train.epochs;
        });
        if let Some(addr) = &options.metrics_addr {
            let bound = metrics.serve(&super::report::rank_metrics_addr(addr, world.local_rank))?;
            tracing::info!(address = %bound, "metrics: http://{bound}/metrics");
        }
        let precision = Precision::for_run(cfg, device, rank == 0);
        // LR scaling by global batch, as the reference does before building anything.
        let scaled = |lr| {
            scale_lr(
                lr,
                cfg.data.batch_size,
                world_size,
                cfg.train.accumulation_steps,
            )
        };
        let lrs = ScaledLrs {
            base: scaled(cfg.train.base_lr),
            warmup: scaled(cfg.train.warmup_lr),
            min: scaled(cfg.train.min_lr),
        };
        let betas = (cfg.train.optimizer.betas[0], cfg.train.optimizer.betas[1]);
        // On GPUs one fused kernel per step instead of a dozen small ones per
        // parameter; CPU runs keep the op-by-op update the parity tests pin.
        let o = &cfg.train.optimizer;
        let opt = if o.name == "sgd" {
            Optimizer::Sgd(Sgd::new(
                &vs,
                o.momentum,
                cfg.train.weight_decay,
                o.nesterov,
            ))
        } else {
            Optimizer::AdamW(
                AdamW::new(&vs, cfg.train.weight_decay, o.eps, betas).with_fused(device.is_cuda()),
            )
        };
        let params = opt.params();
        let state = TrainState {
            start_epoch: cfg.train.start_epoch,
            next_lr: lrs.warmup,
            accumulation: cfg.train.accumulation_steps.max(1),
            ..Default::default()
        };
        let mut trainer = Trainer {
            cfg,
            options,
            data,
            train_counts,
            device,
            output,
            store,
            comm,
            watchdog,
            vs,
            model,
            router,
            parameters,
            metrics,
            precision,
            opt,
            params,
            lrs,
            state,
        };
        trainer.resume()?;
        trainer.broadcast_parameters()?;
        Ok(trainer)
    }

    pub fn is_main(&self) -> bool {
        self.comm.rank() == 0
    }

    /// The newest valid checkpoint in the output (rank 0 picks it, all ranks
    /// load the same one), else an explicit `MODEL.RESUME` weights file;
    /// the router stage with neither starts from the experts run's newest
    /// checkpoint.
    fn resume(&mut self) -> Result<()> {
        let cfg = self.cfg;
        if cfg.train.auto_resume {
            if let Some(c) = newest_checkpoint(&self.store, self.comm.as_ref())? {
                return self.resume_from(c);
            }
        }
        // Weights from another run may lack the router, which then starts
        // fresh; evaluating needs a trained one.
        let router_may_be_missing = |name: &str| !cfg.eval_mode && name.starts_with(ROUTER_PREFIX);
        if !cfg.model.resume.is_empty() {
            let w = self
                .model
                .from_reference_names(crate::weights::read_weights(std::path::Path::new(
                    &cfg.model.resume,
                ))?);
            crate::weights::apply_weights_where(
                &self.vs,
                &self.model.buffers(),
                &w,
                router_may_be_missing,
            )?;
            if self.is_main() {
                tracing::info!("loaded weights from {}", cfg.model.resume);
            }
        } else if self.router.is_some() {
            if cfg.eval_mode {
                anyhow::bail!(
                    "--eval --stage router evaluates a trained router, but {} holds no checkpoint: \
                     train it first (the same command without --eval), or give --resume ROUTER_WEIGHTS",
                    self.output
                );
            }
            let experts_output = experts_output_location(cfg);
            let store = CheckpointStore::open(&experts_output)
                .with_context(|| format!("opening the experts' output {experts_output}"))?;
            let Some(c) = newest_checkpoint(&store, self.comm.as_ref())? else {
                anyhow::bail!(
                    "the router stage starts from trained experts, but {experts_output} holds no checkpoint: \
                     train the experts first (the same command without --stage router), or give --resume WEIGHTS"
                );
            };
            crate::weights::apply_weights_where(
                &self.vs,
                &self.model.buffers(),
                &c.model.into_iter().collect(),
                router_may_be_missing,
            )
            .with_context(|| format!("loading the experts from {experts_output}/{}", c.dir))?;
            if self.is_main() {
                tracing::info!(
                    "router stage: experts from {experts_output}/{} (epoch {})",
                    c.dir,
                    c.meta.epoch
                );
            }
        }
        Ok(())
    }

    fn resume_from(&mut self, c: LoadedCheckpoint) -> Result<()> {
        let meta = c.meta;
        let world_size = self.comm.world_size();
        crate::weights::apply_weights(
            &self.vs,
            &self.model.buffers(),
            &c.model.into_iter().collect(),
        )?;
        if !self.cfg.eval_mode {
            self.opt
                .load_state(&c.optimizer)
                .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", c.dir))?;
            let s = &mut self.state;
            (s.start_epoch, s.start_samples) = match meta.iterations_done {
                Some(_) => (meta.epoch, meta.samples_done),
                None => (meta.epoch + 1, 0),
            };
            s.micro_step = meta.micro_step;
            s.next_lr = meta.next_lr;
            s.max_accuracy = meta.max_accuracy;
            self.precision.load_scaler_state(meta.scaler);
            let cfg_accumulation = self.cfg.train.accumulation_steps.max(1) as u64;
            let saved = meta.accumulation.unwrap_or(cfg_accumulation);
            // The LRs were scaled for this world at the config's accumulation;
            // by this factor they become the saved run's.
            let mut lr_factor = 1.0;
            if meta.world_size as usize != world_size {
                if meta.iterations_done.is_some() {
                    tracing::info!(
                        "elastic resume: checkpoint written by {} ranks, continuing with {world_size} at global sample {} of epoch {}",
                        meta.world_size, meta.samples_done, meta.epoch
                    );
                }
                match ride_contract::keep_global_batch(meta.world_size, saved, world_size as u64) {
                    Some(accumulation) => {
                        // Same samples per optimiser step: the recipe's LR
                        // and schedule stand.
                        s.accumulation = accumulation as usize;
                        lr_factor = (meta.world_size * saved) as f64
                            / (world_size as u64 * cfg_accumulation) as f64;
                        if self.comm.rank() == 0 {
                            tracing::info!(
                                "elastic resume keeps the global batch ({} x {} ranks x {saved} accumulation = {} x {world_size} ranks x {accumulation}): TRAIN.ACCUMULATION_STEPS is now {accumulation}",
                                self.cfg.data.batch_size, meta.world_size, self.cfg.data.batch_size
                            );
                        }
                    }
                    None => {
                        // The config's accumulation on the new world; the
                        // reference scales the LR by the global batch, so
                        // the LR follows, and the log says so.
                        let scale = (world_size as u64 * cfg_accumulation) as f64
                            / (meta.world_size * saved).max(1) as f64;
                        s.next_lr *= scale;
                        s.accumulation = cfg_accumulation as usize;
                        if self.comm.rank() == 0 {
                            tracing::warn!(
                                "elastic resume cannot keep the global batch: {} ranks x {saved} accumulation is not a multiple of {world_size} ranks; the global batch and the LR scale by {scale:.3}",
                                meta.world_size
                            );
                        }
                    }
                }
            } else if saved != cfg_accumulation {
                // Resized before at this world size: keep that recipe.
                s.accumulation = saved as usize;
                lr_factor = saved as f64 / cfg_accumulation as f64;
            }
            self.lrs.base *= lr_factor;
            self.lrs.warmup *= lr_factor;
            self.lrs.min *= lr_factor;
        }
        self.state.last_eval = meta.eval.clone();
        let uri = format!("{}/{}", self.output, c.dir);
        if self.is_main() {
            tracing::info!(
                checkpoint = %uri,
                epoch = meta.epoch,
                step = meta.step,
                "resumed from {uri} (epoch {}, step {})",
                meta.epoch, meta.step
            );
        }
        update_progress(&self.options.report, |p| {
            p.checkpoint = Some(ride_contract::CheckpointProgress {
                uri: uri.clone(),
                epoch: meta.epoch,
                step: meta.step,
                saved_at: meta.saved_at.clone(),
                saved_unix: chrono::DateTime::parse_from_rfc3339(&meta.saved_at)
                    .ok()
                    .map(|t| t.timestamp_millis() as f64 / 1e3),
            });
            p.step = meta.step;
        });
        if let Some(r) = &self.state.last_eval {
            record_eval_progress(&self.options.report, meta.epoch, r);
        }
        self.state.last_checkpoint = Some(uri);
        Ok(())
    }

    /// Every rank starts from rank 0's parameters, bit for bit.
    fn broadcast_parameters(&self) -> Result<()> {
        let mut sorted: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors: Vec<Tensor> = sorted.iter().map(|(_, t)| t.shallow_clone()).collect();
        broadcast_from_rank0(self.comm.as_ref(), &tensors)?;
        Ok(())
    }
}

/// The newest valid checkpoint in `store`: rank 0 picks it, all ranks load
/// the same one.
fn newest_checkpoint(
    store: &CheckpointStore,
    comm: &dyn Collective,
) -> Result<Option<LoadedCheckpoint>> {
    let mut chosen = Vec::new();
    let mut loaded = None;
    if comm.rank() == 0 {
        loaded = store.load_newest_valid(|dir, e| {
            tracing::warn!("warning: skipping checkpoint {dir}: {e}");
        })?;
        if let Some(c) = &loaded {
            chosen = c.dir.as_bytes().to_vec();
        }
    }
    comm.broadcast_bytes(&mut chosen, 0)?;
    if comm.rank() != 0 && !chosen.is_empty() {
        loaded = Some(store.load(&String::from_utf8_lossy(&chosen))?);
    }
    Ok(loaded)
}

/// The resolved output location: `OUTPUT/MODEL.NAME/TAG` as in the
/// reference, and its `router/` folder for the router stage (so that its
/// checkpoints, which hold the router, never mix with the experts').
pub fn output_location(cfg: &Config) -> String {
    let experts = experts_output_location(cfg);
    if cfg.router_stage() {
        format!("{experts}/router")
    } else {
        experts
    }
}

/// Where the experts' run writes: `OUTPUT/MODEL.NAME/TAG`.
fn experts_output_location(cfg: &Config) -> String {
    let base = if cfg.output.is_empty() {
        "output"
    } else {
        cfg.output.as_str()
    };
    format!(
        "{}/{}/{}",
        base.trim_end_matches('/'),
        cfg.model.name,
        cfg.tag
    )
}

/// Build the criterion the reference would build for this config: with
/// mixup the Swin reference's soft-target losses; without it, RIDE and LDAM
/// as the authors' ResNet code computes them on hard labels.
pub fn build_criterion(cfg: &Config, train_counts: &[usize]) -> Criterion {
    let t = &cfg.train;
    let mixup = cfg.aug.mixup > 0.0;
    match t.loss_type.as_str() {
        "RIDE" => {
            let l = &t.loss;
            Criterion::Ride(RideLoss::new(
                train_counts,
                &RideLossOptions {
                    max_m: l.max_m,
                    s: l.s,
                    base_div_temp: l.base_div_temp,
                    base_loss_factor: l.base_loss_factor,
                    additional_div_factor: l.additional_div_factor,
                    reweight_factor: l.reweight_factor,
                    reweight_epoch: (l.reweight && t.reweight_epoch >= 0)
                        .then_some(t.reweight_epoch as u64),
                    hard_labels: !mixup,
                },
            ))
        }
        // The reference hard-codes max_m = 0.5 and s = 30 for LDAM.
        "LDAM" => {
            let l = LdamDrwLoss::new(train_counts, 0.5, 30.0, t.reweight_epoch.max(0) as u64);
            Criterion::LdamDrw(if mixup { l } else { l.with_hard_labels() })
        }
        _ if mixup => Criterion::SoftTarget,
        _ if cfg.model.label_smoothing > 0.0 => {
            Criterion::LabelSmoothing(cfg.model.label_smoothing)
        }
        _ => Criterion::CrossEntropy,
    }
}
#[cfg(test)]
mod tests {
    use ride_contract::keep_global_batch;

    #[test]
    fn a_resize_keeps_the_global_batch_where_a_whole_accumulation_does() {
        assert_eq!(keep_global_batch(2, 1, 1), Some(2));
        assert_eq!(keep_global_batch(8, 2, 4), Some(4));
        assert_eq!(keep_global_batch(4, 1, 8), None, "half a step per rank");
        assert_eq!(keep_global_batch(8, 1, 3), None);
        assert_eq!(keep_global_batch(4, 3, 6), Some(2));
        assert_eq!(keep_global_batch(1, 1, 0), None);
    }
}
