//! What users watch, proven by a real Prometheus (Debian's package, started
//! by `scripts/prometheus.sh`): it scrapes every rank of a training with two
//! ranks per worker (node agents with stand-in GPUs, ranks on the CPU)
//! on the real control plane, relabelled as the chart's PodMonitor asks of
//! the Prometheus Operator, and the operator (as the chart's ServiceMonitor does, honouring
//! its labels). Then every query of the chart's Grafana dashboard must
//! return data for that training, both endpoints must pass
//! `promtool check metrics`, and deleting the training must remove its
//! per-training operator series.
//!
//! Debian builds Prometheus without Kubernetes service discovery, so the
//! test stands in for it: it lists the pods from the API server every
//! second and writes them to a `file_sd` file with the same
//! `__meta_kubernetes_pod_*` labels Kubernetes SD gives; Prometheus's own
//! relabelling does the rest.
//!
//! Set `RIDE_DASHBOARD_PNG=FILE` to also render the dashboard from this
//! run's data with `scripts/dashboard-png.py` (needs matplotlib).

mod common;

use common::cluster::Cluster;
use common::{eventually, pods_of, repo, status, wait_succeeded, Operator};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const NS: &str = "default";
const TRAINING: &str = "ride-cpu";
/// What Grafana makes of `$__rate_interval` at a 1 s scrape interval, with margin.
const RATE_INTERVAL: &str = "10s";
/// Panels empty by design in this test, with the reason.
const EMPTY_BY_DESIGN: [(&str, &str); 1] = [(
    "GPU memory per rank (CUDA caching allocator)",
    "the workers train on CPU; only ranks on a GPU export ride_gpu_memory_*",
)];

/// A Prometheus started by `scripts/prometheus.sh`; stopped on drop.
struct Prometheus {
    dir: PathBuf,
    url: String,
}

impl Prometheus {
    fn start(dir: &Path, config: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let out = Command::new(repo().join("scripts/prometheus.sh"))
            .arg("start")
            .env("RIDE_PROM_DIR", dir)
            .env("RIDE_PROM_CONFIG", &config_path)
            .output()
            .expect("scripts/prometheus.sh");
        assert!(
            out.status.success(),
            "scripts/prometheus.sh start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let url = std::fs::read_to_string(dir.join("url"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            dir: dir.to_path_buf(),
            url,
        }
    }

    /// GET `path_and_query` of its HTTP API as JSON.
    fn get(&self, path_and_query: &str) -> Value {
        use std::io::{Read, Write};
        let host = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).expect("connect to prometheus");
        write!(
            s,
            "GET {path_and_query} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"))
    }

    /// An instant query now: Ok(result vector) or Err(the error text).
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let v = self.get(&format!("/api/v1/query?query={}", percent_encode(expr)));
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/prometheus.sh"))
            .arg("stop")
            .env("RIDE_PROM_DIR", &self.dir)
            .status();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The scrape configuration: trainer pods found through the API server and
/// relabelled as the Prometheus Operator does for the chart's PodMonitor
/// (drop finished pods, keep the `metrics` port, namespace/pod/container
/// labels, then the PodMonitor's relabelings to `training` and `rank`);
/// the operator scraped with `honor_labels` as its ServiceMonitor says:
/// over TLS with a ServiceAccount token allowed to get /metrics.
fn scrape_config(pods_file: &Path, operator: &str, token_file: &Path) -> String {
    format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ride-trainers
    file_sd_configs:
      - files: ["{pods_file}"]
        refresh_interval: 1s
    relabel_configs:
      - {{action: drop, source_labels: [__meta_kubernetes_pod_phase], regex: (Failed|Succeeded)}}
      - {{action: keep, source_labels: [__meta_kubernetes_pod_labelpresent_ride_dev_training], regex: "true"}}
      - {{action: keep, source_labels: [__meta_kubernetes_pod_container_port_name], regex: "metrics(-[0-9]+)?"}}
      - {{source_labels: [__meta_kubernetes_namespace], target_label: namespace}}
      - {{source_labels: [__meta_kubernetes_pod_name], target_label: pod}}
      - {{source_labels: [__meta_kubernetes_pod_container_name], target_label: container}}
      - {{source_labels: [__meta_kubernetes_pod_label_ride_dev_training], target_label: training}}
      - {{source_labels: [__meta_kubernetes_pod_label_ride_dev_rank], target_label: rank}}
  - job_name: ride-operator
    honor_labels: true
    scheme: https
    authorization: {{credentials_file: "{token_file}"}}
    tls_config: {{insecure_skip_verify: true}}
    static_configs:
      - targets: ["{operator}"]
"#,
        pods_file = pods_file.display(),
        token_file = token_file.display()
    )
}

/// Prometheus's Kubernetes pod discovery, as far as this test needs it: one
/// target per named container port of every pod with an IP, with the
/// `__meta_kubernetes_*` labels that role gives.
fn pod_targets(pods: &[k8s_openapi::api::core::v1::Pod]) -> Value {
    let sanitize = |k: &str| -> String {
        k.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let mut groups = vec![];
    for pod in pods {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let mut base = serde_json::Map::new();
        base.insert(
            "__meta_kubernetes_namespace".into(),
            pod.metadata.namespace.clone().unwrap_or_default().into(),
        );
        base.insert(
            "__meta_kubernetes_pod_name".into(),
            pod.metadata.name.clone().unwrap_or_default().into(),
        );
        base.insert("__meta_kubernetes_pod_phase".into(), phase.into());
        for (k, v) in pod.metadata.labels.iter().flatten() {
            let k = sanitize(k);
            base.insert(format!("__meta_kubernetes_pod_label_{k}"), v.clone().into());
            base.insert(
                format!("__meta_kubernetes_pod_labelpresent_{k}"),
                "true".into(),
            );
        }
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            for port in c.ports.iter().flatten() {
                let mut labels = base.clone();
                labels.insert(
                    "__meta_kubernetes_pod_container_name".into(),
                    c.name.clone().into(),
                );
                labels.insert(
                    "__meta_kubernetes_pod_container_port_name".into(),
                    port.name.clone().unwrap_or_default().into(),
                );
                groups.push(serde_json::json!({
                    "targets": [format!("{ip}:{}", port.container_port)],
                    "labels": labels,
                }));
            }
        }
    }
    Value::Array(groups)
}

/// Keep `file` in step with the pods of `ns` until the task is aborted.
fn discover_pods(client: kube::Client, ns: &str, file: PathBuf) -> tokio::task::JoinHandle<()> {
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, ns);
    tokio::spawn(async move {
        loop {
            if let Ok(list) = api.list(&Default::default()).await {
                let tmp = file.with_extension("tmp");
                let text = pod_targets(&list.items).to_string();
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, &file);
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
}

/// Every (panel title, expression) of the chart's dashboards, with the
/// template variables substituted as Grafana would for this training.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = vec![];
    let dir = repo().join("charts/ride-operator/dashboards");
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let title = p["title"].as_str().unwrap();
                if EMPTY_BY_DESIGN.iter().any(|(t, _)| *t == title) {
                    continue;
                }
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$namespace", NS)
                    .replace("$training", TRAINING)
                    .replace("$__rate_interval", RATE_INTERVAL);
                assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
                out.push((p["title"].as_str().unwrap().to_string(), expr));
            }
        }
    }
    out
}

/// `promtool check metrics` on an exposition: (passed, its output).
fn promtool_check_metrics(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/prometheus.sh install)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The body of a GET.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let out = common::http_get(addr, path)?;
    Some(out.split("\r\n\r\n").nth(1)?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let cluster = Cluster::start();
    cluster.install_crd();
    let op = Operator::start(&cluster.kubeconfig, "op-obs", &[]);
    let client = cluster.client().await;
    // Two ranks per worker, as on a node with GPUs: each agent advertises 2
    // stand-in GPUs (their ranks train on the CPU), each worker takes 2, so
    // every pod serves `metrics` (9400) and `metrics-1` (9401).
    let mut agents = Vec::new();
    for n in ["node-a", "node-b"] {
        let mut spec = common::node_agent::NodeSpec::new(n, vec![common::cluster::trainer_image()]);
        spec.gpus = 2;
        agents.push(cluster.node(spec).await);
    }
    // Prometheus scrapes the operator's TLS endpoint as the chart's
    // ServiceMonitor does, with a token bound to metrics-reader.
    let operator_addr = format!("127.0.0.1:{}", op.secure_metrics_port);
    // The same registry, read directly (the test's operator also serves it
    // on its plain port).
    let plain_operator = format!("127.0.0.1:{}", op.metrics_port);
    let token_file = cluster.dir.join("prometheus-token");
    std::fs::write(
        &token_file,
        common::service_account_token(&cluster, "prometheus", true),
    )
    .unwrap();
    let pods_file = cluster.dir.join("pods.json");
    std::fs::write(&pods_file, "[]").unwrap();
    let discovery = discover_pods(client.clone(), NS, pods_file.clone());
    let prom = Prometheus::start(
        &cluster.dir.join("prometheus"),
        &scrape_config(&pods_file, &operator_addr, &token_file),
    );
    println!("prometheus: {}", prom.url);

    let png = std::env::var_os("RIDE_DASHBOARD_PNG").map(PathBuf::from);
    // Long enough that the queries run while the gang still trains; longer
    // for a picture of a whole run.
    let epochs = if png.is_some() { 30 } else { 8 };
    let ckpt = cluster.dir.join("ckpt");
    let manifest = cluster.dir.join("ride-cpu.yaml");
    let text = std::fs::read_to_string(repo().join("examples/ride-cpu.yaml"))
        .unwrap()
        .replace(
            "uri: file:///tmp/ride-cpu",
            &format!("uri: file://{}", ckpt.display()),
        )
        .replace(
            "    replicas: 2\n",
            "    replicas: 2\n    gpusPerWorker: 2\n",
        )
        // Long enough that the queries run while the gang still trains.
        .replace(
            "TRAIN.EPOCHS: \"1\"",
            &format!("TRAIN.EPOCHS: \"{epochs}\""),
        );
    std::fs::write(&manifest, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "kubectl apply: {out}");
    let started = std::time::Instant::now();
    let c = &client;
    let ctx = || {
        let (_, rt) = cluster.kubectl(&["get", "rt", TRAINING, "-o", "yaml"]);
        let targets = prom.get("/api/v1/targets");
        let mut s = format!(
            "{rt}\ntargets: {targets}\noperator:\n{}\nprometheus:\n{}\n",
            op.log_text(),
            prom.log()
        );
        for a in &agents {
            s += &a.logs();
        }
        s
    };

    // Both ranks of both trainer pods discovered through the API server,
    // and the operator.
    eventually(
        300,
        "all four trainer targets and the operator up",
        || async {
            let up = prom.query("up").ok()?;
            let trainers = up
                .iter()
                .filter(|s| s["metric"]["training"] == TRAINING && s["value"][1] == "1")
                .count();
            let operator = up
                .iter()
                .any(|s| s["metric"]["job"] == "ride-operator" && s["value"][1] == "1");
            (trainers == 4 && operator).then_some(())
        },
        ctx,
    )
    .await;

    // Every panel has data once an evaluation and a checkpoint happened and
    // steps continue after them (rates need samples in their window).
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    let results: BTreeMap<usize, usize> = eventually(
        900,
        "every dashboard query returning data",
        || async {
            let st = status(c, NS, TRAINING).await;
            assert_ne!(st["phase"], "Failed", "{st}");
            assert_ne!(
                st["phase"], "Succeeded",
                "the training ended before every panel had data"
            );
            let mut counts = BTreeMap::new();
            for (i, (title, expr)) in queries.iter().enumerate() {
                match prom.query(expr) {
                    Err(e) => panic!("panel {title:?}: query {expr} failed: {e}"),
                    Ok(r) if r.is_empty() => return None,
                    Ok(r) => {
                        counts.insert(i, r.len());
                    }
                }
            }
            Some(counts)
        },
        || {
            let empty: Vec<String> = queries
                .iter()
                .filter(|(_, e)| prom.query(e).map(|r| r.is_empty()).unwrap_or(true))
                .map(|(t, e)| format!("{t}: {e}"))
                .collect();
            format!("empty now:\n{}\n{}", empty.join("\n"), ctx())
        },
    )
    .await;
    println!(
        "all {} dashboard queries returned data {:.0}s after kubectl apply:",
        queries.len(),
        started.elapsed().as_secs_f64()
    );
    for (title, why) in EMPTY_BY_DESIGN {
        println!("not queried: {title}: {why}");
    }
    println!("| panel | query | series |\n|---|---|---|");
    for (i, (title, expr)) in queries.iter().enumerate() {
        println!("| {title} | `{expr}` | {} |", results[&i]);
    }
    // Exact selection: the job's series are this training's two ranks.
    let ranks = prom
        .query(&format!(
            r#"count by (rank) (ride_step{{namespace="{NS}", training="{TRAINING}"}})"#
        ))
        .unwrap();
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    // And every rank of them: two per worker, one per metrics port.
    let series = prom
        .query(&format!(
            r#"count(ride_step{{namespace="{NS}", training="{TRAINING}"}})"#
        ))
        .unwrap();
    assert_eq!(
        series.first().map(|s| s["value"][1].clone()),
        Some(Value::from("4")),
        "{series:?}"
    );

    // Both endpoints follow Prometheus's naming conventions.
    let pods = pods_of(c, NS, TRAINING).await;
    let pod_ip = pods
        .iter()
        .find(|p| p.metadata.labels.as_ref().unwrap()["ride.dev/rank"] == "0")
        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
        .expect("rank 0's pod IP");
    for (what, addr) in [
        ("trainer rank 0", format!("{pod_ip}:9400")),
        ("operator", plain_operator.clone()),
    ] {
        let text = http_get(&addr, "/metrics").unwrap_or_else(|| panic!("{what} /metrics"));
        let (ok, report) = promtool_check_metrics(&text);
        println!("promtool check metrics ({what}): {}", report.trim());
        assert!(ok && report.trim().is_empty(), "{what}: {report}");
    }

    if let Some(png) = png {
        wait_succeeded(c, NS, TRAINING, 1800, ctx).await;
        let minutes = (started.elapsed().as_secs() / 60 + 1).to_string();
        // The project's virtual environment, where the user installed matplotlib.
        let python = std::env::var("RIDE_VENV")
            .map(|v| format!("{v}/bin/python"))
            .unwrap_or_else(|_| "python3".into());
        let out = Command::new(python)
            .arg(repo().join("scripts/dashboard-png.py"))
            .args(["--prometheus", &prom.url, "--namespace", NS])
            .args([
                "--training",
                TRAINING,
                "--minutes",
                &minutes,
                "--step",
                "2s",
            ])
            .arg("--rate-interval")
            .arg(RATE_INTERVAL)
            .arg("--out")
            .arg(&png)
            .output()
            .expect("scripts/dashboard-png.py");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Deleting the training removes its per-training series.
    let (ok, out) = cluster.kubectl(&["delete", "rt", TRAINING, "--wait=false"]);
    assert!(ok, "{out}");
    eventually(
        60,
        "the deleted training's series gone from the operator",
        || async {
            let text = http_get(&plain_operator, "/metrics")?;
            (!text.contains(&format!("name=\"{TRAINING}\""))).then_some(())
        },
        ctx,
    )
    .await;
    discovery.abort();
}
