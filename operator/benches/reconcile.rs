//! Benchmark: many RideTrainings at once against the API server double.
//!
//! Starts the real `ride-operator` binary, creates N trainings (default 500,
//! `RIDE_BENCH_TRAININGS`) of 2 workers each in one burst, and measures per
//! training the latency from creation until its pods exist and its status
//! says Created, then, after every pod is reported running in one burst, the
//! latency until its status says Running. Prints p50/p99/max of both, the
//! operator's reconcile-duration histogram summary, and its memory (peak and
//! current RSS from /proc), once per `--max-concurrent-reconciles` setting in
//! `RIDE_BENCH_CONCURRENCY` (default "16,0": the default bound, then
//! unbounded). Run: `cargo bench -p ride-operator --bench reconcile`.
//!
//! There is no reference operator to run beside it on these machines
//! (Kubeflow's needs a real cluster), so the numbers stand alone.

#[path = "../tests/common/apiserver.rs"]
mod apiserver;

use apiserver::ApiServer;
use serde_json::json;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NS: &str = "default";
const RTS: &str = "ride.dev/v1alpha1/ridetrainings";
const PODS: &str = "/v1/pods";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
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
    // RIDE_BENCH_CONCURRENCY: comma-separated --max-concurrent-reconciles values to compare.
    let settings: Vec<u16> = std::env::var("RIDE_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "16,0".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    for c in settings {
        runtime.block_on(run(n, c));
    }
}

async fn run(n: usize, concurrency: u16) {
    let dir = tempfile::tempdir().expect("temp dir");
    let api = ApiServer::start().await;
    let crd = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crds/ridetrainings.ride.dev.yaml"),
    )
    .expect("CRD file");
    api.install_crd(&crd);
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ride-operator"))
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--no-leader-election",
        ])
        .args([
            "--max-concurrent-reconciles",
            &concurrency.to_string(),
            "--progress-interval-seconds",
            "3600",
            "--log-format",
            "json",
        ])
        .env("KUBECONFIG", &kubeconfig)
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
    while !http_get(port, "/readyz").contains(" 200 ") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "operator not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_idle = proc_kib(pid, "VmRSS:");

    eprintln!("creating {n} RideTrainings (2 workers each)...");
    let mut created: HashMap<String, Instant> = HashMap::new();
    for i in 0..n {
        let name = format!("bench-{i:04}");
        api.create(
            RTS,
            NS,
            json!({"apiVersion": "ride.dev/v1alpha1", "kind": "RideTraining",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"image": "ride:1", "trainer": {"config": "c.yaml"},
                         "workers": {"replicas": 2}, "checkpoint": {"uri": format!("file://{}/{name}", dir.path().display())},
                         "restartPolicy": {"budget": 1, "backoffSeconds": 1}}}),
        );
        created.insert(name, Instant::now());
    }
    let mut to_created: HashMap<String, f64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while to_created.len() < n && Instant::now() < deadline {
        let mut pods_per: HashMap<String, usize> = HashMap::new();
        for p in api.list(PODS, NS) {
            if let Some(t) = p["metadata"]["labels"]["ride.dev/training"].as_str() {
                *pods_per.entry(t.to_string()).or_default() += 1;
            }
        }
        for rt in api.list(RTS, NS) {
            let name = rt["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !to_created.contains_key(&name)
                && rt["status"]["phase"] == "Created"
                && pods_per.get(&name) == Some(&2)
            {
                to_created.insert(name.clone(), created[&name].elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let burst_created = start.elapsed();
    eprintln!("reporting every pod running...");
    let mut running_at: HashMap<String, Instant> = HashMap::new();
    for p in api.list(PODS, NS) {
        let name = p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api.patch(PODS, NS, &name, json!({"status": {"phase": "Running", "containerStatuses": [{"name": "trainer",
            "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}}));
        if let Some(t) = p["metadata"]["labels"]["ride.dev/training"].as_str() {
            running_at.insert(t.to_string(), Instant::now());
        }
    }
    let mut to_running: HashMap<String, f64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while to_running.len() < n && Instant::now() < deadline {
        for rt in api.list(RTS, NS) {
            let name = rt["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !to_running.contains_key(&name) && rt["status"]["phase"] == "Running" {
                if let Some(t) = running_at.get(&name) {
                    to_running.insert(name, t.elapsed().as_secs_f64());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss = proc_kib(pid, "VmRSS:");
    let hwm = proc_kib(pid, "VmHWM:");
    let metrics = http_get(port, "/metrics");
    let _ = child.kill();
    let _ = child.wait();

    let summary = |v: &HashMap<String, f64>| {
        let mut s: Vec<f64> = v.values().copied().collect();
        s.sort_by(f64::total_cmp);
        (
            s.len(),
            percentile(&s, 0.5),
            percentile(&s, 0.99),
            s.last().copied().unwrap_or(f64::NAN),
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
        "\nride-operator against the API server double: {n} RideTrainings x 2 workers, one burst, \
         --max-concurrent-reconciles {concurrency}{}",
        if concurrency == 0 { " (unbounded)" } else { "" }
    );
    println!(
        "{:<44} {:>6} {:>9} {:>9} {:>9}",
        "latency (s)", "done", "p50", "p99", "max"
    );
    for (label, v) in [
        ("create -> pods + status Created", &to_created),
        ("all pods running -> status Running", &to_running),
    ] {
        let (k, p50, p99, max) = summary(v);
        println!("{label:<44} {k:>6} {p50:>9.3} {p99:>9.3} {max:>9.3}");
    }
    // Quantiles of one reconcile's duration from the histogram: the upper
    // bound of the bucket where the cumulative count crosses q.
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
        "{:<44} {:>6.0} {:>9} {:>9} (mean {:.4} s; bucket upper bounds)",
        "one reconcile (operator histogram)",
        count,
        format!("<={}", quantile(0.5)),
        format!("<={}", quantile(0.99)),
        sum / count
    );
    println!(
        "{:<44} idle {:.1} MiB, after {:.1} MiB, peak {:.1} MiB",
        "operator memory (RSS)",
        rss_idle as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "first burst settled in {:.1} s; API requests served: {}",
        burst_created.as_secs_f64(),
        api.requests()
    );
}
