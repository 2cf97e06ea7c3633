//! The unmodified `ride-operator` binary against a real control plane
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler from
//! `scripts/k8s-cluster.sh`), with node agents that run each pod as a
//! stand-in worker process (`common::stand_in_image`): the tests end ranks
//! with signals (USR1 → exit 0, USR2 → exit 1) and the agent reports what a
//! kubelet would. Real trainer processes run in `e2e.rs`.

mod common;

use common::cluster::Cluster;
use common::node_agent::NodeSpec;
use common::{
    describe, eventually, example_with_checkpoint, live_pod_names, names, phase_of, pods_of, repo,
    setup, signal, stand_in_image, status, training, wait_for_event, Operator,
};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::Api;
use serde_json::{json, Value};

use common::NS;

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

    // Rank 0's progress report (served on its pod IP, as the trainer does)
    // shows up in status.
    let ip = pods[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("rank 0 has an IP");
    // One step a second, as a trainer would report them.
    let started = std::time::Instant::now();
    let served = common::serve_progress(&ip, move || {
        let step = 7 + started.elapsed().as_secs().min(6);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        format!(
            r#"{{"state":"Training","epoch":1,"epochs":2,"step":{step},"totalSteps":14,"lastStepUnix":{at},
            "checkpoint":{{"uri":"file:///x/ckpt_epoch_0","epoch":0,"step":7,"savedAt":"2026-11-29T03:00:00Z"}},
            "eval":{{"epoch":0,"top1":41.5,"many":60.0,"medium":30.0,"few":10.0}}}}"#
        )
    });
    eventually(
        30,
        "lastCheckpoint in status",
        || async move {
            (status(c, NS, "gang").await["lastCheckpoint"]["step"] == 7).then_some(())
        },
        ctx,
    )
    .await;
    let st = status(c, NS, "gang").await;
    assert_eq!(st["latestEval"]["overall"], 41.5);
    assert_eq!(st["lastCheckpoint"]["uri"], "file:///x/ckpt_epoch_0");
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // Progress and an ETA from the step rate between reports.
    let progress = eventually(
        30,
        "progress with an ETA",
        || async move {
            let p = status(c, NS, "gang").await["progress"].clone();
            p["eta"].is_string().then_some(p)
        },
        ctx,
    )
    .await;
    assert_eq!(
        (progress["epoch"].clone(), progress["epochs"].clone()),
        (json!(2), json!(2))
    );
    let percent = progress["percent"].as_str().unwrap();
    assert!(percent.ends_with('%'), "{progress}");
    let rate = progress["stepsPerSecond"].as_f64().unwrap();
    assert!(rate > 0.2 && rate < 5.0, "one step a second: {progress}");
    // As stored by the API server, not as our types would print them:
    // RFC 3339 times, and the generation the status reflects.
    let raw = |path: &str| {
        let (ok, out) = cluster.kubectl(&["get", "rt", "gang", "-o", &format!("jsonpath={path}")]);
        assert!(ok, "{out}");
        out.trim().to_string()
    };
    for path in [
        "{.status.startTime}",
        "{.status.progress.eta}",
        "{.status.runningSince}",
    ] {
        let t = raw(path);
        assert!(t.parse::<jiff::Timestamp>().is_ok(), "{path} = {t:?}");
    }
    let generation = raw("{.metadata.generation}");
    assert_eq!(raw("{.status.observedGeneration}"), generation);
    assert_eq!(
        raw("{.status.conditions[?(@.type==\"Running\")].observedGeneration}"),
        generation
    );

    // Edits to the restart and run policies apply without touching the
    // running gang; the status says which generation it has seen.
    let uids = |pods: &[Pod]| -> Vec<String> {
        pods.iter().filter_map(|p| p.metadata.uid.clone()).collect()
    };
    let before = uids(&pods_of(c, NS, "gang").await);
    let (ok, out) = cluster.kubectl(&[
        "patch", "rt", "gang", "--type", "merge", "-p",
        r#"{"spec":{"restartPolicy":{"budget":5,"backoffSeconds":1},"runPolicy":{"activeDeadlineSeconds":86400},"workers":{"maxResizes":3}}}"#,
    ]);
    assert!(ok, "{out}");
    let edited: i64 = raw("{.metadata.generation}").parse().unwrap();
    eventually(
        30,
        "the edit observed",
        || async move {
            (status(c, NS, "gang").await["observedGeneration"] == edited).then_some(())
        },
        ctx,
    )
    .await;
    let st = status(c, NS, "gang").await;
    assert_eq!(
        (st["attempt"].clone(), st["phase"].clone()),
        (json!(0), json!("Running")),
        "{st}"
    );
    assert_eq!(uids(&pods_of(c, NS, "gang").await), before, "same pods");

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
    // Rank 0's final report arrives as its termination message.
    let rank0_dir = agents
        .iter()
        .map(|a| a.pod_dir(NS, "gang-1-0"))
        .find(|d| d.is_dir())
        .expect("rank 0 of attempt 1 runs on a node");
    std::fs::write(
        rank0_dir.join("termination-message"),
        r#"{"state":"Finished","epoch":1,"epochs":2,"step":14,"totalSteps":14,
            "checkpoint":{"uri":"file:///x/ckpt_epoch_1","epoch":1,"step":14,"savedAt":"2026-11-29T03:01:00Z"},
            "eval":{"epoch":1,"top1":55.0,"many":70.0,"medium":50.0,"few":20.0}}"#,
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
    // The finished workers stay, as a Job's do (rank 0's log holds the
    // summary table); the training's deletion collects them.
    let finished = pods_of(c, NS, "gang").await;
    assert_eq!(finished.len(), 2, "{:?}", names(&finished));
    for p in &finished {
        assert!(
            p.metadata.deletion_timestamp.is_none(),
            "{:?} deleted",
            p.metadata.name
        );
        assert_eq!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded")
        );
    }

    // Events for what users must notice, through the real events API.
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
    for r in ["Created", "WorkerFailed", "Succeeded"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }
    // A gang coming up is in status only (its condition, runningSince).
    assert!(
        !reasons.iter().any(|x| x == "Running"),
        "a Running event in {reasons:?}"
    );

    // kubectl get rt shows the printer columns.
    let (ok, out) = cluster.kubectl(&["get", "rt"]);
    assert!(ok, "{out}");
    let header = out.lines().next().unwrap_or_default();
    for col in [
        "NAME", "PHASE", "WORKERS", "EPOCH", "TOP-1", "PROGRESS", "ETA", "RESTARTS", "AGE",
    ] {
        assert!(header.contains(col), "{out}");
    }
    let row = out
        .lines()
        .find(|l| l.starts_with("gang "))
        .unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..6], ["Succeeded", "2", "1", "55", "100%"], "{out}");
    assert!(cells[6].parse::<jiff::Timestamp>().is_ok(), "ETA: {out}");
    assert_eq!(cells[7], "1", "restarts: {out}");

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
    // Suspended time does not count towards a deadline: the clock is off.
    let start_time = || {
        let (ok, out) =
            cluster.kubectl(&["get", "rt", "sus", "-o", "jsonpath={.status.startTime}"]);
        assert!(ok, "{out}");
        out.trim().to_string()
    };
    assert_eq!(start_time(), "", "no startTime while suspended");
    let resumed_at = jiff::Timestamp::now().as_second();
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
    let restarted: jiff::Timestamp = start_time().parse().expect("startTime after resume");
    assert!(
        restarted.as_second() >= resumed_at,
        "the clock restarts on resume"
    );

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
    // One node with room for one worker: the real scheduler places one rank
    // and cannot place the other. Which one it places first is its choice.
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
        "one rank of attempt 0 unschedulable",
        || async move {
            let pods = pods_of(c, NS, "ela").await;
            pods.iter()
                .filter(|p| {
                    matches!(
                        p.metadata.name.as_deref(),
                        Some("ela-0-0") | Some("ela-0-1")
                    )
                })
                .filter_map(|p| p.status.as_ref()?.conditions.clone())
                .any(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
                .then_some(())
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
    let spec = NodeSpec::new("node-b", vec![stand_in_image(&cluster.dir)]);
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

fn attempt_of(p: &Pod) -> String {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("ride.dev/attempt").cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_restarts_the_gang_elsewhere_without_using_the_budget() {
    let (cluster, client, agents) = setup(&["node-a", "node-b"]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-n", &["--no-leader-election"]);
    // Default grace and force-delete settings (120 s, 300 s): a lost node
    // cannot run a graceful stop, so neither is waited for.
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
    let (victim_pod, victim_node) = pods
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
    let survivor = if victim_node == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    let agent = agents.iter().find(|a| a.name == victim_node).unwrap();
    let t0 = std::time::Instant::now();
    agent.stop();

    // The real node lifecycle controller: NotReady (Unknown) after the grace
    // period, an unreachable NoExecute taint, the pod evicted.
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
    let (_, taints) =
        cluster.kubectl(&["get", "node", &victim_node, "-o", "jsonpath={.spec.taints}"]);
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );

    // The gang restarts on the surviving node, outside the budget.
    let sv = survivor.to_string();
    let new_gang = eventually(
        120,
        "attempt 1 running on the surviving node",
        || {
            let sv = sv.clone();
            async move {
                let p: Vec<Pod> = pods_of(c, NS, "lost").await;
                let ok = names(&p) == ["lost-1-0", "lost-1-1"]
                    && p.iter().all(|p| {
                        phase_of(p) == "Running"
                            && p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                                == Some(sv.as_str())
                    });
                ok.then_some(p)
            }
        },
        ctx,
    )
    .await;
    let restarted_after = t0.elapsed();
    assert_eq!(new_gang.len(), 2);
    let st = status(c, NS, "lost").await;
    assert_eq!(
        (
            st["restarts"].clone(),
            st["exemptRestarts"].clone(),
            st["attempt"].clone()
        ),
        (json!(0), json!(1), json!(1)),
        "{st}"
    );
    let restarting = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Restarting")
        .cloned()
        .unwrap_or_default();
    assert_eq!(restarting["reason"], "Preempted", "{st}");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let notes: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Preempted"))
        .filter_map(|e| e.note)
        .collect();
    // Seen as its node's loss (the node cache), not waited out until the
    // taint eviction.
    let lost = format!("was lost: its node {victim_node}");
    assert!(notes.iter().any(|n| n.contains(&lost)), "{notes:?}");
    // The old gang was force-deleted, not left for its grace period.
    let pods_now = pods_of(c, NS, "lost").await;
    assert!(
        names(&pods_now).iter().all(|n| n.starts_with("lost-1-")),
        "{:?}",
        names(&pods_now)
    );
    println!(
        "node {victim_node} lost: NotReady after {:.1} s, pod {victim_pod} force-deleted and the gang running again on {survivor} after {:.1} s (default grace and force-delete settings)",
        not_ready_after.as_secs_f64(),
        restarted_after.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_status_write_changes_nothing_and_the_restart_is_counted_once() {
    let (cluster, client, agents) = setup(&["node-a"]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-w", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(&cluster.dir, "once");
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ctx = || describe(&cluster, &op, "once");
    let c = &client;
    eventually(
        60,
        "Running",
        || async move { (status(c, NS, "once").await["phase"] == "Running").then_some(()) },
        ctx,
    )
    .await;
    // A real admission policy makes the API server refuse every status
    // write that starts a new attempt, as a lost lease or a conflict would.
    let policy = cluster.dir.join("policy.yaml");
    std::fs::write(
        &policy,
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: freeze-attempts}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: ["ride.dev"]
      apiVersions: ["v1alpha1"]
      operations: ["UPDATE"]
      resources: ["ridetrainings/status"]
  validations:
  - expression: "!has(object.status.attempt) || object.status.attempt == 0"
    message: "test: status writes that start a new attempt are refused"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: freeze-attempts}
spec:
  policyName: freeze-attempts
  validationActions: [Deny]
"#,
    )
    .unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", policy.to_str().unwrap()]);
    assert!(ok, "{out}");
    // Effective once a (dry-run) write of attempt 1 by the admin is refused.
    eventually(
        30,
        "the policy in force",
        || async {
            let (ok, out) = cluster.kubectl(&[
                "patch",
                "rt",
                "once",
                "--subresource=status",
                "--type=merge",
                "--dry-run=server",
                "-p",
                r#"{"status":{"attempt":1}}"#,
            ]);
            (!ok && out.contains("start a new attempt")).then_some(())
        },
        ctx,
    )
    .await;

    signal(&agents, "once-0-1", "USR2");
    // For a while the operator decides to restart, cannot record it, and so
    // must not act: rank 0 keeps running, no pod of attempt 1 appears.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while std::time::Instant::now() < until {
        let pods = pods_of(c, NS, "once").await;
        assert!(
            pods.iter().all(|p| attempt_of(p) == "0"),
            "acted without recording: {:?}\n{}",
            names(&pods),
            ctx()
        );
        let rank0 = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("once-0-0"))
            .expect("rank 0 still there");
        assert!(rank0.metadata.deletion_timestamp.is_none(), "{}", ctx());
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        op.log_text().contains("start a new attempt"),
        "{}",
        op.log_text()
    );
    let (ok, out) = cluster.kubectl(&[
        "delete",
        "validatingadmissionpolicybinding",
        "freeze-attempts",
    ]);
    assert!(ok, "{out}");
    eventually(
        60,
        "attempt 1 running",
        || async move {
            let st = status(c, NS, "once").await;
            (st["attempt"] == 1 && st["phase"] == "Running").then_some(())
        },
        ctx,
    )
    .await;
    let st = status(c, NS, "once").await;
    assert_eq!(st["restarts"], 1, "counted once: {st}");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let failed: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("once")
                && e.reason.as_deref() == Some("WorkerFailed")
        })
        .collect();
    assert_eq!(failed.len(), 1, "one WorkerFailed event: {failed:?}");
    let series = failed[0].series.as_ref().map_or(1, |s| s.count);
    assert_eq!(series, 1, "recorded once: {failed:?}");
    let metrics = op.http_get("/metrics").unwrap_or_default();
    assert!(
        metrics.contains("ride_operator_restarts_total{kind=\"budget\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_attempt_waits_until_the_old_gang_has_stopped() {
    let cluster = Cluster::start();
    cluster.install_crd();
    let client = cluster.client().await;
    // Workers take 4 s after SIGTERM to stop, as when saving a checkpoint.
    let mut spec = NodeSpec::new("node-a", vec![stand_in_image(&cluster.dir)]);
    spec.base_env
        .push(("STAND_IN_TERM_DELAY".into(), "4".into()));
    let agents = vec![cluster.node(spec).await];
    let op = Operator::start(&cluster.kubeconfig, "op-o", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(&cluster.dir, "lap");
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ctx = || describe(&cluster, &op, "lap");
    let c = &client;
    eventually(
        60,
        "Running",
        || async move { (status(c, NS, "lap").await["phase"] == "Running").then_some(()) },
        ctx,
    )
    .await;
    // The pod spec carries the grace the trainer needs to save.
    let pods = pods_of(c, NS, "lap").await;
    assert_eq!(
        pods[0]
            .spec
            .as_ref()
            .unwrap()
            .termination_grace_period_seconds,
        Some(120)
    );
    signal(&agents, "lap-0-1", "USR2");
    // Sample the pods until attempt 1 runs: never both gangs at once.
    let start = std::time::Instant::now();
    let mut old_gone_at = None;
    loop {
        let pods = pods_of(c, NS, "lap").await;
        let attempts: std::collections::BTreeSet<String> = pods.iter().map(attempt_of).collect();
        assert!(
            !(attempts.contains("0") && attempts.contains("1")),
            "two attempts at once: {:?}\n{}",
            names(&pods),
            ctx()
        );
        if !attempts.contains("0") && old_gone_at.is_none() {
            old_gone_at = Some(start.elapsed());
        }
        if pods.len() == 2
            && pods
                .iter()
                .all(|p| attempt_of(p) == "1" && phase_of(p) == "Running")
        {
            break;
        }
        assert!(start.elapsed().as_secs() < 90, "no attempt 1\n{}", ctx());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let old_gone_at = old_gone_at.expect("attempt 0 went");
    assert!(
        old_gone_at.as_secs_f64() >= 3.5,
        "rank 0 took its 4 s to stop: gone after {old_gone_at:?}"
    );
    println!(
        "attempt 0 gone {:.1} s after the failure; attempt 1 running after {:.1} s",
        old_gone_at.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_credentials_secret_makes_the_operator_send_no_request() {
    // Everything a tenant could put in the Secret to steer an object_store
    // client: endpoints, container-credential URIs, a token file.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = trap.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let hits = hits.clone();
        std::thread::spawn(move || {
            for s in trap.incoming() {
                drop(s);
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    let (cluster, client, agents) = setup(&["node-a"]).await;
    let url = format!("http://127.0.0.1:{port}");
    let (ok, out) = cluster.kubectl(&[
        "create", "secret", "generic", "evil",
        &format!("--from-literal=AWS_ENDPOINT_URL={url}"),
        &format!("--from-literal=aws_endpoint={url}"),
        &format!("--from-literal=aws_container_credentials_full_uri={url}/creds"),
        &format!("--from-literal=AWS_CONTAINER_CREDENTIALS_FULL_URI={url}/creds"),
        "--from-literal=aws_container_authorization_token_file=/var/run/secrets/kubernetes.io/serviceaccount/token",
        "--from-literal=allow_http=true",
        "--from-literal=AWS_ACCESS_KEY_ID=x",
        "--from-literal=AWS_SECRET_ACCESS_KEY=y",
    ]);
    assert!(ok, "{out}");
    let op = Operator::start(&cluster.kubeconfig, "op-x", &["--no-leader-election"]);
    let manifest = cluster.dir.join("evil.yaml");
    let text = std::fs::read_to_string(repo().join("examples/ride-cpu.yaml"))
        .unwrap()
        .replace("name: ride-cpu", "name: evil")
        .replace(
            "uri: file:///tmp/ride-cpu",
            "uri: s3://bucket/run\n    credentialsSecret: evil",
        );
    std::fs::write(&manifest, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ctx = || describe(&cluster, &op, "evil");
    let c = &client;
    let pods = eventually(
        60,
        "Running",
        || async move {
            let p = pods_of(c, NS, "evil").await;
            (status(c, NS, "evil").await["phase"] == "Running").then_some(p)
        },
        ctx,
    )
    .await;
    // Progress still reaches status, from rank 0 itself.
    let ip = pods[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap();
    common::serve_progress(&ip, || {
        r#"{"state":"Training","step":3,"checkpoint":{"uri":"s3://bucket/run/m/t/ckpt_epoch_0","epoch":0,"step":3,"savedAt":"2026-11-29T03:00:00Z"}}"#.into()
    });
    eventually(
        30,
        "progress in status",
        || async move { (status(c, NS, "evil").await["lastCheckpoint"]["step"] == 3).then_some(()) },
        ctx,
    )
    .await;
    let rank0_dir = agents[0].pod_dir(NS, "evil-0-0");
    std::fs::write(
        rank0_dir.join("termination-message"),
        r#"{"state":"Finished","step":6,"eval":{"epoch":1,"top1":12.5}}"#,
    )
    .unwrap();
    signal(&agents, "evil-0-0", "USR1");
    signal(&agents, "evil-0-1", "USR1");
    eventually(
        60,
        "Succeeded with the final top-1",
        || async move {
            let st = status(c, NS, "evil").await;
            (st["phase"] == "Succeeded" && st["latestEval"]["overall"] == 12.5).then_some(())
        },
        ctx,
    )
    .await;
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the operator connected to the address the tenant's Secret named\n{}",
        op.log_text()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_a_template_pass_restricted_pod_security_and_refusals_reach_status() {
    let (cluster, client, _agents) = setup(&["node-a"]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-r", &["--no-leader-election"]);
    let c = &client;
    // A namespace that enforces the `restricted` Pod Security Standard: the
    // real PodSecurity admission plugin judges the worker pods.
    for (ns, label) in [
        ("secure", "pod-security.kubernetes.io/enforce=restricted"),
        ("quota", "pod-security.kubernetes.io/enforce=restricted"),
    ] {
        let (ok, out) = cluster.kubectl(&["create", "namespace", ns]);
        assert!(ok, "{out}");
        let (ok, out) = cluster.kubectl(&["label", "namespace", ns, label]);
        assert!(ok, "{out}");
    }
    eventually(
        30,
        "ServiceAccounts in the new namespaces",
        || async {
            ["secure", "quota"]
                .iter()
                .all(|ns| {
                    cluster
                        .kubectl(&["-n", ns, "get", "serviceaccount", "default"])
                        .0
                })
                .then_some(())
        },
        String::new,
    )
    .await;
    let manifest = example_with_checkpoint(&cluster.dir, "strict");
    // What users add through the pod template, and a Kueue queue label,
    // must not cost the pods their admission.
    let templated = cluster.dir.join("templated.yaml");
    std::fs::write(
        &templated,
        std::fs::read_to_string(&manifest)
            .unwrap()
            .replace(
                "  name: strict\n",
                "  name: strict\n  labels: {kueue.x-k8s.io/queue-name: team-a}\n",
            )
            .replace(
                "    replicas: 2\n",
                "    replicas: 2\n    template:\n      metadata: {labels: {team: vision}, annotations: {example.com/owner: ml}}\n      env: [{name: NCCL_DEBUG, value: INFO}]\n      volumes: [{name: scratch, emptyDir: {}}]\n      volumeMounts: [{name: scratch, mountPath: /scratch}]\n      sidecars: [{name: shipper, image: 'fluent-bit:3'}]\n",
            ),
    )
    .unwrap();
    let (ok, out) = cluster.kubectl(&["-n", "secure", "apply", "-f", templated.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ctx = || {
        let (_, e) = cluster.kubectl(&["get", "events", "-A"]);
        format!("{e}\n{}", op.log_text())
    };
    let pods = eventually(
        60,
        "admitted, running workers",
        || async move {
            let p = pods_of(c, "secure", "strict").await;
            (p.len() == 2 && p.iter().all(|p| phase_of(p) == "Running")).then_some(p)
        },
        ctx,
    )
    .await;
    let spec = pods[0].spec.as_ref().unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    let sc = spec.containers[0].security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["trainer", "shipper"]);
    let env = spec.containers[0].env.as_ref().unwrap();
    assert!(env.iter().any(|e| e.name == "NCCL_DEBUG"));
    assert!(spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .any(|v| v.name == "scratch"));
    let labels = pods[0].metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "vision");
    assert_eq!(labels["kueue.x-k8s.io/queue-name"], "team-a");
    // One Kueue pod group for the training's life: its name and the
    // first 8 characters of its uid.
    let (_, uid) = cluster.kubectl(&[
        "-n",
        "secure",
        "get",
        "rt",
        "strict",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    assert_eq!(
        labels["kueue.x-k8s.io/pod-group-name"],
        format!("strict-{}", &uid.replace('-', "")[..8])
    );
    let annotations = pods[0].metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["kueue.x-k8s.io/pod-group-total-count"], "2");
    assert_eq!(annotations["example.com/owner"], "ml");

    // A hostPath dataset is this operator's policy to refuse.
    let hostpath = cluster.dir.join("hostpath.yaml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("name: strict", "name: hostpath")
        .replace(
            "  checkpoint:",
            "  dataset:\n    path: /data\n    volume: {name: data, hostPath: {path: /etc}}\n  checkpoint:",
        );
    std::fs::write(&hostpath, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", hostpath.to_str().unwrap()]);
    assert!(ok, "{out}");
    let st = eventually(
        30,
        "InvalidSpec for hostPath",
        || async move {
            let st = status(c, NS, "hostpath").await;
            (st["reason"] == "InvalidSpec").then_some(st)
        },
        ctx,
    )
    .await;
    assert!(
        st["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.dataset.volume.hostPath"),
        "{st}"
    );
    assert!(pods_of(c, NS, "hostpath").await.is_empty());
    // The same through the template, and a template that would take over
    // the process contract: refused naming the field, no pod made.
    for (name, workers, field) in [
        (
            "hostpath-tpl",
            "    replicas: 2\n    template:\n      volumes: [{name: etc, hostPath: {path: /etc}}]\n",
            "spec.workers.template.volumes[0].hostPath",
        ),
        (
            "reserved-env",
            "    replicas: 2\n    template:\n      env: [{name: MASTER_ADDR, value: evil.example.com}]\n",
            "spec.workers.template.env[0].name",
        ),
    ] {
        let path = cluster.dir.join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("name: strict", &format!("name: {name}"))
            .replace("    replicas: 2\n", workers);
        std::fs::write(&path, text).unwrap();
        let (ok, out) = cluster.kubectl(&["apply", "-f", path.to_str().unwrap()]);
        assert!(ok, "{out}");
        let st = eventually(
            30,
            "InvalidSpec for the template",
            || async move {
                let st = status(c, NS, name).await;
                (st["reason"] == "InvalidSpec").then_some(st)
            },
            ctx,
        )
        .await;
        assert!(st["message"].as_str().unwrap_or_default().contains(field), "{st}");
        assert!(pods_of(c, NS, name).await.is_empty());
    }

    // A quota that admits one pod: the second worker's refusal shows in an
    // Event and in status, not only in the operator's log.
    let quota = cluster.dir.join("quota.yaml");
    std::fs::write(
        &quota,
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: one-pod}\nspec: {hard: {pods: \"1\"}}\n",
    )
    .unwrap();
    let (ok, out) = cluster.kubectl(&["-n", "quota", "apply", "-f", quota.to_str().unwrap()]);
    assert!(ok, "{out}");
    let squeezed = cluster.dir.join("squeezed.yaml");
    std::fs::write(
        &squeezed,
        std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("name: strict", "name: squeezed"),
    )
    .unwrap();
    let (ok, out) = cluster.kubectl(&["-n", "quota", "apply", "-f", squeezed.to_str().unwrap()]);
    assert!(ok, "{out}");
    let note = wait_for_event(&client, "quota", "FailedCreatePod", |_| true, 60, ctx).await;
    assert!(note.contains("exceeded quota"), "{note}");
    let st = status(c, "quota", "squeezed").await;
    assert!(
        st["message"]
            .as_str()
            .unwrap_or_default()
            .contains("exceeded quota"),
        "{st}"
    );
    // And in the current phase's condition, where `kubectl wait` and UIs look.
    let conditions = st["conditions"].as_array().cloned().unwrap_or_default();
    assert!(
        conditions.iter().any(|c| c["status"] == "True"
            && c["message"]
                .as_str()
                .unwrap_or_default()
                .contains("exceeded quota")),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_workers_run_one_rank_per_gpu_and_the_scheduler_counts_them() {
    let cluster = Cluster::start();
    cluster.install_crd();
    let client = cluster.client().await;
    let mut agents = Vec::new();
    for n in ["gpu-a", "gpu-b"] {
        let mut spec = NodeSpec::new(n, vec![stand_in_image(&cluster.dir)]);
        spec.gpus = 2;
        agents.push(cluster.node(spec).await);
    }
    let op = Operator::start(&cluster.kubeconfig, "op-g", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(&cluster.dir, "gpus");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "    replicas: 2\n",
        "    replicas: 2\n    gpusPerWorker: 2\n",
    );
    std::fs::write(&manifest, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let c = &client;
    let ctx = || describe(&cluster, &op, "gpus");
    let pods = eventually(
        60,
        "two running 2-GPU workers",
        || async move {
            let p = pods_of(c, NS, "gpus").await;
            (p.len() == 2 && p.iter().all(|p| phase_of(p) == "Running")).then_some(p)
        },
        ctx,
    )
    .await;
    // Each node has 2 GPUs, each worker takes 2: one worker per node.
    let nodes: std::collections::BTreeSet<_> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for (rank, p) in pods.iter().enumerate() {
        let container = &p.spec.as_ref().unwrap().containers[0];
        let args = container.args.clone().unwrap().join(" ");
        let share = format!("launch --nproc-per-node 2 --nnodes 2 --node-rank {rank} --master-addr gpus-0-0.gpus-workers --master-port 29500 -- ");
        assert!(args.starts_with(&share), "{args}");
        assert!(args.contains("--device cuda"), "{args}");
        let world = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "WORLD_SIZE")
            .and_then(|e| e.value.clone());
        assert_eq!(world.as_deref(), Some("4"));
    }
    eventually(
        30,
        "phase Running",
        || async move { (status(c, NS, "gpus").await["phase"] == "Running").then_some(()) },
        ctx,
    )
    .await;
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_gets_a_pod_group_and_a_missing_pod_group_crd_is_reported() {
    let (cluster, client, _agents) = setup(&["node-a"]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-pg", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(&cluster.dir, "cosched");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "  checkpoint:",
        "  scheduling: {gang: Coscheduling}\n  checkpoint:",
    );
    std::fs::write(&manifest, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let c = &client;
    let ctx = || describe(&cluster, &op, "cosched");
    // No PodGroup CRD yet: no pod is made without its group, and status says why.
    let st = eventually(
        30,
        "the missing CRD in status",
        || async move {
            let st = status(c, NS, "cosched").await;
            st["message"]
                .as_str()
                .is_some_and(|m| m.contains("PodGroup CRD installed"))
                .then_some(st)
        },
        ctx,
    )
    .await;
    assert!(pods_of(c, NS, "cosched").await.is_empty(), "{st}");
    // The real CRD from sigs.k8s.io/scheduler-plugins (scripts/k8s-crds.sh):
    // the API server validates the operator's PodGroup against its schema.
    let crd = common::k8s_crds().join("scheduling.x-k8s.io_podgroups.yaml");
    let (ok, out) = cluster.kubectl(&["apply", "-f", crd.to_str().unwrap()]);
    assert!(ok, "{out}");
    cluster.wait_established("podgroups.scheduling.x-k8s.io");
    let pods = eventually(
        60,
        "workers after the CRD arrived (retry backoff)",
        || async move {
            let p = pods_of(c, NS, "cosched").await;
            (p.len() == 2).then_some(p)
        },
        ctx,
    )
    .await;
    for p in &pods {
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["scheduling.x-k8s.io/pod-group"],
            "cosched"
        );
    }
    let (ok, out) = cluster.kubectl(&["get", "podgroup", "cosched", "-o", "json"]);
    assert!(ok, "{out}");
    let group: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(group["spec"]["minMember"], 2, "{group}");
    assert_eq!(group["metadata"]["ownerReferences"][0]["name"], "cosched");
    // Once pods exist, the failure message is gone.
    eventually(
        60,
        "a clean status message",
        || async move {
            let st = status(c, NS, "cosched").await;
            (!st["message"]
                .as_str()
                .unwrap_or_default()
                .contains("cannot create"))
            .then_some(())
        },
        ctx,
    )
    .await;

    // A Service and a PodGroup under a new training's names that are not
    // its own: left alone, named in status, no pods until they are gone.
    let foreign = cluster.dir.join("foreign.yaml");
    std::fs::write(
        &foreign,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: taken-workers, namespace: {NS}}}\nspec: {{ports: [{{port: 80}}]}}\n---\n\
             apiVersion: scheduling.x-k8s.io/v1alpha1\nkind: PodGroup\nmetadata: {{name: taken, namespace: {NS}}}\nspec: {{minMember: 5}}\n"
        ),
    )
    .unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", foreign.to_str().unwrap()]);
    assert!(ok, "{out}");
    let taken = example_with_checkpoint(&cluster.dir, "taken");
    let text = std::fs::read_to_string(&taken).unwrap().replace(
        "  checkpoint:",
        "  scheduling: {gang: Coscheduling}\n  checkpoint:",
    );
    std::fs::write(&taken, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", taken.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ctx = || describe(&cluster, &op, "taken");
    for (kind, name) in [("service", "taken-workers"), ("podgroup", "taken")] {
        let wanted = format!("{name} already exists and is not controlled by this training");
        let wanted = &wanted;
        eventually(
            60,
            &format!("the foreign {kind} in status"),
            || async move {
                let st = status(c, NS, "taken").await;
                st["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(wanted.as_str()))
                    .then_some(())
            },
            ctx,
        )
        .await;
        assert!(pods_of(c, NS, "taken").await.is_empty());
        let (ok, out) = cluster.kubectl(&["get", kind, name, "-o", "json"]);
        assert!(ok, "{out}");
        let obj: Value = serde_json::from_str(&out).unwrap();
        assert!(
            obj["metadata"]["ownerReferences"].is_null(),
            "taken over: {obj}"
        );
        if kind == "podgroup" {
            assert_eq!(obj["spec"]["minMember"], 5, "{obj}");
        }
        let (ok, out) = cluster.kubectl(&["delete", kind, name, "--wait"]);
        assert!(ok, "{out}");
    }
    // Retried with backoff (the foreign objects are not watched); any
    // change to the training retries at once.
    let (ok, out) = cluster.kubectl(&["annotate", "rt", "taken", "example.com/retry=1"]);
    assert!(ok, "{out}");
    eventually(
        60,
        "taken's workers once the names are free",
        || async move { (pods_of(c, NS, "taken").await.len() == 2).then_some(()) },
        ctx,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_start_says_why_until_it_can() {
    let (cluster, client, _agents) = setup(&["node-a"]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-w", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(&cluster.dir, "nokeys");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let uri_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("uri: file://"))
        .unwrap()
        .to_string();
    let text = text.replace(
        &uri_line,
        "    uri: s3://bucket/nokeys\n    credentialsSecret: s3-keys",
    );
    std::fs::write(&manifest, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let c = &client;
    let ctx = || describe(&cluster, &op, "nokeys");
    // The Secret does not exist: the kubelet (node agent) cannot build the
    // container's environment, and status says so instead of "0 of 2".
    let st = eventually(
        60,
        "the start problem in status",
        || async move {
            let st = status(c, NS, "nokeys").await;
            st["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot start: CreateContainerConfigError"))
                .then_some(st)
        },
        ctx,
    )
    .await;
    assert!(st["message"].as_str().unwrap().contains("s3-keys"), "{st}");
    wait_for_event(&client, NS, "WorkerNotStarting", |_| true, 30, ctx).await;
    // The user adds the Secret; the kubelet's retry starts the workers.
    let (ok, out) = cluster.kubectl(&[
        "create",
        "secret",
        "generic",
        "s3-keys",
        "--from-literal=AWS_ACCESS_KEY_ID=a",
        "--from-literal=AWS_SECRET_ACCESS_KEY=b",
    ]);
    assert!(ok, "{out}");
    eventually(
        60,
        "Running once the Secret exists",
        || async move {
            let st = status(c, NS, "nokeys").await;
            (st["phase"] == "Running").then_some(())
        },
        ctx,
    )
    .await;
    assert_eq!(status(c, NS, "nokeys").await["restarts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_failure_in_time_decides_even_when_both_are_seen_at_once() {
    let (cluster, client, agents) = setup(&["node-a"]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-f1", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(&cluster.dir, "order");
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let c = &client;
    let ctx = || describe(&cluster, &op, "order");
    eventually(
        60,
        "Running",
        || async move { (status(c, NS, "order").await["phase"] == "Running").then_some(()) },
        ctx,
    )
    .await;
    // With the operator away, rank 1 crashes (exit 1), then rank 0 stops
    // with a checkpoint (exit 75): the order a broken collective produces.
    drop(op);
    signal(&agents, "order-0-1", "USR2");
    eventually(
        30,
        "rank 1 Failed",
        || async move {
            let pods = pods_of(c, NS, "order").await;
            pods.iter()
                .any(|p| p.metadata.name.as_deref() == Some("order-0-1") && phase_of(p) == "Failed")
                .then_some(())
        },
        String::new,
    )
    .await;
    // Finish times have one-second resolution.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    signal(&agents, "order-0-0", "TERM");
    eventually(
        30,
        "both ended",
        || async move {
            let pods = pods_of(c, NS, "order").await;
            pods.iter().all(|p| phase_of(p) == "Failed").then_some(())
        },
        String::new,
    )
    .await;
    // A new operator sees both at once; rank 0 comes first in the list, but
    // the crash came first in time: a restart that uses the budget.
    let op = Operator::start(&cluster.kubeconfig, "op-f2", &["--no-leader-election"]);
    let ctx = || describe(&cluster, &op, "order");
    let st = eventually(
        60,
        "the restart",
        || async move {
            let st = status(c, NS, "order").await;
            (st["attempt"] == 1).then_some(st)
        },
        ctx,
    )
    .await;
    assert_eq!(
        (st["restarts"].clone(), st["exemptRestarts"].clone()),
        (json!(1), json!(0)),
        "{st}"
    );
    // The status message moves on to the new gang's start ("1 of 2 workers
    // running") as soon as its pods come up; the Event keeps the cause.
    let crashed = |note: &str| note.contains("worker 1 exited with code 1");
    wait_for_event(&client, NS, "WorkerFailed", crashed, 30, ctx).await;
    // The phase may already have moved on to Running; the Restarting
    // condition keeps the restart's reason.
    let restarting = st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Restarting")
        .cloned()
        .unwrap_or_default();
    assert_eq!(restarting["reason"], "WorkerFailed", "{st}");
}
