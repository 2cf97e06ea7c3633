//! Epoch sampling and the multi-threaded, order-preserving batch loader.
//!
//! Every sample's augmentation RNG is seeded from `(seed, epoch, position)`,
//! so batches are identical whatever the number of worker threads, and a run
//! resumed at a sample offset sees the same data as an uninterrupted one.

use super::transforms::Transform;
use super::{mix_seed, Dataset};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The sample order of one epoch for one rank, with the reference's
/// `DistributedSampler` semantics: shuffle with a per-epoch seed, pad by
/// repeating the start so every rank gets the same count, then take every
/// `world`-th sample starting at `rank`.
pub fn epoch_order(
    len: usize,
    seed: u64,
    epoch: u64,
    rank: usize,
    world: usize,
    shuffle: bool,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[seed, 0x5A3F, epoch]));
        order.shuffle(&mut rng);
    }
    let per_rank = len.div_ceil(world.max(1));
    let total = per_rank * world.max(1);
    let mut i = 0;
    while order.len() < total && len > 0 {
        order.push(order[i % len]);
        i += 1;
    }
    order.into_iter().skip(rank).step_by(world.max(1)).collect()
}

/// One assembled batch.
#[derive(Debug)]
pub struct Batch {
    /// `[n, 3, size, size]` normalised images, flattened.
    pub images: Vec<f32>,
    /// Labels of the images that decoded.
    pub labels: Vec<i64>,
    /// Image side.
    pub size: usize,
    /// Samples that failed to decode and were skipped.
    pub skipped: usize,
}

impl Batch {
    /// Number of images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether every sample of the batch was skipped.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images as a `[n,3,size,size]` CPU tensor.
    pub fn image_tensor(&self) -> tch::Tensor {
        let n = self.labels.len() as i64;
        let s = self.size as i64;
        tch::Tensor::from_slice(&self.images).view([n, 3, s, s])
    }

    /// The labels as an int64 CPU tensor.
    pub fn label_tensor(&self) -> tch::Tensor {
        tch::Tensor::from_slice(&self.labels)
    }
}

/// Loader settings.
#[derive(Clone, Debug)]
pub struct LoaderOptions {
    /// Samples per batch.
    pub batch_size: usize,
    /// Worker threads.
    pub workers: usize,
    /// Batches that may be ready ahead of the consumer.
    pub prefetch: usize,
    /// Drop a final incomplete batch.
    pub drop_last: bool,
    /// Seed for per-sample augmentation.
    pub seed: u64,
    /// Epoch number (part of the per-sample seed).
    pub epoch: u64,
}

/// An iterator over batches, produced by worker threads in order.
pub struct BatchLoader {
    rx: Option<Receiver<(usize, Batch)>>,
    pending: BTreeMap<usize, Batch>,
    next: usize,
    num_batches: usize,
    consumed: Arc<AtomicUsize>,
    workers: Vec<JoinHandle<()>>,
}

impl BatchLoader {
    /// Start loading `order[start_batch * batch_size..]` from `dataset`.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        transform: Transform,
        order: Vec<usize>,
        start_batch: usize,
        opts: LoaderOptions,
    ) -> Self {
        let bs = opts.batch_size.max(1);
        let num_batches = if opts.drop_last {
            order.len() / bs
        } else {
            order.len().div_ceil(bs)
        };
        let order = Arc::new(order);
        let (tx, rx) = sync_channel(opts.prefetch.max(1));
        let claim = Arc::new(AtomicUsize::new(start_batch));
        let consumed = Arc::new(AtomicUsize::new(start_batch));
        let ahead = opts.prefetch.max(1) + opts.workers.max(1);
        let workers = (0..opts.workers.max(1))
            .map(|_| {
                let (tx, claim, consumed, order, dataset, transform, opts) = (
                    tx.clone(),
                    claim.clone(),
                    consumed.clone(),
                    order.clone(),
                    dataset.clone(),
                    transform.clone(),
                    opts.clone(),
                );
                std::thread::spawn(move || loop {
                    let b = claim.fetch_add(1, Ordering::SeqCst);
                    if b >= num_batches {
                        break;
                    }
                    // Bound memory: never run more than `ahead` batches past the consumer.
                    while b >= consumed.load(Ordering::SeqCst) + ahead {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let positions = b * bs..((b + 1) * bs).min(order.len());
                    let batch = assemble(dataset.as_ref(), &transform, &order, positions, &opts);
                    if tx.send((b, batch)).is_err() {
                        break;
                    }
                })
            })
            .collect();
        Self {
            rx: Some(rx),
            pending: BTreeMap::new(),
            next: start_batch,
            num_batches,
            consumed,
            workers,
        }
    }

    /// Total batches in the epoch (including any skipped by `start_batch`).
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }
}

fn assemble(
    dataset: &dyn Dataset,
    transform: &Transform,
    order: &[usize],
    positions: std::ops::Range<usize>,
    opts: &LoaderOptions,
) -> Batch {
    let size = transform.size();
    let per = 3 * size * size;
    let mut images = Vec::with_capacity(positions.len() * per);
    let mut labels = Vec::with_capacity(positions.len());
    let mut skipped = 0;
    for pos in positions {
        let index = order[pos];
        match dataset.image(index) {
            Ok(img) => {
                let mut rng =
                    ChaCha8Rng::seed_from_u64(mix_seed(&[opts.seed, opts.epoch, pos as u64]));
                let start = images.len();
                images.resize(start + per, 0.0);
                transform.apply(&img, &mut rng, &mut images[start..]);
                labels.push(dataset.label(index) as i64);
            }
            Err(e) => {
                eprintln!("warning: skipping sample {index}: {e}");
                skipped += 1;
            }
        }
    }
    Batch {
        images,
        labels,
        size,
        skipped,
    }
}

impl Iterator for BatchLoader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.num_batches {
            return None;
        }
        loop {
            if let Some(batch) = self.pending.remove(&self.next) {
                self.next += 1;
                self.consumed.store(self.next, Ordering::SeqCst);
                return Some(batch);
            }
            let (b, batch) = self.rx.as_ref()?.recv().ok()?;
            self.pending.insert(b, batch);
        }
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the channel and releasing the throttle lets workers exit.
        self.rx = None;
        self.consumed.store(usize::MAX / 2, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{SyntheticDataset, SyntheticSpec, SyntheticSplit};

    fn dataset() -> Arc<dyn Dataset> {
        let spec = SyntheticSpec {
            num_classes: 5,
            max_per_class: 20,
            imbalance: 10.0,
            test_per_class: 2,
            image_size: 16,
            seed: 1,
        };
        Arc::new(SyntheticDataset::new(spec, SyntheticSplit::Train))
    }

    fn opts(workers: usize) -> LoaderOptions {
        LoaderOptions {
            batch_size: 7,
            workers,
            prefetch: 2,
            drop_last: false,
            seed: 3,
            epoch: 1,
        }
    }

    #[test]
    fn epoch_order_is_a_padded_partition() {
        let a = epoch_order(10, 1, 0, 0, 3, true);
        let b = epoch_order(10, 1, 0, 1, 3, true);
        let c = epoch_order(10, 1, 0, 2, 3, true);
        assert_eq!((a.len(), b.len(), c.len()), (4, 4, 4));
        let mut all: Vec<usize> = a.iter().chain(&b).chain(&c).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(
            epoch_order(10, 1, 0, 0, 1, true),
            epoch_order(10, 1, 1, 0, 1, true)
        );
        assert_eq!(epoch_order(5, 1, 0, 0, 1, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn batches_do_not_depend_on_worker_count_and_resume_at_offset() {
        let ds = dataset();
        let order = epoch_order(ds.len(), 3, 1, 0, 1, true);
        let t = Transform::Train {
            size: 16,
            erase_prob: 0.25,
            flip_prob: 0.5,
        };
        let one: Vec<Batch> =
            BatchLoader::new(ds.clone(), t.clone(), order.clone(), 0, opts(1)).collect();
        let three: Vec<Batch> =
            BatchLoader::new(ds.clone(), t.clone(), order.clone(), 0, opts(3)).collect();
        assert_eq!(one.len(), ds.len().div_ceil(7));
        for (a, b) in one.iter().zip(&three) {
            assert_eq!(a.images, b.images);
            assert_eq!(a.labels, b.labels);
        }
        let resumed: Vec<Batch> = BatchLoader::new(ds, t, order, 2, opts(2)).collect();
        assert_eq!(resumed.len(), one.len() - 2);
        assert_eq!(resumed[0].images, one[2].images);
    }

    #[test]
    fn dropping_a_loader_early_stops_workers() {
        let ds = dataset();
        let order = epoch_order(ds.len(), 3, 1, 0, 1, true);
        let t = Transform::Eval {
            size: 16,
            center_crop: false,
        };
        let mut loader = BatchLoader::new(ds, t, order, 0, opts(2));
        assert!(loader.next().is_some());
        drop(loader);
    }
}
