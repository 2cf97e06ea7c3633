//! `ride sbatch`: the CPU example's RideTraining rendered as a batch script
//! and submitted to the real single-node Slurm cluster of the tests
//! (`scripts/slurm-cluster.sh`, started by `scripts/test.sh`). The same
//! manifest also trains under `ride run-local` (tests/crd.rs) and the
//! operator (tests/e2e.rs); all three end with the evaluation table.

mod common;

use common::{repo, slurm_conf, trainer_bin};
use std::process::Command;

#[test]
fn the_cpu_example_trains_on_slurm_through_ride_sbatch() {
    let conf = slurm_conf().expect(
        "this test needs Slurm: run `scripts/slurm-cluster.sh start` (or the suite with `scripts/test.sh`)",
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let manifest = dir.path().join("ride-cpu.yaml");
    std::fs::write(
        &manifest,
        std::fs::read_to_string(repo().join("examples/ride-cpu.yaml"))
            .unwrap()
            .replace(
                "uri: file:///tmp/ride-cpu",
                &format!("uri: file://{}", out.display()),
            ),
    )
    .unwrap();
    let log = dir.path().join("job.log");
    // The example asks for 2 workers, i.e. 2 nodes of 1 task; this cluster
    // has one node, so the same 2 ranks run as 2 tasks on it (sbatch's
    // command-line options override the script's).
    let o = Command::new(env!("CARGO_BIN_EXE_ride"))
        .current_dir(repo())
        .args(["sbatch"])
        .arg(&manifest)
        .args([
            "--trainer",
            trainer_bin().to_str().unwrap(),
            "--submit",
            "--",
        ])
        .args([
            "--wait",
            "--nodes=1",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
        ])
        .arg(format!("--output={}", log.display()))
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    let job = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        o.status.success(),
        "{}{}\n{job}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(job.contains("rank 1/2"), "{job}");
    assert!(job.contains("| top-1 overall"), "{job}");
    assert!(
        out.join("synthetic_ride_2e/default/eval.json").exists(),
        "{job}"
    );
    // What was submitted is what `ride sbatch` prints.
    let printed = Command::new(env!("CARGO_BIN_EXE_ride"))
        .current_dir(repo())
        .arg("sbatch")
        .arg(&manifest)
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&printed.stdout);
    assert!(script.contains("#SBATCH --nodes=2"), "{script}");
    assert!(script.contains("#SBATCH --job-name=ride-cpu"), "{script}");
}
