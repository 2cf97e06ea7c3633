//! RIDE's expert assignment module (the "router"), as in the authors'
//! `_ea` ResNets: after the experts are trained and frozen, a small module
//! learns, per image, whether consulting the next expert will help.
//!
//! Step `i` (between expert `i` and expert `i + 1`) sees expert `i`'s pooled
//! features, L2-normalised and passed through its own hidden layer
//! (`expert_help_pred_hidden_fcs.{i}`, ReLU), next to the top
//! `TOP_CHOICES_NUM` values of the mean logits of experts `0..=i`; one shared
//! linear layer (`expert_help_pred_fc`, or one per step) turns that into a
//! logit. At evaluation an image goes on to expert `i + 1` while
//! `sigmoid(logit) > THRESHOLD` (the authors hard-code 0.5); its prediction
//! is the mean of the logits of the experts it used.
//!
//! Training target of step `i`: the ensemble of experts `0..=i` is wrong and
//! some larger ensemble `0..=j` (`j > i`) is right. The loss is binary
//! cross-entropy with `pos_weight`, averaged over the steps.

use super::layers::normalize;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// The router's hyper-parameters (`MODEL.ROUTER.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct RouterSpec {
    /// Top values of the running mean logits fed to the router.
    pub top_choices_num: i64,
    /// Width of each step's hidden layer (16 in the authors' code).
    pub hidden_dim: i64,
    /// One output layer for all steps (`share_expert_help_pred_fc`).
    pub share_fc: bool,
    /// Weight of positive examples ("the next expert helps") in the loss.
    pub pos_weight: f64,
    /// Factor from the model's outputs to logits: the cosine heads' scale
    /// `s` (the authors' ResNet multiplies by it inside the model), else 1.
    pub logit_scale: f64,
}

/// The expert assignment module for `num_experts` experts whose pooled
/// features are `feature_dim` wide.
#[derive(Debug)]
pub struct Router {
    spec: RouterSpec,
    hidden: Vec<nn::Linear>,
    out: Vec<nn::Linear>,
    feature_dim: i64,
}

/// Variable names of the router start with this (as in the authors' code).
pub const ROUTER_PREFIX: &str = "expert_help_pred";

/// A layer initialised as the authors' `_weights_init`: Kaiming-normal
/// weight (fan-in, gain √2), PyTorch's default uniform bias.
fn kaiming_linear(path: nn::Path, inp: i64, out: i64) -> nn::Linear {
    let std = (2.0 / inp as f64).sqrt();
    let ws = path.var(
        "weight",
        &[out, inp],
        nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    );
    let bound = 1.0 / (inp as f64).sqrt();
    let bs = Some(path.var(
        "bias",
        &[out],
        nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
    ));
    nn::Linear { ws, bs }
}

impl Router {
    /// Build the router's variables under `root` (names as the authors').
    pub fn new(root: &nn::Path, feature_dim: i64, num_experts: i64, spec: &RouterSpec) -> Self {
        let steps = (num_experts - 1).max(0);
        let hidden = (0..steps)
            .map(|i| {
                kaiming_linear(
                    root / "expert_help_pred_hidden_fcs" / i,
                    feature_dim,
                    spec.hidden_dim,
                )
            })
            .collect();
        let width = spec.hidden_dim + spec.top_choices_num;
        let out = if spec.share_fc {
            vec![kaiming_linear(root / "expert_help_pred_fc", width, 1)]
        } else {
            (0..steps)
                .map(|i| kaiming_linear(root / "expert_help_pred_fcs" / i, width, 1))
                .collect()
        };
        Self {
            spec: spec.clone(),
            hidden,
            out,
            feature_dim,
        }
    }

    /// The hyper-parameters.
    pub fn spec(&self) -> &RouterSpec {
        &self.spec
    }

    /// Routing steps (experts − 1).
    pub fn steps(&self) -> usize {
        self.hidden.len()
    }

    /// Logit `[B]` that expert `step + 1` helps, from expert `step`'s pooled
    /// features `[B, F]` and the mean model outputs of experts `0..=step` `[B, C]`.
    pub fn help_logit(&self, step: usize, features: &Tensor, mean_outputs: &Tensor) -> Tensor {
        let f = normalize(&features.to_kind(Kind::Float), 1);
        let h = self.hidden[step].forward(&f).relu();
        let logits = mean_outputs.to_kind(Kind::Float) * self.spec.logit_scale;
        let (top, _) = logits.topk(self.spec.top_choices_num, 1, true, true);
        let x = Tensor::cat(&[top, h], 1);
        self.out[if self.spec.share_fc { 0 } else { step }]
            .forward(&x)
            .view([-1])
    }

    /// Every step's logit for every image, `[B, E-1]`, given all experts'
    /// outputs and pooled features (all experts run on every image: training,
    /// and evaluation that simulates the routing).
    pub fn help_logits(&self, experts: &[Tensor], features: &[Tensor]) -> Tensor {
        let mut sum = experts[0].to_kind(Kind::Float);
        let mut cols = Vec::with_capacity(self.steps());
        for step in 0..self.steps() {
            if step > 0 {
                // Not `+=`: `sum` may share storage with the first expert's output.
                sum = &sum + experts[step].to_kind(Kind::Float);
            }
            let mean = &sum / (step + 1) as f64;
            cols.push(self.help_logit(step, &features[step.min(features.len() - 1)], &mean));
        }
        Tensor::stack(&cols, 1)
    }

    /// Multiply-accumulates of one routing step for one image.
    pub fn step_flops(&self) -> i64 {
        self.feature_dim * self.spec.hidden_dim + self.spec.hidden_dim + self.spec.top_choices_num
    }
}

/// The router's training loss: per step, binary cross-entropy of its logit
/// against "the ensemble up to this expert is wrong and a larger one is
/// right", with `pos_weight`; the mean over steps. `experts` are the frozen
/// experts' outputs (`[B, C]` each), `help` is `[B, E-1]`, `labels` `[B]`.
pub fn router_loss(experts: &[Tensor], help: &Tensor, labels: &Tensor, pos_weight: f64) -> Tensor {
    let correct = ensemble_correctness(experts, labels);
    let e = experts.len() as i64;
    let mut loss = Tensor::zeros([], (Kind::Float, help.device()));
    for step in 0..e - 1 {
        let wrong_now = correct.select(1, step).logical_not();
        let later_right = correct.narrow(1, step + 1, e - step - 1).any_dim(1, false);
        let target = wrong_now.logical_and(&later_right).to_kind(Kind::Float);
        let pw = Tensor::from_slice(&[pos_weight as f32]).to_device(help.device());
        let l = help
            .select(1, step)
            .binary_cross_entropy_with_logits::<Tensor>(
                &target,
                None,
                Some(pw),
                tch::Reduction::Mean,
            );
        loss = &loss + l;
    }
    loss / (e - 1).max(1) as f64
}

/// `[B, E]`: whether the mean of experts `0..=k` predicts the label (the
/// argmax of a sum equals that of the mean).
fn ensemble_correctness(experts: &[Tensor], labels: &Tensor) -> Tensor {
    let mut sum = experts[0].to_kind(Kind::Float);
    let mut cols = vec![sum.argmax(1, false).eq_tensor(labels)];
    for x in &experts[1..] {
        sum = &sum + x.to_kind(Kind::Float);
        cols.push(sum.argmax(1, false).eq_tensor(labels));
    }
    Tensor::stack(&cols, 1)
}

/// What routing decided for a batch.
#[derive(Debug)]
pub struct Routed {
    /// Mean outputs of the experts each image used, `[B, C]`.
    pub outputs: Tensor,
    /// Experts each image used, `[B]` (int64, 1..=E).
    pub experts_used: Tensor,
}

/// Apply the routing rule with `threshold` to outputs and step logits
/// computed for every image: image `b` uses expert `k + 1` while every step
/// up to `k` has `sigmoid(logit) > threshold`. Gives the same predictions as
/// running only the chosen experts (each image's outputs do not depend on
/// the others' in evaluation).
pub fn route_all(experts: &[Tensor], help: &Tensor, threshold: f64) -> Routed {
    let cumulative = cumulative_sums(experts); // [B, E, C]
    let b = cumulative.size()[0];
    let experts_used = experts_used(help, threshold);
    let idx = (&experts_used - 1)
        .view([b, 1, 1])
        .expand([b, 1, cumulative.size()[2]], false);
    let outputs = cumulative.gather(1, &idx, false).squeeze_dim(1)
        / experts_used.to_kind(Kind::Float).view([b, 1]);
    Routed {
        outputs,
        experts_used,
    }
}

/// The routing rule alone: experts each image uses, `[B]` (int64, 1..=E),
/// from the step logits `[B, E-1]`: one, plus one per leading step with
/// `sigmoid(logit) > threshold`.
pub fn experts_used(help: &Tensor, threshold: f64) -> Tensor {
    let go_on = help.sigmoid().gt(threshold).to_kind(Kind::Int64);
    go_on
        .cumprod(1, Kind::Int64)
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)
        + 1
}

/// `[B, E, C]`: the sums of the outputs of experts `0..=k` for every `k`
/// (their argmax is the prediction of an image that used `k + 1` experts).
pub fn cumulative_sums(experts: &[Tensor]) -> Tensor {
    let stacked: Vec<Tensor> = experts.iter().map(|x| x.to_kind(Kind::Float)).collect();
    Tensor::stack(&stacked, 1).cumsum(1, Kind::Float)
}

/// Evaluation with dynamic routing, for any backbone: `trunk` is the shared
/// part's output for the batch; `expert(e, rows)` runs expert `e` on some
/// rows of it and returns their outputs and pooled features. Expert `i + 1`
/// runs only on the images whose step `i` says `sigmoid(logit) > threshold`,
/// so the cost is that of the experts actually used; the result equals
/// [`route_all`] on a full forward.
pub fn route_dynamic(
    router: &Router,
    trunk: &Tensor,
    expert: impl Fn(usize, &Tensor) -> (Tensor, Tensor),
    threshold: f64,
) -> Routed {
    let b = trunk.size()[0];
    let device = trunk.device();
    let (first, mut feats) = expert(0, trunk);
    let mut sum = first.to_kind(Kind::Float);
    let mut used = Tensor::ones([b], (Kind::Int64, device));
    // Indices (into the batch) of the images still going on.
    let mut active = Tensor::arange(b, (Kind::Int64, device));
    for step in 0..router.steps() {
        let mean = sum.index_select(0, &active) / (step + 1) as f64;
        let go = router
            .help_logit(step, &feats, &mean)
            .sigmoid()
            .gt(threshold);
        let keep = go.nonzero().view([-1]);
        if keep.numel() == 0 {
            break;
        }
        active = active.index_select(0, &keep);
        let (out, f) = expert(step + 1, &trunk.index_select(0, &active));
        sum = sum.index_add(0, &active, &out.to_kind(Kind::Float));
        let ones = Tensor::ones([active.size()[0]], (Kind::Int64, device));
        used = used.index_add(0, &active, &ones);
        feats = f;
    }
    let outputs = sum / used.to_kind(Kind::Float).view([b, 1]);
    Routed {
        outputs,
        experts_used: used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    #[test]
    fn loss_targets_by_hand() {
        // 3 experts, 2 classes, 3 images, labels all 0.
        // image 0: expert 0 right                  → targets (0, 0)
        // image 1: e0 wrong, e0+e1 right           → targets (1, 0)
        // image 2: e0 wrong, e0+e1 wrong, all right → targets (1, 1)
        let e0 = t(&[1., 0., 0., 1., 0., 1.], &[3, 2]);
        let e1 = t(&[0., 0., 3., 0., 0., 1.5], &[3, 2]);
        let e2 = t(&[0., 0., 0., 0., 4., 0.], &[3, 2]);
        let labels = Tensor::from_slice(&[0i64, 0, 0]);
        let help = t(&[0.5, -1.0, 2.0, 0.3, -0.7, 1.1], &[3, 2]);
        let pw = 4.0;
        let got = router_loss(&[e0, e1, e2], &help, &labels, pw).double_value(&[]);
        let bce = |x: f64, y: f64| {
            let s = 1.0 / (1.0 + (-x).exp());
            -(pw * y * s.ln() + (1.0 - y) * (1.0 - s).ln())
        };
        let step0 = (bce(0.5, 0.) + bce(2.0, 1.) + bce(-0.7, 1.)) / 3.0;
        let step1 = (bce(-1.0, 0.) + bce(0.3, 0.) + bce(1.1, 1.)) / 3.0;
        assert!((got - (step0 + step1) / 2.0).abs() < 1e-6, "{got}");
    }

    #[test]
    fn routing_rule_by_hand() {
        let e0 = t(&[2., 0., 0., 1., 1., 0.], &[3, 2]);
        let e1 = t(&[0., 4., 4., 0., 0., 2.], &[3, 2]);
        let e2 = t(&[0., 6., 6., 0., 0., 6.], &[3, 2]);
        // sigmoid > 0.5 ⇔ logit > 0. Image 0 stops at once; image 1 uses two
        // (its second step says stop); image 2 goes on twice and uses all three.
        let help = t(&[-1., 5., 1., -1., 1., 1.], &[3, 2]);
        let r = route_all(&[e0, e1, e2], &help, 0.5);
        assert_eq!(
            Vec::<i64>::try_from(&r.experts_used).unwrap(),
            vec![1, 2, 3]
        );
        let want = t(&[2., 0., 2., 0.5, 1. / 3., 8. / 3.], &[3, 2]);
        assert!(
            r.outputs.allclose(&want, 1e-6, 1e-6, false),
            "{}",
            r.outputs
        );
        // Threshold 0 keeps everything (sigmoid > 0), 1 nothing.
        let all = route_all(
            &[
                want.shallow_clone(),
                want.shallow_clone(),
                want.shallow_clone(),
            ],
            &help,
            0.0,
        );
        assert_eq!(
            Vec::<i64>::try_from(&all.experts_used).unwrap(),
            vec![3, 3, 3]
        );
        let one = route_all(
            &[
                want.shallow_clone(),
                want.shallow_clone(),
                want.shallow_clone(),
            ],
            &help,
            1.0,
        );
        assert_eq!(
            Vec::<i64>::try_from(&one.experts_used).unwrap(),
            vec![1, 1, 1]
        );
    }

    #[test]
    fn help_logit_feeds_top_choices_and_hidden_features() {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = RouterSpec {
            top_choices_num: 2,
            hidden_dim: 3,
            share_fc: true,
            pos_weight: 1.0,
            logit_scale: 10.0,
        };
        let r = Router::new(&vs.root(), 4, 3, &spec);
        let names: Vec<String> = vs.variables().keys().cloned().collect();
        for n in [
            "expert_help_pred_hidden_fcs.0.weight",
            "expert_help_pred_hidden_fcs.1.bias",
            "expert_help_pred_fc.weight",
        ] {
            assert!(names.iter().any(|k| k == n), "missing {n} in {names:?}");
        }
        let v = vs.variables();
        let feats = t(&[3., 0., 4., 0.], &[1, 4]);
        let mean = t(&[0.1, 0.5, 0.3], &[1, 3]);
        let got = r.help_logit(1, &feats, &mean).double_value(&[0]);
        // By hand: h = relu(W1 · f/|f| + b1); x = [top2(10·mean), h]; W · x + b.
        let f = &feats / 5.0;
        let h = (f.matmul(&v["expert_help_pred_hidden_fcs.1.weight"].tr())
            + &v["expert_help_pred_hidden_fcs.1.bias"])
            .relu();
        let x = Tensor::cat(&[t(&[5., 3.], &[1, 2]), h], 1);
        let want = (x.matmul(&v["expert_help_pred_fc.weight"].tr())
            + &v["expert_help_pred_fc.bias"])
            .double_value(&[0, 0]);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert_eq!(r.step_flops(), 4 * 3 + 3 + 2);
    }
}
