//! End-to-end: the binary trains, checkpoints, resumes exactly, evaluates,
//! predicts, and rejects bad configs with the key named.

mod common;

use common::{predict_cpu, read_tensors, text, tiny_config, train_cpu, train_epochs, trainer};

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
    let o = predict_cpu(
        &cfg,
        &w,
        &[
            "--input-tensor",
            xin.to_str().unwrap(),
            "--output",
            yout.to_str().unwrap(),
        ],
    );
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
    let o = train_epochs(&cfg, &straight, 3);
    assert!(o.status.success(), "{}", text(&o));
    // The same run, crashed during its last epoch: remove the final checkpoint
    // so the newest complete one is epoch index 1, then run again.
    let split = dir.path().join("split");
    let o = train_epochs(&cfg, &split, 3);
    assert!(o.status.success());
    std::fs::remove_dir_all(split.join("tiny/default/ckpt_epoch_2")).unwrap();
    let o = train_epochs(&cfg, &split, 3);
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
    // The launchers' contract: a bad config is not worth another try.
    assert_eq!(
        o.status.code(),
        Some(ride_contract::CONFIG_ERROR_EXIT_CODE),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("unknown config key TRAIN.EPOCH"),
        "{}",
        text(&o)
    );
}

#[test]
fn unknown_datasets_and_missing_data_say_what_to_do() {
    let run = |dataset: &str| {
        let o = trainer(&[
            "train",
            "--metrics-addr",
            "off",
            "--opts",
            "DATA.DATASET",
            dataset,
        ]);
        assert!(!o.status.success());
        text(&o)
    };
    let t = run("imagenet-22k");
    assert!(
        t.contains("DATA.DATASET 'imagenet-22k' is not known; use one of: synthetic, imagenet-lt"),
        "{t}"
    );
    let t = run("imagenet-lt");
    assert!(
        t.contains("ImageNet_LT_train.txt") && t.contains("set DATA.DATA_PATH"),
        "{t}"
    );
}

#[test]
fn predict_on_image_files_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let out_root = dir.path().join("out");
    let o = train_epochs(&cfg, &out_root, 1);
    assert!(o.status.success(), "{}", text(&o));
    // A colour PNG of another size, a grayscale PNG, and a missing file.
    let rgb = image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
    });
    rgb.save(dir.path().join("a.png")).unwrap();
    let gray = image::GrayImage::from_fn(32, 32, |x, _| image::Luma([(x * 8) as u8]));
    gray.save(dir.path().join("b.png")).unwrap();
    let list = dir.path().join("list.txt");
    let paths = [
        dir.path().join("a.png"),
        dir.path().join("b.png"),
        dir.path().join("missing.png"),
    ];
    std::fs::write(
        &list,
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let w = out_root.join("tiny/default/ckpt_epoch_0/model.safetensors");
    let o = predict_cpu(
        &cfg,
        &w,
        &["--images", list.to_str().unwrap(), "--topk", "3"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines[..2] {
        assert_eq!(l["classes"].as_array().unwrap().len(), 3);
        let s: Vec<f64> = l["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(s.windows(2).all(|w| w[0] >= w[1]) && s.iter().all(|&p| (0.0..=1.0).contains(&p)));
    }
    assert!(lines[2]["error"].as_str().unwrap().contains("missing.png"));
}

#[test]
fn sigterm_saves_a_mid_epoch_checkpoint_and_resume_is_bitwise_exact() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let opts = [
        "--metrics-addr",
        "off",
        "--no-progress",
        "--opts",
        "TRAIN.EPOCHS",
        "3",
        "PRINT_FREQ",
        "1",
    ];
    let straight = dir.path().join("straight");
    let o = train_cpu(&cfg, &straight, &opts);
    assert!(o.status.success(), "{}", text(&o));

    // Preempt the same run in the middle of its second epoch.
    let preempted = dir.path().join("preempted");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ride-trainer"))
        .args([
            "train",
            "--cfg",
            cfg.to_str().unwrap(),
            "--device",
            "cpu",
            "--output",
            preempted.to_str().unwrap(),
        ])
        .args(opts)
        .env("OMP_NUM_THREADS", "2")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut log = String::new();
    let mut signalled = false;
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if !signalled && line.starts_with("epoch 2 [2/") {
            let status = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            signalled = true;
        }
        log.push_str(&line);
        log.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(signalled, "never reached epoch 2:\n{log}");
    assert_eq!(
        status.code(),
        Some(ride_trainer::train::PREEMPTED_EXIT_CODE),
        "{log}"
    );
    assert!(log.contains("preempted: checkpoint saved"), "{log}");
    let mid: Vec<String> = std::fs::read_dir(preempted.join("tiny/default"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt_epoch_1_iter_"))
        .collect();
    assert_eq!(mid.len(), 1, "{mid:?}\n{log}");

    let o = train_cpu(&cfg, &preempted, &opts);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "resumed from {}/tiny/default/{}",
            preempted.display(),
            mid[0]
        )),
        "{t}"
    );
    let load = |p: &std::path::Path| -> std::collections::BTreeMap<String, tch::Tensor> {
        tch::Tensor::read_safetensors(p.join("tiny/default/ckpt_epoch_2/model.safetensors"))
            .unwrap()
            .into_iter()
            .collect()
    };
    let (a, b) = (load(&straight), load(&preempted));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, ta) in &a {
        assert!(
            ta.equal(&b[name]),
            "{name} differs after a mid-epoch resume"
        );
    }
}

/// The checkpoint directories of a run under `out` (tiny/default).
fn checkpoint_dirs(out: &std::path::Path) -> Vec<String> {
    let mut d: Vec<String> = std::fs::read_dir(out.join("tiny/default"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt_epoch_"))
        .collect();
    d.sort();
    d
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn checkpoints_on_the_clock_keep_beside_the_epoch_ones_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let run = |name: &str, every: &str, keep: &str| {
        let out = dir.path().join(name);
        let o = train_cpu(
            &cfg,
            &out,
            &[
                "--metrics-addr",
                "off",
                "--no-progress",
                "--checkpoint-every",
                every,
                "--opts",
                "TRAIN.EPOCHS",
                "3",
                "CHECKPOINT.KEEP_LAST",
                keep,
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        (out, text(&o))
    };
    let weights = |out: &std::path::Path| -> std::collections::BTreeMap<String, tch::Tensor> {
        tch::Tensor::read_safetensors(out.join("tiny/default/ckpt_epoch_2/model.safetensors"))
            .unwrap()
            .into_iter()
            .collect()
    };
    let same = |a: &std::path::Path, b: &std::path::Path, what: &str| {
        let (a, b) = (weights(a), weights(b));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, ta) in &a {
            assert!(ta.equal(&b[name]), "{name} differs: {what}");
        }
    };
    let (straight, _) = run("straight", "0", "0");
    assert!(
        checkpoint_dirs(&straight)
            .iter()
            .all(|d| !d.contains("_iter_")),
        "no clock, no mid-epoch saves: {:?}",
        checkpoint_dirs(&straight)
    );

    // A 1 ms interval is due at every optimiser step after the first.
    let (clock, log) = run("clock", "1ms", "2");
    assert!(log.contains("checkpoint on the clock"), "{log}");
    let dirs = checkpoint_dirs(&clock);
    let mid: Vec<&String> = dirs.iter().filter(|d| d.contains("_iter_")).collect();
    assert_eq!(mid.len(), 2, "the newest two time-based ones: {dirs:?}");
    assert!(
        mid.iter().all(|d| d.starts_with("ckpt_epoch_2_iter_")),
        "{dirs:?}"
    );
    for epoch_end in ["ckpt_epoch_1", "ckpt_epoch_2"] {
        assert!(
            dirs.contains(&epoch_end.to_string()),
            "{epoch_end} kept: {dirs:?}"
        );
    }
    same(
        &straight,
        &clock,
        "saving on the clock changed the training",
    );

    // Resume from a time-based checkpoint in the middle of epoch 1: the end
    // is bitwise the uninterrupted run's.
    let (all, _) = run("all", "1ms", "0");
    let source = "ckpt_epoch_1_iter_2";
    assert!(
        checkpoint_dirs(&all).contains(&source.to_string()),
        "{:?}",
        checkpoint_dirs(&all)
    );
    let resumed = dir.path().join("resumed");
    copy_dir(
        &all.join("tiny/default").join(source),
        &resumed.join("tiny/default").join(source),
    );
    let (_, log) = run("resumed", "0", "0");
    assert!(
        log.contains(&format!(
            "resumed from {}/tiny/default/{source}",
            resumed.display()
        )),
        "{log}"
    );
    same(&straight, &resumed, "a resume from a time-based checkpoint");
}

#[test]
fn bf16_autocast_trains_on_cpu_with_activation_checkpointing() {
    // AMP_DTYPE bfloat16 works on CPU (fp16 stays CUDA-only): the forward
    // and the recomputed blocks run in bf16, the loss and optimiser in fp32.
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let o = train_cpu(
        &cfg,
        &dir.path().join("out"),
        &[
            "--metrics-addr",
            "off",
            "--amp-opt-level",
            "O1",
            "--use-checkpoint",
            "--opts",
            "AMP_DTYPE",
            "bfloat16",
            "TRAIN.EPOCHS",
            "1",
        ],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("mixed precision: bf16 autocast on Cpu"), "{t}");
    let loss: f64 = t
        .lines()
        .find_map(|l| l.strip_prefix("epoch 1/1 loss "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no epoch line: {t}"));
    assert!(loss.is_finite() && loss > 0.0, "{t}");
    // A wrong type is refused with the key named.
    let o = train_cpu(
        &cfg,
        &dir.path().join("bad"),
        &["--opts", "AMP_DTYPE", "float8"],
    );
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("AMP_DTYPE"), "{}", text(&o));
}

#[test]
fn the_router_stage_trains_on_frozen_experts_and_routes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 3, "RIDE");
    let out_root = dir.path().join("out");
    let router_args = [
        "--metrics-addr",
        "off",
        "--stage",
        "router",
        "--json",
        "--opts",
        "TRAIN.ROUTER.EPOCHS",
        "2",
        "TRAIN.ROUTER.BASE_LR",
        "0.05",
    ];

    // Without trained experts the stage says what to do.
    let o = train_cpu(&cfg, &out_root, &router_args);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("holds no checkpoint") && t.contains("train the experts first"),
        "{t}"
    );
    // Nor does it evaluate a router that was never trained.
    let eval_args = ["--metrics-addr", "off", "--stage", "router", "--eval"];
    let o = train_cpu(&cfg, &out_root, &eval_args);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("evaluates a trained router"),
        "{t}"
    );

    let o = train_epochs(&cfg, &out_root, 2);
    assert!(o.status.success(), "{}", text(&o));
    let experts_dir = out_root.join("tiny/default");
    let experts_eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(experts_dir.join("eval.json")).unwrap())
            .unwrap();

    let o = train_cpu(&cfg, &out_root, &router_args);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("router stage: experts from") && t.contains("ckpt_epoch_1"),
        "{t}"
    );
    let router_dir = experts_dir.join("router");
    for f in [
        "ckpt_epoch_1/model.safetensors",
        "eval.json",
        "routing_curve.svg",
    ] {
        assert!(router_dir.join(f).exists(), "missing router/{f}\n{t}");
    }
    assert!(
        t.contains("experts per image") && t.contains("| threshold |"),
        "{t}"
    );
    let line = t
        .lines()
        .find(|l| l.starts_with("{\"samples\""))
        .expect("JSON eval line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let routing = &v["routing"];
    let mean = routing["mean_experts"].as_f64().unwrap();
    assert!((1.0..=3.0).contains(&mean), "{routing}");
    let sweep = routing["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 13);
    // Threshold 0 runs every expert: the experts run's own evaluation,
    // which proves the stage left the experts as they were.
    let all = &sweep[0];
    assert_eq!(all["threshold"], 0.0);
    assert_eq!(all["mean_experts"], 3.0);
    assert_eq!(all["top1"], experts_eval["top1"], "{routing}");
    let last = sweep.last().unwrap();
    assert_eq!(last["mean_experts"], 1.0);
    assert!(last["gflops"].as_f64().unwrap() < all["gflops"].as_f64().unwrap());

    // --eval --stage router evaluates the stage's newest checkpoint.
    let o = train_cpu(&cfg, &out_root, &eval_args);
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("router/ckpt_epoch_1") && t.contains("experts per image"),
        "{t}"
    );

    // The router checkpoint holds the experts unchanged plus the router.
    let experts = read_tensors(&experts_dir.join("ckpt_epoch_1/model.safetensors"));
    let routed = read_tensors(&router_dir.join("ckpt_epoch_1/model.safetensors"));
    for (name, t) in &experts {
        assert!(t.equal(&routed[name]), "{name} changed in the router stage");
    }
    let router_keys: Vec<&String> = routed
        .keys()
        .filter(|k| !experts.contains_key(*k))
        .collect();
    assert!(
        !router_keys.is_empty()
            && router_keys
                .iter()
                .all(|k| k.starts_with("expert_help_pred")),
        "{router_keys:?}"
    );

    // predict routes: the experts each image used come back with the logits.
    let x = tch::Tensor::randn([5, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let xin = dir.path().join("x.safetensors");
    tch::Tensor::write_safetensors(&[("images", x)], &xin).unwrap();
    let yout = dir.path().join("y.safetensors");
    let tensor_args = [
        "--stage",
        "router",
        "--input-tensor",
        xin.to_str().unwrap(),
        "--output",
        yout.to_str().unwrap(),
    ];
    let o = predict_cpu(
        &cfg,
        &router_dir.join("ckpt_epoch_1/model.safetensors"),
        &tensor_args,
    );
    assert!(o.status.success(), "{}", text(&o));
    let ys = read_tensors(&yout);
    assert_eq!(ys["logits"].size(), vec![5, 6]);
    let used: Vec<i64> = Vec::try_from(&ys["experts_used"]).unwrap();
    assert!(used.iter().all(|u| (1..=3).contains(u)), "{used:?}");

    // Experts-only weights have no router to route with: named, not guessed.
    let o = predict_cpu(
        &cfg,
        &experts_dir.join("ckpt_epoch_1/model.safetensors"),
        &tensor_args,
    );
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("missing keys") && t.contains("expert_help_pred"),
        "{t}"
    );
}

#[test]
fn a_run_resumed_at_the_last_step_of_an_epoch_goes_on_to_the_next() {
    // A stop request can land on an epoch's last step: the checkpoint then
    // says every iteration of the epoch is done, and the resumed run has no
    // step left in it. Made here from a real checkpoint, as the trainer
    // would have written it at that step.
    use ride_trainer::checkpoint::CheckpointStore;
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let out_root = dir.path().join("out");
    let o = train_epochs(&cfg, &out_root, 1);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let per_epoch: u64 = t
        .split(" iterations/epoch")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("iterations per epoch in the log");
    let run = out_root.join("tiny/default");
    let store = CheckpointStore::open(run.to_str().unwrap()).unwrap();
    let c = store.load("ckpt_epoch_0").unwrap();
    let mut meta = c.meta;
    meta.epoch = 1;
    meta.iterations_done = Some(per_epoch);
    meta.samples_done = per_epoch * 16;
    meta.eval = None;
    store.save(&c.model, &c.optimizer, &meta).unwrap();

    let o = train_epochs(&cfg, &out_root, 2);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains(&format!("ckpt_epoch_1_iter_{per_epoch}")), "{t}");
    // The epoch without steps has no mean loss; it is not NaN.
    assert!(t.contains("epoch 2/2 loss - "), "{t}");
    assert!(t.contains("| top-1 overall"), "{t}");
}
