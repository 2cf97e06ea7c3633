//! Simulated nodes for the scale bench: kwok (`sigs.k8s.io/kwok`, built by
//! `scripts/k8s-peers.sh`) run out of cluster against the bench's control
//! plane, playing the kubelets of Node objects the bench creates, with the
//! stages in `bench/kwok/stages.yaml`. Nothing runs in a pod, so 2,000
//! trainings of 2 workers fit on one machine; the pods' lifecycle (bound →
//! Running, Failed with an exit code, Succeeded, deleted) goes through the
//! API server as a kubelet's would.
//!
//! One kwok process per group of nodes, so that a group can be lost: killing
//! its process ends its nodes' Lease renewals and freezes their pods, as a
//! node cut off from the control plane does.

use super::common::cluster::Cluster;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The annotation that says which kwok process plays a node.
const GROUP_ANNOTATION: &str = "bench.ride.dev/kwok-group";
/// Lease duration kwok writes; it renews every quarter of it (2 s), as the
/// node agents of the tests do, within kube-controller-manager's 8 s grace.
const LEASE_SECONDS: &str = "8";

/// The kwok processes and the nodes each plays.
pub struct KwokNodes {
    groups: BTreeMap<String, Child>,
}

/// The bench's stage file.
fn stages() -> PathBuf {
    super::common::repo().join("bench/kwok/stages.yaml")
}

fn kwok_bin() -> PathBuf {
    super::common::k8s_peers().join("bin/kwok")
}

/// kwok's version line, from `scripts/k8s-peers.sh`'s note.
pub fn version() -> String {
    std::fs::read_to_string(super::common::k8s_peers().join("bin/kwok.version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "kwok, unknown version".into())
}

impl KwokNodes {
    /// Create nodes `groups` (group name → node names), each with room for
    /// `pods` pods, start one kwok per group, and wait until every node is
    /// Ready and schedulable.
    ///
    /// The bench's pods request nothing, so the scheduler scores each as
    /// its default 0.1 CPU and 200 MiB, and kube-scheduler v1.36 breaks a
    /// tie between nodes by their order, not at random (its randomizer is
    /// only set where extenders score): on nodes so large that the scores
    /// tie, nearly every pod lands on the first nodes and node-c gets none.
    /// So each node is sized for two thirds of the pods at those defaults:
    /// every pod placed moves its node's score, the pods spread, and the
    /// scores stay above 0 after a node is lost.
    pub fn start(cluster: &Cluster, groups: &[(&str, &[&str])], pods: usize) -> Self {
        assert!(
            kwok_bin().is_file(),
            "{} missing: run scripts/k8s-peers.sh",
            kwok_bin().display()
        );
        let mut started = BTreeMap::new();
        for (k, (group, nodes)) in groups.iter().enumerate() {
            // Each group's pods and nodes get addresses of their own on
            // loopback: rank 0's progress port answers nothing there, as
            // with the node agents, and a poll is refused at once.
            let block = 201 + k;
            for node in nodes.iter() {
                let manifest = serde_json::json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": node,
                                 "annotations": {GROUP_ANNOTATION: group},
                                 "labels": {"kubernetes.io/hostname": node,
                                            "kubernetes.io/os": "linux",
                                            "type": "kwok"}},
                    "status": {"capacity": {"cpu": format!("{}m", (pods * 100 * 2 / 3).max(1000)),
                                            "memory": format!("{}Mi", (pods * 200 * 2 / 3).max(2000)),
                                            "pods": pods.to_string()}}
                });
                let file = cluster.dir.join(format!("node-{node}.json"));
                std::fs::write(&file, manifest.to_string()).expect("node manifest");
                let (ok, out) = cluster.kubectl(&["create", "-f", &file.to_string_lossy()]);
                assert!(ok, "create node {node}: {out}");
            }
            let log = std::fs::File::create(cluster.dir.join(format!("kwok-{group}.log")))
                .expect("kwok log");
            let child = Command::new(kwok_bin())
                .arg("--kubeconfig")
                .arg(&cluster.kubeconfig)
                .arg("--config")
                .arg(stages())
                .args([
                    "--manage-nodes-with-annotation-selector",
                    &format!("{GROUP_ANNOTATION}={group}"),
                    "--cidr",
                    &format!("127.{block}.0.0/16"),
                    "--node-ip",
                    &format!("127.{block}.0.1"),
                    "--node-lease-duration-seconds",
                    LEASE_SECONDS,
                    "--server-address",
                    &format!("127.0.0.1:{}", super::common::free_port()),
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start kwok: {e} (run scripts/k8s-peers.sh)"));
            started.insert(group.to_string(), child);
        }
        let nodes = Self { groups: started };
        let all: Vec<&str> = groups.iter().flat_map(|(_, n)| n.iter().copied()).collect();
        nodes.wait_schedulable(cluster, &all);
        nodes
    }

    fn wait_schedulable(&self, cluster: &Cluster, nodes: &[&str]) {
        let t0 = Instant::now();
        loop {
            let (ok, out) = cluster.kubectl(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} \
                 {.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints}{\"\\n\"}{end}",
            ]);
            let ready = ok
                && nodes.iter().all(|n| {
                    out.lines().any(|l| {
                        let mut f = l.splitn(3, ' ');
                        f.next() == Some(n)
                            && f.next() == Some("True")
                            && !f.next().unwrap_or("").contains("not-ready")
                    })
                });
            if ready {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "kwok nodes not schedulable: {out}; logs in {}",
                cluster.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Cut group `group` off: its kwok process dies, so its nodes' Leases
    /// lapse and their pods stay as they were.
    pub fn lose(&mut self, group: &str) {
        if let Some(mut child) = self.groups.remove(group) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for KwokNodes {
    fn drop(&mut self) {
        for child in self.groups.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
