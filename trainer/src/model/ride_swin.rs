//! `RideSwin`: Swin stages before `branching_start` are shared, later stages
//! are copied per expert (`layers.{i}.branches.{j}`), one final LayerNorm is
//! shared and every expert has its own head (`heads.{j}`).
//!
//! With more than one expert the expert stages run at 3/4 width: the last
//! shared patch merging maps C to 3/2·C instead of 2·C, unless
//! `force_original_feature_dim`.

use super::layers::{
    linear, trunc_normal, BasicLayer, BlockOptions, Head, NormedLinear, PatchEmbed,
};
use super::router::{route_dynamic, Routed, Router};
use tch::nn::{self, Module};
use tch::Tensor;

/// Architecture hyper-parameters (the `MODEL.*` keys of the config).
#[derive(Clone, Debug, PartialEq)]
pub struct SwinSpec {
    /// Input side.
    pub img_size: i64,
    /// Patch side.
    pub patch_size: i64,
    /// Input channels.
    pub in_chans: i64,
    /// Classes.
    pub num_classes: i64,
    /// Width of the first stage.
    pub embed_dim: i64,
    /// Blocks per stage.
    pub depths: Vec<i64>,
    /// Heads per stage.
    pub num_heads: Vec<i64>,
    /// Window side.
    pub window_size: i64,
    /// MLP ratio.
    pub mlp_ratio: f64,
    /// Bias in qkv.
    pub qkv_bias: bool,
    /// Attention scale override.
    pub qk_scale: Option<f64>,
    /// Dropout.
    pub drop_rate: f64,
    /// Stochastic depth at the last block (linear ramp from 0).
    pub drop_path_rate: f64,
    /// Absolute position embedding.
    pub ape: bool,
    /// LayerNorm after patch embedding.
    pub patch_norm: bool,
    /// Cosine heads.
    pub use_normed_linear: bool,
    /// Experts.
    pub num_experts: i64,
    /// First stage copied per expert.
    pub branching_start: i64,
    /// Keep full width in expert stages even with several experts.
    pub force_original_feature_dim: bool,
    /// Share every stage; experts differ only in their heads.
    pub force_no_branches: bool,
    /// Activation checkpointing (recompute blocks in backward).
    pub use_checkpoint: bool,
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct ModelOutput {
    /// Per-expert logits, each `[B, classes]`.
    pub experts: Vec<Tensor>,
}

impl ModelOutput {
    /// The mean of the experts' logits (the reference's eval output).
    pub fn mean(&self) -> Tensor {
        Tensor::stack(&self.experts, 0).mean_dim([0i64].as_slice(), false, self.experts[0].kind())
    }

    /// `[B, E, classes]`.
    pub fn stacked(&self) -> Tensor {
        Tensor::stack(&self.experts, 1)
    }
}

#[derive(Debug)]
enum Stage {
    Shared(BasicLayer),
    Branched(Vec<BasicLayer>),
}

/// The RIDE Swin model.
#[derive(Debug)]
pub struct RideSwin {
    spec: SwinSpec,
    patch_embed: PatchEmbed,
    absolute_pos_embed: Option<Tensor>,
    stages: Vec<Stage>,
    norm: nn::LayerNorm,
    heads: Vec<Head>,
    num_features: i64,
    patches_resolution: i64,
}

impl SwinSpec {
    /// Width of stage `i` and of its downsample output, as built.
    pub fn stage_dims(&self) -> Vec<(i64, i64)> {
        let n = self.depths.len();
        let reduce = self.num_experts > 1 && !self.force_original_feature_dim;
        let base = |i: usize| self.embed_dim << i;
        let dim = |i: usize| {
            if reduce && i as i64 >= self.branching_start {
                base(i) * 3 / 4
            } else {
                base(i)
            }
        };
        (0..n)
            .map(|i| (dim(i), if i + 1 < n { dim(i + 1) } else { dim(i) }))
            .collect()
    }

    /// Whether stage `i` is copied per expert.
    pub fn is_branched(&self, i: usize) -> bool {
        !self.force_no_branches && self.num_experts > 1 && i as i64 >= self.branching_start
    }

    /// Checks that the architecture is buildable, naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.depths.is_empty() || self.depths.len() != self.num_heads.len() {
            return Err(format!(
                "MODEL.SWIN.DEPTHS ({:?}) and MODEL.SWIN.NUM_HEADS ({:?}) must be non-empty and of equal length",
                self.depths, self.num_heads
            ));
        }
        if self.img_size % self.patch_size != 0 {
            return Err(format!(
                "DATA.IMG_SIZE {} is not a multiple of MODEL.SWIN.PATCH_SIZE {}",
                self.img_size, self.patch_size
            ));
        }
        let res = self.img_size / self.patch_size;
        let down = 1i64 << (self.depths.len() - 1);
        if res % down != 0 {
            return Err(format!(
                "DATA.IMG_SIZE {} / PATCH_SIZE {} = {res} tokens per side cannot be halved {} times",
                self.img_size,
                self.patch_size,
                self.depths.len() - 1
            ));
        }
        for (i, &(dim, _)) in self.stage_dims().iter().enumerate() {
            let heads = self.num_heads[i];
            if heads <= 0 || dim % heads != 0 {
                return Err(format!("stage {i}: width {dim} is not divisible by MODEL.SWIN.NUM_HEADS[{i}] = {heads}"));
            }
            let r = res >> i;
            let w = self.window_size.min(r);
            if r % w != 0 {
                return Err(format!(
                    "stage {i}: resolution {r} is not a multiple of MODEL.SWIN.WINDOW_SIZE {}",
                    self.window_size
                ));
            }
        }
        if self.num_experts < 1 {
            return Err("MODEL.NUM_EXPERTS must be at least 1".into());
        }
        if self.num_experts > 1 && !self.force_original_feature_dim && self.branching_start < 1 {
            return Err(
                "MODEL.BRANCHING_START must be at least 1 when expert stages run at reduced width"
                    .into(),
            );
        }
        if self.branching_start < 0 || self.branching_start as usize > self.depths.len() {
            return Err(format!(
                "MODEL.BRANCHING_START {} must be within 0..={}",
                self.branching_start,
                self.depths.len()
            ));
        }
        Ok(())
    }
}

impl RideSwin {
    /// Build the model's parameters under `root`.
    pub fn new(root: &nn::Path, spec: &SwinSpec) -> Result<Self, String> {
        spec.validate()?;
        let res = spec.img_size / spec.patch_size;
        let patch_embed = PatchEmbed::new(
            root / "patch_embed",
            spec.in_chans,
            spec.embed_dim,
            spec.patch_size,
            spec.patch_norm,
        );
        let absolute_pos_embed = spec
            .ape
            .then(|| trunc_normal(root, "absolute_pos_embed", &[1, res * res, spec.embed_dim]));
        let total: i64 = spec.depths.iter().sum();
        let dpr: Vec<f64> = (0..total)
            .map(|k| {
                if total > 1 {
                    spec.drop_path_rate * k as f64 / (total - 1) as f64
                } else {
                    0.0
                }
            })
            .collect();
        let dims = spec.stage_dims();
        let n = spec.depths.len();
        let mut stages = Vec::with_capacity(n);
        let mut offset = 0usize;
        for (i, &(dim, out)) in dims.iter().enumerate() {
            let depth = spec.depths[i] as usize;
            let r = res >> i;
            let o = BlockOptions {
                heads: spec.num_heads[i],
                window: spec.window_size,
                mlp_ratio: spec.mlp_ratio,
                qkv_bias: spec.qkv_bias,
                qk_scale: spec.qk_scale,
                drop: spec.drop_rate,
                attn_drop: 0.0,
            };
            let drops = &dpr[offset..offset + depth];
            offset += depth;
            let down = (i + 1 < n).then_some(out);
            let path = root / "layers" / i;
            let build = |p: nn::Path| BasicLayer::new(p, dim, (r, r), depth, drops, &o, down);
            // The reference wraps every stage in `branches` (one branch when
            // shared); only FORCE_NO_BRANCHES keeps the plain Swin names.
            stages.push(if spec.is_branched(i) {
                Stage::Branched(
                    (0..spec.num_experts)
                        .map(|j| build(&path / "branches" / j))
                        .collect(),
                )
            } else if spec.force_no_branches {
                Stage::Shared(build(path))
            } else {
                Stage::Shared(build(&path / "branches" / 0))
            });
        }
        let num_features = dims[n - 1].0;
        let norm = super::layers::layer_norm(root / "norm", num_features);
        let heads = (0..spec.num_experts)
            .map(|j| {
                let p = if spec.force_no_branches {
                    root / "head"
                } else {
                    root / "heads" / j
                };
                if spec.use_normed_linear {
                    Head::Normed(NormedLinear::new(p, num_features, spec.num_classes))
                } else {
                    Head::Linear(linear(p, num_features, spec.num_classes, true))
                }
            })
            .collect();
        Ok(Self {
            spec: spec.clone(),
            patch_embed,
            absolute_pos_embed,
            stages,
            norm,
            heads,
            num_features,
            patches_resolution: res,
        })
    }

    /// The architecture.
    pub fn spec(&self) -> &SwinSpec {
        &self.spec
    }

    /// Width of the pooled features fed to the heads.
    pub fn num_features(&self) -> i64 {
        self.num_features
    }

    pub(crate) fn stem(&self, images: &Tensor, train: bool) -> Tensor {
        let mut x = self.patch_embed.forward(images);
        if let Some(ape) = &self.absolute_pos_embed {
            x += ape;
        }
        x.dropout(self.spec.drop_rate, train)
    }

    pub(crate) fn head(&self, expert: usize, x: &Tensor) -> Tensor {
        self.heads[expert].forward(&self.head_features(x))
    }

    fn head_features(&self, x: &Tensor) -> Tensor {
        // LayerNorm over tokens, then average pool → [B, C].
        self.norm
            .forward(x)
            .mean_dim([1i64].as_slice(), false, x.kind())
    }

    /// The one walk over the model's topology, shared by [`RideSwin::forward`]
    /// and the activation-checkpointing forward: a single path runs through
    /// the shared stages and fans out into one path per expert at the first
    /// branched stage. `layer` runs one stage on one path; `copy` duplicates a
    /// path's state at the fan-out. Returns one state per path: one when no
    /// stage branches, else one per expert, in expert order.
    pub(crate) fn walk<'s, S>(
        &'s self,
        start: S,
        copy: impl Fn(&S) -> S,
        mut layer: impl FnMut(&'s BasicLayer, S) -> S,
    ) -> Vec<S> {
        let mut paths = vec![start];
        for stage in &self.stages {
            paths = match stage {
                Stage::Shared(l) => paths.into_iter().map(|p| layer(l, p)).collect(),
                Stage::Branched(ls) => {
                    if paths.len() == 1 {
                        let first = &paths[0];
                        paths = ls.iter().map(|_| copy(first)).collect();
                    }
                    paths
                        .into_iter()
                        .zip(ls)
                        .map(|(p, l)| layer(l, p))
                        .collect()
                }
            };
        }
        paths
    }

    /// Forward pass returning every expert's logits.
    pub fn forward(&self, images: &Tensor, train: bool) -> ModelOutput {
        self.forward_with_features(images, train).0
    }

    /// Forward pass returning every expert's logits and the pooled features
    /// its head saw, `[B, num_features]` per expert (what the router reads).
    pub fn forward_with_features(
        &self,
        images: &Tensor,
        train: bool,
    ) -> (ModelOutput, Vec<Tensor>) {
        let x = self.stem(images, train);
        let paths = self.walk(x, Tensor::shallow_clone, |l, x| l.forward(&x, train));
        // Without branches the experts share their features: pool once.
        let feats: Vec<Tensor> = paths.iter().map(|y| self.head_features(y)).collect();
        let per_expert: Vec<Tensor> = (0..self.heads.len())
            .map(|e| feats[e.min(feats.len() - 1)].shallow_clone())
            .collect();
        let out = ModelOutput {
            experts: self
                .heads
                .iter()
                .zip(&per_expert)
                .map(|(h, f)| h.forward(f))
                .collect(),
        };
        (out, per_expert)
    }

    /// Evaluation-mode stem and shared stages: what every expert starts from.
    fn trunk(&self, images: &Tensor) -> Tensor {
        let mut x = self.stem(images, false);
        for stage in &self.stages {
            match stage {
                Stage::Shared(l) => x = l.forward(&x, false),
                Stage::Branched(_) => break,
            }
        }
        x
    }

    /// Evaluation-mode expert `e` on trunk outputs: its branched stages and
    /// head. Returns its logits and pooled features.
    fn expert_from_trunk(&self, e: usize, trunk: &Tensor) -> (Tensor, Tensor) {
        let mut x = trunk.shallow_clone();
        for stage in &self.stages {
            if let Stage::Branched(ls) = stage {
                x = ls[e].forward(&x, false);
            }
        }
        let f = self.head_features(&x);
        (self.heads[e].forward(&f), f)
    }

    /// Evaluation with dynamic routing: the shared stages run once, expert
    /// `i + 1` runs only on the images whose routing step `i` says
    /// `sigmoid(logit) > threshold`. Same result as
    /// [`super::router::route_all`] on a full forward, at the cost of the
    /// experts actually used.
    pub fn forward_routed(&self, router: &Router, images: &Tensor, threshold: f64) -> Routed {
        route_dynamic(
            router,
            &self.trunk(images),
            |e, x| self.expert_from_trunk(e, x),
            threshold,
        )
    }

    /// Buffers the reference keeps in its `state_dict`, by reference name:
    /// relative position indices and shift masks.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let layers: Vec<(String, &BasicLayer)> = match stage {
                Stage::Shared(l) if self.spec.force_no_branches => vec![(format!("layers.{i}"), l)],
                Stage::Shared(l) => vec![(format!("layers.{i}.branches.0"), l)],
                Stage::Branched(ls) => ls
                    .iter()
                    .enumerate()
                    .map(|(j, l)| (format!("layers.{i}.branches.{j}"), l))
                    .collect(),
            };
            for (prefix, l) in layers {
                for (k, b) in l.blocks().iter().enumerate() {
                    out.push((
                        format!("{prefix}.blocks.{k}.attn.relative_position_index"),
                        b.attn().relative_position_index().shallow_clone(),
                    ));
                    if let Some(m) = b.attn_mask() {
                        out.push((format!("{prefix}.blocks.{k}.attn_mask"), m.shallow_clone()));
                    }
                }
            }
        }
        out
    }

    /// Multiply-accumulates per image split into what runs once (stem and
    /// shared stages) and what each expert adds (its branched stages, the
    /// final norm and its head), counted as the reference's `flops()` counts
    /// each part. `shared + k · per_expert` is the cost of running `k`
    /// experts; it exceeds [`RideSwin::flops`] with all experts only by the
    /// extra experts' norm and head, which the reference counts once.
    pub fn flops_split(&self) -> (i64, i64) {
        let res = self.patches_resolution;
        let s = &self.spec;
        let mut shared = res * res * s.embed_dim * s.in_chans * s.patch_size * s.patch_size;
        if s.patch_norm {
            shared += res * res * s.embed_dim;
        }
        let mut per_expert = 0;
        for stage in &self.stages {
            match stage {
                Stage::Shared(l) => shared += l.flops(),
                Stage::Branched(ls) => per_expert += ls[0].flops(),
            }
        }
        per_expert += self.num_features * res * res / (1i64 << s.depths.len());
        per_expert += self.num_features * s.num_classes;
        (shared, per_expert)
    }

    /// Multiply-accumulates per image for the whole model (all experts),
    /// counted the way the reference's `flops()` does.
    pub fn flops(&self) -> i64 {
        let res = self.patches_resolution;
        let s = &self.spec;
        let mut f = res * res * s.embed_dim * s.in_chans * s.patch_size * s.patch_size;
        if s.patch_norm {
            f += res * res * s.embed_dim;
        }
        // Stages branch monotonically (shared ones all come first), so a
        // shared stage runs once and a branched one once per expert.
        for stage in &self.stages {
            f += match stage {
                Stage::Shared(l) => l.flops(),
                Stage::Branched(ls) => ls.iter().map(|l| l.flops()).sum(),
            };
        }
        // The reference divides by 2^num_layers (not squared) and counts one head.
        f += self.num_features * res * res / (1i64 << s.depths.len());
        f += self.num_features * s.num_classes;
        f
    }
}

/// Trainable parameter count of a var store: the variables that require
/// gradients (so frozen ones, like the experts of the router stage, and
/// batch-norm statistics do not count).
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.variables()
        .values()
        .filter(|t| t.requires_grad())
        .map(|t| t.numel() as i64)
        .sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tch::{Device, Kind};

    pub(crate) fn tiny_spec(experts: i64) -> SwinSpec {
        SwinSpec {
            img_size: 32,
            patch_size: 2,
            in_chans: 3,
            num_classes: 5,
            embed_dim: 16,
            depths: vec![2, 2, 2, 2],
            num_heads: vec![1, 2, 4, 8],
            window_size: 4,
            mlp_ratio: 4.0,
            qkv_bias: true,
            qk_scale: None,
            drop_rate: 0.0,
            drop_path_rate: 0.1,
            ape: false,
            patch_norm: true,
            use_normed_linear: true,
            num_experts: experts,
            branching_start: 2,
            force_original_feature_dim: false,
            force_no_branches: false,
            use_checkpoint: false,
        }
    }

    #[test]
    fn parameter_names_follow_the_reference() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = RideSwin::new(&vs.root(), &tiny_spec(2)).unwrap();
        let v = vs.variables();
        for key in [
            "patch_embed.proj.weight",
            "patch_embed.norm.bias",
            "layers.0.branches.0.blocks.1.attn.relative_position_bias_table",
            "layers.1.branches.0.downsample.reduction.weight",
            "layers.2.branches.1.blocks.0.attn.qkv.weight",
            "layers.2.branches.0.downsample.norm.weight",
            "layers.3.branches.1.blocks.1.mlp.fc2.bias",
            "norm.weight",
            "heads.1.weight",
        ] {
            assert!(v.contains_key(key), "missing {key}");
        }
        // 3/4 width: stage 1 (32 wide) merges into 48, not 64.
        assert_eq!(
            v["layers.1.branches.0.downsample.reduction.weight"].size(),
            vec![48, 128]
        );
        assert_eq!(v["heads.0.weight"].size(), vec![96, 5]);
        assert!(!v.contains_key("layers.3.branches.0.downsample.norm.weight"));
    }

    #[test]
    fn forward_shapes_and_eval_mean() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = RideSwin::new(&vs.root(), &tiny_spec(3)).unwrap();
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let out = m.forward(&x, false);
        assert_eq!(out.experts.len(), 3);
        assert_eq!(out.stacked().size(), vec![2, 3, 5]);
        let by_hand = (&out.experts[0] + &out.experts[1] + &out.experts[2]) / 3.0;
        assert!(out.mean().allclose(&by_hand, 1e-6, 1e-6, false));
    }

    #[test]
    fn dynamic_routing_equals_routing_a_full_forward() {
        use crate::model::router::{route_all, RouterSpec};
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = RideSwin::new(&vs.root(), &tiny_spec(3)).unwrap();
        let spec = RouterSpec {
            top_choices_num: 3,
            hidden_dim: 16,
            share_fc: true,
            pos_weight: 20.0,
            logit_scale: 30.0,
        };
        let r = Router::new(&vs.root(), m.num_features(), 3, &spec);
        let x = Tensor::randn([16, 3, 32, 32], (Kind::Float, Device::Cpu));
        let (out, feats) = tch::no_grad(|| m.forward_with_features(&x, false));
        let help = tch::no_grad(|| r.help_logits(&out.experts, &feats));
        // Thresholds at the first step's quantiles, so that some images stop
        // after one, two and three experts.
        let probs: Vec<f32> = Vec::try_from(help.sigmoid().select(1, 0)).unwrap();
        let mut sorted = probs.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut mixed = false;
        for q in [0.25, 0.5, 0.75] {
            let t = f64::from(sorted[(q * 16.0) as usize]);
            let want = route_all(&out.experts, &help, t);
            let got = tch::no_grad(|| m.forward_routed(&r, &x, t));
            assert_eq!(
                Vec::<i64>::try_from(&got.experts_used).unwrap(),
                Vec::<i64>::try_from(&want.experts_used).unwrap(),
                "threshold {t}"
            );
            assert!(
                got.outputs.allclose(&want.outputs, 1e-5, 1e-5, false),
                "threshold {t}"
            );
            let used: Vec<i64> = Vec::try_from(&got.experts_used).unwrap();
            mixed |= used.contains(&1) && used.iter().any(|&u| u > 1);
        }
        assert!(mixed, "no threshold split the batch");
    }

    #[test]
    fn flops_split_adds_up_to_the_reference_count() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = RideSwin::new(&vs.root(), &tiny_spec(3)).unwrap();
        let (shared, per_expert) = m.flops_split();
        let norm_and_head = m.num_features() * 16 * 16 / 16 + m.num_features() * 5;
        assert_eq!(shared + 3 * per_expert, m.flops() + 2 * norm_and_head);
        assert!(shared > 0 && per_expert > norm_and_head);
    }

    #[test]
    fn invalid_spec_names_the_key() {
        let mut s = tiny_spec(1);
        s.num_heads = vec![1, 2, 3, 8];
        let e = s.validate().unwrap_err();
        assert!(e.contains("NUM_HEADS[2]"), "{e}");
    }
}
