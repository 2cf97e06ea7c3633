//! Queues and gangs for real, with the unmodified `ride-operator` binary on
//! a real control plane (`scripts/k8s-cluster.sh`) and stand-in workers
//! (`common::stand_in_image`): the scheduler's own gang scheduling
//! (Kubernetes 1.36 alpha, `scheduling.gang: Native`) places a training's
//! workers all together or none.

mod common;

use common::cluster::Cluster;
use common::node_agent::NodeSpec;
use common::{
    describe, eventually, example_with_checkpoint, phase_of, pods_of, signal, stand_in_image,
    status, Operator, NS,
};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{json, Value};
use std::time::Instant;

/// What the scheduler's gang scheduling needs in v1.36.3: `GenericWorkload`
/// (API server, controller manager, scheduler) and `GangScheduling`
/// (scheduler), with `scheduling.k8s.io/v1alpha2` served.
const NATIVE_GANG_ENV: &[(&str, &str)] = &[
    (
        "RIDE_K8S_FEATURE_GATES",
        "GenericWorkload=true,GangScheduling=true",
    ),
    ("RIDE_K8S_RUNTIME_CONFIG", "scheduling.k8s.io/v1alpha2=true"),
];

fn native_pod_groups(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("scheduling.k8s.io", "v1alpha2", "PodGroup");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "podgroups");
    Api::namespaced_with(client.clone(), NS, &resource)
}

/// The `reason` of the group's `PodGroupScheduled` condition, if set.
fn scheduled_reason(group: &DynamicObject) -> Option<String> {
    group.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "PodGroupScheduled")
        .and_then(|c| c["reason"].as_str())
        .map(str::to_string)
}

fn node_of(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_gang_is_placed_whole_or_not_at_all_with_a_group_per_attempt() {
    let cluster = Cluster::start_with(NATIVE_GANG_ENV);
    cluster.install_crd();
    let client = cluster.client().await;
    // 16 CPUs and workers asking for 7: room for two of the three.
    let image = || vec![stand_in_image(&cluster.dir)];
    let mut agents = vec![cluster.node(NodeSpec::new("node-a", image())).await];
    let op = Operator::start(&cluster.kubeconfig, "op-q", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(&cluster.dir, "nat");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "    replicas: 2\n",
        "    replicas: 3\n    resources: {requests: {cpu: \"7\"}}\n  scheduling:\n    gang: Native\n",
    );
    std::fs::write(&manifest, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ctx = || {
        let (_, groups) = cluster.kubectl(&["get", "podgroups.scheduling.k8s.io", "-o", "yaml"]);
        format!(
            "{}\npod groups:\n{groups}\nscheduler log:\n{}",
            describe(&cluster, &op, "nat"),
            cluster.log_tail("kube-scheduler", 40)
        )
    };
    let c = &client;
    let groups = native_pod_groups(&client);
    let g = &groups;

    // The scheduler tries the whole gang and gives up on it: no pod is bound
    // though two of the three would fit.
    let group = eventually(
        60,
        "PodGroup nat-0 Unschedulable",
        || async move {
            let group = g.get_opt("nat-0").await.ok()??;
            (scheduled_reason(&group).as_deref() == Some("Unschedulable")).then_some(group)
        },
        ctx,
    )
    .await;
    assert_eq!(
        group.data["spec"]["schedulingPolicy"],
        json!({"gang": {"minCount": 3}}),
        "{group:?}"
    );
    let owner = &group.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owner.iter().map(|o| o.kind.as_str()).collect::<Vec<_>>(),
        ["RideTraining"],
        "{owner:?}"
    );
    let pods = pods_of(c, NS, "nat").await;
    assert_eq!(pods.len(), 3, "{}", ctx());
    let bound: Vec<_> = pods.iter().filter_map(node_of).collect();
    assert!(bound.is_empty(), "bound before the gang fits: {bound:?}");
    let (ok, named) = cluster.kubectl(&[
        "get",
        "pods",
        "-l",
        "ride.dev/training=nat",
        "-o",
        "jsonpath={.items[*].spec.schedulingGroup.podGroupName}",
    ]);
    assert!(ok, "{named}");
    assert_eq!(named.split_whitespace().collect::<Vec<_>>(), ["nat-0"; 3]);
    let st = status(c, NS, "nat").await;
    assert_ne!(st["phase"], "Running", "{st}");

    // Capacity arrives: all three are bound, across both nodes.
    agents.push(cluster.node(NodeSpec::new("node-b", image())).await);
    let added = Instant::now();
    let pods = eventually(
        90,
        "all three workers bound and running",
        || async move {
            let p = pods_of(c, NS, "nat").await;
            (p.len() == 3 && p.iter().all(|p| phase_of(p) == "Running")).then_some(p)
        },
        ctx,
    )
    .await;
    println!(
        "native gang: 3 of 3 workers running {:.1}s after the second node joined; none bound before",
        added.elapsed().as_secs_f64()
    );
    let nodes: std::collections::BTreeSet<_> = pods.iter().filter_map(node_of).collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    eventually(
        60,
        "PodGroup nat-0 Scheduled",
        || async move {
            let group = g.get_opt("nat-0").await.ok()??;
            (scheduled_reason(&group).as_deref() == Some("Scheduled")).then_some(())
        },
        ctx,
    )
    .await;

    // A worker fails: the next attempt gets a group of its own (the policy
    // is immutable), and the old attempt's group is collected.
    signal(&agents, "nat-0-1", "USR2");
    eventually(
        90,
        "attempt 1 running under PodGroup nat-1, nat-0 gone",
        || async move {
            let p = pods_of(c, NS, "nat").await;
            let names: Vec<_> = p.iter().filter_map(|p| p.metadata.name.clone()).collect();
            let running = p.iter().all(|p| phase_of(p) == "Running");
            let new = g.get_opt("nat-1").await.ok()??;
            let old_gone = g.get_opt("nat-0").await.ok()?.is_none();
            (names == ["nat-1-0", "nat-1-1", "nat-1-2"] && running && old_gone).then_some(new)
        },
        ctx,
    )
    .await;
    let st: Value = status(c, NS, "nat").await;
    assert_eq!(st["restarts"], json!(1), "{st}");
    drop(agents);
}
