//! The container images `scripts/images.sh build` made (test.sh builds them
//! before the tests): their configuration (user, entrypoint, volumes,
//! labels) is what the pods and docs rely on, they hold this build's
//! binaries, and `scripts/images.sh smoke` runs them without a daemon:
//! unpacked with umoci, in bubblewrap as the image's user on a read-only
//! root, including a one-epoch CPU training that checkpoints to a volume.

mod common;

use common::repo;
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

#[test]
fn images_hold_this_build_run_as_non_root_and_pass_the_smoke_run() {
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
}
