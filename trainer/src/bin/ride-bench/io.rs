//! Benchmarks of the distributed and storage paths, for side-by-side runs
//! with PyTorch (`bench/allreduce.sh`, `bench/checkpoint_s3.sh` and its twins):
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

/// Checkpoint save against raw uploads of the same bytes.
#[derive(Debug, Serialize)]
pub struct CheckpointTiming {
    /// Bytes of the two tensor files.
    pub bytes: u64,
    /// Median seconds of `CheckpointStore::save` (stream: serialise, SHA-256
    /// and a parallel multipart upload at once; then meta, manifest, latest).
    pub save_s: f64,
    /// Median seconds of the save before streaming, for comparison: each
    /// file serialised in memory, hashed, then uploaded in one request.
    pub previous_save_s: f64,
    /// Median seconds to upload the same bytes, already in memory, one
    /// request per file.
    pub raw_put_s: f64,
    /// Median seconds to upload the same bytes, already in memory, as
    /// multipart uploads with the save's part size and parts in flight.
    pub raw_multipart_s: f64,
    /// Median seconds the training thread is blocked (host copy) with the background writer.
    pub blocking_s: f64,
    /// Most resident memory a save added above the host copy (MiB).
    pub save_peak_extra_mib: f64,
    /// The host copy's size (MiB): the checkpoint held in memory.
    pub checkpoint_mib: f64,
}

/// Resident set size of this process, bytes.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Run `f`, sampling the resident set every few milliseconds; returns its
/// result and the peak above what was resident when it started.
fn peak_extra_rss<T>(f: impl FnOnce() -> T) -> (T, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let base = rss_bytes();
    let (done, peak) = (AtomicBool::new(false), AtomicU64::new(base));
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        out
    });
    (out, peak.load(Ordering::Relaxed).saturating_sub(base))
}

fn bench_meta(epoch: u64) -> CheckpointMeta {
    CheckpointMeta {
        epoch,
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
    }
}

/// Time checkpoint saves of `model`/`optimizer` tensors to `uri`, against
/// raw uploads of the same bytes through the same client, round after round.
pub fn checkpoint_throughput(
    uri: &str,
    model: &[(String, tch::Tensor)],
    optimizer: &[(String, tch::Tensor)],
    rounds: usize,
) -> anyhow::Result<CheckpointTiming> {
    use ride_trainer::checkpoint::stream::{PARTS_IN_FLIGHT, PART_BYTES};
    let store = CheckpointStore::open(uri)?;
    // The references: the same bytes as plain objects, straight to the object store.
    let raw_uri = format!("{}/raw", uri.trim_end_matches('/'));
    let (raw, raw_prefix) = ride_trainer::checkpoint::location::open(&raw_uri)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Shared buffers, so neither reference copies the bytes it sends.
    let files = [
        bytes::Bytes::from(tensors_to_bytes(model)?),
        bytes::Bytes::from(tensors_to_bytes(optimizer)?),
    ];
    let bytes: u64 = files.iter().map(|f| f.len() as u64).sum();
    let (mut save, mut previous, mut put, mut multipart, mut blocking) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut extra, mut held) = (0u64, 0u64);
    for r in 0..rounds {
        let meta = bench_meta(2 * r as u64);
        let before = rss_bytes();
        let t = Instant::now();
        let snap = ride_trainer::checkpoint::Snapshot::capture(model, optimizer, meta.clone());
        blocking.push(t.elapsed().as_secs_f64());
        held = held.max(rss_bytes().saturating_sub(before));
        let t = Instant::now();
        let (saved, added) = peak_extra_rss(|| store.save(&snap.model, &snap.optimizer, &meta));
        saved?;
        save.push(t.elapsed().as_secs_f64());
        extra = extra.max(added);
        drop(snap);
        // The save before streaming: in-memory image, hash, one request.
        let meta = bench_meta(2 * r as u64 + 1);
        let t = Instant::now();
        let image = vec![
            ("model.safetensors", tensors_to_bytes(model)?),
            ("optimizer.safetensors", tensors_to_bytes(optimizer)?),
            ("meta.json", serde_json::to_vec_pretty(&meta)?),
        ];
        store.save_files(&meta, image)?;
        previous.push(t.elapsed().as_secs_f64());
        let key = |kind: &str, i: usize| {
            raw_prefix
                .child(format!("round{r}"))
                .child(format!("{kind}{i}"))
        };
        let t = Instant::now();
        for (i, f) in files.iter().enumerate() {
            rt.block_on(raw.put(&key("put", i), PutPayload::from(f.clone())))?;
        }
        put.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for (i, f) in files.iter().enumerate() {
            let upload = rt.block_on(raw.put_multipart(&key("multipart", i)))?;
            let _in_runtime = rt.enter();
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            for start in (0..f.len()).step_by(PART_BYTES) {
                rt.block_on(w.wait_for_capacity(PARTS_IN_FLIGHT))?;
                w.put(f.slice(start..f.len().min(start + PART_BYTES)));
            }
            rt.block_on(w.finish())?;
        }
        multipart.push(t.elapsed().as_secs_f64());
    }
    Ok(CheckpointTiming {
        bytes,
        save_s: median(save),
        previous_save_s: median(previous),
        raw_put_s: median(put),
        raw_multipart_s: median(multipart),
        blocking_s: median(blocking),
        save_peak_extra_mib: extra as f64 / (1 << 20) as f64,
        checkpoint_mib: held as f64 / (1 << 20) as f64,
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
