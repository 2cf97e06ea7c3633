//! Train and eval image transforms producing normalised CHW floats.
//!
//! Follows the Swin reference's `build_transform`: inputs larger than 32 px
//! get RandomResizedCrop (scale 0.08–1, ratio 3/4–4/3) for training and
//! resize-by-1/0.875 + center crop for evaluation; 32-px inputs get the
//! CIFAR-style `RandomCrop(size, padding=4)`. Then horizontal flip,
//! ImageNet normalisation and random erasing (pixel mode). Resampling is
//! bilinear. RandAugment and colour jitter are not implemented yet.

use super::RgbImage;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// ImageNet channel means.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A transform from a decoded image to `3 * size * size` normalised floats.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// Training augmentation.
    Train {
        /// Output side.
        size: usize,
        /// Random erasing probability (`AUG.REPROB`).
        erase_prob: f32,
        /// Horizontal flip probability.
        flip_prob: f32,
    },
    /// Deterministic evaluation transform.
    Eval {
        /// Output side.
        size: usize,
        /// Resize to `size/0.875` then center crop (`TEST.CROP`), else plain resize.
        center_crop: bool,
    },
}

impl Transform {
    /// Output side length.
    pub fn size(&self) -> usize {
        match self {
            Transform::Train { size, .. } | Transform::Eval { size, .. } => *size,
        }
    }

    /// Apply to `img`, writing `3*size*size` floats (CHW) into `out`.
    pub fn apply<R: Rng>(&self, img: &RgbImage, rng: &mut R, out: &mut [f32]) {
        match *self {
            Transform::Train {
                size,
                erase_prob,
                flip_prob,
            } => {
                let cropped = if size <= 32 {
                    random_crop_padded(img, size, 4, rng)
                } else {
                    let (x, y, w, h) = random_resized_crop_box(img.width, img.height, rng);
                    resize_region(img, x, y, w, h, size, size)
                };
                let flip = rng.random::<f32>() < flip_prob;
                normalise_into(&cropped, flip, out);
                if rng.random::<f32>() < erase_prob {
                    random_erase(out, size, rng);
                }
            }
            Transform::Eval { size, center_crop } => {
                let img = if size <= 32 && img.width == size && img.height == size {
                    img.clone()
                } else if center_crop && size > 32 {
                    let short = (size as f32 / 0.875) as usize;
                    let resized = resize_shorter(img, short);
                    let x = (resized.width - size) / 2;
                    let y = (resized.height - size) / 2;
                    resize_region(
                        &resized,
                        x as f32,
                        y as f32,
                        size as f32,
                        size as f32,
                        size,
                        size,
                    )
                } else {
                    resize_region(
                        img,
                        0.0,
                        0.0,
                        img.width as f32,
                        img.height as f32,
                        size,
                        size,
                    )
                };
                normalise_into(&img, false, out);
            }
        }
    }
}

fn normalise_into(img: &RgbImage, flip: bool, out: &mut [f32]) {
    let (w, h) = (img.width, img.height);
    assert_eq!(out.len(), 3 * w * h, "output buffer size");
    for y in 0..h {
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x };
            let src = (y * w + sx) * 3;
            for c in 0..3 {
                let v = img.pixels[src + c] as f32 / 255.0;
                out[c * w * h + y * w + x] = (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
    }
}

/// CIFAR-style crop: zero-pad by `pad` on each side, crop `size` at random.
fn random_crop_padded<R: Rng>(img: &RgbImage, size: usize, pad: usize, rng: &mut R) -> RgbImage {
    let max_x = (img.width + 2 * pad).saturating_sub(size);
    let max_y = (img.height + 2 * pad).saturating_sub(size);
    let ox = rng.random_range(0..=max_x) as isize - pad as isize;
    let oy = rng.random_range(0..=max_y) as isize - pad as isize;
    let mut out = RgbImage::new(size, size);
    for y in 0..size {
        let sy = y as isize + oy;
        if sy < 0 || sy >= img.height as isize {
            continue;
        }
        for x in 0..size {
            let sx = x as isize + ox;
            if sx < 0 || sx >= img.width as isize {
                continue;
            }
            let s = (sy as usize * img.width + sx as usize) * 3;
            let d = (y * size + x) * 3;
            out.pixels[d..d + 3].copy_from_slice(&img.pixels[s..s + 3]);
        }
    }
    out
}

/// torchvision's RandomResizedCrop box: 10 tries at scale 0.08–1 and
/// log-uniform ratio 3/4–4/3, falling back to a center crop.
fn random_resized_crop_box<R: Rng>(w: usize, h: usize, rng: &mut R) -> (f32, f32, f32, f32) {
    let area = (w * h) as f32;
    let (lo, hi) = ((3.0f32 / 4.0).ln(), (4.0f32 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.08..1.0);
        let ratio = rng.random_range(lo..hi).exp();
        let cw = (target * ratio).sqrt().round();
        let ch = (target / ratio).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= w as f32 && ch <= h as f32 {
            let x = rng.random_range(0..=(w - cw as usize)) as f32;
            let y = rng.random_range(0..=(h - ch as usize)) as f32;
            return (x, y, cw, ch);
        }
    }
    let side = w.min(h) as f32;
    ((w as f32 - side) / 2.0, (h as f32 - side) / 2.0, side, side)
}

fn resize_shorter(img: &RgbImage, short: usize) -> RgbImage {
    let (w, h) = (img.width as f32, img.height as f32);
    let (nw, nh) = if w <= h {
        (short, (h * short as f32 / w).round() as usize)
    } else {
        ((w * short as f32 / h).round() as usize, short)
    };
    resize_region(img, 0.0, 0.0, w, h, nw, nh)
}

/// Bilinear resample of the region `(x, y, w, h)` to `out_w x out_h`
/// (half-pixel centres, as `align_corners=False`).
pub fn resize_region(
    img: &RgbImage,
    x: f32,
    y: f32,
    w: f32,
    h: f32,
    out_w: usize,
    out_h: usize,
) -> RgbImage {
    let mut out = RgbImage::new(out_w, out_h);
    let (sx, sy) = (w / out_w as f32, h / out_h as f32);
    let max_x = img.width as f32 - 1.0;
    let max_y = img.height as f32 - 1.0;
    for oy in 0..out_h {
        let fy = (y + (oy as f32 + 0.5) * sy - 0.5).clamp(0.0, max_y);
        let y0 = fy.floor() as usize;
        let y1 = (y0 + 1).min(img.height - 1);
        let ty = fy - y0 as f32;
        for ox in 0..out_w {
            let fx = (x + (ox as f32 + 0.5) * sx - 0.5).clamp(0.0, max_x);
            let x0 = fx.floor() as usize;
            let x1 = (x0 + 1).min(img.width - 1);
            let tx = fx - x0 as f32;
            for c in 0..3 {
                let p = |xx: usize, yy: usize| img.pixels[(yy * img.width + xx) * 3 + c] as f32;
                let top = p(x0, y0) * (1.0 - tx) + p(x1, y0) * tx;
                let bot = p(x0, y1) * (1.0 - tx) + p(x1, y1) * tx;
                out.pixels[(oy * out_w + ox) * 3 + c] = (top * (1.0 - ty) + bot * ty).round() as u8;
            }
        }
    }
    out
}

/// timm RandomErasing, pixel mode, one box: area 2–33 %, log-uniform
/// aspect 0.3–3.3, filled with standard-normal noise.
fn random_erase<R: Rng>(chw: &mut [f32], size: usize, rng: &mut R) {
    let area = (size * size) as f32;
    let (lo, hi) = (0.3f32.ln(), (1.0f32 / 0.3).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.02..(1.0 / 3.0));
        let ar = rng.random_range(lo..hi).exp();
        let h = (target * ar).sqrt().round() as usize;
        let w = (target / ar).sqrt().round() as usize;
        if w < size && h < size && w > 0 && h > 0 {
            let top = rng.random_range(0..=size - h);
            let left = rng.random_range(0..=size - w);
            for c in 0..3 {
                for y in top..top + h {
                    for x in left..left + w {
                        chw[c * size * size + y * size + x] = StandardNormal.sample(rng);
                    }
                }
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let o = (y * w + x) * 3;
                img.pixels[o] = (x * 255 / (w - 1)) as u8;
                img.pixels[o + 1] = (y * 255 / (h - 1)) as u8;
                img.pixels[o + 2] = 128;
            }
        }
        img
    }

    #[test]
    fn eval_normalises_known_pixels() {
        let img = gradient(32, 32);
        let t = Transform::Eval {
            size: 32,
            center_crop: true,
        };
        let mut out = vec![0f32; 3 * 32 * 32];
        t.apply(&img, &mut ChaCha8Rng::seed_from_u64(0), &mut out);
        // Pixel (0,0): R=0 -> (0 - 0.485)/0.229; blue plane is constant 128/255.
        assert!((out[0] - (-0.485 / 0.229)).abs() < 1e-5);
        let blue = (128.0 / 255.0 - 0.406) / 0.225;
        assert!((out[2 * 1024 + 517] - blue).abs() < 1e-5);
    }

    #[test]
    fn eval_center_crop_has_requested_size_and_keeps_centre() {
        let img = gradient(300, 200);
        let t = Transform::Eval {
            size: 64,
            center_crop: true,
        };
        let mut out = vec![0f32; 3 * 64 * 64];
        t.apply(&img, &mut ChaCha8Rng::seed_from_u64(0), &mut out);
        // The centre pixel of the crop is near the centre of the source: R ~ 127.
        let r = out[32 * 64 + 32] * IMAGENET_STD[0] + IMAGENET_MEAN[0];
        assert!((r - 0.5).abs() < 0.02, "centre red {r}");
    }

    #[test]
    fn train_is_deterministic_by_seed_and_varies_across_seeds() {
        let img = gradient(32, 32);
        let t = Transform::Train {
            size: 32,
            erase_prob: 0.25,
            flip_prob: 0.5,
        };
        let run = |seed| {
            let mut out = vec![0f32; 3 * 32 * 32];
            t.apply(&img, &mut ChaCha8Rng::seed_from_u64(seed), &mut out);
            out
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn padded_crop_shifts_content() {
        let img = gradient(32, 32);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let crop = random_crop_padded(&img, 32, 4, &mut rng);
        assert_eq!((crop.width, crop.height), (32, 32));
        // Some row of the original appears shifted by at most 4 pixels.
        let found = (0..=8).any(|d| {
            let shift = d as isize - 4;
            (0..32).all(|x| {
                let sx = x as isize + shift;
                !(0..32).contains(&sx)
                    || crop.pixels[(16 * 32 + x) * 3] == img.pixels[(16 * 32 + sx as usize) * 3]
            })
        });
        assert!(found);
    }

    #[test]
    fn rrc_box_stays_inside_image() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..200 {
            let (x, y, w, h) = random_resized_crop_box(120, 80, &mut rng);
            assert!(x >= 0.0 && y >= 0.0 && x + w <= 120.0 && y + h <= 80.0);
            let frac = w * h / (120.0 * 80.0);
            assert!(frac > 0.0 && frac <= 1.0);
        }
    }
}
