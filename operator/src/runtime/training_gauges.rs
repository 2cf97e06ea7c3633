//! Per-training metrics: what the watch cache says about each live
//! RideTraining, as gauges labelled `namespace` and `name`. They are
//! recomputed from the cache on every refresh, so a deleted training's series
//! disappear and the cardinality never outgrows the live trainings.

use crate::crd::{phase_labels, Phase, RideTraining, PENDING_LABEL};
use crate::metrics::TrainingGauges;
use kube::ResourceExt;
use std::collections::BTreeSet;

/// The numbers exported for one training.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSample {
    /// The phase label (`Pending` before the first reconcile).
    pub phase: &'static str,
    /// Restarts that used the budget.
    pub restarts: i64,
    /// Restarts outside the budget (preemption, node loss).
    pub exempt_restarts: i64,
    /// `spec.restartPolicy.budget`.
    pub budget: i64,
    /// Ranks of the current attempt.
    pub workers: i64,
    /// Steps done over total steps, once rank 0 reported them.
    pub progress_ratio: Option<f64>,
    /// Seconds to the estimated end.
    pub eta_seconds: Option<f64>,
    /// Unix time of rank 0's last step.
    pub last_step: Option<f64>,
    /// Unix time of the last durable checkpoint.
    pub last_checkpoint: Option<f64>,
}

/// What to export for `rt`, judged at Unix time `now`.
pub fn sample(rt: &RideTraining, now: i64) -> TrainingSample {
    let st = rt.status.clone().unwrap_or_default();
    let progress = st.progress.as_ref();
    TrainingSample {
        phase: st.phase.map_or(PENDING_LABEL, Phase::as_str),
        restarts: st.restarts.into(),
        exempt_restarts: st.exempt_restarts.into(),
        budget: rt.spec.restart_policy.budget.into(),
        workers: st.world_size.into(),
        progress_ratio: progress
            .filter(|p| p.total_steps > 0)
            .map(|p| (p.step as f64 / p.total_steps as f64).clamp(0.0, 1.0)),
        eta_seconds: progress
            .and_then(|p| p.eta)
            .map(|eta| eta.saturating_sub(now).max(0) as f64),
        last_step: progress.and_then(|p| p.last_step_time).map(|t| t as f64),
        last_checkpoint: st
            .last_checkpoint
            .as_ref()
            .and_then(|c| c.time.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond() as f64 / 1e3),
    }
}

/// Export `trainings` (the watch cache's content) at Unix time `now`,
/// removing the series of trainings no longer among them.
pub fn update(g: &TrainingGauges, trainings: &[std::sync::Arc<RideTraining>], now: i64) {
    let mut exported = g.exported.lock().unwrap_or_else(|e| e.into_inner());
    let mut live = BTreeSet::new();
    for rt in trainings {
        let (ns, name) = (rt.namespace().unwrap_or_default(), rt.name_any());
        let s = sample(rt, now);
        let key = [ns.as_str(), name.as_str()];
        for phase in phase_labels() {
            g.phase
                .with_label_values(&[&ns, &name, phase])
                .set(i64::from(phase == s.phase));
        }
        g.restarts
            .with_label_values(&[&ns, &name, "budget"])
            .set(s.restarts);
        g.restarts
            .with_label_values(&[&ns, &name, "exempt"])
            .set(s.exempt_restarts);
        g.restart_budget.with_label_values(&key).set(s.budget);
        g.workers.with_label_values(&key).set(s.workers);
        for (vec, value) in [
            (&g.progress_ratio, s.progress_ratio),
            (&g.eta_seconds, s.eta_seconds),
            (&g.last_step_timestamp, s.last_step),
            (&g.last_checkpoint_timestamp, s.last_checkpoint),
        ] {
            match value {
                Some(v) => vec.with_label_values(&key).set(v),
                // Unknown is absent, not 0 (a 0 timestamp would alert).
                None => {
                    let _ = vec.remove_label_values(&key);
                }
            }
        }
        live.insert((ns, name));
    }
    for (ns, name) in exported.difference(&live) {
        remove(g, ns, name);
    }
    *exported = live;
}

fn remove(g: &TrainingGauges, ns: &str, name: &str) {
    let key = [ns, name];
    for phase in phase_labels() {
        let _ = g.phase.remove_label_values(&[ns, name, phase]);
    }
    for kind in ["budget", "exempt"] {
        let _ = g.restarts.remove_label_values(&[ns, name, kind]);
    }
    let _ = g.restart_budget.remove_label_values(&key);
    let _ = g.workers.remove_label_values(&key);
    for vec in [
        &g.progress_ratio,
        &g.eta_seconds,
        &g.last_step_timestamp,
        &g.last_checkpoint_timestamp,
    ] {
        let _ = vec.remove_label_values(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::OperatorMetrics;
    use std::sync::Arc;

    fn training(ns: &str, name: &str, status: serde_json::Value) -> Arc<RideTraining> {
        let mut rt: RideTraining = serde_json::from_value(serde_json::json!({
            "apiVersion": "ride.dev/v1alpha1", "kind": "RideTraining",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"image": "ride:1", "trainer": {"config": "x.yaml"}, "workers": {"replicas": 2},
                     "checkpoint": {"uri": "file:///ckpt"},
                     "restartPolicy": {"budget": 4}},
        }))
        .unwrap();
        rt.status = serde_json::from_value(status).unwrap();
        Arc::new(rt)
    }

    #[test]
    fn samples_status_and_spec() {
        let rt = training(
            "team-a",
            "ride-tiny",
            serde_json::json!({
                "phase": "Running", "restarts": 3, "exemptRestarts": 1, "worldSize": 2,
                "progress": {"epoch": 1, "epochs": 4, "step": 25, "totalSteps": 100,
                             "percent": "25%", "lastStepTime": "2026-11-30T00:00:00Z",
                             "eta": "2026-11-30T00:10:00Z"},
                "lastCheckpoint": {"uri": "file:///ckpt/e0", "epoch": 0, "step": 20,
                                   "time": "2026-11-29T23:59:30.5Z"},
            }),
        );
        let now = 1_795_996_800; // 2026-11-30T00:00:00Z
        let s = sample(&rt, now);
        assert_eq!(s.phase, "Running");
        assert_eq!(
            (s.restarts, s.exempt_restarts, s.budget, s.workers),
            (3, 1, 4, 2)
        );
        assert_eq!(s.progress_ratio, Some(0.25));
        assert_eq!(s.eta_seconds, Some(600.0));
        assert_eq!(s.last_step, Some(now as f64));
        assert_eq!(s.last_checkpoint, Some(now as f64 - 29.5));
        let fresh = sample(&training("a", "b", serde_json::json!(null)), now);
        assert_eq!(fresh.phase, PENDING_LABEL);
        assert_eq!(fresh.progress_ratio, None);
    }

    #[test]
    fn series_follow_the_live_trainings() {
        let m = OperatorMetrics::new();
        let a = training("ns", "ride-a", serde_json::json!({"phase": "Running"}));
        let b = training("ns", "ride-ab", serde_json::json!({"phase": "Failed"}));
        update(&m.training, &[a.clone(), b], 0);
        let text = m.render();
        assert!(
            text.contains(
                r#"ride_operator_training_phase{name="ride-ab",namespace="ns",phase="Failed"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"ride_operator_training_phase{name="ride-a",namespace="ns",phase="Running"} 1"#
        ));
        assert!(text.contains(
            r#"ride_operator_training_phase{name="ride-a",namespace="ns",phase="Failed"} 0"#
        ));
        // ride-ab deleted: every one of its series goes, ride-a's stay.
        update(&m.training, &[a], 0);
        let text = m.render();
        assert!(!text.contains(r#"name="ride-ab""#), "{text}");
        assert!(text
            .contains(r#"ride_operator_training_restart_budget{name="ride-a",namespace="ns"} 4"#));
        update(&m.training, &[], 0);
        assert!(
            !m.render().contains("ride_operator_training_"),
            "{}",
            m.render()
        );
    }
}
