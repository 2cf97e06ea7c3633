//! The backbone `MODEL.TYPE` names: Swin with RIDE's branches, or the
//! authors' CIFAR ResNet-32. Training, evaluation, routing and prediction
//! see only this.

use super::checkpointing::TrainForward;
use super::resnet_cifar::RideResNet;
use super::ride_swin::{ModelOutput, RideSwin};
use super::router::{route_dynamic, Routed, Router};
use crate::config::Config;
use std::collections::BTreeMap;
use tch::{nn, Tensor};

/// A RIDE model of either backbone.
#[derive(Debug)]
pub enum Network {
    /// `MODEL.TYPE: swin`.
    Swin(RideSwin),
    /// `MODEL.TYPE: resnet32`.
    ResNet(RideResNet),
}

impl Network {
    /// Build the configured backbone's variables under `root`.
    pub fn new(root: &nn::Path, cfg: &Config) -> Result<Self, String> {
        match cfg.model.kind.as_str() {
            "resnet32" => RideResNet::new(root, &cfg.resnet_spec()).map(Network::ResNet),
            _ => RideSwin::new(root, &cfg.swin_spec()).map(Network::Swin),
        }
    }

    /// Every expert's outputs.
    pub fn forward(&self, images: &Tensor, train: bool) -> ModelOutput {
        self.forward_with_features(images, train).0
    }

    /// Every expert's outputs and the pooled features its head saw.
    pub fn forward_with_features(
        &self,
        images: &Tensor,
        train: bool,
    ) -> (ModelOutput, Vec<Tensor>) {
        match self {
            Network::Swin(m) => m.forward_with_features(images, train),
            Network::ResNet(m) => {
                let trunk = m.trunk(images, train);
                let (experts, feats) = (0..m.spec().num_experts as usize)
                    .map(|e| m.expert_from_trunk(e, &trunk, train))
                    .unzip();
                (ModelOutput { experts }, feats)
            }
        }
    }

    /// The training-mode forward pass (Swin may checkpoint activations).
    pub fn forward_train(&self, images: &Tensor) -> TrainForward<'_> {
        match self {
            Network::Swin(m) => m.forward_train(images),
            Network::ResNet(_) => TrainForward::without_tape(self.forward(images, true)),
        }
    }

    /// Evaluation with dynamic routing: only the experts each image needs run.
    pub fn forward_routed(&self, router: &Router, images: &Tensor, threshold: f64) -> Routed {
        match self {
            Network::Swin(m) => m.forward_routed(router, images, threshold),
            Network::ResNet(m) => route_dynamic(
                router,
                &m.trunk(images, false),
                |e, x| m.expert_from_trunk(e, x, false),
                threshold,
            ),
        }
    }

    /// Width of the pooled features fed to the heads.
    pub fn num_features(&self) -> i64 {
        match self {
            Network::Swin(m) => m.num_features(),
            Network::ResNet(m) => m.num_features(),
        }
    }

    /// Buffers the reference keeps in its state dict that are not variables
    /// here (Swin's position indices and masks; none for the ResNet, whose
    /// batch-norm statistics are variables).
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        match self {
            Network::Swin(m) => m.buffers(),
            Network::ResNet(_) => Vec::new(),
        }
    }

    /// Multiply-accumulates per image with every expert.
    pub fn flops(&self, img_size: i64) -> i64 {
        match self {
            Network::Swin(m) => m.flops(),
            Network::ResNet(m) => {
                let (shared, per_expert) = m.flops_split(img_size);
                shared + m.spec().num_experts * per_expert
            }
        }
    }

    /// Multiply-accumulates per image: (shared part, one expert).
    pub fn flops_split(&self, img_size: i64) -> (i64, i64) {
        match self {
            Network::Swin(m) => m.flops_split(),
            Network::ResNet(m) => m.flops_split(img_size),
        }
    }

    /// A weights file in the authors' names, in ours: the ResNet's
    /// `backbone.` prefix goes, `num_batches_tracked` counters (which
    /// nothing here reads) are dropped, and a single-expert model's stages
    /// become expert 0's; Swin names are already ours.
    pub fn from_reference_names(
        &self,
        weights: BTreeMap<String, Tensor>,
    ) -> BTreeMap<String, Tensor> {
        match self {
            Network::Swin(_) => weights,
            Network::ResNet(m) => {
                // Their single-expert models are LDAM-DRW's plain ResNet-s:
                // `layer2`, `layer3`, `linear` for our expert 0.
                let single = m.spec().num_experts == 1;
                weights
                    .into_iter()
                    .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
                    .map(|(k, v)| {
                        let k = k.strip_prefix("backbone.").unwrap_or(&k).to_string();
                        let k = match (single, k.split_once('.')) {
                            (true, Some(("layer2", rest))) => format!("layer2s.0.{rest}"),
                            (true, Some(("layer3", rest))) => format!("layer3s.0.{rest}"),
                            (true, Some(("linear", rest))) => format!("linears.0.{rest}"),
                            _ => k,
                        };
                        (k, v)
                    })
                    .collect()
            }
        }
    }
}
