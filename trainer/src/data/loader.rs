//! Epoch sampling and the multi-threaded, order-preserving batch loader.
//!
//! Every sample's augmentation RNG is seeded from `(seed, epoch, position)`,
//! so batches are identical whatever the number of worker threads, and a run
//! resumed at a sample offset sees the same data as an uninterrupted one.

use super::transforms::Transform;
use super::{mix_seed, Dataset};
use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One sample of a rank's epoch: the dataset item and its position in the
/// global epoch order. The position seeds the sample's augmentation, so a
/// sample is augmented the same whatever the world size or resume point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Index into the dataset.
    pub index: usize,
    /// Position in the (padded) global order of the epoch.
    pub position: u64,
}

/// The samples of one epoch for one rank, with the reference's
/// `DistributedSampler` semantics: shuffle with a per-epoch seed, pad by
/// repeating the start so every rank gets the same count, then take every
/// `world`-th sample starting at `rank`.
///
/// `consumed` global positions are skipped first (a resumed epoch): the rest of
/// the global order is padded and strided over the current world, so a run
/// resumed with a different world size continues at the same global position,
/// and with the same world size sees exactly the samples it would have.
pub fn epoch_order(
    len: usize,
    seed: u64,
    epoch: u64,
    rank: usize,
    world: usize,
    shuffle: bool,
    consumed: usize,
) -> Vec<Sample> {
    let mut perm: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[seed, 0x5A3F, epoch]));
        perm.shuffle(&mut rng);
    }
    stride(perm, rank, world, consumed)
}

/// Like [`epoch_order`], but the epoch's `labels.len()` draws are
/// class-balanced: each picks a class uniformly, then one of its samples
/// uniformly (with replacement), as the authors' `BalancedSampler` for the
/// router stage. Deterministic by `(seed, epoch)`, so resuming at `consumed`
/// sees the same draws.
pub fn balanced_epoch_order(
    labels: &[usize],
    seed: u64,
    epoch: u64,
    rank: usize,
    world: usize,
    consumed: usize,
) -> Vec<Sample> {
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &y) in labels.iter().enumerate() {
        by_class.entry(y).or_default().push(i);
    }
    let classes: Vec<&Vec<usize>> = by_class.values().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[seed, 0xBA1, epoch]));
    let perm: Vec<usize> = (0..labels.len())
        .map(|_| {
            let members = classes[rng.random_range(0..classes.len())];
            members[rng.random_range(0..members.len())]
        })
        .collect();
    stride(perm, rank, world, consumed)
}

/// Skip `consumed` positions of the global order `perm`, pad the rest to a
/// multiple of `world` by repeating its start, and take rank `rank`'s share.
fn stride(perm: Vec<usize>, rank: usize, world: usize, consumed: usize) -> Vec<Sample> {
    let world = world.max(1);
    let len = perm.len();
    let start = consumed.min(len);
    let remaining = len - start;
    let total = remaining.div_ceil(world) * world;
    (0..total)
        .skip(rank)
        .step_by(world)
        .map(|j| {
            let p = start + j;
            Sample {
                index: if p < len {
                    perm[p]
                } else {
                    perm[(p - len) % len]
                },
                position: p as u64,
            }
        })
        .collect()
}

/// Rank `rank`'s share of an evaluation set: every `world`-th item, no padding,
/// so the shares partition the set exactly.
pub fn eval_shard(len: usize, rank: usize, world: usize) -> Vec<Sample> {
    (rank..len)
        .step_by(world.max(1))
        .map(|i| Sample {
            index: i,
            position: i as u64,
        })
        .collect()
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
        order: Vec<Sample>,
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

/// Log a bad sample the first time it is seen in this process; it is
/// counted (`ride_skipped_samples_total`) every time.
fn warn_once(dataset: &dyn Dataset, index: usize, error: &str) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<Mutex<HashSet<(usize, usize)>>> = OnceLock::new();
    let key = (dataset as *const dyn Dataset as *const () as usize, index);
    let first = SEEN
        .get_or_init(Default::default)
        .lock()
        .map(|mut s| s.insert(key))
        .unwrap_or(true);
    if first {
        tracing::warn!(
            "warning: skipping {}: {error}; further failures of it are only counted",
            dataset.describe(index)
        );
    }
}

fn assemble(
    dataset: &dyn Dataset,
    transform: &Transform,
    order: &[Sample],
    positions: std::ops::Range<usize>,
    opts: &LoaderOptions,
) -> Batch {
    let size = transform.size();
    let per = 3 * size * size;
    let mut images = Vec::with_capacity(positions.len() * per);
    let mut labels = Vec::with_capacity(positions.len());
    let mut skipped = 0;
    for pos in positions {
        let Sample { index, position } = order[pos];
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[opts.seed, opts.epoch, position]));
        let start = images.len();
        images.resize(start + per, 0.0);
        let result = dataset
            .source(index)
            .map_err(|e| e.to_string())
            .and_then(|src| transform.apply_source(&src, &mut rng, &mut images[start..]));
        match result {
            Ok(()) => labels.push(dataset.label(index) as i64),
            Err(e) => {
                images.truncate(start);
                warn_once(dataset, index, &e);
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

    fn indices(v: &[Sample]) -> Vec<usize> {
        v.iter().map(|s| s.index).collect()
    }

    #[test]
    fn balanced_order_draws_classes_evenly_and_resumes_in_place() {
        // 900 of class 0, 90 of class 1, 10 of class 2.
        let labels: Vec<usize> = (0..1000)
            .map(|i| {
                if i < 900 {
                    0
                } else if i < 990 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let order = balanced_epoch_order(&labels, 7, 3, 0, 1, 0);
        assert_eq!(order.len(), 1000);
        let mut per_class = [0usize; 3];
        for s in &order {
            per_class[labels[s.index]] += 1;
        }
        // Each class about a third (binomial sd ≈ 15).
        assert!(
            per_class.iter().all(|&n| (233..=433).contains(&n)),
            "{per_class:?}"
        );
        assert_ne!(order, balanced_epoch_order(&labels, 7, 4, 0, 1, 0));
        let resumed = balanced_epoch_order(&labels, 7, 3, 0, 1, 600);
        assert_eq!(resumed[..], order[600..]);
        let ranks: Vec<Vec<Sample>> = (0..2)
            .map(|r| balanced_epoch_order(&labels, 7, 3, r, 2, 0))
            .collect();
        assert_eq!(ranks[1][0], order[1]);
    }

    #[test]
    fn epoch_order_is_a_padded_partition() {
        let a = indices(&epoch_order(10, 1, 0, 0, 3, true, 0));
        let b = indices(&epoch_order(10, 1, 0, 1, 3, true, 0));
        let c = indices(&epoch_order(10, 1, 0, 2, 3, true, 0));
        assert_eq!((a.len(), b.len(), c.len()), (4, 4, 4));
        let mut all: Vec<usize> = a.iter().chain(&b).chain(&c).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(
            epoch_order(10, 1, 0, 0, 1, true, 0),
            epoch_order(10, 1, 1, 0, 1, true, 0)
        );
        assert_eq!(
            indices(&epoch_order(5, 1, 0, 0, 1, false, 0)),
            vec![0, 1, 2, 3, 4]
        );
        // Padding repeats the start of the shuffled order, as DistributedSampler does.
        let one = indices(&epoch_order(10, 1, 0, 0, 1, true, 0));
        assert_eq!((a[3], b[3], c[3]), (one[9], one[0], one[1]));
    }

    #[test]
    fn resuming_at_a_global_position_continues_the_same_order() {
        let (len, world) = (23, 2);
        let full: Vec<Vec<Sample>> = (0..world)
            .map(|r| epoch_order(len, 4, 2, r, world, true, 0))
            .collect();
        // Same world size: after 3 batches of 2 per rank, the rest is the tail.
        let consumed = 3 * 2 * world;
        for (r, order) in full.iter().enumerate() {
            assert_eq!(epoch_order(len, 4, 2, r, world, true, consumed), order[6..]);
        }
        // Other world size: the remaining global positions are covered exactly once
        // (plus padding), with the same sample at the same position.
        let single = epoch_order(len, 4, 2, 0, 1, true, 0);
        let mut seen: Vec<Sample> = (0..3)
            .flat_map(|r| epoch_order(len, 4, 2, r, 3, true, consumed))
            .filter(|s| (s.position as usize) < len)
            .collect();
        seen.sort_by_key(|s| s.position);
        assert_eq!(seen, single[consumed..]);
        let shards: usize = (0..3).map(|r| eval_shard(10, r, 3).len()).sum();
        assert_eq!(shards, 10);
    }

    #[test]
    fn batches_do_not_depend_on_worker_count_and_resume_at_offset() {
        let ds = dataset();
        let order = epoch_order(ds.len(), 3, 1, 0, 1, true, 0);
        let t = Transform::train_basic(16, 0.25);
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
        let order = epoch_order(ds.len(), 3, 1, 0, 1, true, 0);
        let t = Transform::Eval {
            size: 16,
            center_crop: false,
            interpolation: crate::data::transforms::Interpolation::Bicubic,
        };
        let mut loader = BatchLoader::new(ds, t, order, 0, opts(2));
        assert!(loader.next().is_some());
        drop(loader);
    }
}
