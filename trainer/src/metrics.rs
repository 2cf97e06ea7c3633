//! Prometheus metrics (`ride_*`) and the HTTP endpoint that serves them.

use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntGauge,
    Opts, Registry, TextEncoder,
};
use std::sync::{Arc, Mutex, OnceLock};

extern "C" {
    /// `csrc/cuda_memory.cpp`: allocated, reserved, peak allocated, peak
    /// reserved bytes of CUDA device `device` into `out[0..4]`; 0 on success.
    fn ride_cuda_memory_stats(device: std::os::raw::c_int, out: *mut i64) -> std::os::raw::c_int;
}

/// What the CUDA caching allocator holds on one device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaMemory {
    /// In tensors now.
    pub allocated: i64,
    /// Reserved from the driver now (allocated plus cached).
    pub reserved: i64,
    /// Highest `allocated` so far.
    pub peak_allocated: i64,
    /// Highest `reserved` so far.
    pub peak_reserved: i64,
}

/// The allocator's statistics for CUDA device `device`, or None when CUDA
/// is not in use in this process (no GPU, or no CUDA tensor yet).
pub fn cuda_memory(device: usize) -> Option<CudaMemory> {
    let device = std::os::raw::c_int::try_from(device).ok()?;
    let mut out = [0i64; 4];
    // SAFETY: the shim writes exactly four i64 into `out` and catches every
    // C++ exception.
    let rc = unsafe { ride_cuda_memory_stats(device, out.as_mut_ptr()) };
    (rc == 0).then_some(CudaMemory {
        allocated: out[0],
        reserved: out[1],
        peak_allocated: out[2],
        peak_reserved: out[3],
    })
}

/// The GPU memory gauges of a rank that trains on CUDA device `device`.
struct CudaGauges {
    device: usize,
    allocated: IntGauge,
    reserved: IntGauge,
    peak_allocated: IntGauge,
    peak_reserved: IntGauge,
}

/// The trainer's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Optimiser steps taken.
    pub step: IntGauge,
    /// Current epoch (0-based).
    pub epoch: IntGauge,
    /// Training loss of the last step.
    pub loss: Gauge,
    /// Learning rate of the last step.
    pub lr: Gauge,
    /// Images this rank trained on; `sum(rate(...))` over the ranks is the
    /// job's throughput, and survives restarts unlike a since-start average.
    pub images_trained: IntCounter,
    /// Seconds per optimiser step (all micro-steps of an accumulation).
    pub step_duration: Histogram,
    /// Seconds each iteration waited for its batch from the data loader.
    pub data_wait: Histogram,
    /// Seconds per gradient all-reduce (only with several ranks).
    pub allreduce_duration: Histogram,
    /// Unix time the last optimiser step finished.
    pub last_step_timestamp: Gauge,
    /// Fraction of the run's optimiser steps done (0 to 1).
    pub progress_ratio: Gauge,
    /// Estimated seconds until the last step, from the recent step time.
    pub eta_seconds: Gauge,
    /// Unix time the last checkpoint became durable.
    pub checkpoint_timestamp: Gauge,
    /// Global gradient norm before clipping.
    pub grad_norm: Gauge,
    /// Latest evaluation top-1 by split (`overall`, `many`, `medium`, `few`).
    pub eval_top1: GaugeVec,
    /// Latest evaluation top-5.
    pub eval_top5: Gauge,
    /// Latest per-expert top-1.
    pub eval_expert_top1: GaugeVec,
    /// Samples skipped because they failed to decode.
    pub skipped_samples: IntCounter,
    /// Duration of the last checkpoint save (serialise, checksum, upload).
    pub checkpoint_save_seconds: Gauge,
    /// Size of the last checkpoint.
    pub checkpoint_bytes: IntGauge,
    /// Epoch of the last checkpoint saved.
    pub checkpoint_epoch: IntGauge,
    /// Checkpoint saves that failed (the previous checkpoint stayed current).
    pub checkpoint_failures: IntCounter,
    /// Ranks in the job.
    pub world_size: IntGauge,
    /// The JSON progress report served at `/progress`.
    pub progress: Arc<Mutex<ride_contract::Progress>>,
    /// Set once the rank trains on a GPU; read at every scrape.
    cuda: Arc<OnceLock<CudaGauges>>,
}

impl Metrics {
    /// Register all metrics in a fresh registry, with a fresh progress report.
    pub fn new() -> Self {
        Self::with_progress(Default::default())
    }

    /// Register all metrics in a fresh registry; `/progress` serves `progress`.
    pub fn with_progress(progress: Arc<Mutex<ride_contract::Progress>>) -> Self {
        let registry = Registry::new();
        let g = |name: &str, help: &str| {
            let m = Gauge::with_opts(Opts::new(name, help)).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let ig = |name: &str, help: &str| {
            let m = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let gv = |name: &str, help: &str, label: &str| {
            let m = GaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            let m = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        // 5 ms to 82 s: a tiny CPU model's step up to a large model's
        // accumulated step; 0.5 ms to 16 s for the waits.
        let step_buckets = exponential_buckets(0.005, 2.0, 15).expect("valid buckets");
        let wait_buckets = exponential_buckets(0.0005, 2.0, 16).expect("valid buckets");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let counter = |name: &str, help: &str| {
            let m = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        Self {
            step: ig("ride_step", "Optimiser steps taken"),
            epoch: ig("ride_epoch", "Current epoch (0-based)"),
            loss: g("ride_loss", "Training loss of the last iteration"),
            lr: g("ride_learning_rate", "Learning rate of the last iteration"),
            images_trained: counter(
                "ride_images_trained_total",
                "Images this rank trained on (sum the rate over ranks for throughput)",
            ),
            step_duration: hist(
                "ride_step_duration_seconds",
                "Seconds per optimiser step, accumulation micro-steps included",
                step_buckets.clone(),
            ),
            data_wait: hist(
                "ride_data_wait_seconds",
                "Seconds each iteration waited for its batch from the data loader",
                wait_buckets,
            ),
            allreduce_duration: hist(
                "ride_allreduce_duration_seconds",
                "Seconds per optimiser step spent waiting for the gradient all-reduce after backward (with overlap, the part backward did not hide)",
                step_buckets,
            ),
            last_step_timestamp: g(
                "ride_last_step_timestamp_seconds",
                "Unix time the last optimiser step finished",
            ),
            progress_ratio: g(
                "ride_progress_ratio",
                "Fraction of the run's optimiser steps done (0 to 1)",
            ),
            eta_seconds: g(
                "ride_eta_seconds",
                "Estimated seconds until the run's last step, from the recent step time",
            ),
            checkpoint_timestamp: g(
                "ride_last_checkpoint_timestamp_seconds",
                "Unix time the last checkpoint became durable",
            ),
            grad_norm: g("ride_grad_norm", "Global gradient L2 norm before clipping"),
            eval_top1: gv(
                "ride_eval_top1_percent",
                "Latest evaluation top-1 accuracy by long-tail split",
                "split",
            ),
            eval_top5: g("ride_eval_top5_percent", "Latest evaluation top-5 accuracy"),
            eval_expert_top1: gv(
                "ride_eval_expert_top1_percent",
                "Latest evaluation top-1 of each expert alone",
                "expert",
            ),
            skipped_samples: counter(
                "ride_skipped_samples_total",
                "Samples skipped because they could not be decoded",
            ),
            checkpoint_save_seconds: g(
                "ride_checkpoint_save_seconds",
                "Duration of the last checkpoint save (serialise, checksum, upload)",
            ),
            checkpoint_bytes: ig("ride_checkpoint_bytes", "Size of the last checkpoint"),
            checkpoint_epoch: ig(
                "ride_checkpoint_epoch",
                "Epoch (0-based) of the last checkpoint saved",
            ),
            checkpoint_failures: counter(
                "ride_checkpoint_failures_total",
                "Checkpoint saves that failed; the previous checkpoint stayed current",
            ),
            world_size: ig("ride_world_size", "Ranks in the training job"),
            progress,
            registry,
            cuda: Arc::new(OnceLock::new()),
        }
    }

    /// Export the CUDA caching allocator's memory on `device`
    /// (`ride_gpu_memory_*`), read at every scrape so the training loop pays
    /// nothing. Only for ranks on a GPU: CPU runs do not export these.
    pub fn watch_cuda_memory(&self, device: usize) {
        self.cuda.get_or_init(|| {
            let gauge = |name: &str, help: &str| {
                let m = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric");
                self.registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric");
                m
            };
            CudaGauges {
                device,
                allocated: gauge(
                    "ride_gpu_memory_allocated_bytes",
                    "Bytes of GPU memory in tensors (CUDA caching allocator)",
                ),
                reserved: gauge(
                    "ride_gpu_memory_reserved_bytes",
                    "Bytes of GPU memory reserved by the CUDA caching allocator (in tensors or cached)",
                ),
                peak_allocated: gauge(
                    "ride_gpu_memory_peak_allocated_bytes",
                    "Highest ride_gpu_memory_allocated_bytes since the process started",
                ),
                peak_reserved: gauge(
                    "ride_gpu_memory_peak_reserved_bytes",
                    "Highest ride_gpu_memory_reserved_bytes since the process started",
                ),
            }
        });
    }

    fn refresh_cuda_memory(&self) {
        if let Some(g) = self.cuda.get() {
            if let Some(m) = cuda_memory(g.device) {
                g.allocated.set(m.allocated);
                g.reserved.set(m.reserved);
                g.peak_allocated.set(m.peak_allocated);
                g.peak_reserved.set(m.peak_reserved);
            }
        }
    }

    /// Record an evaluation report.
    pub fn record_eval(&self, r: &crate::eval::EvalReport) {
        self.eval_top1.with_label_values(&["overall"]).set(r.top1);
        for (name, v) in [("many", r.many), ("medium", r.medium), ("few", r.few)] {
            if let Some(v) = v {
                self.eval_top1.with_label_values(&[name]).set(v);
            }
        }
        self.eval_top5.set(r.top5);
        for (e, a) in r.per_expert_top1.iter().enumerate() {
            self.eval_expert_top1
                .with_label_values(&[&e.to_string()])
                .set(*a);
        }
    }

    /// A durable checkpoint, for the progress report.
    pub fn record_checkpoint(&self, uri: &str, m: &crate::checkpoint::Manifest) {
        let saved_unix = chrono::DateTime::parse_from_rfc3339(&m.saved_at)
            .map(|t| t.timestamp_millis() as f64 / 1e3)
            .unwrap_or_else(|_| chrono::Utc::now().timestamp_millis() as f64 / 1e3);
        self.checkpoint_timestamp.set(saved_unix);
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        p.checkpoint = Some(ride_contract::CheckpointProgress {
            uri: uri.to_string(),
            epoch: m.epoch,
            step: m.step,
            saved_at: m.saved_at.clone(),
            saved_unix: Some(saved_unix),
        });
    }

    /// The progress report as JSON.
    pub fn progress_json(&self) -> String {
        let p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_string(&*p).unwrap_or_default()
    }

    /// The Prometheus text exposition of all metrics.
    pub fn render(&self) -> String {
        self.refresh_cuda_memory();
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Serve `/metrics` (Prometheus text) and `/progress` (JSON, see
    /// `ride_contract::Progress`) on `addr` from a background thread;
    /// returns the bound address.
    pub fn serve(&self, addr: &str) -> anyhow::Result<std::net::SocketAddr> {
        let server = tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e} (use --metrics-addr to pick another address, or 'off')"))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("metrics server has no IP address"))?;
        let me = Arc::new(self.clone());
        std::thread::spawn(move || {
            for req in server.incoming_requests() {
                let (body, content_type): (String, &[u8]) = if req.url().starts_with("/metrics") {
                    (me.render(), b"text/plain; version=0.0.4")
                } else if req.url().starts_with(ride_contract::PROGRESS_PATH) {
                    (me.progress_json(), b"application/json")
                } else {
                    ("see /metrics and /progress\n".into(), b"text/plain")
                };
                let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type)
                    .expect("static header");
                let _ = req.respond(tiny_http::Response::from_string(body).with_header(header));
            }
        });
        Ok(bound)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn cuda_memory_is_none_without_cuda_tensors_and_never_crashes() {
        // On a machine with a GPU the statistics appear once a CUDA tensor
        // exists (scripts/gpu-check.sh); here the shim must say "not in use".
        if tch::Cuda::is_available() {
            let _t = tch::Tensor::zeros([1024], (tch::Kind::Float, tch::Device::Cuda(0)));
            let m = cuda_memory(0).expect("statistics with a CUDA tensor alive");
            assert!(m.allocated >= 4096 && m.reserved >= m.allocated, "{m:?}");
        } else {
            assert_eq!(cuda_memory(0), None);
            assert_eq!(cuda_memory(usize::MAX), None);
        }
        // Only a rank that watches a GPU exports the gauges.
        let m = Metrics::new();
        assert!(!m.render().contains("ride_gpu_memory"));
        m.watch_cuda_memory(0);
        assert!(m
            .render()
            .contains("# TYPE ride_gpu_memory_reserved_bytes gauge"));
    }

    #[test]
    fn serves_prometheus_text_over_http() {
        let m = Metrics::new();
        m.step.set(42);
        m.eval_top1.with_label_values(&["few"]).set(12.5);
        let addr = m.serve("127.0.0.1:0").unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.contains("ride_step 42"), "{body}");
        assert!(
            body.contains("ride_eval_top1_percent{split=\"few\"} 12.5"),
            "{body}"
        );
        m.progress.lock().unwrap().step = 7;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /progress HTTP/1.0\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let json = resp.split("\r\n\r\n").nth(1).unwrap();
        let p = ride_contract::Progress::parse(json.as_bytes()).unwrap();
        assert_eq!(p.step, 7);
        assert!(resp.contains("application/json"), "{resp}");
    }
}
