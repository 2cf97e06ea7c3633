//! The user's path on a real control plane (`scripts/k8s-cluster.sh`):
//!
//! - `helm install` of `charts/ride-operator` with the real helm binary
//!   (CRD, ServiceAccount, RBAC; no operator pods, `replicas=0`), then the
//!   operator run outside the cluster **as the chart's ServiceAccount**
//!   (a TokenRequest token from `kubectl create token`), so RBAC decides
//!   what it may do;
//! - `kubectl apply -f examples/ride-cpu.yaml`; node agents run each pod as a
//!   local `ride-trainer` process (CPU, TCP collectives); one rank is
//!   SIGKILLed after the first checkpoint; the gang restarts from it and the
//!   training succeeds, with the restart and final accuracy in status;
//! - `kubectl get rt` columns and `kubectl explain`;
//! - one rank frozen with SIGSTOP: the other's stall watchdog exits 76,
//!   the operator names the frozen worker in a `Stalled` condition, counts
//!   the restart and the work it lost by cause, and the training succeeds;
//! - a suspension mid-epoch: the workers save a mid-epoch checkpoint on
//!   SIGTERM within their grace period, and the resumed gang starts from it;
//! - a verb taken out of the chart's ClusterRole makes the operator fail
//!   visibly; `helm upgrade` puts it back; `helm uninstall` removes the
//!   release.

mod common;

use common::cluster::Cluster;
use common::node_agent::NodeAgent;
use common::{
    checkpoint_dirs, eventually, find_latest, mid_epoch_checkpoint, names, pod_log, pods_of, repo,
    status, wait_succeeded, Operator,
};
use std::path::PathBuf;

const NS: &str = "default";
const RELEASE_NS: &str = "ride-system";

fn chart() -> String {
    repo()
        .join("charts/ride-operator")
        .to_string_lossy()
        .into_owned()
}

/// `helm install ride` into ride-system, without operator pods (the tests
/// run the operator outside the cluster).
fn helm_install(cluster: &Cluster) {
    let (ok, out) = cluster.helm(&[
        "install",
        "ride",
        &chart(),
        "-n",
        RELEASE_NS,
        "--create-namespace",
        "--set",
        "replicas=0",
        "--wait",
        "--timeout",
        "120s",
    ]);
    assert!(ok, "helm install: {out}");
    // The chart installed the CRD.
    cluster.wait_established("ridetrainings.ride.dev");
}

/// A kubeconfig that authenticates as the chart's ServiceAccount with a
/// bound token from the TokenRequest API.
fn service_account_kubeconfig(cluster: &Cluster) -> PathBuf {
    let (ok, token) = cluster.kubectl(&[
        "create",
        "token",
        "ride",
        "-n",
        RELEASE_NS,
        "--duration",
        "2h",
    ]);
    assert!(ok, "kubectl create token: {token}");
    let path = cluster.dir.join("operator-sa.kubeconfig");
    let ca = cluster.dir.join("pki/ca.crt");
    let kc = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let (ok, out) = cluster.kubectl(&all);
        assert!(ok, "{args:?}: {out}");
    };
    kc(&[
        "config",
        "set-cluster",
        "ride",
        "--server",
        &cluster.api,
        "--certificate-authority",
        ca.to_str().unwrap(),
        "--embed-certs",
    ]);
    kc(&[
        "config",
        "set-credentials",
        "operator",
        "--token",
        token.trim(),
    ]);
    kc(&[
        "config",
        "set-context",
        "ride",
        "--cluster",
        "ride",
        "--user",
        "operator",
    ]);
    kc(&["config", "use-context", "ride"]);
    let (ok, who) = cluster.kubectl_as(
        &path,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert!(ok, "{who}");
    assert_eq!(who.trim(), "system:serviceaccount:ride-system:ride");
    // The operator's identity cannot read any Secret.
    let (_, can) = cluster.kubectl_as(&path, &["auth", "can-i", "get", "secrets", "-A"]);
    assert_eq!(can.trim(), "no", "the chart grants Secrets: {can}");
    path
}

fn operator_as_service_account(cluster: &Cluster, identity: &str) -> Operator {
    let kubeconfig = service_account_kubeconfig(cluster);
    Operator::start(&kubeconfig, identity, &["--lease-namespace", RELEASE_NS])
}

/// `examples/ride-cpu.yaml` named `name` and trained for 2 epochs on a
/// fresh cluster: the chart installed, the operator running as its
/// ServiceAccount (as `identity`), two node agents, checkpoints in the
/// cluster's `ckpt` directory, and `restart_policy` lines added to its
/// restartPolicy. (Fields drop in order: the cluster last.)
struct CpuExample {
    agents: Vec<NodeAgent>,
    client: kube::Client,
    op: Operator,
    ckpt: PathBuf,
    name: String,
    cluster: Cluster,
}

impl CpuExample {
    async fn apply(identity: &str, name: &str, restart_policy: &[&str]) -> Self {
        Self::apply_checkpointing_every(identity, name, restart_policy, None).await
    }

    /// [`CpuExample::apply`] with `checkpoint.every` set.
    async fn apply_checkpointing_every(
        identity: &str,
        name: &str,
        restart_policy: &[&str],
        every: Option<&str>,
    ) -> Self {
        let cluster = Cluster::start();
        helm_install(&cluster);
        let op = operator_as_service_account(&cluster, identity);
        let client = cluster.client().await;
        let agents = cluster.nodes(&["node-a", "node-b"]).await;
        let ckpt = cluster.dir.join("ckpt");
        let manifest = cluster.dir.join(format!("{name}.yaml"));
        let extra: String = restart_policy
            .iter()
            .map(|l| format!("\n    {l}"))
            .collect();
        let text = std::fs::read_to_string(repo().join("examples/ride-cpu.yaml"))
            .unwrap()
            .replace(
                "uri: file:///tmp/ride-cpu",
                &match every {
                    Some(every) => format!("uri: file://{}\n    every: {every}", ckpt.display()),
                    None => format!("uri: file://{}", ckpt.display()),
                },
            )
            .replace("name: ride-cpu", &format!("name: {name}"))
            // A clock checkpoint needs an epoch longer than its interval:
            // about 80 steps per epoch instead of 8.
            .replace(
                "DATA.SYNTHETIC.MAX_PER_CLASS: \"100\"",
                if every.is_some() {
                    "DATA.SYNTHETIC.MAX_PER_CLASS: \"1000\""
                } else {
                    "DATA.SYNTHETIC.MAX_PER_CLASS: \"100\""
                },
            )
            .replace("TRAIN.EPOCHS: \"1\"", "TRAIN.EPOCHS: \"2\"")
            .replace(
                "preemptionExempt: true",
                &format!("preemptionExempt: true{extra}"),
            );
        std::fs::write(&manifest, text).unwrap();
        let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
        assert!(ok, "kubectl apply: {out}");
        Self {
            agents,
            client,
            op,
            ckpt,
            name: name.into(),
            cluster,
        }
    }

    /// What a failure message shows: the resource, the pods, and the
    /// operator's and the agents' logs.
    fn context(&self) -> String {
        let (_, rt) = self
            .cluster
            .kubectl(&["get", "rt", &self.name, "-o", "yaml"]);
        let (_, pods) = self.cluster.kubectl(&["get", "pods", "-o", "wide"]);
        let mut s = format!("{rt}\n{pods}\noperator:\n{}\n", self.op.log_text());
        for a in &self.agents {
            s += &a.logs();
        }
        s
    }

    /// Wait for the first checkpoint, then send `sig` to rank 1 of attempt 0.
    async fn signal_rank_1_after_first_checkpoint(&self, sig: &str) {
        self.first_checkpoint().await;
        let pod = format!("{}-0-1", self.name);
        assert!(
            self.agents.iter().any(|a| a.signal_pod(NS, &pod, sig)),
            "rank 1 of attempt 0 runs\n{}",
            self.context()
        );
    }

    /// Wait until the training's first checkpoint is durable.
    async fn first_checkpoint(&self) {
        eventually(
            600,
            "the first checkpoint",
            || async { find_latest(&self.ckpt) },
            || self.context(),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_then_the_cpu_example_survives_a_killed_worker_and_succeeds() {
    // Checkpoints on a clock as well as at epoch ends: a worker killed
    // between epochs costs at most about one interval of work.
    const EVERY_SECONDS: f64 = 1.0;
    let ex = CpuExample::apply_checkpointing_every("op-e2e", "ride-cpu", &[], Some("1s")).await;
    let (cluster, agents, c) = (&ex.cluster, &ex.agents, &ex.client);
    let ctx = || ex.context();
    // Rank 0's clock saves so far, from its log: (epoch, iteration) of each
    // `ckpt_epoch_E_iter_I`. Consecutive ones within an epoch are one
    // interval apart, so their gaps are an interval's steps on this machine.
    let rank0_log = || -> String {
        agents
            .iter()
            .map(|a| std::fs::read_to_string(a.log_path(NS, "ride-cpu-0-0")).unwrap_or_default())
            .collect()
    };
    let clock_saves = |log: &str| -> Vec<(i64, i64)> {
        log.lines()
            .filter(|l| l.contains("checkpoint saved: "))
            .filter_map(|l| {
                let dir = l.split("/ckpt_epoch_").nth(1)?;
                let (epoch, rest) = dir.split_once("_iter_")?;
                let iter: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                Some((epoch.parse().ok()?, iter.parse().ok()?))
            })
            .collect()
    };
    // Kill once there are two clock saves in one epoch (an interval's steps
    // known) and rank 0 has reported steps after its newest checkpoint, so
    // the kill lands between epoch checkpoints.
    eventually(
        600,
        "two clock checkpoints in an epoch, and steps after the newest",
        || async {
            let saves = clock_saves(&rank0_log());
            let two_in_an_epoch = saves.windows(2).any(|w| w[0].0 == w[1].0);
            let st = status(c, NS, "ride-cpu").await;
            let ck = &st["lastCheckpoint"];
            let mid_epoch = ck["uri"].as_str().is_some_and(|u| u.contains("_iter_"));
            let after = st["progress"]["step"].as_i64().unwrap_or(0)
                > ck["step"].as_i64().unwrap_or(i64::MAX);
            (two_in_an_epoch && mid_epoch && after).then_some(())
        },
        ctx,
    )
    .await;
    let pod = "ride-cpu-0-1";
    assert!(
        agents.iter().any(|a| a.signal_pod(NS, pod, "KILL")),
        "{}",
        ctx()
    );
    let st = eventually(
        120,
        "a gang restart",
        || async move {
            let st = status(c, NS, "ride-cpu").await;
            (st["restarts"] == 1 && st["attempt"] == 1).then_some(st)
        },
        ctx,
    )
    .await;
    // Work lost: the steps after the newest checkpoint. The trainer saves at
    // the first step after the interval, so they are at most one interval's
    // steps (the largest gap between clock saves before the kill) plus the
    // step that crossed it; half a gap more allows for the step rate of the
    // next interval differing from the ones measured.
    let saves = clock_saves(&rank0_log());
    let interval_steps = saves
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or(0);
    let lost = &st["lostWork"];
    let lost_steps = lost["steps"].as_i64().unwrap_or(i64::MAX);
    assert!(
        lost_steps <= interval_steps + interval_steps / 2 + 1,
        "lost {lost_steps} steps, more than one {EVERY_SECONDS} s interval ({interval_steps} steps between clock saves {saves:?}): {st}"
    );
    println!(
        "killed between epochs: lost {lost_steps} steps / {:.2} s of training (one {EVERY_SECONDS} s interval: up to {interval_steps} steps here)",
        lost["seconds"].as_f64().unwrap_or(f64::NAN)
    );
    let st = wait_succeeded(c, NS, "ride-cpu", 900, ctx).await;
    assert_eq!(st["restarts"], 1, "{st}");
    assert!(
        st["latestEval"]["overall"].as_f64().is_some(),
        "final accuracy in status: {st}"
    );
    assert_eq!(st["lastCheckpoint"]["epoch"], 1, "{st}");
    // The new attempt resumed rather than starting over.
    let resumed: String = agents
        .iter()
        .map(|a| std::fs::read_to_string(a.log_path(NS, "ride-cpu-1-0")).unwrap_or_default())
        .collect();
    assert!(resumed.contains("resumed from"), "{resumed}");
    // And rank 0 ended with the evaluation table, as under run-local and Slurm.
    assert!(resumed.contains("| top-1 overall"), "{resumed}");

    // What users look at.
    let (ok, out) = cluster.kubectl(&["get", "rt"]);
    assert!(ok, "{out}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "WORKERS", "EPOCH", "TOP-1", "PROGRESS", "ETA", "RESTARTS", "AGE"],
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("ride-cpu "))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[1..4], ["Succeeded", "2", "1"], "{out}");
    // The real trainer's final report: all steps done.
    assert_eq!(row[5], "100%", "{out}");
    assert!(row[6].parse::<jiff::Timestamp>().is_ok(), "ETA: {out}");
    assert_eq!(row[7], "1", "restarts: {out}");
    println!("{out}");
    let (ok, out) = cluster.kubectl(&["explain", "rt.spec.workers"]);
    assert!(ok, "{out}");
    for text in [
        "KIND:       RideTraining",
        "replicas\t<integer> -required-",
        "Ranks (one pod each).",
        "minReplicas\t<integer>",
        "elasticTimeoutSeconds",
    ] {
        assert!(out.contains(text), "{text:?} in kubectl explain:\n{out}");
    }
    // The finished workers stay, Succeeded, for `kubectl logs`.
    let finished = pods_of(c, NS, "ride-cpu").await;
    assert!(
        !finished.is_empty()
            && finished
                .iter()
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")),
        "finished pods: {:?}",
        names(&finished)
    );

    // The router stage of the same run: an override, the same checkpoint URI.
    let router = cluster.dir.join("ride-cpu-router.yaml");
    let text = std::fs::read_to_string(repo().join("examples/ride-cpu-router.yaml"))
        .unwrap()
        .replace(
            "uri: file:///tmp/ride-cpu",
            &format!("uri: file://{}", ex.ckpt.display()),
        );
    std::fs::write(&router, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", router.to_str().unwrap()]);
    assert!(ok, "kubectl apply: {out}");
    let st = wait_succeeded(c, NS, "ride-cpu-router", 600, ctx).await;
    assert!(st["latestEval"]["overall"].as_f64().is_some(), "{st}");
    let rank0: String = agents
        .iter()
        .map(|a| std::fs::read_to_string(a.log_path(NS, "ride-cpu-router-0-0")).unwrap_or_default())
        .collect();
    assert!(
        rank0.contains("router stage: experts from") && rank0.contains("experts per image"),
        "{rank0}"
    );
    assert!(
        checkpoint_dirs(&ex.ckpt)
            .iter()
            .any(|p| p.ends_with("router/ckpt_epoch_1")),
        "router checkpoints under the same URI: {:?}",
        checkpoint_dirs(&ex.ckpt)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_is_a_stall_that_names_it_restarts_on_its_own_budget_and_succeeds() {
    let ex = CpuExample::apply(
        "op-stall",
        "ride-stall",
        &["stallTimeoutSeconds: 5", "stallBudget: 1"],
    )
    .await;
    let (cluster, c) = (&ex.cluster, &ex.client);
    let ctx = || ex.context();
    // Freeze rank 1 during the second epoch's steps.
    ex.signal_rank_1_after_first_checkpoint("STOP").await;
    let frozen = std::time::Instant::now();
    let st = eventually(
        180,
        "a stall restart",
        || async move {
            let st = status(c, NS, "ride-stall").await;
            (st["restartsByCause"]["stall"] == 1).then_some(st)
        },
        ctx,
    )
    .await;
    let detected = frozen.elapsed().as_secs_f64();
    let stalled = st["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Stalled"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(stalled["status"], "True", "{st}");
    let message = stalled["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("worker 1 stopped first: it was still running but silent"),
        "{st}"
    );
    assert_eq!(st["restarts"], 0, "the failure budget is untouched: {st}");
    assert!(
        st["lostWork"]["gpuSeconds"].as_f64().unwrap_or(0.0) > 0.0,
        "{st}"
    );
    eventually(
        300,
        "the new gang running",
        || async move {
            let st = status(c, NS, "ride-stall").await;
            (st["attempt"] == 1 && st["runningSince"].is_string()).then_some(())
        },
        ctx,
    )
    .await;
    println!(
        "rank 1 frozen -> Stalled in status: {detected:.1} s; -> new gang running: {:.1} s (stallTimeoutSeconds 5)",
        frozen.elapsed().as_secs_f64()
    );
    let st = wait_succeeded(c, NS, "ride-stall", 900, ctx).await;
    assert_eq!(st["restartsByCause"]["stall"], 1, "{st}");
    let cleared = st["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Stalled"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(cleared["status"], "False", "{st}");
    println!("Stalled: {message}\nlostWork: {}", st["lostWork"]);
    let events = cluster
        .kubectl(&["get", "events", "--field-selector", "reason=Stalled"])
        .1;
    assert!(events.contains("stopped first"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_mid_epoch_saves_a_checkpoint_and_the_resumed_gang_starts_from_it() {
    let ex = CpuExample::apply("op-suspend", "ride-suspend", &[]).await;
    let (cluster, agents, c) = (&ex.cluster, &ex.agents, &ex.client);
    let ctx = || ex.context();
    ex.first_checkpoint().await;
    let suspend = |on: bool| {
        let patch = format!(r#"{{"spec":{{"runPolicy":{{"suspend":{on}}}}}}}"#);
        let (ok, out) = cluster.kubectl(&[
            "patch",
            "rt",
            "ride-suspend",
            "--type",
            "merge",
            "-p",
            &patch,
        ]);
        assert!(ok, "kubectl patch: {out}");
    };
    suspend(true);
    let asked = std::time::Instant::now();
    eventually(
        180,
        "Suspended with every worker gone",
        || async move {
            let st = status(c, NS, "ride-suspend").await;
            // Terminating pods included: their trainers save as they stop.
            let gone = pods_of(c, NS, "ride-suspend").await.is_empty();
            (st["phase"] == "Suspended" && gone).then_some(())
        },
        ctx,
    )
    .await;
    let stopped = asked.elapsed().as_secs_f64();
    // The workers saved where they stopped, mid-epoch.
    let mid_epoch = mid_epoch_checkpoint(&ex.ckpt).unwrap_or_else(|| {
        panic!(
            "no mid-epoch checkpoint under {}\n{}",
            ex.ckpt.display(),
            ctx()
        )
    });
    let st = status(c, NS, "ride-suspend").await;
    assert_eq!(st["restartsByCause"]["user"], 1, "{st}");
    assert!(
        st["lostWork"].is_null(),
        "a planned stop loses nothing: {st}"
    );
    suspend(false);
    let st = wait_succeeded(c, NS, "ride-suspend", 900, ctx).await;
    assert_eq!(st["restarts"], 0, "{st}");
    let resumed = pod_log(agents, "ride-suspend-1-0");
    assert!(
        resumed.contains("resumed from") && resumed.contains(&mid_epoch),
        "the new gang resumes from {mid_epoch}:\n{resumed}"
    );
    println!("suspend -> workers checkpointed at {mid_epoch} and gone: {stopped:.1} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verb_missing_from_the_chart_rbac_fails_visibly_and_helm_upgrade_and_uninstall_work() {
    let cluster = Cluster::start();
    helm_install(&cluster);
    let client = cluster.client().await;
    let c = &client;

    // Tenants get RideTrainings through the built-in roles the chart's
    // ClusterRoles aggregate into (kube-controller-manager aggregates them).
    for (sa, role) in [("alice", "edit"), ("bob", "view")] {
        let (ok, out) = cluster.kubectl(&["create", "serviceaccount", sa, "-n", NS]);
        assert!(ok, "{out}");
        let (ok, out) = cluster.kubectl(&[
            "create",
            "rolebinding",
            &format!("{sa}-{role}"),
            &format!("--clusterrole={role}"),
            &format!("--serviceaccount={NS}:{sa}"),
            "-n",
            NS,
        ]);
        assert!(ok, "{out}");
    }
    let can = |sa: &str, verb: &str| {
        cluster
            .kubectl(&[
                "auth",
                "can-i",
                verb,
                "ridetrainings.ride.dev",
                "-n",
                NS,
                &format!("--as=system:serviceaccount:{NS}:{sa}"),
            ])
            .1
            .trim()
            == "yes"
    };
    let can = &can;
    eventually(
        30,
        "RideTraining rights aggregated into edit and view",
        || async move { (can("alice", "create") && can("bob", "list")).then_some(()) },
        || {
            cluster
                .kubectl(&["get", "clusterrole", "edit", "view", "-o", "yaml"])
                .1
        },
    )
    .await;
    assert!(!can("bob", "create"), "view may not create trainings");

    // Take "create" on pods out of the chart's ClusterRole.
    let (ok, role) = cluster.kubectl(&["get", "clusterrole", "ride-system-ride", "-o", "json"]);
    assert!(ok, "{role}");
    let mut role: serde_json::Value = serde_json::from_str(&role).unwrap();
    let mut removed = false;
    for rule in role["rules"].as_array_mut().unwrap() {
        let pods = rule["resources"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "pods"));
        if pods {
            let verbs = rule["verbs"].as_array_mut().unwrap();
            let before = verbs.len();
            verbs.retain(|v| v != "create");
            removed |= verbs.len() < before;
        }
    }
    assert!(removed, "the chart grants create on pods: {role}");
    let f = cluster.dir.join("role.json");
    std::fs::write(&f, role.to_string()).unwrap();
    let (ok, out) = cluster.kubectl(&["replace", "-f", f.to_str().unwrap()]);
    assert!(ok, "{out}");

    let op = operator_as_service_account(&cluster, "op-rbac");
    let manifest = cluster.dir.join("rbac.yaml");
    let text = std::fs::read_to_string(repo().join("examples/ride-cpu.yaml"))
        .unwrap()
        .replace("name: ride-cpu", "name: rbac");
    std::fs::write(&manifest, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    eventually(
        60,
        "the forbidden creation, named, in the operator's log",
        || async {
            let log = op.log_text();
            log.contains(
                "User \"system:serviceaccount:ride-system:ride\" cannot create resource \"pods\"",
            )
            .then_some(())
        },
        || {
            let (_, pods) = cluster.kubectl(&["get", "pods,svc,rt", "-o", "wide"]);
            let (_, role) =
                cluster.kubectl(&["get", "clusterrole", "ride-system-ride", "-o", "yaml"]);
            format!("{pods}\n{role}\n{}", op.log_text())
        },
    )
    .await;
    assert!(pods_of(c, NS, "rbac").await.is_empty());
    // ...and in the training's status and Events, where users look.
    let message = status(c, NS, "rbac").await["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("cannot create worker pod rbac-0-0") && message.contains("forbidden"),
        "{message}"
    );
    let (_, events) = cluster.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=FailedCreatePod",
    ]);
    assert!(events.contains("rbac"), "{events}");

    // helm upgrade restores the chart's ClusterRole; the operator recovers.
    // Helm 4 upgrades by server-side apply: the hand edit owns `.rules` now,
    // so a plain upgrade stops at the conflict and --force-conflicts wins it.
    let upgrade = |force: bool| {
        let mut args = vec![
            "upgrade",
            "ride",
            "--set",
            "replicas=0",
            "--set",
            "progressIntervalSeconds=10",
            "-n",
            RELEASE_NS,
        ];
        if force {
            args.push("--force-conflicts");
        }
        let chart = chart();
        let mut all: Vec<&str> = args[..2].to_vec();
        all.push(&chart);
        all.extend_from_slice(&args[2..]);
        cluster.helm(&all)
    };
    let (ok, out) = upgrade(false);
    assert!(
        !ok && out.contains("conflict with \"kubectl-replace\""),
        "helm upgrade over a hand-edited ClusterRole: {out}"
    );
    let (ok, out) = upgrade(true);
    assert!(ok, "helm upgrade --force-conflicts: {out}");
    eventually(
        90,
        "pods once RBAC allows them",
        || async move { (pods_of(c, NS, "rbac").await.len() == 2).then_some(()) },
        || op.log_text(),
    )
    .await;
    let (ok, out) = cluster.helm(&["history", "ride", "-n", RELEASE_NS]);
    assert!(ok && out.contains("Upgrade complete"), "{out}");

    // helm uninstall removes the release's objects; the CRD stays (Helm never
    // deletes what it installed from crds/, so trainings survive an uninstall).
    let (ok, out) = cluster.helm(&["uninstall", "ride", "-n", RELEASE_NS, "--wait"]);
    assert!(ok, "helm uninstall: {out}");
    let (ok, out) = cluster.kubectl(&["get", "clusterrole", "ride-system-ride"]);
    assert!(!ok && out.contains("NotFound"), "{out}");
    let (ok, out) = cluster.kubectl(&["get", "serviceaccount", "ride", "-n", RELEASE_NS]);
    assert!(!ok && out.contains("NotFound"), "{out}");
    let (ok, out) = cluster.kubectl(&["get", "crd", "ridetrainings.ride.dev"]);
    assert!(ok, "{out}");
}

/// The commands of the README's cluster path, in order, as written
/// (continuation lines joined, comments dropped).
fn readme_cluster_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("**On a Kubernetes cluster**")
        .expect("the README's cluster path");
    let block = readme[start..]
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("its command block");
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        let line = line.split(" #").next().unwrap_or("").trim_end();
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending).trim().to_string());
            }
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_cluster_path_runs_as_written_up_to_a_training_that_ran() {
    let commands = readme_cluster_commands();
    let cluster = Cluster::start();
    let client = cluster.client().await;
    // The example checkpoints to file:///tmp/ride-cpu as written; nothing
    // else uses that path, and a stale run there would be resumed.
    let _ = std::fs::remove_dir_all("/tmp/ride-cpu");
    let mut agents = Vec::new();
    let mut op = None;
    let mut ran = Vec::new();
    for cmd in &commands {
        let words: Vec<String> = cmd
            .split_whitespace()
            .map(|w| {
                // Paths in the README are relative to the repository root.
                if w.starts_with("charts/") || w.starts_with("examples/") {
                    repo().join(w).to_string_lossy().into_owned()
                } else {
                    w.to_string()
                }
            })
            .collect();
        let args: Vec<&str> = words.iter().skip(1).map(String::as_str).collect();
        match words[0].as_str() {
            // Images are built and run by tests/images.rs; pushing them
            // needs a registry, which these tests do not have yet.
            "scripts/images.sh" | "skopeo" => continue,
            "helm" => {
                // The one change: no operator pod, since nothing here runs
                // the operator image; it runs outside the cluster below, as
                // the chart's ServiceAccount.
                let mut args = args.clone();
                args.extend(["--set", "replicas=0"]);
                let (ok, out) = cluster.helm(&args);
                assert!(ok, "{cmd}: {out}");
                cluster.wait_established("ridetrainings.ride.dev");
                op = Some(operator_as_service_account(&cluster, "op-readme"));
                agents = cluster.nodes(&["node-a", "node-b"]).await;
            }
            "kubectl" if args.first() == Some(&"apply") => {
                let (ok, out) = cluster.kubectl(&args);
                assert!(ok, "{cmd}: {out}");
                let c = &client;
                let describe = || {
                    let (_, rt) = cluster.kubectl(&["get", "rt", "-o", "yaml"]);
                    let logs: String = agents.iter().map(|a| a.logs()).collect();
                    let op_log = op.as_ref().map(|o| o.log_text()).unwrap_or_default();
                    format!("{rt}\noperator:\n{op_log}\n{logs}")
                };
                // Up to a gang that ran: Running, or already done with it.
                let st = eventually(
                    600,
                    "the example's gang running",
                    || async move {
                        let st = status(c, NS, "ride-cpu").await;
                        (st["runningSince"].is_string() || st["phase"] == "Succeeded").then_some(st)
                    },
                    describe,
                )
                .await;
                assert_ne!(st["phase"], "Failed", "{st}");
            }
            "kubectl" => {
                let (ok, out) = cluster.kubectl(&args);
                assert!(ok, "{cmd}: {out}");
                if args == ["get", "rt"] {
                    // The columns the README shows in its comment.
                    let header: Vec<&str> = out
                        .lines()
                        .next()
                        .unwrap_or("")
                        .split_whitespace()
                        .collect();
                    assert_eq!(
                        header,
                        [
                            "NAME", "PHASE", "WORKERS", "EPOCH", "TOP-1", "PROGRESS", "ETA",
                            "RESTARTS", "AGE"
                        ],
                        "{out}"
                    );
                }
            }
            other => panic!(
                "the README's cluster path has a command this test does not know: {other} ({cmd})"
            ),
        }
        ran.push(cmd.clone());
    }
    assert_eq!(
        ran.iter()
            .map(|c| c.split_whitespace().next().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["helm", "kubectl", "kubectl"],
        "ran: {ran:?}"
    );
    println!("README cluster path, as written: {ran:#?}");
    drop(agents);
    drop(op);
    let _ = std::fs::remove_dir_all("/tmp/ride-cpu");
}
