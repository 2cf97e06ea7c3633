//! What a tenant controls — a RideTraining and everything its trainer
//! image says — against the unmodified operator on a real control plane:
//! hostile reports neither end the operator nor reach status, a training
//! re-created under an old name inherits nothing of its predecessor's, and
//! the pods it gets are no broader than the Pod Security Standard the
//! administrator chose (the operator, `ride check` and the chart's
//! ValidatingAdmissionPolicy refuse the same fields).

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
    // Nor a restart of its own from the predecessor's same-named pods going
    // away (applied over, they would have become its workers).
    assert_eq!(st["exemptRestarts"], 0, "{st}");

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

/// Hostile additions to `examples/ride-cpu.yaml`, by name: what goes under
/// `workers:` (before `replicas`) or, for `spec:`-level ones, the whole
/// block; the field the operator names in refusing it; and how the chart's
/// admission policy names it (list items as `[*]`).
const HOSTILE: [(&str, &str, &str, &str); 10] = [
    ("privileged", "    template:\n      sidecars: [{name: s, image: busybox, securityContext: {privileged: true}}]\n", "spec.workers.template.sidecars[0].securityContext.privileged", "spec.workers.template.sidecars[*].securityContext.privileged"),
    ("root", "    template:\n      sidecars: [{name: s, image: busybox, securityContext: {runAsUser: 0}}]\n", "spec.workers.template.sidecars[0].securityContext.runAsUser", "spec.workers.template.sidecars[*].securityContext: runAsNonRoot false or runAsUser 0"),
    ("escalation", "    template:\n      sidecars: [{name: s, image: busybox, securityContext: {allowPrivilegeEscalation: true}}]\n", "spec.workers.template.sidecars[0].securityContext.allowPrivilegeEscalation", "spec.workers.template.sidecars[*].securityContext.allowPrivilegeEscalation"),
    ("net-admin", "    template:\n      sidecars: [{name: s, image: busybox, securityContext: {capabilities: {add: [NET_ADMIN], drop: [ALL]}}}]\n", "spec.workers.template.sidecars[0].securityContext.capabilities.add[0]", "spec.workers.template.sidecars[*].securityContext.capabilities"),
    ("unconfined", "    template:\n      sidecars: [{name: s, image: busybox, securityContext: {seccompProfile: {type: Unconfined}}}]\n", "spec.workers.template.sidecars[0].securityContext.seccompProfile.type", "spec.workers.template.sidecars[*].securityContext: seccompProfile"),
    ("host-port", "    template:\n      sidecars: [{name: s, image: busybox, ports: [{containerPort: 80, hostPort: 80}]}]\n", "spec.workers.template.sidecars[0].ports[0].hostPort", "spec.workers.template.sidecars[*].ports[*].hostPort"),
    ("nfs", "    template:\n      volumes: [{name: share, nfs: {server: nfs.example.com, path: /x}}]\n", "spec.workers.template.volumes[0].nfs", "spec.workers.template.volumes[*]: a volume type"),
    ("host-path", "    template:\n      volumes: [{name: h, hostPath: {path: /etc}}]\n", "spec.workers.template.volumes[0].hostPath.path", "spec.workers.template.volumes[*].hostPath.path"),
    ("priority", "SPEC  scheduling: {priorityClassName: system-node-critical}\n", "spec.scheduling.priorityClassName", "spec.scheduling.priorityClassName"),
    ("control-plane", "SPEC  scheduling: {tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]}\n", "spec.scheduling.tolerations[0]", "spec.scheduling.tolerations[*]"),
];

/// `examples/ride-cpu.yaml` as training `name` with `addition` (see HOSTILE).
fn with_addition(dir: &std::path::Path, name: &str, addition: &str) -> std::path::PathBuf {
    let base = example_with_checkpoint(dir, name);
    let text = std::fs::read_to_string(&base).unwrap();
    let text = match addition.strip_prefix("SPEC") {
        Some(spec) => text.replace("  workers:\n", &format!("{spec}  workers:\n")),
        None => text.replace("  workers:\n", &format!("  workers:\n{addition}")),
    };
    assert!(text.contains(addition.trim_start_matches("SPEC")), "{text}");
    std::fs::write(&base, text).unwrap();
    base
}

/// `ride check` on `file` with operator flags `flags`: whether it passed,
/// and what it said.
fn ride_check(file: &std::path::Path, flags: &[&str]) -> (bool, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ride"))
        .arg("check")
        .args(flags)
        .arg(file)
        .output()
        .expect("ride check runs");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_no_broader_than_the_restricted_standard_unless_the_admin_allows_more() {
    let (cluster, client, _agents) = setup(&["node-a"]).await;
    let c = &client;
    let op = Operator::start(&cluster.kubeconfig, "op-policy", &["--no-leader-election"]);

    // The operator refuses each, naming the field, and makes no pod;
    // `ride check` with the operator's flags says the same words.
    for (name, addition, field, _) in HOSTILE {
        let file = with_addition(&cluster.dir, name, addition);
        let (ok, said) = ride_check(&file, &[]);
        assert!(!ok && said.contains(field), "ride check on {name}: {said}");
        let (ok, out) = cluster.kubectl(&["apply", "-f", file.to_str().unwrap()]);
        assert!(ok, "kubectl apply {name}: {out}");
        let st = eventually(
            30,
            &format!("InvalidSpec for {name}"),
            || async move {
                let st = status(c, NS, name).await;
                (st["reason"] == "InvalidSpec").then_some(st)
            },
            || describe(&cluster, &op, name),
        )
        .await;
        let message = st["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{name}: {st}");
        // The operator's words, as `ride check` printed them.
        assert!(said.contains(message), "{name}: {said}\nvs {message}");
        assert!(pods_of(c, NS, name).await.is_empty(), "{name} got pods");
    }

    // What the admin allows, `ride check` allows with the same flags.
    let root = with_addition(&cluster.dir, "root-ok", HOSTILE[1].1);
    assert!(ride_check(&root, &["--pod-security=baseline"]).0);
    let prio = with_addition(&cluster.dir, "prio-ok", HOSTILE[8].1);
    assert!(ride_check(&prio, &["--allowed-priority-classes=system-node-critical"]).0);
    let host = with_addition(
        &cluster.dir,
        "host-ok",
        "    template:\n      volumes: [{name: h, hostPath: {path: /data/imagenet}}]\n      volumeMounts: [{name: h, mountPath: /h, readOnly: true}]\n",
    );
    assert!(ride_check(&host, &["--allow-host-path-datasets=/data"]).0);
    assert!(!ride_check(&host, &["--allow-host-path-datasets=/database"]).0);

    // An operator started with --pod-security=baseline creates the pods of
    // a training whose sidecar runs as root.
    drop(op);
    let _baseline = Operator::start(
        &cluster.kubeconfig,
        "op-baseline",
        &["--no-leader-election", "--pod-security=baseline"],
    );
    let (ok, out) = cluster.kubectl(&["apply", "-f", root.to_str().unwrap()]);
    assert!(ok, "{out}");
    let pods = eventually(
        60,
        "root-ok's pods",
        || async move {
            let pods = pods_of(c, NS, "root-ok").await;
            (pods.len() == 2).then_some(pods)
        },
        || cluster.kubectl(&["get", "rt,pods", "-A", "-o", "wide"]).1,
    )
    .await;
    let sidecar = &pods[0].spec.as_ref().unwrap().containers[1];
    assert_eq!(
        sidecar
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user),
        Some(0)
    );

    // The chart's ValidatingAdmissionPolicy: with default values, the API
    // server itself refuses every one of them at `kubectl apply`.
    let helm = cluster.bin.join("helm");
    let policy = std::process::Command::new(&helm)
        .args(["template", "ride"])
        .arg(common::repo().join("charts/ride-operator"))
        .args(["--show-only", "templates/admission-policy.yaml"])
        .output()
        .expect("helm template");
    assert!(
        policy.status.success(),
        "{}",
        String::from_utf8_lossy(&policy.stderr)
    );
    let policy_file = cluster.dir.join("admission-policy.yaml");
    std::fs::write(&policy_file, &policy.stdout).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", policy_file.to_str().unwrap()]);
    assert!(ok, "{out}");
    // The policy takes effect once the API server has loaded it: wait for
    // the first refusal, then every case is refused.
    let (first, addition, _, _) = HOSTILE[0];
    let probe = with_addition(&cluster.dir, &format!("{first}-vap"), addition);
    eventually(
        30,
        "the admission policy in force",
        || async {
            let file = probe.to_str().unwrap();
            let (ok, out) = cluster.kubectl(&["apply", "-f", file]);
            if ok {
                // In before the policy: out again, so the next try is a create.
                cluster.kubectl(&["delete", "--wait", "-f", file]);
            }
            (!ok && out.contains("ValidatingAdmissionPolicy")).then_some(())
        },
        || {
            cluster
                .kubectl(&["get", "validatingadmissionpolicies", "-o", "yaml"])
                .1
        },
    )
    .await;
    for (name, addition, _, field) in HOSTILE {
        let file = with_addition(&cluster.dir, &format!("{name}-vap"), addition);
        let (ok, out) = cluster.kubectl(&["apply", "-f", file.to_str().unwrap()]);
        assert!(!ok, "the API server accepted {name}: {out}");
        assert!(
            out.contains("ValidatingAdmissionPolicy") && out.contains(field),
            "{name}: {out} (wanted {field})"
        );
    }
    // A training within the standard still goes in.
    let fine = with_addition(
        &cluster.dir,
        "fine-vap",
        "    template:\n      sidecars: [{name: s, image: busybox}]\n      volumes: [{name: c, emptyDir: {}}]\n      volumeMounts: [{name: c, mountPath: /c}]\n",
    );
    assert!(ride_check(&fine, &[]).0);
    let (ok, out) = cluster.kubectl(&["apply", "-f", fine.to_str().unwrap()]);
    assert!(ok, "{out}");
}

/// Training `edited`'s status once its SpecRejected condition is `want`.
async fn spec_rejected(
    cluster: &common::cluster::Cluster,
    c: &kube::Client,
    op: &Operator,
    want: &str,
) -> serde_json::Value {
    eventually(
        30,
        &format!("SpecRejected {want}"),
        || async move {
            let st = status(c, NS, "edited").await;
            st["conditions"]
                .as_array()?
                .iter()
                .any(|k| k["type"] == "SpecRejected" && k["status"] == want)
                .then_some(st)
        },
        || describe(cluster, op, "edited"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_edit_keeps_the_gang_on_the_last_accepted_spec() {
    let (cluster, client, _agents) = setup(&["node-a"]).await;
    let c = &client;
    let op = Operator::start(&cluster.kubeconfig, "op-edit", &["--no-leader-election"]);
    let before = running(&cluster, c, &op, "edited").await;
    let names = |pods: &[Pod]| -> Vec<String> {
        let mut n: Vec<String> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        n.sort();
        n
    };

    // An edit the operator refuses (a privileged sidecar) while it runs.
    let bad = r#"{"spec":{"workers":{"template":{"sidecars":[{"name":"s","image":"busybox","securityContext":{"privileged":true}}]}}}}"#;
    let (ok, out) = cluster.kubectl(&["patch", "rt", "edited", "--type", "merge", "-p", bad]);
    assert!(ok, "{out}");
    let st = spec_rejected(&cluster, c, &op, "True").await;
    assert_eq!(st["phase"], "Running", "{st}");
    let rejected = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["type"] == "SpecRejected")
        .unwrap()
        .clone();
    assert!(
        rejected["message"]
            .as_str()
            .unwrap()
            .contains("spec.workers.template.sidecars[0].securityContext.privileged"),
        "{rejected}"
    );
    let note = wait_for_event(
        c,
        NS,
        "SpecRejected",
        |n| n.contains("last accepted spec"),
        30,
        || describe(&cluster, &op, "edited"),
    )
    .await;
    assert!(note.contains("privileged"), "{note}");
    assert_eq!(names(&pods_of(c, NS, "edited").await), names(&before));

    // Still supervised: a lost worker restarts the gang, on the accepted
    // spec (no sidecar).
    let (ok, out) = cluster.kubectl(&["delete", "pod", "edited-0-1", "--wait=false"]);
    assert!(ok, "{out}");
    let restarted = eventually(
        90,
        "the gang restarted on the accepted spec",
        || async move {
            let pods: Vec<Pod> = pods_of(c, NS, "edited")
                .await
                .into_iter()
                .filter(|p| {
                    p.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("edited-1-"))
                })
                .collect();
            (pods.len() == 2).then_some(pods)
        },
        || describe(&cluster, &op, "edited"),
    )
    .await;
    for p in &restarted {
        let containers: Vec<&str> = p
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .map(|k| k.name.as_str())
            .collect();
        assert_eq!(containers, ["trainer"], "the refused sidecar reached a pod");
    }

    // The edit undone: accepted again, the condition clears, not Failed.
    let fix = r#"{"spec":{"workers":{"template":null}}}"#;
    let (ok, out) = cluster.kubectl(&["patch", "rt", "edited", "--type", "merge", "-p", fix]);
    assert!(ok, "{out}");
    let st = spec_rejected(&cluster, c, &op, "False").await;
    assert_ne!(st["phase"], "Failed", "{st}");
    assert!(st["acceptedSpec"]["workers"]["template"].is_null(), "{st}");

    // An accepted spec written into status by someone else (status is not
    // a tenant's to write, but still) is checked again, not trusted: with a
    // privileged sidecar in it, a refused edit fails the training instead
    // of running that sidecar. (With the operator running it would write
    // the real accepted spec back first; stopped, the forgery and the edit
    // are what it finds when it starts.)
    drop(op);
    let mut forged = st["acceptedSpec"].clone();
    forged["workers"]["template"] = serde_json::json!({"sidecars": [
        {"name": "s", "image": "busybox", "securityContext": {"privileged": true}}
    ]});
    let patch = serde_json::json!({"status": {"acceptedSpec": forged}}).to_string();
    let (ok, out) = cluster.kubectl(&[
        "patch",
        "rt",
        "edited",
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        &patch,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cluster.kubectl(&["patch", "rt", "edited", "--type", "merge", "-p", bad]);
    assert!(ok, "{out}");
    let op = Operator::start(&cluster.kubeconfig, "op-edit-2", &["--no-leader-election"]);
    let st = eventually(
        30,
        "InvalidSpec despite the forged accepted spec",
        || async move {
            let st = status(c, NS, "edited").await;
            (st["reason"] == "InvalidSpec").then_some(st)
        },
        || describe(&cluster, &op, "edited"),
    )
    .await;
    assert_eq!(st["phase"], "Failed", "{st}");
    for p in pods_of(c, NS, "edited").await {
        assert_eq!(
            p.spec.unwrap().containers.len(),
            1,
            "a forged sidecar reached a pod"
        );
    }
}
