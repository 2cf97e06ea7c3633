//! Dynamic loss scaling for fp16 mixed precision (torch's `GradScaler`
//! semantics) on libtorch's own AMP kernels: unscale gradients while checking
//! for inf/NaN, skip the optimiser step when any is found, and grow or back
//! off the scale.

use tch::{Device, Kind, Tensor};

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
