//! The CRD file stays in step with the Rust types, carries the validation
//! `kubectl apply` relies on, the examples are valid, and the CPU example
//! trains locally through `ride run-local`.

mod common;

use common::repo;
use ride_operator::crd::RideTraining;

fn crd() -> serde_json::Value {
    serde_norway::from_str(&ride_operator::crd_yaml().unwrap()).unwrap()
}

#[test]
fn crd_file_matches_the_types() {
    let path = repo().join("crds/ridetrainings.ride.dev.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert!(
        on_disk == ride_operator::crd_yaml().unwrap(),
        "{} is out of date: run `ride crd > crds/ridetrainings.ride.dev.yaml`",
        path.display()
    );
}

#[test]
fn crd_has_names_columns_status_and_validation() {
    let c = crd();
    let spec = &c["spec"];
    assert_eq!(spec["names"]["shortNames"], serde_json::json!(["rt"]));
    assert_eq!(spec["scope"], "Namespaced");
    let v = &spec["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert!(v["subresources"]["status"].is_object());
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Phase", "Workers", "Epoch", "Top-1", "Progress", "ETA", "Restarts", "Age"]
    );
    // Conditions merge by type, as metav1.Condition lists do.
    let conditions =
        &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(
        conditions["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
    let s = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        s["required"],
        serde_json::json!(["checkpoint", "image", "trainer", "workers"])
    );
    let workers = &s["properties"]["workers"]["properties"];
    assert_eq!(workers["replicas"]["minimum"], 1.0);
    assert_eq!(workers["gpusPerWorker"]["maximum"], 16.0);
    let rule = &s["properties"]["restartPolicy"]["properties"]["exitCodeRules"]["items"];
    assert_eq!(
        rule["properties"]["action"]["enum"],
        serde_json::json!(["Restart", "RestartExempt", "Fail"])
    );
    let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    assert_eq!(
        status["phase"]["enum"],
        serde_json::json!([
            "Created",
            "Running",
            "Restarting",
            "Suspended",
            "Succeeded",
            "Failed"
        ])
    );
}

#[test]
fn examples_are_valid_and_bad_specs_name_the_field() {
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("examples")).unwrap() {
        let p = e.unwrap().path();
        let rt: RideTraining = serde_norway::from_str(&std::fs::read_to_string(&p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        rt.spec
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        n += 1;
    }
    assert!(n >= 5, "the four GPU examples and the CPU one");
    let text = std::fs::read_to_string(repo().join("examples/ride-cpu.yaml")).unwrap();
    let bad = text.replace("replicas: 2", "replicas: 2\n    minReplicas: 3");
    let rt: RideTraining = serde_norway::from_str(&bad).unwrap();
    assert_eq!(
        rt.spec.validate().unwrap_err().to_string(),
        "spec.workers.minReplicas: must be between 1 and workers.replicas (2)"
    );
    let bad = text.replace("file:///tmp/ride-cpu", "ftp://x");
    let rt: RideTraining = serde_norway::from_str(&bad).unwrap();
    assert!(rt
        .spec
        .validate()
        .unwrap_err()
        .to_string()
        .starts_with("spec.checkpoint.uri"));
    let bad = text.replace("replicas: 2", "replicas: two");
    let e = serde_norway::from_str::<RideTraining>(&bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("replicas") || e.contains("invalid type"), "{e}");
}

#[test]
fn the_cpu_example_trains_locally_with_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ride"))
        .current_dir(repo())
        .args(["run-local", "examples/ride-cpu.yaml", "--output"])
        .arg(&out)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{t}");
    assert!(t.contains("launch: all 2 ranks finished"), "{t}");
    let run = out.join("synthetic_ride_2e/default");
    assert!(run.join("ckpt_epoch_0/manifest.json").exists(), "{t}");
    assert!(run.join("eval.json").exists(), "{t}");
    // The same manifest on the operator (tests/e2e.rs) and on Slurm
    // (tests/slurm.rs) ends with the same table.
    assert!(t.contains("| top-1 overall"), "{t}");
}
