//! Mixed precision on libtorch's own machinery: autocast regions for any
//! device with fp16 or bf16 (through `csrc/amp.cpp`; tch's `autocast` only
//! toggles CUDA fp16), the fused AdamW kernel, and dynamic loss scaling for
//! fp16 (torch's `GradScaler` semantics): unscale gradients while checking
//! for inf/NaN, skip the optimiser step when any is found, and grow or back
//! off the scale.

use std::os::raw::{c_char, c_int};
use tch::{Device, Kind, Tensor};

extern "C" {
    fn ride_autocast_enter(
        device: c_int,
        dtype: c_int,
        prev: *mut c_int,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn ride_autocast_exit(device: c_int, prev: *const c_int, err: *mut c_char, len: usize)
        -> c_int;
    fn ride_autocast_state(device: c_int, dtype: *mut c_int) -> c_int;
    fn ride_fused_adamw(
        params: *const *mut torch_sys::C_tensor,
        grads: *const *mut torch_sys::C_tensor,
        exp_avgs: *const *mut torch_sys::C_tensor,
        exp_avg_sqs: *const *mut torch_sys::C_tensor,
        steps: *const *mut torch_sys::C_tensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn ride_clip_grad_norm(
        grads: *const *mut torch_sys::C_tensor,
        n: usize,
        max_norm: f64,
        norm_out: *mut torch_sys::C_tensor,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
}

/// A failure inside libtorch's mixed-precision or fused-optimiser code.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct AmpError {
    /// What was being done.
    pub what: &'static str,
    /// libtorch's message.
    pub message: String,
}

/// Call a shim function that reports failure as a non-zero return and a
/// message in a buffer.
fn checked(
    what: &'static str,
    call: impl FnOnce(*mut c_char, usize) -> c_int,
) -> Result<(), AmpError> {
    let mut buf = vec![0u8; 1024];
    let rc = call(buf.as_mut_ptr().cast(), buf.len());
    if rc == 0 {
        return Ok(());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Err(AmpError {
        what,
        message: String::from_utf8_lossy(&buf[..end]).into_owned(),
    })
}

/// The reduced-precision type autocast computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmpDtype {
    /// IEEE half: needs loss scaling against gradient underflow.
    Float16,
    /// bfloat16: fp32's range, no loss scaling needed.
    BFloat16,
}

impl AmpDtype {
    fn code(self) -> c_int {
        match self {
            AmpDtype::Float16 => 0,
            AmpDtype::BFloat16 => 1,
        }
    }

    fn from_code(code: c_int) -> Self {
        if code == 1 {
            AmpDtype::BFloat16
        } else {
            AmpDtype::Float16
        }
    }

    /// The tensor kind autocast produces.
    pub fn kind(self) -> Kind {
        match self {
            AmpDtype::Float16 => Kind::Half,
            AmpDtype::BFloat16 => Kind::BFloat16,
        }
    }
}

fn device_code(device: Device) -> c_int {
    c_int::from(device.is_cuda())
}

/// Run `f` with autocast on for `device`'s type in `dtype`, as
/// `torch.autocast(device_type, dtype)`: eligible ops (matmuls,
/// convolutions, attention) run in `dtype`, precision-sensitive ones in fp32.
pub fn autocast<T>(device: Device, dtype: AmpDtype, f: impl FnOnce() -> T) -> Result<T, AmpError> {
    let d = device_code(device);
    let mut prev: [c_int; 2] = [0, 0];
    // SAFETY: the shim writes two ints into `prev` and at most `len` bytes of message.
    checked("entering autocast", |err, len| unsafe {
        ride_autocast_enter(d, dtype.code(), prev.as_mut_ptr(), err, len)
    })?;
    let out = f();
    // SAFETY: as above; `prev` holds what enter saved.
    checked("leaving autocast", |err, len| unsafe {
        ride_autocast_exit(d, prev.as_ptr(), err, len)
    })?;
    Ok(out)
}

/// The autocast region active on this thread for `device`'s type, if any:
/// what recomputation in the backward pass must run under again.
pub fn active_autocast(device: Device) -> Option<AmpDtype> {
    let mut dtype: c_int = 0;
    // SAFETY: reads thread-local flags; writes one int.
    let on = unsafe { ride_autocast_state(device_code(device), &mut dtype) };
    (on != 0).then(|| AmpDtype::from_code(dtype))
}

/// One AdamW update with libtorch's fused kernel (`torch.optim.AdamW(fused=True)`)
/// over parameters with gradients and their moments, all on one device;
/// `step` is a float tensor on that device holding the step number after
/// this update (1 for the first), so no host value is copied per step.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    step: &Tensor,
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
) -> Result<(), AmpError> {
    let n = params.len();
    assert!(
        grads.len() == n && exp_avgs.len() == n && exp_avg_sqs.len() == n,
        "fused_adamw: lists of different lengths"
    );
    if n == 0 {
        return Ok(());
    }
    let ptrs = |ts: &[Tensor]| -> Vec<*mut torch_sys::C_tensor> {
        ts.iter().map(|t| t.as_ptr() as *mut _).collect()
    };
    let steps = vec![step.as_ptr() as *mut torch_sys::C_tensor; n];
    let (p, g, m, v) = (ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs));
    // SAFETY: every pointer is a live tensor owned by the caller for the
    // duration of the call; the shim copies the handles.
    checked("fused AdamW step", |err, len| unsafe {
        ride_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            steps.as_ptr(),
            n,
            lr,
            betas.0,
            betas.1,
            weight_decay,
            eps,
            err,
            len,
        )
    })
}

/// The global L2 norm of `grads` (non-empty, all on `device`) written into
/// a new 0-d float tensor there, after scaling them by
/// `min(1, max_norm / (norm + 1e-6))` when `max_norm` > 0: torch's foreach
/// `clip_grad_norm_`, a handful of kernels and no host synchronisation.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64, device: Device) -> Result<Tensor, AmpError> {
    let norm = Tensor::zeros([], (Kind::Float, device));
    let ptrs: Vec<*mut torch_sys::C_tensor> = grads.iter().map(|t| t.as_ptr() as *mut _).collect();
    // SAFETY: the gradients and `norm` are live for the call; the shim
    // copies the handles and writes only into the tensors' storage.
    checked("gradient clipping", |err, len| unsafe {
        ride_clip_grad_norm(
            ptrs.as_ptr(),
            ptrs.len(),
            max_norm,
            norm.as_ptr() as *mut _,
            err,
            len,
        )
    })?;
    Ok(norm)
}

/// A dynamic loss scaler.
pub struct GradScaler {
    scale: Tensor,
    growth_tracker: Tensor,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: i64,
}

impl GradScaler {
    /// torch's defaults: initial scale 2^16, ×2 after 2000 clean steps, ×0.5 on overflow.
    pub fn new(device: Device) -> Self {
        Self::with(device, 65536.0, 2.0, 0.5, 2000)
    }

    /// A scaler with explicit settings.
    pub fn with(
        device: Device,
        init_scale: f64,
        growth_factor: f64,
        backoff_factor: f64,
        growth_interval: i64,
    ) -> Self {
        Self {
            scale: Tensor::full([1], init_scale, (Kind::Float, device)),
            growth_tracker: Tensor::zeros([1], (Kind::Int, device)),
            growth_factor,
            backoff_factor,
            growth_interval,
        }
    }

    /// Scale and growth tracker, for checkpoints.
    pub fn state(&self) -> (f64, i64) {
        (self.scale_value(), self.growth_tracker.int64_value(&[0]))
    }

    /// Restore [`GradScaler::state`].
    pub fn load_state(&mut self, (scale, tracker): (f64, i64)) {
        let _ = self.scale.fill_(scale);
        let _ = self.growth_tracker.fill_(tracker);
    }

    /// The device its scale lives on (the training device).
    pub fn device(&self) -> Device {
        self.scale.device()
    }

    /// Current scale.
    pub fn scale_value(&self) -> f64 {
        self.scale.double_value(&[0])
    }

    /// `loss × scale`, to backpropagate instead of `loss`.
    pub fn scale(&self, loss: &Tensor) -> Tensor {
        loss * self.scale.to_kind(loss.kind()).squeeze()
    }

    /// Divide every gradient by the scale in place; returns whether any
    /// gradient held inf/NaN (then the optimiser step must be skipped).
    pub fn unscale(&self, params: &[Tensor]) -> (bool, Tensor) {
        let mut found_inf = Tensor::zeros([1], (Kind::Float, self.scale.device()));
        let inv = self.scale.reciprocal();
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                g.internal_amp_non_finite_check_and_unscale(&mut found_inf, &inv);
            }
        }
        (found_inf.double_value(&[0]) > 0.0, found_inf)
    }

    /// Update the scale after a step (with `found_inf` from [`GradScaler::unscale`]).
    pub fn update(&mut self, found_inf: &Tensor) {
        let _ = self.scale.internal_amp_update_scale_(
            &self.growth_tracker,
            found_inf,
            self.growth_factor,
            self.backoff_factor,
            self.growth_interval,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_autocast_on_cpu_casts_matmuls_and_restores_the_previous_state() {
        let a = Tensor::ones([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([8, 2], (Kind::Float, Device::Cpu));
        assert_eq!(active_autocast(Device::Cpu), None);
        let (inside, nested, state) = autocast(Device::Cpu, AmpDtype::BFloat16, || {
            let y = a.matmul(&b);
            // A nested fp32 op list: reductions stay fp32 under autocast.
            let s = y.to_kind(Kind::Float).sum(Kind::Float);
            (y, s, active_autocast(Device::Cpu))
        })
        .unwrap();
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert_eq!(nested.kind(), Kind::Float);
        assert_eq!(nested.double_value(&[]), 64.0);
        assert_eq!(state, Some(AmpDtype::BFloat16));
        assert_eq!(active_autocast(Device::Cpu), None);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        // Regions nest: the inner one's end leaves the outer one on.
        let outer = autocast(Device::Cpu, AmpDtype::BFloat16, || {
            autocast(Device::Cpu, AmpDtype::BFloat16, || ()).unwrap();
            active_autocast(Device::Cpu)
        })
        .unwrap();
        assert_eq!(outer, Some(AmpDtype::BFloat16));
    }

    fn param_with_grad(g: &[f32]) -> Tensor {
        let p = Tensor::zeros([g.len() as i64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(g)).sum(Kind::Float).backward();
        p
    }

    #[test]
    fn unscales_finite_gradients_and_grows_after_interval() {
        let mut s = GradScaler::with(Device::Cpu, 8.0, 2.0, 0.5, 2);
        let p = param_with_grad(&[8.0, 16.0]);
        let (inf, found) = s.unscale(&[p.shallow_clone()]);
        assert!(!inf);
        let g: Vec<f32> = Vec::try_from(p.grad()).unwrap();
        assert_eq!(g, vec![1.0, 2.0]);
        s.update(&found);
        assert_eq!(s.scale_value(), 8.0, "one clean step of an interval of 2");
        s.update(&found);
        assert_eq!(s.scale_value(), 16.0);
    }

    #[test]
    fn overflow_is_detected_and_backs_off() {
        let mut s = GradScaler::with(Device::Cpu, 8.0, 2.0, 0.5, 2);
        let p = param_with_grad(&[f32::INFINITY, 1.0]);
        let (inf, found) = s.unscale(&[p]);
        assert!(inf);
        s.update(&found);
        assert_eq!(s.scale_value(), 4.0);
        let loss = Tensor::from(3.0f32);
        assert_eq!(s.scale(&loss).double_value(&[]), 12.0);
    }
}
