//! What a run tells its user and its launcher: the shared progress report,
//! progress bars, the evaluation artifacts and the final summary.

use super::setup::Trainer;
use super::RunSummary;
use crate::eval::EvalReport;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::Path;
use std::sync::Arc;

/// A [`ride_contract::Progress`] shared between the training loop, the
/// checkpoint writer, the HTTP endpoint and the process's exit.
pub type SharedProgress = Arc<std::sync::Mutex<ride_contract::Progress>>;

/// Change the shared report (a poisoned lock still holds a usable report).
pub fn update_progress(p: &SharedProgress, f: impl FnOnce(&mut ride_contract::Progress)) {
    f(&mut p.lock().unwrap_or_else(|e| e.into_inner()));
}

pub(super) fn record_eval_progress(p: &SharedProgress, epoch: u64, r: &EvalReport) {
    update_progress(p, |p| {
        p.eval = Some(ride_contract::EvalProgress {
            epoch,
            top1: r.top1,
            many: r.many,
            medium: r.medium,
            few: r.few,
        })
    });
}

/// Write the shared report to the file `RIDE_TERMINATION_LOG` names, if
/// any (on Kubernetes the container's termination message).
pub fn write_termination_log(report: &SharedProgress) {
    let Some(path) = std::env::var_os(ride_contract::ENV_TERMINATION_LOG) else {
        return;
    };
    let text = report
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .termination_message();
    if let Err(e) = std::fs::write(&path, text) {
        tracing::warn!(
            "warning: cannot write the termination message to {}: {e}",
            Path::new(&path).display()
        );
    }
}

/// What the stall watchdog does when it fires: say why, leave the report
/// for the launcher, and end the process at once with
/// [`ride_contract::STALLED_EXIT_CODE`]. `_exit` skips libtorch's static
/// destructors, which could block on the very threads that are stuck.
pub(super) fn exit_on_stall(
    report: SharedProgress,
) -> impl Fn(&crate::watchdog::Stall) + Send + 'static {
    move |stall| {
        let mut message = stall.message();
        let p = report.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (rank, world) = (p.rank, p.world_size);
        // Rank 0 writes the checkpoints, so its report says what was lost.
        if rank == 0 {
            let now = ride_contract::unix_now();
            if let Some(l) = ride_contract::LostWork::from_report(&p, now, world.max(1), 1) {
                message.push_str(&format!(
                    "; work lost since the last checkpoint: {} steps, {:.1} s of training, {:.1} device-seconds",
                    l.steps, l.seconds, l.device_seconds
                ));
            }
        }
        tracing::error!(
            idle_seconds = stall.idle.as_secs_f64(),
            limit_seconds = stall.limit.as_secs_f64(),
            in_collective = stall.in_collective_for.is_some(),
            "{message}"
        );
        update_progress(&report, |p| {
            p.state = ride_contract::RunState::Failed;
            p.message = Some(message.clone());
        });
        write_termination_log(&report);
        use std::io::Write;
        if let Some(path) = std::env::var_os(ride_contract::ENV_STALL_REPORT) {
            let line = format!("rank {rank}: {message}\n");
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = appended {
                tracing::warn!("cannot append to {}: {e}", Path::new(&path).display());
            }
        }
        let _ = std::io::stderr().flush();
        let _ = std::io::stdout().flush();
        // SAFETY: _exit ends the process without running any more code in it.
        unsafe { libc::_exit(ride_contract::STALLED_EXIT_CODE) }
    }
}

/// The metrics address for this rank: ranks sharing a node get consecutive ports.
pub(super) fn rank_metrics_addr(addr: &str, local_rank: usize) -> String {
    match addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
    {
        // Port 0 means "any free port", which is already distinct per process.
        Some((host, port)) if local_rank > 0 && port > 0 => {
            format!("{host}:{}", port.saturating_add(local_rank as u16))
        }
        _ => addr.to_string(),
    }
}

pub(super) fn progress_bar(len: u64, epoch: u64, epochs: u64, show: bool) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if !show {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    pb
}

/// The accuracy–compute plot's file name, next to `eval.json` (router runs).
pub const ROUTING_CURVE_FILE: &str = "routing_curve.svg";

/// Write `eval.json`, the per-class accuracy plot and, with a router, the
/// accuracy–compute curve into `dir`.
pub fn write_eval_artifacts(report: &EvalReport, dir: &Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("eval.json"), serde_json::to_string_pretty(report)?)?;
    crate::plot::per_class_accuracy_svg(
        report,
        &dir.join("per_class_accuracy.svg"),
        &format!("{name}: per-class top-1 vs class size"),
    )?;
    if let Some(r) = &report.routing {
        crate::plot::routing_curve_svg(
            r,
            &dir.join(ROUTING_CURVE_FILE),
            &format!("{name}: top-1 vs compute over routing thresholds"),
        )?;
    }
    Ok(())
}

impl Trainer<'_> {
    /// The run's summary; the main rank also writes the evaluation
    /// artifacts when the output is a local directory.
    pub(super) fn summary(
        self,
        epochs_run: u64,
        train_seconds: f64,
        images_per_second: f64,
    ) -> Result<RunSummary> {
        let artifacts = match (&self.state.last_eval, self.store.local_dir()) {
            (Some(report), Some(dir)) if self.is_main() => {
                write_eval_artifacts(report, dir, &self.cfg.model.name)?;
                Some(dir.to_path_buf())
            }
            _ => None,
        };
        Ok(RunSummary {
            eval: self.state.last_eval,
            skipped_samples: self.metrics.skipped_samples.get(),
            epochs_run,
            steps: self.opt.steps(),
            train_seconds,
            images_per_second,
            data_wait_seconds: self.metrics.data_wait.get_sample_sum(),
            checkpoint: self.state.last_checkpoint,
            output: self.output,
            parameters: self.parameters,
            artifacts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::rank_metrics_addr;

    #[test]
    fn ranks_on_one_node_get_consecutive_metrics_ports() {
        assert_eq!(rank_metrics_addr("0.0.0.0:9400", 0), "0.0.0.0:9400");
        assert_eq!(rank_metrics_addr("0.0.0.0:9400", 3), "0.0.0.0:9403");
        // Port 0 (any free port) stays 0.
        assert_eq!(rank_metrics_addr("127.0.0.1:0", 2), "127.0.0.1:0");
        assert_eq!(rank_metrics_addr("not-an-address", 1), "not-an-address");
    }
}
