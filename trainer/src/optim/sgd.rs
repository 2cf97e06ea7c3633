//! SGD with momentum, Nesterov and coupled weight decay, as `torch.optim.SGD`
//! (dampening 0): the authors' CIFAR recipe. Every parameter is decayed, as
//! their `SGD(model.parameters(), weight_decay=5e-4)` does.

use tch::nn;
use tch::Tensor;

struct Slot {
    name: String,
    param: Tensor,
    momentum_buffer: Tensor,
}

/// SGD over the trainable variables of a var store, in name order.
pub struct Sgd {
    slots: Vec<Slot>,
    step: u64,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
}

impl Sgd {
    /// Optimise every trainable variable of `vs`.
    pub fn new(vs: &nn::VarStore, momentum: f64, weight_decay: f64, nesterov: bool) -> Self {
        Self {
            slots: super::trainable_by_name(vs)
                .into_iter()
                .map(|(name, param)| Slot {
                    momentum_buffer: param.zeros_like(),
                    name,
                    param,
                })
                .collect(),
            step: 0,
            momentum,
            weight_decay,
            nesterov,
        }
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
        super::zero_grads(self.slots.iter().map(|s| &s.param));
    }

    /// One update at learning rate `lr`: `g += wd·p`; `b = μ·b + g` (the
    /// first step's buffer is `g`, as a zero buffer gives); `p -= lr·(g + μ·b)`
    /// with Nesterov, else `p -= lr·b`.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        tch::no_grad(|| {
            for s in &mut self.slots {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                let mut d = if self.weight_decay != 0.0 {
                    &g + &s.param * self.weight_decay
                } else {
                    g.copy()
                };
                let _ = s.momentum_buffer.g_mul_scalar_(self.momentum).g_add_(&d);
                if self.nesterov {
                    let _ = d.g_add_(&(&s.momentum_buffer * self.momentum));
                } else {
                    d = s.momentum_buffer.copy();
                }
                let _ = s.param.shallow_clone().g_sub_(&(d * lr));
            }
        });
    }

    /// Named state tensors (`momentum_buffer.NAME`) plus the step.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .slots
            .iter()
            .map(|s| {
                (
                    format!("momentum_buffer.{}", s.name),
                    s.momentum_buffer.shallow_clone(),
                )
            })
            .collect();
        out.push(("step".into(), Tensor::from(self.step as i64)));
        out
    }

    /// Restore state saved by [`Sgd::state`]; every buffer must be present.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), String> {
        for s in &mut self.slots {
            let key = format!("momentum_buffer.{}", s.name);
            super::restore_buffer(state, &key, &mut s.momentum_buffer)?;
        }
        self.step = super::restore_step(state)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn nesterov_momentum_and_decay_by_hand() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var("w", &[1], nn::Init::Const(1.0));
        let mut opt = Sgd::new(&vs, 0.9, 0.1, true);
        let (lr, mut w, mut b) = (0.5, 1.0f64, 0.0f64);
        for g_const in [2.0, -1.0, 0.5] {
            opt.zero_grad();
            (&p * g_const).sum(Kind::Float).backward();
            opt.step(lr);
            // By hand, torch.optim.SGD(nesterov=True, dampening=0).
            let d = g_const + 0.1 * w;
            b = 0.9 * b + d;
            w -= lr * (d + 0.9 * b);
            assert!(
                (p.double_value(&[0]) - w).abs() < 1e-6,
                "{} vs {w}",
                p.double_value(&[0])
            );
        }
        // State round trip.
        let state = opt.state();
        let mut again = Sgd::new(&vs, 0.9, 0.1, true);
        again.load_state(&state).unwrap();
        assert_eq!(again.steps(), 3);
        assert!(again.state()[0].1.allclose(&state[0].1, 0.0, 0.0, false));
    }
}
