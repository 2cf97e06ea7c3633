//! The epoch loop: a plan fixed before the first step, then per epoch the
//! steps, an evaluation and a checkpoint; a stop request ends it with a
//! checkpoint at the next optimiser step.

use super::meter::LossMeter;
use super::report::{progress_bar, record_eval_progress, update_progress};
use super::setup::Trainer;
use super::step::At;
use super::{Preempted, RunSummary};
use crate::checkpoint::writer::Retention;
use crate::checkpoint::{CheckpointMeta, CheckpointWriter, Snapshot};
use crate::data::loader::{balanced_epoch_order, epoch_order, BatchLoader, LoaderOptions};
use crate::data::mix_seed;
use crate::data::mixup::MixupOptions;
use crate::data::transforms::Transform;
use crate::dist::ddp::{GradAverager, BUCKET_BYTES};
use crate::dist::overlap::{OverlappedAverager, ENV_DDP_BUCKET_MB, ENV_DDP_OVERLAP};
use crate::eval::EvalReport;
use crate::loss::Criterion;
use crate::optim::schedule::{CosineSchedule, Schedule, StepSchedule};
use anyhow::{bail, Result};
use ride_contract::unix_now;
use ride_contract::RunState;
use std::time::Instant;
use tch::Tensor;

/// What stays fixed for the whole run once the data and world are known.
pub(super) struct Plan {
    pub criterion: Criterion,
    pub mixup: MixupOptions,
    pub transform: Transform,
    /// Micro-batches per optimiser step.
    pub accumulation: usize,
    /// Iterations per epoch on each rank.
    pub per_epoch: u64,
    /// Samples per iteration across all ranks.
    pub global_batch: u64,
    /// Optimiser steps the whole run takes.
    pub total_steps: u64,
    pub schedule: Schedule,
    /// Gradient averaging after backward (the NCCL backend, or overlap off).
    pub averager: GradAverager,
    /// Gradient averaging during backward (host backends, several ranks).
    pub overlap: Option<OverlappedAverager>,
    /// The config as YAML, stored in every checkpoint.
    pub config_yaml: String,
}

/// The gradient bucket size: `RIDE_DDP_BUCKET_MB` (as torch DDP's
/// `bucket_cap_mb`), 25 MB by default.
fn bucket_bytes() -> Result<usize> {
    match std::env::var(ENV_DDP_BUCKET_MB) {
        Err(_) => Ok(BUCKET_BYTES),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(mb) if mb > 0.0 && mb.is_finite() => Ok(((mb * 1048576.0) as usize).max(4)),
            _ => bail!(
                "{ENV_DDP_BUCKET_MB}={v:?}: expected a bucket size in MB greater than 0, e.g. 25"
            ),
        },
    }
}

/// What one epoch of steps produced.
#[derive(Clone, Copy)]
struct EpochDone {
    /// Mean loss over the epoch's optimiser steps and ranks (`None` when
    /// the epoch had no step left to run: resumed at its last step).
    mean_loss: Option<f64>,
    seconds: f64,
    /// Mean seconds per iteration the loop waited for the data loader.
    data_wait_per_iteration: f64,
}

/// Counters of this process's training, for the report and the summary.
struct Counters {
    started: Instant,
    images_seen: u64,
    epochs_run: u64,
    /// Smoothed seconds per optimiser step, for the ETA.
    step_seconds_ema: Option<f64>,
    /// When the current optimiser step began.
    step_started: Instant,
    /// Loss and gradient norm, on the device until they are read.
    meter: LossMeter,
    /// The loss read last, for the progress bar between reads.
    shown_loss: f64,
    /// Seconds this epoch's loop waited for the data loader.
    data_wait: f64,
}

impl Plan {
    /// The LR after the micro-batch at iteration `t` of the run: the cosine
    /// schedule counts optimiser steps (`t / accumulation`, as the
    /// reference's `step_update((epoch * num_steps + idx) // ACCUMULATION_STEPS)`),
    /// the epoch-wise step schedule iterations.
    fn lr_after(&self, t: u64) -> f64 {
        match &self.schedule {
            Schedule::Cosine(_) => self.schedule.lr_after(t / self.accumulation.max(1) as u64),
            Schedule::Step(_) => self.schedule.lr_after(t),
        }
    }
}

impl Trainer<'_> {
    fn plan(&self) -> Result<Plan> {
        let cfg = self.cfg;
        let (bs, world_size) = (cfg.data.batch_size, self.comm.world_size());
        // The config's, or what keeps the global batch after a resize.
        let accumulation = self.state.accumulation.max(1);
        // DistributedSampler: every rank gets ceil(N / world) samples per epoch.
        let per_rank = self.data.train.len().div_ceil(world_size);
        let per_epoch = (per_rank / bs) as u64;
        if per_epoch == 0 {
            bail!(
                "DATA.BATCH_SIZE {bs} is larger than each rank's share of the training set ({per_rank} of {} images)",
                self.data.train.len()
            );
        }
        Ok(Plan {
            criterion: super::build_criterion(cfg, &self.train_counts),
            mixup: MixupOptions {
                mixup_alpha: cfg.aug.mixup,
                cutmix_alpha: cfg.aug.cutmix,
                prob: cfg.aug.mixup_prob,
                switch_prob: cfg.aug.mixup_switch_prob,
                label_smoothing: cfg.model.label_smoothing,
                num_classes: cfg.model.num_classes,
            },
            transform: crate::data::select::train_transform(cfg)?,
            accumulation,
            per_epoch,
            global_batch: (bs * world_size) as u64,
            total_steps: cfg.train.epochs * per_epoch / accumulation as u64,
            schedule: if cfg.train.lr_scheduler.name == "step" {
                Schedule::Step(StepSchedule {
                    base_lr: self.lrs.base,
                    per_epoch,
                    warmup_epochs: cfg.train.warmup_epochs.ceil() as u64,
                    milestones: cfg.train.lr_scheduler.milestones.clone(),
                    gamma: cfg.train.lr_scheduler.decay_rate,
                })
            } else {
                // In optimiser steps, as the reference's timm scheduler
                // (`n_iter_per_epoch = len(loader) // ACCUMULATION_STEPS`):
                // a resize that changes the accumulation to keep the global
                // batch then keeps the LR sequence too.
                Schedule::Cosine(CosineSchedule {
                    base_lr: self.lrs.base,
                    warmup_lr: self.lrs.warmup,
                    min_lr: self.lrs.min,
                    warmup_steps: (cfg.train.warmup_epochs
                        * (per_epoch / accumulation as u64) as f64)
                        as u64,
                    total_steps: cfg.train.epochs * (per_epoch / accumulation as u64),
                })
            },
            averager: GradAverager::new(&self.params, bucket_bytes()?),
            overlap: self.overlapped_averaging()?,
            config_yaml: serde_norway::to_string(cfg).unwrap_or_default(),
        })
    }

    /// All-reduce during backward when it can help: several ranks on a
    /// host backend, unless `RIDE_DDP_OVERLAP=0`. NCCL keeps averaging after
    /// backward: it runs on the stream backward uses, so launching it
    /// earlier would not overlap on the GPU.
    fn overlapped_averaging(&self) -> Result<Option<OverlappedAverager>> {
        let off = std::env::var(ENV_DDP_OVERLAP).is_ok_and(|v| v.trim() == "0");
        if self.comm.world_size() <= 1 || self.comm.backend() == "nccl" || off {
            return Ok(None);
        }
        let averager = OverlappedAverager::new(&self.params, bucket_bytes()?)?;
        Ok(Some(averager.announce(self.is_main())))
    }

    /// Train the remaining epochs, evaluating and checkpointing as
    /// configured; returns [`Preempted`] when stopped on request.
    pub fn fit(mut self) -> Result<RunSummary> {
        let plan = self.plan()?;
        let cfg = self.cfg;
        if self.state.micro_step == 0 {
            // A fresh run's first step (a resumed one carries its own).
            self.state.next_lr = plan.schedule.lr(0);
        }
        if self.is_main() {
            tracing::info!(
                "training {} ({} parameters, {} experts) on {:?} x{}: {} images, {} classes, {} iterations/epoch, global batch {}, epochs {}..{}",
                cfg.model.name,
                self.parameters,
                cfg.model.num_experts,
                self.device,
                self.comm.world_size(),
                self.data.train.len(),
                cfg.model.num_classes,
                plan.per_epoch,
                plan.global_batch,
                self.state.start_epoch,
                cfg.train.epochs
            );
        }
        let mut writer = self.is_main().then(|| {
            CheckpointWriter::new(
                self.store.clone(),
                Retention {
                    keep_last: cfg.checkpoint.keep_last,
                    keep_best: cfg.checkpoint.keep_best,
                },
                self.metrics.clone(),
            )
        });
        // The time-based checkpoints count from the start of training.
        self.state.last_save = Some(Instant::now());
        let mut counters = Counters {
            started: Instant::now(),
            images_seen: 0,
            epochs_run: 0,
            step_seconds_ema: None,
            step_started: Instant::now(),
            meter: LossMeter::default(),
            shown_loss: f64::NAN,
            data_wait: 0.0,
        };
        update_progress(&self.options.report, |p| {
            p.state = RunState::Training;
            p.total_steps = plan.total_steps;
            p.step = self.opt.steps();
            p.training_since_unix = Some(unix_now());
        });
        for epoch in self.state.start_epoch..cfg.train.epochs {
            let done = self.train_epoch(epoch, &plan, &mut writer, &mut counters)?;
            counters.epochs_run += 1;
            self.end_epoch(epoch, &done, &plan, &mut writer)?;
        }
        if let Some(w) = writer.as_mut() {
            // The run is only done when its last checkpoint is durable.
            if let Some(uri) = w.wait()? {
                self.state.last_checkpoint = Some(uri);
            }
        }
        self.comm.barrier()?;
        let seconds = counters.started.elapsed().as_secs_f64();
        let images_per_second = counters.images_seen as f64 / seconds.max(1e-9);
        self.summary(counters.epochs_run, seconds, images_per_second)
    }

    /// One epoch of steps.
    fn train_epoch(
        &mut self,
        epoch: u64,
        plan: &Plan,
        writer: &mut Option<CheckpointWriter>,
        counters: &mut Counters,
    ) -> Result<EpochDone> {
        let (cfg, rank) = (self.cfg, self.comm.rank());
        self.metrics.epoch.set(epoch as i64);
        update_progress(&self.options.report, |p| {
            p.epoch = epoch;
            p.state = RunState::Training;
        });
        let consumed = if epoch == self.state.start_epoch {
            self.state.start_samples
        } else {
            0
        };
        // Iteration index the resumed position corresponds to (LR schedule, RNG streams).
        let first_iter = consumed / plan.global_batch;
        let loader = self.epoch_loader(epoch, consumed, plan);
        let show = self.options.progress && self.is_main();
        let pb = progress_bar(plan.per_epoch, epoch, cfg.train.epochs, show);
        pb.set_position(first_iter);
        let epoch_start = Instant::now();
        let mut iterations = 0u64;
        counters.data_wait = 0.0;
        self.opt.zero_grad();
        let mut batches = loader.enumerate();
        counters.step_started = Instant::now();
        self.watchdog.watch_from_now();
        loop {
            let waiting = Instant::now();
            let Some((k, batch)) = batches.next() else {
                break;
            };
            let waited = waiting.elapsed().as_secs_f64();
            self.metrics.data_wait.observe(waited);
            counters.data_wait += waited;
            let idx = first_iter as usize + k;
            // Reseed per iteration (and rank) so dropout/drop-path streams are
            // reproducible when resuming anywhere, including mid-epoch.
            tch::manual_seed(
                mix_seed(&[cfg.seed, 0xD0, epoch, idx as u64, rank as u64]) as i64 & i64::MAX,
            );
            self.metrics.skipped_samples.inc_by(batch.skipped as u64);
            let at = At {
                epoch,
                iteration: idx,
                boundary: plan.accumulation <= 1 || (idx + 1) % plan.accumulation == 0,
            };
            let Some(mb) = self.micro_batch(&batch, at, plan) else {
                continue;
            };
            let lr = self.state.next_lr;
            let out = self.train_step(&mb, at, lr, plan, &mut counters.meter)?;
            if at.boundary {
                self.state.next_lr = plan.lr_after(epoch * plan.per_epoch + idx as u64);
            }
            self.state.micro_step += 1;
            iterations += 1;
            let n = mb.labels.size()[0] as u64;
            let ips = self.record_micro_step(n, lr, out.grad_norm, at, plan, counters)?;
            pb.set_message(format!(
                "loss {:.4} lr {lr:.2e} {ips:.0} img/s",
                counters.shown_loss
            ));
            pb.inc(1);
            if at.boundary && out.checkpoint && !out.stop {
                // On the clock: a mid-epoch checkpoint, as the preemption
                // save writes it, in the background; training goes on.
                let samples_done = consumed + (k as u64 + 1) * plan.global_batch;
                self.save_on_the_clock(epoch, idx as u64 + 1, samples_done, plan, writer);
            }
            if at.boundary && out.stop {
                self.watchdog.pause();
                pb.finish_and_clear();
                let samples_done = consumed + (k as u64 + 1) * plan.global_batch;
                return Err(self
                    .preempt(epoch, idx as u64 + 1, samples_done, plan, writer)?
                    .into());
            }
        }
        self.watchdog.pause();
        pb.finish_and_clear();
        if self.is_main() && self.state.overflow_steps > 0 {
            tracing::warn!(
                "mixed precision: {} optimiser steps skipped for inf/NaN gradients so far",
                self.state.overflow_steps
            );
        }
        // No step at all: a run resumed from a checkpoint taken at the last
        // step of this epoch. There is no mean to check or report then.
        let mean_loss = counters.meter.finish_epoch();
        if let Some(loss) = mean_loss {
            self.check_loss(loss, epoch, None)?;
            self.metrics.loss.set(loss);
        }
        Ok(EpochDone {
            mean_loss,
            seconds: epoch_start.elapsed().as_secs_f64(),
            data_wait_per_iteration: counters.data_wait / iterations.max(1) as f64,
        })
    }

    /// Stop the run on a non-finite loss, which no later step recovers
    /// from (fp16 skips such steps and goes on). `iteration` is `None` for
    /// an epoch's mean.
    fn check_loss(&self, loss: f64, epoch: u64, iteration: Option<usize>) -> Result<()> {
        if loss.is_finite() || self.precision.tolerates_non_finite_loss() {
            return Ok(());
        }
        let at = iteration.map_or(String::new(), |i| format!(" by iteration {i}"));
        bail!(
            "loss became {loss} in epoch {}{at}; lower TRAIN.BASE_LR or check the data",
            epoch + 1
        )
    }

    /// This rank's share of `epoch`, resuming after `consumed` global samples.
    fn epoch_loader(&self, epoch: u64, consumed: u64, plan: &Plan) -> BatchLoader {
        let cfg = self.cfg;
        let (rank, world_size) = (self.comm.rank(), self.comm.world_size());
        let order = if cfg.router_stage() && cfg.train.router.balanced {
            balanced_epoch_order(
                &self.train_labels(),
                cfg.seed,
                epoch,
                rank,
                world_size,
                consumed as usize,
            )
        } else {
            epoch_order(
                self.data.train.len(),
                cfg.seed,
                epoch,
                rank,
                world_size,
                true,
                consumed as usize,
            )
        };
        let options = LoaderOptions {
            batch_size: cfg.data.batch_size,
            workers: cfg.data.num_workers.max(1),
            prefetch: 4,
            drop_last: true,
            seed: cfg.seed,
            epoch,
        };
        BatchLoader::new(
            self.data.train.clone(),
            plan.transform.clone(),
            order,
            0,
            options,
        )
    }

    /// Every training sample's label (for class-balanced sampling).
    fn train_labels(&self) -> Vec<usize> {
        (0..self.data.train.len())
            .map(|i| self.data.train.label(i))
            .collect()
    }

    /// Metrics, the periodic log line and (at an optimiser step) the step
    /// time and progress report after one micro-batch of `n` images;
    /// returns the throughput so far. The loss and gradient norm are read
    /// from the device only every `PRINT_FREQ` iterations.
    fn record_micro_step(
        &self,
        n: u64,
        lr: f64,
        grad_norm: Option<Tensor>,
        at: At,
        plan: &Plan,
        counters: &mut Counters,
    ) -> Result<f64> {
        counters.images_seen += n * self.comm.world_size() as u64;
        let ips = counters.images_seen as f64 / counters.started.elapsed().as_secs_f64().max(1e-9);
        if let Some(norm) = grad_norm {
            counters.meter.set_grad_norm(norm);
        }
        let m = &self.metrics;
        m.step.set(self.opt.steps() as i64);
        m.lr.set(lr);
        m.images_trained.inc_by(n);
        if at.boundary {
            let secs = counters.step_started.elapsed().as_secs_f64();
            counters.step_started = Instant::now();
            self.record_optimizer_step(secs, ips, plan, counters);
        }
        let print_freq = self.cfg.print_freq;
        if print_freq == 0 || (at.iteration as u64) % print_freq != 0 {
            return Ok(ips);
        }
        let Some(loss) = counters.meter.read_window() else {
            return Ok(ips);
        };
        self.check_loss(loss, at.epoch, Some(at.iteration))?;
        let grad_norm = counters.meter.read_grad_norm();
        counters.shown_loss = loss;
        m.loss.set(loss);
        m.grad_norm.set(grad_norm);
        if self.is_main() && !self.options.progress {
            tracing::info!(
                epoch = at.epoch,
                iteration = at.iteration,
                loss,
                lr,
                grad_norm,
                images_per_second = ips,
                "epoch {} [{}/{}] loss {loss:.4} lr {lr:.3e} grad_norm {grad_norm:.3} {ips:.0} img/s",
                at.epoch + 1,
                at.iteration,
                plan.per_epoch,
            );
        }
        Ok(ips)
    }

    /// Step time, progress ratio, ETA and the progress report after an optimiser step.
    fn record_optimizer_step(&self, secs: f64, ips: f64, plan: &Plan, counters: &mut Counters) {
        self.watchdog.beat(secs);
        let m = &self.metrics;
        m.step_duration.observe(secs);
        let ema = counters
            .step_seconds_ema
            .map_or(secs, |e| 0.9 * e + 0.1 * secs);
        counters.step_seconds_ema = Some(ema);
        let done = self.opt.steps();
        m.progress_ratio
            .set((done as f64 / plan.total_steps.max(1) as f64).min(1.0));
        m.eta_seconds
            .set(plan.total_steps.saturating_sub(done) as f64 * ema);
        let now = unix_now();
        m.last_step_timestamp.set(now);
        update_progress(&self.options.report, |p| {
            p.step = done;
            p.last_step_unix = Some(now);
            p.images_per_second = ips;
        });
    }

    /// Evaluate (every `SAVE_FREQ` epochs and after the last), checkpoint,
    /// and print the epoch's line.
    fn end_epoch(
        &mut self,
        epoch: u64,
        done: &EpochDone,
        plan: &Plan,
        writer: &mut Option<CheckpointWriter>,
    ) -> Result<()> {
        let cfg = self.cfg;
        let last = epoch + 1 == cfg.train.epochs;
        let EpochDone {
            mean_loss,
            seconds,
            data_wait_per_iteration,
        } = *done;
        let loss = mean_loss.map_or("-".to_string(), |l| format!("{l:.4}"));
        let mut line = format!(
            "epoch {}/{} loss {loss} lr {:.3e} {seconds:.1}s data wait {:.1} ms/it",
            epoch + 1,
            cfg.train.epochs,
            self.state.next_lr,
            data_wait_per_iteration * 1e3,
        );
        let evaluated = epoch % cfg.save_freq.max(1) == 0 || last;
        if evaluated {
            update_progress(&self.options.report, |p| p.state = RunState::Evaluating);
            let report = self.evaluate_test_set()?;
            record_eval_progress(&self.options.report, epoch, &report);
            self.state.max_accuracy = self.state.max_accuracy.max(report.top1);
            let band = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            line.push_str(&format!(
                " | top-1 {:.2} many {} medium {} few {}",
                report.top1,
                band(report.many),
                band(report.medium),
                band(report.few)
            ));
            if let Some(w) = writer.as_mut() {
                let meta = self.checkpoint_meta(epoch, None, Some(report.clone()), plan);
                self.submit_checkpoint(w, meta);
            }
            self.state.last_save = Some(Instant::now());
            self.state.last_checkpoint = Some(format!(
                "{}/{}",
                self.output,
                crate::checkpoint::checkpoint_dir_name(epoch, None)
            ));
            self.state.last_eval = Some(report);
        }
        if self.is_main() {
            let eval = self.state.last_eval.as_ref().filter(|_| evaluated);
            tracing::info!(
                epoch,
                loss = mean_loss,
                lr = self.state.next_lr,
                seconds,
                data_wait_seconds_per_iteration = data_wait_per_iteration,
                top1 = eval.map(|r| r.top1),
                many = eval.and_then(|r| r.many),
                medium = eval.and_then(|r| r.medium),
                few = eval.and_then(|r| r.few),
                "{line}"
            );
        }
        Ok(())
    }

    /// The time-based save: a mid-epoch checkpoint written in the background
    /// (rank 0), the clock restarted on every rank.
    fn save_on_the_clock(
        &mut self,
        epoch: u64,
        iterations_done: u64,
        samples_done: u64,
        plan: &Plan,
        writer: &mut Option<CheckpointWriter>,
    ) {
        let dir = crate::checkpoint::checkpoint_dir_name(epoch, Some(iterations_done));
        if let Some(w) = writer.as_mut() {
            self.submit_mid_epoch(w, epoch, iterations_done, samples_done, plan);
            tracing::info!("checkpoint on the clock (--checkpoint-every): {dir}");
        }
        self.state.last_checkpoint = Some(format!("{}/{dir}", self.output));
        self.state.last_save = Some(Instant::now());
    }

    /// Save a mid-epoch checkpoint and wait until it is durable; the
    /// [`Preempted`] it returns ends the run.
    fn preempt(
        &self,
        epoch: u64,
        iterations_done: u64,
        samples_done: u64,
        plan: &Plan,
        writer: &mut Option<CheckpointWriter>,
    ) -> Result<Preempted> {
        let mut checkpoint = format!("{}/(saved by rank 0)", self.output);
        if let Some(w) = writer.as_mut() {
            self.submit_mid_epoch(w, epoch, iterations_done, samples_done, plan);
            checkpoint = w
                .wait()?
                .ok_or_else(|| anyhow::anyhow!("no checkpoint was saved"))?;
        }
        self.comm.barrier()?;
        Ok(Preempted { checkpoint })
    }

    /// Hand a mid-epoch checkpoint of the current state (with the latest
    /// evaluation) to the background writer.
    fn submit_mid_epoch(
        &self,
        w: &mut CheckpointWriter,
        epoch: u64,
        iterations_done: u64,
        samples_done: u64,
        plan: &Plan,
    ) {
        let eval = self.state.last_eval.clone();
        let meta = self.checkpoint_meta(epoch, Some((iterations_done, samples_done)), eval, plan);
        self.submit_checkpoint(w, meta);
    }

    /// The checkpoint record of the current state: `position` is
    /// `(iterations done, global samples done)` within `epoch` for a
    /// mid-epoch save, `None` at the end of the epoch.
    fn checkpoint_meta(
        &self,
        epoch: u64,
        position: Option<(u64, u64)>,
        eval: Option<EvalReport>,
        plan: &Plan,
    ) -> CheckpointMeta {
        CheckpointMeta {
            epoch,
            iterations_done: position.map(|(i, _)| i),
            samples_done: position.map_or(0, |(_, s)| s),
            world_size: self.comm.world_size() as u64,
            accumulation: Some(self.state.accumulation as u64),
            step: self.opt.steps(),
            micro_step: self.state.micro_step,
            next_lr: self.state.next_lr,
            max_accuracy: self.state.max_accuracy,
            scaler: self.precision.scaler_state(),
            eval,
            config: plan.config_yaml.clone(),
            saved_at: chrono::Utc::now().to_rfc3339(),
        }
    }

    /// Hand the model and optimiser state to the background writer. Only the
    /// host copy blocks; the upload runs while training goes on. A failure of
    /// the previous save is reported, and its checkpoint stays the last good one.
    fn submit_checkpoint(&self, w: &mut CheckpointWriter, meta: CheckpointMeta) {
        let model: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        if let Err(e) = w.submit(Snapshot::capture(&model, &self.opt.state(), meta)) {
            tracing::warn!("warning: an earlier checkpoint save failed: {e}");
        }
    }
}
