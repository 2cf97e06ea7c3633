//! Turning what the API server reports into the lifecycle's inputs: worker
//! Pods into [`ObservedPod`]s, and the trainer's progress report (from its
//! endpoint or its termination message) into status fields. Pure functions;
//! the controller feeds them.

use crate::crd::{CheckpointStatus, EvalStatus, RideTrainingStatus};
use crate::lifecycle::{ObservedPod, PodState};
use crate::pods::{LABEL_ATTEMPT, LABEL_RANK, TRAINER_CONTAINER};
use k8s_openapi::api::core::v1::Pod;
use ride_contract::Progress;

fn unix(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

/// Why a pod was disrupted rather than ending on its own: the node
/// lifecycle controller's taint eviction, the Eviction API, scheduler
/// preemption, kubelet eviction (all `DisruptionTarget`), or the older
/// `NodeLost`/`Evicted` reasons and phase `Unknown`.
fn disruption(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let target = status.conditions.as_ref().and_then(|cs| {
        cs.iter()
            .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    });
    if let Some(c) = target {
        return Some(
            c.reason
                .clone()
                .unwrap_or_else(|| "DisruptionTarget".into()),
        );
    }
    match (status.reason.as_deref(), status.phase.as_deref()) {
        (Some(r @ ("NodeLost" | "Evicted" | "Preempting")), _) => Some(r.to_string()),
        (_, Some("Unknown")) => Some("NodeLost".into()),
        _ => None,
    }
}

/// A worker pod as the lifecycle sees it; `None` for pods without our rank/attempt labels.
pub fn observe_pod(pod: &Pod) -> Option<ObservedPod> {
    let labels = pod.metadata.labels.as_ref()?;
    let rank = labels.get(LABEL_RANK)?.parse().ok()?;
    let attempt = labels.get(LABEL_ATTEMPT)?.parse().ok()?;
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == TRAINER_CONTAINER))
        .and_then(|c| c.state.as_ref()?.terminated.as_ref());
    let terminated_code = terminated.map(|t| t.exit_code);
    let state = match (disruption(pod), phase, terminated_code) {
        // An exit code says more than the disruption that caused it (a
        // preempted trainer that saved a checkpoint exits 75).
        (_, "Succeeded", _) | (_, "Running", Some(0)) => PodState::Succeeded,
        (_, "Failed" | "Running", Some(code)) => PodState::Failed { exit_code: code },
        (Some(reason), _, _) => PodState::Disrupted { reason },
        (None, "Failed", None) => PodState::Failed { exit_code: 1 },
        (None, "Running", None) => PodState::Running,
        _ => {
            let unschedulable_since = status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| {
                    cs.iter().find(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
                .and_then(|c| c.last_transition_time.as_ref().map(unix));
            PodState::Pending {
                unschedulable_since,
            }
        }
    };
    Some(ObservedPod {
        rank,
        attempt,
        state,
        deletion_deadline: pod.metadata.deletion_timestamp.as_ref().map(unix),
    })
}

/// The pod's IP, once the kubelet reported one.
pub fn pod_ip(pod: &Pod) -> Option<std::net::IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// The trainer container's termination message, once it has ended.
pub fn termination_message(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == TRAINER_CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()?
        .message
        .as_deref()
}

/// Take the last checkpoint and the latest evaluation from a trainer's
/// report. A report never moves status back to an older checkpoint.
pub fn apply_progress(status: &mut RideTrainingStatus, p: &Progress) {
    if let Some(c) = &p.checkpoint {
        let newer = status
            .last_checkpoint
            .as_ref()
            .is_none_or(|old| c.step as i64 >= old.step);
        if newer {
            status.last_checkpoint = Some(CheckpointStatus {
                uri: c.uri.clone(),
                epoch: c.epoch as i64,
                step: c.step as i64,
                time: c.saved_at.clone(),
            });
        }
    }
    if let Some(e) = &p.eval {
        status.latest_eval = Some(EvalStatus {
            overall: e.top1,
            many: e.many,
            medium: e.medium,
            few: e.few,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_norway::from_str(yaml).unwrap()
    }

    const META: &str =
        "metadata: {name: t-0-1, labels: {ride.dev/rank: '1', ride.dev/attempt: '0'}}\n";

    #[test]
    fn pod_states_from_api_objects() {
        let p = pod(&format!("{META}status: {{phase: Running}}"));
        assert_eq!(observe_pod(&p).unwrap().state, PodState::Running);
        let p = pod(&format!(
            "{META}status:\n  phase: Failed\n  containerStatuses:\n  - {{name: trainer, image: x, imageID: '', ready: false, restartCount: 0, state: {{terminated: {{exitCode: 75}}}}}}"
        ));
        assert_eq!(
            observe_pod(&p).unwrap().state,
            PodState::Failed { exit_code: 75 }
        );
        let p = pod(&format!("{META}status: {{phase: Succeeded}}"));
        assert_eq!(observe_pod(&p).unwrap().state, PodState::Succeeded);
        let p = pod(&format!(
            "{META}status: {{phase: Running, reason: NodeLost}}"
        ));
        assert_eq!(
            observe_pod(&p).unwrap().state,
            PodState::Disrupted {
                reason: "NodeLost".into()
            }
        );
        let p = pod(&format!(
            "{META}status:\n  phase: Pending\n  conditions:\n  - {{type: PodScheduled, status: 'False', reason: Unschedulable, lastTransitionTime: '2026-01-01T00:00:10Z'}}"
        ));
        assert_eq!(
            observe_pod(&p).unwrap().state,
            PodState::Pending {
                unschedulable_since: Some(1_767_225_610)
            }
        );
        let p = pod("metadata: {name: x-0-1, deletionTimestamp: '2026-01-01T00:00:00Z', labels: {ride.dev/rank: '1', ride.dev/attempt: '0'}}");
        assert_eq!(
            observe_pod(&p).unwrap().deletion_deadline,
            Some(1_767_225_600)
        );
        assert!(observe_pod(&pod("metadata: {name: other}")).is_none());
    }

    #[test]
    fn disruptions_are_told_apart_from_exits() {
        let evicted = "status:\n  phase: Running\n  conditions:\n  - {type: DisruptionTarget, status: 'True', reason: DeletionByTaintManager}";
        let p = pod(&format!("{META}{evicted}"));
        assert_eq!(
            observe_pod(&p).unwrap().state,
            PodState::Disrupted {
                reason: "DeletionByTaintManager".into()
            }
        );
        let kubelet = pod(&format!("{META}status: {{phase: Failed, reason: Evicted}}"));
        assert!(matches!(
            observe_pod(&kubelet).unwrap().state,
            PodState::Disrupted { .. }
        ));
        // A preempted trainer that saved its checkpoint still says so by its code.
        let saved = pod(&format!(
            "{META}status:\n  phase: Failed\n  conditions:\n  - {{type: DisruptionTarget, status: 'True', reason: EvictionByEvictionAPI}}\n  containerStatuses:\n  - {{name: trainer, image: x, imageID: '', ready: false, restartCount: 0, state: {{terminated: {{exitCode: 75, message: '{{\"step\":3}}'}}}}}}"
        ));
        assert_eq!(
            observe_pod(&saved).unwrap().state,
            PodState::Failed { exit_code: 75 }
        );
        assert_eq!(termination_message(&saved), Some("{\"step\":3}"));
    }

    #[test]
    fn progress_reports_fill_status_and_never_go_back() {
        let mut st = RideTrainingStatus::default();
        let report = |step: u64, top1: f64| Progress {
            checkpoint: Some(ride_contract::CheckpointProgress {
                uri: format!("s3://b/run/ckpt_{step}"),
                epoch: step / 10,
                step,
                saved_at: "2026-11-28T12:00:00Z".into(),
            }),
            eval: Some(ride_contract::EvalProgress {
                epoch: step / 10,
                top1,
                few: Some(34.2),
                ..Default::default()
            }),
            ..Default::default()
        };
        apply_progress(&mut st, &report(80, 53.6));
        let c = st.last_checkpoint.clone().unwrap();
        assert_eq!(
            (c.uri.as_str(), c.epoch, c.step),
            ("s3://b/run/ckpt_80", 8, 80)
        );
        assert_eq!(st.latest_eval.clone().unwrap().few, Some(34.2));
        apply_progress(&mut st, &report(70, 50.0));
        assert_eq!(st.last_checkpoint.unwrap().step, 80);
    }
}
