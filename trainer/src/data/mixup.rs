//! Mixup / CutMix on a batch with label-smoothed soft targets, with timm's
//! `Mixup` semantics in batch mode: one λ per batch, partner = reversed batch.

use rand::Rng;
use rand_distr::{Beta, Distribution};
use tch::{Kind, Tensor};

/// Mixup/CutMix settings (`AUG.MIXUP`, `AUG.CUTMIX`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct MixupOptions {
    /// Beta(α, α) for mixup; 0 disables it.
    pub mixup_alpha: f64,
    /// Beta(α, α) for CutMix; 0 disables it.
    pub cutmix_alpha: f64,
    /// Probability of mixing a batch at all.
    pub prob: f64,
    /// Probability of CutMix rather than mixup when both are on.
    pub switch_prob: f64,
    /// Label smoothing of the targets.
    pub label_smoothing: f64,
    /// Number of classes.
    pub num_classes: i64,
}

impl MixupOptions {
    /// Whether any mixing is configured.
    pub fn active(&self) -> bool {
        self.prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0)
    }
}

/// Label-smoothed one-hot targets: `1 - s + s/C` on the label, `s/C` elsewhere.
pub fn smooth_one_hot(labels: &Tensor, num_classes: i64, smoothing: f64) -> Tensor {
    let off = smoothing / num_classes as f64;
    let on = 1.0 - smoothing + off;
    let n = labels.size()[0];
    let t = Tensor::full([n, num_classes], off, (Kind::Float, labels.device()));
    t.scatter_value(1, &labels.view([-1, 1]), on)
}

/// Mix `images` in place-free fashion and return `(mixed_images, soft_targets, lambda)`.
pub fn mix<R: Rng>(
    images: &Tensor,
    labels: &Tensor,
    opts: &MixupOptions,
    rng: &mut R,
) -> (Tensor, Tensor, f64) {
    let (mut lam, mut use_cutmix) = (1.0, false);
    if opts.active() && rng.random::<f64>() < opts.prob {
        use_cutmix = if opts.mixup_alpha > 0.0 && opts.cutmix_alpha > 0.0 {
            rng.random::<f64>() < opts.switch_prob
        } else {
            opts.cutmix_alpha > 0.0
        };
        let alpha = if use_cutmix {
            opts.cutmix_alpha
        } else {
            opts.mixup_alpha
        };
        lam = Beta::new(alpha, alpha)
            .map(|b| b.sample(rng))
            .unwrap_or(1.0);
    }
    let flipped = images.flip([0]);
    let mixed = if lam >= 1.0 {
        images.shallow_clone()
    } else if use_cutmix {
        let size = images.size();
        let (h, w) = (size[2], size[3]);
        let ratio = (1.0 - lam).sqrt();
        let (cut_h, cut_w) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
        let cy = rng.random_range(0..h);
        let cx = rng.random_range(0..w);
        let (y0, y1) = ((cy - cut_h / 2).clamp(0, h), (cy + cut_h / 2).clamp(0, h));
        let (x0, x1) = ((cx - cut_w / 2).clamp(0, w), (cx + cut_w / 2).clamp(0, w));
        // timm corrects λ to the area actually pasted.
        lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
        let out = images.copy();
        if y1 > y0 && x1 > x0 {
            out.narrow(2, y0, y1 - y0)
                .narrow(3, x0, x1 - x0)
                .copy_(&flipped.narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0));
        }
        out
    } else {
        images * lam + &flipped * (1.0 - lam)
    };
    let y1 = smooth_one_hot(labels, opts.num_classes, opts.label_smoothing);
    let y2 = smooth_one_hot(&labels.flip([0]), opts.num_classes, opts.label_smoothing);
    (mixed, y1 * lam + y2 * (1.0 - lam), lam)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn smoothing_by_hand() {
        let t = smooth_one_hot(&Tensor::from_slice(&[2i64]), 4, 0.1);
        let v: Vec<f32> = Vec::try_from(t.view([-1])).unwrap();
        // off = 0.1/4 = 0.025, on = 0.9 + 0.025 = 0.925
        assert_eq!(v, vec![0.025, 0.025, 0.925, 0.025]);
    }

    #[test]
    fn mixup_targets_and_images_follow_lambda() {
        let opts = MixupOptions {
            mixup_alpha: 0.8,
            cutmix_alpha: 0.0,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.0,
            num_classes: 3,
        };
        let images = Tensor::from_slice(&[0f32, 1.0]).view([2, 1, 1, 1]);
        let labels = Tensor::from_slice(&[0i64, 1]);
        let (x, y, lam) = mix(&images, &labels, &opts, &mut ChaCha8Rng::seed_from_u64(5));
        let xv: Vec<f32> = Vec::try_from(x.view([-1])).unwrap();
        assert!((xv[0] as f64 - (1.0 - lam)).abs() < 1e-6);
        let yv: Vec<f32> = Vec::try_from(y.view([-1])).unwrap();
        assert!((yv[0] as f64 - lam).abs() < 1e-6 && (yv[1] as f64 - (1.0 - lam)).abs() < 1e-6);
        let rows: Vec<f32> =
            Vec::try_from(y.sum_dim_intlist([1i64].as_slice(), false, Kind::Float)).unwrap();
        assert!(rows.iter().all(|r| (r - 1.0).abs() < 1e-6));
    }

    #[test]
    fn cutmix_lambda_equals_kept_area() {
        let opts = MixupOptions {
            mixup_alpha: 0.0,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.1,
            num_classes: 2,
        };
        let images = Tensor::cat(
            &[
                Tensor::zeros([1, 1, 8, 8], (Kind::Float, tch::Device::Cpu)),
                Tensor::ones([1, 1, 8, 8], (Kind::Float, tch::Device::Cpu)),
            ],
            0,
        );
        let labels = Tensor::from_slice(&[0i64, 1]);
        for seed in 0..10 {
            let (x, _, lam) = mix(
                &images,
                &labels,
                &opts,
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            // Sample 0 was all zeros; ones pasted from its partner cover (1-λ) of it.
            let pasted = x.get(0).mean(Kind::Float).double_value(&[]);
            assert!(
                (pasted - (1.0 - lam)).abs() < 1e-6,
                "seed {seed}: {pasted} vs {lam}"
            );
        }
    }
}
