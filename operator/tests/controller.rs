//! The unmodified `ride-operator` binary against a real control plane
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler from
//! `scripts/k8s-cluster.sh`), with node agents that run each pod as a
//! stand-in worker process (`common::stand_in_image`): the tests end ranks
//! with signals (USR1 → exit 0, USR2 → exit 1) and the agent reports what a
//! kubelet would. Real trainer processes run in `e2e.rs`.

mod common;

use common::cluster::Cluster;
use common::node_agent::{NodeAgent, NodeSpec};
use common::{
    eventually, live_pod_names, names, pods_of, repo, stand_in_image, status, training, Operator,
};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::Api;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const NS: &str = "default";

fn example_with_checkpoint(dir: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("examples/ride-cpu.yaml"))
        .expect("examples/ride-cpu.yaml")
        .replace("name: ride-cpu", &format!("name: {name}"))
        .replace(
            "uri: file:///tmp/ride-cpu",
            &format!("uri: file://{}/ckpt", dir.display()),
        );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// A cluster with the CRD and `nodes` stand-in nodes.
async fn setup(nodes: &[&str]) -> (Cluster, kube::Client, Vec<NodeAgent>) {
    let cluster = Cluster::start();
    cluster.install_crd();
    let client = cluster.client().await;
    let mut agents = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let spec = NodeSpec::new(n, i as u8, vec![stand_in_image(&cluster.dir)]);
        agents.push(cluster.node(spec).await);
    }
    (cluster, client, agents)
}

/// What a timed-out wait shows: the training, its pods, the operator's log.
fn describe(cluster: &Cluster, op: &Operator, rt: &str) -> String {
    let (_, t) = cluster.kubectl(&["get", "rt", rt, "-o", "yaml"]);
    let (_, p) = cluster.kubectl(&["get", "pods", "-o", "wide", "--show-labels"]);
    let (_, e) = cluster.kubectl(&["get", "events", "--sort-by=.lastTimestamp"]);
    format!(
        "training:\n{t}\npods:\n{p}\nevents:\n{e}\noperator log:\n{}",
        op.log_text()
    )
}

/// Signal the process of pod `name`, wherever it runs.
fn signal(agents: &[NodeAgent], name: &str, sig: &str) {
    assert!(
        agents.iter().any(|a| a.signal_pod(NS, name, sig)),
        "no process runs pod {name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_worker_restarts_the_gang_and_status_follows_to_success() {
    let (cluster, client, agents) = setup(&["node-a", "node-b"]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-a", &[]);
    let manifest = example_with_checkpoint(&cluster.dir, "gang");
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "kubectl apply: {out}");
    assert!(out.contains("ridetraining.ride.dev/gang created"), "{out}");
    let ctx = || describe(&cluster, &op, "gang");

    // A headless Service and one pod per rank, owned by the RideTraining,
    // placed by the real scheduler and started by the node agents.
    let c = &client;
    let pods = eventually(
        60,
        "two running worker pods",
        || async move {
            let pods = pods_of(c, NS, "gang").await;
            let running = pods
                .iter()
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
            (pods.len() == 2 && running).then_some(pods)
        },
        ctx,
    )
    .await;
    assert_eq!(names(&pods), ["gang-0-0", "gang-0-1"]);
    let svc = Api::<Service>::namespaced(client.clone(), NS)
        .get("gang-workers")
        .await
        .expect("headless service");
    let svc_spec = svc.spec.expect("service spec");
    assert_eq!(svc_spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(svc_spec.publish_not_ready_addresses, Some(true));
    let uid = training(&client, NS, "gang").await.unwrap()["metadata"]["uid"].clone();
    for p in &pods {
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(json!(owner.uid), uid);
        assert_eq!(owner.controller, Some(true));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.subdomain.as_deref(), Some("gang-workers"));
        assert!(spec.node_name.is_some(), "bound by the scheduler");
    }
    let env = pods[1].spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let var = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(var("RANK").as_deref(), Some("1"));
    assert_eq!(var("WORLD_SIZE").as_deref(), Some("2"));
    assert_eq!(var("MASTER_ADDR").as_deref(), Some("gang-0-0.gang-workers"));

    eventually(
        30,
        "phase Running",
        || async move { (status(c, NS, "gang").await["phase"] == "Running").then_some(()) },
        ctx,
    )
    .await;

    // The trainer's checkpoint manifest shows up in status.
    let run_dir = cluster.dir.join("ckpt/tiny/default");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::write(
        run_dir.join("latest"),
        br#"{"dir":"ckpt_epoch_0","epoch":0,"step":7,"saved_at":"2026-11-29T03:00:00Z","eval":{"top1":41.5,"many":60.0,"medium":30.0,"few":10.0}}"#,
    )
    .unwrap();
    eventually(
        30,
        "lastCheckpoint in status",
        || async move {
            (status(c, NS, "gang").await["lastCheckpoint"]["step"] == 7).then_some(())
        },
        ctx,
    )
    .await;
    assert_eq!(status(c, NS, "gang").await["latestEval"]["overall"], 41.5);

    // Rank 1 exits 1 while rank 0 runs: the whole gang goes and comes back as attempt 1.
    signal(&agents, "gang-0-1", "USR2");
    let pods = eventually(
        60,
        "attempt 1 pods",
        || async move {
            let live = live_pod_names(c, NS, "gang").await;
            let pods = pods_of(c, NS, "gang").await;
            (live == ["gang-1-0", "gang-1-1"] && pods.len() == 2).then_some(pods)
        },
        ctx,
    )
    .await;
    let st = status(c, NS, "gang").await;
    assert_eq!(st["restarts"], 1, "{st}");
    assert_eq!(st["attempt"], 1);
    let env = pods[0].spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(env
        .iter()
        .any(|e| e.name == "RIDE_RESTART_ATTEMPT" && e.value.as_deref() == Some("1")));

    eventually(
        60,
        "Running again",
        || async move {
            let st = status(c, NS, "gang").await;
            (st["phase"] == "Running" && st["attempt"] == 1).then_some(())
        },
        ctx,
    )
    .await;
    std::fs::write(
        run_dir.join("latest"),
        br#"{"dir":"ckpt_epoch_1","epoch":1,"step":14,"saved_at":"2026-11-29T03:01:00Z","eval":{"top1":55.0,"many":70.0,"medium":50.0,"few":20.0}}"#,
    )
    .unwrap();
    // A rank that finishes first does not end the run; both finishing does.
    signal(&agents, "gang-1-0", "USR1");
    eventually(
        30,
        "rank 0 Succeeded",
        || async move {
            let pods = pods_of(c, NS, "gang").await;
            pods.iter()
                .any(|p| {
                    p.metadata.name.as_deref() == Some("gang-1-0")
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
                })
                .then_some(())
        },
        ctx,
    )
    .await;
    assert_eq!(status(c, NS, "gang").await["phase"], "Running");
    signal(&agents, "gang-1-1", "USR1");
    eventually(
        30,
        "Succeeded",
        || async move { (status(c, NS, "gang").await["phase"] == "Succeeded").then_some(()) },
        ctx,
    )
    .await;
    let st = status(c, NS, "gang").await;
    assert_eq!(
        st["latestEval"]["overall"], 55.0,
        "the final evaluation is read at the end: {st}"
    );
    let conditions = st["conditions"].as_array().unwrap();
    let cond = |t: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == t)
            .map(|c| c["status"].clone())
    };
    assert_eq!(cond("Succeeded"), Some(json!("True")), "{st}");
    assert_eq!(cond("Running"), Some(json!("False")));
    assert_eq!(cond("Restarting"), Some(json!("False")));
    eventually(
        30,
        "finished pods cleaned up",
        || async move { pods_of(c, NS, "gang").await.is_empty().then_some(()) },
        ctx,
    )
    .await;

    // Events for each transition, through the real events API.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("gang"))
        .filter_map(|e| e.reason.clone())
        .collect();
    for r in ["Created", "Running", "WorkerFailed", "Succeeded"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }

    // kubectl get rt shows the printer columns.
    let (ok, out) = cluster.kubectl(&["get", "rt"]);
    assert!(ok, "{out}");
    let header = out.lines().next().unwrap_or_default();
    for col in [
        "NAME", "PHASE", "WORKERS", "EPOCH", "TOP-1", "RESTARTS", "AGE",
    ] {
        assert!(header.contains(col), "{out}");
    }
    let row = out
        .lines()
        .find(|l| l.starts_with("gang "))
        .unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..6], ["Succeeded", "2", "1", "55", "1"], "{out}");

    // The operator's metrics saw it.
    let metrics = eventually(
        30,
        "phase gauge",
        || async {
            op.http_get("/metrics")
                .filter(|m| m.contains("ride_operator_trainings{phase=\"Succeeded\"} 1"))
        },
        ctx,
    )
    .await;
    for line in [
        "ride_operator_restarts_total{kind=\"budget\"} 1",
        "ride_operator_time_to_running_seconds_count 1",
        "ride_operator_time_to_restart_seconds_count 1",
        "ride_operator_leader 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let reconciles: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ride_operator_reconcile_duration_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(reconciles >= 5.0, "{metrics}");
    assert!(op.http_get("/readyz").is_some_and(|r| r.contains(" 200 ")));
    assert!(op.http_get("/healthz").is_some_and(|r| r.contains(" 200 ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_deletes_the_workers_resume_recreates_them_and_delete_collects_them() {
    let (cluster, client, _agents) = setup(&["node-a"]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-s", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(&cluster.dir, "sus");
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ctx = || describe(&cluster, &op, "sus");
    let c = &client;
    eventually(
        60,
        "Running",
        || async move { (status(c, NS, "sus").await["phase"] == "Running").then_some(()) },
        ctx,
    )
    .await;
    let (ok, out) = cluster.kubectl(&[
        "patch",
        "rt",
        "sus",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runPolicy":{"suspend":true}}}"#,
    ]);
    assert!(ok, "{out}");
    // The running workers get SIGTERM from the node agent (the stand-in exits 75
    // as the trainer does after a checkpoint) and are gone.
    eventually(
        60,
        "Suspended without pods",
        || async move {
            (status(c, NS, "sus").await["phase"] == "Suspended"
                && pods_of(c, NS, "sus").await.is_empty())
            .then_some(())
        },
        ctx,
    )
    .await;
    let (ok, out) = cluster.kubectl(&[
        "patch",
        "rt",
        "sus",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runPolicy":{"suspend":false}}}"#,
    ]);
    assert!(ok, "{out}");
    eventually(
        60,
        "attempt 1 pods after resume",
        || async move {
            (live_pod_names(c, NS, "sus").await == ["sus-1-0", "sus-1-1"]).then_some(())
        },
        ctx,
    )
    .await;
    let st = status(c, NS, "sus").await;
    assert_eq!(st["restarts"], 0, "resuming does not use the budget: {st}");

    // Deleting the training: the real garbage collector removes its pods and
    // Service through their owner references (the operator is stopped first,
    // so nothing but the garbage collector can do it).
    drop(op);
    let (ok, out) = cluster.kubectl(&["delete", "rt", "sus", "--wait=true"]);
    assert!(ok, "{out}");
    eventually(
        60,
        "pods and Service collected",
        || async move {
            let svc = Api::<Service>::namespaced(c.clone(), NS)
                .get_opt("sus-workers")
                .await
                .ok()
                .flatten();
            (pods_of(c, NS, "sus").await.is_empty() && svc.is_none()).then_some(())
        },
        || cluster.kubectl(&["get", "pods,svc", "-o", "wide"]).1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_reconciles_and_a_successor_takes_over() {
    let (cluster, client, _agents) = setup(&[]).await;
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let holder = || {
        let leases = leases.clone();
        async move {
            leases
                .get_opt("ride-operator")
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec?.holder_identity)
        }
    };
    let mut first = Operator::start(&cluster.kubeconfig, "op-1", &[]);
    let ctx = || format!("op-1:\n{}", first.log_text());
    eventually(
        30,
        "op-1 leads",
        || async { (holder().await.as_deref() == Some("op-1")).then_some(()) },
        ctx,
    )
    .await;
    let second = Operator::start(&cluster.kubeconfig, "op-2", &[]);
    let ctx2 = || format!("op-1:\n{}\nop-2:\n{}", first.log_text(), second.log_text());
    eventually(
        30,
        "op-2 serving metrics as a standby",
        || async {
            second
                .http_get("/metrics")
                .filter(|m| m.contains("ride_operator_leader 0"))
        },
        ctx2,
    )
    .await;
    // A training created now is reconciled by op-1 only.
    let manifest = example_with_checkpoint(&cluster.dir, "pre");
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let c = &client;
    eventually(
        30,
        "op-1 creates the pods",
        || async move { (pods_of(c, NS, "pre").await.len() == 2).then_some(()) },
        ctx2,
    )
    .await;
    assert!(
        !second.log_text().contains("training=pre") && !second.log_text().contains("\"pre\""),
        "the standby reconciled: {}",
        second.log_text()
    );
    // SIGTERM makes op-1 release the Lease; op-2 takes over at once.
    let code = first.terminate();
    assert!(code.success(), "op-1 exited with {code}");
    eventually(
        30,
        "op-2 leads",
        || async { (holder().await.as_deref() == Some("op-2")).then_some(()) },
        || second.log_text(),
    )
    .await;
    let manifest = example_with_checkpoint(&cluster.dir, "succ");
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    eventually(
        30,
        "op-2 reconciles",
        || async move { (pods_of(c, NS, "succ").await.len() == 2).then_some(()) },
        || second.log_text(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_worker_shrinks_the_gang_and_it_grows_back_later() {
    // One node with room for one worker: the real scheduler cannot place rank 1.
    let (cluster, client, mut agents) = setup(&["node-a"]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-e", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(&cluster.dir, "ela");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "replicas: 2",
        "replicas: 2\n    minReplicas: 1\n    elasticTimeoutSeconds: 10\n    resources: {requests: {cpu: \"10\"}}",
    );
    std::fs::write(&manifest, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ctx = || describe(&cluster, &op, "ela");
    let c = &client;
    eventually(
        30,
        "rank 1 unschedulable",
        || async move {
            let pods = pods_of(c, NS, "ela").await;
            pods.iter()
                .find(|p| p.metadata.name.as_deref() == Some("ela-0-1"))
                .and_then(|p| p.status.as_ref()?.conditions.clone())
                .filter(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
                .map(|_| ())
        },
        ctx,
    )
    .await;
    let pods = eventually(
        60,
        "a gang of one",
        || async move {
            let p = pods_of(c, NS, "ela").await;
            (names(&p) == ["ela-1-0"]).then_some(p)
        },
        ctx,
    )
    .await;
    let env = pods[0].spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "WORLD_SIZE" && e.value.as_deref() == Some("1")),
        "{env:?}"
    );
    let st = status(c, NS, "ela").await;
    assert_eq!(
        (
            st["worldSize"].clone(),
            st["restarts"].clone(),
            st["exemptRestarts"].clone()
        ),
        (json!(1), json!(0), json!(1)),
        "{st}"
    );
    // Capacity arrives; after running at reduced size for the timeout the gang
    // tries full size again, and the scheduler places both ranks.
    let spec = NodeSpec::new("node-b", 1, vec![stand_in_image(&cluster.dir)]);
    agents.push(cluster.node(spec).await);
    let pods = eventually(
        90,
        "full size again, both running",
        || async move {
            let p: Vec<Pod> = pods_of(c, NS, "ela").await;
            let running = p
                .iter()
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
            (names(&p) == ["ela-2-0", "ela-2-1"] && running).then_some(p)
        },
        ctx,
    )
    .await;
    let nodes: std::collections::BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(nodes.len(), 2, "one rank per node: {nodes:?}");
    let st = status(c, NS, "ela").await;
    assert_eq!(
        (st["worldSize"].clone(), st["restarts"].clone()),
        (json!(2), json!(0)),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_goes_not_ready_and_its_pods_are_evicted() {
    let (cluster, client, agents) = setup(&["node-a", "node-b"]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-n", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(&cluster.dir, "lost");
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ctx = || describe(&cluster, &op, "lost");
    let c = &client;
    let pods = eventually(
        60,
        "Running",
        || async move {
            let p = pods_of(c, NS, "lost").await;
            (status(c, NS, "lost").await["phase"] == "Running").then_some(p)
        },
        ctx,
    )
    .await;
    let victim = pods
        .iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("node-b"))
        .or_else(|| pods.first())
        .and_then(|p| {
            Some((
                p.metadata.name.clone()?,
                p.spec.as_ref()?.node_name.clone()?,
            ))
        })
        .expect("a placed pod");
    let (victim_pod, victim_node) = victim;
    let agent = agents.iter().find(|a| a.name == victim_node).unwrap();
    let t0 = std::time::Instant::now();
    agent.stop();

    // The real node lifecycle controller: NotReady (Unknown) after the grace
    // period, a NoExecute taint, and the pod evicted by the taint manager.
    let nodes: Api<Node> = Api::all(client.clone());
    let n = &nodes;
    let vn = victim_node.clone();
    eventually(
        60,
        "node Ready=Unknown",
        || {
            let vn = vn.clone();
            async move {
                let node = n.get(&vn).await.ok()?;
                node.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "Unknown")
                    .then_some(())
            }
        },
        ctx,
    )
    .await;
    let not_ready_after = t0.elapsed();
    let vp = victim_pod.clone();
    let evicted = eventually(
        60,
        "the pod on the lost node evicted",
        || {
            let vp = vp.clone();
            async move {
                let p = Api::<Pod>::namespaced(c.clone(), NS)
                    .get_opt(&vp)
                    .await
                    .ok()?;
                // Gone already (the operator may force-delete it) or marked.
                match p {
                    None => Some(json!("deleted")),
                    Some(p) => {
                        let disrupted = p.status.as_ref()?.conditions.as_ref()?.iter().any(|c| {
                            c.type_ == "DisruptionTarget"
                                && c.reason.as_deref() == Some("DeletionByTaintManager")
                        });
                        (p.metadata.deletion_timestamp.is_some() && disrupted)
                            .then(|| json!("evicted"))
                    }
                }
            }
        },
        ctx,
    )
    .await;
    println!(
        "node {victim_node} NotReady after {:.1} s; pod {victim_pod} {evicted} after {:.1} s",
        not_ready_after.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let (_, taints) =
        cluster.kubectl(&["get", "node", &victim_node, "-o", "jsonpath={.spec.taints}"]);
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agents_answer_to_node_authorization() {
    // The agent's identity is a real node's: it may read a Secret only when a
    // pod bound to it references it, and may not touch other nodes.
    let (cluster, _client, _agents) = setup(&["node-a"]).await;
    let kc = cluster.node_kubeconfig("node-a");
    let (ok, out) = cluster.kubectl_as(
        &kc,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "system:node:node-a");
    let (ok, out) = cluster.kubectl(&["create", "secret", "generic", "s3", "--from-literal=k=v"]);
    assert!(ok, "{out}");
    let (ok, out) = cluster.kubectl_as(&kc, &["get", "secret", "s3"]);
    assert!(!ok && out.contains("Forbidden"), "{out}");
    let (ok, out) = cluster.kubectl_as(&kc, &["label", "node", "node-a", "x=y"]);
    assert!(ok, "a node may label itself: {out}");
    let other: Value = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-z"}});
    let f = cluster.dir.join("node-z.json");
    std::fs::write(&f, other.to_string()).unwrap();
    let (ok, out) = cluster.kubectl_as(&kc, &["create", "-f", f.to_str().unwrap()]);
    assert!(!ok && out.contains("forbidden"), "{out}");
}
