//! Running a `RideTraining` without a cluster: the manifest becomes the local
//! launcher's invocation (`ride-trainer launch`), writing to the manifest's
//! checkpoint location when that is a `file://` one and under `output/`
//! otherwise (a local run may lack the object store's credentials).

use crate::crd::RideTraining;
use ride_contract::CheckpointUri;
use std::path::{Path, PathBuf};

/// The `ride-trainer` argument list for `rt`: `launch` with the cluster's
/// world size (workers × GPUs per worker) and the restart budget, then the
/// `train` arguments. The output is `output` if given, else the manifest's
/// checkpoint location when it is local, else `output/<name>`.
pub fn launcher_args(rt: &RideTraining, configs_dir: &Path, output: Option<&str>) -> Vec<String> {
    let spec = &rt.spec;
    let cfg = if spec.trainer.config.contains('/') {
        PathBuf::from(&spec.trainer.config)
    } else {
        configs_dir.join(&spec.trainer.config)
    };
    let output = output.map(str::to_string).unwrap_or_else(|| {
        let uri = CheckpointUri::parse(&spec.checkpoint.uri);
        if uri.is_ok_and(|u| u.is_local()) {
            spec.checkpoint.uri.clone()
        } else {
            // Remote URIs need credentials that a local run may not have.
            format!("output/{}", rt.metadata.name.as_deref().unwrap_or("ride"))
        }
    });
    let mut args: Vec<String> = vec![
        "launch".into(),
        "--nproc-per-node".into(),
        (spec.workers.replicas * crate::pods::ranks_per_worker(spec)).to_string(),
        "--max-restarts".into(),
        spec.restart_policy.budget.to_string(),
        "--".into(),
        "--cfg".into(),
        cfg.display().to_string(),
        "--device".into(),
        crate::pods::device(spec).into(),
        "--output".into(),
        output,
        "--metrics-addr".into(),
        ride_contract::METRICS_OFF.into(),
        "--checkpoint-every".into(),
        spec.checkpoint.every_or_default().into(),
    ];
    args.extend(crate::pods::data_and_override_args(spec));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_becomes_a_launch_command() {
        let rt: RideTraining = serde_norway::from_str(
            r#"
apiVersion: ride.dev/v1alpha1
kind: RideTraining
metadata: {name: demo}
spec:
  image: ride:dev
  trainer:
    config: synthetic_ride_2e_cpu.yaml
    overrides: {TRAIN.EPOCHS: "2", DATA.BATCH_SIZE: "32"}
  workers: {replicas: 2}
  checkpoint: {uri: "s3://bucket/demo", every: 10m}
  restartPolicy: {budget: 5, backoffSeconds: 1, preemptionExempt: true}
"#,
        )
        .unwrap();
        rt.spec.validate().unwrap();
        let args = launcher_args(&rt, Path::new("configs"), None).join(" ");
        assert_eq!(
            args,
            "launch --nproc-per-node 2 --max-restarts 5 -- --cfg configs/synthetic_ride_2e_cpu.yaml \
             --device cpu --output output/demo --metrics-addr off --checkpoint-every 10m \
             --opts DATA.BATCH_SIZE 32 TRAIN.EPOCHS 2"
        );
        // A local location is used as it is; an explicit output wins.
        let mut local = rt.clone();
        local.spec.checkpoint.uri = "file:///tmp/demo".into();
        let args = launcher_args(&local, Path::new("configs"), None);
        assert!(args
            .windows(2)
            .any(|w| w == ["--output", "file:///tmp/demo"]));
        let args = launcher_args(&local, Path::new("configs"), Some("elsewhere"));
        assert!(args.windows(2).any(|w| w == ["--output", "elsewhere"]));
    }
}
