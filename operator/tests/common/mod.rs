//! Shared by the operator's integration tests: the API server double, the
//! operator process, kubectl, and waiting for conditions.

#![allow(dead_code)]

pub mod apiserver;

use apiserver::ApiServer;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `ride-operator` process; killed on drop.
pub struct Operator {
    pub child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Operator {
    /// Start the unmodified operator binary against `kubeconfig`.
    pub fn start(kubeconfig: &Path, identity: &str, extra: &[&str]) -> Self {
        let metrics_port = free_port();
        let log = kubeconfig.with_file_name(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ride-operator"))
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--identity",
                identity,
                "--lease-seconds",
                "3",
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
            log,
        }
    }

    /// GET a path of its HTTP endpoint: (status line, body).
    pub fn http_get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
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

/// Poll `f` until it returns Some, or panic after `secs` with `what` and `context()`.
pub async fn wait_for<T>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run kubectl against the double; (success, stdout + stderr).
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().expect("a directory"))
        .output()
        .expect("kubectl is installed on these machines");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A double with the project's CRD installed and a kubeconfig for it.
pub async fn cluster(dir: &Path) -> (ApiServer, PathBuf) {
    let api = ApiServer::start().await;
    let crd = std::fs::read_to_string(repo().join("crds/ridetrainings.ride.dev.yaml"))
        .expect("crds/ridetrainings.ride.dev.yaml");
    api.install_crd(&crd);
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    (api, kubeconfig)
}

/// Pod resource id in the double.
pub const PODS: &str = "/v1/pods";
/// RideTraining resource id in the double.
pub const RTS: &str = "ride.dev/v1alpha1/ridetrainings";
