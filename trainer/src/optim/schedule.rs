//! Learning-rate schedules. The reference's, stepped per iteration: linear
//! warm-up from `warmup_lr` to `base_lr`, then cosine decay to `min_lr`
//! over the whole run (timm `CosineLRScheduler` with `t_in_epochs=False`).
//! The authors' CIFAR `CustomLR`, stepped per epoch: warm-up, then steps.

/// The configured schedule (`TRAIN.LR_SCHEDULER.NAME`).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `cosine`.
    Cosine(CosineSchedule),
    /// `step`.
    Step(StepSchedule),
}

impl Schedule {
    /// Learning rate at iteration `t` of the run.
    pub fn lr(&self, t: u64) -> f64 {
        match self {
            Schedule::Cosine(c) => c.lr(t),
            Schedule::Step(s) => s.lr(t),
        }
    }

    /// The LR of the optimiser step after the one at iteration `t`. The
    /// reference's per-iteration scheduler is stepped after each update with
    /// the update's own index (timm's `step_update(num_updates)`), so step
    /// `t + 1` runs at `lr(t)`; a per-epoch `LambdaLR` gives every iteration
    /// of epoch `e` the LR of `e`, so step `t + 1` runs at `lr(t + 1)`.
    pub fn lr_after(&self, t: u64) -> f64 {
        match self {
            Schedule::Cosine(c) => c.lr(t),
            Schedule::Step(s) => s.lr(t + 1),
        }
    }
}

/// The authors' CIFAR `CustomLR` (a `LambdaLR` stepped once per epoch):
/// in epoch `e` (0-based) the LR is `base_lr · gamma^k`, `k` the milestones
/// `≤ e`, times `(1 + e) / warmup_epochs` while `e < warmup_epochs`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSchedule {
    /// Learning rate after warm-up, before the first milestone.
    pub base_lr: f64,
    /// Iterations per epoch.
    pub per_epoch: u64,
    /// Warm-up epochs.
    pub warmup_epochs: u64,
    /// Epochs from which the LR is multiplied by `gamma` once more.
    pub milestones: Vec<u64>,
    /// Factor per milestone.
    pub gamma: f64,
}

impl StepSchedule {
    /// Learning rate at iteration `t`.
    pub fn lr(&self, t: u64) -> f64 {
        let e = t / self.per_epoch.max(1);
        let passed = self.milestones.iter().filter(|&&m| m <= e).count();
        let mut lr = self.base_lr * self.gamma.powi(passed as i32);
        if e < self.warmup_epochs {
            lr *= (1 + e) as f64 / self.warmup_epochs as f64;
        }
        lr
    }
}

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
    fn step_schedule_is_the_authors_custom_lr() {
        // config_imbalance_cifar100_ride.json: lr 0.1, step1 160, step2 180,
        // gamma 0.01, warmup_epoch 5; 10 iterations per epoch.
        let s = StepSchedule {
            base_lr: 0.1,
            per_epoch: 10,
            warmup_epochs: 5,
            milestones: vec![160, 180],
            gamma: 0.01,
        };
        let at_epoch = |e: u64| s.lr(e * 10 + 3);
        assert!((at_epoch(0) - 0.1 / 5.0).abs() < 1e-15);
        assert!((at_epoch(4) - 0.1).abs() < 1e-15);
        assert_eq!(at_epoch(5), 0.1);
        assert_eq!(at_epoch(159), 0.1);
        assert!((at_epoch(160) - 1e-3).abs() < 1e-15);
        assert!((at_epoch(199) - 1e-5).abs() < 1e-15);
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
