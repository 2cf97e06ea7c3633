//! Evaluation on the test set, sharded across ranks, and the forward-only
//! throughput measurement; also the two runs that only do one of them.

use super::report::record_eval_progress;
use super::setup::Trainer;
use super::RunSummary;
use crate::config::Config;
use crate::data::loader::{eval_shard, BatchLoader, LoaderOptions};
use crate::data::Dataset;
use crate::dist::Collective;
use crate::eval::{EvalAccumulator, EvalReport, RoutingCost};
use crate::model::router::{route_all, Router};
use crate::model::Network;
use anyhow::Result;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Evaluate `model` on `dataset` (no augmentation). Each rank evaluates
/// every `world`-th image and the counts are merged, so every rank returns
/// the report of the whole set. With a `router` the predictions are the
/// routed ones at `MODEL.ROUTER.THRESHOLD`, and the report adds experts
/// used, GFLOPs and the threshold sweep; every expert runs on every image so
/// that the sweep costs one pass (the routed predictions equal those of
/// running only the chosen experts, `RideSwin::forward_routed`).
pub fn evaluate(
    model: &Network,
    router: Option<&Router>,
    dataset: &Arc<dyn Dataset>,
    cfg: &Config,
    train_counts: &[usize],
    device: Device,
    comm: &dyn Collective,
) -> Result<EvalReport> {
    let transform = crate::data::select::eval_transform(cfg)?;
    let order = eval_shard(dataset.len(), comm.rank(), comm.world_size());
    let opts = LoaderOptions {
        batch_size: cfg.data.batch_size,
        workers: cfg.data.num_workers.max(1),
        prefetch: 2,
        drop_last: false,
        seed: cfg.seed,
        epoch: 0,
    };
    let (classes, experts) = (
        cfg.model.num_classes as usize,
        cfg.model.num_experts as usize,
    );
    let threshold = cfg.model.router.threshold;
    let empty = || {
        let acc = EvalAccumulator::new(classes, experts);
        match router {
            Some(r) => {
                let (shared, per_expert) = model.flops_split(cfg.data.img_size);
                acc.with_routing(
                    threshold,
                    RoutingCost {
                        shared,
                        per_expert,
                        router_step: r.step_flops(),
                    },
                )
            }
            None => acc,
        }
    };
    let mut acc = empty();
    tch::no_grad(|| {
        for batch in BatchLoader::new(dataset.clone(), transform, order, 0, opts) {
            if batch.is_empty() {
                continue;
            }
            let x = batch.image_tensor().to_device(device);
            let y = batch.label_tensor().to_device(device);
            match router {
                Some(r) => {
                    let (out, features) = model.forward_with_features(&x, false);
                    let help = r.help_logits(&out.experts, &features);
                    let routed = route_all(&out.experts, &help, threshold);
                    acc.add(&routed.outputs, &out.stacked(), &y);
                    acc.add_routing(&out.experts, &help, &y);
                }
                None => {
                    let out = model.forward(&x, false);
                    acc.add(&out.mean(), &out.stacked(), &y);
                }
            }
        }
    });
    if comm.world_size() > 1 {
        let parts = comm.all_gather_bytes(&serde_json::to_vec(&acc)?)?;
        let mut merged = empty();
        for p in parts {
            merged.merge(&serde_json::from_slice(&p)?);
        }
        acc = merged;
    }
    Ok(acc.report(train_counts))
}

/// Forward-only images/s on a random batch (the reference's `--throughput`).
pub fn throughput(model: &Network, cfg: &Config, device: Device) -> f64 {
    let s = cfg.data.img_size;
    let bs = cfg.data.batch_size as i64;
    let x = Tensor::randn([bs, 3, s, s], (Kind::Float, device));
    tch::no_grad(|| {
        for _ in 0..5 {
            let _ = model.forward(&x, false);
        }
        let t = Instant::now();
        let iters = 10;
        for _ in 0..iters {
            let _ = model
                .forward(&x, false)
                .mean()
                .sum(Kind::Float)
                .double_value(&[]);
        }
        (bs * iters) as f64 / t.elapsed().as_secs_f64()
    })
}

impl Trainer<'_> {
    /// Evaluate on the test set and record the result in the metrics.
    pub(super) fn evaluate_test_set(&self) -> Result<EvalReport> {
        let report = evaluate(
            &self.model,
            self.router.as_ref(),
            &self.data.test,
            self.cfg,
            &self.train_counts,
            self.device,
            self.comm.as_ref(),
        )?;
        self.metrics.record_eval(&report);
        Ok(report)
    }

    /// `EVAL_MODE`: evaluate the loaded weights and stop.
    pub fn evaluate_only(mut self) -> Result<RunSummary> {
        let report = self.evaluate_test_set()?;
        let epoch = self.state.start_epoch.saturating_sub(1);
        record_eval_progress(&self.options.report, epoch, &report);
        self.state.last_eval = Some(report);
        self.summary(0, 0.0, 0.0)
    }

    /// `THROUGHPUT_MODE`: time the forward pass and stop.
    pub fn throughput_only(mut self) -> Result<RunSummary> {
        let ips = throughput(&self.model, self.cfg, self.device);
        tracing::info!(
            images_per_second = ips,
            "throughput: {ips:.1} images/s (batch {}, forward only)",
            self.cfg.data.batch_size
        );
        // Nothing was evaluated in this run: no table, no artifacts.
        self.state.last_eval = None;
        self.summary(0, 0.0, ips)
    }
}
