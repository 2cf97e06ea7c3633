//! CIFAR-10/100 from the binary releases (`cifar-10-batches-bin/`,
//! `cifar-100-binary/`), with the long-tailed subsampling of the authors'
//! `imbalance_cifar.py`: class `i` keeps `int(n_max · (1/IF)^(i/(C−1)))`
//! images, `n_max` being the balanced per-class count (5000 or 500), chosen
//! from a seeded shuffle of the class.

use super::files::DatasetError;
use super::longtail::exponential_profile;
use super::{mix_seed, DataError, Dataset, RgbImage};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

const PIXELS: usize = 32 * 32 * 3;

/// Which CIFAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// 10 classes, 1-byte label per record.
    Cifar10,
    /// 100 classes, coarse + fine label bytes per record (fine used).
    Cifar100,
}

impl Variant {
    /// Number of classes.
    pub fn num_classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
}

/// CIFAR images in memory (planar R, G, B as in the files).
pub struct CifarDataset {
    planes: Vec<u8>,
    labels: Vec<usize>,
    num_classes: usize,
}

impl CifarDataset {
    /// Load the train or test split from `root` (the extracted archive's
    /// parent directory, or the archive directory itself).
    pub fn load(root: &Path, variant: Variant, train: bool) -> Result<Self, DatasetError> {
        let (sub, files, label_bytes): (&str, Vec<String>, usize) = match (variant, train) {
            (Variant::Cifar10, true) => (
                "cifar-10-batches-bin",
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
                1,
            ),
            (Variant::Cifar10, false) => ("cifar-10-batches-bin", vec!["test_batch.bin".into()], 1),
            (Variant::Cifar100, true) => ("cifar-100-binary", vec!["train.bin".into()], 2),
            (Variant::Cifar100, false) => ("cifar-100-binary", vec!["test.bin".into()], 2),
        };
        let dir = if root.join(sub).is_dir() {
            root.join(sub)
        } else {
            root.to_path_buf()
        };
        let record = label_bytes + PIXELS;
        let (mut planes, mut labels) = (Vec::new(), Vec::new());
        for f in files {
            let path = dir.join(&f);
            let bytes = std::fs::read(&path).map_err(|e| DatasetError::Unreadable {
                path: path.display().to_string(),
                message: format!(
                    "{e} (DATA.DATA_PATH should hold {sub}/ from the CIFAR binary release)"
                ),
            })?;
            if bytes.len() % record != 0 {
                return Err(DatasetError::Invalid(format!(
                    "{}: {} bytes is not a whole number of {record}-byte CIFAR records; the file is truncated or not the binary release",
                    path.display(),
                    bytes.len()
                )));
            }
            for r in bytes.chunks_exact(record) {
                let label = r[label_bytes - 1] as usize;
                if label >= variant.num_classes() {
                    return Err(DatasetError::Invalid(format!(
                        "{}: label {label} out of range for {} classes",
                        path.display(),
                        variant.num_classes()
                    )));
                }
                labels.push(label);
                planes.extend_from_slice(&r[label_bytes..]);
            }
        }
        Ok(Self {
            planes,
            labels,
            num_classes: variant.num_classes(),
        })
    }

    /// Build from raw parts: planar 32×32 images.
    #[cfg(test)]
    fn from_parts(planes: Vec<u8>, labels: Vec<usize>, num_classes: usize) -> Self {
        Self {
            planes,
            labels,
            num_classes,
        }
    }

    /// Keep the long-tailed subset for imbalance factor `imbalance` (1 keeps all).
    pub fn long_tailed(self, imbalance: f64, seed: u64) -> Self {
        if imbalance <= 1.0 {
            return self;
        }
        let n_max = self.labels.len() / self.num_classes.max(1);
        let keep = exponential_profile(self.num_classes, n_max, imbalance);
        let mut selected = Vec::new();
        for (c, &k) in keep.iter().enumerate() {
            let mut idx: Vec<usize> = (0..self.labels.len())
                .filter(|&i| self.labels[i] == c)
                .collect();
            idx.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(&[
                seed, 0xC1FA, c as u64,
            ])));
            idx.truncate(k);
            selected.extend(idx);
        }
        let mut planes = Vec::with_capacity(selected.len() * PIXELS);
        let mut labels = Vec::with_capacity(selected.len());
        for i in selected {
            planes.extend_from_slice(&self.planes[i * PIXELS..(i + 1) * PIXELS]);
            labels.push(self.labels[i]);
        }
        Self {
            planes,
            labels,
            num_classes: self.num_classes,
        }
    }
}

impl Dataset for CifarDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn label(&self, index: usize) -> usize {
        self.labels[index]
    }

    fn image(&self, index: usize) -> Result<RgbImage, DataError> {
        if index >= self.labels.len() {
            return Err(DataError::OutOfRange {
                index,
                len: self.labels.len(),
            });
        }
        let p = &self.planes[index * PIXELS..(index + 1) * PIXELS];
        let mut img = RgbImage::new(32, 32);
        for i in 0..1024 {
            for c in 0..3 {
                img.pixels[i * 3 + c] = p[c * 1024 + i];
            }
        }
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balanced(classes: usize, per_class: usize) -> CifarDataset {
        let n = classes * per_class;
        CifarDataset::from_parts(
            vec![0; n * PIXELS],
            (0..n).map(|i| i % classes).collect(),
            classes,
        )
    }

    /// Totals published for CIFAR-LT (e.g. LDAM-DRW, RIDE papers' set-ups):
    /// CIFAR-10-LT 12,406 / 13,996 / 20,431 and CIFAR-100-LT 10,847 / 12,608 /
    /// 19,573 training images for imbalance 100 / 50 / 10.
    #[test]
    fn long_tail_counts_match_the_authors_procedure() {
        for (classes, per_class, totals) in [
            (10, 5000, [12406, 13996, 20431]),
            (100, 500, [10847, 12608, 19573]),
        ] {
            for (imb, total) in [100.0, 50.0, 10.0].into_iter().zip(totals) {
                let lt = balanced(classes, per_class).long_tailed(imb, 0);
                assert_eq!(lt.len(), total, "CIFAR-{classes} IF {imb}");
                let counts = lt.class_counts();
                assert_eq!(counts[0], per_class);
                assert_eq!(counts[classes - 1], (per_class as f64 / imb) as usize);
            }
        }
        // Per class, CIFAR-10-LT IF 100 as listed in the literature.
        let lt = balanced(10, 5000).long_tailed(100.0, 0);
        assert_eq!(
            lt.class_counts(),
            vec![5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
        );
    }

    #[test]
    fn reads_binary_records_and_rejects_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cifar-100-binary");
        std::fs::create_dir_all(&sub).unwrap();
        let mut rec = vec![3u8, 42];
        rec.extend((0..PIXELS).map(|i| (i / 1024) as u8 * 100));
        std::fs::write(sub.join("test.bin"), [rec.clone(), rec].concat()).unwrap();
        let ds = CifarDataset::load(dir.path(), Variant::Cifar100, false).unwrap();
        assert_eq!((ds.len(), ds.label(1)), (2, 42));
        let img = ds.image(0).unwrap();
        assert_eq!(&img.pixels[0..3], &[0, 100, 200]);
        std::fs::write(sub.join("test.bin"), [0u8; 100]).unwrap();
        let e = CifarDataset::load(dir.path(), Variant::Cifar100, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a whole number"), "{e}");
        let e = CifarDataset::load(dir.path(), Variant::Cifar10, true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
    }
}
