//! Turning what the API server reports into the lifecycle's inputs: worker
//! Pods into [`ObservedPod`]s, and the trainer's progress report (from its
//! endpoint or its termination message) into status fields. Pure functions;
//! the controller feeds them.

use crate::crd::{CheckpointStatus, EvalStatus, ProgressStatus, RideTrainingStatus};
use crate::lifecycle::{ObservedPod, PodState};
use crate::pods::{LABEL_ATTEMPT, LABEL_RANK, TRAINER_CONTAINER};
use k8s_openapi::api::core::v1::Pod;
use ride_contract::Progress;

fn unix(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

/// The condition types that mark a pod for disruption: Kubernetes'
/// `DisruptionTarget` (the node lifecycle controller's taint eviction, the
/// Eviction API, scheduler preemption, kubelet eviction) and Kueue's
/// `TerminationTarget` (its pod integration stopping an evicted or
/// preempted Workload's pods, reason e.g. `WorkloadEvictedDueToPreempted`).
const DISRUPTION_CONDITIONS: [&str; 2] = ["DisruptionTarget", "TerminationTarget"];

/// The pod's disruption condition (see [`DISRUPTION_CONDITIONS`]), if set.
fn disruption_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    DISRUPTION_CONDITIONS.iter().find_map(|ty| {
        conditions
            .iter()
            .find(|c| c.type_ == *ty && c.status == "True")
    })
}

/// Why a pod was disrupted rather than ending on its own: the reason of
/// its disruption condition, or the older `NodeLost`/`Evicted` reasons and
/// phase `Unknown`.
fn disruption(pod: &Pod) -> Option<String> {
    if let Some(c) = disruption_condition(pod) {
        return Some(c.reason.clone().unwrap_or_else(|| c.type_.clone()));
    }
    let status = pod.status.as_ref()?;
    match (status.reason.as_deref(), status.phase.as_deref()) {
        (Some(r @ ("NodeLost" | "Evicted" | "Preempting")), _) => Some(r.to_string()),
        (_, Some("Unknown")) => Some("NodeLost".into()),
        _ => None,
    }
}

/// Whether a disruption `reason` is a preemption decided by a scheduler or
/// a queue (a planned stop with the pod's grace period, in which the
/// trainer saves a checkpoint), rather than a lost node or an eviction.
pub fn is_preemption(reason: &str) -> bool {
    matches!(
        reason,
        "PreemptionByScheduler" | "Preempting" | "WorkloadEvictedDueToPreempted"
    )
}

/// When a pod ended or began to be taken away: its container's finish
/// time, else when it was marked for disruption, else when its deletion was
/// requested (the deletion timestamp less the grace period).
fn ended_at(
    pod: &Pod,
    terminated: Option<&k8s_openapi::api::core::v1::ContainerStateTerminated>,
) -> Option<i64> {
    if let Some(t) = terminated.and_then(|t| t.finished_at.as_ref()) {
        return Some(unix(t));
    }
    let disrupted = disruption_condition(pod).and_then(|c| c.last_transition_time.as_ref());
    if let Some(t) = disrupted {
        return Some(unix(t));
    }
    let deleted = pod.metadata.deletion_timestamp.as_ref().map(unix)?;
    Some(deleted - pod.metadata.deletion_grace_period_seconds.unwrap_or(0))
}

/// Why the trainer container cannot start, for the waiting reasons that
/// need a user (not `ContainerCreating`, which just takes time).
fn start_problem(pod: &Pod) -> Option<String> {
    const PROBLEMS: [&str; 6] = [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    ];
    let waiting = trainer_state(pod)?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    PROBLEMS.contains(&reason).then(|| match &waiting.message {
        Some(m) => format!("{reason}: {m}"),
        None => reason.to_string(),
    })
}

/// A worker pod as the lifecycle sees it; `None` for pods without our rank/attempt labels.
pub fn observe_pod(pod: &Pod) -> Option<ObservedPod> {
    let labels = pod.metadata.labels.as_ref()?;
    let rank = labels.get(LABEL_RANK)?.parse().ok()?;
    let attempt = labels.get(LABEL_ATTEMPT)?.parse().ok()?;
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let terminated = trainer_state(pod).and_then(|s| s.terminated.as_ref());
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
        ended_at: ended_at(pod, terminated),
        start_problem: start_problem(pod),
        // The trainer's words (tenant input): bounded before they reach
        // status and Events.
        exit_message: final_report(pod)
            .ok()
            .flatten()
            .and_then(|p| p.message)
            .map(|m| crate::report::shorten(&m, crate::report::MAX_MESSAGE_BYTES)),
        // Filled from the node cache by the controller.
        node_lost: None,
        stopped: matches!(phase, "Succeeded" | "Failed"),
    })
}

/// A worker pod as the caches keep it: only what the functions of this
/// module, [`crate::queue`] and the pod index read (metadata without
/// annotations or managed fields, the node it is bound to, Kueue's
/// scheduling gate, phase, reason, IP, the conditions
/// [`observe_pod`] looks for and the trainer container's state). At
/// thousands of trainings the full objects (env, volumes, probes, every
/// container's image and resources) were most of the operator's memory.
pub fn slim_pod(pod: &mut Pod) {
    use k8s_openapi::api::core::v1::{ContainerStatus, PodSpec, PodStatus};
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.generate_name = None;
    if let Some(spec) = pod.spec.as_mut() {
        // Kueue's admission gate says the pod waits for a queue
        // ([`crate::queue::gated_group`]); other gates are not read.
        let gates = spec.scheduling_gates.take().map(|gs| {
            gs.into_iter()
                .filter(|g| g.name == crate::queue::KUEUE_ADMISSION_GATE)
                .collect()
        });
        *spec = PodSpec {
            node_name: spec.node_name.take(),
            scheduling_gates: gates,
            ..Default::default()
        };
    }
    if let Some(status) = pod.status.as_mut() {
        let conditions = status.conditions.take().map(|cs| {
            cs.into_iter()
                .filter(|c| {
                    DISRUPTION_CONDITIONS.contains(&c.type_.as_str()) || c.type_ == "PodScheduled"
                })
                .collect()
        });
        let container_statuses = status.container_statuses.take().map(|cs| {
            cs.into_iter()
                .filter(|c| c.name == TRAINER_CONTAINER)
                .map(|c| ContainerStatus {
                    name: c.name,
                    state: c.state,
                    ..Default::default()
                })
                .collect()
        });
        *status = PodStatus {
            phase: status.phase.take(),
            reason: status.reason.take(),
            pod_ip: status.pod_ip.take(),
            conditions,
            container_statuses,
            ..Default::default()
        };
    }
}

/// The node the pod is bound to (`spec.nodeName`), if scheduled.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

/// The pod's IP, once the kubelet reported one.
pub fn pod_ip(pod: &Pod) -> Option<std::net::IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// The trainer container's termination message, once it has ended.
pub fn termination_message(pod: &Pod) -> Option<&str> {
    trainer_state(pod)?.terminated.as_ref()?.message.as_deref()
}

/// The [`Progress`] report a trainer left in its termination message.
/// `Ok(None)` when there is none, or when the message is the kubelet's
/// fallback (the log tail of a trainer that died before writing one); an
/// error when it is JSON but not a report, i.e. the two sides disagree.
pub fn final_report(pod: &Pod) -> Result<Option<Progress>, serde_json::Error> {
    match termination_message(pod) {
        Some(m) if m.trim_start().starts_with('{') => Progress::parse(m.as_bytes()).map(Some),
        _ => Ok(None),
    }
}

/// The trainer container's state as the kubelet last reported it.
fn trainer_state(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerState> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == TRAINER_CONTAINER)?
        .state
        .as_ref()
}

/// Weight of the newest rate in the smoothed steps per second.
const RATE_SMOOTHING: f64 = 0.3;

/// Update `status.progress` (epoch, steps, percent, smoothed rate, ETA) from
/// a report of the current attempt's rank 0 received at `now`. The rate is
/// taken between reports by the trainer's own step times, so poll delays do
/// not distort it; a report from before a restart (fewer steps) starts over.
/// The report is one [`crate::report::validate`] accepted; the old status
/// may hold anything, so every step against it saturates.
pub fn update_run_progress(status: &mut RideTrainingStatus, p: &Progress, now: i64) {
    if p.total_steps == 0 {
        return;
    }
    let step = i64::try_from(p.step).unwrap_or(i64::MAX);
    let total = i64::try_from(p.total_steps).unwrap_or(i64::MAX);
    let last_step_time = p.last_step_unix.map(|t| t as i64);
    let old = status.progress.take();
    let mut rate = old
        .as_ref()
        .and_then(|o| o.steps_per_second)
        .filter(|r| r.is_finite() && *r > 0.0);
    if let (Some(o), Some(t_new)) = (&old, p.last_step_unix) {
        if let Some(t_old) = o.last_step_time {
            let (ds, dt) = (step.saturating_sub(o.step) as f64, t_new - t_old as f64);
            if ds > 0.0 && dt >= 1.0 {
                let r = ds / dt;
                rate = Some(rate.map_or(r, |old| old + RATE_SMOOTHING * (r - old)));
            } else if ds < 0.0 {
                rate = None;
            }
        }
    }
    let remaining = total.saturating_sub(step).max(0);
    // Counted from the report's own last step, not from when it was read:
    // the same report read again gives the same status, so it makes no
    // second status write (and no reconcile of its own).
    let base = last_step_time.unwrap_or(now);
    let eta = match rate {
        _ if remaining == 0 => Some(base),
        // `as` saturates: a tiny rate gives the far future, not a wrap.
        Some(r) if r > 0.0 => Some(base.saturating_add((remaining as f64 / r).round() as i64)),
        _ => None,
    };
    let done = (u128::from(p.step) * 100 / u128::from(p.total_steps)).min(100);
    status.progress = Some(ProgressStatus {
        epoch: i64::try_from(p.epoch.saturating_add(1).min(p.epochs.max(1))).unwrap_or(i64::MAX),
        epochs: i64::try_from(p.epochs).unwrap_or(i64::MAX),
        step,
        total_steps: total,
        percent: format!("{done}%"),
        steps_per_second: rate.map(|r| (r * 1000.0).round() / 1000.0),
        training: Some(p.state == ride_contract::RunState::Training),
        last_step_time,
        eta,
    });
}

/// Take the last checkpoint and the latest evaluation from a trainer's
/// report. A report never moves status back to an older checkpoint.
pub fn apply_progress(status: &mut RideTrainingStatus, p: &Progress) {
    if let Some(c) = &p.checkpoint {
        let newer = status
            .last_checkpoint
            .as_ref()
            .is_none_or(|old| i128::from(c.step) >= i128::from(old.step));
        if newer {
            status.last_checkpoint = Some(CheckpointStatus {
                uri: c.uri.clone(),
                epoch: i64::try_from(c.epoch).unwrap_or(i64::MAX),
                step: i64::try_from(c.step).unwrap_or(i64::MAX),
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
    fn the_cached_pod_keeps_what_reconciles_read() {
        let full = pod(r#"
metadata:
  name: t-0-1
  labels: {ride.dev/rank: '1', ride.dev/attempt: '0'}
  annotations: {note: long}
  ownerReferences: [{apiVersion: ride.dev/v1alpha1, kind: RideTraining, name: t, uid: u1}]
  deletionTimestamp: '2026-01-01T00:00:00Z'
spec:
  nodeName: n1
  containers: [{name: trainer, image: x, env: [{name: A, value: b}]}]
status:
  phase: Failed
  podIP: 10.0.0.7
  hostIP: 10.1.0.1
  conditions:
  - {type: Ready, status: 'False'}
  - {type: DisruptionTarget, status: 'True', reason: DeletionByTaintManager, lastTransitionTime: '2026-01-01T00:00:05Z'}
  containerStatuses:
  - {name: sidecar, image: y, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 2}}}
  - name: trainer
    image: x
    imageID: sha
    ready: false
    restartCount: 0
    state: {terminated: {exitCode: 75, finishedAt: '2026-01-01T00:00:09Z', message: '{"step":3,"message":"saved"}'}}
"#);
        let mut kept = full.clone();
        slim_pod(&mut kept);
        assert_eq!(observe_pod(&kept), observe_pod(&full));
        assert_eq!(
            observe_pod(&kept).unwrap().exit_message.as_deref(),
            Some("saved")
        );
        assert_eq!(node_name(&kept), Some("n1"));
        // Kueue's gate is kept, other gates are not.
        let mut gated = pod(r#"
metadata:
  name: t-0-1
  labels: {ride.dev/rank: '1', ride.dev/attempt: '0', kueue.x-k8s.io/pod-group-name: t-u1, kueue.x-k8s.io/queue-name: q}
spec:
  containers: [{name: trainer, image: x}]
  schedulingGates: [{name: kueue.x-k8s.io/admission}, {name: kueue.x-k8s.io/topology}]
"#);
        let want = crate::queue::gated_group([&gated], 0);
        assert!(want.is_some());
        slim_pod(&mut gated);
        assert_eq!(crate::queue::gated_group([&gated], 0), want);
        let gates = gated
            .spec
            .as_ref()
            .unwrap()
            .scheduling_gates
            .as_ref()
            .unwrap();
        assert_eq!(gates.len(), 1);
        assert_eq!(pod_ip(&kept), pod_ip(&full));
        assert!(pod_ip(&kept).is_some());
        assert_eq!(
            kept.metadata.owner_references,
            full.metadata.owner_references
        );
        assert_eq!(kept.metadata.labels, full.metadata.labels);
        assert!(kept.metadata.annotations.is_none());
        assert!(kept.spec.unwrap().containers.is_empty());
        let status = kept.status.unwrap();
        assert_eq!(status.container_statuses.unwrap().len(), 1);
        assert_eq!(status.conditions.unwrap().len(), 1);
        assert!(status.host_ip.is_none());
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
        // Kueue stopping a preempted Workload's pods; kept by the cache.
        let kueue = "status:\n  phase: Running\n  conditions:\n  - {type: TerminationTarget, status: 'True', reason: WorkloadEvictedDueToPreempted, lastTransitionTime: '2026-01-01T00:00:07Z'}";
        let mut p = pod(&format!("{META}{kueue}"));
        let seen = observe_pod(&p).unwrap();
        assert_eq!(
            seen.state,
            PodState::Disrupted {
                reason: "WorkloadEvictedDueToPreempted".into()
            }
        );
        assert!(seen.ended_at.is_some());
        slim_pod(&mut p);
        assert_eq!(observe_pod(&p).unwrap(), seen);
        assert!(is_preemption("WorkloadEvictedDueToPreempted"));
        assert!(!is_preemption("DeletionByTaintManager"));
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
                saved_unix: None,
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

    #[test]
    fn final_reports_parse_log_tails_are_skipped_and_mismatches_are_errors() {
        let ended = |message: &str| {
            pod(&format!(
                "{META}status:\n  phase: Failed\n  containerStatuses:\n  - {{name: trainer, image: x, imageID: '', ready: false, restartCount: 0, state: {{terminated: {{exitCode: 1, message: '{message}'}}}}}}"
            ))
        };
        let report = final_report(&ended(r#"{"state":"Failed","step":7}"#)).unwrap();
        assert_eq!(report.map(|p| p.step), Some(7));
        // FallbackToLogsOnError: the log tail of a trainer that crashed early.
        assert!(final_report(&ended("thread main panicked at ..."))
            .unwrap()
            .is_none());
        // JSON of another shape: the operator and trainer disagree, say so.
        assert!(final_report(&ended(r#"{"state":"Exploded"}"#)).is_err());
    }

    #[test]
    fn pods_say_when_they_ended() {
        let exited = pod(&format!(
            "{META}status:\n  phase: Failed\n  containerStatuses:\n  - {{name: trainer, image: x, imageID: '', ready: false, restartCount: 0, state: {{terminated: {{exitCode: 1, finishedAt: '2026-01-01T00:00:10Z'}}}}}}"
        ));
        assert_eq!(observe_pod(&exited).unwrap().ended_at, Some(1_767_225_610));
        let deleted = pod("metadata: {name: x-0-1, deletionTimestamp: '2026-01-01T00:02:00Z', deletionGracePeriodSeconds: 120, labels: {ride.dev/rank: '1', ride.dev/attempt: '0'}}");
        assert_eq!(observe_pod(&deleted).unwrap().ended_at, Some(1_767_225_600));
        let running = pod(&format!("{META}status: {{phase: Running}}"));
        assert_eq!(observe_pod(&running).unwrap().ended_at, None);
    }

    #[test]
    fn progress_gives_percent_a_smoothed_rate_and_an_eta() {
        let mut st = RideTrainingStatus::default();
        let report = |step: u64, at: f64| Progress {
            epoch: step / 100,
            epochs: 10,
            step,
            total_steps: 1000,
            last_step_unix: Some(at),
            ..Default::default()
        };
        update_run_progress(&mut st, &report(100, 1000.0), 1001);
        let p = st.progress.clone().unwrap();
        assert_eq!((p.epoch, p.percent.as_str(), p.eta), (2, "10%", None));
        // 100 steps in 50 s: 2 steps/s, 800 steps left: 400 s.
        update_run_progress(&mut st, &report(200, 1050.0), 1052);
        let p = st.progress.clone().unwrap();
        assert_eq!((p.steps_per_second, p.eta), (Some(2.0), Some(1450)));
        // The same report read again later changes nothing in status.
        update_run_progress(&mut st, &report(200, 1050.0), 1060);
        assert_eq!(st.progress.clone().unwrap(), p);
        // Slower now (1 step/s): the rate moves part of the way.
        update_run_progress(&mut st, &report(300, 1150.0), 1150);
        let r = st.progress.clone().unwrap().steps_per_second.unwrap();
        assert!(r > 1.0 && r < 2.0, "{r}");
        // A restart resumed from an earlier step: the rate starts over.
        update_run_progress(&mut st, &report(250, 1300.0), 1300);
        assert_eq!(st.progress.clone().unwrap().steps_per_second, None);
        // Done: 100%, ETA now.
        update_run_progress(&mut st, &report(1000, 2000.0), 2001);
        let p = st.progress.unwrap();
        assert_eq!((p.percent.as_str(), p.eta), ("100%", Some(2000)));
    }
}
