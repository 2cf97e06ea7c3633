//! Benchmarks of the distributed and storage paths, for side-by-side runs
//! with PyTorch (`bench/allreduce.sh`, `bench/checkpoint_s3.sh`):
//! ring all-reduce bandwidth on the TCP backend, and checkpoint save
//! throughput against a raw upload of the same bytes.

use object_store::PutPayload;
use ride_trainer::checkpoint::{tensors_to_bytes, CheckpointMeta, CheckpointStore};
use ride_trainer::dist::{Collective, WorldInfo};
use serde::Serialize;
use std::time::Instant;

/// All-reduce timing for one message size.
#[derive(Debug, Serialize)]
pub struct AllReduceTiming {
    /// Ranks.
    pub world: usize,
    /// Message size in bytes (float32 elements × 4).
    pub bytes: usize,
    /// Median seconds per all-reduce.
    pub median_s: f64,
    /// Algorithm bandwidth, GB/s: bytes / time.
    pub algbw_gbps: f64,
    /// Bus bandwidth, GB/s: algbw × 2(W−1)/W (comparable across world sizes, as nccl-tests).
    pub busbw_gbps: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Time `iters` all-reduces of each size on this rank (all ranks call it).
pub fn all_reduce_bandwidth(
    comm: &dyn Collective,
    sizes_bytes: &[usize],
    warmup: usize,
    iters: usize,
) -> Result<Vec<AllReduceTiming>, ride_trainer::dist::DistError> {
    let w = comm.world_size();
    let mut out = Vec::new();
    for &bytes in sizes_bytes {
        let mut buf = vec![1.0f32; bytes / 4];
        let mut times = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            comm.barrier()?;
            let t = Instant::now();
            comm.all_reduce_sum_f32(&mut buf)?;
            if i >= warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let median_s = median(times);
        let algbw = bytes as f64 / median_s / 1e9;
        out.push(AllReduceTiming {
            world: w,
            bytes,
            median_s,
            algbw_gbps: algbw,
            busbw_gbps: algbw * 2.0 * (w as f64 - 1.0) / w as f64,
        });
    }
    Ok(out)
}

/// Join the job from the environment and run [`all_reduce_bandwidth`].
pub fn all_reduce_bandwidth_from_env(
    sizes_bytes: &[usize],
    warmup: usize,
    iters: usize,
) -> anyhow::Result<(usize, Vec<AllReduceTiming>)> {
    let world = WorldInfo::from_env()?;
    let comm = ride_trainer::dist::init(&world)?;
    Ok((
        comm.rank(),
        all_reduce_bandwidth(comm.as_ref(), sizes_bytes, warmup, iters)?,
    ))
}

/// Checkpoint save against raw upload of the same bytes.
#[derive(Debug, Serialize)]
pub struct CheckpointTiming {
    /// Bytes of the checkpoint files.
    pub bytes: u64,
    /// Median seconds of `CheckpointStore::save` (serialise, SHA-256, upload, manifest, latest).
    pub save_s: f64,
    /// Median seconds to upload the same serialised bytes as plain objects.
    pub raw_upload_s: f64,
    /// Median seconds the training thread is blocked (host copy) with the background writer.
    pub blocking_s: f64,
    /// Save throughput, MB/s.
    pub save_mbps: f64,
    /// Raw upload throughput, MB/s.
    pub raw_mbps: f64,
}

/// Time checkpoint saves of `model`/`optimizer` tensors to `uri`, against raw uploads.
pub fn checkpoint_throughput(
    uri: &str,
    model: &[(String, tch::Tensor)],
    optimizer: &[(String, tch::Tensor)],
    rounds: usize,
) -> anyhow::Result<CheckpointTiming> {
    let store = CheckpointStore::open(uri)?;
    // The reference: the same bytes as plain objects, straight to the object store.
    let raw_uri = format!("{}/raw", uri.trim_end_matches('/'));
    let (raw, raw_prefix) = ride_trainer::checkpoint::location::open(&raw_uri)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let files = [tensors_to_bytes(model)?, tensors_to_bytes(optimizer)?];
    let bytes: u64 = files.iter().map(|f| f.len() as u64).sum();
    let (mut save, mut upload, mut blocking) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let meta = CheckpointMeta {
            epoch: r as u64,
            iterations_done: None,
            samples_done: 0,
            world_size: 1,
            accumulation: None,
            step: 0,
            micro_step: 0,
            next_lr: 0.0,
            max_accuracy: 0.0,
            scaler: None,
            eval: None,
            config: String::new(),
            saved_at: String::new(),
        };
        let t = Instant::now();
        let snap = ride_trainer::checkpoint::Snapshot::capture(model, optimizer, meta.clone());
        blocking.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        store.save(&snap.model, &snap.optimizer, &meta)?;
        save.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for (i, f) in files.iter().enumerate() {
            let key = raw_prefix
                .child(format!("round{r}"))
                .child(format!("file{i}"));
            rt.block_on(raw.put(&key, PutPayload::from(f.clone())))?;
        }
        upload.push(t.elapsed().as_secs_f64());
    }
    let (save_s, raw_upload_s) = (median(save), median(upload));
    Ok(CheckpointTiming {
        bytes,
        save_s,
        raw_upload_s,
        blocking_s: median(blocking),
        save_mbps: bytes as f64 / save_s / 1e6,
        raw_mbps: bytes as f64 / raw_upload_s / 1e6,
    })
}

/// Train-transform throughput on image files.
#[derive(Debug, Serialize)]
pub struct TransformTiming {
    /// Images per pass.
    pub images: usize,
    /// Median seconds per pass over all images (read, decode, transform).
    pub median_s: f64,
    /// Images per second on one thread.
    pub images_per_second: f64,
}

/// Apply `transform` to every file with the seeds of the first timed pass
/// and return the outputs one after another (`3 * size * size` floats each).
pub fn transform_outputs(
    files: &[std::path::PathBuf],
    transform: &ride_trainer::data::transforms::Transform,
) -> anyhow::Result<Vec<f32>> {
    let per = 3 * transform.size() * transform.size();
    let mut out = vec![0f32; per * files.len()];
    for (i, (f, chunk)) in files.iter().zip(out.chunks_exact_mut(per)).enumerate() {
        transform_file(transform, f, 0, i, chunk)?;
    }
    Ok(out)
}

/// Read, decode and transform image `image` of pass `round`, as a loader
/// worker does, with that pass's seed for the image.
fn transform_file(
    transform: &ride_trainer::data::transforms::Transform,
    file: &std::path::Path,
    round: usize,
    image: usize,
    out: &mut [f32],
) -> anyhow::Result<()> {
    use rand::SeedableRng;
    let src = ride_trainer::data::ImageSource::Encoded(std::fs::read(file)?);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(ride_trainer::data::mix_seed(&[
        round as u64,
        image as u64,
    ]));
    transform
        .apply_source(&src, &mut rng, out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

/// Time `rounds` single-threaded passes of `transform` over `files`
/// (file read, decode, augmentation, normalisation), as one data-loader
/// worker does.
pub fn transform_throughput(
    files: &[std::path::PathBuf],
    transform: &ride_trainer::data::transforms::Transform,
    rounds: usize,
) -> anyhow::Result<TransformTiming> {
    let per = 3 * transform.size() * transform.size();
    let mut out = vec![0f32; per];
    let mut times = Vec::new();
    for r in 0..rounds.max(1) {
        let t = Instant::now();
        for (i, f) in files.iter().enumerate() {
            transform_file(transform, f, r, i, &mut out)?;
        }
        times.push(t.elapsed().as_secs_f64());
    }
    let median_s = median(times);
    Ok(TransformTiming {
        images: files.len(),
        median_s,
        images_per_second: files.len() as f64 / median_s,
    })
}
