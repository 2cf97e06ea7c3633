//! One training step, the way nanoGPT's loop reads: forward, loss,
//! backward, all-reduce, clip, optimiser step.

use super::fit::Plan;
use super::setup::Trainer;
use crate::data::loader::Batch;
use crate::data::mix_seed;
use crate::data::mixup::{mix, smooth_one_hot};
use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::Ordering;
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
    /// Loss of the micro-batch; averaged over ranks at a boundary.
    pub loss: f64,
    /// Gradient norm before clipping; NaN when no clipping happened.
    pub grad_norm: f64,
    /// Some rank was asked to stop (known to all ranks at a boundary).
    pub stop: bool,
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
    /// boundary also average gradients across ranks, clip and step.
    pub(super) fn train_step(
        &mut self,
        mb: &MicroBatch,
        at: At,
        lr: f64,
        plan: &Plan,
    ) -> Result<StepOutcome> {
        let accum = plan.accumulation;
        let forward = self
            .precision
            .autocast(|| self.model.forward_train(&mb.images))?;
        let loss = plan
            .criterion
            .loss(&forward.output.experts, &mb.labels, &mb.targets, at.epoch);
        let mut loss_value = loss.double_value(&[]);
        if !loss_value.is_finite() && !self.precision.tolerates_non_finite_loss() {
            bail!("loss became {loss_value} at epoch {} iteration {}; lower TRAIN.BASE_LR or check the data", at.epoch, at.iteration);
        }
        let scaled = self.precision.scale(&loss);
        let micro_loss = if accum > 1 {
            scaled / accum as f64
        } else {
            scaled
        };
        if accum <= 1 {
            self.opt.zero_grad();
        }
        forward.backward(&micro_loss)?;

        let mut stop = self.stop_requested();
        let world_size = self.comm.world_size();
        if world_size > 1 && at.boundary {
            // Gradients are averaged once per optimiser step; the loss and
            // any rank's stop request ride along in the same all-reduce.
            let mut extras = [loss_value as f32, f32::from(u8::from(stop))];
            let timer = self.metrics.allreduce_duration.start_timer();
            plan.averager
                .average(self.comm.as_ref(), &self.params, &mut extras)?;
            timer.observe_duration();
            loss_value = f64::from(extras[0]) / world_size as f64;
            stop = extras[1] > 0.0;
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
            loss: loss_value,
            grad_norm,
            stop,
        })
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
