//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Run the built `ride-trainer` binary with `args`.
pub fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ride-trainer"))
        .args(args)
        .env("OMP_NUM_THREADS", "2")
        .output()
        .expect("ride-trainer runs")
}

/// `ride-trainer train --cfg CFG --device cpu --output OUT EXTRA...`.
pub fn train_cpu(cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--cfg",
        cfg.to_str().expect("utf-8 path"),
        "--device",
        "cpu",
        "--output",
        out.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    trainer(&args)
}

/// `ride-trainer predict --cfg CFG --weights W --device cpu EXTRA...`.
pub fn predict_cpu(cfg: &Path, weights: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "predict",
        "--cfg",
        cfg.to_str().expect("utf-8 path"),
        "--weights",
        weights.to_str().expect("utf-8 path"),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    trainer(&args)
}

/// stdout + stderr as one string.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A very small synthetic RIDE config (seconds per epoch on a CPU).
pub fn tiny_config(dir: &Path, experts: usize, loss: &str) -> PathBuf {
    let p = dir.join(format!("tiny_{experts}_{loss}.yaml"));
    let normed = loss != "CE";
    std::fs::write(
        &p,
        format!(
            "MODEL:\n  NAME: tiny\n  USE_NORMED_LINEAR: {normed}\n  NUM_EXPERTS: {experts}\n  DROP_PATH_RATE: 0.1\n  SWIN:\n    PATCH_SIZE: 4\n    EMBED_DIM: 16\n    DEPTHS: [1, 1, 2, 1]\n    NUM_HEADS: [1, 2, 4, 8]\n    WINDOW_SIZE: 4\n\
DATA:\n  DATASET: synthetic\n  IMG_SIZE: 32\n  BATCH_SIZE: 16\n  NUM_WORKERS: 2\n  SYNTHETIC:\n    NUM_CLASSES: 6\n    MAX_PER_CLASS: 40\n    IMBALANCE_FACTOR: 10\n    TEST_PER_CLASS: 4\n\
TRAIN:\n  EPOCHS: 2\n  WARMUP_EPOCHS: 1\n  BASE_LR: 4.0e-3\n  LOSS_TYPE: {loss}\n  REWEIGHT_EPOCH: 0\n\
AUG:\n  AUTO_AUGMENT: none\n  MIXUP: 0.2\n  CUTMIX: 1.0\nSAVE_FREQ: 1\nPRINT_FREQ: 100\n"
        ),
    )
    .expect("write config");
    p
}
