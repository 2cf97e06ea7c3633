//! Losses of the reference: RIDE, LDAM-DRW, soft-target and label-smoothing
//! cross-entropy. Class statistics (margins, DRW weights, diversity
//! temperatures) are pure functions in [`class_weights`].

pub mod class_weights;

use class_weights::{diversity_temperature_weights, drw_weights, ldam_margins};
use tch::{Kind, Tensor};

/// `mean_i w[y_i] · Σ_c −t_ic · log_softmax(z_i)_c`: soft-target CE with an
/// optional per-class weight looked up by the hard label (not normalised by Σw).
pub fn soft_target_ce(
    logits: &Tensor,
    soft: &Tensor,
    hard: &Tensor,
    weight: Option<&Tensor>,
) -> Tensor {
    let per_sample = (-soft * logits.log_softmax(-1, Kind::Float)).sum_dim_intlist(
        [-1i64].as_slice(),
        false,
        Kind::Float,
    );
    match weight {
        Some(w) => (per_sample * w.index_select(0, hard)).mean(Kind::Float),
        None => per_sample.mean(Kind::Float),
    }
}

/// `F.cross_entropy(logits, hard, weight=w)`: the mean of per-sample CE,
/// weighted by `w[y_i]` and normalised by `Σ w[y_i]` (the authors' ResNet
/// losses on hard labels); the plain mean without `w`.
pub fn weighted_ce(logits: &Tensor, hard: &Tensor, weight: Option<&Tensor>) -> Tensor {
    let nll = -logits
        .log_softmax(-1, Kind::Float)
        .gather(1, &hard.view([-1, 1]), false)
        .squeeze_dim(1);
    match weight {
        Some(w) => {
            let wy = w.index_select(0, hard);
            (nll * &wy).sum(Kind::Float) / wy.sum(Kind::Float)
        }
        None => nll.mean(Kind::Float),
    }
}

/// timm `LabelSmoothingCrossEntropy`: `(1−ε)·NLL + ε·mean_c(−log_softmax)`.
pub fn label_smoothing_ce(logits: &Tensor, hard: &Tensor, smoothing: f64) -> Tensor {
    let logp = logits.log_softmax(-1, Kind::Float);
    let nll = -logp.gather(1, &hard.view([-1, 1]), false).squeeze_dim(1);
    let smooth = -logp.mean_dim([-1i64].as_slice(), false, Kind::Float);
    (nll * (1.0 - smoothing) + smooth * smoothing).mean(Kind::Float)
}

/// Subtract `s·m_y` from each row's hard-label logit of already-scaled logits.
fn apply_margin(scaled: &Tensor, hard: &Tensor, margins: &Tensor, s: f64) -> Tensor {
    let m = margins.index_select(0, hard).view([-1, 1]) * s;
    let onehot = Tensor::zeros_like(scaled).scatter_value(1, &hard.view([-1, 1]), 1.0);
    scaled - onehot * m
}

/// The RIDE loss: per expert, LDAM-margin soft-target CE (DRW-weighted after
/// the re-weighting epoch) summed over experts, plus the diversity KL between
/// each expert and the detached ensemble, with class-dependent temperature.
#[derive(Debug)]
pub struct RideLoss {
    margins: Tensor,
    drw: Option<Tensor>,
    diversity: Tensor,
    s: f64,
    base_div_temp: f64,
    base_loss_factor: f64,
    additional_div_factor: f64,
    reweight_epoch: Option<u64>,
    hard_labels: bool,
}

/// Settings of [`RideLoss`] (`TRAIN.LOSS.*`).
#[derive(Clone, Debug)]
pub struct RideLossOptions {
    /// Largest LDAM margin.
    pub max_m: f64,
    /// Logit scale.
    pub s: f64,
    /// Base diversity temperature.
    pub base_div_temp: f64,
    /// Classification loss weight.
    pub base_loss_factor: f64,
    /// Diversity weight.
    pub additional_div_factor: f64,
    /// Class-dependent temperature strength.
    pub reweight_factor: f64,
    /// Re-weight after this epoch (`None`: never).
    pub reweight_epoch: Option<u64>,
    /// The authors' ResNet `RIDELoss` on hard labels (no mixup): each
    /// expert's CE is `F.cross_entropy` with the DRW weights (normalised by
    /// the batch's weights) and the diversity term is not divided by the
    /// number of experts. Off: the Swin reference's soft-target form.
    pub hard_labels: bool,
}

impl RideLoss {
    /// Precompute class statistics from training-class counts.
    pub fn new(counts: &[usize], o: &RideLossOptions) -> Self {
        let t = |v: Vec<f64>| Tensor::from_slice(&v).to_kind(Kind::Float);
        Self {
            margins: t(ldam_margins(counts, o.max_m)),
            drw: o.reweight_epoch.map(|_| t(drw_weights(counts, 0.9999))),
            diversity: t(diversity_temperature_weights(counts, o.reweight_factor)),
            s: o.s,
            base_div_temp: o.base_div_temp,
            base_loss_factor: o.base_loss_factor,
            additional_div_factor: o.additional_div_factor,
            reweight_epoch: o.reweight_epoch,
            hard_labels: o.hard_labels,
        }
    }

    /// Whether class re-weighting is on in `epoch` (strictly after the re-weight epoch).
    pub fn reweighting(&self, epoch: u64) -> bool {
        self.reweight_epoch.is_some_and(|r| epoch > r)
    }

    /// Loss for per-expert cosine logits `experts[e]: [B,C]`.
    pub fn forward(&self, experts: &[Tensor], hard: &Tensor, soft: &Tensor, epoch: u64) -> Tensor {
        let dev = experts[0].device();
        let e_count = experts.len() as f64;
        let stacked = Tensor::stack(experts, 0).to_kind(Kind::Float);
        let mean_scaled = stacked.mean_dim([0i64].as_slice(), false, Kind::Float) * self.s;
        let margins = self.margins.to_device(dev);
        let reweight = self.reweighting(epoch);
        let weight = if reweight {
            self.drw.as_ref().map(|w| w.to_device(dev))
        } else {
            None
        };
        let (temp, temp_mean) = if reweight {
            let t = self.diversity.to_device(dev).view([1, -1]) * self.base_div_temp;
            let m = t.mean(Kind::Float).double_value(&[]);
            (t, m)
        } else {
            (
                Tensor::from(self.base_div_temp).to_device(dev),
                self.base_div_temp,
            )
        };
        let target_dist = tch::no_grad(|| (mean_scaled.detach() / &temp).softmax(1, Kind::Float));
        let mut loss = Tensor::zeros([], (Kind::Float, dev));
        for e in 0..experts.len() {
            let z = stacked.get(e as i64) * self.s;
            let x = if self.additional_div_factor != 0.0 {
                z.shallow_clone()
            } else {
                mean_scaled.shallow_clone()
            };
            let xm = apply_margin(&x, hard, &margins, self.s);
            let ce = if self.hard_labels {
                weighted_ce(&xm, hard, weight.as_ref())
            } else {
                soft_target_ce(&xm, soft, hard, weight.as_ref())
            };
            loss += ce * self.base_loss_factor;
            let logq = (&z / &temp).log_softmax(1, Kind::Float);
            let kl = logq.kl_div(&target_dist, tch::Reduction::Sum, false) / z.size()[0] as f64;
            let per_expert = if self.hard_labels { 1.0 } else { e_count };
            loss += kl * (self.additional_div_factor * temp_mean * temp_mean / per_expert);
        }
        loss
    }
}

/// LDAM with deferred re-weighting on the ensemble output (the reference's
/// `LOSS_TYPE: LDAM`; `s = 30`, `max_m = 0.5` are fixed there).
#[derive(Debug)]
pub struct LdamDrwLoss {
    margins: Tensor,
    drw: Tensor,
    s: f64,
    reweight_epoch: u64,
    hard_labels: bool,
}

impl LdamDrwLoss {
    /// Margins and DRW weights from training-class counts.
    pub fn new(counts: &[usize], max_m: f64, s: f64, reweight_epoch: u64) -> Self {
        Self {
            margins: Tensor::from_slice(&ldam_margins(counts, max_m)).to_kind(Kind::Float),
            drw: Tensor::from_slice(&drw_weights(counts, 0.9999)).to_kind(Kind::Float),
            s,
            reweight_epoch,
            hard_labels: false,
        }
    }

    /// The authors' ResNet `LDAMLoss` on hard labels: `F.cross_entropy`
    /// with the DRW weights, normalised by the batch's weights.
    pub fn with_hard_labels(mut self) -> Self {
        self.hard_labels = true;
        self
    }

    /// DRW from `epoch >= REWEIGHT_EPOCH` (note: ≥, unlike RIDE's >).
    pub fn reweighting(&self, epoch: u64) -> bool {
        epoch >= self.reweight_epoch
    }

    /// Loss for ensemble cosine logits `[B,C]`.
    pub fn forward(&self, logits: &Tensor, hard: &Tensor, soft: &Tensor, epoch: u64) -> Tensor {
        let dev = logits.device();
        let scaled = logits.to_kind(Kind::Float) * self.s;
        let x = apply_margin(&scaled, hard, &self.margins.to_device(dev), self.s);
        let w = self.reweighting(epoch).then(|| self.drw.to_device(dev));
        if self.hard_labels {
            weighted_ce(&x, hard, w.as_ref())
        } else {
            soft_target_ce(&x, soft, hard, w.as_ref())
        }
    }
}

/// The training criterion chosen from the config, as the reference does.
#[derive(Debug)]
pub enum Criterion {
    /// RIDE loss on per-expert outputs.
    Ride(RideLoss),
    /// LDAM-DRW on the ensemble output.
    LdamDrw(LdamDrwLoss),
    /// Soft-target CE on the ensemble (mixup on, `LOSS_TYPE: CE`).
    SoftTarget,
    /// Label-smoothing CE (no mixup).
    LabelSmoothing(f64),
    /// Plain CE.
    CrossEntropy,
}

impl Criterion {
    /// Loss of a batch: per-expert logits, hard labels, soft (mixup) targets.
    pub fn loss(&self, experts: &[Tensor], hard: &Tensor, soft: &Tensor, epoch: u64) -> Tensor {
        let mean = || {
            Tensor::stack(experts, 0).to_kind(Kind::Float).mean_dim(
                [0i64].as_slice(),
                false,
                Kind::Float,
            )
        };
        match self {
            Criterion::Ride(l) => l.forward(experts, hard, soft, epoch),
            Criterion::LdamDrw(l) => l.forward(&mean(), hard, soft, epoch),
            Criterion::SoftTarget => soft_target_ce(&mean(), soft, hard, None),
            Criterion::LabelSmoothing(e) => label_smoothing_ce(&mean(), hard, *e),
            Criterion::CrossEntropy => mean().cross_entropy_for_logits(hard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    fn close(a: &Tensor, b: f64) {
        let v = a.double_value(&[]);
        assert!((v - b).abs() < 1e-5, "{v} vs {b}");
    }

    #[test]
    fn soft_ce_by_hand() {
        // softmax([0, ln 3]) = [1/4, 3/4]; target [1/2, 1/2]:
        // -(1/2)ln(1/4) - (1/2)ln(3/4) = 0.5*(1.386294 + 0.287682) = 0.836988
        let z = t(&[0.0, 3f32.ln()], &[1, 2]);
        let soft = t(&[0.5, 0.5], &[1, 2]);
        let hard = Tensor::from_slice(&[1i64]);
        close(&soft_target_ce(&z, &soft, &hard, None), 0.836988);
        // Weighted by w[y=1] = 2.
        let w = t(&[1.0, 2.0], &[2]);
        close(&soft_target_ce(&z, &soft, &hard, Some(&w)), 2.0 * 0.836988);
    }

    #[test]
    fn weighted_ce_is_torch_cross_entropy_with_weight() {
        let logits = Tensor::from_slice(&[2f32, 0., 0., 1.]).view([2, 2]);
        let y = Tensor::from_slice(&[0i64, 1]);
        let w = Tensor::from_slice(&[1f32, 3.]);
        let (n0, n1) = ((1.0 + (-2f64).exp()).ln(), (1.0 + (-1f64).exp()).ln());
        let got = weighted_ce(&logits, &y, Some(&w)).double_value(&[]);
        assert!((got - (n0 + 3.0 * n1) / 4.0).abs() < 1e-6, "{got}");
        let got = weighted_ce(&logits, &y, None).double_value(&[]);
        assert!((got - (n0 + n1) / 2.0).abs() < 1e-6, "{got}");
    }

    #[test]
    fn label_smoothing_by_hand() {
        // logp = [ln 1/4, ln 3/4]; y = 1, eps = 0.1:
        // 0.9 * 0.287682 + 0.1 * (1.386294 + 0.287682)/2 = 0.258914 + 0.083699 = 0.342613
        let z = t(&[0.0, 3f32.ln()], &[1, 2]);
        close(
            &label_smoothing_ce(&z, &Tensor::from_slice(&[1i64]), 0.1),
            0.342613,
        );
    }

    #[test]
    fn ldam_margin_by_hand() {
        // counts [1, 16]: m = [1, 16^-1/4 = 0.5] scaled to max 0.2 -> [0.2, 0.1].
        // z = [0.5, 0.2], y = 0, s = 2: z' = [2(0.5-0.2), 0.4] = [0.6, 0.4]
        // CE = log(1 + e^{-0.2}) = 0.598139
        let l = LdamDrwLoss::new(&[1, 16], 0.2, 2.0, 100);
        let z = t(&[0.5, 0.2], &[1, 2]);
        let soft = t(&[1.0, 0.0], &[1, 2]);
        close(
            &l.forward(&z, &Tensor::from_slice(&[0i64]), &soft, 0),
            0.598139,
        );
        assert!(!l.reweighting(99) && l.reweighting(100));
    }

    #[test]
    fn ride_loss_by_hand_without_reweighting() {
        // s = 1, no margins (max_m = 0). Experts z1 = [0, ln3], z2 = [ln3, 0];
        // ensemble mean [ln3/2, ln3/2] -> p = [1/2, 1/2]. Hard label 0, one-hot target.
        // CE1 = -ln(1/4) = 1.386294, CE2 = -ln(3/4) = 0.287682.
        // KL(p || q1) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.143841 = KL(p || q2).
        // loss = 1.386294 + 0.287682 + 2 * (-0.2 * 0.143841 / 2) = 1.645208
        let o = RideLossOptions {
            max_m: 0.0,
            s: 1.0,
            base_div_temp: 1.0,
            base_loss_factor: 1.0,
            additional_div_factor: -0.2,
            reweight_factor: 0.05,
            reweight_epoch: Some(5),
            hard_labels: false,
        };
        let l = RideLoss::new(&[10, 10], &o);
        let experts = [t(&[0.0, 3f32.ln()], &[1, 2]), t(&[3f32.ln(), 0.0], &[1, 2])];
        let soft = t(&[1.0, 0.0], &[1, 2]);
        close(
            &l.forward(&experts, &Tensor::from_slice(&[0i64]), &soft, 5),
            1.645208,
        );
    }

    #[test]
    fn ride_loss_by_hand_with_reweighting() {
        // counts [3, 1], reweight_factor 0.5: p = [0.75, 0.25];
        // v = 2*p*0.5 + 0.5 = [1.25, 0.75] / 1.25 = [1, 0.6]; Tm = 0.8.
        // DRW(beta .9999): w = [1e-4/(1-.9999^3), 1e-4/(1-.9999)] = [0.333367, 1] -> *2/sum = [0.500038, 1.499962].
        // One expert z = [0.5, 0.0], s = 1, no margin, hard 1, soft [0, 1]:
        // CE = w1 * -log_softmax([0.5, 0])_1 = 1.499962 * 0.974077 = 1.461079.
        // Ensemble = expert, so KL = 0 and the diversity term vanishes.
        let o = RideLossOptions {
            max_m: 0.0,
            s: 1.0,
            base_div_temp: 1.0,
            base_loss_factor: 1.0,
            additional_div_factor: -0.2,
            reweight_factor: 0.5,
            reweight_epoch: Some(0),
            hard_labels: false,
        };
        let l = RideLoss::new(&[3, 1], &o);
        let experts = [t(&[0.5, 0.0], &[1, 2])];
        let soft = t(&[0.0, 1.0], &[1, 2]);
        let hard = Tensor::from_slice(&[1i64]);
        close(&l.forward(&experts, &hard, &soft, 1), 1.461079);
        // Epoch 0 is not after the re-weight epoch: unweighted CE 0.974077.
        close(&l.forward(&experts, &hard, &soft, 0), 0.974077);
    }

    #[test]
    fn ride_diversity_uses_class_temperature_after_reweight_epoch() {
        // Two experts, 2 classes, counts [3,1], rf 0.5 -> T = [1, 0.6], Tm = 0.8, s = 1,
        // hard/soft target irrelevant for the KL part: compare loss with and without the KL.
        // z1 = [1, 0], z2 = [0, 0]; mean = [0.5, 0].
        // p = softmax([0.5/1, 0/0.6]) = softmax([0.5, 0]) = [0.622459, 0.377541]
        // q1 = softmax([1, 0]) = [0.731059, 0.268941]; q2 = [0.5, 0.5]
        // KL1 = 0.622459 ln(0.622459/0.731059) + 0.377541 ln(0.377541/0.268941) = 0.027955
        // KL2 = 0.622459 ln(1.244918) + 0.377541 ln(0.755082) = 0.030300
        // diversity = -0.2 * 0.64 * (KL1 + KL2) / 2 = -0.003728
        let mk = |adf: f64| {
            let o = RideLossOptions {
                max_m: 0.0,
                s: 1.0,
                base_div_temp: 1.0,
                base_loss_factor: 1.0,
                additional_div_factor: adf,
                reweight_factor: 0.5,
                reweight_epoch: Some(0),
                hard_labels: false,
            };
            RideLoss::new(&[3, 1], &o)
        };
        let experts = [t(&[1.0, 0.0], &[1, 2]), t(&[0.0, 0.0], &[1, 2])];
        let soft = t(&[1.0, 0.0], &[1, 2]);
        let hard = Tensor::from_slice(&[0i64]);
        let with = mk(-0.2)
            .forward(&experts, &hard, &soft, 1)
            .double_value(&[]);
        let tiny = mk(-1e-12)
            .forward(&experts, &hard, &soft, 1)
            .double_value(&[]);
        assert!(
            ((with - tiny) - (-0.003728)).abs() < 2e-6,
            "{}",
            with - tiny
        );
    }

    #[test]
    fn criterion_soft_target_uses_expert_mean() {
        let experts = [t(&[0.0, 0.0], &[1, 2]), t(&[0.0, 2.0 * 3f32.ln()], &[1, 2])];
        let soft = t(&[0.5, 0.5], &[1, 2]);
        // mean = [0, ln3] -> 0.836988 as in soft_ce_by_hand
        close(
            &Criterion::SoftTarget.loss(&experts, &Tensor::from_slice(&[0i64]), &soft, 0),
            0.836988,
        );
    }
}
