//! Trainer configuration with the reference's keys and defaults.
//!
//! A YAML file is merged over [`Config::default`] the way yacs does it
//! (`BASE` files first, unknown keys are errors), then `--opts KEY VALUE`
//! pairs, then the dedicated command-line flags. See `docs/config.md`.

pub mod cli;
pub mod load;

use serde::{Deserialize, Serialize};

pub use load::{load_config, ConfigError, Overrides};

/// The whole configuration tree.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct Config {
    /// Files merged before this one (paths relative to it).
    pub base: Vec<String>,
    /// Data settings.
    pub data: DataConfig,
    /// Model settings.
    pub model: ModelConfig,
    /// Training settings.
    pub train: TrainConfig,
    /// Augmentation settings.
    pub aug: AugConfig,
    /// Evaluation settings.
    pub test: TestConfig,
    /// Mixed precision: "" or "O0" off; "O1"/"O2" on, in [`Config::amp_dtype`].
    pub amp_opt_level: String,
    /// The autocast type with mixed precision (extension): `float16` (with
    /// dynamic loss scaling; CUDA only) or `bfloat16` (no loss scaling; CUDA
    /// and CPU).
    pub amp_dtype: String,
    /// Output directory or object-store URI.
    pub output: String,
    /// Run tag (the output goes to `OUTPUT/MODEL.NAME/TAG`).
    pub tag: String,
    /// Save a checkpoint every this many epochs (and at the end).
    pub save_freq: u64,
    /// Checkpoint retention (extension).
    pub checkpoint: CheckpointConfig,
    /// Log every this many iterations.
    pub print_freq: u64,
    /// Seed (per rank: `SEED + rank`).
    pub seed: u64,
    /// Evaluate only.
    pub eval_mode: bool,
    /// Measure throughput only.
    pub throughput_mode: bool,
    /// Local rank (set by launchers).
    pub local_rank: i64,
}

/// `DATA.*`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct DataConfig {
    /// Per-process batch size.
    pub batch_size: usize,
    /// Dataset root.
    pub data_path: String,
    /// `imagenet-lt`, `imagenet` or `synthetic`.
    pub dataset: String,
    /// Input side.
    pub img_size: i64,
    /// Resampling for resizes.
    pub interpolation: String,
    /// Read from zip archives (reference option; not supported yet).
    pub zip_mode: bool,
    /// Dataset caching mode of the reference (`no`, `full`, `part`).
    pub cache_mode: String,
    /// Pin host memory for CUDA transfers.
    pub pin_memory: bool,
    /// Loader worker threads.
    pub num_workers: usize,
    /// The synthetic dataset (used when `DATASET: synthetic`); an extension.
    pub synthetic: SyntheticConfig,
    /// Imbalance factor for `cifar10-lt` / `cifar100-lt` (extension; 1 keeps all).
    pub imb_factor: f64,
}

/// `CHECKPOINT.*` (extension): which checkpoints to keep.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct CheckpointConfig {
    /// Complete checkpoints to keep, newest first (0 keeps all).
    pub keep_last: usize,
    /// Also keep the end-of-epoch checkpoint with the best top-1.
    pub keep_best: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            keep_last: 3,
            keep_best: true,
        }
    }
}

/// `DATA.SYNTHETIC.*` (extension): the deterministic long-tailed generator.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct SyntheticConfig {
    /// Number of classes.
    pub num_classes: usize,
    /// Training images of the head class.
    pub max_per_class: usize,
    /// Head-to-tail size ratio.
    pub imbalance_factor: f64,
    /// Balanced test images per class.
    pub test_per_class: usize,
    /// Generator seed.
    pub seed: u64,
}

/// `MODEL.*`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct ModelConfig {
    /// `swin`, or `resnet32` (the authors' CIFAR ResNet-32 with RIDE's
    /// experts; extension). `swin_mlp` is not supported.
    #[serde(rename = "TYPE")]
    pub kind: String,
    /// Model name (part of the output path).
    pub name: String,
    /// Checkpoint to resume from.
    pub resume: String,
    /// Classes (set from the dataset).
    pub num_classes: i64,
    /// Dropout.
    pub drop_rate: f64,
    /// Stochastic depth.
    pub drop_path_rate: f64,
    /// Label smoothing of mixup targets.
    pub label_smoothing: f64,
    /// Cosine heads.
    pub use_normed_linear: bool,
    /// Experts.
    pub num_experts: i64,
    /// First stage copied per expert.
    pub branching_start: i64,
    /// Plain Swin layout (`layers.i.*`, `head.*`); single expert only.
    pub force_no_branches: bool,
    /// Full width in expert stages.
    pub force_original_feature_dim: bool,
    /// Swin hyper-parameters.
    pub swin: SwinConfig,
    /// Swin-MLP hyper-parameters (accepted for compatibility; unused).
    pub swin_mlp: SwinMlpConfig,
    /// The expert assignment module (extension; the authors' `_ea` models).
    pub router: RouterConfig,
    /// ResNet-32 settings (`MODEL.TYPE: resnet32`; extension).
    pub resnet: ResNetConfig,
}

/// `MODEL.RESNET.*` (extension): the authors' `ResNet32Model` arguments.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct ResNetConfig {
    /// Experts' stages at 24 and 48 channels instead of 32 and 64.
    pub reduce_dimension: bool,
    /// Width of the experts' second stage (0: from REDUCE_DIMENSION).
    pub layer2_output_dim: i64,
    /// Width of the experts' third stage (0: from REDUCE_DIMENSION).
    pub layer3_output_dim: i64,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            reduce_dimension: true,
            layer2_output_dim: 0,
            layer3_output_dim: 0,
        }
    }
}

/// `MODEL.ROUTER.*` (extension): RIDE's expert assignment module, with the
/// authors' `arch.args` names. It exists when `TRAIN.STAGE` is `router`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct RouterConfig {
    /// Top running-mean logits the router reads (`top_choices_num`; the
    /// authors use 30 on CIFAR-100-LT, 50 on ImageNet-LT); at most NUM_CLASSES
    /// are used.
    pub top_choices_num: i64,
    /// Weight of "the next expert helps" in the loss (`pos_weight`).
    pub pos_weight: f64,
    /// Width of each step's hidden layer (16 in the authors' code).
    pub hidden_dim: i64,
    /// One output layer for every step (`share_expert_help_pred_fc`).
    pub share_expert_help_pred_fc: bool,
    /// Go on to the next expert while sigmoid(logit) exceeds this (the
    /// authors hard-code 0.5); 0 always uses every expert, 1 only the first.
    pub threshold: f64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            top_choices_num: 50,
            pos_weight: 100.0,
            hidden_dim: 16,
            share_expert_help_pred_fc: true,
            threshold: 0.5,
        }
    }
}

/// `MODEL.SWIN.*`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct SwinConfig {
    /// Patch side.
    pub patch_size: i64,
    /// Input channels.
    pub in_chans: i64,
    /// First-stage width.
    pub embed_dim: i64,
    /// Blocks per stage.
    pub depths: Vec<i64>,
    /// Heads per stage.
    pub num_heads: Vec<i64>,
    /// Window side.
    pub window_size: i64,
    /// MLP ratio.
    pub mlp_ratio: f64,
    /// qkv bias.
    pub qkv_bias: bool,
    /// Attention scale override.
    pub qk_scale: Option<f64>,
    /// Absolute position embedding.
    pub ape: bool,
    /// Patch-embedding norm.
    pub patch_norm: bool,
}

/// `MODEL.SWIN_MLP.*` (compatibility only).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct SwinMlpConfig {
    /// Patch side.
    pub patch_size: i64,
    /// Input channels.
    pub in_chans: i64,
    /// First-stage width.
    pub embed_dim: i64,
    /// Blocks per stage.
    pub depths: Vec<i64>,
    /// Heads per stage.
    pub num_heads: Vec<i64>,
    /// Window side.
    pub window_size: i64,
    /// MLP ratio.
    pub mlp_ratio: f64,
    /// Absolute position embedding.
    pub ape: bool,
    /// Patch-embedding norm.
    pub patch_norm: bool,
}

/// `TRAIN.*`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct TrainConfig {
    /// First epoch (set on resume).
    pub start_epoch: u64,
    /// Epochs.
    pub epochs: u64,
    /// Warm-up epochs.
    pub warmup_epochs: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Peak LR for a global batch of 512.
    pub base_lr: f64,
    /// Starting LR for a global batch of 512.
    pub warmup_lr: f64,
    /// Final LR for a global batch of 512.
    pub min_lr: f64,
    /// `RIDE`, `LDAM` or `CE`.
    pub loss_type: String,
    /// Epoch from which class re-weighting starts.
    pub reweight_epoch: i64,
    /// RIDE loss hyper-parameters.
    pub loss: LossConfig,
    /// Max gradient norm (0 disables clipping).
    pub clip_grad: f64,
    /// Resume from the newest checkpoint in the output.
    pub auto_resume: bool,
    /// Micro-batches per optimiser step (0 or 1: none).
    pub accumulation_steps: usize,
    /// Activation checkpointing.
    pub use_checkpoint: bool,
    /// LR scheduler.
    pub lr_scheduler: LrSchedulerConfig,
    /// Optimiser.
    pub optimizer: OptimizerConfig,
    /// `experts` (train the model) or `router` (extension: freeze the
    /// experts and train the expert assignment module, `TRAIN.ROUTER.*`).
    pub stage: String,
    /// The router stage's schedule (extension).
    pub router: RouterTrainConfig,
}

/// `TRAIN.ROUTER.*` (extension): how the router stage trains, after the
/// authors' `_ea` configs (5 epochs, cosine to 0, weight decay 5e-4,
/// class-balanced sampling). They replace TRAIN.EPOCHS, BASE_LR,
/// WARMUP_EPOCHS, MIN_LR and WEIGHT_DECAY in that stage, the schedule is
/// cosine and mixup is off; the optimiser is TRAIN.OPTIMIZER's.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct RouterTrainConfig {
    /// Epochs of the router stage.
    pub epochs: u64,
    /// Peak LR for a global batch of 512 (scaled like TRAIN.BASE_LR).
    pub base_lr: f64,
    /// Warm-up epochs.
    pub warmup_epochs: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Draw training images class-balanced (a uniform class, then an image
    /// of it), as the authors' `balanced: true`.
    pub balanced: bool,
}

impl Default for RouterTrainConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            base_lr: 1e-3,
            warmup_epochs: 0.0,
            weight_decay: 5e-4,
            balanced: true,
        }
    }
}

/// `TRAIN.LOSS.*` (RIDE loss).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct LossConfig {
    /// Base diversity temperature.
    pub base_div_temp: f64,
    /// Largest LDAM margin.
    pub max_m: f64,
    /// Logit scale.
    pub s: f64,
    /// Deferred re-weighting on.
    pub reweight: bool,
    /// Weight of each expert's classification loss.
    pub base_loss_factor: f64,
    /// Weight of the diversity KL (negative rewards diversity).
    pub additional_div_factor: f64,
    /// Strength of the class-dependent temperature.
    pub reweight_factor: f64,
}

/// `TRAIN.LR_SCHEDULER.*`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct LrSchedulerConfig {
    /// `cosine` (per iteration, as the Swin reference), or `step`: the
    /// authors' CIFAR `CustomLR`, per epoch, linear warm-up over
    /// TRAIN.WARMUP_EPOCHS (`(1 + epoch) / warm-up` of BASE_LR), then
    /// multiplied by DECAY_RATE at each of MILESTONES.
    pub name: String,
    /// Step scheduler period (reference key; `step` uses MILESTONES).
    pub decay_epochs: u64,
    /// Step scheduler factor (`gamma`).
    pub decay_rate: f64,
    /// Epochs (0-based) from which the LR is multiplied by DECAY_RATE once
    /// more (extension; the authors' `step1`, `step2`).
    pub milestones: Vec<u64>,
}

/// `TRAIN.OPTIMIZER.*`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct OptimizerConfig {
    /// `adamw`, or `sgd` (with MOMENTUM, NESTEROV and TRAIN.WEIGHT_DECAY).
    pub name: String,
    /// Adam epsilon.
    pub eps: f64,
    /// Adam betas.
    pub betas: Vec<f64>,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD with Nesterov momentum (extension; the authors' CIFAR recipe).
    pub nesterov: bool,
}

/// `AUG.*`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct AugConfig {
    /// Colour jitter strength (unused while AUTO_AUGMENT is set).
    pub color_jitter: f64,
    /// RandAugment policy, or `none`.
    pub auto_augment: String,
    /// Random erasing probability.
    pub reprob: f64,
    /// Random erasing mode.
    pub remode: String,
    /// Random erasing count.
    pub recount: u64,
    /// Mixup alpha.
    pub mixup: f64,
    /// CutMix alpha.
    pub cutmix: f64,
    /// CutMix box range (unsupported, must be null).
    pub cutmix_minmax: Option<Vec<f64>>,
    /// Probability of mixing a batch.
    pub mixup_prob: f64,
    /// Probability of CutMix when both are on.
    pub mixup_switch_prob: f64,
    /// `batch` (per-batch λ).
    pub mixup_mode: String,
}

/// `TEST.*`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
pub struct TestConfig {
    /// Resize + center crop for evaluation.
    pub crop: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base: vec![String::new()],
            data: DataConfig::default(),
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            aug: AugConfig::default(),
            test: TestConfig::default(),
            amp_opt_level: String::new(),
            amp_dtype: "float16".into(),
            output: String::new(),
            tag: "default".into(),
            save_freq: 1,
            checkpoint: CheckpointConfig::default(),
            print_freq: 10,
            seed: 0,
            eval_mode: false,
            throughput_mode: false,
            local_rank: 0,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            batch_size: 128,
            data_path: String::new(),
            dataset: "imagenet".into(),
            img_size: 224,
            interpolation: "bicubic".into(),
            zip_mode: false,
            cache_mode: "part".into(),
            pin_memory: true,
            num_workers: 8,
            synthetic: SyntheticConfig::default(),
            imb_factor: 100.0,
        }
    }
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            num_classes: 20,
            max_per_class: 300,
            imbalance_factor: 50.0,
            test_per_class: 40,
            seed: 0,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: "swin".into(),
            name: "swin_tiny_patch4_window7_224".into(),
            resume: String::new(),
            num_classes: 1000,
            drop_rate: 0.0,
            drop_path_rate: 0.1,
            label_smoothing: 0.1,
            use_normed_linear: false,
            num_experts: 1,
            branching_start: 2,
            force_no_branches: false,
            force_original_feature_dim: false,
            swin: SwinConfig::default(),
            swin_mlp: SwinMlpConfig::default(),
            router: RouterConfig::default(),
            resnet: ResNetConfig::default(),
        }
    }
}

impl Default for SwinConfig {
    fn default() -> Self {
        Self {
            patch_size: 4,
            in_chans: 3,
            embed_dim: 96,
            depths: vec![2, 2, 6, 2],
            num_heads: vec![3, 6, 12, 24],
            window_size: 7,
            mlp_ratio: 4.0,
            qkv_bias: true,
            qk_scale: None,
            ape: false,
            patch_norm: true,
        }
    }
}

impl Default for SwinMlpConfig {
    fn default() -> Self {
        Self {
            patch_size: 4,
            in_chans: 3,
            embed_dim: 96,
            depths: vec![2, 2, 6, 2],
            num_heads: vec![3, 6, 12, 24],
            window_size: 7,
            mlp_ratio: 4.0,
            ape: false,
            patch_norm: true,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            start_epoch: 0,
            epochs: 300,
            warmup_epochs: 20.0,
            weight_decay: 0.05,
            base_lr: 5e-4,
            warmup_lr: 5e-7,
            min_lr: 5e-6,
            loss_type: "CE".into(),
            reweight_epoch: 240,
            loss: LossConfig::default(),
            clip_grad: 5.0,
            auto_resume: true,
            accumulation_steps: 0,
            use_checkpoint: false,
            lr_scheduler: LrSchedulerConfig::default(),
            optimizer: OptimizerConfig::default(),
            stage: "experts".into(),
            router: RouterTrainConfig::default(),
        }
    }
}

impl Default for TestConfig {
    fn default() -> Self {
        Self { crop: true }
    }
}

impl Default for LrSchedulerConfig {
    fn default() -> Self {
        Self {
            name: "cosine".into(),
            decay_epochs: 30,
            decay_rate: 0.1,
            milestones: Vec::new(),
        }
    }
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            name: "adamw".into(),
            eps: 1e-8,
            betas: vec![0.9, 0.999],
            momentum: 0.9,
            nesterov: false,
        }
    }
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            base_div_temp: 1.0,
            max_m: 0.5,
            s: 30.0,
            reweight: true,
            base_loss_factor: 1.0,
            additional_div_factor: -0.2,
            reweight_factor: 0.05,
        }
    }
}

impl Default for AugConfig {
    fn default() -> Self {
        Self {
            color_jitter: 0.4,
            auto_augment: "rand-m9-mstd0.5-inc1".into(),
            reprob: 0.25,
            remode: "pixel".into(),
            recount: 1,
            mixup: 0.8,
            cutmix: 1.0,
            cutmix_minmax: None,
            mixup_prob: 1.0,
            mixup_switch_prob: 0.5,
            mixup_mode: "batch".into(),
        }
    }
}

impl Config {
    /// The model architecture this config describes.
    pub fn swin_spec(&self) -> crate::model::SwinSpec {
        let s = &self.model.swin;
        crate::model::SwinSpec {
            img_size: self.data.img_size,
            patch_size: s.patch_size,
            in_chans: s.in_chans,
            num_classes: self.model.num_classes,
            embed_dim: s.embed_dim,
            depths: s.depths.clone(),
            num_heads: s.num_heads.clone(),
            window_size: s.window_size,
            mlp_ratio: s.mlp_ratio,
            qkv_bias: s.qkv_bias,
            qk_scale: s.qk_scale,
            drop_rate: self.model.drop_rate,
            drop_path_rate: self.model.drop_path_rate,
            ape: s.ape,
            patch_norm: s.patch_norm,
            use_normed_linear: self.model.use_normed_linear,
            num_experts: self.model.num_experts,
            branching_start: self.model.branching_start,
            force_original_feature_dim: self.model.force_original_feature_dim,
            force_no_branches: self.model.force_no_branches,
            use_checkpoint: self.train.use_checkpoint,
        }
    }

    /// The ResNet-32 this config describes (`MODEL.TYPE: resnet32`).
    pub fn resnet_spec(&self) -> crate::model::resnet_cifar::ResNetSpec {
        let r = &self.model.resnet;
        let pick = |set: i64, reduced: i64, full: i64| {
            if set > 0 {
                set
            } else if r.reduce_dimension {
                reduced
            } else {
                full
            }
        };
        crate::model::resnet_cifar::ResNetSpec {
            num_classes: self.model.num_classes,
            num_experts: self.model.num_experts,
            num_blocks: [5, 5, 5],
            layer2_dim: pick(r.layer2_output_dim, 24, 32),
            layer3_dim: pick(r.layer3_output_dim, 48, 64),
            use_norm: self.model.use_normed_linear,
        }
    }

    /// Whether this run trains (or evaluates) the router stage.
    pub fn router_stage(&self) -> bool {
        self.train.stage == "router"
    }

    /// The router's architecture, when this config has one.
    pub fn router_spec(&self) -> Option<crate::model::router::RouterSpec> {
        self.router_stage().then(|| {
            let r = &self.model.router;
            crate::model::router::RouterSpec {
                top_choices_num: r.top_choices_num.min(self.model.num_classes),
                hidden_dim: r.hidden_dim,
                share_fc: r.share_expert_help_pred_fc,
                pos_weight: r.pos_weight,
                logit_scale: if self.model.use_normed_linear {
                    self.train.loss.s
                } else {
                    1.0
                },
            }
        })
    }

    /// The config the router stage actually trains with: `TRAIN.ROUTER.*`
    /// in place of the experts' schedule, no mixup (the router's targets
    /// are whether hard labels are predicted). Unchanged for `experts`.
    pub fn for_stage(&self) -> Config {
        let mut c = self.clone();
        if self.router_stage() {
            let r = &self.train.router;
            c.train.epochs = r.epochs;
            c.train.base_lr = r.base_lr;
            c.train.warmup_lr = 0.0;
            c.train.min_lr = 0.0;
            c.train.warmup_epochs = r.warmup_epochs;
            c.train.weight_decay = r.weight_decay;
            c.train.start_epoch = 0;
            // The authors' `_ea` configs anneal to 0 by cosine over the stage.
            c.train.lr_scheduler.name = "cosine".into();
            c.aug.mixup = 0.0;
            c.aug.cutmix = 0.0;
        }
        c
    }

    /// Semantic checks beyond types, each naming the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message: msg,
            })
        };
        if !["", "O0", "O1", "O2"].contains(&self.amp_opt_level.as_str()) {
            return bad(
                "AMP_OPT_LEVEL",
                format!("'{}' is not one of O0, O1, O2", self.amp_opt_level),
            );
        }
        if !["float16", "bfloat16"].contains(&self.amp_dtype.as_str()) {
            return bad(
                "AMP_DTYPE",
                format!("'{}' is not float16 or bfloat16", self.amp_dtype),
            );
        }
        if !["swin", "resnet32"].contains(&self.model.kind.as_str()) {
            return bad(
                "MODEL.TYPE",
                format!("'{}' is not supported (swin or resnet32)", self.model.kind),
            );
        }
        if !["RIDE", "LDAM", "CE"].contains(&self.train.loss_type.as_str()) {
            return bad(
                "TRAIN.LOSS_TYPE",
                format!("'{}' is not one of RIDE, LDAM, CE", self.train.loss_type),
            );
        }
        if self.model.force_no_branches && self.model.num_experts != 1 {
            return bad(
                "MODEL.FORCE_NO_BRANCHES",
                "requires MODEL.NUM_EXPERTS = 1".into(),
            );
        }
        if self.data.batch_size == 0 {
            return bad("DATA.BATCH_SIZE", "must be positive".into());
        }
        if self.train.optimizer.betas.len() != 2 {
            return bad(
                "TRAIN.OPTIMIZER.BETAS",
                format!("needs two values, got {:?}", self.train.optimizer.betas),
            );
        }
        if !["adamw", "sgd"].contains(&self.train.optimizer.name.as_str()) {
            return bad(
                "TRAIN.OPTIMIZER.NAME",
                format!("'{}' is not adamw or sgd", self.train.optimizer.name),
            );
        }
        if !["cosine", "step"].contains(&self.train.lr_scheduler.name.as_str()) {
            return bad(
                "TRAIN.LR_SCHEDULER.NAME",
                format!("'{}' is not cosine or step", self.train.lr_scheduler.name),
            );
        }
        if self.aug.cutmix_minmax.is_some() {
            return bad(
                "AUG.CUTMIX_MINMAX",
                "is not supported yet; leave it null".into(),
            );
        }
        if self.aug.mixup_mode != "batch" {
            return bad(
                "AUG.MIXUP_MODE",
                format!(
                    "'{}' is not supported yet (only 'batch')",
                    self.aug.mixup_mode
                ),
            );
        }
        if self.data.zip_mode {
            return bad("DATA.ZIP_MODE", "zip datasets are not supported".into());
        }
        if !["experts", "router"].contains(&self.train.stage.as_str()) {
            return bad(
                "TRAIN.STAGE",
                format!("'{}' is not experts or router", self.train.stage),
            );
        }
        if self.router_stage() {
            let r = &self.model.router;
            if self.model.num_experts < 2 {
                return bad(
                    "TRAIN.STAGE",
                    "the router stage needs MODEL.NUM_EXPERTS of 2 or more".into(),
                );
            }
            if r.top_choices_num < 1 || r.hidden_dim < 1 {
                return bad(
                    "MODEL.ROUTER",
                    "TOP_CHOICES_NUM and HIDDEN_DIM must be positive".into(),
                );
            }
            if !(0.0..=1.0).contains(&r.threshold) {
                return bad(
                    "MODEL.ROUTER.THRESHOLD",
                    format!("{} is not within 0..=1", r.threshold),
                );
            }
            if r.pos_weight.is_nan() || r.pos_weight <= 0.0 {
                return bad("MODEL.ROUTER.POS_WEIGHT", "must be positive".into());
            }
            if self.train.router.epochs == 0 {
                return bad("TRAIN.ROUTER.EPOCHS", "must be positive".into());
            }
        }
        if self.model.kind == "resnet32" {
            if self.data.img_size % 4 != 0 {
                return bad(
                    "DATA.IMG_SIZE",
                    format!(
                        "{} is not a multiple of 4 (ResNet-32 halves it twice)",
                        self.data.img_size
                    ),
                );
            }
            if self.train.use_checkpoint {
                return bad(
                    "TRAIN.USE_CHECKPOINT",
                    "activation checkpointing is for MODEL.TYPE swin".into(),
                );
            }
            return self
                .resnet_spec()
                .validate()
                .map_err(|m| ConfigError::Invalid {
                    key: "MODEL.RESNET".into(),
                    message: m,
                });
        }
        self.swin_spec()
            .validate()
            .map_err(|m| ConfigError::Invalid {
                key: "MODEL".into(),
                message: m,
            })
    }
}
