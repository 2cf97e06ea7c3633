//! The reference's learning-rate schedule, stepped per iteration: linear
//! warm-up from `warmup_lr` to `base_lr`, then cosine decay to `min_lr`
//! over the whole run (timm `CosineLRScheduler` with `t_in_epochs=False`).

/// A per-iteration warm-up + cosine schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct CosineSchedule {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Learning rate at iteration 0.
    pub warmup_lr: f64,
    /// Floor of the cosine.
    pub min_lr: f64,
    /// Warm-up length in iterations.
    pub warmup_steps: u64,
    /// Total iterations of the run.
    pub total_steps: u64,
}

impl CosineSchedule {
    /// Learning rate at iteration `t`.
    pub fn lr(&self, t: u64) -> f64 {
        if t < self.warmup_steps {
            let frac = t as f64 / self.warmup_steps as f64;
            return self.warmup_lr + frac * (self.base_lr - self.warmup_lr);
        }
        if t >= self.total_steps {
            return self.min_lr;
        }
        let frac = t as f64 / self.total_steps.max(1) as f64;
        self.min_lr
            + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * frac).cos())
    }
}

/// The reference's linear LR scaling: every LR is multiplied by
/// `batch * world / 512`, and by the accumulation steps when accumulating.
pub fn scale_lr(lr: f64, batch_size: usize, world_size: usize, accumulation_steps: usize) -> f64 {
    let mut s = lr * (batch_size * world_size) as f64 / 512.0;
    if accumulation_steps > 1 {
        s *= accumulation_steps as f64;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched() -> CosineSchedule {
        CosineSchedule {
            base_lr: 1e-3,
            warmup_lr: 1e-6,
            min_lr: 1e-5,
            warmup_steps: 10,
            total_steps: 100,
        }
    }

    #[test]
    fn warmup_is_linear() {
        let s = sched();
        assert_eq!(s.lr(0), 1e-6);
        assert!((s.lr(5) - (1e-6 + 0.5 * (1e-3 - 1e-6))).abs() < 1e-15);
    }

    #[test]
    fn cosine_by_hand() {
        let s = sched();
        // t = 50 of 100: cos(pi/2) = 0 -> midpoint of base and min.
        assert!((s.lr(50) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-12);
        // t = 10: 0.5*(1+cos(0.1pi)) = 0.975528...
        let expect = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1.0 + (0.1f64 * std::f64::consts::PI).cos());
        assert!((s.lr(10) - expect).abs() < 1e-15);
        assert_eq!(s.lr(100), 1e-5);
    }

    #[test]
    fn lr_scaling_matches_reference_rule() {
        assert_eq!(scale_lr(5e-4, 128, 8, 1), 5e-4 * 2.0);
        assert_eq!(scale_lr(5e-4, 64, 8, 2), 5e-4 * 2.0);
    }
}
