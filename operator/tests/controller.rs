//! The unmodified `ride-operator` binary against the API server double
//! (see `common/apiserver.rs` for what the double honours), with `kubectl`
//! pointed at the same double. The tests play the kubelet's part by writing
//! pod statuses; the end-to-end test (`e2e.rs`) runs real trainer processes.

mod common;

use common::{cluster, kubectl, repo, wait_for, Operator, PODS, RTS};
use serde_json::{json, Value};

const NS: &str = "default";

fn example_with_checkpoint(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("examples/ride-cpu.yaml"))
        .expect("examples/ride-cpu.yaml")
        .replace("name: ride-cpu", &format!("name: {name}"))
        .replace(
            "uri: file:///tmp/ride-cpu",
            &format!("uri: file://{}/ckpt", dir.display()),
        );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn pods_of(api: &common::apiserver::ApiServer, rt: &str) -> Vec<Value> {
    let mut pods: Vec<Value> = api
        .list(PODS, NS)
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["ride.dev/training"] == rt)
        .collect();
    pods.sort_by_key(|p| {
        p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    pods
}

fn names(pods: &[Value]) -> Vec<String> {
    pods.iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Play the kubelet: report a pod running, or terminated with `code`.
fn set_pod(api: &common::apiserver::ApiServer, name: &str, code: Option<i32>) {
    let status = match code {
        None => json!({"phase": "Running", "containerStatuses": [{"name": "trainer", "image": "x",
            "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        Some(c) => {
            json!({"phase": if c == 0 { "Succeeded" } else { "Failed" }, "containerStatuses": [{"name": "trainer",
            "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": c}}}]})
        }
    };
    api.patch(PODS, NS, name, json!({ "status": status }))
        .unwrap_or_else(|| panic!("pod {name} exists"));
}

/// What a timed-out wait shows: the training's pods, its status and the operator's log.
fn describe(api: &common::apiserver::ApiServer, op: &Operator, rt: &str) -> String {
    format!(
        "pods: {:?}\nstatus: {}\nlog:\n{}",
        names(&pods_of(api, rt)),
        status(api, rt),
        op.log_text()
    )
}

fn status(api: &common::apiserver::ApiServer, rt: &str) -> Value {
    api.get(RTS, NS, rt)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_worker_restarts_the_gang_and_status_follows_to_success() {
    let dir = tempfile::tempdir().unwrap();
    let (api, kubeconfig) = cluster(dir.path()).await;
    let op = Operator::start(&kubeconfig, "op-a", &[]);
    let manifest = example_with_checkpoint(dir.path(), "gang");
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "kubectl apply: {out}");
    assert!(out.contains("ridetraining.ride.dev/gang created"), "{out}");
    let ctx = || describe(&api, &op, "gang");

    // A headless Service and one pod per rank, owned by the RideTraining.
    let pods = wait_for(
        30,
        "two worker pods",
        || Some(pods_of(&api, "gang")).filter(|p| p.len() == 2),
        ctx,
    )
    .await;
    assert_eq!(names(&pods), ["gang-0-0", "gang-0-1"]);
    let svc = api
        .get("/v1/services", NS, "gang-workers")
        .expect("headless service");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    let uid = api.get(RTS, NS, "gang").unwrap()["metadata"]["uid"].clone();
    for p in &pods {
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], uid);
        assert_eq!(p["spec"]["subdomain"], "gang-workers");
    }
    let env = &pods[1]["spec"]["containers"][0]["env"];
    let var = |n: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .map(|e| e["value"].clone())
    };
    assert_eq!(var("RANK"), Some(json!("1")));
    assert_eq!(var("WORLD_SIZE"), Some(json!("2")));
    assert_eq!(var("MASTER_ADDR"), Some(json!("gang-0-0.gang-workers")));

    // All running → phase Running.
    set_pod(&api, "gang-0-0", None);
    set_pod(&api, "gang-0-1", None);
    wait_for(
        30,
        "phase Running",
        || (status(&api, "gang")["phase"] == "Running").then_some(()),
        ctx,
    )
    .await;

    // The trainer's checkpoint manifest shows up in status.
    let run_dir = dir.path().join("ckpt/tiny/default");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::write(
        run_dir.join("latest"),
        br#"{"dir":"ckpt_epoch_0","epoch":0,"step":7,"saved_at":"2026-11-29T03:00:00Z","eval":{"top1":41.5,"many":60.0,"medium":30.0,"few":10.0}}"#,
    )
    .unwrap();
    wait_for(
        30,
        "lastCheckpoint in status",
        || {
            status(&api, "gang")["lastCheckpoint"]["step"]
                .as_i64()
                .filter(|s| *s == 7)
        },
        ctx,
    )
    .await;
    assert_eq!(status(&api, "gang")["latestEval"]["overall"], 41.5);

    // Rank 1 fails; rank 0 is still running: the whole gang goes and comes back as attempt 1.
    set_pod(&api, "gang-0-1", Some(1));
    let pods = wait_for(
        30,
        "attempt 1 pods",
        || {
            let p = pods_of(&api, "gang");
            (names(&p) == ["gang-1-0", "gang-1-1"]).then_some(p)
        },
        ctx,
    )
    .await;
    let st = status(&api, "gang");
    assert_eq!(st["restarts"], 1, "{st}");
    assert_eq!(st["attempt"], 1);
    let env = &pods[0]["spec"]["containers"][0]["env"];
    assert!(env
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "RIDE_RESTART_ATTEMPT" && e["value"] == "1"));

    set_pod(&api, "gang-1-0", None);
    set_pod(&api, "gang-1-1", None);
    wait_for(
        30,
        "Running again",
        || (status(&api, "gang")["phase"] == "Running").then_some(()),
        ctx,
    )
    .await;
    std::fs::write(
        run_dir.join("latest"),
        br#"{"dir":"ckpt_epoch_1","epoch":1,"step":14,"saved_at":"2026-11-29T03:01:00Z","eval":{"top1":55.0,"many":70.0,"medium":50.0,"few":20.0}}"#,
    )
    .unwrap();
    // A rank that finishes first does not end the run; both finishing does.
    set_pod(&api, "gang-1-0", Some(0));
    set_pod(&api, "gang-1-1", Some(0));
    wait_for(
        30,
        "Succeeded",
        || (status(&api, "gang")["phase"] == "Succeeded").then_some(()),
        ctx,
    )
    .await;
    let st = status(&api, "gang");
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
    wait_for(
        30,
        "finished pods cleaned up",
        || pods_of(&api, "gang").is_empty().then_some(()),
        ctx,
    )
    .await;

    // Events for each transition.
    let reasons: Vec<String> = api
        .list("events.k8s.io/v1/events", NS)
        .iter()
        .filter(|e| e["regarding"]["name"] == "gang")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    for r in ["Created", "Running", "WorkerFailed", "Succeeded"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }
    // No secret material in events or status (the example names none; the
    // pod spec only ever holds secretKeyRef, checked in pods.rs tests).

    // kubectl get rt shows the printer columns.
    let (ok, out) = kubectl(&kubeconfig, &["get", "rt"]);
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
    let metrics = wait_for(
        30,
        "phase gauge",
        || {
            op.http_get("/metrics")
                .filter(|m| m.contains("ride_operator_trainings{phase=\"Succeeded\"} 1"))
        },
        ctx,
    )
    .await;
    assert!(
        metrics.contains("ride_operator_restarts_total{kind=\"budget\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ride_operator_time_to_running_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ride_operator_time_to_restart_seconds_count 1"),
        "{metrics}"
    );
    assert!(metrics.contains("ride_operator_leader 1"), "{metrics}");
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
async fn kubectl_apply_rejects_a_bad_spec_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (api, kubeconfig) = cluster(dir.path()).await;
    let manifest = example_with_checkpoint(dir.path(), "bad");
    let good = std::fs::read_to_string(&manifest).unwrap();
    for (from, to, field) in [
        ("replicas: 2", "replicas: 0", "spec.workers.replicas"),
        ("budget: 2", "budget: -1", "spec.restartPolicy.budget"),
        ("uri: file://", "uri: ftp://", "spec.checkpoint.uri"),
        // The cross-field CEL rule on the workers object.
        (
            "replicas: 2",
            "replicas: 2\n    minReplicas: 3",
            "spec.workers.minReplicas: Invalid value: \"object\": must not exceed workers.replicas",
        ),
        (
            "uri: file://",
            "url: file://",
            "spec.checkpoint.uri: Required value",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        std::fs::write(&manifest, good.replacen(from, to, 1)).unwrap();
        let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]);
        assert!(!ok, "{to}: {out}");
        assert!(out.contains(field), "{to}: {out}");
        assert!(api.get(RTS, NS, "bad").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_deletes_the_workers_and_resume_recreates_them() {
    let dir = tempfile::tempdir().unwrap();
    let (api, kubeconfig) = cluster(dir.path()).await;
    let op = Operator::start(&kubeconfig, "op-s", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(dir.path(), "sus");
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ctx = || describe(&api, &op, "sus");
    wait_for(
        30,
        "pods",
        || (pods_of(&api, "sus").len() == 2).then_some(()),
        ctx,
    )
    .await;
    let (ok, out) = kubectl(
        &kubeconfig,
        &[
            "patch",
            "rt",
            "sus",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"runPolicy":{"suspend":true}}}"#,
        ],
    );
    assert!(ok, "{out}");
    wait_for(
        30,
        "Suspended without pods",
        || {
            (status(&api, "sus")["phase"] == "Suspended" && pods_of(&api, "sus").is_empty())
                .then_some(())
        },
        ctx,
    )
    .await;
    let (ok, out) = kubectl(
        &kubeconfig,
        &[
            "patch",
            "rt",
            "sus",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"runPolicy":{"suspend":false}}}"#,
        ],
    );
    assert!(ok, "{out}");
    let pods = wait_for(
        30,
        "attempt 1 pods after resume",
        || {
            let p = pods_of(&api, "sus");
            (names(&p) == ["sus-1-0", "sus-1-1"]).then_some(p)
        },
        ctx,
    )
    .await;
    assert_eq!(pods.len(), 2);
    let st = status(&api, "sus");
    assert_eq!(st["restarts"], 0, "resuming does not use the budget: {st}");

    // Deleting the training takes its pods and Service with it (owner references).
    let (ok, out) = kubectl(&kubeconfig, &["delete", "rt", "sus"]);
    assert!(ok, "{out}");
    assert!(pods_of(&api, "sus").is_empty());
    assert!(api.get("/v1/services", NS, "sus-workers").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_reconciles_and_a_successor_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let (api, kubeconfig) = cluster(dir.path()).await;
    let mut first = Operator::start(&kubeconfig, "op-1", &[]);
    let ctx = || {
        format!(
            "lease: {:?}",
            api.get("coordination.k8s.io/v1/leases", NS, "ride-operator")
        )
    };
    wait_for(
        30,
        "op-1 leads",
        || {
            api.get("coordination.k8s.io/v1/leases", NS, "ride-operator")
                .filter(|l| l["spec"]["holderIdentity"] == "op-1")
        },
        ctx,
    )
    .await;
    let second = Operator::start(&kubeconfig, "op-2", &[]);
    let ctx2 = || format!("op-1:\n{}\nop-2:\n{}", first.log_text(), second.log_text());
    wait_for(
        30,
        "op-2 serving metrics",
        || {
            second
                .http_get("/metrics")
                .filter(|m| m.contains("ride_operator_leader 0"))
        },
        ctx2,
    )
    .await;
    // op-2 waits while op-1 leads; SIGTERM makes op-1 release the Lease.
    let code = first.terminate();
    assert!(code.success(), "op-1 exited with {code}");
    wait_for(
        30,
        "op-2 leads",
        || {
            api.get("coordination.k8s.io/v1/leases", NS, "ride-operator")
                .filter(|l| l["spec"]["holderIdentity"] == "op-2")
        },
        ctx,
    )
    .await;
    let manifest = example_with_checkpoint(dir.path(), "succ");
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    wait_for(
        30,
        "op-2 reconciles",
        || (pods_of(&api, "succ").len() == 2).then_some(()),
        || second.log_text(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_worker_shrinks_the_gang_and_it_grows_back_later() {
    let dir = tempfile::tempdir().unwrap();
    let (api, kubeconfig) = cluster(dir.path()).await;
    let op = Operator::start(&kubeconfig, "op-e", &["--no-leader-election"]);
    let manifest = example_with_checkpoint(dir.path(), "ela");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "replicas: 2",
        "replicas: 2\n    minReplicas: 1\n    elasticTimeoutSeconds: 10",
    );
    std::fs::write(&manifest, text).unwrap();
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ctx = || describe(&api, &op, "ela");
    wait_for(
        30,
        "pods",
        || (pods_of(&api, "ela").len() == 2).then_some(()),
        ctx,
    )
    .await;
    set_pod(&api, "ela-0-0", None);
    // The scheduler has not been able to place rank 1 for longer than the timeout.
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(15);
    api.patch(PODS, NS, "ela-0-1", json!({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
        "status": "False", "reason": "Unschedulable", "lastTransitionTime": since.round(jiff::Unit::Second).unwrap().to_string()}]}}))
        .unwrap();
    let pods = wait_for(
        30,
        "a gang of one",
        || {
            let p = pods_of(&api, "ela");
            (names(&p) == ["ela-1-0"]).then_some(p)
        },
        ctx,
    )
    .await;
    let env = &pods[0]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "WORLD_SIZE" && e["value"] == "1"),
        "{env}"
    );
    let st = status(&api, "ela");
    assert_eq!(
        (
            st["worldSize"].clone(),
            st["restarts"].clone(),
            st["exemptRestarts"].clone()
        ),
        (json!(1), json!(0), json!(1)),
        "{st}"
    );
    // Running at reduced size for the timeout, it tries the full size again.
    set_pod(&api, "ela-1-0", None);
    wait_for(
        60,
        "full size again",
        || {
            let p = pods_of(&api, "ela");
            (names(&p) == ["ela-2-0", "ela-2-1"]).then_some(())
        },
        ctx,
    )
    .await;
    let st = status(&api, "ela");
    assert_eq!(
        (st["worldSize"].clone(), st["restarts"].clone()),
        (json!(2), json!(0)),
        "{st}"
    );
}
