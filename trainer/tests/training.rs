//! End-to-end: the binary trains, checkpoints, resumes exactly, evaluates,
//! predicts, and rejects bad configs with the key named.

mod common;

use common::{text, tiny_config, train_cpu, trainer};

#[test]
fn trains_checkpoints_evaluates_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let out_root = dir.path().join("out");
    let o = train_cpu(
        &cfg,
        &out_root,
        &["--metrics-addr", "127.0.0.1:0", "--json"],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let run_dir = out_root.join("tiny/default");
    for f in [
        "ckpt_epoch_0/meta.json",
        "ckpt_epoch_1/model.safetensors",
        "eval.json",
        "per_class_accuracy.svg",
    ] {
        assert!(run_dir.join(f).exists(), "missing {f}\n{t}");
    }
    assert!(t.contains("== run summary =="), "{t}");
    assert!(t.contains("top-1 overall"), "{t}");
    let json_line = t
        .lines()
        .find(|l| l.starts_with("{\"samples\""))
        .expect("JSON eval line");
    let v: serde_json::Value = serde_json::from_str(json_line).unwrap();
    assert_eq!(v["samples"], 24);
    assert_eq!(v["per_expert_top1"].as_array().unwrap().len(), 2);

    // --eval on the same output resumes the latest checkpoint and evaluates it.
    let o = train_cpu(&cfg, &out_root, &["--metrics-addr", "off", "--eval"]);
    let t2 = text(&o);
    assert!(o.status.success(), "{t2}");
    assert!(
        t2.contains("resumed from") && t2.contains("ckpt_epoch_1"),
        "{t2}"
    );

    // predict on a preprocessed tensor: logits are the mean of per-expert outputs.
    let x = tch::Tensor::randn([3, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let xin = dir.path().join("x.safetensors");
    tch::Tensor::write_safetensors(&[("images", x)], &xin).unwrap();
    let yout = dir.path().join("y.safetensors");
    let w = run_dir.join("ckpt_epoch_1/model.safetensors");
    let o = trainer(&[
        "predict",
        "--cfg",
        cfg.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--input-tensor",
        xin.to_str().unwrap(),
        "--output",
        yout.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ys: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(&yout)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(ys["logits"].size(), vec![3, 6]);
    assert_eq!(ys["per_expert"].size(), vec![3, 2, 6]);
    let mean = ys["per_expert"].mean_dim([1i64].as_slice(), false, tch::Kind::Float);
    assert!(mean.allclose(&ys["logits"], 1e-6, 1e-6, false));
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let straight = dir.path().join("straight");
    let o = train_cpu(
        &cfg,
        &straight,
        &["--metrics-addr", "off", "--opts", "TRAIN.EPOCHS", "3"],
    );
    assert!(o.status.success(), "{}", text(&o));
    // The same run, crashed during its last epoch: remove the final checkpoint
    // so the newest complete one is epoch index 1, then run again.
    let split = dir.path().join("split");
    let o = train_cpu(
        &cfg,
        &split,
        &["--metrics-addr", "off", "--opts", "TRAIN.EPOCHS", "3"],
    );
    assert!(o.status.success());
    std::fs::remove_dir_all(split.join("tiny/default/ckpt_epoch_2")).unwrap();
    let o = train_cpu(
        &cfg,
        &split,
        &["--metrics-addr", "off", "--opts", "TRAIN.EPOCHS", "3"],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("resumed from") && t.contains("ckpt_epoch_1"),
        "{t}"
    );
    let load = |p: std::path::PathBuf| -> std::collections::BTreeMap<String, tch::Tensor> {
        tch::Tensor::read_safetensors(p.join("tiny/default/ckpt_epoch_2/model.safetensors"))
            .unwrap()
            .into_iter()
            .collect()
    };
    let (a, b) = (load(straight), load(split));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, ta) in &a {
        assert!(ta.equal(&b[name]), "{name} differs after resume");
    }
}

#[test]
fn unknown_config_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "TRAIN:\n  EPOCH: 3\n").unwrap();
    let o = trainer(&[
        "train",
        "--cfg",
        cfg.to_str().unwrap(),
        "--metrics-addr",
        "off",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("unknown config key TRAIN.EPOCH"),
        "{}",
        text(&o)
    );
}

#[test]
fn unsupported_dataset_says_what_to_do() {
    let o = trainer(&[
        "train",
        "--metrics-addr",
        "off",
        "--opts",
        "DATA.DATASET",
        "imagenet-lt",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("set DATA.DATASET: synthetic"),
        "{}",
        text(&o)
    );
}
