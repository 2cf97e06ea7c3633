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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Every rank exited 0.
    Succeeded,
    /// A rank exited with the preempted code (checkpoint saved).
    Preempted,
    /// A rank's stall watchdog fired: the gang stopped making progress.
    Stalled {
        /// The first rank to report the stall.
        rank: usize,
        /// Ranks that had not ended when the others gave up: the ones that
        /// stopped first (a frozen process cannot report anything).
        stopped_first: Vec<usize>,
    },
    /// A rank failed.
    Failed {
        /// The first rank seen failing.
        rank: usize,
        /// How it ended.
        exit: RankExit,
    },
}

/// How an attempt ended, as the launcher saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttemptEnd {
    /// The first rank to end badly, in the order seen.
    pub first_bad: Option<(usize, RankExit)>,
    /// Ranks still running a moment after the first bad end (see
    /// [`STALL_SETTLE`]), before they were stopped.
    pub still_running: Vec<usize>,
}

/// Judge an attempt from how it ended.
pub fn judge(end: &AttemptEnd) -> AttemptOutcome {
    match end.first_bad {
        None => AttemptOutcome::Succeeded,
        Some((_, RankExit::Code(PREEMPTED_EXIT_CODE))) => AttemptOutcome::Preempted,
        Some((rank, RankExit::Code(contract::STALLED_EXIT_CODE))) => AttemptOutcome::Stalled {
            rank,
            stopped_first: end.still_running.clone(),
        },
        Some((rank, exit)) => AttemptOutcome::Failed { rank, exit },
    }
}

/// Why the gang restarts; each cause has its own budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RestartCause {
    /// A rank failed (`--max-restarts`).
    Failure,
    /// The gang stalled (`--max-stall-restarts`).
    Stall,
    /// A rank was preempted with a checkpoint ([`MAX_PREEMPTION_RESTARTS`]).
    Preemption,
}

impl RestartCause {
    /// The cause as the logs and the summary name it.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartCause::Failure => "failure",
            RestartCause::Stall => "stall",
            RestartCause::Preemption => "preemption",
        }
    }
}

/// What the launcher does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Stop with this exit code.
    Exit(i32),
    /// Start the gang again, charging the restart to `cause`'s budget.
    Restart {
        /// Why.
        cause: RestartCause,
    },
}

/// Most preemption restarts in a row before the launcher gives up (a loop guard).
pub const MAX_PREEMPTION_RESTARTS: u32 = 100;

/// Restarts used so far, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestartsUsed {
    /// After rank failures.
    pub failures: u32,
    /// After stalls.
    pub stalls: u32,
    /// After preemptions.
    pub preemptions: u32,
}

/// Restart budgets by cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budgets {
    /// `--max-restarts`.
    pub failures: u32,
    /// `--max-stall-restarts`.
    pub stalls: u32,
}

/// Decide after an attempt. Preemptions restart without using a budget
/// unless the launcher itself was asked to stop; stalls and failures each
/// use their own.
pub fn next_step(
    outcome: &AttemptOutcome,
    used: RestartsUsed,
    budgets: Budgets,
    stop_requested: bool,
) -> NextStep {
    match outcome {
        AttemptOutcome::Succeeded => NextStep::Exit(0),
        _ if stop_requested => NextStep::Exit(PREEMPTED_EXIT_CODE),
        AttemptOutcome::Preempted if used.preemptions < MAX_PREEMPTION_RESTARTS => {
            NextStep::Restart {
                cause: RestartCause::Preemption,
            }
        }
        AttemptOutcome::Preempted => NextStep::Exit(PREEMPTED_EXIT_CODE),
        AttemptOutcome::Stalled { .. } if used.stalls < budgets.stalls => NextStep::Restart {
            cause: RestartCause::Stall,
        },
        AttemptOutcome::Stalled { .. } => NextStep::Exit(contract::STALLED_EXIT_CODE),
        // A bad config fails the same way every time: no restart.
        AttemptOutcome::Failed {
            exit: RankExit::Code(c),
            ..
        } if contract::classify_exit(*c) == contract::ExitClass::Permanent => NextStep::Exit(*c),
        AttemptOutcome::Failed { .. } if used.failures < budgets.failures => NextStep::Restart {
            cause: RestartCause::Failure,
        },
        AttemptOutcome::Failed { exit, .. } => NextStep::Exit(match exit {
            RankExit::Code(c) if *c != 0 => *c,
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
    /// Gang restarts allowed after stalls.
    pub max_stall_restarts: u32,
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
    reports: &RankReports,
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
    // Every rank leaves its final report where the launcher reads it; the
    // first keeps the one it inherited (a pod's termination message).
    cmd.env(contract::ENV_TERMINATION_LOG, reports.path(rank));
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

/// Where each local rank leaves its final progress report: the first
/// rank where this launcher's own `RIDE_TERMINATION_LOG` points, if set
/// (one report per machine, the one a pod's termination message stands
/// for), the others in a private directory.
struct RankReports {
    inherited: Option<PathBuf>,
    dir: tempfile::TempDir,
}

impl RankReports {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            inherited: std::env::var_os(contract::ENV_TERMINATION_LOG).map(PathBuf::from),
            dir: tempfile::Builder::new().prefix("ride-launch-").tempdir()?,
        })
    }

    fn path(&self, rank: usize) -> PathBuf {
        match (&self.inherited, rank) {
            (Some(p), 0) => p.clone(),
            _ => self.dir.path().join(format!("rank{rank}.json")),
        }
    }

    /// Forget an earlier attempt's reports.
    fn clear(&self, nproc: usize) {
        for rank in 0..nproc {
            let _ = std::fs::remove_file(self.path(rank));
        }
    }

    /// The first report, in rank order, of a process that trained.
    fn first_training(&self, nproc: usize) -> Option<contract::Progress> {
        (0..nproc)
            .filter_map(|r| std::fs::read(self.path(r)).ok())
            .filter_map(|b| serde_json::from_slice::<contract::Progress>(&b).ok())
            .find(|p| p.training_since_unix.is_some())
    }
}

/// How long the launcher waits, after the first rank reports a stall, for
/// the other ranks' watchdogs to fire too: a rank still running after it
/// stopped first. Twice the watchdogs' check interval (a twentieth of the
/// limit), so healthy ranks are not named.
/// Without a fixed limit (derived, off, or unreadable), the longest wait.
fn stall_settle() -> Duration {
    let longest = Duration::from_secs(12);
    match crate::watchdog::StallTimeout::from_env() {
        Ok(crate::watchdog::StallTimeout::Fixed(limit)) => {
            (limit / 10).clamp(Duration::from_secs(1), longest)
        }
        _ => longest,
    }
}

/// Run one attempt of the gang.
fn run_attempt(
    opts: &LaunchOptions,
    attempt: u32,
    stop: &AtomicBool,
    reports: &RankReports,
) -> std::io::Result<AttemptEnd> {
    let port = match opts.master_port {
        Some(p) => p,
        None => free_port()?,
    };
    reports.clear(opts.nproc);
    let mut children: Vec<Option<Child>> = Vec::with_capacity(opts.nproc);
    for rank in 0..opts.nproc {
        match spawn_rank(opts, rank, port, attempt, reports) {
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
    let mut end = AttemptEnd::default();
    let mut forwarded = false;
    let mut settle_until: Option<Instant> = None;
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
                    if exit != RankExit::Code(0) && end.first_bad.is_none() {
                        tracing::warn!(rank, exit = %exit, "launch: rank {rank} ended: {exit}");
                        end.first_bad = Some((rank, exit));
                        if exit == RankExit::Code(contract::STALLED_EXIT_CODE) {
                            settle_until = Some(Instant::now() + stall_settle());
                        }
                    }
                }
            }
        }
        if running == 0 {
            return Ok(end);
        }
        let settling = settle_until.is_some_and(|t| Instant::now() < t);
        if end.first_bad.is_some() && !forwarded && !settling {
            end.still_running = (0..children.len())
                .filter(|&r| children[r].is_some())
                .map(|r| opts.global_rank(r))
                .collect();
            // Ranks still running after a stall are stuck by definition:
            // a grace period would only wait on them (a stopped process
            // does not even take SIGTERM).
            let stalled = settle_until.is_some();
            tracing::info!(
                "launch: stopping the other ranks{}",
                if stalled { " (stuck: SIGKILL)" } else { "" }
            );
            stop_all(
                &mut children,
                if stalled { Duration::ZERO } else { opts.grace },
            );
            return Ok(end);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// This node's exit code when it is one share of a larger gang.
fn node_exit_code(opts: &LaunchOptions, outcome: &AttemptOutcome) -> i32 {
    match outcome {
        AttemptOutcome::Succeeded => 0,
        AttemptOutcome::Preempted => PREEMPTED_EXIT_CODE,
        AttemptOutcome::Stalled { .. } => contract::STALLED_EXIT_CODE,
        AttemptOutcome::Failed { rank, exit } => {
            tracing::warn!(
                "launch: rank {} {exit}; ending this node's share of the gang",
                opts.global_rank(*rank)
            );
            match exit {
                RankExit::Code(c) if *c != 0 => *c,
                RankExit::Signal(sig) => 128 + sig,
                _ => 1,
            }
        }
    }
}

/// Restarts and the work they cost, by cause, for the final summary.
#[derive(Default)]
struct RestartLedger {
    used: RestartsUsed,
    lost: std::collections::BTreeMap<RestartCause, contract::LostWork>,
}

impl RestartLedger {
    fn record(&mut self, cause: RestartCause, lost: Option<contract::LostWork>) {
        match cause {
            RestartCause::Failure => self.used.failures += 1,
            RestartCause::Stall => self.used.stalls += 1,
            RestartCause::Preemption => self.used.preemptions += 1,
        }
        if let Some(l) = lost {
            self.lost.entry(cause).or_default().add(&l);
        }
    }

    fn summary(&self) -> Option<String> {
        let u = self.used;
        if u.failures + u.stalls + u.preemptions == 0 {
            return None;
        }
        let lost: Vec<String> = self
            .lost
            .iter()
            .map(|(c, l)| format!("{} {}", c.as_str(), describe_lost(l)))
            .collect();
        Some(format!(
            "launch: restarts by cause: failure {}, stall {}, preemption {}; work lost: {}",
            u.failures,
            u.stalls,
            u.preemptions,
            if lost.is_empty() {
                "none reported".into()
            } else {
                lost.join("; ")
            }
        ))
    }
}

fn describe_lost(l: &contract::LostWork) -> String {
    format!(
        "{} steps, {:.1} s of training to redo, {:.1} device-seconds",
        l.steps, l.seconds, l.device_seconds
    )
}

/// What the attempt's outcome says, for the log.
fn describe_outcome(outcome: &AttemptOutcome) -> String {
    match outcome {
        AttemptOutcome::Stalled {
            rank,
            stopped_first,
        } if stopped_first.is_empty() => format!(
            "rank {rank} stalled; every rank reported it (the one that says it stopped outside a collective stopped first)"
        ),
        AttemptOutcome::Stalled { stopped_first, .. } => format!(
            "stalled: rank(s) {stopped_first:?} stopped first (still running, silent, when the others gave up)"
        ),
        AttemptOutcome::Failed { rank, exit } => format!("rank {rank} {exit}"),
        AttemptOutcome::Preempted => "preempted".into(),
        AttemptOutcome::Succeeded => "finished".into(),
    }
}

/// Run the gang until it succeeds, is stopped, or a budget is spent.
/// Returns the exit code for the launcher process.
pub fn launch(opts: &LaunchOptions, stop: Arc<AtomicBool>) -> std::io::Result<i32> {
    let reports = RankReports::new()?;
    let mut ledger = RestartLedger::default();
    let budgets = Budgets {
        failures: opts.max_restarts,
        stalls: opts.max_stall_restarts,
    };
    for attempt in 0.. {
        let end = run_attempt(opts, attempt, &stop, &reports)?;
        let outcome = judge(&end);
        if opts.node.is_some() {
            // Part of a larger gang: whoever started every node restarts it.
            return Ok(node_exit_code(opts, &outcome));
        }
        let lost = reports.first_training(opts.nproc).and_then(|p| {
            contract::LostWork::from_report(&p, contract::unix_now(), opts.world_size() as u32, 1)
        });
        match next_step(&outcome, ledger.used, budgets, stop.load(Ordering::SeqCst)) {
            NextStep::Exit(code) => {
                match &outcome {
                    AttemptOutcome::Succeeded => tracing::info!("launch: all {} ranks finished", opts.nproc),
                    AttemptOutcome::Preempted => tracing::info!("launch: preempted; checkpoint saved, run the same command to resume"),
                    other => tracing::warn!(
                        "launch: giving up: {}; raise --max-restarts / --max-stall-restarts or see the rank's log",
                        describe_outcome(other)
                    ),
                }
                if let Some(line) = ledger.summary() {
                    tracing::info!("{line}");
                }
                return Ok(code);
            }
            NextStep::Restart { cause } => {
                ledger.record(cause, lost);
                let (used, budget) = match cause {
                    RestartCause::Failure => (ledger.used.failures, budgets.failures.to_string()),
                    RestartCause::Stall => (ledger.used.stalls, budgets.stalls.to_string()),
                    RestartCause::Preemption => (ledger.used.preemptions, "not counted".into()),
                };
                tracing::warn!(
                    cause = cause.as_str(),
                    restarts = used,
                    lost_steps = lost.map(|l| l.steps),
                    lost_seconds = lost.map(|l| l.seconds),
                    lost_device_seconds = lost.map(|l| l.device_seconds),
                    "launch: {}; restarting all {} ranks from the latest checkpoint ({} restart {used}/{budget}); work lost: {}",
                    describe_outcome(&outcome),
                    opts.nproc,
                    cause.as_str(),
                    lost.as_ref().map_or("unknown (no report)".into(), describe_lost),
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
        let end = |bad: Option<(usize, RankExit)>, running: Vec<usize>| AttemptEnd {
            first_bad: bad,
            still_running: running,
        };
        assert_eq!(judge(&end(None, vec![])), AttemptOutcome::Succeeded);
        assert_eq!(
            judge(&end(Some((1, RankExit::Code(75))), vec![])),
            AttemptOutcome::Preempted
        );
        assert_eq!(
            judge(&end(Some((1, RankExit::Signal(9))), vec![])),
            AttemptOutcome::Failed {
                rank: 1,
                exit: RankExit::Signal(9)
            }
        );
        assert_eq!(
            judge(&end(Some((0, RankExit::Code(76))), vec![2])),
            AttemptOutcome::Stalled {
                rank: 0,
                stopped_first: vec![2]
            }
        );
    }

    #[test]
    fn restart_decisions() {
        let budgets = Budgets {
            failures: 2,
            stalls: 1,
        };
        let used = |failures, stalls, preemptions| RestartsUsed {
            failures,
            stalls,
            preemptions,
        };
        let failed = AttemptOutcome::Failed {
            rank: 0,
            exit: RankExit::Code(3),
        };
        let restart = |cause| NextStep::Restart { cause };
        assert_eq!(
            next_step(&AttemptOutcome::Succeeded, used(0, 0, 0), budgets, false),
            NextStep::Exit(0)
        );
        assert_eq!(
            next_step(&failed, used(0, 0, 0), budgets, false),
            restart(RestartCause::Failure)
        );
        assert_eq!(
            next_step(&failed, used(2, 0, 0), budgets, false),
            NextStep::Exit(3)
        );
        let killed = AttemptOutcome::Failed {
            rank: 0,
            exit: RankExit::Signal(9),
        };
        assert_eq!(
            next_step(&killed, used(2, 0, 0), budgets, false),
            NextStep::Exit(1)
        );
        // An invalid config is not retried, whatever budget is left.
        let bad_config = AttemptOutcome::Failed {
            rank: 1,
            exit: RankExit::Code(ride_contract::CONFIG_ERROR_EXIT_CODE),
        };
        assert_eq!(
            next_step(&bad_config, used(0, 0, 0), budgets, false),
            NextStep::Exit(ride_contract::CONFIG_ERROR_EXIT_CODE)
        );
        // Stalls have their own budget: failures do not spend it, nor it theirs.
        let stalled = AttemptOutcome::Stalled {
            rank: 0,
            stopped_first: vec![1],
        };
        assert_eq!(
            next_step(&stalled, used(2, 0, 0), budgets, false),
            restart(RestartCause::Stall)
        );
        assert_eq!(
            next_step(&stalled, used(0, 1, 0), budgets, false),
            NextStep::Exit(76)
        );
        assert_eq!(
            next_step(&failed, used(0, 1, 0), budgets, false),
            restart(RestartCause::Failure)
        );
        // Preemption does not use a budget, unless we were told to stop.
        assert_eq!(
            next_step(&AttemptOutcome::Preempted, used(2, 1, 5), budgets, false),
            restart(RestartCause::Preemption)
        );
        assert_eq!(
            next_step(&AttemptOutcome::Preempted, used(0, 0, 0), budgets, true),
            NextStep::Exit(75)
        );
        assert_eq!(
            next_step(&failed, used(0, 0, 0), budgets, true),
            NextStep::Exit(75)
        );
        assert_eq!(
            next_step(
                &AttemptOutcome::Preempted,
                used(0, 0, MAX_PREEMPTION_RESTARTS),
                budgets,
                false
            ),
            NextStep::Exit(75)
        );
    }

    #[test]
    fn the_ledger_sums_lost_work_by_cause() {
        let mut ledger = RestartLedger::default();
        assert_eq!(ledger.summary(), None);
        let lost = |steps| ride_contract::LostWork {
            steps,
            seconds: 2.0,
            device_seconds: 8.0,
        };
        ledger.record(RestartCause::Stall, Some(lost(3)));
        ledger.record(RestartCause::Stall, Some(lost(4)));
        ledger.record(RestartCause::Failure, None);
        let line = ledger.summary().unwrap();
        assert!(line.contains("failure 1, stall 2, preemption 0"), "{line}");
        assert!(
            line.contains("stall 7 steps, 4.0 s of training to redo, 16.0 device-seconds"),
            "{line}"
        );
    }
}
