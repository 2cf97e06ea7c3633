//! Sustained churn: trainings arrive at a steady rate and each finishes on
//! its own (its pods' image is the one `bench/kwok/stages.yaml` ends
//! Succeeded 60 s after it runs), so the operator's cost is seen in a steady
//! state rather than after one burst: the API requests per second and the
//! operator's CPU and RSS, sampled every 30 s, while the cluster holds a
//! constant number of live trainings.

use super::kwok::KwokNodes;
use super::{
    add_start_goals, api_requests, cpu_and_peak, lock, row, start, watch_pods, Row, System,
    Tracker, NODES, NS, WORKERS,
};
use crate::common::cluster::Cluster;
use crate::common::proc_status_kib;
use futures::StreamExt;
use kube::api::{Api, DynamicObject, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The image whose pods kwok's `pod-finish` stage completes.
pub const FINISHING_IMAGE: &str = "ghcr.io/ride-on-cluster/ride-trainer:bench-finishes";
/// How often the cost is sampled.
const SAMPLE: Duration = Duration::from_secs(30);

/// How many trainings arrive, how fast.
#[derive(Clone, Copy)]
pub struct Plan {
    pub per_minute: usize,
    pub minutes: usize,
}

impl Plan {
    fn total(self) -> usize {
        self.per_minute * self.minutes
    }
}

/// One 30 s window.
pub struct Sample {
    t: f64,
    created: usize,
    finished: usize,
    live_pods: usize,
    operator_rps: f64,
    all_rps: f64,
    operator_cpu_pct: f64,
    rss_mib: f64,
}

/// What one system's churn run measured.
pub struct ChurnMeasured {
    total: usize,
    finished: usize,
    running: Row,
    /// The last pod seen Succeeded → the training's status says it finished.
    finish: Row,
    samples: Vec<Sample>,
    operator_cpu: f64,
    peak_rss_mib: f64,
    operator_requests_per_training: f64,
}

/// Arrivals at `plan`'s rate, then up to `wait` s for the last to finish.
pub async fn run(system: System, plan: Plan, wait: u64) -> ChurnMeasured {
    eprintln!(
        "== {}: churn of {} trainings a minute for {} min",
        system.title(),
        plan.per_minute,
        plan.minutes
    );
    let cluster = Cluster::start();
    let client = cluster.client().await;
    // Room for every training at once, as if none finished.
    let nodes = KwokNodes::start(&cluster, NODES, WORKERS * plan.total());
    let operator = start(system, &cluster).await;
    let op_pid = operator.child.id();
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let pod_watch = watch_pods(system, &client, &tracker);

    // When each training's status first said it finished.
    let finished_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &system.resource());
    let object_watch = {
        let finished_at = Arc::clone(&finished_at);
        let api = api.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
                    let v = serde_json::to_value(&o).unwrap_or_default();
                    if system.succeeded(&v) {
                        let name = o.metadata.name.clone().unwrap_or_default();
                        lock(&finished_at).entry(name).or_insert_with(Instant::now);
                    }
                }
            }
        })
    };

    let t0 = Instant::now();
    let (op_req0, all_req0) = api_requests(&cluster);
    let mut samples = Vec::new();
    let mut window = (t0, op_req0, all_req0, cpu_and_peak(op_pid).0);
    let mut sample = |created: usize, samples: &mut Vec<Sample>| {
        let now = Instant::now();
        let (op_req, all_req) = api_requests(&cluster);
        let cpu = cpu_and_peak(op_pid).0;
        let secs = now.duration_since(window.0).as_secs_f64().max(1e-3);
        samples.push(Sample {
            t: now.duration_since(t0).as_secs_f64(),
            created,
            finished: lock(&finished_at).len(),
            live_pods: lock(&tracker).pods.values().filter(|p| !p.deleting).count(),
            operator_rps: (op_req - window.1) / secs,
            all_rps: (all_req - window.2) / secs,
            operator_cpu_pct: 100.0 * (cpu - window.3) / secs,
            rss_mib: proc_status_kib(op_pid, "VmRSS:") as f64 / 1024.0,
        });
        window = (now, op_req, all_req, cpu);
    };

    let gap = Duration::from_secs_f64(60.0 / plan.per_minute.max(1) as f64);
    let mut next_sample = t0 + SAMPLE;
    let names: Vec<String> = (0..plan.total()).map(|i| format!("churn-{i:04}")).collect();
    for (i, name) in names.iter().enumerate() {
        let due = t0 + gap * i as u32;
        while Instant::now() < due {
            if Instant::now() >= next_sample {
                sample(i, &mut samples);
                next_sample += SAMPLE;
            }
            tokio::time::sleep(
                due.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200)),
            )
            .await;
        }
        let obj: DynamicObject =
            serde_json::from_value(system.manifest(name, FINISHING_IMAGE, &cluster.dir))
                .expect("manifest");
        add_start_goals(&tracker, name);
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    let arrivals_done = Instant::now();
    eprintln!("  all {} created; waiting for them to finish", names.len());
    while lock(&finished_at).len() < names.len()
        && arrivals_done.elapsed() < Duration::from_secs(wait)
    {
        if Instant::now() >= next_sample {
            sample(names.len(), &mut samples);
            next_sample += SAMPLE;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sample(names.len(), &mut samples);

    let (operator_cpu, peak_rss_mib) = cpu_and_peak(op_pid);
    let (op_req1, _) = api_requests(&cluster);
    pod_watch.abort();
    object_watch.abort();
    drop(operator);

    let t = lock(&tracker);
    let done = lock(&finished_at);
    let running: Vec<f64> = t
        .goals
        .iter()
        .filter(|((p, _), _)| *p == "running")
        .filter_map(|(_, g)| Some(g.done?.saturating_duration_since(g.since).as_secs_f64()))
        .collect();
    let finish: Vec<f64> = done
        .iter()
        .filter_map(|(name, at)| {
            let last_pod = t.succeeded_at.get(name)?.values().max()?;
            Some(at.saturating_duration_since(*last_pod).as_secs_f64())
        })
        .collect();
    let result = ChurnMeasured {
        total: names.len(),
        finished: done.len(),
        running: row(names.len(), running),
        finish: row(names.len(), finish),
        samples,
        operator_cpu,
        peak_rss_mib,
        operator_requests_per_training: (op_req1 - op_req0) / names.len().max(1) as f64,
    };
    drop((t, done));
    drop(nodes);
    result
}

fn mean_peak(v: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = v.clone().count().max(1) as f64;
    (v.clone().sum::<f64>() / n, v.fold(0.0, f64::max))
}

/// The side-by-side summary and each system's time series.
pub fn print(plan: Plan, server: &str, wait: u64, results: &[(System, ChurnMeasured)]) {
    println!(
        "\n### Churn: {} trainings x {WORKERS} workers a minute for {} min, each running 60 s; \
         3 simulated nodes ({}); kube-apiserver {server}; {wait} s for the last to finish\n",
        plan.per_minute,
        plan.minutes,
        super::kwok::version()
    );
    let header = format!(
        "| | {} |",
        results
            .iter()
            .map(|(s, _)| format!("{} ({})", s.title(), s.version()))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("{header}");
    println!("|---|{}", "---|".repeat(results.len()));
    let line = |label: &str, f: &dyn Fn(&ChurnMeasured) -> String| {
        let cells: Vec<String> = results.iter().map(|(_, r)| f(r)).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    line("trainings finished / created", &|r| {
        format!("{} / {}", r.finished, r.total)
    });
    line("create -> both pods running, p50 / p99 (s)", &|r| {
        super::latency(&r.running)
    });
    line(
        "last pod Succeeded -> training finished, p50 / p99 (s)",
        &|r| super::latency(&r.finish),
    );
    line(
        "operator's API requests per second, mean / peak (30 s windows)",
        &|r| {
            let (m, p) = mean_peak(r.samples.iter().map(|s| s.operator_rps));
            format!("{m:.1} / {p:.1}")
        },
    );
    line("all API requests per second, mean / peak", &|r| {
        let (m, p) = mean_peak(r.samples.iter().map(|s| s.all_rps));
        format!("{m:.1} / {p:.1}")
    });
    line("operator CPU (% of one core), mean / peak", &|r| {
        let (m, p) = mean_peak(r.samples.iter().map(|s| s.operator_cpu_pct));
        format!("{m:.1} / {p:.1}")
    });
    line("operator CPU (s, whole run)", &|r| {
        format!("{:.1}", r.operator_cpu)
    });
    line("operator RSS (MiB), at the end / peak", &|r| {
        let end = r.samples.last().map_or(0.0, |s| s.rss_mib);
        format!("{end:.1} / {:.1}", r.peak_rss_mib)
    });
    line("operator's API requests per training", &|r| {
        format!("{:.1}", r.operator_requests_per_training)
    });
    for (system, r) in results {
        println!("\n{} over time:\n", system.title());
        println!("| t (s) | created | finished | live pods | operator req/s | all req/s | operator CPU % | operator RSS (MiB) |");
        println!("|---|---|---|---|---|---|---|---|");
        for s in &r.samples {
            println!(
                "| {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                s.t,
                s.created,
                s.finished,
                s.live_pods,
                s.operator_rps,
                s.all_rps,
                s.operator_cpu_pct,
                s.rss_mib
            );
        }
    }
}
