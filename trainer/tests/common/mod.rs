//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
///
/// From the manifest directory cargo sets when the test runs: one baked in
/// at build time names whichever clone built the binary, and clones share a
/// target directory.
pub fn repo_root() -> PathBuf {
    manifest_dir()
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `trainer/`, as cargo says when the test runs (see [`repo_root`]).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf())
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

/// `train_cpu` for `epochs` epochs (TRAIN.EPOCHS), without the metrics
/// endpoint or progress bars.
pub fn train_epochs(cfg: &Path, out: &Path, epochs: u32) -> Output {
    let epochs = epochs.to_string();
    train_cpu(
        cfg,
        out,
        &[
            "--metrics-addr",
            "off",
            "--no-progress",
            "--opts",
            "TRAIN.EPOCHS",
            &epochs,
        ],
    )
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

/// A process whose stderr lines are collected as they arrive.
pub struct Watched {
    /// The process.
    pub child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Watched {
    /// Start the built `ride-trainer` with `args`, collecting stderr and stdout.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ride-trainer"))
            .args(args)
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ride-trainer starts");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let l2 = lines.clone();
        let l3 = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                l3.lock().unwrap().push(line);
            }
        });
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// All lines so far.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Wait up to `secs` for a line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no line with '{needle}' after {secs}s:\n{}",
                self.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Wait for the process to end; returns its status and all output.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().expect("wait");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.text())
    }
}

/// Wait up to `secs` for `path` to exist.
pub fn wait_for_file(path: &Path, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not appear within {secs}s",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The tensors of a safetensors file, by name.
pub fn read_tensors(path: &Path) -> std::collections::BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Largest absolute difference between same-named tensors (panics if names differ).
pub fn max_abs_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (read_tensors(a), read_tensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(k, t)| {
            (t.to_kind(tch::Kind::Double) - b[k].to_kind(tch::Kind::Double))
                .abs()
                .max()
                .double_value(&[])
        })
        .fold(0.0, f64::max)
}

/// Whether two safetensors files hold bitwise-equal tensors.
pub fn bitwise_equal(a: &Path, b: &Path) -> bool {
    let (a, b) = (read_tensors(a), read_tensors(b));
    a.len() == b.len() && a.iter().all(|(k, t)| b.get(k).is_some_and(|u| t.equal(u)))
}
