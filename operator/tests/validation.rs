//! The real API server (with the project's CRD) rejects invalid
//! RideTrainings naming the field, and `ride check` gives the same verdict
//! on every manifest: schema ranges and lengths, the checkpoint URI
//! pattern, unknown fields, types, object names, the CEL rule
//! `minReplicas ≤ replicas`, and multi-document files.

mod common;

use common::cluster::Cluster;
use common::repo;
use std::path::Path;
use std::process::Command;

/// `ride check FILE`: (accepted, output).
fn ride_check(file: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ride"))
        .arg("check")
        .arg(file)
        .output()
        .expect("run ride check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_and_ride_check_agree_on_every_manifest() {
    let cluster = Cluster::start();
    cluster.install_crd();
    let good = std::fs::read_to_string(repo().join("examples/ride-cpu.yaml")).unwrap();
    let file = cluster.dir.join("manifest.yaml");

    // (replace, with, the field both must name)
    let invalid = [
        ("replicas: 2", "replicas: 0", "spec.workers.replicas"),
        ("replicas: 2", "replicas: 5000", "spec.workers.replicas"),
        ("budget: 2", "budget: -1", "spec.restartPolicy.budget"),
        (
            "backoffSeconds: 1",
            "backoffSeconds: -5",
            "spec.restartPolicy.backoffSeconds",
        ),
        (
            "image: ghcr.io/ride-on-cluster/ride-trainer:0.1.0",
            "image: \"\"",
            "spec.image",
        ),
        ("uri: file://", "uri: ftp://", "spec.checkpoint.uri"),
        ("uri: file://", "url: file://", "spec.checkpoint.uri"),
        ("replicas: 2", "replicas: two", "spec.workers.replicas"),
        (
            "replicas: 2",
            "replicas: 2\n    minReplicas: 3",
            "spec.workers.minReplicas: Invalid value: must not exceed workers.replicas",
        ),
        (
            "replicas: 2",
            "replicas: 2\n    gpusPerWorker: 17",
            "spec.workers.gpusPerWorker",
        ),
        ("name: ride-cpu", "name: Ride_CPU", "metadata.name"),
        (
            "  restartPolicy:",
            "  restartPolicy:\n    exitCodeRules: [{codes: [2], action: Explode}]",
            "spec.restartPolicy.exitCodeRules[0].action",
        ),
    ];
    let long_name = format!("name: {}", "r".repeat(54));
    let invalid: Vec<(&str, &str, &str)> = invalid
        .into_iter()
        .chain([("name: ride-cpu", long_name.as_str(), "metadata.name")])
        .collect();
    let mut table = Vec::new();
    for (from, to, field) in invalid {
        assert!(good.contains(from), "{from}");
        std::fs::write(&file, good.replacen(from, to, 1)).unwrap();
        let (server_ok, server) = cluster.kubectl(&["apply", "-f", file.to_str().unwrap()]);
        let (check_ok, check) = ride_check(&file);
        assert!(!server_ok, "the API server accepted {to:?}: {server}");
        assert!(!check_ok, "ride check accepted {to:?}: {check}");
        // The unknown field: the server names the field it does not know.
        let server_field = if to.starts_with("url:") {
            "spec.checkpoint.url"
        } else {
            field
        };
        assert!(
            server.contains(server_field),
            "the API server's message for {to:?} names {server_field}: {server}"
        );
        assert!(
            check.contains(server_field),
            "ride check's message for {to:?} names {server_field}: {check}"
        );
        table.push(format!(
            "{to:<50} | {}",
            server.lines().next().unwrap_or_default()
        ));
        let (_, listed) = cluster.kubectl(&["get", "rt", "-o", "name"]);
        assert!(listed.trim().is_empty(), "nothing was stored: {listed}");
    }
    println!("{}", table.join("\n"));

    // Valid: every example, and a two-document file (kubectl applies both).
    for entry in std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        let (server_ok, server) =
            cluster.kubectl(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
        let (check_ok, check) = ride_check(&path);
        assert!(server_ok, "{}: {server}", path.display());
        assert!(check_ok, "{}: {check}", path.display());
    }
    let two = format!(
        "{good}\n---\n{}",
        good.replace("name: ride-cpu", "name: second")
    );
    std::fs::write(&file, &two).unwrap();
    let (server_ok, server) = cluster.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    let (check_ok, check) = ride_check(&file);
    assert!(
        server_ok && server.contains("ridetraining.ride.dev/second created"),
        "{server}"
    );
    assert!(check_ok && check.contains("second: ok"), "{check}");

    // Defaults come from the schema on the server: the stored object has them.
    let (ok, out) = cluster.kubectl(&[
        "get",
        "rt",
        "second",
        "-o",
        "jsonpath={.spec.workers.elasticTimeoutSeconds} {.spec.runPolicy.suspend}",
    ]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "300 false");
}
