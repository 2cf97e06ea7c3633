//! Swin building blocks with the reference's parameter names: patch
//! embedding, window attention with relative position bias, the MLP, the
//! Swin block, patch merging and a stage (`BasicLayer`).

use super::windows::{
    relative_position_index_tensor, shift_mask_tensor, window_partition, window_reverse,
};
use tch::nn::{self, Module};
use tch::Tensor;

/// `trunc_normal_(std=0.02)` weight init as in the reference (bounds ±2 are
/// absolute, so with this std the truncation never binds).
pub fn trunc_normal(path: &nn::Path, name: &str, dims: &[i64]) -> Tensor {
    let t = path.var(
        name,
        dims,
        nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    );
    tch::no_grad(|| {
        let _ = t.shallow_clone().clamp_(-2.0, 2.0);
    });
    t
}

/// A Linear layer initialised like the reference (`trunc_normal_` weight, zero bias).
pub fn linear(path: nn::Path, inp: i64, out: i64, bias: bool) -> nn::Linear {
    let ws = trunc_normal(&path, "weight", &[out, inp]);
    let bs = bias.then(|| path.zeros("bias", &[out]));
    nn::Linear { ws, bs }
}

/// LayerNorm with unit weight and zero bias.
pub fn layer_norm(path: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(path, vec![dim], Default::default())
}

/// Per-sample stochastic depth on a residual branch.
pub fn drop_path(x: &Tensor, prob: f64, train: bool) -> Tensor {
    if !train || prob <= 0.0 {
        return x.shallow_clone();
    }
    let keep = 1.0 - prob;
    let mut shape = vec![1i64; x.dim()];
    shape[0] = x.size()[0];
    // Scale the small mask, not the activation: one full-size op instead of two.
    let mask =
        Tensor::empty(shape.as_slice(), (x.kind(), x.device())).bernoulli_float_(keep) / keep;
    x * mask
}

/// Image to patch tokens: a strided conv and an optional LayerNorm.
#[derive(Debug)]
pub struct PatchEmbed {
    proj: nn::Conv2D,
    norm: Option<nn::LayerNorm>,
}

impl PatchEmbed {
    /// `patch_embed.proj` (conv) and `patch_embed.norm`.
    pub fn new(
        path: nn::Path,
        in_chans: i64,
        embed_dim: i64,
        patch: i64,
        patch_norm: bool,
    ) -> Self {
        let cfg = nn::ConvConfig {
            stride: patch,
            ..Default::default()
        };
        let proj = nn::conv2d(&path / "proj", in_chans, embed_dim, patch, cfg);
        let norm = patch_norm.then(|| layer_norm(&path / "norm", embed_dim));
        Self { proj, norm }
    }

    /// `[B,3,H,W]` → `[B, H/p*W/p, C]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = self.proj.forward(x).flatten(2, 3).transpose(1, 2);
        match &self.norm {
            Some(n) => n.forward(&x),
            None => x,
        }
    }
}

/// Multi-head self-attention inside windows with a learned relative position bias.
#[derive(Debug)]
pub struct WindowAttention {
    qkv: nn::Linear,
    proj: nn::Linear,
    bias_table: Tensor,
    index: Tensor,
    heads: i64,
    scale: f64,
    window: i64,
    attn_drop: f64,
    proj_drop: f64,
}

impl WindowAttention {
    /// Parameters `qkv`, `proj`, `relative_position_bias_table` under `path`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: nn::Path,
        dim: i64,
        window: i64,
        heads: i64,
        qkv_bias: bool,
        qk_scale: Option<f64>,
        attn_drop: f64,
        proj_drop: f64,
    ) -> Self {
        let table = (2 * window - 1) * (2 * window - 1);
        let bias_table = trunc_normal(&path, "relative_position_bias_table", &[table, heads]);
        let qkv = linear(&path / "qkv", dim, 3 * dim, qkv_bias);
        let proj = linear(&path / "proj", dim, dim, true);
        let head_dim = dim / heads;
        let scale = qk_scale.unwrap_or((head_dim as f64).powf(-0.5));
        let index = relative_position_index_tensor(window, path.device());
        Self {
            qkv,
            proj,
            bias_table,
            index,
            heads,
            scale,
            window,
            attn_drop,
            proj_drop,
        }
    }

    /// The relative position index buffer (`[N,N]`, int64).
    pub fn relative_position_index(&self) -> &Tensor {
        &self.index
    }

    /// `x`: `[B*nW, N, C]`; `mask`: `[nW, N, N]` additive, or none.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let s = x.size();
        let (b_, n, c) = (s[0], s[1], s[2]);
        let qkv = self
            .qkv
            .forward(x)
            .view([b_, n, 3, self.heads, c / self.heads])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let nn_ = self.window * self.window;
        let bias = self
            .bias_table
            .index_select(0, &self.index.view([-1]))
            .view([nn_, nn_, self.heads])
            .permute([2, 0, 1])
            .to_kind(q.kind());
        let attn_mask = match mask {
            None => bias.unsqueeze(0),
            Some(m) => {
                let nw = m.size()[0];
                (m.to_kind(q.kind()).view([1, nw, 1, n, n]) + bias.view([1, 1, self.heads, n, n]))
                    .expand([b_ / nw, nw, self.heads, n, n], false)
                    .reshape([b_, self.heads, n, n])
            }
        };
        let drop = if train { self.attn_drop } else { 0.0 };
        let out = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(attn_mask),
            drop,
            false,
            Some(self.scale),
            false,
        );
        let out = out.transpose(1, 2).reshape([b_, n, c]);
        self.proj.forward(&out).dropout(self.proj_drop, train)
    }

    /// Multiply-accumulates for one window of `n` tokens (Swin's count).
    pub fn flops(dim: i64, heads: i64, n: i64) -> i64 {
        n * dim * 3 * dim
            + heads * n * (dim / heads) * n
            + heads * n * n * (dim / heads)
            + n * dim * dim
    }
}

/// The transformer MLP: fc1 → GELU → fc2.
#[derive(Debug)]
pub struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    drop: f64,
}

impl Mlp {
    /// `mlp.fc1`, `mlp.fc2`.
    pub fn new(path: nn::Path, dim: i64, hidden: i64, drop: f64) -> Self {
        Self {
            fc1: linear(&path / "fc1", dim, hidden, true),
            fc2: linear(&path / "fc2", hidden, dim, true),
            drop,
        }
    }

    /// Apply to `[..., dim]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.fc1.forward(x).gelu("none").dropout(self.drop, train);
        self.fc2.forward(&h).dropout(self.drop, train)
    }
}

/// One Swin block: (shifted) window attention and an MLP, each residual.
#[derive(Debug)]
pub struct SwinBlock {
    norm1: nn::LayerNorm,
    attn: WindowAttention,
    norm2: nn::LayerNorm,
    mlp: Mlp,
    resolution: (i64, i64),
    window: i64,
    shift: i64,
    mask: Option<Tensor>,
    drop_path: f64,
}

/// Hyper-parameters shared by all blocks of a stage.
#[derive(Clone, Debug)]
pub struct BlockOptions {
    /// Heads of the stage.
    pub heads: i64,
    /// Window side (shrunk to the resolution when the map is smaller).
    pub window: i64,
    /// MLP hidden width as a multiple of the dim.
    pub mlp_ratio: f64,
    /// Bias in the qkv projection.
    pub qkv_bias: bool,
    /// Overrides `head_dim^-0.5`.
    pub qk_scale: Option<f64>,
    /// Dropout after projections.
    pub drop: f64,
    /// Dropout on attention weights.
    pub attn_drop: f64,
}

impl SwinBlock {
    /// A block of width `dim` on a `resolution` map; odd blocks shift by half a window.
    pub fn new(
        path: nn::Path,
        dim: i64,
        resolution: (i64, i64),
        shifted: bool,
        drop_path: f64,
        o: &BlockOptions,
    ) -> Self {
        let (mut window, mut shift) = (o.window, if shifted { o.window / 2 } else { 0 });
        if resolution.0.min(resolution.1) <= window {
            window = resolution.0.min(resolution.1);
            shift = 0;
        }
        let attn = WindowAttention::new(
            &path / "attn",
            dim,
            window,
            o.heads,
            o.qkv_bias,
            o.qk_scale,
            o.attn_drop,
            o.drop,
        );
        let hidden = (dim as f64 * o.mlp_ratio) as i64;
        let mask = (shift > 0)
            .then(|| shift_mask_tensor(resolution.0, resolution.1, window, shift, path.device()));
        Self {
            norm1: layer_norm(&path / "norm1", dim),
            attn,
            norm2: layer_norm(&path / "norm2", dim),
            mlp: Mlp::new(&path / "mlp", dim, hidden, o.drop),
            resolution,
            window,
            shift,
            mask,
            drop_path,
        }
    }

    /// The attention module (for buffer checks).
    pub fn attn(&self) -> &WindowAttention {
        &self.attn
    }

    /// The shift mask buffer, when the block shifts.
    pub fn attn_mask(&self) -> Option<&Tensor> {
        self.mask.as_ref()
    }

    /// `[B, H*W, C]` → same.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let (h, w) = self.resolution;
        let s = x.size();
        let (b, c) = (s[0], s[2]);
        let mut y = self.norm1.forward(x).view([b, h, w, c]);
        if self.shift > 0 {
            y = y.roll([-self.shift, -self.shift], [1, 2]);
        }
        let windows = window_partition(&y, self.window);
        let attended = self.attn.forward(&windows, self.mask.as_ref(), train);
        let mut y = window_reverse(&attended, self.window, h, w);
        if self.shift > 0 {
            y = y.roll([self.shift, self.shift], [1, 2]);
        }
        let x = x + drop_path(&y.view([b, h * w, c]), self.drop_path, train);
        let m = self.mlp.forward(&self.norm2.forward(&x), train);
        &x + drop_path(&m, self.drop_path, train)
    }

    /// Multiply-accumulates per image (Swin's count).
    pub fn flops(&self, dim: i64, heads: i64, mlp_ratio: f64) -> i64 {
        let (h, w) = self.resolution;
        let n = self.window * self.window;
        let nw = h * w / n;
        2 * h * w * dim
            + nw * WindowAttention::flops(dim, heads, n)
            + 2 * ((h * w * dim) as f64 * dim as f64 * mlp_ratio) as i64
    }
}

/// 2x2 patch merging: concatenate neighbours (4C), LayerNorm, reduce to `out_dim`.
#[derive(Debug)]
pub struct PatchMerging {
    norm: nn::LayerNorm,
    reduction: nn::Linear,
    resolution: (i64, i64),
    dim: i64,
}

impl PatchMerging {
    /// `downsample.norm` (4·dim) and `downsample.reduction` (no bias).
    pub fn new(path: nn::Path, resolution: (i64, i64), dim: i64, out_dim: i64) -> Self {
        Self {
            norm: layer_norm(&path / "norm", 4 * dim),
            reduction: linear(&path / "reduction", 4 * dim, out_dim, false),
            resolution,
            dim,
        }
    }

    /// `[B, H*W, C]` → `[B, H/2*W/2, out_dim]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (h, w) = self.resolution;
        let b = x.size()[0];
        let x = x.view([b, h, w, self.dim]);
        let pick = |dy: i64, dx: i64| x.slice(1, dy, h, 2).slice(2, dx, w, 2);
        let cat = Tensor::cat(&[pick(0, 0), pick(1, 0), pick(0, 1), pick(1, 1)], -1).view([
            b,
            -1,
            4 * self.dim,
        ]);
        self.reduction.forward(&self.norm.forward(&cat))
    }

    /// Multiply-accumulates per image. Like the reference, this counts the
    /// reduction as 4C→2C even where RIDE narrows it to 3/2·C.
    pub fn flops(&self) -> i64 {
        let (h, w) = self.resolution;
        h * w * self.dim + (h / 2) * (w / 2) * 4 * self.dim * 2 * self.dim
    }
}

/// A stage: `depth` blocks and an optional patch merging at the end.
#[derive(Debug)]
pub struct BasicLayer {
    blocks: Vec<SwinBlock>,
    downsample: Option<PatchMerging>,
    dim: i64,
    heads: i64,
    mlp_ratio: f64,
}

impl BasicLayer {
    /// `blocks.{k}` and `downsample` under `path`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: nn::Path,
        dim: i64,
        resolution: (i64, i64),
        depth: usize,
        drop_paths: &[f64],
        o: &BlockOptions,
        downsample_to: Option<i64>,
    ) -> Self {
        let blocks = (0..depth)
            .map(|k| {
                SwinBlock::new(
                    &path / "blocks" / k,
                    dim,
                    resolution,
                    k % 2 == 1,
                    drop_paths[k],
                    o,
                )
            })
            .collect();
        let downsample =
            downsample_to.map(|out| PatchMerging::new(&path / "downsample", resolution, dim, out));
        Self {
            blocks,
            downsample,
            dim,
            heads: o.heads,
            mlp_ratio: o.mlp_ratio,
        }
    }

    /// The blocks of the stage.
    pub fn blocks(&self) -> &[SwinBlock] {
        &self.blocks
    }

    /// The patch merging at the end of the stage, if any.
    pub fn downsample(&self) -> Option<&PatchMerging> {
        self.downsample.as_ref()
    }

    /// Run the stage.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = x.shallow_clone();
        for b in &self.blocks {
            x = b.forward(&x, train);
        }
        match &self.downsample {
            Some(d) => d.forward(&x),
            None => x,
        }
    }

    /// Multiply-accumulates per image.
    pub fn flops(&self) -> i64 {
        let blocks: i64 = self
            .blocks
            .iter()
            .map(|b| b.flops(self.dim, self.heads, self.mlp_ratio))
            .sum();
        blocks + self.downsample.as_ref().map_or(0, |d| d.flops())
    }
}

/// Cosine classifier: normalised features times normalised weight columns.
/// The weight is `[in, out]` as in the RIDE reference.
#[derive(Debug)]
pub struct NormedLinear {
    weight: Tensor,
}

impl NormedLinear {
    /// `weight` ~ trunc_normal(0.02): the reference's model-wide init
    /// overrides NormedLinear's own uniform/renorm init.
    pub fn new(path: nn::Path, inp: i64, out: i64) -> Self {
        Self {
            weight: trunc_normal(&path, "weight", &[inp, out]),
        }
    }

    /// `[B, in]` → `[B, out]` cosines.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let xn = normalize(x, 1);
        let wn = normalize(&self.weight.to_kind(x.kind()), 0);
        xn.matmul(&wn)
    }
}

/// `F.normalize(x, dim)` with eps 1e-12.
pub fn normalize(x: &Tensor, dim: i64) -> Tensor {
    let norm = x
        .norm_scalaropt_dim(2, [dim].as_slice(), true)
        .clamp_min(1e-12);
    x / norm
}

/// A classifier head: cosine or plain linear.
#[derive(Debug)]
pub enum Head {
    /// `NormedLinear`.
    Normed(NormedLinear),
    /// `nn.Linear` with bias.
    Linear(nn::Linear),
}

impl Head {
    /// Apply the head.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Head::Normed(h) => h.forward(x),
            Head::Linear(l) => l.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn normed_linear_outputs_cosines() {
        let vs = nn::VarStore::new(Device::Cpu);
        let h = NormedLinear::new(vs.root() / "h", 4, 3);
        let x = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let y = h.forward(&x);
        let max = y.abs().max().double_value(&[]);
        assert!(max <= 1.0 + 1e-5);
        // Scaling the input leaves cosines unchanged.
        assert!(h.forward(&(&x * 7.0)).allclose(&y, 1e-5, 1e-6, false));
    }

    #[test]
    fn patch_merging_picks_neighbours_in_reference_order() {
        // With identity-like reduction we can read the concatenation order.
        let vs = nn::VarStore::new(Device::Cpu);
        let m = PatchMerging::new(vs.root() / "m", (2, 2), 1, 4);
        tch::no_grad(|| {
            m.reduction
                .ws
                .shallow_clone()
                .copy_(&Tensor::eye(4, (Kind::Float, Device::Cpu)));
            let _ = m.norm.ws.as_ref().unwrap().shallow_clone().fill_(1.0);
        });
        // Tokens (row-major 2x2): values 0,1,2,3 -> x0=(0,0)=0, x1=(1,0)=2, x2=(0,1)=1, x3=(1,1)=3.
        let x = Tensor::from_slice(&[0f32, 1.0, 2.0, 3.0]).view([1, 4, 1]);
        let y = m.forward(&x).view([-1]);
        let v: Vec<f32> = Vec::try_from(y).unwrap();
        // LayerNorm of [0,2,1,3]: mean 1.5, var 1.25
        let sd = (1.25f32 + 1e-5).sqrt();
        let expect = [
            (0.0 - 1.5) / sd,
            (2.0 - 1.5) / sd,
            (1.0 - 1.5) / sd,
            (3.0 - 1.5) / sd,
        ];
        for (a, b) in v.iter().zip(expect) {
            assert!((a - b).abs() < 1e-4, "{v:?} vs {expect:?}");
        }
    }

    #[test]
    fn drop_path_keeps_expectation_and_is_identity_in_eval() {
        tch::manual_seed(0);
        let x = Tensor::ones([4000, 1, 1], (Kind::Float, Device::Cpu));
        let y = drop_path(&x, 0.3, true);
        let mean = y.mean(Kind::Float).double_value(&[]);
        assert!((mean - 1.0).abs() < 0.06, "mean {mean}");
        let zeros = y.eq(0.0).sum(Kind::Int64).int64_value(&[]);
        assert!(zeros > 1000 && zeros < 1400);
        assert!(drop_path(&x, 0.3, false).equal(&x));
    }
}
