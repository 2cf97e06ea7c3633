//! End-to-end distributed training on CPU with the TCP backend: 2 ranks match
//! 1 rank at the same global batch; a rank killed mid-epoch under the
//! launcher costs a gang restart, not the result; preemption and elastic resume.

mod common;

use common::{
    bitwise_equal, max_abs_diff, text, tiny_config, train_cpu, train_epochs, wait_for_file, Watched,
};
use std::path::Path;

/// `ride-trainer launch --nproc-per-node N -- train args`.
fn launch(
    nproc: usize,
    cfg: &Path,
    out: &Path,
    opts: &[&str],
    extra_env: &[(&str, &str)],
) -> Watched {
    let n = nproc.to_string();
    let mut args = vec![
        "launch",
        "--nproc-per-node",
        &n,
        "--max-restarts",
        "2",
        "--grace-seconds",
        "5",
        "--",
    ];
    args.extend(train_args(cfg, out));
    args.extend_from_slice(opts);
    let mut env = vec![("OMP_NUM_THREADS", "1")];
    env.extend_from_slice(extra_env);
    Watched::start(&args, &env)
}

/// Per-epoch mean losses from "epoch i/n loss X" lines.
fn epoch_losses(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("epoch ").nth(1)?;
            let loss = rest.split(" loss ").nth(1)?.split_whitespace().next()?;
            if rest.contains('[') {
                return None; // per-iteration lines
            }
            loss.parse().ok()
        })
        .collect()
}

#[test]
fn two_ranks_match_one_rank_at_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    // Label-smoothed CE is a plain mean over the batch, so averaging two
    // half-batch gradients is the full-batch gradient (RIDE's re-weighted
    // terms are weighted means per rank, as in the reference's DDP).
    let cfg = tiny_config(dir.path(), 2, "CE");
    // Batch-level randomness (mixup pairs, drop-path masks) differs by
    // construction between 1×16 and 2×8; everything per-sample is identical.
    let common_opts = [
        "AUG.MIXUP",
        "0.0",
        "AUG.CUTMIX",
        "0.0",
        "MODEL.DROP_PATH_RATE",
        "0.0",
        "TRAIN.EPOCHS",
        "2",
    ];
    let one = dir.path().join("one");
    let mut opts = common_opts.to_vec();
    opts.extend_from_slice(&["DATA.BATCH_SIZE", "16"]);
    let mut args = vec!["--metrics-addr", "off", "--no-progress", "--opts"];
    args.extend_from_slice(&opts);
    let o = train_cpu(&cfg, &one, &args);
    let t1 = text(&o);
    assert!(o.status.success(), "{t1}");

    let two = dir.path().join("two");
    let mut opts = common_opts.to_vec();
    opts.extend_from_slice(&["DATA.BATCH_SIZE", "8"]);
    let (status, t2) = launch(2, &cfg, &two, &opts, &[]).finish();
    assert!(status.success(), "{t2}");
    assert!(t2.contains("global batch 16"), "{t2}");

    let (l1, l2) = (epoch_losses(&t1), epoch_losses(&t2));
    assert_eq!(l1.len(), 2, "{t1}");
    assert_eq!(l2.len(), 2, "{t2}");
    for (a, b) in l1.iter().zip(&l2) {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs().max(1.0),
            "losses {l1:?} vs {l2:?}"
        );
    }
    let w = "tiny/default/ckpt_epoch_1/model.safetensors";
    let diff = max_abs_diff(&one.join(w), &two.join(w));
    eprintln!("max |param difference| after 2 epochs: {diff:e}");
    assert!(diff < 1e-5, "parameters differ by {diff}");
    // Evaluation is reduced across ranks: the whole test set is counted once.
    let e1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one.join("tiny/default/eval.json")).unwrap())
            .unwrap();
    let e2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(two.join("tiny/default/eval.json")).unwrap())
            .unwrap();
    assert_eq!(e1["samples"], e2["samples"]);
}

#[test]
fn the_router_stage_under_the_launcher_matches_one_rank_at_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 3, "RIDE");
    let one = dir.path().join("one");
    let o = train_epochs(&cfg, &one, 1);
    assert!(o.status.success(), "{}", text(&o));
    let two = dir.path().join("two");
    copy_dir(&one, &two);
    // The override the operator and Slurm pass: TRAIN.STAGE router. The
    // router's loss is a batch mean and the frozen experts run without
    // randomness, so 2 ranks × 8 take the steps 1 rank × 16 takes.
    let router = |batch: &'static str| {
        [
            "TRAIN.STAGE",
            "router",
            "TRAIN.ROUTER.EPOCHS",
            "2",
            "TRAIN.ROUTER.BASE_LR",
            "0.05",
            "DATA.BATCH_SIZE",
            batch,
        ]
    };
    let mut args = vec!["--metrics-addr", "off", "--no-progress", "--opts"];
    args.extend_from_slice(&router("16"));
    let o = train_cpu(&cfg, &one, &args);
    let t1 = text(&o);
    assert!(o.status.success(), "{t1}");
    let (status, t2) = launch(2, &cfg, &two, &router("8"), &[]).finish();
    assert!(status.success(), "{t2}");
    assert!(
        t2.contains("global batch 16") && t2.contains("router stage: experts from"),
        "{t2}"
    );
    let w = "tiny/default/router/ckpt_epoch_1/model.safetensors";
    let diff = max_abs_diff(&one.join(w), &two.join(w));
    eprintln!("max |router parameter difference| after 2 epochs: {diff:e}");
    assert!(diff < 1e-5, "parameters differ by {diff}");
    let moved = max_abs_diff(
        &one.join("tiny/default/router/ckpt_epoch_0/model.safetensors"),
        &one.join(w),
    );
    assert!(moved > 1e-4, "the router did not train: {moved}");
    let routing = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(dir.join("tiny/default/router/eval.json")).unwrap(),
        )
        .unwrap()["routing"]
            .clone()
    };
    assert_eq!(
        routing(&one)["experts_share"],
        routing(&two)["experts_share"]
    );
}

#[test]
fn all_reduce_overlapped_with_backward_equals_averaging_after_it() {
    // Buckets of 10 KB make the overlapped run launch dozens of all-reduces
    // while backward still runs. With two ranks every element's sum is a+b
    // whichever bucket carries it, so the weights must be bitwise equal.
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let opts = ["TRAIN.EPOCHS", "2"];
    let small = ("RIDE_DDP_BUCKET_MB", "0.01");
    let overlapped = dir.path().join("overlapped");
    let (status, log_on) = launch(2, &cfg, &overlapped, &opts, &[small]).finish();
    assert!(status.success(), "{log_on}");
    let after = dir.path().join("after");
    let off = ("RIDE_DDP_OVERLAP", "0");
    let (status, log_off) = launch(2, &cfg, &after, &opts, &[small, off]).finish();
    assert!(status.success(), "{log_off}");
    let buckets = log_on
        .lines()
        .find_map(|l| l.split("overlapped with backward: ").nth(1))
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no overlap announced:\n{log_on}"));
    assert!(buckets > 10, "{buckets} buckets");
    assert!(!log_off.contains("overlapped with backward"), "{log_off}");
    assert_eq!(epoch_losses(&log_on), epoch_losses(&log_off));
    let w = "tiny/default/ckpt_epoch_1/model.safetensors";
    assert!(bitwise_equal(&overlapped.join(w), &after.join(w)));
}

fn bigger(dir: &Path) -> std::path::PathBuf {
    // Enough iterations per epoch that a kill lands mid-epoch.
    let cfg = tiny_config(dir, 2, "RIDE");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("MAX_PER_CLASS: 40", "MAX_PER_CLASS: 160")
        .replace("BATCH_SIZE: 16", "BATCH_SIZE: 8");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

const EPOCHS3: [&str; 4] = ["TRAIN.EPOCHS", "3", "CHECKPOINT.KEEP_LAST", "0"];

/// Train `bigger` for 3 epochs into `dir/straight`, then again under the
/// launcher into `dir/name` with `env`, and send `sig` to rank 1 once epoch
/// 1's checkpoint is durable and rank 0 is inside epoch 2. Returns the
/// second run, still going, and both output directories.
fn signal_rank_1_in_epoch_2(
    dir: &Path,
    name: &str,
    env: &[(&str, &str)],
    sig: i32,
) -> (Watched, std::path::PathBuf, std::path::PathBuf) {
    let cfg = bigger(dir);
    let straight = dir.join("straight");
    let (status, t) = launch(2, &cfg, &straight, &EPOCHS3, &[]).finish();
    assert!(status.success(), "{t}");

    let out = dir.join(name);
    let run = launch(2, &cfg, &out, &EPOCHS3, env);
    let line = run.wait_for("attempt 0: rank 1 pid", 60);
    let pid: i32 = line.rsplit(' ').next().unwrap().trim().parse().unwrap();
    wait_for_file(&out.join("tiny/default/ckpt_epoch_0/manifest.json"), 120);
    run.wait_for("[rank 0] epoch 2 [", 60); // PRINT_FREQ lines: inside epoch 2
    assert_eq!(unsafe { libc_kill(pid, sig) }, 0, "signal {sig} to rank 1");
    (run, straight, out)
}

#[test]
fn a_rank_killed_mid_epoch_restarts_the_gang_and_the_result_is_bitwise_equal() {
    let dir = tempfile::tempdir().unwrap();
    let (run, straight, killed) = signal_rank_1_in_epoch_2(dir.path(), "killed", &[], 9);
    let (status, t) = run.finish();
    assert!(status.success(), "{t}");
    assert!(t.contains("rank 1 ended: killed by signal 9"), "{t}");
    assert!(t.contains("restarting all 2 ranks"), "{t}");
    assert!(t.contains("attempt 1: rank 0 pid"), "{t}");
    assert!(t.contains("resumed from"), "{t}");
    let w = "tiny/default/ckpt_epoch_2/model.safetensors";
    assert!(
        bitwise_equal(&straight.join(w), &killed.join(w)),
        "final weights differ from the uninterrupted run"
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn a_frozen_rank_is_caught_by_the_watchdogs_and_the_gang_restarts_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let stall = ("RIDE_STALL_TIMEOUT", "5");
    // SIGSTOP: the process is alive but runs no code, not even its watchdog.
    let (run, straight, frozen) = signal_rank_1_in_epoch_2(dir.path(), "frozen", &[stall], 19);
    let stopped_at = std::time::Instant::now();
    run.wait_for("attempt 1: rank 1 pid", 120);
    eprintln!(
        "rank 1 frozen -> new gang started: {:.1} s (RIDE_STALL_TIMEOUT 5)",
        stopped_at.elapsed().as_secs_f64()
    );
    let (status, t) = run.finish();
    assert!(status.success(), "{t}");
    assert!(t.contains("[rank 0] stalled: no optimiser step for"), "{t}");
    assert!(t.contains("waiting in a collective"), "{t}");
    assert!(t.contains("rank 0 ended: exit code 76"), "{t}");
    assert!(t.contains("stalled: rank(s) [1] stopped first"), "{t}");
    assert!(t.contains("stall restart 1/3"), "{t}");
    // Epoch 1's checkpoint was durable; the steps of epoch 2 before the
    // freeze are the work lost.
    let lost = t
        .lines()
        .find_map(|l| l.split("work lost: ").nth(1))
        .unwrap_or_else(|| panic!("no lost work reported:\n{t}"));
    let steps: u64 = lost.split(' ').next().unwrap().parse().unwrap();
    assert!(steps >= 1, "{lost}");
    assert!(
        t.contains("restarts by cause: failure 0, stall 1, preemption 0"),
        "{t}"
    );
    let w = "tiny/default/ckpt_epoch_2/model.safetensors";
    assert!(
        bitwise_equal(&straight.join(w), &frozen.join(w)),
        "final weights differ from the uninterrupted run"
    );
}

#[test]
fn preempted_gang_resumes_bitwise_and_elastically() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bigger(dir.path());
    let straight = dir.path().join("straight");
    let (status, t) = launch(2, &cfg, &straight, &EPOCHS3, &[]).finish();
    assert!(status.success(), "{t}");

    let out = dir.path().join("preempted");
    let run = launch(2, &cfg, &out, &EPOCHS3, &[]);
    run.wait_for("[rank 0] epoch 2 [", 120);
    assert_eq!(unsafe { libc_kill(run.child.id() as i32, 15) }, 0);
    let (status, t) = run.finish();
    assert_eq!(status.code(), Some(75), "{t}");
    let mid = std::fs::read_dir(out.join("tiny/default"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.contains("_iter_"))
        .unwrap_or_else(|| panic!("no mid-epoch checkpoint:\n{t}"));
    let elastic = dir.path().join("elastic");
    copy_dir(&out, &elastic);

    // Same world size: continues exactly.
    let (status, t) = launch(2, &cfg, &out, &EPOCHS3, &[]).finish();
    assert!(status.success(), "{t}");
    assert!(t.contains(&mid), "{t}");
    let w = "tiny/default/ckpt_epoch_2/model.safetensors";
    assert!(
        bitwise_equal(&straight.join(w), &out.join(w)),
        "resumed run differs"
    );

    // One rank instead of two: resumes at the same global sample and finishes.
    let mut args = vec!["--metrics-addr", "off", "--no-progress", "--opts"];
    args.extend_from_slice(&EPOCHS3);
    let o = train_cpu(&cfg, &elastic, &args);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("elastic resume: checkpoint written by 2 ranks, continuing with 1"),
        "{t}"
    );
    assert!(
        t.contains("elastic resume keeps the global batch")
            && t.contains("TRAIN.ACCUMULATION_STEPS is now 2"),
        "{t}"
    );
    assert!(elastic.join(w).exists(), "{t}");
    // The same recipe: as many optimiser steps as the unresized run, ending
    // at the same LR (one rank accumulates two micro-batches per step).
    let meta = |root: &Path| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(root.join("tiny/default/ckpt_epoch_2/meta.json")).unwrap(),
        )
        .unwrap()
    };
    let (a, b) = (meta(&straight), meta(&elastic));
    assert_eq!(a["step"], b["step"], "{a}\n{b}");
    let (la, lb) = (
        a["next_lr"].as_f64().unwrap(),
        b["next_lr"].as_f64().unwrap(),
    );
    assert!(
        (la - lb).abs() <= 1e-12 * la.abs().max(1e-30),
        "{la} vs {lb}"
    );
    assert_eq!(b["accumulation"], 2, "{b}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// `train` arguments on CPU, without endpoints or bars, up to `--opts`
/// (the caller adds the keys).
fn train_args<'a>(cfg: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "--cfg",
        cfg.to_str().unwrap(),
        "--device",
        "cpu",
        "--output",
        out.to_str().unwrap(),
        "--metrics-addr",
        "off",
        "--no-progress",
        "--opts",
    ]
}

/// One short epoch at 4 images per rank.
const ONE_EPOCH: [&str; 4] = ["TRAIN.EPOCHS", "1", "DATA.BATCH_SIZE", "4"];

#[test]
fn two_machines_of_two_ranks_train_as_one_of_four() {
    // What a worker pod with 2 GPUs runs: one launcher per machine, global
    // ranks node-major, the rendezvous on node 0. The result must be the
    // same weights as 4 ranks under one launcher.
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "CE");
    let one = dir.path().join("one");
    let mut args = vec!["launch", "--nproc-per-node", "4", "--"];
    args.extend(train_args(&cfg, &one));
    args.extend(ONE_EPOCH);
    let (status, t) = Watched::start(&args, &[("OMP_NUM_THREADS", "1")]).finish();
    assert!(status.success(), "{t}");

    let two = dir.path().join("two");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let nodes: Vec<(Watched, std::path::PathBuf)> = ["0", "1"]
        .iter()
        .map(|node| {
            let report = dir.path().join(format!("node{node}-termination-log"));
            let mut args = vec![
                "launch",
                "--nproc-per-node",
                "2",
                "--nnodes",
                "2",
                "--node-rank",
                node,
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                &port,
                "--",
            ];
            args.extend(train_args(&cfg, &two));
            args.extend(ONE_EPOCH);
            let env = [
                ("OMP_NUM_THREADS", "1"),
                (ride_contract::ENV_TERMINATION_LOG, report.to_str().unwrap()),
            ];
            (Watched::start(&args, &env), report)
        })
        .collect();
    for (i, (node, report)) in nodes.into_iter().enumerate() {
        let (status, t) = node.finish();
        assert!(status.success(), "{t}");
        if i == 0 {
            assert!(t.contains("x4") && t.contains("global batch 16"), "{t}");
        }
        // One final report per machine, from its first rank.
        let p = ride_contract::Progress::parse(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(p.state, ride_contract::RunState::Finished);
        assert_eq!(p.world_size, 4);
        assert!(p.rank == 0 || p.rank == 2, "rank {}", p.rank);
    }
    let w = "tiny/default/ckpt_epoch_0/model.safetensors";
    assert!(
        bitwise_equal(&one.join(w), &two.join(w)),
        "2 machines × 2 ranks must train exactly as 1 × 4"
    );
}

#[test]
fn a_machines_share_of_a_gang_does_not_restart_on_its_own() {
    // A failing rank ends this machine's launcher with its code at once;
    // only whoever started every machine may restart the whole gang.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "TRAIN:\n  EPOCH: 3\n").unwrap();
    let out = dir.path().join("out");
    let mut args = vec![
        "launch",
        "--nproc-per-node",
        "2",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--master-port",
        "1",
        "--max-restarts",
        "5",
        "--",
    ];
    args.extend(train_args(&cfg, &out));
    args.extend(ONE_EPOCH);
    let (status, t) = Watched::start(&args, &[]).finish();
    assert_eq!(
        status.code(),
        Some(ride_contract::CONFIG_ERROR_EXIT_CODE),
        "{t}"
    );
    assert!(!t.contains("restarting all"), "{t}");
}

#[test]
fn json_logs_of_a_launched_gang_are_one_object_per_line_with_rank_and_numbers() {
    // What the operator's pods ask for: every stderr line a JSON object
    // (the launcher relays the ranks' lines whole), numbers as fields.
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "CE");
    let out = dir.path().join("out");
    let mut args = vec!["launch", "--nproc-per-node", "2", "--"];
    args.extend(train_args(&cfg, &out));
    args.extend(ONE_EPOCH);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ride-trainer"))
        .args(&args)
        .env("OMP_NUM_THREADS", "1")
        .env("RIDE_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        assert!(e["timestamp"].is_string() && e["level"].is_string(), "{e}");
        assert!(e["message"].is_string(), "{e}");
    }
    let rank_of = |e: &serde_json::Value| e["spans"][0]["rank"].as_u64();
    let epoch_lines: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["message"].as_str().unwrap().starts_with("epoch 1/1 loss"))
        .collect();
    assert_eq!(epoch_lines.len(), 1, "only rank 0 reports epochs: {stderr}");
    let epoch = epoch_lines[0];
    assert_eq!(rank_of(epoch), Some(0), "{epoch}");
    assert_eq!(epoch["epoch"], 0);
    assert!(epoch["loss"].as_f64().unwrap().is_finite(), "{epoch}");
    let top1 = epoch["top1"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&top1), "{epoch}");
    // Both ranks speak, and the launcher's own lines are events too.
    assert!(events.iter().any(|e| rank_of(e) == Some(1)), "{stderr}");
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .starts_with("launch: all 2 ranks finished")),
        "{stderr}"
    );
    // The summary table stays on stdout, for the person who started the run.
    assert!(String::from_utf8_lossy(&o.stdout).contains("| top-1 overall"));
}

#[test]
fn a_rank_whose_master_addr_never_resolves_exits_77_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "CE");
    let out = dir.path().join("out");
    let started = std::time::Instant::now();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ride-trainer"))
        .arg("train")
        .args(train_args(&cfg, &out))
        .args(ONE_EPOCH)
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "rank0.no-such-service.invalid")
        .env("MASTER_PORT", "29599")
        .env("RIDE_PREFLIGHT_TIMEOUT", "2")
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(77), "{t}");
    assert!(
        t.contains(
            "preflight: MASTER_ADDR rank0.no-such-service.invalid (port 29599) does not resolve"
        ),
        "{t}"
    );
    // The rendezvous timeout (300 s) was not waited out.
    eprintln!(
        "preflight failed after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
