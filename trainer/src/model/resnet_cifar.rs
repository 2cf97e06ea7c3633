//! The authors' CIFAR backbone (`MODEL.TYPE: resnet32`): RIDE's ResNet-32
//! from `model/ldam_drw_resnets/ride_resnet_cifar.py`, itself LDAM-DRW's
//! ResNet-s with option-A shortcuts. `conv1`, `bn1` and `layer1` are shared;
//! every expert has its own `layer2s.{e}`, `layer3s.{e}` and `linears.{e}`.
//! With `reduce_dimension` the expert stages are 24 and 48 wide instead of
//! 32 and 64. Names are the authors' without their `backbone.` prefix.
//!
//! The authors multiply the cosine heads' outputs by `s = 30` inside the
//! model; here, as for Swin, the model returns the cosines and the losses
//! (and the router) apply `s`, so the authors' logits are 30 × ours.

use super::layers::normalize;
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

/// Architecture hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ResNetSpec {
    /// Classes.
    pub num_classes: i64,
    /// Experts.
    pub num_experts: i64,
    /// Blocks per stage (`[5, 5, 5]` for ResNet-32).
    pub num_blocks: [i64; 3],
    /// Width of the experts' second stage (24 with `reduce_dimension`, else 32).
    pub layer2_dim: i64,
    /// Width of the experts' third stage (48 with `reduce_dimension`, else 64).
    pub layer3_dim: i64,
    /// Cosine heads (`use_norm`).
    pub use_norm: bool,
}

impl ResNetSpec {
    /// Checks that the architecture is buildable, naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_experts < 1 {
            return Err("MODEL.NUM_EXPERTS must be at least 1".into());
        }
        let (l2, l3) = (self.layer2_dim, self.layer3_dim);
        // Option-A shortcuts zero-pad the channels equally on both sides.
        if l2 < 16 || l3 < l2 || (l2 - 16) % 2 != 0 || (l3 - l2) % 2 != 0 {
            return Err(format!(
                "expert stage widths (MODEL.RESNET) 16 → {l2} → {l3} must not shrink and must grow by even steps (option-A shortcuts pad both sides)"
            ));
        }
        Ok(())
    }
}

/// A basic block: two 3×3 convolutions with batch norm; the shortcut is the
/// identity, or (option A) the input subsampled by 2 and zero-padded on both
/// sides of the channels.
#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    /// Channels added on each side by the option-A shortcut.
    pad: Option<i64>,
    in_planes: i64,
    planes: i64,
    stride: i64,
}

/// Kaiming-normal (fan-in, ReLU gain) as the authors' `_weights_init`.
fn conv3x3(p: nn::Path, inp: i64, out: i64, stride: i64) -> nn::Conv2D {
    let std = (2.0 / (inp * 9) as f64).sqrt();
    nn::conv2d(
        p,
        inp,
        out,
        3,
        nn::ConvConfig {
            stride,
            padding: 1,
            bias: false,
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            ..Default::default()
        },
    )
}

fn batch_norm(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, Default::default())
}

impl BasicBlock {
    fn new(p: nn::Path, in_planes: i64, planes: i64, stride: i64) -> Self {
        let pad = (stride != 1 || in_planes != planes).then_some((planes - in_planes) / 2);
        Self {
            conv1: conv3x3(&p / "conv1", in_planes, planes, stride),
            bn1: batch_norm(&p / "bn1", planes),
            conv2: conv3x3(&p / "conv2", planes, planes, 1),
            bn2: batch_norm(&p / "bn2", planes),
            pad,
            in_planes,
            planes,
            stride,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let out = self.bn1.forward_t(&self.conv1.forward(x), train).relu();
        let out = self.bn2.forward_t(&self.conv2.forward(&out), train);
        let shortcut = match self.pad {
            None => x.shallow_clone(),
            Some(p) => {
                let (h, w) = (x.size()[2], x.size()[3]);
                x.slice(2, 0, h, 2)
                    .slice(3, 0, w, 2)
                    .constant_pad_nd([0, 0, 0, 0, p, p])
            }
        };
        (out + shortcut).relu()
    }

    /// Multiply-accumulates of the convolutions for an `h`×`w` input.
    fn flops(&self, h: i64, w: i64) -> i64 {
        let (ho, wo) = (h / self.stride, w / self.stride);
        ho * wo * 9 * (self.in_planes * self.planes + self.planes * self.planes)
    }
}

#[derive(Debug)]
struct Stage {
    blocks: Vec<BasicBlock>,
}

impl Stage {
    fn new(p: nn::Path, in_planes: i64, planes: i64, blocks: i64, stride: i64) -> Self {
        let blocks = (0..blocks)
            .map(|i| {
                let (inp, s) = if i == 0 {
                    (in_planes, stride)
                } else {
                    (planes, 1)
                };
                BasicBlock::new(&p / i, inp, planes, s)
            })
            .collect();
        Self { blocks }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.blocks
            .iter()
            .fold(x.shallow_clone(), |x, b| b.forward(&x, train))
    }

    fn flops(&self, h: i64, w: i64) -> i64 {
        let mut f = 0;
        let (mut h, mut w) = (h, w);
        for b in &self.blocks {
            f += b.flops(h, w);
            (h, w) = (h / b.stride, w / b.stride);
        }
        f
    }
}

#[derive(Debug)]
enum Linear {
    /// The authors' `NormedLinear`: weight `[in, out]`, cosine outputs.
    Normed(Tensor),
    Plain(nn::Linear),
}

/// RIDE's ResNet-32 for 32×32 inputs (any side divisible by 4 works).
#[derive(Debug)]
pub struct RideResNet {
    spec: ResNetSpec,
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layer1: Stage,
    layer2s: Vec<Stage>,
    layer3s: Vec<Stage>,
    linears: Vec<Linear>,
}

impl RideResNet {
    /// Build the parameters under `root`, initialised as the authors'.
    pub fn new(root: &nn::Path, spec: &ResNetSpec) -> Result<Self, String> {
        spec.validate()?;
        let [b1, b2, b3] = spec.num_blocks;
        let experts = 0..spec.num_experts;
        let linears = experts
            .clone()
            .map(|e| {
                let p = root / "linears" / e;
                if spec.use_norm {
                    // uniform(-1, 1), then every column scaled to unit norm
                    // (renorm_(2, 1, 1e-5).mul_(1e5)).
                    let w = p.var(
                        "weight",
                        &[spec.layer3_dim, spec.num_classes],
                        nn::Init::Uniform { lo: -1.0, up: 1.0 },
                    );
                    tch::no_grad(|| {
                        let unit = normalize(&w, 0);
                        w.shallow_clone().copy_(&unit);
                    });
                    Linear::Normed(w)
                } else {
                    let std = (2.0 / spec.layer3_dim as f64).sqrt();
                    let bound = 1.0 / (spec.layer3_dim as f64).sqrt();
                    Linear::Plain(nn::Linear {
                        ws: p.var(
                            "weight",
                            &[spec.num_classes, spec.layer3_dim],
                            nn::Init::Randn {
                                mean: 0.0,
                                stdev: std,
                            },
                        ),
                        bs: Some(p.var(
                            "bias",
                            &[spec.num_classes],
                            nn::Init::Uniform {
                                lo: -bound,
                                up: bound,
                            },
                        )),
                    })
                }
            })
            .collect();
        Ok(Self {
            spec: spec.clone(),
            conv1: conv3x3(root / "conv1", 3, 16, 1),
            bn1: batch_norm(root / "bn1", 16),
            layer1: Stage::new(root / "layer1", 16, 16, b1, 1),
            layer2s: experts
                .clone()
                .map(|e| Stage::new(root / "layer2s" / e, 16, spec.layer2_dim, b2, 2))
                .collect(),
            layer3s: experts
                .map(|e| {
                    Stage::new(
                        root / "layer3s" / e,
                        spec.layer2_dim,
                        spec.layer3_dim,
                        b3,
                        2,
                    )
                })
                .collect(),
            linears,
        })
    }

    /// The architecture.
    pub fn spec(&self) -> &ResNetSpec {
        &self.spec
    }

    /// Width of the pooled features fed to the heads.
    pub fn num_features(&self) -> i64 {
        self.spec.layer3_dim
    }

    /// `conv1`, `bn1`, `layer1`: what every expert starts from.
    pub(crate) fn trunk(&self, images: &Tensor, train: bool) -> Tensor {
        let x = self
            .bn1
            .forward_t(&self.conv1.forward(images), train)
            .relu();
        self.layer1.forward(&x, train)
    }

    /// Expert `e` on trunk outputs: its logits (cosines with `use_norm`)
    /// and its globally pooled features.
    pub(crate) fn expert_from_trunk(
        &self,
        e: usize,
        trunk: &Tensor,
        train: bool,
    ) -> (Tensor, Tensor) {
        let x = self.layer3s[e].forward(&self.layer2s[e].forward(trunk, train), train);
        let f = x.mean_dim([2i64, 3].as_slice(), false, x.kind());
        let logits = match &self.linears[e] {
            Linear::Normed(w) => normalize(&f, 1).matmul(&normalize(w, 0)),
            Linear::Plain(l) => l.forward(&f),
        };
        (logits, f)
    }

    /// Multiply-accumulates per image of a `side`×`side` input, split into
    /// the shared part and one expert (convolutions and heads).
    pub fn flops_split(&self, side: i64) -> (i64, i64) {
        let shared = side * side * 9 * 3 * 16 + self.layer1.flops(side, side);
        let per_expert = self.layer2s[0].flops(side, side)
            + self.layer3s[0].flops(side / 2, side / 2)
            + self.spec.layer3_dim * self.spec.num_classes;
        (shared, per_expert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    pub(crate) fn spec(experts: i64) -> ResNetSpec {
        ResNetSpec {
            num_classes: 100,
            num_experts: experts,
            num_blocks: [5, 5, 5],
            layer2_dim: 24,
            layer3_dim: 48,
            use_norm: true,
        }
    }

    #[test]
    fn names_shapes_and_shortcuts_follow_the_authors() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = RideResNet::new(&vs.root(), &spec(3)).unwrap();
        let v = vs.variables();
        for (key, shape) in [
            ("conv1.weight", vec![16, 3, 3, 3]),
            ("bn1.running_var", vec![16]),
            ("layer1.4.conv2.weight", vec![16, 16, 3, 3]),
            ("layer2s.2.0.conv1.weight", vec![24, 16, 3, 3]),
            ("layer3s.1.4.bn2.bias", vec![48]),
            ("linears.2.weight", vec![48, 100]),
        ] {
            assert_eq!(v.get(key).map(|t| t.size()), Some(shape), "{key}");
        }
        // Cosine-head columns start at unit norm.
        let norms = v["linears.0.weight"].norm_scalaropt_dim(2, [0i64].as_slice(), false);
        assert!(norms.allclose(&norms.ones_like(), 1e-5, 1e-5, false));
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let t = m.trunk(&x, false);
        assert_eq!(t.size(), vec![2, 16, 32, 32]);
        let (logits, f) = m.expert_from_trunk(1, &t, false);
        assert_eq!((logits.size(), f.size()), (vec![2, 100], vec![2, 48]));
        assert!(
            logits.abs().max().double_value(&[]) <= 1.0 + 1e-5,
            "cosines"
        );
    }
}
