//! Whether a worker's node is lost, from the operator's node cache.
//!
//! A node whose kubelet stopped reporting (Ready `Unknown`, the
//! `node.kubernetes.io/unreachable` taint) or reports itself not ready
//! cannot run a graceful stop: its pods are force-deleted and the gang is
//! replaced at once, instead of after the taint eviction (300 s by default)
//! and a grace period that no kubelet is there to honour. A rank that still
//! runs behind a partition cannot make its checkpoint `latest` over the new
//! gang's: the trainer fences saves by attempt (`docs/operator.md`).

use k8s_openapi::api::core::v1::Node;

/// The taint the node lifecycle controller puts on a node it cannot reach.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Why the node a pod is bound to is lost, or `None` while it is fine.
/// `node` is the cache's copy (`None`: not in it), `synced` whether the
/// cache has been filled: an unfilled cache (or one the operator may not
/// read) says nothing about any node.
pub fn node_lost(node_name: &str, node: Option<&Node>, synced: bool) -> Option<String> {
    if !synced || node_name.is_empty() {
        return None;
    }
    let Some(node) = node else {
        return Some(format!("its node {node_name} was deleted"));
    };
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let unreachable = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == UNREACHABLE_TAINT));
    match ready.map(|c| c.status.as_str()) {
        _ if unreachable => Some(format!("its node {node_name} is unreachable")),
        Some("Unknown") => Some(format!(
            "its node {node_name} stopped reporting (Ready Unknown)"
        )),
        Some("False") => Some(format!("its node {node_name} is not ready")),
        // No Ready condition yet (a node registering) is not a loss.
        _ => None,
    }
}

/// A node as the cache keeps it: only what [`node_lost`] reads, so a
/// cluster of thousands of nodes (each with its image list) costs little.
pub fn slim(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    node.metadata.labels = None;
    if let Some(spec) = node.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::NodeSpec {
            taints: spec.taints.take(),
            ..Default::default()
        };
    }
    if let Some(status) = node.status.as_mut() {
        let conditions = status
            .conditions
            .take()
            .map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect());
        *status = k8s_openapi::api::core::v1::NodeStatus {
            conditions,
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};

    fn node(ready: Option<&str>, taint: Option<&str>) -> Node {
        Node {
            spec: Some(NodeSpec {
                taints: taint.map(|k| {
                    vec![Taint {
                        key: k.into(),
                        effect: "NoExecute".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: ready.map(|s| {
                    vec![NodeCondition {
                        type_: "Ready".into(),
                        status: s.into(),
                        ..Default::default()
                    }]
                }),
                images: Some(vec![Default::default(); 3]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_is_lost_when_unreachable_not_ready_or_gone_and_only_from_a_synced_cache() {
        let ok = node(Some("True"), None);
        assert_eq!(node_lost("n", Some(&ok), true), None);
        assert!(node_lost("n", Some(&node(Some("Unknown"), None)), true)
            .unwrap()
            .contains("stopped reporting"));
        assert!(node_lost("n", Some(&node(Some("False"), None)), true)
            .unwrap()
            .contains("not ready"));
        assert!(node_lost(
            "n",
            Some(&node(Some("True"), Some(UNREACHABLE_TAINT))),
            true
        )
        .unwrap()
        .contains("unreachable"));
        assert!(node_lost("n", None, true).unwrap().contains("deleted"));
        // An unsynced (or forbidden) cache, an unbound pod, a registering node.
        assert_eq!(node_lost("n", None, false), None);
        assert_eq!(node_lost("", None, true), None);
        assert_eq!(node_lost("n", Some(&node(None, None)), true), None);
        // Another NoExecute taint is an administrator's, not a loss.
        let tainted = node(Some("True"), Some("example.com/maintenance"));
        assert_eq!(node_lost("n", Some(&tainted), true), None);
    }

    #[test]
    fn the_cached_node_keeps_what_the_verdict_reads() {
        let full = node(Some("Unknown"), Some(UNREACHABLE_TAINT));
        let mut kept = full.clone();
        slim(&mut kept);
        assert!(kept.status.as_ref().unwrap().images.is_none());
        assert_eq!(
            node_lost("n", Some(&kept), true),
            node_lost("n", Some(&full), true)
        );
    }
}
