//! A real Kubernetes control plane for one test: `scripts/k8s-cluster.sh`
//! started in a directory of its own (free ports, its own certificates and
//! etcd), stopped when the [`Cluster`] is dropped.

use super::node_agent::{Image, NodeAgent, NodeSpec};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running control plane (etcd, kube-apiserver, kube-controller-manager,
/// kube-scheduler) and its admin kubeconfig.
pub struct Cluster {
    /// Where its state, logs and kubeconfigs live.
    pub dir: PathBuf,
    /// Admin kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    /// Where kubectl, helm and the server binaries are.
    pub bin: PathBuf,
    /// The API server's URL.
    pub api: String,
    _tmp: tempfile::TempDir,
}

fn script() -> PathBuf {
    super::repo().join("scripts/k8s-cluster.sh")
}

/// A kube client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}

impl Cluster {
    /// Start a fresh control plane (about 10 s; the components are built
    /// once by `scripts/k8s-tools.sh`). Its directory is under
    /// `$RIDE_K8S_TEST_ROOT` when set (so `scripts/test.sh` can reap strays).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Cluster::start`] with extra variables for `scripts/k8s-cluster.sh`
    /// (e.g. `RIDE_K8S_FEATURE_GATES`).
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let root = std::env::var_os("RIDE_K8S_TEST_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&root).expect("test root");
        let tmp = tempfile::Builder::new()
            .prefix("k8s-")
            .tempdir_in(&root)
            .expect("cluster directory");
        let dir = tmp.path().to_path_buf();
        let out = Command::new(script())
            .arg("start")
            .env("RIDE_K8S_DIR", &dir)
            .envs(env.iter().copied())
            .output()
            .expect("run scripts/k8s-cluster.sh");
        assert!(
            out.status.success(),
            "scripts/k8s-cluster.sh start failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("env")).expect("cluster env file");
        let var = |name: &str| -> String {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_else(|| panic!("{name} in {env}"))
        };
        Self {
            kubeconfig: PathBuf::from(var("KUBECONFIG")),
            bin: PathBuf::from(var("RIDE_K8S_BIN")),
            api: var("RIDE_K8S_API"),
            dir,
            _tmp: tmp,
        }
    }

    /// An admin client.
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig).await
    }

    /// Run kubectl (the one built with the cluster) with `kubeconfig`;
    /// (success, stdout + stderr).
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
        let out = Command::new(self.bin.join("kubectl"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", &self.dir)
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Run kubectl as the cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        self.kubectl_as(&self.kubeconfig, args)
    }

    /// Run helm (the one built with the cluster) as the cluster admin.
    pub fn helm(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(self.bin.join("helm"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.dir)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .output()
            .expect("run helm");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `kubectl apply -f` of the project's CRD; waits until it is served.
    pub fn install_crd(&self) {
        let crd = super::repo().join("crds/ridetrainings.ride.dev.yaml");
        let (ok, out) = self.kubectl(&["apply", "-f", crd.to_str().expect("utf-8 path")]);
        assert!(ok, "apply CRD: {out}");
        self.wait_established("ridetrainings.ride.dev");
    }

    /// Wait until CRD `name` is served (`kubectl wait` fails outright while
    /// the new object has no conditions yet, hence the poll).
    pub fn wait_established(&self, name: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (ok, out) = self.kubectl(&[
                "get",
                "crd",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ]);
            if ok && out.trim() == "True" {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CRD {name} not established: {out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// A kubeconfig for node `name` (identity `system:node:NAME`).
    pub fn node_kubeconfig(&self, name: &str) -> PathBuf {
        self.identity_kubeconfig("node", name)
    }

    /// A kubeconfig for user `name`, in no group: its requests fall in API
    /// Priority and Fairness's `global-default` flow schema, which no
    /// control-plane component uses, so they can be counted apart.
    pub fn user_kubeconfig(&self, name: &str) -> PathBuf {
        self.identity_kubeconfig("user", name)
    }

    /// `scripts/k8s-cluster.sh KIND NAME`: the path of the kubeconfig it made.
    fn identity_kubeconfig(&self, kind: &str, name: &str) -> PathBuf {
        let out = Command::new(script())
            .args([kind, name])
            .env("RIDE_K8S_DIR", &self.dir)
            .output()
            .unwrap_or_else(|e| panic!("run scripts/k8s-cluster.sh {kind}: {e}"));
        assert!(
            out.status.success(),
            "{kind} kubeconfig: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    /// Start node agents `names` that run the trainer image, and wait until
    /// every one is Ready (its not-ready taint removed by the controller-manager).
    pub async fn nodes(&self, names: &[&str]) -> Vec<NodeAgent> {
        let mut agents = Vec::new();
        for name in names {
            let spec = NodeSpec::new(name, vec![trainer_image()]);
            agents.push(self.node(spec).await);
        }
        agents
    }

    /// Start one node agent with `spec` and wait until it is schedulable.
    pub async fn node(&self, spec: NodeSpec) -> NodeAgent {
        let kubeconfig = self.node_kubeconfig(&spec.name);
        let name = spec.name.clone();
        let agent = NodeAgent::start(&kubeconfig, self.client().await, spec, &self.dir).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (ok, out) = self.kubectl(&[
                "get",
                "node",
                &name,
                "-o",
                "jsonpath={.spec.taints}|{.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            if ok && out.ends_with("|True") && !out.contains("not-ready") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {name} did not become Ready: {out}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        agent
    }

    /// The tail of a component's log (e.g. "kube-apiserver"), for failure messages.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{component}.log"))).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .env("RIDE_K8S_DIR", &self.dir)
            .status();
    }
}

/// The trainer image as the node agents run it: `ride-trainer` from this
/// build, `/opt/ride/configs` from the checkout.
pub fn trainer_image() -> Image {
    Image {
        matches: "ride-trainer".into(),
        bin_dir: super::trainer_bin()
            .parent()
            .expect("target directory")
            .to_path_buf(),
        paths: vec![("/opt/ride/configs".into(), super::repo().join("configs"))],
        sandbox: None,
    }
}
