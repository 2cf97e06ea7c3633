//! `sbatch slurm/ride.sbatch` on a real single-node Slurm cluster (started by
//! `scripts/slurm-cluster.sh`, which `scripts/test.sh` runs): two tasks find
//! their ranks and rank 0 from Slurm's variables alone and train together.

mod common;

use common::{repo_root, text, tiny_config};
use std::path::PathBuf;
use std::process::Command;

fn slurm_conf() -> String {
    let dir = std::env::var("RIDE_SLURM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/ride/slurm")
        });
    let env = std::fs::read_to_string(dir.join("env")).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. This test needs Slurm: run `scripts/slurm-cluster.sh start` \
             (or the whole suite with `scripts/test.sh`)",
            dir.join("env").display()
        )
    });
    env.trim()
        .strip_prefix("export SLURM_CONF=")
        .expect("SLURM_CONF line")
        .to_string()
}

#[test]
fn sbatch_template_runs_two_ranks_from_slurm_variables() {
    let conf = slurm_conf();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let out = dir.path().join("out");
    let log = dir.path().join("job-%j.out");
    let o = Command::new("sbatch")
        .current_dir(repo_root())
        .args([
            "--wait",
            "--ntasks-per-node=2",
            "--gpus-per-task=0",
            "--cpus-per-task=1",
        ])
        .arg(format!("--output={}", log.display()))
        .arg("slurm/ride.sbatch")
        .env("SLURM_CONF", &conf)
        .env("RIDE_BIN", env!("CARGO_BIN_EXE_ride-trainer"))
        .env("RIDE_CFG", &cfg)
        .env("RIDE_OUTPUT", &out)
        .env("RIDE_DEVICE", "cpu")
        .env("RIDE_METRICS_ADDR", "off")
        .env("RIDE_ARGS", "--opts TRAIN.EPOCHS 1")
        .output()
        .expect("sbatch runs");
    let job_log: String = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("job-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(o.status.success(), "{}\n{job_log}", text(&o));
    assert!(job_log.contains("rank 0/2 (local 0/2)"), "{job_log}");
    assert!(job_log.contains("rank 1/2 (local 1/2)"), "{job_log}");
    assert!(
        job_log.contains("x2:") && job_log.contains("global batch 32"),
        "{job_log}"
    );
    assert!(
        out.join("tiny/default/ckpt_epoch_0/manifest.json").exists(),
        "{job_log}"
    );
    assert_eq!(
        job_log.matches("== run summary ==").count(),
        1,
        "only rank 0 reports"
    );
}
