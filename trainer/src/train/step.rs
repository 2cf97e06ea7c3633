//! One training step, the way nanoGPT's loop reads: forward, loss,
//! backward, all-reduce, clip, optimiser step.

use super::fit::Plan;
use super::meter::LossMeter;
use super::setup::Trainer;
use crate::data::loader::Batch;
use crate::data::mix_seed;
use crate::data::mixup::{mix, smooth_one_hot};
use crate::model::router::router_loss;
use crate::model::TrainForward;
use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A micro-batch on the training device.
pub(super) struct MicroBatch {
    /// Images, mixed when mixup/cutmix is on.
    pub images: Tensor,
    /// Hard labels.
    pub labels: Tensor,
    /// Soft targets (mixed or one-hot).
    pub targets: Tensor,
}

/// Where in the run a micro-batch falls.
#[derive(Clone, Copy, Debug)]
pub(super) struct At {
    pub epoch: u64,
    /// Iteration within the epoch (counting a resumed epoch's skipped part).
    pub iteration: usize,
    /// Whether this micro-batch completes an optimiser step (gradient accumulation).
    pub boundary: bool,
}

/// What a step reports.
pub(super) struct StepOutcome {
    /// Gradient norm before clipping, on the device; `None` when no
    /// clipping happened.
    pub grad_norm: Option<Tensor>,
    /// Some rank was asked to stop (known to all ranks at a boundary).
    pub stop: bool,
    /// Rank 0's clock says a time-based checkpoint is due (known to all
    /// ranks at a boundary).
    pub checkpoint: bool,
}

impl Trainer<'_> {
    /// Move the batch to the device and apply mixup/cutmix; `None` for a
    /// batch left empty (every sample skipped, or one odd sample under mixup).
    pub(super) fn micro_batch(&self, batch: &Batch, at: At, plan: &Plan) -> Option<MicroBatch> {
        let mut n = batch.len() as i64;
        if plan.mixup.active() && n % 2 == 1 {
            n -= 1; // timm's batch mixup needs an even batch.
        }
        if n <= 0 {
            return None;
        }
        let (x, y) = to_device(batch, n, self.device);
        let (images, targets) = if plan.mixup.active() {
            let seed = &[
                self.cfg.seed,
                0x313,
                at.epoch,
                at.iteration as u64,
                self.comm.rank() as u64,
            ];
            let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed));
            let (xm, t, _) = mix(&x, &y, &plan.mixup, &mut rng);
            (xm, t)
        } else {
            let t = smooth_one_hot(&y, self.cfg.model.num_classes, 0.0);
            (x, t)
        };
        Some(MicroBatch {
            images,
            labels: y,
            targets,
        })
    }

    /// Forward and backward on one micro-batch; at an optimiser-step
    /// boundary also average gradients across ranks, clip and step. The
    /// loss goes to `meter` on the device: nothing here waits for the GPU
    /// except fp16's skip-or-step decision.
    pub(super) fn train_step(
        &mut self,
        mb: &MicroBatch,
        at: At,
        lr: f64,
        plan: &Plan,
        meter: &mut LossMeter,
    ) -> Result<StepOutcome> {
        let accum = plan.accumulation;
        let (forward, loss) = match &self.router {
            // Router stage: the frozen experts run as at evaluation (no
            // dropout, no stochastic depth, no graph); only the router learns.
            Some(router) => {
                let (output, features) = tch::no_grad(|| {
                    self.precision
                        .autocast(|| self.model.forward_with_features(&mb.images, false))
                })?;
                let help = router.help_logits(&output.experts, &features);
                let loss =
                    router_loss(&output.experts, &help, &mb.labels, router.spec().pos_weight);
                (TrainForward::without_tape(output), loss)
            }
            None => {
                let forward = self
                    .precision
                    .autocast(|| self.model.forward_train(&mb.images))?;
                let loss =
                    plan.criterion
                        .loss(&forward.output.experts, &mb.labels, &mb.targets, at.epoch);
                (forward, loss)
            }
        };
        meter.add_micro_batch(&loss);
        let scaled = self.precision.scale(&loss);
        let micro_loss = if accum > 1 {
            scaled / accum as f64
        } else {
            scaled
        };
        if accum <= 1 {
            self.opt.zero_grad();
        }
        let world_size = self.comm.world_size();
        // Gradients are averaged once per optimiser step, and the step's
        // losses ride along in the first bucket.
        let pending = if at.boundary {
            meter.take_pending()
        } else {
            None
        };
        let extras = pending.as_ref().map(|(sum, _)| sum);
        if at.boundary && world_size > 1 {
            let comm = self.comm.as_ref();
            // What the step waits for after backward: all of the all-reduce,
            // or with overlap only what backward did not hide.
            let waited = match &plan.overlap {
                Some(overlap) => {
                    let mut backward_done = None;
                    overlap.average_during(comm, extras, || {
                        let done = forward.backward(&micro_loss);
                        backward_done = Some(Instant::now());
                        done
                    })??;
                    backward_done.map(|t| t.elapsed())
                }
                None => {
                    forward.backward(&micro_loss)?;
                    let started = Instant::now();
                    plan.averager.average(comm, &self.params, extras)?;
                    Some(started.elapsed())
                }
            };
            if let Some(waited) = waited {
                self.metrics
                    .allreduce_duration
                    .observe(waited.as_secs_f64());
            }
        } else {
            forward.backward(&micro_loss)?;
        }
        let mut stop = self.stop_requested();
        // Only rank 0's clock counts, so every rank agrees on the step.
        let mut checkpoint = at.boundary && self.is_main() && self.checkpoint_due();
        if at.boundary && world_size > 1 {
            // Host flags: they go round the host ring so that learning them
            // never waits for the GPU.
            let mut flags = [f32::from(u8::from(stop)), f32::from(u8::from(checkpoint))];
            self.comm.all_reduce_sum_f32(&mut flags)?;
            stop = flags[0] > 0.0;
            checkpoint = flags[1] > 0.0;
        }
        if let Some((sum, n)) = pending {
            meter.commit(&sum, n * world_size as u64);
        }
        let (grad_norm, overflow) = self.precision.clip_and_step(
            &mut self.opt,
            &self.params,
            at.boundary,
            world_size > 1,
            self.cfg.train.clip_grad,
            lr,
        )?;
        self.state.overflow_steps += u64::from(overflow);
        if at.boundary && accum > 1 {
            self.opt.zero_grad();
        }
        Ok(StepOutcome {
            grad_norm,
            stop,
            checkpoint,
        })
    }

    /// Whether `checkpoint_every` has passed since the last save.
    fn checkpoint_due(&self) -> bool {
        match (self.options.checkpoint_every, self.state.last_save) {
            (Some(every), Some(at)) => at.elapsed() >= every,
            _ => false,
        }
    }

    fn stop_requested(&self) -> bool {
        self.options
            .stop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }
}

/// Move the first `n` samples of a batch to `device`; for CUDA through
/// pinned host memory with an asynchronous copy, as DataLoader(pin_memory=True).
fn to_device(batch: &Batch, n: i64, device: Device) -> (Tensor, Tensor) {
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
