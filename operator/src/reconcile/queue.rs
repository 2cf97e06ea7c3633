//! Whether a training's workers wait for Kueue, and what Kueue says about
//! it: read from the pods (Kueue's scheduling gate) and from the Workload
//! Kueue made for their pod group. Pure; the controller does the one GET.

use crate::pods::{KUEUE_POD_GROUP_LABEL, KUEUE_QUEUE_LABEL, LABEL_ATTEMPT};
use crate::report::{shorten, MAX_MESSAGE_BYTES};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

/// The scheduling gate Kueue's pod webhook puts on a pod of a queue and
/// lifts when it admits the pod's group.
pub const KUEUE_ADMISSION_GATE: &str = "kueue.x-k8s.io/admission";

/// Kueue's Workload API (`kueue.x-k8s.io/v1beta2`, served by Kueue v0.17).
pub const KUEUE_GROUP: &str = "kueue.x-k8s.io";
/// See [`KUEUE_GROUP`].
pub const KUEUE_VERSION: &str = "v1beta2";

/// A pod group of the attempt waiting for Kueue's admission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatedGroup {
    /// The pod group, which is also the Workload's name.
    pub group: String,
    /// The LocalQueue the pods name.
    pub queue: String,
}

/// The Kueue pod group of `attempt`'s workers if one of them (not being
/// deleted) still carries Kueue's admission gate.
pub fn gated_group<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    attempt: i32,
) -> Option<GatedGroup> {
    pods.into_iter().find_map(|p| {
        let labels = p.metadata.labels.as_ref()?;
        let ours = labels.get(LABEL_ATTEMPT)?.parse::<i32>().ok()? == attempt;
        let gated = p
            .spec
            .as_ref()?
            .scheduling_gates
            .as_ref()?
            .iter()
            .any(|g| g.name == KUEUE_ADMISSION_GATE);
        if !ours || !gated || p.metadata.deletion_timestamp.is_some() {
            return None;
        }
        Some(GatedGroup {
            group: labels.get(KUEUE_POD_GROUP_LABEL)?.clone(),
            queue: labels.get(KUEUE_QUEUE_LABEL)?.clone(),
        })
    })
}

/// The status message of a training whose workers wait for Kueue: the
/// queue, and Kueue's own words from the Workload (`None` when it could not
/// be read: not made yet, or no permission to read it). Kueue's text names
/// other tenants' objects at most by uid, but it is bounded all the same.
pub fn queued_message(gated: &GatedGroup, workload: Option<&Value>) -> String {
    let head = format!(
        "waiting for Kueue to admit workload {} (LocalQueue {})",
        gated.group, gated.queue
    );
    let conditions = workload
        .and_then(|w| w["status"]["conditions"].as_array())
        .cloned()
        .unwrap_or_default();
    let find = |ty: &str, status: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == ty && c["status"] == status)
            .cloned()
    };
    let words = |c: &Value| {
        let reason = c["reason"].as_str().unwrap_or_default();
        let message = c["message"].as_str().unwrap_or_default();
        [reason, message]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(": ")
    };
    let said = find("Evicted", "True")
        .map(|c| format!("evicted, {}", words(&c)))
        .or_else(|| find("QuotaReserved", "False").map(|c| words(&c)))
        .filter(|s| !s.is_empty());
    let text = match said {
        Some(said) => format!("{head}: {said}"),
        None => head,
    };
    shorten(&text, MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(attempt: i32, gated: bool, deleting: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "labels": {
                LABEL_ATTEMPT: attempt.to_string(),
                KUEUE_POD_GROUP_LABEL: "a-1234abcd",
                KUEUE_QUEUE_LABEL: "team-q",
            }},
            "spec": {"containers": [], "schedulingGates": if gated {
                json!([{"name": KUEUE_ADMISSION_GATE}])
            } else { json!([]) }},
        }))
        .unwrap();
        if deleting {
            p.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    "2026-01-01T00:00:00Z".parse().unwrap(),
                ));
        }
        p
    }

    #[test]
    fn only_a_gated_live_pod_of_this_attempt_counts() {
        let want = GatedGroup {
            group: "a-1234abcd".into(),
            queue: "team-q".into(),
        };
        assert_eq!(gated_group(&[pod(1, true, false)], 1), Some(want));
        assert_eq!(gated_group(&[pod(1, false, false)], 1), None);
        assert_eq!(gated_group(&[pod(0, true, false)], 1), None);
        assert_eq!(gated_group(&[pod(1, true, true)], 1), None);
    }

    #[test]
    fn the_message_carries_kueues_reason() {
        let g = GatedGroup {
            group: "a-1234abcd".into(),
            queue: "team-q".into(),
        };
        let pending = json!({"status": {"conditions": [{
            "type": "QuotaReserved", "status": "False", "reason": "Pending",
            "message": "couldn't assign flavors to pod set 1b2c: insufficient unused quota for nvidia.com/gpu in flavor gpu, 4 more needed",
        }]}});
        let m = queued_message(&g, Some(&pending));
        assert!(m.starts_with("waiting for Kueue to admit workload a-1234abcd (LocalQueue team-q): Pending: couldn't assign flavors"), "{m}");
        let evicted = json!({"status": {"conditions": [
            {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "x"},
            {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "Preempted to accommodate a higher priority Workload"},
        ]}});
        assert!(queued_message(&g, Some(&evicted))
            .ends_with("evicted, Preempted: Preempted to accommodate a higher priority Workload"));
        assert_eq!(
            queued_message(&g, None),
            "waiting for Kueue to admit workload a-1234abcd (LocalQueue team-q)"
        );
        let huge = json!({"status": {"conditions": [{
            "type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "x".repeat(100_000),
        }]}});
        assert!(queued_message(&g, Some(&huge)).len() <= MAX_MESSAGE_BYTES);
    }
}
