//! Train and eval image transforms producing normalised CHW floats.
//!
//! Follows the Swin reference's `build_transform`: inputs larger than 32 px
//! get RandomResizedCrop (scale 0.08–1, ratio 3/4–4/3) for training and
//! resize-by-1/0.875 + center crop for evaluation; 32-px inputs get the
//! CIFAR-style `RandomCrop(size, padding=4)`. Then horizontal flip,
//! RandAugment (or ColorJitter without it), ImageNet normalisation and random
//! erasing (pixel mode), in timm's order. Resampling follows
//! `DATA.INTERPOLATION` (bicubic by default) through `fast_image_resize`.

use super::augment::{color_jitter, RandAugment};
use super::decode::{Cutout, ImageSource};
use super::RgbImage;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// ImageNet channel means.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Resampling filter (`DATA.INTERPOLATION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (triangle filter, antialiased when shrinking, like PIL).
    Bilinear,
    /// Bicubic, a = −0.5 (PIL's), antialiased when shrinking.
    Bicubic,
}

impl Interpolation {
    /// The filter's radius in output pixels when not shrinking.
    pub fn support(self) -> f32 {
        match self {
            Self::Nearest => 0.5,
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    /// Parse the reference's names; `random` (timm) picks bicubic here.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "nearest" => Ok(Self::Nearest),
            "bilinear" => Ok(Self::Bilinear),
            "bicubic" | "random" => Ok(Self::Bicubic),
            other => Err(format!(
                "'{other}' is not a known interpolation (nearest, bilinear, bicubic)"
            )),
        }
    }
}

/// Training augmentation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainAugment {
    /// Output side.
    pub size: usize,
    /// Random erasing probability (`AUG.REPROB`).
    pub erase_prob: f32,
    /// Horizontal flip probability.
    pub flip_prob: f32,
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// RandAugment policy (`AUG.AUTO_AUGMENT`), if any.
    pub rand_augment: Option<RandAugment>,
    /// ColorJitter strength (`AUG.COLOR_JITTER`), used only without RandAugment, as timm does.
    pub color_jitter: f32,
}

/// A transform from an image to `3 * size * size` normalised floats.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// Training augmentation.
    Train(TrainAugment),
    /// Deterministic evaluation transform.
    Eval {
        /// Output side.
        size: usize,
        /// Resize to `size/0.875` then center crop (`TEST.CROP`), else plain resize.
        center_crop: bool,
        /// Resampling filter.
        interpolation: Interpolation,
    },
}

impl Transform {
    /// The plain training transform (RandomResizedCrop or padded crop, flip,
    /// erasing), bicubic, without colour augmentation (the tests' transform).
    #[cfg(test)]
    pub(crate) fn train_basic(size: usize, erase_prob: f32) -> Self {
        Transform::Train(TrainAugment {
            size,
            erase_prob,
            flip_prob: 0.5,
            interpolation: Interpolation::Bicubic,
            rand_augment: None,
            color_jitter: 0.0,
        })
    }

    /// Output side length.
    pub fn size(&self) -> usize {
        match self {
            Transform::Train(t) => t.size,
            Transform::Eval { size, .. } => *size,
        }
    }

    /// Apply to a decoded image, writing `3*size*size` floats (CHW) into `out`.
    pub fn apply<R: Rng>(&self, img: &RgbImage, rng: &mut R, out: &mut [f32]) {
        // Decoded sources cannot fail to decode.
        let _ = self.apply_source(&ImageSource::Decoded(img.clone()), rng, out);
    }

    /// Apply to an image source. Encoded JPEGs are decoded at the smallest DCT
    /// scale that still leaves the crop at least the output size, so large
    /// photos cost a fraction of a full decode.
    pub fn apply_source<R: Rng>(
        &self,
        src: &ImageSource,
        rng: &mut R,
        out: &mut [f32],
    ) -> Result<(), String> {
        match self {
            Transform::Train(t) => {
                let size = t.size;
                let mut img = if size <= 32 {
                    let full = src.decode_at_least(usize::MAX, usize::MAX)?;
                    random_crop_padded(&full, size, 4, rng)
                } else {
                    let (w, h) = src.dimensions()?;
                    let (x, y, cw, ch) = random_resized_crop_box(w, h, rng);
                    let cut =
                        src.decode_box([x, y, cw, ch], size, size, t.interpolation.support())?;
                    resize_cutout(&cut, size, size, t.interpolation)
                };
                if rng.random::<f32>() < t.flip_prob {
                    flip_horizontal(&mut img);
                }
                match &t.rand_augment {
                    Some(ra) => ra.apply(&mut img, rng),
                    None => color_jitter(&mut img, t.color_jitter as f64, rng),
                }
                normalise_into(&img, out);
                if rng.random::<f32>() < t.erase_prob {
                    random_erase(out, size, rng);
                }
            }
            Transform::Eval {
                size,
                center_crop,
                interpolation,
            } => {
                let size = *size;
                let (w, h) = src.dimensions()?;
                let img = if size <= 32 && w == size && h == size {
                    src.decode_at_least(usize::MAX, usize::MAX)?
                } else {
                    let rect = if *center_crop && size > 32 {
                        center_crop_box(w, h, size)
                    } else {
                        [0.0, 0.0, w as f32, h as f32]
                    };
                    let cut = src.decode_box(rect, size, size, interpolation.support())?;
                    resize_cutout(&cut, size, size, *interpolation)
                };
                normalise_into(&img, out);
            }
        }
        Ok(())
    }
}

/// torchvision's `Resize(int(size/0.875))` + `CenterCrop(size)` as one box
/// of the original image: the shorter side becomes `int(size/0.875)` and the
/// longer `int(new_short · long / short)`; the crop offset is
/// `round((resized − size)/2)`, rounding half to even as Python does. The
/// box is then resampled in one step, with the per-axis scales PIL uses.
fn center_crop_box(w: usize, h: usize, size: usize) -> [f32; 4] {
    let short = (size as f32 / 0.875) as usize;
    let resized_long =
        |long: usize, short_side: usize| (short as f64 * long as f64 / short_side as f64) as usize;
    let (rw, rh) = if w <= h {
        (short, resized_long(h, w))
    } else {
        (resized_long(w, h), short)
    };
    let offset = |resized: usize| ((resized as f64 - size as f64) / 2.0).round_ties_even();
    let (sx, sy) = (w as f64 / rw as f64, h as f64 / rh as f64);
    [
        (offset(rw) * sx) as f32,
        (offset(rh) * sy) as f32,
        (size as f64 * sx) as f32,
        (size as f64 * sy) as f32,
    ]
}

fn flip_horizontal(img: &mut RgbImage) {
    let w = img.width;
    for row in img.pixels.chunks_exact_mut(w * 3) {
        let pixels: &mut [[u8; 3]] = bytemuck::cast_slice_mut(row);
        pixels.reverse();
    }
}

fn normalise_into(img: &RgbImage, out: &mut [f32]) {
    let (w, h) = (img.width, img.height);
    assert_eq!(out.len(), 3 * w * h, "output buffer size");
    let plane = w * h;
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * IMAGENET_STD[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| IMAGENET_MEAN[c] / IMAGENET_STD[c]);
    for (i, px) in img.pixels.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px[c] as f32 * scale[c] - shift[c];
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
    // timm's (and torchvision's) fallback: the whole image, cut to the
    // nearest allowed aspect ratio, centred.
    let in_ratio = w as f32 / h as f32;
    let (cw, ch) = if in_ratio < 3.0 / 4.0 {
        (w, ((w as f32 / (3.0 / 4.0)).round() as usize).min(h))
    } else if in_ratio > 4.0 / 3.0 {
        (((h as f32 * (4.0 / 3.0)).round() as usize).min(w), h)
    } else {
        (w, h)
    };
    (
        ((w - cw) / 2) as f32,
        ((h - ch) / 2) as f32,
        cw as f32,
        ch as f32,
    )
}

/// Resample the region `(x, y, w, h)` of `img` to `out_w × out_h` with
/// `fast_image_resize` (SIMD convolution; antialiased when shrinking, as PIL).
/// Resample a cutout's box to `out_w × out_h`.
fn resize_cutout(
    cut: &Cutout<'_>,
    out_w: usize,
    out_h: usize,
    interpolation: Interpolation,
) -> RgbImage {
    let [x, y, w, h] = cut.rect;
    resize_region(&cut.image, x, y, w, h, out_w, out_h, interpolation)
}

#[allow(clippy::too_many_arguments)]
pub fn resize_region(
    img: &RgbImage,
    x: f32,
    y: f32,
    w: f32,
    h: f32,
    out_w: usize,
    out_h: usize,
    interpolation: Interpolation,
) -> RgbImage {
    use fast_image_resize as fr;
    let alg = match interpolation {
        Interpolation::Nearest => fr::ResizeAlg::Nearest,
        Interpolation::Bilinear => fr::ResizeAlg::Convolution(fr::FilterType::Bilinear),
        Interpolation::Bicubic => fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom),
    };
    let mut out = RgbImage::new(out_w, out_h);
    let src = fr::images::ImageRef::new(
        img.width as u32,
        img.height as u32,
        &img.pixels,
        fr::PixelType::U8x3,
    );
    let dst = fr::images::Image::from_slice_u8(
        out_w as u32,
        out_h as u32,
        &mut out.pixels,
        fr::PixelType::U8x3,
    );
    if let (Ok(src), Ok(mut dst)) = (src, dst) {
        let opts = fr::ResizeOptions::new().resize_alg(alg).crop(
            x as f64,
            y as f64,
            w.max(1.0) as f64,
            h.max(1.0) as f64,
        );
        // Sizes are consistent by construction; a failure leaves a black image.
        let _ = fr::Resizer::new().resize(&src, &mut dst, &opts);
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
        RgbImage::ramp(w, h, 128)
    }

    #[test]
    fn eval_normalises_known_pixels() {
        let img = gradient(32, 32);
        let t = Transform::Eval {
            size: 32,
            center_crop: true,
            interpolation: Interpolation::Bicubic,
        };
        let mut out = vec![0f32; 3 * 32 * 32];
        t.apply(&img, &mut ChaCha8Rng::seed_from_u64(0), &mut out);
        // Pixel (0,0): R=0 -> (0 - 0.485)/0.229; blue plane is constant 128/255.
        assert!((out[0] - (-0.485 / 0.229)).abs() < 1e-5);
        let blue = (128.0 / 255.0 - 0.406) / 0.225;
        assert!((out[2 * 1024 + 517] - blue).abs() < 1e-5);
    }

    /// The centre box reproduces torchvision's integer arithmetic: the long
    /// side truncated, the offset rounded half to even (an offset of 89.5
    /// becomes 90, 92.5 becomes 92). `bench/transform_parity.sh` compares
    /// whole tensors with torchvision's.
    #[test]
    fn center_crop_box_follows_torchvision_rounding() {
        // 564×358 → 403×256 (403.3 truncated); left offset round(89.5) = 90.
        let [x, y, w, h] = center_crop_box(564, 358, 224);
        assert!((x - 90.0 * 564.0 / 403.0).abs() < 1e-3, "{x}");
        assert!((y - 16.0 * 358.0 / 256.0).abs() < 1e-3, "{y}");
        assert!(
            (w - 224.0 * 564.0 / 403.0).abs() < 1e-3 && (h - 224.0 * 358.0 / 256.0).abs() < 1e-3
        );
        // 256×409 (already the right short side): top offset round(92.5) = 92.
        let [x, y, w, h] = center_crop_box(256, 409, 224);
        assert_eq!([x, y, w, h], [16.0, 92.0, 224.0, 224.0]);
    }

    #[test]
    fn eval_center_crop_has_requested_size_and_keeps_centre() {
        let img = gradient(300, 200);
        let t = Transform::Eval {
            size: 64,
            center_crop: true,
            interpolation: Interpolation::Bicubic,
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
        let t = Transform::train_basic(32, 0.25);
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

    /// After ten rejected tries (only very elongated images get there),
    /// the crop is the whole image cut to the nearest allowed ratio, as in
    /// timm and torchvision.
    #[test]
    fn rrc_fallback_is_the_centre_at_the_nearest_allowed_ratio() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // 1000×10: no sampled box fits; 4/3 of the height is 13 wide.
        assert_eq!(
            random_resized_crop_box(1000, 10, &mut rng),
            (493.0, 0.0, 13.0, 10.0)
        );
        assert_eq!(
            random_resized_crop_box(10, 1000, &mut rng),
            (0.0, 493.0, 10.0, 13.0)
        );
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

    fn jpeg(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 95)
            .encode(
                &img.pixels,
                img.width as u16,
                img.height as u16,
                jpeg_encoder::ColorType::Rgb,
            )
            .unwrap();
        out
    }

    #[test]
    fn encoded_jpegs_decode_at_reduced_size_with_the_same_picture() {
        let img = gradient(1024, 768);
        let src = ImageSource::Encoded(jpeg(&img));
        assert_eq!(src.dimensions().unwrap(), (1024, 768));
        let quarter = src.decode_at_least(256, 192).unwrap();
        assert_eq!((quarter.width, quarter.height), (256, 192));
        let full = src.decode_at_least(usize::MAX, usize::MAX).unwrap();
        assert_eq!((full.width, full.height), (1024, 768));
        // Eval through DCT scaling gives (nearly) the same tensor as from full pixels.
        let t = Transform::Eval {
            size: 64,
            center_crop: true,
            interpolation: Interpolation::Bicubic,
        };
        let (mut a, mut b) = (vec![0f32; 3 * 64 * 64], vec![0f32; 3 * 64 * 64]);
        t.apply_source(&src, &mut ChaCha8Rng::seed_from_u64(0), &mut a)
            .unwrap();
        t.apply(&full, &mut ChaCha8Rng::seed_from_u64(0), &mut b);
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max < 0.1, "max difference {max} (normalised units)");
    }

    /// Decoding only the crop's rows and columns (plus the filter's reach)
    /// changes no output pixel: the resampled box equals the one taken from
    /// the whole image decoded at the same DCT scale, at full scale and at
    /// 1/2, 1/4 and 1/8, for bicubic and bilinear filters.
    #[test]
    fn resampling_a_cutout_equals_resampling_the_whole_decoded_image() {
        let img = RgbImage::ramp(1100, 830, 77);
        let mut noisy = img.clone();
        for (i, p) in noisy.pixels.iter_mut().enumerate() {
            *p = p.wrapping_add(((i * 2654435761) >> 13) as u8 % 23);
        }
        let src = ImageSource::Encoded(jpeg(&noisy));
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut scales = std::collections::BTreeSet::new();
        for i in 0..40 {
            let (x, y, cw, ch) = random_resized_crop_box(1100, 830, &mut rng);
            let out = [224, 96, 40, 20][i % 4];
            let interp = [Interpolation::Bicubic, Interpolation::Bilinear][i % 2];
            let cut = src
                .decode_box([x, y, cw, ch], out, out, interp.support())
                .unwrap();
            let need_w = (1100.0 * out as f32 / cw).ceil() as usize;
            let need_h = (830.0 * out as f32 / ch).ceil() as usize;
            let whole = src.decode_at_least(need_w, need_h).unwrap();
            let (sx, sy) = (whole.width as f32 / 1100.0, whole.height as f32 / 830.0);
            scales.insert(whole.width);
            assert!(cut.image.width <= whole.width && cut.image.height <= whole.height);
            let a = resize_cutout(&cut, out, out, interp);
            let b = resize_region(&whole, x * sx, y * sy, cw * sx, ch * sy, out, out, interp);
            assert!(a == b, "crop {i}: {:?} differs", (x, y, cw, ch));
        }
        assert_eq!(scales.len(), 4, "all four DCT scales exercised: {scales:?}");
    }

    #[test]
    fn train_transform_on_photos_has_the_right_shape_range_and_determinism() {
        let img = gradient(500, 375);
        let src = ImageSource::Encoded(jpeg(&img));
        let t = Transform::Train(TrainAugment {
            size: 224,
            erase_prob: 0.25,
            flip_prob: 0.5,
            interpolation: Interpolation::Bicubic,
            rand_augment: Some(RandAugment::parse("rand-m9-mstd0.5-inc1").unwrap()),
            color_jitter: 0.4,
        });
        let run = |seed| {
            let mut out = vec![0f32; 3 * 224 * 224];
            t.apply_source(&src, &mut ChaCha8Rng::seed_from_u64(seed), &mut out)
                .unwrap();
            out
        };
        let a = run(4);
        assert_eq!(a, run(4));
        assert_ne!(a, run(5));
        // Normalised bytes lie in [(0 − mean)/std, (1 − mean)/std], except erased noise.
        let inside = a
            .iter()
            .enumerate()
            .filter(|(i, v)| {
                let c = i / (224 * 224);
                let lo = -IMAGENET_MEAN[c] / IMAGENET_STD[c] - 1e-4;
                let hi = (1.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c] + 1e-4;
                (lo..=hi).contains(*v)
            })
            .count();
        assert!(
            inside as f64 > 0.6 * a.len() as f64,
            "{inside} of {}",
            a.len()
        );
        let corrupt = ImageSource::Encoded(vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]);
        let mut out = vec![0f32; 3 * 224 * 224];
        assert!(t
            .apply_source(&corrupt, &mut ChaCha8Rng::seed_from_u64(0), &mut out)
            .is_err());
    }

    #[test]
    fn flip_mirrors_rows() {
        let mut img = gradient(8, 2);
        let before = img.clone();
        flip_horizontal(&mut img);
        assert_eq!(&img.pixels[0..3], &before.pixels[7 * 3..8 * 3]);
        flip_horizontal(&mut img);
        assert_eq!(img, before);
    }
}
