//! The container images `scripts/images.sh build` made (test.sh builds them
//! before the tests): their configuration (user, entrypoint, volumes,
//! labels) is what the pods and docs rely on, they hold this build's
//! binaries, and `scripts/images.sh smoke` runs them without a daemon:
//! unpacked with umoci, in bubblewrap as the image's user on a read-only
//! root, including a one-epoch CPU training that checkpoints to a volume.
//! Then the CPU example trains on the real control plane with node agents
//! that run the unpacked trainer image itself (bubblewrap, uid 1000,
//! read-only root) instead of the host's binary, checkpointing to a
//! hostPath volume.

mod common;

use common::cluster::Cluster;
use common::node_agent::{Image, NodeSpec, Sandbox};
use common::{repo, wait_succeeded, Operator};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn images_dir() -> PathBuf {
    std::env::var_os("RIDE_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("RIDE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ride")
                });
            cache.join("images")
        })
}

fn script(arg: &str) -> String {
    let out = Command::new(repo().join("scripts/images.sh"))
        .arg(arg)
        .output()
        .expect("scripts/images.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/images.sh {arg}:\n{text}");
    text
}

/// The image config of NAME at the full tag (`skopeo inspect --config`).
fn config(name: &str, full_tag: &str) -> Value {
    let layout = images_dir().join(format!("{name}.oci"));
    assert!(
        layout.exists(),
        "{} missing: run scripts/images.sh build",
        layout.display()
    );
    let out = Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:{full_tag}", layout.display()))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "{name}:{full_tag}: {} (run scripts/images.sh build)",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// As `binaries_hash` in scripts/images.sh: the files, then the script.
fn sha256_of(paths: &[PathBuf]) -> String {
    let mut cat = Command::new("sh");
    cat.arg("-c").arg("cat \"$@\" | sha256sum").arg("sh");
    cat.args(paths);
    cat.arg(repo().join("scripts/images.sh"));
    let out = cat.output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

fn rootfs_dir() -> PathBuf {
    std::env::var_os("RIDE_IMAGE_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/ride-images/rootfs"))
}

/// Let the image's user reach `dir` (test directories are created 0700).
fn open_up(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Some(dir);
    while let Some(p) = d {
        if p == std::path::Path::new("/tmp") || p == std::path::Path::new("/") {
            break;
        }
        if let Ok(meta) = std::fs::metadata(p) {
            let mode = meta.permissions().mode() | 0o005;
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        }
        d = p.parent();
    }
}

// One test: the end-to-end part runs the root filesystem the smoke run unpacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_hold_this_build_run_as_non_root_and_train_on_the_control_plane() {
    let tags = script("tag");
    let (tag, full_tag) = tags.trim().split_once(' ').unwrap();
    assert_eq!(tag, env!("CARGO_PKG_VERSION"));
    let bin = common::trainer_bin().parent().unwrap().to_path_buf();
    for (name, user, binaries, entrypoint) in [
        (
            "ride-operator",
            "65532:65532",
            vec![bin.join("ride-operator"), bin.join("ride")],
            "/usr/local/bin/ride-operator",
        ),
        (
            "ride-trainer",
            "1000:1000",
            {
                let mut files = vec![bin.join("ride-trainer")];
                let mut configs: Vec<PathBuf> = std::fs::read_dir(repo().join("configs"))
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect();
                // `find | sort` order: byte order of the full paths.
                configs.sort();
                files.extend(configs);
                files
            },
            "/usr/local/bin/ride-trainer",
        ),
    ] {
        let c = config(name, full_tag);
        let cfg = &c["config"];
        assert_eq!(cfg["User"], user, "{name}: {cfg}");
        assert_eq!(cfg["Entrypoint"][0], entrypoint, "{name}: {cfg}");
        let labels = &cfg["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], full_tag);
        assert_eq!(
            labels["dev.ride.binaries"],
            sha256_of(&binaries),
            "{name} does not hold this build's binaries: run scripts/images.sh build"
        );
        let tar = images_dir().join(format!("{name}-{tag}.tar"));
        assert!(tar.exists(), "{}", tar.display());
    }
    let trainer = config("ride-trainer", full_tag);
    assert!(
        trainer["config"]["Volumes"]
            .as_object()
            .is_some_and(|v| v.contains_key("/tmp")),
        "{trainer}"
    );
    assert!(trainer["config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&Value::from("HOME=/tmp")));
    // Two layers: the libraries, then the binary and configs.
    assert_eq!(trainer["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

    let smoke = script("smoke");
    println!("{smoke}");
    for needle in [
        "Usage: ride-operator",
        "kind: CustomResourceDefinition",
        "parameters",
        "| top-1 overall",
        "checkpoint on the volume: /mnt/ckpt/",
    ] {
        assert!(smoke.contains(needle), "{needle:?} in:\n{smoke}");
    }

    // The CPU example on the control plane, run from the image.
    let rootfs = rootfs_dir().join("ride-trainer");
    assert!(rootfs.join("usr/local/bin/ride-trainer").exists());
    let cluster = Cluster::start();
    open_up(&cluster.dir);
    cluster.install_crd();
    let ckpt = tempfile::Builder::new()
        .prefix("ride-image-ckpt")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        ckpt.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    // A writable host path is an administrator's exception: this one
    // directory, under the privileged profile.
    let host_path = format!("--allow-host-path-datasets={}", ckpt.path().display());
    let op = Operator::start(
        &cluster.kubeconfig,
        "op-images",
        &["--pod-security=privileged", &host_path],
    );
    let image = Image {
        matches: "ride-trainer".into(),
        bin_dir: PathBuf::new(),
        paths: vec![],
        sandbox: Some(Sandbox {
            rootfs,
            uid: 1000,
            gid: 1000,
        }),
    };
    let mut agents = vec![];
    for name in ["node-a", "node-b"] {
        agents.push(cluster.node(NodeSpec::new(name, vec![image.clone()])).await);
    }
    let text = std::fs::read_to_string(repo().join("examples/ride-cpu.yaml"))
        .unwrap()
        .replace("uri: file:///tmp/ride-cpu", "uri: file:///mnt/ckpt")
        .replace(
            "  workers:\n    replicas: 2\n",
            &format!(
                "  workers:\n    replicas: 2\n    template:\n      volumes: [{{name: ckpt, hostPath: {{path: {}}}}}]\n      volumeMounts: [{{name: ckpt, mountPath: /mnt/ckpt}}]\n",
                ckpt.path().display()
            ),
        );
    assert!(text.contains("hostPath"), "{text}");
    let manifest = cluster.dir.join("ride-cpu.yaml");
    std::fs::write(&manifest, text).unwrap();
    let (ok, out) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "kubectl apply: {out}");
    let client = cluster.client().await;
    let c = &client;
    let started = std::time::Instant::now();
    let ctx = || {
        let (_, rt) = cluster.kubectl(&["get", "rt", "ride-cpu", "-o", "yaml"]);
        let mut s = format!("{rt}\noperator:\n{}\n", op.log_text());
        for a in &agents {
            s += &a.logs();
        }
        s
    };
    let st = wait_succeeded(c, "default", "ride-cpu", 600, ctx).await;
    println!(
        "the CPU example trained from the image in {:.0}s: {}",
        started.elapsed().as_secs_f64(),
        st["latestEval"]
    );
    let log = std::fs::read_to_string(agents[0].log_path("default", "ride-cpu-0-0"))
        .or_else(|_| std::fs::read_to_string(agents[1].log_path("default", "ride-cpu-0-0")))
        .unwrap_or_default();
    assert!(log.contains("| top-1 overall"), "{log}");
    // Written by the image's user onto the volume.
    let latest = walk(ckpt.path())
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "latest"))
        .expect("a checkpoint on the hostPath volume");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&latest).unwrap().uid(), 1000);
    assert!(
        st["lastCheckpoint"]["uri"]
            .as_str()
            .unwrap_or_default()
            .starts_with("file:///mnt/ckpt/"),
        "{st}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
