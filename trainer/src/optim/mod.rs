//! Optimisation: AdamW with the reference's no-decay groups, SGD for the
//! authors' CIFAR recipe, the learning-rate schedules and gradient clipping.

pub mod schedule;
pub mod sgd;

use crate::amp::AmpError;
use tch::nn;
use tch::Tensor;

/// Whether a parameter is exempt from weight decay, as in the Swin
/// reference: 1-d tensors (norms), biases, and names containing a skip keyword
/// (`relative_position_bias_table`) or listed in the skip list (`absolute_pos_embed`).
pub fn is_no_decay(name: &str, shape: &[i64]) -> bool {
    shape.len() == 1
        || name.ends_with(".bias")
        || name.contains("relative_position_bias_table")
        || name == "absolute_pos_embed"
}

/// The trainable variables of `vs` (those that require gradients), in name
/// order: the order both optimisers keep, which gradient buckets follow.
fn trainable_by_name(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Zero every parameter's gradient that exists.
fn zero_grads<'a>(params: impl Iterator<Item = &'a Tensor>) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// Copy the saved state tensor `key` into `buf` (same shape required).
fn restore_buffer(state: &[(String, Tensor)], key: &str, buf: &mut Tensor) -> Result<(), String> {
    let t = state
        .iter()
        .find(|(n, _)| n == key)
        .map(|(_, t)| t)
        .ok_or_else(|| format!("optimizer state lacks {key}"))?;
    if t.size() != buf.size() {
        return Err(format!(
            "optimizer state {key} has shape {:?}, expected {:?}",
            t.size(),
            buf.size()
        ));
    }
    tch::no_grad(|| buf.copy_(t));
    Ok(())
}

/// The step count saved as `step`.
fn restore_step(state: &[(String, Tensor)]) -> Result<u64, String> {
    state
        .iter()
        .find(|(n, _)| n == "step")
        .map(|(_, t)| t.int64_value(&[]) as u64)
        .ok_or_else(|| "optimizer state lacks step".to_string())
}

struct Slot {
    name: String,
    param: Tensor,
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW (decoupled weight decay, as `torch.optim.AdamW`) over named
/// parameters, with the reference's no-decay group. Its state is plain named
/// tensors so checkpoints can store and restore it exactly.
pub struct AdamW {
    slots: Vec<Slot>,
    step: u64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    fused: bool,
    /// The step number as the fused kernel reads it: a float tensor on the
    /// parameters' device, refilled by a kernel each step instead of copied
    /// from the host (a copy would wait for the GPU queue to drain).
    fused_step: Option<Tensor>,
}

impl AdamW {
    /// Optimise every trainable variable of `vs`.
    pub fn new(vs: &nn::VarStore, weight_decay: f64, eps: f64, betas: (f64, f64)) -> Self {
        let slots = trainable_by_name(vs)
            .into_iter()
            .map(|(name, param)| Slot {
                decay: !is_no_decay(&name, &param.size()),
                exp_avg: param.zeros_like(),
                exp_avg_sq: param.zeros_like(),
                name,
                param,
            })
            .collect();
        Self {
            slots,
            step: 0,
            betas,
            eps,
            weight_decay,
            fused: false,
            fused_step: None,
        }
    }

    /// Update with libtorch's fused AdamW kernel (one kernel per group and
    /// step, `torch.optim.AdamW(fused=True)`) instead of a chain of small
    /// ops per parameter. Same update within float rounding.
    pub fn with_fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// Whether steps use the fused kernel.
    pub fn is_fused(&self) -> bool {
        self.fused
    }

    /// Number of parameters in the no-decay group.
    #[cfg(test)]
    fn no_decay_count(&self) -> usize {
        self.slots.iter().filter(|s| !s.decay).count()
    }

    /// Parameters in a fixed (name) order.
    pub fn params(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.shallow_clone()).collect()
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Clear all gradients.
    pub fn zero_grad(&mut self) {
        zero_grads(self.slots.iter().map(|s| &s.param));
    }

    /// One AdamW update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<(), AmpError> {
        self.step += 1;
        if self.fused {
            return self.fused_step(lr);
        }
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        tch::no_grad(|| {
            for s in &mut self.slots {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = s.param.shallow_clone();
                if s.decay && self.weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                // Same update as torch's AdamW, with as few temporaries as tch allows:
                // m ← lerp(m, g, 1−β1); v ← lerp(v, g², 1−β2);
                // p ← p − lr/bc1 · m / (√v/√bc2 + ε), the step size folded into the denominator.
                let _ = s.exp_avg.lerp_(&g, 1.0 - b1);
                let _ = s.exp_avg_sq.lerp_(&g.square(), 1.0 - b2);
                let mut denom = s.exp_avg_sq.sqrt();
                let _ = denom
                    .g_div_scalar_(bc2.sqrt())
                    .g_add_scalar_(self.eps)
                    .g_div_scalar_(-lr / bc1);
                let _ = p.addcdiv_(&s.exp_avg, &denom);
            }
        });
        Ok(())
    }

    /// The update through the fused kernel: one call for the decay group,
    /// one for the no-decay group; parameters without a gradient are skipped.
    fn fused_step(&mut self, lr: f64) -> Result<(), AmpError> {
        let Some(device) = self.slots.first().map(|s| s.param.device()) else {
            return Ok(());
        };
        let step = self
            .fused_step
            .get_or_insert_with(|| Tensor::zeros([], (tch::Kind::Float, device)));
        let _ = step.fill_(self.step as f64);
        let step = step.shallow_clone();
        for decay in [true, false] {
            let group: Vec<&Slot> = self
                .slots
                .iter()
                .filter(|s| s.decay == decay && s.param.grad().defined())
                .collect();
            let take = |f: fn(&Slot) -> Tensor| group.iter().map(|s| f(s)).collect::<Vec<_>>();
            crate::amp::fused_adamw(
                &take(|s| s.param.shallow_clone()),
                &take(|s| s.param.grad()),
                &take(|s| s.exp_avg.shallow_clone()),
                &take(|s| s.exp_avg_sq.shallow_clone()),
                &step,
                lr,
                self.betas,
                if decay { self.weight_decay } else { 0.0 },
                self.eps,
            )?;
        }
        Ok(())
    }

    /// Named state tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`) plus the step.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len() + 1);
        for s in &self.slots {
            out.push((format!("exp_avg.{}", s.name), s.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", s.name),
                s.exp_avg_sq.shallow_clone(),
            ));
        }
        out.push(("step".into(), Tensor::from(self.step as i64)));
        out
    }

    /// Restore state saved by [`AdamW::state`]; every buffer must be present.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), String> {
        for s in &mut self.slots {
            restore_buffer(state, &format!("exp_avg.{}", s.name), &mut s.exp_avg)?;
            restore_buffer(state, &format!("exp_avg_sq.{}", s.name), &mut s.exp_avg_sq)?;
        }
        self.step = restore_step(state)?;
        Ok(())
    }
}

/// The configured optimiser (`TRAIN.OPTIMIZER.NAME`).
pub enum Optimizer {
    /// `adamw`.
    AdamW(AdamW),
    /// `sgd`.
    Sgd(sgd::Sgd),
}

impl Optimizer {
    /// Parameters in a fixed (name) order.
    pub fn params(&self) -> Vec<Tensor> {
        match self {
            Optimizer::AdamW(o) => o.params(),
            Optimizer::Sgd(o) => o.params(),
        }
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> u64 {
        match self {
            Optimizer::AdamW(o) => o.steps(),
            Optimizer::Sgd(o) => o.steps(),
        }
    }

    /// Clear all gradients.
    pub fn zero_grad(&mut self) {
        match self {
            Optimizer::AdamW(o) => o.zero_grad(),
            Optimizer::Sgd(o) => o.zero_grad(),
        }
    }

    /// One update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<(), AmpError> {
        match self {
            Optimizer::AdamW(o) => o.step(lr),
            Optimizer::Sgd(o) => {
                o.step(lr);
                Ok(())
            }
        }
    }

    /// Named state tensors for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        match self {
            Optimizer::AdamW(o) => o.state(),
            Optimizer::Sgd(o) => o.state(),
        }
    }

    /// Restore state saved by [`Optimizer::state`].
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), String> {
        match self {
            Optimizer::AdamW(o) => o.load_state(state),
            Optimizer::Sgd(o) => o.load_state(state),
        }
    }
}

/// Global L2 norm of all gradients, as a 0-d float tensor on their device;
/// when `max_norm` > 0, every gradient is scaled by
/// `min(1, max_norm / (norm + 1e-6))` like `clip_grad_norm_`. Nothing is read
/// back to the host, so on CUDA the step keeps the GPU queue full; read the
/// norm when it is logged.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<Tensor, AmpError> {
    let grads: Vec<Tensor> = params
        .iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .collect();
    let Some(first) = grads.first() else {
        return Ok(Tensor::from(0f32));
    };
    crate::amp::clip_grad_norm(&grads, max_norm, first.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn no_decay_rules() {
        assert!(is_no_decay("norm.weight", &[96]));
        assert!(is_no_decay("layers.0.blocks.0.attn.qkv.bias", &[288]));
        assert!(is_no_decay(
            "layers.0.blocks.0.attn.relative_position_bias_table",
            &[169, 3]
        ));
        assert!(is_no_decay("absolute_pos_embed", &[1, 3136, 96]));
        assert!(!is_no_decay(
            "layers.0.blocks.0.attn.qkv.weight",
            &[288, 96]
        ));
        assert!(!is_no_decay("heads.0.weight", &[768, 1000]));
    }

    #[test]
    fn clipping_by_hand() {
        let a = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        // d/da sum(a*[3,0]) = [3,0]; d/db sum(b*[4]) = [4] -> norm 5.
        let loss =
            (&a * Tensor::from_slice(&[3f32, 0.0])).sum(Kind::Float) + (&b * 4.0).sum(Kind::Float);
        loss.backward();
        let norm = clip_grad_norm(&[a.shallow_clone(), b.shallow_clone()], 1.0).unwrap();
        assert!((norm.double_value(&[]) - 5.0).abs() < 1e-6);
        let ga: Vec<f32> = Vec::try_from(a.grad()).unwrap();
        assert!((ga[0] - 3.0 / 5.0).abs() < 1e-5);
    }

    #[test]
    fn clipping_matches_a_host_computation_and_leaves_small_gradients_alone() {
        tch::manual_seed(7);
        let params: Vec<Tensor> = [[64, 32], [32, 1], [7, 1]]
            .iter()
            .map(|s| Tensor::zeros(s, (Kind::Float, Device::Cpu)).set_requires_grad(true))
            .collect();
        let loss = params
            .iter()
            .map(|p| (p * Tensor::randn(p.size(), (Kind::Float, Device::Cpu))).sum(Kind::Float))
            .fold(Tensor::from(0f32), |a, b| a + b);
        loss.backward();
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad().copy()).collect();
        let host: f64 = grads
            .iter()
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        // Above the norm: nothing changes, bit for bit.
        let norm = clip_grad_norm(&params, host * 2.0).unwrap();
        assert!((norm.double_value(&[]) - host).abs() < 1e-5 * host);
        for (p, g) in params.iter().zip(&grads) {
            assert!(p.grad().equal(g));
        }
        // Below: every gradient scaled by the same factor, to the new norm.
        let _ = clip_grad_norm(&params, host / 4.0).unwrap();
        let clipped = clip_grad_norm(&params, 0.0).unwrap().double_value(&[]);
        assert!(
            (clipped - host / 4.0).abs() < 1e-4 * host,
            "{clipped} vs {}",
            host / 4.0
        );
        let ratio = (
            p_ratio(&params[0], &grads[0]),
            p_ratio(&params[2], &grads[2]),
        );
        assert!((ratio.0 - ratio.1).abs() < 1e-5, "{ratio:?}");
    }

    fn p_ratio(p: &Tensor, g: &Tensor) -> f64 {
        (p.grad().sum(Kind::Double) / g.sum(Kind::Double)).double_value(&[])
    }

    #[test]
    fn adamw_matches_formula_by_hand() {
        for fused in [false, true] {
            let vs = nn::VarStore::new(Device::Cpu);
            let root = vs.root();
            let w = (&root / "lin").var("weight", &[1, 1], nn::Init::Const(1.0));
            let bias = (&root / "lin").var("bias", &[1], nn::Init::Const(1.0));
            let mut opt = AdamW::new(&vs, 0.5, 1e-8, (0.9, 0.999)).with_fused(fused);
            assert_eq!(opt.no_decay_count(), 1);
            // loss = 2w + 3b: g_w = 2, g_b = 3. Step 1: m̂ = g, v̂ = g², update = lr·g/(|g|+eps) ≈ lr.
            let loss = (&w * 2.0).sum(Kind::Float) + (&bias * 3.0).sum(Kind::Float);
            loss.backward();
            opt.step(0.1).unwrap();
            // weight: decayed 1*(1-0.1*0.5)=0.95, then -0.1 -> 0.85; bias: 1 - 0.1 = 0.9.
            assert!(
                (w.double_value(&[0, 0]) - 0.85).abs() < 1e-6,
                "fused {fused}"
            );
            assert!(
                (bias.double_value(&[0]) - 0.9).abs() < 1e-6,
                "fused {fused}"
            );
            // Step 2 with the same gradient: m̂ = g, v̂ = g² again -> another -lr.
            opt.zero_grad();
            let loss = (&w * 2.0).sum(Kind::Float) + (&bias * 3.0).sum(Kind::Float);
            loss.backward();
            opt.step(0.1).unwrap();
            assert!(
                (bias.double_value(&[0]) - 0.8).abs() < 1e-6,
                "fused {fused}"
            );
            let want = 0.85 * 0.95 - 0.1;
            assert!(
                (w.double_value(&[0, 0]) - want).abs() < 1e-6,
                "fused {fused}"
            );
        }
    }

    /// A small two-group model (decayed weights, undecayed biases and norms)
    /// trained `steps` steps on fixed pseudo-random gradients.
    fn trained(fused: bool, steps: i64) -> Vec<(String, Tensor)> {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let shapes: [(&str, &[i64]); 4] = [
            ("fc.weight", &[16, 8]),
            ("fc.bias", &[16]),
            ("norm.weight", &[8]),
            ("head.weight", &[4, 16]),
        ];
        let vars: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let n: i64 = shape.iter().product();
                let init = Tensor::arange(n, (Kind::Float, Device::Cpu)).sin() * (0.5 + i as f64);
                let (module, leaf) = name.split_once('.').unwrap();
                let v = (&root / module).var(leaf, shape, nn::Init::Const(0.0));
                tch::no_grad(|| v.shallow_clone().copy_(&init.view(*shape)));
                v
            })
            .collect();
        let mut opt = AdamW::new(&vs, 0.05, 1e-8, (0.9, 0.999)).with_fused(fused);
        assert_eq!(opt.no_decay_count(), 2);
        for t in 0..steps {
            opt.zero_grad();
            let loss = vars
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let n = v.numel() as i64;
                    let g = Tensor::arange(n, (Kind::Float, Device::Cpu))
                        .view(v.size().as_slice())
                        .cos()
                        * (1.0 + (t * 3 + i as i64) as f64).ln();
                    (v * g).sum(Kind::Float) + v.square().sum(Kind::Float) * 0.01
                })
                .fold(Tensor::from(0.0f32), |a, b| a + b);
            loss.backward();
            opt.step(1e-2 * (1.0 + t as f64)).unwrap();
        }
        let mut out: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        out.extend(opt.state());
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn fused_adamw_equals_the_unfused_step_with_weight_decay_groups() {
        let (a, b) = (trained(false, 6), trained(true, 6));
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            let diff = (ta.to_kind(Kind::Double) - tb.to_kind(Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-6, "{na}: fused and unfused differ by {diff}");
        }
        // And the steps change the parameters (the comparison is not vacuous).
        let moved = trained(true, 0)
            .iter()
            .zip(&b)
            .any(|((_, t0), (_, t))| !t0.equal(t));
        assert!(moved);
    }

    #[test]
    fn adamw_state_round_trips() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2], nn::Init::Const(1.0));
        let mut a = AdamW::new(&vs, 0.0, 1e-8, (0.9, 0.999));
        (&w * 2.0).sum(Kind::Float).backward();
        a.step(0.1).unwrap();
        let state = a.state();
        let mut b = AdamW::new(&vs, 0.0, 1e-8, (0.9, 0.999));
        b.load_state(&state).unwrap();
        assert_eq!(b.steps(), 1);
        assert!(b.state()[0].1.equal(&state[0].1));
        assert!(b.load_state(&state[1..]).unwrap_err().contains("exp_avg.w"));
    }
}
