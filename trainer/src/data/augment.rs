//! Colour and geometry augmentations on 8-bit RGB images with the semantics
//! of timm's RandAugment (`rand-m9-mstd0.5-inc1`: two ops per image, each
//! applied with probability 0.5, magnitude drawn from N(9, 0.5) clipped to
//! [0, 10], the "increasing" op set) and torchvision's ColorJitter
//! (brightness, contrast and saturation in random order). Pixel arithmetic
//! follows PIL's `ImageOps`/`ImageEnhance`; geometric ops sample bicubically
//! and fill with the ImageNet mean, as timm configures them.

use super::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// ImageNet mean as bytes: timm's fill colour for rotate/shear/translate.
pub const FILL: [u8; 3] = [124, 116, 104];

/// The RandAugment ops (timm's `_RAND_INCREASING_TRANSFORMS` when `inc1`,
/// `_RAND_TRANSFORMS` otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Stretch each channel to the full range.
    AutoContrast,
    /// Histogram-equalise each channel.
    Equalize,
    /// 255 − p.
    Invert,
    /// Rotate by up to ±30°.
    Rotate,
    /// Keep fewer bits.
    Posterize,
    /// Invert above a threshold.
    Solarize,
    /// Add to pixels below 128.
    SolarizeAdd,
    /// Saturation.
    Color,
    /// Contrast.
    Contrast,
    /// Brightness.
    Brightness,
    /// Sharpness.
    Sharpness,
    /// Horizontal shear up to ±0.3.
    ShearX,
    /// Vertical shear up to ±0.3.
    ShearY,
    /// Horizontal shift up to ±45 % of the width.
    TranslateX,
    /// Vertical shift up to ±45 % of the height.
    TranslateY,
}

const OPS: [Op; 15] = [
    Op::AutoContrast,
    Op::Equalize,
    Op::Invert,
    Op::Rotate,
    Op::Posterize,
    Op::Solarize,
    Op::SolarizeAdd,
    Op::Color,
    Op::Contrast,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
];

/// A RandAugment policy parsed from timm's config string.
#[derive(Clone, Debug, PartialEq)]
pub struct RandAugment {
    /// Ops per image (`n`, default 2).
    pub num_ops: usize,
    /// Mean magnitude (`m`, 0–10).
    pub magnitude: f64,
    /// Magnitude standard deviation (`mstd`).
    pub magnitude_std: f64,
    /// Upper clip of the magnitude (`mmax`, default 10).
    pub magnitude_max: f64,
    /// "Increasing" variants (`inc1`): stronger with magnitude for posterize,
    /// solarize and the enhance ops.
    pub increasing: bool,
    /// Probability each chosen op is applied (timm: 0.5).
    pub prob: f64,
}

impl RandAugment {
    /// Parse `rand-m9-mstd0.5-inc1`-style strings; the error says what is wrong.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split('-');
        if parts.next() != Some("rand") {
            return Err(format!(
                "'{spec}': only RandAugment policies ('rand-m9-mstd0.5-inc1') are supported, or 'none'"
            ));
        }
        let mut ra = RandAugment {
            num_ops: 2,
            magnitude: 10.0,
            magnitude_std: 0.0,
            magnitude_max: 10.0,
            increasing: false,
            prob: 0.5,
        };
        for p in parts {
            let key_len = p
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(p.len());
            let (key, val) = p.split_at(key_len);
            let num = || {
                val.parse::<f64>()
                    .map_err(|_| format!("'{spec}': '{p}' needs a number"))
            };
            match key {
                "m" => ra.magnitude = num()?,
                "n" => ra.num_ops = num()? as usize,
                "mstd" => ra.magnitude_std = num()?,
                "mmax" => ra.magnitude_max = num()?,
                "inc" => ra.increasing = num()? > 0.0,
                "p" => ra.prob = num()?,
                _ => return Err(format!("'{spec}': unknown RandAugment field '{p}'")),
            }
        }
        Ok(ra)
    }

    /// Apply to `img` in place.
    pub fn apply<R: Rng>(&self, img: &mut RgbImage, rng: &mut R) {
        for _ in 0..self.num_ops {
            let op = OPS[rng.random_range(0..OPS.len())];
            if rng.random::<f64>() > self.prob {
                continue;
            }
            let mut m = self.magnitude;
            if self.magnitude_std > 0.0 {
                if let Ok(n) = Normal::new(m, self.magnitude_std) {
                    m = n.sample(rng);
                }
            }
            let level = m.clamp(0.0, self.magnitude_max) / 10.0;
            apply_op(op, level, self.increasing, img, rng);
        }
    }
}

fn negate<R: Rng>(v: f64, rng: &mut R) -> f64 {
    if rng.random::<f64>() < 0.5 {
        -v
    } else {
        v
    }
}

/// Apply one op at `level` in [0, 1] (magnitude / 10).
pub fn apply_op<R: Rng>(op: Op, level: f64, increasing: bool, img: &mut RgbImage, rng: &mut R) {
    let enhance = |rng: &mut R| {
        if increasing {
            1.0 + negate(level * 0.9, rng)
        } else {
            level * 1.8 + 0.1
        }
    };
    match op {
        Op::AutoContrast => auto_contrast(img),
        Op::Equalize => equalize(img),
        Op::Invert => lut(img, |p| 255 - p),
        Op::Rotate => {
            let deg = negate(level * 30.0, rng);
            rotate(img, deg)
        }
        Op::Posterize => {
            let bits = if increasing {
                4 - (level * 4.0) as i32
            } else {
                (level * 4.0) as i32 + 4
            };
            posterize(img, bits.clamp(0, 8) as u32)
        }
        Op::Solarize => {
            let t = if increasing {
                256 - (level * 256.0) as i32
            } else {
                (level * 256.0) as i32
            };
            lut(img, |p| if i32::from(p) >= t { 255 - p } else { p })
        }
        Op::SolarizeAdd => {
            let add = (level * 110.0) as i32;
            lut(img, |p| {
                if p < 128 {
                    (i32::from(p) + add).min(255) as u8
                } else {
                    p
                }
            })
        }
        Op::Color => {
            let f = enhance(rng);
            saturation(img, f)
        }
        Op::Contrast => {
            let f = enhance(rng);
            contrast(img, f)
        }
        Op::Brightness => {
            let f = enhance(rng);
            brightness(img, f)
        }
        Op::Sharpness => {
            let f = enhance(rng);
            sharpness(img, f)
        }
        Op::ShearX => {
            let s = negate(level * 0.3, rng);
            affine(img, [1.0, s, 0.0, 0.0, 1.0, 0.0])
        }
        Op::ShearY => {
            let s = negate(level * 0.3, rng);
            affine(img, [1.0, 0.0, 0.0, s, 1.0, 0.0])
        }
        Op::TranslateX => {
            let px = negate(level * 0.45, rng) * img.width as f64;
            affine(img, [1.0, 0.0, px, 0.0, 1.0, 0.0])
        }
        Op::TranslateY => {
            let px = negate(level * 0.45, rng) * img.height as f64;
            affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, px])
        }
    }
}

/// torchvision's `ColorJitter(b, c, s)`: factors uniform in [1−x, 1+x],
/// applied in a random order.
pub fn color_jitter<R: Rng>(img: &mut RgbImage, strength: f64, rng: &mut R) {
    if strength <= 0.0 {
        return;
    }
    let mut order = [0u8, 1, 2];
    order.shuffle(rng);
    for k in order {
        let f = rng.random_range((1.0 - strength).max(0.0)..=1.0 + strength);
        match k {
            0 => brightness(img, f),
            1 => contrast(img, f),
            _ => saturation(img, f),
        }
    }
}

fn lut(img: &mut RgbImage, f: impl Fn(u8) -> u8) {
    let table: Vec<u8> = (0..=255u8).map(f).collect();
    for p in img.pixels.iter_mut() {
        *p = table[*p as usize];
    }
}

fn posterize(img: &mut RgbImage, bits: u32) {
    if bits >= 8 {
        return;
    }
    let mask = !((1u32 << (8 - bits)) - 1) as u8;
    lut(img, |p| p & mask)
}

fn channel_histograms(img: &RgbImage) -> [[u32; 256]; 3] {
    let mut h = [[0u32; 256]; 3];
    for px in img.pixels.chunks_exact(3) {
        for c in 0..3 {
            h[c][px[c] as usize] += 1;
        }
    }
    h
}

fn per_channel_lut(img: &mut RgbImage, tables: &[[u8; 256]; 3]) {
    for px in img.pixels.chunks_exact_mut(3) {
        for c in 0..3 {
            px[c] = tables[c][px[c] as usize];
        }
    }
}

fn auto_contrast(img: &mut RgbImage) {
    let hist = channel_histograms(img);
    let mut tables = [[0u8; 256]; 3];
    for c in 0..3 {
        let lo = hist[c].iter().position(|&n| n > 0).unwrap_or(0);
        let hi = hist[c].iter().rposition(|&n| n > 0).unwrap_or(255);
        for (i, t) in tables[c].iter_mut().enumerate() {
            *t = if hi <= lo {
                i as u8
            } else {
                let scale = 255.0 / (hi - lo) as f64;
                ((i as f64 - lo as f64) * scale).clamp(0.0, 255.0) as u8
            };
        }
    }
    per_channel_lut(img, &tables);
}

fn equalize(img: &mut RgbImage) {
    let hist = channel_histograms(img);
    let mut tables = [[0u8; 256]; 3];
    for c in 0..3 {
        let h = &hist[c];
        let last = h.iter().rposition(|&n| n > 0).map_or(0, |i| h[i]);
        let step = (h.iter().sum::<u32>() - last) / 255;
        for (i, t) in tables[c].iter_mut().enumerate() {
            *t = i as u8;
        }
        if step == 0 {
            continue;
        }
        let mut n = step / 2;
        for (i, t) in tables[c].iter_mut().enumerate() {
            *t = (n / step).min(255) as u8;
            n += h[i];
        }
    }
    per_channel_lut(img, &tables);
}

/// PIL's luminance ("L" conversion).
fn luma(px: &[u8]) -> u8 {
    ((px[0] as u32 * 19595 + px[1] as u32 * 38470 + px[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

fn blend(degenerate: f64, value: u8, factor: f64) -> u8 {
    (degenerate + factor * (value as f64 - degenerate)).clamp(0.0, 255.0) as u8
}

fn brightness(img: &mut RgbImage, f: f64) {
    lut(img, |p| blend(0.0, p, f))
}

fn contrast(img: &mut RgbImage, f: f64) {
    let n = (img.pixels.len() / 3).max(1) as f64;
    let mean = img
        .pixels
        .chunks_exact(3)
        .map(|p| luma(p) as f64)
        .sum::<f64>()
        / n;
    let mean = (mean + 0.5).floor();
    lut(img, |p| blend(mean, p, f))
}

fn saturation(img: &mut RgbImage, f: f64) {
    for px in img.pixels.chunks_exact_mut(3) {
        let l = luma(px) as f64;
        for v in px.iter_mut() {
            *v = blend(l, *v, f);
        }
    }
}

fn sharpness(img: &mut RgbImage, f: f64) {
    let (w, h) = (img.width, img.height);
    if w < 3 || h < 3 {
        return;
    }
    let src = img.pixels.clone();
    let stride = w * 3;
    for y in 1..h - 1 {
        let (up, mid, down) = (
            &src[(y - 1) * stride..y * stride],
            &src[y * stride..(y + 1) * stride],
            &src[(y + 1) * stride..(y + 2) * stride],
        );
        let row = &mut img.pixels[y * stride..(y + 1) * stride];
        // Bytes 3..stride−3 are the interior pixels' channels; ±3 is the
        // same channel of the neighbouring pixel.
        for j in 3..stride - 3 {
            let sum = up[j - 3] as u32
                + up[j] as u32
                + up[j + 3] as u32
                + mid[j - 3] as u32
                + 5 * mid[j] as u32
                + mid[j + 3] as u32
                + down[j - 3] as u32
                + down[j] as u32
                + down[j + 3] as u32;
            let smooth = ((sum + 6) / 13) as f64;
            row[j] = blend(smooth, mid[j], f);
        }
    }
}

fn rotate(img: &mut RgbImage, degrees: f64) {
    // PIL: output (x, y) samples input M·(p − c) + c, M the rotation by −degrees.
    let a = -degrees.to_radians();
    let (cx, cy) = (img.width as f64 / 2.0, img.height as f64 / 2.0);
    let (ca, sa) = (a.cos(), a.sin());
    let c = cx - ca * cx - sa * cy;
    let f = cy + sa * cx - ca * cy;
    affine(img, [ca, sa, c, -sa, ca, f])
}

/// Cubic convolution weight with a = −0.5 (PIL's bicubic).
fn cubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// PIL `Image.transform(AFFINE, (a, b, c, d, e, f), BICUBIC, fillcolor)`:
/// output pixel centre (x, y) samples the input at (ax + by + c, dx + ey + f).
fn affine(img: &mut RgbImage, m: [f64; 6]) {
    // Shear and translate along one axis touch a single row (column) of the
    // source per output pixel: the other axis's cubic weights are exactly
    // [0, 1, 0, 0]. Those take a 4-tap path with identical results.
    if m[0] == 1.0 && m[3] == 0.0 && m[4] == 1.0 && m[5] == 0.0 {
        return shift_rows(img, |y| m[1] * (y as f64 + 0.5) + m[2]);
    }
    if m[0] == 1.0 && m[1] == 0.0 && m[2] == 0.0 && m[4] == 1.0 {
        transpose(img);
        shift_rows(img, |x| m[3] * (x as f64 + 0.5) + m[5]);
        transpose(img);
        return;
    }
    affine_general(img, m)
}

fn transpose(img: &mut RgbImage) {
    let (w, h) = (img.width, img.height);
    let mut out = vec![0u8; img.pixels.len()];
    for y in 0..h {
        for x in 0..w {
            let (s, d) = ((y * w + x) * 3, (x * h + y) * 3);
            out[d..d + 3].copy_from_slice(&img.pixels[s..s + 3]);
        }
    }
    img.pixels = out;
    img.width = h;
    img.height = w;
}

/// The four cubic weights for taps at −1, 0, 1, 2 around a sample at
/// fractional offset `t`, in f32 (PIL computes in double; the difference
/// is below one grey level after rounding).
fn cubic_weights(t: f64) -> [f32; 4] {
    [cubic(1.0 + t), cubic(t), cubic(1.0 - t), cubic(2.0 - t)].map(|v| v as f32)
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 255.0) + 0.5) as u8
}

/// Output pixel x of row y samples the row at x + offset(y) (bicubic, fill outside).
fn shift_rows(img: &mut RgbImage, offset: impl Fn(usize) -> f64) {
    let (w, h) = (img.width, img.height);
    let mut out = vec![0u8; img.pixels.len()];
    for y in 0..h {
        let d = offset(y);
        let base = d.floor();
        let wts = cubic_weights(d - base);
        let base = base as isize;
        let row = &img.pixels[y * w * 3..(y + 1) * w * 3];
        let orow = &mut out[y * w * 3..(y + 1) * w * 3];
        // Pixels whose four taps all lie inside the row share one byte
        // offset per tap, so the row is a plain 4-tap filter over bytes.
        let lo = (1 - base).clamp(0, w as isize) as usize;
        let hi = (w as isize - 2 - base).clamp(lo as isize, w as isize) as usize;
        if lo < hi {
            let n = (hi - lo) * 3;
            let start = ((lo as isize + base - 1) * 3) as usize;
            let taps = [0, 3, 6, 9].map(|k| &row[start + k..start + k + n]);
            for (j, o) in orow[lo * 3..hi * 3].iter_mut().enumerate() {
                *o = to_u8(
                    wts[0] * taps[0][j] as f32
                        + wts[1] * taps[1][j] as f32
                        + wts[2] * taps[2][j] as f32
                        + wts[3] * taps[3][j] as f32,
                );
            }
        }
        for x in (0..lo).chain(hi..w) {
            let sx = x as f64 + 0.5 + d;
            let o = x * 3;
            if sx < 0.0 || sx >= w as f64 {
                orow[o..o + 3].copy_from_slice(&FILL);
                continue;
            }
            let x0 = x as isize + base;
            let mut acc = [0.0f32; 3];
            for (i, wt) in wts.iter().enumerate() {
                let xx = (x0 - 1 + i as isize).clamp(0, w as isize - 1) as usize * 3;
                for c in 0..3 {
                    acc[c] += wt * row[xx + c] as f32;
                }
            }
            for c in 0..3 {
                orow[o + c] = to_u8(acc[c]);
            }
        }
    }
    img.pixels = out;
}

fn affine_general(img: &mut RgbImage, m: [f64; 6]) {
    let (w, h) = (img.width, img.height);
    let src = &img.pixels;
    let mut out = vec![0u8; src.len()];
    for y in 0..h {
        let yc = y as f64 + 0.5;
        for x in 0..w {
            let xc = x as f64 + 0.5;
            let sx = m[0] * xc + m[1] * yc + m[2];
            let sy = m[3] * xc + m[4] * yc + m[5];
            let o = (y * w + x) * 3;
            if sx < 0.0 || sy < 0.0 || sx >= w as f64 || sy >= h as f64 {
                out[o..o + 3].copy_from_slice(&FILL);
                continue;
            }
            let (fx, fy) = (sx - 0.5, sy - 0.5);
            let (x0, y0) = (fx.floor() as isize, fy.floor() as isize);
            let wx = cubic_weights(fx - x0 as f64);
            let wy = cubic_weights(fy - y0 as f64);
            // The four tap columns, clamped to the image once per pixel.
            let cols =
                [0, 1, 2, 3].map(|i| (x0 - 1 + i as isize).clamp(0, w as isize - 1) as usize * 3);
            let mut acc = [0.0f32; 3];
            for (j, wyj) in wy.iter().enumerate() {
                let yy = (y0 - 1 + j as isize).clamp(0, h as isize - 1) as usize;
                let row = &src[yy * w * 3..(yy + 1) * w * 3];
                for (wxi, &col) in wx.iter().zip(&cols) {
                    let wgt = wxi * wyj;
                    for c in 0..3 {
                        acc[c] += wgt * row[col + c] as f32;
                    }
                }
            }
            for c in 0..3 {
                out[o + c] = to_u8(acc[c]);
            }
        }
    }
    img.pixels = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ramp(w: usize, h: usize) -> RgbImage {
        RgbImage::ramp(w, h, 100)
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(1)
    }

    #[test]
    fn parses_the_swin_policy_and_rejects_others() {
        let ra = RandAugment::parse("rand-m9-mstd0.5-inc1").unwrap();
        assert_eq!(
            (ra.num_ops, ra.magnitude, ra.magnitude_std, ra.increasing),
            (2, 9.0, 0.5, true)
        );
        assert_eq!(RandAugment::parse("rand-n3-m5").unwrap().num_ops, 3);
        assert!(RandAugment::parse("v0")
            .unwrap_err()
            .contains("only RandAugment"));
        assert!(RandAugment::parse("rand-q4")
            .unwrap_err()
            .contains("unknown"));
    }

    #[test]
    fn pixel_ops_follow_pil() {
        let mut img = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![10, 128, 250, 0, 64, 200],
        };
        apply_op(Op::Invert, 0.5, true, &mut img, &mut rng());
        assert_eq!(img.pixels, vec![245, 127, 5, 255, 191, 55]);
        let mut img = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![10, 128, 250, 0, 64, 200],
        };
        posterize(&mut img, 2);
        assert_eq!(img.pixels, vec![0, 128, 192, 0, 64, 192]);
        // Solarize at level 0.5 (increasing): threshold 128.
        let mut img = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![10, 128, 250, 0, 127, 200],
        };
        apply_op(Op::Solarize, 0.5, true, &mut img, &mut rng());
        assert_eq!(img.pixels, vec![10, 127, 5, 0, 127, 55]);
        // AutoContrast stretches [10, 250] to [0, 255] per channel.
        let mut img = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![10, 0, 7, 250, 255, 7],
        };
        auto_contrast(&mut img);
        assert_eq!(img.pixels, vec![0, 0, 7, 255, 255, 7]);
        // Brightness 0 is black; saturation 0 is grey (PIL luma).
        let mut img = ramp(4, 4);
        brightness(&mut img, 0.0);
        assert!(img.pixels.iter().all(|&p| p == 0));
        let mut img = RgbImage {
            width: 1,
            height: 1,
            pixels: vec![255, 0, 0],
        };
        saturation(&mut img, 0.0);
        assert_eq!(img.pixels, vec![76, 76, 76]);
    }

    #[test]
    fn equalize_flattens_a_two_level_histogram() {
        let mut img = RgbImage::new(32, 32);
        for (i, p) in img.pixels.chunks_exact_mut(3).enumerate() {
            p.fill(if i < 512 { 50 } else { 60 });
        }
        equalize(&mut img);
        // Half the pixels at 50, half at 60: PIL maps 50 to 0 and 60 to 255.
        assert_eq!(img.pixels[0], 0);
        assert_eq!(img.pixels[3 * 1023], 255);
    }

    #[test]
    fn geometry_keeps_size_moves_content_and_fills_with_the_mean() {
        let base = ramp(16, 16);
        let mut t = base.clone();
        affine(&mut t, [1.0, 0.0, 4.0, 0.0, 1.0, 0.0]); // content moves left by 4
        assert_eq!((t.width, t.height), (16, 16));
        assert_eq!(&t.pixels[0..3], &base.pixels[12..15]);
        let last = (16 - 1) * 3;
        assert_eq!(&t.pixels[last..last + 3], &FILL);
        let mut r = base.clone();
        rotate(&mut r, 0.0);
        assert_eq!(r, base);
        let mut r = base.clone();
        rotate(&mut r, 90.0);
        // Counter-clockwise: the top-right corner comes to the top-left.
        assert_eq!(&r.pixels[0..3], &base.pixels[15 * 3..15 * 3 + 3]);
    }

    #[test]
    fn one_axis_shear_and_translate_equal_the_general_affine() {
        let base = ramp(37, 23);
        for m in [
            [1.0, 0.27, 0.0, 0.0, 1.0, 0.0],
            [1.0, -0.13, 0.0, 0.0, 1.0, 0.0],
            [1.0, 0.0, -5.3, 0.0, 1.0, 0.0],
            [1.0, 0.0, 0.0, 0.21, 1.0, 0.0],
            [1.0, 0.0, 0.0, 0.0, 1.0, 7.6],
        ] {
            let (mut fast, mut general) = (base.clone(), base.clone());
            affine(&mut fast, m);
            affine_general(&mut general, m);
            assert_eq!(fast, general, "{m:?}");
        }
    }

    #[test]
    fn rand_augment_is_deterministic_by_seed_and_changes_images() {
        let ra = RandAugment::parse("rand-m9-mstd0.5-inc1").unwrap();
        let base = ramp(32, 32);
        let run = |seed| {
            let mut img = base.clone();
            ra.apply(&mut img, &mut ChaCha8Rng::seed_from_u64(seed));
            img
        };
        assert_eq!(run(5), run(5));
        let changed = (0..20).filter(|s| run(*s) != base).count();
        // Each of 2 ops applies with p = 0.5: about 3 in 4 images change.
        assert!((10..=20).contains(&changed), "{changed}");
        let mut img = base.clone();
        color_jitter(&mut img, 0.4, &mut rng());
        assert_ne!(img, base);
        assert_eq!(
            (img.width, img.height, img.pixels.len()),
            (32, 32, 32 * 32 * 3)
        );
    }
}
