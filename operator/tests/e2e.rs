//! End to end: the CPU example applied with kubectl to the API server double,
//! reconciled by the real `ride-operator`, its pods run by a node-agent
//! double as local `ride-trainer` processes (CPU, TCP collectives). One
//! worker is killed after the first checkpoint; the gang restarts from it and
//! the training succeeds, with the restart and final accuracy in status.
//!
//! The node agent stands in for the kubelet plus cluster networking: it binds
//! pods to a node, runs the container's command with the image's paths mapped
//! to this checkout (`/opt/ride/configs` → `configs/`, `ride-trainer` → the
//! built binary), resolves `secretKeyRef`s from Secrets in the double, points
//! the rendezvous host at loopback and gives each attempt its own port (pods
//! of a real cluster each have their own IP), reports container states, and
//! on graceful deletion sends SIGTERM, then removes the pod.

mod common;

use common::apiserver::ApiServer;
use common::{cluster, free_port, kubectl, repo, wait_for, Operator, PODS, RTS};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const NS: &str = "default";

fn trainer_bin() -> std::path::PathBuf {
    // The trainer is built into the same target directory as this test.
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ride-operator"));
    exe.with_file_name("ride-trainer")
}

struct Running {
    child: Child,
    terminating: bool,
}

/// The kubelet double: one pass over the pods.
struct NodeAgent {
    procs: HashMap<String, Running>,
    ports: HashMap<String, u16>,
    logs: std::path::PathBuf,
}

fn container_running(api: &ApiServer, name: &str) {
    api.patch(PODS, NS, name, json!({"status": {"phase": "Running", "containerStatuses": [{"name": "trainer",
        "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}}));
}

fn container_exited(api: &ApiServer, name: &str, code: i32) {
    api.patch(PODS, NS, name, json!({"status": {"phase": if code == 0 { "Succeeded" } else { "Failed" },
        "containerStatuses": [{"name": "trainer", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": code}}}]}}));
}

impl NodeAgent {
    fn sync(&mut self, api: &ApiServer) {
        for pod in api.list(PODS, NS) {
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if pod["metadata"]["deletionTimestamp"].is_string() {
                match self.procs.get_mut(&name) {
                    Some(r) if !r.terminating => {
                        let _ = Command::new("kill")
                            .args(["-TERM", &r.child.id().to_string()])
                            .status();
                        r.terminating = true;
                    }
                    Some(r) => {
                        if let Ok(Some(_)) = r.child.try_wait() {
                            self.procs.remove(&name);
                            api.delete(PODS, NS, &name, Some(0));
                        }
                    }
                    None => {
                        api.delete(PODS, NS, &name, Some(0));
                    }
                }
                continue;
            }
            if pod["spec"]["nodeName"].is_null() {
                api.patch(
                    PODS,
                    NS,
                    &name,
                    json!({"spec": {"nodeName": "node-a"}, "status": {"phase": "Pending"}}),
                );
                self.start(api, &pod);
                continue;
            }
            if let Some(r) = self.procs.get_mut(&name) {
                if let Ok(Some(status)) = r.child.try_wait() {
                    use std::os::unix::process::ExitStatusExt;
                    // Container runtimes report a signal as 128 + its number.
                    let code = status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
                    container_exited(api, &name, code);
                    self.procs.remove(&name);
                }
            }
        }
    }

    fn start(&mut self, api: &ApiServer, pod: &Value) {
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let c = &pod["spec"]["containers"][0];
        let training = pod["metadata"]["labels"]["ride.dev/training"]
            .as_str()
            .unwrap_or_default();
        let attempt = pod["metadata"]["labels"]["ride.dev/attempt"]
            .as_str()
            .unwrap_or_default();
        let port = *self
            .ports
            .entry(format!("{training}-{attempt}"))
            .or_insert_with(free_port);
        let configs = repo().join("configs");
        let args: Vec<String> = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|a| a.replace("/opt/ride/configs", configs.to_str().unwrap_or_default()))
            .map(|a| {
                if a.starts_with("0.0.0.0:") {
                    "127.0.0.1:0".to_string()
                } else {
                    a
                }
            })
            .collect();
        let mut cmd = Command::new(trainer_bin());
        cmd.args(&args);
        for e in c["env"].as_array().into_iter().flatten() {
            let key = e["name"].as_str().unwrap_or_default();
            let value = if let Some(v) = e["value"].as_str() {
                Some(v.to_string())
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                let secret = api.get("/v1/secrets", NS, r["name"].as_str().unwrap_or_default());
                secret.and_then(|s| {
                    s["stringData"][r["key"].as_str().unwrap_or_default()]
                        .as_str()
                        .map(String::from)
                })
            } else {
                None
            };
            if let Some(v) = value {
                cmd.env(key, v);
            }
        }
        cmd.env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", "1")
            .env("RIDE_RENDEZVOUS_TIMEOUT", "120");
        let log = std::fs::File::create(self.logs.join(format!("{name}.log"))).expect("pod log");
        let child = cmd
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start ride-trainer");
        self.procs.insert(
            name.clone(),
            Running {
                child,
                terminating: false,
            },
        );
        container_running(api, &name);
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        for r in self.procs.values_mut() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

fn find_latest(dir: &std::path::Path) -> Option<std::path::PathBuf> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_example_survives_a_killed_worker_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (api, kubeconfig) = cluster(dir.path()).await;
    let api = Arc::new(api);
    let op = Operator::start(&kubeconfig, "op-e2e", &["--no-leader-election"]);
    let ckpt = dir.path().join("ckpt");
    let manifest = dir.path().join("ride-cpu.yaml");
    let text = std::fs::read_to_string(repo().join("examples/ride-cpu.yaml"))
        .unwrap()
        .replace(
            "uri: file:///tmp/ride-cpu",
            &format!("uri: file://{}", ckpt.display()),
        )
        .replace("TRAIN.EPOCHS: \"1\"", "TRAIN.EPOCHS: \"2\"");
    std::fs::write(&manifest, text).unwrap();

    let agent = Arc::new(Mutex::new(NodeAgent {
        procs: HashMap::new(),
        ports: HashMap::new(),
        logs: dir.path().to_path_buf(),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let agent_task = {
        let (agent, api, stop) = (Arc::clone(&agent), Arc::clone(&api), Arc::clone(&stop));
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::SeqCst) {
                agent.lock().unwrap_or_else(|e| e.into_inner()).sync(&api);
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        })
    };

    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "kubectl apply: {out}");
    let logs = dir.path().to_path_buf();
    let ctx = || {
        let mut s = format!(
            "status: {}\noperator:\n{}\n",
            api.get(RTS, NS, "ride-cpu")
                .map(|o| o["status"].clone())
                .unwrap_or_default(),
            op.log_text()
        );
        for e in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "log")
                && e.file_name().to_string_lossy().starts_with("ride-cpu")
            {
                s += &format!(
                    "--- {}\n{}\n",
                    e.file_name().to_string_lossy(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                );
            }
        }
        s
    };

    // Wait for the first checkpoint, then kill rank 1 of attempt 0.
    wait_for(600, "the first checkpoint", || find_latest(&ckpt), ctx).await;
    {
        let mut a = agent.lock().unwrap_or_else(|e| e.into_inner());
        let r = a
            .procs
            .get_mut("ride-cpu-0-1")
            .expect("rank 1 of attempt 0 is running");
        r.child.kill().expect("kill rank 1");
    }
    wait_for(
        120,
        "a gang restart",
        || {
            let st = api.get(RTS, NS, "ride-cpu")?["status"].clone();
            (st["restarts"] == 1 && st["attempt"] == 1).then_some(())
        },
        ctx,
    )
    .await;
    let st = wait_for(
        900,
        "Succeeded",
        || {
            let st = api.get(RTS, NS, "ride-cpu")?["status"].clone();
            match st["phase"].as_str() {
                Some("Succeeded") => Some(st),
                Some("Failed") => panic!("training failed: {st}\n{}", ctx()),
                _ => None,
            }
        },
        ctx,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let _ = agent_task.await;

    assert_eq!(st["restarts"], 1, "{st}");
    assert!(
        st["latestEval"]["overall"].as_f64().is_some(),
        "final accuracy in status: {st}"
    );
    assert_eq!(st["lastCheckpoint"]["epoch"], 1, "{st}");
    // The new attempt resumed rather than starting over.
    let resumed = std::fs::read_to_string(dir.path().join("ride-cpu-1-0.log")).unwrap_or_default();
    assert!(resumed.contains("resumed from"), "{resumed}");
    let (ok, out) = kubectl(&kubeconfig, &["get", "rt", "ride-cpu"]);
    assert!(ok && out.contains("Succeeded"), "{out}");
    println!("{out}");
}
