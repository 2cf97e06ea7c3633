//! Weights back to the authors' code, and their released checkpoints in:
//! `ride-trainer export` writes `{'model': state_dict}` that PyTorch loads
//! strictly into the authors' model with equal outputs, and a checkpoint laid
//! out like their releases (optimiser, scheduler, pickled yacs config, amp)
//! evaluates with one command.

mod common;

use common::{predict_cpu, repo_root, text, train_cpu, trainer};
use std::path::{Path, PathBuf};
use tch::Tensor;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("trainer/tests/fixtures").join(name)
}

fn python() -> PathBuf {
    std::env::var("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .unwrap_or_else(|_| "python3".into())
}

/// A safetensors file holding only `io`'s `input` (what predict takes).
fn input_only(io: &Path, out: &Path) {
    let input = Tensor::read_safetensors(io)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "input")
        .expect("fixture has an input")
        .1;
    Tensor::write_safetensors(&[("input", &input)], out).unwrap();
}

fn logits(path: &Path) -> Tensor {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "logits")
        .expect("logits")
        .1
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn an_export_of_trained_weights_loads_strictly_into_the_authors_model_with_equal_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture("tiny_ride2.yaml");
    let authors = fixture("tiny_ride2.pth");
    // One epoch from the authors' weights, so the export is of weights this
    // trainer made, not a copy of theirs.
    let o = train_cpu(
        &cfg,
        dir.path(),
        &[
            "--resume",
            authors.to_str().unwrap(),
            "--metrics-addr",
            "off",
            "--no-progress",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let ckpt = dir.path().join("tiny_ride2/default/ckpt_epoch_0");
    let pth = dir.path().join("export/tiny_ride2.pth");
    let st = dir.path().join("export/tiny_ride2.safetensors");
    for out in [&pth, &st] {
        let o = trainer(&[
            "export",
            "--cfg",
            cfg.to_str().unwrap(),
            "--weights",
            ckpt.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("190 tensors, 641382 parameters"),
            "{}",
            text(&o)
        );
    }
    let input = dir.path().join("input.safetensors");
    input_only(&fixture("tiny_ride2_io.safetensors"), &input);
    // Our outputs: from the checkpoint, and from each exported file.
    let mut ours = Vec::new();
    for (i, w) in [ckpt.join("model.safetensors"), pth.clone(), st.clone()]
        .iter()
        .enumerate()
    {
        let out = dir.path().join(format!("ours{i}.safetensors"));
        let o = predict_cpu(
            &cfg,
            w,
            &[
                "--input-tensor",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        ours.push(out);
    }
    let reference = logits(&ours[0]);
    for o in &ours[1..] {
        assert_eq!(max_diff(&reference, &logits(o)), 0.0, "{}", o.display());
    }

    let mut cmd = std::process::Command::new(python());
    cmd.arg(fixture("check_export.py"))
        .arg(&pth)
        .arg(&authors)
        .arg(&input)
        .arg(&ours[0]);
    // With the authors' checkout (and timm) at hand, their own class too.
    let authors_checkout = std::env::var_os("RIDE_AUTHORS_SWIN");
    if let Some(c) = &authors_checkout {
        cmd.arg(c);
    }
    let o = cmd.output().expect("python runs");
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON report");
    assert_eq!(report["tensors"], 190, "{report}");
    for k in ["missing", "unexpected", "misshaped"] {
        assert_eq!(report[k], serde_json::json!([]), "{k}: {report}");
    }
    assert_eq!(report["mmap_equal"], true, "{report}");
    // Training moved the weights, so equal outputs are not a copy's.
    assert!(
        report["max_change_from_authors"].as_f64().unwrap() > 1e-3,
        "{report}"
    );
    assert!(
        report["rebuilt_model_max_diff"].as_f64().unwrap() < 1e-5,
        "{report}"
    );
    if authors_checkout.is_some() {
        assert!(
            report["authors_model_max_diff"].as_f64().unwrap() < 1e-5,
            "{report}"
        );
    }
}

#[test]
fn a_checkpoint_shaped_like_the_authors_releases_evaluates_in_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture("tiny_ride2.yaml");
    let release = fixture("tiny_ride2_release.pth");
    // The documented command (docs/experiments.md).
    let o = train_cpu(
        &cfg,
        dir.path(),
        &[
            "--eval",
            "--resume",
            release.to_str().unwrap(),
            "--metrics-addr",
            "off",
            "--no-progress",
        ],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("top-1 overall") && t.contains("20 samples"),
        "{t}"
    );
    // The weights read are theirs: the authors' model's outputs on this file.
    let input = dir.path().join("input.safetensors");
    input_only(&fixture("tiny_ride2_release_io.safetensors"), &input);
    let out = dir.path().join("ours.safetensors");
    let o = predict_cpu(
        &cfg,
        &release,
        &[
            "--input-tensor",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let d = max_diff(
        &logits(&out),
        &logits(&fixture("tiny_ride2_release_io.safetensors")),
    );
    assert!(d < 1e-5, "logits differ from the authors' model by {d}");
}

#[test]
fn export_refuses_an_output_it_cannot_write_and_weights_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture("tiny_ride2.yaml");
    let o = trainer(&[
        "export",
        "--cfg",
        cfg.to_str().unwrap(),
        "--weights",
        fixture("tiny_ride2.pth").to_str().unwrap(),
        "--output",
        dir.path().join("w.bin").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("name a .pth"), "{}", text(&o));
    let o = trainer(&[
        "export",
        "--cfg",
        cfg.to_str().unwrap(),
        "--weights",
        fixture("tiny_ce1.pth").to_str().unwrap(),
        "--output",
        dir.path().join("w.pth").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("missing keys"), "{}", text(&o));
    assert!(!dir.path().join("w.pth").exists());
}
