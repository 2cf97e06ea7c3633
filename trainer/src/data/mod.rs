//! Datasets, transforms, sampling and the multi-threaded batch loader.
//!
//! A [`Dataset`] yields decoded RGB images and labels by index; the loader
//! turns an epoch's index order into normalised `[B,3,H,W]` batches on worker
//! threads. Real formats (list files, CIFAR, image folders) implement the
//! same trait.

pub mod augment;
pub mod cifar;
pub mod decode;
pub mod files;
pub mod jpeg_region;
pub mod loader;
pub mod longtail;
pub mod mixup;
pub mod select;
pub mod stats;
pub mod synthetic;
pub mod transforms;

pub use decode::ImageSource;

use thiserror::Error;

/// A decoded image: `height * width * 3` bytes, row-major RGB.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Interleaved RGB bytes, row by row.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// A black image of the given size.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![0; width * height * 3],
        }
    }

    /// A test image: red rises left to right, green top to bottom, blue is constant.
    #[cfg(test)]
    pub(crate) fn ramp(width: usize, height: usize, blue: u8) -> Self {
        let mut img = Self::new(width, height);
        for y in 0..height {
            for x in 0..width {
                let o = (y * width + x) * 3;
                img.pixels[o] = (x * 255 / (width - 1)) as u8;
                img.pixels[o + 1] = (y * 255 / (height - 1)) as u8;
                img.pixels[o + 2] = blue;
            }
        }
        img
    }
}

/// Errors from reading one sample; the loader skips and counts them.
#[derive(Debug, Error)]
pub enum DataError {
    /// The sample index is past the end of the dataset.
    #[error("sample {index} out of range (dataset has {len})")]
    OutOfRange {
        /// Requested index.
        index: usize,
        /// Dataset length.
        len: usize,
    },
    /// The sample could not be read or decoded.
    #[error("cannot decode sample {index}: {reason}")]
    Decode {
        /// Requested index.
        index: usize,
        /// What went wrong.
        reason: String,
    },
}

/// An indexable labelled image dataset.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether the dataset is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes.
    fn num_classes(&self) -> usize;
    /// Label of sample `index`, without decoding the image.
    fn label(&self, index: usize) -> usize;
    /// Decode sample `index`.
    fn image(&self, index: usize) -> Result<RgbImage, DataError>;
    /// Sample `index` as the transform should receive it: file-backed datasets
    /// return the encoded bytes so the transform can decode at reduced size.
    fn source(&self, index: usize) -> Result<ImageSource, DataError> {
        self.image(index).map(ImageSource::Decoded)
    }
    /// How to name sample `index` in messages (file-backed datasets: its path).
    fn describe(&self, index: usize) -> String {
        format!("sample {index}")
    }
    /// Samples per class, from labels only.
    fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for i in 0..self.len() {
            counts[self.label(i)] += 1;
        }
        counts
    }
}

/// A 64-bit mix of several integers (SplitMix64 finaliser), used to derive
/// independent, reproducible per-sample RNG seeds from (seed, epoch, index).
pub fn mix_seed(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        h ^= p
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_seed_separates_neighbours() {
        let a = mix_seed(&[1, 2, 3]);
        let b = mix_seed(&[1, 2, 4]);
        let c = mix_seed(&[1, 3, 2]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, mix_seed(&[1, 2, 3]));
    }
}
