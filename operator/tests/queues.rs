//! Queues and gangs for real, with the unmodified `ride-operator` binary on
//! a real control plane (`scripts/k8s-cluster.sh`): Kueue v0.17 (built from
//! its module by `scripts/k8s-kueue.sh`, run out of cluster with its
//! webhooks on loopback) admitting trainings as plain pod groups against a
//! GPU quota, and the scheduler's own gang scheduling (Kubernetes 1.36
//! alpha, `scheduling.gang: Native`) placing a training's workers all
//! together or none. Stand-in workers (`common::stand_in_image`) where the
//! trainer's work does not matter.

mod common;

use common::cluster::{trainer_image, Cluster};
use common::kueue::Kueue;
use common::node_agent::{Image, NodeSpec};
use common::{
    describe, eventually, example_with_checkpoint, find_latest, mid_epoch_checkpoint, phase_of,
    pod_log, pods_of, signal, stand_in_image, status, wait_succeeded, Operator, NS,
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

/// A ResourceFlavor, a ClusterQueue `gpus` with `gpus` GPUs of quota for
/// every namespace that preempts lower priorities, a LocalQueue `team-q` in
/// the tests' namespace, and WorkloadPriorityClasses `low` and `high`: what
/// docs/operator.md tells a platform team to create.
fn kueue_queues(gpus: u32) -> String {
    format!(
        "apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {{name: default-flavor}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {{name: gpus}}
spec:
  namespaceSelector: {{}}
  preemption: {{withinClusterQueue: LowerPriority}}
  resourceGroups:
  - coveredResources: [cpu, memory, nvidia.com/gpu]
    flavors:
    - name: default-flavor
      resources:
      - {{name: cpu, nominalQuota: 64}}
      - {{name: memory, nominalQuota: 256Gi}}
      - {{name: nvidia.com/gpu, nominalQuota: {gpus}}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata: {{name: team-q, namespace: {NS}}}
spec: {{clusterQueue: gpus}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: WorkloadPriorityClass
metadata: {{name: low}}
value: 100
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: WorkloadPriorityClass
metadata: {{name: high}}
value: 1000
"
    )
}

/// Two node agents `gpu-a` and `gpu-b` of 4 GPUs each running `images`,
/// the queues of [`kueue_queues`] with 4 GPUs of quota, and the operator as
/// `identity`.
async fn gpu_nodes_queues_and_operator(
    cluster: &Cluster,
    images: Vec<Image>,
    identity: &str,
) -> (Vec<common::node_agent::NodeAgent>, Operator) {
    let mut agents = Vec::new();
    for name in ["gpu-a", "gpu-b"] {
        let mut spec = NodeSpec::new(name, images.clone());
        spec.gpus = 4;
        agents.push(cluster.node(spec).await);
    }
    let queues = cluster.dir.join("queues.yaml");
    std::fs::write(&queues, kueue_queues(4)).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", queues.to_str().unwrap()]);
    assert!(ok, "{out}");
    let op = Operator::start(&cluster.kubeconfig, identity, &["--no-leader-election"]);
    (agents, op)
}

fn workloads(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kueue.x-k8s.io", "v1beta2", "Workload");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "workloads");
    Api::namespaced_with(client.clone(), NS, &resource)
}

/// The Workload Kueue made for training `rt`'s pod group, by the group
/// label on its pods.
async fn workload_of(client: &kube::Client, rt: &str) -> Option<DynamicObject> {
    let pods = pods_of(client, NS, rt).await;
    let group = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find_map(|p| {
            p.metadata
                .labels
                .as_ref()?
                .get("kueue.x-k8s.io/pod-group-name")
                .cloned()
        })?;
    workloads(client).get_opt(&group).await.ok()?
}

/// A Workload condition's (status, lastTransitionTime), if it has it.
fn condition(w: &DynamicObject, ty: &str) -> Option<(String, String)> {
    w.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["lastTransitionTime"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
}

fn gated(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.name == "kueue.x-k8s.io/admission"))
}

/// A 2-worker training of 2 GPUs each (4 of the quota), in LocalQueue team-q.
fn queued_training(cluster: &Cluster, name: &str) -> std::path::PathBuf {
    queued_training_with(cluster, name, "kueue.x-k8s.io/queue-name: team-q", |t| t)
}

/// [`queued_training`] with `labels` and the manifest's text changed by `edit`.
fn queued_training_with(
    cluster: &Cluster,
    name: &str,
    labels: &str,
    edit: impl Fn(String) -> String,
) -> std::path::PathBuf {
    let manifest = example_with_checkpoint(&cluster.dir, name);
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace(
            &format!("  name: {name}\n"),
            &format!("  name: {name}\n  labels: {{{labels}}}\n"),
        )
        .replace(
            "    replicas: 2\n",
            "    replicas: 2\n    gpusPerWorker: 2\n",
        );
    std::fs::write(&manifest, edit(text)).unwrap();
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kueue_holds_trainings_past_the_quota_and_a_restart_keeps_its_admission() {
    let cluster = Cluster::start();
    cluster.install_crd();
    let kueue = Kueue::start(&cluster).await;
    let client = cluster.client().await;
    let c = &client;
    // Two nodes of 4 GPUs: room for two trainings, quota for one.
    let (agents, op) =
        gpu_nodes_queues_and_operator(&cluster, vec![stand_in_image(&cluster.dir)], "op-k").await;
    let ctx = || {
        let (_, w) = cluster.kubectl(&["get", "workloads.kueue.x-k8s.io", "-o", "yaml"]);
        format!(
            "{}\n{}\n{}\nworkloads:\n{w}\nkueue log:\n{}",
            describe(&cluster, &op, "qa"),
            describe(&cluster, &op, "qb"),
            describe(&cluster, &op, "qc"),
            kueue.log_tail(30)
        )
    };
    let apply = |name: &str| {
        let (ok, out) = cluster.kubectl(&[
            "apply",
            "-f",
            queued_training(&cluster, name).to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
    };

    // The first training fits the quota: admitted and running.
    apply("qa");
    eventually(
        90,
        "qa Running",
        || async move { (status(c, NS, "qa").await["phase"] == "Running").then_some(()) },
        ctx,
    )
    .await;
    let qa = workload_of(c, "qa").await.expect("qa's Workload");
    assert_eq!(
        condition(&qa, "Admitted").map(|c| c.0).as_deref(),
        Some("True"),
        "{qa:?}"
    );

    // The second does not: its pods stay gated and unbound, and its status
    // says it is queued, in Kueue's words. A third queues behind it.
    let created = Instant::now();
    apply("qb");
    let st = eventually(
        90,
        "qb Queued with Kueue's reason",
        || async move {
            let st = status(c, NS, "qb").await;
            (st["reason"] == "Queued"
                && st["message"]
                    .as_str()?
                    .contains("insufficient unused quota for nvidia.com/gpu"))
            .then_some(st)
        },
        ctx,
    )
    .await;
    println!("kueue: qb queued: {}", st["message"]);
    let pods = pods_of(c, NS, "qb").await;
    assert_eq!(pods.len(), 2, "{}", ctx());
    assert!(
        pods.iter().all(|p| gated(p) && node_of(p).is_none()),
        "{}",
        ctx()
    );
    assert_ne!(st["phase"], "Running", "{st}");
    apply("qc");
    eventually(
        90,
        "qc Queued",
        || async move { (status(c, NS, "qc").await["reason"] == "Queued").then_some(()) },
        ctx,
    )
    .await;
    // Once Kueue has tried qc and found no quota, both wait as inadmissible
    // and quota coming free requeues them in creation order. (Before that,
    // BestEffortFIFO would let a newer workload it has not tried yet take
    // quota that frees first.)
    eventually(
        90,
        "Kueue tried qc's Workload",
        || async move {
            let w = workload_of(c, "qc").await?;
            (condition(&w, "QuotaReserved")?.0 == "False").then_some(())
        },
        ctx,
    )
    .await;

    // The first finishes: Kueue admits the second (the first in line), which
    // runs; the third still waits.
    for rank in 0..2 {
        signal(&agents, &format!("qa-0-{rank}"), "USR1");
    }
    let finished = Instant::now();
    eventually(
        90,
        "qa Succeeded, qb Running",
        || async move {
            let a = status(c, NS, "qa").await["phase"] == "Succeeded";
            let b = status(c, NS, "qb").await["phase"] == "Running";
            (a && b).then_some(())
        },
        ctx,
    )
    .await;
    println!(
        "kueue: qb gated -> admitted and running {:.1}s after qa's workers finished ({:.1}s after it was created)",
        finished.elapsed().as_secs_f64(),
        created.elapsed().as_secs_f64()
    );
    let qb = workload_of(c, "qb").await.expect("qb's Workload");
    let admitted = condition(&qb, "Admitted").expect("qb Admitted");
    assert_eq!(admitted.0, "True", "{qb:?}");
    let qb_uid = qb.metadata.uid.clone();
    assert!(pods_of(c, NS, "qc").await.iter().all(gated), "{}", ctx());

    // A worker of the second fails: the whole gang restarts as attempt 1 in
    // the same pod group, admitted at once as the failed pods'
    // replacements. The Workload is the same object and was never
    // un-admitted, so the third, next in line, stays queued.
    signal(&agents, "qb-0-1", "USR2");
    let restarted = Instant::now();
    eventually(
        90,
        "qb attempt 1 running, attempt 0 gone",
        || async move {
            let p = pods_of(c, NS, "qb").await;
            let names: Vec<_> = p.iter().filter_map(|p| p.metadata.name.clone()).collect();
            let running = p.iter().all(|p| phase_of(p) == "Running");
            (names == ["qb-1-0", "qb-1-1"] && running).then_some(())
        },
        ctx,
    )
    .await;
    println!(
        "kueue: qb's gang restart running again {:.1}s after the failure, without queueing",
        restarted.elapsed().as_secs_f64()
    );
    let st = status(c, NS, "qb").await;
    assert_eq!(st["restarts"], json!(1), "{st}");
    assert_eq!(st["phase"], "Running", "{st}");
    let qb = workload_of(c, "qb")
        .await
        .expect("qb's Workload after the restart");
    assert_eq!(qb.metadata.uid, qb_uid, "a new Workload: {qb:?}");
    assert_eq!(condition(&qb, "Admitted"), Some(admitted), "{qb:?}");
    let qc = status(c, NS, "qc").await;
    assert_eq!(qc["reason"], "Queued", "{qc}");
    assert!(pods_of(c, NS, "qc").await.iter().all(gated), "{}", ctx());
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kueue_preemption_is_a_planned_stop_the_trainer_saves_and_resumes_from() {
    let cluster = Cluster::start();
    cluster.install_crd();
    let kueue = Kueue::start(&cluster).await;
    let client = cluster.client().await;
    let c = &client;
    // The low-priority training runs the real trainer; the high-priority
    // one stand-ins (image `stand-in:1`). Room for both, quota for one.
    let stand_in = Image {
        matches: "stand-in".into(),
        ..stand_in_image(&cluster.dir)
    };
    let (agents, op) =
        gpu_nodes_queues_and_operator(&cluster, vec![trainer_image(), stand_in], "op-p").await;
    let ckpt = cluster.dir.join("ckpt");
    let ctx = || {
        let (_, w) = cluster.kubectl(&["get", "workloads.kueue.x-k8s.io", "-o", "yaml"]);
        let logs: String = agents.iter().map(|a| a.logs()).collect();
        format!(
            "{}\n{}\nworkloads:\n{w}\nkueue log:\n{}\n{logs}",
            describe(&cluster, &op, "low"),
            describe(&cluster, &op, "high"),
            kueue.log_tail(30)
        )
    };
    let apply = |path: std::path::PathBuf| {
        let (ok, out) = cluster.kubectl(&["apply", "-f", path.to_str().unwrap()]);
        assert!(ok, "{out}");
    };

    // Two epochs of the CPU example; its first checkpoint ends epoch 0.
    apply(queued_training_with(
        &cluster,
        "low",
        "kueue.x-k8s.io/queue-name: team-q, kueue.x-k8s.io/priority-class: low",
        |t| t.replace("TRAIN.EPOCHS: \"1\"", "TRAIN.EPOCHS: \"2\""),
    ));
    eventually(
        600,
        "low's first checkpoint",
        || async { find_latest(&ckpt) },
        ctx,
    )
    .await;

    // A higher priority needs the quota: Kueue preempts `low` (a
    // TerminationTarget condition on its pods, then deletes them).
    apply(queued_training_with(
        &cluster,
        "high",
        "kueue.x-k8s.io/queue-name: team-q, kueue.x-k8s.io/priority-class: high",
        |t| t.replace("ghcr.io/ride-on-cluster/ride-trainer:0.1.0", "stand-in:1"),
    ));
    let preempting = Instant::now();
    let st = eventually(
        240,
        "low preempted, saved, and queued again",
        || async move {
            let st = status(c, NS, "low").await;
            let queued = st["reason"] == "Queued" && st["message"].as_str()?.contains("evicted");
            (st["restartsByCause"]["preemption"] == 1 && queued).then_some(st)
        },
        ctx,
    )
    .await;
    let saved = preempting.elapsed().as_secs_f64();
    println!("kueue: low preempted: {}", st["message"]);
    assert_eq!(st["restarts"], 0, "preemption is outside the budget: {st}");
    assert!(
        st["lostWork"].is_null(),
        "a planned stop loses nothing: {st}"
    );
    // The trainers saved where they stopped, mid-epoch.
    let mid_epoch = mid_epoch_checkpoint(&ckpt).unwrap_or_else(|| {
        panic!(
            "no mid-epoch checkpoint under {}\n{}",
            ckpt.display(),
            ctx()
        )
    });
    // The high-priority one runs; low's next attempt waits, gated.
    eventually(
        90,
        "high Running",
        || async move { (status(c, NS, "high").await["phase"] == "Running").then_some(()) },
        ctx,
    )
    .await;
    let low = pods_of(c, NS, "low").await;
    let next: Vec<_> = low
        .iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("low-1-"))
        })
        .collect();
    assert_eq!(next.len(), 2, "{}", ctx());
    assert!(
        next.iter().all(|p| gated(p) && node_of(p).is_none()),
        "{}",
        ctx()
    );

    // The high-priority one finishes: Kueue admits `low` again, which
    // resumes from the checkpoint it saved when preempted, and finishes.
    for rank in 0..2 {
        signal(&agents, &format!("high-0-{rank}"), "USR1");
    }
    let released = Instant::now();
    eventually(
        120,
        "low running again",
        || async move { (status(c, NS, "low").await["phase"] == "Running").then_some(()) },
        ctx,
    )
    .await;
    let readmitted = released.elapsed().as_secs_f64();
    let st = wait_succeeded(c, NS, "low", 900, ctx).await;
    assert_eq!(st["restarts"], 0, "{st}");
    assert_eq!(st["restartsByCause"]["preemption"], 1, "{st}");
    let resumed = pod_log(&agents, "low-1-0");
    assert!(
        resumed.contains("resumed from") && resumed.contains(&mid_epoch),
        "the readmitted gang resumes from {mid_epoch}:\n{resumed}"
    );
    assert!(resumed.contains("| top-1 overall"), "{resumed}");
    println!(
        "kueue: preempted -> saved {mid_epoch} and queued again in {saved:.1}s; \
         readmitted and running {readmitted:.1}s after the preemptor finished; resumed from it and succeeded"
    );
}
