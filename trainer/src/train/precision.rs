//! The numeric precision of training (`AMP_OPT_LEVEL` O1/O2 with
//! `AMP_DTYPE`): fp32; fp16 autocast with dynamic loss scaling on CUDA; or
//! bf16 autocast, without loss scaling, on CUDA or CPU.

use crate::amp::{AmpDtype, AmpError, GradScaler};
use crate::config::Config;
use crate::optim::{clip_grad_norm, Optimizer};
use tch::{Device, Tensor};

/// How forward passes run and how gradients reach the optimiser.
pub(crate) enum Precision {
    /// Full precision.
    Fp32,
    /// fp16 autocast on CUDA; the loss is scaled and steps with inf/NaN
    /// gradients are skipped.
    Fp16(GradScaler),
    /// bf16 autocast on `device`'s type; fp32's range, so no loss scaling.
    Bf16(Device),
}

impl Precision {
    /// The precision `cfg` asks for on `device`, announced once by the main rank.
    pub fn for_run(cfg: &Config, device: Device, announce: bool) -> Self {
        let level = cfg.amp_opt_level.as_str();
        let wanted = matches!(level, "O1" | "O2");
        let bf16 = cfg.amp_dtype == "bfloat16";
        let precision = match (wanted, bf16, device.is_cuda()) {
            (false, _, _) => Precision::Fp32,
            (true, true, _) => Precision::Bf16(device),
            (true, false, true) => Precision::Fp16(GradScaler::new(device)),
            (true, false, false) => {
                if announce {
                    tracing::info!("note: AMP_OPT_LEVEL {level} with AMP_DTYPE float16 applies on CUDA only; training in fp32 on {device:?} (AMP_DTYPE bfloat16 works on CPU)");
                }
                Precision::Fp32
            }
        };
        if announce {
            match &precision {
                Precision::Fp16(_) => {
                    tracing::info!("mixed precision: fp16 autocast with dynamic loss scaling")
                }
                Precision::Bf16(_) => {
                    tracing::info!("mixed precision: bf16 autocast on {device:?}, no loss scaling")
                }
                Precision::Fp32 => {}
            }
        }
        precision
    }

    /// Run `f` (a forward pass) under this precision's autocast; the loss
    /// computed outside it stays fp32.
    pub fn autocast<T>(&self, f: impl FnOnce() -> T) -> Result<T, AmpError> {
        match self {
            Precision::Fp16(s) => crate::amp::autocast(s.device(), AmpDtype::Float16, f),
            Precision::Bf16(device) => crate::amp::autocast(*device, AmpDtype::BFloat16, f),
            Precision::Fp32 => Ok(f()),
        }
    }

    /// Whether a non-finite loss is expected now and then (and handled by
    /// skipping the step) rather than a sign the run diverged.
    pub fn tolerates_non_finite_loss(&self) -> bool {
        matches!(self, Precision::Fp16(_))
    }

    /// The loss to backpropagate.
    pub fn scale(&self, loss: &Tensor) -> Tensor {
        match self {
            Precision::Fp16(s) => s.scale(loss),
            Precision::Fp32 | Precision::Bf16(_) => loss.shallow_clone(),
        }
    }

    /// The loss scaler's state for a checkpoint.
    pub fn scaler_state(&self) -> Option<(f64, i64)> {
        match self {
            Precision::Fp16(s) => Some(s.state()),
            Precision::Fp32 | Precision::Bf16(_) => None,
        }
    }

    /// Restore a checkpoint's loss scaler state (ignored without fp16).
    pub fn load_scaler_state(&mut self, state: Option<(f64, i64)>) {
        if let (Precision::Fp16(s), Some(state)) = (self, state) {
            s.load_state(state);
        }
    }

    /// After a micro-batch's backward pass (and, at an optimiser-step
    /// boundary, the all-reduce): clip and step as the reference does.
    /// Returns the gradient norm before clipping as a device scalar (`None`
    /// when no clipping happened) and whether an fp16 step was skipped for
    /// inf/NaN gradients. Only fp16 reads anything back to the host (whether
    /// to skip the step); fp32 and bf16 leave the GPU queue untouched.
    pub fn clip_and_step(
        &mut self,
        opt: &mut Optimizer,
        params: &[Tensor],
        boundary: bool,
        multi_rank: bool,
        max_norm: f64,
        lr: f64,
    ) -> Result<(Option<Tensor>, bool), AmpError> {
        Ok(match self {
            // Scaled gradients can only be unscaled once, so with AMP
            // clipping happens at the optimiser step, not every micro-step.
            Precision::Fp16(s) if boundary => {
                let (overflow, found_inf) = s.unscale(params);
                let mut norm = None;
                if !overflow {
                    norm = Some(clip_grad_norm(params, max_norm)?);
                    opt.step(lr)?;
                }
                s.update(&found_inf);
                (norm, overflow)
            }
            Precision::Fp16(_) => (None, false),
            // The reference clips at every micro-step (on the partial sum when
            // accumulating). With several ranks the partial sums are local, so
            // clipping waits for the averaged gradient at the optimiser step.
            Precision::Fp32 | Precision::Bf16(_) if !multi_rank || boundary => {
                let norm = clip_grad_norm(params, max_norm)?;
                if boundary {
                    opt.step(lr)?;
                }
                (Some(norm), false)
            }
            Precision::Fp32 | Precision::Bf16(_) => (None, false),
        })
    }
}
