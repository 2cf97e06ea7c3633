//! Shared by the operator's integration tests: a real control plane
//! ([`cluster::Cluster`]), node agents that run pods as processes
//! ([`node_agent::NodeAgent`]), the operator process, and waiting.

#![allow(dead_code)]

pub mod cluster;
pub mod kueue;
pub mod node_agent;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use ride_operator::crd::RideTraining;
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root, from the manifest directory cargo sets when the
/// test runs: one baked in at build time names whichever clone built the
/// binary, and clones share a target directory.
pub fn repo() -> PathBuf {
    manifest_dir()
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

/// `operator/`, as cargo says when the test runs (see [`repo`]).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf())
}

/// Where `scripts/k8s-tools.sh` puts kubectl, helm and the servers
/// (`$RIDE_K8S_BIN`, else what `scripts/env.sh` says).
pub fn k8s_bin() -> PathBuf {
    env_dir("RIDE_K8S_BIN")
}

/// Where `scripts/k8s-crds.sh` puts third-party CRDs (`$RIDE_K8S_CRDS`,
/// else what `scripts/env.sh` says).
pub fn k8s_crds() -> PathBuf {
    env_dir("RIDE_K8S_CRDS")
}

/// Where `scripts/k8s-peers.sh` puts the peer operators and their CRDs
/// (`$RIDE_K8S_PEERS`, else what `scripts/env.sh` says).
pub fn k8s_peers() -> PathBuf {
    env_dir("RIDE_K8S_PEERS")
}

/// A directory named by `var`, from the environment or `scripts/env.sh`.
fn env_dir(var: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(var) {
        return PathBuf::from(dir);
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source scripts/env.sh && printf %s \"${var}\""))
        .current_dir(repo())
        .output()
        .expect("bash");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `SLURM_CONF` of the tests' Slurm cluster (`scripts/slurm-cluster.sh`,
/// which `scripts/test.sh` starts), or `None` when it is not running.
pub fn slurm_conf() -> Option<String> {
    let dir = std::env::var("RIDE_SLURM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/ride/slurm")
        });
    let env = std::fs::read_to_string(dir.join("env")).ok()?;
    Some(env.trim().strip_prefix("export SLURM_CONF=")?.to_string())
}

/// The trainer binary, built into the same target directory as the tests.
pub fn trainer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ride-operator")).with_file_name("ride-trainer")
}

/// GET `path` over plain HTTP/1.0: the whole response (status line,
/// headers, body); None if the connection fails.
pub fn http_get(addr: impl std::net::ToSocketAddrs, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The `p` quantile (0..=1) of sorted values, nearest rank; NaN if none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A `kB` field of `/proc/PID/status` (e.g. "VmHWM:"); 0 if unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A loopback port that is free now, drawn below the kernel's ephemeral
/// range: ports from the range (what binding port 0 gives) can be taken by
/// any outgoing connection of a busy test run before the server that was
/// handed the port binds it. Same rule as `ride_free_port` in scripts/env.sh.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let span = ephemeral_low.saturating_sub(10_000).max(1);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    for _ in 0..500 {
        // splitmix64 over seed and a process-wide counter: distinct draws
        // for concurrent tests in one process and across processes.
        let mut z = seed.wrapping_add(
            DRAWS
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let port = (10_000 + z % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

/// A running `ride-operator` process; killed on drop.
pub struct Operator {
    pub child: Child,
    /// The plain port: /healthz, /readyz and (--insecure-metrics) /metrics.
    pub metrics_port: u16,
    /// The TLS /metrics port (authenticated).
    pub secure_metrics_port: u16,
    pub log: PathBuf,
}

impl Operator {
    /// Start the unmodified operator binary against `kubeconfig`.
    pub fn start(kubeconfig: &Path, identity: &str, extra: &[&str]) -> Self {
        let metrics_port = free_port();
        let secure_metrics_port = free_port();
        let log = kubeconfig.with_file_name(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ride-operator"))
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                // The tests read /metrics on the plain port; the secure
                // endpoint has its own test.
                "--insecure-metrics",
                "--secure-metrics-addr",
                &format!("127.0.0.1:{secure_metrics_port}"),
                "--identity",
                identity,
                "--lease-seconds",
                "3",
                "--lease-renew-deadline-seconds",
                "2",
                "--lease-retry-seconds",
                "1",
                "--progress-interval-seconds",
                "1",
                "--log-format",
                "text",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start ride-operator");
        Self {
            child,
            metrics_port,
            secure_metrics_port,
            log,
        }
    }

    /// GET a path of its HTTP endpoint: (status line, body).
    pub fn http_get(&self, path: &str) -> Option<String> {
        http_get(("127.0.0.1", self.metrics_port), path)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for it.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for ride-operator")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` every 250 ms until it returns Some, or panic after `secs` with
/// `what` and `context()`.
pub async fn eventually<T, F, Fut>(
    secs: u64,
    what: &str,
    mut f: F,
    context: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The worker pods of training `rt` in `ns`, sorted by name (terminating
/// ones included).
pub async fn pods_of(client: &kube::Client, ns: &str, rt: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut pods = api
        .list(&ListParams::default().labels(&format!("ride.dev/training={rt}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    pods.sort_by_key(|p| p.metadata.name.clone().unwrap_or_default());
    pods
}

/// A pod's phase (`""` before it has one).
pub fn phase_of(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Names of `pods`.
pub fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

/// Names of the pods of `rt` that are not being deleted.
pub async fn live_pod_names(client: &kube::Client, ns: &str, rt: &str) -> Vec<String> {
    let pods: Vec<Pod> = pods_of(client, ns, rt)
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    names(&pods)
}

/// The RideTraining `name` as JSON (None when absent).
pub async fn training(client: &kube::Client, ns: &str, name: &str) -> Option<Value> {
    let api: Api<RideTraining> = Api::namespaced(client.clone(), ns);
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|rt| serde_json::to_value(rt).ok())
}

/// Wait up to `secs` for training `name` to succeed and return its status;
/// panic at once if it fails, or with `context()` on the timeout.
pub async fn wait_succeeded(
    client: &kube::Client,
    ns: &str,
    name: &str,
    secs: u64,
    context: impl Fn() -> String,
) -> Value {
    eventually(
        secs,
        "Succeeded",
        || async move {
            let st = status(client, ns, name).await;
            match st["phase"].as_str() {
                Some("Succeeded") => Some(st),
                Some("Failed") => panic!("training failed: {st}"),
                _ => None,
            }
        },
        context,
    )
    .await
}

/// Its `.status` (Null when absent).
pub async fn status(client: &kube::Client, ns: &str, name: &str) -> Value {
    training(client, ns, name)
        .await
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

/// A stand-in for the trainer image: a `ride-trainer` that runs until a
/// signal says how to end (USR1: exit 0, USR2: exit 1, TERM: exit 75 as the
/// trainer does after saving a checkpoint, after `STAND_IN_TERM_DELAY`
/// seconds as if saving), so orchestration is tested without training. On
/// exit it leaves the file `termination-message` of its working directory
/// (the pod's directory, where a test may write it) as its termination
/// message, as the trainer leaves its final report.
pub fn stand_in_image(dir: &Path) -> node_agent::Image {
    let bin = dir.join("stand-in-bin");
    std::fs::create_dir_all(&bin).expect("stand-in dir");
    let exe = bin.join("ride-trainer");
    std::fs::write(
        &exe,
        // `wait` returns as soon as a trapped signal arrives; the sleeping
        // child is idle, so a thousand stand-ins cost no CPU.
        "#!/bin/sh\n\
         sleep 2147483647 & child=$!\n\
         end() {\n\
           kill $child 2>/dev/null\n\
           if [ -f \"$PWD/termination-message\" ] && [ -n \"$RIDE_TERMINATION_LOG\" ]; then\n\
             cat \"$PWD/termination-message\" > \"$RIDE_TERMINATION_LOG\"\n\
           fi\n\
           exit $1\n\
         }\n\
         trap 'end 0' USR1\ntrap 'end 1' USR2\n\
         trap 'sleep ${STAND_IN_TERM_DELAY:-0}; end 75' TERM\n\
         wait $child\n",
    )
    .expect("stand-in script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    node_agent::Image {
        matches: "ride-trainer".into(),
        bin_dir: bin,
        paths: vec![],
        sandbox: None,
    }
}

/// Serve `report()` as the trainer's `/progress` JSON on `ip:9400` (a pod's
/// address from the node agent), in place of a stand-in worker that serves
/// nothing. Returns how many requests were answered so far.
pub fn serve_progress(
    ip: &str,
    report: impl Fn() -> String + Send + 'static,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((ip, ride_contract::METRICS_PORT))
        .unwrap_or_else(|e| panic!("bind {ip}:{}: {e}", ride_contract::METRICS_PORT));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let body = report();
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    served
}

/// The namespace the stand-in tests use unless they make their own.
pub const NS: &str = "default";

/// `examples/ride-cpu.yaml` as training `name`, checkpointing under `dir`;
/// returns the manifest's path.
pub fn example_with_checkpoint(dir: &Path, name: &str) -> PathBuf {
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

/// Wait up to `secs` for an Event in `ns` with `reason` and a note that
/// `matches`; returns the note.
pub async fn wait_for_event(
    client: &kube::Client,
    ns: &str,
    reason: &str,
    matches: impl Fn(&str) -> bool,
    secs: u64,
    context: impl Fn() -> String,
) -> String {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let (events, matches) = (&events, &matches);
    let what = format!("a {reason} event");
    eventually(
        secs,
        &what,
        || async move {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .find_map(|e| e.note.filter(|n| matches(n)))
        },
        context,
    )
    .await
}

/// A cluster with the CRD and `nodes` stand-in nodes.
pub async fn setup(nodes: &[&str]) -> (cluster::Cluster, kube::Client, Vec<node_agent::NodeAgent>) {
    let cluster = cluster::Cluster::start();
    cluster.install_crd();
    let client = cluster.client().await;
    let mut agents = Vec::new();
    for n in nodes {
        let spec = node_agent::NodeSpec::new(n, vec![stand_in_image(&cluster.dir)]);
        agents.push(cluster.node(spec).await);
    }
    (cluster, client, agents)
}

/// What a timed-out wait shows: the training, its pods, the operator's log.
pub fn describe(cluster: &cluster::Cluster, op: &Operator, rt: &str) -> String {
    let (_, t) = cluster.kubectl(&["get", "rt", rt, "-o", "yaml"]);
    let (_, p) = cluster.kubectl(&["get", "pods", "-o", "wide", "--show-labels"]);
    let (_, e) = cluster.kubectl(&["get", "events", "--sort-by=.lastTimestamp"]);
    format!(
        "training:\n{t}\npods:\n{p}\nevents:\n{e}\noperator log:\n{}",
        op.log_text()
    )
}

/// Signal the process of pod `name` (in [`NS`]), wherever it runs.
pub fn signal(agents: &[node_agent::NodeAgent], name: &str, sig: &str) {
    assert!(
        agents.iter().any(|a| a.signal_pod(NS, name, sig)),
        "no process runs pod {name}"
    );
}

/// The value of an unlabelled series (or the first matching line's) in a
/// Prometheus text exposition, `None` when absent.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// A token of ServiceAccount `sa` (created in `default`), bound to a
/// `metrics-reader` ClusterRole (get on the non-resource URL /metrics, as
/// the chart's) when `reader`.
pub fn service_account_token(cluster: &cluster::Cluster, sa: &str, reader: bool) -> String {
    let (ok, out) = cluster.kubectl(&["create", "serviceaccount", sa, "-n", NS]);
    assert!(ok || out.contains("AlreadyExists"), "{out}");
    if reader {
        let (ok, out) = cluster.kubectl(&[
            "create",
            "clusterrole",
            "metrics-reader",
            "--verb=get",
            "--non-resource-url=/metrics",
        ]);
        assert!(ok || out.contains("AlreadyExists"), "{out}");
        let (ok, out) = cluster.kubectl(&[
            "create",
            "clusterrolebinding",
            &format!("metrics-reader-{sa}"),
            "--clusterrole=metrics-reader",
            &format!("--serviceaccount={NS}:{sa}"),
        ]);
        assert!(ok || out.contains("AlreadyExists"), "{out}");
    }
    let (ok, out) = cluster.kubectl(&["create", "token", sa, "-n", NS, "--duration=2h"]);
    assert!(ok, "{out}");
    out.trim().to_string()
}

/// `curl` of `https://127.0.0.1:PORT/metrics` (self-signed, so unverified)
/// with `token` as a bearer token: (HTTP status, body).
pub fn get_secure_metrics(port: u16, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "--max-time", "20", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}/metrics"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The first `latest` file of a checkpoint store under `dir`, if one is
/// written yet.
pub fn find_latest(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(f) = find_latest(&p) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == "latest") {
            return Some(p);
        }
    }
    None
}

/// Every directory under `dir`, recursively.
pub fn checkpoint_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(checkpoint_dirs(&p));
            out.push(p);
        }
    }
    out
}

/// The name of the first mid-epoch checkpoint of epoch 1
/// (`ckpt_epoch_1_iter_N`) under `dir`: what trainers stopped by SIGTERM in
/// the CPU example's second epoch save.
pub fn mid_epoch_checkpoint(dir: &Path) -> Option<String> {
    checkpoint_dirs(dir)
        .into_iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .find(|n| n.starts_with("ckpt_epoch_1_iter_"))
}

/// Pod `name`'s log in the tests' namespace, from whichever node agent ran it.
pub fn pod_log(agents: &[node_agent::NodeAgent], name: &str) -> String {
    agents
        .iter()
        .map(|a| std::fs::read_to_string(a.log_path(NS, name)).unwrap_or_default())
        .collect()
}
