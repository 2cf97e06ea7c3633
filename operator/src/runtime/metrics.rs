//! The operator's Prometheus metrics and its `/metrics`, `/healthz` and
//! `/readyz` endpoints.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `/healthz` fails when the reconcile loop has not checked in for this long.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the reconcile loop last said about itself.
#[derive(Debug, Default)]
struct LoopHealth {
    /// When it last checked in (None: not started, e.g. a standby replica).
    heartbeat: Option<Instant>,
    /// Why it is unhealthy, if it said so.
    problem: Option<String>,
}

/// The `/healthz` verdict: `Ok` or why not.
pub fn judge_health(heartbeat_age: Option<Duration>, problem: Option<&str>) -> Result<(), String> {
    if let Some(p) = problem {
        return Err(p.to_string());
    }
    match heartbeat_age {
        Some(age) if age >= HEARTBEAT_TIMEOUT => Err(format!(
            "the reconcile loop has not checked in for {}s",
            age.as_secs()
        )),
        _ => Ok(()),
    }
}

/// The `unit` label values of `ride_operator_lost_work_total`.
pub const LOST_WORK_UNITS: [&str; 3] = ["steps", "seconds", "gpu_seconds"];

/// The `source` label values of `ride_operator_reports_refused_total`.
pub const REPORT_SOURCES: [&str; 2] = ["progress", "termination"];

/// Every metric the operator exports (names prefixed `ride_operator_`).
pub struct OperatorMetrics {
    registry: Registry,
    /// Seconds per reconcile.
    pub reconcile_duration: Histogram,
    /// Reconciles that returned an error.
    pub reconcile_errors: IntCounter,
    /// Reconciles that panicked (a bug, made an error of that training alone).
    pub reconcile_panics: IntCounter,
    /// Trainer reports refused as unbelievable, by `source` (`progress`:
    /// rank 0's endpoint, `termination`: its termination message).
    pub reports_refused: IntCounterVec,
    /// Gang restarts started, by kind (`budget` or `exempt`).
    pub restarts: IntCounterVec,
    /// Gang restarts (and suspensions) by cause (`application`,
    /// `infrastructure`, `preemption`, `stall`, `user`).
    pub restarts_by_cause: IntCounterVec,
    /// Work thrown away by restarts, by cause: `unit` is `steps`,
    /// `seconds` (training to redo) or `gpu_seconds` (device time lost).
    pub lost_work: prometheus::CounterVec,
    /// RideTrainings by phase.
    pub trainings: IntGaugeVec,
    /// Seconds from creation to all workers of the first attempt running.
    pub time_to_running: Histogram,
    /// Seconds from a failure being seen to all workers of the new attempt running.
    pub time_to_restart: Histogram,
    /// Whether this replica holds the leader Lease.
    pub leader: prometheus::IntGauge,
    /// Times this replica lost the Lease and went back to stand-by.
    pub leadership_lost: prometheus::IntCounter,
    /// Trainings the operator keeps per-training state for.
    pub tracked_trainings: prometheus::IntGauge,
    /// Per-training series (`namespace`, `name` labels), one set per live
    /// RideTraining; see [`crate::training_gauges`].
    pub training: TrainingGauges,
    ready: AtomicBool,
    health: Mutex<LoopHealth>,
}

/// Gauges labelled by training (`namespace`, `name`): their cardinality is
/// bounded by the live RideTrainings, and a deleted training's series go.
pub struct TrainingGauges {
    /// 1 for the training's phase, 0 for the others.
    pub phase: IntGaugeVec,
    /// Restarts so far, by `kind` (`budget` or `exempt`).
    pub restarts: IntGaugeVec,
    /// `spec.restartPolicy.budget`.
    pub restart_budget: IntGaugeVec,
    /// Ranks of the current attempt.
    pub workers: IntGaugeVec,
    /// Fraction of the run's optimiser steps done.
    pub progress_ratio: GaugeVec,
    /// Estimated seconds to the last step.
    pub eta_seconds: GaugeVec,
    /// Unix time rank 0 finished its last step.
    pub last_step_timestamp: GaugeVec,
    /// Unix time of the last durable checkpoint.
    pub last_checkpoint_timestamp: GaugeVec,
    /// The (namespace, name) pairs exported now.
    pub(crate) exported: Mutex<BTreeSet<(String, String)>>,
}

impl TrainingGauges {
    fn new() -> Self {
        let int = |name: &str, help: &str, extra: &[&str]| {
            let labels: Vec<&str> = ["namespace", "name"].iter().chain(extra).copied().collect();
            IntGaugeVec::new(Opts::new(name, help), &labels)
                .expect("static gauge options are valid")
        };
        let float = |name: &str, help: &str| {
            GaugeVec::new(Opts::new(name, help), &["namespace", "name"])
                .expect("static gauge options are valid")
        };
        Self {
            phase: int(
                "ride_operator_training_phase",
                "1 for the RideTraining's current phase, 0 for the others",
                &["phase"],
            ),
            restarts: int(
                "ride_operator_training_restarts",
                "Gang restarts of the RideTraining so far; kind=budget counts against restartPolicy.budget",
                &["kind"],
            ),
            restart_budget: int(
                "ride_operator_training_restart_budget",
                "The RideTraining's restartPolicy.budget",
                &[],
            ),
            workers: int(
                "ride_operator_training_workers",
                "Ranks of the RideTraining's current attempt",
                &[],
            ),
            progress_ratio: float(
                "ride_operator_training_progress_ratio",
                "Fraction of the run's optimiser steps done, from rank 0's progress report",
            ),
            eta_seconds: float(
                "ride_operator_training_eta_seconds",
                "Estimated seconds until the run's last step, from the observed step rate",
            ),
            last_step_timestamp: float(
                "ride_operator_training_last_step_timestamp_seconds",
                "Unix time rank 0 reported its last optimiser step",
            ),
            last_checkpoint_timestamp: float(
                "ride_operator_training_last_checkpoint_timestamp_seconds",
                "Unix time of the RideTraining's last durable checkpoint",
            ),
            exported: Mutex::new(BTreeSet::new()),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.phase.clone()),
            Box::new(self.restarts.clone()),
            Box::new(self.restart_budget.clone()),
            Box::new(self.workers.clone()),
            Box::new(self.progress_ratio.clone()),
            Box::new(self.eta_seconds.clone()),
            Box::new(self.last_step_timestamp.clone()),
            Box::new(self.last_checkpoint_timestamp.clone()),
        ]
    }
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("static histogram options are valid")
}

impl OperatorMetrics {
    /// Create and register the metrics.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let seconds = vec![
            1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
        ];
        let m = Self {
            reconcile_duration: histogram(
                "ride_operator_reconcile_duration_seconds",
                "Time spent in one reconcile of a RideTraining",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0,
                ],
            ),
            reconcile_errors: IntCounter::new(
                "ride_operator_reconcile_errors_total",
                "Reconciles that failed (retried with backoff)",
            )
            .expect("static counter options are valid"),
            reconcile_panics: IntCounter::new(
                "ride_operator_reconcile_panics_total",
                "Reconciles that panicked; the training gets an OperatorError condition and an Event, every other training goes on",
            )
            .expect("static counter options are valid"),
            reports_refused: IntCounterVec::new(
                Opts::new(
                    "ride_operator_reports_refused_total",
                    "Trainer progress reports refused (out-of-range, inconsistent or non-finite fields), by source: progress (rank 0's endpoint) or termination (its termination message)",
                ),
                &["source"],
            )
            .expect("static counter options are valid"),
            restarts: IntCounterVec::new(
                Opts::new(
                    "ride_operator_restarts_total",
                    "Gang restarts started; kind=budget counts against restartPolicy.budget, kind=exempt does not",
                ),
                &["kind"],
            )
            .expect("static counter options are valid"),
            restarts_by_cause: IntCounterVec::new(
                Opts::new(
                    "ride_operator_restarts_by_cause_total",
                    "Gang restarts (and suspensions, cause=user) by cause: application, infrastructure, preemption, stall, user",
                ),
                &["cause"],
            )
            .expect("static counter options are valid"),
            lost_work: prometheus::CounterVec::new(
                Opts::new(
                    "ride_operator_lost_work_total",
                    "Work thrown away by restarts since the last checkpoint, by cause; unit=steps (optimiser steps), seconds (training to redo) or gpu_seconds (device time, idle included)",
                ),
                &["cause", "unit"],
            )
            .expect("static counter options are valid"),
            trainings: IntGaugeVec::new(
                Opts::new("ride_operator_trainings", "RideTrainings by phase"),
                &["phase"],
            )
            .expect("static gauge options are valid"),
            time_to_running: histogram(
                "ride_operator_time_to_running_seconds",
                "Seconds from a RideTraining's creation to all workers of its first attempt running",
                seconds.clone(),
            ),
            time_to_restart: histogram(
                "ride_operator_time_to_restart_seconds",
                "Seconds from a worker failure being seen to all workers of the new attempt running",
                seconds,
            ),
            leader: prometheus::IntGauge::new(
                "ride_operator_leader",
                "1 while this replica holds the leader Lease",
            )
            .expect("static gauge options are valid"),
            leadership_lost: prometheus::IntCounter::new(
                "ride_operator_leadership_lost_total",
                "Times this replica lost the leader Lease, stopped acting and stood by to campaign again",
            )
            .expect("static counter options are valid"),
            tracked_trainings: prometheus::IntGauge::new(
                "ride_operator_tracked_trainings",
                "Trainings the operator keeps state for in memory (progress reports, retry backoff, create failures); swept to the live trainings every 5 s",
            )
            .expect("static gauge options are valid"),
            training: TrainingGauges::new(),
            registry,
            ready: AtomicBool::new(false),
            health: Mutex::new(LoopHealth::default()),
        };
        for c in [
            Box::new(m.reconcile_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.reconcile_errors.clone()),
            Box::new(m.reconcile_panics.clone()),
            Box::new(m.reports_refused.clone()),
            Box::new(m.restarts.clone()),
            Box::new(m.restarts_by_cause.clone()),
            Box::new(m.lost_work.clone()),
            Box::new(m.trainings.clone()),
            Box::new(m.time_to_running.clone()),
            Box::new(m.time_to_restart.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.leadership_lost.clone()),
            Box::new(m.tracked_trainings.clone()),
        ]
        .into_iter()
        .chain(m.training.collectors())
        .chain(std::iter::once(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )
            as Box<dyn prometheus::core::Collector>))
        {
            m.registry
                .register(c)
                .expect("metric names are registered once");
        }
        // Every series exists from the start, so rates and dashboards see zeros.
        for kind in ["budget", "exempt"] {
            m.restarts.with_label_values(&[kind]);
        }
        for source in REPORT_SOURCES {
            m.reports_refused.with_label_values(&[source]);
        }
        for cause in crate::crd::RestartCause::ALL.map(crate::crd::RestartCause::as_str) {
            m.restarts_by_cause.with_label_values(&[cause]);
            for unit in LOST_WORK_UNITS {
                m.lost_work.with_label_values(&[cause, unit]);
            }
        }
        for phase in crate::crd::phase_labels() {
            m.trainings.with_label_values(&[phase]);
        }
        Arc::new(m)
    }

    /// The names of every metric family registered, including labelled
    /// ones without series yet (which the exposition leaves out).
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .chain(
                self.training
                    .collectors()
                    .iter()
                    .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone())),
            )
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Mark the operator ready (`/readyz` answers 200) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// The reconcile loop checks in: alive, and `problem` if it is stuck.
    pub fn heartbeat(&self, problem: Option<String>) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.heartbeat = Some(Instant::now());
        h.problem = problem;
    }

    /// Back to stand-by (the leader Lease was lost): no reconcile loop to
    /// check in, so `/healthz` judges none, and ready as a stand-by is.
    pub fn stand_by(&self) {
        {
            let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            h.heartbeat = None;
            h.problem = None;
        }
        self.leader.set(0);
        self.set_ready(true);
    }

    /// The `/healthz` verdict now.
    pub fn health(&self) -> Result<(), String> {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        judge_health(h.heartbeat.map(|t| t.elapsed()), h.problem.as_deref())
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Serve `/healthz` and `/readyz` (and, with `plain_metrics`, `/metrics`)
    /// on `addr` from a background thread; returns the bound address (port 0
    /// picks a free one). Without `plain_metrics`, `/metrics` is only on the
    /// authenticated TLS endpoint (`secure_metrics`).
    pub fn serve(
        self: &Arc<Self>,
        addr: &str,
        plain_metrics: bool,
    ) -> anyhow::Result<std::net::SocketAddr> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("{addr} is not an IP address"))?;
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                for req in server.incoming_requests() {
                    let (code, body) = match req.url() {
                        "/metrics" if plain_metrics => (200, me.render()),
                        "/metrics" => (
                            404,
                            "/metrics is served over TLS to authorised callers (--secure-metrics-addr); start with --insecure-metrics to serve it here too\n".into(),
                        ),
                        "/healthz" => match me.health() {
                            Ok(()) => (200, "ok\n".to_string()),
                            Err(why) => (503, format!("unhealthy: {why}\n")),
                        },
                        "/readyz" if me.is_ready() => (200, "ok\n".to_string()),
                        "/readyz" => (
                            503,
                            "not ready: the API server was not reached yet, or the leader's cache is not synced\n".into(),
                        ),
                        _ => (404, "try /metrics, /healthz or /readyz\n".into()),
                    };
                    let _ =
                        req.respond(tiny_http::Response::from_string(body).with_status_code(code));
                }
            })?;
        Ok(bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_answer_over_http() {
        let m = OperatorMetrics::new();
        m.reconcile_errors.inc();
        m.restarts.with_label_values(&["budget"]).inc();
        let addr = m.serve("127.0.0.1:0", true).unwrap();
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let metrics = get("/metrics");
        assert!(
            metrics.contains("ride_operator_reconcile_errors_total 1"),
            "{metrics}"
        );
        assert!(metrics.contains("ride_operator_restarts_total{kind=\"budget\"} 1"));
        assert!(get("/healthz").contains(" 200 "));
        assert!(get("/readyz").contains(" 503 "));
        m.set_ready(true);
        assert!(get("/readyz").contains(" 200 "));
        m.heartbeat(Some("reconcile of a/b running for 400s".into()));
        let h = get("/healthz");
        assert!(h.contains(" 503 ") && h.contains("a/b"), "{h}");
        m.heartbeat(None);
        assert!(get("/healthz").contains(" 200 "));
    }

    #[test]
    fn health_needs_a_recent_heartbeat_once_the_loop_runs() {
        assert!(judge_health(None, None).is_ok());
        assert!(judge_health(Some(Duration::from_secs(5)), None).is_ok());
        let e = judge_health(Some(HEARTBEAT_TIMEOUT), None).unwrap_err();
        assert!(e.contains("not checked in"), "{e}");
        assert!(judge_health(Some(Duration::ZERO), Some("stuck")).is_err());
    }
}
