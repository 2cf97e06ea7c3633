//! A deterministic synthetic long-tailed image dataset.
//!
//! Every image is rendered on demand from `(seed, split, index)`, so the
//! dataset needs no storage and is identical on every machine. Each class is
//! a "texture family": an oriented sinusoidal grating (orientation and spatial
//! frequency), a colour, and a blob with a class-specific shape. Classes are
//! laid out so that neighbours share orientation or colour, and every sample
//! gets random phase, jitter, occluding clutter and pixel noise: a small
//! network learns the head classes quickly but has to work for the tail.

use super::longtail::exponential_profile;
use super::{mix_seed, DataError, Dataset, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::f32::consts::PI;

/// Parameters of the synthetic dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSpec {
    /// Number of classes.
    pub num_classes: usize,
    /// Training images of the largest class.
    pub max_per_class: usize,
    /// Ratio of the largest to the smallest class.
    pub imbalance: f64,
    /// Test images per class (the test split is balanced).
    pub test_per_class: usize,
    /// Side of the square images.
    pub image_size: usize,
    /// Seed for class prototypes and samples.
    pub seed: u64,
}

/// Which split of the synthetic dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticSplit {
    /// Long-tailed training split.
    Train,
    /// Balanced test split.
    Test,
}

#[derive(Clone, Debug)]
struct ClassStyle {
    angle: f32,
    freq: f32,
    color: [f32; 3],
    blob_color: [f32; 3],
    blob_shape: u8,
}

/// The synthetic dataset for one split.
pub struct SyntheticDataset {
    spec: SyntheticSpec,
    split: SyntheticSplit,
    labels: Vec<u32>,
    styles: Vec<ClassStyle>,
}

impl SyntheticDataset {
    /// Build the split; labels are laid out class by class.
    pub fn new(spec: SyntheticSpec, split: SyntheticSplit) -> Self {
        let counts = match split {
            SyntheticSplit::Train => {
                exponential_profile(spec.num_classes, spec.max_per_class, spec.imbalance)
            }
            SyntheticSplit::Test => vec![spec.test_per_class; spec.num_classes],
        };
        let labels = counts
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
            .collect();
        let styles = (0..spec.num_classes)
            .map(|c| class_style(spec.seed, c, spec.num_classes))
            .collect();
        Self {
            spec,
            split,
            labels,
            styles,
        }
    }

    /// The parameters this dataset was built from.
    pub fn spec(&self) -> &SyntheticSpec {
        &self.spec
    }
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = (h.rem_euclid(1.0)) * 6.0;
    let i = h6.floor() as i32;
    let f = h6 - i as f32;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Class prototypes: orientation cycles over 6 values and hue over a
/// coprime number of values, so each class shares one attribute with others
/// and only the combination (plus frequency and blob) identifies it.
fn class_style(seed: u64, class: usize, num_classes: usize) -> ClassStyle {
    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[seed, 0xC1A55, class as u64]));
    let angle = (class % 6) as f32 * PI / 6.0 + rng.random_range(-0.05..0.05);
    let hue_steps = 7.max(num_classes / 3);
    let hue = (class % hue_steps) as f32 / hue_steps as f32;
    let freq = 2.0 + ((class / 6) % 4) as f32 * 1.5 + rng.random_range(-0.2..0.2);
    let color = hsv_to_rgb(hue, 0.55, 0.9);
    let blob_color = hsv_to_rgb(hue + 0.5 + rng.random_range(-0.1..0.1), 0.8, 0.8);
    ClassStyle {
        angle,
        freq,
        color,
        blob_color,
        blob_shape: (class % 3) as u8,
    }
}

fn render(style: &ClassStyle, size: usize, rng: &mut ChaCha8Rng) -> RgbImage {
    let noise = Normal::new(0.0f32, 0.12).expect("valid normal");
    let angle = style.angle + rng.random_range(-0.25..0.25);
    let freq = style.freq * rng.random_range(0.8..1.25);
    let phase = rng.random_range(0.0..2.0 * PI);
    let (ca, sa) = (angle.cos(), angle.sin());
    let brightness = rng.random_range(0.6..1.1);
    let bg: [f32; 3] = [
        rng.random_range(0.0..0.4),
        rng.random_range(0.0..0.4),
        rng.random_range(0.0..0.4),
    ];
    let blob_r = rng.random_range(0.12..0.25);
    let (bx, by) = (rng.random_range(0.25..0.75), rng.random_range(0.25..0.75));
    // A distractor blob of a random colour occludes part of the texture.
    let (dx, dy, dr) = (
        rng.random_range(0.0..1.0),
        rng.random_range(0.0..1.0),
        rng.random_range(0.05..0.2),
    );
    let distractor = hsv_to_rgb(rng.random_range(0.0..1.0), 0.7, 0.7);
    let mut img = RgbImage::new(size, size);
    let inv = 1.0 / size as f32;
    for y in 0..size {
        for x in 0..size {
            let (u, v) = (x as f32 * inv, y as f32 * inv);
            let t = (u * ca + v * sa) * freq * 2.0 * PI + phase;
            let g = 0.5 + 0.5 * t.sin();
            let mut px = [0f32; 3];
            for (ch, p) in px.iter_mut().enumerate() {
                *p = bg[ch] + g * style.color[ch] * brightness;
            }
            let (ox, oy) = (u - bx, v - by);
            let inside = match style.blob_shape {
                0 => ox * ox + oy * oy < blob_r * blob_r,
                1 => ox.abs() < blob_r && oy.abs() < blob_r * 0.6,
                _ => ox.abs() + oy.abs() < blob_r,
            };
            if inside {
                px = style.blob_color;
            }
            let (ex, ey) = (u - dx, v - dy);
            if ex * ex + ey * ey < dr * dr {
                px = distractor;
            }
            let o = (y * size + x) * 3;
            for (dst, &p) in img.pixels[o..o + 3].iter_mut().zip(&px) {
                let val = (p + noise.sample(rng)).clamp(0.0, 1.0);
                *dst = (val * 255.0).round() as u8;
            }
        }
    }
    img
}

impl Dataset for SyntheticDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn num_classes(&self) -> usize {
        self.spec.num_classes
    }

    fn label(&self, index: usize) -> usize {
        self.labels[index] as usize
    }

    fn image(&self, index: usize) -> Result<RgbImage, DataError> {
        let label = *self.labels.get(index).ok_or(DataError::OutOfRange {
            index,
            len: self.labels.len(),
        })? as usize;
        let split_tag = match self.split {
            SyntheticSplit::Train => 1,
            SyntheticSplit::Test => 2,
        };
        let mut rng =
            ChaCha8Rng::seed_from_u64(mix_seed(&[self.spec.seed, split_tag, index as u64]));
        Ok(render(&self.styles[label], self.spec.image_size, &mut rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SyntheticSpec {
        SyntheticSpec {
            num_classes: 10,
            max_per_class: 200,
            imbalance: 100.0,
            test_per_class: 5,
            image_size: 16,
            seed: 7,
        }
    }

    #[test]
    fn train_split_is_long_tailed_and_test_is_balanced() {
        let train = SyntheticDataset::new(spec(), SyntheticSplit::Train);
        let counts = train.class_counts();
        assert_eq!(counts[0], 200);
        assert_eq!(counts[9], 2);
        let test = SyntheticDataset::new(spec(), SyntheticSplit::Test);
        assert_eq!(test.class_counts(), vec![5; 10]);
    }

    #[test]
    fn images_are_deterministic_and_distinct() {
        let a = SyntheticDataset::new(spec(), SyntheticSplit::Train);
        let b = SyntheticDataset::new(spec(), SyntheticSplit::Train);
        let ia = a.image(3).unwrap();
        assert_eq!(ia, b.image(3).unwrap());
        assert_ne!(ia, a.image(4).unwrap());
        assert_eq!(ia.pixels.len(), 16 * 16 * 3);
        let test = SyntheticDataset::new(spec(), SyntheticSplit::Test);
        assert_ne!(ia, test.image(3).unwrap());
    }

    #[test]
    fn out_of_range_is_an_error() {
        let d = SyntheticDataset::new(spec(), SyntheticSplit::Test);
        assert!(matches!(d.image(50), Err(DataError::OutOfRange { .. })));
    }
}
