//! What a tenant controls — a RideTraining and everything its trainer
//! image says — against the unmodified operator on a real control plane:
//! hostile reports neither end the operator nor reach status, a training
//! re-created under an old name inherits nothing of its predecessor's.

mod common;

use common::{
    describe, eventually, example_with_checkpoint, metric_value, pods_of, setup, signal, status,
    wait_for_event, Operator, NS,
};
use k8s_openapi::api::core::v1::Pod;

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("the pod has an IP")
}

fn unix_now() -> f64 {
    ride_contract::unix_now()
}

/// Apply training `name` and wait until its two workers run; their pods.
async fn running(
    cluster: &common::cluster::Cluster,
    client: &kube::Client,
    op: &Operator,
    name: &str,
) -> Vec<Pod> {
    let manifest = example_with_checkpoint(&cluster.dir, name);
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "kubectl apply: {out}");
    eventually(
        60,
        &format!("{name} Running"),
        || async move {
            let pods = pods_of(client, NS, name).await;
            let st = status(client, NS, name).await;
            (st["phase"] == "Running" && pods.len() == 2).then_some(pods)
        },
        || describe(cluster, op, name),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reports_neither_end_the_operator_nor_reach_status() {
    let (cluster, client, agents) = setup(&["node-a"]).await;
    let mut op = Operator::start(&cluster.kubeconfig, "op-t", &["--no-leader-election"]);
    let c = &client;
    let pods = running(&cluster, c, &op, "hostile").await;
    let ctx = || describe(&cluster, &op, "hostile");

    // Rank 0 answers /progress with the numbers that once divided i64::MIN
    // by -1 in the operator, a checkpoint from the future and an accuracy
    // (as far as JSON can carry one: far out of range).
    let served = common::serve_progress(&pod_ip(&pods[0]), || {
        format!(
            r#"{{"state":"Training","epoch":0,"epochs":1,"step":2305843009213693952,"totalSteps":18446744073709551615,
            "lastStepUnix":{},"checkpoint":{{"uri":"s3://b/x","epoch":0,"step":1,"savedAt":"2999-01-01T00:00:00Z"}},
            "eval":{{"epoch":0,"top1":1e300}}}}"#,
            unix_now()
        )
    });
    let note = wait_for_event(
        c,
        NS,
        "ProgressReportRefused",
        |n| n.contains("progress report"),
        60,
        ctx,
    )
    .await;
    assert!(note.contains("totalSteps"), "{note}");
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // Its termination message says the same: the report a stand-in leaves
    // as it exits, which the operator reads from pod status.
    let dir = agents[0].pod_dir(NS, "hostile-0-0");
    std::fs::write(
        dir.join("termination-message"),
        r#"{"state":"Finished","epoch":0,"epochs":1,"step":2305843009213693952,"totalSteps":18446744073709551615,"message":"bye"}"#,
    )
    .unwrap();
    signal(&agents, "hostile-0-0", "USR1");
    signal(&agents, "hostile-0-1", "USR1");
    let note = wait_for_event(
        c,
        NS,
        "FinalReportRefused",
        |n| n.contains("termination message"),
        60,
        ctx,
    )
    .await;
    assert!(
        note.contains("hostile-0-0") && note.contains("totalSteps"),
        "{note}"
    );
    let st = eventually(
        60,
        "hostile Succeeded",
        || async move {
            let st = status(c, NS, "hostile").await;
            (st["phase"] == "Succeeded").then_some(st)
        },
        ctx,
    )
    .await;
    // Nothing of the refused reports reached status.
    assert!(st["progress"].is_null(), "{st}");
    assert!(st["lastCheckpoint"].is_null(), "{st}");
    assert!(st["latestEval"].is_null(), "{st}");

    // The operator is still the same process, and still manages trainings.
    assert!(
        op.child.try_wait().expect("try_wait").is_none(),
        "the operator exited:\n{}",
        op.log_text()
    );
    assert!(!op.log_text().contains("panicked"), "{}", op.log_text());
    running(&cluster, c, &op, "second").await;
    signal(&agents, "second-0-0", "USR1");
    signal(&agents, "second-0-1", "USR1");
    eventually(
        60,
        "second Succeeded",
        || async move { (status(c, NS, "second").await["phase"] == "Succeeded").then_some(()) },
        || describe(&cluster, &op, "second"),
    )
    .await;
    let metrics = op.http_get("/metrics").unwrap_or_default();
    for source in ["progress", "termination"] {
        let refused = metric_value(
            &metrics,
            &format!("ride_operator_reports_refused_total{{source=\"{source}\"}}"),
        );
        assert!(refused.is_some_and(|n| n >= 1.0), "{source}: {metrics}");
    }
    assert_eq!(
        metric_value(&metrics, "ride_operator_reconcile_panics_total"),
        Some(0.0)
    );
    assert!(op.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_created_again_under_its_old_name_inherits_nothing() {
    let (cluster, client, _agents) = setup(&["node-a"]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-u", &["--no-leader-election"]);
    let c = &client;
    let pods = running(&cluster, c, &op, "reborn").await;
    let ctx = || describe(&cluster, &op, "reborn");
    // One report source whose step the test moves: a pod created again
    // may get its predecessor's address back.
    let step = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(50));
    let report = |step: std::sync::Arc<std::sync::atomic::AtomicU64>| {
        move || {
            let step = step.load(std::sync::atomic::Ordering::SeqCst);
            format!(
                r#"{{"state":"Training","epoch":0,"epochs":1,"step":{step},"totalSteps":100,"lastStepUnix":{},
                "checkpoint":{{"uri":"file:///x/ckpt_{step}","epoch":0,"step":{step},"savedAt":"2026-11-29T03:00:00Z"}},
                "eval":{{"epoch":0,"top1":{step}.0}}}}"#,
                unix_now()
            )
        }
    };
    let first_ip = pod_ip(&pods[0]);
    common::serve_progress(&first_ip, report(step.clone()));
    eventually(
        30,
        "the first one's checkpoint in status",
        || async move {
            (status(c, NS, "reborn").await["lastCheckpoint"]["step"] == 50).then_some(())
        },
        ctx,
    )
    .await;
    let old_uid = pods[0].metadata.owner_references.as_ref().unwrap()[0]
        .uid
        .clone();

    // Deleted mid-run and at once created again under the same name.
    let (ok, out) = cluster.kubectl(&["delete", "rt", "reborn", "--wait=false"]);
    assert!(ok, "{out}");
    // From now on whatever answers at a rank 0's address says step 5.
    step.store(5, std::sync::atomic::Ordering::SeqCst);
    let manifest = example_with_checkpoint(&cluster.dir, "reborn");
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    // Its own pods run once the old ones are gone (same names).
    let new_pods = eventually(
        90,
        "the new training's own pods running",
        || {
            let old_uid = old_uid.clone();
            async move {
                let pods = pods_of(c, NS, "reborn").await;
                let own = pods.iter().all(|p| {
                    p.metadata.owner_references.as_ref().unwrap()[0].uid != old_uid
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                });
                (pods.len() == 2 && own).then_some(pods)
            }
        },
        ctx,
    )
    .await;
    // It reports a checkpoint of its own; until it does, and after, its
    // status shows nothing of the first one's (a checkpoint in status is
    // never replaced by an older one, so an inherited 50 would stay).
    if pod_ip(&new_pods[0]) != first_ip {
        common::serve_progress(&pod_ip(&new_pods[0]), report(step.clone()));
    }
    let seen = std::sync::Mutex::new(Vec::new());
    let seen = &seen;
    let st = eventually(
        60,
        "the new training's own checkpoint",
        || async move {
            let st = status(c, NS, "reborn").await;
            seen.lock()
                .unwrap()
                .push(st["lastCheckpoint"]["step"].clone());
            (st["lastCheckpoint"]["step"] == 5).then_some(st)
        },
        || {
            format!(
                "checkpoint steps seen: {:?}\n{}",
                seen.lock().unwrap(),
                ctx()
            )
        },
    )
    .await;
    assert!(
        !seen.lock().unwrap().iter().any(|s| s == 50),
        "the new training showed its predecessor's checkpoint: {:?}",
        seen.lock().unwrap()
    );
    assert_eq!(st["latestEval"]["overall"], 5.0, "{st}");
    assert_eq!(st["restarts"], 0, "{st}");

    // The operator's memory follows the live trainings.
    let (ok, out) = cluster.kubectl(&["delete", "rt", "reborn"]);
    assert!(ok, "{out}");
    eventually(
        30,
        "no per-training state left",
        || async {
            let m = op.http_get("/metrics").unwrap_or_default();
            (metric_value(&m, "ride_operator_tracked_trainings") == Some(0.0)).then_some(())
        },
        || op.http_get("/metrics").unwrap_or_default(),
    )
    .await;
}
