//! Kueue (built from its Go module by `scripts/k8s-kueue.sh`) run out of
//! cluster against a test control plane: its CRDs, its webhooks reachable
//! on loopback through `clientConfig.url` with a certificate for
//! 127.0.0.1, the plain-pod integration only. Stopped when dropped.

use super::cluster::Cluster;
use super::{env_dir, free_port, http_get};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kueue's own namespace, as its manifests name it.
pub const KUEUE_NAMESPACE: &str = "kueue-system";

/// A running Kueue controller manager.
pub struct Kueue {
    child: Child,
    /// Its log (JSON lines).
    pub log: PathBuf,
}

/// Where `scripts/k8s-kueue.sh` puts Kueue (`$RIDE_K8S_KUEUE`).
pub fn kueue_dir() -> PathBuf {
    env_dir("RIDE_K8S_KUEUE")
}

/// The CRD names of the files in `crds` (`kueue.x-k8s.io_workloads.yaml`
/// is `workloads.kueue.x-k8s.io`).
fn crd_names(crds: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(crds)
        .expect("Kueue CRDs (scripts/k8s-kueue.sh)")
        .filter_map(|e| {
            let file = e.ok()?.file_name().into_string().ok()?;
            let plural = file
                .strip_prefix("kueue.x-k8s.io_")?
                .strip_suffix(".yaml")?;
            Some(format!("{plural}.kueue.x-k8s.io"))
        })
        .collect();
    names.sort();
    names
}

/// Kueue's webhook configurations pointed at `base` (`https://127.0.0.1:PORT`)
/// and trusting `ca_pem`: only the webhooks of what this Kueue serves (its
/// own kinds and plain pods; a webhook for a framework it does not run would
/// refuse every such object), with the namespace selector its kustomization
/// adds to the pod webhooks.
pub fn loopback_webhooks(manifests: &str, base: &str, ca_pem: &[u8]) -> Vec<Value> {
    let ca = serde_json::to_value(k8s_openapi::ByteString(ca_pem.to_vec())).expect("caBundle");
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(manifests) {
        let mut config: Value =
            serde::Deserialize::deserialize(doc).expect("Kueue webhook manifest is YAML");
        if config.is_null() {
            continue;
        }
        let name = config["metadata"]["name"].as_str().unwrap_or_default();
        config["metadata"] = json!({"name": format!("kueue-{name}")});
        let hooks = config["webhooks"].as_array().cloned().unwrap_or_default();
        let kept: Vec<Value> = hooks
            .into_iter()
            .filter_map(|mut hook| {
                let path = hook["clientConfig"]["service"]["path"]
                    .as_str()?
                    .to_string();
                let pod = path == "/mutate--v1-pod" || path == "/validate--v1-pod";
                if !pod && !path.contains("-kueue-x-k8s-io-") {
                    return None;
                }
                hook["clientConfig"] = json!({"url": format!("{base}{path}"), "caBundle": ca});
                if pod {
                    hook["namespaceSelector"] = json!({"matchExpressions": [{
                        "key": "kubernetes.io/metadata.name",
                        "operator": "NotIn",
                        "values": ["kube-system", KUEUE_NAMESPACE],
                    }]});
                }
                Some(hook)
            })
            .collect();
        config["webhooks"] = Value::Array(kept);
        out.push(config);
    }
    out
}

impl Kueue {
    /// Install Kueue's CRDs and start it against `cluster` with the admin
    /// kubeconfig; returns once its webhooks are registered and it is ready.
    ///
    /// With its own certificate management off, Kueue v0.17 reads the
    /// metrics server's certificate from the fixed path
    /// `/etc/kueue/metrics/certs`. Rather than write into the host's /etc,
    /// it runs in a mount namespace of its own where /etc is an overlay
    /// whose upper layer holds that one directory.
    pub async fn start(cluster: &Cluster) -> Self {
        let home = kueue_dir();
        let dir = cluster.dir.join("kueue");
        std::fs::create_dir_all(&dir).expect("kueue dir");
        let crds = home.join("crds");
        // The Workload CRD is over the 256 KiB client-side apply annotation.
        let (ok, out) = cluster.kubectl(&[
            "apply",
            "--server-side",
            "-f",
            crds.to_str().expect("utf-8 path"),
        ]);
        assert!(ok, "apply Kueue CRDs: {out}");
        for crd in crd_names(&crds) {
            cluster.wait_established(&crd);
        }
        let (ok, out) = cluster.kubectl(&["create", "namespace", KUEUE_NAMESPACE]);
        assert!(ok, "{out}");

        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
            .expect("webhook certificate");
        let (cert, key) = (made.cert.pem(), made.key_pair.serialize_pem());
        let webhook_certs = dir.join("webhook-certs");
        let etc_upper = dir.join("etc-upper");
        let metrics_certs = etc_upper.join("kueue/metrics/certs");
        for d in [&webhook_certs, &metrics_certs] {
            std::fs::create_dir_all(d).expect("cert dir");
            std::fs::write(d.join("tls.crt"), &cert).expect("tls.crt");
            std::fs::write(d.join("tls.key"), &key).expect("tls.key");
        }
        std::fs::create_dir_all(dir.join("etc-work")).expect("overlay work dir");

        let (webhook_port, health_port, metrics_port) = (free_port(), free_port(), free_port());
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: {KUEUE_NAMESPACE}
health:
  healthProbeBindAddress: 127.0.0.1:{health_port}
metrics:
  bindAddress: 127.0.0.1:{metrics_port}
webhook:
  host: 127.0.0.1
  port: {webhook_port}
  certDir: {}
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
manageJobsWithoutQueueName: false
integrations:
  frameworks: [pod]
",
                webhook_certs.display()
            ),
        )
        .expect("kueue config");

        let log = dir.join("kueue.log");
        let file = std::fs::File::create(&log).expect("kueue log");
        let mount = format!(
            "mount -t overlay overlay -o lowerdir=/etc,upperdir={},workdir={} /etc && exec \"$0\" \"$@\"",
            etc_upper.display(),
            dir.join("etc-work").display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &mount])
            .arg(home.join("bin/kueue"))
            .arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            // Its visibility API is an aggregated API server; nothing here
            // reads pending workloads through it.
            .arg("--feature-gates=VisibilityOnDemand=false")
            .arg("--zap-log-level=3")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start kueue (unshare)");
        let mut kueue = Self { child, log };

        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ready = http_get(("127.0.0.1", health_port), "/readyz")
                .is_some_and(|r| r.lines().next().is_some_and(|l| l.contains(" 200 ")));
            if ready {
                break;
            }
            if let Ok(Some(status)) = kueue.child.try_wait() {
                panic!("kueue exited {status}:\n{}", kueue.log_tail(40));
            }
            assert!(
                Instant::now() < deadline,
                "kueue not ready:\n{}",
                kueue.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let manifests =
            std::fs::read_to_string(home.join("webhooks.yaml")).expect("Kueue webhooks.yaml");
        let configs = loopback_webhooks(
            &manifests,
            &format!("https://127.0.0.1:{webhook_port}"),
            cert.as_bytes(),
        );
        let file = dir.join("webhooks.json");
        std::fs::write(
            &file,
            serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": configs}))
                .expect("webhooks json"),
        )
        .expect("write webhooks");
        let (ok, out) = cluster.kubectl(&["apply", "-f", file.to_str().expect("utf-8 path")]);
        assert!(ok, "apply Kueue webhooks: {out}");
        kueue.wait_webhooks(cluster).await;
        kueue
    }

    /// The webhooks take effect once the API server has loaded them: wait
    /// until a dry-run pod with a queue label comes back gated by Kueue's
    /// pod webhook.
    async fn wait_webhooks(&self, cluster: &Cluster) {
        let probe = cluster.dir.join("kueue/probe-pod.json");
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "kueue-probe", "namespace": "default",
                         "labels": {"kueue.x-k8s.io/queue-name": "probe"}},
            "spec": {"containers": [{"name": "c", "image": "probe"}]},
        });
        std::fs::write(&probe, pod.to_string()).expect("probe pod");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out) = cluster.kubectl(&[
                "create",
                "--dry-run=server",
                "-o",
                "jsonpath={.spec.schedulingGates[*].name}",
                "-f",
                probe.to_str().expect("utf-8 path"),
            ]);
            if ok && out.contains("kueue.x-k8s.io/admission") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Kueue's pod webhook never gated a pod: {out}\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Kueue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
