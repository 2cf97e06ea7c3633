//! A local `ride-trainer launch` with 2 ranks, scraped by a real Prometheus
//! (`scripts/prometheus.sh`) with the shipped `scripts/prometheus/local.yml`
//! (only its ports moved to free ones): the chart dashboard's trainer
//! queries return data for `namespace="local"`, `training="local"`, and
//! each rank's endpoint passes `promtool check metrics`.

mod common;

use common::{repo_root, tiny_config, Watched};
use serde_json::Value;
use std::process::{Command, Stdio};

/// Two consecutive free loopback ports (ranks use base + LOCAL_RANK).
fn two_free_ports() -> u16 {
    for _ in 0..50 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports");
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split("\r\n\r\n").nth(1)?.to_string())
}

fn query(prom: &str, expr: &str) -> Result<Vec<Value>, String> {
    let q: String = expr
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http_get(prom, &format!("/api/v1/query?query={q}")).ok_or("no answer")?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{}", v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

#[test]
fn a_local_launch_feeds_the_dashboard_through_the_local_scrape_config() {
    let dir = tempfile::tempdir().unwrap();
    let base = two_free_ports();
    let shipped =
        std::fs::read_to_string(repo_root().join("scripts/prometheus/local.yml")).unwrap();
    let mut config = shipped.replace("scrape_interval: 5s", "scrape_interval: 1s");
    for rank in 0..8u16 {
        config = config.replace(
            &format!("127.0.0.1:{}", 9400 + rank),
            &format!("127.0.0.1:{}", base + rank),
        );
    }
    config = config.replace("127.0.0.1:8080", "127.0.0.1:1");
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let config_path = prom_dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let script = repo_root().join("scripts/prometheus.sh");
    let out = Command::new(&script)
        .arg("start")
        .env("RIDE_PROM_DIR", &prom_dir)
        .env("RIDE_PROM_CONFIG", &config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    struct Stop<'a>(&'a std::path::Path, &'a std::path::Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = Command::new(self.0)
                .arg("stop")
                .env("RIDE_PROM_DIR", self.1)
                .status();
        }
    }
    let _stop = Stop(&script, &prom_dir);
    let url = std::fs::read_to_string(prom_dir.join("url")).unwrap();
    let prom = url.trim().trim_start_matches("http://").to_string();

    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let metrics_addr = format!("127.0.0.1:{base}");
    let out_dir = dir.path().join("out");
    let mut launch = Watched::start(
        &[
            "launch",
            "--nproc-per-node",
            "2",
            "--grace-seconds",
            "5",
            "--",
            "--cfg",
            cfg.to_str().unwrap(),
            "--device",
            "cpu",
            "--output",
            out_dir.to_str().unwrap(),
            "--metrics-addr",
            &metrics_addr,
            "--no-progress",
            "--opts",
            "TRAIN.EPOCHS",
            "200",
        ],
        &[("OMP_NUM_THREADS", "1")],
    );

    // The dashboard's trainer panels (the operator's need a cluster), as
    // Grafana would ask them for this training.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            repo_root().join("charts/ride-operator/dashboards/ride-trainings.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let queries: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(|t| {
                (
                    p["title"].as_str().unwrap().to_string(),
                    t["expr"]
                        .as_str()
                        .unwrap()
                        .replace("$namespace", "local")
                        .replace("$training", "local")
                        .replace("$__rate_interval", "10s"),
                )
            })
        })
        // The operator's panels need a cluster (operator/tests/observability.rs);
        // GPU memory is only exported by ranks on a GPU.
        .filter(|(_, e)| !e.contains("ride_operator_") && !e.contains("ride_gpu_memory_"))
        .collect();
    assert!(queries.len() >= 15, "{queries:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut empty: Vec<String>;
    loop {
        empty = vec![];
        for (title, expr) in &queries {
            match query(&prom, expr) {
                Err(e) => panic!("panel {title:?}: {expr}: {e}"),
                Ok(r) if r.is_empty() => empty.push(format!("{title}: {expr}")),
                Ok(_) => {}
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            launch.child.try_wait().ok().flatten().is_none(),
            "the launch ended early:\n{}",
            launch.text()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "still empty after 300 s:\n{}\n{}",
            empty.join("\n"),
            launch.text()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let ranks = query(&prom, r#"count by (rank) (ride_step{training="local"})"#).unwrap();
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    let ips = query(
        &prom,
        r#"sum(rate(ride_images_trained_total{namespace="local", training="local"}[10s]))"#,
    )
    .unwrap();
    println!(
        "local launch: {} trainer queries with data; throughput {}",
        queries.len(),
        ips[0]["value"][1]
    );

    for rank in 0..2u16 {
        let text = http_get(&format!("127.0.0.1:{}", base + rank), "/metrics").unwrap();
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (scripts/prometheus.sh install)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "rank {rank}: {report}"
        );
    }
    // SIGTERM: the ranks checkpoint and the launcher exits as preempted.
    let _ = Command::new("kill")
        .args(["-TERM", &launch.child.id().to_string()])
        .status();
    let (status, log) = launch.finish();
    assert_eq!(status.code(), Some(75), "{log}");
}
