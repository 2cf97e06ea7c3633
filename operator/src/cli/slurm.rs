//! Rendering a `RideTraining` as a Slurm batch script (`ride sbatch`): the
//! spec becomes `#SBATCH` options and the variables of `slurm/ride.sbatch`,
//! whose body (rank discovery, requeue after a saved checkpoint) follows
//! unchanged, so the two ways into Slurm cannot drift apart.

use crate::crd::RideTraining;
use ride_contract::CheckpointUri;
use std::path::Path;

/// `slurm/ride.sbatch`, compiled in.
pub const TEMPLATE: &str = include_str!("../../../slurm/ride.sbatch");

/// Where the template's own `#SBATCH` block and defaults end: the rendered
/// script replaces everything before this line.
const BODY_MARKER: &str = "set -euo pipefail\n";

/// Quote `s` for a POSIX shell: single quotes, embedded ones spliced in.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Credential variables the job's environment must carry for the
/// checkpoint URI's scheme (the required ones of those the operator's pods
/// get from their Secret).
fn credential_names(uri: &str) -> Vec<&'static str> {
    let vars = CheckpointUri::parse(uri).map_or(&[][..], |u| u.scheme().credential_vars());
    vars.iter().filter(|v| v.required).map(|v| v.name).collect()
}

/// CPUs of a Kubernetes quantity (`"6"`, `"1.5"`, `"500m"`), rounded up.
fn cpus(q: &str) -> Option<u64> {
    let q = q.trim();
    let millis = match q.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok()?,
        None => q.parse::<f64>().ok()? * 1000.0,
    };
    (millis > 0.0).then(|| (millis / 1000.0).ceil() as u64)
}

/// MiB of a Kubernetes memory quantity (`"32Gi"`, `"64G"`, `"512Mi"`,
/// bytes), rounded up.
fn mebibytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let units: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, scale) = units
        .iter()
        .find_map(|(suffix, scale)| Some((q.strip_suffix(suffix)?, *scale)))
        .unwrap_or((q, 1.0));
    let bytes = number.parse::<f64>().ok()? * scale;
    (bytes > 0.0).then(|| (bytes / (1024.0 * 1024.0)).ceil() as u64)
}

/// The batch script for `rt`. `configs` is where the trainer configs live
/// on the cluster; `trainer` the `ride-trainer` binary there.
pub fn render(rt: &RideTraining, configs: &Path, trainer: &str) -> String {
    let spec = &rt.spec;
    let name = rt.metadata.name.as_deref().unwrap_or("ride");
    let gpus = spec.workers.gpus_per_worker;
    let tasks_per_node = crate::pods::ranks_per_worker(spec);
    let cfg = if spec.trainer.config.starts_with('/') {
        spec.trainer.config.clone()
    } else {
        configs.join(&spec.trainer.config).display().to_string()
    };
    let mut out = String::new();
    out.push_str("#!/bin/bash\n");
    out.push_str(&format!(
        "# Rendered by `ride sbatch` from RideTraining {name}; the body below is slurm/ride.sbatch.\n"
    ));
    out.push_str(&format!(
        "# (spec.image {} is not used: Slurm runs {trainer} directly.)\n",
        spec.image
    ));
    let mut sbatch = |line: String| out.push_str(&format!("#SBATCH {line}\n"));
    sbatch(format!("--job-name={name}"));
    sbatch(format!("--nodes={}", spec.workers.replicas));
    sbatch(format!("--ntasks-per-node={tasks_per_node}"));
    sbatch(format!("--gpus-per-task={}", i32::from(gpus > 0)));
    // A worker's CPU and memory are a node's share here: CPUs split over
    // its tasks, memory for the node (requests, else limits).
    let resources = spec.workers.resources.as_ref();
    let amount = |name: &str| {
        let from = |m: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >| { m.and_then(|m| m.get(name)).map(|q| q.0.clone()) };
        resources.and_then(|r| from(r.requests.as_ref()).or_else(|| from(r.limits.as_ref())))
    };
    if let Some(c) = amount("cpu").as_deref().and_then(cpus) {
        let per_task = c.div_ceil(tasks_per_node.max(1) as u64).max(1);
        sbatch(format!("--cpus-per-task={per_task}"));
    }
    if let Some(m) = amount("memory").as_deref().and_then(mebibytes) {
        sbatch(format!("--mem={m}M"));
    }
    if let Some(limit) = spec.run_policy.active_deadline_seconds {
        // Slurm's --time is in minutes; never below one.
        sbatch(format!("--time={}", ((limit + 59) / 60).max(1)));
    }
    sbatch("--signal=USR1@120".into());
    sbatch("--requeue".into());
    sbatch("--open-mode=append".into());
    sbatch(format!("--output={name}-%j.out"));
    out.push_str("set -euo pipefail\n\n");
    let mut export = |k: &str, v: &str| out.push_str(&format!("export {k}={}\n", shell_quote(v)));
    export("RIDE_BIN", trainer);
    export("RIDE_CFG", &cfg);
    export("RIDE_OUTPUT", &spec.checkpoint.uri);
    export("RIDE_DEVICE", crate::pods::device(spec));
    export(
        "RIDE_MAX_REQUEUES",
        &spec.restart_policy.max_exempt_restarts.to_string(),
    );
    export(
        "RIDE_MAX_STALL_REQUEUES",
        &spec.restart_policy.stall_budget.to_string(),
    );
    if let Some(secs) = spec.restart_policy.stall_timeout_seconds {
        export(ride_contract::ENV_STALL_TIMEOUT, &secs.to_string());
    }
    // The ranks read it from the environment srun passes on.
    export(
        ride_contract::ENV_CHECKPOINT_EVERY,
        spec.checkpoint.every_or_default(),
    );
    // An array, not RIDE_ARGS: override values may hold spaces or quotes.
    let args: Vec<String> = crate::pods::data_and_override_args(spec)
        .iter()
        .map(|a| shell_quote(a))
        .collect();
    out.push_str(&format!("ride_args=({})\n", args.join(" ")));
    let creds = credential_names(&spec.checkpoint.uri);
    if !creds.is_empty() {
        out.push_str(&format!(
            "# {} names a Secret on Kubernetes; here the job's environment must carry its keys.\n",
            spec.checkpoint
                .credentials_secret
                .as_deref()
                .unwrap_or("The checkpoint URI"),
        ));
        for c in creds {
            out.push_str(&format!(
                ": \"${{{c}:?set {c} for {} (sbatch passes your environment)}}\"\n",
                spec.checkpoint.uri
            ));
        }
    }
    let body = TEMPLATE
        .split_once(BODY_MARKER)
        .map_or(TEMPLATE, |(_, body)| body);
    out.push_str(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(yaml_spec: &str) -> RideTraining {
        serde_norway::from_str(&format!(
            "apiVersion: ride.dev/v1alpha1\nkind: RideTraining\nmetadata: {{name: big}}\nspec:\n{yaml_spec}"
        ))
        .unwrap()
    }

    #[test]
    fn workers_gpus_deadline_and_budget_become_sbatch_options() {
        let rt = rt(r#"
  image: ride:1
  trainer: {config: swin.yaml}
  workers: {replicas: 4, gpusPerWorker: 8}
  checkpoint: {uri: "s3://b/run", credentialsSecret: keys}
  restartPolicy: {maxExemptRestarts: 7, stallTimeoutSeconds: 900, stallBudget: 2}
  runPolicy: {activeDeadlineSeconds: 172800}
"#);
        let s = render(
            &rt,
            Path::new("/opt/ride/configs"),
            "/opt/ride/bin/ride-trainer",
        );
        for line in [
            "#SBATCH --job-name=big",
            "#SBATCH --nodes=4",
            "#SBATCH --ntasks-per-node=8",
            "#SBATCH --gpus-per-task=1",
            "#SBATCH --time=2880",
            "#SBATCH --requeue",
            "export RIDE_CFG='/opt/ride/configs/swin.yaml'",
            "export RIDE_OUTPUT='s3://b/run'",
            "export RIDE_DEVICE='cuda'",
            "export RIDE_MAX_REQUEUES='7'",
            "export RIDE_MAX_STALL_REQUEUES='2'",
            "export RIDE_STALL_TIMEOUT='900'",
            "export RIDE_CHECKPOINT_EVERY='30m'",
            ": \"${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY for s3://b/run (sbatch passes your environment)}\"",
        ] {
            assert!(s.lines().any(|l| l == line), "{line} in\n{s}");
        }
        // The template's body follows, its own #SBATCH block replaced.
        assert_eq!(s.matches("#SBATCH --job-name").count(), 1, "{s}");
        assert!(s.contains("scontrol requeue"), "{s}");
        assert!(
            !s.contains("AWS_SESSION_TOKEN:?"),
            "optional keys are not required"
        );
    }

    #[test]
    fn worker_resources_become_cpus_per_task_and_memory_per_node() {
        let rt = rt(r#"
  image: ride:1
  trainer: {config: swin.yaml}
  workers: {replicas: 2, gpusPerWorker: 4, resources: {requests: {cpu: "30", memory: 64Gi}}}
  checkpoint: {uri: "file:///x"}
"#);
        let s = render(&rt, Path::new("configs"), "ride-trainer");
        assert!(s.lines().any(|l| l == "#SBATCH --cpus-per-task=8"), "{s}");
        assert!(s.lines().any(|l| l == "#SBATCH --mem=65536M"), "{s}");
        assert_eq!(cpus("500m"), Some(1));
        assert_eq!(cpus("1.5"), Some(2));
        assert_eq!(cpus("lots"), None);
        assert_eq!(mebibytes("512Mi"), Some(512));
        assert_eq!(mebibytes("1G"), Some(954));
        assert_eq!(mebibytes("1048576"), Some(1));
        // Without resources, Slurm's defaults stay.
        let plain = rt_without_resources();
        let s = render(&plain, Path::new("configs"), "ride-trainer");
        assert!(
            !s.contains("--cpus-per-task") && !s.contains("--mem="),
            "{s}"
        );
    }

    fn rt_without_resources() -> RideTraining {
        rt(r#"
  image: ride:1
  trainer: {config: c.yaml}
  workers: {replicas: 1}
  checkpoint: {uri: "file:///x"}
"#)
    }

    #[test]
    fn override_values_reach_the_trainer_verbatim_through_bash() {
        let hostile = "it's $(touch /tmp/ride-pwned) `id` \"quoted\" a b";
        let mut rt = rt(r#"
  image: ride:1
  trainer: {config: c.yaml}
  workers: {replicas: 1}
  checkpoint: {uri: "file:///tmp/x"}
"#);
        rt.spec
            .trainer
            .overrides
            .insert("MODEL.NAME".into(), hostile.into());
        let s = render(&rt, Path::new("configs"), "ride-trainer");
        let line = s
            .lines()
            .find(|l| l.starts_with("ride_args=("))
            .unwrap()
            .to_string();
        // Let the real bash parse the line and print each word on its own line.
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("{line}\nprintf '%s\\n' \"${{ride_args[@]}}\""))
            .output()
            .unwrap();
        let words: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert_eq!(words, ["--opts", "MODEL.NAME", hostile]);
        assert!(!Path::new("/tmp/ride-pwned").exists());
        // And the whole script is valid bash.
        let check = std::process::Command::new("bash")
            .args(["-n", "-c", &s])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}
