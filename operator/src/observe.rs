//! Turning what the API server reports into the lifecycle's inputs: worker
//! Pods into [`ObservedPod`]s, and the trainer's checkpoint `latest`
//! manifest into status fields. Pure functions; the controller feeds them.

use crate::crd::{CheckpointStatus, EvalStatus};
use crate::lifecycle::{ObservedPod, PodState};
use crate::pods::{LABEL_ATTEMPT, LABEL_RANK};
use k8s_openapi::api::core::v1::Pod;

fn unix(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

/// A worker pod as the lifecycle sees it; `None` for pods without our rank/attempt labels.
pub fn observe_pod(pod: &Pod) -> Option<ObservedPod> {
    let labels = pod.metadata.labels.as_ref()?;
    let rank = labels.get(LABEL_RANK)?.parse().ok()?;
    let attempt = labels.get(LABEL_ATTEMPT)?.parse().ok()?;
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let terminated_code = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "trainer"))
        .and_then(|c| c.state.as_ref()?.terminated.as_ref())
        .map(|t| t.exit_code);
    // The node controller marks pods on unreachable nodes with reason NodeLost
    // (phase Unknown in older clusters), or with a DisruptionTarget condition.
    let node_lost = status.and_then(|s| s.reason.as_deref()) == Some("NodeLost")
        || phase == "Unknown"
        || status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "DisruptionTarget"
                        && c.status == "True"
                        && c.reason.as_deref() == Some("DeletionByTaintManager")
                })
            });
    let state = if node_lost {
        PodState::NodeLost
    } else {
        match (phase, terminated_code) {
            ("Succeeded", _) => PodState::Succeeded,
            ("Failed", code) => PodState::Failed {
                exit_code: code.unwrap_or(1),
            },
            ("Running", Some(0)) => PodState::Succeeded,
            ("Running", Some(code)) => PodState::Failed { exit_code: code },
            ("Running", None) => PodState::Running,
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
        }
    };
    Some(ObservedPod {
        rank,
        attempt,
        state,
        deleting_since: pod.metadata.deletion_timestamp.as_ref().map(unix),
    })
}

/// Status fields from the trainer's `latest` manifest (JSON, see the trainer's
/// checkpoint layout); `checkpoint_uri` is where the manifest was found.
pub fn progress_from_manifest(
    json: &[u8],
    checkpoint_uri: &str,
) -> Result<(CheckpointStatus, Option<EvalStatus>), serde_json::Error> {
    let m: serde_json::Value = serde_json::from_slice(json)?;
    let dir = m["dir"].as_str().unwrap_or_default();
    let checkpoint = CheckpointStatus {
        uri: format!("{}/{dir}", checkpoint_uri.trim_end_matches('/')),
        epoch: m["epoch"].as_i64().unwrap_or(0),
        step: m["step"].as_i64().unwrap_or(0),
        time: m["saved_at"].as_str().unwrap_or_default().to_string(),
    };
    let eval = m["eval"].as_object().map(|e| EvalStatus {
        overall: e.get("top1").and_then(|v| v.as_f64()).unwrap_or(0.0),
        many: e.get("many").and_then(|v| v.as_f64()),
        medium: e.get("medium").and_then(|v| v.as_f64()),
        few: e.get("few").and_then(|v| v.as_f64()),
    });
    Ok((checkpoint, eval))
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
        assert_eq!(observe_pod(&p).unwrap().state, PodState::NodeLost);
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
        assert_eq!(observe_pod(&p).unwrap().deleting_since, Some(1_767_225_600));
        assert!(observe_pod(&pod("metadata: {name: other}")).is_none());
    }

    #[test]
    fn progress_comes_from_the_latest_manifest() {
        let json =
            br#"{"format":1,"dir":"ckpt_epoch_7","epoch":7,"iterations_done":null,"step":800,
            "world_size":4,"saved_at":"2026-11-28T12:00:00Z",
            "eval":{"top1":53.6,"top5":77.0,"many":65.0,"medium":50.0,"few":34.2},"files":{}}"#;
        let (c, e) = progress_from_manifest(json, "s3://b/run/m/default/").unwrap();
        assert_eq!(c.uri, "s3://b/run/m/default/ckpt_epoch_7");
        assert_eq!((c.epoch, c.step), (7, 800));
        let e = e.unwrap();
        assert_eq!((e.overall, e.few), (53.6, Some(34.2)));
    }
}
