//! The local launcher: `ride-trainer launch --nproc-per-node N -- <train args>`
//! runs N ranks of `ride-trainer train` on this machine with torchrun's
//! environment, prefixes their logs with the rank, and when any rank fails
//! stops the rest and restarts the whole gang (which resumes from the latest
//! checkpoint), up to a restart budget.
//!
//! With `--nnodes M --node-rank R` it is one node's share of a larger gang
//! (a worker pod with several GPUs, a Slurm node): global ranks are laid out
//! node-major (`R × N + local`), and it never restarts on its own, because
//! only whoever started all the nodes (the operator, Slurm) can restart the
//! whole gang; it exits with the first bad rank's code instead.

use crate::logging::{LogFormat, ENV_LOG_FORMAT};
use crate::train::PREEMPTED_EXIT_CODE;
use ride_contract as contract;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one rank ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankExit {
    /// Exit code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl RankExit {
    fn from_status(s: ExitStatus) -> Self {
        match (s.code(), s.signal()) {
            (Some(c), _) => RankExit::Code(c),
            (None, Some(sig)) => RankExit::Signal(sig),
            (None, None) => RankExit::Code(1),
        }
    }
}

impl std::fmt::Display for RankExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RankExit::Code(c) => write!(f, "exit code {c}"),
            RankExit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// What a gang attempt came to, judged by its first rank to end badly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Every rank exited 0.
    Succeeded,
    /// A rank exited with the preempted code (checkpoint saved).
    Preempted,
    /// A rank failed.
    Failed {
        /// The first rank seen failing.
        rank: usize,
        /// How it ended.
        exit: RankExit,
    },
}

/// Judge an attempt from the first non-zero exit (in the order seen) or all zeros.
pub fn judge(first_bad: Option<(usize, RankExit)>) -> AttemptOutcome {
    match first_bad {
        None => AttemptOutcome::Succeeded,
        Some((_, RankExit::Code(PREEMPTED_EXIT_CODE))) => AttemptOutcome::Preempted,
        Some((rank, exit)) => AttemptOutcome::Failed { rank, exit },
    }
}

/// What the launcher does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Stop with this exit code.
    Exit(i32),
    /// Start the gang again; `counts` says whether it uses the restart budget.
    Restart {
        /// Whether this restart uses the budget.
        counts: bool,
    },
}

/// Most preemption restarts in a row before the launcher gives up (a loop guard).
pub const MAX_PREEMPTION_RESTARTS: u32 = 100;

/// Decide after an attempt. Preemptions restart without using the budget
/// unless the launcher itself was asked to stop.
pub fn next_step(
    outcome: AttemptOutcome,
    restarts_used: u32,
    max_restarts: u32,
    preemptions: u32,
    stop_requested: bool,
) -> NextStep {
    match outcome {
        AttemptOutcome::Succeeded => NextStep::Exit(0),
        _ if stop_requested => NextStep::Exit(PREEMPTED_EXIT_CODE),
        AttemptOutcome::Preempted if preemptions < MAX_PREEMPTION_RESTARTS => {
            NextStep::Restart { counts: false }
        }
        AttemptOutcome::Preempted => NextStep::Exit(PREEMPTED_EXIT_CODE),
        // A bad config fails the same way every time: no restart.
        AttemptOutcome::Failed {
            exit: RankExit::Code(c),
            ..
        } if ride_contract::classify_exit(c) == ride_contract::ExitClass::Permanent => {
            NextStep::Exit(c)
        }
        AttemptOutcome::Failed { .. } if restarts_used < max_restarts => {
            NextStep::Restart { counts: true }
        }
        AttemptOutcome::Failed { exit, .. } => NextStep::Exit(match exit {
            RankExit::Code(c) if c != 0 => c,
            _ => 1,
        }),
    }
}

/// Launcher settings.
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    /// Ranks to start.
    pub nproc: usize,
    /// Gang restarts allowed after failures.
    pub max_restarts: u32,
    /// Rendezvous port; a free one per attempt when `None`.
    pub master_port: Option<u16>,
    /// Arguments after `train`.
    pub train_args: Vec<String>,
    /// The trainer executable.
    pub program: PathBuf,
    /// Time between SIGTERM and SIGKILL when stopping ranks.
    pub grace: Duration,
    /// This machine's place among several (`None`: the whole gang is here).
    pub node: Option<NodePlacement>,
    /// Log format of the launcher and its ranks: text lines get a `[rank N]`
    /// prefix, JSON lines pass through whole (each names its rank).
    pub log_format: LogFormat,
}

/// One node's place in a gang that spans several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlacement {
    /// Nodes in the gang.
    pub nnodes: usize,
    /// This node's index.
    pub node_rank: usize,
    /// Host of global rank 0's rendezvous store.
    pub master_addr: String,
}

impl LaunchOptions {
    /// Ranks in the whole gang.
    pub fn world_size(&self) -> usize {
        self.nproc * self.node.as_ref().map_or(1, |n| n.nnodes)
    }

    /// The global rank of local rank `local`, node-major.
    pub fn global_rank(&self, local: usize) -> usize {
        self.node.as_ref().map_or(0, |n| n.node_rank) * self.nproc + local
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn spawn_rank(
    opts: &LaunchOptions,
    rank: usize,
    port: u16,
    attempt: u32,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(&opts.program);
    cmd.env(ENV_LOG_FORMAT, opts.log_format.as_str());
    let master = opts
        .node
        .as_ref()
        .map_or("127.0.0.1", |n| n.master_addr.as_str());
    cmd.arg("train")
        .args(&opts.train_args)
        .env(contract::ENV_RANK, opts.global_rank(rank).to_string())
        .env(contract::ENV_WORLD_SIZE, opts.world_size().to_string())
        .env(contract::ENV_LOCAL_RANK, rank.to_string())
        .env(contract::ENV_LOCAL_WORLD_SIZE, opts.nproc.to_string())
        .env(contract::ENV_MASTER_ADDR, master)
        .env(contract::ENV_MASTER_PORT, port.to_string())
        .env(contract::ENV_RESTART_ATTEMPT, attempt.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if rank > 0 {
        // One final report per machine, from its first rank (the one a
        // pod's termination message and progress endpoint stand for).
        cmd.env_remove(ride_contract::ENV_TERMINATION_LOG);
    }
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        // As torchrun: split the cores between ranks instead of oversubscribing.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cmd.env("OMP_NUM_THREADS", (cores / opts.nproc).max(1).to_string());
    }
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("[rank {rank}] {line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let prefix = opts.log_format == LogFormat::Text;
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if prefix {
                    eprintln!("[rank {rank}] {line}");
                } else {
                    eprintln!("{line}");
                }
            }
        });
    }
    Ok(child)
}

/// Stop every rank still running: SIGTERM, then SIGKILL after `grace`.
fn stop_all(children: &mut [Option<Child>], grace: Duration) {
    for c in children.iter().flatten() {
        signal(c, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        let mut running = false;
        for slot in children.iter_mut() {
            if let Some(c) = slot {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => *slot = None,
                    Ok(None) => running = true,
                }
            }
        }
        if !running {
            return;
        }
        if Instant::now() >= deadline {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run one attempt of the gang; returns the first bad exit, if any.
fn run_attempt(
    opts: &LaunchOptions,
    attempt: u32,
    stop: &AtomicBool,
) -> std::io::Result<Option<(usize, RankExit)>> {
    let port = match opts.master_port {
        Some(p) => p,
        None => free_port()?,
    };
    let mut children: Vec<Option<Child>> = Vec::with_capacity(opts.nproc);
    for rank in 0..opts.nproc {
        match spawn_rank(opts, rank, port, attempt) {
            Ok(c) => {
                tracing::info!(
                    attempt,
                    rank,
                    pid = c.id(),
                    "launch: attempt {attempt}: rank {rank} pid {}",
                    c.id()
                );
                children.push(Some(c));
            }
            Err(e) => {
                stop_all(&mut children, opts.grace);
                return Err(e);
            }
        }
    }
    let mut first_bad: Option<(usize, RankExit)> = None;
    let mut forwarded = false;
    loop {
        if stop.load(Ordering::SeqCst) && !forwarded {
            // Our own SIGTERM/SIGUSR1: let the ranks checkpoint and exit.
            tracing::info!("launch: stop requested; forwarding SIGTERM to the ranks");
            for c in children.iter().flatten() {
                signal(c, libc::SIGTERM);
            }
            forwarded = true;
        }
        let mut running = 0;
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            match c.try_wait()? {
                None => running += 1,
                Some(status) => {
                    let exit = RankExit::from_status(status);
                    *slot = None;
                    if exit != RankExit::Code(0) && first_bad.is_none() {
                        tracing::warn!(rank, exit = %exit, "launch: rank {rank} ended: {exit}");
                        first_bad = Some((rank, exit));
                    }
                }
            }
        }
        if running == 0 {
            return Ok(first_bad);
        }
        if first_bad.is_some() && !forwarded {
            tracing::info!("launch: stopping the other ranks");
            stop_all(&mut children, opts.grace);
            return Ok(first_bad);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run the gang until it succeeds, is stopped, or the budget is spent.
/// Returns the exit code for the launcher process.
pub fn launch(opts: &LaunchOptions, stop: Arc<AtomicBool>) -> std::io::Result<i32> {
    let (mut restarts, mut preemptions) = (0u32, 0u32);
    for attempt in 0.. {
        let outcome = judge(run_attempt(opts, attempt, &stop)?);
        if opts.node.is_some() {
            // Part of a larger gang: whoever started every node restarts it.
            let code = match outcome {
                AttemptOutcome::Succeeded => 0,
                AttemptOutcome::Preempted => PREEMPTED_EXIT_CODE,
                AttemptOutcome::Failed { rank, exit } => {
                    tracing::warn!(
                        "launch: rank {} {exit}; ending this node's share of the gang",
                        opts.global_rank(rank)
                    );
                    match exit {
                        RankExit::Code(c) if c != 0 => c,
                        RankExit::Signal(sig) => 128 + sig,
                        _ => 1,
                    }
                }
            };
            return Ok(code);
        }
        let step = next_step(
            outcome,
            restarts,
            opts.max_restarts,
            preemptions,
            stop.load(Ordering::SeqCst),
        );
        match (step, outcome) {
            (NextStep::Exit(code), _) => {
                match outcome {
                    AttemptOutcome::Succeeded => tracing::info!("launch: all {} ranks finished", opts.nproc),
                    AttemptOutcome::Failed { rank, exit } => tracing::warn!(
                        "launch: giving up after {restarts} restart(s): rank {rank} {exit}; raise --max-restarts or see the rank's log"
                    ),
                    AttemptOutcome::Preempted => tracing::info!("launch: preempted; checkpoint saved, run the same command to resume"),
                }
                return Ok(code);
            }
            (NextStep::Restart { counts }, _) => {
                if counts {
                    restarts += 1;
                } else {
                    preemptions += 1;
                }
                tracing::warn!(
                    restarts,
                    counted = counts,
                    "launch: restarting all {} ranks from the latest checkpoint (restart {restarts}/{}{})",
                    opts.nproc,
                    opts.max_restarts,
                    if counts { "" } else { ", preemption: not counted" }
                );
            }
        }
    }
    unreachable!("the attempt loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judging_attempts() {
        assert_eq!(judge(None), AttemptOutcome::Succeeded);
        assert_eq!(
            judge(Some((1, RankExit::Code(75)))),
            AttemptOutcome::Preempted
        );
        assert_eq!(
            judge(Some((1, RankExit::Signal(9)))),
            AttemptOutcome::Failed {
                rank: 1,
                exit: RankExit::Signal(9)
            }
        );
    }

    #[test]
    fn restart_decisions() {
        let failed = AttemptOutcome::Failed {
            rank: 0,
            exit: RankExit::Code(3),
        };
        assert_eq!(
            next_step(AttemptOutcome::Succeeded, 0, 2, 0, false),
            NextStep::Exit(0)
        );
        assert_eq!(
            next_step(failed, 0, 2, 0, false),
            NextStep::Restart { counts: true }
        );
        assert_eq!(next_step(failed, 2, 2, 0, false), NextStep::Exit(3));
        let killed = AttemptOutcome::Failed {
            rank: 0,
            exit: RankExit::Signal(9),
        };
        assert_eq!(next_step(killed, 1, 1, 0, false), NextStep::Exit(1));
        // An invalid config is not retried, whatever budget is left.
        let bad_config = AttemptOutcome::Failed {
            rank: 1,
            exit: RankExit::Code(ride_contract::CONFIG_ERROR_EXIT_CODE),
        };
        assert_eq!(
            next_step(bad_config, 0, 5, 0, false),
            NextStep::Exit(ride_contract::CONFIG_ERROR_EXIT_CODE)
        );
        // Preemption does not use the budget, unless we were told to stop.
        assert_eq!(
            next_step(AttemptOutcome::Preempted, 2, 2, 5, false),
            NextStep::Restart { counts: false }
        );
        assert_eq!(
            next_step(AttemptOutcome::Preempted, 0, 2, 0, true),
            NextStep::Exit(75)
        );
        assert_eq!(next_step(failed, 0, 2, 0, true), NextStep::Exit(75));
        assert_eq!(
            next_step(
                AttemptOutcome::Preempted,
                0,
                2,
                MAX_PREEMPTION_RESTARTS,
                false
            ),
            NextStep::Exit(75)
        );
    }
}
