//! Benchmark: many RideTrainings at once on a real control plane.
//!
//! Starts a control plane (`scripts/k8s-cluster.sh`: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler), two node agents whose pods are
//! idle stand-in workers (`tests/common`), and the real `ride-operator`
//! binary. Creates N RideTrainings (default 500, `RIDE_BENCH_TRAININGS`) of 2
//! workers each in one burst and measures per training, from a watch on the
//! pods:
//!
//! - creation → both worker pods exist (the operator's part);
//! - creation → both worker pods running (adds the scheduler and the node
//!   agents);
//! - then rank 1 of every training exits 1 at once: the failure seen (pod
//!   phase Failed) → both pods of the next attempt exist (`backoffSeconds:
//!   0`, so only orchestration is measured).
//!
//! Prints p50/p99/max of each, the operator's reconcile-duration histogram
//! and its memory (idle, final and peak RSS from /proc), once per
//! `--max-concurrent-reconciles` value in `RIDE_BENCH_CONCURRENCY` (default
//! "16": the operator's default). Run:
//! `cargo bench -p ride-operator --bench reconcile`.
//!
//! No other operator runs beside it here; the side-by-side with Kubeflow and
//! JobSet on the same control plane is its own benchmark.

#[path = "../tests/common/mod.rs"]
mod common;

use common::cluster::Cluster;
use common::node_agent::NodeSpec;
use common::{percentile, proc_status_kib, stand_in_image};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use ride_operator::crd::RideTraining;
use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NS: &str = "default";

/// What the pod watch saw, per training.
#[derive(Default)]
struct Seen {
    /// (training, attempt) → pod names seen.
    pods: HashMap<(String, String), HashSet<String>>,
    /// (training, attempt) → when the second pod appeared.
    gang_created: HashMap<(String, String), Instant>,
    /// (training, attempt) → running pod names.
    running: HashMap<(String, String), HashSet<String>>,
    /// (training, attempt) → when the second pod ran.
    gang_running: HashMap<(String, String), Instant>,
    /// training → when a worker of attempt 0 was seen Failed.
    failed: HashMap<String, Instant>,
}

fn record(seen: &Mutex<Seen>, pod: &Pod) {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let (Some(t), Some(a)) = (
        labels.get("ride.dev/training"),
        labels.get("ride.dev/attempt"),
    ) else {
        return;
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = (t.clone(), a.clone());
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
    let set = s.pods.entry(key.clone()).or_default();
    set.insert(name.clone());
    if set.len() == 2 {
        s.gang_created
            .entry(key.clone())
            .or_insert_with(Instant::now);
    }
    if phase == "Running" {
        let r = s.running.entry(key.clone()).or_default();
        r.insert(name);
        if r.len() == 2 {
            s.gang_running
                .entry(key.clone())
                .or_insert_with(Instant::now);
        }
    }
    if phase == "Failed" && a == "0" {
        s.failed.entry(t.clone()).or_insert_with(Instant::now);
    }
}

fn main() {
    let n: usize = std::env::var("RIDE_BENCH_TRAININGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let settings: Vec<u16> = std::env::var("RIDE_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "16".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    for c in settings {
        runtime.block_on(run(n, c));
    }
}

async fn wait_all(
    what: &str,
    n: usize,
    secs: u64,
    seen: &Mutex<Seen>,
    count: impl Fn(&Seen) -> usize,
) {
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let k = count(&seen.lock().unwrap_or_else(|e| e.into_inner()));
        if k >= n {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            eprintln!("  {what}: {k}/{n}");
            last_print = Instant::now();
        }
        if start.elapsed() > Duration::from_secs(secs) {
            eprintln!("  {what}: only {k}/{n} after {secs} s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run(n: usize, concurrency: u16) {
    let cluster = Cluster::start();
    cluster.install_crd();
    let client = cluster.client().await;
    let server_version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_default();
    let mut agents = Vec::new();
    for name in ["node-a", "node-b"] {
        let mut spec = NodeSpec::new(name, vec![stand_in_image(&cluster.dir)]);
        spec.pods = (2 * n) as u32;
        spec.cpu = "1000".into();
        agents.push(cluster.node(spec).await);
    }
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ride-operator"))
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--no-leader-election",
            "--insecure-metrics",
            "--secure-metrics-addr",
            "off",
            "--max-concurrent-reconciles",
            &concurrency.to_string(),
            "--progress-interval-seconds",
            "3600",
            "--log-format",
            "json",
        ])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("RIDE_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(match std::env::var("RIDE_BENCH_OPERATOR_LOG") {
            Ok(path) => Stdio::from(std::fs::File::create(path).expect("operator log file")),
            Err(_) => Stdio::null(),
        })
        .spawn()
        .expect("start ride-operator");
    let pid = child.id();
    let start = Instant::now();
    while !common::http_get(("127.0.0.1", port), "/readyz").is_some_and(|r| r.contains(" 200 ")) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "operator not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_idle = proc_status_kib(pid, "VmRSS:");

    let seen = Arc::new(Mutex::new(Seen::default()));
    let watch = {
        let seen = Arc::clone(&seen);
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        tokio::spawn(async move {
            let stream = watcher(pods, watcher::Config::default().labels("ride.dev/training"))
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                if let Ok(pod) = ev {
                    record(&seen, &pod);
                }
            }
        })
    };

    eprintln!("creating {n} RideTrainings (2 workers each)...");
    let rts: Api<RideTraining> = Api::namespaced(client.clone(), NS);
    let mut created: HashMap<String, Instant> = HashMap::new();
    let burst = Instant::now();
    for i in 0..n {
        let name = format!("bench-{i:04}");
        let rt: RideTraining = serde_json::from_value(serde_json::json!({
            "apiVersion": "ride.dev/v1alpha1", "kind": "RideTraining",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"image": "ghcr.io/ride-on-cluster/ride-trainer:bench", "trainer": {"config": "c.yaml"},
                     "workers": {"replicas": 2},
                     "checkpoint": {"uri": format!("file://{}/{name}", cluster.dir.display())},
                     "restartPolicy": {"budget": 3, "backoffSeconds": 0}}}))
        .expect("training object");
        created.insert(name, Instant::now());
        rts.create(&PostParams::default(), &rt)
            .await
            .expect("create RideTraining");
    }
    let create_secs = burst.elapsed().as_secs_f64();
    wait_all("gangs created", n, 900, &seen, |s| {
        s.gang_created.keys().filter(|(_, a)| a == "0").count()
    })
    .await;
    wait_all("gangs running", n, 900, &seen, |s| {
        s.gang_running.keys().filter(|(_, a)| a == "0").count()
    })
    .await;
    let settled = burst.elapsed().as_secs_f64();

    eprintln!("rank 1 of every training exits 1...");
    for i in 0..n {
        let pod = format!("bench-{i:04}-0-1");
        for a in &agents {
            if a.signal_pod(NS, &pod, "USR2") {
                break;
            }
        }
    }
    wait_all("new gangs created", n, 900, &seen, |s| {
        s.gang_created.keys().filter(|(_, a)| a == "1").count()
    })
    .await;

    let rss = proc_status_kib(pid, "VmRSS:");
    let hwm = proc_status_kib(pid, "VmHWM:");
    let metrics = common::http_get(("127.0.0.1", port), "/metrics").unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    watch.abort();

    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    let since_create = |m: &HashMap<(String, String), Instant>| -> Vec<f64> {
        m.iter()
            .filter(|((_, a), _)| a == "0")
            .filter_map(|((t, _), at)| Some(at.duration_since(*created.get(t)?).as_secs_f64()))
            .collect()
    };
    let restart: Vec<f64> = s
        .gang_created
        .iter()
        .filter(|((_, a), _)| a == "1")
        .filter_map(|((t, _), at)| Some(at.duration_since(*s.failed.get(t)?).as_secs_f64()))
        .collect();
    let summary = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or(f64::NAN),
        )
    };
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let count = metric("ride_operator_reconcile_duration_seconds_count");
    let sum = metric("ride_operator_reconcile_duration_seconds_sum");
    println!(
        "\nride-operator on a real control plane (kube-apiserver {}), 2 node agents: {n} RideTrainings x 2 workers, \
         one burst (created in {create_secs:.1} s), --max-concurrent-reconciles {concurrency}{}",
        server_version,
        if concurrency == 0 { " (unbounded)" } else { "" }
    );
    println!(
        "{:<46} {:>6} {:>9} {:>9} {:>9}",
        "latency (s)", "done", "p50", "p99", "max"
    );
    for (label, v) in [
        ("create -> both pods created", since_create(&s.gang_created)),
        ("create -> both pods running", since_create(&s.gang_running)),
        ("worker Failed -> next gang's pods created", restart),
    ] {
        let (k, p50, p99, max) = summary(v);
        println!("{label:<46} {k:>6} {p50:>9.3} {p99:>9.3} {max:>9.3}");
    }
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("ride_operator_reconcile_duration_seconds_bucket{le=\"")?;
            let (le, n) = rest.split_once("\"} ")?;
            Some((le.parse().unwrap_or(f64::INFINITY), n.trim().parse().ok()?))
        })
        .collect();
    let quantile = |q: f64| {
        buckets
            .iter()
            .find(|(_, n)| *n >= q * count)
            .map_or(f64::NAN, |(le, _)| *le)
    };
    println!(
        "{:<46} {:>6.0} {:>9} {:>9} (mean {:.4} s; bucket upper bounds)",
        "one reconcile (operator histogram)",
        count,
        format!("<={}", quantile(0.5)),
        format!("<={}", quantile(0.99)),
        sum / count
    );
    println!(
        "{:<46} idle {:.1} MiB, after {:.1} MiB, peak {:.1} MiB",
        "operator memory (RSS)",
        rss_idle as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!("first burst settled (all gangs running) in {settled:.1} s");
    drop(agents);
}
