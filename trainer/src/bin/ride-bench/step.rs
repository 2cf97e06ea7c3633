//! `ride-bench step`: time full CPU/GPU training steps (forward,
//! loss, backward, AdamW) on random data, for side-by-side comparison with
//! PyTorch (`bench/cpu_train_step.sh`).

use ride_trainer::amp::{autocast, AmpDtype, GradScaler};
use ride_trainer::config::Config;
use ride_trainer::model::RideSwin;
use ride_trainer::optim::{clip_grad_norm, AdamW};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Timing of a run of training steps.
#[derive(Debug, serde::Serialize)]
pub struct StepTiming {
    /// Milliseconds per step, each timed step.
    pub step_ms: Vec<f64>,
    /// Median step time.
    pub median_ms: f64,
    /// Images per second at the median.
    pub images_per_second: f64,
    /// Median of the forward + loss + backward part.
    pub forward_backward_ms: f64,
    /// Median of the clipping + AdamW part.
    pub optimizer_ms: f64,
    /// Peak bytes the CUDA caching allocator held in tensors (None on CPU).
    pub peak_memory_bytes: Option<i64>,
    /// Trainable parameters.
    pub params: i64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

/// What the timed step uses beyond the config.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    /// libtorch's fused AdamW kernel instead of the op-by-op update.
    pub fused_adamw: bool,
    /// Autocast type (fp16 with dynamic loss scaling, as torch's AMP), or fp32.
    pub amp: Option<AmpDtype>,
}

/// Wait for the device's queued work, so wall time covers it.
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Time `steps` training steps after `warmup` untimed ones.
pub fn time_training_steps(
    cfg: &Config,
    device: Device,
    batch: i64,
    warmup: usize,
    steps: usize,
    options: StepOptions,
) -> anyhow::Result<StepTiming> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = RideSwin::new(&vs.root(), &cfg.swin_spec())
        .map_err(|m| anyhow::anyhow!("invalid model config: {m}"))?;
    let mut opt =
        AdamW::new(&vs, cfg.train.weight_decay, 1e-8, (0.9, 0.999)).with_fused(options.fused_adamw);
    let params = opt.params();
    let mut scaler = (options.amp == Some(AmpDtype::Float16)).then(|| GradScaler::new(device));
    let s = cfg.data.img_size;
    let x = Tensor::randn([batch, 3, s, s], (Kind::Float, device));
    let y = Tensor::randint(cfg.model.num_classes, [batch], (Kind::Int64, device));
    let (mut times, mut fb, mut op) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + steps.max(1) {
        sync(device);
        let t = Instant::now();
        opt.zero_grad();
        let out = match options.amp {
            Some(dtype) => autocast(device, dtype, || model.forward(&x, true))?,
            None => model.forward(&x, true),
        };
        let loss = out.mean().to_kind(Kind::Float).cross_entropy_for_logits(&y);
        match &scaler {
            Some(sc) => sc.scale(&loss).backward(),
            None => loss.backward(),
        }
        let _ = loss.double_value(&[]);
        let t_fb = t.elapsed();
        match scaler.as_mut() {
            Some(sc) => {
                let (overflow, found_inf) = sc.unscale(&params);
                if !overflow {
                    let _ = clip_grad_norm(&params, cfg.train.clip_grad)?;
                    opt.step(1e-4)?;
                }
                sc.update(&found_inf);
            }
            None => {
                let _ = clip_grad_norm(&params, cfg.train.clip_grad)?;
                opt.step(1e-4)?;
            }
        }
        sync(device);
        let total = t.elapsed();
        if i >= warmup {
            times.push(total.as_secs_f64() * 1e3);
            fb.push(t_fb.as_secs_f64() * 1e3);
            op.push((total - t_fb).as_secs_f64() * 1e3);
        }
    }
    let m = median(&times);
    Ok(StepTiming {
        median_ms: m,
        images_per_second: batch as f64 / (m / 1e3),
        forward_backward_ms: median(&fb),
        optimizer_ms: median(&op),
        step_ms: times,
        peak_memory_bytes: match device {
            Device::Cuda(i) => ride_trainer::metrics::cuda_memory(i).map(|m| m.peak_allocated),
            _ => None,
        },
        params: ride_trainer::model::ride_swin::parameter_count(&vs),
    })
}
