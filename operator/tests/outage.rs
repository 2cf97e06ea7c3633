//! The API server goes quiet for the operator: a proxy between the two
//! stops forwarding (connections stay open and silent, as behind a dead
//! load balancer or a half-open TCP connection). The leader's requests time
//! out instead of hanging, it loses the Lease, stops acting and stands by
//! in the same process; when the API server answers again it leads again
//! and manages the training it left running.

mod common;

use common::{
    describe, eventually, example_with_checkpoint, metric_value, pods_of, setup, status, NS,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to `upstream` that, while `frozen`, passes no bytes either
/// way and leaves every connection open.
struct FreezingProxy {
    addr: std::net::SocketAddr,
    frozen: Arc<AtomicBool>,
}

impl FreezingProxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&frozen);
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let (f, upstream) = (Arc::clone(&f), upstream.clone());
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::spawn(pipe(dr, uw, Arc::clone(&f)));
                    pipe(ur, dw, f).await;
                });
            }
        });
        FreezingProxy { addr, frozen }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }
}

/// Copy `from` to `to`, holding bytes back while `frozen`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_api_server_makes_the_leader_stand_by_and_lead_again_without_a_restart() {
    let (cluster, client, _agents) = setup(&["node-a"]).await;
    let c = &client;
    let upstream = cluster.api.trim_start_matches("https://").to_string();
    let proxy = FreezingProxy::start(upstream.clone()).await;
    let kubeconfig = cluster.dir.join("via-proxy.kubeconfig");
    let text = std::fs::read_to_string(&cluster.kubeconfig)
        .unwrap()
        .replace(&upstream, &proxy.addr.to_string());
    assert!(text.contains(&proxy.addr.to_string()), "{text}");
    std::fs::write(&kubeconfig, text).unwrap();
    // Leader election on (3 s Lease, 2 s renew deadline, 1 s tries).
    let mut op = common::Operator::start(&kubeconfig, "op-outage", &[]);
    let manifest = example_with_checkpoint(&cluster.dir, "outage");
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let before = eventually(
        60,
        "outage Running",
        || async move {
            let pods = pods_of(c, NS, "outage").await;
            (status(c, NS, "outage").await["phase"] == "Running" && pods.len() == 2).then_some(pods)
        },
        || describe(&cluster, &op, "outage"),
    )
    .await;

    // 20 s of silence: the leader notices within its renew deadline and
    // stops acting, and the process stays up.
    proxy.freeze(true);
    let silent = std::time::Instant::now();
    eventually(
        30,
        "the leader standing by",
        || async { op.log_text().contains("lost leadership").then_some(()) },
        || describe(&cluster, &op, "outage"),
    )
    .await;
    let text = op.log_text();
    assert!(text.contains("standing by to campaign again"), "{text}");
    while silent.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(
            op.child.try_wait().unwrap().is_none(),
            "the operator exited:\n{}",
            op.log_text()
        );
    }
    proxy.freeze(false);

    // It leads again in the same process and manages the training: the
    // pods it left are still the gang, and losing one restarts the gang.
    eventually(
        60,
        "leading again",
        || async { (op.log_text().matches("leading").count() >= 2).then_some(()) },
        || describe(&cluster, &op, "outage"),
    )
    .await;
    assert!(op.child.try_wait().unwrap().is_none(), "{}", op.log_text());
    let metrics = op.http_get("/metrics").unwrap_or_default();
    assert_eq!(
        metric_value(&metrics, "ride_operator_leadership_lost_total"),
        Some(1.0),
        "{metrics}"
    );
    let st = status(c, NS, "outage").await;
    assert_eq!(st["phase"], "Running", "{st}");
    let names = |pods: &[k8s_openapi::api::core::v1::Pod]| -> Vec<String> {
        let mut n: Vec<String> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&pods_of(c, NS, "outage").await), names(&before));
    let (ok, out) = cluster.kubectl(&["delete", "pod", "outage-0-1", "--wait=false"]);
    assert!(ok, "{out}");
    eventually(
        90,
        "the gang restarted after the outage",
        || async move {
            let st = status(c, NS, "outage").await;
            (st["attempt"].as_i64().unwrap_or(0) >= 1).then_some(())
        },
        || describe(&cluster, &op, "outage"),
    )
    .await;
    assert!(op.child.try_wait().unwrap().is_none(), "{}", op.log_text());
    op.terminate();
}
