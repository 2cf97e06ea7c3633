//! The process contract between `ride-trainer` and the launchers that start
//! it (the operator's pods, `ride-trainer launch`, Slurm): what an exit code
//! means, which ports and environment variables it uses, which checkpoint
//! locations it accepts ([`CheckpointUri`]), and the progress report it
//! serves while it runs and leaves behind when it ends. Both sides
//! build on these definitions, so a change is a compile error on the other
//! side rather than a silent mismatch. No libtorch, no Kubernetes.

use serde::{Deserialize, Serialize};

mod checkpoint_uri;
mod duration;
pub use checkpoint_uri::{CheckpointUri, CheckpointUriError, CredentialVar, Scheme};
pub use duration::{parse_duration, DEFAULT_CHECKPOINT_EVERY, ENV_CHECKPOINT_EVERY};

/// Exit code for "stopped on request (SIGTERM/SIGUSR1), checkpoint saved,
/// start me again" (EX_TEMPFAIL).
pub const PREEMPTED_EXIT_CODE: i32 = 75;

/// Exit code for "the config or its overrides are invalid" (EX_CONFIG):
/// running it again cannot help.
pub const CONFIG_ERROR_EXIT_CODE: i32 = 78;

/// Exit code of a command-line usage error (what `clap` exits with).
pub const USAGE_ERROR_EXIT_CODE: i32 = 2;

/// Exit code for "no optimiser step for longer than the stall timeout":
/// the rank's watchdog gave up on a gang that stopped making progress
/// (EX_PROTOCOL). Restart the gang; the rank that did not exit this way,
/// or that says it stopped outside a collective, stopped first.
pub const STALLED_EXIT_CODE: i32 = 76;

/// What a trainer's exit code says about running it again, when no rule of
/// the user's says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitClass {
    /// Exit code 0: the run is complete.
    Success,
    /// Stopped on request with a checkpoint saved: start again, at no cost.
    Preempted,
    /// Invalid config or command line: the same inputs fail the same way.
    Permanent,
    /// The rank's stall watchdog fired: the gang stopped making progress.
    Stalled,
    /// Rank 0's address did not resolve before the first collective.
    Unreachable,
    /// Anything else (an error, a panic, a signal, the OOM killer): worth
    /// another try from the last checkpoint.
    Retryable,
}

/// The accumulation steps that keep `old_world x old_accumulation` ranks'
/// worth of micro-batches per optimiser step on `new_world` ranks (the
/// per-rank batch stays the config's), if a whole number does. The trainer
/// applies it on an elastic resume; the operator says in advance what a
/// resize will do with it.
pub fn keep_global_batch(old_world: u64, old_accumulation: u64, new_world: u64) -> Option<u64> {
    let total = old_world.checked_mul(old_accumulation.max(1))?;
    (new_world > 0 && total % new_world == 0).then(|| total / new_world)
}

/// Classify a trainer exit code. Unlike Kubeflow's ExitCode policy, which
/// calls every code 1–127 permanent, only the codes the trainer uses for
/// bad inputs are: its runtime errors (a lost rank, a storage hiccup) exit
/// 1 and are usually transient.
pub fn classify_exit(code: i32) -> ExitClass {
    match code {
        0 => ExitClass::Success,
        PREEMPTED_EXIT_CODE => ExitClass::Preempted,
        CONFIG_ERROR_EXIT_CODE | USAGE_ERROR_EXIT_CODE => ExitClass::Permanent,
        STALLED_EXIT_CODE => ExitClass::Stalled,
        PREFLIGHT_EXIT_CODE => ExitClass::Unreachable,
        _ => ExitClass::Retryable,
    }
}

/// The trainer's executable, as launchers invoke it.
pub const TRAINER_BINARY: &str = "ride-trainer";

/// Rank 0's rendezvous store port when [`ENV_MASTER_PORT`] is not set by a launcher.
pub const MASTER_PORT: u16 = 29500;

/// Port of the metrics and progress endpoint (`--metrics-addr 0.0.0.0:9400`).
pub const METRICS_PORT: u16 = 9400;

/// `--metrics-addr` default: the metrics port on every interface.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9400";

/// `--metrics-addr` value that serves no endpoint.
pub const METRICS_OFF: &str = "off";

// The environment a launcher gives each trainer process: torchrun's names,
// so the trainer also runs under torchrun-style launchers.

/// This process's global rank (0-based).
pub const ENV_RANK: &str = "RANK";
/// Processes in the job.
pub const ENV_WORLD_SIZE: &str = "WORLD_SIZE";
/// This process's rank on its machine (0-based; picks its GPU).
pub const ENV_LOCAL_RANK: &str = "LOCAL_RANK";
/// Processes on this machine.
pub const ENV_LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";
/// Host name or address of rank 0, where the rendezvous store listens.
pub const ENV_MASTER_ADDR: &str = "MASTER_ADDR";
/// Port of rank 0's rendezvous store ([`MASTER_PORT`] by default).
pub const ENV_MASTER_PORT: &str = "MASTER_PORT";
/// Which (re)start of the gang this is, 0 for the first; informational, set
/// by `ride-trainer launch` and the operator.
pub const ENV_RESTART_ATTEMPT: &str = "RIDE_RESTART_ATTEMPT";

/// Path of the JSON [`Progress`] report on the metrics port.
pub const PROGRESS_PATH: &str = "/progress";

/// Environment variable naming the file that receives the final
/// [`Progress`] report as JSON when the trainer exits (on Kubernetes the
/// container's `terminationMessagePath`, read back from pod status).
pub const ENV_TERMINATION_LOG: &str = "RIDE_TERMINATION_LOG";

/// Environment variable selecting the trainer's log format: `text` (lines
/// for a person, the default) or `json` (one object per line, what the
/// operator's pods ask for so trainer and operator logs share a log stack).
pub const ENV_LOG_FORMAT: &str = "RIDE_LOG_FORMAT";

/// Exit code for "rank 0's rendezvous address does not resolve": the
/// preflight check before the first collective gave up (EX_NOPERM's
/// number, for "cannot reach"). Usually a missing Service or DNS record:
/// another try helps only once that is fixed.
pub const PREFLIGHT_EXIT_CODE: i32 = 77;

/// Environment variable with how long (seconds, default 120) a rank waits
/// for `MASTER_ADDR` to resolve before the preflight check fails.
pub const ENV_PREFLIGHT_TIMEOUT: &str = "RIDE_PREFLIGHT_TIMEOUT";

/// Environment variable with the stall watchdog's limit in seconds: a rank
/// that completes no optimiser step for that long while training exits
/// with [`STALLED_EXIT_CODE`]. `0` turns the watchdog off; unset, the limit
/// is 20 typical steps and at least 300 s.
pub const ENV_STALL_TIMEOUT: &str = "RIDE_STALL_TIMEOUT";

/// Environment variable naming a file a rank whose stall watchdog fires
/// appends one line to (its rank and why) before it exits: how a batch
/// script learns that its job step stalled, whatever exit code the step
/// reports for the ranks it had to kill.
pub const ENV_STALL_REPORT: &str = "RIDE_STALL_REPORT";

/// Kubernetes keeps at most this many bytes of a termination message.
pub const TERMINATION_MESSAGE_MAX_BYTES: usize = 4096;

/// Where a run is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// Setting up (data, model, rendezvous, resume).
    #[default]
    Starting,
    /// Training steps.
    Training,
    /// Evaluating after an epoch.
    Evaluating,
    /// Done; the last checkpoint is durable.
    Finished,
    /// Stopped on request with a checkpoint saved (exit code 75).
    Preempted,
    /// Ended with an error.
    Failed,
}

/// A durable checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointProgress {
    /// Its location (`s3://…/ckpt_epoch_N`).
    pub uri: String,
    /// Epoch (0-based) it ends or lies in.
    pub epoch: u64,
    /// Optimiser steps it holds.
    pub step: u64,
    /// RFC 3339 time it was saved.
    pub saved_at: String,
    /// The same time as Unix seconds (absent in reports of older trainers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_unix: Option<f64>,
}

/// Unix time now, in seconds: the clock of every time a [`Progress`]
/// report carries, and of the failure time [`LostWork::from_report`] takes.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Training a restart throws away: what was computed after the last
/// durable checkpoint, which the next gang computes again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LostWork {
    /// Optimiser steps after the checkpoint the next gang resumes from.
    pub steps: u64,
    /// Seconds of training those steps took (work to redo).
    pub seconds: f64,
    /// Accelerator time lost: from the checkpoint (or the start of
    /// training, if later) until the failure was seen, idle time included,
    /// times the gang's ranks and devices per rank. On CPU, rank-seconds.
    pub device_seconds: f64,
}

impl LostWork {
    /// What rank 0's last report says was lost when the gang failed at
    /// `failed_at_unix`, for a gang of `ranks` processes with
    /// `devices_per_rank` accelerators each (1 on CPU). `None` without a
    /// report of training steps.
    pub fn from_report(
        report: &Progress,
        failed_at_unix: f64,
        ranks: u32,
        devices_per_rank: u32,
    ) -> Option<LostWork> {
        let since_training = report.training_since_unix?;
        let checkpoint = report.checkpoint.as_ref();
        let ckpt_step = checkpoint.map_or(0, |c| c.step);
        let ckpt_time = checkpoint.and_then(|c| c.saved_unix).unwrap_or(f64::MIN);
        // Work before this process began training was redone already or
        // belongs to an earlier attempt's account.
        let from = ckpt_time.max(since_training);
        let last_step = report.last_step_unix.unwrap_or(from).max(from);
        Some(LostWork {
            steps: report.step.saturating_sub(ckpt_step),
            seconds: last_step - from,
            device_seconds: (failed_at_unix - from).max(0.0)
                * f64::from(ranks)
                * f64::from(devices_per_rank.max(1)),
        })
    }

    /// Add another restart's loss.
    pub fn add(&mut self, other: &LostWork) {
        self.steps += other.steps;
        self.seconds += other.seconds;
        self.device_seconds += other.device_seconds;
    }
}

/// Headline evaluation numbers, percent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvalProgress {
    /// Epoch (0-based) evaluated.
    pub epoch: u64,
    /// Top-1 overall.
    pub top1: f64,
    /// Many-shot classes (≥ 100 training images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub many: Option<f64>,
    /// Medium-shot classes (21–99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<f64>,
    /// Few-shot classes (≤ 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub few: Option<f64>,
}

/// What a trainer process reports about its run: served as JSON at
/// [`PROGRESS_PATH`] while it runs, written to [`ENV_TERMINATION_LOG`]'s
/// file when it ends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Progress {
    /// Where the run is.
    pub state: RunState,
    /// This process's rank.
    pub rank: u32,
    /// Ranks in the job.
    pub world_size: u32,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Epochs in the run.
    pub epochs: u64,
    /// Optimiser steps taken.
    pub step: u64,
    /// Optimiser steps the whole run takes.
    pub total_steps: u64,
    /// Unix time (seconds) the last step finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_step_unix: Option<f64>,
    /// Unix time (seconds) this process began training steps, after
    /// start-up and any resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_since_unix: Option<f64>,
    /// Training throughput of the job, images per second.
    pub images_per_second: f64,
    /// The last durable checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointProgress>,
    /// The latest evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalProgress>,
    /// Why the run failed or stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Progress {
    /// Compact JSON of at most [`TERMINATION_MESSAGE_MAX_BYTES`] bytes: the
    /// message is shortened first, then dropped, so the numbers always fit.
    pub fn termination_message(&self) -> String {
        let mut p = self.clone();
        loop {
            let json = serde_json::to_string(&p).unwrap_or_default();
            if json.len() <= TERMINATION_MESSAGE_MAX_BYTES {
                return json;
            }
            match &mut p.message {
                Some(m) if m.chars().count() > 64 => {
                    let keep = m.chars().count() / 2;
                    *m = m.chars().take(keep).collect::<String>() + "…";
                }
                Some(_) => p.message = None,
                None => return String::from("{}"),
            }
        }
    }

    /// Parse a report (from the endpoint or a termination message).
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_work_counts_from_the_later_of_the_checkpoint_and_the_start_of_training() {
        let mut p = Progress {
            step: 130,
            training_since_unix: Some(1000.0),
            last_step_unix: Some(1600.0),
            checkpoint: Some(CheckpointProgress {
                step: 100,
                saved_unix: Some(1300.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let lost = LostWork::from_report(&p, 1700.0, 4, 2).unwrap();
        assert_eq!(lost.steps, 30);
        assert_eq!(lost.seconds, 300.0);
        assert_eq!(lost.device_seconds, 400.0 * 4.0 * 2.0);
        // Resumed from a checkpoint saved before this process started: only
        // this process's training counts.
        p.checkpoint.as_mut().unwrap().saved_unix = Some(500.0);
        let lost = LostWork::from_report(&p, 1700.0, 1, 0).unwrap();
        assert_eq!((lost.seconds, lost.device_seconds), (600.0, 700.0));
        // No checkpoint at all: every step is lost.
        p.checkpoint = None;
        assert_eq!(LostWork::from_report(&p, 1700.0, 1, 1).unwrap().steps, 130);
        // Never trained: nothing to say.
        p.training_since_unix = None;
        assert_eq!(LostWork::from_report(&p, 1700.0, 1, 1), None);
        let mut total = LostWork::default();
        total.add(&LostWork {
            steps: 2,
            seconds: 1.5,
            device_seconds: 3.0,
        });
        total.add(&LostWork {
            steps: 1,
            seconds: 0.5,
            device_seconds: 1.0,
        });
        assert_eq!(
            total,
            LostWork {
                steps: 3,
                seconds: 2.0,
                device_seconds: 4.0
            }
        );
    }

    #[test]
    fn reports_round_trip_and_unknown_or_missing_fields_are_tolerated() {
        let p = Progress {
            state: RunState::Training,
            world_size: 2,
            epoch: 3,
            epochs: 10,
            step: 40,
            total_steps: 100,
            last_step_unix: Some(1.5),
            checkpoint: Some(CheckpointProgress {
                uri: "s3://b/run/ckpt_epoch_2".into(),
                epoch: 2,
                step: 30,
                saved_at: "2026-11-29T03:00:00Z".into(),
                saved_unix: None,
            }),
            eval: Some(EvalProgress {
                epoch: 2,
                top1: 41.5,
                many: Some(60.0),
                medium: None,
                few: Some(10.0),
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"totalSteps\":100"), "{json}");
        assert_eq!(Progress::parse(json.as_bytes()).unwrap(), p);
        let older = br#"{"state":"Finished","epoch":1,"newField":true}"#;
        let q = Progress::parse(older).unwrap();
        assert_eq!((q.state, q.epoch, q.step), (RunState::Finished, 1, 0));
    }

    #[test]
    fn the_default_metrics_address_uses_the_metrics_port() {
        assert!(DEFAULT_METRICS_ADDR.ends_with(&format!(":{METRICS_PORT}")));
    }

    #[test]
    fn exit_codes_are_classified() {
        assert_eq!(classify_exit(0), ExitClass::Success);
        assert_eq!(classify_exit(75), ExitClass::Preempted);
        assert_eq!(classify_exit(78), ExitClass::Permanent);
        assert_eq!(classify_exit(2), ExitClass::Permanent);
        for code in [1, 101, 137, 139, 143] {
            assert_eq!(classify_exit(code), ExitClass::Retryable, "{code}");
        }
    }

    #[test]
    fn termination_messages_fit_what_kubernetes_keeps() {
        let p = Progress {
            state: RunState::Failed,
            message: Some("x".repeat(10_000)),
            eval: Some(EvalProgress {
                top1: 12.5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = p.termination_message();
        assert!(m.len() <= TERMINATION_MESSAGE_MAX_BYTES, "{}", m.len());
        let back = Progress::parse(m.as_bytes()).unwrap();
        assert_eq!(back.eval.unwrap().top1, 12.5);
        assert!(back.message.unwrap().ends_with('…'));
    }
}
