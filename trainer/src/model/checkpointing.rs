//! Activation checkpointing (`TRAIN.USE_CHECKPOINT`) without custom autograd
//! functions: the forward pass runs every block under `no_grad` and keeps only
//! block inputs; [`CheckpointTape::backward`] walks the blocks in reverse,
//! recomputes each from its saved input with gradients on, and pushes the
//! output gradient through with `(y · ∂L/∂y).sum().backward()`. Random masks
//! (dropout, stochastic depth) are replayed by reseeding per block.

use super::layers::{PatchMerging, SwinBlock};
use super::ride_swin::{ModelOutput, RideSwin};
use crate::amp::{AmpDtype, AmpError};
use tch::{Kind, Tensor};

enum Op<'a> {
    Stem,
    Block(&'a SwinBlock),
    Down(&'a PatchMerging),
    Head(usize),
}

struct Node<'a> {
    op: Op<'a>,
    input: Option<usize>,
    out: Tensor,
    leaf: Option<Tensor>,
}

/// What [`RideSwin::forward_checkpointed`] keeps for the backward pass.
pub struct CheckpointTape<'a> {
    model: &'a RideSwin,
    images: Tensor,
    nodes: Vec<Node<'a>>,
    seed: i64,
    autocast: Option<AmpDtype>,
}

fn run(model: &RideSwin, op: &Op, x: &Tensor) -> Tensor {
    match op {
        Op::Stem => model.stem(x, true),
        Op::Block(b) => b.forward(x, true),
        Op::Down(d) => d.forward(x),
        Op::Head(e) => model.head(*e, x),
    }
}

impl RideSwin {
    /// Training-mode forward that stores only block inputs; call
    /// [`CheckpointTape::backward`] with the loss instead of `loss.backward()`.
    pub fn forward_checkpointed(&self, images: &Tensor) -> (ModelOutput, CheckpointTape<'_>) {
        // One draw from the global generator keeps runs reproducible per seed.
        let seed = Tensor::randint(1 << 40, [1], (Kind::Int64, tch::Device::Cpu)).int64_value(&[0]);
        let mut tape = CheckpointTape {
            model: self,
            images: images.shallow_clone(),
            nodes: Vec::new(),
            seed,
            // Recomputed blocks must see the autocast state of their forward.
            autocast: crate::amp::active_autocast(images.device()),
        };
        let stem = tape.push(Op::Stem, None);
        let paths = self.walk(
            stem,
            |p| *p,
            |layer, mut path| {
                for b in layer.blocks() {
                    path = tape.push(Op::Block(b), Some(path));
                }
                if let Some(d) = layer.downsample() {
                    path = tape.push(Op::Down(d), Some(path));
                }
                path
            },
        );
        let experts = self.spec().num_experts as usize;
        let heads = (0..experts)
            .map(|e| tape.push(Op::Head(e), Some(paths[e.min(paths.len() - 1)])))
            .collect::<Vec<_>>();
        let out = ModelOutput {
            experts: heads
                .iter()
                .map(|&h| tape.nodes[h].out.shallow_clone())
                .collect(),
        };
        (out, tape)
    }

    /// The training-mode forward pass. With `use_checkpoint` in the spec
    /// (`TRAIN.USE_CHECKPOINT`) it keeps only block inputs and recomputes
    /// blocks in [`TrainForward::backward`]; the caller cannot tell the two apart.
    pub fn forward_train(&self, images: &Tensor) -> TrainForward<'_> {
        if self.spec().use_checkpoint {
            let (output, tape) = self.forward_checkpointed(images);
            TrainForward {
                output,
                tape: Some(tape),
            }
        } else {
            TrainForward {
                output: self.forward(images, true),
                tape: None,
            }
        }
    }
}

/// A training-mode forward pass: the experts' logits, and how to push a loss
/// computed from them back through the model.
pub struct TrainForward<'a> {
    /// Per-expert logits.
    pub output: ModelOutput,
    tape: Option<CheckpointTape<'a>>,
}

impl TrainForward<'_> {
    /// A forward pass whose loss backpropagates the plain way.
    pub fn without_tape(output: ModelOutput) -> Self {
        Self { output, tape: None }
    }

    /// Backpropagate `loss` into the parameters' gradients.
    pub fn backward(self, loss: &Tensor) -> Result<(), AmpError> {
        match self.tape {
            Some(tape) => tape.backward(loss),
            None => {
                loss.backward();
                Ok(())
            }
        }
    }
}

impl<'a> CheckpointTape<'a> {
    fn input_of(&self, input: Option<usize>) -> Tensor {
        input.map_or_else(
            || self.images.shallow_clone(),
            |i| self.nodes[i].out.shallow_clone(),
        )
    }

    fn push(&mut self, op: Op<'a>, input: Option<usize>) -> usize {
        let idx = self.nodes.len();
        let x = self.input_of(input);
        tch::manual_seed(self.seed + idx as i64);
        let (out, leaf) = if let Op::Head(_) = op {
            // Heads stay in the autograd graph so `loss.backward()` reaches their inputs.
            let leaf = x.detach().set_requires_grad(true);
            (run(self.model, &op, &leaf), Some(leaf))
        } else {
            (tch::no_grad(|| run(self.model, &op, &x)), None)
        };
        self.nodes.push(Node {
            op,
            input,
            out,
            leaf,
        });
        idx
    }

    /// Backpropagate `loss` through the whole model, recomputing blocks
    /// under the autocast state the forward pass ran with.
    pub fn backward(self, loss: &Tensor) -> Result<(), AmpError> {
        match self.autocast {
            Some(dtype) => {
                let device = self.images.device();
                crate::amp::autocast(device, dtype, || self.recompute_backward(loss))
            }
            None => {
                self.recompute_backward(loss);
                Ok(())
            }
        }
    }

    fn recompute_backward(self, loss: &Tensor) {
        loss.backward();
        let mut grads: Vec<Option<Tensor>> = (0..self.nodes.len()).map(|_| None).collect();
        let add = |grads: &mut Vec<Option<Tensor>>, i: usize, g: Tensor| {
            grads[i] = Some(match grads[i].take() {
                Some(prev) => prev + g,
                None => g,
            });
        };
        for node in &self.nodes {
            if let (Some(leaf), Some(input)) = (&node.leaf, node.input) {
                let g = leaf.grad();
                if g.defined() {
                    add(&mut grads, input, g);
                }
            }
        }
        for idx in (0..self.nodes.len()).rev() {
            let node = &self.nodes[idx];
            if node.leaf.is_some() {
                continue;
            }
            let Some(g) = grads[idx].take() else { continue };
            let x = self.input_of(node.input).detach();
            let x = if node.input.is_some() {
                x.set_requires_grad(true)
            } else {
                x
            };
            tch::manual_seed(self.seed + idx as i64);
            let y = run(self.model, &node.op, &x);
            (y * g).sum(Kind::Float).backward();
            if let Some(input) = node.input {
                let gx = x.grad();
                if gx.defined() {
                    add(&mut grads, input, gx);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::ride_swin::tests::tiny_spec;
    use crate::model::RideSwin;
    use tch::{nn, Device, Kind, Tensor};

    fn grads(m: &RideSwin, vs: &nn::VarStore, checkpointed: bool) -> Vec<(String, Tensor)> {
        // Inputs built without the global generator: other tests run in parallel threads.
        let x = Tensor::arange(2 * 3 * 32 * 32, (Kind::Float, Device::Cpu))
            .view([2, 3, 32, 32])
            .sin();
        let w = Tensor::arange(10, (Kind::Float, Device::Cpu))
            .view([2, 5])
            .cos();
        let loss_of = |out: &crate::model::ModelOutput| {
            (&out.experts[0] * &w).sum(Kind::Float) + out.experts[1].square().sum(Kind::Float)
        };
        for (_, t) in vs.variables() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let forward = if checkpointed {
            let (output, tape) = m.forward_checkpointed(&x);
            crate::model::TrainForward {
                output,
                tape: Some(tape),
            }
        } else {
            crate::model::TrainForward {
                output: m.forward(&x, true),
                tape: None,
            }
        };
        let loss = loss_of(&forward.output);
        forward.backward(&loss).unwrap();
        let mut v: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.grad().copy()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn checkpointed_gradients_equal_plain_gradients() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut spec = tiny_spec(2);
        spec.drop_path_rate = 0.0;
        let m = RideSwin::new(&vs.root(), &spec).unwrap();
        let plain = grads(&m, &vs, false);
        let ckpt = grads(&m, &vs, true);
        assert_eq!(plain.len(), ckpt.len());
        for ((n, a), (_, b)) in plain.iter().zip(&ckpt) {
            assert!(b.defined(), "{n} got no gradient");
            // Float reassociation only: within 1e-4 of the tensor's scale.
            let diff = (a - b).abs().max().double_value(&[]);
            let scale = a.abs().max().double_value(&[]).max(1e-3);
            assert!(
                diff <= 1e-4 * scale,
                "{n}: max diff {diff} at scale {scale}"
            );
        }
    }

    #[test]
    fn recomputation_under_the_recorded_autocast_reproduces_the_forward_bitwise() {
        use crate::amp::{autocast, AmpDtype};
        let vs = nn::VarStore::new(Device::Cpu);
        let mut spec = tiny_spec(2);
        spec.drop_path_rate = 0.0;
        let m = RideSwin::new(&vs.root(), &spec).unwrap();
        let x = Tensor::arange(2 * 3 * 32 * 32, (Kind::Float, Device::Cpu))
            .view([2, 3, 32, 32])
            .sin();
        let (_, tape) = autocast(Device::Cpu, AmpDtype::BFloat16, || {
            m.forward_checkpointed(&x)
        })
        .unwrap();
        assert_eq!(tape.autocast, Some(AmpDtype::BFloat16));
        let (_, plain_tape) = m.forward_checkpointed(&x);
        assert_eq!(plain_tape.autocast, None);
        // What the backward pass recomputes for node `i`, from its saved input.
        let recompute = |i: usize| {
            let node = &tape.nodes[i];
            let input = tape.input_of(node.input);
            tch::manual_seed(tape.seed + i as i64);
            tch::no_grad(|| super::run(&m, &node.op, &input))
        };
        let blocks: Vec<usize> = (0..tape.nodes.len())
            .filter(|&i| tape.nodes[i].leaf.is_none())
            .collect();
        assert!(blocks.len() > 10);
        // Under the recorded state every recomputed activation is the forward's, bit for bit.
        autocast(Device::Cpu, AmpDtype::BFloat16, || {
            for &i in &blocks {
                assert!(recompute(i).equal(&tape.nodes[i].out), "node {i} differs");
            }
        })
        .unwrap();
        // Without it they are not: the state matters, so the backward restores it.
        assert!(blocks
            .iter()
            .any(|&i| !recompute(i).equal(&tape.nodes[i].out)));
    }
}
