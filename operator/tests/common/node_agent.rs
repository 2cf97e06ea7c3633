//! A node agent for the tests: the kubelet's part of a real cluster, with
//! each pod run as a local process instead of a container.
//!
//! It talks to the real API server with a node's identity
//! (`system:node:NAME`, group `system:nodes`), so the Node authorizer and the
//! NodeRestriction admission plugin decide what it may read and write, as
//! they do for a kubelet. It
//!
//! - registers a Node with capacity (cpu, memory, pods and optionally
//!   `nvidia.com/gpu`) and Ready conditions, and renews its Lease in
//!   `kube-node-lease` every 2 s, so the real node lifecycle controller
//!   judges its health;
//! - watches the pods bound to it (`spec.nodeName=NAME`, as a kubelet does)
//!   and runs the first container of each as a process: the image picks an
//!   executable from the test's [`Image`] table, command and args are the
//!   pod's, env values are resolved (`value`, `secretKeyRef`,
//!   `configMapKeyRef`, `fieldRef`) through the API server with the node's
//!   identity;
//! - gives each pod its own loopback address (`127.(100+k).x.y`, a block
//!   per agent of the test process) as
//!   `status.podIP`; bind addresses `0.0.0.0:P` in the arguments become
//!   `podIP:P`;
//! - plays cluster DNS for headless Services: an env value
//!   `host.subdomain[.ns[.svc[.cluster.local]]]` becomes the IP of the pod
//!   with that hostname and subdomain among the pods the Service selects
//!   (ready ones only, unless the Service publishes not-ready addresses).
//!   The start waits until that pod has an address. (The real EndpointSlice
//!   controller refuses loopback addresses, so DNS is answered from pods.)
//! - processes share the host's ports, unlike pods with their own network
//!   namespace: the ranks of one gang get their own `MASTER_PORT` (shared
//!   by every agent of its cluster, keyed by the gang's `MASTER_ADDR`),
//!   as Slurm jobs sharing a node do;
//! - maps paths: the image's (e.g. `/opt/ride/configs` to the checkout),
//!   each `emptyDir` mount and the termination-message path to per-pod
//!   directories, `hostPath` mounts to their host paths; or, for an image
//!   given as an unpacked root filesystem ([`Sandbox`]), runs the process
//!   in that root with bubblewrap as the image's user (read-only root,
//!   those mounts bound at their container paths), so what the image holds
//!   is what runs;
//! - reports status as a kubelet does: Running with container state,
//!   `podIP`, `startTime` and Ready conditions; Succeeded or Failed with the
//!   exit code (128 + signal for a signal), reason and the termination
//!   message (or the log's tail under `FallbackToLogsOnError`); a waiting
//!   reason (`ErrImagePull`, `CreateContainerConfigError`) when it cannot
//!   start;
//! - on deletion sends SIGTERM, waits the pod's grace period, then SIGKILL,
//!   reports the exit and removes the pod (delete with grace 0 and a uid
//!   precondition);
//! - kills processes of pods that vanished from the API server.
//!
//! [`NodeAgent::stop`] models a lost node: heartbeats and reports stop and
//! its processes are frozen (SIGSTOP, their connections stay open, as with a
//! machine that lost power or network), so the real controller-manager marks
//! the node NotReady and evicts its pods. Not modelled: image pulls,
//! cgroups and resource limits, volumes other than emptyDir and hostPath, probes,
//! container restarts (`restartPolicy` other than Never), init containers
//! and sidecars, `kubectl logs`/`exec` (there is no kubelet server).

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Client;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How the agent runs an image: its `command[0]` names an executable in
/// `bin_dir`, and image paths are mapped to host paths.
#[derive(Clone, Debug)]
pub struct Image {
    /// A substring of the pod's image reference that selects this entry.
    pub matches: String,
    /// Where the image's executables are on this machine.
    pub bin_dir: PathBuf,
    /// Path prefixes of the image and where they are here.
    pub paths: Vec<(String, PathBuf)>,
    /// Run the image's own files instead (then `bin_dir` and `paths` are
    /// not used).
    pub sandbox: Option<Sandbox>,
}

/// An image unpacked to a root filesystem (`scripts/images.sh smoke`), run
/// with bubblewrap as its user.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// The unpacked root filesystem.
    pub rootfs: PathBuf,
    /// The image's user and group.
    pub uid: u32,
    pub gid: u32,
}

/// A node to register.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node name (also its host name label).
    pub name: String,
    /// `status.capacity.cpu`.
    pub cpu: String,
    /// `status.capacity.memory`.
    pub memory: String,
    /// `nvidia.com/gpu` capacity (0: none advertised). These GPUs are
    /// stand-ins: a container's `--device cuda` runs on the CPU.
    pub gpus: u32,
    /// `status.capacity.pods`.
    pub pods: u32,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// Images this node can run.
    pub images: Vec<Image>,
    /// Environment every process gets before the pod's own (e.g. thread counts
    /// on a shared test machine).
    pub base_env: Vec<(String, String)>,
}

impl NodeSpec {
    /// A node with 16 CPUs, 64 GiB and no GPUs.
    pub fn new(name: &str, images: Vec<Image>) -> Self {
        Self {
            name: name.into(),
            cpu: "16".into(),
            memory: "64Gi".into(),
            gpus: 0,
            pods: 110,
            labels: BTreeMap::new(),
            images,
            base_env: vec![("OMP_NUM_THREADS".into(), "1".into())],
        }
    }
}

struct Proc {
    name: String,
    namespace: String,
    child: Child,
    container: String,
    started_at: String,
    dir: PathBuf,
    message_path: PathBuf,
    fallback_to_logs: bool,
    sigterm_at: Option<Instant>,
    grace: Duration,
}

#[derive(Default)]
struct State {
    /// Running processes by pod uid.
    procs: HashMap<String, Proc>,
    /// Pods whose container has finished (or never will): uid → reported.
    finished: HashSet<String>,
    /// Pods waiting to start, with the reason last reported (uid → reason).
    waiting: HashMap<String, String>,
    /// Pod IPs by uid.
    ips: HashMap<String, String>,
    next_ip: u32,
    /// Pods we already asked the API server to remove (uid).
    removed: HashSet<String>,
}

/// A running node agent; its processes are killed when it is dropped.
pub struct NodeAgent {
    /// The Node's name.
    pub name: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dir: PathBuf,
}

/// Rendezvous ports of the gangs of this test process, keyed by cluster
/// (its directory), namespace and `MASTER_ADDR`: every agent of a cluster
/// hands out the same one, and same-named gangs of clusters that tests run
/// at once get different ones.
fn gang_port(cluster: &Path, namespace: &str, master_addr: &str) -> u16 {
    static PORTS: OnceLock<Mutex<HashMap<String, u16>>> = OnceLock::new();
    let mut ports = PORTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *ports
        .entry(format!("{}/{namespace}/{master_addr}", cluster.display()))
        .or_insert_with(super::free_port)
}

/// The next free address block `127.(100+k).0.0/16` of this test process:
/// every agent, of every cluster a test binary starts, gets its own.
fn next_block() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let k = NEXT.fetch_add(1, Ordering::SeqCst);
    assert!(k < 150, "too many node agents in one test process");
    100 + k
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Signal every process of a pod (each pod runs in its own process group,
/// as a container's processes share its cgroup).
fn signal_group(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// SIGKILL a pod's processes and reap its main one.
fn kill_pod(child: &mut Child) {
    signal_group(child.id(), "CONT");
    signal_group(child.id(), "KILL");
    let _ = child.wait();
}

/// Why a pod cannot start yet.
enum NotYet {
    /// Wait and retry without reporting (e.g. DNS not resolvable yet).
    Wait,
    /// Report a waiting reason and retry later.
    Waiting(&'static str, String),
}

impl NodeAgent {
    /// Register the node with `kubeconfig` (a node identity from
    /// `Cluster::node_kubeconfig`), start heartbeats and the pod loop.
    /// `dns` is a client with read access to Services and Pods (cluster DNS's
    /// own identity); `dir` receives per-pod directories and logs.
    pub async fn start(kubeconfig: &Path, dns: Client, spec: NodeSpec, dir: &Path) -> Self {
        let client = super::cluster::client_for(kubeconfig).await;
        let dir = dir.join(format!("node-{}", spec.name));
        std::fs::create_dir_all(&dir).expect("node directory");
        let block = next_block();
        register(&client, &spec, block).await;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = vec![
            tokio::spawn(heartbeat(
                client.clone(),
                spec.clone(),
                block,
                Arc::clone(&stop),
            )),
            tokio::spawn(pod_loop(
                client,
                dns,
                spec.clone(),
                block,
                Arc::clone(&state),
                Arc::clone(&stop),
                dir.clone(),
            )),
        ];
        Self {
            name: spec.name,
            state,
            stop,
            tasks,
            dir,
        }
    }

    /// Lose the node: no more heartbeats or pod reports, processes frozen.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for p in state.procs.values() {
            signal_group(p.child.id(), "STOP");
        }
    }

    /// The pid of the process running pod `namespace/name`, if any.
    pub fn pid(&self, namespace: &str, name: &str) -> Option<u32> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .procs
            .values()
            .find(|p| p.name == name && p.namespace == namespace)
            .map(|p| p.child.id())
    }

    /// Send `sig` (e.g. "KILL") to pod `namespace/name`'s process; false if none runs.
    pub fn signal_pod(&self, namespace: &str, name: &str, sig: &str) -> bool {
        match self.pid(namespace, name) {
            Some(pid) => {
                signal(pid, sig);
                true
            }
            None => false,
        }
    }

    /// Pod `namespace/name`'s directory (its process's working directory and HOME).
    pub fn pod_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir.join(format!("{namespace}_{name}"))
    }

    /// Where pod `namespace/name`'s output goes.
    pub fn log_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.pod_dir(namespace, name).join("log")
    }

    /// Every pod log of this node, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let log = e.path().join("log");
            if let Ok(text) = std::fs::read_to_string(&log) {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out += &format!("--- {} ({}):\n", e.file_name().to_string_lossy(), self.name);
                for l in tail.into_iter().rev() {
                    out += l;
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for p in state.procs.values_mut() {
            kill_pod(&mut p.child);
        }
    }
}

async fn register(client: &Client, spec: &NodeSpec, block: u32) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = spec.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), spec.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": spec.name, "labels": labels},
    }))
    .expect("node object");
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("node {} could not register: {e}", spec.name),
    }
    nodes
        .patch_status(
            &spec.name,
            &PatchParams::default(),
            &Patch::Strategic(node_status(spec, block)),
        )
        .await
        .unwrap_or_else(|e| panic!("node {} status: {e}", spec.name));
}

fn node_status(spec: &NodeSpec, block: u32) -> Value {
    let mut capacity =
        json!({"cpu": spec.cpu, "memory": spec.memory, "pods": spec.pods.to_string()});
    if spec.gpus > 0 {
        capacity["nvidia.com/gpu"] = json!(spec.gpus.to_string());
    }
    let now = now_rfc3339();
    let cond = |t: &str, s: &str, reason: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": "node agent (tests)",
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({"status": {
        "capacity": capacity, "allocatable": capacity,
        "conditions": [
            cond("Ready", "True", "KubeletReady"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": format!("127.{block}.0.1")},
                      {"type": "Hostname", "address": spec.name}],
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "node agent (tests)", "containerRuntimeVersion": "process://",
            "kubeletVersion": "v0.0.0-node-agent", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": "amd64"},
    }})
}

/// Renew the node's Lease every 2 s and its Ready condition every 10 s.
async fn heartbeat(client: Client, spec: NodeSpec, block: u32, stop: Arc<AtomicBool>) {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut last_status = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let renew = json!({"spec": {"holderIdentity": spec.name, "leaseDurationSeconds": 40,
                                    "renewTime": now_micro()}});
        match leases
            .patch(&spec.name, &PatchParams::default(), &Patch::Merge(&renew))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let uid = nodes
                    .get(&spec.name)
                    .await
                    .ok()
                    .and_then(|n| n.metadata.uid);
                let lease: Lease = serde_json::from_value(json!({
                    "metadata": {"name": spec.name, "ownerReferences": uid.map(|u| vec![json!({
                        "apiVersion": "v1", "kind": "Node", "name": spec.name, "uid": u})])},
                    "spec": renew["spec"],
                }))
                .expect("lease object");
                if let Err(e) = leases.create(&PostParams::default(), &lease).await {
                    eprintln!("node {}: lease: {e}", spec.name);
                }
            }
            Err(e) => eprintln!("node {}: lease renewal: {e}", spec.name),
        }
        if last_status.elapsed() >= Duration::from_secs(10) {
            last_status = Instant::now();
            if let Err(e) = nodes
                .patch_status(
                    &spec.name,
                    &PatchParams::default(),
                    &Patch::Strategic(node_status(&spec, block)),
                )
                .await
            {
                eprintln!("node {}: status: {e}", spec.name);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Watch the pods bound to this node and act on them every 200 ms or on change.
async fn pod_loop(
    client: Client,
    dns: Client,
    spec: NodeSpec,
    block: u32,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    dir: PathBuf,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let notify = Arc::new(tokio::sync::Notify::new());
    let watch = {
        let notify = Arc::clone(&notify);
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", spec.name));
        let stream = reflector(writer, watcher(pods, cfg)).default_backoff();
        tokio::spawn(async move {
            use futures::StreamExt;
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    eprintln!("pod watch: {e}");
                }
                notify.notify_one();
            }
        })
    };
    // Aborting this loop (a stopped node) must stop the watch too.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _watch = AbortOnDrop(watch);
    let agent = Agent {
        client,
        dns,
        spec,
        block,
        state,
        dir,
    };
    while !stop.load(Ordering::SeqCst) {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let pods: Vec<Arc<Pod>> = store.state();
        agent.sync(&pods).await;
    }
}

struct Agent {
    client: Client,
    dns: Client,
    spec: NodeSpec,
    /// Second octet of this node's addresses.
    block: u32,
    state: Arc<Mutex<State>>,
    dir: PathBuf,
}

fn uid_of(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

impl Agent {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn sync(&self, pods: &[Arc<Pod>]) {
        let present: HashSet<String> = pods.iter().map(|p| uid_of(p)).collect();
        // Processes whose pod is gone from the API server (force-deleted).
        {
            let mut st = self.lock();
            let gone: Vec<String> = st
                .procs
                .keys()
                .filter(|u| !present.contains(*u))
                .cloned()
                .collect();
            for uid in gone {
                if let Some(mut p) = st.procs.remove(&uid) {
                    kill_pod(&mut p.child);
                }
            }
        }
        for pod in pods {
            let uid = uid_of(pod);
            let name = pod.metadata.name.clone().unwrap_or_default();
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                self.terminate(pod, &uid, &ns, &name).await;
                continue;
            }
            let finished = self.lock().finished.contains(&uid);
            if finished || is_terminal(pod) {
                continue;
            }
            let exited = {
                let mut st = self.lock();
                match st.procs.get_mut(&uid) {
                    Some(p) => match p.child.try_wait() {
                        Ok(Some(status)) => Some(status),
                        _ => None,
                    },
                    None => None,
                }
            };
            if let Some(status) = exited {
                self.report_exit(&uid, status).await;
                continue;
            }
            let running = self.lock().procs.contains_key(&uid);
            if !running {
                match self.start(pod).await {
                    Ok(()) => {}
                    Err(NotYet::Wait) => {}
                    Err(NotYet::Waiting(reason, message)) => {
                        let already = self.lock().waiting.get(&uid) == Some(&message);
                        if !already {
                            self.lock().waiting.insert(uid.clone(), message.clone());
                            let c = container_name(pod);
                            self.patch_status(&ns, &name, json!({"status": {"phase": "Pending",
                                "containerStatuses": [{"name": c, "image": image_of(pod), "imageID": "",
                                    "ready": false, "started": false, "restartCount": 0,
                                    "state": {"waiting": {"reason": reason, "message": message}}}]}}))
                                .await;
                        }
                    }
                }
            }
        }
    }

    async fn terminate(&self, pod: &Pod, uid: &str, ns: &str, name: &str) {
        let exited = {
            let mut st = self.lock();
            match st.procs.get_mut(uid) {
                None => None,
                Some(p) => {
                    if p.sigterm_at.is_none() {
                        p.grace = Duration::from_secs(
                            pod.metadata
                                .deletion_grace_period_seconds
                                .unwrap_or(30)
                                .max(0) as u64,
                        );
                        p.sigterm_at = Some(Instant::now());
                        signal(p.child.id(), "TERM");
                    }
                    match p.child.try_wait() {
                        Ok(Some(s)) => Some(Some(s)),
                        _ => {
                            if p.sigterm_at.is_some_and(|t| t.elapsed() >= p.grace) {
                                signal_group(p.child.id(), "KILL");
                            }
                            Some(None)
                        }
                    }
                }
            }
        };
        match exited {
            Some(None) => {} // still stopping
            Some(Some(status)) => {
                self.report_exit(uid, status).await;
                self.remove(uid, ns, name).await;
            }
            None => self.remove(uid, ns, name).await,
        }
    }

    /// Finish a graceful deletion, as a kubelet does once the containers are gone.
    async fn remove(&self, uid: &str, ns: &str, name: &str) {
        if !self.lock().removed.insert(uid.to_string()) {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                eprintln!("node {}: delete {ns}/{name}: {e}", self.spec.name);
                self.lock().removed.remove(uid);
            }
        }
    }

    async fn report_exit(&self, uid: &str, status: std::process::ExitStatus) {
        use std::os::unix::process::ExitStatusExt;
        let Some(p) = self.lock().procs.remove(uid) else {
            return;
        };
        self.lock().finished.insert(uid.to_string());
        // When a container's main process ends, the rest of it goes too.
        signal_group(p.child.id(), "KILL");
        // Container runtimes report a signal as 128 + its number.
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
        let mut message = std::fs::read(&p.message_path)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
            .unwrap_or_default();
        if message.is_empty() && code != 0 && p.fallback_to_logs {
            let log = std::fs::read_to_string(p.dir.join("log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().rev().take(80).collect();
            let tail: Vec<&str> = lines.into_iter().rev().collect();
            let tail = tail.join("\n");
            let start = tail.len().saturating_sub(2048);
            let start = (start..tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(tail.len());
            message = tail[start..].to_string();
        }
        let now = now_rfc3339();
        let mut terminated = json!({"exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": p.started_at, "finishedAt": now,
            "containerID": format!("process://{}", p.child.id())});
        if let Some(sig) = status.signal() {
            terminated["signal"] = json!(sig);
        }
        if !message.is_empty() {
            terminated["message"] = json!(message);
        }
        let patch = json!({"status": {
            "phase": if code == 0 { "Succeeded" } else { "Failed" },
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            ],
            "containerStatuses": [{"name": p.container, "image": "", "imageID": "", "ready": false,
                "started": false, "restartCount": 0, "state": {"terminated": terminated}}],
        }});
        self.patch_status(&p.namespace, &p.name, patch).await;
    }

    async fn patch_status(&self, ns: &str, name: &str, patch: Value) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        if let Err(e) = pods
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            match e {
                kube::Error::Api(s) if s.code == 404 => {}
                e => eprintln!("node {}: status of {ns}/{name}: {e}", self.spec.name),
            }
        }
    }

    fn pod_ip(&self, uid: &str) -> String {
        let mut st = self.lock();
        if let Some(ip) = st.ips.get(uid) {
            return ip.clone();
        }
        st.next_ip += 1;
        let n = st.next_ip;
        let ip = format!("127.{}.{}.{}", self.block, 1 + n / 250, 1 + n % 250);
        st.ips.insert(uid.to_string(), ip.clone());
        ip
    }

    async fn start(&self, pod: &Pod) -> Result<(), NotYet> {
        let uid = uid_of(pod);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let spec = pod.spec.as_ref().ok_or(NotYet::Wait)?;
        let c = spec.containers.first().ok_or(NotYet::Wait)?;
        let image_ref = c.image.clone().unwrap_or_default();
        let image = self
            .spec
            .images
            .iter()
            .find(|i| image_ref.contains(&i.matches))
            .ok_or_else(|| {
                NotYet::Waiting(
                    "ErrImagePull",
                    format!("image {image_ref:?} is not known to this node agent"),
                )
            })?;
        let argv: Vec<String> = c
            .command
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(c.args.clone().unwrap_or_default())
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return Err(NotYet::Waiting(
                "CreateContainerError",
                "no command (image entrypoints are not modelled)".into(),
            ));
        };
        let exe = match (&image.sandbox, program.starts_with('/')) {
            (Some(sb), true) => sb.rootfs.join(program.trim_start_matches('/')),
            (Some(sb), false) => sb.rootfs.join("usr/local/bin").join(program),
            (None, true) => map_path(program, &image.paths),
            (None, false) => image.bin_dir.join(program),
        };
        if !exe.is_file() {
            return Err(NotYet::Waiting(
                "CreateContainerError",
                format!("{program}: not found in the image ({})", exe.display()),
            ));
        }
        let pod_dir = self.dir.join(format!("{ns}_{name}"));
        std::fs::create_dir_all(&pod_dir)
            .map_err(|e| NotYet::Waiting("CreateContainerError", e.to_string()))?;
        let mut paths = image.paths.clone();
        for m in c.volume_mounts.iter().flatten() {
            let is_empty_dir = spec
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == m.name && v.empty_dir.is_some());
            if is_empty_dir && m.mount_path != "/dev/shm" {
                let host = pod_dir.join("volumes").join(&m.name);
                let _ = std::fs::create_dir_all(&host);
                // World-writable, as the kubelet makes emptyDirs.
                let _ = std::fs::set_permissions(
                    &host,
                    std::os::unix::fs::PermissionsExt::from_mode(0o777),
                );
                paths.push((m.mount_path.clone(), host));
            }
            let host_path = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .and_then(|v| v.host_path.as_ref());
            if let Some(hp) = host_path {
                paths.push((m.mount_path.clone(), PathBuf::from(&hp.path)));
            }
        }
        let message_path = c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        let host_message = pod_dir.join("termination-log");
        let _ = std::fs::write(&host_message, b"");
        let _ = std::fs::set_permissions(
            &host_message,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        );
        paths.push((message_path, host_message.clone()));

        let ip = self.pod_ip(&uid);
        // The sandbox comes first: its address is published before any
        // container starts, so peers can resolve this pod while it starts.
        let published = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(ip.as_str());
        if !published {
            let host_ip = format!("127.{}.0.1", self.block);
            self.patch_status(
                &ns,
                &name,
                json!({"status": {"hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
                "podIP": ip, "podIPs": [{"ip": ip}]}}),
            )
            .await;
        }
        let own_name = (
            spec.hostname.clone().unwrap_or_else(|| name.clone()),
            spec.subdomain.clone().unwrap_or_default(),
        );
        let mut env: Vec<(String, String)> = self.spec.base_env.clone();
        env.push((
            "HOSTNAME".into(),
            spec.hostname.clone().unwrap_or(name.clone()),
        ));
        // In a sandbox the container's paths are real (bound), not mapped.
        let path_map: &[(String, PathBuf)] = if image.sandbox.is_some() { &[] } else { &paths };
        for e in c.env.iter().flatten() {
            let value = self.env_value(pod, &ip, e).await?;
            if let Some(v) = value {
                env.push((e.name.clone(), map_value(&v, path_map)));
            }
        }
        // Cluster DNS, then the gang's port on this shared host.
        let master_addr_raw = env
            .iter()
            .find(|(k, _)| k == "MASTER_ADDR")
            .map(|(_, v)| v.clone());
        for (_, v) in env.iter_mut() {
            if let Some(resolved) = self.resolve(&ns, v, &own_name, &ip).await? {
                *v = resolved;
            }
        }
        if let Some(addr) = master_addr_raw {
            // The agent's directory is `<cluster dir>/node-<name>`.
            let cluster = self.dir.parent().unwrap_or(&self.dir);
            let port = gang_port(cluster, &ns, &addr);
            for (k, v) in env.iter_mut() {
                if k == "MASTER_PORT" {
                    *v = port.to_string();
                }
            }
        }
        // A pod with several GPUs runs `launch --master-addr A --master-port P`:
        // the same cluster DNS and per-gang port as MASTER_ADDR/MASTER_PORT.
        let mut mapped: Vec<String> = Vec::with_capacity(args.len());
        for (i, a) in args.iter().enumerate() {
            let flag = i.checked_sub(1).map(|j| args[j].as_str());
            let cluster = self.dir.parent().unwrap_or(&self.dir);
            let value = match flag {
                Some("--master-addr") => self
                    .resolve(&ns, a, &own_name, &ip)
                    .await?
                    .unwrap_or_else(|| a.clone()),
                Some("--master-port") => {
                    let addr = args
                        .iter()
                        .position(|x| x == "--master-addr")
                        .and_then(|k| args.get(k + 1))
                        .cloned()
                        .unwrap_or_default();
                    gang_port(cluster, &ns, &addr).to_string()
                }
                // This agent's GPUs are stand-ins (no device exists on
                // these machines): their ranks train on the CPU.
                Some("--device") if self.spec.gpus > 0 && a.starts_with("cuda") => "cpu".into(),
                _ => match a.strip_prefix("0.0.0.0:") {
                    Some(port) => format!("{ip}:{port}"),
                    None => map_value(a, path_map),
                },
            };
            mapped.push(value);
        }
        let args = mapped;
        let log = std::fs::File::create(pod_dir.join("log"))
            .map_err(|e| NotYet::Waiting("CreateContainerError", e.to_string()))?;
        let err = log
            .try_clone()
            .map_err(|e| NotYet::Waiting("CreateContainerError", e.to_string()))?;
        use std::os::unix::process::CommandExt;
        let mut cmd = match &image.sandbox {
            None => {
                let mut cmd = Command::new(&exe);
                cmd.env("HOME", &pod_dir);
                cmd
            }
            Some(sb) => sandboxed(sb, &paths, c.working_dir.as_deref(), program),
        };
        let child = cmd
            .process_group(0)
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(env)
            .current_dir(&pod_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                NotYet::Waiting("CreateContainerError", format!("{}: {e}", exe.display()))
            })?;
        let started_at = now_rfc3339();
        let container = c.name.clone();
        let fallback_to_logs =
            c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        {
            let mut st = self.lock();
            st.waiting.remove(&uid);
            st.procs.insert(
                uid.clone(),
                Proc {
                    name: name.clone(),
                    namespace: ns.clone(),
                    child,
                    container: container.clone(),
                    started_at: started_at.clone(),
                    dir: pod_dir,
                    message_path: host_message,
                    fallback_to_logs,
                    sigterm_at: None,
                    grace: Duration::from_secs(30),
                },
            );
        }
        let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": started_at});
        let host_ip = format!("127.{}.0.1", self.block);
        self.patch_status(&ns, &name, json!({"status": {
            "phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "podIP": ip, "podIPs": [{"ip": ip}], "startTime": started_at,
            "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
            "containerStatuses": [{"name": container, "image": image_ref, "imageID": "", "ready": true,
                "started": true, "restartCount": 0, "containerID": "process://",
                "state": {"running": {"startedAt": started_at}}}],
        }}))
        .await;
        Ok(())
    }

    async fn env_value(
        &self,
        pod: &Pod,
        ip: &str,
        e: &k8s_openapi::api::core::v1::EnvVar,
    ) -> Result<Option<String>, NotYet> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        if let Some(v) = &e.value {
            return Ok(Some(v.clone()));
        }
        let Some(from) = &e.value_from else {
            return Ok(Some(String::new()));
        };
        let config_error = |m: String| NotYet::Waiting("CreateContainerConfigError", m);
        if let Some(r) = &from.secret_key_ref {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            let optional = r.optional.unwrap_or(false);
            return match secrets.get_opt(&r.name).await {
                Ok(Some(s)) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                    Some(b) => Ok(Some(String::from_utf8_lossy(&b.0).into_owned())),
                    None if optional => Ok(None),
                    None => Err(config_error(format!(
                        "couldn't find key {} in Secret {ns}/{}",
                        r.key, r.name
                    ))),
                },
                Ok(None) if optional => Ok(None),
                Ok(None) => Err(config_error(format!("secret \"{}\" not found", r.name))),
                Err(err) => Err(config_error(format!("secret \"{}\": {err}", r.name))),
            };
        }
        if let Some(r) = &from.config_map_key_ref {
            let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
            let optional = r.optional.unwrap_or(false);
            return match cms.get_opt(&r.name).await {
                Ok(Some(cm)) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                    Some(v) => Ok(Some(v.clone())),
                    None if optional => Ok(None),
                    None => Err(config_error(format!(
                        "couldn't find key {} in ConfigMap {ns}/{}",
                        r.key, r.name
                    ))),
                },
                Ok(None) if optional => Ok(None),
                Ok(None) => Err(config_error(format!("configmap \"{}\" not found", r.name))),
                Err(err) => Err(config_error(format!("configmap \"{}\": {err}", r.name))),
            };
        }
        if let Some(f) = &from.field_ref {
            let m = &pod.metadata;
            let value = match f.field_path.as_str() {
                "metadata.name" => m.name.clone(),
                "metadata.namespace" => m.namespace.clone(),
                "metadata.uid" => m.uid.clone(),
                "spec.nodeName" => Some(self.spec.name.clone()),
                "spec.serviceAccountName" => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone()),
                "status.podIP" => Some(ip.to_string()),
                "status.hostIP" => Some(format!("127.{}.0.1", self.block)),
                p => {
                    let label = p
                        .strip_prefix("metadata.labels['")
                        .and_then(|s| s.strip_suffix("']"));
                    let ann = p
                        .strip_prefix("metadata.annotations['")
                        .and_then(|s| s.strip_suffix("']"));
                    match (label, ann) {
                        (Some(k), _) => m.labels.as_ref().and_then(|l| l.get(k).cloned()),
                        (_, Some(k)) => m.annotations.as_ref().and_then(|l| l.get(k).cloned()),
                        _ => {
                            return Err(config_error(format!(
                                "fieldRef {p} is not modelled by the node agent"
                            )))
                        }
                    }
                }
            };
            return Ok(Some(value.unwrap_or_default()));
        }
        Err(config_error(format!(
            "env {}: resourceFieldRef is not modelled by the node agent",
            e.name
        )))
    }

    /// Cluster DNS for `host.subdomain[.ns[.svc[.cluster.local]]]`:
    /// Ok(None) when `value` is no such name, Err(Wait) while the pod has no
    /// address yet.
    async fn resolve(
        &self,
        ns: &str,
        value: &str,
        own: &(String, String),
        own_ip: &str,
    ) -> Result<Option<String>, NotYet> {
        let parts: Vec<&str> = value.split('.').collect();
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if parts.len() < 2 || !parts.iter().all(|p| label(p)) {
            return Ok(None);
        }
        let (host, sub) = (parts[0], parts[1]);
        let target_ns = match &parts[2..] {
            [] => ns,
            [n] | [n, "svc"] | [n, "svc", "cluster", "local"] => n,
            _ => return Ok(None),
        };
        let services: Api<Service> = Api::namespaced(self.dns.clone(), target_ns);
        let is_self = target_ns == ns && host == own.0 && sub == own.1;
        let svc = match services.get_opt(sub).await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(_) => return Err(NotYet::Wait),
        };
        let Some(svc_spec) = svc.spec else {
            return Ok(None);
        };
        if svc_spec.cluster_ip.as_deref() != Some("None") {
            return Ok(None);
        }
        let selector = svc_spec
            .selector
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        if selector.is_empty() {
            return Err(NotYet::Wait);
        }
        let not_ready_too = svc_spec.publish_not_ready_addresses.unwrap_or(false);
        if is_self && not_ready_too {
            return Ok(Some(own_ip.to_string()));
        }
        let pods: Api<Pod> = Api::namespaced(self.dns.clone(), target_ns);
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|_| NotYet::Wait)?;
        for p in list {
            let s = p.spec.as_ref();
            if s.and_then(|s| s.hostname.as_deref()) != Some(host)
                || s.and_then(|s| s.subdomain.as_deref()) != Some(sub)
                || p.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let st = p.status.as_ref();
            let ready = st
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if let Some(ip) = st.and_then(|s| s.pod_ip.clone()) {
                if ready || not_ready_too {
                    return Ok(Some(ip));
                }
            }
        }
        Err(NotYet::Wait)
    }
}

fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn container_name(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// `setpriv ... bwrap ... PROGRAM`: the image's root read-only, private
/// `/proc`, `/dev`, `/dev/shm` and `/mnt`, each (container path, host path)
/// of `mounts` bound read-write, no capabilities, as the image's user on the
/// host as well (the sandbox shares the host's network, like the agent's
/// other pods). The command's own arguments follow.
fn sandboxed(
    sb: &Sandbox,
    mounts: &[(String, PathBuf)],
    working_dir: Option<&str>,
    program: &str,
) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", sb.uid))
        .arg(format!("--regid={}", sb.gid))
        .arg("--clear-groups")
        .arg("bwrap")
        .arg("--ro-bind")
        .arg(&sb.rootfs)
        .arg("/")
        .args(["--proc", "/proc", "--dev", "/dev"])
        .args(["--tmpfs", "/dev/shm", "--tmpfs", "/mnt"]);
    for (container, host) in mounts {
        cmd.arg("--bind").arg(host).arg(container);
    }
    cmd.args(["--unshare-pid", "--unshare-ipc", "--unshare-user"])
        .args(["--die-with-parent", "--cap-drop", "ALL"])
        .args(["--uid", &sb.uid.to_string(), "--gid", &sb.gid.to_string()])
        .args(["--chdir", working_dir.unwrap_or("/tmp")])
        .arg(program);
    cmd
}

/// `path` with the first matching image prefix replaced by its host path.
fn map_path(path: &str, paths: &[(String, PathBuf)]) -> PathBuf {
    for (from, to) in paths {
        if path == from {
            return to.clone();
        }
        if let Some(rest) = path.strip_prefix(&format!("{from}/")) {
            return to.join(rest);
        }
    }
    PathBuf::from(path)
}

/// A value that is an image path (or `--flag=path`) gets the host path.
fn map_value(v: &str, paths: &[(String, PathBuf)]) -> String {
    if let Some((flag, path)) = v.split_once('=') {
        if path.starts_with('/') {
            return format!("{flag}={}", map_path(path, paths).display());
        }
    }
    if v.starts_with('/') {
        return map_path(v, paths).display().to_string();
    }
    v.to_string()
}
