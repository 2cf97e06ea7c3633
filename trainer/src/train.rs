//! The training and evaluation driver: builds data, model, optimiser and
//! criterion from a [`Config`], runs epochs with the reference's semantics,
//! checkpoints, evaluates and reports.

use crate::checkpoint::writer::Retention;
use crate::checkpoint::{CheckpointMeta, CheckpointStore, CheckpointWriter, Snapshot};
use crate::config::Config;
use crate::data::loader::{epoch_order, eval_shard, BatchLoader, LoaderOptions};
use crate::data::mixup::{mix, smooth_one_hot, MixupOptions};
use crate::data::{mix_seed, Dataset};
use crate::dist::ddp::{broadcast_from_rank0, GradAverager, BUCKET_BYTES};
use crate::dist::{Collective, WorldInfo};
use crate::eval::{EvalAccumulator, EvalReport};
use crate::loss::{Criterion, LdamDrwLoss, RideLoss, RideLossOptions};
use crate::metrics::Metrics;
use crate::model::ride_swin::parameter_count;
use crate::model::RideSwin;
use crate::optim::schedule::{scale_lr, CosineSchedule};
use crate::optim::{clip_grad_norm, AdamW};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

pub use crate::data::select::{build_datasets, Datasets};

/// Training stopped on request (SIGTERM/SIGUSR1) after saving a checkpoint;
/// the process should exit with [`PREEMPTED_EXIT_CODE`] and be restarted.
#[derive(Debug, thiserror::Error)]
#[error("preempted: checkpoint saved to {checkpoint}; run the same command again to resume")]
pub struct Preempted {
    /// Where the checkpoint went.
    pub checkpoint: String,
}

pub use ride_contract::PREEMPTED_EXIT_CODE;

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
    /// This process's place in the job (a single process by default).
    pub world: WorldInfo,
    /// The progress report this run keeps current (served at `/progress`
    /// on the metrics address; the caller writes it out when the run ends).
    pub report: SharedProgress,
}

/// A [`ride_contract::Progress`] shared between the training loop, the
/// checkpoint writer, the HTTP endpoint and the process's exit.
pub type SharedProgress = Arc<std::sync::Mutex<ride_contract::Progress>>;

/// Change the shared report (a poisoned lock still holds a usable report).
pub fn update_progress(p: &SharedProgress, f: impl FnOnce(&mut ride_contract::Progress)) {
    f(&mut p.lock().unwrap_or_else(|e| e.into_inner()));
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The resolved output location: `OUTPUT/MODEL.NAME/TAG` as in the reference.
pub fn output_location(cfg: &Config) -> String {
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

fn local_dir(location: &str) -> Option<PathBuf> {
    if let Some(p) = location.strip_prefix("file://") {
        Some(PathBuf::from(p))
    } else if location.contains("://") {
        None
    } else {
        Some(PathBuf::from(location))
    }
}

/// Build the criterion the reference would build for this config.
pub fn build_criterion(cfg: &Config, train_counts: &[usize]) -> Criterion {
    let t = &cfg.train;
    if cfg.aug.mixup > 0.0 {
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
                    },
                ))
            }
            // The reference hard-codes max_m = 0.5 and s = 30 for LDAM.
            "LDAM" => Criterion::LdamDrw(LdamDrwLoss::new(
                train_counts,
                0.5,
                30.0,
                t.reweight_epoch.max(0) as u64,
            )),
            _ => Criterion::SoftTarget,
        }
    } else if cfg.model.label_smoothing > 0.0 {
        Criterion::LabelSmoothing(cfg.model.label_smoothing)
    } else {
        Criterion::CrossEntropy
    }
}

/// Evaluate `model` on `dataset` (no augmentation). Each rank evaluates
/// every `world`-th image and the counts are merged, so every rank returns
/// the report of the whole set.
pub fn evaluate(
    model: &RideSwin,
    dataset: &Arc<dyn Dataset>,
    cfg: &Config,
    train_counts: &[usize],
    device: Device,
    comm: &dyn Collective,
) -> Result<EvalReport> {
    let transform = crate::data::select::eval_transform(cfg)?;
    let order = eval_shard(dataset.len(), comm.rank(), comm.world_size());
    let opts = LoaderOptions {
        batch_size: cfg.data.batch_size,
        workers: cfg.data.num_workers.max(1),
        prefetch: 2,
        drop_last: false,
        seed: cfg.seed,
        epoch: 0,
    };
    let mut acc = EvalAccumulator::new(
        cfg.model.num_classes as usize,
        cfg.model.num_experts as usize,
    );
    tch::no_grad(|| {
        for batch in BatchLoader::new(dataset.clone(), transform, order, 0, opts) {
            if batch.is_empty() {
                continue;
            }
            let x = batch.image_tensor().to_device(device);
            let y = batch.label_tensor().to_device(device);
            let out = model.forward(&x, false);
            acc.add(&out.mean(), &out.stacked(), &y);
        }
    });
    if comm.world_size() > 1 {
        let parts = comm.all_gather_bytes(&serde_json::to_vec(&acc)?)?;
        let mut merged = EvalAccumulator::new(
            cfg.model.num_classes as usize,
            cfg.model.num_experts as usize,
        );
        for p in parts {
            merged.merge(&serde_json::from_slice(&p)?);
        }
        acc = merged;
    }
    Ok(acc.report(train_counts))
}

/// Move the first `n` samples of a batch to `device`; for CUDA through
/// pinned host memory with an asynchronous copy, as DataLoader(pin_memory=True).
fn to_device(batch: &crate::data::loader::Batch, n: i64, device: Device) -> (Tensor, Tensor) {
    let x = batch.image_tensor().narrow(0, 0, n);
    let y = batch.label_tensor().narrow(0, 0, n);
    if device.is_cuda() {
        (
            x.pin_memory(device)
                .to_device_(device, Kind::Float, true, false),
            y.pin_memory(device)
                .to_device_(device, Kind::Int64, true, false),
        )
    } else {
        (x, y)
    }
}

/// The metrics address for this rank: ranks sharing a node get consecutive ports.
fn rank_metrics_addr(addr: &str, local_rank: usize) -> String {
    match addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
    {
        // Port 0 means "any free port", which is already distinct per process.
        Some((host, port)) if local_rank > 0 && port > 0 => {
            format!("{host}:{}", port.saturating_add(local_rank as u16))
        }
        _ => addr.to_string(),
    }
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
    /// Mean training throughput.
    pub images_per_second: f64,
    /// Last checkpoint written or resumed from.
    pub checkpoint: Option<String>,
    /// Output location.
    pub output: String,
    /// Trainable parameters.
    pub parameters: i64,
    /// Local directory holding `eval.json` and the per-class plot, when written.
    pub artifacts: Option<PathBuf>,
}

fn progress_bar(len: u64, epoch: u64, epochs: u64, show: bool) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if !show {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    pb
}

/// Train (or, with `EVAL_MODE`, only evaluate) as configured. With a world
/// of several ranks (see [`WorldInfo`]) this process trains its share of
/// every batch and averages gradients with its peers.
pub fn run(cfg: &Config, run: &RunOptions) -> Result<RunSummary> {
    let data = build_datasets(cfg)?;
    let train_counts = data.train.class_counts();
    let world = &run.world;
    let device = match run.device {
        Device::Cuda(_) if world.local_world_size > 1 => Device::Cuda(world.local_rank),
        d => d,
    };
    let output = output_location(cfg);
    // Storage first: bad credentials must fail before anything expensive.
    let store = Arc::new(
        CheckpointStore::open(&output).with_context(|| format!("opening output {output}"))?,
    );
    store.probe(world.rank == 0)?;
    let comm: Box<dyn Collective> =
        crate::dist::init(world).context("joining the distributed job")?;
    let comm = comm.as_ref();
    let (rank, world_size) = (comm.rank(), comm.world_size());
    let is_main = rank == 0;
    if world_size > 1 {
        eprintln!(
            "rank {rank}/{world_size} (local {}/{}) on {device:?}, {} backend",
            world.local_rank,
            world.local_world_size,
            comm.backend()
        );
    }
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let model = RideSwin::new(&vs.root(), &cfg.swin_spec())
        .map_err(|m| anyhow::anyhow!("invalid model config: {m}"))?;
    let parameters = parameter_count(&vs);
    let metrics = Metrics::with_progress(run.report.clone());
    metrics.world_size.set(world_size as i64);
    if let Device::Cuda(index) = device {
        metrics.watch_cuda_memory(index);
    }
    update_progress(&run.report, |p| {
        p.rank = rank as u32;
        p.world_size = world_size as u32;
        p.epochs = cfg.train.epochs;
    });
    if let Some(addr) = &run.metrics_addr {
        let bound = metrics.serve(&rank_metrics_addr(addr, world.local_rank))?;
        eprintln!("metrics: http://{bound}/metrics");
    }
    let amp = device.is_cuda() && matches!(cfg.amp_opt_level.as_str(), "O1" | "O2");
    let mut scaler = amp.then(|| crate::amp::GradScaler::new(device));
    if is_main && amp {
        eprintln!("mixed precision: fp16 autocast with dynamic loss scaling");
    } else if is_main && !(cfg.amp_opt_level.is_empty() || cfg.amp_opt_level == "O0") {
        eprintln!(
            "note: AMP_OPT_LEVEL {} applies on CUDA only; training in fp32 on {device:?}",
            cfg.amp_opt_level
        );
    }
    let mut overflow_steps = 0u64;

    // LR scaling by global batch, as the reference does before building anything.
    let accum = cfg.train.accumulation_steps.max(1);
    let bs = cfg.data.batch_size;
    let scaled = |lr| scale_lr(lr, bs, world_size, cfg.train.accumulation_steps);
    let (base_lr, warmup_lr, min_lr) = (
        scaled(cfg.train.base_lr),
        scaled(cfg.train.warmup_lr),
        scaled(cfg.train.min_lr),
    );
    let betas = (cfg.train.optimizer.betas[0], cfg.train.optimizer.betas[1]);
    let mut opt = AdamW::new(&vs, cfg.train.weight_decay, cfg.train.optimizer.eps, betas);
    let params = opt.params();

    let mut start_epoch = cfg.train.start_epoch;
    let mut start_samples = 0u64;
    let mut micro_step = 0u64;
    let mut next_lr = warmup_lr;
    let mut max_accuracy = 0.0f64;
    let mut last_checkpoint = None;
    let mut last_eval: Option<EvalReport> = None;

    // Resume: the newest valid checkpoint in the output (rank 0 picks it, all
    // ranks load the same one), else an explicit MODEL.RESUME weights file.
    let loaded = if cfg.train.auto_resume {
        let mut chosen = Vec::new();
        let mut loaded = None;
        if is_main {
            loaded = store.load_newest_valid(|dir, e| {
                eprintln!("warning: skipping checkpoint {dir}: {e}");
            })?;
            if let Some(c) = &loaded {
                chosen = c.dir.as_bytes().to_vec();
            }
        }
        comm.broadcast_bytes(&mut chosen, 0)?;
        if !is_main && !chosen.is_empty() {
            loaded = Some(store.load(&String::from_utf8_lossy(&chosen))?);
        }
        loaded
    } else {
        None
    };
    if let Some(c) = loaded {
        let meta = c.meta;
        crate::weights::apply_weights(&vs, &model.buffers(), &c.model.into_iter().collect())?;
        if !cfg.eval_mode {
            opt.load_state(&c.optimizer)
                .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", c.dir))?;
            (start_epoch, start_samples) = match meta.iterations_done {
                Some(_) => (meta.epoch, meta.samples_done),
                None => (meta.epoch + 1, 0),
            };
            micro_step = meta.micro_step;
            next_lr = meta.next_lr;
            max_accuracy = meta.max_accuracy;
            if let (Some(s), Some(state)) = (scaler.as_mut(), meta.scaler) {
                s.load_state(state);
            }
            if meta.world_size as usize != world_size {
                if meta.iterations_done.is_some() {
                    eprintln!(
                        "elastic resume: checkpoint written by {} ranks, continuing with {world_size} at global sample {} of epoch {}",
                        meta.world_size, meta.samples_done, meta.epoch
                    );
                }
                // The reference scales the LR by the global batch; follow the new world.
                next_lr *= world_size as f64 / meta.world_size.max(1) as f64;
            }
        }
        last_eval = meta.eval.clone();
        if is_main {
            eprintln!(
                "resumed from {output}/{} (epoch {}, step {})",
                c.dir, meta.epoch, meta.step
            );
        }
        update_progress(&run.report, |p| {
            p.checkpoint = Some(ride_contract::CheckpointProgress {
                uri: format!("{output}/{}", c.dir),
                epoch: meta.epoch,
                step: meta.step,
                saved_at: meta.saved_at.clone(),
            });
            p.step = meta.step;
        });
        if let Some(r) = &last_eval {
            record_eval_progress(&run.report, meta.epoch, r);
        }
        last_checkpoint = Some(format!("{output}/{}", c.dir));
    } else if !cfg.model.resume.is_empty() {
        let w = crate::weights::read_weights(std::path::Path::new(&cfg.model.resume))?;
        crate::weights::apply_weights(&vs, &model.buffers(), &w)?;
        if is_main {
            eprintln!("loaded weights from {}", cfg.model.resume);
        }
    }
    // Every rank starts from rank 0's parameters, bit for bit.
    let mut sorted_vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    sorted_vars.sort_by(|a, b| a.0.cmp(&b.0));
    broadcast_from_rank0(
        comm,
        &sorted_vars
            .iter()
            .map(|(_, t)| t.shallow_clone())
            .collect::<Vec<_>>(),
    )?;

    let write_artifacts = |report: &EvalReport| -> Result<Option<PathBuf>> {
        if is_main {
            write_local_artifacts(report, &output, &cfg.model.name)
        } else {
            Ok(None)
        }
    };
    if cfg.eval_mode {
        let report = evaluate(&model, &data.test, cfg, &train_counts, device, comm)?;
        metrics.record_eval(&report);
        record_eval_progress(&run.report, start_epoch.saturating_sub(1), &report);
        let artifacts = write_artifacts(&report)?;
        return Ok(RunSummary {
            skipped_samples: 0,
            artifacts,
            eval: Some(report),
            epochs_run: 0,
            steps: opt.steps(),
            train_seconds: 0.0,
            images_per_second: 0.0,
            checkpoint: last_checkpoint,
            output,
            parameters,
        });
    }
    if cfg.throughput_mode {
        let ips = throughput(&model, cfg, device);
        eprintln!("throughput: {ips:.1} images/s (batch {bs}, forward only)");
        return Ok(RunSummary {
            skipped_samples: 0,
            artifacts: None,
            eval: None,
            epochs_run: 0,
            steps: 0,
            train_seconds: 0.0,
            images_per_second: ips,
            checkpoint: None,
            output,
            parameters,
        });
    }

    let criterion = build_criterion(cfg, &train_counts);
    let mixup = MixupOptions {
        mixup_alpha: cfg.aug.mixup,
        cutmix_alpha: cfg.aug.cutmix,
        prob: cfg.aug.mixup_prob,
        switch_prob: cfg.aug.mixup_switch_prob,
        label_smoothing: cfg.model.label_smoothing,
        num_classes: cfg.model.num_classes,
    };
    let transform = crate::data::select::train_transform(cfg)?;
    // DistributedSampler: every rank gets ceil(N / world) samples per epoch.
    let per_rank = data.train.len().div_ceil(world_size);
    let per_epoch = (per_rank / bs) as u64;
    if per_epoch == 0 {
        bail!(
            "DATA.BATCH_SIZE {bs} is larger than each rank's share of the training set ({per_rank} of {} images)",
            data.train.len()
        );
    }
    let global_batch = (bs * world_size) as u64;
    let sched = CosineSchedule {
        base_lr,
        warmup_lr,
        min_lr,
        warmup_steps: (cfg.train.warmup_epochs * per_epoch as f64) as u64,
        total_steps: cfg.train.epochs * per_epoch,
    };
    if is_main {
        eprintln!(
            "training {} ({} parameters, {} experts) on {:?} x{world_size}: {} images, {} classes, {} iterations/epoch, global batch {}, epochs {}..{}",
            cfg.model.name,
            parameters,
            cfg.model.num_experts,
            device,
            data.train.len(),
            cfg.model.num_classes,
            per_epoch,
            global_batch,
            start_epoch,
            cfg.train.epochs
        );
    }
    let mut writer = is_main.then(|| {
        CheckpointWriter::new(
            store.clone(),
            Retention {
                keep_last: cfg.checkpoint.keep_last,
                keep_best: cfg.checkpoint.keep_best,
            },
            metrics.clone(),
        )
    });
    let config_yaml = serde_norway::to_string(cfg).unwrap_or_default();
    let averager = GradAverager::new(&params, BUCKET_BYTES);
    let started = Instant::now();
    let mut images_seen = 0u64;
    let mut epochs_run = 0;
    let total_steps = cfg.train.epochs * per_epoch / accum as u64;
    // Smoothed seconds per optimiser step, for the ETA.
    let mut step_seconds_ema: Option<f64> = None;
    update_progress(&run.report, |p| {
        p.state = ride_contract::RunState::Training;
        p.total_steps = total_steps;
        p.step = opt.steps();
    });
    for epoch in start_epoch..cfg.train.epochs {
        metrics.epoch.set(epoch as i64);
        update_progress(&run.report, |p| {
            p.epoch = epoch;
            p.state = ride_contract::RunState::Training;
        });
        let consumed = if epoch == start_epoch {
            start_samples
        } else {
            0
        };
        // Iteration index the resumed position corresponds to (LR schedule, RNG streams).
        let first_iter = consumed / global_batch;
        let order = epoch_order(
            data.train.len(),
            cfg.seed,
            epoch,
            rank,
            world_size,
            true,
            consumed as usize,
        );
        let lopts = LoaderOptions {
            batch_size: bs,
            workers: cfg.data.num_workers.max(1),
            prefetch: 4,
            drop_last: true,
            seed: cfg.seed,
            epoch,
        };
        let loader = BatchLoader::new(data.train.clone(), transform.clone(), order, 0, lopts);
        let pb = progress_bar(per_epoch, epoch, cfg.train.epochs, run.progress && is_main);
        pb.set_position(first_iter);
        let epoch_start = Instant::now();
        let (mut loss_sum, mut loss_n) = (0.0, 0u64);
        opt.zero_grad();
        let mut batches = loader.enumerate();
        let mut step_started = Instant::now();
        loop {
            let waiting = Instant::now();
            let Some((k, batch)) = batches.next() else {
                break;
            };
            metrics.data_wait.observe(waiting.elapsed().as_secs_f64());
            let idx = first_iter as usize + k;
            // Reseed per iteration (and rank) so dropout/drop-path streams are
            // reproducible when resuming anywhere, including mid-epoch.
            tch::manual_seed(
                mix_seed(&[cfg.seed, 0xD0, epoch, idx as u64, rank as u64]) as i64 & i64::MAX,
            );
            metrics.skipped_samples.inc_by(batch.skipped as u64);
            let mut n = batch.len() as i64;
            if mixup.active() && n % 2 == 1 {
                n -= 1; // timm's batch mixup needs an even batch.
            }
            if n <= 0 {
                continue;
            }
            let (x, y) = to_device(&batch, n, device);
            let (x, soft) = if mixup.active() {
                let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[
                    cfg.seed,
                    0x313,
                    epoch,
                    idx as u64,
                    rank as u64,
                ]));
                let (xm, t, _) = mix(&x, &y, &mixup, &mut rng);
                (xm, t)
            } else {
                let t = smooth_one_hot(&y, cfg.model.num_classes, 0.0);
                (x, t)
            };
            let forward = || {
                if cfg.train.use_checkpoint {
                    let (o, t) = model.forward_checkpointed(&x);
                    (o, Some(t))
                } else {
                    (model.forward(&x, true), None)
                }
            };
            // fp16 autocast on CUDA (tch's autocast is fp16-only); the loss is fp32.
            let (out, tape) = if amp {
                tch::autocast(true, forward)
            } else {
                forward()
            };
            let loss = criterion.loss(&out.experts, &y, &soft, epoch);
            let mut loss_value = loss.double_value(&[]);
            if !loss_value.is_finite() && scaler.is_none() {
                bail!("loss became {loss_value} at epoch {epoch} iteration {idx}; lower TRAIN.BASE_LR or check the data");
            }
            let t = epoch * per_epoch + idx as u64;
            let lr_used = next_lr;
            let scaled = match &scaler {
                Some(s) => s.scale(&loss),
                None => loss.shallow_clone(),
            };
            let micro_loss = if accum > 1 {
                scaled / accum as f64
            } else {
                scaled
            };
            if accum <= 1 {
                opt.zero_grad();
            }
            match tape {
                // Recomputed blocks must see the same autocast state as the forward.
                Some(tp) if amp => tch::autocast(true, || tp.backward(&micro_loss)),
                Some(tp) => tp.backward(&micro_loss),
                None => micro_loss.backward(),
            }
            let boundary = accum <= 1 || (idx + 1) % accum == 0;
            let local_stop = run
                .stop
                .as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst));
            let mut stop = local_stop;
            if world_size > 1 && boundary {
                // Gradients are averaged once per optimiser step; the loss and
                // any rank's stop request ride along in the same all-reduce.
                let mut extras = [loss_value as f32, f32::from(u8::from(local_stop))];
                let reducing = metrics.allreduce_duration.start_timer();
                averager.average(comm, &params, &mut extras)?;
                reducing.observe_duration();
                loss_value = f64::from(extras[0]) / world_size as f64;
                stop = extras[1] > 0.0;
            }
            let mut grad_norm = f64::NAN;
            match scaler.as_mut() {
                // Scaled gradients can only be unscaled once, so with AMP
                // clipping happens at the optimiser step, not every micro-step.
                Some(s) if boundary => {
                    let (overflow, found_inf) = s.unscale(&params);
                    if overflow {
                        overflow_steps += 1;
                    } else {
                        grad_norm = clip_grad_norm(&params, cfg.train.clip_grad);
                        opt.step(lr_used);
                    }
                    s.update(&found_inf);
                }
                Some(_) => {}
                // The reference clips at every micro-step (on the partial sum when
                // accumulating). With several ranks the partial sums are local, so
                // clipping waits for the averaged gradient at the optimiser step.
                None if world_size == 1 || boundary => {
                    grad_norm = clip_grad_norm(&params, cfg.train.clip_grad);
                    if boundary {
                        opt.step(lr_used);
                    }
                }
                None => {}
            }
            if boundary {
                if accum > 1 {
                    opt.zero_grad();
                }
                next_lr = sched.lr(t);
            }
            micro_step += 1;
            images_seen += n as u64 * world_size as u64;
            loss_sum += loss_value;
            loss_n += 1;
            let ips = images_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
            metrics.step.set(opt.steps() as i64);
            metrics.loss.set(loss_value);
            metrics.lr.set(lr_used);
            metrics.grad_norm.set(grad_norm);
            metrics.images_trained.inc_by(n as u64);
            if boundary {
                let secs = step_started.elapsed().as_secs_f64();
                step_started = Instant::now();
                metrics.step_duration.observe(secs);
                let ema = step_seconds_ema.map_or(secs, |e| 0.9 * e + 0.1 * secs);
                step_seconds_ema = Some(ema);
                let done = opt.steps();
                metrics
                    .progress_ratio
                    .set((done as f64 / total_steps.max(1) as f64).min(1.0));
                metrics
                    .eta_seconds
                    .set(total_steps.saturating_sub(done) as f64 * ema);
                let now = unix_now();
                metrics.last_step_timestamp.set(now);
                update_progress(&run.report, |p| {
                    p.step = opt.steps();
                    p.last_step_unix = Some(now);
                    p.images_per_second = ips;
                });
            }
            pb.set_message(format!(
                "loss {loss_value:.4} lr {lr_used:.2e} {ips:.0} img/s"
            ));
            pb.inc(1);
            if is_main && !run.progress && cfg.print_freq > 0 && (idx as u64) % cfg.print_freq == 0
            {
                eprintln!("epoch {} [{idx}/{per_epoch}] loss {loss_value:.4} lr {lr_used:.3e} grad_norm {grad_norm:.3} {ips:.0} img/s", epoch + 1);
            }
            if boundary && stop {
                pb.finish_and_clear();
                let meta = CheckpointMeta {
                    epoch,
                    iterations_done: Some(idx as u64 + 1),
                    samples_done: consumed + (k as u64 + 1) * global_batch,
                    world_size: world_size as u64,
                    step: opt.steps(),
                    micro_step,
                    next_lr,
                    max_accuracy,
                    scaler: scaler.as_ref().map(|s| s.state()),
                    eval: last_eval.clone(),
                    config: config_yaml.clone(),
                    saved_at: chrono::Utc::now().to_rfc3339(),
                };
                let mut checkpoint = format!("{output}/(saved by rank 0)");
                if let Some(w) = writer.as_mut() {
                    submit_checkpoint(w, &vs, &opt, meta);
                    checkpoint = w
                        .wait()?
                        .ok_or_else(|| anyhow::anyhow!("no checkpoint was saved"))?;
                }
                comm.barrier()?;
                return Err(Preempted { checkpoint }.into());
            }
        }
        pb.finish_and_clear();
        if is_main && overflow_steps > 0 {
            eprintln!("mixed precision: {overflow_steps} optimiser steps skipped for inf/NaN gradients so far");
        }
        epochs_run += 1;
        let last = epoch + 1 == cfg.train.epochs;
        let mut line = format!(
            "epoch {}/{} loss {:.4} lr {:.3e} {:.1}s",
            epoch + 1,
            cfg.train.epochs,
            loss_sum / loss_n.max(1) as f64,
            next_lr,
            epoch_start.elapsed().as_secs_f64()
        );
        if epoch % cfg.save_freq.max(1) == 0 || last {
            update_progress(&run.report, |p| {
                p.state = ride_contract::RunState::Evaluating
            });
            let report = evaluate(&model, &data.test, cfg, &train_counts, device, comm)?;
            metrics.record_eval(&report);
            record_eval_progress(&run.report, epoch, &report);
            max_accuracy = max_accuracy.max(report.top1);
            line.push_str(&format!(
                " | top-1 {:.2} many {} medium {} few {}",
                report.top1,
                report.many.map_or("-".into(), |v| format!("{v:.1}")),
                report.medium.map_or("-".into(), |v| format!("{v:.1}")),
                report.few.map_or("-".into(), |v| format!("{v:.1}"))
            ));
            if let Some(w) = writer.as_mut() {
                let meta = CheckpointMeta {
                    epoch,
                    iterations_done: None,
                    samples_done: 0,
                    world_size: world_size as u64,
                    step: opt.steps(),
                    micro_step,
                    next_lr,
                    max_accuracy,
                    scaler: scaler.as_ref().map(|s| s.state()),
                    eval: Some(report.clone()),
                    config: config_yaml.clone(),
                    saved_at: chrono::Utc::now().to_rfc3339(),
                };
                submit_checkpoint(w, &vs, &opt, meta);
            }
            last_checkpoint = Some(format!(
                "{output}/{}",
                crate::checkpoint::checkpoint_dir_name(epoch, None)
            ));
            last_eval = Some(report);
        }
        if is_main {
            eprintln!("{line}");
        }
    }
    if let Some(w) = writer.as_mut() {
        // The run is only done when its last checkpoint is durable.
        if let Some(uri) = w.wait()? {
            last_checkpoint = Some(uri);
        }
    }
    comm.barrier()?;
    let train_seconds = started.elapsed().as_secs_f64();
    let artifacts = match &last_eval {
        Some(report) => write_artifacts(report)?,
        None => None,
    };
    Ok(RunSummary {
        skipped_samples: metrics.skipped_samples.get(),
        artifacts,
        eval: last_eval,
        epochs_run,
        steps: opt.steps(),
        train_seconds,
        images_per_second: images_seen as f64 / train_seconds.max(1e-9),
        checkpoint: last_checkpoint,
        output,
        parameters,
    })
}

fn record_eval_progress(p: &SharedProgress, epoch: u64, r: &EvalReport) {
    update_progress(p, |p| {
        p.eval = Some(ride_contract::EvalProgress {
            epoch,
            top1: r.top1,
            many: r.many,
            medium: r.medium,
            few: r.few,
        })
    });
}

/// Write the evaluation artifacts when the output is a local directory.
fn write_local_artifacts(report: &EvalReport, output: &str, name: &str) -> Result<Option<PathBuf>> {
    match local_dir(output) {
        Some(dir) => {
            write_eval_artifacts(report, &dir, name)?;
            Ok(Some(dir))
        }
        None => Ok(None),
    }
}

/// Write `eval.json` and the per-class accuracy plot into `dir`.
pub fn write_eval_artifacts(report: &EvalReport, dir: &std::path::Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("eval.json"), serde_json::to_string_pretty(report)?)?;
    crate::plot::per_class_accuracy_svg(
        report,
        &dir.join("per_class_accuracy.svg"),
        &format!("{name}: per-class top-1 vs class size"),
    )?;
    Ok(())
}

/// Forward-only images/s on a random batch (the reference's `--throughput`).
pub fn throughput(model: &RideSwin, cfg: &Config, device: Device) -> f64 {
    let s = cfg.data.img_size;
    let bs = cfg.data.batch_size as i64;
    let x = Tensor::randn([bs, 3, s, s], (Kind::Float, device));
    tch::no_grad(|| {
        for _ in 0..5 {
            let _ = model.forward(&x, false);
        }
        let t = Instant::now();
        let iters = 10;
        for _ in 0..iters {
            let _ = model
                .forward(&x, false)
                .mean()
                .sum(Kind::Float)
                .double_value(&[]);
        }
        (bs * iters) as f64 / t.elapsed().as_secs_f64()
    })
}

/// Hand the model and optimiser state to the background writer. Only the
/// host copy blocks; the upload runs while training goes on. A failure of
/// the previous save is reported, and its checkpoint stays the last good one.
fn submit_checkpoint(
    w: &mut CheckpointWriter,
    vs: &tch::nn::VarStore,
    opt: &AdamW,
    meta: CheckpointMeta,
) {
    let model_tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    if let Err(e) = w.submit(Snapshot::capture(&model_tensors, &opt.state(), meta)) {
        eprintln!("warning: an earlier checkpoint save failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::rank_metrics_addr;

    #[test]
    fn ranks_on_one_node_get_consecutive_metrics_ports() {
        assert_eq!(rank_metrics_addr("0.0.0.0:9400", 0), "0.0.0.0:9400");
        assert_eq!(rank_metrics_addr("0.0.0.0:9400", 3), "0.0.0.0:9403");
        // Port 0 (any free port) stays 0.
        assert_eq!(rank_metrics_addr("127.0.0.1:0", 2), "127.0.0.1:0");
        assert_eq!(rank_metrics_addr("not-an-address", 1), "not-an-address");
    }
}
