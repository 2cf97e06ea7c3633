//! `ride-trainer bench-step`: time full CPU/GPU training steps (forward,
//! loss, backward, AdamW) on random data, for side-by-side comparison with
//! PyTorch (`bench/cpu_train_step.sh`).

use crate::config::Config;
use crate::model::RideSwin;
use crate::optim::{clip_grad_norm, AdamW};
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
}

/// Time `steps` training steps after `warmup` untimed ones.
pub fn time_training_steps(
    cfg: &Config,
    device: Device,
    batch: i64,
    warmup: usize,
    steps: usize,
) -> anyhow::Result<StepTiming> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = RideSwin::new(&vs.root(), &cfg.swin_spec())
        .map_err(|m| anyhow::anyhow!("invalid model config: {m}"))?;
    let mut opt = AdamW::new(&vs, cfg.train.weight_decay, 1e-8, (0.9, 0.999));
    let params = opt.params();
    let s = cfg.data.img_size;
    let x = Tensor::randn([batch, 3, s, s], (Kind::Float, device));
    let y = Tensor::randint(cfg.model.num_classes, [batch], (Kind::Int64, device));
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t = Instant::now();
        opt.zero_grad();
        let out = model.forward(&x, true);
        let loss = out.mean().cross_entropy_for_logits(&y);
        loss.backward();
        clip_grad_norm(&params, cfg.train.clip_grad);
        opt.step(1e-4);
        let _ = loss.double_value(&[]);
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    Ok(StepTiming {
        step_ms: times,
        median_ms: median,
        images_per_second: batch as f64 / (median / 1e3),
    })
}
