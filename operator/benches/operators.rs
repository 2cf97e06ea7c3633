//! Benchmark: ride-operator side by side with Kubeflow's training-operator v1
//! (PyTorchJob) and JobSet, on the same real control plane and simulated
//! nodes.
//!
//! For each system, a fresh control plane (`scripts/k8s-cluster.sh`: etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler v1.36), three
//! nodes played by kwok (`operators/kwok.rs`: real Node objects and Leases,
//! pods bound by the real scheduler and taken through Running, Failed or
//! Succeeded by kwok's stages in `bench/kwok/stages.yaml`; nothing runs in
//! them), and the system's unmodified operator binary (the peers built by
//! `scripts/k8s-peers.sh`), running as a user of its own so that API
//! Priority and Fairness counts its requests apart. Then, the same scenario
//! for each:
//!
//! 1. N trainings of 2 workers created in one burst: creation → both pods
//!    created, → both pods running;
//! 2. one worker (the second pod by name) of every training fails at once:
//!    even trainings' worker exits 1, odd ones' is SIGKILLed (exit 137, what
//!    Kubeflow's `ExitCode` policy calls retryable), as kwok reports it when
//!    the bench annotates the pod. The failure seen (pod
//!    phase Failed) → two running pods again, neither the failed one; and how
//!    many of those pods are new (2: the gang was replaced; 1: the one pod);
//! 3. node-c is cut off (its kwok process dies: its Lease is no longer
//!    renewed and its pods stay as they were): stop → every affected
//!    training has two running pods on the other nodes.
//!
//! Cost: CPU seconds and peak RSS of the operator process (and the CPU of
//! kube-controller-manager, which runs JobSet's Jobs), the operator's own API
//! requests (`apiserver_flowcontrol_dispatched_requests_total` of the
//! `global-default` flow schema: only the operator's user lands there) and
//! all requests the API server served (`apiserver_request_total`), per
//! training, over the whole scenario.
//!
//! Then, on a fresh control plane per system, sustained churn
//! (`operators/churn.rs`): trainings arriving at a steady rate, each
//! finishing 60 s after its pods run, with the cost sampled over time.
//!
//! Environment: `RIDE_BENCH_TRAININGS` (default "100"; a comma-separated
//! list runs each size), `RIDE_BENCH_CHURN` ("RATExMINUTES", default
//! "20x10"; "0" skips it), `RIDE_BENCH_SYSTEMS` (default
//! "ride,pytorchjob,pytorchjob-tuned,jobset"), `RIDE_BENCH_WAIT` (seconds a
//! phase may take before its stragglers count as not done; default 180).
//! Run it with `bench/operators.sh`, which builds the peers first.

#[path = "operators/churn.rs"]
mod churn;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "operators/kwok.rs"]
mod kwok;

use common::cluster::Cluster;
use common::{percentile, proc_status_kib};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::{watcher, WatchStreamExt};
use kwok::KwokNodes;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NS: &str = "default";
const WORKERS: usize = 2;
const IMAGE: &str = "ghcr.io/ride-on-cluster/ride-trainer:bench";
/// Where training-operator v1 reads its webhook certificate (a constant in
/// its code, the mount path of its Secret volume in its Deployment).
const KUBEFLOW_CERT_DIR: &str = "/tmp/k8s-webhook-server/serving-certs";
/// The simulated nodes, by the kwok process that plays them: losing
/// `LOST_GROUP` loses node-c.
const NODES: &[(&str, &[&str])] = &[("main", &["node-a", "node-b"]), (LOST_GROUP, &["node-c"])];
const LOST_GROUP: &str = "lost";
/// The annotation kwok's `pod-exit` stage turns into a container's exit code.
const EXIT_ANNOTATION: &str = "bench.ride.dev/exit-code";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Ride,
    PyTorchJob,
    /// training-operator with 16 reconcile workers and 500 QPS instead of
    /// its shipped 1 worker and 20 QPS.
    PyTorchJobTuned,
    JobSet,
}

impl System {
    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "ride" => Some(Self::Ride),
            "pytorchjob" => Some(Self::PyTorchJob),
            "pytorchjob-tuned" => Some(Self::PyTorchJobTuned),
            "jobset" => Some(Self::JobSet),
            _ => None,
        }
    }

    /// The name `SYSTEMS` gives it.
    fn key(self) -> &'static str {
        match self {
            Self::Ride => "ride",
            Self::PyTorchJob => "pytorchjob",
            Self::PyTorchJobTuned => "pytorchjob-tuned",
            Self::JobSet => "jobset",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Ride => "ride-operator",
            Self::PyTorchJob => "PyTorchJob (shipped settings)",
            Self::PyTorchJobTuned => "PyTorchJob (16 workers, 500 QPS)",
            Self::JobSet => "JobSet",
        }
    }

    /// The pod label that names a pod's training.
    fn training_label(self) -> &'static str {
        match self {
            Self::Ride => "ride.dev/training",
            Self::PyTorchJob | Self::PyTorchJobTuned => "training.kubeflow.org/job-name",
            Self::JobSet => "jobset.sigs.k8s.io/jobset-name",
        }
    }

    fn resource(self) -> ApiResource {
        let (g, v, k, plural) = match self {
            Self::Ride => ("ride.dev", "v1alpha1", "RideTraining", "ridetrainings"),
            Self::PyTorchJob | Self::PyTorchJobTuned => {
                ("kubeflow.org", "v1", "PyTorchJob", "pytorchjobs")
            }
            Self::JobSet => ("jobset.x-k8s.io", "v1alpha2", "JobSet", "jobsets"),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural)
    }

    /// The peer's version, from `scripts/k8s-peers.sh`'s note.
    fn version(self) -> String {
        let bin = match self {
            Self::Ride => return format!("ride-operator {}", env!("CARGO_PKG_VERSION")),
            Self::PyTorchJob | Self::PyTorchJobTuned => "training-operator.v1",
            Self::JobSet => "jobset",
        };
        std::fs::read_to_string(common::k8s_peers().join(format!("bin/{bin}.version")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| "unknown version".into())
    }

    /// One training of 2 workers, each system's equivalent of the others:
    /// restart budget 3, no restart delay (both peers restart at once).
    fn manifest(self, name: &str, image: &str, cluster_dir: &Path) -> Value {
        let container = json!({"name": "worker", "image": image, "command": ["ride-trainer"]});
        match self {
            Self::Ride => json!({
                "apiVersion": "ride.dev/v1alpha1", "kind": "RideTraining",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"image": image, "trainer": {"config": "c.yaml"},
                         // The pods' grace period is Kubernetes' default, as
                         // the peers' pods have (ride's own default is 120 s
                         // for a final checkpoint save); the force-delete
                         // delay is ride's default (300 s): a worker on a
                         // lost node is force-deleted at once whatever it is.
                         "workers": {"replicas": WORKERS, "terminationGracePeriodSeconds": 30},
                         "checkpoint": {"uri": format!("file://{}/{name}", cluster_dir.display())},
                         "restartPolicy": {"budget": 3, "backoffSeconds": 0}}}),
            Self::PyTorchJob | Self::PyTorchJobTuned => {
                // Its containers must be named "pytorch" (its port lookup).
                let mut container = container.clone();
                container["name"] = json!("pytorch");
                let replica = |n: usize| {
                    json!({"replicas": n, "restartPolicy": "ExitCode",
                           "template": {"spec": {"containers": [container.clone()]}}})
                };
                json!({
                    "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {"runPolicy": {"backoffLimit": 3},
                             "pytorchReplicaSpecs": {"Master": replica(1),
                                                     "Worker": replica(WORKERS - 1)}}})
            }
            // Every field its defaulting webhook would set is written out,
            // since no webhook is called here (see `start`).
            Self::JobSet => json!({
                "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"successPolicy": {"operator": "All"},
                         "startupPolicy": {"startupPolicyOrder": "AnyOrder"},
                         "network": {"enableDNSHostnames": true, "publishNotReadyAddresses": true},
                         "failurePolicy": {"maxRestarts": 3},
                         "replicatedJobs": [{"name": "workers", "replicas": 1, "template": {"spec": {
                             "parallelism": WORKERS, "completions": WORKERS,
                             "completionMode": "Indexed", "backoffLimit": 0,
                             "template": {"spec": {"restartPolicy": "Never",
                                                   "containers": [container]}}}}}]}}),
        }
    }

    /// What the object's status says about restarts.
    fn restarts(self, obj: &Value) -> u64 {
        let status = &obj["status"];
        match self {
            Self::Ride | Self::JobSet => status["restarts"].as_u64().unwrap_or(0),
            // v1 keeps no restart count: the failed pods it counted.
            Self::PyTorchJob | Self::PyTorchJobTuned => status["replicaStatuses"]
                .as_object()
                .map(|r| r.values().filter_map(|s| s["failed"].as_u64()).sum())
                .unwrap_or(0),
        }
    }

    /// Whether the object's status says it finished successfully.
    fn succeeded(self, obj: &Value) -> bool {
        let condition = match self {
            Self::Ride => return obj["status"]["phase"] == "Succeeded",
            Self::PyTorchJob | Self::PyTorchJobTuned => "Succeeded",
            Self::JobSet => "Completed",
        };
        obj["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == condition && c["status"] == "True")
    }

    /// Whether the object's status says it failed for good.
    fn failed(self, obj: &Value) -> bool {
        let conditions = obj["status"]["conditions"].as_array().cloned();
        match self {
            Self::Ride => obj["status"]["phase"] == "Failed",
            _ => conditions
                .into_iter()
                .flatten()
                .any(|c| (c["type"] == "Failed") && c["status"] == "True"),
        }
    }
}

/// (CPU seconds, peak RSS in MiB) of a process, from /proc.
fn cpu_and_peak(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is 3rd,
    // utime the 14th and stime the 15th field of the whole line.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        rest.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0; // CLK_TCK is 100 on Linux
    (cpu, proc_status_kib(pid, "VmHWM:") as f64 / 1024.0)
}

fn component_pid(cluster: &Cluster, component: &str) -> u32 {
    std::fs::read_to_string(cluster.dir.join(format!("{component}.pid")))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
}

/// The API server's request counters: (operator's own, everyone's).
fn api_requests(cluster: &Cluster) -> (f64, f64) {
    let (ok, text) = cluster.kubectl(&["get", "--raw", "/metrics"]);
    assert!(ok, "API server metrics: {text}");
    let sum = |prefix: &str, filter: &dyn Fn(&str) -> bool| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && filter(l))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    (
        sum("apiserver_flowcontrol_dispatched_requests_total{", &|l| {
            l.contains("flow_schema=\"global-default\"")
        }),
        sum("apiserver_request_total{", &|_| true),
    )
}

/// A running peer or ride-operator process.
struct OperatorProcess {
    child: Child,
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Install what `system` needs, start its operator as user `bench-operator`
/// and wait until it reports ready.
async fn start(system: System, cluster: &Cluster) -> OperatorProcess {
    let kubeconfig = cluster.user_kubeconfig("bench-operator");
    let (ok, out) = cluster.kubectl(&[
        "create",
        "clusterrolebinding",
        "bench-operator",
        "--clusterrole",
        "cluster-admin",
        "--user",
        "bench-operator",
    ]);
    assert!(ok, "bind the operator's user: {out}");
    // RIDE_BENCH_OPERATOR_LOG: where to keep the operator's log (the
    // cluster's directory goes with the cluster); RIDE_BENCH_RUST_LOG: its
    // filter, for ride-operator (default `warn`).
    let log_path = std::env::var_os("RIDE_BENCH_OPERATOR_LOG")
        .map(|p| std::path::PathBuf::from(p).join(format!("{}.log", system.key())))
        .unwrap_or_else(|| cluster.dir.join("operator.log"));
    // Appended to: one file keeps every scenario of the run.
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("operator log");
    let health = common::free_port();
    let mut cmd;
    match system {
        System::Ride => {
            cluster.install_crd();
            cmd = Command::new(env!("CARGO_BIN_EXE_ride-operator"));
            cmd.args([
                "--metrics-addr",
                &format!("127.0.0.1:{health}"),
                "--no-leader-election",
                "--insecure-metrics",
                "--secure-metrics-addr",
                "off",
                "--log-format",
                "json",
            ])
            .env(
                "RUST_LOG",
                std::env::var("RIDE_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        }
        System::PyTorchJob | System::PyTorchJobTuned => {
            apply_crd(
                cluster,
                "kubeflow.org_pytorchjobs.yaml",
                "pytorchjobs.kubeflow.org",
            );
            // Its Deployment's namespace, the Secret its certificate rotator
            // fills, and the webhook configuration the rotator must find
            // before it reports ready. The configuration lists no webhooks:
            // the API server could not reach them by Service here (no
            // cluster DNS or proxy), so admission calls none of them.
            for args in [
                vec!["create", "namespace", "kubeflow"],
                vec![
                    "-n",
                    "kubeflow",
                    "create",
                    "secret",
                    "generic",
                    "training-operator-webhook-cert",
                ],
            ] {
                let (ok, out) = cluster.kubectl(&args);
                assert!(ok, "kubeflow prerequisites: {out}");
            }
            let hooks = cluster.dir.join("kubeflow-webhooks.yaml");
            std::fs::write(
                &hooks,
                "apiVersion: admissionregistration.k8s.io/v1\n\
                 kind: ValidatingWebhookConfiguration\n\
                 metadata: {name: validator.training-operator.kubeflow.org}\n\
                 webhooks: []\n",
            )
            .expect("webhook configuration");
            let (ok, out) = cluster.kubectl(&["apply", "-f", &hooks.to_string_lossy()]);
            assert!(ok, "kubeflow webhook configuration: {out}");
            let _ = std::fs::remove_dir_all(KUBEFLOW_CERT_DIR);
            cmd = Command::new(common::k8s_peers().join("bin/training-operator.v1"));
            cmd.args([
                "--metrics-bind-address",
                &format!("127.0.0.1:{}", common::free_port()),
                "--health-probe-bind-address",
                &format!("127.0.0.1:{health}"),
                "--webhook-server-port",
                &common::free_port().to_string(),
                "--enable-scheme",
                "pytorchjob",
            ])
            .env("MY_POD_NAMESPACE", "kubeflow");
            if system == System::PyTorchJobTuned {
                cmd.args([
                    "--controller-threads",
                    "16",
                    "--kube-api-qps",
                    "500",
                    "--kube-api-burst",
                    "500",
                ]);
            }
        }
        System::JobSet => {
            apply_crd(
                cluster,
                "jobset.x-k8s.io_jobsets.yaml",
                "jobsets.jobset.x-k8s.io",
            );
            // Its own certificate management expects a Service and
            // webhook configurations the API server could not reach here;
            // it serves its webhooks with a certificate of ours instead,
            // and none is registered (its defaults are written out in the
            // manifests).
            let certs = cluster.dir.join("jobset-certs");
            std::fs::create_dir_all(&certs).expect("jobset cert dir");
            let ok = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-days", "2", "-subj", "/CN=jobset-webhook"])
                .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
                .arg(certs.join("tls.key"))
                .arg("-out")
                .arg(certs.join("tls.crt"))
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "openssl: a webhook certificate for JobSet");
            let config = cluster.dir.join("jobset-config.yaml");
            std::fs::write(
                &config,
                format!(
                    "apiVersion: config.jobset.x-k8s.io/v1alpha1\n\
                     kind: Configuration\n\
                     leaderElection: {{leaderElect: false}}\n\
                     internalCertManagement: {{enable: false}}\n\
                     webhook: {{port: {}, host: 127.0.0.1, certDir: {}}}\n\
                     metrics: {{bindAddress: \"127.0.0.1:{}\"}}\n\
                     health: {{healthProbeBindAddress: \"127.0.0.1:{health}\"}}\n",
                    common::free_port(),
                    certs.display(),
                    common::free_port()
                ),
            )
            .expect("jobset configuration");
            cmd = Command::new(common::k8s_peers().join("bin/jobset"));
            cmd.arg("--config").arg(&config);
        }
    }
    let child = cmd
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e} (run scripts/k8s-peers.sh)", system.title()));
    let process = OperatorProcess { child };
    let t0 = Instant::now();
    let mut certs_written = false;
    while !common::http_get(("127.0.0.1", health), "/readyz").is_some_and(|r| r.contains(" 200 ")) {
        if matches!(system, System::PyTorchJob | System::PyTorchJobTuned) && !certs_written {
            certs_written = mount_kubeflow_certs(cluster);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{} not ready; log in {}",
            system.title(),
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    process
}

/// Play the kubelet's Secret volume for training-operator: once its rotator
/// has filled the Secret, write its files where the operator reads them.
fn mount_kubeflow_certs(cluster: &Cluster) -> bool {
    let mut files = Vec::new();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        let (ok, pem) = cluster.kubectl(&[
            "-n",
            "kubeflow",
            "get",
            "secret",
            "training-operator-webhook-cert",
            "-o",
            &format!("go-template={{{{index .data \"{key}\" | base64decode}}}}"),
        ]);
        if !ok || !pem.starts_with("-----BEGIN") {
            return false;
        }
        files.push((key, pem));
    }
    std::fs::create_dir_all(KUBEFLOW_CERT_DIR).expect("kubeflow cert dir");
    for (key, pem) in files {
        std::fs::write(Path::new(KUBEFLOW_CERT_DIR).join(key), pem).expect("cert file");
    }
    true
}

fn apply_crd(cluster: &Cluster, file: &str, name: &str) {
    let path = common::k8s_peers().join("crds").join(file);
    assert!(
        path.is_file(),
        "{} missing: run scripts/k8s-peers.sh",
        path.display()
    );
    let (ok, out) = cluster.kubectl(&["apply", "--server-side", "-f", &path.to_string_lossy()]);
    assert!(ok, "apply {file}: {out}");
    cluster.wait_established(name);
}

/// A pod as the watch last saw it.
struct PodSeen {
    training: String,
    name: String,
    node: String,
    phase: String,
    deleting: bool,
    first_seen: Instant,
}

/// "Training `t` has 2 pods (running ones if `running`) that are not
/// deleted, not in `exclude` and not on node `avoid`", and when that first held.
struct Goal {
    since: Instant,
    running: bool,
    exclude: HashSet<String>,
    avoid: Option<String>,
    done: Option<Instant>,
    /// How many of the pods that met it were first seen after `since`.
    new_pods: usize,
}

#[derive(Default)]
struct Tracker {
    pods: HashMap<String, PodSeen>,
    /// (phase name, training) → goal.
    goals: BTreeMap<(&'static str, String), Goal>,
    /// Pod uid → when it was first seen Failed.
    failed_at: HashMap<String, Instant>,
    /// Training → when each of its pods was first seen Succeeded (by uid).
    succeeded_at: HashMap<String, HashMap<String, Instant>>,
}

impl Tracker {
    fn observe(&mut self, label: &str, pod: &Pod, deleted: bool) {
        let Some(training) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(label))
            .cloned()
        else {
            return;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let now = Instant::now();
        if deleted {
            self.pods.remove(&uid);
        } else {
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if phase == "Failed" {
                self.failed_at.entry(uid.clone()).or_insert(now);
            }
            if phase == "Succeeded" {
                self.succeeded_at
                    .entry(training.clone())
                    .or_default()
                    .entry(uid.clone())
                    .or_insert(now);
            }
            let seen = self.pods.entry(uid).or_insert_with(|| PodSeen {
                training: training.clone(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                node: String::new(),
                phase: String::new(),
                deleting: false,
                first_seen: now,
            });
            seen.phase = phase;
            seen.node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            seen.deleting = pod.metadata.deletion_timestamp.is_some();
        }
        let pods = &self.pods;
        for ((_, t), goal) in self.goals.iter_mut() {
            if *t != training || goal.done.is_some() {
                continue;
            }
            let meeting: Vec<&PodSeen> = pods
                .iter()
                .filter(|(uid, p)| {
                    p.training == training
                        && !p.deleting
                        && !goal.exclude.contains(*uid)
                        && goal.avoid.as_deref() != Some(p.node.as_str())
                        && if goal.running {
                            p.phase == "Running"
                        } else {
                            p.phase == "Pending" || p.phase == "Running"
                        }
                })
                .map(|(_, p)| p)
                .collect();
            if meeting.len() >= WORKERS {
                goal.done = Some(now);
                goal.new_pods = meeting.iter().filter(|p| p.first_seen > goal.since).count();
            }
        }
    }

    fn add_goal(&mut self, phase: &'static str, training: &str, goal: Goal) {
        self.goals.insert((phase, training.to_string()), goal);
    }

    fn done(&self, phase: &str) -> (usize, usize) {
        let of_phase = self.goals.iter().filter(|((p, _), _)| *p == phase);
        let total = of_phase.clone().count();
        (total, of_phase.filter(|(_, g)| g.done.is_some()).count())
    }
}

fn lock<T>(t: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

async fn wait_phase(tracker: &Mutex<Tracker>, phase: &'static str, secs: u64) {
    let start = Instant::now();
    let mut last = Instant::now();
    loop {
        let (total, done) = lock(tracker).done(phase);
        if done >= total {
            return;
        }
        if last.elapsed() >= Duration::from_secs(10) {
            eprintln!("  {phase}: {done}/{total}");
            last = Instant::now();
        }
        if start.elapsed() >= Duration::from_secs(secs) {
            eprintln!("  {phase}: {done}/{total} after {secs} s; the rest count as not done");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One latency row: (done, total, p50, p99) in seconds.
#[derive(Clone, Copy, Default)]
struct Row {
    done: usize,
    total: usize,
    p50: f64,
    p99: f64,
}

fn row(total: usize, mut v: Vec<f64>) -> Row {
    v.sort_by(f64::total_cmp);
    Row {
        done: v.len(),
        total,
        p50: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
    }
}

/// What one system's run measured.
#[derive(Default)]
struct Measured {
    created: Row,
    running: Row,
    exit1: Row,
    exit1_new_pods: f64,
    exit137: Row,
    exit137_new_pods: f64,
    restarts_counted: u64,
    failed_for_good: usize,
    node_loss: Row,
    operator_cpu: f64,
    operator_peak_mib: f64,
    kcm_cpu: f64,
    operator_requests: f64,
    all_requests: f64,
    burst_secs: f64,
    /// The operator's requests per training by "verb resource[/sub]",
    /// from the API server's audit log.
    by_kind: BTreeMap<String, f64>,
}

/// The operator user's requests in the cluster's audit log, by verb and
/// resource (`watch pods`, `patch ridetrainings/status`, ...).
fn audited_requests(cluster: &Cluster) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(cluster.dir.join("audit.log")).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if e["user"]["username"] != "bench-operator" {
            continue;
        }
        let verb = e["verb"].as_str().unwrap_or("?");
        let what = match (
            e["objectRef"]["resource"].as_str(),
            e["objectRef"]["subresource"].as_str(),
        ) {
            (Some(r), Some(sub)) => format!("{r}/{sub}"),
            (Some(r), None) => r.to_string(),
            _ => e["requestURI"]
                .as_str()
                .unwrap_or("?")
                .split('?')
                .next()
                .unwrap_or("?")
                .to_string(),
        };
        *out.entry(format!("{verb} {what}")).or_default() += 1;
    }
    out
}

/// Watch the pods of `system`'s trainings into `tracker`.
fn watch_pods(
    system: System,
    client: &kube::Client,
    tracker: &Arc<Mutex<Tracker>>,
) -> tokio::task::JoinHandle<()> {
    let tracker = Arc::clone(tracker);
    let label = system.training_label();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    tokio::spawn(async move {
        let stream = watcher(pods, watcher::Config::default().labels(label)).default_backoff();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                    lock(&tracker).observe(label, &p, false)
                }
                Ok(watcher::Event::Delete(p)) => lock(&tracker).observe(label, &p, true),
                _ => {}
            }
        }
    })
}

/// Goals "created" and "running" for a training about to be created.
fn add_start_goals(tracker: &Mutex<Tracker>, name: &str) {
    let now = Instant::now();
    let mut t = lock(tracker);
    for (phase, running) in [("created", false), ("running", true)] {
        t.add_goal(
            phase,
            name,
            Goal {
                since: now,
                running,
                exclude: HashSet::new(),
                avoid: None,
                done: None,
                new_pods: 0,
            },
        );
    }
}

async fn run(system: System, n: usize, wait: u64) -> Measured {
    eprintln!("== {} with {n} trainings", system.title());
    let cluster = Cluster::start();
    let client = cluster.client().await;
    let mut nodes = KwokNodes::start(&cluster, NODES, WORKERS * n);
    let operator = start(system, &cluster).await;
    let op_pid = operator.child.id();
    let kcm_pid = component_pid(&cluster, "kube-controller-manager");
    let kcm_cpu0 = cpu_and_peak(kcm_pid).0;
    let (op_req0, all_req0) = api_requests(&cluster);

    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let watch = watch_pods(system, &client, &tracker);

    // 1. One burst of creations.
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &system.resource());
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i:04}")).collect();
    let burst = Instant::now();
    for name in &names {
        let obj: DynamicObject =
            serde_json::from_value(system.manifest(name, IMAGE, &cluster.dir)).expect("manifest");
        add_start_goals(&tracker, name);
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    let burst_secs = burst.elapsed().as_secs_f64();
    wait_phase(&tracker, "created", 600).await;
    wait_phase(&tracker, "running", 600).await;

    // 2. One worker of every training fails: exit 1 or SIGKILL.
    eprintln!("  one worker of every training fails");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for (i, name) in names.iter().enumerate() {
        let victim = {
            let t = lock(&tracker);
            let mut running: Vec<(&String, &PodSeen)> = t
                .pods
                .iter()
                .filter(|(_, p)| p.training == *name && p.phase == "Running" && !p.deleting)
                .collect();
            running.sort_by(|a, b| a.1.name.cmp(&b.1.name));
            running
                .last()
                .map(|(uid, p)| ((*uid).clone(), p.name.clone()))
        };
        let Some((uid, pod)) = victim else { continue };
        let phase = if i % 2 == 0 { "exit 1" } else { "exit 137" };
        lock(&tracker).add_goal(
            phase,
            name,
            Goal {
                since: Instant::now(),
                running: true,
                exclude: HashSet::from([uid]),
                avoid: None,
                done: None,
                new_pods: 0,
            },
        );
        // What the kubelet reports for a worker that exits 1 or is killed.
        let code = if i % 2 == 0 { "1" } else { "137" };
        let patch = json!({"metadata": {"annotations": {EXIT_ANNOTATION: code}}});
        pods.patch(&pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("fail pod {pod}: {e}"));
    }
    wait_phase(&tracker, "exit 1", wait).await;
    wait_phase(&tracker, "exit 137", wait).await;
    let mut restarts_counted = 0;
    let mut failed_for_good = 0;
    for obj in api.list(&Default::default()).await.expect("list trainings") {
        let v = serde_json::to_value(&obj).unwrap_or_default();
        restarts_counted += system.restarts(&v);
        failed_for_good += usize::from(system.failed(&v));
    }

    // 3. Lose node-c.
    let lost = "node-c";
    let affected: Vec<(String, HashSet<String>)> = {
        let t = lock(&tracker);
        let mut by_training: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for (uid, p) in &t.pods {
            if p.node == lost && p.phase == "Running" && !p.deleting {
                by_training
                    .entry(p.training.clone())
                    .or_default()
                    .insert(uid.clone());
            }
        }
        by_training.into_iter().collect()
    };
    let by_node: BTreeMap<String, usize> =
        lock(&tracker)
            .pods
            .values()
            .fold(BTreeMap::new(), |mut m, p| {
                *m.entry(format!("{} {}", p.node, p.phase)).or_default() += 1;
                m
            });
    eprintln!(
        "  {lost} stops; {} trainings have a running pod there (pods by node and phase: {by_node:?})",
        affected.len()
    );
    let stopped = Instant::now();
    {
        let mut t = lock(&tracker);
        for (training, uids) in &affected {
            t.add_goal(
                "node loss",
                training,
                Goal {
                    since: stopped,
                    running: true,
                    exclude: uids.clone(),
                    avoid: Some(lost.into()),
                    done: None,
                    new_pods: 0,
                },
            );
        }
    }
    nodes.lose(LOST_GROUP);
    wait_phase(&tracker, "node loss", wait).await;

    let (operator_cpu, operator_peak_mib) = cpu_and_peak(op_pid);
    let kcm_cpu = cpu_and_peak(kcm_pid).0 - kcm_cpu0;
    let (op_req1, all_req1) = api_requests(&cluster);
    watch.abort();
    drop(operator);

    let t = lock(&tracker);
    let latencies = |phase: &str, from_failure: bool| -> (Row, f64) {
        let goals: Vec<&Goal> = t
            .goals
            .iter()
            .filter(|((p, _), _)| *p == phase)
            .map(|(_, g)| g)
            .collect();
        let mut v = Vec::new();
        let mut new_pods = Vec::new();
        for g in &goals {
            let Some(done) = g.done else { continue };
            let from = if from_failure {
                // From the failure as the kubelet reported it.
                g.exclude
                    .iter()
                    .find_map(|uid| t.failed_at.get(uid))
                    .copied()
                    .unwrap_or(g.since)
            } else {
                g.since
            };
            v.push(done.saturating_duration_since(from).as_secs_f64());
            new_pods.push(g.new_pods as f64);
        }
        let mean_new = new_pods.iter().sum::<f64>() / new_pods.len().max(1) as f64;
        (row(goals.len(), v), mean_new)
    };
    let (exit1, exit1_new_pods) = latencies("exit 1", true);
    let (exit137, exit137_new_pods) = latencies("exit 137", true);
    let result = Measured {
        created: latencies("created", false).0,
        running: latencies("running", false).0,
        exit1,
        exit1_new_pods,
        exit137,
        exit137_new_pods,
        restarts_counted,
        failed_for_good,
        node_loss: latencies("node loss", false).0,
        operator_cpu,
        operator_peak_mib,
        kcm_cpu,
        operator_requests: (op_req1 - op_req0) / n as f64,
        all_requests: (all_req1 - all_req0) / n as f64,
        burst_secs,
        by_kind: audited_requests(&cluster)
            .into_iter()
            .map(|(k, v)| (k, v as f64 / n as f64))
            .collect(),
    };
    drop(t);
    drop(nodes);
    result
}

fn latency(r: &Row) -> String {
    if r.done == 0 {
        return format!("none of {} within the wait", r.total);
    }
    let mut s = format!("{:.2} / {:.2}", r.p50, r.p99);
    if r.done < r.total {
        s += &format!(" ({} of {} only)", r.done, r.total);
    }
    s
}

fn new_pods(r: &Row, mean: f64) -> String {
    if r.done == 0 {
        "-".into()
    } else {
        format!("{mean:.2}")
    }
}

fn print_table(n: usize, server: &str, wait: u64, results: &[(System, Measured)]) {
    println!(
        "\n### {n} trainings x {WORKERS} workers, one burst; 3 simulated nodes ({}); kube-apiserver {server}; \
         a phase's stragglers count as not done after {wait} s\n",
        kwok::version()
    );
    let mut header = "| | ".to_string();
    header += &results
        .iter()
        .map(|(s, _)| format!("{} ({})", s.title(), s.version()))
        .collect::<Vec<_>>()
        .join(" | ");
    println!("{header} |");
    println!("|---|{}", "---|".repeat(results.len()));
    let line = |label: &str, f: &dyn Fn(&Measured) -> String| {
        let cells: Vec<String> = results.iter().map(|(_, r)| f(r)).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    line("creation burst (s to create all objects)", &|r| {
        format!("{:.1}", r.burst_secs)
    });
    line("create -> both pods created, p50 / p99 (s)", &|r| {
        latency(&r.created)
    });
    line("create -> both pods running, p50 / p99 (s)", &|r| {
        latency(&r.running)
    });
    line(
        "worker exits 1 -> 2 pods running again, p50 / p99 (s)",
        &|r| latency(&r.exit1),
    );
    line(
        "  pods new in that pair (2: gang restarted, 1: one pod)",
        &|r| new_pods(&r.exit1, r.exit1_new_pods),
    );
    line(
        "worker SIGKILLed (137) -> 2 pods running again, p50 / p99 (s)",
        &|r| latency(&r.exit137),
    );
    line("  pods new in that pair", &|r| {
        new_pods(&r.exit137, r.exit137_new_pods)
    });
    line("restarts the status counts (all trainings)", &|r| {
        r.restarts_counted.to_string()
    });
    line("trainings failed for good after the failures", &|r| {
        r.failed_for_good.to_string()
    });
    line(
        "node lost -> affected trainings running elsewhere, p50 / p99 (s)",
        &|r| latency(&r.node_loss),
    );
    line("operator CPU (s, whole scenario)", &|r| {
        format!("{:.1}", r.operator_cpu)
    });
    line("operator peak RSS (MiB)", &|r| {
        format!("{:.1}", r.operator_peak_mib)
    });
    line("kube-controller-manager CPU (s)", &|r| {
        format!("{:.1}", r.kcm_cpu)
    });
    line("operator's API requests per training", &|r| {
        format!("{:.1}", r.operator_requests)
    });
    line("all API requests per training (every client)", &|r| {
        format!("{:.1}", r.all_requests)
    });
    println!(
        "\nThe operator's API requests per training, by verb and resource (the API server's audit log of its user, whole scenario):\n"
    );
    println!("{header} |");
    println!("|---|{}", "---|".repeat(results.len()));
    let kinds: std::collections::BTreeSet<&String> =
        results.iter().flat_map(|(_, r)| r.by_kind.keys()).collect();
    for kind in kinds {
        line(kind, &|r| {
            r.by_kind
                .get(kind)
                .map_or("-".into(), |v| format!("{v:.2}"))
        });
    }
}

fn main() {
    // Every cluster this bench starts keeps an audit log of the operator's
    // requests (scripts/k8s-cluster.sh), for the breakdown by verb.
    std::env::set_var("RIDE_K8S_AUDIT_USERS", "bench-operator");
    let sizes: Vec<usize> = std::env::var("RIDE_BENCH_TRAININGS")
        .unwrap_or_else(|_| "100".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .collect();
    let systems: Vec<System> = std::env::var("RIDE_BENCH_SYSTEMS")
        .unwrap_or_else(|_| "ride,pytorchjob,pytorchjob-tuned,jobset".into())
        .split(',')
        .map(|s| System::parse(s).unwrap_or_else(|| panic!("unknown system {s:?}")))
        .collect();
    let wait: u64 = std::env::var("RIDE_BENCH_WAIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let server = common::k8s_bin()
        .parent()
        .and_then(|p| p.file_name())
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in sizes {
        let mut results = Vec::new();
        for &system in &systems {
            let r = runtime.block_on(run(system, n, wait));
            results.push((system, r));
        }
        print_table(n, &server, wait, &results);
    }
    // "RATExMINUTES": trainings a minute, for how long; "0" skips it.
    let churn = std::env::var("RIDE_BENCH_CHURN").unwrap_or_else(|_| "20x10".into());
    if let Some((rate, minutes)) = churn.split_once('x') {
        let plan = churn::Plan {
            per_minute: rate.trim().parse().expect("RIDE_BENCH_CHURN rate"),
            minutes: minutes.trim().parse().expect("RIDE_BENCH_CHURN minutes"),
        };
        if plan.per_minute > 0 && plan.minutes > 0 {
            let mut results = Vec::new();
            for &system in &systems {
                results.push((system, runtime.block_on(churn::run(system, plan, wait))));
            }
            churn::print(plan, &server, wait, &results);
        }
    }
}
