//! `sbatch slurm/ride.sbatch` on a real single-node Slurm cluster (started by
//! `scripts/slurm-cluster.sh`, which `scripts/test.sh` runs): two tasks find
//! their ranks and rank 0 from Slurm's variables alone and train together;
//! a time-limit warning or SIGUSR1 saves a checkpoint and the script
//! requeues the job, whose next allocation resumes; a bad config fails the
//! job without a requeue. A two-node cluster (`scripts/slurm-two-nodes.sh`:
//! two slurmd in network namespaces) runs a job whose ranks meet over a
//! network, and survives losing a node.

mod common;

use common::{bitwise_equal, repo_root, text, tiny_config};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn slurm_conf() -> String {
    conf_of("RIDE_SLURM_DIR", "slurm", "slurm-cluster.sh")
}

/// `SLURM_CONF` of the cluster whose directory is `$var` (default
/// `~/.cache/ride/<default>`), started by `scripts/<script>`.
fn conf_of(var: &str, default: &str, script: &str) -> String {
    let dir = std::env::var(var).map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").expect("HOME"))
            .join(".cache/ride")
            .join(default)
    });
    let env = std::fs::read_to_string(dir.join("env")).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. This test needs Slurm: run `scripts/{script} start` \
             (or the whole suite with `scripts/test.sh`)",
            dir.join("env").display()
        )
    });
    env.trim()
        .strip_prefix("export SLURM_CONF=")
        .expect("SLURM_CONF line")
        .to_string()
}

#[test]
fn sbatch_template_runs_two_ranks_from_slurm_variables() {
    let conf = slurm_conf();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let out = dir.path().join("out");
    let submit = |name: &str, ride_args: &str| {
        let log = dir.path().join(format!("{name}-%j.out"));
        let o = ride_sbatch(&conf, &["--wait", "--ntasks-per-node=2"], &log)
            .env("RIDE_CFG", &cfg)
            .env("RIDE_OUTPUT", &out)
            .env("RIDE_ARGS", ride_args)
            .output()
            .expect("sbatch runs");
        let job_log: String = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{name}-"))
            })
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        assert!(o.status.success(), "{}\n{job_log}", text(&o));
        job_log
    };
    let job_log = submit("experts", "--opts TRAIN.EPOCHS 1");
    assert!(job_log.contains("rank 0/2 (local 0/2)"), "{job_log}");
    assert!(job_log.contains("rank 1/2 (local 1/2)"), "{job_log}");
    assert!(
        job_log.contains("x2:") && job_log.contains("global batch 32"),
        "{job_log}"
    );
    assert!(
        out.join("tiny/default/ckpt_epoch_0/manifest.json").exists(),
        "{job_log}"
    );
    assert_eq!(
        job_log.matches("== run summary ==").count(),
        1,
        "only rank 0 reports"
    );

    // The router stage of that run, the same template with --stage router:
    // two ranks average the router's gradients.
    let job_log = submit("router", "--stage router --opts TRAIN.ROUTER.EPOCHS 1");
    assert!(
        job_log.contains("router stage: experts from") && job_log.contains("ckpt_epoch_0"),
        "{job_log}"
    );
    assert!(job_log.contains("experts per image"), "{job_log}");
    assert!(
        out.join("tiny/default/router/ckpt_epoch_0/manifest.json")
            .exists(),
        "{job_log}"
    );
}

/// `sbatch ARGS --output=LOG slurm/ride.sbatch` on `conf`'s cluster with
/// this build's trainer on CPU, one CPU and no GPU per task, no metrics
/// endpoint; the caller adds the run's RIDE_* variables.
fn ride_sbatch(conf: &str, args: &[&str], log: &Path) -> Command {
    let mut cmd = Command::new("sbatch");
    cmd.current_dir(repo_root())
        .args(args)
        .args(["--gpus-per-task=0", "--cpus-per-task=1"])
        .arg(format!("--output={}", log.display()))
        .arg("slurm/ride.sbatch")
        .env("SLURM_CONF", conf)
        .env("RIDE_BIN", env!("CARGO_BIN_EXE_ride-trainer"))
        .env("RIDE_DEVICE", "cpu")
        .env("RIDE_METRICS_ADDR", "off");
    cmd
}

/// `scontrol show job ID` as key → value.
fn job_info(conf: &str, id: &str) -> HashMap<String, String> {
    let o = Command::new("scontrol")
        .args(["show", "job", id, "--oneliner"])
        .env("SLURM_CONF", conf)
        .output()
        .expect("scontrol runs");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Submit `slurm/ride.sbatch` with 2 tasks; returns the job id.
fn submit(conf: &str, log: &Path, env: &[(&str, &str)], extra: &[&str]) -> String {
    let mut args = vec!["--parsable", "--ntasks-per-node=2"];
    args.extend_from_slice(extra);
    let mut cmd = ride_sbatch(conf, &args, log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("sbatch runs");
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// `(name, value)` pairs as `submit` takes them.
fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Wait until job `id` has ended; its final `scontrol` record.
fn wait_done(conf: &str, id: &str, seconds: u64, log: &Path) -> HashMap<String, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let info = job_info(conf, id);
        let state = info.get("JobState").cloned().unwrap_or_default();
        if [
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
        ]
        .contains(&state.as_str())
        {
            return info;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} still {state} after {seconds} s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Job variables for the synthetic CPU config trained for `epochs`, into `out`.
fn synthetic_job(out: &Path, epochs: u32) -> Vec<(String, String)> {
    let cfg = repo_root().join("configs/synthetic_ride_2e_cpu.yaml");
    vec![
        ("RIDE_CFG".into(), cfg.display().to_string()),
        ("RIDE_OUTPUT".into(), out.display().to_string()),
        (
            "RIDE_ARGS".into(),
            format!("--opts TRAIN.EPOCHS {epochs} DATA.SYNTHETIC.MAX_PER_CLASS 100"),
        ),
    ]
}

/// Wait until the job log shows the first epoch's checkpoint.
fn wait_for_first_checkpoint(log: &Path, started: std::time::Instant) {
    loop {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        if t.contains("ckpt_epoch_0 (") {
            return;
        }
        assert!(
            started.elapsed().as_secs() < QUEUED_JOB_SECONDS && !t.contains("== run summary =="),
            "no first checkpoint:\n{t}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Slurm holds a requeued job back for 2 minutes (its BeginTime) before
/// it may start again; the waits below allow for that.
const REQUEUED_JOB_SECONDS: u64 = 600;

/// The tests share one 2-CPU node and each job takes both CPUs, so a job
/// may wait for the others' (a requeue cycle takes about 3 minutes).
const QUEUED_JOB_SECONDS: u64 = 900;

#[test]
fn usr1_saves_requeues_and_the_next_allocation_ends_with_the_same_weights() {
    let conf = slurm_conf();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("MAX_PER_CLASS: 40", "MAX_PER_CLASS: 160")
        .replace("BATCH_SIZE: 16", "BATCH_SIZE: 8");
    std::fs::write(&cfg, text_cfg).unwrap();
    let args = "--opts TRAIN.EPOCHS 3 CHECKPOINT.KEEP_LAST 0";
    let run = |name: &str| {
        let out = dir.path().join(name);
        let log = dir.path().join(format!("{name}.log"));
        let env = [
            ("RIDE_CFG", cfg.to_str().unwrap()),
            ("RIDE_OUTPUT", out.to_str().unwrap()),
            ("RIDE_ARGS", args),
        ];
        (submit(&conf, &log, &env, &[]), out, log)
    };
    let (straight, straight_out, straight_log) = run("straight");
    let info = wait_done(&conf, &straight, QUEUED_JOB_SECONDS, &straight_log);
    assert_eq!(info["JobState"], "COMPLETED", "{info:?}");

    let (id, out, log) = run("stopped");
    let started = std::time::Instant::now();
    // After the first epoch's checkpoint, SIGUSR1 to the tasks, as Slurm's
    // --signal sends it before the time limit.
    // The ranks wait, stopped, until Slurm has signalled them, so the
    // signal lands mid-run however fast this machine trains.
    wait_for_first_checkpoint(&log, started);
    let ranks = Stopped::ranks(&id);
    let o = Command::new("scancel")
        .args(["--signal=USR1", &id])
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    ranks.wait_signalled(libc::SIGUSR1, &log);
    drop(ranks);
    let info = wait_done(&conf, &id, REQUEUED_JOB_SECONDS + QUEUED_JOB_SECONDS, &log);
    let t = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "USR1 → requeue → completed in {:.0} s: {info:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(info["JobState"], "COMPLETED", "{t}");
    assert_eq!(info["Restarts"], "1", "{t}");
    for needle in [
        "requeueing job",
        "allocation 2 (requeues so far: 1",
        "resumed from",
        "== run summary ==",
    ] {
        assert!(t.contains(needle), "{needle:?} in\n{t}");
    }
    // Both ranks stopped; only rank 0 says where the checkpoint went.
    assert_eq!(
        t.matches("preempted: checkpoint saved to").count(),
        1,
        "{t}"
    );
    let w = "tiny/default/ckpt_epoch_2/model.safetensors";
    assert!(
        bitwise_equal(&straight_out.join(w), &out.join(w)),
        "the requeued run must end with the uninterrupted run's weights"
    );
}

#[test]
fn the_time_limit_warning_requeues_until_the_run_is_done() {
    // The real path: --time and --signal=USR1@60, no scancel. After the
    // first checkpoint the ranks are stopped and the time limit brought
    // near, so Slurm's warning reaches a run that cannot have finished,
    // however fast this machine trains; once the signal is pending the
    // limit goes back up, so the rest fits in the next allocation however
    // slow this machine is.
    let conf = slurm_conf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let log = dir.path().join("limit.log");
    let mut env = synthetic_job(&out, 60);
    // The ranks stand still for up to two minutes; that is not a stall.
    env.push(("RIDE_STALL_TIMEOUT".into(), "0".into()));
    let started = std::time::Instant::now();
    let id = submit(
        &conf,
        &log,
        &pairs(&env),
        &["--time=30", "--signal=USR1@60"],
    );
    wait_for_first_checkpoint(&log, started);
    let ranks = Stopped::ranks(&id);
    // Slurm warns when at most 60 s (+ its 30 s check period) remain: a
    // limit 1-2 minutes past the time run so far.
    let ran = run_seconds(&job_info(&conf, &id)["RunTime"]);
    set_time_limit(&conf, &id, ran / 60 + 2);
    ranks.wait_signalled(libc::SIGUSR1, &log);
    set_time_limit(&conf, &id, 30);
    drop(ranks);
    let info = wait_done(&conf, &id, REQUEUED_JOB_SECONDS + QUEUED_JOB_SECONDS, &log);
    let t = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "time limit → requeue(s) → completed in {:.0} s: {info:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(info["JobState"], "COMPLETED", "{t}");
    let restarts: u32 = info["Restarts"].parse().unwrap();
    assert!(restarts >= 1, "no requeue: {t}");
    assert!(t.contains("preempted: checkpoint saved to"), "{t}");
    assert!(t.contains("resumed from"), "{t}");
    assert!(t.contains("| top-1 overall"), "{t}");
}

/// `scontrol update JobId=ID TimeLimit=MINUTES`.
fn set_time_limit(conf: &str, id: &str, minutes: u64) {
    let o = Command::new("scontrol")
        .args([
            "update",
            &format!("JobId={id}"),
            &format!("TimeLimit={minutes}"),
        ])
        .env("SLURM_CONF", conf)
        .output()
        .expect("scontrol runs");
    assert!(o.status.success(), "{}", text(&o));
}

/// Seconds in Slurm's `[D-]HH:MM:SS` (or `MM:SS`) run time.
fn run_seconds(s: &str) -> u64 {
    let (days, hms) = s.split_once('-').unwrap_or(("0", s));
    let days: u64 = days.parse().expect("days");
    let hms = hms
        .split(':')
        .map(|p| p.parse::<u64>().expect("a number"))
        .fold(0, |acc, p| acc * 60 + p);
    days * 86_400 + hms
}

/// Both ranks of a job, stopped (SIGSTOP) until dropped (SIGCONT), so a
/// signal Slurm sends them meanwhile arrives before the run can go on.
struct Stopped(Vec<i32>);

impl Stopped {
    fn ranks(id: &str) -> Self {
        let pids: Vec<i32> = ["0", "1"]
            .iter()
            .map(|r| task_pid(id, r).unwrap_or_else(|| panic!("rank {r}'s process")))
            .collect();
        for &pid in &pids {
            // SAFETY: kill(2) on a process this test found by its job and rank.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        }
        Stopped(pids)
    }

    /// Wait until Slurm has signalled every rank: `sig` pending, or the
    /// rank no longer stopped (slurmstepd may send SIGCONT with a signal,
    /// so the rank can act on it; nothing else continues it).
    fn wait_signalled(&self, sig: i32, log: &Path) {
        let started = std::time::Instant::now();
        while !self
            .0
            .iter()
            .all(|&pid| signal_pending(pid, sig) || !stopped(pid))
        {
            assert!(
                started.elapsed().as_secs() < 300,
                "signal {sig} never reached ranks {:?}:\n{}",
                self.0,
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as in `ranks`.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

/// Whether process `pid` is stopped (state `T`); a process gone is not.
fn stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The state follows the command name in parentheses.
            let after = &s[s.rfind(')')? + 1..];
            after.split_whitespace().next().map(|st| st == "T")
        })
        .unwrap_or(false)
}

/// Whether `sig` is pending for process `pid` (its own or a thread's set).
fn signal_pending(pid: i32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let bit = 1u64 << (sig - 1);
    status.lines().any(|l| {
        ["SigPnd:", "ShdPnd:"].iter().any(|k| {
            l.strip_prefix(k)
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .is_some_and(|m| m & bit != 0)
        })
    })
}

#[test]
fn a_failing_rank_fails_the_job_without_a_requeue() {
    let conf = slurm_conf();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "TRAIN:\n  EPOCH: 3\n").unwrap();
    let log = dir.path().join("bad.log");
    let out = dir.path().join("out");
    let env = [
        ("RIDE_CFG", cfg.to_str().unwrap()),
        ("RIDE_OUTPUT", out.to_str().unwrap()),
    ];
    let id = submit(&conf, &log, &env, &[]);
    // Other tests' jobs may hold the node first.
    let info = wait_done(&conf, &id, QUEUED_JOB_SECONDS, &log);
    let t = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(info["JobState"], "FAILED", "{t}");
    assert_eq!(info["ExitCode"], "78:0", "{info:?}\n{t}");
    assert_eq!(info["Restarts"], "0", "{t}");
    assert!(!t.contains("requeueing"), "{t}");
}

/// Heals a cut node link when dropped, so a failing test leaves the
/// two-node cluster whole.
struct Cut(&'static str);

impl Cut {
    fn node(node: &'static str) -> Self {
        two_nodes(&["cut", node]);
        Cut(node)
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        two_nodes(&["heal", self.0]);
    }
}

fn two_nodes(args: &[&str]) {
    let o = Command::new(repo_root().join("scripts/slurm-two-nodes.sh"))
        .args(args)
        .output()
        .expect("slurm-two-nodes.sh runs");
    assert!(o.status.success(), "{args:?}: {}", text(&o));
}

#[test]
fn a_two_node_job_survives_losing_a_node() {
    let conf = conf_of("RIDE_SLURM2_DIR", "slurm2", "slurm-two-nodes.sh");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let log = dir.path().join("two.log");
    let env = synthetic_job(&out, 30);
    let started = std::time::Instant::now();
    let mut cmd = ride_sbatch(
        &conf,
        &["--parsable", "--nodes=2", "--ntasks-per-node=1"],
        &log,
    );
    cmd.envs(env);
    let o = cmd.output().expect("sbatch runs");
    assert!(o.status.success(), "{}", text(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    wait_for_first_checkpoint(&log, started);
    // Node n2 drops off the network mid-run, as after a switch or NIC
    // failure: its rank hangs, slurmctld declares the node DOWN and
    // requeues the job (--requeue); it can run again once n2 is back.
    let cut = Cut::node("n2");
    let cut_at = started.elapsed().as_secs();
    loop {
        let info = job_info(&conf, &id);
        if info.get("Restarts").is_some_and(|r| r != "0") {
            break;
        }
        assert!(
            started.elapsed().as_secs() < cut_at + 120,
            "not requeued after the node loss: {info:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let requeued_after = started.elapsed().as_secs() - cut_at;
    drop(cut);
    let info = wait_done(&conf, &id, REQUEUED_JOB_SECONDS, &log);
    let t = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "node lost at {cut_at} s, job requeued {requeued_after} s later, completed at {:.0} s: {info:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(info["JobState"], "COMPLETED", "{t}");
    // One rank per node, meeting over the namespaces' network.
    assert!(
        t.contains("rank 0/2 (local 0/1)") && t.contains("rank 1/2 (local 0/1)"),
        "{t}"
    );
    for needle in [
        "DUE TO NODE FAILURE",
        "allocation 2",
        "resumed from",
        "| top-1 overall",
    ] {
        assert!(t.contains(needle), "{needle:?} in\n{t}");
    }
}

/// Send `sig` to job `id`'s rank 1 once its log shows the first checkpoint.
fn signal_rank_1_after_first_checkpoint(id: &str, log: &Path, sig: i32) {
    wait_for_first_checkpoint(log, std::time::Instant::now());
    let pid = task_pid(id, "1").expect("rank 1's process");
    // SAFETY: kill(2) on a process this test found by its job and rank.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// The pid of job `id`'s task `rank` (a `ride-trainer` process on this machine).
fn task_pid(id: &str, rank: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        // The trainer itself, not the `srun` that started it (whose
        // arguments name it and whose environment has the batch step's
        // SLURM_PROCID=0).
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let argv0 = cmd.split(|&b| b == 0).next()?;
        if !String::from_utf8_lossy(argv0).ends_with("ride-trainer") {
            return None;
        }
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let env = String::from_utf8_lossy(&env);
        let has = |kv: &str| env.split('\0').any(|x| x == kv);
        (has(&format!("SLURM_JOB_ID={id}")) && has(&format!("SLURM_PROCID={rank}"))).then_some(pid)
    })
}

#[test]
fn a_rank_killed_mid_run_fails_the_job_without_a_requeue() {
    // A crash is not a preemption: the surviving rank finds its peer gone
    // and exits 1 (it cannot save, a save needs every rank), and the job
    // fails without a requeue.
    let conf = slurm_conf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let log = dir.path().join("crash.log");
    let env = synthetic_job(&out, 30);
    let id = submit(&conf, &log, &pairs(&env), &[]);
    signal_rank_1_after_first_checkpoint(&id, &log, libc::SIGKILL);
    let info = wait_done(&conf, &id, 300, &log);
    let t = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(info["JobState"], "FAILED", "{info:?}\n{t}");
    assert_eq!(info["Restarts"], "0", "{t}");
    assert!(!t.contains("requeueing"), "{t}");
    assert!(!t.contains("preempted: checkpoint saved"), "{t}");
}

#[test]
fn a_frozen_rank_stalls_the_step_and_the_job_requeues_and_finishes() {
    // Rank 1 stopped with SIGSTOP: rank 0's watchdog exits 76 after 5 s
    // without a step and says so in the stall report; srun ends the silent
    // rank 3 s later; the script requeues, and the next allocation resumes
    // from the last checkpoint and completes.
    let conf = slurm_conf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let log = dir.path().join("stall.log");
    let report = dir.path().join("stall-report");
    let mut env = synthetic_job(&out, 4);
    env.extend([
        ("RIDE_STALL_TIMEOUT".to_string(), "5".to_string()),
        ("RIDE_STALL_SETTLE".to_string(), "3".to_string()),
        (
            "RIDE_STALL_REPORT".to_string(),
            report.display().to_string(),
        ),
    ]);
    let id = submit(&conf, &log, &pairs(&env), &[]);
    signal_rank_1_after_first_checkpoint(&id, &log, libc::SIGSTOP);
    let info = wait_done(&conf, &id, REQUEUED_JOB_SECONDS, &log);
    let t = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(info["JobState"], "COMPLETED", "{info:?}\n{t}");
    assert_eq!(info["Restarts"], "1", "{t}");
    for needle in [
        "ride.sbatch: the gang stalled",
        "rank 0: stalled: no optimiser step for",
        "waiting in a collective",
        "work lost since the last checkpoint:",
        "stall 1 of at most 3; requeueing",
        "allocation 2",
        "resumed from",
        "| top-1 overall",
    ] {
        assert!(t.contains(needle), "{needle:?} in\n{t}");
    }
    assert_eq!(
        std::fs::read_to_string(format!("{}.count", report.display()))
            .unwrap()
            .trim(),
        "1"
    );
}
